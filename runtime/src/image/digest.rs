//! Content digests (`sha256:<hex>`) and verified blob reads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::image::ImageError;

/// A `sha256:<64 hex>` digest, checked when parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms and malformed values are refused.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| ImageError::BadDigest(text.to_owned()))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ImageError::BadDigest(text.to_owned()));
        }
        Ok(Self(text.to_owned()))
    }

    /// The hex part, which names blob files.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{:x}", Sha256::digest(bytes)))
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Streams `path` through SHA-256 and checks digest and size against what
/// the referring descriptor says.
pub(crate) fn verify_file(path: &Path, want: &Digest, size: u64) -> Result<(), ImageError> {
    let mut file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = HashWriter(Sha256::new(), 0);
    io::copy(&mut file, &mut hasher).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    let got = Digest(format!("sha256:{:x}", hasher.0.finalize()));
    if &got != want {
        return Err(ImageError::DigestMismatch {
            path: path.to_owned(),
            want: want.clone(),
            got,
        });
    }
    if hasher.1 != size {
        return Err(ImageError::SizeMismatch {
            path: path.to_owned(),
            want: size,
            got: hasher.1,
        });
    }
    Ok(())
}

/// Reads a small blob (manifest, config) after verifying it.
pub(crate) fn read_verified(path: &Path, want: &Digest, size: u64) -> Result<Vec<u8>, ImageError> {
    verify_file(path, want, size)?;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| ImageError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

struct HashWriter(Sha256, u64);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_when_parsed() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(&d.to_string()).expect("round trip"), d);
        assert!(Digest::parse("sha512:abcd").is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
    }
}
