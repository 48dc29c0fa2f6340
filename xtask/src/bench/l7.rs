//! `cargo xtask bench l7`: what the L7 proxy costs the Services with routes, what the mesh
//! costs those without, and how the proxy compares with the reverse proxy a platform team
//! would otherwise run. One node: a client pod and a server pod running two HTTP echo servers
//! (`v1` on 8081, `v2` on 8082). Cases, in one run:
//!
//! - `direct`: the client to v1 itself, no mesh. Measured before and after the others; its
//!   rows are the mean of the two, and every ratio is taken against it.
//! - `nginx`: Debian's nginx as a per-node reverse proxy in the node's namespace (one process,
//!   keep-alive to the backends) with the same routing as `mesh-l7`: a header match to v2,
//!   else 50/50 between v1 and v2 (`map` over `split_clients`). Measured before and after the
//!   mesh's cases (idle while they run); its rows are the mean of the two.
//! - `mesh-l4`: operator and agent running; a Service without routes (balanced at `connect()`,
//!   never through userspace).
//! - `mesh-l7`: a Service with an HTTPRoute (the header match, then two weighted backends), so
//!   every request goes through the agent's L7 proxy.
//!
//! The same four cases for gRPC (`grpc-direct`, `grpc-nginx`, `grpc-mesh-l4`, `grpc-mesh-l7`):
//! the server pod also runs the standard gRPC health service twice (`v1` on 9081, `v2` on
//! 9082), the client makes unary health checks over HTTP/2 (one call at a time per
//! connection), nginx proxies them with `grpc_pass` (h2c), and the mesh's Services say
//! `appProtocol: grpc`, with the same route.
//!
//! Metrics (each protocol): the maximum rate over 4 keep-alive connections and that rate per core
//! of the proxy (its CPU time over the run; the agent for `mesh-l7`, nginx for `nginx`);
//! p50 and p99 latency at a fixed 1,000 requests a second (open loop: latency counted from each
//! request's planned time); the proxy's CPU at that rate (vCPU per 1,000 req/s) and its resident
//! memory, with the agent's growth over its idle size.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use mesh_tests::{
    http_load::HttpLoadReport,
    lab::{Lab, Placement},
    labnet,
    manifests::{self, Mesh, PodManifest},
    metrics,
};

use super::{Report, Row};
use crate::cargo;

const NS: &str = "bench";
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
const V1_PORT: u16 = 8081;
const V2_PORT: u16 = 8082;
const GRPC_V1_PORT: u16 = 9081;
const GRPC_V2_PORT: u16 = 9082;
/// nginx's ports on the node's address (HTTP/1.1, and h2c for gRPC).
const NGINX_PORT: u16 = 18080;
const NGINX_GRPC_PORT: u16 = 18081;
/// The Services without routes, and the routed ones.
const L4_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const L7_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);
const GRPC_L4_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 54);
const GRPC_L7_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 55);
const CONNECTIONS: u32 = 4;
/// The fixed rate the latency and CPU are measured at.
const RATE: f64 = 1000.0;

/// One case's numbers.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    max_req_per_s: f64,
    /// Requests a second per core the proxy used during the maximum-rate run.
    per_core: Option<f64>,
    p50_us: f64,
    p99_us: f64,
    /// The proxy's vCPU at the fixed rate, per 1,000 requests a second.
    vcpu_per_1000: Option<f64>,
    rss_mib: Option<f64>,
}

impl Sample {
    /// The mean of two runs of one case.
    fn mean(&self, other: &Sample) -> Sample {
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        let both = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| mean(a, b));
        Sample {
            max_req_per_s: mean(self.max_req_per_s, other.max_req_per_s),
            per_core: both(self.per_core, other.per_core),
            p50_us: mean(self.p50_us, other.p50_us),
            p99_us: mean(self.p99_us, other.p99_us),
            vcpu_per_1000: both(self.vcpu_per_1000, other.vcpu_per_1000),
            rss_mib: both(self.rss_mib, other.rss_mib),
        }
    }
}

