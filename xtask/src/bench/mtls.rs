//! `cargo xtask bench mtls`: what mutual TLS costs the connections that need it, and what the
//! mesh costs the ones that do not. A client pod talks to a server pod on its own node
//! (`/same-node`) and to one on another node (`/cross-node`). Cases, in one run:
//!
//! - `direct`: no mesh. Measured before and after the mesh runs; its rows are the mean of the
//!   two, and every ratio is taken against it.
//! - `plain`: operator, agents with certificates and the tunnel running, no PeerAuthentication
//!   (PERMISSIVE): every connection stays in the kernel.
//! - `mtls`: the namespace STRICT. Cross-node connections go through the agents' HBONE tunnel
//!   (the run fails unless node-0's agent counted them); same-node ones are not tunnelled (no
//!   wire to protect, ARCHITECTURE.md), so that row measures STRICT's TC check only.
//!
//! Metrics: iperf3 throughput with 1 and 4 streams (the scale column), 1-byte request/response
//! latency on one connection (p50, p99), short connections per second (connect, request,
//! reply, close: the handshake's cost), the agents' CPU seconds per GB carried over the iperf
//! runs and their resident memory right after the 4-stream run.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::bail;
use mesh_tests::{
    lab::{Lab, Placement},
    labnet,
    manifests::{self, Mesh, PodManifest},
    metrics,
};

use super::{
    Report, Row,
    policy::{CLIENT_CPU, RR_PORT, SERVER_CPU, iperf_streams},
};

const NS: &str = "bench";
/// Server pod and case suffix.
const PATHS: [(&str, &str); 2] = [("server-local", "/same-node"), ("server-remote", "/cross-node")];
const STREAMS: [u32; 2] = [1, 4];

/// One case's numbers on one path.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    gbps: [f64; 2],
    p50_us: f64,
    p99_us: f64,
    conn_per_s: f64,
    /// The agents' CPU seconds per GB received by iperf (mesh cases only).
    cpu_s_per_gb: Option<f64>,
    /// The largest agent's resident set after the 4-stream run, MiB (mesh cases only).
    rss_mib: Option<f64>,
}

pub fn run(seconds: f64) -> anyhow::Result<Report> {
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let (lab, client) = super::policy::client_and_servers()?;
    let measure = |label: &str, agents: &[u32]| -> anyhow::Result<[Sample; 2]> {
        let mut out = [Sample::default(); 2];
        for (i, (server, _)) in PATHS.iter().enumerate() {
            let ip = lab.pod(server).ip;
            out[i] = sample(&lab, &client, ip, duration, agents)?;
            let s = out[i];
            println!(
                "    {label:<8} {server:<14} {:>6.2} / {:>6.2} Gbit/s (1 / 4 streams)  rr p50 {:>6.1} us p99 {:>6.1} us  {:>7.0} conn/s{}",
                s.gbps[0],
                s.gbps[1],
                s.p50_us,
                s.p99_us,
                s.conn_per_s,
                s.cpu_s_per_gb
                    .zip(s.rss_mib)
                    .map(|(cpu, rss)| format!("  agents {cpu:.2} CPU s/GB, {rss:.1} MiB"))
                    .unwrap_or_default()
            );
        }
        Ok(out)
    };
    measure("warm-up", &[])?;
    let before = measure("direct", &[])?;

    let objects = pods(&lab);
    let mesh = Mesh::start_with_pki(&lab, &objects, &[])?;
    let identity = format!("spiffe://cluster.local/ns/{NS}/sa/default");
    for node in &lab.nodes {
        mesh_tests::meshctl::wait_for_certificates(&lab, &node.name, std::slice::from_ref(&identity));
    }
    let pids: Vec<u32> = mesh.agents.iter().map(|a| a.pid).collect();
    let plain = measure("plain", &pids)?;
    let tunnelled = || {
        metrics::value(
            &metrics::agent(&lab.nodes[0].netns_path),
            "mesh_tunnel_outbound_connections_total{result=\"tunnelled\"}",
        )
    };
    anyhow::ensure!(tunnelled() == 0.0, "plain: connections went through the tunnel\n{}", mesh.logs());

    mesh.write(&format!("{objects}{STRICT}"))?;
    mesh_tests::scenario::wait_for_tunnel(&lab, 0, 1, lab.pod("server-remote").ip)?;
    let mtls = measure("mtls", &pids)?;
    let carried = tunnelled();
    anyhow::ensure!(carried > 0.0, "mtls: node-0's agent carried no connection\n{}", mesh.logs());
    mesh.stop(&lab)?;
    let after = measure("direct", &[])?;

    let mut rows = Vec::new();
    for (i, (_, suffix)) in PATHS.iter().enumerate() {
        let base_case = format!("direct{suffix}");
        let (a, b) = (before[i], after[i]);
        let mean = |f: fn(&Sample) -> f64| (f(&a) + f(&b)) / 2.0;
        let base = Sample {
            gbps: [mean(|s| s.gbps[0]), mean(|s| s.gbps[1])],
            p50_us: mean(|s| s.p50_us),
            p99_us: mean(|s| s.p99_us),
            conn_per_s: mean(|s| s.conn_per_s),
            cpu_s_per_gb: None,
            rss_mib: None,
        };
        for (case, s) in [(None, base), (Some("plain"), plain[i]), (Some("mtls"), mtls[i])] {
            let name = format!("{}{suffix}", case.unwrap_or("direct"));
            let row = |metric: &str, scale: u64, value: f64, unit: &str, base: Option<f64>| Row {
                case: name.clone(),
                scale,
                metric: metric.into(),
                value,
                unit: unit.into(),
                baseline: case.and(base).map(|_| base_case.clone()),
                ratio: case.and(base).map(|base| value / base),
            };
            for (k, streams) in STREAMS.iter().enumerate() {
                rows.push(row("throughput_gbps", u64::from(*streams), s.gbps[k], "Gbit/s", Some(base.gbps[k])));
            }
            rows.push(row("rr_p50_us", 1, s.p50_us, "us", Some(base.p50_us)));
            rows.push(row("rr_p99_us", 1, s.p99_us, "us", Some(base.p99_us)));
            rows.push(row("conn_per_s", 1, s.conn_per_s, "1/s", Some(base.conn_per_s)));
            if let Some(cpu) = s.cpu_s_per_gb {
                rows.push(row("agent_cpu_s_per_gb", 0, cpu, "s/GB", None));
            }
            if let Some(rss) = s.rss_mib {
                rows.push(row("agent_rss_mib", 4, rss, "MiB", None));
            }
        }
    }
    let notes = vec![format!(
        "{seconds} s per measurement; direct = mean of a run before and one after the mesh; same-node mtls is not tunnelled (by design); {carried:.0} connections went through node-0's tunnel; client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}; no ztunnel case (--ztunnel is not built); took {:.0} s",
        started.elapsed().as_secs_f64()
    )];
    Ok(Report { bench: "mtls".into(), rows, notes })
}

