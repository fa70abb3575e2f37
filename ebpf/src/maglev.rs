//! Maglev lookup tables (Eisenbud et al., NSDI 2016): each backend fills
//! the table along its own permutation, in turns, so every backend gets an
//! almost equal share of the entries and a backend leaving moves few flows
//! other than its own. The permutation depends only on the backend's
//! address (FNV-1a, fixed seeds), and backends are taken in address order,
//! so every node computes the same table from the same set.

use std::net::SocketAddrV4;

use crate::model::Backend;

/// Entries of a table (prime; `LB4_MAGLEV_SIZE` in `bpf/lb4.h`).
pub const SIZE: usize = 1021;

/// For each entry, the index into `backends` of the backend it maps to.
/// `backends` may come in any order; empty gives an empty table.
pub fn table(backends: &[Backend]) -> Vec<usize> {
    if backends.is_empty() {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    let size = SIZE as u64;
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let name = backends[i].to_string();
            let offset = fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325) % size;
            let skip = fnv1a(name.as_bytes(), 0x8422_2325_cbf2_9ce4) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entries = vec![usize::MAX; SIZE];
    let mut filled = 0;
    'fill: loop {
        for (turn, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[turn] * skip) % size;
            while entries[c as usize] != usize::MAX {
                next[turn] += 1;
                c = (offset + next[turn] * skip) % size;
            }
            entries[c as usize] = order[turn];
            next[turn] += 1;
            filled += 1;
            if filled == SIZE {
                break 'fill;
            }
        }
    }
    entries
}

/// The hash the tc path gives a flow (`flow_hash` in
/// `bpf/nodeport.bpf.c`, bit for bit): the client's address and port, the
/// frontend port and the protocol number.
pub fn flow_hash(client: SocketAddrV4, frontend_port: u16, proto: u8) -> u32 {
    // The C code reads these fields in network order straight from memory.
    let saddr = u32::from_ne_bytes(client.ip().octets());
    let sport = u32::from(u16::from_ne_bytes(client.port().to_be_bytes()));
    let dport = u32::from(u16::from_ne_bytes(frontend_port.to_be_bytes()));
    let mut h = saddr;
    h ^= (sport << 16 | dport).wrapping_mul(0x9e37_79b1);
    h ^= u32::from(proto);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    fn backends(n: u8) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 244, i, 7), 8080),
                proto: Protocol::Tcp,
            })
            .collect()
    }

    fn owners(backends: &[Backend]) -> Vec<Backend> {
        table(backends).into_iter().map(|i| backends[i]).collect()
    }

    #[test]
    fn every_entry_is_filled_and_shares_are_even() {
        let b = backends(7);
        let t = table(&b);
        assert_eq!(t.len(), SIZE);
        for i in 0..b.len() {
            let share = t.iter().filter(|&&e| e == i).count();
            assert!(
                (SIZE / 7 - 2..=SIZE / 7 + 2).contains(&share),
                "backend {i}: {share}"
            );
        }
    }

    #[test]
    fn the_order_backends_come_in_does_not_matter() {
        let b = backends(5);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(owners(&b), owners(&reversed));
    }

    #[test]
    fn a_backend_leaving_moves_little_else() {
        let b = backends(10);
        let before = owners(&b);
        let after = owners(&b[1..]);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **x != b[0])
            .count();
        assert!(
            moved < SIZE / 10,
            "{moved} entries of remaining backends moved"
        );
    }

    #[test]
    fn no_backends_no_table() {
        assert!(table(&[]).is_empty());
    }
}
