//! `cargo xtask bench policy`: what network policy costs a pod's traffic. A client pod talks
//! to a server pod on its own node and to one on another node: throughput of one TCP stream
//! (`labnet bulk-pair`) and request/response latency (1-byte round trips on one connection,
//! `labnet rr-pair`). Cases:
//!
//! - `none`: no programs at all (no agent).
//! - `programs`: the agents run and the TC programs sit on every pod's interface; no policy.
//! - `rules`: a NetworkPolicy selecting the servers with N ingress rules (N-1 allowing ipBlock
//!   /32s elsewhere, one allowing the client), for N = 10, 1,000 and 10,000.
//!
//! Cross-node rows carry the suffix `/cross-node` and their own baseline.
//!
//! The baseline (`none`) is measured over the same moments as the mesh: the lab holds a second
//! set of pods the mesh does not manage (`bare-client`, `bare-local`, `bare-remote`: in no
//! manifest, so no TC programs on their interfaces, and their processes outside the nodes'
//! cgroups, so no socket hooks), on the same nodes, CPUs and fabric. One client process holds a
//! connection on each path and alternates between them (`mesh_tests::interleaved`): bulk data
//! slice by slice (each slice ends when the server has read it all) for throughput, 1-byte round
//! trips one by one for latency. A case's ratio (and added p99) is the median over its [`RUNS`]
//! pairs. Before any mesh runs, both sets are measured without the mesh (an A/A check that the
//! two sets of pods are alike; its ratio is in the notes).
//!
//! Earlier forms of this bench took the baseline from other minutes, then from iperf3 runs of
//! both paths at once (each path's softirq work then runs partly in the other's time) and
//! latency runs A B B A seconds apart: ratios scattered by +-8% and added p99 by +-10 us between
//! runs of the same code, more than the programs cost (consecutive baseline runs of one bench
//! ranged 14.1-19.6 Gbit/s and p99 83-196 us). The TC programs' time per packet is counted by
//! the kernel in a one-second iperf3 run of its own after each case's last pair. With
//! `MESH_BENCH_PERF=DIR` each throughput measurement is also profiled system-wide into `DIR`
//! ([`profile`]).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh_tests::{
    lab::{Lab, Placement},
    labnet::{self, RrReport},
    manifests::{self, Mesh, PodManifest},
};

use super::{Report, Row, median};

const NS: &str = "bench";
pub(super) const RR_PORT: u16 = 8080;
pub(super) const IPERF_PORT: u16 = 5201;
pub(super) const CLIENT_CPU: usize = 0;
pub(super) const SERVER_CPU: usize = 1;
/// Pairs (mesh run, bare run) per mesh case; the median of each metric is reported. A p99
/// over a few seconds on this shared machine moves by 5-10 us from run to run, so one pair
/// decides nothing.
const RUNS: usize = 5;
/// The two paths: server pod, its bare twin, and the case suffix.
const PATHS: [(&str, &str, &str); 2] =
    [("server-local", "bare-local", ""), ("server-remote", "bare-remote", "/cross-node")];

