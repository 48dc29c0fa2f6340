//! TC (TCX) on each pod's host-side interface: per-CPU packet and byte counters, per
//! direction, then the pod's network policy ([`crate::policy`]). A passing packet gets "no
//! opinion", so the next program (or the stack) decides; a denied one is dropped.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST},
    macros::classifier,
    programs::TcContext,
};
use mesh_common::{
    pod_traffic::PodTraffic,
    policy::{EGRESS, INGRESS},
};

use crate::{maps::POD_TRAFFIC, policy};

/// TC ingress of the host-side interface: what the pod sends.
#[classifier]
fn mesh_from_pod(ctx: TcContext) -> i32 {
    let _ = try_count(&ctx, Direction::FromPod);
    let verdict = policy::enforce(&ctx, EGRESS);
    if verdict == aya_ebpf::bindings::TC_ACT_SHOT {
        return verdict;
    }
    // An answer to a client from outside leaves from the frontend it asked for (looked for only
    // while some frontend from outside has a backend here: no call otherwise).
    if !crate::nodeport::answers_from_pods() {
        return verdict;
    }
    crate::nodeport::reply_from_pod(&ctx, verdict)
}

/// TC egress of the host-side interface: what the pod receives.
#[classifier]
fn mesh_to_pod(ctx: TcContext) -> i32 {
    let _ = try_count(&ctx, Direction::ToPod);
    policy::enforce(&ctx, INGRESS)
}

#[derive(Clone, Copy)]
enum Direction {
    FromPod,
    ToPod,
}

fn try_count(ctx: &TcContext, direction: Direction) -> Result<(), i64> {
    // SAFETY: a TC program's context is the kernel's `__sk_buff`.
    let ifindex = unsafe { (*ctx.as_ptr().cast::<__sk_buff>()).ifindex };
    let bytes = u64::from(ctx.len());
    if let Some(counters) = POD_TRAFFIC.get_ptr_mut(&ifindex) {
        // SAFETY: a per-CPU value: only this CPU writes it while this program runs.
        let counters = unsafe { &mut *counters };
        add(counters, direction, bytes);
        return Ok(());
    }
    // The agent creates each interface's entry when it attaches; this covers a race with it.
    let mut counters = PodTraffic::default();
    add(&mut counters, direction, bytes);
    POD_TRAFFIC.insert(&ifindex, &counters, u64::from(BPF_NOEXIST)).map_err(i64::from)
}

#[inline(always)]
fn add(counters: &mut PodTraffic, direction: Direction, bytes: u64) {
    match direction {
        Direction::FromPod => {
            counters.from_pod_packets += 1;
            counters.from_pod_bytes += bytes;
        }
        Direction::ToPod => {
            counters.to_pod_packets += 1;
            counters.to_pod_bytes += bytes;
        }
    }
}
