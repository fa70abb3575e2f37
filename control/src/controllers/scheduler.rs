//! The scheduler (kube-scheduler's job, its essentials), one pod at a
//! time: every pod without a node whose `schedulerName` is
//! `default-scheduler` is bound to a node that is Ready, schedulable,
//! matches the pod's `nodeSelector` and required node affinity, has no
//! taint the pod does not tolerate, none of the host ports it asks for in
//! use, and room for its requests (cpu, memory, pods, against
//! `status.allocatable`); among those, the one with the fewest replicas of
//! the pod's owner (spreading a ReplicaSet over nodes), then the fewest
//! pods, then the most free cpu. A pod that fits nowhere gets
//! `PodScheduled=False`, reason `Unschedulable`, and the message
//! kube-scheduler writes (`0/3 nodes are available: …`), and is tried again
//! when nodes change or after a while. A bound pod gets a `Scheduled`
//! event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, PodSpec, Taint};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Backoff;

/// The scheduler's name, which pods name in `spec.schedulerName`.
const SCHEDULER: &str = "default-scheduler";
/// How soon an unschedulable pod is tried again without a node change.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(30);

/// What the reconciles need.
struct Context {
    client: kube::Client,
}

/// Runs the scheduler until `shutdown`.
pub(super) async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pending = Controller::new(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields("spec.nodeName="),
    );
    let store = pending.store();
    let pending = pending
        // A node that changes may make room: every pending pod is tried.
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                store
                    .state()
                    .into_iter()
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        // One pod at a time, as kube-scheduler: each placement sees the
        // ones before it (replicas spread, ports and resources not
        // double-booked).
        .with_config(kube::runtime::controller::Config::default().concurrency(1))
        .graceful_shutdown_on(shutdown);
    super::run(
        "scheduler",
        pending,
        Arc::new(Context { client }),
        Arc::new(Backoff::default()),
        reconcile,
    )
    .await;
}

/// Binds one pod, or says why it cannot be.
async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let mine = spec.scheduler_name.as_deref().unwrap_or(SCHEDULER) == SCHEDULER;
    let bound = spec.node_name.as_deref().is_some_and(|n| !n.is_empty());
    if !mine || bound || pod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let result = schedule(&pod, &ctx).await;
    let outcome = match &result {
        Ok(Some(_)) => "unschedulable",
        Ok(None) => "scheduled",
        Err(_) => "error",
    };
    super::metrics(|m| m.scheduled(outcome, started.elapsed()));
    Ok(match result? {
        Some(retry) => Action::requeue(retry),
        None => Action::await_change(),
    })
}

/// Binds a pending pod to a node that fits, or records why none does;
/// returns when to try again if none does.
async fn schedule(pod: &Pod, ctx: &Context) -> Result<Option<std::time::Duration>, kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    match choose(pod, &nodes, &pods) {
        Ok(node) => {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
                .create_subresource::<serde_json::Value, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await?;
            super::record_event(
                &ctx.client,
                pod,
                SCHEDULER,
                "Normal",
                "Scheduled",
                &format!("Successfully assigned {namespace}/{name} to {node}"),
            )
            .await;
            tracing::info!(pod = %format!("{namespace}/{name}"), %node, "scheduled");
            Ok(None)
        }
        Err(message) => {
            let status = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message,
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]}});
            let already = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| {
                    c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str())
                });
            if !already {
                Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
                    .await?;
                super::record_event(
                    &ctx.client,
                    pod,
                    SCHEDULER,
                    "Warning",
                    "FailedScheduling",
                    &message,
                )
                .await;
            }
            Ok(Some(RETRY_UNSCHEDULABLE))
        }
    }
}

/// What a pod asks for: cpu in millicores, memory in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Request {
    cpu: u64,
    memory: u64,
}

