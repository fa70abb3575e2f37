//! The socket-level load balancer on a testbed node: a connect to a
//! virtual IP:port from inside the node's cgroup reaches a real backend;
//! the same connect from outside it is not translated.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::process::{Command, Output, Stdio};

use berth_ebpf::model::{Backend, Frontend, Protocol};
use berth_ebpf::{LbMaps, MapSizes, SockLb, SockLbConfig};
use berth_tests::{leftovers, require_root, Node, Testbed, TestbedConfig};

/// A frontend's (backend id, backend) per slot.
type Slots = Vec<(u32, Option<Backend>)>;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn attach(node: &Node) -> SockLb {
    let config = SockLbConfig {
        pin_dir: node.pin_dir().to_path_buf(),
        map_sizes: MapSizes::default(),
    };
    SockLb::attach(&config, node.cgroup().path()).expect("attach sock_lb")
}

/// Backend `10.244.0.<last>:8080`.
fn pod_backend(last: u8, proto: Protocol) -> Backend {
    Backend {
        addr: SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, last), 8080),
        proto,
    }
}

/// Programs `frontend` with the one TCP backend `backend`.
fn program_one(lb: &SockLb, frontend: &Frontend, backend: SocketAddrV4) {
    lb.maps()
        .expect("maps")
        .upsert_service(
            frontend,
            &[Backend {
                addr: backend,
                proto: Protocol::Tcp,
            }],
        )
        .expect("program");
}

/// `bpftool -j map VERB pinned` of one of the node's maps (`show`, `dump`).
fn bpftool(node: &Node, verb: &str, map: &str) -> serde_json::Value {
    let out = berth_tests::run(
        Command::new("bpftool")
            .args(["-j", "map", verb, "pinned"])
            .arg(node.pin_dir().join(map)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).expect("bpftool JSON")
}

/// The entries of one of the node's maps, as bpftool prints them.
fn bpftool_dump(node: &Node, map: &str) -> Vec<serde_json::Value> {
    bpftool(node, "dump", map)
        .as_array()
        .expect("array of entries")
        .clone()
}

/// A TCP server on the node's loopback that answers each connection with
/// `greeting`; returns its address.
fn serve(node: &Node, greeting: &'static str, connections: usize) -> SocketAddrV4 {
    let listener = node
        .netns()
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("enter node")
        .expect("bind on loopback");
    let addr = match listener.local_addr().expect("address") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("IPv4 expected, got {other}"),
    };
    std::thread::spawn(move || {
        for _ in 0..connections {
            if let Ok((mut conn, _)) = listener.accept() {
                let _ = conn.write_all(greeting.as_bytes());
            }
        }
    });
    addr
}

/// `busybox nc -w 3 IP PORT` in the node's netns, inside its cgroup or not.
fn nc(node: &Node, target: SocketAddrV4, in_cgroup: bool) -> Output {
    let mut cmd: Command = node.netns().command("busybox").expect("command");
    cmd.args([
        "nc",
        "-w",
        "3",
        &target.ip().to_string(),
        &target.port().to_string(),
    ])
    .stdin(Stdio::null());
    if in_cgroup {
        node.cgroup().add_on_spawn(&mut cmd).expect("cgroup");
    }
    cmd.output().expect("run busybox nc")
}

#[test]
fn connect_to_a_virtual_address_is_translated_only_inside_the_node_cgroup() {
    require_root();
    let config = TestbedConfig::new(1);
    let testbed = Testbed::new(&config).expect("testbed");
    let node = &testbed.nodes()[0];
    let lb = attach(node);

    let backend = serve(node, "hello from the backend\n", 1);
    let frontend = Frontend::new(VIP, 80, Protocol::Tcp);
    let mut maps = lb.maps().expect("open maps");
    maps.upsert_service(
        &frontend,
        &[Backend {
            addr: backend,
            proto: Protocol::Tcp,
        }],
    )
    .expect("program service");

    let inside = nc(node, frontend.addr, true);
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout),
        "hello from the backend\n",
        "stderr: {}",
        String::from_utf8_lossy(&inside.stderr)
    );

    // Outside the cgroup the virtual IP is just an address with no route.
    let outside = nc(node, frontend.addr, false);
    assert!(
        !outside.status.success(),
        "connect outside the cgroup must fail"
    );
    assert!(outside.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(
        stderr.contains("unreachable"),
        "untranslated connect: {stderr}"
    );

    // bpftool prints the pinned maps with the C field names.
    let services = bpftool_dump(node, "lb4_services");
    assert_eq!(services.len(), 1, "one master entry: {services:#?}");
    let master = &services[0]["formatted"];
    assert_eq!(master["value"]["count"], 1);
    assert_eq!(master["key"]["dport"], u64::from(80u16.to_be()));
    assert_eq!(master["key"]["proto"], 6);
    assert_eq!(
        master["key"]["address"],
        u64::from(u32::from_ne_bytes(VIP.octets()))
    );
    // The listing names each slot's key in lb4_slots (the master's base).
    let listed = &maps.services().expect("list")[0].slots[0];
    assert_eq!(master["value"]["slot_base"], u64::from(listed.index));
    let slots = bpftool_dump(node, "lb4_slots");
    let slot = &slots[listed.index as usize]["formatted"];
    assert_eq!(slot["key"], u64::from(listed.index));
    let id = listed.backend_id;
    assert_eq!(slot["value"]["backend_id"], u64::from(id));
    let backends = bpftool_dump(node, "lb4_backends");
    let entry = &backends[id as usize]["formatted"]["value"];
    assert_eq!(entry["port"], u64::from(backend.port().to_be()));

    drop(lb);
    drop(testbed);
    assert_eq!(
        leftovers(&config.prefix).expect("leftovers"),
        Vec::<String>::new()
    );
}

