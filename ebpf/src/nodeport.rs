//! Loading and attaching the NodePort translator (`bpf/nodeport.bpf.c`) at
//! tc ingress, and reading its connection table.
//!
//! The program shares the service and backend maps pinned by
//! [`crate::SockLb`] and pins its own connection table (`lb4_ct`) beside
//! them. It is attached with tc (clsact, a fixed handle and priority), in
//! the network namespace of the calling thread: attaching again replaces
//! the program in place, and the filters outlive the loader.

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject, TcHookBuilder, TC_INGRESS};
use serde::Serialize;

use crate::encode::from_bytes;
use crate::model::Protocol;
use crate::skel::nodeport::types::{lb4_ct, lb4_ct_key};
use crate::skel::nodeport::NodeportSkelBuilder;
use crate::{bpffs, Error, MapSizes};

/// File name of the connection table under a pin directory.
pub const CT_MAP: &str = "lb4_ct";

/// `lb4_ct.flags`: the entry translates replies (`LB4_CT_REPLY`).
const CT_REPLY: u32 = 0x1;

/// The tc filter's handle and priority (fixed, so attaching replaces).
const TC_HANDLE: u32 = 0xbe27;
const TC_PRIORITY: u32 = 1;

/// Where the translator's maps are and which address it translates to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortConfig {
    /// bpffs directory of this node's pins (shared with the socket load balancer).
    pub pin_dir: PathBuf,
    /// Map sizes, used for maps created here.
    pub map_sizes: MapSizes,
    /// The node's address on the pod network (its bridge's): the source of
    /// translated packets, so backends answer through this node.
    pub snat: Ipv4Addr,
    /// The source ports translated packets get (first, last); `None`:
    /// those outside the ephemeral range of the namespace attached in (see
    /// [`snat_ports_outside`]).
    pub snat_ports: Option<(u16, u16)>,
}

/// The ports translation may take as sources, given the node's ephemeral
/// range (`net.ipv4.ip_local_port_range`, first and last): those above it,
/// else those from 1024 up to it, whichever side holds at least 1024. The
/// node's own connections from the same address use the ephemeral range;
/// the kernel picks their ports without knowing the translator's.
pub fn snat_ports_outside(ephemeral: (u16, u16)) -> Option<(u16, u16)> {
    const ENOUGH: u16 = 1024;
    let (first, last) = ephemeral;
    if u16::MAX - last >= ENOUGH {
        Some((last + 1, u16::MAX))
    } else if first >= 2 * ENOUGH {
        Some((ENOUGH, first - 1))
    } else {
        None
    }
}

/// The interfaces, by index in the calling thread's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePortDevices {
    /// Where clients' packets arrive: the underlay interface.
    pub underlay: i32,
    /// Where backends' replies arrive: the bridge and the VXLAN device.
    pub replies: Vec<i32>,
}

/// The ephemeral port range (first, last) of the calling thread's network
/// namespace.
fn ephemeral_ports() -> Result<(u16, u16), Error> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(first)), Some(Ok(last))) if first <= last => Ok((first, last)),
        _ => Err(Error::io(
            "parse",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_string()),
        )),
    }
}

/// Loads the translator and attaches it to `devices` in the calling
/// thread's network namespace (replacing an earlier attachment).
pub fn attach_nodeport(config: &NodePortConfig, devices: &NodePortDevices) -> Result<(), Error> {
    bpffs::create_pin_dir(&config.pin_dir)?;
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut open = NodeportSkelBuilder::default()
        .open(&mut object)
        .map_err(|e| Error::bpf("open nodeport object", e))?;
    let mut resized = bpffs::pin_lb4_maps!(open.maps, config)?;
    resized.extend(bpffs::size_and_pin(
        &mut open.maps.lb4_ct,
        CT_MAP,
        config.map_sizes.ct,
        &config.pin_dir,
    )?);
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.snat_address = u32::from_ne_bytes(config.snat.octets());
        let (first, last) = match config.snat_ports {
            Some(ports) => ports,
            None => {
                let ephemeral = ephemeral_ports()?;
                snat_ports_outside(ephemeral).ok_or(Error::NoSnatPorts { ephemeral })?
            }
        };
        rodata.nat_port_min = first;
        rodata.nat_port_span = last.saturating_sub(first).saturating_add(1);
    }
    let skel = open.load().map_err(|e| Error::bpf("load nodeport", e))?;
    bpffs::copy_resized(resized)?;
    let mut attachments = vec![(&skel.progs.berth_nodeport, devices.underlay)];
    attachments.extend(
        devices
            .replies
            .iter()
            .map(|i| (&skel.progs.berth_nodeport_reply, *i)),
    );
    for (prog, ifindex) in attachments {
        let mut builder = TcHookBuilder::new(prog.as_fd());
        builder
            .ifindex(ifindex)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(TC_PRIORITY);
        let mut hook = builder.hook(TC_INGRESS);
        hook.create()
            .map_err(|e| Error::bpf(format!("create clsact on interface {ifindex}"), e))?;
        hook.attach()
            .map_err(|e| Error::bpf(format!("attach nodeport to interface {ifindex}"), e))?;
    }
    Ok(())
}

/// One translated connection, as `bpf ct list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtEntry {
    /// Who sent the packets this entry matches.
    pub from: SocketAddrV4,
    /// Where they were going.
    pub to: SocketAddrV4,
    /// TCP or UDP.
    pub proto: Protocol,
    /// Their source after translation.
    pub new_from: SocketAddrV4,
    /// Their destination after translation.
    pub new_to: SocketAddrV4,
    /// The backend the connection was given.
    pub backend_id: u32,
    /// `original` (client to frontend) or `reply` (backend to this node).
    pub direction: &'static str,
}

/// Every entry of the connection table pinned under `pin_dir`.
pub fn ct_entries(pin_dir: &Path) -> Result<Vec<CtEntry>, Error> {
    let path = pin_dir.join(CT_MAP);
    let map = MapHandle::from_pinned_path(&path)
        .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))?;
    let mut entries = Vec::new();
    for key in map.keys() {
        let Some(value) = map
            .lookup(&key, MapFlags::ANY)
            .map_err(|e| Error::bpf("read lb4_ct", e))?
        else {
            continue;
        };
        let k: lb4_ct_key = from_bytes(CT_MAP, &key)?;
        let v: lb4_ct = from_bytes(CT_MAP, &value)?;
        let addr =
            |a: u32, p: u16| SocketAddrV4::new(Ipv4Addr::from(a.to_ne_bytes()), u16::from_be(p));
        let Some(proto) = Protocol::from_number(k.proto) else {
            continue;
        };
        let to = addr(k.daddr, k.dport);
        entries.push(CtEntry {
            from: addr(k.saddr, k.sport),
            to,
            proto,
            new_from: addr(v.saddr, v.sport),
            new_to: addr(v.daddr, v.dport),
            backend_id: v.backend_id,
            direction: if v.flags & CT_REPLY != 0 {
                "reply"
            } else {
                "original"
            },
        });
    }
    entries.sort_by_key(|e| (e.direction, e.from, e.to));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_ports_stay_out_of_the_ephemeral_range() {
        assert_eq!(snat_ports_outside((32768, 60999)), Some((61000, 65535)));
        assert_eq!(snat_ports_outside((10000, 65000)), Some((1024, 9999)));
        assert_eq!(snat_ports_outside((1024, 65000)), None);
    }
}
