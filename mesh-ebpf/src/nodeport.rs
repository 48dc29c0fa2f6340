//! Services from outside the cluster, at TC ingress of the node's external interfaces
//! ([`from_netdev`]) and, for the answers of this node's backends, at TC ingress of their pods'
//! interfaces ([`reply_from_pod`]).
//!
//! A packet to a frontend (a NodePort on a node address, an external IP, a load-balancer
//! address) of a flow this node has not seen gets a backend from the frontend's Maglev table
//! (the same on every node, so a flow through any node reaches the same backend), remembered in
//! `mesh_np_flows`. A backend on this node is reached with the client's address kept (the
//! destination rewritten); one on another node with the node's address and a port of its own
//! (source NAT), so that its answers come back here, where `mesh_np_rev` turns them back. A
//! rewritten packet whose source is now this node's own address is sent on by a FIB lookup and
//! a redirect (the stack would refuse a packet from the outside with a local source).
//!
//! TC, not XDP: on veths (the lab, kind) packets arrive with partial checksums
//! (CHECKSUM_PARTIAL), whose checksum field XDP cannot tell from a complete one, so it cannot
//! rewrite addresses correctly; TC's checksum helpers can. The prefilter (drops only) is at XDP.

use core::mem::offset_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_fib_lookup as FibLookup,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use mesh_common::{
    flows::{FLOW_DROP, FLOW_START, FlowEvent},
    nodeport::{
        FLOW_DSR, FLOW_LOCAL, FRONTEND_AFFINITY, FRONTEND_DSR, FRONTEND_RANGES, FRONTEND_REMOTE, Flow, FlowKey,
        Frontend, FrontendKey, RANGE_KEY_FRONTEND_BITS, RangeKey, Reverse, SAMPLE_INTERVAL_NS, SAMPLE_LAST,
        SAMPLE_UNREPORTED, SLOT_LOCAL, SNAT_FIRST, SNAT_PORTS, SNAT_TRIES, Slot, flow_hash,
    },
    policy::{ALLOW, DENY, INGRESS},
    proto,
};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    flows::{emit, now},
    maps::{
        MAGLEV, NODEPORT_CONFIG, NODEPORT_FLOWS, NODEPORT_RANGES, NODEPORT_REVERSE, NODEPORT_SAMPLES, NODEPORT_SERVICES,
    },
    policy::{IP_OFFSET, Ipv4},
};

/// Hubble's `SERVICE_BACKEND_NOT_FOUND`: a frontend without a backend (for
/// `externalTrafficPolicy: Local`, none on this node).
const NO_BACKEND: u8 = 158;
/// Hubble's `NO_MAPPING_FOR_NAT_MASQUERADE`: no source port was free for a new flow.
const NO_SNAT_PORT: u8 = 167;
/// Hubble's `DENIED_BY_LB_SRC_RANGE_CHECK`: a client outside a load-balancer address's
/// `loadBalancerSourceRanges`.
const NOT_IN_RANGES: u8 = 177;
/// Hubble's `FIB_LOOKUP_FAILED`: a source-NATed packet has no route.
const NO_ROUTE: u8 = 169;
/// `BPF_FIB_LKUP_RET_NO_NEIGH`: routed, but the next hop's address is not resolved yet.
const FIB_NO_NEIGH: i64 = 7;
const AF_INET: u8 = 2;
/// IP-in-IP, the DSR encapsulation.
const IPPROTO_IPIP: u8 = 4;
/// `BPF_ADJ_ROOM_MAC` and `BPF_F_ADJ_ROOM_ENCAP_L3_IPV4` of `bpf_skb_adjust_room`.
const ADJ_ROOM_MAC: u32 = 1;
const ADJ_ROOM_ENCAP_L3_IPV4: u64 = 1 << 1;
/// The outer header DSR adds.
const OUTER_LEN: usize = 20;
const TC_ACT_REDIRECT: i32 = 7;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const IP: usize = EthHdr::LEN;
const IP_CHECK: usize = IP + offset_of!(Ipv4, check);
const IP_SADDR: usize = IP + offset_of!(Ipv4, saddr);
const IP_DADDR: usize = IP + offset_of!(Ipv4, daddr);

