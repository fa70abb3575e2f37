//! The ReplicaSet and ReplicationController controllers
//! (kube-controller-manager's `replicaset` and `replicationcontroller`,
//! one code for both): keep `spec.replicas` active pods made from the
//! template, claim the pods the selector matches (adopting orphans,
//! releasing children whose labels no longer match), delete surplus pods
//! in Kubernetes' order, and report the counts in the status. Creations
//! go in doubling batches (1, 2, 4 …, at most 500 per pass) that stop at
//! the first refusal: a template the API refuses costs one request per
//! retry, and the retries back off.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::{json, Map, Value};

use super::claim::{self, Namespaced};
use super::Backoff;

/// Most pods created or deleted in one pass (kube-controller-manager's
/// `burstReplicas`).
const BURST: usize = 500;

/// What the controller reads of a ReplicaSet or a ReplicationController.
pub(super) trait Replicated: Namespaced {
    /// The controller's name, as events give it.
    const COMPONENT: &'static str;
    /// `spec.replicas`.
    fn replicas(&self) -> i32;
    /// The selector; `None` when it is missing or selects everything.
    fn selector(&self) -> Option<Selector>;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// The status as stored (absent fields absent).
    fn status_value(&self) -> Value {
        serde_json::to_value(self).map_or(Value::Null, |v| v["status"].clone())
    }
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<Selector> {
        let selector = Selector::try_from(self.spec.as_ref()?.selector.clone()).ok()?;
        (!selector.selects_all()).then_some(selector)
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<Selector> {
        let labels = self.spec.as_ref()?.selector.clone()?;
        (!labels.is_empty()).then(|| labels.into_iter().collect())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// A request failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Pods could not be created or deleted (also in the status, as the
    /// `ReplicaFailure` condition).
    #[error("{0}")]
    Replicas(String),
}

/// What a reconcile finds it must do about the number of pods.
#[derive(Debug)]
enum Plan {
    /// Fewer active pods than asked: create this many.
    Create(usize),
    /// More than asked: delete these, the first to go first.
    Delete(Vec<Pod>),
    /// As many as asked.
    Steady,
}

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// Runs the ReplicaSet and the ReplicationController controllers until
/// `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    tokio::join!(
        run_one::<ReplicaSet>(client.clone(), shutdown.clone()),
        run_one::<ReplicationController>(client, shutdown),
    );
}

async fn run_one<R: Replicated>(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(Api::<R>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    let controller = controller
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod| claim::owners_to_wake(&store, &pod, R::selector),
        )
        .graceful_shutdown_on(shutdown);
    super::run(
        R::COMPONENT,
        controller,
        Arc::new(Context { client }),
        Arc::new(Backoff::default()),
        reconcile::<R>,
    )
    .await;
}

/// Brings one owner's pods to its replicas and writes its status.
async fn reconcile<R: Replicated>(owner: Arc<R>, ctx: Arc<Context>) -> Result<Action, Error> {
    let Some(selector) = owner.selector() else {
        return Ok(Action::await_change());
    };
    let namespace = owner.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace);
    let listed = pods.list(&ListParams::default()).await?.items;
    let owned = claim::claim(&ctx.client, &*owner, &selector, listed).await?;
    if owner.meta().deletion_timestamp.is_some() {
        // The garbage collector deals with the pods now.
        return Ok(Action::await_change());
    }
    let active: Vec<&Pod> = owned.iter().filter(|p| is_active(p)).collect();
    let want = usize::try_from(owner.replicas()).unwrap_or(0);
    let plan = if active.len() < want {
        Plan::Create((want - active.len()).min(BURST))
    } else if active.len() > want {
        let mut ranked: Vec<Pod> = active.iter().map(|p| (*p).clone()).collect();
        ranked.sort_by_key(deletion_rank);
        ranked.truncate((active.len() - want).min(BURST));
        Plan::Delete(ranked)
    } else {
        Plan::Steady
    };
    let failure = match plan {
        Plan::Create(n) => create(&*owner, n, &pods, &ctx).await,
        Plan::Delete(surplus) => delete(&*owner, surplus, &pods, &ctx).await,
        Plan::Steady => None,
    };
    let now = jiff::Timestamp::now();
    let (status, wait) = status(&*owner, &owned, failure.as_ref(), now);
    write_status(&*owner, status, &ctx).await?;
    if let Some((_, message)) = failure {
        return Err(Error::Replicas(message));
    }
    Ok(wait.map_or_else(Action::await_change, Action::requeue))
}

