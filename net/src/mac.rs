//! MAC addresses as text, and the stable hash that derives names and
//! addresses (veth names, VTEP MACs, nftables names) from identities.

/// A hash that never changes between builds or versions, for names and
/// addresses derived from identities (veth names, VTEP MACs): FNV-1a
/// (64-bit), then MurmurHash3's finalizer so that inputs differing in one
/// character ("n1", "n2") differ in every byte of the result.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut h = fnv;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `aa:bb:…` from bytes.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Bytes from `aa:bb:cc:dd:ee:ff`; `None` unless it is six hex pairs.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_roundtrip_and_reject_garbage() {
        let mac = parse_mac("0a:1B:00:ff:10:01").unwrap();
        assert_eq!(format_mac(&mac), "0a:1b:00:ff:10:01");
        for bad in [
            "",
            "0a:1b:00:ff:10",
            "0a:1b:00:ff:10:01:02",
            "0a:1b:00:ff:10:zz",
            "a:1b:00:ff:10:01",
        ] {
            assert!(parse_mac(bad).is_none(), "{bad}");
        }
    }
}
