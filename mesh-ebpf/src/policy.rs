//! Policy enforcement at TC on a pod's host-side interface, with connection tracking, and
//! the flow events of every pod (start, drop, end), whether under policy or not.
//!
//! A packet of a known flow costs one conntrack lookup (two for a reply): the verdict was
//! taken at the flow's first packet. Only a new flow looks up the peer's identities (pod and
//! CIDR, and the principal it proved, if any) and the rules for them and for any peer,
//! whatever the number of rules.

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use mesh_common::{
    flows::{
        AUTH_MTLS, CT_ENDED, CT_FIN_FORWARD, CT_FIN_REPLY, CT_TUNNEL_CLIENT, CT_TUNNELLED, FLOW_DROP, FLOW_END,
        FLOW_START, FlowEvent, TupleKey, tcp_flags,
    },
    policy::{
        ALLOW, ANY_PEER, AUDIT, CtEntry, CtKey, DENY, Decision, DirectionPolicy, EGRESS, FIRST_PRINCIPAL_IDENTITY,
        FragKey, FragPorts, HAS_RULES, INGRESS, IP_CIDR, IP_KEY_BITS, IP_POD, IP_PRINCIPAL, ISOLATED, ISOLATED_AUDIT,
        IpKey, PolicyKey, VerdictCount, VerdictKey, better, reason,
    },
    proto,
    tunnel::{OriginKey, TUNNEL, TUNNEL_MARK, TUNNEL_MARK_MASK, TUNNEL_REPLY_MARK, TunnelDestKey},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
};

use crate::{
    flows::{self, emit},
    maps::{
        CONNTRACK, ENDPOINTS, FRAGMENTS, IDENTITIES, MTLS_INBOUND, POD_INTERFACES, POLICY, POLICY_REVISION,
        TUNNEL_ORIGINS, VERDICTS, XLATE,
    },
    service_lb::outbound_listener,
};

const ETH_HLEN: usize = EthHdr::LEN;
/// `__sk_buff.protocol` of IPv4 and IPv6 (network order, as `EtherType` holds them).
const ETH_P_IP: u32 = EtherType::Ipv4 as u16 as u32;
const ETH_P_IPV6: u32 = EtherType::Ipv6 as u16 as u32;
/// The flags byte of a TCP header: the second byte of the data offset/flags word.
const TCP_FLAGS_OFFSET: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
/// IPv4 fragment offset bits of the flags/offset field.
pub(crate) const IP_OFFSET: u16 = 0x1fff;
/// IPv4 "more fragments" flag of the flags/offset field.
const IP_MF: u16 = 0x2000;
/// TCP flags byte.
const TCP_FIN: u8 = tcp_flags::FIN;
const TCP_SYN: u8 = tcp_flags::SYN;
const TCP_RST: u8 = tcp_flags::RST;
const TCP_ACK: u8 = tcp_flags::ACK;
/// A denied flow's drops are reported at most this often (after the first).
const DROP_REPORT_NS: u64 = 1_000_000_000;
/// Full-length LPM prefix of a policy key.
const POLICY_BITS: u32 = 96;

/// The IPv4 header up to the addresses: `network_types::ip::Ipv4Hdr`'s layout (checked below)
/// with plain integers. `Ipv4Hdr` holds the protocol as an enum of the 148 assigned numbers,
/// so loading a packet with any other protocol number into it would be undefined behaviour;
/// here every bit pattern is a valid value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4 {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

const _: () = {
    assert!(size_of::<Ipv4>() == Ipv4Hdr::LEN);
    assert!(offset_of!(Ipv4, id) == offset_of!(Ipv4Hdr, id));
    assert!(offset_of!(Ipv4, frag) == offset_of!(Ipv4Hdr, frags));
    assert!(offset_of!(Ipv4, proto) == offset_of!(Ipv4Hdr, proto));
    assert!(offset_of!(Ipv4, saddr) == offset_of!(Ipv4Hdr, src_addr));
    assert!(offset_of!(Ipv4, daddr) == offset_of!(Ipv4Hdr, dst_addr));
};