pub fn run(seconds: f64) -> anyhow::Result<Report> {
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let nginx_binary = cargo::workspace_root().join("target/tools/nginx/usr/sbin/nginx");
    anyhow::ensure!(
        nginx_binary.exists(),
        "{} is missing: run xtask/bootstrap.sh (it unpacks Debian's nginx there)",
        nginx_binary.display()
    );
    super::release_binaries()?;
    let lab = Lab::new(&[&["client", "server"]]).context("bringing up the lab")?;
    let server = lab.pod("server");
    labnet::http_echo_on(&lab, server, NS, V1_PORT, SERVER_CPU)?;
    labnet::http_echo_on(&lab, server, NS, V2_PORT, SERVER_CPU)?;
    labnet::grpc_health_on(&lab, server, GRPC_V1_PORT, SERVER_CPU)?;
    labnet::grpc_health_on(&lab, server, GRPC_V2_PORT, SERVER_CPU)?;
    let client = Placement::pod(lab.pod("client"));
    let measure = |label: &str, to: SocketAddr, proxy: Option<u32>| -> anyhow::Result<Sample> {
        let grpc = label.starts_with("grpc");
        ready(&lab, &client, to, grpc)?;
        let s = sample(&lab, &client, to, duration, proxy, grpc)?;
        println!(
            "    {label:<8} {:>8.0} req/s max{}  p50 {:>6.1} us p99 {:>6.1} us at {RATE:.0} req/s{}",
            s.max_req_per_s,
            s.per_core.map(|c| format!(" ({c:.0} per proxy core)")).unwrap_or_default(),
            s.p50_us,
            s.p99_us,
            s.vcpu_per_1000
                .zip(s.rss_mib)
                .map(|(cpu, rss)| format!("  proxy {cpu:.3} vCPU, {rss:.1} MiB"))
                .unwrap_or_default(),
        );
        Ok(s)
    };
    let direct_to = SocketAddr::from((server.ip, V1_PORT));
    let grpc_direct_to = SocketAddr::from((server.ip, GRPC_V1_PORT));
    measure("warm-up", direct_to, None)?;
    let before = measure("direct", direct_to, None)?;
    measure("grpc-warm-up", grpc_direct_to, None)?;
    let grpc_before = measure("grpc-direct", grpc_direct_to, None)?;

    let node = &lab.nodes[0];
    let nginx = start_nginx(&lab, &nginx_binary, node.ip, server.ip)?;
    let nginx_log = || {
        let log = std::fs::read_to_string(lab.dir.join("nginx/error.log")).unwrap_or_default();
        format!("nginx (pid {nginx}, running: {}), its log:\n{log}", Path::new(&format!("/proc/{nginx}")).exists())
    };
    measure("warm-up", SocketAddr::from((node.ip, NGINX_PORT)), Some(nginx))?;
    let nginx_cases = || -> anyhow::Result<(Sample, Sample)> {
        let http = measure("nginx", SocketAddr::from((node.ip, NGINX_PORT)), Some(nginx)).with_context(nginx_log)?;
        let grpc =
            measure("grpc-nginx", SocketAddr::from((node.ip, NGINX_GRPC_PORT)), Some(nginx)).with_context(nginx_log)?;
        Ok((http, grpc))
    };
    // nginx is measured before and after the mesh (idle meanwhile), its rows the mean: the
    // machine's drift over the run weighs on both sides of the per-core comparison alike.
    let (nginx_before, grpc_nginx_before) = nginx_cases()?;

    let mesh = Mesh::start_with_pki(&lab, &objects(&lab), &[])?;
    let identity = format!("spiffe://cluster.local/ns/{NS}/sa/default");
    mesh_tests::meshctl::wait_for_certificates(&lab, &node.name, std::slice::from_ref(&identity));
    let agent = mesh.agents[0].pid;
    measure("warm-up", SocketAddr::from((L7_VIP, 80)), Some(agent))?;
    let l4 = measure("mesh-l4", SocketAddr::from((L4_VIP, 80)), None)?;
    let idle_rss = super::mtls::rss_mib(agent).unwrap_or_default();
    let l7 = measure("mesh-l7", SocketAddr::from((L7_VIP, 80)), Some(agent))?;
    let grpc_l4 = measure("grpc-mesh-l4", SocketAddr::from((GRPC_L4_VIP, 80)), None)?;
    measure("grpc-warm-up", SocketAddr::from((GRPC_L7_VIP, 80)), Some(agent))?;
    let grpc_l7 = measure("grpc-mesh-l7", SocketAddr::from((GRPC_L7_VIP, 80)), Some(agent))?;
    let routed =
        metrics::value(&metrics::agent(&node.netns_path), "mesh_tunnel_outbound_connections_total{result=\"routed\"}");
    anyhow::ensure!(routed > 0.0, "mesh-l7: no connection reached the L7 proxy\n{}", mesh.logs());
    mesh.stop(&lab)?;
    let (nginx_after, grpc_nginx_after) = nginx_cases()?;
    let (nginx_sample, grpc_nginx) = (nginx_before.mean(&nginx_after), grpc_nginx_before.mean(&grpc_nginx_after));
    lab.stop(nginx, Duration::from_secs(5))?;
    let after = measure("direct", direct_to, None)?;
    let grpc_after = measure("grpc-direct", grpc_direct_to, None)?;

    let mut rows = Vec::new();
    rows_of(&mut rows, "direct", &before, &after, [("nginx", nginx_sample), ("mesh-l4", l4), ("mesh-l7", l7)]);
    rows_of(
        &mut rows,
        "grpc-direct",
        &grpc_before,
        &grpc_after,
        [("grpc-nginx", grpc_nginx), ("grpc-mesh-l4", grpc_l4), ("grpc-mesh-l7", grpc_l7)],
    );
    for (case, sample) in [("mesh-l7", &l7), ("grpc-mesh-l7", &grpc_l7)] {
        rows.push(Row {
            case: case.into(),
            scale: RATE as u64,
            metric: "agent_rss_growth_mib".into(),
            value: sample.rss_mib.unwrap_or_default() - idle_rss,
            unit: "MiB".into(),
            baseline: None,
            ratio: None,
        });
    }
    let notes = vec![format!(
        "{seconds} s per run, HTTP/1.1 (and gRPC unary calls over HTTP/2) over {CONNECTIONS} keep-alive connections; direct = mean of a run before and one after; client on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}, proxies unpinned; agent idle RSS {idle_rss:.1} MiB; {routed:.0} connections routed; took {:.0} s",
        started.elapsed().as_secs_f64()
    )];
    Ok(Report { bench: "l7".into(), rows, notes })
}

