//! The node's policy route for the tunnel's replies: a pod answers the agent's transparent
//! connection (made from the client's own address) with a packet to that remote address,
//! which TC marks (`mesh_common::tunnel::TUNNEL_REPLY_MARK`); a rule sends marked packets to
//! a table whose only route makes every address local, so the node delivers them to the
//! agent's socket instead of forwarding them (what TPROXY setups do). Written over rtnetlink
//! with the rust-netlink crates, as `ip rule add fwmark M/MASK lookup T pref P` and `ip route
//! replace local 0.0.0.0/0 dev lo table T` would; both are idempotent, and touch only marked
//! packets.

use std::{io, os::fd::AsRawFd as _};

use mesh_common::tunnel::{TUNNEL_MARK_MASK, TUNNEL_REPLY_MARK, TUNNEL_RULE_PRIORITY, TUNNEL_TABLE};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The loopback interface's index in every network namespace.
const LOOPBACK: u32 = 1;
/// The kernel's acknowledgement takes longer than this only when something is wrong.
const ANSWER_TIMEOUT: libc::timeval = libc::timeval { tv_sec: 5, tv_usec: 0 };

/// Installs the rule and the route in the calling thread's network namespace.
pub fn install() -> io::Result<()> {
    let socket = open()?;
    let mut rule = RuleMessage::default();
    rule.header = RuleHeader { family: AddressFamily::Inet, action: RuleAction::ToTable, ..RuleHeader::default() };
    rule.attributes = vec![
        RuleAttribute::Priority(TUNNEL_RULE_PRIORITY),
        RuleAttribute::FwMark(TUNNEL_REPLY_MARK),
        RuleAttribute::FwMask(TUNNEL_MARK_MASK),
        RuleAttribute::Table(TUNNEL_TABLE),
    ];
    // A rule has no "replace": an identical one already there is what is wanted.
    match request(&socket, RouteNetlinkMessage::NewRule(rule), NLM_F_CREATE | NLM_F_EXCL) {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
        other => other?,
    }
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: AddressFamily::Inet,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Host,
        kind: RouteType::Local,
        ..RouteHeader::default()
    };
    route.attributes = vec![RouteAttribute::Table(TUNNEL_TABLE), RouteAttribute::Oif(LOOPBACK)];
    request(&socket, RouteNetlinkMessage::NewRoute(route), NLM_F_CREATE | NLM_F_REPLACE)
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let timeout = ANSWER_TIMEOUT;
    // SAFETY: a valid option value of its size on an open socket.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Sends one request and waits for the kernel's acknowledgement.
fn request(socket: &Socket, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags | NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket.send(&buffer, 0)?;
    let (answer, _) = socket.recv_from_full()?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer).map_err(io::Error::other)?;
    match answer.payload {
        NetlinkPayload::Error(error) if error.code.is_some() => Err(error.to_io()),
        NetlinkPayload::Error(_) => Ok(()),
        other => Err(io::Error::other(format!("rtnetlink answered {other:?}, not an acknowledgement"))),
    }
}