/// What happens to the packet: pass (no opinion) or drop.
pub fn enforce(ctx: &TcContext, direction: u8) -> i32 {
    match try_enforce(ctx, direction) {
        Ok(true) => TC_ACT_UNSPEC,
        Ok(false) => TC_ACT_SHOT,
        // Every packet is parsed within its bounds before this can happen; if a load failed
        // anyway, the packet gets no opinion, as at a pod without policy.
        Err(_) => TC_ACT_UNSPEC,
    }
}

/// Whether the pod is under policy this way (isolated, audited, or with deny rules): then a
/// packet that cannot be judged (malformed, or a fragment whose first one was not seen) is
/// dropped with `reason`, attributed to what isolates the pod. At a pod that is not, it passes
/// untracked: the stack decides, and no flow with made-up ports is recorded.
#[inline(always)]
fn unjudgeable(policy: &DirectionPolicy, direction: u8, reason: u8) -> bool {
    if policy.flags & (ISOLATED | ISOLATED_AUDIT | HAS_RULES) == 0 {
        return true;
    }
    count(policy.isolating_rule, DENY, reason, direction, false, true);
    false
}

/// The policy of the pod behind `ifindex` in `direction`. A pod without policy (or an
/// interface the agent has not described yet) is tracked all the same: its flows are reported.
#[inline(always)]
fn endpoint_policy(ifindex: u32, direction: u8) -> DirectionPolicy {
    match ENDPOINTS.get_ptr(&ifindex) {
        // SAFETY: a map value, valid while the program runs; copied out.
        Some(endpoint) => unsafe { if direction == INGRESS { (*endpoint).ingress } else { (*endpoint).egress } },
        None => DirectionPolicy::default(),
    }
}

/// `T` at `offset` of the packet: straight from the linear data when it is there (no helper
/// call: three `bpf_skb_load_bytes` calls were a large part of the 400-500 ns a packet cost),
/// else through `bpf_skb_load_bytes`, which also reads paged data.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, i64> {
    let start = ctx.data() as *const u8;
    let end = ctx.data_end() as *const u8;
    let at = start.wrapping_add(offset);
    if at.wrapping_add(size_of::<T>()) <= end {
        // SAFETY: `[at, at + size_of::<T>())` lies within the packet's linear data, checked
        // just above against `data_end`; every bit pattern is a valid `T` here (plain data).
        return Ok(unsafe { at.cast::<T>().read_unaligned() });
    }
    ctx.load(offset)
}

