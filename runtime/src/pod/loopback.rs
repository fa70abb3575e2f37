//! Bringing up `lo` in a pod's new network namespace (what the CNI
//! `loopback` plugin does for kubelet): a fresh namespace's loopback is
//! down, and the pod's containers talk over it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Sets `lo` up inside the network namespace at `netns`.
pub(crate) fn bring_up(netns: &Path) -> std::io::Result<()> {
    berth_net::netns::run_in(Some(netns), || set_up("lo"))?
}

/// SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP added.
fn set_up(name: &str) -> std::io::Result<()> {
    // SAFETY: socket(2) has no memory arguments; the descriptor is owned
    // (and closed) by `sock` right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming an interface; the kernel fills
    // its flags field.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel reads the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
