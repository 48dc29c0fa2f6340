//! Service load balancing at the socket: a service address is replaced by one of its backends
//! when the application calls `connect()` (`connect4`) or sends an unconnected UDP datagram
//! (`sendmsg4`), so no packet of it is ever NATed. `recvmsg4` and `getpeername4` put the
//! service address back where the application looks at it. A TCP connection whose backend
//! (or pod) accepts only mutual TLS is sent to the agent's outbound listener instead
//! (`mesh_common::tunnel`).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{
    proto,
    service_lb::{
        AFFINITY_SCAN_SLOTS, AffinityKey, AffinityValue, Backend, BackendKey, ReverseKey, SERVICE_FLAG_L7, ServiceAddr,
        ServiceEntry, ServiceKey, UDP_STICKY_S, affinity_scope, socket_slot,
    },
    tunnel::{OutboundListener, TUNNEL, TunnelDestKey},
};

use crate::maps::{
    AFFINITY, BACKEND_ADDRS, BACKEND_FILTER, BACKENDS, REVERSE, SERVICES, SOCKET_SERVICES, TUNNEL_CONFIG, TUNNEL_DESTS,
};

/// `sock_addr` verdict: let the syscall go on (with the address as the program left it).
const ALLOW: i32 = 1;
/// `sock_addr` verdict: fail the syscall, with the error set by `bpf_set_retval`.
const REJECT: i32 = 0;

/// What a translating hook decided.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Reject,
}

/// The verifier wants a return value it can prove is 0 or 1: map the verdict to constants.
#[inline(always)]
fn verdict(result: Result<Verdict, ()>) -> i32 {
    match result {
        Ok(Verdict::Reject) => REJECT,
        // No error of the lookup path may block an application's call: allow on error.
        Ok(Verdict::Allow) | Err(()) => ALLOW,
    }
}
const ECONNREFUSED: i32 = 111;
const NS_PER_S: u64 = 1_000_000_000;
/// A remembered backend's last-use time is rewritten at most this often, and at most an
/// eighth of the timeout (a map write per connection or datagram would cost more than the
/// lookup); so an entry expires at most that much early.
const REFRESH_NS: u64 = NS_PER_S;

#[cgroup_sock_addr(connect4)]
fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_translate(&ctx, Hook::Connect))
}

#[cgroup_sock_addr(sendmsg4)]
fn mesh_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(try_translate(&ctx, Hook::Sendmsg))
}

#[cgroup_sock_addr(recvmsg4)]
fn mesh_recvmsg4(ctx: SockAddrContext) -> i32 {
    // recvmsg4 cannot fail the call: the verdict is always allow.
    restore_service_address(&ctx, Restore::Datagram);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
fn mesh_peername4(ctx: SockAddrContext) -> i32 {
    restore_service_address(&ctx, Restore::PeerName);
    ALLOW
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Connect,
    Sendmsg,
}

/// Which address a restoring hook sees.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// `getpeername()`: a connected socket's peer.
    PeerName,
    /// `recvmsg()`: a datagram's source, on a connected or an unconnected socket.
    Datagram,
}

