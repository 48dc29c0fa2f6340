//! `labnet`: the lab's traffic tool, run inside pods by the tests, the demo and the benchmarks.
//!
//! - `labnet serve --port 8080 --reply backend-a [--read-request] [--ready-file F]`: on TCP,
//!   answers every connection with the reply (`{peer}` in it replaced by the client's address
//!   as the server sees it) and a newline (after reading one request line
//!   with `--read-request`), then echoes what it receives until the peer closes; on UDP (same
//!   port), answers every datagram with the reply.
//! - `labnet connect --to 10.96.0.10:80 --count 100 [--interval-ms N] [--timeout-ms 2000] [--from-port P]`:
//!   opens the connections one after another, reads each reply, prints a JSON summary:
//!   replies by text, peers by address (`getpeername`), failures by error.
//! - `labnet udp --to 10.96.0.10:53 --count 20`: one datagram per new socket, summary as above
//!   with each reply's source address as its peer.
//! - `labnet hold --to ... --hold-ms 3000`: one connection, kept open: reads the reply, waits,
//!   then checks that the connection still echoes, and records `getpeername` then. Prints a
//!   summary.
//! - `labnet load --to A[,B...] --duration-ms 2000`: short connections (connect, request,
//!   reply, close) one after another, to a random address of the list, for the duration;
//!   prints connections/s and connect-to-first-byte percentiles as JSON.
//! - `labnet rr --to A --duration-ms 2000`: one connection to a `serve --read-request`; after
//!   its reply, 1-byte requests echoed back, one at a time, for the duration; prints round
//!   trips and latency percentiles as JSON.
//! - `labnet rr-pair --to A --twin-to B --twin-cgroup C [--twin-netns N] --duration-ms 3000`
//!   and `labnet bulk-pair ...`: latency or throughput of two paths over the same moments, one
//!   connection on each, in turn (`mesh_tests::interleaved`); a `serve --read-request` server
//!   answers `sink` by reading and acknowledging bulk data. Prints both reports as JSON.
//! - `labnet probe --to A[,B...] --protocol tcp|udp [--timeout-ms 1000]`: one connection (or
//!   datagram) to every address at once; prints a JSON object of address -> reply (null when
//!   none came).
//! - `labnet soak --tcp A[,B] --udp C --rate 1000 --duration-ms N --hold 4 --log F`: the
//!   soak's traffic (`mesh_tests::traffic`): short attempts at a steady rate and long-lived
//!   connections, every failure (or, with `--log-all`, every attempt) logged with its time.
//! - `labnet http-echo --port 8081 --pod web-a --namespace demo`: HTTP/1.1 that answers with
//!   what it received (`mesh_tests::http_echo`); `/status/N` answers N; `--fail-with 500`
//!   answers every request 500 (a failing instance).
//! - `labnet http-get --to 10.96.0.30:80 --count 100 [--path /x] [--method GET] [--header
//!   name:value]...`: requests one after another over keep-alive; prints a JSON summary
//!   (statuses, answering pods, errors, the last answer).
//! - `labnet http-load --to A --connections 4 --duration-ms 3000 [--rate 1000] [--header
//!   name:value]... [--cpu N]`: HTTP/1.1 over keep-alive connections, as fast as answers come
//!   or at a fixed rate (`mesh_tests::http_load`); prints requests/s and latency percentiles.
//!   `--grpc`: gRPC unary health checks over HTTP/2 instead.
//! - `labnet flood --to 172.18.0.2:9 --duration-ms 2000 [--cpu N]`: UDP datagrams of 18 bytes
//!   (64-byte frames) to TO as fast as `sendmmsg` takes them, for the duration; prints the
//!   count and rate as JSON (the north-south benchmark's packet generator).
//! - `labnet grpc-health --port 9081 [--cpu N]`: the standard gRPC health service.
//! - `labnet grpc-echo --port 7070 --pod echo-v1 --namespace x`: gRPC answering every call,
//!   what it received in its `x-echo` header; `labnet grpc-get --to A --count N [--header
//!   name:value]...`: calls to it, reported as `http-get` reports requests.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use mesh_tests::{
    interleaved,
    labnet::{LoadReport, Summary},
    traffic::{tcp_once as one, udp_once as udp_one},
};

