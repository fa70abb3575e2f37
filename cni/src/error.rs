//! CNI error objects: what the plugin prints on stdout when it fails.

use serde::Serialize;

/// Error codes defined by the CNI specification (1–99 are reserved for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion = 1,
    /// A field in the configuration is not supported.
    UnsupportedField = 2,
    /// The container (its network namespace) does not exist.
    UnknownContainer = 3,
    /// A required `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// Reading or writing something failed.
    Io = 5,
    /// stdin could not be decoded.
    Decode = 6,
    /// The network configuration is invalid.
    InvalidConfig = 7,
    /// A transient failure; the runtime should try again later.
    TryAgainLater = 11,
    /// The plugin cannot serve ADD requests (STATUS).
    NotAvailable = 50,
    /// What CHECK finds differs from what ADD made (plugin-specific code).
    CheckFailed = 100,
    /// A kernel (netlink, nftables) operation failed (plugin-specific code).
    Kernel = 101,
}

/// A failed CNI operation, printed as the spec's error object.
#[derive(Debug, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// Which spec code describes the failure.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// What exactly went wrong.
    pub details: String,
}

impl CniError {
    /// An error with `code`, a short message and details.
    pub fn new(code: Code, msg: impl Into<String>, details: impl ToString) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.to_string(),
        }
    }

    /// The error object, in the given `cniVersion`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Object<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Object {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_default()
    }
}

/// Shorthand for results of CNI operations.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_spec_fields() {
        let e = CniError::new(Code::InvalidEnvironment, "missing CNI_NETNS", "set it");
        let json = e.to_json("1.1.0");
        assert_eq!(json["code"], 4);
        assert_eq!(json["cniVersion"], "1.1.0");
        assert_eq!(json["msg"], "missing CNI_NETNS");
        assert_eq!(json["details"], "set it");
    }
}
