//! `sockops` on the node cgroup: the life of every TCP connection of the node's pods.
//!
//! At `connect()` (once the kernel picked the source port) a translated connection's 4-tuple
//! is written to [`XLATE`], so TC names the service in the flow's events, and a translation
//! event is sent. Established and closed connections are reported with their smoothed RTT,
//! retransmits and byte counts. How many of these events a connection gets is the level of
//! [`FLOW_AGGREGATION`] (`mesh_common::flows::aggregation`). A connection `connect4` sent
//! to the agent's outbound listener gets its original destination written under its client
//! address and port (`mesh_common::tunnel`): the agent reads it when it accepts.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{
    flows::{CLOSED, ESTABLISHED, FlowEvent, TRANSLATED, TupleKey, aggregation},
    proto,
    service_lb::Backend,
    tunnel::{Origin, OriginKey},
};

use crate::{
    flows::{emit, now},
    maps::{TUNNEL_ORIGINS, XLATE},
    service_lb::{outbound_listener, socket_entry, socket_service},
};

const AF_INET: u32 = 2;
/// `TCP_CLOSE` of the kernel's TCP states.
const TCP_CLOSE: u32 = 7;
/// The kernel keeps the smoothed RTT times 8.
const SRTT_SHIFT: u32 = 3;

/// The aggregation level, set by the agent when it loads the programs (which attaches this
/// program at `MAXIMUM` only for the tunnel, and then it sends no events); the verifier sees a constant, so the branches of the other
/// levels cost nothing.
#[unsafe(no_mangle)]
static FLOW_AGGREGATION: u8 = aggregation::DEFAULT;

#[inline(always)]
fn level() -> u8 {
    // SAFETY: a plain read of a global; volatile so the compiler does not fold the default.
    unsafe { core::ptr::read_volatile(&FLOW_AGGREGATION) }
}

#[sock_ops]
fn mesh_sockops(ctx: SockOpsContext) -> u32 {
    try_sockops(&ctx);
    // The return value of sockops callbacks here is ignored by the kernel.
    1
}

fn try_sockops(ctx: &SockOpsContext) {
    if ctx.family() != AF_INET {
        return;
    }
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return;
    }
    // Of the state changes only the close is reported: the rest return before any helper.
    if op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) != TCP_CLOSE {
        return;
    }
    let level = level();
    // SAFETY: the kernel hands a valid `bpf_sock_ops` to every sockops program.
    let ops = unsafe { &*ctx.ops };
    // `local_port` is in host order; `remote_port` holds the network-order port in its upper
    // 16 bits on little-endian machines.
    let tuple = TupleKey {
        saddr: ctx.local_ip4(),
        daddr: ctx.remote_ip4(),
        sport: (ctx.local_port() as u16).to_be(),
        dport: (ctx.remote_port() >> 16) as u16,
        proto: proto::TCP,
        _pad: [0; 3],
    };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // Established, either way: ask for the state changes, to see the close (each one
        // runs this program again).
        if level <= aggregation::LOW {
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        if level != aggregation::NONE {
            return;
        }
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let service = if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let peer = Backend { addr: tuple.daddr, port: tuple.dport, _pad: 0 };
        let service = if let Some(listener) = outbound_listener()
            && peer.addr == listener.addr
            && peer.port == listener.port
        {
            // Redirected to the agent: where it was going, under the client's address and
            // port, for the agent's accept (and TC's egress policy). A full LRU map evicts its
            // oldest entry; an error leaves the agent unable to place the connection, and it
            // refuses it.
            let Some((backend, service)) = socket_entry(cookie) else { return };
            let origin = OriginKey { addr: tuple.saddr, port: tuple.sport, _pad: 0 };
            let _ = TUNNEL_ORIGINS.insert(&origin, &Origin { backend, service }, 0);
            service
        } else {
            let Some(service) = socket_service(cookie, peer) else { return };
            service
        };
        if level == aggregation::MAXIMUM {
            // Attached only for the tunnel: no events.
            return;
        }
        // A full LRU map evicts its least recently used entry; an error only loses the
        // service name in the flow's TC events.
        let _ = XLATE.insert(&tuple, &service, 0);
        Some(service)
    } else {
        // The service the connection was translated from, if it was (client ends only).
        // SAFETY: the value is copied out at once.
        (unsafe { XLATE.get(&tuple) }).copied()
    };
    let mut event = FlowEvent {
        time_ns: now(),
        cookie,
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
        proto: proto::TCP,
        ..FlowEvent::default()
    };
    if let Some(service) = service {
        event.svc_addr = service.addr;
        event.svc_port = service.port;
    }
    // The pod's side of the connection: its own connect() and active opens leave it (egress),
    // passive opens come in (ingress); a close is known as egress only for a connection it
    // translated (the client's), else left unknown.
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB || op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB || service.is_some() {
        event.direction = mesh_common::policy::EGRESS;
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        event.direction = mesh_common::policy::INGRESS;
    }
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        event.kind = TRANSLATED;
    } else if op == BPF_SOCK_OPS_STATE_CB {
        let _ = XLATE.remove(&tuple);
        event.kind = CLOSED;
        event.srtt_us = ops.srtt_us >> SRTT_SHIFT;
        event.retrans = ops.total_retrans;
        event.packets = u64::from(ops.data_segs_out);
        event.bytes = ops.bytes_acked;
        event.reply_packets = u64::from(ops.data_segs_in);
        event.reply_bytes = ops.bytes_received;
    } else {
        event.kind = ESTABLISHED;
        event.srtt_us = ops.srtt_us >> SRTT_SHIFT;
    }
    emit(&event);
}
