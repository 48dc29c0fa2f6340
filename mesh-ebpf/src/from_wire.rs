//! XDP on the node's external interfaces: what arrives off the wire, before the stack builds
//! a socket buffer for it. Today the prefilter ([`crate::prefilter`]): source CIDRs a
//! ClusterMeshPolicy denies to every pod are dropped here, for the node and its pods alike.
//! Everything else passes untouched.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::eth::{EthHdr, EtherType};

use crate::{policy::Ipv4, prefilter};

#[xdp]
fn mesh_from_wire(ctx: XdpContext) -> u32 {
    // A packet this program cannot read is not its business: the stack decides.
    try_from_wire(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// `T` at `offset` of the packet, within its bounds.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: `[start + offset, + size_of::<T>())` lies within the packet, checked just above
    // against `data_end`; `T` is plain data, valid for every bit pattern.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

fn try_from_wire(ctx: &XdpContext) -> Option<u32> {
    // The EtherType as on the wire (network order), as `EtherType` holds its values.
    let ether_type: u16 = read(ctx, EthHdr::LEN - 2)?;
    if ether_type != EtherType::Ipv4 as u16 {
        return Some(xdp_action::XDP_PASS);
    }
    let ip: Ipv4 = read(ctx, EthHdr::LEN)?;
    if prefilter::drops(ctx, &ip) {
        return Some(xdp_action::XDP_DROP);
    }
    Some(xdp_action::XDP_PASS)
}
