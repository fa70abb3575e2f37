//! The `CNI_*` environment a runtime sets for each call.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{CniError, Code, Result};

/// The operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it; succeeds when already gone.
    Del,
    /// Verify the attachment is as ADD left it.
    Check,
    /// Report whether the plugin can serve ADDs.
    Status,
    /// Release everything not in the configuration's valid attachments.
    Gc,
    /// Report the spec versions this plugin speaks.
    Version,
}

/// One call's environment, validated for its command.
#[derive(Debug, Clone)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; DEL may omit it).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, as `KEY=VALUE` pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, the directories holding plugin binaries.
    pub path: Vec<PathBuf>,
}

fn missing(var: &str, command: &str) -> CniError {
    CniError::new(
        Code::InvalidEnvironment,
        format!("{var} is required for {command}"),
        format!("set {var} in the plugin's environment"),
    )
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Result<Self> {
        Self::parse(
            &std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    /// Validates `vars` for the command they name.
    pub fn parse(vars: &HashMap<String, String>) -> Result<Self> {
        let get = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let command_name =
            get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND", "every call"))?;
        let command = match command_name {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected ADD, DEL, CHECK, STATUS, GC or VERSION",
                ))
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> Result<String> {
            match get(name) {
                Some(v) => Ok(v.to_string()),
                None if per_container => Err(missing(name, command_name)),
                None => Ok(String::new()),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        if per_container && !valid_container_id(&container_id) {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_CONTAINERID",
                format!("{:?}: at most {MAX_CONTAINER_ID_BYTES} letters, digits, '_', '.' and '-', starting with a letter or digit", truncated(&container_id)),
            ));
        }
        let ifname = required("CNI_IFNAME")?;
        if per_container {
            validate_ifname(&ifname)?;
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(missing("CNI_NETNS", command_name));
        }
        let args = match get("CNI_ARGS") {
            None => Vec::new(),
            Some(raw) => parse_args(raw)?,
        };
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

/// Longest container id: runtimes use 64 hex digits; with the network and
/// interface names it must fit a link alias (255 bytes).
const MAX_CONTAINER_ID_BYTES: usize = 128;

/// The spec's container id rule, `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, and at
/// most [`MAX_CONTAINER_ID_BYTES`].
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= MAX_CONTAINER_ID_BYTES
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// At most the first 80 characters of `text`, for error messages.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Linux interface names: 1–15 bytes, no '/', ':' or whitespace, not "." or "..".
fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnvironment,
            "invalid CNI_IFNAME",
            format!("{name:?}: an interface name has 1 to 15 characters and no '/', ':' or spaces"),
        ))
    }
}

fn parse_args(raw: &str) -> Result<Vec<(String, String)>> {
    raw.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = Env::parse(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let e = Env::parse(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
    }

    #[test]
    fn del_may_omit_netns_and_status_needs_nothing() {
        let env = Env::parse(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(env.command, Command::Del);
        assert!(env.netns.is_none());
        let env = Env::parse(&vars(&[("CNI_COMMAND", "STATUS")])).unwrap();
        assert_eq!(env.command, Command::Status);
    }

    #[test]
    fn rejects_unknown_command_bad_ids_names_and_args() {
        for bad in [
            vars(&[]),
            vars(&[("CNI_COMMAND", "FROB")]),
            vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "../x"),
                ("CNI_IFNAME", "eth0"),
            ]),
            vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "a-very-long-ifname"),
            ]),
            vars(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "novalue"),
            ]),
        ] {
            assert_eq!(
                Env::parse(&bad).unwrap_err().code,
                Code::InvalidEnvironment,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_args_and_path() {
        let env = Env::parse(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(env.args[1], ("K8S_POD_NAME".to_string(), "web".to_string()));
        assert_eq!(env.path.len(), 2);
    }
}
