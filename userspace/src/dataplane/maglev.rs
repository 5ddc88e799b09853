//! Maglev tables (`--lb-algorithm maglev`; see `tollgate_common::lb::maglev`): every node fills
//! the same table from the same backends, whatever order it learnt them in and whatever IDs
//! it gave them, so a flow from outside reaches the same backend on every node.

use tollgate_common::lb::maglev::{CHUNK, Chunk};

/// A backend as the table knows it: its identity (address, port and protocol as the maps keep
/// them, the same bytes on every node) and this node's ID for it.
pub type Member = ([u8; 19], u32);

/// The identity bytes of a backend: address words, port (network order) and protocol.
pub fn identity(addr: &[u32; 4], port_be: u16, proto: u8) -> [u8; 19] {
    let mut out = [0u8; 19];
    for (chunk, w) in out.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out[16..18].copy_from_slice(&port_be.to_ne_bytes());
    out[18] = proto;
    out
}

/// 64-bit FNV-1a from `basis`: two bases give the two independent hashes Maglev needs.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills a table of `size` entries, a prime (Maglev's population: each backend in turn takes
/// the next free entry of its own permutation of the table, so every backend ends up with
/// ⌊size/n⌋ or ⌈size/n⌉ entries). `members` must not be empty.
pub fn table(members: &[Member], size: u32) -> Vec<u32> {
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup_by(|a, b| a.0 == b.0);
    let m = u64::from(size);
    let mut table = vec![0u32; size as usize];
    if members.is_empty() || m < 2 {
        return table;
    }
    let perms: Vec<(u64, u64)> = members
        .iter()
        .map(|(name, _)| {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, name) % m;
            let skip = fnv1a(0x6c62_272e_07bb_0142, name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut taken = vec![false; size as usize];
    let mut next = vec![0u64; members.len()];
    let mut filled = 0usize;
    'fill: loop {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while taken[c as usize] {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            taken[c as usize] = true;
            table[c as usize] = members[i].1;
            next[i] += 1;
            filled += 1;
            if filled == size as usize {
                break 'fill;
            }
        }
    }
    table
}

/// The map values of a table: chunk `c` holds entries `c × CHUNK ..`, zero past the end.
pub fn chunks(table: &[u32]) -> impl Iterator<Item = (u32, Box<Chunk>)> + '_ {
    table.chunks(CHUNK as usize).enumerate().map(|(c, part)| {
        let mut chunk = Box::new(Chunk {
            backends: [0; CHUNK as usize],
        });
        chunk.backends[..part.len()].copy_from_slice(part);
        (c as u32, chunk)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tollgate_common::lb::maglev::{DEFAULT_SIZE, SIZES};

    use super::*;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| {
                let addr = [
                    0,
                    0,
                    0xffff_u32.to_be(),
                    u32::from_be_bytes([10, 244, 1, i as u8]),
                ];
                (identity(&addr, 8080u16.to_be(), 6), 100 + i)
            })
            .collect()
    }

    fn shares(t: &[u32]) -> HashMap<u32, usize> {
        let mut m = HashMap::new();
        for &id in t {
            *m.entry(id).or_default() += 1;
        }
        m
    }

    #[test]
    fn every_backend_gets_an_equal_share_whatever_the_order_and_size() {
        for size in SIZES {
            for n in [1u32, 2, 3, 7, 10, 40] {
                let ms = members(n);
                let t = table(&ms, size);
                assert_eq!(t.len(), size as usize);
                let s = shares(&t);
                assert_eq!(s.len(), n as usize, "every backend has entries");
                let lo = size as usize / n as usize;
                let hi = (size as usize).div_ceil(n as usize);
                assert!(s.values().all(|&c| c >= lo && c <= hi), "{size} {n}: {s:?}");
                let mut reversed = ms.clone();
                reversed.reverse();
                assert_eq!(
                    table(&reversed, size),
                    t,
                    "{size} {n}: the order learnt does not matter"
                );
            }
        }
    }

    #[test]
    fn chunks_hold_the_table_in_order_zero_past_its_end() {
        let t = table(&members(3), 16381);
        let cs: Vec<_> = chunks(&t).collect();
        assert_eq!(cs.len(), 4);
        for (c, chunk) in &cs {
            let start = *c as usize * CHUNK as usize;
            let end = (start + CHUNK as usize).min(t.len());
            assert_eq!(&chunk.backends[..end - start], &t[start..end]);
            assert!(chunk.backends[end - start..].iter().all(|&id| id == 0));
        }
    }

    #[test]
    fn a_backend_that_goes_moves_little_more_than_its_own_share() {
        let ms = members(10);
        let before = table(&ms, DEFAULT_SIZE);
        let gone = ms[3].1;
        let after = table(&[&ms[..3], &ms[4..]].concat(), DEFAULT_SIZE);
        let moved = before
            .iter()
            .zip(after.iter())
            .filter(|(b, a)| **b != gone && b != a)
            .count();
        // Its own share (≈ 409 entries) moves necessarily; of the other 3684, few.
        assert!(
            moved < DEFAULT_SIZE as usize / 20,
            "{moved} entries of staying backends moved"
        );
        assert!(after.iter().all(|&id| id != gone));
    }

    #[test]
    fn ids_follow_the_identity_not_the_table_position() {
        // Another node gave the same backends other IDs: the same entries hold the same
        // backends.
        let ms = members(5);
        let other: Vec<Member> = ms.iter().map(|(n, id)| (*n, id + 1000)).collect();
        let (a, b) = (table(&ms, DEFAULT_SIZE), table(&other, DEFAULT_SIZE));
        assert!(a.iter().zip(b.iter()).all(|(x, y)| x + 1000 == *y));
    }
}