fn try_translate(ctx: &SockAddrContext, hook: Hook) -> Result<Verdict, ()> {
    // SAFETY: the kernel hands a valid `bpf_sock_addr` to every `sock_addr` program.
    let sa = unsafe { &mut *ctx.sock_addr };
    let protocol = match sa.protocol {
        p if p == u32::from(proto::TCP) => proto::TCP,
        p if p == u32::from(proto::UDP) => proto::UDP,
        _ => return Ok(Verdict::Allow),
    };
    // `user_port` holds the port in network order in its low 16 bits.
    let key = ServiceKey { addr: sa.user_ip4, port: sa.user_port as u16, proto: protocol, _pad: 0 };
    // SAFETY: entries are only replaced whole by the agent; we copy the value out at once.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        if hook == Hook::Connect && protocol == proto::TCP {
            // A pod's own address may need the tunnel too.
            let pod = Backend { addr: key.addr, port: key.port, _pad: 0 };
            if let Some(listener) = outbound_listener()
                && tunnelled(&pod)
            {
                sa.user_ip4 = listener.addr;
                sa.user_port = u32::from(listener.port);
                // SAFETY: a helper call on the program's own context.
                let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
                remember_socket(socket_cookie, pod, ServiceAddr { addr: key.addr, port: key.port, _pad: 0 });
            }
        }
        return Ok(Verdict::Allow);
    };
    if service.count == 0 {
        // kube-proxy's REJECT rule: a service without endpoints refuses at once.
        // SAFETY: a helper call with a plain integer.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return Ok(Verdict::Reject);
    }
    // SAFETY: a helper call on the program's own context (the reverse entry needs it anyway).
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let backend = if service.affinity_timeout_s != 0 {
        // SAFETY: a helper call on the program's own context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        sticky(&key, &service, netns, affinity_scope::CLIENT, service.affinity_timeout_s)?
    } else if hook == Hook::Sendmsg {
        sticky(&key, &service, socket_cookie, affinity_scope::SOCKET, UDP_STICKY_S)?
    } else {
        random_slot(&service)?
    };
    sa.user_ip4 = backend.addr;
    sa.user_port = u32::from(backend.port);
    let service_addr = ServiceAddr { addr: key.addr, port: key.port, _pad: 0 };
    if hook == Hook::Connect {
        // A TCP connection to a backend that accepts only mutual TLS, or to a service with HTTP
        // routes, goes to the agent's listener instead; the slot keeps the backend and the
        // service, for `sockops` to tell the agent.
        if protocol == proto::TCP
            && let Some(listener) = outbound_listener()
            && (service.flags & SERVICE_FLAG_L7 != 0 || tunnelled(&backend))
        {
            sa.user_ip4 = listener.addr;
            sa.user_port = u32::from(listener.port);
        }
        // A connected socket has one peer: its cookie's slot holds it.
        remember_socket(socket_cookie, backend, service_addr);
        return Ok(Verdict::Allow);
    }
    // An unconnected UDP socket sends to many backends: an entry per backend, written when it
    // changes.
    let reverse = ReverseKey { socket_cookie, addr: backend.addr, port: backend.port, _pad: 0 };
    // SAFETY: the value is copied out at once.
    if (unsafe { REVERSE.get(&reverse) }).copied() != Some(service_addr) {
        // A full LRU map evicts its least recently used entry; an error only loses the
        // reverse lookup (the application would see the backend's address).
        let _ = REVERSE.insert(&reverse, &service_addr, 0);
    }
    Ok(Verdict::Allow)
}

/// Writes a connected socket's translation into its cookie's slot. The cookie is cleared
/// first and written last, so a reader that finds its cookie before and after reading the
/// rest (`socket_service`) has read one writer's entry.
#[inline(always)]
fn remember_socket(socket_cookie: u64, backend: Backend, service: ServiceAddr) {
    let Some(slot) = SOCKET_SERVICES.get_ptr_mut(socket_slot(socket_cookie)) else { return };
    // SAFETY: a pointer into the array's value, valid for this program's run; volatile keeps
    // the order of the writes.
    unsafe {
        core::ptr::write_volatile(&raw mut (*slot).socket_cookie, 0);
        core::ptr::write_volatile(&raw mut (*slot).backend, backend);
        core::ptr::write_volatile(&raw mut (*slot).service, service);
        core::ptr::write_volatile(&raw mut (*slot).socket_cookie, socket_cookie);
    }
}

/// The service address socket `socket_cookie` asked for, if `connect4` translated it to
/// `peer` and its slot has not been taken by a newer socket since.
#[inline(always)]
pub(crate) fn socket_service(socket_cookie: u64, peer: Backend) -> Option<ServiceAddr> {
    let (backend, service) = socket_entry(socket_cookie)?;
    if backend != peer { None } else { Some(service) }
}

/// The backend `connect4` chose for socket `socket_cookie` and the address it asked for, if
/// its slot has not been taken by a newer socket since.
#[inline(always)]
pub(crate) fn socket_entry(socket_cookie: u64) -> Option<(Backend, ServiceAddr)> {
    let slot = SOCKET_SERVICES.get_ptr(socket_slot(socket_cookie))?;
    // SAFETY: a pointer into the array's value, valid for this program's run; volatile keeps
    // the order of the reads (the cookie before and after the rest).
    unsafe {
        if core::ptr::read_volatile(&raw const (*slot).socket_cookie) != socket_cookie {
            return None;
        }
        let backend = core::ptr::read_volatile(&raw const (*slot).backend);
        let service = core::ptr::read_volatile(&raw const (*slot).service);
        if core::ptr::read_volatile(&raw const (*slot).socket_cookie) != socket_cookie {
            return None;
        }
        Some((backend, service))
    }
}

/// The agent's outbound listener, while the tunnel is on.
#[inline(always)]
pub(crate) fn outbound_listener() -> Option<OutboundListener> {
    let listener = *TUNNEL_CONFIG.get(0)?;
    if listener.port == 0 { None } else { Some(listener) }
}

/// Whether TCP connections to `backend` must go through the tunnel: its own port's entry, or
/// else its pod's.
#[inline(always)]
fn tunnelled(backend: &Backend) -> bool {
    let key = TunnelDestKey { addr: backend.addr, port: backend.port, _pad: 0 };
    // SAFETY: values are plain integers, copied out at once.
    match unsafe { TUNNEL_DESTS.get(&key) } {
        Some(mode) => *mode == TUNNEL,
        None => unsafe { TUNNEL_DESTS.get(&TunnelDestKey { port: 0, ..key }) }.is_some_and(|mode| *mode == TUNNEL),
    }
}

