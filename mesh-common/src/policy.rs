//! Network policy in the kernel: identities, per-endpoint rules, connection tracking.
//!
//! - [`crate::maps::IDENTITIES`] (LPM trie) maps addresses to identities, in three spaces told
//!   apart by [`IpKey::kind`]: every pod IP (`/32`, the pod's identity from the operator),
//!   every ipBlock CIDR of a policy (a node-local CIDR identity), and this node's pods whose
//!   service account a principal rule names ([`IP_PRINCIPAL`]). An ipBlock matches pod IPs
//!   too, so a flow's peer is looked up in the first two; the third only for a packet from a
//!   local pod's interface.
//! - [`crate::maps::ENDPOINTS`] holds, per local pod interface (ifindex), whether each
//!   direction is isolated (default deny) and whether it has rules to look up.
//! - [`crate::maps::POLICY`] (LPM trie) holds the rules: (endpoint, peer identity, direction,
//!   protocol, port prefix) -> action, priority and rule id. A port range is a few prefixes;
//!   "any protocol" and "any port" are shorter prefixes; "any peer" is peer 0. The agent
//!   resolves overlapping rules when it writes them, so the longest match is the answer for
//!   one peer identity; the kernel takes the best of its (at most three) lookups.
//! - [`crate::maps::CONNTRACK`] (LRU) remembers each flow's verdict: a flow is judged once,
//!   at its first packet; replies match the reversed key.
//!
//! Audit mode: every entry carries two decisions, one from the enforced policies only and one
//! from all policies as if audit-mode ones were enforced. A flow the first passes and the second
//! denies passes, reported as [`AUDIT`]; audit-mode policies never change what passes.

/// [`IpKey::kind`]: a pod address (`/32`, the value is the pod's identity).
pub const IP_POD: u32 = 1;
/// [`IpKey::kind`]: an ipBlock CIDR (the value is a CIDR identity).
pub const IP_CIDR: u32 = 2;
/// [`IpKey::kind`]: a pod of this node (`/32`) whose workload identity a principal rule names
/// (the value is that principal's identity, [`FIRST_PRINCIPAL_IDENTITY`] + its number). Looked
/// up only for a packet that came in on a local pod's interface: the node vouches for its own
/// pods as it would with their certificates.
pub const IP_PRINCIPAL: u32 = 3;
/// Principal identities (a client's authenticated workload identity, named by a rule) are
/// numbered from here; the number (1 to [`MAX_PRINCIPALS`]) is also the low 16 bits of the
/// tunnel's mark on the agent's connection to a pod, for the client it authenticated.
pub const FIRST_PRINCIPAL_IDENTITY: u32 = 2 << 24;
/// Principals one node can tell apart (the mark's low 16 bits, 0 meaning none).
pub const MAX_PRINCIPALS: u32 = 0xffff;
/// Bits of [`IpKey`] before the address: an address prefix of length `n` has LPM prefix
/// `IP_KEY_BITS + n`.
pub const IP_KEY_BITS: u32 = 32;

/// LPM data of [`crate::maps::IDENTITIES`]; the value is a `u32` identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    /// [`IP_POD`] or [`IP_CIDR`], big-endian (it is part of the matched prefix).
    pub kind: u32,
    /// IPv4 address, network byte order.
    pub addr: u32,
}

/// The peer identity that stands for every peer in [`PolicyKey::peer`].
pub const ANY_PEER: u32 = 0;

/// [`PolicyKey::direction`] and [`CtKey::direction`]: traffic into the pod.
pub const INGRESS: u8 = 1;
/// Traffic out of the pod.
pub const EGRESS: u8 = 2;

/// [`DirectionPolicy::flags`]: isolated by an enforcing policy: what no rule allows is
/// dropped.
pub const ISOLATED: u32 = 1;
/// Isolated only by audit-mode policies: what no rule allows passes, reported as audit.
pub const ISOLATED_AUDIT: u32 = 2;
/// Has rules in [`crate::maps::POLICY`] (allow or deny).
pub const HAS_RULES: u32 = 4;

/// One direction of an endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    pub flags: u32,
    /// The rule id a default deny is attributed to: the first enforcing policy that isolates.
    pub isolating_rule: u32,
    /// The rule id a default audit is attributed to: the first audit-mode policy that isolates.
    pub audit_isolating_rule: u32,
}

