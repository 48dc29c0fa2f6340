//! Flow events: what the kernel programs tell the agent through the ring buffer
//! [`crate::maps::EVENTS`]. One record per flow start, drop (at most one a second per flow),
//! flow end, service translation and TCP connection state change; never one per packet.

/// [`FlowEvent::kind`]: a new flow was judged and passes (TC; `action` says allow or audit).
pub const FLOW_START: u8 = 1;
/// A packet was dropped (TC; `reason` says why). At most one a second per flow.
pub const FLOW_DROP: u8 = 2;
/// A TCP flow ended: RST, or FIN both ways (TC), with its packet and byte counts.
pub const FLOW_END: u8 = 3;
/// A socket's service address was replaced by a backend (socket hooks, sockops for TCP).
pub const TRANSLATED: u8 = 4;
/// A TCP connection was established (sockops), with its first smoothed RTT.
pub const ESTABLISHED: u8 = 5;
/// A TCP connection closed (sockops), with RTT, retransmits and byte counts.
pub const CLOSED: u8 = 6;
/// An HTTP request through the agent's L7 proxy (never from the kernel: the agent makes it,
/// with the request's details beside the event).
pub const L7_REQUEST: u8 = 7;
/// The response to an [`L7_REQUEST`] (or the proxy's own answer), with its latency.
pub const L7_RESPONSE: u8 = 8;

/// How much of each TCP connection's life the socket programs report, as Cilium's monitor
/// aggregation levels do for Hubble. The agent sets the level when it loads the programs
/// (the global [`aggregation::GLOBAL`]); TC events (flow starts, drops, ends) are never
/// aggregated: every drop stays explained.
pub mod aggregation {
    /// Every event: the translation at `connect()`, each end's establishment and close.
    pub const NONE: u8 = 0;
    /// No establishment events: the translation, and each end's close with its RTT,
    /// retransmits, byte counts and service.
    pub const LOW: u8 = 1;
    /// The translation only: `sockops` does not follow a connection's state (each state
    /// change would run it again).
    pub const MEDIUM: u8 = 2;
    /// No socket events: `sockops` is not attached. TC still reports every flow start, drop
    /// and end at pods with programs, but does not name the service of a flow whose service
    /// address was replaced at `connect()`.
    pub const MAXIMUM: u8 = 3;
    /// The level the agent uses unless told otherwise. `sockops` runs about nine times for a
    /// short connection even when it reports nothing, and that alone took ClusterIP from
    /// 0.975x to 0.92x a direct connection in `cargo xtask bench service-lb`.
    pub const DEFAULT: u8 = MAXIMUM;
    /// Each level's name, as the agent's configuration takes it.
    pub const NAMES: [(&str, u8); 4] = [("none", NONE), ("low", LOW), ("medium", MEDIUM), ("maximum", MAXIMUM)];
    /// The programs' global that holds the level (read-only once loaded).
    pub const GLOBAL: &str = "FLOW_AGGREGATION";
}

/// [`crate::policy::CtEntry::flags`]: the flow's source sent a FIN.
pub const CT_FIN_FORWARD: u8 = 1;
/// The flow's destination sent a FIN.
pub const CT_FIN_REPLY: u8 = 2;
/// The end of the flow was reported.
pub const CT_ENDED: u8 = 4;
/// [`crate::policy::CtEntry::flags`]: the flow was opened by the agent's tunnel (inbound side):
/// its replies are marked so that they reach the agent.
pub const CT_TUNNELLED: u8 = 8;
/// [`crate::policy::CtEntry::flags`]: the flow is a client's connection `connect4` sent to the
/// agent's outbound listener (the tunnel's sending side); its events name the original
/// destination.
pub const CT_TUNNEL_CLIENT: u8 = 16;

/// [`FlowEvent::auth`]: the flow is carried by the mutual-TLS tunnel: a client's connection
/// sent into it, or the receiving agent's connection to the pod for an authenticated client.
pub const AUTH_MTLS: u8 = 1;

/// TCP header flags, as in the header's 14th byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// One record of [`crate::maps::EVENTS`]. Addresses and ports are in network order, as on
/// the wire. For TC events `saddr:sport -> daddr:dport` is the flow's first packet; for
/// sockops events it is local -> remote.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    /// The socket cookie (socket events), else 0.
    pub cookie: u64,
    /// Packets and bytes from the flow's source (flow end) or acknowledged (closed).
    pub packets: u64,
    pub bytes: u64,
    /// Packets and bytes from the flow's destination (flow end) or received (closed).
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// The service address the application asked for (0 when not translated).
    pub svc_addr: u32,
    pub svc_port: u16,
    pub kind: u8,
    pub proto: u8,
    /// The pod's host-side interface (TC events), else 0.
    pub ifindex: u32,
    /// The policy rule that decided (TC events; 0 when no policy applies).
    pub rule: u32,
    /// [`crate::policy::ALLOW`], [`crate::policy::DENY`] or [`crate::policy::AUDIT`].
    pub action: u8,
    /// Drop reason (Hubble's numbering) of a drop, else 0.
    pub reason: u8,
    /// [`crate::policy::INGRESS`] or [`crate::policy::EGRESS`] at the pod (TC events).
    pub direction: u8,
    /// TCP flags: of the first packet (start, drop), every flag seen (end).
    pub tcp_flags: u8,
    /// Smoothed round-trip time in microseconds (sockops events).
    pub srtt_us: u32,
    /// Retransmitted segments (closed).
    pub retrans: u32,
    /// [`AUTH_MTLS`] for a flow through the tunnel (TC events), else 0.
    pub auth: u8,
    /// A drop the agent's tunnel made (not the kernel): which failure, numbered by the agent
    /// from 1 (`tunnel::outbound::Failure`); 0 for every kernel event.
    pub detail: u8,
    pub _pad: [u8; 6],
}

/// Key of [`crate::maps::XLATE`]: a translated TCP connection's 4-tuple (network order),
/// written by sockops when it connects so TC can name the service in the flow's events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::TupleKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<FlowEvent>(), 96);
        assert_eq!(offset_of!(FlowEvent, auth), 88);
        assert_eq!(offset_of!(FlowEvent, detail), 89);
        assert_eq!(offset_of!(FlowEvent, saddr), 48);
        assert_eq!(offset_of!(FlowEvent, sport), 56);
        assert_eq!(offset_of!(FlowEvent, svc_addr), 60);
        assert_eq!(offset_of!(FlowEvent, kind), 66);
        assert_eq!(offset_of!(FlowEvent, ifindex), 68);
        assert_eq!(offset_of!(FlowEvent, rule), 72);
        assert_eq!(offset_of!(FlowEvent, action), 76);
        assert_eq!(offset_of!(FlowEvent, tcp_flags), 79);
        assert_eq!(offset_of!(FlowEvent, srtt_us), 80);
        assert_eq!(offset_of!(FlowEvent, retrans), 84);
        assert_eq!(size_of::<TupleKey>(), 16);
        assert_eq!(offset_of!(TupleKey, proto), 12);
    }
}
