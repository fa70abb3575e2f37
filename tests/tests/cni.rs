//! `berth-cni` called exactly as a runtime calls it, on a testbed node:
//! ADD/CHECK/DEL, concurrency, GC, STATUS, masquerading and bad input.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::cni::{call, workspace_bin, Reply};
use berth_tests::traffic::tcp_exchange;
use berth_tests::{require_root, Netns, Node, Testbed, TestbedConfig};
use serde_json::{json, Value};

/// A lease directory removed when the test ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Setup {
    plugin: PathBuf,
    data: Scratch,
    testbed: Testbed,
}

impl Setup {
    fn new(nodes: usize) -> Self {
        require_root();
        let config = TestbedConfig::new(nodes);
        let data = Scratch(std::env::temp_dir().join(format!("{}-cni", config.prefix)));
        Setup {
            plugin: workspace_bin("berth-cni"),
            data,
            testbed: Testbed::new(&config).expect("testbed"),
        }
    }

    fn node(&self) -> &Node {
        &self.testbed.nodes()[0]
    }

    fn conf(&self, subnet: &str) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "berth",
            "type": "berth-cni",
            "subnet": subnet,
            "clusterCIDR": "10.244.0.0/16",
            "ipMasq": true,
            "mtu": 1450,
            "dataDir": self.data.0,
        })
    }

    fn call(&self, command: &str, container: &str, pod: Option<&Netns>, conf: &Value) -> Reply {
        let netns = pod.map(|p| p.path().display().to_string());
        let mut vars = vec![
            ("CNI_COMMAND", command),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        if !container.is_empty() {
            vars.push(("CNI_CONTAINERID", container));
        }
        if let Some(netns) = netns.as_deref() {
            vars.push(("CNI_NETNS", netns));
        }
        let stdin = serde_json::to_vec(conf).expect("encode");
        call(&self.plugin, self.node().netns(), &vars, &stdin).expect("run berth-cni")
    }

    fn add(&self, container: &str, pod: &Netns, conf: &Value) -> Value {
        let reply = self.call("ADD", container, Some(pod), conf);
        assert!(
            reply.success,
            "ADD {container} failed: {} {}",
            reply.json, reply.stderr
        );
        reply.json
    }

    /// The leased addresses, read from the lease files.
    fn leases(&self) -> Vec<String> {
        let dir = self.data.0.join("berth");
        let mut ips: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// Host ends of pod veths on the node.
    fn host_veths(&self) -> HashSet<String> {
        node_links(self.node())
            .into_iter()
            .filter(|n| n.starts_with("bv"))
            .collect()
    }

    /// Host ends a DEL retired (down, alias `berth-cni-retired/…`) that
    /// their reaper has not deleted yet.
    fn retired_veths(&self) -> Vec<String> {
        aliased_links(self.node())
            .into_iter()
            .filter(|(_, alias)| alias.starts_with("berth-cni-retired/"))
            .map(|(name, _)| name)
            .collect()
    }

    /// Waits for the reapers DEL started; panics if one never finishes.
    fn wait_reaped(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.retired_veths().is_empty() {
            assert!(
                Instant::now() < deadline,
                "retired veths not deleted: {:?}",
                self.retired_veths()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The node's link names.
fn node_links(node: &Node) -> Vec<String> {
    aliased_links(node)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The node's links: (name, alias).
fn aliased_links(node: &Node) -> Vec<(String, String)> {
    let out = node.netns().ip(&["-j", "link", "show"]).expect("ip link");
    let links: Value = serde_json::from_str(&out).expect("ip -j");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let alias = l["ifalias"].as_str().unwrap_or_default().to_string();
            Some((l["ifname"].as_str()?.to_string(), alias))
        })
        .collect()
}

fn pod_ip(result: &Value) -> Ipv4Addr {
    let cidr = result["ips"][0]["address"].as_str().expect("address");
    cidr.split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .expect("IPv4")
}

#[test]
fn add_wires_pods_that_talk_check_notices_a_missing_interface_and_del_is_idempotent() {
    let setup = Setup::new(1);
    let node = setup.node();
    let conf = setup.conf("10.244.1.0/24");
    let pod_a = node.add_pod("a").expect("pod a");
    let pod_b = node.add_pod("b").expect("pod b");

    let a = setup.add("ctr-a", &pod_a, &conf);
    assert_eq!(a["cniVersion"], "1.1.0");
    assert_eq!(a["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(a["interfaces"][2]["name"], "eth0");
    assert_eq!(
        a["interfaces"][2]["sandbox"],
        pod_a.path().display().to_string()
    );
    assert_eq!(a["interfaces"][2]["mtu"], 1450);
    let ip_a = pod_ip(&a);

    // The pod's interface: address, MTU, default route via the bridge.
    let link: Value =
        serde_json::from_str(&pod_a.ip(&["-j", "addr", "show", "eth0"]).expect("ip addr"))
            .expect("json");
    assert_eq!(link[0]["mtu"], 1450);
    assert_eq!(link[0]["addr_info"][0]["local"], ip_a.to_string());
    let routes = pod_a.ip(&["route", "show", "default"]).expect("ip route");
    assert!(routes.contains("via 10.244.1.1 dev eth0"), "{routes}");
    // The bridge holds the gateway; the host end has hairpin on.
    let bridge = node
        .netns()
        .ip(&["-4", "addr", "show", "berth0"])
        .expect("bridge");
    assert!(bridge.contains("10.244.1.1/24"), "{bridge}");
    assert_eq!(
        a["interfaces"][0]["mac"], "0a:58:0a:f4:01:01",
        "the bridge's MAC is fixed"
    );
    let host_end = a["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let details = node
        .netns()
        .ip(&["-d", "link", "show", &host_end])
        .expect("host veth");
    assert!(
        details.contains("master berth0") && details.contains("hairpin on"),
        "{details}"
    );

    // A second attachment in a chain: our entries follow prevResult's.
    let mut chained = conf.clone();
    chained["prevResult"] = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "dummy"}], "dns": {"nameservers": ["10.96.0.10"]}});
    let b = setup.add("ctr-b", &pod_b, &chained);
    assert_eq!(b["interfaces"][0]["name"], "dummy");
    assert_eq!(b["ips"][0]["interface"], 3);
    assert_eq!(b["dns"]["nameservers"][0], "10.96.0.10");
    let ip_b = pod_ip(&b);
    assert_ne!(ip_a, ip_b);

    // The two pods reach each other over the bridge, without translation.
    assert_eq!(tcp_exchange(&pod_a, ip_a, &pod_b).ip(), ip_b);

    // CHECK accepts what ADD made, and notices a missing interface.
    let mut check = conf.clone();
    check["prevResult"] = a.clone();
    let ok = setup.call("CHECK", "ctr-a", Some(&pod_a), &check);
    assert!(ok.success, "CHECK failed: {}", ok.json);
    pod_a.ip(&["link", "del", "eth0"]).expect("remove eth0");
    let broken = setup.call("CHECK", "ctr-a", Some(&pod_a), &check);
    assert!(!broken.success);
    assert_eq!(broken.code(), Some(100), "{}", broken.json);
    assert!(
        broken.json["details"]
            .as_str()
            .unwrap_or_default()
            .contains("eth0"),
        "{}",
        broken.json
    );

    // DEL releases the address; DEL of what is already gone succeeds, with
    // or without the namespace.
    for attempt in 0..2 {
        let del = setup.call("DEL", "ctr-a", Some(&pod_a), &conf);
        assert!(del.success, "DEL #{attempt}: {}", del.json);
    }
    assert!(setup.call("DEL", "ctr-a", None, &conf).success);
    assert_eq!(setup.leases(), vec![ip_b.to_string()]);
    assert!(setup.call("DEL", "ctr-b", Some(&pod_b), &conf).success);
    assert!(setup.leases().is_empty());
    setup.wait_reaped();
    assert!(setup.host_veths().is_empty(), "{:?}", setup.host_veths());
}

#[test]
fn del_takes_the_pair_out_of_service_at_once_and_leaves_its_deletion_to_a_reaper() {
    let setup = Setup::new(1);
    let node = setup.node();
    let conf = setup.conf("10.244.6.0/24");
    let pod_a = node.add_pod("ra").expect("pod");
    let pod_b = node.add_pod("rb").expect("pod");
    let a = setup.add("ctr-a", &pod_a, &conf);
    let host_end = a["interfaces"][1]["name"]
        .as_str()
        .expect("host end")
        .to_string();
    let b = setup.add("ctr-b", &pod_b, &conf);

    // Right after DEL the pair is gone or retired (down, no longer
    // forwarding) and its address released; the next ADD may use the same
    // namespace and interface name at once.
    assert!(setup.call("DEL", "ctr-a", Some(&pod_a), &conf).success);
    if let Ok(details) = node.netns().ip(&["-j", "link", "show", &host_end]) {
        let link: Value = serde_json::from_str(&details).expect("ip -j");
        assert_eq!(link[0]["ifalias"], "berth-cni-retired/berth/ctr-a/eth0");
        assert!(
            !link[0]["flags"]
                .as_array()
                .expect("flags")
                .contains(&json!("UP")),
            "{link}"
        );
    }
    assert!(!setup.leases().contains(&pod_ip(&a).to_string()));
    let again = setup.add("ctr-c", &pod_a, &conf);
    let pod_d = node.add_pod("rd").expect("pod");
    let d = setup.add("ctr-d", &pod_d, &conf);
    assert_eq!(
        tcp_exchange(&pod_d, pod_ip(&d), &pod_a).ip(),
        pod_ip(&again),
        "the new interface in the same namespace works"
    );
    setup.wait_reaped();
    assert!(!setup.host_veths().contains(&host_end));

    // A pair retired by a DEL whose reaper never ran: the next ADD in that
    // namespace deletes it; GC deletes any other.
    let c_end = again["interfaces"][1]["name"].as_str().expect("host end");
    let b_end = b["interfaces"][1]["name"].as_str().expect("host end");
    for (end, owner) in [(c_end, "ctr-c"), (b_end, "ctr-b")] {
        node.netns()
            .ip(&[
                "link",
                "set",
                end,
                "down",
                "alias",
                &format!("berth-cni-retired/berth/{owner}/eth0"),
            ])
            .expect("retire by hand");
    }
    let e = setup.add("ctr-e", &pod_a, &conf);
    let addresses = pod_a.ip(&["-4", "addr", "show", "eth0"]).expect("eth0");
    assert!(addresses.contains(&pod_ip(&e).to_string()), "{addresses}");
    assert!(!setup.host_veths().contains(c_end));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "ctr-b", "ifname": "eth0"},
        {"containerID": "ctr-d", "ifname": "eth0"},
        {"containerID": "ctr-e", "ifname": "eth0"},
    ]);
    assert!(setup.call("GC", "", None, &gc).success);
    assert!(
        !setup.host_veths().contains(b_end),
        "GC left a retired pair"
    );
    assert!(setup.retired_veths().is_empty());
    assert_eq!(setup.host_veths().len(), 2, "ctr-d and ctr-e stay");
}