/// The rows of one protocol's cases, each against `direct`, the mean of `before` and `after`.
fn rows_of(rows: &mut Vec<Row>, direct: &str, before: &Sample, after: &Sample, cases: [(&str, Sample); 3]) {
    let mean = |f: fn(&Sample) -> f64| (f(before) + f(after)) / 2.0;
    let base = Sample {
        max_req_per_s: mean(|s| s.max_req_per_s),
        p50_us: mean(|s| s.p50_us),
        p99_us: mean(|s| s.p99_us),
        ..Sample::default()
    };
    let all = std::iter::once((None, base)).chain(cases.into_iter().map(|(case, s)| (Some(case), s)));
    for (case, s) in all {
        let name = case.unwrap_or(direct).to_owned();
        let row = |metric: &str, scale: u64, value: f64, unit: &str, base: Option<f64>| Row {
            case: name.clone(),
            scale,
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline: case.and(base).map(|_| direct.to_owned()),
            ratio: case.and(base).map(|base| value / base),
        };
        rows.push(row("max_req_per_s", u64::from(CONNECTIONS), s.max_req_per_s, "1/s", Some(base.max_req_per_s)));
        if let Some(per_core) = s.per_core {
            rows.push(row("req_per_s_per_core", u64::from(CONNECTIONS), per_core, "1/s", None));
        }
        rows.push(row("p50_us", RATE as u64, s.p50_us, "us", Some(base.p50_us)));
        rows.push(row("p99_us", RATE as u64, s.p99_us, "us", Some(base.p99_us)));
        if case.is_some() {
            rows.push(row("added_p99_us", RATE as u64, s.p99_us - base.p99_us, "us", None));
        }
        if let Some(cpu) = s.vcpu_per_1000 {
            rows.push(row("proxy_vcpu_per_1k", RATE as u64, cpu, "vCPU", None));
        }
        if let Some(rss) = s.rss_mib {
            rows.push(row("proxy_rss_mib", RATE as u64, rss, "MiB", None));
        }
    }
}

