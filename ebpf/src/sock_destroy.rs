//! Closing UDP sockets that are still connected to backends that went
//! away (`bpf/sock_destroy.bpf.c`, an `iter/udp` program calling
//! `bpf_sock_destroy`, kernel >= 6.5): their owners' next call fails with
//! ECONNABORTED, so a DNS resolver moves on instead of waiting on a dead
//! backend.

use std::io::Read;
use std::mem::MaybeUninit;
use std::net::SocketAddrV4;
use std::path::PathBuf;

use berth_net::netns::run_in;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Iter, MapCore, MapFlags, OpenObject};

use crate::skel::destroy::SockDestroySkelBuilder;
use crate::Error;

/// The destroy map's key: address and port in network order, two bytes of
/// padding (`struct lb4_destroy_key`).
fn key(addr: &SocketAddrV4) -> [u8; 8] {
    let [a, b, c, d] = addr.ip().octets();
    let [p, q] = addr.port().to_be_bytes();
    [a, b, c, d, p, q, 0, 0]
}

/// Destroys, in each network namespace of `netns` (namespace files such as
/// `/proc/<pid>/ns/net`), every UDP socket connected to one of `backends`.
/// Returns the namespaces visited.
pub fn destroy_udp_connected_to(
    backends: &[SocketAddrV4],
    netns: &[PathBuf],
) -> Result<usize, Error> {
    if backends.is_empty() || netns.is_empty() {
        return Ok(0);
    }
    let mut object = MaybeUninit::<OpenObject>::uninit();
    let skel = SockDestroySkelBuilder::default()
        .open(&mut object)
        .and_then(|open| open.load())
        .map_err(|e| Error::bpf("load sock_destroy (kernel >= 6.5 with bpf_sock_destroy)", e))?;
    for backend in backends {
        skel.maps
            .lb4_destroy
            .update(&key(backend), &[1], MapFlags::ANY)
            .map_err(|e| Error::bpf("fill lb4_destroy", e))?;
    }
    let link = skel
        .progs
        .berth_destroy_udp
        .attach()
        .map_err(|e| Error::bpf("attach the UDP socket iterator", e))?;
    let mut visited = 0;
    for path in netns {
        // An iterator walks the namespace of the thread that creates it.
        let walked = run_in(Some(path), || -> Result<(), Error> {
            let mut iter =
                Iter::new(&link).map_err(|e| Error::bpf("create the UDP socket iterator", e))?;
            let mut sink = Vec::new();
            iter.read_to_end(&mut sink)
                .map_err(|e| Error::io("run the UDP socket iterator in", path, e))?;
            Ok(())
        });
        match walked {
            Ok(result) => result?,
            // The process (and maybe its namespace) is gone: nothing to close.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(Error::io("enter network namespace", path, e.into())),
        }
        visited += 1;
    }
    Ok(visited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_in_network_order() {
        let k = key(&"10.1.2.3:5353".parse().unwrap());
        assert_eq!(k, [10, 1, 2, 3, 0x14, 0xe9, 0, 0]);
    }
}
