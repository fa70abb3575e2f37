//! The Deployment controller (kube-controller-manager's): each version of
//! a Deployment's pod template gets a ReplicaSet named
//! `<deployment>-<pod-template-hash>` (the hash also labels its pods and
//! narrows its selector), numbered by the `deployment.kubernetes.io/revision`
//! annotation; the controller moves replicas from the old ReplicaSets to
//! the new one — `RollingUpdate` within `maxSurge` and `maxUnavailable`,
//! `Recreate` by scaling the old ones to zero and waiting for their pods
//! to go first — keeps `revisionHistoryLimit` old ReplicaSets for
//! `kubectl rollout undo`, stands still while `paused` (scaling only), and
//! reports counts and the `Available`, `Progressing` (with
//! `progressDeadlineSeconds`) and `ReplicaFailure` conditions, as
//! `kubectl rollout status` reads them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::{json, Map, Value};

use super::claim;
use super::Backoff;

/// The revision of a ReplicaSet (and of the Deployment: its newest).
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The Deployment's replicas when the ReplicaSet was last scaled.
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The most pods the rollout allowed then (replicas + maxSurge).
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label telling apart the pods of a Deployment's ReplicaSets.
const TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotations of a Deployment not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/revision-history",
];
/// The controller's name in events.
const COMPONENT: &str = "deployment-controller";
/// How soon a Recreate rollout looks again for old pods still running.
const RECREATE_POLL: Duration = Duration::from_secs(1);

/// Where a rollout stands: the reason of the `Progressing` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rollout {
    /// `paused`: nothing rolls until it is resumed.
    Paused,
    /// Resumed after a pause, no progress seen yet.
    Resumed,
    /// The new ReplicaSet was created by this pass.
    NewReplicaSetCreated,
    /// The new ReplicaSet existed when the controller first looked.
    FoundNewReplicaSet,
    /// Pods moved since the last look.
    ReplicaSetUpdated,
    /// Every replica is updated and available.
    Complete,
    /// No progress for `progressDeadlineSeconds`.
    TimedOut,
}

impl Rollout {
    /// The condition's status, reason and message for ReplicaSet `rs`.
    fn condition(self, rs: &str) -> (&'static str, &'static str, String) {
        match self {
            Self::Paused => ("Unknown", "DeploymentPaused", "Deployment is paused".into()),
            Self::Resumed => (
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            ),
            Self::NewReplicaSetCreated => (
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs}\""),
            ),
            Self::FoundNewReplicaSet => (
                "True",
                "FoundNewReplicaSet",
                format!("Found new replica set \"{rs}\""),
            ),
            Self::ReplicaSetUpdated => (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs}\" is progressing."),
            ),
            Self::Complete => (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs}\" has successfully progressed."),
            ),
            Self::TimedOut => (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{rs}\" has timed out progressing."),
            ),
        }
    }
}

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// Runs the controller until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let controller = controller
        .watches(
            Api::<ReplicaSet>::all(client.clone()),
            watcher::Config::default(),
            move |rs| claim::owners_to_wake(&store, &rs, selector),
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

/// The Deployment's selector; `None` when it is missing or selects
/// everything.
fn selector(d: &Deployment) -> Option<Selector> {
    let selector = Selector::try_from(d.spec.as_ref()?.selector.clone()).ok()?;
    (!selector.selects_all()).then_some(selector)
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// `maxSurge` and `maxUnavailable` as numbers of pods (percentages of
/// the replicas, surge rounded up and unavailable down; never both 0).
fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let total = replicas(d);
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let resolve = |value: Option<&IntOrString>, round_up: bool| -> i32 {
        match value {
            None => {
                let quarter = f64::from(total) * 0.25;
                (if round_up {
                    quarter.ceil()
                } else {
                    quarter.floor()
                }) as i32
            }
            Some(IntOrString::Int(n)) => (*n).max(0),
            Some(IntOrString::String(s)) => {
                let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
                let n = f64::from(total) * percent / 100.0;
                (if round_up { n.ceil() } else { n.floor() }).max(0.0) as i32
            }
        }
    };
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), true);
    let unavailable = resolve(rolling.and_then(|r| r.max_unavailable.as_ref()), false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The template as compared and hashed: without the `pod-template-hash`
/// label, and with empty objects, lists and nulls left out (clients write
/// `resources: {}` where the server stored nothing; Kubernetes compares
/// such templates as equal).
fn without_hash(template: &PodTemplateSpec) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    pruned(serde_json::to_value(&t).unwrap_or(Value::Null)).unwrap_or(Value::Null)
}

