//! Small helpers over `rtnetlink`: handles, also bound to another network
//! namespace, errno matching, and reading links.

use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkGetRequest};

use crate::mac::format_mac;
use crate::netns::{run_in, NetnsError};

/// What can go wrong opening a netlink handle.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The namespace cannot be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
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
    let runtime = tokio::runtime::Handle::current();
    let (conn, handle, _) = run_in(Some(path), || {
        let _entered = runtime.enter();
        rtnetlink::new_connection().map_err(ConnectError::Socket)
    })??;
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
