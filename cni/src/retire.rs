//! DEL without waiting for the kernel's device teardown.
//!
//! Unregistering a network device ends with an RCU barrier
//! (`netdev_run_todo`): 15–40 ms on a quiet node, most of what DEL would
//! cost. DEL therefore *retires* the pair instead — the host end goes down
//! (the pod end loses its carrier: nothing flows, the address is free to
//! lease again) and its alias is marked retired — and leaves the deletion
//! to a detached `berth-cni reap` process. A retired pair that outlives
//! its reaper (killed, node rebooting) is removed by the next ADD that
//! meets it, or by GC.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use netlink_packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkUnspec};

use berth_net::netlink::{self, link_alias};

/// Alias prefix of a retired host end: `berth-cni-retired/<network>/…`.
const RETIRED_PREFIX: &str = "berth-cni-retired/";

/// First argument that makes the binary a reaper: `berth-cni reap INDEX
/// ALIAS`. Runtimes call CNI plugins without arguments.
pub const REAP_ARG: &str = "reap";

/// The retired form of an attachment's alias (`berth-cni/<network>/<id>/<if>`).
pub fn retired_alias(alias: &str) -> String {
    let rest = alias.strip_prefix("berth-cni/").unwrap_or(alias);
    format!("{RETIRED_PREFIX}{rest}")
}

/// Whether `link` is a host end of `network` that a DEL retired.
pub fn is_retired(link: &LinkMessage, network: &str) -> bool {
    link_alias(link).is_some_and(|a| {
        a.strip_prefix(RETIRED_PREFIX)
            .and_then(|rest| rest.strip_prefix(network))
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Takes the host end at `index` (carrying `alias`) out of service: down
/// and marked retired, in one request.
pub async fn retire(host: &Handle, index: u32, alias: &str) -> Result<(), rtnetlink::Error> {
    host.link()
        .change(
            LinkUnspec::new_with_index(index)
                .alias(retired_alias(alias))
                .down()
                .build(),
        )
        .execute()
        .await
}

/// Starts a detached reaper for the retired host end at `index`: its own
/// process group, no stdio (the runtime reads the plugin's output until
/// every holder closes it), not waited for.
pub fn spawn_reaper(index: u32, retired: &str) -> io::Result<()> {
    let exe: PathBuf = std::env::current_exe()?;
    Command::new(exe)
        .args([REAP_ARG, &index.to_string(), retired])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
}

/// The reaper: deletes the link at `index` if it still carries the
/// retired alias `retired` (an index is reused only after its link is
/// gone, so a link that changed is left alone).
pub fn reap(index: &str, retired: &str) -> Result<(), String> {
    let index: u32 = index
        .parse()
        .map_err(|e| format!("bad link index {index:?}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot start the netlink runtime: {e}"))?;
    runtime.block_on(async {
        let host = netlink::connect().map_err(|e| e.to_string())?;
        let link = match netlink::link_by_index(&host, index).await {
            Ok(Some(link)) => link,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("read link {index}: {e}")),
        };
        if link_alias(&link) != Some(retired) {
            return Ok(());
        }
        netlink::delete_link(&host, index)
            .await
            .map_err(|e| format!("delete link {index}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkAttribute;

    fn with_alias(alias: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfAlias(alias.into()));
        link
    }

    #[test]
    fn retired_aliases_name_their_network() {
        let retired = retired_alias("berth-cni/berth/ctr-1/eth0");
        assert_eq!(retired, "berth-cni-retired/berth/ctr-1/eth0");
        assert!(is_retired(&with_alias(&retired), "berth"));
        assert!(!is_retired(&with_alias(&retired), "bert"));
        assert!(!is_retired(
            &with_alias("berth-cni/berth/ctr-1/eth0"),
            "berth"
        ));
        assert!(!is_retired(&LinkMessage::default(), "berth"));
    }
}