#[derive(Parser)]
#[command(about = "The lab's traffic tool: a reply server and its clients")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer HTTP requests on PORT with what arrived, as pod POD of NAMESPACE.
    HttpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
        /// Answer every request with this status (a failing instance).
        #[arg(long)]
        fail_with: Option<u16>,
    },
    /// Send COUNT HTTP requests to TO over keep-alive connections.
    /// HTTP/1.1 load over keep-alive connections (the l7 benchmark's).
    HttpLoad {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        /// `name:value`, repeatable.
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 4)]
        connections: u32,
        #[arg(long, default_value_t = 3000)]
        duration_ms: u64,
        /// Requests a second in all (open loop); without it, as fast as the answers come.
        #[arg(long)]
        rate: Option<f64>,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
        /// gRPC unary calls of the health service over HTTP/2 instead of HTTP/1.1 GETs.
        #[arg(long)]
        grpc: bool,
    },
    /// gRPC that answers every unary call, telling what it received (`mesh_tests::grpc_echo`).
    GrpcEcho {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// gRPC unary calls one after another over one connection; prints what `http-get` prints.
    GrpcGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// `name:value` metadata, repeatable.
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// The standard gRPC health service (SERVING) on a port.
    GrpcHealth {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    HttpGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// `name:value`, repeatable.
        #[arg(long)]
        header: Vec<String>,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Answer every TCP connection and UDP datagram on PORT with REPLY.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        reply: String,
        /// Read one request line before replying.
        #[arg(long)]
        read_request: bool,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
        /// Created once the sockets listen.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Open COUNT connections to TO one after another; print a JSON summary.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Pause between connections.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Per connection: connect, then read the reply.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Connect from this local port (every connection: one after another, each closed).
        #[arg(long)]
        from_port: Option<u16>,
    },
    /// Connections from one local port to each TO at once, in order (each read its reply and
    /// stays open), then a line through each in turn, echoed back by `serve` while the others
    /// are open; print a JSON list of what each saw.
    Together {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        from_port: u16,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Send COUNT datagrams to TO, each from a new socket; print a JSON summary.
    Udp {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Bytes of each datagram (more than the MTU: sent in IP fragments).
        #[arg(long, default_value_t = 4)]
        size: usize,
    },
    /// Keep one connection to TO open for HOLD_MS, then check it still works.
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        hold_ms: u64,
        /// Created once the reply was read (the connection is established).
        #[arg(long)]
        established_file: Option<PathBuf>,
    },
    /// Minimum-size UDP datagrams to TO as fast as they go, for DURATION_MS; print the rate.
    Flood {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration_ms: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Request/response on one connection to TO (a `labnet serve`) for DURATION_MS; print a
    /// JSON latency report.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        duration_ms: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// 1-byte round trips on a connection to TO (a `serve --read-request`) and on one to
    /// TWIN_TO made from TWIN_CGROUP and TWIN_NETNS, in turn, for DURATION_MS; print both
    /// latency reports as JSON.
    RrPair {
        #[command(flatten)]
        pair: PairArgs,
    },
    /// Bulk data to TO and to TWIN_TO (sinks of `serve --read-request`), slice by slice in
    /// turn, for DURATION_MS; print both throughput reports as JSON.
    BulkPair {
        #[command(flatten)]
        pair: PairArgs,
    },
    /// One connection (TCP) or datagram (UDP) to every address of TO at once; print a JSON
    /// object of address -> reply or null.
    Probe {
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        #[arg(long, value_parser = ["tcp", "udp"])]
        protocol: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// The soak's traffic: short TCP connections and UDP requests at RATE a second, and HOLD
    /// long-lived connections, for DURATION_MS; attempts go to LOG, a JSON report to stdout.
    Soak {
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<SocketAddr>,
        #[arg(long, value_delimiter = ',')]
        udp: Vec<SocketAddr>,
        #[arg(long, value_delimiter = ',')]
        http: Vec<SocketAddr>,
        /// HTTP/1.1 upgrades (WebSocket's handshake) to echo servers, then an echo.
        #[arg(long, value_delimiter = ',')]
        upgrade: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        hold: u32,
        #[arg(long)]
        log: PathBuf,
        #[arg(long)]
        log_all: bool,
    },
    /// Short connections to random addresses of TO for DURATION_MS; print a JSON load report.
    Load {
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        duration_ms: u64,
        /// Stop after this many connections even if time is left.
        #[arg(long, default_value_t = 1_000_000)]
        max: u64,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
}

/// The two paths of `rr-pair` and `bulk-pair` (`mesh_tests::interleaved`).
#[derive(clap::Args)]
struct PairArgs {
    #[arg(long)]
    to: SocketAddr,
    #[arg(long)]
    twin_to: SocketAddr,
    /// The cgroup the twin connection is made from.
    #[arg(long)]
    twin_cgroup: PathBuf,
    /// The network namespace the twin connection is made from (default: this one).
    #[arg(long)]
    twin_netns: Option<PathBuf>,
    #[arg(long)]
    duration_ms: u64,
    /// Run on this CPU only.
    #[arg(long)]
    cpu: Option<usize>,
}

impl PairArgs {
    fn twin(&self) -> interleaved::Twin<'_> {
        interleaved::Twin { to: self.twin_to, netns: self.twin_netns.as_deref(), cgroup: &self.twin_cgroup }
    }
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::HttpEcho { port, pod, namespace, ready_file, cpu, fail_with } => pin(cpu)
            .and_then(|()| mesh_tests::http_echo::serve(port, &pod, &namespace, ready_file.as_deref(), fail_with)),
        Cmd::GrpcEcho { port, pod, namespace, ready_file } => {
            mesh_tests::grpc_echo::serve(port, &pod, &namespace, ready_file.as_deref())
        }
        Cmd::GrpcGet { to, count, header, timeout_ms } => {
            mesh_tests::grpc_echo::call(to, &header_pairs(&header), count, Duration::from_millis(timeout_ms))
                .and_then(|r| print(&r))
        }
        Cmd::GrpcHealth { port, ready_file, cpu } => {
            pin(cpu).and_then(|()| mesh_tests::http_load::serve_grpc_health(port, ready_file.as_deref()))
        }
        Cmd::HttpLoad { to, path, header, connections, duration_ms, rate, cpu, grpc } => {
            let headers = header_pairs(&header);
            let pace = rate.map_or(mesh_tests::http_load::Pace::Max, mesh_tests::http_load::Pace::Rate);
            pin(cpu)
                .and_then(|()| {
                    mesh_tests::http_load::run(
                        to,
                        &path,
                        &headers,
                        connections,
                        Duration::from_millis(duration_ms),
                        pace,
                        grpc,
                    )
                })
                .and_then(|r| print(&r))
        }
        Cmd::HttpGet { to, count, path, method, header, timeout_ms } => {
            let headers = header_pairs(&header);
            mesh_tests::http_echo::get(to, &method, &path, &headers, count, Duration::from_millis(timeout_ms))
                .and_then(|r| print(&r))
        }
        Cmd::Serve { port, reply, read_request, ready_file, cpu } => {
            pin(cpu).and_then(|()| serve(port, &reply, read_request, ready_file))
        }
        Cmd::Connect { to, count, interval_ms, timeout_ms, from_port } => {
            print(&connect(to, count, Duration::from_millis(interval_ms), Duration::from_millis(timeout_ms), from_port))
        }
        Cmd::Together { to, from_port, timeout_ms } => {
            print(&together(&to, from_port, Duration::from_millis(timeout_ms)))
        }
        Cmd::Udp { to, count, timeout_ms, size } => print(&udp(to, count, Duration::from_millis(timeout_ms), size)),
        Cmd::Hold { to, hold_ms, established_file } => {
            print(&hold(to, Duration::from_millis(hold_ms), established_file))
        }
        Cmd::Flood { to, duration_ms, cpu } => {
            pin(cpu).and_then(|()| flood(to, Duration::from_millis(duration_ms))).and_then(|r| print(&r))
        }
        Cmd::Rr { to, duration_ms, cpu } => {
            pin(cpu).and_then(|()| rr(to, Duration::from_millis(duration_ms))).and_then(|r| print(&r))
        }
        Cmd::RrPair { pair } => pin(pair.cpu)
            .and_then(|()| interleaved::rr_pair(pair.to, &pair.twin(), Duration::from_millis(pair.duration_ms)))
            .and_then(|r| print(&r)),
        Cmd::BulkPair { pair } => pin(pair.cpu)
            .and_then(|()| interleaved::bulk_pair(pair.to, &pair.twin(), Duration::from_millis(pair.duration_ms)))
            .and_then(|r| print(&r)),
        Cmd::Probe { to, protocol, timeout_ms } => {
            print(&probe(&to, protocol == "tcp", Duration::from_millis(timeout_ms)))
        }
        Cmd::Soak { tcp, udp, http, upgrade, rate, duration_ms, timeout_ms, hold, log, log_all } => {
            let plan = mesh_tests::traffic::SoakPlan {
                tcp,
                udp,
                http,
                upgrade,
                rate,
                duration: Duration::from_millis(duration_ms),
                timeout: Duration::from_millis(timeout_ms),
                hold,
                log_all,
            };
            mesh_tests::traffic::soak(&plan, &log).and_then(|r| print(&r))
        }
        Cmd::Load { to, duration_ms, max, cpu } => {
            pin(cpu).and_then(|()| load(&to, Duration::from_millis(duration_ms), max)).and_then(|r| print(&r))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("labnet: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print(value: &impl serde::Serialize) -> std::io::Result<()> {
    println!("{}", serde_json::to_string(value).map_err(std::io::Error::other)?);
    Ok(())
}

fn serve(port: u16, reply: &str, read_request: bool, ready_file: Option<PathBuf>) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    if let Some(file) = ready_file {
        std::fs::write(file, b"listening\n")?;
    }
    let line = format!("{reply}\n");
    let udp_reply = line.clone();
    std::thread::spawn(move || {
        // Room for the largest datagram: one that arrives at all arrived whole.
        let mut buf = vec![0u8; 65_536];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(udp_reply.as_bytes(), from);
        }
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if read_request {
            // The load client's mode: one short connection at a time, answered inline, as
            // lean as a server gets (no thread per connection in the measured path).
            answer(stream, &line, true);
            continue;
        }
        let line = line.clone();
        // A thread per connection: held connections must not stop the next ones.
        std::thread::spawn(move || answer(stream, &line, false));
    }
    Ok(())
}

/// The parts of a `serve` reply replaced by the client's address, and by its port.
const PEER: &str = "{peer}";
const PEER_PORT: &str = "{peer_port}";

fn answer(mut stream: TcpStream, line: &str, read_request: bool) {
    let _ = stream.set_nodelay(true);
    let mut sink = false;
    if read_request {
        let mut request = [0u8; 256];
        match stream.read(&mut request) {
            Ok(n) if n > 0 => sink = request[..n].starts_with(interleaved::SINK_REQUEST.as_bytes()),
            _ => return,
        }
    }
    let line = match stream.peer_addr() {
        Ok(peer) if line.contains(PEER) || line.contains(PEER_PORT) => std::borrow::Cow::Owned(
            line.replace(PEER_PORT, &peer.port().to_string()).replace(PEER, &peer.ip().to_string()),
        ),
        _ => std::borrow::Cow::Borrowed(line),
    };
    if stream.write_all(line.as_bytes()).is_err() {
        return;
    }
    if sink {
        let _ = interleaved::sink(&mut stream);
        return;
    }
    // Echo until the peer closes (`hold` checks an established connection this way).
    let mut buf = [0u8; 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

fn connect(to: SocketAddr, count: u32, interval: Duration, timeout: Duration, from_port: Option<u16>) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            std::thread::sleep(interval);
        }
        let result = match from_port {
            Some(port) => mesh_tests::traffic::tcp_once_from(to, port, timeout),
            None => one(to, timeout),
        };
        match result {
            Ok((reply, peer)) => summary.record(reply, peer),
            Err(err) => summary.fail(&err),
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis();
    summary
}

fn together(targets: &[SocketAddr], from_port: u16, timeout: Duration) -> Vec<mesh_tests::labnet::Together> {
    let mut seen: Vec<mesh_tests::labnet::Together> = Vec::new();
    let mut streams = Vec::new();
    for &to in targets {
        let opened = mesh_tests::traffic::tcp_from(to, from_port, timeout).and_then(|stream| {
            let peer = stream.peer_addr()?;
            Ok((mesh_tests::traffic::read_reply(&stream)?, peer, stream))
        });
        let mut entry = mesh_tests::labnet::Together { to: to.to_string(), ..Default::default() };
        match opened {
            Ok((reply, peer, stream)) => {
                entry.reply = reply;
                entry.peer = peer.to_string();
                streams.push(Some(stream));
            }
            Err(err) => {
                entry.error = err.to_string();
                streams.push(None);
            }
        }
        seen.push(entry);
    }
    // With every connection open: each still carries its own traffic.
    for (entry, stream) in seen.iter_mut().zip(&mut streams) {
        let Some(stream) = stream else { continue };
        let echoed = stream.write_all(b"again\n").and_then(|()| mesh_tests::traffic::read_reply(stream));
        match echoed {
            Ok(line) => entry.echoed = line == "again",
            Err(err) => entry.error = format!("after the others opened: {err}"),
        }
    }
    seen
}

fn rr(to: SocketAddr, duration: Duration) -> std::io::Result<mesh_tests::labnet::RrReport> {
    let mut stream = TcpStream::connect(to)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A `serve --read-request` server answers a first request with its reply line, then echoes.
    stream.write_all(b"rr\n")?;
    let mut greeting = String::new();
    BufReader::new(&stream).read_line(&mut greeting)?;
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    while started.elapsed() < duration && latencies.len() < 10_000_000 {
        let sent = Instant::now();
        stream.write_all(b"x")?;
        stream.read_exact(&mut byte)?;
        latencies.push(sent.elapsed().as_nanos() as f64 / 1000.0);
    }
    Ok(mesh_tests::labnet::RrReport::from_latencies(latencies, started.elapsed().as_secs_f64()))
}

fn probe(targets: &[SocketAddr], tcp: bool, timeout: Duration) -> std::collections::BTreeMap<String, Option<String>> {
    let handles: Vec<_> = targets
        .iter()
        .map(|&to| {
            std::thread::spawn(move || {
                let reply = if tcp {
                    one(to, timeout).map(|(reply, _)| reply)
                } else {
                    udp_one(to, timeout, 4).map(|(r, _)| r)
                };
                (to.to_string(), reply.ok())
            })
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// One datagram from a new socket, and its reply.
fn udp(to: SocketAddr, count: u32, timeout: Duration, size: usize) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    for _ in 0..count {
        match udp_one(to, timeout, size) {
            Ok((reply, from)) => summary.record(reply, from),
            Err(err) => summary.fail(&err),
        }
    }
    summary.elapsed_ms = started.elapsed().as_millis();
    summary
}

fn hold(to: SocketAddr, hold: Duration, established_file: Option<PathBuf>) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let result = (|| {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(hold + Duration::from_secs(5)))?;
        let mut reader = BufReader::new(&stream);
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        if let Some(file) = &established_file {
            std::fs::write(file, reply.as_bytes())?;
        }
        std::thread::sleep(hold);
        (&stream).write_all(b"still-there\n")?;
        let mut echo = String::new();
        reader.read_line(&mut echo)?;
        if echo != "still-there\n" {
            return Err(std::io::Error::other(format!("the held connection echoed {echo:?}")));
        }
        // Asked at the end: what the peer looks like after the hold (an agent restart, say).
        let peer = stream.peer_addr()?;
        Ok((reply.trim_end().to_owned(), peer))
    })();
    match result {
        Ok((reply, peer)) => summary.record(reply, peer),
        Err(err) => summary.fail(&err),
    }
    summary.elapsed_ms = started.elapsed().as_millis();
    summary
}

fn load(targets: &[SocketAddr], duration: Duration, max: u64) -> std::io::Result<LoadReport> {
    let mut latencies_ns: Vec<u64> = Vec::new();
    let mut failed = 0u64;
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    let started = Instant::now();
    let mut state = started.elapsed().as_nanos() as u64 | 1;
    while started.elapsed() < duration && (latencies_ns.len() as u64) < max {
        // xorshift: a cheap uniform choice of target, no syscall per connection.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let to = targets[(state % targets.len() as u64) as usize];
        let begin = Instant::now();
        let result = (|| {
            let mut stream = TcpStream::connect(to)?;
            stream.set_nodelay(true)?;
            stream.write_all(b"GET\n")?;
            let mut first = [0u8; 64];
            let n = stream.read(&mut first)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a reply"));
            }
            let latency = begin.elapsed();
            abort(&stream);
            Ok(latency)
        })();
        match result {
            Ok(latency) => latencies_ns.push(latency.as_nanos() as u64),
            Err(err) => {
                failed += 1;
                *errors.entry(err.to_string()).or_default() += 1;
                if failed > 100 {
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    latencies_ns.sort_unstable();
    let percentile = |p: f64| {
        if latencies_ns.is_empty() {
            return 0.0;
        }
        let index = ((latencies_ns.len() as f64 * p).ceil() as usize).clamp(1, latencies_ns.len()) - 1;
        latencies_ns[index] as f64 / 1_000.0
    };
    Ok(LoadReport {
        connections: latencies_ns.len() as u64,
        failed,
        errors,
        elapsed_s: elapsed.as_secs_f64(),
        conn_per_s: latencies_ns.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
    })
}

/// Closes with a reset (SO_LINGER 0): no TIME_WAIT left behind, so a long run does not run
/// out of ephemeral ports, and conntrack (in the kube-proxy cases) forgets the flow at once.
fn abort(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a `linger` of the size given.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Pins the process to `cpu` (benchmarks keep client and servers apart, so runs compare).
/// `name:value` arguments as pairs.
fn header_pairs(headers: &[String]) -> Vec<(String, String)> {
    headers.iter().filter_map(|h| h.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))).collect()
}

/// What `flood` sent.
#[derive(serde::Serialize)]
struct Flooded {
    sent: u64,
    seconds: f64,
    pps: f64,
}

/// Datagrams of 18 bytes (the smallest Ethernet frame) to `to`, 64 to a `sendmmsg` call, for
/// `duration` (checked every call). Errors from ICMP answers are ignored: only what was sent
/// counts.
fn flood(to: SocketAddr, duration: Duration) -> std::io::Result<Flooded> {
    use std::os::fd::AsRawFd as _;
    const BATCH: usize = 64;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    let mut payload = [0u8; 18];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: zeroed mmsghdr is valid (no name, no control); each points at the one iovec.
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for m in &mut messages {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let (started, mut sent) = (Instant::now(), 0u64);
    while started.elapsed() < duration {
        // SAFETY: `messages` holds BATCH valid headers pointing at `payload`, alive here.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Flooded { sent, seconds, pps: sent as f64 / seconds })
}

fn pin(cpu: Option<usize>) -> std::io::Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("cpu {cpu} is out of range")));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; `cpu` is within it (checked above).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
