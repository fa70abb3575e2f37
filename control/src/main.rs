//! `berth-control`: the API server.
//!
//! `berth-control [FLAGS]` serves; `berth-control node-credentials` writes
//! a node agent's kubeconfig.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_control::alloc::{Allocator, Ranges};
use berth_control::api::{self, Api, ApiConfig};
use berth_control::auth::{self, Authenticator};
use berth_control::pki::{self, Pki};
use berth_control::store::{EmbeddedStore, EtcdConfig, EtcdStore, EtcdTls, HistoryLimits, Store};
use clap::{Args, Parser, Subcommand};
use ipnetwork::Ipv4Network;

#[derive(Debug, Parser)]
#[command(
    name = "berth-control",
    version,
    about = "Berth's Kubernetes-compatible API server"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a kubeconfig for a node agent (its token may only write its own Node, Lease and pods).
    NodeCredentials {
        /// Data directory of the server.
        #[arg(long, default_value = "/var/lib/berth/control")]
        data_dir: PathBuf,
        /// Node name.
        #[arg(long)]
        node: String,
        /// Server URL written into the kubeconfig.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        /// Where to write the kubeconfig.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where the store, certificates, tokens and admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/berth/control")]
    data_dir: PathBuf,
    /// Address clients use to reach the server (certificate and kubeconfig); defaults to the listen address.
    #[arg(long)]
    advertise_address: Option<String>,
    /// ClusterIPs come from this CIDR.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Network,
    /// Pod CIDRs of nodes are cut from this CIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Network,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_size: u8,
    /// NodePorts come from this range.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Events kept for watches that resume from an older resourceVersion (embedded store).
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Bytes of objects (new and previous) those events may hold at most; older events go first (embedded store).
    #[arg(long, default_value_t = 64 << 20)]
    watch_history_bytes: usize,
    /// Where objects are stored: the embedded database, or etcd.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    store: StoreKind,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// CA certificate (PEM) that signs etcd's serving certificate; enables TLS.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// How often etcd history is compacted, e.g. 5m, 30s; 0 disables.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    etcd_compaction_interval: Duration,
    /// Connections served at once (also bounded by the open-files limit); past it, new ones wait.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Time a client has to complete the TLS handshake, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tls_handshake_timeout: Duration,
    /// How long a node's agent may post neither its Lease nor its status
    /// before the node is marked unreachable (conditions Unknown, taints).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// Time an HTTP/1.1 client has to send a request's headers, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_header_timeout: Duration,
    /// A connection with no request in flight for this long is closed, e.g. 90s.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    idle_connection_timeout: Duration,
}

/// Open files kept for everything but client connections (store, logs,
/// etcd connections, certificates).
const RESERVED_FILES: u64 = 128;

/// Store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// A redb database in --data-dir (no other process needed).
    Embedded,
    /// etcd (v3 API), shared by any number of berth-control instances.
    Etcd,
}

/// Parses `90s`, `5m`, `1h` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

async fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match args.store {
        StoreKind::Embedded => Arc::new(
            EmbeddedStore::open(
                &args.data_dir.join("store"),
                HistoryLimits {
                    events: args.watch_history,
                    bytes: args.watch_history_bytes,
                },
            )
            .context("opening the embedded store")?,
        ),
        StoreKind::Etcd => {
            let read =
                |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let tls = match &args.etcd_cafile {
                Some(ca) => Some(EtcdTls {
                    ca: read(ca)?,
                    identity: match (&args.etcd_certfile, &args.etcd_keyfile) {
                        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                        _ => None,
                    },
                }),
                None => None,
            };
            let config = EtcdConfig {
                endpoints: args.etcd_endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                tls,
                request_timeout: Duration::from_secs(5),
                compaction_interval: (!args.etcd_compaction_interval.is_zero())
                    .then_some(args.etcd_compaction_interval),
            };
            Arc::new(
                EtcdStore::connect(&config)
                    .await
                    .context("setting up the etcd client")?,
            )
        }
    })
}

fn main() -> anyhow::Result<()> {
    berth_cli::init_logging("RUST_LOG", "info");
    let cli = Cli::parse();
    match cli.command {
        Some(Command::NodeCredentials {
            data_dir,
            node,
            server,
            out,
        }) => node_credentials(&data_dir, &node, &server, &out),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(serve(cli.serve)),
    }
}

fn node_credentials(data_dir: &Path, node: &str, server: &str, out: &Path) -> anyhow::Result<()> {
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt")).with_context(|| {
        format!(
            "reading the CA from {} (has berth-control started once?)",
            data_dir.display()
        )
    })?;
    let token = auth::ensure_node(&data_dir.join("tokens.csv"), node)?;
    let user = format!("system:node:{node}");
    pki::write_private(out, &pki::kubeconfig(server, &ca, &user, &token))?;
    println!("{}", out.display());
    Ok(())
}