#[test]
fn fifty_concurrent_adds_get_distinct_addresses_and_dels_release_them_all() {
    let setup = Setup::new(1);
    let conf = setup.conf("10.244.2.0/24");
    let pods: Vec<Netns> = (0..50)
        .map(|i| setup.node().add_pod(&format!("p{i}")).expect("pod"))
        .collect();
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let calls: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (setup, conf) = (&setup, &conf);
                s.spawn(move || pod_ip(&setup.add(&format!("ctr-{i}"), pod, conf)))
            })
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().expect("ADD thread"))
            .collect()
    });
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 50, "duplicate addresses: {ips:?}");
    assert_eq!(setup.leases().len(), 50);
    assert_eq!(setup.host_veths().len(), 50);

    std::thread::scope(|s| {
        for (i, pod) in pods.iter().enumerate() {
            let setup = &setup;
            let conf = &conf;
            s.spawn(move || {
                let del = setup.call("DEL", &format!("ctr-{i}"), Some(pod), conf);
                assert!(del.success, "DEL ctr-{i}: {}", del.json);
            });
        }
    });
    assert!(setup.leases().is_empty(), "leaked: {:?}", setup.leases());
    setup.wait_reaped();
    assert!(
        setup.host_veths().is_empty(),
        "leaked: {:?}",
        setup.host_veths()
    );
}

