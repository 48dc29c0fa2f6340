//! Services reached from outside the cluster: NodePorts (every address of the node), external
//! IPs and load-balancer addresses, balanced at TC on the node's external interfaces with
//! Maglev consistent hashing, connection tracking, and source NAT to the node (backends on
//! other nodes, `externalTrafficPolicy: Cluster`) or none (this node's backends: the client's
//! address is kept). Addresses and ports in network order, as on the wire.

/// Key of [`crate::maps::NODEPORT_SERVICES`]: a frontend as packets address it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// [`Frontend::flags`]: `externalTrafficPolicy: Local`: the table holds only this node's
/// backends; with none, packets are dropped (no backend).
pub const FRONTEND_LOCAL: u32 = 1;
/// [`Frontend::flags`]: session affinity (ClientIP): the backend is chosen by the client's
/// address alone, so every connection of a client reaches the same one, through any node.
pub const FRONTEND_AFFINITY: u32 = 2;

/// [`Frontend::flags`]: direct server return: a backend on another node gets the client's
/// packets in IP-in-IP (outer source: the frontend's address, outer IP id: its port; inner:
/// addressed to the backend, from the client), and its node answers the client directly, from
/// the frontend, without passing this node again.
pub const FRONTEND_DSR: u32 = 4;
/// [`Frontend::flags`]: another node's frontend (its address × a NodePort), never balanced
/// here: it tells this node which IP-in-IP packets are DSR from a cluster node, and from
/// which frontend.
pub const FRONTEND_REMOTE: u32 = 8;

/// [`Frontend::flags`]: `loadBalancerSourceRanges`: a new flow is balanced only from a client
/// in one of the frontend's ranges ([`crate::maps::NODEPORT_RANGES`]); any other is dropped
/// (`DENIED_BY_LB_SRC_RANGE_CHECK`). Load-balancer addresses only, as kube-proxy applies them.
pub const FRONTEND_RANGES: u32 = 16;

/// Key data of [`crate::maps::NODEPORT_RANGES`] (an LPM trie): a frontend, matched whole (its
/// first 64 bits), and a client range (the prefix's remaining bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeKey {
    pub frontend: FrontendKey,
    /// Network order.
    pub source: u32,
}

/// Bits of [`RangeKey`] before the source: the frontend's.
pub const RANGE_KEY_FRONTEND_BITS: u32 = 64;

/// Value of [`crate::maps::NODEPORT_SERVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// The frontend's Maglev table: slots `table * size .. (table + 1) * size` of
    /// [`crate::maps::MAGLEV`].
    pub table: u32,
    /// Backends in the table; 0: none (dropped, `SERVICE_BACKEND_NOT_FOUND`).
    pub backends: u32,
    pub flags: u32,
    /// The service's cluster IP and port, named in flow events (network order); 0: none.
    pub service_addr: u32,
    pub service_port: u16,
    pub _pad: u16,
}

/// [`Slot::flags`]: the backend runs on this node.
pub const SLOT_LOCAL: u16 = 1;

/// One slot of a Maglev table ([`crate::maps::MAGLEV`]): a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub addr: u32,
    pub port: u16,
    pub flags: u16,
}

/// A packet's addresses, ports and protocol: the key of [`crate::maps::NODEPORT_FLOWS`] (as the
/// client sent it) and of [`crate::maps::NODEPORT_REVERSE`] (as the backend answers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of [`crate::maps::NODEPORT_FLOWS`]: where a client's flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend: u32,
    pub backend_port: u16,
    /// The node's source port for it (source NAT to a backend elsewhere); 0: none (a backend
    /// on this node, or DSR: reached with the client's address).
    pub snat_port: u16,
    /// [`FLOW_DSR`], [`FLOW_LOCAL`] or 0.
    pub flags: u16,
    pub _pad: u16,
}

/// [`Flow::flags`]: the flow's packets go to its backend's node in IP-in-IP (DSR).
pub const FLOW_DSR: u16 = 1;
/// [`Flow::flags`]: the backend runs on this node (reached with the client's address, or
/// source-NATed when another frontend's flow from the same client port holds it there).
pub const FLOW_LOCAL: u16 = 2;

/// Value of [`crate::maps::NODEPORT_REVERSE`]: what an answer's addresses become.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reverse {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// Non-zero once the backend sent a FIN or RST on the flow: a new flow from the same client
    /// port through another frontend may take the entry over.
    pub closing: u16,
    pub _pad: u16,
}

/// The one entry of [`crate::maps::NODEPORT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The node's address: the source of source-NATed packets.
    pub node_addr: u32,
    /// Slots per Maglev table (a prime).
    pub maglev_size: u32,
    /// Non-zero when a frontend has a backend on this node: `mesh_from_pod` then looks its
    /// answers up in [`crate::maps::NODEPORT_REVERSE`] (no lookup otherwise).
    pub local_backends: u32,
    pub _pad: u32,
}

/// Source ports the node gives source-NATed flows: `SNAT_FIRST .. SNAT_FIRST + SNAT_PORTS`
/// (1024-29999): below the NodePort range (30000-32767) and Linux's ephemeral range
/// (32768-60999), so they never meet the node's own outgoing connections; a server of the node
/// listening on one of them is not disturbed either (only answers from backends are taken, by
/// their exact addresses and ports). 28,976 flows at once per backend.
pub const SNAT_FIRST: u16 = 1024;
pub const SNAT_PORTS: u16 = 28_976;
/// Ports tried for a new source-NATed flow before it is dropped (`NO_MAPPING_FOR_NAT_MASQUERADE`).
pub const SNAT_TRIES: u32 = 8;

/// [`crate::maps::NODEPORT_SAMPLES`] (per CPU): when a client-driven drop was last reported,
/// and how many since.
pub const SAMPLE_LAST: u32 = 0;
pub const SAMPLE_UNREPORTED: u32 = 1;
/// At most one such report per CPU in this long.
pub const SAMPLE_INTERVAL_NS: u64 = 1_000_000_000;

/// Maglev's default table size (Cilium's): a prime, about 100 slots per backend at 160.
pub const DEFAULT_MAGLEV_SIZE: u32 = 16_381;

/// The Maglev hash of a flow, the same on every node: the client's address and port, the
/// frontend's port and the protocol (not the frontend's address: the same flow through two
/// nodes has two), or with affinity the client's address alone. murmur3's finaliser.
#[inline(always)]
pub fn flow_hash(saddr: u32, sport: u16, dport: u16, proto: u8, affinity: bool) -> u32 {
    let mut h = saddr;
    if !affinity {
        h ^= (u32::from(sport) << 16 | u32::from(dport)).wrapping_mul(0x9e37_79b1) ^ u32::from(proto);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::Flow {}
    unsafe impl aya::Pod for super::Reverse {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::RangeKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<FrontendKey>(), 8);
        assert_eq!(size_of::<Frontend>(), 20);
        assert_eq!(size_of::<Slot>(), 8);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<Flow>(), 12);
        assert_eq!(size_of::<Reverse>(), 16);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<RangeKey>() as u32 * 8, RANGE_KEY_FRONTEND_BITS + 32);
        assert_eq!(SNAT_FIRST as u32 + SNAT_PORTS as u32, 30_000);
    }
}
