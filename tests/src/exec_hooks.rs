//! Hooks that run in a spawned child between fork and exec, to place it in
//! a network namespace or a cgroup before the program starts.
//!
//! This module holds the testbed's `unsafe`: `Command::pre_exec` closures
//! run in a forked child of a multi-threaded process, where only
//! async-signal-safe work is allowed. Every file is opened before the fork;
//! the closures only make raw system calls on those descriptors and never
//! allocate or take locks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd`'s child join the network namespace open as `netns`.
pub(crate) fn enter_netns(cmd: &mut Command, netns: File) {
    let hook = move || {
        // SAFETY: setns(2) on a descriptor owned by this closure; an
        // async-signal-safe system call.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only makes a system call (see the module comment).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes `cmd`'s child move itself into the cgroup whose `cgroup.procs` is
/// open (for writing) as `procs`.
pub(crate) fn join_cgroup(cmd: &mut Command, procs: File) {
    let hook = move || {
        // Writing "0" to cgroup.procs moves the writing process.
        let pid = b"0";
        // SAFETY: write(2) of a static buffer to a descriptor owned by
        // this closure; an async-signal-safe system call.
        let n = unsafe { libc::write(procs.as_raw_fd(), pid.as_ptr().cast(), pid.len()) };
        if n == pid.len() as isize {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the hook only makes a system call (see the module comment).
    unsafe {
        cmd.pre_exec(hook);
    }
}
