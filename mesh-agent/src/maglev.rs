//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of `size` slots (a
//! prime) that every node computes alike from the same backends, in which a backend removed
//! (or added) moves about 1/N of the slots. Each backend's preference list is a permutation of
//! the slots from two hashes of its address and port; backends take turns claiming their next
//! free preferred slot until the table is full.

use mesh_common::nodeport::Slot;

/// FNV-1a over `bytes` from `seed`: the same on every node and every run (no random state).
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether `n` is a prime (the table size must be one, so every skip visits every slot).
pub fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// The Maglev table of `backends` (address and port matter, `flags` do not, and their order
/// does not either: they are sorted first), `size` slots; empty when there are none.
pub fn table(backends: &[Slot], size: u32) -> Vec<Slot> {
    debug_assert!(is_prime(size));
    if backends.is_empty() {
        return Vec::new();
    }
    let mut sorted = backends.to_vec();
    sorted.sort_by_key(|b| (u32::from_be(b.addr), u16::from_be(b.port)));
    let size64 = u64::from(size);
    let prefs: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let mut name = [0u8; 6];
            name[..4].copy_from_slice(&b.addr.to_ne_bytes());
            name[4..].copy_from_slice(&b.port.to_ne_bytes());
            let offset = fnv(0xcbf2_9ce4_8422_2325, &name) % size64;
            let skip = fnv(0x8422_2325_cbf2_9ce4, &name) % (size64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut owner: Vec<Option<usize>> = vec![None; size as usize];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut slot = (offset + next[i] * skip) % size64;
            while owner[slot as usize].is_some() {
                next[i] += 1;
                slot = (offset + next[i] * skip) % size64;
            }
            owner[slot as usize] = Some(i);
            next[i] += 1;
            filled += 1;
            if filled == size as usize {
                break 'fill;
            }
        }
    }
    owner.into_iter().map(|i| sorted[i.expect("every slot is filled")]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(i: u32) -> Slot {
        Slot { addr: (0x0af4_0000 + i).to_be(), port: 8080u16.to_be(), flags: 0 }
    }

    #[test]
    fn every_backend_gets_its_share_and_the_order_does_not_matter() {
        let backends: Vec<Slot> = (0..10).map(backend).collect();
        let t = table(&backends, 16_381);
        for b in &backends {
            let share = t.iter().filter(|s| *s == b).count();
            assert!((1556..=1720).contains(&share), "{b:?} has {share} of 16381 slots");
        }
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(table(&reversed, 16_381), t);
        assert!(table(&[], 16_381).is_empty());
        assert!(is_prime(16_381) && is_prime(1021) && !is_prime(16_384) && !is_prime(1));
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth_of_the_slots() {
        for n in [3u32, 10, 50] {
            let backends: Vec<Slot> = (0..n).map(backend).collect();
            let before = table(&backends, 16_381);
            let gone = backend(n / 2);
            let after = table(&backends.iter().copied().filter(|b| *b != gone).collect::<Vec<_>>(), 16_381);
            // Slots that pointed elsewhere and now point at another backend: beyond the 1/N that
            // must move (those of the removed backend).
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b && **a != gone).count();
            let extra = moved as f64 / 16_381.0;
            assert!(extra < 0.02 + 1.0 / f64::from(n) * 0.15, "n={n}: {:.4} of the slots moved needlessly", extra);
        }
    }
}