/// `Ok(true)`: the packet passes.
fn try_enforce(ctx: &TcContext, direction: u8) -> Result<bool, i64> {
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let (ifindex, protocol, len, mark, ingress_ifindex) = unsafe {
        let skb = &*ctx.as_ptr().cast::<__sk_buff>();
        (skb.ifindex, skb.protocol, u64::from(skb.len), skb.mark, skb.ingress_ifindex)
    };
    // The pod's policy is looked up only where a packet is judged (a new flow, a changed
    // policy, a packet that cannot be judged): a packet of a known flow never needs it. One
    // lookup fewer took the mesh's added p50 on a same-node round trip (four program runs)
    // from about 3.2 to 2.7 us in `bench policy`.
    let policy = || endpoint_policy(ifindex, direction);
    if protocol != ETH_P_IP {
        let policy = policy();
        if protocol == ETH_P_IPV6 && policy.flags & ISOLATED != 0 {
            count(policy.isolating_rule, DENY, reason::UNSUPPORTED_L3_PROTOCOL, direction, true, true);
            return Ok(false);
        }
        return Ok(true);
    }
    let Ok(ip) = read::<Ipv4>(ctx, ETH_HLEN) else {
        return Ok(unjudgeable(&policy(), direction, reason::INVALID_PACKET_DROPPED));
    };
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || header_len < 20 {
        return Ok(unjudgeable(&policy(), direction, reason::INVALID_PACKET_DROPPED));
    }
    let l4 = ETH_HLEN + header_len;
    let frag = u16::from_be(ip.frag);
    let (mut sport, mut dport, mut tcp_flags) = (0u16, 0u16, 0u8);
    if ip.proto == proto::TCP || ip.proto == proto::UDP || ip.proto == proto::SCTP {
        // Fragments, as IPv4 makes them: only the first carries the ports. Its ports are
        // remembered under the datagram's id, and the later fragments take them, so the whole
        // datagram is one flow with one verdict (Cilium's ipfrag does the same).
        let fragment = FragKey { saddr: ip.saddr, daddr: ip.daddr, id: ip.id, proto: ip.proto, direction };
        if frag & IP_OFFSET == 0 {
            let Ok(ports) = read::<[u16; 2]>(ctx, l4) else {
                return Ok(unjudgeable(&policy(), direction, reason::INVALID_PACKET_DROPPED));
            };
            (sport, dport) = (ports[0], ports[1]);
            if ip.proto == proto::TCP {
                let Ok(flags) = read::<u8>(ctx, l4 + TCP_FLAGS_OFFSET) else {
                    return Ok(unjudgeable(&policy(), direction, reason::INVALID_PACKET_DROPPED));
                };
                tcp_flags = flags;
            }
            if frag & IP_MF != 0 {
                // A full table evicts the oldest datagram; its later fragments are then
                // unjudgeable.
                let _ = FRAGMENTS.insert(&fragment, &FragPorts { sport, dport }, 0);
            }
        } else {
            let Some(ports) = FRAGMENTS.get_ptr(&fragment) else {
                return Ok(unjudgeable(&policy(), direction, reason::FRAG_NOT_FOUND));
            };
            // SAFETY: a map value, valid while the program runs; copied out.
            let ports = unsafe { *ports };
            (sport, dport) = (ports.sport, ports.dport);
            // The entry stays until the LRU evicts it or the id's next datagram replaces it:
            // fragments may come out of order, and the last one is not always last.
        }
    }
    let key = CtKey { saddr: ip.saddr, daddr: ip.daddr, sport, dport, proto: ip.proto, direction, _pad: 0 };
    // A new connection: a SYN without ACK, or any packet of a connectionless protocol.
    let opening = if ip.proto == proto::TCP { tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN } else { true };
    let mut known: Option<*mut CtEntry> = None;
    let mut reused = false;
    if let Some(ptr) = CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a map value, valid while the program runs. Counters are per flow and
        // updated without atomics: a flow's packets rarely run on two CPUs at once, and a
        // lost increment only makes a report a packet short.
        let entry = unsafe { &mut *ptr };
        reused = opening && ip.proto == proto::TCP && entry.flags & CT_ENDED != 0;
        if reused {
            // The 4-tuple of an ended connection opens a new one: a new flow.
            entry.packets = 0;
            entry.bytes = 0;
            entry.reply_packets = 0;
            entry.reply_bytes = 0;
            entry.flags = 0;
            entry.tcp_flags = 0;
        }
        entry.packets += 1;
        entry.bytes += len;
        entry.tcp_flags |= tcp_flags;
        if entry.action != DENY && !opening {
            track_end(entry, &key, ifindex, tcp_flags, CT_FIN_FORWARD);
            return Ok(true);
        }
        // A remembered verdict holds until the policy changes.
        if entry.revision == revision() && !reused {
            if entry.action == DENY {
                count(entry.rule, DENY, entry.reason, direction, false, true);
                report_drop(entry, &key, ifindex, tcp_flags, false);
                return Ok(false);
            }
            return Ok(true);
        }
        known = Some(ptr);
    } else {
        let reply = CtKey {
            saddr: ip.daddr,
            daddr: ip.saddr,
            sport: dport,
            dport: sport,
            proto: ip.proto,
            direction: if direction == INGRESS { EGRESS } else { INGRESS },
            _pad: 0,
        };
        if let Some(entry) = CONNTRACK.get_ptr_mut(&reply) {
            // SAFETY: as above.
            let entry = unsafe { &mut *entry };
            if entry.action != DENY {
                entry.reply_packets += 1;
                entry.reply_bytes += len;
                entry.tcp_flags |= tcp_flags;
                track_end(entry, &reply, ifindex, tcp_flags, CT_FIN_REPLY);
                if entry.flags & CT_TUNNELLED != 0 {
                    // A reply to the agent's tunnel: its policy route delivers it to the agent.
                    ctx.set_mark((mark & !TUNNEL_MARK_MASK) | TUNNEL_REPLY_MARK);
                }
                return Ok(true);
            }
        }
    }
    let (peer, port) = if direction == INGRESS { (ip.saddr, dport) } else { original_destination(&ip, sport, dport) };
    // The agent's inbound side connects from the client's address, with its socket's mark.
    let tunnelled = direction == INGRESS && mark & TUNNEL_MARK_MASK == TUNNEL_MARK;
    // A client's connection `connect4` sent to the outbound listener.
    let tunnel_flags = if tunnelled {
        CT_TUNNELLED
    } else if direction == EGRESS && (peer, port) != (ip.daddr, dport) {
        CT_TUNNEL_CLIENT
    } else {
        0
    };
    let verdict = if direction == INGRESS
        && ip.proto == proto::TCP
        && !tunnelled
        && requires_mtls(ip.daddr, dport)
        && !from_local_pod(ingress_ifindex)
    {
        Verdict { rule: 0, action: DENY, reason: reason::AUTH_REQUIRED }
    } else {
        let principal = if direction == INGRESS { principal(mark, tunnelled, ip.saddr, ingress_ifindex) } else { 0 };
        judge(ifindex, &policy(), direction, peer, principal, ip.proto, port)
    };
    count(verdict.rule, verdict.action, verdict.reason, direction, true, verdict.action == DENY);
    if let Some(ptr) = known {
        // Judged again after a policy change (or reused): the entry is updated in place and
        // keeps its service.
        // SAFETY: as above.
        let entry = unsafe { &mut *ptr };
        let was_denied = entry.action == DENY;
        entry.flags |= tunnel_flags;
        entry.rule = verdict.rule;
        entry.revision = revision();
        entry.action = verdict.action;
        entry.reason = verdict.reason;
        if verdict.action == DENY {
            report_drop(entry, &key, ifindex, tcp_flags, true);
        } else if was_denied || reused {
            emit(&flow_event(FLOW_START, entry, &key, ifindex, tcp_flags));
        }
        return Ok(verdict.action != DENY);
    }
    let mut entry = CtEntry {
        rule: verdict.rule,
        revision: revision(),
        action: verdict.action,
        reason: verdict.reason,
        packets: 1,
        bytes: len,
        tcp_flags,
        flags: tunnel_flags,
        ..CtEntry::default()
    };
    if ip.proto == proto::TCP
        && let Some(service) =
            XLATE.get_ptr(&TupleKey { saddr: ip.saddr, daddr: ip.daddr, sport, dport, proto: ip.proto, _pad: [0; 3] })
    {
        // SAFETY: a map value, valid while the program runs; copied out.
        let service = unsafe { *service };
        entry.svc_addr = service.addr;
        entry.svc_port = service.port;
    }
    if verdict.action == DENY {
        report_drop(&mut entry, &key, ifindex, tcp_flags, true);
    } else {
        emit(&flow_event(FLOW_START, &entry, &key, ifindex, tcp_flags));
    }
    // A full table evicts the least recently used flow; an error here only means the next
    // packet is judged again.
    let _ = CONNTRACK.insert(&key, &entry, 0);
    Ok(verdict.action != DENY)
}