/// Every metric of one path, with `agents` (pids) measured when the mesh runs.
fn sample(lab: &Lab, client: &Placement, ip: Ipv4Addr, duration: Duration, agents: &[u32]) -> anyhow::Result<Sample> {
    let cpu = || agents.iter().filter_map(|pid| super::process_cpu(*pid)).sum::<Duration>();
    let cpu_before = cpu();
    let mut gbps = [0.0; 2];
    let mut bytes = 0;
    let mut rss = 0.0f64;
    for (k, streams) in STREAMS.iter().enumerate() {
        let (g, b) = iperf_streams(lab, client, ip, duration, *streams)?;
        gbps[k] = g;
        bytes += b;
        rss = agents.iter().filter_map(|pid| rss_mib(*pid)).fold(rss, f64::max);
    }
    let cpu_used = cpu().saturating_sub(cpu_before).as_secs_f64();
    let to = SocketAddr::from((ip, RR_PORT));
    let rr = labnet::rr(lab, client, to, duration, Some(CLIENT_CPU))?;
    let load = labnet::load(lab, client, &[to], duration, Some(CLIENT_CPU))?;
    if load.failed > 0 {
        bail!("{} of {} short connections to {to} failed: {:?}", load.failed, load.connections, load.errors);
    }
    let mesh = !agents.is_empty();
    Ok(Sample {
        gbps,
        p50_us: rr.p50_us,
        p99_us: rr.p99_us,
        conn_per_s: load.conn_per_s,
        cpu_s_per_gb: mesh.then(|| cpu_used / (bytes as f64 / 1e9)),
        rss_mib: mesh.then_some(rss),
    })
}

/// `VmRSS` of process `pid`, MiB.
pub(super) fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The namespace in STRICT.
const STRICT: &str = "apiVersion: mesh.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: bench}
spec:
  mtls: {mode: STRICT}
---
";

/// The cluster's objects: nodes, the namespace, the three pods.
fn pods(lab: &Lab) -> String {
    let mut out = manifests::nodes(lab);
    out.push_str(&manifests::namespace(NS));
    for name in ["client", "server-local", "server-remote"] {
        let labels = [("app", name)];
        out.push_str(&PodManifest { labels: &labels, ..Default::default() }.render(NS, lab.pod(name)));
    }
    out
}