/// `v` without nulls, empty objects and empty lists (`None` if nothing is
/// left).
fn pruned(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(map) => {
            let kept: Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| pruned(v).map(|v| (k, v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .into_iter()
                .map(|v| pruned(v).unwrap_or(Value::Null))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        other => Some(other),
    }
}

/// The pod-template-hash of a template, as Kubernetes spells it: a
/// 32-bit FNV-1a of the template as compared (and the collision count) written in
/// decimal and each digit mapped to a consonant or digit.
fn template_hash(template: &PodTemplateSpec, collisions: i32) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let text = without_hash(template).to_string();
    for b in text.bytes().chain(collisions.to_string().bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

/// One pass over a Deployment: its ReplicaSets, the rollout step, status.
async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let (Some(selector), Some(template)) =
        (selector(&d), d.spec.as_ref().map(|s| s.template.clone()))
    else {
        return Ok(Action::await_change());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or_default();
    let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &namespace);
    let listed = sets.list(&ListParams::default()).await?.items;
    let mut owned = claim::claim(&ctx.client, &*d, &selector, listed).await?;
    owned.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let collisions = d
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let hash = template_hash(&template, collisions);
    let wanted = without_hash(&template);
    let new_index = owned
        .iter()
        .position(|rs| rs.labels().get(TEMPLATE_HASH) == Some(&hash))
        .or_else(|| {
            owned.iter().position(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| without_hash(t) == wanted)
            })
        });
    let mut new_rs = new_index.map(|i| owned.remove(i));
    let mut old = owned;
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let mut rollout = None;
    let mut wait = None;

    if paused {
        // Only scaling: the one ReplicaSet with pods follows the replicas.
        let mut active: Vec<&mut ReplicaSet> = new_rs
            .iter_mut()
            .chain(old.iter_mut())
            .filter(|rs| rs_replicas(rs) > 0)
            .collect();
        if active.len() == 1 {
            let rs = &mut active[0];
            scale(&ctx, &d, rs, replicas(&d)).await?;
        }
        rollout = Some(Rollout::Paused);
    } else {
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        if let Some(rs) = new_rs.as_mut() {
            if revision(rs) <= max_old {
                // An old template back (`rollout undo`): newest revision.
                set_revision(&ctx, &d, rs, max_old + 1).await?;
            }
            if !was_seen(&d) {
                rollout = Some(Rollout::FoundNewReplicaSet);
            }
        }
        if is_recreate(&d) {
            let mut scaled = false;
            for rs in old.iter_mut().filter(|rs| rs_replicas(rs) > 0) {
                scale(&ctx, &d, rs, 0).await?;
                scaled = true;
            }
            if scaled || old_pods_running(&ctx, &namespace, &old).await? {
                wait = Some(RECREATE_POLL);
            } else {
                match new_rs.as_mut() {
                    Some(rs) => scale(&ctx, &d, rs, replicas(&d)).await?,
                    None => {
                        new_rs = Some(
                            create(&ctx, &d, &template, &hash, max_old + 1, replicas(&d)).await?,
                        );
                        rollout = Some(Rollout::NewReplicaSetCreated);
                    }
                }
            }
        } else {
            let (surge, unavailable) = surge_and_unavailable(&d);
            let want = replicas(&d);
            let current: i32 = new_rs.iter().chain(old.iter()).map(rs_replicas).sum();
            match new_rs.as_mut() {
                None => {
                    let n = (want + surge - current).clamp(0, want);
                    new_rs = Some(create(&ctx, &d, &template, &hash, max_old + 1, n).await?);
                    rollout = Some(Rollout::NewReplicaSetCreated);
                }
                Some(rs) => {
                    let n = rs_replicas(rs);
                    if n > want {
                        scale(&ctx, &d, rs, want).await?;
                    } else if n < want && current < want + surge {
                        let up = (want + surge - current).min(want - n);
                        scale(&ctx, &d, rs, n + up).await?;
                    } else {
                        scale_down_old(&ctx, &d, rs, &mut old, unavailable).await?;
                    }
                }
            }
        }
    }

    if let Some(rs) = new_rs.as_ref() {
        annotate_revision(&ctx, &d, revision(rs)).await?;
    }
    let status = status(&d, new_rs.as_ref(), &old, rollout, jiff::Timestamp::now());
    let complete = status.rollout == Rollout::Complete;
    write_status(&ctx, &d, status.value).await?;
    if complete {
        clean_up(&ctx, &d, &old).await?;
    }
    Ok(match (wait, status.deadline) {
        (Some(a), Some(b)) => Action::requeue(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Action::requeue(a),
        (None, None) => Action::await_change(),
    })
}

/// Whether the Deployment's status already names a ReplicaSet (its
/// `Progressing` condition exists).
fn was_seen(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Progressing"))
}

/// Scales the old ReplicaSets down as far as `maxUnavailable` allows:
/// first their pods that are not available, then, oldest ReplicaSet
/// first, as many as exceed the minimum available.
async fn scale_down_old(
    ctx: &Context,
    d: &Deployment,
    new_rs: &ReplicaSet,
    old: &mut [ReplicaSet],
    unavailable: i32,
) -> Result<(), kube::Error> {
    let old_pods: i32 = old.iter().map(rs_replicas).sum();
    if old_pods == 0 {
        return Ok(());
    }
    let all_pods = old_pods + rs_replicas(new_rs);
    let min_available = replicas(d) - unavailable;
    let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // Pods that are not available go first: they cost no availability.
    for rs in old.iter_mut() {
        let unhealthy = rs_replicas(rs) - rs_available(rs);
        if budget <= 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(budget);
        let n = rs_replicas(rs) - down;
        scale(ctx, d, rs, n).await?;
        budget -= down;
    }
    let available: i32 = old.iter().map(rs_available).sum::<i32>() + rs_available(new_rs);
    let mut excess = available - min_available;
    for rs in old.iter_mut() {
        if excess <= 0 {
            break;
        }
        let down = rs_replicas(rs).min(excess);
        if down > 0 {
            let n = rs_replicas(rs) - down;
            scale(ctx, d, rs, n).await?;
            excess -= down;
        }
    }
    Ok(())
}

/// Whether pods of the old ReplicaSets still run (or are still going).
async fn old_pods_running(
    ctx: &Context,
    namespace: &str,
    old: &[ReplicaSet],
) -> Result<bool, kube::Error> {
    if old.is_empty() {
        return Ok(false);
    }
    let uids: Vec<String> = old.iter().filter_map(|rs| rs.uid()).collect();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    Ok(pods.items.iter().any(|p| {
        claim::controller_of(p).is_some_and(|o| uids.contains(&o.uid))
            && !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
    }))
}

/// The annotations a ReplicaSet of `d` carries.
fn annotations(d: &Deployment, revision: i64) -> BTreeMap<String, String> {
    let (surge, _) = surge_and_unavailable(d);
    let mut annotations: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), replicas(d).to_string());
    annotations.insert(MAX_REPLICAS.into(), (replicas(d) + surge).to_string());
    annotations
}

