//! Fuzz harnesses for what berth-cni reads from its caller before it
//! touches the node: the network configuration on stdin and the `CNI_*`
//! environment.

use std::collections::HashMap;

use berth_cni::config::NetConf;
use berth_cni::env::{Command, Env};
use berth_fuzz::{Mutation, Vocabulary};
use bolero::generator::TypeGenerator;
use serde_json::json;

const WORDS: Vocabulary = Vocabulary {
    keys: &[
        "cniVersion",
        "name",
        "type",
        "bridge",
        "mtu",
        "subnet",
        "clusterCIDR",
        "ipMasq",
        "hairpinMode",
        "dataDir",
        "prevResult",
        "cni.dev/valid-attachments",
        "containerID",
        "ifname",
        "interfaces",
        "ips",
        "address",
        "gateway",
        "interface",
        "routes",
        "dst",
        "dns",
        "sandbox",
        "mac",
        "plugins",
        "runtimeConfig",
    ],
    strings: &[
        "",
        "1.1.0",
        "1.0.0",
        "0.4.0",
        "0.3.1",
        "berth",
        "berth-cni",
        "bridge",
        "cni0",
        "lo",
        "eth0",
        "a/b",
        "0.0.0.0/0",
        "10.244.1.0/24",
        "10.244.0.0/16",
        "10.244.1.7/24",
        "127.0.0.0/24",
        "224.0.0.0/24",
        "10.244.1.0/31",
        "10.0.0.0/7",
        "/var/lib/cni/networks",
        "relative/dir",
        "10.244.1.5/24",
        "10.244.1.1",
        "0.0.0.0/0",
        "/proc/1/ns/net",
    ],
};

/// A network configuration as berth-agent writes it, with prevResult and
/// GC attachments so the nested decoders are reached too.
fn fixture() -> serde_json::Value {
    json!({
        "cniVersion": "1.1.0", "name": "berth", "type": "berth-cni", "bridge": "berth0",
        "mtu": 1450, "subnet": "10.244.1.0/24", "clusterCIDR": "10.244.0.0/16",
        "ipMasq": true, "hairpinMode": true, "dataDir": "/var/lib/cni/networks",
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/proc/1/ns/net"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
        "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
    })
}

/// Any stdin: never a panic, and an accepted configuration holds what the
/// plugin relies on before it touches the node.
#[test]
fn cni_config() {
    let base = fixture();
    bolero::check!()
        .with_type::<Mutation>()
        .for_each(|mutation| {
            let (_, stdin) = mutation.apply(&base, &WORDS);
            let _ = NetConf::version_of(&stdin);
            let Ok(conf) = NetConf::parse(&stdin) else {
                return;
            };
            assert!((8..=30).contains(&conf.subnet.prefix()), "{}", conf.subnet);
            assert!(conf.data_dir.is_absolute(), "{:?}", conf.data_dir);
            assert!(
                !conf.bridge.is_empty() && conf.bridge.len() <= 15,
                "{:?}",
                conf.bridge
            );
            assert!((68..=65535).contains(&conf.mtu));
            if let Some(cluster) = conf.cluster_cidr {
                assert!(cluster.contains(conf.subnet.network()));
            }
        });
}

/// One `CNI_*` variable.
#[derive(Debug, Clone, TypeGenerator)]
struct Var {
    name: u8,
    value: Value,
}

/// A variable's value: a word or anything.
#[derive(Debug, Clone, TypeGenerator)]
enum Value {
    Known(u8),
    Long(char, u16),
    Text(String),
}

const NAMES: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];
const VALUES: &[&str] = &[
    "ADD",
    "DEL",
    "CHECK",
    "STATUS",
    "GC",
    "VERSION",
    "add",
    "",
    "abc",
    "a.b-c_d",
    "/proc/1/ns/net",
    "relative",
    "eth0",
    "lo",
    "eth0eth0eth0eth0",
    "IgnoreUnknown=1;K8S_POD_NAME=web",
    "=x",
    "a=b;;",
    "/opt/cni/bin:/usr/lib/cni",
    ":",
];

/// Any environment: never a panic, and an accepted one names what its
/// command needs, within the limits the plugin relies on.
#[test]
fn cni_env() {
    bolero::check!().with_type::<Vec<Var>>().for_each(|vars| {
        let pick = |words: &[&'static str], i: u8| words[usize::from(i) % words.len()];
        let env: HashMap<String, String> = vars
            .iter()
            .map(|v| {
                let value = match &v.value {
                    Value::Known(i) => pick(VALUES, *i).to_owned(),
                    Value::Long(c, n) => c.to_string().repeat(usize::from(*n)),
                    Value::Text(s) => s.clone(),
                };
                (pick(NAMES, v.name).to_owned(), value)
            })
            .collect();
        let Ok(parsed) = Env::parse(&env) else {
            return;
        };
        if matches!(parsed.command, Command::Add | Command::Check) {
            assert!(parsed.netns.is_some());
            assert!(!parsed.container_id.is_empty());
            assert!(!parsed.ifname.is_empty() && parsed.ifname.len() <= 15);
        }
    });
}
