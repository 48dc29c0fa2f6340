//! Flow observability: kernel flow events, read from the ring buffer, kept in a ring of
//! recent flows and served over Hubble's Observer API.
//!
//! The hot path never allocates per event: a [`Record`] is the kernel's event plus its wall
//! clock time (the L7 proxy's flows add their request, shared, see [`http`]). Names (pods, services, policies) come from the [`directory::Directory`] when a
//! flow is filtered and encoded, with each endpoint's protobuf encoded once per model change.

pub mod directory;
pub mod encode;
pub mod events;
pub mod filter;
pub mod http;
pub mod observer;
pub mod pb;
pub mod store;
pub mod time;
pub mod view;

use mesh_common::flows::FlowEvent;

/// One flow as the agent keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub event: FlowEvent,
    /// Wall clock time of the event: nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// Its number in the order the agent saw flows, from 1 (set by the store).
    pub seq: u64,
    /// The L7 proxy's flows (`L7_REQUEST`, `L7_RESPONSE`): the request.
    pub http: Option<std::sync::Arc<http::HttpExchange>>,
}

/// Converts the kernel's monotonic event times to wall clock times.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    /// The offset now. Taken again from time to time: the wall clock may be stepped.
    pub fn now() -> Self {
        let read = |clock| {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid clock id and a valid out pointer.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Self { offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC) }
    }

    /// The wall clock time of a `bpf_ktime_get_ns()` reading.
    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// An address and port as a [`FlowEvent`] holds them (network byte order), for the flows the
/// agent makes itself.
pub fn event_addr(address: std::net::SocketAddrV4) -> (u32, u16) {
    (u32::from_ne_bytes(address.ip().octets()), address.port().to_be())
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
