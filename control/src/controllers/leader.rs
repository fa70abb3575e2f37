//! Leader election over a Lease, as kube-controller-manager's: of all
//! berth-control instances serving one cluster (on one etcd), only the
//! holder of the Lease `kube-system/berth-controllers` runs the
//! controllers. The holder renews it every [`RENEW_EVERY`]; another
//! instance takes it over once the record has not changed for
//! [`LEASE_DURATION`] as measured by its own monotonic clock from when it
//! last saw it change (client-go's algorithm: no trust in other machines'
//! clocks). An instance that cannot renew within [`RENEW_DEADLINE`] stops
//! its controllers before another may start them, and the holder gives
//! the Lease up when it shuts down.

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
    let mut observed: Option<Observed> = None;
    loop {
        let renewed = match try_hold(&leases, &identity, &mut observed).await {
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
                super::metrics(|m| m.leading(true));
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
                super::metrics(|m| m.leading(false));
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
        super::metrics(|m| m.leading(false));
        release(&leases, &identity).await;
    }
}

/// The Lease record last seen, and when (on this machine's clock) it was
/// first seen as it is.
struct Observed {
    record: String,
    since: tokio::time::Instant,
}

/// Gives the Lease up (empty holder, as client-go's ReleaseOnCancel), so
/// another instance need not wait for it to expire.
async fn release(leases: &Api<Lease>, identity: &str) {
    let Ok(Some(mut lease)) = leases.get_opt(NAME).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    match leases.replace(NAME, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(%identity, "released the leader Lease"),
        Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
    }
}

/// Acquires or renews the Lease for `identity`; whether it holds it now.
/// `observed` remembers the record and when it last changed.
async fn try_hold(
    leases: &Api<Lease>,
    identity: &str,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
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
    let record = format!(
        "{holder}|{:?}|{:?}",
        spec.renew_time.as_ref().map(|t| t.0),
        spec.lease_duration_seconds
    );
    let seen = tokio::time::Instant::now();
    let since = match observed.take() {
        Some(o) if o.record == record => o.since,
        _ => seen,
    };
    *observed = Some(Observed { record, since });
    let expired = seen.duration_since(since) > duration;
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