/// Value of [`crate::maps::ENDPOINTS`] (key: the pod's host-side ifindex, `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

/// LPM data of [`crate::maps::POLICY`]. Every field but the port is matched whole; the port
/// (network byte order) is matched by prefix, and the protocol may be left out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local pod's host-side ifindex.
    pub endpoint: u32,
    /// The peer's identity, or [`ANY_PEER`].
    pub peer: u32,
    /// [`INGRESS`] or [`EGRESS`].
    pub direction: u8,
    /// [`crate::proto`] number.
    pub proto: u8,
    /// Destination port, network byte order.
    pub port: u16,
}

/// LPM prefix of a [`PolicyKey`] for any protocol and port.
pub const ANY_PROTO_BITS: u32 = 72;
/// LPM prefix of a [`PolicyKey`] for one protocol, any port; a port prefix of `n` bits adds `n`.
pub const PROTO_BITS: u32 = 80;

/// [`PolicyEntry::action`] and [`CtEntry::action`]: the flow passes.
pub const ALLOW: u8 = 1;
/// The flow is dropped.
pub const DENY: u8 = 2;
/// The flow passes, reported as audit (a deny of an audit-mode policy).
pub const AUDIT: u8 = 3;

/// The winning rule of one prefix, for one set of policies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The rule that decided it (the agent's table maps it to policy and rule index).
    pub rule: u32,
    /// Lower wins. NetworkPolicy allows have [`NETWORK_POLICY_PRIORITY`].
    pub priority: u16,
    /// [`ALLOW`] or [`DENY`]; 0: no rule of the set covers the prefix.
    pub action: u8,
    pub _pad: u8,
}

/// Value of [`crate::maps::POLICY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEntry {
    /// From the enforcing policies: what happens.
    pub enforced: Decision,
    /// From every policy, audit-mode ones as if enforced: what would happen.
    pub with_audit: Decision,
}

/// The priority of every NetworkPolicy rule: after every MeshPolicy rule.
pub const NETWORK_POLICY_PRIORITY: u16 = u16::MAX;

/// Whether `a` beats `b`: a decision beats none, then the lower priority, and at equal
/// priority deny beats allow.
#[inline(always)]
pub fn better(a: &Decision, b: &Decision) -> bool {
    if a.action == 0 {
        return false;
    }
    if b.action == 0 {
        return true;
    }
    let deny_first = |action: u8| if action == DENY { 0u8 } else { 1 };
    (a.priority, deny_first(a.action)) < (b.priority, deny_first(b.action))
}

/// Key of [`crate::maps::CONNTRACK`]: a flow as its first packet had it, and the direction
/// (of the local pod) it was judged in. Addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: u16,
}

/// Value of [`crate::maps::CONNTRACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The rule that decided (0: no policy applies).
    pub rule: u32,
    /// The policy revision it was judged under (see [`crate::maps::POLICY_REVISION`]).
    pub revision: u32,
    pub action: u8,
    /// The drop reason when `action` is [`DENY`]; else 0.
    pub reason: u8,
    /// [`crate::flows::CT_FIN_FORWARD`] and friends.
    pub flags: u8,
    /// Every TCP flag seen, both ways.
    pub tcp_flags: u8,
    /// The service port the flow's source asked for (network order; 0: not translated).
    pub svc_port: u16,
    pub _pad: u16,
    /// The service address the flow's source asked for (0: not translated).
    pub svc_addr: u32,
    pub _pad2: u32,
    /// Packets and bytes from the flow's source, and from its destination (replies).
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// When the last drop event of this flow was sent (`bpf_ktime_get_ns`).
    pub reported_ns: u64,
}

