//! Two paths measured at the same moments, by one process holding a connection on each and
//! alternating between them (`labnet rr-pair`, `labnet bulk-pair`): round trip by round trip
//! for latency, slice by slice of bulk data for throughput. Whatever else the machine does
//! (other tenants, frequency, a noisy neighbour's cache) weighs on both paths alike, which
//! runs minutes or seconds apart, or at once on the same CPUs, cannot promise: at once, one
//! path's softirq work is done in the other's time.
//!
//! The first connection is made from where the process was started; the process then moves
//! itself into the twin's cgroup and network namespace and makes the second. A socket keeps
//! the cgroup and namespace it was created in, so each connection meets exactly the hooks and
//! programs of its own side.
//!
//! Bulk data goes to a sink (`labnet serve --read-request` answering [`SINK_REQUEST`]) that
//! acknowledges every [`SINK_CHUNK`] bytes it has read with one byte: a slice ends when the
//! receiving application has read everything sent in it, so no slice's bytes are read in the
//! other path's time.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::labnet::RrReport;

/// The request that makes a `serve --read-request` connection a sink.
pub const SINK_REQUEST: &str = "sink";
/// A sink acknowledges each of these many bytes read with one byte.
pub const SINK_CHUNK: usize = 1 << 20;
/// Bulk slices per side per second of the run: each slice is long against the time a slice's
/// last bytes take to be read (a socket buffer, about 2 ms here) and short against the drift.
const SLICES_PER_SECOND: u32 = 10;
/// Round trips or slices before measuring (slow start, cold caches).
const WARM_UP: u32 = 2;
/// The bulk connections' send buffer (the client's) and receive buffer (the sink's), fixed:
/// left to autotuning, each connection settles on buffers of its own, and with them on how
/// much is in flight when a slice ends, which moved one path's rate against the other's by up
/// to 12% between connections of two identical paths. Many times the path's bandwidth-delay
/// product (about 60 KiB at 10 Gbit/s and 50 us), so it does not limit the rate.
const BULK_BUFFER: libc::c_int = 1 << 20;

/// What `labnet bulk-pair` prints per path.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkReport {
    pub bytes: u64,
    pub seconds: f64,
    pub gbps: f64,
    pub slices: u32,
    /// Each slice's own rate, in order: slice k of one path is next to slice k of the other.
    pub slice_gbps: Vec<f64>,
}

/// Where the twin connection is made from, and to.
pub struct Twin<'a> {
    pub to: SocketAddr,
    pub netns: Option<&'a Path>,
    pub cgroup: &'a Path,
}

/// Connects to `to` from here, then moves this process into `twin`'s cgroup and network
/// namespace and connects to `twin.to`; each connection first sends `request` and reads the
/// server's reply line.
fn connect_both(to: SocketAddr, twin: &Twin<'_>, request: &str) -> std::io::Result<[TcpStream; 2]> {
    let first = open(to, request)?;
    OpenOptions::new()
        .write(true)
        .open(twin.cgroup.join("cgroup.procs"))
        .and_then(|mut procs| procs.write_all(b"0"))
        .map_err(|err| std::io::Error::other(format!("joining the twin's cgroup {}: {err}", twin.cgroup.display())))?;
    if let Some(netns) = twin.netns {
        let file = File::open(netns)?;
        // SAFETY: setns on a descriptor this function holds open; the process is single-threaded
        // here, and only this thread's namespace changes.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(std::io::Error::other(format!("entering the twin's netns {}: {err}", netns.display())));
        }
    }
    Ok([first, open(twin.to, request)?])
}

fn open(to: SocketAddr, request: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(to)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    // Byte by byte, so nothing after the line is taken from the stream.
    let mut line = Vec::new();
    BufReader::with_capacity(1, &stream).read_until(b'\n', &mut line)?;
    Ok(stream)
}

