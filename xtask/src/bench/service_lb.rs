//! `cargo xtask bench service-lb`: short TCP connections (connect, small request, reply,
//! close) from a client pod to a service with 10 backend pods, while the service table holds
//! 1, 1,000 and 10,000 services of 10 backends each. Cases, all in one run:
//!
//! - `direct`: the client connects to the backend pod IPs itself; no programs, no rules.
//! - `clusterip`: this mesh: the operator (local mode) and the agent program the services;
//!   the client connects to the ClusterIP and `connect()` is answered by a backend.
//! - `iptables`: kube-proxy's iptables mode, reproduced rule for rule for the same services
//!   in the node's namespace (KUBE-SERVICES -> KUBE-SVC-* with `statistic --mode random` ->
//!   KUBE-SEP-* DNAT, masquerade marks, filter chains), loaded with iptables-legacy-restore.
//! - `nftables`: kube-proxy's nftables mode likewise (service-ips verdict map, `numgen
//!   random` vmap to endpoint chains that DNAT), loaded with `nft -f`.
//!
//! The measured service sits in the middle of kube-proxy's service list (kube-proxy writes
//! services in no particular order, so a connection passes half the list on average).
//! `direct` runs between every other case and its median is the baseline of the absolute
//! rows. The target against direct is judged on pairs measured at once: with the agent up, the
//! client runs to the ClusterIP while a bare twin of it (`bare-client`, outside the node's
//! cgroup, so no socket hook sees it) runs to the pod IPs, both pinned to the same CPU and
//! served by the same backends (`clusterip-at-once`, `direct-at-once`; the ratio is the median
//! of the pairs' ratios). Runs minutes apart measured the machine's drift: one run's `direct`
//! runs ranged 9,539-11,785 connections/s while the hooks cost 0.6 us of a 90 us connection.
//! What each program costs a connection is counted in a clusterip run of its own, not counted
//! in the results.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet::{self, LoadReport},
    operator::{Operator, free_port},
};

use super::{Report, Row, median};

const BACKENDS: usize = 10;
const BACKEND_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const NS: &str = "bench";
/// The pod CIDR kube-proxy is told (`--cluster-cidr`), for its masquerade rules.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The client runs on one CPU, every server on another: the same placement for every case,
/// so that scheduling (migrations between the two cores) does not vary between runs.
const CLIENT_CPU: usize = 0;
const SERVER_CPU: usize = 1;
/// clusterip runs per scale, each followed by a direct run.
const ROUNDS: usize = 7;
const SERVER_NAMES: [&str; BACKENDS] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];