#[test]
fn a_service_without_backends_refuses_at_once() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    let lb = attach(node);
    let frontend = Frontend::new(VIP, 8080, Protocol::Tcp);
    lb.maps()
        .expect("maps")
        .upsert_service(&frontend, &[])
        .expect("program empty service");

    let out = nc(node, frontend.addr, true);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not permitted"), "{stderr}");
}

#[test]
fn a_new_loader_adopts_the_pinned_maps_and_link() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    let frontend = Frontend::new(VIP, 443, Protocol::Tcp);
    let backend = serve(node, "still here\n", 2);
    {
        let lb = attach(node);
        program_one(&lb, &frontend, backend);
    }
    // The loader is gone; the pinned link keeps translating.
    let out = nc(node, frontend.addr, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");

    // A new loader keeps the programmed service.
    let lb = attach(node);
    let services = lb.maps().expect("maps").services().expect("dump");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].frontend, frontend);
    let out = nc(node, frontend.addr, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");

    // Detaching stops translation.
    drop(lb);
    assert!(SockLb::detach(node.pin_dir()).expect("detach"));
    let out = nc(node, frontend.addr, true);
    assert!(!out.status.success());
}

#[test]
fn maps_keep_backend_ids_across_changes_and_reopens() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    let _lb = attach(node);
    let backend = |last: u8| pod_backend(last, Protocol::Tcp);
    let web = Frontend::new(VIP, 80, Protocol::Tcp);
    let api = Frontend::new(Ipv4Addr::new(10, 96, 0, 11), 80, Protocol::Tcp);

    let mut maps = LbMaps::open_pinned(node.pin_dir()).expect("open");
    maps.upsert_service(&web, &[backend(1), backend(2), backend(3)])
        .expect("web");
    maps.upsert_service(&api, &[backend(3)]).expect("api");
    let ids = |maps: &LbMaps| -> Vec<(Frontend, Slots)> {
        maps.services()
            .expect("dump")
            .into_iter()
            .map(|s| {
                (
                    s.frontend,
                    s.slots
                        .into_iter()
                        .map(|x| (x.backend_id, x.backend))
                        .collect(),
                )
            })
            .collect()
    };
    let before = ids(&maps);
    let web_ids: Vec<u32> = before[0].1.iter().map(|(id, _)| *id).collect();
    assert_eq!(before[1].1[0].0, web_ids[2], "a shared backend has one id");

    // Reopening (a restarted agent) finds the same ids and reuses them.
    drop(maps);
    let mut maps = LbMaps::open_pinned(node.pin_dir()).expect("reopen");
    assert_eq!(ids(&maps), before);
    maps.upsert_service(&web, &[backend(1), backend(3)])
        .expect("shrink");
    let after = ids(&maps);
    assert_eq!(
        after[0].1,
        vec![
            (web_ids[0], Some(backend(1))),
            (web_ids[2], Some(backend(3)))
        ]
    );

    // Growing past its slot range moves a frontend to a new one; what the
    // kernel holds reads back the same after a reopen.
    maps.upsert_service(
        &web,
        &[backend(1), backend(3), backend(4), backend(5), backend(6)],
    )
    .expect("grow");
    let grown = ids(&maps);
    assert_eq!(grown[0].1.len(), 5);
    assert_eq!(&grown[0].1[..2], &after[0].1[..]);
    drop(maps);
    let mut maps = LbMaps::open_pinned(node.pin_dir()).expect("reopen");
    assert_eq!(ids(&maps), grown);

    // Removing the last user of a backend frees it; shared ones stay.
    assert!(maps.remove_service(&web).expect("remove"));
    assert!(!maps.remove_service(&web).expect("remove again"));
    let left = ids(&maps);
    assert_eq!(left, vec![(api, vec![(web_ids[2], Some(backend(3)))])]);
    let fill = |maps: &LbMaps, map: &str| {
        maps.fill()
            .into_iter()
            .find(|(name, _, _)| *name == map)
            .map(|(_, used, _)| used)
    };
    assert_eq!(fill(&maps, "lb4_slots"), Some(1), "web's slots are free");
    assert_eq!(fill(&maps, "lb4_backends"), Some(1));
    drop(maps);
    let maps = LbMaps::open_pinned(node.pin_dir()).expect("reopen");
    assert_eq!(ids(&maps), left);
    assert_eq!(fill(&maps, "lb4_slots"), Some(1));
}

