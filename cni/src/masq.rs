//! Masquerade: pod traffic leaving the cluster CIDR takes the node's
//! address, through an nftables chain of the node's own (`nft`, from
//! Debian's nftables).

use std::io::Write;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;

use crate::error::{CniError, Code, Result};

/// The table holding one masquerade chain per network.
pub const TABLE: &str = "berth_cni";

/// The chain of `network`: its name reduced to what nft accepts unquoted,
/// plus a hash of the exact name, so `my-net` and `my_net` get chains of
/// their own.
pub fn chain_name(network: &str) -> String {
    let clean: String = network
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let hash = crate::netlink::stable_hash(network.as_bytes()) as u32;
    format!("masq_{clean}_{hash:08x}")
}

/// The nft script that (re)states the chain of `network` in one
/// transaction: the chain is flushed and refilled atomically, so a repeated
/// call leaves exactly one rule and packets never see an empty chain.
pub fn script(network: &str, subnet: Ipv4Network, cluster: Ipv4Network) -> String {
    let chain = chain_name(network);
    format!(
        "table ip {TABLE} {{\n\
         \tchain {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         }}\n\
         flush chain ip {TABLE} {chain}\n\
         add rule ip {TABLE} {chain} ip saddr {subnet} ip daddr != {cluster} masquerade\n"
    )
}

/// Applies [`script`] in the current network namespace.
pub fn ensure(network: &str, subnet: Ipv4Network, cluster: Ipv4Network) -> Result<()> {
    let nft_error = |e: &dyn std::fmt::Display| {
        CniError::new(
            Code::Kernel,
            "cannot set up masquerading with nft (package nftables)",
            e,
        )
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| nft_error(&e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script(network, subnet, cluster).as_bytes())
            .map_err(|e| nft_error(&e))?;
    }
    let out = child.wait_with_output().map_err(|e| nft_error(&e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(nft_error(&String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_masquerades_only_outside_the_cluster() {
        let s = script(
            "my-net",
            "10.244.1.0/24".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        );
        let chain = chain_name("my-net");
        assert!(chain.starts_with("masq_my_net_"), "{chain}");
        assert_ne!(chain, chain_name("my_net"));
        assert!(s.contains(&format!("chain {chain} ")), "{s}");
        assert!(
            s.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"),
            "{s}"
        );
        assert!(
            s.contains(&format!("flush chain ip berth_cni {chain}")),
            "{s}"
        );
    }
}