pub fn run(scales: &[u32], seconds: f64) -> anyhow::Result<Report> {
    anyhow::ensure!(scales.iter().all(|s| (1..=60_000).contains(s)), "scales must be 1 to 60000 services");
    let started = Instant::now();
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "nft"] {
        anyhow::ensure!(
            find_tool(tool).is_some(),
            "{tool} is missing: run xtask/bootstrap.sh (it installs iptables and nftables)"
        );
    }
    super::release_binaries()?;
    let duration = Duration::from_secs_f64(seconds);

    let pods: Vec<&str> = ["client", "bare-client"].into_iter().chain(SERVER_NAMES).collect();
    let lab = Lab::new(&[&pods]).context("bringing up the lab")?;
    for name in SERVER_NAMES {
        labnet::serve_requests(&lab, lab.pod(name), BACKEND_PORT, name, Some(SERVER_CPU))?;
    }
    let backends: Vec<SocketAddr> =
        SERVER_NAMES.iter().map(|n| SocketAddr::from((lab.pod(n).ip, BACKEND_PORT))).collect();
    let client = Placement::pod(lab.pod("client"));
    let node_ns = Placement { netns: Some(lab.nodes[0].netns_path.clone()), cgroup: lab.system_cgroup() };
    let bare = lab.bare_placement(lab.pod("bare-client"));
    let load_from = |from: &Placement, to: &[SocketAddr]| -> anyhow::Result<LoadReport> {
        let report = labnet::load(&lab, from, to, duration, Some(CLIENT_CPU))?;
        anyhow::ensure!(report.failed == 0, "connections failed: {:?}", report.errors);
        let what = if to.len() == 1 { format!("{}", to[0]) } else { "pod IPs".to_owned() };
        println!(
            "      run to {what:<16} {:>9.0} conn/s  p50 {:>7.1} us  p99 {:>7.1} us",
            report.conn_per_s, report.p50_us, report.p99_us
        );
        Ok(report)
    };
    let load = |to: &[SocketAddr]| load_from(&client, to);
    // The client to `vip` and its bare twin to the pod IPs, at once.
    let at_once = |vip: &[SocketAddr]| -> anyhow::Result<(LoadReport, LoadReport)> {
        std::thread::scope(|scope| {
            let mesh = scope.spawn(|| load_from(&client, vip));
            let bare = scope.spawn(|| load_from(&bare, &backends));
            Ok((mesh.join().expect("a load thread")?, bare.join().expect("a load thread")?))
        })
    };
    // Warm up (page cache, ARP, the servers' first accepts).
    load(&backends)?;

    let mut rows = Vec::new();
    for &scale in scales {
        let services = Services::new(scale, &backends);
        let vip = [SocketAddr::from((services.target_ip(), SERVICE_PORT))];
        println!("==> {scale} services x {BACKENDS} backends");
        let mut direct = vec![load(&backends)?];

        // clusterip: operator + agent hold the table; ROUNDS runs, with direct runs between
        // them. Each case runs only its load balancer: the manifests hold services and
        // endpoints, no Pod objects, so the agent attaches its socket hooks and no per-pod TC
        // programs (their cost is `bench policy`'s `programs` case).
        let manifests = lab.dir.join(format!("manifests-{scale}"));
        std::fs::create_dir_all(&manifests)?;
        services.write_manifests(&manifests)?;
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let operator = Operator::start(&lab, &manifests, listen)?;
        let mut clusterip = Vec::new();
        let mut pairs = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let agent = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &[])?;
            wait_for_services(&lab.nodes[0].bpffs, scale, &agent)?;
            println!("    agent programmed {scale} services in {:.2} s", t.elapsed().as_secs_f64());
            clusterip.push(load(&vip)?);
            pairs.push(at_once(&vip)?);
            anyhow::ensure!(lab.stop(agent.pid, Duration::from_secs(30))?.success(), "agent stop\n{}", agent.log());
            direct.push(load(&backends)?);
        }
        // What the socket hooks (and sockops, when attached) cost a connection, from the
        // kernel's count of each program's runs and run time, in a run of its own: counting
        // reads the clock twice around every program run, which the measured runs should not
        // pay (the mesh does not run with it).
        {
            let agent = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &[])?;
            wait_for_services(&lab.nodes[0].bpffs, scale, &agent)?;
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
            let before = Cost::read(agent.pid);
            let report = load(&vip)?;
            Cost::read(agent.pid).since(&before).print(report.connections);
            drop(stats);
            anyhow::ensure!(lab.stop(agent.pid, Duration::from_secs(30))?.success(), "agent stop\n{}", agent.log());
        }
        lab.stop(operator.pid, Duration::from_secs(30))?;

        // kube-proxy's iptables mode, with iptables' nft backend (what kube-proxy's image and
        // Debian use by default) and with the legacy backend.
        let rules = lab.dir.join(format!("iptables-{scale}.rules"));
        let flush = lab.dir.join("iptables-flush.rules");
        std::fs::write(&rules, services.iptables())?;
        std::fs::write(&flush, "*nat\n-F\n-X\nCOMMIT\n*filter\n-F\n-X\nCOMMIT\n")?;
        let mut iptables = Vec::new();
        for restore in ["iptables-nft-restore", "iptables-legacy-restore"] {
            let t = Instant::now();
            run_in(&lab, &node_ns, restore, &[path_str(&rules)])?;
            println!("    {restore} took {:.2} s", t.elapsed().as_secs_f64());
            iptables.push(load(&vip)?);
            run_in(&lab, &node_ns, restore, &[path_str(&flush)])?;
            direct.push(load(&backends)?);
        }

        // kube-proxy's nftables mode.
        let script = lab.dir.join(format!("nftables-{scale}.nft"));
        std::fs::write(&script, services.nftables())?;
        let t = Instant::now();
        run_in(&lab, &node_ns, "nft", &["-f", path_str(&script)])?;
        println!("    nft -f took {:.2} s", t.elapsed().as_secs_f64());
        let nftables = load(&vip)?;
        run_in(&lab, &node_ns, "nft", &["delete", "table", "ip", "kube-proxy"])?;
        direct.push(load(&backends)?);

        let base = median_report(&direct);
        let cases = [
            ("direct", &base),
            ("clusterip", &median_report(&clusterip)),
            ("iptables", &iptables[0]),
            ("iptables-legacy", &iptables[1]),
            ("nftables", &nftables),
        ];
        for (case, report) in cases {
            println!(
                "    {case:<16} {:>9.0} conn/s  p50 {:>7.1} us  p99 {:>7.1} us",
                report.conn_per_s, report.p50_us, report.p99_us
            );
            rows.extend(rows_for(case, u64::from(scale), report, &base, (case == "clusterip").then_some(&iptables[0])));
        }
        let ratio = median(pairs.iter().map(|(m, b)| m.conn_per_s / b.conn_per_s));
        let (mesh, bare) =
            (median(pairs.iter().map(|(m, _)| m.conn_per_s)), median(pairs.iter().map(|(_, b)| b.conn_per_s)));
        println!(
            "    at once: clusterip {mesh:.0} conn/s, direct {bare:.0} conn/s: {ratio:.3}x (median of {ROUNDS} pairs)"
        );
        for (case, value, baseline, ratio) in [
            ("direct-at-once", bare, None, None),
            ("clusterip-at-once", mesh, Some("direct-at-once".to_owned()), Some(ratio)),
        ] {
            rows.push(Row {
                case: case.into(),
                scale: u64::from(scale),
                metric: "conn_per_s".into(),
                value,
                unit: "1/s".into(),
                baseline,
                ratio,
            });
        }
    }
    drop(lab);

    let ratio = |case: &str, scale: u32, baseline: &str| {
        rows.iter()
            .find(|r: &&Row| {
                r.case == case
                    && r.scale == u64::from(scale)
                    && r.metric == "conn_per_s"
                    && r.baseline.as_deref() == Some(baseline)
            })
            .and_then(|r| r.ratio)
            .unwrap_or(f64::NAN)
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut notes = vec![format!(
        "\nran {:.0} s (with the release build); {seconds} s per load run; direct = median of its {} runs between the others; clusterip = median of {ROUNDS} runs; at once: {ROUNDS} pairs of the client to the ClusterIP and its bare twin to the pod IPs at the same time on the same CPU (each about half the rate), the ratio the median of the pairs",
        started.elapsed().as_secs_f64(),
        ROUNDS + 4,
    )];
    for &scale in scales {
        notes.push(format!(
            "scale {scale}: clusterip/direct conn/s at once {:.3} (target >= 0.97: {}), apart {:.3}; clusterip/iptables {:.2}{}",
            ratio("clusterip-at-once", scale, "direct-at-once"),
            verdict(ratio("clusterip-at-once", scale, "direct-at-once") >= 0.97),
            ratio("clusterip", scale, "direct"),
            ratio("clusterip", scale, "iptables"),
            if scale == 10_000 {
                format!(" (target >= 2: {})", verdict(ratio("clusterip", scale, "iptables") >= 2.0))
            } else {
                String::new()
            }
        ));
    }
    notes.push(
        "iptables: kube-proxy's iptables rules through iptables-nft (the default backend of kube-proxy's image and of Debian); iptables-legacy: the same rules through the legacy backend; nftables: kube-proxy's nftables mode; all in the node's network namespace".into(),
    );
    Ok(Report { bench: "service-lb".into(), rows, notes })
}

