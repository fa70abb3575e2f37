//! Small helpers over `rtnetlink` shared by the plugin and the agent:
//! handles bound to another network namespace, errno matching, and reading
//! links.

use std::fs::File;
use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use nix::sched::{setns, CloneFlags};
use rtnetlink::{Handle, LinkGetRequest};

/// What can go wrong opening a netlink handle.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The namespace file cannot be opened or entered.
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The netlink socket cannot be made.
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
}

/// A handle on the current thread's network namespace. Must be called
/// inside a tokio runtime; the connection task is spawned on it.
pub fn connect() -> Result<Handle, ConnectError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(ConnectError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A handle whose socket lives in the network namespace at `path`
/// (`/run/netns/<name>`, `/proc/<pid>/ns/net`). The socket is created on a
/// short-lived thread that entered the namespace; it stays bound to that
/// namespace while this process goes on in its own. Must be called inside
/// a tokio runtime.
pub fn connect_in(path: &Path) -> Result<Handle, ConnectError> {
    let netns_error = |source| ConnectError::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(netns_error)?;
    let runtime = tokio::runtime::Handle::current();
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| netns_error(e.into()))?;
                let _entered = runtime.enter();
                rtnetlink::new_connection().map_err(ConnectError::Socket)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(ConnectError::Socket(std::io::Error::other(
                    "netns thread panicked",
                )))
            })
    });
    let (conn, handle, _) = made?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The errno of a kernel refusal, if `e` is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The link named `name`, or `None` when there is none.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    first_link(handle.link().get().match_name(name.to_string())).await
}

/// The link with index `index`, or `None` when there is none.
pub async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    first_link(handle.link().get().match_index(index)).await
}

/// The one link a filtered request answers; the kernel's "no such device"
/// is `None`.
async fn first_link(request: LinkGetRequest) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match request.execute().try_next().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        other => other,
    }
}

/// Deletes the link with index `index`; one already gone is fine.
pub async fn delete_link(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    match handle.link().del(index).execute().await {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// The index of a veth's peer (in the peer's namespace).
pub fn link_peer(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

/// A link's alias (`ip link set … alias`).
pub fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// A link's name.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A link's MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn link_mac(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(format_mac(mac)),
        _ => None,
    })
}

/// A link's MTU.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The index of the bridge (or other controller) a link is attached to.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// Whether `link` is a bridge (its link info names the `bridge` kind).
pub fn link_is_bridge(link: &LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// A hash that never changes between builds or versions, for names and
/// addresses derived from identities (veth names, VTEP MACs): FNV-1a
/// (64-bit), then MurmurHash3's finalizer so that inputs differing in one
/// character ("n1", "n2") differ in every byte of the result.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut h = fnv;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `aa:bb:…` from bytes.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Bytes from `aa:bb:cc:dd:ee:ff`; `None` unless it is six hex pairs.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_roundtrip_and_reject_garbage() {
        let mac = parse_mac("0a:1B:00:ff:10:01").unwrap();
        assert_eq!(format_mac(&mac), "0a:1b:00:ff:10:01");
        for bad in [
            "",
            "0a:1b:00:ff:10",
            "0a:1b:00:ff:10:01:02",
            "0a:1b:00:ff:10:zz",
            "a:1b:00:ff:10:01",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }
}
