//! `berth-agent`: the node agent of a Berth cluster.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::lease;
use berth_agent::metrics::Metrics;
use berth_agent::node::{self, NodeInfo};
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[derive(Debug, Parser)]
#[command(name = "berth-agent", version, about = "Berth's node agent")]
struct Cli {
    /// kubeconfig with this node's credentials (`berth-control node-credentials`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Node name; defaults to the host name.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address on the underlay network (its InternalIP).
    #[arg(long)]
    node_ip: IpAddr,
    /// How often the node's Lease is renewed.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    heartbeat_interval: u64,
    /// How long a renewal is valid.
    #[arg(long, default_value = "40", value_name = "SECONDS")]
    lease_duration: u64,
    /// How often the node's status is refreshed.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    status_interval: u64,
    /// Pods the node accepts.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Where Prometheus metrics are served.
    #[arg(long, default_value = "127.0.0.1:9962")]
    metrics_listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli))
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let info = NodeInfo {
        name: match cli.node_name {
            Some(name) => name,
            None => host_name()?,
        },
        internal_ip: cli.node_ip,
        max_pods: cli.max_pods,
    };
    let client = client(&cli.kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, lease::NAMESPACE);
    let metrics = Arc::new(Metrics::default());
    serve_metrics(cli.metrics_listen, Arc::clone(&metrics)).await?;

    let ready_since = node::now();
    let registered = register_until_done(&nodes, &info, &ready_since).await;
    let pod_cidr = registered
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .unwrap_or_default();
    tracing::info!(node = %info.name, %pod_cidr, "node ready");

    let lease_duration = Duration::from_secs(cli.lease_duration);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(cli.heartbeat_interval.max(1)));
    let mut status = tokio::time::interval(Duration::from_secs(cli.status_interval.max(1)));
    status.tick().await;
    let shutdown = shutdown_signal();
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
            _ = status.tick() => {
                if let Err(e) = node::update_status(&nodes, &info, &ready_since).await {
                    metrics.heartbeat_failures.inc();
                    tracing::warn!(error = %e, "node status update failed");
                }
            }
        }
    }
    tracing::info!("berth-agent stopped");
    Ok(())
}

/// Registers the node, retrying while the API server is unreachable.
async fn register_until_done(nodes: &Api<Node>, info: &NodeInfo, ready_since: &str) -> Node {
    let mut delay = Duration::from_millis(200);
    loop {
        match node::register(nodes, info, ready_since).await {
            Ok(node) => return node,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "registration failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
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

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
