//! Service load balancing at the socket: what `connect4` looks up.
//!
//! A service (virtual address, port, protocol) points at a *revision* of its backend set; the
//! backends of that revision sit in slots `0..count` keyed by `(revision, slot)`. The agent
//! writes a new backend set under a fresh revision and then swaps the service entry in one
//! map update, so a connection never sees a half-written set; then it deletes the old slots.

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
    /// Number of backend slots in the revision (0: the service has no backends).
    pub count: u16,
    /// Reserved for service flags; zero.
    pub flags: u16,
}

/// Key of [`crate::maps::BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub revision: u32,
    pub slot: u32,
}

/// Value of [`crate::maps::BACKENDS`]: where a connection to the service goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are `repr(C)`, made of integers only, with explicit padding fields, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::Backend {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port), 4);
        assert_eq!(offset_of!(ServiceKey, proto), 6);
        assert_eq!(offset_of!(ServiceKey, _pad), 7);

        assert_eq!(size_of::<ServiceEntry>(), 8);
        assert_eq!(offset_of!(ServiceEntry, revision), 0);
        assert_eq!(offset_of!(ServiceEntry, count), 4);
        assert_eq!(offset_of!(ServiceEntry, flags), 6);

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
