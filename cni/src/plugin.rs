//! The plugin's commands: ADD, DEL, CHECK, STATUS, GC and VERSION.
//!
//! Every command validates its whole input before it touches the node, and
//! holds the network's lease lock for its duration, so concurrent calls
//! see each other's effects whole. ADD undoes what it made when a later
//! step fails.

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use berth_net::netlink::{
    self, delete_link, errno, link_alias, link_by_index, link_by_name, link_controller,
    link_is_bridge, link_mac, link_mtu, link_name, link_peer,
};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::json;

use crate::config::{Attachment, NetConf, SUPPORTED_VERSIONS};
use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam::Leases;
use crate::masq;
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::retire;

/// Prefix of the host ends of pod veths (`bv` + 8 hex digits).
pub const HOST_VETH_PREFIX: &str = "bv";

/// Runs one call. Returns what to print on stdout, if anything.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Option<serde_json::Value>> {
    if env.command == Command::Version {
        let version = NetConf::version_of(stdin).unwrap_or_else(|| "1.1.0".to_string());
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    check_version_allows(env.command, &conf.cni_version)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(Code::Io, "cannot start the netlink runtime", e))?;
    runtime.block_on(async {
        match env.command {
            Command::Add => add(env, &conf).await.map(Some),
            Command::Del => del(env, &conf).await.map(|()| None),
            Command::Check => check(env, &conf).await.map(|()| None),
            Command::Status => status(&conf).map(|()| None),
            Command::Gc => gc(&conf).await.map(|()| None),
            Command::Version => Ok(None),
        }
    })
}

/// CHECK came with spec 0.4.0, STATUS and GC with 1.1.0: a configuration
/// of an older version does not allow them (error 1, as the reference
/// plugins answer).
fn check_version_allows(command: Command, version: &str) -> Result<()> {
    let since = match command {
        Command::Check => "0.4.0",
        Command::Status | Command::Gc => "1.1.0",
        _ => return Ok(()),
    };
    let rank = |v: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == v);
    if rank(version) < rank(since) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("cniVersion {version} does not allow this command"),
            format!("it needs cniVersion {since} or later"),
        ));
    }
    Ok(())
}

/// The alias the host end of an attachment carries: what DEL and GC check
/// before removing a link, so they never remove one they did not make.
pub fn host_veth_alias(network: &str, owner: &Attachment) -> String {
    format!(
        "berth-cni/{network}/{}/{}",
        owner.container_id, owner.ifname
    )
}

/// The attachment a host end belongs to, read back from its alias.
fn alias_owner(alias: &str, network: &str) -> Option<Attachment> {
    let rest = alias
        .strip_prefix("berth-cni/")?
        .strip_prefix(network)?
        .strip_prefix('/')?;
    let (container_id, ifname) = rest.split_once('/')?;
    Some(Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

/// Whether a link is a host end this plugin made: it carries `alias` (any
/// of this plugin's when `None`), or it is a pair left half-made by an ADD
/// killed between creating it and naming it (our name pattern, no alias,
/// on no bridge).
fn is_ours(link: &LinkMessage, alias: Option<&str>) -> bool {
    match (link_alias(link), alias) {
        (Some(found), Some(wanted)) => found == wanted,
        (Some(found), None) => found.starts_with("berth-cni/"),
        (None, _) => {
            let name = link_name(link).unwrap_or_default();
            let hex = name.strip_prefix(HOST_VETH_PREFIX).unwrap_or_default();
            hex.len() == 8
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
                && link_controller(link).is_none()
        }
    }
}

/// The host end's name for an attachment: stable, so DEL and GC find it
/// without state, and at most 15 characters.
pub fn host_veth_name(owner: &Attachment) -> String {
    format!("{HOST_VETH_PREFIX}{:08x}", fnv1a(owner) as u32)
}

/// A stable hash of the attachment: id, NUL, ifname.
fn fnv1a(owner: &Attachment) -> u64 {
    let key = [owner.container_id.as_bytes(), &[0], owner.ifname.as_bytes()].concat();
    berth_net::mac::stable_hash(&key)
}

fn kernel(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Kernel, format!("cannot {what}"), e)
}

fn owner_of(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// Opens the container's namespace: an unknown container, or a path that
/// is not a namespace, is code 3.
fn open_netns(path: &Path) -> Result<File> {
    berth_net::netns::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "cannot open the container's network namespace",
            e,
        )
    })
}

fn connect_host() -> Result<Handle> {
    netlink::connect().map_err(|e| kernel("open netlink", e))
}

fn connect_pod(path: &Path) -> Result<Handle> {
    netlink::connect_in(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "cannot enter the container's namespace",
            e,
        )
    })
}

