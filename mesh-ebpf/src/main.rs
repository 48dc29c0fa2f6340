//! The mesh's kernel programs. One program per attach point, each a thin entry over a `try_*`
//! function; the maps they share are in [`maps`].
#![no_std]
#![no_main]

mod flows;
mod from_netdev;
mod from_wire;
mod maps;
mod nodeport;
mod pod_traffic;
mod policy;
mod prefilter;
mod service_lb;
mod sockops;
mod wire;

/// GPL-compatible, so the programs may call every helper; the crate is MIT OR GPL-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this never runs.
    unsafe { core::hint::unreachable_unchecked() }
}
