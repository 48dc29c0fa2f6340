//! The soak's traffic (`labnet soak`): short TCP connections and UDP requests at a steady
//! rate, and long-lived connections that keep exchanging, every outcome stamped with the wall
//! clock so that the soak can put each failure next to the chaos event around it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

/// One attempt: when it started (milliseconds since the Unix epoch), what it tried and how it
/// ended (`error` empty: it got its reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    /// `tcp`, `udp`, `http`, `upgrade` or `held` (an exchange on a long-lived connection).
    pub kind: String,
    pub to: String,
    pub error: String,
    /// The reply (a backend's name) when it got one.
    pub reply: String,
}

/// What `labnet soak` prints at the end.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    pub attempts: u64,
    pub ok: u64,
    pub failed: u64,
    /// Exchanges on long-lived connections, and those that failed.
    pub held_exchanges: u64,
    pub held_failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Short attempts that got their reply, by kind (`tcp`, `udp`, `http`, `upgrade`).
    #[serde(default)]
    pub ok_by_kind: BTreeMap<String, u64>,
    pub elapsed_s: f64,
}

/// What to send and how fast.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    pub tcp: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    /// HTTP services: each attempt a GET on a new connection (`http_echo::get`), its reply the
    /// echoing pod.
    pub http: Vec<SocketAddr>,
    /// HTTP services: each attempt an HTTP/1.1 upgrade on a new connection
    /// ([`upgrade_once`]), its reply the echoing pod.
    pub upgrade: Vec<SocketAddr>,
    /// Short attempts a second, TCP and UDP together (taken in turn).
    pub rate: u32,
    pub duration: Duration,
    pub timeout: Duration,
    /// Long-lived connections, spread over the TCP targets.
    pub hold: u32,
    /// Every attempt is logged (else only failures).
    pub log_all: bool,
}

/// Workers sending the short attempts: a slow attempt (a timeout) holds one back, the others
/// keep the rate.
const WORKERS: u32 = 16;
/// A long-lived connection exchanges this often.
const HELD_EVERY: Duration = Duration::from_millis(200);