#[test]
fn gc_releases_everything_not_in_valid_attachments_and_status_reports_exhaustion() {
    let setup = Setup::new(1);
    let conf = setup.conf("10.244.3.0/24");
    let pods: Vec<Netns> = (0..3)
        .map(|i| setup.node().add_pod(&format!("g{i}")).expect("pod"))
        .collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| setup.add(&format!("ctr-{i}"), p, &conf))
        .collect();

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-0", "ifname": "eth0"}]);
    let reply = setup.call("GC", "", None, &gc);
    assert!(reply.success, "GC: {}", reply.json);
    assert_eq!(setup.leases(), vec![pod_ip(&results[0]).to_string()]);
    let kept = results[0]["interfaces"][1]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    assert_eq!(setup.host_veths(), HashSet::from([kept]));
    assert!(
        pods[1].ip(&["link", "show", "eth0"]).is_err(),
        "GC left ctr-1's interface"
    );

    // GC without the list would release everything: refused.
    let refused = setup.call("GC", "", None, &conf);
    assert_eq!(refused.code(), Some(7), "{}", refused.json);
    assert_eq!(setup.leases().len(), 1);

    // STATUS: ready; then a /30 (one address for pods) once it is used up.
    assert!(setup.call("STATUS", "", None, &conf).success);
    let tiny = json!({"cniVersion": "1.1.0", "name": "tiny", "type": "berth-cni", "bridge": "berth1",
        "subnet": "10.244.4.0/30", "dataDir": setup.data.0});
    assert!(setup.call("STATUS", "", None, &tiny).success);
    setup.add("ctr-t1", &pods[1], &tiny);
    let status = setup.call("STATUS", "", None, &tiny);
    assert_eq!(status.code(), Some(50), "{}", status.json);
    let full = setup.call("ADD", "ctr-t2", Some(&pods[2]), &tiny);
    assert_eq!(full.code(), Some(11), "{}", full.json);
    assert!(
        pods[2].ip(&["link", "show", "eth0"]).is_err(),
        "a failed ADD left an interface"
    );
}

