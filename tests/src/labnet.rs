//! Driving the `labnet` traffic tool (`src/bin/labnet.rs`) from tests and the demo.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabError, Placement, Pod, Result};

/// What `labnet connect`, `udp` and `hold` print: replies by text, peer addresses as the
/// client saw them (`getpeername`, or a UDP reply's source), failures by error.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub ok: u32,
    pub failed: u32,
    pub replies: BTreeMap<String, u32>,
    #[serde(default)]
    pub peers: BTreeMap<String, u32>,
    pub errors: BTreeMap<String, u32>,
    pub elapsed_ms: u128,
}

impl Summary {
    pub fn record(&mut self, reply: String, peer: SocketAddr) {
        self.ok += 1;
        *self.replies.entry(reply).or_default() += 1;
        *self.peers.entry(peer.to_string()).or_default() += 1;
    }

    pub fn fail(&mut self, err: &std::io::Error) {
        self.failed += 1;
        *self.errors.entry(err.to_string()).or_default() += 1;
    }
}

/// What `labnet load` prints.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub connections: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub conn_per_s: f64,
    /// Connect-to-first-byte latency percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

/// What `labnet rr` prints: request/response round trips on one connection.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    pub round_trips: u64,
    pub elapsed_s: f64,
    /// Round-trip latency percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
}

impl RrReport {
    /// The report of `latencies` (microseconds, any order) measured over `elapsed_s`.
    pub fn from_latencies(mut latencies: Vec<f64>, elapsed_s: f64) -> Self {
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        Self { round_trips: latencies.len() as u64, elapsed_s, p50_us: at(0.5), p99_us: at(0.99) }
    }
}

/// Runs `labnet rr` with `placement` for `duration` against `to` (a `labnet serve`), on `cpu`
/// if given.
pub fn rr(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<RrReport> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["rr", "--to", &to.to_string(), "--duration-ms", &duration.as_millis().to_string()]);
    if let Some(cpu) = cpu {
        command.args(["--cpu", &cpu.to_string()]);
    }
    run_json(lab, &mut command, duration * 3 + Duration::from_secs(10), "labnet rr")
}

/// The two ends of an interleaved measurement: where each client runs, and its server.
pub type PairEnds<'a> = [(&'a Placement, SocketAddr); 2];

/// Runs `labnet rr-pair` ([`crate::interleaved::rr_pair`]) for `duration`: round trips on
/// both paths of `ends` in turn; the two reports in the order of `ends`.
pub fn rr_pair(lab: &Lab, ends: PairEnds<'_>, duration: Duration, cpu: Option<usize>) -> Result<[RrReport; 2]> {
    let mut command = pair_command(lab, "rr-pair", ends, duration, cpu)?;
    run_json(lab, &mut command, duration * 3 + Duration::from_secs(10), "labnet rr-pair")
}

/// Runs `labnet bulk-pair` ([`crate::interleaved::bulk_pair`]) for `duration`: bulk data to
/// both servers of `ends` (each a `serve --read-request`), slice by slice in turn; the two
/// reports in the order of `ends`.
pub fn bulk_pair(
    lab: &Lab,
    ends: PairEnds<'_>,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<[crate::interleaved::BulkReport; 2]> {
    let mut command = pair_command(lab, "bulk-pair", ends, duration, cpu)?;
    run_json(lab, &mut command, duration * 3 + Duration::from_secs(10), "labnet bulk-pair")
}

fn pair_command(
    lab: &Lab,
    verb: &str,
    [(placement, to), (twin, twin_to)]: PairEnds<'_>,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<std::process::Command> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args([verb, "--to", &to.to_string(), "--twin-to", &twin_to.to_string()]);
    command.arg("--twin-cgroup").arg(&twin.cgroup);
    if let Some(netns) = &twin.netns {
        command.arg("--twin-netns").arg(netns);
    }
    command.args(["--duration-ms", &duration.as_millis().to_string()]);
    if let Some(cpu) = cpu {
        command.args(["--cpu", &cpu.to_string()]);
    }
    Ok(command)
}