/// Creates the ReplicaSet of the current template with `n` replicas.
async fn create(
    ctx: &Context,
    d: &Deployment,
    template: &PodTemplateSpec,
    hash: &str,
    revision: i64,
    n: i32,
) -> Result<ReplicaSet, kube::Error> {
    let namespace = d.namespace().unwrap_or_default();
    let name = format!("{}-{hash}", d.name_any());
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH.into(), hash.into());
    let labels = meta.labels.clone().unwrap_or_default();
    let mut selector = d
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH.into(), hash.into());
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": namespace, "labels": labels,
            "annotations": annotations(d, revision),
            "ownerReferences": [claim::owner_reference(d)],
        },
        "spec": {
            "replicas": n, "selector": selector, "template": template,
            "minReadySeconds": d.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0),
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &namespace);
    match sets.create(&PostParams::default(), &rs).await {
        Ok(created) => {
            scaling_event(ctx, d, &name, 0, n).await;
            Ok(created)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Another ReplicaSet holds the name (a hash collision): the next
            // pass hashes with a higher collision count.
            let collisions = d
                .status
                .as_ref()
                .and_then(|s| s.collision_count)
                .unwrap_or(0);
            Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
                .patch_status(
                    &d.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": collisions + 1}})),
                )
                .await?;
            Err(kube::Error::Api(e))
        }
        Err(e) => Err(e),
    }
}

