//! Fuzz harnesses for what berth-control does with a client's bytes:
//! create bodies for every kind (decode, checks, defaults, validation)
//! and the three patch formats applied to stored objects.

use berth_control::object::MAX_OBJECT_BYTES;
use berth_control::patch::{self, PatchType, MAX_JSON_PATCH_COPY_BYTES};
use berth_control::prepare;
use berth_control::resources::{Resource, RESOURCES};
use berth_control::validate::{validate, FieldValidation};
use berth_control::{defaults, object};
use berth_fuzz::{Mutation, Scalar, Step, Vocabulary};
use bolero::generator::TypeGenerator;
use serde_json::{json, Value};

/// Field names and values of the kinds berth-control serves.
const WORDS: Vocabulary = Vocabulary {
    keys: &[
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "generateName",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "finalizers",
        "ownerReferences",
        "deletionTimestamp",
        "creationTimestamp",
        "managedFields",
        "spec",
        "status",
        "containers",
        "initContainers",
        "image",
        "command",
        "args",
        "env",
        "value",
        "ports",
        "containerPort",
        "hostPort",
        "protocol",
        "port",
        "targetPort",
        "nodePort",
        "selector",
        "matchLabels",
        "matchExpressions",
        "key",
        "operator",
        "values",
        "type",
        "clusterIP",
        "clusterIPs",
        "ipFamilies",
        "externalName",
        "sessionAffinity",
        "replicas",
        "template",
        "strategy",
        "rollingUpdate",
        "maxSurge",
        "maxUnavailable",
        "nodeName",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "hostNetwork",
        "volumes",
        "volumeMounts",
        "mountPath",
        "configMap",
        "resources",
        "limits",
        "requests",
        "cpu",
        "memory",
        "phase",
        "conditions",
        "podIP",
        "podIPs",
        "ip",
        "podCIDR",
        "podCIDRs",
        "taints",
        "effect",
        "unschedulable",
        "addresses",
        "address",
        "endpoints",
        "ready",
        "serving",
        "terminating",
        "targetRef",
        "addressType",
        "data",
        "binaryData",
        "immutable",
        "holderIdentity",
        "leaseDurationSeconds",
        "renewTime",
        "involvedObject",
        "reason",
        "message",
        "count",
        "subsets",
        "notReadyAddresses",
        "$patch",
        "$retainKeys",
        "$setElementOrder/containers",
        "$deleteFromPrimitiveList/finalizers",
        "capacity",
        "allocatable",
        "tolerations",
    ],
    strings: &[
        "",
        "a",
        "x-1",
        "-x",
        "X",
        "v1",
        "apps/v1",
        "discovery.k8s.io/v1",
        "Pod",
        "Service",
        "default",
        "kube-system",
        "busybox",
        "busybox:1.36",
        "TCP",
        "UDP",
        "SCTP",
        "HTTP",
        "ClusterIP",
        "NodePort",
        "LoadBalancer",
        "ExternalName",
        "None",
        "10.96.0.10",
        "10.244.0.0/24",
        "::1",
        "fe80::/64",
        "IPv4",
        "IPv6",
        "FQDN",
        "In",
        "NotIn",
        "Exists",
        "DoesNotExist",
        "Always",
        "Never",
        "OnFailure",
        "Running",
        "Pending",
        "NoSchedule",
        "NoExecute",
        "100m",
        "1Gi",
        "1e3",
        "-1",
        "25%",
        "http",
        "2026-12-03T00:00:00Z",
        "delete",
        "replace",
        "merge",
        "retainKeys",
        "a.b/c",
        "kubernetes.io/hostname",
        "node-role.kubernetes.io/control-plane",
        "berth.dev/underlay-ip",
    ],
};

/// A valid object of each kind: the starting points of the edits.
fn fixture(resource: &Resource) -> Value {
    let api_version = if resource.group.is_empty() {
        resource.version.to_owned()
    } else {
        format!("{}/{}", resource.group, resource.version)
    };
    let mut obj = json!({
        "apiVersion": api_version,
        "kind": resource.kind,
        "metadata": {"name": "fixture", "labels": {"app": "web"}},
    });
    if resource.namespaced {
        obj["metadata"]["namespace"] = json!("default");
    }
    let pod_spec = json!({"containers": [{
        "name": "web", "image": "busybox:1.36", "command": ["httpd", "-f"],
        "ports": [{"containerPort": 80, "name": "http"}],
        "env": [{"name": "A", "value": "1"}],
    }]});
    let extra = match resource.kind {
        "Pod" => json!({"spec": pod_spec}),
        "Service" => json!({"spec": {
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}],
        }}),
        "Deployment" | "ReplicaSet" => json!({"spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
        }}),
        // Without a selector: it defaults to the template's labels.
        "ReplicationController" => json!({"spec": {
            "replicas": 2,
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec},
        }}),
        "ConfigMap" => json!({"data": {"key": "value"}}),
        "EndpointSlice" => json!({
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        }),
        "Endpoints" => json!({"subsets": [{
            "addresses": [{"ip": "10.244.1.5"}],
            "ports": [{"port": 80}],
        }]}),
        "Event" => json!({
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "message": "started", "type": "Normal",
        }),
        "Lease" => json!({"spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}}),
        "Node" => json!({"spec": {"podCIDR": "10.244.1.0/24"}}),
        _ => json!({}),
    };
    if let (Some(obj), Value::Object(extra)) = (obj.as_object_mut(), extra) {
        obj.extend(extra);
    }
    obj
}

fn resource(i: u8) -> &'static Resource {
    &RESOURCES[usize::from(i) % RESOURCES.len()]
}