/// The maximum rate, then the fixed rate, to `to`; with `proxy` (a pid), its CPU and memory.
fn sample(
    lab: &Lab,
    client: &Placement,
    to: SocketAddr,
    duration: Duration,
    proxy: Option<u32>,
    grpc: bool,
) -> anyhow::Result<Sample> {
    let cpu = || proxy.and_then(super::process_cpu).unwrap_or_default();
    let checked = |report: HttpLoadReport, what: &str| -> anyhow::Result<HttpLoadReport> {
        let failed = report.errors + report.statuses.iter().filter(|(s, _)| **s != 200).map(|(_, n)| n).sum::<u64>();
        anyhow::ensure!(
            report.requests > 0 && failed == 0,
            "{what} to {to}: {} answered, {failed} failed or not 200, {} connections: {:?} {:?}",
            report.requests,
            report.connections,
            report.statuses,
            report.error_kinds
        );
        Ok(report)
    };
    let cpu_before = cpu();
    let max = checked(
        labnet::http_load(lab, client, to, &[], CONNECTIONS, duration, None, CLIENT_CPU, grpc)?,
        "maximum rate",
    )?;
    let max_cores = cpu().saturating_sub(cpu_before).as_secs_f64() / max.seconds;
    let cpu_before = cpu();
    let fixed = checked(
        labnet::http_load(lab, client, to, &[], CONNECTIONS, duration, Some(RATE), CLIENT_CPU, grpc)?,
        "fixed rate",
    )?;
    let fixed_cores = cpu().saturating_sub(cpu_before).as_secs_f64() / fixed.seconds;
    Ok(Sample {
        max_req_per_s: max.req_per_s,
        per_core: proxy.map(|_| max.req_per_s / max_cores.max(1e-6)),
        p50_us: fixed.p50_us,
        p99_us: fixed.p99_us,
        vcpu_per_1000: proxy.map(|_| fixed_cores * 1000.0 / fixed.req_per_s.max(1e-6)),
        rss_mib: proxy.and_then(super::mtls::rss_mib),
    })
}

