//! The agent's configuration: a YAML file (`--config`), overridden by
//! flags. Every default is here, in one place.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use berth_ebpf::MapSizes;
use ipnetwork::Ipv4Network;
use serde::Deserialize;

/// Everything the agent needs to know. Field names in the file are the
/// camelCase forms of these (`heartbeatIntervalSeconds`, `overlay.vni`, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// kubeconfig with this node's credentials.
    pub kubeconfig: Option<PathBuf>,
    /// Node name; the host name when unset.
    pub node_name: Option<String>,
    /// The node's address on the underlay network (its InternalIP and VTEP).
    #[serde(rename = "nodeIP")]
    pub node_ip: Option<IpAddr>,
    /// How often the node's Lease is renewed.
    pub heartbeat_interval_seconds: u64,
    /// How long a renewal is valid.
    pub lease_duration_seconds: u64,
    /// How often the node's status is refreshed.
    pub status_interval_seconds: u64,
    /// Pods the node accepts.
    pub max_pods: u32,
    /// Where Prometheus metrics are served.
    pub metrics_listen: SocketAddr,
    /// The network namespace holding the node's interfaces (the overlay
    /// device, the bridge). Unset: the agent's own. Simulated nodes set it.
    pub netns: Option<PathBuf>,
    /// The VXLAN overlay.
    pub overlay: OverlayConfig,
    /// The CNI configuration the agent writes for the node's runtime.
    pub cni: CniConfig,
    /// Service load balancing in eBPF.
    pub services: ServicesConfig,
}

/// Service load balancing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// bpffs directory for the node's maps and links.
    pub pin_dir: PathBuf,
    /// cgroup2 directory whose processes are load-balanced; unset: the
    /// machine's cgroup2 root (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
    /// on a hybrid v1/v2 machine). Simulated nodes set their own subtree.
    pub cgroup: Option<PathBuf>,
    /// Map sizes, used when the maps are first created (pinned maps keep
    /// theirs: remove the pins to resize).
    pub map_sizes: MapSizesConfig,
}

/// Entries of each load-balancing map.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MapSizesConfig {
    /// `lb4_services`: one per frontend.
    pub services: u32,
    /// `lb4_slots`: one per backend of each frontend.
    pub slots: u32,
    /// `lb4_backends`: one per distinct backend.
    pub backends: u32,
    /// `lb4_reverse_sk`: one per socket and backend (LRU).
    pub reverse: u32,
    /// `lb4_affinity`: one per client and frontend with affinity (LRU).
    pub affinity: u32,
    /// `lb4_maglev`: one 4 KiB table per frontend using Maglev.
    pub maglev: u32,
    /// `lb4_ct`: two per connection from outside the node (LRU).
    pub ct: u32,
}

impl Default for MapSizesConfig {
    fn default() -> Self {
        let d = MapSizes::default();
        MapSizesConfig {
            services: d.services,
            slots: d.slots,
            backends: d.backends,
            reverse: d.reverse,
            affinity: d.affinity,
            maglev: d.maglev,
            ct: d.ct,
        }
    }
}

impl From<MapSizesConfig> for MapSizes {
    fn from(c: MapSizesConfig) -> Self {
        MapSizes {
            services: c.services,
            slots: c.slots,
            backends: c.backends,
            reverse: c.reverse,
            affinity: c.affinity,
            maglev: c.maglev,
            ct: c.ct,
        }
    }
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            pin_dir: PathBuf::from("/sys/fs/bpf/berth"),
            cgroup: None,
            map_sizes: MapSizesConfig::default(),
        }
    }
}

impl ServicesConfig {
    /// The cgroup2 directory to attach to.
    pub fn cgroup(&self) -> PathBuf {
        if let Some(path) = &self.cgroup {
            return path.clone();
        }
        let is_cgroup2 = |p: &str| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        };
        if is_cgroup2("/sys/fs/cgroup") {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/unified")
        }
    }
}

/// The VXLAN overlay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// The VXLAN device's name.
    pub device: String,
    /// VXLAN network identifier; every node must agree.
    pub vni: u32,
    /// UDP port of the encapsulation; every node must agree.
    pub port: u16,
    /// The underlay interface; unset: the one holding the node IP.
    pub underlay_interface: Option<String>,
    /// How often the kernel is checked against the API even without events
    /// (a deleted device is recreated within this time).
    pub resync_seconds: u64,
}