/// Not being deleted and not finished.
fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// When the pod's Ready condition last became true, if it is true.
fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let ready = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(jiff::Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// The order surplus pods go in (smallest first), as Kubernetes'
/// ActivePods: unscheduled before scheduled, Pending before Unknown
/// before Running, not ready before ready, ready for less time before
/// longer, more restarts before fewer, newer before older.
fn deletion_rank(pod: &Pod) -> impl Ord {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        Some(_) => 3,
    };
    let ready = ready_since(pod);
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        scheduled,
        phase,
        ready.is_some(),
        Reverse(ready),
        Reverse(restarts),
        Reverse(created),
    )
}

/// Creates `n` pods from the template in doubling batches; returns the
/// first refusal (reason, message), after which no more are tried.
async fn create<R: Replicated>(
    owner: &R,
    n: usize,
    pods: &Api<Pod>,
    ctx: &Context,
) -> Option<(&'static str, String)> {
    let Some(template) = owner.template() else {
        return Some(("FailedCreate", "the pod template is missing".to_owned()));
    };
    let mut pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    pod.metadata.name = None;
    pod.metadata.generate_name = Some(format!("{}-", owner.name_any()));
    pod.metadata.namespace = owner.namespace();
    pod.metadata.owner_references = Some(vec![claim::owner_reference(owner)]);
    let mut done = 0;
    let mut batch = 1;
    while done < n {
        let size = batch.min(n - done);
        let params = PostParams::default();
        let created =
            futures_util::future::join_all((0..size).map(|_| pods.create(&params, &pod))).await;
        let mut failure = None;
        for result in created {
            match result {
                Ok(p) => {
                    let message = format!("Created pod: {}", p.name_any());
                    super::record_event(
                        &ctx.client,
                        owner,
                        R::COMPONENT,
                        "Normal",
                        "SuccessfulCreate",
                        &message,
                    )
                    .await;
                }
                Err(e) => failure = Some(api_message(e)),
            }
        }
        if let Some(message) = failure {
            let message = format!("Error creating: {message}");
            super::record_event(
                &ctx.client,
                owner,
                R::COMPONENT,
                "Warning",
                "FailedCreate",
                &message,
            )
            .await;
            return Some(("FailedCreate", message));
        }
        done += size;
        batch *= 2;
    }
    None
}

/// Deletes the surplus pods; returns the first failure (reason, message).
async fn delete<R: Replicated>(
    owner: &R,
    surplus: Vec<Pod>,
    pods: &Api<Pod>,
    ctx: &Context,
) -> Option<(&'static str, String)> {
    let deletes = surplus.iter().map(|pod| {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        async move {
            let name = pod.name_any();
            (name.clone(), pods.delete(&name, &params).await)
        }
    });
    let mut failure = None;
    for (name, result) in futures_util::future::join_all(deletes).await {
        let (kind, reason, message) = match result {
            Ok(_) => ("Normal", "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => {
                let message = format!("Error deleting: {}", api_message(e));
                failure = Some(("FailedDelete", message.clone()));
                ("Warning", "FailedDelete", message)
            }
        };
        super::record_event(&ctx.client, owner, R::COMPONENT, kind, reason, &message).await;
    }
    failure
}

/// The message of an API error (the server's own words when it gave any).
fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(e) => e.message,
        other => other.to_string(),
    }
}

