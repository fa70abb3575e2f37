//! The network configuration a runtime passes on stdin.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::Deserialize;

use crate::error::{CniError, Code, Result};
use crate::result::CniResult;

/// The plugin's `type` in a configuration.
pub const PLUGIN_TYPE: &str = "berth-cni";
/// Spec versions this plugin reads and writes, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Bridge name when the configuration names none.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// Where leases live when the configuration names no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// Raw fields, as the runtime sends them; unknown fields are ignored (a
/// conflist carries fields for other plugins and for the runtime).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    subnet: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default = "yes")]
    hairpin_mode: bool,
    data_dir: Option<PathBuf>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

fn yes() -> bool {
    true
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The container's id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface name.
    pub ifname: String,
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The version the runtime speaks; results are written in it.
    pub cni_version: String,
    /// The network's name (leases are kept per name).
    pub name: String,
    /// The node's bridge.
    pub bridge: String,
    /// MTU of the pod's interface and its host end.
    pub mtu: u32,
    /// The node's pod CIDR; the bridge holds its first address.
    pub subnet: Ipv4Network,
    /// The cluster's pod CIDR: traffic to it is never masqueraded.
    pub cluster_cidr: Option<Ipv4Network>,
    /// Masquerade pod traffic leaving the cluster CIDR to the node address.
    pub ip_masq: bool,
    /// Let a pod reach itself through the bridge (service hairpin).
    pub hairpin: bool,
    /// Directory holding one lease directory per network.
    pub data_dir: PathBuf,
    /// The result of the plugins before this one in a conflist.
    pub prev_result: Option<CniResult>,
    /// For GC: the attachments still in use.
    pub valid_attachments: Option<HashSet<Attachment>>,
}

fn invalid(msg: impl Into<String>, details: impl ToString) -> CniError {
    CniError::new(Code::InvalidConfig, msg, details)
}

impl NetConf {
    /// The gateway: the subnet's first address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        first_host(self.subnet)
    }

    /// The `cniVersion` of a configuration, read leniently so that even a
    /// configuration that fails validation gets its error in its version.
    pub fn version_of(stdin: &[u8]) -> Option<String> {
        let value: serde_json::Value = serde_json::from_slice(stdin).ok()?;
        value.get("cniVersion")?.as_str().map(str::to_string)
    }

    /// Decodes and validates stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        // Through a Value first: its parser bounds nesting (128 levels),
        // where skipping unknown fields of a struct would not.
        let decode = |e: serde_json::Error| {
            CniError::new(Code::Decode, "cannot decode the network configuration", e)
        };
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(decode)?;
        let raw: Raw = serde_json::from_value(value).map_err(decode)?;
        let cni_version = raw
            .cni_version
            .ok_or_else(|| invalid("cniVersion is required", "set \"cniVersion\": \"1.1.0\""))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("cniVersion {cni_version} is not supported"),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        let name = raw
            .name
            .ok_or_else(|| invalid("name is required", "the network's name"))?;
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.len() > MAX_NAME_BYTES
        {
            return Err(invalid(
                "invalid network name",
                format!("{name:?}: 1 to {MAX_NAME_BYTES} bytes, no '/'"),
            ));
        }
        if let Some(t) = raw.plugin_type.as_deref() {
            if t != PLUGIN_TYPE {
                return Err(invalid(
                    "wrong plugin type",
                    format!("{t:?}; this plugin is {PLUGIN_TYPE:?}"),
                ));
            }
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ':', ' ']) {
            return Err(invalid(
                "invalid bridge name",
                format!("{bridge:?}: 1 to 15 characters"),
            ));
        }
        let mtu = raw.mtu.unwrap_or(1500);
        if !(68..=65535).contains(&mtu) {
            return Err(invalid(
                "invalid mtu",
                format!("{mtu}: must be between 68 and 65535"),
            ));
        }
        let subnet = parse_cidr(
            "subnet",
            raw.subnet.as_deref().ok_or_else(|| {
                invalid(
                    "subnet is required",
                    "the node's pod CIDR, e.g. \"10.244.1.0/24\"",
                )
            })?,
        )?;
        if subnet.prefix() > 30 {
            return Err(invalid(
                "subnet too small",
                format!("{subnet}: at most /30"),
            ));
        }
        if subnet.prefix() < MIN_SUBNET_PREFIX {
            return Err(invalid(
                "subnet too large",
                format!("{subnet}: a node's pod CIDR is at least a /{MIN_SUBNET_PREFIX}"),
            ));
        }
        if let Some(special) = RESERVED
            .iter()
            .find(|(net, _)| net.contains(subnet.network()) || subnet.contains(net.network()))
        {
            return Err(invalid(
                "subnet in a reserved range",
                format!("{subnet} overlaps {} ({})", special.0, special.1),
            ));
        }
        let cluster_cidr = raw
            .cluster_cidr
            .as_deref()
            .map(|c| parse_cidr("clusterCIDR", c))
            .transpose()?;
        if let Some(cluster) = cluster_cidr {
            if !cluster.contains(subnet.network()) || cluster.prefix() > subnet.prefix() {
                return Err(invalid(
                    "subnet outside clusterCIDR",
                    format!("{subnet} is not inside {cluster}"),
                ));
            }
        }
        if raw.ip_masq && cluster_cidr.is_none() {
            return Err(invalid(
                "ipMasq needs clusterCIDR",
                "traffic to the cluster CIDR must not be masqueraded; name it",
            ));
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid(
                "dataDir must be an absolute path",
                format!("{data_dir:?} would depend on the runtime's working directory"),
            ));
        }
        let prev_result = raw
            .prev_result
            .map(|v| {
                serde_json::from_value(v)
                    .map_err(|e| CniError::new(Code::Decode, "cannot decode prevResult", e))
            })
            .transpose()?;
        Ok(NetConf {
            cni_version,
            name,
            bridge,
            mtu,
            subnet,
            cluster_cidr,
            ip_masq: raw.ip_masq,
            hairpin: raw.hairpin_mode,
            data_dir,
            prev_result,
            valid_attachments: raw.valid_attachments.map(|v| v.into_iter().collect()),
        })
    }
}