#[test]
fn masquerade_gives_pod_traffic_leaving_the_cluster_the_node_address() {
    let setup = Setup::new(2);
    let (n0, n1) = (&setup.testbed.nodes()[0], &setup.testbed.nodes()[1]);
    let pod = n0.add_pod("m").expect("pod");
    setup.add("ctr-m", &pod, &setup.conf("10.244.5.0/24"));
    // n1 has no route to the pod CIDR: only a masqueraded connection works.
    let seen = tcp_exchange(n1.netns(), n1.underlay_ip(), &pod);
    assert_eq!(seen.ip(), n0.underlay_ip());
}

/// What is wrong, the environment, stdin, and the expected error code.
type BadCall<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u64);

#[test]
fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let setup = Setup::new(1);
    let node = setup.node();
    let pod = node.add_pod("bad").expect("pod");
    let before = node_links(node);
    let addresses = |dev: &str| node.netns().ip(&["-br", "addr", "show", "dev", dev]);
    let lo_before = addresses("lo").expect("lo");
    let good = setup.conf("10.244.6.0/24");
    let netns = pod.path().display().to_string();
    let base = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let stdin = serde_json::to_vec(&good).expect("encode");
    let without = |name: &str| -> Vec<(&str, &str)> {
        base.iter().copied().filter(|(k, _)| *k != name).collect()
    };
    let mut bad_subnet = good.clone();
    bad_subnet["subnet"] = json!("10.244.6.0/33");
    let bad_subnet = serde_json::to_vec(&bad_subnet).expect("encode");
    let edited = |field: &str, value: Value| {
        let mut conf = good.clone();
        conf[field] = value;
        if field == "subnet" {
            conf.as_object_mut().expect("conf").remove("clusterCIDR");
            conf["ipMasq"] = json!(false);
        }
        serde_json::to_vec(&conf).expect("encode")
    };
    let whole_internet = edited("subnet", json!("0.0.0.0/0"));
    let loopback_bridge = edited("bridge", json!("lo"));
    let relative_data = edited("dataDir", json!("leases/here"));
    let long_id = "c".repeat(10_000);
    let long_id_vars = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", long_id.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let deep = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    let missing_ns = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/run/netns/berth-no-such-ns"),
        ("CNI_IFNAME", "eth0"),
    ];
    let not_a_netns = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/etc/hostname"),
        ("CNI_IFNAME", "eth0"),
    ];
    let gc = [("CNI_COMMAND", "GC")];
    let mut old_gc = good.clone();
    old_gc["cniVersion"] = json!("1.0.0");
    old_gc["cni.dev/valid-attachments"] = json!([]);
    let old_gc = serde_json::to_vec(&old_gc).expect("encode");
    let cases: Vec<BadCall> = vec![
        ("no CNI_COMMAND", without("CNI_COMMAND"), &stdin, 4),
        ("no CNI_NETNS", without("CNI_NETNS"), &stdin, 4),
        ("no CNI_CONTAINERID", without("CNI_CONTAINERID"), &stdin, 4),
        (
            "malformed JSON",
            base.to_vec(),
            b"{\"cniVersion\": \"1.1.0\", \"name\": ",
            6,
        ),
        ("bad CIDR", base.to_vec(), &bad_subnet, 7),
        ("subnet 0.0.0.0/0", base.to_vec(), &whole_internet, 7),
        ("bridge lo", base.to_vec(), &loopback_bridge, 7),
        ("relative dataDir", base.to_vec(), &relative_data, 7),
        (
            "10 000-character CNI_CONTAINERID",
            long_id_vars.to_vec(),
            &stdin,
            4,
        ),
        ("100 000-deep JSON", base.to_vec(), deep.as_bytes(), 6),
        ("unknown namespace", missing_ns.to_vec(), &stdin, 3),
        (
            "a file that is no namespace",
            not_a_netns.to_vec(),
            &stdin,
            3,
        ),
        ("GC in a 1.0.0 configuration", gc.to_vec(), &old_gc, 1),
    ];
    for (what, vars, input, code) in cases {
        let reply = call(&setup.plugin, node.netns(), &vars, input).expect("run berth-cni");
        assert!(!reply.success, "{what}: succeeded");
        assert_eq!(reply.code(), Some(code), "{what}: {}", reply.json);
        assert!(
            reply.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            reply.json
        );
    }
    assert_eq!(
        node_links(node),
        before,
        "bad input changed the node's links"
    );
    assert_eq!(addresses("lo").expect("lo"), lo_before, "lo was changed");
    assert!(
        !Path::new(&setup.data.0).exists(),
        "bad input created lease state"
    );
    assert!(
        !node.netns().path().join("leases").exists() && !Path::new("leases").exists(),
        "a relative dataDir was used"
    );
    assert!(pod.ip(&["link", "show", "eth0"]).is_err());
}