/// Runs `plan`, appending attempts to the JSON-lines file `log`. Bounded: it ends after
/// `plan.duration` plus one timeout.
pub fn soak(plan: &SoakPlan, log: &Path) -> std::io::Result<SoakReport> {
    let targets: Vec<(&str, SocketAddr)> = plan
        .tcp
        .iter()
        .map(|a| ("tcp", *a))
        .chain(plan.udp.iter().map(|a| ("udp", *a)))
        .chain(plan.http.iter().map(|a| ("http", *a)))
        .chain(plan.upgrade.iter().map(|a| ("upgrade", *a)))
        .collect();
    if targets.is_empty() || plan.rate == 0 {
        return Err(std::io::Error::other(
            "nothing to send: give --tcp, --udp, --http or --upgrade and a rate above 0",
        ));
    }
    let log = Arc::new(Mutex::new(std::io::BufWriter::new(std::fs::File::create(log)?)));
    let report = Arc::new(Mutex::new(SoakReport::default()));
    let started = Instant::now();
    let interval = Duration::from_secs(1) / plan.rate;
    let total = (plan.duration.as_secs_f64() * f64::from(plan.rate)) as u64;
    std::thread::scope(|scope| {
        for worker in 0..WORKERS {
            let (log, report, targets) = (&log, &report, &targets);
            scope.spawn(move || {
                let mut n = u64::from(worker);
                while n < total {
                    let due = started + interval * n as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (kind, to) = targets[n as usize % targets.len()];
                    let at_ms = now_ms();
                    let result = match kind {
                        "tcp" => tcp_once(to, plan.timeout).map(|(reply, _)| reply),
                        "udp" => udp_once(to, plan.timeout, 4).map(|(reply, _)| reply),
                        "upgrade" => upgrade_once(to, plan.timeout),
                        _ => http_once(to, plan.timeout),
                    };
                    let attempt = outcome(at_ms, kind, to, result);
                    record(log, report, &attempt, plan.log_all, false);
                    n += u64::from(WORKERS);
                }
            });
        }
        for i in 0..plan.hold {
            let Some(&to) = plan.tcp.get(i as usize % plan.tcp.len().max(1)) else { break };
            let (log, report) = (&log, &report);
            scope.spawn(move || held(to, plan, started, log, report));
        }
    });
    log.lock().expect("log lock").flush()?;
    let mut report = Arc::try_unwrap(report).expect("workers ended").into_inner().expect("report lock");
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// One long-lived connection to `to` for the whole run: an exchange every [`HELD_EVERY`]; a
/// broken connection is one failure, then a new one is opened.
fn held(to: SocketAddr, plan: &SoakPlan, started: Instant, log: &Mutex<Log>, report: &Mutex<SoakReport>) {
    let mut connection: Option<(TcpStream, String)> = None;
    while started.elapsed() < plan.duration {
        let at_ms = now_ms();
        let result = match connection.take() {
            Some((stream, reply)) => exchange(&stream).map(|()| (stream, reply)),
            None => open_held(to, plan.timeout),
        };
        let attempt = match result {
            Ok((stream, reply)) => {
                connection = Some((stream, reply.clone()));
                outcome(at_ms, "held", to, Ok(reply))
            }
            Err(err) => outcome(at_ms, "held", to, Err(err)),
        };
        record(log, report, &attempt, plan.log_all, true);
        std::thread::sleep(HELD_EVERY);
    }
}

fn open_held(to: SocketAddr, timeout: Duration) -> std::io::Result<(TcpStream, String)> {
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    Ok((stream, reply.trim_end().to_owned()))
}

/// One byte out, the same byte back (a `labnet serve` echoes after its reply line).
fn exchange(mut stream: &TcpStream) -> std::io::Result<()> {
    stream.write_all(b"x")?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    if byte != *b"x" {
        return Err(std::io::Error::other(format!("the held connection echoed {byte:?}")));
    }
    Ok(())
}

type Log = std::io::BufWriter<std::fs::File>;

fn record(log: &Mutex<Log>, report: &Mutex<SoakReport>, attempt: &Attempt, log_all: bool, held: bool) {
    let failed = !attempt.error.is_empty();
    {
        let mut report = report.lock().expect("report lock");
        match (held, failed) {
            (true, false) => report.held_exchanges += 1,
            (true, true) => {
                report.held_exchanges += 1;
                report.held_failed += 1;
            }
            (false, false) => {
                report.attempts += 1;
                report.ok += 1;
                *report.ok_by_kind.entry(attempt.kind.clone()).or_default() += 1;
            }
            (false, true) => {
                report.attempts += 1;
                report.failed += 1;
            }
        }
        if failed {
            *report.errors.entry(attempt.error.clone()).or_default() += 1;
        }
    }
    if failed || log_all {
        let mut log = log.lock().expect("log lock");
        let _ = serde_json::to_writer(&mut *log, attempt);
        let _ = log.write_all(b"\n");
    }
}

fn outcome(at_ms: u64, kind: &str, to: SocketAddr, result: std::io::Result<String>) -> Attempt {
    let (reply, error) = match result {
        Ok(reply) => (reply, String::new()),
        Err(err) => (String::new(), err.to_string()),
    };
    Attempt { at_ms, kind: kind.into(), to: to.to_string(), error, reply }
}

/// One GET on a new connection: the echoing pod, or why there was none (a status other than
/// 200 is a failure).
pub fn http_once(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let report = crate::http_echo::get(to, "GET", "/soak", &[], 1, timeout)?;
    if let Some((error, _)) = report.errors.into_iter().next() {
        return Err(std::io::Error::other(error));
    }
    match (report.last_status, report.last_echo) {
        (200, Some(echo)) => Ok(echo.pod),
        (status, _) => Err(std::io::Error::other(format!("answered {status}"))),
    }
}

/// One HTTP/1.1 upgrade on a new connection, as a WebSocket client's handshake: the request
/// must be answered 101 with the protocol asked for, and the switched connection must carry
/// the echo server's pod name on a line and then echo a message. The pod's name, or why not.
pub fn upgrade_once(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    const PROTOCOL: &str = "x-labnet-echo";
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = &stream;
    write!(writer, "GET /soak/upgrade HTTP/1.1\r\nHost: {to}\r\nConnection: upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n")?;
    let mut reader = BufReader::new(&stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut upgrade = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed in the answer's head"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("upgrade")
        {
            upgrade = Some(value.trim().to_owned());
        }
    }
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "101" {
        return Err(std::io::Error::other(format!("answered {code}")));
    }
    if upgrade.as_deref() != Some(PROTOCOL) {
        return Err(std::io::Error::other(format!("switched to {upgrade:?}, asked for {PROTOCOL}")));
    }
    let mut pod = String::new();
    reader.read_line(&mut pod)?;
    if pod.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "switched, then closed without the pod's name",
        ));
    }
    writer.write_all(b"ping\n")?;
    let mut echoed = String::new();
    reader.read_line(&mut echoed)?;
    if echoed != "ping\n" {
        return Err(std::io::Error::other(format!("the switched connection echoed {echoed:?}")));
    }
    Ok(pod.trim_end().to_owned())
}

