//! `cgroup/connect4`: a connection to a service address is sent to one of its backends at
//! `connect()` time, so no packet of it is ever NATed.

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{
    proto,
    service_lb::{BackendKey, ServiceKey},
};

use crate::maps::{BACKENDS, SERVICES};

/// `sock_addr` verdict: let the syscall go on (with the address as the program left it).
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // No error of the lookup path may block an application's connect(): allow on error.
    try_connect4(&ctx).unwrap_or(ALLOW)
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, ()> {
    // SAFETY: the kernel hands a valid `bpf_sock_addr` to every `sock_addr` program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let protocol = match sa.protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return Ok(ALLOW),
    };
    // `user_port` holds the port in network order in its low 16 bits.
    let key = ServiceKey { addr: sa.user_ip4, port: sa.user_port as u16, proto: protocol, _pad: 0 };
    // SAFETY: entries are only replaced whole by the agent; we copy the value out at once.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Ok(ALLOW);
    };
    if service.count == 0 {
        return Ok(ALLOW);
    }
    // SAFETY: a plain helper call with no arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % u32::from(service.count);
    let backend_key = BackendKey { revision: service.revision, slot };
    // SAFETY: as above.
    let backend = (unsafe { BACKENDS.get(&backend_key) }).copied().ok_or(())?;
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    Ok(ALLOW)
}
