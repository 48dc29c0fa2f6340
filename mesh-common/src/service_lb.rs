//! Service load balancing at the socket: what `connect4` looks up.
//!
//! A service (virtual address, port, protocol) points at a *revision* of its backend set; the
//! backends of that revision sit in slots `0..count` keyed by `(revision, slot)`. The agent
//! writes a new backend set under a fresh revision and then swaps the service entry in one
//! map update, so a connection never sees a half-written set; then it deletes the old slots.
//! A backend with weight *w* fills *w* slots (weights reduced by their common divisor), so a
//! uniformly random slot is a weighted choice of backend.
//!
//! The hooks also remember, per socket, which service address they translated (the reverse
//! map, looked up only for peers that are backends), so that `getpeername()` and the source of
//! UDP replies show the service, and, per
//! client and service, the backend chosen (the affinity map: `sessionAffinity: ClientIP`,
//! and a UDP socket's datagrams staying on one backend).

/// Key of [`crate::maps::SERVICES`]. Address and port in network byte order, exactly as the
/// kernel hands them to a `sock_addr` program (`user_ip4`, low 16 bits of `user_port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order (the octets in memory order).
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`crate::proto`] number.
    pub proto: u8,
    pub _pad: u8,
}

/// Value of [`crate::maps::SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The backend-set revision in force; slots live at `BackendKey { revision, slot }`.
    pub revision: u32,
    /// Number of backend slots in the revision (0: the service has no backends, and
    /// `connect()` is refused with ECONNREFUSED).
    pub count: u16,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: no affinity.
    pub affinity_timeout_s: u32,
    pub _pad: u32,
}

/// [`ServiceEntry::flags`]: the service has HTTP routes on this port, so `connect4` sends its
/// TCP connections to the agent's listener (while it runs) for the L7 proxy, whatever backend.
pub const SERVICE_FLAG_L7: u16 = 1;

/// The largest weight a backend may have (it fills at most this many slots).
pub const MAX_WEIGHT: u32 = 100;

/// The most slots one service may have (the `count` field).
pub const MAX_SLOTS: usize = u16::MAX as usize;

/// How many slots the kernel searches to confirm that a remembered backend is still in a
/// service's current set; past it the remembered backend is given up and a new one chosen.
pub const AFFINITY_SCAN_SLOTS: u32 = 256;

/// How long a UDP socket's datagrams to a service stay on the backend first chosen, without
/// session affinity (as long as conntrack keeps a UDP stream for kube-proxy).
pub const UDP_STICKY_S: u32 = 120;

/// [`AffinityKey::scope`]: who is remembered.
pub mod affinity_scope {
    /// A client network namespace (a pod): `sessionAffinity: ClientIP`.
    pub const CLIENT: u32 = 1;
    /// One UDP socket: its datagrams keep going to one backend.
    pub const SOCKET: u32 = 2;
}

/// Key of [`crate::maps::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// A network namespace cookie or a socket cookie, as `scope` says.
    pub client: u64,
    pub service: ServiceKey,
    /// An [`affinity_scope`] value.
    pub scope: u32,
    pub _pad: u32,
}

/// Value of [`crate::maps::AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: Backend,
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_used_ns: u64,
    /// The service revision in which `backend` was last confirmed a member.
    pub revision: u32,
    pub _pad: u32,
}

/// Key of [`crate::maps::REVERSE`]: a translated socket and the backend it was given.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReverseKey {
    pub socket_cookie: u64,
    /// Backend address and port, network byte order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of [`crate::maps::REVERSE`]: the service address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceAddr {
    /// Network byte order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// A slot of [`crate::maps::SOCKET_SERVICES`]: the socket that holds it (by cookie), the
/// backend `connect4` gave it and the service address it asked for. A socket's entry is
/// read only while the cookie is its own and its peer is still `backend`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketService {
    /// 0 while the slot is being rewritten (no socket has cookie 0).
    pub socket_cookie: u64,
    pub backend: Backend,
    pub service: ServiceAddr,
}

/// Slots of [`crate::maps::SOCKET_SERVICES`], a power of two: the slot of a socket is the low
/// bits of its cookie. Cookies are handed out in order, so a socket keeps its slot until this
/// many more sockets have been given cookies (about as long as the least recently used of
/// as many entries would survive in an LRU map). 6 MiB.
pub const SOCKET_SLOTS: u32 = 1 << 18;