#[test]
fn maps_pinned_with_an_older_layout_are_recreated() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    // lb4_services as an older Berth pinned it: 12-byte keys, 8-byte values.
    std::fs::create_dir_all(node.pin_dir()).expect("pin dir");
    let old = node.pin_dir().join("lb4_services");
    let created = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&old)
        .args(["type", "hash", "key", "12", "value", "8", "entries", "16"])
        .args(["name", "lb4_services"])
        .status()
        .expect("bpftool");
    assert!(created.success());

    let lb = attach(node);
    let frontend = Frontend::new(VIP, 80, Protocol::Tcp);
    let backend = serve(node, "new layout\n", 1);
    program_one(&lb, &frontend, backend);
    let out = nc(node, frontend.addr, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "new layout\n");
    let info = bpftool(node, "show", "lb4_services");
    assert_eq!(info["bytes_key"], 8, "{info}");
}

#[test]
fn a_new_map_size_takes_effect_at_the_next_start_and_keeps_the_entries() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    let attach_sized = |services: u32| {
        let config = SockLbConfig {
            pin_dir: node.pin_dir().to_path_buf(),
            map_sizes: MapSizes {
                services,
                ..MapSizes::default()
            },
        };
        SockLb::attach(&config, node.cgroup().path()).expect("attach sock_lb")
    };
    let lb = attach_sized(64);
    let frontend = Frontend::new(VIP, 80, Protocol::Tcp);
    let backend = serve(node, "kept\n", 1);
    program_one(&lb, &frontend, backend);
    assert_eq!(bpftool(node, "show", "lb4_services")["max_entries"], 64);
    drop(lb);
    // The operator raises the size; the next start (before anything is
    // programmed again) has the bigger map with the same entries.
    let _lb = attach_sized(128);
    assert_eq!(bpftool(node, "show", "lb4_services")["max_entries"], 128);
    assert_eq!(bpftool_dump(node, "lb4_services").len(), 1);
    assert!(!node.pin_dir().join("lb4_services_resizing").exists());
    let out = nc(node, frontend.addr, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
}

#[test]
fn a_maglev_table_follows_the_backends_and_moves_only_the_flows_of_one_that_leaves() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];
    let _lb = attach(node);
    let backend = |last: u8| pod_backend(last, Protocol::Udp);
    let frontend = Frontend::new(VIP, 53, Protocol::Udp);
    let mut maps = LbMaps::open_pinned(node.pin_dir()).expect("open");
    let all: Vec<Backend> = (1..=4).map(backend).collect();
    maps.upsert_service(&frontend, &all).expect("program");
    assert!(maps.set_maglev(&frontend, true).expect("maglev on"));
    assert!(
        !maps.set_maglev(&frontend, true).expect("again"),
        "no change the second time"
    );
    let clients: Vec<SocketAddrV4> = (0..200)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(172, 30, 0, 254), 40_000 + i))
        .collect();
    let choose = |maps: &LbMaps| -> Vec<Backend> {
        clients
            .iter()
            .map(|c| {
                let (_, _, chosen) = maps
                    .maglev_choice(&frontend, *c)
                    .expect("read the table")
                    .expect("a table");
                chosen.expect("the entry names a live backend")
            })
            .collect()
    };
    let before = choose(&maps);
    assert!(
        all.iter().all(|b| before.contains(b)),
        "every backend gets flows"
    );

    // Backend 4 leaves: its flows move, the others' (almost all) stay.
    maps.upsert_service(&frontend, &all[..3]).expect("shrink");
    let after = choose(&maps);
    assert!(
        after.iter().all(|b| *b != all[3]),
        "no flow goes to the backend that left"
    );
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(was, now)| **was != all[3] && was != now)
        .count();
    assert!(
        moved <= clients.len() / 20,
        "{moved} flows of remaining backends moved"
    );
    assert!(maps.services().expect("list")[0].maglev);

    // Off again: the table is gone.
    assert!(maps.set_maglev(&frontend, false).expect("maglev off"));
    assert!(maps
        .maglev_choice(&frontend, clients[0])
        .expect("read")
        .is_none());
}
