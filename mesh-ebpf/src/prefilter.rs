//! The prefilter: a packet whose source lies in a denied CIDR is dropped at XDP, counted
//! against that CIDR (per CPU), and sampled into a flow event (at most one per CIDR per CPU per
//! [`REPORT_INTERVAL_NS`], carrying how many drops it stands for) with the rule that denied it.

use aya_ebpf::{EbpfContext as _, bindings::xdp_md, maps::lpm_trie::Key, programs::XdpContext};
use mesh_common::{
    flows::{FLOW_DROP, FlowEvent},
    policy::{DENY, INGRESS, reason},
    prefilter::REPORT_INTERVAL_NS,
    proto,
};
use network_types::eth::EthHdr;

use crate::{
    flows::{emit, now},
    from_wire::read,
    maps::{PREFILTER, PREFILTER_COUNTS},
    policy::{IP_OFFSET, Ipv4},
};

/// Whether `ip`'s source is denied (then the drop is counted and perhaps reported).
#[inline(always)]
pub fn drops(ctx: &XdpContext, ip: &Ipv4) -> bool {
    let Some(entry) = PREFILTER.get(&Key::new(32, ip.saddr)) else { return false };
    if entry.rule == 0 {
        return false; // an except inside a denied block
    }
    let (rule, slot) = (entry.rule, entry.slot);
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(count) = PREFILTER_COUNTS.get_ptr_mut(slot) else { return true };
    // SAFETY: a per-CPU value: only this CPU touches it while this program runs.
    let count = unsafe { &mut *count };
    count.packets += 1;
    count.bytes += len;
    count.unreported += 1;
    let time = now();
    if time.wrapping_sub(count.reported_ns) < REPORT_INTERVAL_NS {
        return true;
    }
    let dropped = count.unreported;
    count.reported_ns = time;
    count.unreported = 0;
    report(ctx, ip, rule, dropped, len, time);
    true
}

/// The sampled drop event: the packet's addresses (and ports, from a first fragment), the rule,
/// and in `packets` the drops this event stands for.
#[inline(always)]
fn report(ctx: &XdpContext, ip: &Ipv4, rule: u32, dropped: u64, len: u64, time: u64) {
    let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
    let l4 = EthHdr::LEN + header_len;
    let ported = matches!(ip.proto, proto::TCP | proto::UDP | proto::SCTP);
    let first = u16::from_be(ip.frag) & IP_OFFSET == 0;
    let ports: [u16; 2] = if ported && first && header_len >= 20 { read(ctx, l4).unwrap_or([0, 0]) } else { [0, 0] };
    let tcp_flags: u8 = if ip.proto == proto::TCP && first { read(ctx, l4 + 13).unwrap_or(0) } else { 0 };
    // SAFETY: an XDP program's context is the kernel's `xdp_md`.
    let ifindex = unsafe { (*ctx.as_ptr().cast::<xdp_md>()).ingress_ifindex };
    emit(&FlowEvent {
        time_ns: time,
        packets: dropped,
        bytes: len,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: ports[0],
        dport: ports[1],
        kind: FLOW_DROP,
        proto: ip.proto,
        ifindex,
        rule,
        action: DENY,
        reason: reason::POLICY_DENY,
        direction: INGRESS,
        tcp_flags,
        ..FlowEvent::default()
    });
}