async fn add(env: &Env, conf: &NetConf) -> Result<serde_json::Value> {
    let netns_path = env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            "CNI_NETNS is required for ADD",
            "",
        )
    })?;
    let netns = open_netns(netns_path)?;
    let owner = owner_of(env);
    let host = connect_host()?;
    // A configured "bridge" that names another device is refused before
    // anything (leases included) is touched.
    existing_bridge(&host, conf).await?;
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let pod = connect_pod(netns_path)?;
    let existing = link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| kernel("read the container's links", e))?;
    let taken = match existing {
        Some(link) => !clear_retired(&host, conf, &link).await?,
        None => false,
    };
    if taken && leases.find(&owner)?.is_none() {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("interface {} already exists in the container", env.ifname),
            "another network owns it; choose another CNI_IFNAME",
        ));
    }
    let ip = leases.allocate(conf.subnet, &owner)?;
    let sandbox = Sandbox {
        handle: &pod,
        file: &netns,
        path: netns_path,
    };
    let wired = async {
        let (bridge, node_setup) = ensure_bridge(&host, conf).await?;
        enable_forwarding()?;
        let ours = wire_pod(&host, &sandbox, &bridge, conf, &owner, ip).await?;
        Ok((ours, node_setup))
    };
    match wired.await {
        // Masquerading is node setup: stated when the bridge or its
        // gateway address had to be made (first ADD after a boot). The
        // agent keeps it in place afterwards; one nft run per ADD would
        // double ADD's time.
        Ok((mut ours, node_setup)) => {
            if conf.ip_masq && node_setup {
                if let Some(cluster) = conf.cluster_cidr {
                    if let Err(e) = masq::apply(None, &conf.name, conf.subnet, cluster)
                        .map_err(|e| kernel("set up masquerading", e))
                    {
                        undo_wiring(&host, conf, &owner).await;
                        leases.release(&owner)?;
                        return Err(e);
                    }
                }
            }
            ours.cni_version = conf.cni_version.clone();
            let result = match conf.prev_result.clone() {
                Some(mut prev) => {
                    prev.extend(ours);
                    prev
                }
                None => ours,
            };
            serde_json::to_value(result.for_version(&conf.cni_version))
                .map_err(|e| CniError::new(Code::Io, "cannot encode the result", e))
        }
        Err(e) => {
            undo_wiring(&host, conf, &owner).await;
            leases.release(&owner)?;
            Err(e)
        }
    }
}

/// The node's bridge if it exists; an error if the name is taken by
/// another kind of device (lo, eth0), which must never get the gateway.
async fn existing_bridge(host: &Handle, conf: &NetConf) -> Result<Option<LinkMessage>> {
    match link_by_name(host, &conf.bridge)
        .await
        .map_err(|e| kernel("read links", e))?
    {
        Some(link) if !link_is_bridge(&link) => Err(CniError::new(
            Code::InvalidConfig,
            "bridge names a device that is not a bridge",
            format!(
                "{:?} exists and is not a bridge; name another device in \"bridge\"",
                conf.bridge
            ),
        )),
        found => Ok(found),
    }
}

/// The bridge, created with the gateway address when missing; idempotent.
/// Also says whether anything had to be made (node setup).
async fn ensure_bridge(host: &Handle, conf: &NetConf) -> Result<(LinkMessage, bool)> {
    let mut made = false;
    let link = match existing_bridge(host, conf).await? {
        Some(link) => link,
        None => {
            made = true;
            match host
                .link()
                .add(
                    LinkBridge::new(&conf.bridge)
                        .mtu(conf.mtu)
                        .address(bridge_mac(conf.gateway()).to_vec())
                        .build(),
                )
                .execute()
                .await
            {
                Err(e) if errno(&e) != Some(libc::EEXIST) => {
                    return Err(kernel(&format!("create bridge {}", conf.bridge), e))
                }
                _ => {}
            }
            link_by_name(host, &conf.bridge)
                .await
                .map_err(|e| kernel("read links", e))?
                .ok_or_else(|| {
                    kernel(
                        &format!("find bridge {}", conf.bridge),
                        "it vanished after creation",
                    )
                })?
        }
    };
    let index = link.header.index;
    let gateway = conf.gateway();
    let has_gateway = host
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_filter(|a| {
            let found = a.header.family == AddressFamily::Inet
                && a.header.prefix_len == conf.subnet.prefix()
                && a.attributes.iter().any(
                    |at| matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == gateway),
                );
            std::future::ready(found)
        })
        .try_next()
        .await
        .map_err(|e| kernel("read the bridge's addresses", e))?
        .is_some();
    if !has_gateway {
        made = true;
        host.address()
            .add(index, IpAddr::V4(gateway), conf.subnet.prefix())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                kernel(
                    &format!("give {} its gateway address {gateway}", conf.bridge),
                    e,
                )
            })?;
    }
    host.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| kernel(&format!("bring {} up", conf.bridge), e))?;
    Ok((link, made))
}

