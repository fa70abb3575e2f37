//! The CNI configuration the agent writes for the node's container
//! runtime: `berth-cni` with the node's pod CIDR and the overlay's MTU.

use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use crate::config::CniConfig;

/// The file the agent writes in the configuration directory.
pub const CONFLIST_NAME: &str = "10-berth.conflist";
/// The network's name (and berth-cni's lease directory).
pub const NETWORK_NAME: &str = "berth";

/// The conflist for a node with `pod_cidr` and pod MTU `mtu`.
pub fn conflist(config: &CniConfig, pod_cidr: Ipv4Network, mtu: u32) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": berth_cni::config::PLUGIN_TYPE,
            "bridge": config.bridge,
            "subnet": pod_cidr.to_string(),
            "clusterCIDR": config.cluster_cidr.to_string(),
            "ipMasq": config.ip_masq,
            "hairpinMode": true,
            "mtu": mtu,
            "dataDir": config.data_dir,
        }],
    })
}

/// Writes `conflist` into `dir` when it differs from what is there
/// (atomically: runtimes read the directory at any time). Returns the path.
pub fn write(dir: &Path, conflist: &Value) -> std::io::Result<PathBuf> {
    let path = dir.join(CONFLIST_NAME);
    let text = serde_json::to_string_pretty(conflist).map_err(std::io::Error::other)? + "\n";
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{CONFLIST_NAME}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_cni_accepts_the_conflist() {
        let list = conflist(
            &CniConfig::default(),
            "10.244.3.0/24".parse().unwrap(),
            1450,
        );
        let mut plugin = list["plugins"][0].clone();
        plugin["cniVersion"] = list["cniVersion"].clone();
        plugin["name"] = list["name"].clone();
        let conf = berth_cni::config::NetConf::parse(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.mtu, 1450);
        assert_eq!(conf.subnet.to_string(), "10.244.3.0/24");
        assert!(conf.ip_masq);
    }
}