fn field_validation(i: u8) -> FieldValidation {
    match i % 3 {
        0 => FieldValidation::Strict,
        1 => FieldValidation::Warn,
        _ => FieldValidation::Ignore,
    }
}

#[test]
fn every_fixture_is_created() {
    for resource in RESOURCES {
        let body = serde_json::to_vec(&fixture(resource)).unwrap();
        let result = prepare::for_create(resource, &body, None, FieldValidation::Strict);
        assert!(result.is_ok(), "{}: {result:?}", resource.kind);
    }
}

/// A create body for any kind: never a panic; what is accepted is
/// accepted again as it is (defaults and checks are idempotent), has no
/// unknown field left and fits the store.
#[test]
fn api_body() {
    bolero::check!()
        .with_type::<(u8, u8, Mutation)>()
        .for_each(|(kind, fields, mutation)| {
            let resource = resource(*kind);
            let (_, body) = mutation.apply(&fixture(resource), &WORDS);
            let Ok((obj, _)) =
                prepare::for_create(resource, &body, None, field_validation(*fields))
            else {
                return;
            };
            let again = serde_json::to_vec(&obj).expect("an accepted object encodes");
            let (twice, warnings) =
                prepare::for_create(resource, &again, None, FieldValidation::Strict)
                    .unwrap_or_else(|e| panic!("accepted once, refused after: {e:?}\n{obj:#}"));
            assert!(
                warnings.is_empty(),
                "warnings on an accepted object: {warnings:?}"
            );
            let name = |o: &Value| o.pointer("/metadata/name").cloned();
            if obj.pointer("/metadata/generateName").is_none() {
                assert_eq!(name(&obj), name(&twice));
            }
            if let Ok(stored) = object::to_stored(&obj) {
                assert!(stored.len() <= MAX_OBJECT_BYTES);
            }
        });
}

/// How a harness patch is encoded.
#[derive(Debug, Clone, TypeGenerator)]
enum PatchOp {
    Add(Vec<Step>, Scalar),
    Remove(Vec<Step>),
    Replace(Vec<Step>, Scalar),
    Move(Vec<Step>, Vec<Step>),
    Copy(Vec<Step>, Vec<Step>),
    Test(Vec<Step>, Scalar),
}

/// A JSON pointer made of the harness's words (and `-`, the end of an array).
fn pointer(path: &[Step]) -> String {
    path.iter()
        .map(|step| {
            let word = match step {
                Step::Known(i) => WORDS.keys[usize::from(*i) % WORDS.keys.len()].to_owned(),
                Step::Other(s) => s.clone(),
                Step::Index(255) => "-".to_owned(),
                Step::Index(i) => (i % 4).to_string(),
            };
            format!("/{}", word.replace('~', "~0").replace('/', "~1"))
        })
        .collect()
}

impl PatchOp {
    fn to_value(&self) -> Value {
        let value = |s: &Scalar| s.to_value(&WORDS);
        match self {
            PatchOp::Add(p, v) => json!({"op": "add", "path": pointer(p), "value": value(v)}),
            PatchOp::Remove(p) => json!({"op": "remove", "path": pointer(p)}),
            PatchOp::Replace(p, v) => {
                json!({"op": "replace", "path": pointer(p), "value": value(v)})
            }
            PatchOp::Move(f, p) => json!({"op": "move", "from": pointer(f), "path": pointer(p)}),
            PatchOp::Copy(f, p) => json!({"op": "copy", "from": pointer(f), "path": pointer(p)}),
            PatchOp::Test(p, v) => json!({"op": "test", "path": pointer(p), "value": value(v)}),
        }
    }
}

/// A patch of any of the three types.
#[derive(Debug, Clone, TypeGenerator)]
enum Patch {
    Json(Vec<PatchOp>),
    Merge(Mutation),
    Strategic(Mutation),
}

/// The encoded length of a value.
fn len(value: &Value) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// Any patch on a stored object of any kind: never a panic, and what it
/// produces is bounded by the object, the patch and (for JSON patches)
/// the copy budget — the amplification bound. A patched object then goes
/// through the update checks without panicking.
#[test]
fn patch() {
    bolero::check!()
        .with_type::<(u8, Patch)>()
        .for_each(|(kind, patch)| {
            let resource = resource(*kind);
            let mut original = fixture(resource);
            defaults::apply(resource.kind, &mut original);
            let (body, patch_type, budget) = match patch {
                Patch::Json(ops) => {
                    let ops: Vec<Value> = ops.iter().map(PatchOp::to_value).collect();
                    let body = serde_json::to_vec(&ops).unwrap_or_default();
                    (body, PatchType::Json, MAX_JSON_PATCH_COPY_BYTES)
                }
                Patch::Merge(m) => (m.apply(&json!({}), &WORDS).1, PatchType::Merge, 0),
                Patch::Strategic(m) => (m.apply(&json!({}), &WORDS).1, PatchType::Strategic, 0),
            };
            let Ok(mut patched) = patch::apply(&original, &body, patch_type) else {
                return;
            };
            // The patch as the server reads it: re-encoded, `1e5` is
            // `100000.0`, so its text length is no bound.
            let patch_len = serde_json::from_slice::<Value>(&body).map_or(body.len(), |v| len(&v));
            let bound = len(&original) + patch_len + budget;
            assert!(
                len(&patched) <= bound,
                "{} bytes from a {}-byte object and a {patch_len}-byte patch",
                len(&patched),
                len(&original),
            );
            if object::check_type(resource, &mut patched).is_ok()
                && object::prepare_update(resource, &original, &mut patched, None).is_ok()
            {
                let _ = validate(
                    resource,
                    &mut patched,
                    Some(&original),
                    FieldValidation::Strict,
                );
            }
        });
}