/// One measurement of one path.
#[derive(Debug, Clone, Copy)]
struct Sample {
    gbps: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn run(scales: &[u32], seconds: f64) -> anyhow::Result<Report> {
    anyhow::ensure!(scales.iter().all(|s| (1..=50_000).contains(s)), "rule counts must be 1 to 50000");
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let (lab, client) = client_and_servers()?;
    let bare = lab.bare_placement(lab.pod("bare-client"));
    // One measurement of both paths from the mesh's pods and from the bare ones, over the same
    // moments (`mesh_tests::interleaved`): [mesh's pods, bare pods], and per path the mesh's
    // rate over the bare one's in each pair of neighbouring bulk slices.
    let measure_pair = |label: &str| -> anyhow::Result<Measured> {
        let mut out = [[Sample { gbps: 0.0, p50_us: 0.0, p99_us: 0.0 }; 2]; 2];
        let mut slice_ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for (i, (server, twin, _)) in PATHS.iter().enumerate() {
            let at = |pod: &str| SocketAddr::from((lab.pod(pod).ip, RR_PORT));
            let ends = [(&client, at(server)), (&bare, at(twin))];
            let profile = profile(&format!("{label}-{server}"), duration)?;
            let bulk = labnet::bulk_pair(&lab, ends, duration, Some(CLIENT_CPU))?;
            if let Some(mut perf) = profile {
                perf.wait()?;
            }
            slice_ratios[i] = bulk[0].slice_gbps.iter().zip(&bulk[1].slice_gbps).map(|(m, b)| m / b).collect();
            let rr: [RrReport; 2] = labnet::rr_pair(&lab, ends, duration, Some(CLIENT_CPU))?;
            for side in 0..2 {
                out[side][i] = Sample { gbps: bulk[side].gbps, p50_us: rr[side].p50_us, p99_us: rr[side].p99_us };
                let name = if side == 0 { label } else { "none (bare)" };
                let to = ends[side].1;
                println!(
                    "    {name:<16} {to:<18} {:>7.2} Gbit/s   rr p50 {:>6.1} us  p99 {:>6.1} us  ({} round trips)",
                    bulk[side].gbps, rr[side].p50_us, rr[side].p99_us, rr[side].round_trips
                );
            }
        }
        Ok(Measured { samples: out, slice_ratios })
    };
    // Warm up, then the A/A check: both sets of pods with no mesh at all.
    measure_pair("warm-up")?;
    let alike = measure_pair("no mesh")?;

    let objects = pods(&lab);
    let agent_args = ["--policy-max", "200000", "--identities-max", "200000"];
    let cases: Vec<(String, Option<u32>)> = std::iter::once(("programs".to_owned(), None))
        .chain(scales.iter().map(|&n| (format!("rules {n}"), Some(n))))
        .collect();
    let mut none = Vec::new();
    let mut results = Vec::new();
    for (label, rules) in &cases {
        let text = match rules {
            Some(n) => format!("{objects}{}", policy(*n)),
            None => objects.clone(),
        };
        let t = Instant::now();
        let mesh = Mesh::start(&lab, &text, &agent_args)?;
        if let Some(n) = rules {
            wait_for_entries(&lab, *n as usize)?;
        }
        println!("    {label}: mesh up, policy applied in {:.2} s", t.elapsed().as_secs_f64());
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let (cpu_before, wakeups_before, t) = (mesh_cpu(&mesh), mesh_wakeups(&mesh), Instant::now());
            let Measured { samples: [sample, base], slice_ratios } = measure_pair(label)?;
            // What else the mesh cost while it was measured: its processes' CPU (agents and
            // operator) and how often their threads woke up.
            let elapsed = t.elapsed().as_secs_f64();
            println!(
                "    {label}: agents and operator used {:.2}% of a CPU, {:.0} context switches/s",
                mesh_cpu(&mesh).saturating_sub(cpu_before).as_secs_f64() / elapsed * 100.0,
                mesh_wakeups(&mesh).saturating_sub(wakeups_before) as f64 / elapsed
            );
            none.push(base);
            runs.push(Paired { sample, base, slice_ratios });
        }
        let ns_per_packet = tc_cost(&lab, &client, label)?;
        mesh.stop(&lab)?;
        results.push((label.clone(), *rules, runs, ns_per_packet));
    }