/// The bridge's MAC, fixed and derived from its gateway address
/// (`0a:58:` + the address, a locally administered unicast MAC): without
/// one the bridge takes its lowest port's MAC, which changes as pods come
/// and go and makes pods' ARP entries for the gateway go stale.
fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// Pods reach other nodes through this namespace's routes.
fn enable_forwarding() -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| {
        CniError::new(
            Code::Io,
            "cannot enable IPv4 forwarding",
            format!("{path}: {e}"),
        )
    })
}

/// The container's network namespace: its file, path and a handle in it.
#[derive(Debug, Clone, Copy)]
struct Sandbox<'a> {
    handle: &'a Handle,
    file: &'a File,
    path: &'a Path,
}

/// A veth pair whose host end is `host_name` here and whose other end is
/// `ifname` in the namespace `netns`, made in one request: no move between
/// namespaces afterwards (a move waits for an RCU grace period, which
/// dominated ADD's time).
fn veth_into(host_name: &str, ifname: &str, mtu: u32, netns: &File) -> LinkMessage {
    let peer = LinkUnspec::new_with_name(ifname)
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let mut message = LinkVeth::new(host_name, ifname).mtu(mtu).build();
    for attr in &mut message.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos {
                if let LinkInfo::Data(InfoData::Veth(data)) = info {
                    *data = InfoVeth::Peer(peer.clone());
                }
            }
        }
    }
    message
}

/// Creates the veth pair with one end in the pod and configures both.
async fn wire_pod(
    host: &Handle,
    sandbox: &Sandbox<'_>,
    bridge: &LinkMessage,
    conf: &NetConf,
    owner: &Attachment,
    ip: Ipv4Addr,
) -> Result<CniResult> {
    let Sandbox {
        handle: pod,
        file: netns,
        path: sandbox,
    } = *sandbox;
    let host_name = host_veth_name(owner);
    // A leftover from an interrupted ADD of the same attachment goes first.
    undo_wiring(host, conf, owner).await;
    host.link()
        .add(veth_into(&host_name, &owner.ifname, conf.mtu, netns))
        .execute()
        .await
        .map_err(|e| {
            kernel(
                &format!(
                    "create veth {host_name} with {} in the container",
                    owner.ifname
                ),
                e,
            )
        })?;
    let host_link = link_by_name(host, &host_name)
        .await
        .map_err(|e| kernel("read links", e))?
        .ok_or_else(|| kernel("find the new veth", &host_name))?;
    let host_index = host_link.header.index;
    // The alias marks the pair as this attachment's (the kernel takes it
    // on a change, not at creation): set at once, before anything can fail.
    host.link()
        .change(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge.header.index)
                .alias(host_veth_alias(&conf.name, owner))
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| kernel(&format!("attach {host_name} to {}", conf.bridge), e))?;
    if conf.hairpin {
        host.link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(|e| kernel(&format!("set hairpin on {host_name}"), e))?;
    }

    let index = link_by_name(pod, &owner.ifname)
        .await
        .map_err(|e| kernel("read the container's links", e))?
        .ok_or_else(|| kernel("find the veth in the container", &owner.ifname))?
        .header
        .index;
    pod.address()
        .add(index, IpAddr::V4(ip), conf.subnet.prefix())
        .execute()
        .await
        .map_err(|e| kernel(&format!("give {} the address {ip}", owner.ifname), e))?;
    pod.link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| kernel(&format!("bring {} up", owner.ifname), e))?;
    let gateway = conf.gateway();
    pod.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .output_interface(index)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| kernel(&format!("add the default route via {gateway}"), e))?;

    let pod_link = link_by_name(pod, &owner.ifname)
        .await
        .map_err(|e| kernel("read the container's links", e))?
        .ok_or_else(|| kernel("find the container's interface", &owner.ifname))?;
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: link_mac(bridge).unwrap_or_default(),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: link_mac(&host_link).unwrap_or_default(),
                mtu: Some(conf.mtu),
                sandbox: None,
            },
            Interface {
                name: owner.ifname.clone(),
                mac: link_mac(&pod_link).unwrap_or_default(),
                mtu: Some(conf.mtu),
                sandbox: Some(sandbox.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: format!("{ip}/{}", conf.subnet.prefix()),
            gateway: Some(gateway.to_string()),
            interface: Some(2),
            version: None,
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".to_string(),
            gw: Some(gateway.to_string()),
            mtu: None,
        }],
        ..Default::default()
    })
}

