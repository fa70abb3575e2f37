//! Extended attributes (overlayfs' opaque-directory mark), the one call
//! neither std nor nix wraps.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::image::ImageError;

/// Sets attribute `name` on `path` itself (not a symlink's target).
pub(crate) fn set(path: &Path, name: &str, value: &[u8]) -> Result<(), ImageError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| ImageError::UnsafePath {
        blob: path.to_owned(),
        path: path.to_owned(),
    })?;
    let c_name = CString::new(name).map_err(|_| ImageError::UnsafePath {
        blob: path.to_owned(),
        path: path.to_owned(),
    })?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value`
    // is a valid buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    nix::errno::Errno::result(rc)
        .map(drop)
        .map_err(|e| ImageError::Io {
            path: path.to_owned(),
            source: e.into(),
        })
}