/// Connect, read the reply line, close: the reply and the peer as the client saw it
/// (`getpeername`).
pub fn tcp_once(to: SocketAddr, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let peer = stream.peer_addr()?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    Ok((reply.trim_end().to_owned(), peer))
}

/// [`tcp_once`] from local port `from_port` (any address): the same client port to several
/// destinations, as one client flow reaching a service through different nodes.
pub fn tcp_once_from(to: SocketAddr, from_port: u16, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let stream = tcp_from(to, from_port, timeout)?;
    let peer = stream.peer_addr()?;
    Ok((read_reply(&stream)?, peer))
}

/// A connection to `to` from local port `from_port` (bound with `SO_REUSEADDR`, so several at
/// once may share the port, to different destinations), with `timeout` on reads and writes.
pub fn tcp_from(to: SocketAddr, from_port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(to4) = to else { return Err(std::io::Error::other("IPv4 only")) };
    // SAFETY: plain socket calls on a descriptor this function owns (handed to TcpStream, which
    // closes it); the sockaddr and timeval are valid for the sizes given.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let tv = libc::timeval { tv_sec: timeout.as_secs() as _, tv_usec: timeout.subsec_micros() as _ };
        let set = |opt, value: *const libc::c_void, len| libc::setsockopt(fd, libc::SOL_SOCKET, opt, value, len);
        set(libc::SO_REUSEADDR, (&raw const one).cast(), size_of::<libc::c_int>() as u32);
        set(libc::SO_SNDTIMEO, (&raw const tv).cast(), size_of::<libc::timeval>() as u32);
        let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
            sin_zero: [0; 8],
        };
        let local = sockaddr(std::net::Ipv4Addr::UNSPECIFIED, from_port);
        let len = size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(*to4.ip(), to4.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stream
    };
    stream.set_read_timeout(Some(timeout))?;
    Ok(stream)
}

/// One line from `stream`, without its end; an error when it closed first.
pub fn read_reply(stream: &TcpStream) -> std::io::Result<String> {
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without a reply"));
    }
    Ok(reply.trim_end().to_owned())
}

/// One datagram of `size` bytes (at least the request) from a new socket, one reply: the
/// reply and its source address.
pub fn udp_once(to: SocketAddr, timeout: Duration, size: usize) -> std::io::Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    let mut datagram = b"ask\n".to_vec();
    datagram.resize(size.max(datagram.len()), b'.');
    socket.send_to(&datagram, to)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim_end().to_owned(), from))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The attempts a `labnet soak` logged.
pub fn read_log(path: &Path) -> std::io::Result<Vec<Attempt>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(std::io::Error::other))
        .collect()
}