    let mut rows = Vec::new();
    for (i, (_, _, suffix)) in PATHS.iter().enumerate() {
        let baseline_case = format!("none{suffix}");
        let base = median_sample(none.iter().map(|s| s[i]));
        for (metric, value, unit) in [
            ("throughput_gbps", base.gbps, "Gbit/s"),
            ("rr_p50_us", base.p50_us, "us"),
            ("rr_p99_us", base.p99_us, "us"),
        ] {
            rows.push(Row {
                case: baseline_case.clone(),
                scale: 0,
                metric: metric.into(),
                value,
                unit: unit.into(),
                baseline: None,
                ratio: None,
            });
        }
        for (_, rules, runs, _) in &results {
            let case = format!("{}{suffix}", if rules.is_some() { "rules" } else { "programs" });
            let scale = u64::from(rules.unwrap_or(0));
            let sample = median_sample(runs.iter().map(|r| r.sample[i]));
            let row = |metric: &str, value: f64, unit: &str, ratio: Option<f64>| Row {
                case: case.clone(),
                scale,
                metric: metric.into(),
                value,
                unit: unit.into(),
                baseline: Some(baseline_case.clone()),
                ratio,
            };
            // Throughput: the median over every pair of neighbouring slices of the case's runs (a
            // slice the machine stalled is an outlier, not a tenth of a mean). Latency: ratios
            // and differences per pair, then the median over pairs.
            rows.push(row(
                "throughput_gbps",
                sample.gbps,
                "Gbit/s",
                Some(median(runs.iter().flat_map(|r| r.slice_ratios[i].iter().copied()))),
            ));
            rows.push(row(
                "rr_p50_us",
                sample.p50_us,
                "us",
                Some(median(runs.iter().map(|r| r.sample[i].p50_us / r.base[i].p50_us))),
            ));
            rows.push(row(
                "rr_p99_us",
                sample.p99_us,
                "us",
                Some(median(runs.iter().map(|r| r.sample[i].p99_us / r.base[i].p99_us))),
            ));
            rows.push(row(
                "rr_p99_added_us",
                median(runs.iter().map(|r| r.sample[i].p99_us - r.base[i].p99_us)),
                "us",
                None,
            ));
        }
    }
    let mut notes = vec![format!(
        "{seconds} s per measurement; every mesh run paired with the bare pods (the mesh's twins, unmanaged) over the same moments by one client alternating between the two paths (bulk data in 100 ms slices to a sink acknowledging what it read, 1-byte round trips one by one); a case's throughput ratio is the median over the neighbouring slices of its {RUNS} pairs, its latency ratios and added p99 the median over the pairs; client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}; took {:.0} s",
        started.elapsed().as_secs_f64()
    )];
    for (i, (_, _, suffix)) in PATHS.iter().enumerate() {
        let (pods, bare) = (alike.samples[0][i], alike.samples[1][i]);
        notes.push(format!(
            "A/A{suffix}, no mesh: the mesh's pods against the bare ones: throughput {:.3}x (median over slices), p99 {:+.1} us",
            median(alike.slice_ratios[i].iter().copied()),
            pods.p99_us - bare.p99_us
        ));
    }
    notes.push(format!(
        "TC program time per packet (kernel BPF statistics, both directions, all pods; median of runs): {}",
        results.iter().map(|(case, _, _, ns)| format!("{case} {ns:.0} ns")).collect::<Vec<_>>().join("; ")
    ));
    for (_, _, suffix) in PATHS {
        let value = |case: &str, scale: u64, metric: &str| {
            rows.iter().find(|r| r.case == case && r.scale == scale && r.metric == metric).map(|r| r.value)
        };
        let mut line = format!("added p99 latency{suffix} (median over pairs of mesh - bare):");
        for &n in scales {
            if let Some(added) = value(&format!("rules{suffix}"), u64::from(n), "rr_p99_added_us") {
                let _ = write!(line, " {n} rules {added:+.1} us;");
            }
        }
        notes.push(line);
    }
    Ok(Report { bench: "policy".into(), rows, notes })
}

/// What bench policy and bench mtls run on: the release binaries, and a lab of a `client` pod
/// with `server-local` on its node and `server-remote` on another, both serving ([`serve`]),
/// and their bare twins (`bare-client`, `bare-local`, `bare-remote`), which no manifest names
/// and whose processes run outside the nodes' cgroups: the same path with nothing of the mesh.
pub(super) fn client_and_servers() -> anyhow::Result<(Lab, Placement)> {
    anyhow::ensure!(
        std::process::Command::new("iperf3").arg("--version").output().is_ok(),
        "iperf3 is missing: run xtask/bootstrap.sh (it installs iperf3)"
    );
    super::release_binaries()?;
    let lab = Lab::new(&[&["client", "server-local", "bare-client", "bare-local"], &["server-remote", "bare-remote"]])
        .context("bringing up the lab")?;
    for server in ["server-local", "server-remote"] {
        serve(&lab, &Placement::pod(lab.pod(server)), server)?;
    }
    for twin in ["bare-local", "bare-remote"] {
        serve(&lab, &lab.bare_placement(lab.pod(twin)), twin)?;
    }
    let client = Placement::pod(lab.pod("client"));
    Ok((lab, client))
}