/// Where a pod's outgoing packet is going, for its egress policy: its destination, but for a
/// connection `connect4` sent to the agent's outbound listener (the tunnel), the pod it was
/// going to. The entry stays until newer connections evict it, so a flow judged again after
/// a policy change is judged by the same destination.
#[inline(always)]
fn original_destination(ip: &Ipv4, sport: u16, dport: u16) -> (u32, u16) {
    if ip.proto == proto::TCP
        && let Some(listener) = outbound_listener()
        && ip.daddr == listener.addr
        && dport == listener.port
        && let Some(origin) = TUNNEL_ORIGINS.get_ptr(&OriginKey { addr: ip.saddr, port: sport, _pad: 0 })
    {
        // SAFETY: a map value, valid while the program runs; copied out.
        let backend = unsafe { (*origin).backend };
        return (backend.addr, backend.port);
    }
    (ip.daddr, dport)
}

/// Whether a TCP connection to this node's pod at `addr`, port `port` must come through the
/// tunnel: the port's own entry, else the pod's (STRICT).
#[inline(always)]
fn requires_mtls(addr: u32, port: u16) -> bool {
    let key = TunnelDestKey { addr, port, _pad: 0 };
    // SAFETY: values are plain integers, copied out at once.
    match unsafe { MTLS_INBOUND.get(&key) } {
        Some(mode) => *mode == TUNNEL,
        None => unsafe { MTLS_INBOUND.get(&TunnelDestKey { port: 0, ..key }) }.is_some_and(|mode| *mode == TUNNEL),
    }
}

