//! `cargo xtask bench control-plane`: local mode with many services. Measures the time from
//! operator start to the agent's maps holding everything, the latency from one EndpointSlice
//! change in the directory to the agent's map update, and both processes' memory. The
//! baseline, measured in the same run, is `mesh-operator check` on the same directory: only
//! reading and validating the manifests, nothing streamed or programmed.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, Map, MapData};
use mesh_common::service_lb::{Backend, BackendKey, ServiceEntry, ServiceKey};
use mesh_tests::{
    agent::Agent,
    lab::Lab,
    operator::{Operator, free_port},
};

use super::{Report, Row};
use crate::cargo;

/// Services per manifest file.
const PER_FILE: u32 = 10;
/// Longest wait for one change to reach the maps.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(services: u32, endpoints: u32, changes: u32) -> anyhow::Result<Report> {
    anyhow::ensure!(services > 0 && (1..=250).contains(&endpoints), "1+ services and 1-250 endpoints per service");
    let started = Instant::now();
    super::release_binaries()?;

    let lab = Lab::new(&[&[]]).context("bringing up the lab")?;
    let node = &lab.nodes[0];
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    for file in 0..services.div_ceil(PER_FILE) {
        std::fs::write(manifests.join(format!("svc-{file:05}.yaml")), file_text(file, services, endpoints, None))?;
    }
    println!("==> {services} services x {endpoints} endpoints in {} files", services.div_ceil(PER_FILE));

    // Baseline: read and validate only.
    let t = Instant::now();
    let mut check = lab.system_command(mesh_tests::built_binary("mesh-operator"))?;
    check.arg("check").arg(&manifests);
    let output = lab.run(&mut check, Duration::from_secs(300))?;
    anyhow::ensure!(output.status.success(), "check failed: {}", String::from_utf8_lossy(&output.stdout));
    let check_s = t.elapsed().as_secs_f64();

    // Full sync: operator start -> the agent's maps hold every service and backend.
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let t = Instant::now();
    let (operator_pid, _, operator_log) = Operator::spawn(&lab, &manifests, listen)?;
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "the operator never listened");
        std::thread::sleep(Duration::from_millis(1));
    }
    let agent = Agent::follow(&lab, node, &format!("http://{listen}"), &[]).context("the agent")?;
    let full_sync_s = t.elapsed().as_secs_f64();
    let maps = Maps::open(&node.bpffs)?;
    let programmed = maps.services.keys().count();
    anyhow::ensure!(
        programmed == services as usize,
        "the agent holds {programmed} of {services} services\n{}",
        agent.log()
    );

    // Change latency: one endpoint address of one service's slice changes in its file.
    let mut latencies = Vec::new();
    for i in 0..changes {
        let service = (i * 7919) % services;
        let new_ip = Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250) as u8 + 1);
        let path = manifests.join(format!("svc-{:05}.yaml", service / PER_FILE));
        let text = file_text(service / PER_FILE, services, endpoints, Some((service, new_ip)));
        let key = service_key(service);
        let t = Instant::now();
        std::fs::write(&path, text)?;
        while !maps.has_backend(&key, new_ip) {
            if t.elapsed() > CHANGE_TIMEOUT {
                bail!("change {i} (service {service}) did not reach the maps in {CHANGE_TIMEOUT:?}\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99) = (percentile(0.5), percentile(0.99));
    let (agent_rss, operator_rss) = (rss_mib(agent.pid)?, rss_mib(operator_pid)?);
    // Both logs stay for a look at where the time went (the agent times each update).
    let logs = cargo::workspace_root().join("target/bench");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("control-plane-agent.log"), agent.log())?;
    std::fs::copy(&operator_log, logs.join("control-plane-operator.log"))?;
    let _ = std::fs::copy(format!("/proc/{}/smaps", agent.pid), logs.join("control-plane-agent.smaps"));
    drop(operator_log);
    drop(lab);

    let scale = u64::from(services);
    let row = |case: &str, metric: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>| Row {
        case: case.into(),
        scale,
        metric: metric.into(),
        value,
        unit: unit.into(),
        baseline: baseline.map(|(name, _)| name.into()),
        ratio: baseline.map(|(_, base)| value / base),
    };
    let rows = vec![
        row("check", "full_sync_s", check_s, "s", None),
        row("mesh", "full_sync_s", full_sync_s, "s", Some(("check", check_s))),
        row("mesh", "change_p50_ms", p50, "ms", None),
        row("mesh", "change_p99_ms", p99, "ms", None),
        row("mesh", "agent_rss_mib", agent_rss, "MiB", None),
        row("mesh", "operator_rss_mib", operator_rss, "MiB", None),
    ];
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let notes = vec![
        format!(
            "\n{services} services, {} endpoints, {changes} changes; ran {:.0} s (with the release build)",
            services * endpoints,
            started.elapsed().as_secs_f64()
        ),
        format!(
            "targets: full sync < 2 s: {}; p99 change < 50 ms: {}; agent RSS < 64 MiB: {}",
            verdict(full_sync_s < 2.0),
            verdict(p99 < 50.0),
            verdict(agent_rss < 64.0)
        ),
        "check: `mesh-operator check` on the same files (read + validate, nothing streamed or programmed)".into(),
    ];
    Ok(Report { bench: "control-plane".into(), rows, notes })
}

/// One manifest file: services `file*PER_FILE ..` with their EndpointSlices. `change` moves
/// the first endpoint of one service to another address.
fn file_text(file: u32, services: u32, endpoints: u32, change: Option<(u32, Ipv4Addr)>) -> String {
    let mut text = String::new();
    for service in (file * PER_FILE)..((file + 1) * PER_FILE).min(services) {
        let ip = service_ip(service);
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{service}, namespace: bench}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
        ));
        text.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{service}-a, namespace: bench, labels: {{kubernetes.io/service-name: svc-{service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for e in 0..endpoints {
            let address = match change {
                Some((changed, new_ip)) if changed == service && e == 0 => new_ip,
                _ => endpoint_ip(service * endpoints + e),
            };
            text.push_str(&format!("- {{addresses: [{address}], nodeName: node-0}}\n"));
        }
        text.push_str("---\n");
    }
    text
}

/// Endpoint `n`'s address (only ever a map entry: nothing connects to it).
fn endpoint_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 128 + (n / 62_500) as u8, ((n / 250) % 250) as u8, (n % 250) as u8 + 1)
}

