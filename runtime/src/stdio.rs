//! The container's standard streams when the caller passes `/dev/null`.
//!
//! libcontainer, after pivoting into the container, replaces every standard
//! stream that is the host's `/dev/null` with the container's `/dev/null`,
//! but opens it read-only: a container started with stdout on `/dev/null`
//! then fails its first write with EBADF (runc had, and fixed, the same bug).
//! [`StdioExecutor`] runs last, just before the workload is executed, and
//! reopens such streams with the access mode the caller gave them.

use std::os::fd::{AsRawFd, BorrowedFd};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::{fstat, major, minor, Mode, SFlag};

/// The default workload executor, after repairing `/dev/null` streams.
#[derive(Clone, Debug, Default)]
pub(crate) struct StdioExecutor;

impl Executor for StdioExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        for fd in [1, 2] {
            reopen_writable_null(fd).map_err(|e| {
                ExecutorError::Other(format!("reopening /dev/null as fd {fd}: {e}"))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Makes `fd` a writable `/dev/null` if it is a read-only one.
fn reopen_writable_null(fd: i32) -> nix::Result<()> {
    // SAFETY: fds 1 and 2 stay open for the whole life of this process;
    // the borrow does not outlive this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = match fstat(borrowed) {
        Ok(stat) => stat,
        Err(nix::errno::Errno::EBADF) => return Ok(()),
        Err(e) => return Err(e),
    };
    let is_char = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    if !is_char || major(stat.st_rdev) != 1 || minor(stat.st_rdev) != 3 {
        return Ok(());
    }
    let flags = OFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFL)?);
    if flags & OFlag::O_ACCMODE != OFlag::O_RDONLY {
        return Ok(());
    }
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())?;
    // dup2 onto a standard stream: clears O_CLOEXEC on the copy.
    // SAFETY: plain dup2 on two valid descriptors; `null` is closed on drop.
    let rc = unsafe { libc::dup2(null.as_raw_fd(), fd) };
    nix::errno::Errno::result(rc).map(drop)
}