/// In `placement` (server `name`), on [`SERVER_CPU`]: a `labnet serve --read-request` on
/// `RR_PORT` (request/response and short connections) and an iperf3 server on [`IPERF_PORT`].
fn serve(lab: &Lab, placement: &Placement, name: &str) -> anyhow::Result<()> {
    labnet::serve_requests_at(lab, placement, name, RR_PORT, name, Some(SERVER_CPU)).map(drop)?;
    let mut iperf = lab.placed_command(placement, "iperf3")?;
    iperf.args(["-s", "-p", &IPERF_PORT.to_string(), "-A", &SERVER_CPU.to_string()]);
    iperf.stdout(std::process::Stdio::null());
    lab.spawn(&mut iperf)?;
    Ok(())
}

/// One measurement of both paths: [mesh's pods, bare pods] per path, and per path the mesh's
/// slice rates over the bare ones'.
struct Measured {
    samples: [[Sample; 2]; 2],
    slice_ratios: [Vec<f64>; 2],
}

/// A mesh run and the bare run paired with it.
struct Paired {
    sample: [Sample; 2],
    base: [Sample; 2],
    slice_ratios: [Vec<f64>; 2],
}

/// Each metric's median over `samples`.
fn median_sample(samples: impl Iterator<Item = Sample>) -> Sample {
    let samples: Vec<Sample> = samples.collect();
    let of = |f: fn(&Sample) -> f64| median(samples.iter().map(f));
    Sample { gbps: of(|s| s.gbps), p50_us: of(|s| s.p50_us), p99_us: of(|s| s.p99_us) }
}

/// Total run time and runs of every loaded pod TC program (`mesh_from_pod`, `mesh_to_pod`).
fn tc_runs() -> (Duration, u64) {
    [mesh_common::programs::FROM_POD, mesh_common::programs::TO_POD]
        .map(super::program_runs)
        .into_iter()
        .fold((Duration::ZERO, 0), |(time, runs), (t, r)| (time + t, runs + r))
}

/// CPU time the mesh's processes (every agent and the operator) have used so far.
fn mesh_cpu(mesh: &Mesh) -> Duration {
    mesh.agents.iter().map(|a| a.pid).chain([mesh.operator.pid]).filter_map(super::process_cpu).sum()
}

/// Context switches of the mesh's processes so far (see [`super::process_wakeups`]).
fn mesh_wakeups(mesh: &Mesh) -> u64 {
    mesh.agents.iter().map(|a| a.pid).chain([mesh.operator.pid]).map(super::process_wakeups).sum()
}

/// Nanoseconds per run between two [`tc_runs`] readings.
/// The TC programs' packet rate and time per packet over one second of iperf to the local
/// server, counted by the kernel in a run of its own: counting reads the clock twice around
/// every program run, which the measured runs should not pay (the mesh does not run with it).
fn tc_cost(lab: &Lab, client: &Placement, label: &str) -> anyhow::Result<f64> {
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
    let (before, t) = (tc_runs(), Instant::now());
    iperf(lab, client, lab.pod(PATHS[0].0).ip, Duration::from_secs(1))?;
    let (after, elapsed) = (tc_runs(), t.elapsed().as_secs_f64());
    drop(stats);
    let ns = ns_per_run(before, after);
    println!(
        "    {label}: {:.0} TC runs/s at {ns:.0} ns a packet (counted apart)",
        after.1.saturating_sub(before.1) as f64 / elapsed
    );
    Ok(ns)
}

fn ns_per_run(before: (Duration, u64), after: (Duration, u64)) -> f64 {
    let runs = after.1.saturating_sub(before.1).max(1);
    after.0.saturating_sub(before.0).as_nanos() as f64 / runs as f64
}