/// The principal identity of a new ingress flow's client (0: none proved): for the tunnel's
/// connection, the number the agent put in its mark's low bits for the client it
/// authenticated; for a packet that came in on a local pod's interface, that pod's own, if a
/// rule names it; for anything else, none.
#[inline(always)]
fn principal(mark: u32, tunnelled: bool, saddr: u32, ingress_ifindex: u32) -> u32 {
    if tunnelled {
        let number = mark & !TUNNEL_MARK_MASK;
        return if number == 0 { 0 } else { FIRST_PRINCIPAL_IDENTITY + number };
    }
    if !from_local_pod(ingress_ifindex) {
        return 0;
    }
    IDENTITIES.get(&Key::new(IP_KEY_BITS + 32, IpKey { kind: IP_PRINCIPAL.to_be(), addr: saddr })).copied().unwrap_or(0)
}

/// Whether the packet entered the node from one of its pods (0: made on the node itself).
#[inline(always)]
fn from_local_pod(ingress_ifindex: u32) -> bool {
    // SAFETY: only the presence is read.
    ingress_ifindex != 0 && unsafe { POD_INTERFACES.get(&ingress_ifindex) }.is_some()
}

/// Notes a TCP FIN or RST of a passing flow, in the direction `fin` (of the flow), and
/// reports the flow's end at a RST or once both ends sent a FIN.
#[inline(always)]
fn track_end(entry: &mut CtEntry, key: &CtKey, ifindex: u32, tcp_flags: u8, fin: u8) {
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 || entry.flags & CT_ENDED != 0 {
        return;
    }
    if tcp_flags & TCP_FIN != 0 {
        entry.flags |= fin;
    }
    if tcp_flags & TCP_RST != 0 || entry.flags & (CT_FIN_FORWARD | CT_FIN_REPLY) == CT_FIN_FORWARD | CT_FIN_REPLY {
        entry.flags |= CT_ENDED;
        emit(&flow_event(FLOW_END, entry, key, ifindex, entry.tcp_flags));
    }
}

/// Reports a dropped packet of `entry`'s flow: always when the flow was just judged, else at
/// most once a second, so a denied flow's retries are seen without one event per packet.
#[inline(always)]
fn report_drop(entry: &mut CtEntry, key: &CtKey, ifindex: u32, tcp_flags: u8, judged: bool) {
    let now = flows::now();
    if !judged && now.wrapping_sub(entry.reported_ns) < DROP_REPORT_NS {
        return;
    }
    entry.reported_ns = now;
    emit(&flow_event(FLOW_DROP, entry, key, ifindex, tcp_flags));
}

/// The event of `kind` for the flow `key` with `entry`. A client's connection sent into the
/// tunnel is reported to its original destination (while `mesh_tun_orig` holds it), not to the
/// agent's listener.
#[inline(always)]
fn flow_event(kind: u8, entry: &CtEntry, key: &CtKey, ifindex: u32, tcp_flags: u8) -> FlowEvent {
    let (mut daddr, mut dport) = (key.daddr, key.dport);
    let (mut svc_addr, mut svc_port) = (entry.svc_addr, entry.svc_port);
    if entry.flags & CT_TUNNEL_CLIENT != 0
        && let Some(origin) = TUNNEL_ORIGINS.get_ptr(&OriginKey { addr: key.saddr, port: key.sport, _pad: 0 })
    {
        // SAFETY: a map value, valid while the program runs; copied out.
        let (backend, service) = unsafe { ((*origin).backend, (*origin).service) };
        (daddr, dport) = (backend.addr, backend.port);
        if svc_addr == 0 && service.addr != backend.addr {
            // The service the application asked for.
            (svc_addr, svc_port) = (service.addr, service.port);
        }
    }
    FlowEvent {
        time_ns: flows::now(),
        cookie: 0,
        packets: entry.packets,
        bytes: entry.bytes,
        reply_packets: entry.reply_packets,
        reply_bytes: entry.reply_bytes,
        saddr: key.saddr,
        daddr,
        sport: key.sport,
        dport,
        svc_addr,
        svc_port,
        kind,
        proto: key.proto,
        ifindex,
        rule: entry.rule,
        action: entry.action,
        reason: entry.reason,
        direction: key.direction,
        tcp_flags,
        srtt_us: 0,
        retrans: 0,
        auth: if entry.flags & (CT_TUNNELLED | CT_TUNNEL_CLIENT) != 0 { AUTH_MTLS } else { 0 },
        detail: 0,
        _pad: [0; 6],
    }
}

