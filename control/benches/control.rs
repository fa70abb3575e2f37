//! `cargo xtask bench control`: write throughput and create-to-watch-event
//! latency of berth-control through the real HTTPS API, on the embedded
//! store and on a local etcd (Debian's etcd-server), side by side.
//!
//! Prints numbers; asserts nothing (speed goals are read, not tested).

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/etcd.rs"]
mod etcd;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::Api;

const WRITERS: usize = 8;
const WRITES: usize = 2000;
const WATCHED: usize = 500;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback address (used by the etcd helper too).
fn free_port() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn start(etcd_endpoints: Option<&str>) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let addr = free_port();
    let mut store_args = Vec::new();
    if let Some(endpoints) = etcd_endpoints {
        store_args = vec![
            "--store".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            endpoints.into(),
        ];
    }
    let child = Command::new(env!("CARGO_BIN_EXE_berth-control"))
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .args(&store_args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(kubeconfig.exists() && std::net::TcpStream::connect(addr).is_ok()) {
        anyhow::ensure!(Instant::now() < deadline, "berth-control did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Server {
        child,
        _dir: dir,
        kubeconfig,
    })
}

fn config_map(name: String, sent_nanos: u128) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("sent".to_string(), sent_nanos.to_string())].into()),
        ..Default::default()
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn client(server: &Server) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&server.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn writes(api: Api<ConfigMap>) -> anyhow::Result<f64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let api = api.clone();
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= WRITES {
                    return anyhow::Ok(());
                }
                api.create(&PostParams::default(), &config_map(format!("w-{i}"), 0))
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(WRITES as f64 / started.elapsed().as_secs_f64())
}

async fn watch_latency(api: Api<ConfigMap>) -> anyhow::Result<Vec<Duration>> {
    let list = api.list_metadata(&Default::default()).await?;
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 0..WATCHED {
                api.create(
                    &PostParams::default(),
                    &config_map(format!("l-{i}"), now_nanos()),
                )
                .await?;
            }
            anyhow::Ok(())
        })
    };
    let mut latencies = Vec::with_capacity(WATCHED);
    while latencies.len() < WATCHED {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
        if let WatchEvent::Added(cm) = event {
            let sent: u128 = cm
                .data
                .as_ref()
                .and_then(|d| d.get("sent"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let nanos = now_nanos().saturating_sub(sent);
            latencies.push(Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ));
        }
    }
    writer.await??;
    latencies.sort();
    Ok(latencies)
}

/// Results of one backend.
struct Results {
    writes_per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(server: &Server) -> anyhow::Result<Results> {
    let api: Api<ConfigMap> = Api::namespaced(client(server).await?, "default");
    // Wait until the server is ready (bootstrap done).
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.list_metadata(&Default::default()).await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "berth-control never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes_per_second = writes(api.clone()).await?;
    let latencies = watch_latency(api).await?;
    Ok(Results {
        writes_per_second,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    eprintln!("measuring the embedded store ...");
    let embedded = measure(&start(None)?).await?;
    eprintln!("measuring etcd (one local member) ...");
    let cluster = etcd::EtcdCluster::start(1);
    let on_etcd = measure(&start(Some(&cluster.endpoints()))?).await?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("berth-control through HTTPS, {WRITES} creates by {WRITERS} clients, {WATCHED} watched creates");
    println!("every write is durable before it is acknowledged (fsync / etcd raft commit)\n");
    println!(
        "  {:<36} {:>12} {:>12} {:>8}",
        "", "embedded", "etcd", "ratio"
    );
    println!(
        "  {:<36} {:>12.0} {:>12.0} {:>8.2}",
        "writes per second",
        embedded.writes_per_second,
        on_etcd.writes_per_second,
        embedded.writes_per_second / on_etcd.writes_per_second
    );
    for (label, a, b) in [
        ("create-to-watch-event p50 (ms)", embedded.p50, on_etcd.p50),
        ("create-to-watch-event p99 (ms)", embedded.p99, on_etcd.p99),
    ] {
        println!(
            "  {label:<36} {:>12.2} {:>12.2} {:>8.2}",
            ms(a),
            ms(b),
            ms(a) / ms(b)
        );
    }
    println!("\n  ratio = embedded / etcd");
    Ok(())
}