/// The `labnet` binary.
pub fn binary() -> PathBuf {
    crate::built_binary("labnet")
}

/// Starts `labnet serve` in `pod` on `port`, answering `reply`, and waits until it listens.
pub fn serve(lab: &Lab, pod: &Pod, port: u16, reply: &str) -> Result<u32> {
    spawn_server(lab, pod, port, reply, &[])
}

/// Starts `labnet grpc-health` (the standard gRPC health service) in `pod` on `port`, pinned
/// to `cpu`; returns once it listens.
pub fn grpc_health_on(lab: &Lab, pod: &Pod, port: u16, cpu: usize) -> Result<u32> {
    let ready = lab.dir.join(format!("grpc-health-{}-{port}.ready", pod.name));
    let mut command = lab.pod_command(pod, binary())?;
    command
        .args(["grpc-health", "--port", &port.to_string(), "--cpu", &cpu.to_string()])
        .arg("--ready-file")
        .arg(&ready);
    let pid = lab.spawn(&mut command)?;
    lab.wait_for_file(&ready, pid, Duration::from_secs(10))?;
    Ok(pid)
}

/// Starts `labnet grpc-echo` in `pod` (of `namespace`) on `port`; returns once it listens.
pub fn grpc_echo(lab: &Lab, pod: &Pod, namespace: &str, port: u16) -> Result<u32> {
    spawn_echo(lab, pod, namespace, port, "grpc-echo", &[])
}

/// Runs `labnet grpc-get` in `placement`: `count` gRPC calls with `headers` (`name: value`
/// metadata) to `to`, one after another.
pub fn grpc_get(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    headers: &[&str],
    count: u32,
) -> Result<crate::http_echo::GetReport> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["grpc-get", "--to", &to.to_string(), "--count", &count.to_string()]);
    for header in headers {
        command.args(["--header", header]);
    }
    let bound = Duration::from_secs(5) * count + Duration::from_secs(5);
    run_json(lab, &mut command, bound, "labnet grpc-get")
}

/// Starts `labnet http-echo` in `pod` (of `namespace`) on `port`; returns once it listens.
pub fn http_echo(lab: &Lab, pod: &Pod, namespace: &str, port: u16) -> Result<u32> {
    spawn_echo(lab, pod, namespace, port, "http-echo", &[])
}

/// Starts `labnet http-echo` in `pod` on `port`, pinned to `cpu`; returns once it listens.
pub fn http_echo_on(lab: &Lab, pod: &Pod, namespace: &str, port: u16, cpu: usize) -> Result<u32> {
    spawn_echo(lab, pod, namespace, port, "http-echo", &["--cpu", &cpu.to_string()])
}

/// Starts a failing instance: `labnet http-echo` in `pod` on `port` answering every request
/// with `status`; returns once it listens.
pub fn failing_http_echo(lab: &Lab, pod: &Pod, namespace: &str, port: u16, status: u16) -> Result<u32> {
    spawn_echo(lab, pod, namespace, port, "http-echo", &["--fail-with", &status.to_string()])
}

/// `labnet <which>` (an echo server) in `pod` on `port`, with `extra` arguments.
fn spawn_echo(lab: &Lab, pod: &Pod, namespace: &str, port: u16, which: &str, extra: &[&str]) -> Result<u32> {
    let ready = lab.dir.join(format!("{which}-{}-{port}.ready", pod.name));
    let mut command = lab.pod_command(pod, binary())?;
    command
        .args([which, "--port", &port.to_string(), "--pod", &pod.name, "--namespace", namespace])
        .args(extra)
        .arg("--ready-file")
        .arg(&ready);
    let pid = lab.spawn(&mut command)?;
    lab.wait_for_file(&ready, pid, Duration::from_secs(10))?;
    Ok(pid)
}

