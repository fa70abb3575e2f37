//! Masquerade: pod traffic leaving the cluster CIDR takes the node's
//! address, through an nftables chain of the node's own (`nft`, from
//! Debian's nftables).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ipnetwork::Ipv4Network;

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
    let hash = berth_net::mac::stable_hash(network.as_bytes()) as u32;
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

/// nft failed or is missing.
#[derive(Debug, thiserror::Error)]
#[error("nft (package nftables): {0}")]
pub struct MasqError(String);

/// Runs `nft ARGS` with `stdin`, in the namespace at `netns` (through
/// `nsenter`) or the current one; returns stdout.
fn nft(netns: Option<&Path>, args: &[&str], stdin: &str) -> Result<String, MasqError> {
    let mut cmd = match netns {
        Some(path) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", path.display())).arg("nft");
            cmd
        }
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| MasqError(e.to_string()))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| MasqError(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| MasqError(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(MasqError(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Applies [`script`] in the namespace at `netns` (or the current one).
pub fn apply(
    netns: Option<&Path>,
    network: &str,
    subnet: Ipv4Network,
    cluster: Ipv4Network,
) -> Result<(), MasqError> {
    nft(netns, &["-f", "-"], &script(network, subnet, cluster)).map(drop)
}

/// Whether the chain of `network` holds exactly the rule [`script`] makes.
pub fn present(
    netns: Option<&Path>,
    network: &str,
    subnet: Ipv4Network,
    cluster: Ipv4Network,
) -> Result<bool, MasqError> {
    let chain = chain_name(network);
    match nft(netns, &["list", "chain", "ip", TABLE, &chain], "") {
        Ok(listing) => {
            let rule = format!("ip saddr {subnet} ip daddr != {cluster} masquerade");
            Ok(listing.matches("masquerade").count() == 1 && listing.contains(&rule))
        }
        // No such table or chain.
        Err(MasqError(why)) if why.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
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