fn requests(pod: &Pod) -> Request {
    let mut total = Request::default();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str| r.and_then(|r| r.get(k)).map(|q| q.0.as_str());
        total.cpu += get("cpu").and_then(millicores).unwrap_or(0);
        total.memory += get("memory").and_then(bytes).unwrap_or(0);
    }
    total
}

/// A cpu quantity in millicores (`250m`, `1`, `0.5`).
fn millicores(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q
            .parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| (v * 1000.0).round() as u64),
    }
}

/// A memory quantity in bytes (`128Mi`, `1G`, `1e9`, `1000`).
fn bytes(q: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    number
        .parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| (v * factor) as u64)
}

/// The uid of the pod's controller (its ReplicaSet, say), if any.
fn owner_uid(pod: &Pod) -> Option<&str> {
    super::claim::controller_of(pod).map(|o| o.uid.as_str())
}

/// The (protocol, host IP, host port) a pod asks for; host IP "" is all.
fn host_ports(spec: &PodSpec) -> Vec<(String, String, i32)> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some((
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_ip.clone().unwrap_or_default(),
                port,
            ))
        })
        .collect()
}

fn host_ports_of(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec.as_ref().map(host_ports).unwrap_or_default()
}

/// Whether the node satisfies the pod's required node affinity: any of
/// its terms, each with all expressions (on labels) and fields (on
/// `metadata.name`) true.
fn affinity_allows(spec: &PodSpec, node: &Node) -> bool {
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    let labels = node.labels();
    let name = node.name_any();
    required.node_selector_terms.iter().any(|term| {
        let expressions = term
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)));
        let fields = term
            .match_fields
            .iter()
            .flatten()
            .all(|r| r.key == "metadata.name" && requirement_holds(r, Some(&name)));
        let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
            && term.match_fields.as_ref().is_none_or(Vec::is_empty);
        !empty && expressions && fields
    })
}

/// One node selector requirement on `value` (`None`: no such label).
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