/// The CNI configuration the agent writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directory of CNI configurations (`10-berth.conflist` goes there).
    pub conf_dir: PathBuf,
    /// Where berth-cni keeps its leases.
    pub data_dir: PathBuf,
    /// The node's pod bridge.
    pub bridge: String,
    /// The cluster's pod CIDR: pod traffic to it is not masqueraded.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Network,
    /// Masquerade pod traffic leaving the cluster CIDR.
    pub ip_masq: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kubeconfig: None,
            node_name: None,
            node_ip: None,
            heartbeat_interval_seconds: 10,
            lease_duration_seconds: 40,
            status_interval_seconds: 60,
            max_pods: 110,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9962)),
            netns: None,
            overlay: OverlayConfig::default(),
            cni: CniConfig::default(),
            services: ServicesConfig::default(),
        }
    }
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            device: "berth.1".to_string(),
            vni: 1,
            port: 8472,
            underlay_interface: None,
            resync_seconds: 10,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            data_dir: PathBuf::from(berth_cni::config::DEFAULT_DATA_DIR),
            bridge: berth_cni::config::DEFAULT_BRIDGE.to_string(),
            cluster_cidr: Ipv4Network::new([10, 244, 0, 0].into(), 16)
                .expect("10.244.0.0/16 is a valid CIDR"),
            ip_masq: true,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this configuration.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        message: String,
    },
    /// A value is out of range or missing.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a YAML configuration file; fields it omits keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.kubeconfig.is_none() {
            return invalid(
                "kubeconfig is required (--kubeconfig or `kubeconfig:` in the file)".into(),
            );
        }
        match self.node_ip {
            None => {
                return invalid(
                    "the node IP is required (--node-ip or `nodeIP:` in the file)".into(),
                )
            }
            Some(IpAddr::V6(ip)) => {
                return invalid(format!("node IP {ip}: the overlay is IPv4 only"))
            }
            Some(IpAddr::V4(_)) => {}
        }
        if self.overlay.vni == 0 || self.overlay.vni > 0xff_ffff {
            return invalid(format!(
                "overlay.vni {}: must be 1 to 16777215",
                self.overlay.vni
            ));
        }
        if self.overlay.port == 0 {
            return invalid("overlay.port must not be 0".into());
        }
        for (what, name) in [
            ("overlay.device", &self.overlay.device),
            ("cni.bridge", &self.cni.bridge),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ':', ' ']) {
                return invalid(format!(
                    "{what} {name:?}: an interface name has 1 to 15 characters"
                ));
            }
        }
        if self.heartbeat_interval_seconds == 0
            || self.status_interval_seconds == 0
            || self.overlay.resync_seconds == 0
        {
            return invalid("intervals must be at least 1 second".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config = Config::from_yaml(
            "nodeIP: 172.30.0.1\noverlay:\n  vni: 42\n  port: 4789\ncni:\n  clusterCIDR: 10.200.0.0/16\n",
        )
        .unwrap();
        assert_eq!(config.overlay.vni, 42);
        assert_eq!(config.overlay.port, 4789);
        assert_eq!(config.overlay.device, "berth.1");
        assert_eq!(config.cni.cluster_cidr.to_string(), "10.200.0.0/16");
        assert_eq!(config.heartbeat_interval_seconds, 10);
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let e = Config::from_yaml("overlay:\n  vnii: 3\n").unwrap_err();
        assert!(e.contains("vnii"), "{e}");
        let e = Config::from_yaml("cni:\n  clusterCIDR: 10.300.0.0/16\n").unwrap_err();
        assert!(e.contains("10.300"), "{e}");
        let mut config = Config {
            kubeconfig: Some("k".into()),
            node_ip: Some("172.30.0.1".parse().unwrap()),
            ..Config::default()
        };
        assert!(config.validate().is_ok());
        config.overlay.vni = 1 << 24;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("overlay.vni"));
        config.overlay.vni = 1;
        config.node_ip = None;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("node IP"));
    }
}