/// A uniformly random slot of the service's current revision.
fn random_slot(service: &ServiceEntry) -> Result<Backend, ()> {
    // SAFETY: a plain helper call with no arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % u32::from(service.count);
    // SAFETY: as above, entries are written whole.
    (unsafe { BACKENDS.get(&BackendKey { revision: service.revision, slot }) }).copied().ok_or(())
}

/// The backend `client` used last for this service, if it is recent and still a member of
/// the service; otherwise a new random one, remembered. Inlined: BPF calls take at most five
/// arguments in registers.
#[inline(always)]
fn sticky(key: &ServiceKey, service: &ServiceEntry, client: u64, scope: u32, timeout_s: u32) -> Result<Backend, ()> {
    let affinity_key = AffinityKey { client, service: *key, scope, _pad: 0 };
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(timeout_s) * NS_PER_S;
    // SAFETY: the value is copied out at once; a concurrent update rewrites it whole.
    if let Some(known) = (unsafe { AFFINITY.get(&affinity_key) }).copied()
        && now.wrapping_sub(known.last_used_ns) <= timeout_ns
        && is_member(service, &known)
    {
        let refresh_ns = if timeout_ns / 8 < REFRESH_NS { timeout_ns / 8 } else { REFRESH_NS };
        if known.revision != service.revision || now.wrapping_sub(known.last_used_ns) > refresh_ns {
            let refreshed = AffinityValue { last_used_ns: now, revision: service.revision, ..known };
            let _ = AFFINITY.insert(&affinity_key, &refreshed, 0);
        }
        return Ok(known.backend);
    }
    let backend = random_slot(service)?;
    let value = AffinityValue { backend, last_used_ns: now, revision: service.revision, _pad: 0 };
    let _ = AFFINITY.insert(&affinity_key, &value, 0);
    Ok(backend)
}

/// Whether the remembered backend is still in the service's current set.
fn is_member(service: &ServiceEntry, known: &AffinityValue) -> bool {
    if known.revision == service.revision {
        return true;
    }
    for slot in 0..AFFINITY_SCAN_SLOTS {
        if slot >= u32::from(service.count) {
            break;
        }
        // SAFETY: entries are written whole.
        if let Some(backend) = unsafe { BACKENDS.get(&BackendKey { revision: service.revision, slot }) }
            && backend.addr == known.backend.addr
            && backend.port == known.backend.port
        {
            return true;
        }
    }
    false
}

/// The peer address the application sees (a connected socket's peer, a datagram's source)
/// becomes the service address it asked for, when this socket was translated to that backend.
fn restore_service_address(ctx: &SockAddrContext, hook: Restore) {
    // SAFETY: the kernel hands a valid `bpf_sock_addr` to every `sock_addr` program.
    let sa = unsafe { &mut *ctx.sock_addr };
    // Most peers (an accepted socket's client, say) are no backend: their port's bit or their
    // address's bit in the filter is clear; done. Both set: checked in the backend set.
    let peer = Backend { addr: sa.user_ip4, port: sa.user_port as u16, _pad: 0 };
    if let Some(listener) = outbound_listener()
        && peer.addr == listener.addr
        && peer.port == listener.port
    {
        // A tunnelled connection: its slot holds what the application asked for.
        if hook == Restore::PeerName {
            // SAFETY: a helper call on the program's own context.
            let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some((_, service)) = socket_entry(socket_cookie) {
                sa.user_ip4 = service.addr;
                sa.user_port = u32::from(service.port);
            }
        }
        return;
    }
    for (index, mask) in peer.filter_slots() {
        match BACKEND_FILTER.get(index) {
            Some(word) if *word & mask != 0 => {}
            _ => return,
        }
    }
    // SAFETY: only the presence is read.
    if unsafe { BACKEND_ADDRS.get(&peer) }.is_none() {
        return;
    }
    // SAFETY: a helper call on the program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A connected socket (any getpeername, a connected UDP socket's datagrams) is in its
    // cookie's slot; an unconnected UDP socket has an entry per backend it sent to.
    let service = socket_service(socket_cookie, peer).or_else(|| {
        if hook == Restore::PeerName {
            return None;
        }
        let key = ReverseKey { socket_cookie, addr: peer.addr, port: peer.port, _pad: 0 };
        // SAFETY: the value is copied out at once.
        (unsafe { REVERSE.get(&key) }).copied()
    });
    if let Some(service) = service {
        sa.user_ip4 = service.addr;
        sa.user_port = u32::from(service.port);
    }
}