/// Service `n`'s cluster IP, within 10.96.0.0/12.
fn service_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96 + (n / 65_536) as u8, ((n / 256) % 256) as u8, (n % 256) as u8)
}

fn service_key(n: u32) -> ServiceKey {
    ServiceKey::new(service_ip(n).octets(), 80, mesh_common::proto::TCP)
}

/// The agent's pinned service maps, read as the datapath sees them.
struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
}

impl Maps {
    fn open(bpffs: &Path) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = bpffs.join(name);
            Ok(Map::from_map_data(MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?)?)
        };
        Ok(Self {
            services: HashMap::try_from(open(mesh_common::maps::SERVICES)?)?,
            backends: HashMap::try_from(open(mesh_common::maps::BACKENDS)?)?,
        })
    }

    fn has_backend(&self, key: &ServiceKey, ip: Ipv4Addr) -> bool {
        let Ok(entry) = self.services.get(key, 0) else { return false };
        let addr = u32::from_ne_bytes(ip.octets());
        (0..u32::from(entry.count)).any(|slot| {
            self.backends.get(&BackendKey { revision: entry.revision, slot }, 0).is_ok_and(|b| b.addr == addr)
        })
    }
}

/// A process's resident memory in MiB (also the soak's sampler).
pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;
    Ok(kib / 1024.0)
}
