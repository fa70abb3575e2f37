//! Discovery: `/version`, `/api`, `/apis` and the per group-version
//! resource lists kubectl reads to learn what the server serves.

use serde_json::{json, Value};

use crate::resources::{self, Resource, RESOURCES};

/// The Kubernetes version this server's API matches.
pub const KUBERNETES_MINOR: &str = "33";

/// `/version`.
pub(super) fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-berth.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`: the core group's versions.
pub(super) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`: every named group.
pub(super) fn groups() -> Value {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .map(|(g, v)| group(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: one group, if served.
pub(super) fn group_info(name: &str) -> Option<Value> {
    let (g, v) = resources::groups().into_iter().find(|(g, _)| *g == name)?;
    let mut info = group(g, v);
    info["kind"] = json!("APIGroup");
    info["apiVersion"] = json!("v1");
    Some(info)
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources there, with their
/// subresources, or None if nothing is served there.
pub(super) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for r in served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "storageVersionHash": "",
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in r.subresources {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": r.subresource_verbs(sub),
            });
            match *sub {
                "scale" => {
                    entry["group"] = json!("autoscaling");
                    entry["version"] = json!("v1");
                    entry["kind"] = json!("Scale");
                }
                "binding" => entry["kind"] = json!("Binding"),
                _ => {}
            }
            list.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_lists_scale_as_autoscaling() {
        let list = resource_list("apps", "v1").unwrap();
        let resources = list["resources"].as_array().unwrap();
        let scale = resources
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        let deploy = resources
            .iter()
            .find(|r| r["name"] == "deployments")
            .unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert!(resource_list("batch", "v1").is_none());
    }

    #[test]
    fn core_group_is_not_among_named_groups() {
        let groups = groups();
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["name"] != ""));
        assert!(group_info("apps").is_some());
        assert!(group_info("batch").is_none());
    }
}
