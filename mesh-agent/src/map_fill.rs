//! How full each pinned map is: entries counted with the kernel's key iteration.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::{MapData, MapType};
use mesh_common::maps;

/// `BPF_MAP_GET_NEXT_KEY`.
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// One map's fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub name: &'static str,
    /// Entries now (`None`: not a map of entries, such as the ring buffer or an array).
    pub entries: Option<u64>,
    /// Max entries; for the ring buffer, its size in bytes.
    pub capacity: u64,
}

/// The fill of every map pinned in `bpffs`. Maps that cannot be opened are left out.
pub fn all(bpffs: &Path) -> Vec<Fill> {
    maps::ALL
        .iter()
        .filter_map(|&name| {
            let map = MapData::from_pin(bpffs.join(name)).ok()?;
            let info = map.info().ok()?;
            // Arrays have all their entries; the ring buffer has bytes, not entries.
            let counted = !matches!(info.map_type(), Ok(MapType::Array | MapType::PerCpuArray | MapType::RingBuf));
            let entries = counted.then(|| count(&map, info.key_size() as usize, u64::from(info.max_entries())));
            Some(Fill { name, entries, capacity: u64::from(info.max_entries()) })
        })
        .collect()
}

/// Counts the keys of `map`, at most `max + 1` (entries may come and go meanwhile).
fn count(map: &MapData, key_size: usize, max: u64) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    let (mut key, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut n = 0u64;
    let mut first = true;
    while n <= max {
        // union bpf_attr for BPF_MAP_GET_NEXT_KEY: map_fd, (pad), key, next_key.
        let mut attr = [0u64; 4];
        attr[0] = u64::from(fd as u32);
        attr[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: `attr` is a valid bpf_attr for this command; the key buffers are key_size long.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, attr.as_mut_ptr(), size_of_val(&attr)) };
        if rc != 0 {
            break;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
    n
}
