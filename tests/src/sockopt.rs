//! The one socket option the tests need that `std` and `nix` lack on
//! Linux: IP_MTU_DISCOVER = IP_PMTUDISC_DO (always set DF, never fragment
//! locally), to prove a full-size datagram fits through the overlay.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Makes `socket` send every datagram with DF set; one larger than the
/// route's MTU then fails with EMSGSIZE instead of being fragmented.
pub fn dont_fragment(socket: &UdpSocket) -> std::io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: the fd is open for the borrow's duration; the option value
    // is a c_int that lives across the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
