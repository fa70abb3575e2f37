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

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::json;

use crate::config::{Attachment, NetConf, SUPPORTED_VERSIONS};
use crate::env::{Command, Env};
use crate::error::{CniError, Code, Result};
use crate::ipam::Leases;
use crate::masq;
use crate::netlink::{self, errno, link_by_name, link_controller, link_mac, link_mtu, link_name};
use crate::result::{CniResult, Interface, IpConfig, Route};

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

/// The host end's name for an attachment: stable, so DEL and GC find it
/// without state, and at most 15 characters.
pub fn host_veth_name(owner: &Attachment) -> String {
    format!("{HOST_VETH_PREFIX}{:08x}", fnv1a(owner) as u32)
}

/// Name of the pod end while it is still in the host namespace.
fn temp_peer_name(owner: &Attachment) -> String {
    format!("bp{:08x}", fnv1a(owner) as u32)
}

/// A stable hash of the attachment: id, NUL, ifname.
fn fnv1a(owner: &Attachment) -> u64 {
    let key = [owner.container_id.as_bytes(), &[0], owner.ifname.as_bytes()].concat();
    netlink::stable_hash(&key)
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

/// Opens the container's namespace: an unknown container is code 3.
fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "cannot open the container's network namespace",
            format!("{}: {e}", path.display()),
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
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let host = connect_host()?;
    let pod = connect_pod(netns_path)?;
    if link_by_name(&pod, &env.ifname)
        .await
        .map_err(|e| kernel("read the container's links", e))?
        .is_some()
        && leases.find(&owner)?.is_none()
    {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("interface {} already exists in the container", env.ifname),
            "another network owns it; choose another CNI_IFNAME",
        ));
    }
    let bridge = ensure_bridge(&host, conf).await?;
    enable_forwarding()?;
    let ip = leases.allocate(conf.subnet, &owner)?;
    match wire_pod(
        &host,
        &Sandbox {
            handle: &pod,
            file: &netns,
            path: netns_path,
        },
        &bridge,
        conf,
        &owner,
        ip,
    )
    .await
    {
        Ok(mut ours) => {
            if conf.ip_masq {
                if let Some(cluster) = conf.cluster_cidr {
                    if let Err(e) = masq::ensure(&conf.name, conf.subnet, cluster) {
                        undo_wiring(&host, &owner).await;
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
            undo_wiring(&host, &owner).await;
            leases.release(&owner)?;
            Err(e)
        }
    }
}

/// The bridge, created with the gateway address when missing; idempotent.
async fn ensure_bridge(host: &Handle, conf: &NetConf) -> Result<LinkMessage> {
    let link = match link_by_name(host, &conf.bridge)
        .await
        .map_err(|e| kernel("read links", e))?
    {
        Some(link) => link,
        None => {
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
    Ok(link)
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

/// Creates the veth pair, moves one end into the pod and configures both.
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
    let peer_name = temp_peer_name(owner);
    // A leftover from an interrupted ADD of the same attachment goes first.
    undo_wiring(host, owner).await;
    host.link()
        .add(LinkVeth::new(&host_name, &peer_name).mtu(conf.mtu).build())
        .execute()
        .await
        .map_err(|e| kernel(&format!("create veth {host_name}"), e))?;
    let host_link = link_by_name(host, &host_name)
        .await
        .map_err(|e| kernel("read links", e))?
        .ok_or_else(|| kernel("find the new veth", &host_name))?;
    let peer = link_by_name(host, &peer_name)
        .await
        .map_err(|e| kernel("read links", e))?
        .ok_or_else(|| kernel("find the new veth peer", &peer_name))?;
    host.link()
        .change(
            LinkUnspec::new_with_index(peer.header.index)
                .mtu(conf.mtu)
                .setns_by_fd(netns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| kernel("move the veth into the container", e))?;
    let host_index = host_link.header.index;
    host.link()
        .change(
            LinkUnspec::new_with_index(host_index)
                .mtu(conf.mtu)
                .controller(bridge.header.index)
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

    let moved = link_by_name(pod, &peer_name)
        .await
        .map_err(|e| kernel("read the container's links", e))?
        .ok_or_else(|| kernel("find the veth in the container", &peer_name))?;
    let index = moved.header.index;
    pod.link()
        .change(
            LinkUnspec::new_with_index(index)
                .name(owner.ifname.clone())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            kernel(
                &format!("rename the container's interface to {}", owner.ifname),
                e,
            )
        })?;
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

/// Removes the attachment's veth pair (both ends go with either); a pair
/// that is already gone is fine.
async fn undo_wiring(host: &Handle, owner: &Attachment) {
    for name in [host_veth_name(owner), temp_peer_name(owner)] {
        if let Ok(Some(link)) = link_by_name(host, &name).await {
            if let Err(e) = host.link().del(link.header.index).execute().await {
                if errno(&e) != Some(libc::ENODEV) {
                    tracing::warn!(link = %name, error = %e, "cannot remove veth");
                }
            }
        }
    }
}

async fn del(env: &Env, conf: &NetConf) -> Result<()> {
    let owner = owner_of(env);
    let leases = Leases::lock(&conf.data_dir, &conf.name)?;
    let host = connect_host()?;
    if let Some(path) = env.netns.as_deref() {
        // The namespace may be gone already: then so is its interface.
        if let Ok(pod) = netlink::connect_in(path) {
            if let Some(link) = link_by_name(&pod, &env.ifname)
                .await
                .map_err(|e| kernel("read the container's links", e))?
            {
                match pod.link().del(link.header.index).execute().await {
                    Err(e) if errno(&e) != Some(libc::ENODEV) => {
                        return Err(kernel(&format!("delete {}", env.ifname), e))
                    }
                    _ => {}
                }
            }
        }
    }
    undo_wiring(&host, &owner).await;
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
    let host = connect_host()?;
    let Some(bridge) = link_by_name(&host, &conf.bridge)
        .await
        .map_err(|e| kernel("read links", e))?
    else {
        return Ok(());
    };
    let keep: HashSet<String> = valid.iter().map(host_veth_name).collect();
    let links: Vec<LinkMessage> = host
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel("read links", e))?;
    for link in links {
        let Some(name) = link_name(&link) else {
            continue;
        };
        let ours = name.starts_with(HOST_VETH_PREFIX) && name.len() == HOST_VETH_PREFIX.len() + 8;
        if ours && link_controller(&link) == Some(bridge.header.index) && !keep.contains(name) {
            tracing::info!(link = name, "GC removes stale veth");
            match host.link().del(link.header.index).execute().await {
                Err(e) if errno(&e) != Some(libc::ENODEV) => {
                    return Err(kernel(&format!("delete {name}"), e))
                }
                _ => {}
            }
        }
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