/// Sets a ReplicaSet's replicas (and the annotations saying for which
/// Deployment size), with an event.
async fn scale(
    ctx: &Context,
    d: &Deployment,
    rs: &mut ReplicaSet,
    n: i32,
) -> Result<(), kube::Error> {
    let from = rs_replicas(rs);
    let (surge, _) = surge_and_unavailable(d);
    let desired = replicas(d).to_string();
    let max = (replicas(d) + surge).to_string();
    let annotated = rs.annotations().get(DESIRED_REPLICAS) == Some(&desired)
        && rs.annotations().get(MAX_REPLICAS) == Some(&max);
    if from == n && annotated {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"annotations": {DESIRED_REPLICAS: desired, MAX_REPLICAS: max}},
        "spec": {"replicas": n},
    });
    *rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default())
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    if from != n {
        scaling_event(ctx, d, &rs.name_any(), from, n).await;
    }
    Ok(())
}

/// The `ScalingReplicaSet` event of a ReplicaSet going from `from` to `to`
/// replicas.
async fn scaling_event(ctx: &Context, d: &Deployment, rs: &str, from: i32, to: i32) {
    let direction = if to > from { "up" } else { "down" };
    let message = format!("Scaled {direction} replica set {rs} from {from} to {to}");
    super::record_event(
        &ctx.client,
        d,
        COMPONENT,
        "Normal",
        "ScalingReplicaSet",
        &message,
    )
    .await;
}

/// Gives a ReplicaSet a new revision (and the Deployment's annotations).
async fn set_revision(
    ctx: &Context,
    d: &Deployment,
    rs: &mut ReplicaSet,
    revision: i64,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"annotations": annotations(d, revision)}});
    *rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default())
        .patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    Ok(())
}

/// Writes the newest revision on the Deployment (`kubectl rollout` reads
/// it there), if it is not there yet.
async fn annotate_revision(
    ctx: &Context,
    d: &Deployment,
    revision: i64,
) -> Result<(), kube::Error> {
    let revision = revision.to_string();
    if d.annotations().get(REVISION) == Some(&revision) {
        return Ok(());
    }
    let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
    Api::<Deployment>::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default())
        .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Deletes the oldest ReplicaSets without pods beyond
/// `revisionHistoryLimit`.
async fn clean_up(ctx: &Context, d: &Deployment, old: &[ReplicaSet]) -> Result<(), kube::Error> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0);
    let mut empty: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| rs_replicas(rs) == 0)
        .filter(|rs| rs.status.as_ref().map_or(0, |s| s.replicas) == 0)
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let surplus = empty
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    empty.sort_by_key(|rs| revision(rs));
    for rs in empty.into_iter().take(surplus) {
        match Api::<ReplicaSet>::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default())
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A Deployment's status, where its rollout stands, and how long until
/// its progress deadline passes.
struct Status {
    value: Value,
    rollout: Rollout,
    deadline: Option<Duration>,
}

