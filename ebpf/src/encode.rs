//! Encoding of the service model to and from the map entries the C
//! programs read (`bpf/lb4.h`), through the skeleton's generated types.
//!
//! This is the only module that views those structs as bytes; it holds the
//! crate's `unsafe`.

use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{Backend, Frontend, Protocol};
use crate::skel::nodeport::types::{lb4_ct as ct_value, lb4_ct_key as ct_key};
use crate::skel::types::{
    lb4_affinity, lb4_affinity_key, lb4_backend, lb4_key, lb4_maglev, lb4_service, lb4_slot,
};
use crate::Error;

// The C layouts, checked at compile time so a change to `lb4.h` that moves a
// field cannot go unnoticed.
const _: () = {
    assert!(size_of::<lb4_key>() == 8);
    assert!(std::mem::offset_of!(lb4_key, dport) == 4);
    assert!(std::mem::offset_of!(lb4_key, proto) == 6);
    assert!(size_of::<lb4_service>() == 16);
    assert!(std::mem::offset_of!(lb4_service, count) == 8);
    assert!(std::mem::offset_of!(lb4_service, flags) == 12);
    assert!(size_of::<lb4_slot>() == 4);
    assert!(size_of::<lb4_backend>() == 8);
    assert!(size_of::<lb4_affinity_key>() == 16);
    assert!(std::mem::offset_of!(lb4_affinity_key, address) == 8);
    assert!(size_of::<lb4_affinity>() == 16);
    assert!(std::mem::offset_of!(lb4_affinity, backend_id) == 8);
};

// SAFETY: these are `#[repr(C)]` structs of integers whose padding is
// explicit (`pad` fields), so they have no uninitialised bytes and every bit
// pattern is a valid value.
unsafe impl plain::Plain for lb4_key {}
// SAFETY: as above.
unsafe impl plain::Plain for lb4_service {}
// SAFETY: as above.
unsafe impl plain::Plain for lb4_slot {}
// SAFETY: as above.
unsafe impl plain::Plain for lb4_backend {}
// SAFETY: as above.
unsafe impl plain::Plain for lb4_affinity_key {}
// SAFETY: as above.
unsafe impl plain::Plain for lb4_affinity {}

/// A map entry type shared with the C programs.
pub(crate) trait MapEntry: plain::Plain + Default + Copy {}
impl MapEntry for lb4_key {}
impl MapEntry for lb4_service {}
impl MapEntry for lb4_slot {}
impl MapEntry for lb4_backend {}
impl MapEntry for lb4_affinity_key {}
impl MapEntry for lb4_affinity {}
impl MapEntry for u32 {}

// SAFETY: as above (an array of integers).
unsafe impl plain::Plain for lb4_maglev {}
impl MapEntry for lb4_maglev {}

// SAFETY: as above (`bpf/nodeport.bpf.c`).
unsafe impl plain::Plain for ct_key {}
// SAFETY: as above.
unsafe impl plain::Plain for ct_value {}
impl MapEntry for ct_key {}
impl MapEntry for ct_value {}

const _: () = {
    assert!(size_of::<lb4_maglev>() == 4 * crate::maglev::SIZE);
    assert!(size_of::<ct_key>() == 16);
    assert!(size_of::<ct_value>() == 32);
    assert!(std::mem::offset_of!(ct_value, created_ns) == 24);
    assert!(std::mem::offset_of!(ct_value, backend_id) == 12);
};

/// The bytes of `value`, as the kernel reads them.
pub(crate) fn bytes_of<T: MapEntry>(value: &T) -> &[u8] {
    // SAFETY: `MapEntry` types have no padding bytes (see above) and the
    // slice borrows `value` for its lifetime.
    unsafe { plain::as_bytes(value) }
}

/// Decodes an entry read from `map`, checking its size.
pub(crate) fn from_bytes<T: MapEntry>(map: &'static str, bytes: &[u8]) -> Result<T, Error> {
    let mut value = T::default();
    if bytes.len() != size_of::<T>() || plain::copy_from_bytes(&mut value, bytes).is_err() {
        return Err(Error::EntrySize {
            map,
            expected: size_of::<T>(),
            actual: bytes.len(),
        });
    }
    Ok(value)
}