/// Removes the attachment's veth pair by its host end (the pod end goes
/// with it), if that end carries the attachment's alias (or its retired
/// form: a DEL whose reaper has not run yet); a pair that is already gone
/// is fine.
async fn undo_wiring(host: &Handle, conf: &NetConf, owner: &Attachment) {
    let name = host_veth_name(owner);
    let alias = host_veth_alias(&conf.name, owner);
    if let Ok(Some(link)) = link_by_name(host, &name).await {
        let retired = link_alias(&link) == Some(retire::retired_alias(&alias).as_str());
        if !retired && !is_ours(&link, Some(&alias)) {
            tracing::warn!(link = %name, "not removing a link this attachment did not make");
            return;
        }
        if let Err(e) = delete_link(host, link.header.index).await {
            tracing::warn!(link = %name, error = %e, "cannot remove veth");
        }
    }
}

/// A pod interface whose pair's host end a DEL retired (its reaper has
/// not run yet) is deleted now, so that the name is free for this ADD.
/// Returns whether it was such an interface.
async fn clear_retired(host: &Handle, conf: &NetConf, pod_link: &LinkMessage) -> Result<bool> {
    let Some(peer) = link_peer(pod_link) else {
        return Ok(false);
    };
    let host_end = link_by_index(host, peer)
        .await
        .map_err(|e| kernel("read links", e))?;
    if !host_end.is_some_and(|l| retire::is_retired(&l, &conf.name)) {
        return Ok(false);
    }
    delete_link(host, peer)
        .await
        .map_err(|e| kernel("delete a retired veth", e))?;
    Ok(true)
}

/// DEL works on the host end, wherever the pod's namespace is (or whether
/// it still exists): it never touches an interface in the container by
/// name, which might belong to another network. The pair is retired (down,
/// so nothing flows and the address can be leased again at once) and
/// deleted by a detached reaper ([`retire`]); where that cannot start, it
/// is deleted here.
async fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let owner = owner_of(env);
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let host = connect_host()?;
    let alias = host_veth_alias(&conf.name, &owner);
    let found = link_by_name(&host, &host_veth_name(&owner))
        .await
        .map_err(|e| kernel("read links", e))?;
    if let Some(link) = found.filter(|l| is_ours(l, Some(&alias))) {
        let index = link.header.index;
        let reaping = match retire::retire(&host, index, &alias).await {
            Ok(()) => retire::spawn_reaper(index, &retire::retired_alias(&alias))
                .inspect_err(|e| tracing::warn!(error = %e, "cannot start a reaper"))
                .is_ok(),
            Err(e) if errno(&e) == Some(libc::ENODEV) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot retire the veth");
                false
            }
        };
        if !reaping {
            undo_wiring(&host, conf, &owner).await;
        }
    }
    leases.release(&owner)?;
    Ok(())
}

fn check_failed(what: String) -> CniError {
    CniError::new(
        Code::CheckFailed,
        "the attachment differs from what ADD made",
        what,
    )
}

