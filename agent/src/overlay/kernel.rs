//! The overlay's netlink side: the VXLAN device and the per-peer entries
//! on it, read and changed one at a time.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use berth_net::mac::format_mac;
use berth_net::netlink::{errno, link_by_index, link_by_name, link_mac, link_mtu};
use futures_util::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::peers::{Change, Installed, Mac};

/// Bytes VXLAN adds to each packet (outer Ethernet excluded): IPv4 20,
/// UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// A failed overlay operation.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// The underlay interface cannot be found.
    #[error("underlay interface: {0}")]
    Underlay(String),
    /// Some changes of a reconciliation failed (the others were made).
    #[error("{} overlay change(s) failed: {}", .0.len(), .0.join("; "))]
    Changes(Vec<String>),
}

fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}

/// The interface the overlay runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    /// Its index.
    pub index: u32,
    /// Its MTU.
    pub mtu: u32,
}

/// Finds the underlay: the named interface, or the one holding `ip`.
pub async fn underlay(
    handle: &Handle,
    name: Option<&str>,
    ip: Ipv4Addr,
) -> Result<Underlay, KernelError> {
    let link = match name {
        Some(name) => link_by_name(handle, name)
            .await
            .map_err(netlink("read links"))?
            .ok_or_else(|| KernelError::Underlay(format!("no interface named {name}")))?,
        None => {
            let addresses: Vec<AddressMessage> = handle
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(netlink("read addresses"))?;
            let index = addresses
                .iter()
                .find(|a| {
                    a.attributes
                        .iter()
                        .any(|at| matches!(at, AddressAttribute::Local(IpAddr::V4(l)) if *l == ip))
                })
                .map(|a| a.header.index)
                .ok_or_else(|| {
                    KernelError::Underlay(format!("no interface holds the node IP {ip}"))
                })?;
            link_by_index(handle, index)
                .await
                .map_err(netlink("read links"))?
                .ok_or_else(|| KernelError::Underlay(format!("interface {index} vanished")))?
        }
    };
    Ok(Underlay {
        index: link.header.index,
        mtu: link_mtu(&link).unwrap_or(1500),
    })
}

/// How the VXLAN device must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Its name.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Local (underlay) address.
    pub local: Ipv4Addr,
    /// The underlay interface.
    pub underlay: Underlay,
    /// Its MAC (the node's VTEP MAC).
    pub mac: Mac,
    /// This node's VTEP address (its pod CIDR's network address), held as /32.
    pub vtep_ip: Ipv4Addr,
}

impl DeviceSpec {
    /// The device's MTU: the underlay's minus the encapsulation.
    pub fn mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD)
    }
}