/// Longest network name: with a container id and an interface name it must
/// fit a link alias (255 bytes).
const MAX_NAME_BYTES: usize = 64;

/// The shortest prefix a node's pod subnet may have.
const MIN_SUBNET_PREFIX: u8 = 8;

/// Ranges no pod subnet may overlap: addresses that mean something else to
/// the kernel or the network.
const RESERVED: &[(Ipv4Network, &str)] = &[
    (net(0, 0, 0, 0, 8), "\"this network\""),
    (net(127, 0, 0, 0, 8), "loopback"),
    (net(169, 254, 0, 0, 16), "link-local"),
    (net(224, 0, 0, 0, 4), "multicast"),
    (net(240, 0, 0, 0, 4), "reserved, and broadcast"),
];

/// A network for [`RESERVED`] (each one valid by construction).
const fn net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Network {
    match Ipv4Network::new_checked(Ipv4Addr::new(a, b, c, d), prefix) {
        Some(n) => n,
        None => panic!("invalid reserved range"),
    }
}

/// Parses an IPv4 CIDR that must be a network address.
fn parse_cidr(field: &str, text: &str) -> Result<Ipv4Network> {
    let net: Ipv4Network = text
        .parse()
        .map_err(|e| invalid(format!("invalid {field}"), format!("{text:?}: {e}")))?;
    if net.ip() != net.network() {
        return Err(invalid(
            format!("invalid {field}"),
            format!(
                "{text:?} is not a network address (did you mean {}/{}?)",
                net.network(),
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

/// The first usable address of `net`.
pub(crate) fn first_host(net: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"berth","type":"berth-cni","subnet":"10.244.1.0/24",
        "clusterCIDR":"10.244.0.0/16","ipMasq":true,"mtu":1450,"somethingElse":{"x":1}}"#;

    #[test]
    fn parses_a_full_configuration() {
        let conf = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(conf.bridge, DEFAULT_BRIDGE);
        assert_eq!(conf.mtu, 1450);
        assert_eq!(conf.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert!(conf.ip_masq && conf.hairpin);
    }

    fn error(text: &str) -> CniError {
        NetConf::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        assert_eq!(error("{\"cniVersion\": ").code, Code::Decode);
        assert_eq!(error("[1,2]").code, Code::Decode);
    }

    #[test]
    fn bad_cidrs_name_the_field() {
        let e = error(r#"{"cniVersion":"1.1.0","name":"b","subnet":"10.244.300.0/24"}"#);
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.to_string().contains("subnet"), "{e}");
        let e = error(r#"{"cniVersion":"1.1.0","name":"b","subnet":"10.244.1.7/24"}"#);
        assert!(e.to_string().contains("10.244.1.0/24"), "{e}");
        let e = error(
            r#"{"cniVersion":"1.1.0","name":"b","subnet":"10.245.1.0/24","clusterCIDR":"10.244.0.0/16"}"#,
        );
        assert!(e.to_string().contains("outside"), "{e}");
    }

    #[test]
    fn version_and_required_fields() {
        assert_eq!(
            error(r#"{"cniVersion":"0.2.0","name":"b","subnet":"10.0.0.0/24"}"#).code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            error(r#"{"name":"b","subnet":"10.0.0.0/24"}"#).code,
            Code::InvalidConfig
        );
        assert_eq!(
            error(r#"{"cniVersion":"1.1.0","subnet":"10.0.0.0/24"}"#).code,
            Code::InvalidConfig
        );
        assert_eq!(
            error(r#"{"cniVersion":"1.1.0","name":"b"}"#).code,
            Code::InvalidConfig
        );
        assert_eq!(
            error(r#"{"cniVersion":"1.1.0","name":"b","subnet":"10.0.0.0/24","ipMasq":true}"#).code,
            Code::InvalidConfig
        );
        assert_eq!(
            error(r#"{"cniVersion":"1.1.0","name":"b","subnet":"10.0.0.0/24","mtu":10}"#).code,
            Code::InvalidConfig
        );
        assert_eq!(
            error(r#"{"cniVersion":"1.1.0","name":"b","type":"bridge","subnet":"10.0.0.0/24"}"#)
                .code,
            Code::InvalidConfig
        );
    }

    #[test]
    fn reads_valid_attachments() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"b","subnet":"10.0.0.0/24",
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let valid = conf.valid_attachments.unwrap();
        assert!(valid.contains(&Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }));
    }
}