/// What the mesh spent on the connections of one run: the kernel's count of each of its
/// programs' run time, and the agent's CPU time (reading flow events, mostly).
struct Cost {
    programs: Vec<(&'static str, Duration, u64)>,
    agent_cpu: Duration,
}

impl Cost {
    fn read(agent: u32) -> Self {
        let names =
            [mesh_common::programs::CONNECT4, mesh_common::programs::GETPEERNAME4, mesh_common::programs::SOCKOPS];
        let programs = names
            .iter()
            .map(|&name| {
                let (time, runs) = super::program_runs(name);
                (name, time, runs)
            })
            .collect();
        Self { programs, agent_cpu: super::process_cpu(agent).unwrap_or_default() }
    }

    fn since(&self, before: &Self) -> Self {
        let programs = self
            .programs
            .iter()
            .zip(&before.programs)
            .map(|(&(n, t, c), &(_, t0, c0))| (n, t.saturating_sub(t0), c.saturating_sub(c0)))
            .collect();
        Self { programs, agent_cpu: self.agent_cpu.saturating_sub(before.agent_cpu) }
    }

    fn print(&self, connections: u64) {
        let per_conn = |d: Duration| d.as_nanos() as f64 / connections.max(1) as f64;
        let mut line = String::from("      per connection:");
        for (name, time, runs) in &self.programs {
            let _ = write!(
                line,
                " {name} {:.0} ns ({:.1} runs);",
                per_conn(*time),
                *runs as f64 / connections.max(1) as f64
            );
        }
        let _ = write!(line, " agent {:.0} ns", per_conn(self.agent_cpu));
        println!("{line}");
    }
}

/// The rows of one case: its three metrics, as ratios to `direct` (and for `clusterip` also
/// to `iptables`, connections/s only).
fn rows_for(case: &str, scale: u64, r: &LoadReport, direct: &LoadReport, iptables: Option<&LoadReport>) -> Vec<Row> {
    let metrics = [
        ("conn_per_s", r.conn_per_s, direct.conn_per_s, "1/s"),
        ("p50_us", r.p50_us, direct.p50_us, "us"),
        ("p99_us", r.p99_us, direct.p99_us, "us"),
    ];
    let mut rows = Vec::new();
    for (metric, value, base, unit) in metrics {
        let baseline = (case != "direct").then(|| "direct".to_owned());
        let ratio = baseline.as_ref().map(|_| value / base);
        rows.push(Row { case: case.into(), scale, metric: metric.into(), value, unit: unit.into(), baseline, ratio });
    }
    if let Some(iptables) = iptables {
        rows.push(Row {
            case: case.into(),
            scale,
            metric: "conn_per_s".into(),
            value: r.conn_per_s,
            unit: "1/s".into(),
            baseline: Some("iptables".into()),
            ratio: Some(r.conn_per_s / iptables.conn_per_s),
        });
    }
    rows
}

/// The run with the median connections/s.
fn median_report(reports: &[LoadReport]) -> LoadReport {
    let mut sorted = reports.to_vec();
    sorted.sort_by(|a, b| a.conn_per_s.total_cmp(&b.conn_per_s));
    sorted[(sorted.len() - 1) / 2].clone()
}

pub(super) fn path_str(path: &Path) -> &str {
    path.to_str().expect("lab paths are UTF-8")
}

/// Where `tool` is installed: on PATH or in the sbin directories (root's tools).
pub(super) fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// `program args` in `placement` (found on PATH or in the sbin directories): what it printed.
pub(super) fn run_in(lab: &Lab, placement: &Placement, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let program = find_tool(program).with_context(|| format!("{program} not found"))?;
    let mut command = lab.placed_command(placement, &program)?;
    command.args(args);
    let output = lab.run(&mut command, Duration::from_secs(600))?;
    if !output.status.success() {
        bail!("{} {args:?} failed: {}", program.display(), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits until the agent's service map holds `count` services.
fn wait_for_services(bpffs: &Path, count: u32, agent: &Agent) -> anyhow::Result<()> {
    use aya::maps::{HashMap, Map, MapData};
    use mesh_common::service_lb::{ServiceEntry, ServiceKey};
    let path = bpffs.join(mesh_common::maps::SERVICES);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(data) = MapData::from_pin(&path) {
            let map: HashMap<MapData, ServiceKey, ServiceEntry> = HashMap::try_from(Map::from_map_data(data)?)?;
            if map.keys().count() >= count as usize {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not program {count} services in time\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The services of one scale: the measured one (the real backends) in the middle, the others
/// with 10 addresses each that nothing connects to.
pub(super) struct Services {
    count: u32,
    target: u32,
    backends: Vec<SocketAddr>,
    /// The measured service is also a NodePort on this port (north-south).
    node_port: Option<u16>,
    /// The node its backends run on.
    backend_node: &'static str,
}

impl Services {
    pub(super) fn new(count: u32, backends: &[SocketAddr]) -> Self {
        Self { count, target: count / 2, backends: backends.to_vec(), node_port: None, backend_node: "node-0" }
    }

    /// As [`Services::new`], the measured service also a NodePort (`node_port`) with its
    /// backends on `backend_node`.
    pub(super) fn with_node_port(
        count: u32,
        backends: &[SocketAddr],
        node_port: u16,
        backend_node: &'static str,
    ) -> Self {
        Self { node_port: Some(node_port), backend_node, ..Self::new(count, backends) }
    }

    fn name(n: u32) -> String {
        format!("svc-{n}")
    }

    /// Service `n`'s cluster IP: 10.96.0.1 onwards, within 10.96.0.0/12.
    fn ip(n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + n)
    }

    pub(super) fn target_ip(&self) -> Ipv4Addr {
        Self::ip(self.target)
    }

    fn endpoints(&self, n: u32) -> Vec<SocketAddr> {
        if n == self.target {
            return self.backends.clone();
        }
        (0..BACKENDS as u32)
            .map(|e| {
                let i = n * BACKENDS as u32 + e;
                SocketAddr::from((
                    Ipv4Addr::new(10, 128 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (i % 250) as u8 + 1),
                    BACKEND_PORT,
                ))
            })
            .collect()
    }

    /// Service + EndpointSlice manifests, 100 services per file.
    pub(super) fn write_manifests(&self, dir: &Path) -> anyhow::Result<()> {
        let mut text = String::new();
        for n in 0..self.count {
            let (name, ip) = (Self::name(n), Self::ip(n));
            let node_port = match self.node_port {
                Some(port) if n == self.target => format!(
                    "  type: NodePort\n  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}, nodePort: {port}}}]\n"
                ),
                _ => format!("  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}}}]\n"),
            };
            let _ = write!(
                text,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterIP: {ip}\n{node_port}---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-a, namespace: {NS}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {BACKEND_PORT}}}]\nendpoints:\n"
            );
            for e in self.endpoints(n) {
                let _ = writeln!(text, "- {{addresses: [{}], nodeName: {}}}", e.ip(), self.backend_node);
            }
            text.push_str("---\n");
            if n % 100 == 99 || n + 1 == self.count {
                std::fs::write(dir.join(format!("svc-{:05}.yaml", n / 100)), &text)?;
                text.clear();
            }
        }
        Ok(())
    }

    /// `ns/name:port`, kube-proxy's ServicePortName.
    fn port_name(n: u32) -> String {
        format!("{NS}/{}:http", Self::name(n))
    }

    /// kube-proxy iptables mode, as `iptables-restore` input.
    pub(super) fn iptables(&self) -> String {
        let mut chains = String::new();
        let mut rules = String::new();
        if let Some(port) = self.node_port {
            // kube-proxy's external chain of a NodePort: masquerade, then the service's chain.
            let port_name = Self::port_name(self.target);
            let svc_chain = format!("KUBE-SVC-{}", hash(&format!("{port_name}tcp"), 16));
            let ext_chain = format!("KUBE-EXT-{}", hash(&format!("{port_name}tcp"), 16));
            let _ = writeln!(chains, ":{ext_chain} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-NODEPORTS -m comment --comment {port_name} -m tcp -p tcp --dport {port} -j {ext_chain}"
            );
            let _ = writeln!(
                rules,
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {port_name} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(rules, "-A {ext_chain} -j {svc_chain}");
        }
        for n in 0..self.count {
            let port_name = Self::port_name(n);
            let svc_chain = format!("KUBE-SVC-{}", hash(&format!("{port_name}tcp"), 16));
            let ip = Self::ip(n);
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport {SERVICE_PORT} -j {svc_chain}"
            );
            let _ = writeln!(
                rules,
                "-A {svc_chain} -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {ip}/32 --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
            );
            let endpoints = self.endpoints(n);
            let total = endpoints.len();
            for (i, e) in endpoints.iter().enumerate() {
                let sep = format!("KUBE-SEP-{}", hash(&format!("{port_name}tcp{e}"), 16));
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let statistic = if i + 1 < total {
                    format!(" -m statistic --mode random --probability {:.10}", 1.0 / (total - i) as f64)
                } else {
                    String::new()
                };
                let _ =
                    writeln!(rules, "-A {svc_chain} -m comment --comment \"{port_name} -> {e}\"{statistic} -j {sep}");
                let _ = writeln!(rules, "-A {sep} -m comment --comment {port_name} -s {}/32 -j KUBE-MARK-MASQ", e.ip());
                let _ = writeln!(
                    rules,
                    "-A {sep} -m comment --comment {port_name} -m tcp -p tcp -j DNAT --to-destination {e}"
                );
            }
        }
        let mut out = String::from(
            "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\n\
             -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n\
             -A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP\n\
             -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
             -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
        );
        // nfacct needs a kernel module this machine may lack: kube-proxy drops it then too.
        out = out.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "");
        out.push_str(&chains);
        out.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
        );
        out.push_str(&rules);
        out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
        out
    }

    /// kube-proxy nftables mode, as an `nft -f` transaction.
    pub(super) fn nftables(&self) -> String {
        let mut out = String::from(
            "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
             add chain ip kube-proxy mark-for-masquerade\n\
             add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
             add chain ip kube-proxy masquerading\n\
             add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
             add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
             add rule ip kube-proxy masquerading masquerade fully-random\n\
             add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
             add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; }\n\
             add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
             add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n\
             add set ip kube-proxy cluster-ips { type ipv4_addr ; }\n\
             add chain ip kube-proxy services\n\
             add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
             add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
             add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n\
             add rule ip kube-proxy nat-prerouting jump services\n\
             add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
             add rule ip kube-proxy nat-output jump services\n\
             add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }\n\
             add rule ip kube-proxy nat-postrouting jump masquerading\n\
             add chain ip kube-proxy service-endpoints-check\n\
             add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n\
             add chain ip kube-proxy firewall-check\n\
             add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
             add chain ip kube-proxy cluster-ips-check\n\
             add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
             add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }\n\
             add rule ip kube-proxy filter-prerouting ct state new jump firewall-check\n\
             add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }\n\
             add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check\n\
             add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check\n\
             add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }\n\
             add rule ip kube-proxy filter-output ct state new jump service-endpoints-check\n\
             add rule ip kube-proxy filter-output ct state new jump firewall-check\n",
        );
        for n in 0..self.count {
            let ip = Self::ip(n);
            let base = format!("{NS}/{}/tcp/http", Self::name(n));
            let service_chain = format!("service-{}-{base}", hash(&base, 8));
            let endpoints = self.endpoints(n);
            let mut vmap = Vec::new();
            let _ = writeln!(out, "add chain ip kube-proxy {service_chain}");
            for (i, e) in endpoints.iter().enumerate() {
                let endpoint_base = format!("{base}__{}/{}", e.ip(), e.port());
                let chain = format!("endpoint-{}-{endpoint_base}", hash(&endpoint_base, 8));
                let _ = writeln!(out, "add chain ip kube-proxy {chain}");
                let _ = writeln!(out, "add rule ip kube-proxy {chain} ip saddr {} jump mark-for-masquerade", e.ip());
                let _ = writeln!(out, "add rule ip kube-proxy {chain} meta l4proto tcp dnat to {e}");
                vmap.push(format!("{i} : goto {chain}"));
            }
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {service_chain} ip daddr {ip} tcp dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
            );
            let _ = writeln!(
                out,
                "add rule ip kube-proxy {service_chain} numgen random mod {} vmap {{ {} }}",
                endpoints.len(),
                vmap.join(" , ")
            );
            let _ = writeln!(out, "add element ip kube-proxy cluster-ips {{ {ip} }}");
            let _ = writeln!(
                out,
                "add element ip kube-proxy service-ips {{ {ip} . tcp . {SERVICE_PORT} : goto {service_chain} }}"
            );
            if let Some(port) = self.node_port.filter(|_| n == self.target) {
                let external = format!("external-{}-{base}", hash(&base, 8));
                let _ = writeln!(out, "add chain ip kube-proxy {external}");
                let _ = writeln!(out, "add rule ip kube-proxy {external} jump mark-for-masquerade");
                let _ = writeln!(out, "add rule ip kube-proxy {external} goto {service_chain}");
                let _ =
                    writeln!(out, "add element ip kube-proxy service-nodeports {{ tcp . {port} : goto {external} }}");
            }
        }
        out
    }
}

/// kube-proxy's chain-name hash: base32 of SHA-256, truncated.
fn hash(text: &str, len: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    data_encoding::BASE32.encode(digest.as_ref())[..len].to_owned()
}
