//! The benchmarks' wire: sends every frame arriving on an interface to another interface as an
//! XDP frame (`bpf_redirect`), as a NIC's receive ring hands its driver a page. A veth that
//! receives a socket's packets gives XDP a copy of each socket buffer (its head is not a page),
//! which no NIC driver does; frames redirected into a veth reach its XDP program, or its stack,
//! as they would from a driver. Attached by `cargo xtask bench north-south` to the outside
//! client's port on the lab's fabric; never by the agent.

use aya_ebpf::{helpers::bpf_redirect, macros::xdp, programs::XdpContext};

/// The interface index to send to; set by the loader.
#[unsafe(no_mangle)]
static WIRE_TO: u32 = 0;

#[xdp]
fn mesh_wire(_ctx: XdpContext) -> u32 {
    // SAFETY: a volatile read of a global the loader wrote before loading.
    let to = unsafe { core::ptr::read_volatile(&WIRE_TO) };
    // SAFETY: a plain helper call; for XDP it returns the action (XDP_REDIRECT, or XDP_ABORTED).
    unsafe { bpf_redirect(to, 0) as u32 }
}