/// The status the owned pods give (fields Kubernetes omits when zero
/// left out), and how long until a ready pod becomes available.
fn status<R: Replicated>(
    owner: &R,
    owned: &[Pod],
    failure: Option<&(&'static str, String)>,
    now: jiff::Timestamp,
) -> (Value, Option<Duration>) {
    let template_labels = owner
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = jiff::SignedDuration::from_secs(owner.min_ready_seconds().max(0).into());
    let mut replicas = 0;
    let mut fully_labeled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut wait: Option<Duration> = None;
    for pod in owned.iter().filter(|p| is_active(p)) {
        replicas += 1;
        if template_labels
            .iter()
            .all(|(k, v)| pod.labels().get(k) == Some(v))
        {
            fully_labeled += 1;
        }
        let Some(since) = ready_since(pod) else {
            continue;
        };
        ready += 1;
        let available_at = since.checked_add(min_ready).unwrap_or(since);
        if available_at <= now {
            available += 1;
        } else {
            let left = Duration::try_from(now.duration_until(available_at)).unwrap_or_default();
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
    }
    let mut status = Map::new();
    status.insert("replicas".into(), json!(replicas));
    for (field, n) in [
        ("fullyLabeledReplicas", fully_labeled),
        ("readyReplicas", ready),
        ("availableReplicas", available),
    ] {
        if n > 0 {
            status.insert(field.into(), json!(n));
        }
    }
    if let Some(generation) = owner.meta().generation {
        status.insert("observedGeneration".into(), json!(generation));
    }
    if let Some((reason, message)) = failure {
        // The same failure keeps its transition time.
        let current = owner.status_value();
        let since = current["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "ReplicaFailure" && c["reason"] == *reason)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()));
        status.insert(
            "conditions".into(),
            json!([{"type": "ReplicaFailure", "status": "True", "reason": reason,
                "message": message, "lastTransitionTime": since}]),
        );
    }
    (Value::Object(status), wait)
}

/// Writes `status` if it differs from the stored one (fields it lacks are
/// removed).
async fn write_status<R: Replicated>(owner: &R, status: Value, ctx: &Context) -> Result<(), Error> {
    let current = owner.status_value();
    if current == status {
        return Ok(());
    }
    let mut patch = status;
    for key in current.as_object().into_iter().flatten().map(|(k, _)| k) {
        if patch.get(key).is_none() {
            patch[key] = Value::Null;
        }
    }
    let api = Api::<R>::namespaced(ctx.client.clone(), &owner.namespace().unwrap_or_default());
    match api
        .patch_status(
            &owner.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": patch})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_at: Option<i64>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.spec = Some(PodSpec {
            node_name: node.map(String::from),
            ..PodSpec::default()
        });
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: ready_at.map(|t| {
                vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())),
                    ..PodCondition::default()
                }]
            }),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn surplus_pods_go_in_kubernetes_order() {
        let mut pods = [
            pod("ready-long", Some("n1"), "Running", Some(100)),
            pod("ready-recent", Some("n1"), "Running", Some(200)),
            pod("running-not-ready", Some("n1"), "Running", None),
            pod("pending", Some("n1"), "Pending", None),
            pod("unscheduled", None, "Pending", None),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "running-not-ready",
                "ready-recent",
                "ready-long"
            ]
        );
    }

    #[test]
    fn status_counts_availability_after_min_ready_seconds() {
        let mut rs = ReplicaSet::default();
        rs.metadata.generation = Some(3);
        rs.spec = Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            min_ready_seconds: Some(10),
            ..Default::default()
        });
        let now = jiff::Timestamp::from_second(1_000).unwrap();
        let pods = [
            pod("a", Some("n"), "Running", Some(900)),
            pod("b", Some("n"), "Running", Some(995)),
            pod("c", Some("n"), "Pending", None),
            pod("d", Some("n"), "Succeeded", None),
        ];
        let (status, wait) = status(&rs, &pods, None, now);
        assert_eq!(
            status,
            json!({"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 2,
                "availableReplicas": 1, "observedGeneration": 3})
        );
        assert_eq!(wait, Some(Duration::from_secs(5)));
        let failure = ("FailedCreate", "Error creating: no".to_owned());
        let (status, _) = super::status(&rs, &[], Some(&failure), now);
        assert_eq!(status["conditions"][0]["type"], "ReplicaFailure");
        assert_eq!(status["replicas"], 0);
        assert!(status.get("readyReplicas").is_none());
    }
}