#[test]
fn an_add_that_fails_after_wiring_began_leaves_nothing_behind() {
    let setup = Setup::new(1);
    let node = setup.node();
    let conf = setup.conf("10.244.7.0/24");
    let pod = node.add_pod("clash").expect("pod");
    // The pod already has a default route (another interface's): adding
    // ours fails after the veth pair and the lease exist.
    pod.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ])
    .expect("another interface");
    pod.ip(&["addr", "add", "192.168.99.1/24", "dev", "other0"])
        .expect("address");
    pod.ip(&["link", "set", "other0", "up"]).expect("up");
    pod.ip(&["route", "add", "default", "via", "192.168.99.2"])
        .expect("default route");
    let before = node_links(node);

    let reply = setup.call("ADD", "ctr-clash", Some(&pod), &conf);
    assert!(!reply.success, "ADD succeeded despite the clash");
    assert_eq!(reply.code(), Some(101), "{}", reply.json);
    assert!(
        setup.leases().is_empty(),
        "lease left: {:?}",
        setup.leases()
    );
    assert!(
        setup.host_veths().is_empty(),
        "veth left: {:?}",
        setup.host_veths()
    );
    // The bridge may stay (node infrastructure, as with the reference
    // plugin); nothing else is new on the node.
    let after: Vec<String> = node_links(node)
        .into_iter()
        .filter(|l| l != "berth0")
        .collect();
    assert_eq!(after, before);
    assert!(pod.ip(&["link", "show", "eth0"]).is_err());

    // Once the clash is gone, the same ADD works.
    pod.ip(&["route", "del", "default"])
        .expect("remove the other default route");
    setup.add("ctr-clash", &pod, &conf);
}
