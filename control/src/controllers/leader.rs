//! Leader election over a Lease, as kube-controller-manager's: of all
//! berth-control instances serving one cluster (on one etcd), only the
//! holder of the Lease `kube-system/berth-controllers` runs the
//! controllers. The holder renews it every [`RENEW_EVERY`]; another
//! instance takes it over once it has not been renewed for
//! [`LEASE_DURATION`]. An instance that cannot renew in time stops its
//! controllers before another may start them.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use kube::Api;
use serde_json::json;
use tokio::task::JoinSet;

/// The Lease's namespace and name.
const NAMESPACE: &str = "kube-system";
const NAME: &str = "berth-controllers";
/// How long a holder's claim lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and others try to acquire.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A holder that has not renewed for this long stops its controllers
/// (before the Lease can expire for the others).
const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// Contends for the Lease as `identity`; while holding it, runs the
/// controllers `start` spawns. Returns at `shutdown`.
pub async fn run(
    client: kube::Client,
    identity: String,
    start: impl Fn(&mut JoinSet<()>),
    shutdown: impl Future<Output = ()>,
) {
    let leases: Api<Lease> = Api::namespaced(client, NAMESPACE);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut running: Option<(JoinSet<()>, tokio::time::Instant)> = None;
    loop {
        let renewed = match try_hold(&leases, &identity).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or write the leader Lease");
                false
            }
        };
        let now = tokio::time::Instant::now();
        running = match (running.take(), renewed) {
            (None, true) => {
                tracing::info!(%identity, "became the leader: starting controllers");
                let mut tasks = JoinSet::new();
                start(&mut tasks);
                Some((tasks, now))
            }
            (Some((tasks, _)), true) => Some((tasks, now)),
            (Some((tasks, last)), false) if now.duration_since(last) < RENEW_DEADLINE => {
                Some((tasks, last))
            }
            (Some((mut tasks, _)), false) => {
                tracing::warn!(%identity, "lost the leader Lease: stopping controllers");
                tasks.shutdown().await;
                None
            }
            (None, false) => None,
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    if let Some((mut tasks, _)) = running {
        tasks.shutdown().await;
    }
}

/// Acquires or renews the Lease for `identity`; whether it holds it now.
async fn try_hold(leases: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let Some(current) = leases.get_opt(NAME).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"holderIdentity": identity,
                "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
        }))
        .map_err(kube::Error::SerdeError)?;
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let duration = spec.lease_duration_seconds.map_or(LEASE_DURATION, |s| {
        Duration::from_secs(u64::try_from(s).unwrap_or(0))
    });
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let renewed = renewed.0;
        now.duration_since(renewed).as_secs_f64() > duration.as_secs_f64()
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let mut lease = current;
    let mut next = serde_json::to_value(lease.spec.take().unwrap_or_default())
        .map_err(kube::Error::SerdeError)?;
    if holder != identity {
        next["acquireTime"] = json!(stamp);
        next["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
        tracing::info!(previous = %holder, "taking over the leader Lease");
    }
    next["holderIdentity"] = json!(identity);
    next["leaseDurationSeconds"] = json!(LEASE_DURATION.as_secs());
    next["renewTime"] = json!(stamp);
    lease.spec = Some(serde_json::from_value(next).map_err(kube::Error::SerdeError)?);
    // The resourceVersion read above makes this conditional: of two
    // instances taking over at once, one gets a conflict.
    match leases.replace(NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