/// The key of `frontend` in `lb4_services` and `lb4_maglev`.
pub(crate) fn service_key(frontend: &Frontend) -> lb4_key {
    lb4_key {
        address: u32::from_ne_bytes(frontend.addr.ip().octets()),
        dport: frontend.addr.port().to_be(),
        proto: frontend.proto.number(),
        pad: 0,
    }
}

/// The frontend a key names; `None` for a protocol the datapath does not
/// handle.
pub(crate) fn key_frontend(key: &lb4_key) -> Option<Frontend> {
    let proto = Protocol::from_number(key.proto)?;
    let ip = Ipv4Addr::from(key.address.to_ne_bytes());
    Some(Frontend::new(ip, u16::from_be(key.dport), proto))
}

/// Master entry flag: sessionAffinity ClientIP (`LB4_SVC_AFFINITY`).
pub(crate) const FLAG_AFFINITY: u16 = 0x1;
/// `LB4_SVC_MAGLEV`: flows from outside are hashed onto `lb4_maglev`.
pub(crate) const FLAG_MAGLEV: u16 = 0x2;

/// The frontend an affinity key belongs to.
pub(crate) fn affinity_frontend(key: &lb4_affinity_key) -> Option<Frontend> {
    Some(Frontend {
        addr: SocketAddrV4::new(
            Ipv4Addr::from(key.address.to_ne_bytes()),
            u16::from_be(key.dport),
        ),
        proto: Protocol::from_number(key.proto)?,
    })
}

/// A backend slot entry pointing at `backend_id`.
pub(crate) fn slot_entry(backend_id: u32) -> lb4_slot {
    lb4_slot { backend_id }
}

/// The map entry of `backend`.
pub(crate) fn backend_entry(backend: &Backend) -> lb4_backend {
    lb4_backend {
        address: u32::from_ne_bytes(backend.addr.ip().octets()),
        port: backend.addr.port().to_be(),
        proto: backend.proto.number(),
        flags: 0,
    }
}

/// The backend a map entry describes; `None` for an unknown protocol (an
/// all-zero entry: no backend).
pub(crate) fn entry_backend(entry: &lb4_backend) -> Option<Backend> {
    Some(Backend {
        addr: SocketAddrV4::new(
            Ipv4Addr::from(entry.address.to_ne_bytes()),
            u16::from_be(entry.port),
        ),
        proto: Protocol::from_number(entry.proto)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_in_network_order() {
        let f = Frontend::new(Ipv4Addr::new(10, 96, 0, 1), 443, Protocol::Tcp);
        let key = service_key(&f);
        let bytes = bytes_of(&key);
        assert_eq!(&bytes[0..4], &[10, 96, 0, 1]);
        assert_eq!(&bytes[4..6], &443u16.to_be_bytes());
        assert_eq!(bytes[6], 6);
        assert_eq!(bytes[7], 0);
    }

    #[test]
    fn keys_and_backends_round_trip() {
        let f = Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp);
        let key: lb4_key = from_bytes("lb4_services", bytes_of(&service_key(&f))).unwrap();
        assert_eq!(key_frontend(&key), Some(f));

        let b = Backend {
            addr: "10.244.1.7:5353".parse().unwrap(),
            proto: Protocol::Udp,
        };
        let entry: lb4_backend = from_bytes("lb4_backends", bytes_of(&backend_entry(&b))).unwrap();
        assert_eq!(entry_backend(&entry), Some(b));
        assert_eq!(entry_backend(&lb4_backend::default()), None);
    }

    #[test]
    fn wrong_sizes_are_reported() {
        let err = from_bytes::<lb4_key>("lb4_services", &[0; 11]).unwrap_err();
        assert!(err.to_string().contains("11 bytes, expected 8"), "{err}");
    }
}