/// With `MESH_BENCH_PERF=DIR`: a system-wide CPU profile (`perf record -a -g`) over the
/// next `duration`, written to `DIR/<name>-<n>.data`, to compare where the CPU goes with
/// and without the mesh (`perf report -i FILE --no-children --sort sym`).
fn profile(name: &str, duration: Duration) -> anyhow::Result<Option<std::process::Child>> {
    let Some(dir) = std::env::var_os("MESH_BENCH_PERF") else { return Ok(None) };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    let stem = name.replace([' ', '/'], "_");
    let file = (0..).map(|n| dir.join(format!("{stem}-{n}.data"))).find(|f| !f.exists()).expect("a free name");
    let child = std::process::Command::new("perf")
        .args(["record", "-a", "-g", "-q", "-o"])
        .arg(&file)
        .args(["--", "sleep", &format!("{}", duration.as_secs_f64())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("MESH_BENCH_PERF is set but perf cannot be started: install Debian's linux-perf, or unset it")?;
    Ok(Some(child))
}

/// iperf3 from `client` to `ip` for `duration`: received Gbit/s.
fn iperf(lab: &Lab, client: &Placement, ip: std::net::Ipv4Addr, duration: Duration) -> anyhow::Result<f64> {
    iperf_streams(lab, client, ip, duration, 1).map(|(gbps, _)| gbps)
}

/// iperf3 from `client` to `ip` (a server on [`IPERF_PORT`]) with `streams` parallel
/// streams for `duration`: received Gbit/s and bytes.
pub(super) fn iperf_streams(
    lab: &Lab,
    client: &Placement,
    ip: std::net::Ipv4Addr,
    duration: Duration,
    streams: u32,
) -> anyhow::Result<(f64, u64)> {
    let mut command = lab.placed_command(client, "iperf3")?;
    command.args(["-c", &ip.to_string(), "-p", &IPERF_PORT.to_string(), "-J", "-A", &CLIENT_CPU.to_string()]);
    command.args(["-t", &format!("{}", duration.as_secs_f64()), "-P", &streams.to_string()]);
    let output = lab.run(&mut command, duration * 3 + Duration::from_secs(15))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&output.stderr)))?;
    let received = &report["end"]["sum_received"];
    let (Some(bps), Some(bytes)) = (received["bits_per_second"].as_f64(), received["bytes"].as_u64()) else {
        bail!("iperf3 failed: {}", report["error"]);
    };
    Ok((bps / 1e9, bytes))
}

/// The cluster's objects: nodes, the namespace, the three pods.
fn pods(lab: &Lab) -> String {
    let mut out = manifests::nodes(lab);
    out.push_str(&manifests::namespace(NS));
    for (name, app) in [("client", "client"), ("server-local", "server"), ("server-remote", "server")] {
        let labels = [("app", app)];
        out.push_str(&PodManifest { labels: &labels, ..Default::default() }.render(NS, lab.pod(name)));
    }
    out
}

/// A NetworkPolicy selecting the servers with `n` ingress rules: `n - 1` from ipBlock /32s in
/// 172.16.0.0/12 (not the lab's), and the client's.
fn policy(n: u32) -> String {
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: many, namespace: {NS}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n"
    );
    for i in 0..n.saturating_sub(1) {
        let _ = writeln!(
            out,
            "    - from: [{{ipBlock: {{cidr: 172.{}.{}.{}/32}}}}]",
            16 + (i >> 16),
            (i >> 8) & 0xff,
            i & 0xff
        );
    }
    out.push_str("    - from: [{podSelector: {matchLabels: {app: client}}}]\n---\n");
    out
}

/// Waits until both nodes' policy maps hold at least `n` entries (the servers' rules).
fn wait_for_entries(lab: &Lab, n: usize) -> anyhow::Result<()> {
    use aya::maps::{MapData, lpm_trie::LpmTrie};
    use mesh_common::policy::{PolicyEntry, PolicyKey};
    use mesh_tests::scenario::pinned_map;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut counts = Vec::new();
        for node in &lab.nodes {
            let path = node.bpffs.join(mesh_common::maps::POLICY);
            let count =
                pinned_map::<LpmTrie<MapData, PolicyKey, PolicyEntry>>(&path).map_or(0, |trie| trie.keys().count());
            counts.push(count);
        }
        if counts.iter().all(|c| *c >= n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("policy of {n} rules not applied within 120 s (entries per node: {counts:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
