//! Who is calling (bearer tokens) and what they may do.
//!
//! Tokens live in `<data-dir>/tokens.csv` in the static token file format
//! of Kubernetes (`token,user,uid,groups`). The admin token is created at
//! first start; `berth-control node-credentials` adds node tokens, and the
//! running server picks them up when the file changes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use crate::error::ApiError;
use crate::pki::{self, PkiError};

/// Group of users with every right.
const MASTERS: &str = "system:masters";
/// Group of node agents.
const NODES: &str = "system:nodes";
/// User name prefix of node agents.
const NODE_USER_PREFIX: &str = "system:node:";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// May do anything.
    Admin {
        /// User name.
        name: String,
    },
    /// A node agent: writes only its own Node, Lease and pods.
    Node {
        /// The node's name.
        node: String,
    },
}

/// How often the token file is checked for changes (so a removed token
/// stops working within this time).
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What tells one version of the token file from another: its inode
/// (rewrites replace the file), modification time and size. The time
/// alone is too coarse: two writes within a few milliseconds share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileVersion {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileVersion {
            inode: meta.ino(),
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

/// Tokens, reloaded when the file changes.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    cache: RwLock<(Option<FileVersion>, HashMap<String, User>)>,
    last_check: std::sync::Mutex<std::time::Instant>,
}

impl Authenticator {
    /// Reads the token file at `path`.
    pub fn new(path: PathBuf) -> Self {
        let auth = Authenticator {
            path,
            cache: RwLock::new((None, HashMap::new())),
            last_check: std::sync::Mutex::new(std::time::Instant::now()),
        };
        auth.reload_if_changed();
        auth
    }

    /// The user a bearer token belongs to. An unknown token makes the file
    /// be checked for changes (a stat; it is read again only if it
    /// changed), and known ones recheck it at most once per
    /// [`RELOAD_EVERY`], so added tokens work at once and removed ones stop
    /// working within a second, without a restart.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        let due = {
            let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= RELOAD_EVERY;
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        if due {
            self.reload_if_changed();
        }
        if let Some(user) = self.lookup(token) {
            return Some(user);
        }
        self.reload_if_changed();
        self.lookup(token)
    }

    fn lookup(&self, token: &str) -> Option<User> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.1.get(token).cloned()
    }

    fn reload_if_changed(&self) {
        let modified = fs::metadata(&self.path).ok().map(|m| FileVersion::of(&m));
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if modified.is_some() && cache.0 == modified {
                return;
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        match fs::read_to_string(&self.path) {
            Ok(text) => *cache = (modified, parse_tokens(&text)),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot read tokens"),
        }
    }
}

fn parse_tokens(text: &str) -> HashMap<String, User> {
    let mut tokens = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let mut fields = line.splitn(4, ',');
        let (Some(token), Some(name)) = (fields.next(), fields.next()) else {
            continue;
        };
        let groups = fields.nth(1).unwrap_or("").trim_matches('"');
        let user = if groups.split(',').any(|g| g == MASTERS) {
            User::Admin { name: name.into() }
        } else if let (true, Some(node)) = (
            groups.split(',').any(|g| g == NODES),
            name.strip_prefix(NODE_USER_PREFIX),
        ) {
            User::Node { node: node.into() }
        } else {
            continue;
        };
        tokens.insert(token.to_string(), user);
    }
    tokens
}

/// A new random token.
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The admin token in the file at `path`, creating file and token if needed.
pub fn ensure_admin(path: &Path) -> Result<String, PkiError> {
    if let Ok(text) = fs::read_to_string(path) {
        if let Some((token, _)) = parse_tokens(&text)
            .into_iter()
            .find(|(_, u)| matches!(u, User::Admin { .. }))
        {
            return Ok(token);
        }
    }
    let token = new_token();
    let mut text = fs::read_to_string(path).unwrap_or_default();
    text.push_str(&format!("{token},admin,admin,\"{MASTERS}\"\n"));
    pki::write_private(path, &text)?;
    Ok(token)
}

/// Adds (or returns the existing) token of node `node`.
pub fn ensure_node(path: &Path, node: &str) -> Result<String, PkiError> {
    let mut text = fs::read_to_string(path).unwrap_or_default();
    let wanted = User::Node { node: node.into() };
    if let Some((token, _)) = parse_tokens(&text).into_iter().find(|(_, u)| *u == wanted) {
        return Ok(token);
    }
    let token = new_token();
    text.push_str(&format!(
        "{token},{NODE_USER_PREFIX}{node},{NODE_USER_PREFIX}{node},\"{NODES}\"\n"
    ));
    pki::write_private(path, &text)?;
    Ok(token)
}