/// The packet's IPv4 header, ports and their offset, for TCP and UDP (not later fragments).
struct Packet {
    ip: Ipv4,
    l4: usize,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let protocol = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).protocol };
    if protocol != EtherType::Ipv4 as u16 as u32 {
        return None;
    }
    let ip: Ipv4 = ctx.load(IP).ok()?;
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    if header_len < 20 || !(ip.proto == proto::TCP || ip.proto == proto::UDP) || u16::from_be(ip.frag) & IP_OFFSET != 0
    {
        return None;
    }
    let l4 = IP + header_len;
    let ports: [u16; 2] = ctx.load(l4).ok()?;
    Some(Packet { ip, l4, sport: ports[0], dport: ports[1] })
}

/// The packet's addresses, ports and protocol, as it travels.
#[inline(always)]
fn flow_key(p: &Packet) -> FlowKey {
    FlowKey { saddr: p.ip.saddr, daddr: p.ip.daddr, sport: p.sport, dport: p.dport, proto: p.ip.proto, _pad: [0; 3] }
}

/// The offset of the L4 checksum.
#[inline(always)]
fn l4_check(p: &Packet) -> usize {
    if p.ip.proto == proto::TCP { p.l4 + 16 } else { p.l4 + 6 }
}

/// Rewrites the source (`which` = 0) or destination (1) address and port, with the checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, which: usize, addr: u32, port: u16) -> Result<(), i64> {
    let (addr_at, old_addr, port_at, old_port) =
        if which == 0 { (IP_SADDR, p.ip.saddr, p.l4, p.sport) } else { (IP_DADDR, p.ip.daddr, p.l4 + 2, p.dport) };
    // UDP without a checksum (0) keeps none.
    let mangled = if p.ip.proto == proto::UDP { aya_ebpf::bindings::BPF_F_MARK_MANGLED_0 } else { 0 };
    if old_addr != addr {
        ctx.l4_csum_replace(
            l4_check(p),
            u64::from(old_addr),
            u64::from(addr),
            u64::from(BPF_F_PSEUDO_HDR | mangled) | 4,
        )?;
        ctx.l3_csum_replace(IP_CHECK, u64::from(old_addr), u64::from(addr), 4)?;
        ctx.store(addr_at, &addr, 0)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(l4_check(p), u64::from(old_port), u64::from(port), u64::from(mangled) | 2)?;
        ctx.store(port_at, &port, 0)?;
    }
    Ok(())
}