async fn check(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult",
            "the runtime passes ADD's result as prevResult",
        )
    })?;
    let netns_path = env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            "CNI_NETNS is required for CHECK",
            "",
        )
    })?;
    open_netns(netns_path)?;
    let owner = owner_of(env);
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let leased = leases.find(&owner)?.ok_or_else(|| {
        check_failed(format!(
            "no address is leased to {}/{}",
            owner.container_id, owner.ifname
        ))
    })?;
    let expected = format!("{leased}/{}", conf.subnet.prefix());
    if !prev.ips.iter().any(|ip| ip.address == expected) {
        return Err(check_failed(format!(
            "prevResult does not list the leased address {expected}"
        )));
    }
    let host = connect_host()?;
    let pod = connect_pod(netns_path)?;
    let link = link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| kernel("read the container's links", e))?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {} is missing from the container",
                env.ifname
            ))
        })?;
    if link_mtu(&link) != Some(conf.mtu) {
        return Err(check_failed(format!(
            "{} has MTU {:?}, expected {}",
            env.ifname,
            link_mtu(&link),
            conf.mtu
        )));
    }
    let has_address =
        pod.address()
            .get()
            .set_link_index_filter(link.header.index)
            .execute()
            .try_filter(|a| {
                std::future::ready(a.attributes.iter().any(
                    |at| matches!(at, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == leased),
                ))
            })
            .try_next()
            .await
            .map_err(|e| kernel("read the container's addresses", e))?
            .is_some();
    if !has_address {
        return Err(check_failed(format!(
            "{} lacks its address {expected}",
            env.ifname
        )));
    }
    let gateway = conf.gateway();
    let has_default = pod
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_filter(|r| {
            let default = r.header.destination_prefix_length == 0
                && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Gateway(RouteAddress::Inet(g)) if *g == gateway));
            std::future::ready(default)
        })
        .try_next()
        .await
        .map_err(|e| kernel("read the container's routes", e))?
        .is_some();
    if !has_default {
        return Err(check_failed(format!(
            "the container has no default route via {gateway}"
        )));
    }
    let host_name = host_veth_name(&owner);
    let host_link = link_by_name(&host, &host_name)
        .await
        .map_err(|e| kernel("read links", e))?
        .ok_or_else(|| check_failed(format!("host interface {host_name} is missing")))?;
    let bridge = link_by_name(&host, &conf.bridge)
        .await
        .map_err(|e| kernel("read links", e))?
        .ok_or_else(|| check_failed(format!("bridge {} is missing", conf.bridge)))?;
    if link_controller(&host_link) != Some(bridge.header.index) {
        return Err(check_failed(format!(
            "{host_name} is not attached to {}",
            conf.bridge
        )));
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<()> {
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    if leases.free(conf.subnet)? == 0 {
        return Err(CniError::new(
            Code::NotAvailable,
            "no free address",
            format!("every address of {} is leased", conf.subnet),
        ));
    }
    Ok(())
}

async fn gc(conf: &NetConf) -> Result<()> {
    let valid: &HashSet<Attachment> = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "GC needs cni.dev/valid-attachments",
            "without the list every attachment would be released",
        )
    })?;
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let released = leases.retain(valid)?;
    if !released.is_empty() {
        tracing::info!(?released, "GC released leases");
    }
    // Every host end this network made (its alias says so) whose
    // attachment is not valid goes, attached to the bridge or left
    // half-made by an interrupted ADD.
    let host = connect_host()?;
    let links: Vec<LinkMessage> = host
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("read links", e))?;
    for link in links {
        // Half-made by an interrupted ADD, or retired by a DEL whose reaper
        // did not finish.
        let abandoned = (link_alias(&link).is_none() && is_ours(&link, None))
            || retire::is_retired(&link, &conf.name);
        let owner = link_alias(&link).and_then(|a| alias_owner(a, &conf.name));
        if !abandoned && owner.as_ref().is_none_or(|o| valid.contains(o)) {
            continue;
        }
        let owner = owner.unwrap_or_else(|| Attachment {
            container_id: "(unknown)".into(),
            ifname: String::new(),
        });
        let name = link_name(&link).unwrap_or_default().to_string();
        tracing::info!(link = %name, container = %owner.container_id, "GC removes stale veth");
        delete_link(&host, link.header.index)
            .await
            .map_err(|e| kernel(&format!("delete {name}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let b = Attachment {
            container_id: "c1".into(),
            ifname: "eth1".into(),
        };
        // FNV-1a of a fixed input never changes between builds: DEL after an
        // upgrade still finds the interface ADD made.
        assert_eq!(host_veth_name(&a), "bv2ccb905e");
        assert_ne!(host_veth_name(&a), host_veth_name(&b));
    }

    #[test]
    fn aliases_name_network_and_attachment() {
        let owner = Attachment {
            container_id: "c.1-x".into(),
            ifname: "eth0".into(),
        };
        let alias = host_veth_alias("net", &owner);
        assert_eq!(alias_owner(&alias, "net"), Some(owner));
        assert_eq!(alias_owner(&alias, "ne"), None, "another network's link");
        assert_eq!(alias_owner("something else", "net"), None);
    }

    #[test]
    fn older_versions_do_not_allow_newer_commands() {
        assert!(check_version_allows(Command::Check, "0.3.1").is_err());
        assert!(check_version_allows(Command::Check, "0.4.0").is_ok());
        let e = check_version_allows(Command::Gc, "1.0.0").unwrap_err();
        assert_eq!(e.code, Code::IncompatibleVersion);
        assert!(check_version_allows(Command::Status, "1.1.0").is_ok());
        assert!(check_version_allows(Command::Add, "0.3.0").is_ok());
    }

    #[test]
    fn version_needs_no_configuration() {
        let env = Env::parse(&[("CNI_COMMAND".to_string(), "VERSION".to_string())].into()).unwrap();
        let out = run(&env, br#"{"cniVersion":"1.0.0"}"#).unwrap().unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "1.1.0"));
    }
}