/// Whether an existing link is the VXLAN device `spec` describes in the
/// attributes that cannot be changed in place.
fn matches_spec(link: &LinkMessage, spec: &DeviceSpec) -> bool {
    let mut kind_ok = false;
    let mut found = (false, false, false, false, false);
    for attr in &link.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for info in infos {
            match info {
                LinkInfo::Kind(InfoKind::Vxlan) => kind_ok = true,
                LinkInfo::Data(InfoData::Vxlan(data)) => {
                    for d in data {
                        match d {
                            InfoVxlan::Id(id) => found.0 = *id == spec.vni,
                            InfoVxlan::Port(port) => found.1 = *port == spec.port,
                            InfoVxlan::Local(ip) => found.2 = *ip == spec.local,
                            InfoVxlan::Link(index) => found.3 = *index == spec.underlay.index,
                            InfoVxlan::Learning(learning) => found.4 = !*learning,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    kind_ok && found == (true, true, true, true, true)
}

/// Makes the device match `spec`: created when missing, recreated when its
/// VNI, port, local address or underlay differ (those cannot change in
/// place), then MAC, MTU, up and its /32 address set where they differ.
/// Returns its index and whether it was (re)created, in which case every
/// entry on it is gone.
pub async fn ensure_device(handle: &Handle, spec: &DeviceSpec) -> Result<(u32, bool), KernelError> {
    let existing = link_by_name(handle, &spec.name)
        .await
        .map_err(netlink("read links"))?;
    let mut created = false;
    let link = match existing {
        Some(link) if matches_spec(&link, spec) => link,
        other => {
            if let Some(old) = other {
                tracing::info!(device = %spec.name, "VXLAN device differs from the configuration; recreating it");
                handle
                    .link()
                    .del(old.header.index)
                    .execute()
                    .await
                    .map_err(netlink(format!("delete {}", spec.name)))?;
            }
            handle
                .link()
                .add(
                    LinkVxlan::new(&spec.name, spec.vni)
                        .port(spec.port)
                        .local(spec.local)
                        .dev(spec.underlay.index)
                        .learning(false)
                        .mtu(spec.mtu())
                        .address(spec.mac.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink(format!("create VXLAN device {}", spec.name)))?;
            created = true;
            tracing::info!(device = %spec.name, vni = spec.vni, port = spec.port, local = %spec.local, "VXLAN device created");
            link_by_name(handle, &spec.name)
                .await
                .map_err(netlink("read links"))?
                .ok_or_else(|| {
                    KernelError::Underlay(format!("{} vanished after creation", spec.name))
                })?
        }
    };
    let index = link.header.index;
    let mut change = LinkUnspec::new_with_index(index);
    let mut differs = false;
    if link_mac(&link).as_deref() != Some(format_mac(&spec.mac).as_str()) {
        change = change.address(spec.mac.to_vec());
        differs = true;
    }
    if link_mtu(&link) != Some(spec.mtu()) {
        change = change.mtu(spec.mtu());
        differs = true;
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        change = change.up();
        differs = true;
    }
    if differs {
        handle
            .link()
            .change(change.build())
            .execute()
            .await
            .map_err(netlink(format!("set up {}", spec.name)))?;
    }
    ensure_address(handle, index, spec).await?;
    Ok((index, created))
}

/// Leaves exactly the VTEP /32 as the device's IPv4 address.
async fn ensure_address(handle: &Handle, index: u32, spec: &DeviceSpec) -> Result<(), KernelError> {
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("read addresses"))?;
    let mut present = false;
    for address in addresses
        .into_iter()
        .filter(|a| a.header.family == AddressFamily::Inet)
    {
        let ip = address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if ip == Some(spec.vtep_ip) && address.header.prefix_len == 32 {
            present = true;
        } else {
            handle
                .address()
                .del(address)
                .execute()
                .await
                .map_err(netlink(format!(
                    "remove a stale address from {}",
                    spec.name
                )))?;
        }
    }
    if !present {
        handle
            .address()
            .add(index, IpAddr::V4(spec.vtep_ip), 32)
            .execute()
            .await
            .map_err(netlink(format!(
                "give {} the address {}/32",
                spec.name, spec.vtep_ip
            )))?;
    }
    Ok(())
}

/// Reads the routes, permanent neighbours and FDB remotes on the device.
pub async fn installed(handle: &Handle, index: u32) -> Result<Installed, KernelError> {
    let mut state = Installed::default();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = routes.try_next().await.map_err(netlink("read routes"))? {
        let on_device = route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
        if route.header.table != RouteHeader::RT_TABLE_MAIN
            || !on_device
            || route.header.protocol == RouteProtocol::Kernel
            || route.header.destination_prefix_length == 0
        {
            continue;
        }
        let mut dst = None;
        let mut gateway = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                _ => {}
            }
        }
        if let Some(net) =
            dst.and_then(|d| Ipv4Network::new(d, route.header.destination_prefix_length).ok())
        {
            state.routes.insert(net, gateway);
        }
    }
    let mut neighbours = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Some(n) = neighbours
        .try_next()
        .await
        .map_err(netlink("read neighbours"))?
    {
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let ip = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => <Mac>::try_from(mac.as_slice()).ok(),
            _ => None,
        });
        if let (Some(ip), Some(mac)) = (ip, mac) {
            state.neighbours.insert(ip, mac);
        }
    }
    let mut fdb = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(n) = fdb.try_next().await.map_err(netlink("read the FDB"))? {
        if n.header.ifindex != index {
            continue;
        }
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(mac) => <Mac>::try_from(mac.as_slice()).ok(),
            _ => None,
        });
        // Bridge-family dumps carry NDA_DST as raw bytes.
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
            }
            _ => None,
        });
        if let (Some(mac), Some(dst)) = (mac, dst) {
            state
                .fdb
                .entry(mac)
                .or_insert_with(BTreeSet::new)
                .insert(dst);
        }
    }
    Ok(state)
}

fn neighbour_message(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = family;
    message.header.ifindex = index;
    message
}

/// Applies one change on the device. Removing what is already gone and
/// adding what is already there both succeed.
pub async fn apply(handle: &Handle, index: u32, change: &Change) -> Result<(), KernelError> {
    let op = change.to_string();
    let result = match *change {
        Change::DelRoute(cidr) => {
            // Protocol and scope unset: matches the route whoever added it.
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.network(), cidr.prefix())
                .output_interface(index)
                .protocol(RouteProtocol::Unspec)
                .scope(RouteScope::NoWhere)
                .build();
            handle.route().del(route).execute().await
        }
        Change::DelNeighbour(ip) => {
            let mut message = neighbour_message(AddressFamily::Inet, index);
            message
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
            handle.neighbours().del(message).execute().await
        }
        Change::DelFdb(mac, dst) => {
            let mut message = neighbour_message(AddressFamily::Bridge, index);
            message.header.flags = NeighbourFlags::Own;
            message
                .attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            message
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
            handle.neighbours().del(message).execute().await
        }
        Change::SetFdb(mac, dst) => {
            handle
                .neighbours()
                .add_bridge(index, &mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(dst))
                .replace()
                .execute()
                .await
        }
        Change::SetNeighbour(ip, mac) => {
            handle
                .neighbours()
                .add(index, IpAddr::V4(ip))
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
        }
        Change::SetRoute(cidr, via) => {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(cidr.network(), cidr.prefix())
                .gateway(via)
                .output_interface(index)
                .onlink()
                .build();
            handle.route().add(route).replace().execute().await
        }
    };
    match result {
        Err(e)
            if matches!(errno(&e), Some(libc::ENOENT | libc::ESRCH)) && op.starts_with("del") =>
        {
            Ok(())
        }
        other => other.map_err(netlink(op)),
    }
}