/// The slot of `socket_cookie` in [`crate::maps::SOCKET_SERVICES`].
#[inline(always)]
pub const fn socket_slot(socket_cookie: u64) -> u32 {
    (socket_cookie & (SOCKET_SLOTS as u64 - 1)) as u32
}

/// Key of [`crate::maps::BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub revision: u32,
    pub slot: u32,
}

/// Value of [`crate::maps::BACKENDS`]: where a connection to the service goes (also the key
/// of [`crate::maps::BACKEND_ADDRS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub _pad: u16,
}

impl ServiceKey {
    /// Builds a key from host-order parts: `octets` as written (10.96.0.10 is `[10, 96, 0, 10]`).
    pub const fn new(octets: [u8; 4], port: u16, proto: u8) -> Self {
        Self { addr: u32::from_ne_bytes(octets), port: port.to_be(), proto, _pad: 0 }
    }
}

impl Backend {
    /// Builds a backend from host-order parts.
    pub const fn new(octets: [u8; 4], port: u16) -> Self {
        Self { addr: u32::from_ne_bytes(octets), port: port.to_be(), _pad: 0 }
    }

    /// This backend's bit in the address part of [`crate::maps::BACKEND_FILTER`]: the top
    /// bits of a Fibonacci hash of address and port (as stored, network order), the same in
    /// the kernel and the agent.
    #[inline(always)]
    pub const fn filter_bit(&self) -> u32 {
        let key = ((self.addr as u64) << 16) | self.port as u64;
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BACKEND_FILTER_BITS_LOG2)) as u32
    }

    /// Where this backend lies in the filter, as (word, mask in that word): first its port's
    /// bit (the port as stored), then [`Backend::filter_bit`]. A peer is a candidate only if
    /// both are set. A client's ephemeral port is seldom any backend's port, so most accepted
    /// sockets stop at the first word, 8 KiB of ports that stay in cache however many
    /// services there are; at 100,000 backends a third of the address bits are set.
    #[inline(always)]
    pub const fn filter_slots(&self) -> [(u32, u64); 2] {
        let port = self.port as u32;
        let bit = self.filter_bit();
        [(port / 64, 1 << (port % 64)), (BACKEND_PORT_WORDS + bit / 64, 1 << (bit % 64))]
    }
}