/// The status the ReplicaSets give; `rollout` is this pass's own news
/// (created or found a ReplicaSet, paused), if any.
fn status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    rollout: Option<Rollout>,
    now: jiff::Timestamp,
) -> Status {
    let all = new_rs.into_iter().chain(old.iter());
    let count = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
        new_rs
            .into_iter()
            .chain(old.iter())
            .filter_map(|rs| rs.status.as_ref())
            .map(f)
            .sum()
    };
    let replicas_now = count(|s| s.replicas);
    let ready = count(|s| s.ready_replicas.unwrap_or(0));
    let available = count(|s| s.available_replicas.unwrap_or(0));
    let updated = new_rs
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let want = replicas(d);
    let (_, max_unavailable) = surge_and_unavailable(d);
    let previous = d.status.clone().unwrap_or_default();
    let complete = new_rs.is_some()
        && updated == want
        && replicas_now == want
        && available == want
        && all.clone().filter(|rs| rs_replicas(rs) > 0).count() <= 1;
    let progressed = updated > previous.updated_replicas.unwrap_or(0)
        || replicas_now < previous.replicas.unwrap_or(0)
        || ready > previous.ready_replicas.unwrap_or(0)
        || available > previous.available_replicas.unwrap_or(0);
    let progressing = previous
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let last_update = progressing.and_then(|c| c.last_update_time.as_ref().map(|t| t.0));
    let timed_out_at = last_update.and_then(|t| {
        t.checked_add(jiff::SignedDuration::from_secs(deadline.into()))
            .ok()
    });
    let rollout = match rollout {
        Some(r) => r,
        None if complete => Rollout::Complete,
        None if progressed => Rollout::ReplicaSetUpdated,
        None if progressing.is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused")) => {
            Rollout::Resumed
        }
        None if timed_out_at.is_some_and(|t| t <= now) => Rollout::TimedOut,
        None => match progressing.and_then(|c| c.reason.as_deref()) {
            Some("NewReplicaSetCreated") => Rollout::NewReplicaSetCreated,
            Some("FoundNewReplicaSet") => Rollout::FoundNewReplicaSet,
            Some("NewReplicaSetAvailable") => Rollout::Complete,
            Some("ProgressDeadlineExceeded") => Rollout::TimedOut,
            Some("DeploymentResumed") => Rollout::Resumed,
            _ => Rollout::ReplicaSetUpdated,
        },
    };
    let timestamp = |t: jiff::Timestamp| json!(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let rs_name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
    let (status, reason, message) = rollout.condition(&rs_name);
    let same = progressing.is_some_and(|c| {
        c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message.as_str())
    });
    let moved = same && rollout == Rollout::ReplicaSetUpdated && progressed;
    let keep = |field: fn(
        &k8s_openapi::api::apps::v1::DeploymentCondition,
    ) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        progressing
            .and_then(field)
            .map_or_else(|| timestamp(now), |t| timestamp(t.0))
    };
    let progressing_condition = json!({
        "type": "Progressing", "status": status, "reason": reason, "message": message,
        "lastUpdateTime": if same && !moved { keep(|c| c.last_update_time.as_ref()) } else { timestamp(now) },
        "lastTransitionTime": if progressing.is_some_and(|c| c.status == status) {
            keep(|c| c.last_transition_time.as_ref())
        } else {
            timestamp(now)
        },
    });
    let minimum = available >= want - max_unavailable;
    let (a_status, a_reason, a_message) = if minimum {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let previous_available = previous
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Available");
    let available_same = previous_available
        .is_some_and(|c| c.status == a_status && c.reason.as_deref() == Some(a_reason));
    let available_condition = json!({
        "type": "Available", "status": a_status, "reason": a_reason, "message": a_message,
        "lastUpdateTime": previous_available.filter(|_| available_same)
            .and_then(|c| c.last_update_time.as_ref()).map_or_else(|| timestamp(now), |t| timestamp(t.0)),
        "lastTransitionTime": previous_available.filter(|_| available_same)
            .and_then(|c| c.last_transition_time.as_ref()).map_or_else(|| timestamp(now), |t| timestamp(t.0)),
    });
    let mut conditions = vec![available_condition, progressing_condition];
    // A ReplicaSet that cannot make pods says why.
    let failure = new_rs
        .into_iter()
        .chain(old.iter())
        .filter_map(|rs| rs.status.as_ref()?.conditions.as_ref())
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True");
    if let Some(f) = failure {
        conditions.push(json!({
            "type": "ReplicaFailure", "status": "True", "reason": f.reason, "message": f.message,
            "lastUpdateTime": f.last_transition_time, "lastTransitionTime": f.last_transition_time,
        }));
    }
    let mut value = Map::new();
    for (field, n) in [
        ("replicas", replicas_now),
        ("updatedReplicas", updated),
        ("readyReplicas", ready),
        ("availableReplicas", available),
        ("unavailableReplicas", (want - available).max(0)),
    ] {
        if n > 0 {
            value.insert(field.into(), json!(n));
        }
    }
    if let Some(generation) = d.metadata.generation {
        value.insert("observedGeneration".into(), json!(generation));
    }
    if let Some(c) = previous.collision_count {
        value.insert("collisionCount".into(), json!(c));
    }
    value.insert("conditions".into(), Value::Array(conditions));
    let waiting = !complete && !matches!(rollout, Rollout::Paused | Rollout::TimedOut);
    let deadline = if waiting {
        let last = if same && !moved {
            last_update.unwrap_or(now)
        } else {
            now
        };
        last.checked_add(jiff::SignedDuration::from_secs(deadline.into()))
            .ok()
            .map(|t| Duration::try_from(now.duration_until(t)).unwrap_or_default())
            .map(|d| d.max(Duration::from_secs(1)))
    } else {
        None
    };
    Status {
        value: Value::Object(value),
        rollout,
        deadline,
    }
}