/// Drop reasons, numbered as Hubble's `flow.DropReason`.
pub mod reason {
    /// Isolated by a policy and allowed by none (default deny).
    pub const POLICY_DENIED: u8 = 133;
    /// An IPv4 packet too short or malformed to judge, at a pod under policy that way.
    pub const INVALID_PACKET_DROPPED: u8 = 134;
    /// A later fragment of a datagram whose first fragment was not seen (or its entry was
    /// evicted), at a pod under policy that way: its ports, and so its verdict, are unknown.
    pub const FRAG_NOT_FOUND: u8 = 175;
    /// An IP version the policy cannot judge (IPv6 at an isolated pod).
    pub const UNSUPPORTED_L3_PROTOCOL: u8 = 139;
    /// Denied by an explicit deny rule.
    pub const POLICY_DENY: u8 = 181;
    /// Plaintext to a pod port whose PeerAuthentication mode is STRICT: the connection came
    /// neither through the mutual-TLS tunnel nor from a pod of the same node (Hubble's
    /// `AUTH_REQUIRED`).
    pub const AUTH_REQUIRED: u8 = 189;
    /// A connection the kernel sent to the agent's tunnel that the tunnel could not carry
    /// (peer agent unreachable or refusing, no certificate, no destination): a drop event the
    /// agent makes itself, the client reset (Hubble's `NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT`).
    pub const NO_TUNNEL_ENDPOINT: u8 = 160;
}

/// Key of [`crate::maps::FRAGMENTS`]: one fragmented datagram, as IPv4 tells its fragments
/// apart (addresses, id, protocol), seen at one hook. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub direction: u8,
}

/// Value of [`crate::maps::FRAGMENTS`]: the datagram's ports (network byte order), from its
/// first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Key of [`crate::maps::VERDICTS`]: what was decided, by which rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    pub rule: u32,
    pub action: u8,
    pub reason: u8,
    pub direction: u8,
    pub _pad: u8,
}

/// Value of [`crate::maps::VERDICTS`] (per CPU): flows judged and packets dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCount {
    pub flows: u64,
    pub dropped_packets: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `repr(C)`, integer fields, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyEntry {}
    unsafe impl aya::Pod for super::Decision {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::VerdictKey {}
    unsafe impl aya::Pod for super::VerdictCount {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<IpKey>(), 8);
        assert_eq!(offset_of!(IpKey, addr), 4);
        assert_eq!(size_of::<Endpoint>(), 24);
        assert_eq!(offset_of!(Endpoint, egress), 12);
        assert_eq!(size_of::<PolicyKey>(), 12);
        assert_eq!(offset_of!(PolicyKey, direction), 8);
        assert_eq!(offset_of!(PolicyKey, proto), 9);
        assert_eq!(offset_of!(PolicyKey, port), 10);
        assert_eq!(ANY_PROTO_BITS, 8 * offset_of!(PolicyKey, proto) as u32);
        assert_eq!(PROTO_BITS, 8 * offset_of!(PolicyKey, port) as u32);
        assert_eq!(size_of::<Decision>(), 8);
        assert_eq!(offset_of!(Decision, action), 6);
        assert_eq!(size_of::<PolicyEntry>(), 16);
        assert_eq!(offset_of!(PolicyEntry, with_audit), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(size_of::<FragPorts>(), 4);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(offset_of!(CtKey, direction), 13);
        assert_eq!(size_of::<CtEntry>(), 64);
        assert_eq!(offset_of!(CtEntry, reason), 9);
        assert_eq!(offset_of!(CtEntry, svc_port), 12);
        assert_eq!(offset_of!(CtEntry, svc_addr), 16);
        assert_eq!(offset_of!(CtEntry, packets), 24);
        assert_eq!(offset_of!(CtEntry, reported_ns), 56);
        assert_eq!(size_of::<VerdictKey>(), 8);
        assert_eq!(size_of::<VerdictCount>(), 16);
    }

    #[test]
    fn lower_priority_wins_then_deny() {
        let entry = |priority, action| Decision { rule: 1, priority, action, _pad: 0 };
        assert!(better(&entry(10, ALLOW), &entry(20, DENY)));
        assert!(better(&entry(10, DENY), &entry(10, ALLOW)));
        assert!(!better(&entry(10, ALLOW), &entry(10, ALLOW)));
        assert!(better(&entry(0, ALLOW), &entry(NETWORK_POLICY_PRIORITY, ALLOW)));
        assert!(better(&entry(u16::MAX, ALLOW), &entry(0, 0)));
        assert!(!better(&entry(0, 0), &entry(u16::MAX, ALLOW)));
    }
}