fn parse_port_range(text: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = text
        .split_once('-')
        .with_context(|| format!("--service-node-port-range {text:?} is not LOW-HIGH"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .with_context(|| format!("bad port {lo:?}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .with_context(|| format!("bad port {hi:?}"))?;
    if lo == 0 || lo > hi {
        bail!("--service-node-port-range {text:?} is empty or starts at 0");
    }
    Ok(lo..=hi)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !(8..=30).contains(&args.node_cidr_size) || args.node_cidr_size < args.cluster_cidr.prefix()
    {
        bail!(
            "--node-cidr-size {} must be between the cluster CIDR's prefix ({}) and 30",
            args.node_cidr_size,
            args.cluster_cidr.prefix()
        );
    }
    if args.service_cidr.prefix() > 29 {
        bail!(
            "--service-cidr {} is too small (at most /29)",
            args.service_cidr
        );
    }
    let node_ports = parse_port_range(&args.service_node_port_range)?;
    let advertise = args
        .advertise_address
        .clone()
        .unwrap_or_else(|| args.listen.ip().to_string());
    let server_address = format!("{advertise}:{}", args.listen.port());
    let server_url = format!("https://{server_address}");

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let store = open_store(&args).await?;
    let mut names = vec![
        advertise.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    names.dedup();
    let pki = Pki::ensure(&args.data_dir.join("pki"), &names)?;
    let tokens = args.data_dir.join("tokens.csv");
    let admin_token = auth::ensure_admin(&tokens)?;
    let kubeconfig = args.data_dir.join("admin.kubeconfig");
    pki::write_private(
        &kubeconfig,
        &pki::kubeconfig(&server_url, &pki.ca_pem, "admin", &admin_token),
    )?;

    let ranges = Ranges {
        service_cidr: args.service_cidr,
        cluster_cidr: args.cluster_cidr,
        node_cidr_prefix: args.node_cidr_size,
        node_ports,
    };
    let api = Api::new(
        Arc::clone(&store),
        Allocator::new(Arc::clone(&store), ranges),
        Authenticator::new(tokens),
        ApiConfig {
            server_address: server_address.clone(),
            bookmark_interval: Duration::from_secs(60),
        },
    );
    // With the store down at start (etcd unreachable), keep trying: the
    // server comes up not ready and bootstraps once the store answers.
    match api.bootstrap().await {
        Ok(()) => {}
        Err(e) if e.code == 503 => {
            tracing::warn!(error = %e, "store unavailable; serving (not ready) until it answers");
            bootstrap_until_done(api.clone());
        }
        Err(e) => return Err(e).context("creating the default namespaces and Services"),
    }

    let controllers = berth_control::controllers::start(
        api.client("system:kube-controller-manager"),
        berth_control::controllers::Config {
            server_address,
            node_monitor_grace: args.node_monitor_grace_period,
            metrics: api.controller_metrics(),
        },
        berth_cli::shutdown_signal(),
    );

    let limits = connection_limits(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        url = %server_url,
        kubeconfig = %kubeconfig.display(),
        "berth-control serving (Kubernetes API v1.{})",
        api::KUBERNETES_MINOR
    );
    api::serve(
        listener,
        pki.server_config()?,
        api.router(),
        limits,
        berth_cli::shutdown_signal(),
    )
    .await?;
    // The controllers stop on the same signal; give them a moment to
    // release the leader Lease, so another instance takes over at once.
    if tokio::time::timeout(Duration::from_secs(5), controllers)
        .await
        .is_err()
    {
        tracing::warn!("controllers did not stop within 5 s");
    }
    tracing::info!("berth-control stopped");
    Ok(())
}

/// The connection limits from the flags, the connection cap lowered to fit
/// the open-files limit (raised to its maximum first).
fn connection_limits(args: &ServeArgs) -> anyhow::Result<api::ConnectionLimits> {
    for (flag, value) in [
        ("--tls-handshake-timeout", args.tls_handshake_timeout),
        ("--request-header-timeout", args.request_header_timeout),
        ("--idle-connection-timeout", args.idle_connection_timeout),
    ] {
        if value.is_zero() {
            bail!("{flag} must be more than 0");
        }
    }
    let files = api::raise_open_files_limit().context("raising the open-files limit")?;
    let fit = usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    if fit < args.max_connections {
        tracing::warn!(
            open_files = files,
            max_connections = fit,
            "the open-files limit allows fewer connections than --max-connections"
        );
    }
    Ok(api::ConnectionLimits {
        max_connections: args.max_connections.min(fit).max(1),
        handshake_timeout: args.tls_handshake_timeout,
        header_timeout: args.request_header_timeout,
        idle_timeout: args.idle_connection_timeout,
    })
}

/// Creates the default namespaces and Services, retrying while the store
/// is unavailable.
fn bootstrap_until_done(api: Api) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::time::sleep(delay).await;
            match api.bootstrap().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap failed; retrying");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}
