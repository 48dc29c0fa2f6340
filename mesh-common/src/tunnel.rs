//! The kernel's half of mutual TLS: which TCP connections `connect4` sends to the node agent's
//! outbound listener instead of their destination, and what the agent reads to know where
//! each of them was going.
//!
//! The agent writes [`crate::maps::TUNNEL_DESTS`]: the remote pods (and ports) that accept
//! only mutual TLS. `connect4` looks up the backend it chose (or the pod address the
//! application gave): `(address, port)` first, then `(address, 0)` (every port of the pod). A
//! hit with [`TUNNEL`] rewrites the connection to the listener in
//! [`crate::maps::TUNNEL_CONFIG`] and keeps the backend in the socket's
//! [`crate::maps::SOCKET_SERVICES`] slot; `sockops` (at `TCP_CONNECT_CB`, when the source port
//! is known) copies it to [`crate::maps::TUNNEL_ORIGINS`] under the client's address and
//! port, where the agent finds it when it accepts the connection. `getpeername()` still
//! answers the address the application asked for.
//!
//! The receiving side: the agent connects to the pod from the client pod's own address (a
//! transparent socket marked [`TUNNEL_MARK`]), so TC judges and reports the real client. TC
//! tags the flow in conntrack, and marks the pod's replies so that the node's policy routing
//! (a rule for [`TUNNEL_REPLY_MARK`], a local route in table [`TUNNEL_TABLE`]) delivers them to that socket
//! instead of forwarding them to the client's node. A new TCP flow to a STRICT pod port
//! ([`crate::maps::MTLS_INBOUND`]) that came neither from the agent nor from a pod of this node
//! ([`crate::maps::POD_INTERFACES`]) is dropped with [`crate::policy::reason::AUTH_REQUIRED`].

use crate::service_lb::{Backend, ServiceAddr};

/// The mark of the agent's connections to local pods (its socket's `SO_MARK`); the low 16
/// bits carry the number of the client's principal, if a rule names it (0: none; see
/// [`crate::policy::FIRST_PRINCIPAL_IDENTITY`]).
pub const TUNNEL_MARK: u32 = 0x0d50_0000;
/// The mark TC gives the pods' replies to those connections: the only one the policy rule
/// routes locally (the agent's own packets, marked [`TUNNEL_MARK`], must leave for the pod).
pub const TUNNEL_REPLY_MARK: u32 = 0x0d51_0000;
/// The bits of the mark the mesh owns.
pub const TUNNEL_MARK_MASK: u32 = 0xffff_0000;
/// The routing table holding the local route for marked replies.
pub const TUNNEL_TABLE: u32 = 2008;
/// The priority of the rule sending marked packets to [`TUNNEL_TABLE`] (before `main`).
pub const TUNNEL_RULE_PRIORITY: u32 = 1008;

/// Key of [`crate::maps::TUNNEL_DESTS`]. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelDestKey {
    pub addr: u32,
    /// 0: every port of the pod without an entry of its own.
    pub port: u16,
    pub _pad: u16,
}

/// Value of [`crate::maps::TUNNEL_DESTS`]: connections go through the tunnel.
pub const TUNNEL: u32 = 1;
/// Value of [`crate::maps::TUNNEL_DESTS`]: connections to this port go straight to the pod
/// although the pod's other ports are tunnelled (a port whose mode is not STRICT).
pub const DIRECT: u32 = 0;

/// The only entry of [`crate::maps::TUNNEL_CONFIG`]: the agent's outbound listener, an
/// address of the node. Port 0: no tunnel (nothing is redirected).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboundListener {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Key of [`crate::maps::TUNNEL_ORIGINS`]: a redirected connection's client address and
/// port (network order), as the agent's accepted socket sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OriginKey {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of [`crate::maps::TUNNEL_ORIGINS`]: where the connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The pod `connect4` chose (or the application named).
    pub backend: Backend,
    /// The address the application asked for (the service's, or the pod's own).
    pub service: ServiceAddr,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, integers only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::TunnelDestKey {}
    unsafe impl aya::Pod for super::OutboundListener {}
    unsafe impl aya::Pod for super::OriginKey {}
    unsafe impl aya::Pod for super::Origin {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<TunnelDestKey>(), 8);
        assert_eq!(size_of::<OutboundListener>(), 8);
        assert_eq!(size_of::<OriginKey>(), 8);
        assert_eq!(size_of::<Origin>(), 16);
    }
}
