//! Unique run prefixes, so concurrent runs never touch each other's objects.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// The prefix every object of one testbed run is named with: `bt` and six
/// random hex digits for tests, or a fixed name for the local cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunPrefix(String);

impl RunPrefix {
    /// A fresh random prefix, `bt` + 6 hex digits.
    pub fn random() -> Self {
        // RandomState is seeded from the OS per process; mix in the pid and
        // the time so prefixes differ within and across processes.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        RunPrefix(format!("bt{:06x}", h.finish() & 0xff_ffff))
    }

    /// A fixed prefix, e.g. `berth-local` for `cargo xtask up`. It must be a
    /// short file-name-safe word.
    pub fn named(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 24
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ok.then(|| RunPrefix(name.to_string()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_prefixes_differ_and_are_short() {
        let a = RunPrefix::random();
        let b = RunPrefix::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 8);
        assert!(a.as_str().starts_with("bt"));
    }

    #[test]
    fn named_prefixes_are_checked() {
        assert!(RunPrefix::named("berth-local").is_some());
        for bad in ["", "Berth", "a/b", "a b", "x".repeat(25).as_str()] {
            assert!(RunPrefix::named(bad).is_none(), "{bad:?}");
        }
    }
}
