//! The taint eviction controller (kube-controller-manager's
//! `taint-eviction-controller`): a pod bound to a node with a `NoExecute`
//! taint it does not tolerate is deleted at once; one it tolerates for
//! `tolerationSeconds` is deleted that long after the taint was added
//! (pods get 300 s for `not-ready` and `unreachable` when they are
//! created, as Kubernetes' DefaultTolerationSeconds admission gives
//! them); one it tolerates without a limit stays. Before the delete the
//! pod gets the `DisruptionTarget` condition and an event says why, so
//! `kubectl describe pod` tells. Its controller then replaces it
//! elsewhere.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Backoff;

/// The controller's name in events.
const COMPONENT: &str = "taint-eviction-controller";

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// What a pod's tolerations make of its node's `NoExecute` taints.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Every taint tolerated for ever (or none): the pod stays.
    Stays,
    /// Tolerated for a while: evicted at this time.
    EvictedAt(jiff::Timestamp),
    /// A taint not tolerated: evicted now.
    EvictedNow,
}

/// Whether `toleration` tolerates `taint` (Kubernetes' matching: an empty
/// key with `Exists` matches every key; an empty effect every effect).
pub(super) fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let exists = toleration.operator.as_deref() == Some("Exists");
    let key = toleration.key.as_deref().unwrap_or("");
    let key_ok = if key.is_empty() {
        exists
    } else {
        key == taint.key
    };
    let value_ok =
        exists || toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
    let effect_ok = toleration
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    key_ok && value_ok && effect_ok
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName!="),
    );
    let store = controller.store();
    let controller = controller
        // A node's taints concern every pod on it.
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |node| {
                let name = node.name_any();
                store
                    .state()
                    .iter()
                    .filter(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                    })
                    .map(|p| ObjectRef::from_obj(&**p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown);
    super::run(
        COMPONENT,
        controller,
        Arc::new(Context { client }),
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

/// The verdict of `tolerations` on `taints` (`NoExecute` ones count).
fn verdict(tolerations: &[Toleration], taints: &[Taint]) -> Verdict {
    let mut evict_at: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Verdict::EvictedNow;
        }
        // Tolerated for ever by one: this taint never evicts.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint
            .time_added
            .as_ref()
            .map_or_else(jiff::Timestamp::now, |t| t.0);
        let at = added
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(added);
        evict_at = Some(evict_at.map_or(at, |e| e.min(at)));
    }
    evict_at.map_or(Verdict::Stays, Verdict::EvictedAt)
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(Action::await_change());
    };
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    if pod.metadata.deletion_timestamp.is_some() || finished {
        return Ok(Action::await_change());
    }
    let Some(node) = Api::<Node>::all(ctx.client.clone())
        .get_opt(&node_name)
        .await?
    else {
        return Ok(Action::await_change());
    };
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let now = jiff::Timestamp::now();
    match verdict(&tolerations, &taints) {
        Verdict::Stays => Ok(Action::await_change()),
        Verdict::EvictedAt(at) if at > now => Ok(Action::requeue(
            Duration::try_from(now.duration_until(at)).unwrap_or_default()
                + Duration::from_millis(100),
        )),
        Verdict::EvictedAt(_) | Verdict::EvictedNow => {
            evict(&pod, &ctx).await?;
            Ok(Action::await_change())
        }
    }
}

/// Marks the pod as a disruption target and deletes it.
async fn evict(pod: &Pod, ctx: &Context) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }]}});
    match pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let message = format!("Marking for deletion Pod {namespace}/{name}");
    super::record_event(
        &ctx.client,
        pod,
        COMPONENT,
        "Normal",
        "TaintManagerEviction",
        &message,
    )
    .await;
    tracing::info!(pod = %format!("{namespace}/{name}"), "evicted: NoExecute taint");
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn taint(key: &str, added: i64) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(jiff::Timestamp::from_second(added).unwrap())),
            ..Taint::default()
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Toleration::default()
        }
    }

    #[test]
    fn no_execute_taints_evict_when_their_toleration_runs_out() {
        let unreachable = "node.kubernetes.io/unreachable";
        assert_eq!(verdict(&[], &[]), Verdict::Stays);
        assert_eq!(
            verdict(&[], &[taint(unreachable, 100)]),
            Verdict::EvictedNow
        );
        assert_eq!(
            verdict(
                &[toleration(unreachable, Some(300))],
                &[taint(unreachable, 100)]
            ),
            Verdict::EvictedAt(jiff::Timestamp::from_second(400).unwrap())
        );
        assert_eq!(
            verdict(&[toleration(unreachable, None)], &[taint(unreachable, 100)]),
            Verdict::Stays
        );
        let mut no_schedule = taint("dedicated", 100);
        no_schedule.effect = "NoSchedule".into();
        assert_eq!(
            verdict(&[], &[no_schedule]),
            Verdict::Stays,
            "only NoExecute evicts"
        );
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        assert_eq!(verdict(&[everything], &[taint("x", 1)]), Verdict::Stays);
        let equal_without_key = Toleration {
            value: Some("v".into()),
            ..Toleration::default()
        };
        assert!(!tolerates(&equal_without_key, &taint("x", 1)));
    }
}