/// Runs `labnet http-load` in `placement` (pinned to `cpu`): `connections` keep-alive
/// connections to `to` for `duration`, at `rate` requests a second in all or as fast as
/// answers come.
#[allow(clippy::too_many_arguments)]
pub fn http_load(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    headers: &[&str],
    connections: u32,
    duration: Duration,
    rate: Option<f64>,
    cpu: usize,
    grpc: bool,
) -> Result<crate::http_load::HttpLoadReport> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args([
        "http-load",
        "--to",
        &to.to_string(),
        "--connections",
        &connections.to_string(),
        "--duration-ms",
        &duration.as_millis().to_string(),
        "--cpu",
        &cpu.to_string(),
    ]);
    if let Some(rate) = rate {
        command.args(["--rate", &rate.to_string()]);
    }
    for header in headers {
        command.args(["--header", header]);
    }
    if grpc {
        command.arg("--grpc");
    }
    run_json(lab, &mut command, duration * 2 + Duration::from_secs(15), "labnet http-load")
}

/// Runs `labnet http-get` in `placement`: `count` requests for `path` to `to` with `headers`
/// (`name:value`).
pub fn http_get(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    path: &str,
    headers: &[&str],
    count: u32,
) -> Result<crate::http_echo::GetReport> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["http-get", "--to", &to.to_string(), "--count", &count.to_string(), "--path", path]);
    for header in headers {
        command.args(["--header", header]);
    }
    // Each request has 5 s (the client's default) for its answer.
    let bound = Duration::from_secs(5) * count + Duration::from_secs(5);
    run_json(lab, &mut command, bound, "labnet http-get")
}

/// `labnet serve` in `pod` with `extra` arguments; returns once it listens.
fn spawn_server(lab: &Lab, pod: &Pod, port: u16, reply: &str, extra: &[&str]) -> Result<u32> {
    spawn_server_at(lab, &Placement::pod(pod), &pod.name, port, reply, extra)
}

fn spawn_server_at(
    lab: &Lab,
    placement: &Placement,
    name: &str,
    port: u16,
    reply: &str,
    extra: &[&str],
) -> Result<u32> {
    let ready = lab.dir.join(format!("serve-{name}-{port}.ready"));
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["serve", "--port", &port.to_string(), "--reply", reply]).args(extra).arg("--ready-file").arg(&ready);
    let pid = lab.spawn(&mut command)?;
    lab.wait_for_file(&ready, pid, Duration::from_secs(10))?;
    Ok(pid)
}

/// Runs `labnet connect` with `placement`: `count` connections to `to`, one after another,
/// each given `per_connection` to connect and read the reply.
pub fn connect(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    count: u32,
    per_connection: Duration,
) -> Result<Summary> {
    connect_paced(lab, placement, to, count, Duration::ZERO, per_connection)
}

/// [`connect`] with a pause of `interval` between connections.
pub fn connect_paced(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    count: u32,
    interval: Duration,
    per_connection: Duration,
) -> Result<Summary> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["connect", "--to", &to.to_string(), "--count", &count.to_string()]);
    command.args(["--interval-ms", &interval.as_millis().to_string()]);
    command.args(["--timeout-ms", &per_connection.as_millis().to_string()]);
    let bound = (per_connection * 2 + interval) * count + Duration::from_secs(5);
    run_json(lab, &mut command, bound, "labnet connect")
}

/// Runs `labnet udp` with `placement`: `count` datagrams to `to`, each from a new socket.
pub fn udp(lab: &Lab, placement: &Placement, to: SocketAddr, count: u32, per_request: Duration) -> Result<Summary> {
    udp_sized(lab, placement, to, count, per_request, 4)
}

/// [`udp`] with datagrams of `size` bytes (over the MTU: sent as IP fragments).
pub fn udp_sized(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    count: u32,
    per_request: Duration,
    size: usize,
) -> Result<Summary> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["udp", "--to", &to.to_string(), "--count", &count.to_string(), "--size", &size.to_string()]);
    command.args(["--timeout-ms", &per_request.as_millis().to_string()]);
    let bound = per_request * count.saturating_mul(2) + Duration::from_secs(5);
    run_json(lab, &mut command, bound, "labnet udp")
}

