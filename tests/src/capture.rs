//! What crossed a lab link: an `AF_PACKET` socket on one interface of a lab namespace, read
//! on a thread until stopped (bounded in packets), for tests that must show what a wire
//! carried (tcpdump is not needed for it).

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::lab::{LabError, Result};

/// At most this many packets are kept.
const MAX_PACKETS: usize = 50_000;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;

/// A TCP segment seen on the link.
#[derive(Debug, Clone)]
pub struct Segment {
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing every frame of `iface` in the namespace at `netns`.
    pub fn start(netns: &Path, iface: &str) -> Result<Self> {
        let failed = |message: String| LabError::Command { command: format!("capture on {iface}"), message };
        let iface_name = std::ffi::CString::new(iface).map_err(|e| failed(e.to_string()))?;
        let socket = mesh_agent::netns::run_in(Some(netns), move || -> std::io::Result<OwnedFd> {
            // SAFETY: plain socket calls with valid arguments; the descriptor is owned at once.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be()));
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let ifindex = libc::if_nametoindex(iface_name.as_ptr());
                if ifindex == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut address: libc::sockaddr_ll = std::mem::zeroed();
                address.sll_family = libc::AF_PACKET as u16;
                address.sll_protocol = ETH_P_ALL.to_be();
                address.sll_ifindex = ifindex as i32;
                let bound = libc::bind(
                    fd.as_raw_fd(),
                    (&raw const address).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                if bound < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
                Ok(fd)
            }
        })
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !stopping.load(Ordering::Relaxed) && frames.len() < MAX_PACKETS {
                // SAFETY: reads into a buffer of its length.
                let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            frames
        });
        Ok(Self { stop, thread })
    }

    /// Stops and returns the TCP segments over IPv4 seen (each frame once, as the interface
    /// saw it: both directions).
    pub fn stop(self) -> Vec<Segment> {
        self.stop.store(true, Ordering::Relaxed);
        let frames = self.thread.join().unwrap_or_default();
        frames.iter().filter_map(|frame| tcp_segment(frame)).collect()
    }
}

/// The TCP segment of an Ethernet frame, if it carries one over IPv4.
fn tcp_segment(frame: &[u8]) -> Option<Segment> {
    if frame.len() < 14 + 20 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return None;
    }
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    if ip[9] != 6 || total < header + 20 {
        return None;
    }
    let tcp = &ip[header..total];
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    Some(Segment {
        saddr: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        daddr: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        payload: tcp.get(data_offset..).unwrap_or_default().to_vec(),
    })
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