/// What a request wants to do, for authorization.
#[derive(Debug)]
pub struct Action<'a> {
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: &'a str,
    /// Plural resource name.
    pub resource: &'a str,
    /// Subresource, e.g. "status".
    pub subresource: Option<&'a str>,
    /// Namespace of the request.
    pub namespace: Option<&'a str>,
    /// Object name: from the path, or for a create from the body.
    pub name: Option<&'a str>,
    /// For pods: the node the pod is bound to (`spec.nodeName`).
    pub bound_node: Option<&'a str>,
    /// For ConfigMaps read by a node: whether a pod bound to that node uses
    /// the one named (by the path, or a `metadata.name` field selector).
    pub used_by_bound_pod: bool,
}

/// Whether `user` may do `action`.
pub fn authorize(user: &User, action: &Action<'_>) -> Result<(), ApiError> {
    let node = match user {
        User::Admin { .. } => return Ok(()),
        User::Node { node } => node.as_str(),
    };
    let read = matches!(action.verb, "get" | "list" | "watch");
    let own = |name: Option<&str>| name == Some(node);
    let allowed = match action.resource {
        "configmaps" | "secrets" if read => action.used_by_bound_pod,
        _ if read => true,
        "nodes" => own(action.name),
        "leases" => action.namespace == Some("kube-node-lease") && own(action.name),
        "pods" => {
            let bound = action.bound_node == Some(node);
            match (action.verb, action.subresource) {
                ("update" | "patch", Some("status")) => bound,
                ("delete", None) => bound,
                _ => false,
            }
        }
        "events" => action.verb == "create" || action.verb == "patch",
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "User \"{NODE_USER_PREFIX}{node}\" cannot {} resource \"{}{}\"{}{}",
            action.verb,
            action.resource,
            action
                .subresource
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            action
                .namespace
                .map(|n| format!(" in the namespace \"{n}\""))
                .unwrap_or_default(),
            action
                .name
                .map(|n| format!(" named \"{n}\""))
                .unwrap_or_default(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action<'a>(verb: &'a str, resource: &'a str, name: Option<&'a str>) -> Action<'a> {
        Action {
            verb,
            resource,
            subresource: None,
            namespace: None,
            name,
            bound_node: None,
            used_by_bound_pod: false,
        }
    }

    #[test]
    fn tokens_are_created_and_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        let admin = ensure_admin(&path).unwrap();
        assert_eq!(ensure_admin(&path).unwrap(), admin);
        let auth = Authenticator::new(path.clone());
        assert!(matches!(
            auth.authenticate(&admin),
            Some(User::Admin { .. })
        ));
        assert_eq!(auth.authenticate("nope"), None);
        // A node token added later is picked up at once...
        let n0 = ensure_node(&path, "n0").unwrap();
        assert_eq!(
            auth.authenticate(&n0),
            Some(User::Node { node: "n0".into() })
        );
        // ...and a removed one stops working.
        let kept: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with(&n0))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::pki::write_private(&path, &kept).unwrap();
        std::thread::sleep(RELOAD_EVERY + std::time::Duration::from_millis(50));
        assert_eq!(auth.authenticate(&n0), None);
        assert!(matches!(
            auth.authenticate(&admin),
            Some(User::Admin { .. })
        ));
    }

    #[test]
    fn nodes_write_only_their_own_objects() {
        let n0 = User::Node { node: "n0".into() };
        assert!(authorize(&n0, &action("list", "services", None)).is_ok());
        // ConfigMaps and Secrets only when a pod bound to the node uses them.
        assert!(authorize(&n0, &action("list", "secrets", None)).is_err());
        let mut used = action("get", "configmaps", Some("cfg"));
        assert!(authorize(&n0, &used).is_err());
        used.used_by_bound_pod = true;
        assert!(authorize(&n0, &used).is_ok());
        assert!(authorize(&n0, &action("update", "nodes", Some("n0"))).is_ok());
        assert!(authorize(&n0, &action("update", "nodes", Some("n1"))).is_err());
        assert!(authorize(&n0, &action("create", "nodes", Some("n0"))).is_ok());
        assert!(authorize(&n0, &action("create", "nodes", Some("n1"))).is_err());
        assert!(authorize(&n0, &action("create", "services", Some("x"))).is_err());
        let mut status = action("patch", "pods", Some("p"));
        status.subresource = Some("status");
        status.bound_node = Some("n1");
        let err = authorize(&n0, &status).unwrap_err();
        assert_eq!(err.code, 403);
        status.bound_node = Some("n0");
        assert!(authorize(&n0, &status).is_ok());
        let mut lease = action("update", "leases", Some("n0"));
        lease.namespace = Some("kube-node-lease");
        assert!(authorize(&n0, &lease).is_ok());
    }
}
