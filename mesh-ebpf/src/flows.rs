//! Flow events into the ring buffer, with every event that does not fit counted.

use core::mem::offset_of;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use mesh_common::{
    flows::{FLOW_START, FlowEvent},
    maps::{EVENTS_LOST_SLOT, EVENTS_SENT_SLOT},
    policy::{ALLOW, EGRESS},
    proto,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::maps::{EVENTS, EVENTS_LOST};

/// Sends `event` and counts it as sent; when the ring buffer is full, counts it as lost
/// instead.
#[inline(always)]
pub fn emit(event: &FlowEvent) {
    let slot = if EVENTS.output(event, 0).is_ok() { EVENTS_SENT_SLOT } else { EVENTS_LOST_SLOT };
    if let Some(count) = EVENTS_LOST.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value: only this CPU writes it while this program runs.
        unsafe { *count += 1 };
    }
}

/// Now, on the clock of [`FlowEvent::time_ns`].
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a plain helper call with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The flows benchmark's generator: each run emits one flow-start event for the packet it is
/// given (an Ethernet + IPv4 + TCP/UDP header), with a random source port, through the same
/// [`emit`] as the real programs. Run by `BPF_PROG_TEST_RUN` only; never attached.
#[classifier]
fn mesh_event_gen(ctx: TcContext) -> i32 {
    let _ = try_event_gen(&ctx);
    TC_ACT_OK
}

fn try_event_gen(ctx: &TcContext) -> Result<(), i64> {
    let ip = EthHdr::LEN;
    let addrs: [u32; 2] = ctx.load(ip + offset_of!(Ipv4Hdr, src_addr))?;
    let ip_proto: u8 = ctx.load(ip + offset_of!(Ipv4Hdr, proto))?;
    // TCP and UDP both start with the two ports.
    let dport: u16 = ctx.load(ip + Ipv4Hdr::LEN + offset_of!(UdpHdr, dst))?;
    // SAFETY: a plain helper call with no arguments.
    let sport = (unsafe { bpf_get_prandom_u32() } as u16) | 0x8000;
    emit(&FlowEvent {
        time_ns: now(),
        saddr: addrs[0],
        daddr: addrs[1],
        sport: sport.to_be(),
        dport,
        kind: FLOW_START,
        proto: if ip_proto == proto::UDP { proto::UDP } else { proto::TCP },
        action: ALLOW,
        direction: EGRESS,
        tcp_flags: 0x02,
        ..FlowEvent::default()
    });
    Ok(())
}
