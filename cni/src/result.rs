//! The result of ADD, as the spec lays it out, and `prevResult`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An interface the plugin created or found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address, `aa:bb:…`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address given to an interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length, `10.244.1.5/24`.
    pub address: String,
    /// The gateway for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// "4" or "6": results before 1.0.0 carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A route inside the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// A CNI result: what ADD prints and what the next plugin gets as
/// `prevResult`. Fields this plugin does not know are kept as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The version the result is written in.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces, referred to by index from `ips`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings, passed through.
    #[serde(default)]
    pub dns: Map<String, Value>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl CniResult {
    /// Appends `ours` to this (previous) result, shifting its interface
    /// indices past the interfaces already present.
    pub fn extend(&mut self, ours: CniResult) {
        let offset = self.interfaces.len();
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
    }

    /// Shapes the result for `cni_version`: results before 1.0.0 give each
    /// address a `version`, and 1.1.0-only fields are left out before it.
    pub fn for_version(mut self, cni_version: &str) -> Self {
        let before_1 = cni_version.starts_with("0.");
        for ip in &mut self.ips {
            ip.version = before_1.then(|| "4".to_string());
        }
        if cni_version != "1.1.0" {
            for iface in &mut self.interfaces {
                iface.mtu = None;
            }
            for route in &mut self.routes {
                route.mtu = None;
            }
        }
        self.cni_version = cni_version.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_shifts_interface_indices_and_keeps_unknown_fields() {
        let mut prev: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","interfaces":[{"name":"a"}],"ips":[{"address":"10.0.0.2/24","interface":0}],
                "dns":{"nameservers":["10.96.0.10"]},"custom":7}"#,
        )
        .unwrap();
        prev.extend(CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: String::new(),
                mtu: None,
                sandbox: None,
            }],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".into(),
                gateway: None,
                interface: Some(0),
                version: None,
            }],
            ..Default::default()
        });
        assert_eq!(prev.ips[1].interface, Some(1));
        let out = serde_json::to_value(prev.for_version("0.4.0")).unwrap();
        assert_eq!(out["custom"], 7);
        assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(out["ips"][1]["version"], "4");
        assert_eq!(out["cniVersion"], "0.4.0");
    }
}