/// Writes the status and the Deployment's revision annotation where they
/// changed.
async fn write_status(ctx: &Context, d: &Deployment, status: Value) -> Result<(), kube::Error> {
    let api = Api::<Deployment>::namespaced(ctx.client.clone(), &d.namespace().unwrap_or_default());
    let current = serde_json::to_value(d).map_or(Value::Null, |v| v["status"].clone());
    if current != status {
        let mut patch = status;
        for key in current.as_object().into_iter().flatten().map(|(k, _)| k) {
            if patch.get(key).is_none() {
                patch[key] = Value::Null;
            }
        }
        match api
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": patch})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i32, surge: Option<&str>, unavailable: Option<&str>) -> Deployment {
        let rolling = json!({"maxSurge": surge.map(|s| s.parse::<i32>().map_or(json!(s), |n| json!(n))),
            "maxUnavailable": unavailable.map(|s| s.parse::<i32>().map_or(json!(s), |n| json!(n)))});
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
                "template": {"metadata": {"labels": {"app": "web"}}}},
        }))
        .unwrap()
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(surge_and_unavailable(&deployment(4, None, None)), (1, 1));
        assert_eq!(surge_and_unavailable(&deployment(3, None, None)), (1, 0));
        assert_eq!(
            surge_and_unavailable(&deployment(10, Some("35%"), Some("35%"))),
            (4, 3)
        );
        assert_eq!(
            surge_and_unavailable(&deployment(3, Some("2"), Some("0"))),
            (2, 0)
        );
        // Never both zero: one pod may be unavailable.
        assert_eq!(
            surge_and_unavailable(&deployment(3, Some("0"), Some("0"))),
            (0, 1)
        );
    }

    #[test]
    fn template_hashes_are_stable_labels_that_ignore_the_hash_label() {
        let d = deployment(1, None, None);
        let template = d.spec.unwrap().template;
        let hash = template_hash(&template, 0);
        assert_eq!(hash, template_hash(&template, 0));
        assert_ne!(hash, template_hash(&template, 1), "collisions change it");
        assert!(
            hash.len() <= 10
                && hash
                    .bytes()
                    .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        let mut labelled = template.clone();
        labelled.spec = Some(Default::default());
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(TEMPLATE_HASH.into(), hash.clone());
        assert_eq!(without_hash(&labelled), without_hash(&template));
        assert_eq!(
            template_hash(&labelled, 0),
            hash,
            "empty fields do not count"
        );
    }

    #[test]
    fn a_finished_rollout_is_complete_and_available() {
        let d = deployment(2, None, None);
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-abc"},
            "spec": {"replicas": 2, "selector": {}},
            "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2},
        }))
        .unwrap();
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let s = status(&d, Some(&rs), &[], None, now);
        assert_eq!(s.rollout, Rollout::Complete);
        assert_eq!(s.deadline, None);
        assert_eq!(s.value["updatedReplicas"], 2);
        assert!(s.value.get("unavailableReplicas").is_none());
        let reasons: Vec<&str> = s.value["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["reason"].as_str().unwrap())
            .collect();
        assert_eq!(
            reasons,
            ["MinimumReplicasAvailable", "NewReplicaSetAvailable"]
        );
    }
}