/// The kernel's `struct bpf_fib_lookup` (64 bytes), with the fields used here.
#[repr(C)]
struct Fib {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    tot_len: u16,
    ifindex: u32,
    tos: u32,
    src: [u32; 4],
    dst: [u32; 4],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(size_of::<Fib>() == 64);

/// Sends the (rewritten) packet on by the route to its destination, from `ingress`. Not
/// inlined (here and below): the callers' stacks stay apart, within the verifier's 512 bytes
/// for a chain of calls.
#[inline(never)]
fn forward(ctx: &TcContext, saddr: u32, daddr: u32, l4_protocol: u8, ingress: u32) -> i32 {
    let mut fib = Fib {
        family: AF_INET,
        l4_protocol,
        sport: 0,
        dport: 0,
        tot_len: 0,
        ifindex: ingress,
        tos: 0,
        src: [saddr, 0, 0, 0],
        dst: [daddr, 0, 0, 0],
        vlan: 0,
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: `fib` is a `struct bpf_fib_lookup` of the size given.
    let ret = unsafe { bpf_fib_lookup(ctx.as_ptr(), (&raw mut fib).cast::<FibLookup>(), 64, 0) };
    if ret == FIB_NO_NEIGH {
        // SAFETY: no neighbour parameters: the kernel resolves the next hop itself.
        return unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    if ret != 0 {
        return TC_ACT_SHOT;
    }
    if ctx.store(0, &fib.dmac, 0).is_err() || ctx.store(6, &fib.smac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a plain helper call.
    let _ = unsafe { bpf_redirect(fib.ifindex, 0) };
    TC_ACT_REDIRECT
}

/// A drop of a packet from outside (not in a load-balancer address's ranges, no backend, no
/// port, no route), reported as a sample: at most one event per CPU per [`SAMPLE_INTERVAL_NS`],
/// naming the packet that came when it was due and carrying how many drops it stands for, so
/// that clients flooding a refused frontend cannot fill the ring buffer.
#[inline(never)]
fn drop_sampled(ctx: &TcContext, p: &Packet, reason: u8, service: &FrontendKey) -> i32 {
    let (Some(last), Some(unreported)) =
        (NODEPORT_SAMPLES.get_ptr_mut(SAMPLE_LAST), NODEPORT_SAMPLES.get_ptr_mut(SAMPLE_UNREPORTED))
    else {
        return TC_ACT_SHOT;
    };
    // SAFETY: per-CPU values: only this CPU touches them while this program runs.
    let (last, unreported) = unsafe { (&mut *last, &mut *unreported) };
    *unreported += 1;
    let time = now();
    if time.wrapping_sub(*last) < SAMPLE_INTERVAL_NS {
        return TC_ACT_SHOT;
    }
    let packets = *unreported;
    *last = time;
    *unreported = 0;
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let ifindex = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex };
    emit(&FlowEvent {
        time_ns: time,
        packets,
        saddr: p.ip.saddr,
        daddr: p.ip.daddr,
        sport: p.sport,
        dport: p.dport,
        svc_addr: service.addr,
        svc_port: service.port,
        kind: FLOW_DROP,
        proto: p.ip.proto,
        ifindex,
        action: DENY,
        reason,
        direction: INGRESS,
        ..FlowEvent::default()
    });
    TC_ACT_SHOT
}

/// Takes the way back of the answers to a flow that keeps the client's address and port at a
/// backend of this node (`answer`: the backend's answer, `back`: what it becomes), unless
/// another frontend's flow holds it: the same client port through two frontends (two nodes'
/// NodePorts, or a NodePort and a load-balancer address) to one backend would be one
/// connection to the pod, and one of the two would get the other's answers. False then: the
/// new flow gets another source port at the pod ([`remap_port`]). A holder whose backend sent
/// FIN or RST ([`Reverse::closing`]) is taken over by a new connection (`syn`: clients reuse a
/// port for another destination once a connection ended); a UDP holder never (no end to see:
/// the later UDP flow gets another port). The way back already this flow's is only read,
/// never written.
#[inline(always)]
fn hold(answer: &FlowKey, back: &Reverse, syn: bool) -> bool {
    let Some(held) = NODEPORT_REVERSE.get_ptr_mut(answer) else {
        return NODEPORT_REVERSE.insert(answer, back, u64::from(BPF_NOEXIST)).is_ok();
    };
    // SAFETY: a map value, valid while the program runs.
    let held = unsafe { &mut *held };
    if same_way(held, back) {
        if syn && held.closing != 0 {
            held.closing = 0; // a new connection on the same way
        }
        return true;
    }
    if syn && held.closing != 0 {
        *held = *back;
        return true;
    }
    false
}

/// Whether two ways back turn answers into the same addresses and ports.
#[inline(always)]
fn same_way(a: &Reverse, b: &Reverse) -> bool {
    a.saddr == b.saddr && a.sport == b.sport && a.daddr == b.daddr && a.dport == b.dport
}

/// A source port for the client's flow `client` to `target` (a backend and its port) as the
/// backend will see it from `addr`: the node's address (source NAT to a backend elsewhere) or
/// the client's own (a backend here whose client port another frontend's flow holds: only the
/// port changes, so the pod and its policy still see the client). Taken with the way back of
/// its answers (`back`): the one this flow already has (its entry in `mesh_np_flows` evicted,
/// a retransmitted SYN), else the first free of a few tried, spread by the whole flow (with
/// affinity the Maglev hash is the client's address alone; `syn`: a new connection, which makes
/// its own remapped way live again). 0: none free.
#[inline(never)]
fn remap_port(client: &FlowKey, target: &Slot, addr: u32, back: &Reverse, syn: bool) -> u16 {
    let start = flow_hash(client.saddr, client.sport, client.dport, client.proto, false);
    let mut key =
        FlowKey { saddr: target.addr, daddr: addr, sport: target.port, dport: 0, proto: client.proto, _pad: [0; 3] };
    // First this flow's own, then a free one.
    for pass in 0..2 {
        for i in 0..SNAT_TRIES {
            let port = SNAT_FIRST + (start.wrapping_add(i.wrapping_mul(7919)) % u32::from(SNAT_PORTS)) as u16;
            key.dport = port.to_be();
            if pass == 1 {
                if NODEPORT_REVERSE.insert(&key, back, u64::from(BPF_NOEXIST)).is_ok() {
                    return key.dport;
                }
                continue;
            }
            let Some(held) = NODEPORT_REVERSE.get_ptr_mut(&key) else { continue };
            // SAFETY: a map value, valid while the program runs.
            let held = unsafe { &mut *held };
            if same_way(held, back) {
                if syn {
                    held.closing = 0;
                }
                return key.dport;
            }
        }
    }
    0
}

/// The way back of a flow's answers (`flow`: to its backend, chosen; `syn`: the packet opens
/// a TCP connection): a backend on this node (`local`) keeps the client's address and port
/// when the flow can [`hold`] them, or else the address with another port; a backend elsewhere
/// gets the node's address and a port of its own. Sets [`Flow::snat_port`] (0: unchanged).
/// False: no port was free.
#[inline(never)]
fn way_back(p: &Packet, flow: &mut Flow, local: bool, node_addr: u32, syn: bool) -> bool {
    // From the frontend, to the client.
    let back = Reverse { saddr: p.ip.daddr, daddr: p.ip.saddr, sport: p.dport, dport: p.sport, closing: 0, _pad: 0 };
    if local {
        let answer = FlowKey {
            saddr: flow.backend,
            daddr: p.ip.saddr,
            sport: flow.backend_port,
            dport: p.sport,
            proto: p.ip.proto,
            _pad: [0; 3],
        };
        if hold(&answer, &back, syn) {
            flow.snat_port = 0;
            return true;
        }
    }
    let target = Slot { addr: flow.backend, port: flow.backend_port, flags: 0 };
    let addr = if local { p.ip.saddr } else { node_addr };
    flow.snat_port = remap_port(&flow_key(p), &target, addr, &back, syn);
    flow.snat_port != 0
}

/// A TCP SYN without ACK: a new connection.
#[inline(always)]
fn syn(ctx: &TcContext, p: &Packet) -> bool {
    p.ip.proto == proto::TCP && ctx.load::<u8>(p.l4 + 13).is_ok_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
}

/// One event per flow from outside: from the client, to the backend chosen, naming the
/// service (`meshctl observe --from-ip <client>`).
#[inline(never)]
fn started(p: &Packet, flow: &Flow, service: &Frontend, ingress: u32) {
    emit(&FlowEvent {
        time_ns: now(),
        packets: 1,
        saddr: p.ip.saddr,
        daddr: flow.backend,
        sport: p.sport,
        dport: flow.backend_port,
        svc_addr: service.service_addr,
        svc_port: service.service_port,
        kind: FLOW_START,
        proto: p.ip.proto,
        ifindex: ingress,
        action: ALLOW,
        direction: INGRESS,
        ..FlowEvent::default()
    });
}

/// Whether `source` lies in one of `frontend`'s `loadBalancerSourceRanges`.
#[inline(never)]
fn in_ranges(frontend: &FrontendKey, source: u32) -> bool {
    let key = Key::new(RANGE_KEY_FRONTEND_BITS + 32, RangeKey { frontend: *frontend, source });
    NODEPORT_RANGES.get(&key).is_some()
}

/// [`dsr_arrival`]: not a DSR packet.
const NOT_DSR: i32 = i32::MIN;

/// TC ingress of an external interface: balances packets to frontends, turns answers to
/// source-NATed flows back; everything else passes untouched with no opinion
/// (`TC_ACT_UNSPEC`: the next TCX program, or the stack, decides).
pub fn from_netdev(ctx: &TcContext) -> i32 {
    let verdict = dsr_arrival(ctx);
    if verdict != NOT_DSR {
        return verdict;
    }
    let Some(p) = parse(ctx) else { return TC_ACT_UNSPEC };
    let Some(config) = NODEPORT_CONFIG.get(0) else { return TC_ACT_UNSPEC };
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let ingress = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex };
    let frontend = FrontendKey { addr: p.ip.daddr, port: p.dport, proto: p.ip.proto, _pad: 0 };
    // SAFETY (this and the lookups below): a map value, valid while the program runs; copied.
    let Some(service) = NODEPORT_SERVICES.get_ptr(&frontend).map(|v| unsafe { *v }) else {
        // An answer to a source-NATed flow comes to the node's own address.
        if p.ip.daddr == config.node_addr {
            return answer(ctx, &p, ingress);
        }
        return TC_ACT_UNSPEC;
    };
    if service.flags & FRONTEND_REMOTE != 0 {
        return TC_ACT_UNSPEC; // another node's: balanced there
    }
    let key = flow_key(&p);
    let known = NODEPORT_FLOWS.get_ptr(&key).map(|v| unsafe { *v });
    // Read only where it decides something: not for the packets of a known flow elsewhere.
    let opens = || syn(ctx, &p);
    // loadBalancerSourceRanges: judged for every new flow and connection.
    if service.flags & FRONTEND_RANGES != 0 && (known.is_none() || opens()) && !in_ranges(&frontend, p.ip.saddr) {
        return drop_sampled(ctx, &p, NOT_IN_RANGES, &frontend);
    }
    let flow = match known {
        Some(mut flow) => {
            // A new connection from the port of an earlier one, to a backend here: its answers'
            // way back again (another frontend's flow may have taken it since, or let it go).
            if flow.flags & FLOW_LOCAL != 0 && opens() {
                let before = flow.snat_port;
                if !way_back(&p, &mut flow, true, config.node_addr, true) {
                    return drop_sampled(ctx, &p, NO_SNAT_PORT, &frontend);
                }
                if flow.snat_port != before {
                    let _ = NODEPORT_FLOWS.insert(&key, &flow, 0);
                }
            }
            flow
        }
        None => {
            if service.backends == 0 || config.maglev_size == 0 {
                return drop_sampled(ctx, &p, NO_BACKEND, &frontend);
            }
            let hash = flow_hash(p.ip.saddr, p.sport, p.dport, p.ip.proto, service.flags & FRONTEND_AFFINITY != 0);
            let index = service.table.wrapping_mul(config.maglev_size).wrapping_add(hash % config.maglev_size);
            let Some(slot) = MAGLEV.get(index) else { return drop_sampled(ctx, &p, NO_BACKEND, &frontend) };
            let mut flow = Flow { backend: slot.addr, backend_port: slot.port, snat_port: 0, flags: 0, _pad: 0 };
            let local = slot.flags & SLOT_LOCAL != 0;
            if local {
                flow.flags = FLOW_LOCAL;
            }
            if service.flags & FRONTEND_DSR != 0 && !local {
                // The backend's node answers the client itself.
                flow.flags = FLOW_DSR;
            } else if !way_back(&p, &mut flow, local, config.node_addr, opens()) {
                return drop_sampled(ctx, &p, NO_SNAT_PORT, &frontend);
            }
            let _ = NODEPORT_FLOWS.insert(&key, &flow, 0);
            started(&p, &flow, &service, ingress);
            flow
        }
    };
    if rewrite(ctx, &p, 1, flow.backend, flow.backend_port).is_err() {
        return TC_ACT_SHOT;
    }
    if flow.flags & FLOW_DSR != 0 {
        return encapsulate(ctx, &p, &frontend, flow.backend, ingress);
    }
    if flow.snat_port == 0 {
        return TC_ACT_OK; // to this node's pod: the stack routes it
    }
    if flow.flags & FLOW_LOCAL != 0 {
        // To this node's pod from the client, with another port (see `hold`).
        if rewrite(ctx, &p, 0, p.ip.saddr, flow.snat_port).is_err() {
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK;
    }
    // From the node, to a backend elsewhere.
    if rewrite(ctx, &p, 0, config.node_addr, flow.snat_port).is_err() {
        return TC_ACT_SHOT;
    }
    let routed = forward(ctx, config.node_addr, flow.backend, p.ip.proto, ingress);
    if routed == TC_ACT_SHOT {
        return drop_sampled(ctx, &p, NO_ROUTE, &frontend);
    }
    routed
}

/// The one's-complement checksum of an IPv4 header without options.
#[inline(always)]
fn ip_checksum(header: &Ipv4) -> u16 {
    // SAFETY: `Ipv4` is 20 bytes of plain integers, as ten 16-bit words.
    let words: [u16; 10] = unsafe { core::mem::transmute(*header) };
    let mut sum: u32 = 0;
    for word in words {
        sum += u32::from(word);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// DSR: the client's packet (already addressed to `backend`) in IP-in-IP to the backend, its
/// outer source the frontend's address and its outer IP id the frontend's port, so that the
/// backend's node can answer from the frontend; sent on by the route to the backend.
#[inline(always)]
fn encapsulate(ctx: &TcContext, p: &Packet, frontend: &FrontendKey, backend: u32, ingress: u32) -> i32 {
    let inner_len = u16::from_be(p.ip.total_len);
    if ctx.adjust_room(OUTER_LEN as i32, ADJ_ROOM_MAC, ADJ_ROOM_ENCAP_L3_IPV4).is_err() {
        return TC_ACT_SHOT;
    }
    let mut outer = Ipv4 {
        version_ihl: 0x45,
        tos: 0,
        total_len: inner_len.wrapping_add(OUTER_LEN as u16).to_be(),
        id: frontend.port,
        frag: 0,
        ttl: 64,
        proto: IPPROTO_IPIP,
        check: 0,
        saddr: frontend.addr,
        daddr: backend,
    };
    outer.check = ip_checksum(&outer);
    if ctx.store(IP, &outer, 0).is_err() {
        return TC_ACT_SHOT;
    }
    forward(ctx, frontend.addr, backend, IPPROTO_IPIP, ingress)
}

/// A DSR packet from another node (IP-in-IP from a frontend this node knows): the answer's way
/// back is remembered (from the frontend, to the client), the outer header removed, and the
/// client's packet goes on to the pod, with the client's address; or, when another frontend's
/// flow holds the client's port at that backend ([`hold`]), from a port of the node's own,
/// remembered for the flow like a source-NATed one of this node's. [`NOT_DSR`]: not such a
/// packet.
#[inline(never)]
fn dsr_arrival(ctx: &TcContext) -> i32 {
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let protocol = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).protocol };
    if protocol != EtherType::Ipv4 as u16 as u32 {
        return NOT_DSR;
    }
    let Ok(outer) = ctx.load::<Ipv4>(IP) else { return NOT_DSR };
    if outer.proto != IPPROTO_IPIP || outer.version_ihl != 0x45 {
        return NOT_DSR;
    }
    let Ok(inner) = ctx.load::<Ipv4>(IP + OUTER_LEN) else { return NOT_DSR };
    let header_len = usize::from(inner.version_ihl & 0x0f) * 4;
    if header_len < 20 || !(inner.proto == proto::TCP || inner.proto == proto::UDP) {
        return NOT_DSR;
    }
    // Only from a frontend this node knows (another node's NodePort, or a shared address).
    let frontend = FrontendKey { addr: outer.saddr, port: outer.id, proto: inner.proto, _pad: 0 };
    if NODEPORT_SERVICES.get_ptr(&frontend).is_none() {
        return NOT_DSR;
    }
    let mut snat = 0;
    if u16::from_be(inner.frag) & IP_OFFSET == 0 {
        let Ok(ports) = ctx.load::<[u16; 2]>(IP + OUTER_LEN + header_len) else { return TC_ACT_SHOT };
        // The flow as the client sent it: known when it was source-NATed here.
        let client = FlowKey {
            saddr: inner.saddr,
            daddr: outer.saddr,
            sport: ports[0],
            dport: outer.id,
            proto: inner.proto,
            _pad: [0; 3],
        };
        // SAFETY: a map value, valid while the program runs; copied. Only an entry for this
        // backend (a shared address's flow balanced here may have the same key).
        snat = NODEPORT_FLOWS
            .get_ptr(&client)
            .map(|v| unsafe { *v })
            .filter(|f| f.flags & FLOW_LOCAL != 0 && f.backend == inner.daddr && f.backend_port == ports[1])
            .map_or(0, |f| f.snat_port);
        // A new connection from that port asks for the client's port again.
        let syn = inner.proto == proto::TCP
            && ctx
                .load::<u8>(IP + OUTER_LEN + header_len + 13)
                .is_ok_and(|flags| flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
        if snat == 0 || syn {
            let answer = FlowKey {
                saddr: inner.daddr,
                daddr: inner.saddr,
                sport: ports[1],
                dport: ports[0],
                proto: inner.proto,
                _pad: [0; 3],
            };
            let back = Reverse {
                saddr: outer.saddr,
                daddr: inner.saddr,
                sport: outer.id,
                dport: ports[0],
                closing: 0,
                _pad: 0,
            };
            if hold(&answer, &back, syn) {
                if snat != 0 {
                    // The other frontend's flow ended: this one keeps the client's port now.
                    let _ = NODEPORT_FLOWS.remove(&client);
                    snat = 0;
                }
            } else if snat != 0 {
                // A new connection on the remapped way: live again.
                let remapped = FlowKey { dport: snat, ..answer };
                if let Some(held) = NODEPORT_REVERSE.get_ptr_mut(&remapped) {
                    // SAFETY: a map value, valid while the program runs.
                    unsafe { (*held).closing = 0 };
                }
            } else {
                let target = Slot { addr: inner.daddr, port: ports[1], flags: 0 };
                snat = remap_port(&client, &target, inner.saddr, &back, syn);
                if snat == 0 {
                    return TC_ACT_SHOT;
                }
                // The client's next packets find it, through this node's frontend too.
                let flow =
                    Flow { backend: inner.daddr, backend_port: ports[1], snat_port: snat, flags: FLOW_LOCAL, _pad: 0 };
                let _ = NODEPORT_FLOWS.insert(&client, &flow, 0);
            }
        }
    }
    if ctx.adjust_room(-(OUTER_LEN as i32), ADJ_ROOM_MAC, 0).is_err() {
        return TC_ACT_SHOT;
    }
    if snat != 0 {
        // The client's address with another port (see `hold`).
        let Some(p) = parse(ctx) else { return TC_ACT_SHOT };
        if rewrite(ctx, &p, 0, p.ip.saddr, snat).is_err() {
            return TC_ACT_SHOT;
        }
    }
    TC_ACT_OK
}

/// An answer to a source-NATed flow (from a backend on another node, to this node's own port):
/// from the frontend to the client again, sent on to it.
#[inline(always)]
fn answer(ctx: &TcContext, p: &Packet, ingress: u32) -> i32 {
    let key = flow_key(p);
    // SAFETY: a map value, valid while the program runs; copied.
    let Some(back) = NODEPORT_REVERSE.get_ptr(&key).map(|v| unsafe { *v }) else { return TC_ACT_UNSPEC };
    if rewrite(ctx, p, 0, back.saddr, back.sport).is_err() || rewrite(ctx, p, 1, back.daddr, back.dport).is_err() {
        return TC_ACT_SHOT;
    }
    forward(ctx, back.saddr, back.daddr, p.ip.proto, ingress)
}

/// Whether a frontend reached from outside has a backend on this node ([`reply_from_pod`] has
/// work).
#[inline(always)]
pub fn answers_from_pods() -> bool {
    NODEPORT_CONFIG.get(0).is_some_and(|config| config.local_backends != 0)
}

/// TC ingress of a local pod's interface, after its policy passed the packet: an answer of a
/// backend here to a client from outside leaves from the frontend it asked for. `verdict`
/// (the policy's) otherwise. Not inlined: its stack is not added to the policy's.
#[inline(never)]
pub fn reply_from_pod(ctx: &TcContext, verdict: i32) -> i32 {
    let Some(p) = parse(ctx) else { return verdict };
    let key = flow_key(&p);
    let Some(entry) = NODEPORT_REVERSE.get_ptr_mut(&key) else { return verdict };
    // SAFETY: a map value, valid while the program runs; copied.
    let back = unsafe { *entry };
    if p.ip.proto == proto::TCP && back.closing == 0 {
        // FIN or RST: the flow's end, after which another frontend's flow may take the entry.
        if ctx.load::<u8>(p.l4 + 13).is_ok_and(|flags| flags & (TCP_FIN | TCP_RST) != 0) {
            // SAFETY: as above.
            unsafe { (*entry).closing = 1 };
        }
    }
    // The destination changes only for a flow source-NATed to the node (see `hold`).
    if rewrite(ctx, &p, 0, back.saddr, back.sport).is_err() || rewrite(ctx, &p, 1, back.daddr, back.dport).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let ingress = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex };
    forward(ctx, back.saddr, back.daddr, p.ip.proto, ingress)
}
