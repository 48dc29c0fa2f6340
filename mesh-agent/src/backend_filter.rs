//! The filter in front of the backend set (`mesh_be_filter`): a bit per port and a bit per
//! hash of address and port, set for every address in `mesh_be_addrs`. `getpeername4` and
//! `recvmsg4` read the peer's port bit and address bit first, so the peer of an accepted
//! socket (a client, no backend) costs a read in 8 KiB of port bits that stays in cache
//! instead of a miss in a hash map of megabytes: the server side of every connection pays it
//! (`cargo xtask bench service-lb`).
//!
//! The filter is a superset of the set: a bit is set before its address enters the set and
//! cleared only after it left (and no other address shares it). Words are written whole, from
//! a copy of what the map holds, so a write that failed is simply written again.

use std::os::fd::AsFd as _;

use aya::maps::{Array, IterableMap, Map, MapData, MapError};
use mesh_common::service_lb::{BACKEND_FILTER_WORDS, Backend};

use crate::map_write::insert_batch;

pub struct BackendFilter {
    map: Array<MapData, u64>,
    /// What the map holds, word by word.
    written: Vec<u64>,
}

impl BackendFilter {
    /// Takes the map, reading what it holds (an earlier agent's filter, or zeros).
    pub fn new(map: Map) -> Result<Self, MapError> {
        let map: Array<MapData, u64> = Array::try_from(map)?;
        let written = (0..BACKEND_FILTER_WORDS).map(|i| map.get(&i, 0)).collect::<Result<_, _>>()?;
        Ok(Self { map, written })
    }

    /// Sets the bits of `addrs` (before they enter the backend set).
    pub fn add(&mut self, addrs: &[Backend]) -> Result<(), MapError> {
        // Only the words that change (a full sync adds thousands of services, each a few
        // addresses).
        let mut changed: Vec<(u32, u64)> = Vec::new();
        for (index, mask) in addrs.iter().flat_map(Backend::filter_slots) {
            match changed.iter_mut().find(|(i, _)| *i == index) {
                Some((_, word)) => *word |= mask,
                None if self.written[index as usize] & mask == 0 => {
                    changed.push((index, self.written[index as usize] | mask));
                }
                None => {}
            }
        }
        self.write_words(changed.into_iter().unzip())
    }

    /// Makes the filter exactly the bits of `addrs` (what the backend set holds now).
    pub fn rebuild<'a>(&mut self, addrs: impl IntoIterator<Item = &'a Backend>) -> Result<(), MapError> {
        self.write(&words_of(addrs))
    }

    /// Writes the words that differ from what the map holds, in one batch.
    fn write(&mut self, words: &[u64]) -> Result<(), MapError> {
        let changed = (0..BACKEND_FILTER_WORDS)
            .zip(words)
            .filter(|&(i, word)| self.written[i as usize] != *word)
            .map(|(i, word)| (i, *word))
            .unzip();
        self.write_words(changed)
    }

    /// Writes `values` at `indexes` in one batch.
    fn write_words(&mut self, (indexes, values): (Vec<u32>, Vec<u64>)) -> Result<(), MapError> {
        let result = insert_batch(IterableMap::map(&self.map).fd().as_fd(), &indexes, &values);
        // The kernel wrote a prefix of the batch when it failed: that much is now held.
        let done = result.as_ref().map_or_else(|(written, _)| *written, |()| indexes.len());
        for (&i, &word) in indexes.iter().zip(&values).take(done) {
            self.written[i as usize] = word;
        }
        result.map_err(|(_, err)| err)
    }
}

/// The filter's words for `addrs`.
pub fn words_of<'a>(addrs: impl IntoIterator<Item = &'a Backend>) -> Vec<u64> {
    let mut words = vec![0u64; BACKEND_FILTER_WORDS as usize];
    for addr in addrs {
        set(&mut words, addr);
    }
    words
}

fn set(words: &mut [u64], addr: &Backend) {
    for (index, mask) in addr.filter_slots() {
        words[index as usize] |= mask;
    }
}

/// Whether `addr`'s bits are set in `words` (what the kernel checks).
pub fn holds(words: &[u64], addr: &Backend) -> bool {
    addr.filter_slots().iter().all(|&(index, mask)| words[index as usize] & mask != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_of_the_set_is_held_and_few_others() {
        let set: Vec<Backend> =
            (0..2000u32).map(|i| Backend::new([10, 244, (i / 250) as u8, (i % 250) as u8 + 1], 8080)).collect();
        let words = words_of(&set);
        assert!(set.iter().all(|addr| holds(&words, addr)));
        // Clients on ephemeral ports: none is held (no backend listens on one).
        let held = (32_768..42_768u16).filter(|&port| holds(&words, &Backend::new([10, 244, 9, 9], port))).count();
        assert_eq!(held, 0, "{held} of 10,000 client sockets would look like backends");
        // Clients on a backend port (a client bound to 8080 itself): most are not held either
        // (2,000 of 262,144 address bits are set).
        let held = (0..10_000u32)
            .filter(|i| holds(&words, &Backend::new([10, 245, (i / 250) as u8, (i % 250) as u8], 8080)))
            .count();
        assert!(held < 600, "{held} of 10,000 other addresses on port 8080 would look like backends");
    }
}