/// log2 of the address bits in [`crate::maps::BACKEND_FILTER`].
pub const BACKEND_FILTER_BITS_LOG2: u32 = 18;
/// Address bits in [`crate::maps::BACKEND_FILTER`]: 32 KiB.
pub const BACKEND_FILTER_BITS: u32 = 1 << BACKEND_FILTER_BITS_LOG2;
/// The port part of [`crate::maps::BACKEND_FILTER`]: one bit per port, its first `u64` words.
pub const BACKEND_PORT_WORDS: u32 = 65_536 / 64;
/// The filter's `u64` words (the array map's entries): ports, then addresses.
pub const BACKEND_FILTER_WORDS: u32 = BACKEND_PORT_WORDS + BACKEND_FILTER_BITS / 64;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are `repr(C)`, made of integers only, with explicit padding fields, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::ReverseKey {}
    unsafe impl aya::Pod for super::ServiceAddr {}
    unsafe impl aya::Pod for super::SocketService {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn filter_bits_are_in_range_and_spread() {
        // A pod network's worth of backends on one port: few share a bit.
        let mut seen = [false; BACKEND_FILTER_BITS as usize];
        let mut shared = 0;
        for i in 0..4096u32 {
            let backend = Backend::new([10, 244, (i >> 8) as u8, i as u8], 8080);
            let bit = backend.filter_bit();
            assert!(bit < BACKEND_FILTER_BITS);
            if core::mem::replace(&mut seen[bit as usize], true) {
                shared += 1;
            }
        }
        // 4,096 of 262,144 bits: about 32 collisions expected at random.
        assert!(shared < 250, "{shared} of 4096 backends share a bit");
        // One address, many ports (a client's ephemeral ports are not all one bit).
        let mut seen = [false; BACKEND_FILTER_BITS as usize];
        let distinct = (32_768..33_792u16)
            .filter(|&port| {
                !core::mem::replace(&mut seen[Backend::new([10, 244, 0, 7], port).filter_bit() as usize], true)
            })
            .count();
        assert!(distinct > 1000, "{distinct} distinct bits for 1024 ports");
    }

    #[test]
    fn consecutive_cookies_take_distinct_slots_until_the_table_wraps() {
        let first = 1_u64 << 40 | 12_345;
        let mut seen = [false; SOCKET_SLOTS as usize];
        for cookie in first..first + u64::from(SOCKET_SLOTS) {
            let slot = socket_slot(cookie);
            assert!(slot < SOCKET_SLOTS);
            assert!(!core::mem::replace(&mut seen[slot as usize], true), "cookie {cookie} shares slot {slot}");
        }
        assert_eq!(socket_slot(first), socket_slot(first + u64::from(SOCKET_SLOTS)));
    }

    #[test]
    fn a_backend_has_its_port_bit_then_its_address_bit() {
        for (octets, port) in [([10, 244, 0, 7], 8080), ([0, 0, 0, 0], 0), ([255, 255, 255, 255], 65_535)] {
            let backend = Backend::new(octets, port);
            let [(port_word, port_mask), (addr_word, addr_mask)] = backend.filter_slots();
            let stored = u32::from(port.to_be());
            assert_eq!((port_word, port_mask), (stored / 64, 1 << (stored % 64)));
            assert!(port_word < BACKEND_PORT_WORDS);
            let bit = backend.filter_bit();
            assert_eq!((addr_word, addr_mask), (BACKEND_PORT_WORDS + bit / 64, 1 << (bit % 64)));
            assert!((BACKEND_PORT_WORDS..BACKEND_FILTER_WORDS).contains(&addr_word));
        }
    }

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<SocketService>(), 24);
        assert_eq!(offset_of!(SocketService, backend), 8);
        assert_eq!(offset_of!(SocketService, service), 16);
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 6);
        assert_eq!(offset_of!(ServiceKey, _pad), 7);

        assert_eq!(size_of::<ServiceEntry>(), 16);
        assert_eq!(offset_of!(ServiceEntry, revision), 0);
        assert_eq!(offset_of!(ServiceEntry, count), 4);
        assert_eq!(offset_of!(ServiceEntry, flags), 6);
        assert_eq!(offset_of!(ServiceEntry, affinity_timeout_s), 8);
        assert_eq!(offset_of!(ServiceEntry, _pad), 12);

        assert_eq!(size_of::<AffinityKey>(), 24);
        assert_eq!(offset_of!(AffinityKey, client), 0);
        assert_eq!(offset_of!(AffinityKey, service), 8);
        assert_eq!(offset_of!(AffinityKey, scope), 16);
        assert_eq!(offset_of!(AffinityKey, _pad), 20);

        assert_eq!(size_of::<AffinityValue>(), 24);
        assert_eq!(offset_of!(AffinityValue, backend), 0);
        assert_eq!(offset_of!(AffinityValue, last_used_ns), 8);
        assert_eq!(offset_of!(AffinityValue, revision), 16);
        assert_eq!(offset_of!(AffinityValue, _pad), 20);

        assert_eq!(size_of::<ReverseKey>(), 16);
        assert_eq!(offset_of!(ReverseKey, socket_cookie), 0);
        assert_eq!(offset_of!(ReverseKey, addr), 8);
        assert_eq!(offset_of!(ReverseKey, port), 12);
        assert_eq!(offset_of!(ReverseKey, _pad), 14);

        assert_eq!(size_of::<ServiceAddr>(), 8);
        assert_eq!(offset_of!(ServiceAddr, addr), 0);
        assert_eq!(offset_of!(ServiceAddr, port), 4);
        assert_eq!(offset_of!(ServiceAddr, _pad), 6);

        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(offset_of!(BackendKey, revision), 0);
        assert_eq!(offset_of!(BackendKey, slot), 4);

        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(offset_of!(Backend, addr), 0);
        assert_eq!(offset_of!(Backend, port), 4);
        assert_eq!(offset_of!(Backend, _pad), 6);
    }

    #[test]
    fn keys_hold_network_byte_order() {
        let key = ServiceKey::new([10, 96, 0, 10], 80, crate::proto::TCP);
        assert_eq!(key.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        let backend = Backend::new([10, 244, 0, 3], 8080);
        assert_eq!(backend.addr.to_ne_bytes(), [10, 244, 0, 3]);
        assert_eq!(backend.port.to_ne_bytes(), 8080u16.to_be_bytes());
    }
}