/// 1-byte round trips on each connection in turn (A B B A ...) for `duration`: each path's
/// latency over the same moments. The servers echo (`serve --read-request`).
pub fn rr_pair(to: SocketAddr, twin: &Twin<'_>, duration: Duration) -> std::io::Result<[RrReport; 2]> {
    let mut streams = connect_both(to, twin, "rr")?;
    let mut latencies: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut byte = [0u8; 1];
    let mut round_trip = |stream: &mut TcpStream| -> std::io::Result<f64> {
        let sent = Instant::now();
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
        Ok(sent.elapsed().as_nanos() as f64 / 1000.0)
    };
    for _ in 0..WARM_UP {
        for stream in &mut streams {
            round_trip(stream)?;
        }
    }
    let started = Instant::now();
    let mut turn = 0usize;
    while started.elapsed() < duration && latencies[0].len() < 5_000_000 {
        let order = if turn.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for side in order {
            let latency = round_trip(&mut streams[side])?;
            latencies[side].push(latency);
        }
        turn += 1;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    Ok(latencies.map(|l| RrReport::from_latencies(l, elapsed_s)))
}

/// Bulk data on each connection in turn, a slice at a time (A B B A ...), for `duration`:
/// each path's throughput over the same moments. The servers are sinks ([`SINK_REQUEST`]).
pub fn bulk_pair(to: SocketAddr, twin: &Twin<'_>, duration: Duration) -> std::io::Result<[BulkReport; 2]> {
    let mut streams = connect_both(to, twin, SINK_REQUEST)?;
    for stream in &streams {
        set_buffer(stream, libc::SO_SNDBUF)?;
    }
    let slices = ((duration.as_secs_f64() * f64::from(SLICES_PER_SECOND)) as u32).max(2);
    let slice = duration / slices;
    let chunk = vec![0u8; SINK_CHUNK];
    let mut reports = [BulkReport::default(), BulkReport::default()];
    for n in 0..WARM_UP + slices {
        let order = if n.is_multiple_of(2) { [0, 1] } else { [1, 0] };
        for side in order {
            let (bytes, seconds) = send_slice(&mut streams[side], &chunk, slice)?;
            if n >= WARM_UP {
                let report = &mut reports[side];
                report.bytes += bytes;
                report.seconds += seconds;
                report.slices += 1;
                report.slice_gbps.push(bytes as f64 * 8.0 / seconds.max(1e-9) / 1e9);
            }
        }
    }
    for report in &mut reports {
        report.gbps = report.bytes as f64 * 8.0 / report.seconds.max(1e-9) / 1e9;
    }
    Ok(reports)
}

/// Writes whole chunks for `slice`, then waits for the sink's acknowledgement of each: bytes
/// sent and the time until the last was read.
fn send_slice(stream: &mut TcpStream, chunk: &[u8], slice: Duration) -> std::io::Result<(u64, f64)> {
    let started = Instant::now();
    let mut chunks = 0usize;
    while started.elapsed() < slice {
        stream.write_all(chunk)?;
        chunks += 1;
    }
    let mut acks = [0u8; 64];
    let mut acked = 0usize;
    while acked < chunks {
        match stream.read(&mut acks[..(chunks - acked).min(64)])? {
            0 => return Err(std::io::Error::other("the sink closed the connection mid-slice")),
            n => acked += n,
        }
    }
    Ok(((chunks * chunk.len()) as u64, started.elapsed().as_secs_f64()))
}

/// The server's side of [`SINK_REQUEST`]: reads until the peer closes, one byte back for each
/// [`SINK_CHUNK`] bytes read.
pub fn sink(stream: &mut TcpStream) -> std::io::Result<()> {
    set_buffer(stream, libc::SO_RCVBUF)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending = 0usize;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        pending += n;
        let acks = pending / SINK_CHUNK;
        if acks > 0 {
            pending %= SINK_CHUNK;
            stream.write_all(&vec![b'.'; acks])?;
        }
    }
}

/// Sets `option` (`SO_SNDBUF` or `SO_RCVBUF`) of `stream` to [`BULK_BUFFER`].
fn set_buffer(stream: &TcpStream, option: libc::c_int) -> std::io::Result<()> {
    let value = BULK_BUFFER;
    // SAFETY: setsockopt on a socket this stream owns, with a c_int value and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