/// The node for `pod`, or kube-scheduler's message saying why none fits.
fn choose(pod: &Pod, nodes: &[Node], pods: &[Pod]) -> Result<String, String> {
    let wanted = requests(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let selector = spec.node_selector.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let tolerates = |taint: &Taint| {
        tolerations
            .iter()
            .any(|t| super::taint_eviction::tolerates(t, taint))
    };
    let owner = owner_uid(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut fits = Vec::new();
    for node in nodes {
        let node_name = node.name_any();
        let on_node: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
            })
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        let status = node.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let labels = node.labels();
        let node_spec = node.spec.clone().unwrap_or_default();
        let allocatable = status.allocatable.clone().unwrap_or_default();
        let limit = |k: &str| allocatable.get(k).map(|q| q.0.clone());
        let used = on_node.iter().fold(Request::default(), |acc, p| {
            let r = requests(p);
            Request {
                cpu: acc.cpu + r.cpu,
                memory: acc.memory + r.memory,
            }
        });
        let cpu_left = limit("cpu")
            .and_then(|q| millicores(&q))
            .map(|a| a.saturating_sub(used.cpu));
        let memory_left = limit("memory")
            .and_then(|q| bytes(&q))
            .map(|a| a.saturating_sub(used.memory));
        let max_pods = limit("pods").and_then(|q| q.parse::<usize>().ok());
        let untolerated_taint = node_spec
            .taints
            .iter()
            .flatten()
            .find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerates(t));
        let reason = if !ready {
            Some("node(s) were not ready".to_owned())
        } else if node_spec.unschedulable == Some(true)
            && !tolerates(&Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            })
        {
            Some("node(s) were unschedulable".to_owned())
        } else if let Some(t) = untolerated_taint {
            Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.clone().unwrap_or_default()
            ))
        } else if selector.iter().any(|(k, v)| labels.get(k) != Some(v))
            || !affinity_allows(&spec, node)
        {
            Some("node(s) didn't match Pod's node affinity/selector".to_owned())
        } else if host_ports(&spec)
            .iter()
            .any(|p| on_node.iter().any(|o| host_ports_of(o).contains(p)))
        {
            Some("node(s) didn't have free ports for the requested pod ports".to_owned())
        } else if max_pods.is_some_and(|m| on_node.len() >= m) {
            Some("Too many pods".to_owned())
        } else if cpu_left.is_some_and(|left| wanted.cpu > left) {
            Some("Insufficient cpu".to_owned())
        } else if memory_left.is_some_and(|left| wanted.memory > left) {
            Some("Insufficient memory".to_owned())
        } else {
            None
        };
        match reason {
            Some(r) => *reasons.entry(r).or_default() += 1,
            // Spread the replicas of one owner, then the pods, then cpu.
            None => fits.push((
                on_node
                    .iter()
                    .filter(|o| owner.is_some() && owner_uid(o) == owner)
                    .count(),
                on_node.len(),
                std::cmp::Reverse(cpu_left.unwrap_or(0)),
                node_name,
            )),
        }
    }
    fits.sort();
    if let Some((_, _, _, node)) = fits.into_iter().next() {
        return Ok(node);
    }
    let mut why: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    why.sort();
    let detail = if why.is_empty() {
        String::new()
    } else {
        format!(" {}.", why.join(", "))
    };
    Err(format!("0/{} nodes are available:{detail}", nodes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn pod(spec: serde_json::Value, node: Option<&str>, owner: Option<&str>) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c", "image": "i"}]);
        }
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let owners = owner.map(|uid| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid,
                "controller": true}])
        });
        serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": owners},
            "spec": spec}))
        .unwrap()
    }

    #[test]
    fn required_node_affinity_is_honoured() {
        let nodes = [
            node("a", json!({"zone": "a"})),
            node("b", json!({"zone": "b", "gen": "5"})),
        ];
        let affinity = |expressions: serde_json::Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": expressions}]}}}}),
                None,
                None,
            )
        };
        let zone_b = affinity(json!([{"key": "zone", "operator": "In", "values": ["b"]}]));
        assert_eq!(choose(&zone_b, &nodes, &[]), Ok("b".into()));
        let not_b = affinity(json!([{"key": "zone", "operator": "NotIn", "values": ["b"]}]));
        assert_eq!(choose(&not_b, &nodes, &[]), Ok("a".into()));
        let newer = affinity(json!([{"key": "gen", "operator": "Gt", "values": ["4"]}]));
        assert_eq!(choose(&newer, &nodes, &[]), Ok("b".into()));
        let nowhere = affinity(json!([{"key": "zone", "operator": "In", "values": ["c"]}]));
        assert_eq!(
            choose(&nowhere, &nodes, &[]),
            Err(
                "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
                    .into()
            )
        );
    }

    #[test]
    fn host_ports_conflict_and_replicas_spread() {
        let nodes = [node("a", json!({})), node("b", json!({}))];
        let with_port = json!({"containers": [{"name": "c", "image": "i",
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        let running = [
            pod(with_port.clone(), Some("a"), None),
            pod(with_port.clone(), Some("b"), None),
        ];
        assert_eq!(
            choose(&pod(with_port.clone(), None, None), &nodes, &running),
            Err("0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.".into())
        );
        assert_eq!(
            choose(&pod(with_port, None, None), &nodes, &running[..1]),
            Ok("b".into())
        );
        // b has more pods, but a has one of the same ReplicaSet: b it is.
        let placed = [
            pod(json!({}), Some("a"), Some("rs-1")),
            pod(json!({}), Some("b"), Some("other")),
            pod(json!({}), Some("b"), Some("other")),
        ];
        assert_eq!(
            choose(&pod(json!({}), None, Some("rs-1")), &nodes, &placed),
            Ok("b".into())
        );
        assert_eq!(
            choose(&pod(json!({}), None, None), &nodes, &placed),
            Ok("a".into())
        );
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(millicores("250m"), Some(250));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("0.5"), Some(500));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("x"), None);
    }
}
