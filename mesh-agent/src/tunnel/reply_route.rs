//! The node's policy route for the tunnel's replies: a pod answers the agent's transparent
//! connection (made from the client's own address) with a packet to that remote address,
//! which TC marks (`mesh_common::tunnel::TUNNEL_REPLY_MARK`); a rule sends marked packets to a table
//! whose only route makes every address local, so the node delivers them to the agent's
//! socket instead of forwarding them (what TPROXY setups do). Written over rtnetlink, as
//! `ip rule add fwmark M/MASK lookup T pref P` and `ip route replace local 0.0.0.0/0 dev lo
//! table T` would; both are idempotent, and touch only marked packets.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use mesh_common::tunnel::{TUNNEL_MARK_MASK, TUNNEL_REPLY_MARK, TUNNEL_RULE_PRIORITY, TUNNEL_TABLE};

const RTM_NEWROUTE: u16 = 24;
const RTM_NEWRULE: u16 = 32;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// `FR_ACT_TO_TBL` of `fib_rule_hdr.action`.
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RTN_LOCAL: u8 = 2;
const RT_SCOPE_HOST: u8 = 254;
const RTPROT_STATIC: u8 = 4;
/// The loopback interface's index in every network namespace.
const LOOPBACK: u32 = 1;

/// Installs the rule and the route in the calling thread's network namespace.
pub fn install() -> io::Result<()> {
    let socket = Netlink::open()?;
    // fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags (u32).
    let mut rule = vec![libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
    attribute(&mut rule, FRA_PRIORITY, TUNNEL_RULE_PRIORITY);
    attribute(&mut rule, FRA_FWMARK, TUNNEL_REPLY_MARK);
    attribute(&mut rule, FRA_FWMASK, TUNNEL_MARK_MASK);
    attribute(&mut rule, FRA_TABLE, TUNNEL_TABLE);
    // A rule has no "replace": an identical one already there is what is wanted.
    match socket.request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, &rule) {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut route = vec![libc::AF_INET as u8, 0, 0, 0, 0, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0];
    attribute(&mut route, RTA_TABLE, TUNNEL_TABLE);
    attribute(&mut route, RTA_OIF, LOOPBACK);
    socket.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &route)
}

/// Appends a `u32` attribute (`rtattr`: length, type, value; 4-byte aligned already).
fn attribute(message: &mut Vec<u8>, kind: u16, value: u32) {
    message.extend_from_slice(&8u16.to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&value.to_ne_bytes());
}

struct Netlink(OwnedFd);

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: a plain socket call; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by socket(), owned by nothing else.
        let socket = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
        // SAFETY: a valid option value of its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(socket)
    }

    /// Sends one request with `body` and waits for the kernel's acknowledgement.
    fn request(&self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        const HEADER: usize = 16;
        let mut message = Vec::with_capacity(HEADER + body.len());
        message.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        message.extend_from_slice(body);
        // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the message and the address are valid for the call.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answer = [0u8; 4096];
        // SAFETY: reads into a buffer of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let answer = &answer[..n as usize];
        if answer.len() < HEADER + 4 || u16::from_ne_bytes([answer[4], answer[5]]) != NLMSG_ERROR {
            return Err(io::Error::other("rtnetlink answered something other than an acknowledgement"));
        }
        // nlmsgerr: a negative errno, 0 for success.
        let error = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
        if error == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-error)) }
    }
}