struct Verdict {
    rule: u32,
    action: u8,
    reason: u8,
}

/// The verdict for a new flow with `peer` (which proved principal identity `principal`, 0:
/// none) to destination port `port`.
#[inline(always)]
fn judge(
    ifindex: u32,
    policy: &DirectionPolicy,
    direction: u8,
    peer: u32,
    principal: u32,
    proto: u8,
    port: u16,
) -> Verdict {
    let mut enforced = Decision::default();
    let mut with_audit = Decision::default();
    if policy.flags & HAS_RULES != 0 {
        let mut consider = |peer: u32| {
            let key = Key::new(POLICY_BITS, PolicyKey { endpoint: ifindex, peer, direction, proto, port });
            if let Some(entry) = POLICY.get(&key) {
                if better(&entry.enforced, &enforced) {
                    enforced = entry.enforced;
                }
                if better(&entry.with_audit, &with_audit) {
                    with_audit = entry.with_audit;
                }
            }
        };
        // The peer as a pod, as an address in policy CIDRs, and as anyone.
        if let Some(id) = IDENTITIES.get(&Key::new(IP_KEY_BITS + 32, IpKey { kind: IP_POD.to_be(), addr: peer })) {
            consider(*id);
        }
        if let Some(id) = IDENTITIES.get(&Key::new(IP_KEY_BITS + 32, IpKey { kind: IP_CIDR.to_be(), addr: peer })) {
            consider(*id);
        }
        if principal != 0 {
            consider(principal);
        }
        consider(ANY_PEER);
    }
    // What happens, from the enforcing policies.
    if enforced.action == DENY {
        return Verdict { rule: enforced.rule, action: DENY, reason: reason::POLICY_DENY };
    }
    if enforced.action == 0 && policy.flags & ISOLATED != 0 {
        return Verdict { rule: policy.isolating_rule, action: DENY, reason: reason::POLICY_DENIED };
    }
    // It passes; would it with the audit-mode policies enforced too?
    if with_audit.action == DENY {
        return Verdict { rule: with_audit.rule, action: AUDIT, reason: 0 };
    }
    if with_audit.action == 0 && policy.flags & ISOLATED_AUDIT != 0 {
        return Verdict { rule: policy.audit_isolating_rule, action: AUDIT, reason: 0 };
    }
    Verdict { rule: enforced.rule, action: ALLOW, reason: 0 }
}

/// The current policy revision.
#[inline(always)]
fn revision() -> u32 {
    POLICY_REVISION.get(0).copied().unwrap_or(0)
}

/// Counts a judged flow and/or a dropped packet of `rule`'s verdict.
#[inline(always)]
fn count(rule: u32, action: u8, reason: u8, direction: u8, flow: bool, dropped: bool) {
    let key = VerdictKey { rule, action, reason, direction, _pad: 0 };
    let (flows, packets) = (u64::from(flow), u64::from(dropped));
    if let Some(value) = VERDICTS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value: only this CPU writes it while this program runs.
        let value = unsafe { &mut *value };
        value.flows += flows;
        value.dropped_packets += packets;
    } else {
        let _ = VERDICTS.insert(&key, &VerdictCount { flows, dropped_packets: packets }, 0);
    }
}