/// nginx in `node`'s namespace (one process: no master), its files in the lab's directory.
fn start_nginx(lab: &Lab, binary: &Path, node_ip: Ipv4Addr, server: Ipv4Addr) -> anyhow::Result<u32> {
    let dir: PathBuf = lab.dir.join("nginx");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = dir.display();
    let conf = format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream v1 {{ server {server}:{V1_PORT}; keepalive 16; }}
  upstream v2 {{ server {server}:{V2_PORT}; keepalive 16; }}
  split_clients \"${{request_id}}\" $weighted {{ 50% v1; * v2; }}
  map $http_x_bench $backend {{ canary v2; default $weighted; }}
  server {{
    listen {node_ip}:{NGINX_PORT};
    location / {{
      proxy_pass http://$backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
    }}
  }}
  upstream g1 {{ server {server}:{GRPC_V1_PORT}; keepalive 16; }}
  upstream g2 {{ server {server}:{GRPC_V2_PORT}; keepalive 16; }}
  split_clients \"${{request_id}}\" $grpc_weighted {{ 50% g1; * g2; }}
  map $http_x_bench $grpc_backend {{ canary g2; default $grpc_weighted; }}
  server {{
    listen {node_ip}:{NGINX_GRPC_PORT} http2;
    http2_max_requests 1000000;
    location / {{
      grpc_pass grpc://$grpc_backend;
    }}
  }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let node = &lab.nodes[0];
    let placement = Placement { netns: Some(node.netns_path.clone()), cgroup: lab.system_cgroup() };
    let mut command = lab.placed_command(&placement, binary)?;
    command.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf_path);
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    lab.spawn(&mut command)
        .with_context(|| format!("nginx: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()))
}

/// Waits (bounded, 10 s) until a request (or a gRPC call) from `client` to `to` is answered
/// 200 (gRPC status 0).
fn ready(lab: &Lab, client: &Placement, to: SocketAddr, grpc: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, seen) = if grpc {
            let load =
                labnet::http_load(lab, client, to, &[], 1, Duration::from_millis(100), Some(20.0), CLIENT_CPU, true)?;
            (load.requests > 0 && load.statuses.get(&200) == Some(&load.requests), format!("{load:?}"))
        } else {
            let answer = labnet::http_get(lab, client, to, "/", &[], 1)?;
            (answer.statuses.get(&200) == Some(&1), format!("{answer:?}"))
        };
        if ok {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{to} does not answer 200: {seen}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster's objects: the node, the namespace, the pods, the Services (`l4` without
/// routes; `web` with the route; `web-v1`, `web-v2` its backends) and the route.
fn objects(lab: &Lab) -> String {
    let mut out = manifests::nodes(lab);
    out.push_str(&manifests::namespace(NS));
    for name in ["client", "server"] {
        let labels = [("app", name)];
        out.push_str(&PodManifest { labels: &labels, ..Default::default() }.render(NS, lab.pod(name)));
    }
    let server = lab.pod("server").ip;
    let mut service = |name: &str, vip: Ipv4Addr, port: u16, protocol: &str| {
        out.push_str(&manifests::service(
            NS,
            name,
            &format!(
                "  clusterIP: {vip}\n  ports: [{{name: http, port: 80, targetPort: {port}, appProtocol: {protocol}}}]\n"
            ),
        ));
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {NS}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n- {{addresses: ['{server}'], nodeName: node-0, targetRef: {{kind: Pod, name: server}}, conditions: {{ready: true}}}}\n---\n"
        ));
    };
    service("l4", L4_VIP, V1_PORT, "http");
    service("web", L7_VIP, V1_PORT, "http");
    service("web-v1", Ipv4Addr::new(10, 96, 0, 52), V1_PORT, "http");
    service("web-v2", Ipv4Addr::new(10, 96, 0, 53), V2_PORT, "http");
    service("grpc-l4", GRPC_L4_VIP, GRPC_V1_PORT, "grpc");
    service("grpc", GRPC_L7_VIP, GRPC_V1_PORT, "grpc");
    service("grpc-v1", Ipv4Addr::new(10, 96, 0, 56), GRPC_V1_PORT, "grpc");
    service("grpc-v2", Ipv4Addr::new(10, 96, 0, 57), GRPC_V2_PORT, "grpc");
    for (name, v1, v2) in [("web", "web-v1", "web-v2"), ("grpc", "grpc-v1", "grpc-v2")] {
        out.push_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NS}}}
spec:
  parentRefs: [{{group: '', kind: Service, name: {name}, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-bench, value: canary}}]}}]
    backendRefs: [{{name: {v2}, port: 80}}]
  - backendRefs: [{{name: {v1}, port: 80, weight: 50}}, {{name: {v2}, port: 80, weight: 50}}]
---
"
        ));
    }
    out
}