/// Runs `labnet load` with `placement` for `duration` against `targets`, on `cpu` if given.
pub fn load(
    lab: &Lab,
    placement: &Placement,
    targets: &[SocketAddr],
    duration: Duration,
    cpu: Option<usize>,
) -> Result<LoadReport> {
    let mut command = lab.placed_command(placement, binary())?;
    let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
    command.args(["load", "--to", &list.join(","), "--duration-ms", &duration.as_millis().to_string()]);
    if let Some(cpu) = cpu {
        command.args(["--cpu", &cpu.to_string()]);
    }
    run_json(lab, &mut command, duration * 3 + Duration::from_secs(10), "labnet load")
}

/// Starts `labnet serve` in `pod` on `port` answering `reply` after reading a request line,
/// on `cpu` if given.
pub fn serve_requests(lab: &Lab, pod: &Pod, port: u16, reply: &str, cpu: Option<usize>) -> Result<u32> {
    serve_requests_at(lab, &Placement::pod(pod), &pod.name, port, reply, cpu)
}

/// [`serve_requests`] with `placement` (a pod's namespace outside its cgroup, say), named `name`.
pub fn serve_requests_at(
    lab: &Lab,
    placement: &Placement,
    name: &str,
    port: u16,
    reply: &str,
    cpu: Option<usize>,
) -> Result<u32> {
    let cpu = cpu.map(|c| c.to_string());
    let pinned = cpu.as_deref().map(|c| ["--cpu", c]);
    let extra: Vec<&str> = std::iter::once("--read-request").chain(pinned.into_iter().flatten()).collect();
    spawn_server_at(lab, placement, name, port, reply, &extra)
}

fn run_json<T: serde::de::DeserializeOwned>(
    lab: &Lab,
    command: &mut std::process::Command,
    bound: Duration,
    what: &str,
) -> Result<T> {
    let output = lab.run(command, bound)?;
    let invalid = |message: String| LabError::Command { command: what.into(), message };
    if !output.status.success() {
        return Err(invalid(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|err| invalid(format!("{err}: {}", String::from_utf8_lossy(&output.stdout))))
}

/// What `labnet flood` sent.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Flooded {
    pub sent: u64,
    pub seconds: f64,
    pub pps: f64,
}

/// Runs `labnet flood` with `placement` on `cpu`: minimum-size datagrams to `to` for
/// `duration`, as fast as they go.
pub fn flood(lab: &Lab, placement: &Placement, to: SocketAddr, duration: Duration, cpu: usize) -> Result<Flooded> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["flood", "--to", &to.to_string(), "--duration-ms", &duration.as_millis().to_string()]);
    command.args(["--cpu", &cpu.to_string()]);
    run_json(lab, &mut command, duration * 3 + Duration::from_secs(10), "labnet flood")
}

/// What one connection of `labnet together` saw.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Together {
    pub to: String,
    /// The server's reply line, and the peer as the client saw it (`getpeername`).
    pub reply: String,
    pub peer: String,
    /// A line sent once every connection was open came back.
    pub echoed: bool,
    /// Empty when everything went well.
    pub error: String,
}

/// Connections from local port `from_port` to each of `to` at once (see `labnet together`).
pub fn together(
    lab: &Lab,
    placement: &Placement,
    to: &[SocketAddr],
    from_port: u16,
    timeout: Duration,
) -> Result<Vec<Together>> {
    let mut command = lab.placed_command(placement, binary())?;
    command.arg("together");
    for target in to {
        command.args(["--to", &target.to_string()]);
    }
    command.args(["--from-port", &from_port.to_string(), "--timeout-ms", &timeout.as_millis().to_string()]);
    run_json(lab, &mut command, timeout * (2 * to.len() as u32 + 2) + Duration::from_secs(5), "labnet together")
}

/// One connection to `to` from local port `from_port` (see `labnet connect --from-port`).
pub fn connect_from(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    from_port: u16,
    timeout: Duration,
) -> Result<Summary> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["connect", "--to", &to.to_string(), "--from-port", &from_port.to_string()]);
    command.args(["--timeout-ms", &timeout.as_millis().to_string()]);
    run_json(lab, &mut command, timeout * 2 + Duration::from_secs(5), "labnet connect")
}
