//! `berth-agent`: the node agent of a Berth cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::caches::Caches;
use berth_agent::cni_conf;
use berth_agent::config::Config;
use berth_agent::lease;
use berth_agent::masquerade::Masquerade;
use berth_agent::metrics::Metrics;
use berth_agent::node::{self, NodeInfo};
use berth_agent::overlay::peers::{UNDERLAY_IP_ANNOTATION, VTEP_MAC_ANNOTATION};
use berth_agent::overlay::Overlay;
use berth_agent::services::desired::ThisNode;
use berth_agent::services::nodeport::NodePortKeeper;
use berth_agent::services::{Placement, ServiceLb};
use berth_ebpf::NodePortConfig;
use berth_net::mac::format_mac;
use clap::Parser;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[derive(Debug, Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth's node agent: runs the node (without a subcommand) or inspects it"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// YAML configuration file; flags override what it sets.
    #[arg(long)]
    config: Option<PathBuf>,
    /// kubeconfig with this node's credentials (`berth-control node-credentials`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Node name; defaults to the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address on the underlay network (its InternalIP and VTEP address).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// How often the node's Lease is renewed [default: 10].
    #[arg(long, value_name = "SECONDS")]
    heartbeat_interval: Option<u64>,
    /// How long a renewal is valid [default: 40].
    #[arg(long, value_name = "SECONDS")]
    lease_duration: Option<u64>,
    /// How often the node's status is refreshed [default: 60].
    #[arg(long, value_name = "SECONDS")]
    status_interval: Option<u64>,
    /// Pods the node accepts [default: 110].
    #[arg(long)]
    max_pods: Option<u32>,
    /// Where Prometheus metrics are served [default: 127.0.0.1:9962].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Network namespace holding the node's interfaces (e.g. /run/netns/n0); default: the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Name of the VXLAN device [default: berth.1].
    #[arg(long)]
    vxlan_device: Option<String>,
    /// VXLAN network identifier [default: 1].
    #[arg(long)]
    vxlan_vni: Option<u32>,
    /// VXLAN UDP port [default: 8472].
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// How often the overlay is checked against the API without events [default: 10].
    #[arg(long, value_name = "SECONDS")]
    overlay_resync: Option<u64>,
    /// Underlay interface; default: the one holding the node IP.
    #[arg(long)]
    underlay_interface: Option<String>,
    /// Where the CNI configuration is written [default: /etc/cni/net.d].
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Where berth-cni keeps its leases [default: /var/lib/cni/networks].
    #[arg(long)]
    cni_data_dir: Option<PathBuf>,
    /// The cluster's pod CIDR [default: 10.244.0.0/16].
    #[arg(long)]
    cluster_cidr: Option<Ipv4Network>,
    /// bpffs directory of the node's eBPF maps and links [default: /sys/fs/bpf/berth].
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// cgroup2 directory whose processes get service load balancing [default: the cgroup2 root].
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Entries of the services map (one per frontend) [default: 65536].
    #[arg(long)]
    lb_services_map_size: Option<u32>,
    /// Entries of the backend slots map (one per backend of each frontend) [default: 262144].
    #[arg(long)]
    lb_slots_map_size: Option<u32>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inspect the node's eBPF datapath.
    Bpf {
        #[command(subcommand)]
        what: Bpf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Bpf {
    /// The service load balancer's maps.
    Lb {
        #[command(subcommand)]
        what: Lb,
    },
    /// Session affinity: which client is pinned to which backend.
    Affinity {
        #[command(subcommand)]
        what: Affinity,
    },
    /// Connection tracking of frontends reached from outside the node.
    Ct {
        #[command(subcommand)]
        what: Ct,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Ct {
    /// Every translated connection, both directions.
    List {
        /// bpffs directory of the node's maps.
        #[arg(long, default_value = "/sys/fs/bpf/berth")]
        pin_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Affinity {
    /// Every client (network namespace cookie) with its frontend and backend.
    List {
        /// bpffs directory of the node's maps.
        #[arg(long, default_value = "/sys/fs/bpf/berth")]
        pin_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, clap::Subcommand)]
enum Lb {
    /// Which backend the datapath would pick for a frontend, and why.
    Explain {
        /// The frontend, `IP:PORT/PROTO` (e.g. 10.96.0.10:53/UDP).
        frontend: berth_ebpf::model::Frontend,
        /// A client outside the node, `IP` or `IP:PORT`: what its flows get
        /// at tc (the Maglev choice for a port, tracked connections).
        #[arg(long)]
        from: Option<berth_agent::services::Client>,
        /// bpffs directory of the node's maps.
        #[arg(long, default_value = "/sys/fs/bpf/berth")]
        pin_dir: PathBuf,
    },
    /// Every frontend with its backends, slots and flags.
    List {
        /// bpffs directory of the node's maps.
        #[arg(long, default_value = "/sys/fs/bpf/berth")]
        pin_dir: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

impl Cli {
    /// The file's configuration (or the defaults), with flags on top.
    fn config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        fn set<T>(slot: &mut T, flag: Option<T>) {
            if let Some(v) = flag {
                *slot = v;
            }
        }
        set(&mut c.kubeconfig, self.kubeconfig.map(Some));
        set(&mut c.node_name, self.node_name.map(Some));
        set(&mut c.node_ip, self.node_ip.map(Some));
        set(&mut c.heartbeat_interval_seconds, self.heartbeat_interval);
        set(&mut c.lease_duration_seconds, self.lease_duration);
        set(&mut c.status_interval_seconds, self.status_interval);
        set(&mut c.max_pods, self.max_pods);
        set(&mut c.metrics_listen, self.metrics_listen);
        set(&mut c.netns, self.netns.map(Some));
        set(&mut c.overlay.device, self.vxlan_device);
        set(&mut c.overlay.vni, self.vxlan_vni);
        set(&mut c.overlay.port, self.vxlan_port);
        set(&mut c.overlay.resync_seconds, self.overlay_resync);
        set(
            &mut c.overlay.underlay_interface,
            self.underlay_interface.map(Some),
        );
        set(&mut c.cni.conf_dir, self.cni_conf_dir);
        set(&mut c.cni.data_dir, self.cni_data_dir);
        set(&mut c.cni.cluster_cidr, self.cluster_cidr);
        set(&mut c.services.pin_dir, self.bpf_pin_dir);
        set(&mut c.services.cgroup, self.cgroup.map(Some));
        set(
            &mut c.services.map_sizes.services,
            self.lb_services_map_size,
        );
        set(&mut c.services.map_sizes.slots, self.lb_slots_map_size);
        c.validate()?;
        Ok(c)
    }
}

fn main() -> anyhow::Result<()> {
    berth_cli::init_logging("RUST_LOG", "info");
    let mut cli = Cli::parse();
    if let Some(Command::Bpf { what }) = cli.command.take() {
        return bpf(what);
    }
    let config = cli.config()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(config))
}

/// `berth-agent bpf …`: reads the pinned maps; needs no API server.
fn bpf(what: Bpf) -> anyhow::Result<()> {
    match what {
        Bpf::Lb {
            what: Lb::List { pin_dir, output },
        } => {
            let entries = berth_agent::services::list(&pin_dir)
                .with_context(|| format!("reading the maps pinned in {}", pin_dir.display()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Table => print!("{}", berth_agent::services::table(&entries)),
            }
            Ok(())
        }
        Bpf::Lb {
            what:
                Lb::Explain {
                    frontend,
                    from,
                    pin_dir,
                },
        } => {
            let text = berth_agent::services::explain(&pin_dir, &frontend, from)
                .with_context(|| format!("reading the maps pinned in {}", pin_dir.display()))?;
            print!("{text}");
            Ok(())
        }
        Bpf::Ct {
            what: Ct::List { pin_dir, output },
        } => {
            let entries = berth_ebpf::ct_entries(&pin_dir)
                .with_context(|| format!("reading the maps pinned in {}", pin_dir.display()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Table => {
                    println!(
                        "{:<9} {:<5} {:<22} {:<22} {:<22} {:<22} BACKEND ID",
                        "DIRECTION", "PROTO", "FROM", "TO", "NEW FROM", "NEW TO"
                    );
                    for e in &entries {
                        println!(
                            "{:<9} {:<5} {:<22} {:<22} {:<22} {:<22} {}",
                            e.direction,
                            e.proto.to_string(),
                            e.from.to_string(),
                            e.to.to_string(),
                            e.new_from.to_string(),
                            e.new_to.to_string(),
                            e.backend_id
                        );
                    }
                }
            }
            Ok(())
        }
        Bpf::Affinity {
            what: Affinity::List { pin_dir, output },
        } => {
            let entries = berth_agent::services::affinities(&pin_dir)
                .with_context(|| format!("reading the maps pinned in {}", pin_dir.display()))?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Output::Table => {
                    println!(
                        "{:<22} {:<28} {:<28} LAST USED (ns)",
                        "CLIENT", "FRONTEND", "BACKEND"
                    );
                    for e in &entries {
                        let backend = e
                            .backend
                            .map_or_else(|| format!("(id {})", e.backend_id), |b| b.to_string());
                        println!(
                            "{:<22} {:<28} {:<28} {}",
                            e.client,
                            e.frontend.to_string(),
                            backend,
                            e.last_used_ns
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

async fn client(path: &PathBuf) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("building the API client")
}

fn host_name() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname().context("reading the host name")?;
    Ok(name.to_string_lossy().to_lowercase())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let kubeconfig = config
        .kubeconfig
        .clone()
        .context("kubeconfig is required")?;
    let node_ip = match config.node_ip {
        Some(IpAddr::V4(ip)) => ip,
        other => anyhow::bail!("an IPv4 node IP is required, got {other:?}"),
    };
    let info = NodeInfo {
        name: match config.node_name.clone() {
            Some(name) => name,
            None => host_name()?,
        },
        internal_ip: IpAddr::V4(node_ip),
        max_pods: config.max_pods,
    };
    let client = client(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), lease::NAMESPACE);
    let metrics = Arc::new(Metrics::default());
    serve_metrics(config.metrics_listen, Arc::clone(&metrics)).await?;

    let ready_since = node::now();
    let pod_cidr = register_until_done(&nodes, &info, &ready_since).await?;
    if !config.cni.cluster_cidr.contains(pod_cidr.network())
        || config.cni.cluster_cidr.prefix() > pod_cidr.prefix()
    {
        anyhow::bail!(
            "this node's pod CIDR {pod_cidr} is outside the cluster CIDR {} (set cni.clusterCIDR / --cluster-cidr to the control plane's --cluster-cidr)",
            config.cni.cluster_cidr
        );
    }
    tracing::info!(node = %info.name, %pod_cidr, "node registered");

    let caches = Caches::start(client);
    let netlink = match &config.netns {
        Some(path) => berth_net::netlink::connect_in(path)?,
        None => berth_net::netlink::connect()?,
    };
    let overlay = Overlay::start(netlink, &config.overlay, &info.name, node_ip, pod_cidr)
        .await
        .context("starting the VXLAN overlay")?;
    let annotations = BTreeMap::from([
        (VTEP_MAC_ANNOTATION.to_string(), format_mac(&overlay.mac())),
        (UNDERLAY_IP_ANNOTATION.to_string(), node_ip.to_string()),
    ]);
    annotate_until_done(&nodes, &info.name, &annotations).await;
    let conflist = cni_conf::conflist(&config.cni, pod_cidr, overlay.mtu());
    let path = cni_conf::write(&config.cni.conf_dir, &conflist).with_context(|| {
        format!(
            "writing the CNI configuration in {}",
            config.cni.conf_dir.display()
        )
    })?;
    tracing::info!(conflist = %path.display(), mtu = overlay.mtu(), "CNI configuration written");
    if config.cni.ip_masq {
        let masquerade = Masquerade {
            netns: config.netns.clone(),
            network: cni_conf::NETWORK_NAME.to_string(),
            pod_cidr,
            cluster_cidr: config.cni.cluster_cidr,
        };
        tokio::spawn(masquerade.run(
            Duration::from_secs(config.overlay.resync_seconds),
            Arc::clone(&metrics),
        ));
    }
    start_services(&config, &caches, &info.name, node_ip, pod_cidr, &metrics)?;
    tokio::spawn(overlay.run(
        caches.nodes.clone(),
        Duration::from_secs(config.overlay.resync_seconds),
        Arc::clone(&metrics),
    ));
    tracing::info!(node = %info.name, "node ready");

    let lease_duration = Duration::from_secs(config.lease_duration_seconds);
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(config.heartbeat_interval_seconds));
    let mut status = tokio::time::interval(Duration::from_secs(config.status_interval_seconds));
    status.tick().await;
    let shutdown = berth_cli::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = heartbeat.tick() => match lease::renew(&leases, &info.name, lease_duration).await {
                Ok(()) => {
                    metrics.heartbeats.inc();
                    metrics.last_heartbeat.set(jiff::Timestamp::now().as_millisecond() as f64 / 1e3);
                }
                Err(e) => {
                    metrics.heartbeat_failures.inc();
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            },
            _ = status.tick() => match node::update_status(&nodes, &info, &ready_since).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    // Deleted from the API while this agent runs: register
                    // again, with the overlay annotations. A new pod CIDR
                    // would invalidate every pod address: stop instead.
                    tracing::warn!(node = %info.name, "Node object deleted; registering again");
                    let again = register_until_done(&nodes, &info, &ready_since).await?;
                    if again != pod_cidr {
                        anyhow::bail!("the node was registered again with pod CIDR {again} instead of {pod_cidr}: restart the agent (and recreate the node's pods)");
                    }
                    annotate_until_done(&nodes, &info.name, &annotations).await;
                }
                Err(e) => {
                    metrics.heartbeat_failures.inc();
                    tracing::warn!(error = %e, "node status update failed");
                }
            },
        }
    }
    // The kernel state stays: pods keep their connectivity while the agent
    // is away, and the next start adopts it.
    tracing::info!("berth-agent stopped");
    Ok(())
}

/// Attaches (or adopts) the service load balancer and runs its reconciler
/// on a thread of its own (the libbpf objects stay on that thread).
fn start_services(
    config: &Config,
    caches: &Caches,
    node: &str,
    node_ip: std::net::Ipv4Addr,
    pod_cidr: Ipv4Network,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    // Translated NodePort traffic leaves with the bridge's address (the
    // pod CIDR's first), so every backend answers through this node.
    let snat = pod_cidr
        .nth(1)
        .context("the pod CIDR has no gateway address")?;
    let nodeport = NodePortKeeper::new(
        NodePortConfig {
            pin_dir: config.services.pin_dir.clone(),
            map_sizes: config.services.map_sizes.into(),
            snat,
            snat_ports: None,
        },
        config.netns.clone(),
        node_ip,
        vec![config.cni.bridge.clone(), config.overlay.device.clone()],
    );
    let placement = Placement {
        pin_dir: config.services.pin_dir.clone(),
        cgroup: config.services.cgroup(),
    };
    let this = ThisNode {
        name: node.to_string(),
        ip: node_ip,
    };
    let (services, slices) = (caches.services.clone(), caches.endpoint_slices.clone());
    let map_sizes = config.services.map_sizes.into();
    let resync = Duration::from_secs(config.overlay.resync_seconds);
    let metrics = Arc::clone(metrics);
    let runtime = tokio::runtime::Handle::current();
    let (started, ready) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("services".into())
        .spawn(move || match ServiceLb::start(&placement, map_sizes, this, Some(nodeport)) {
            Ok(lb) => {
                tracing::info!(cgroup = %placement.cgroup.display(), pins = %placement.pin_dir.display(), "service load balancer attached");
                let _ = started.send(Ok(()));
                runtime.block_on(lb.run(services, slices, resync, metrics));
            }
            Err(e) => {
                let _ = started.send(Err(e));
            }
        })
        .context("starting the services thread")?;
    ready
        .recv()
        .context("the services thread ended")?
        .context("attaching the service load balancer")
}

/// Publishes the overlay annotations, retrying while the API server is
/// unreachable.
async fn annotate_until_done(
    nodes: &Api<Node>,
    name: &str,
    annotations: &BTreeMap<String, String>,
) {
    let mut delay = Duration::from_millis(200);
    while let Err(e) = node::annotate(nodes, name, annotations).await {
        tracing::warn!(error = %e, retry_in = ?delay, "publishing the overlay annotations failed");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Registers the node, retrying while the API server is unreachable or
/// has not given the node a pod CIDR yet; returns the pod CIDR.
async fn register_until_done(
    nodes: &Api<Node>,
    info: &NodeInfo,
    ready_since: &str,
) -> anyhow::Result<Ipv4Network> {
    let mut delay = Duration::from_millis(200);
    loop {
        match node::register(nodes, info, ready_since).await {
            Ok(node) => match node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
                Some(cidr) => {
                    return cidr
                        .parse()
                        .with_context(|| format!("the node's pod CIDR {cidr:?}"))
                }
                None => tracing::info!(retry_in = ?delay, "no pod CIDR assigned yet"),
            },
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "registration failed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move { metrics.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(())
}
