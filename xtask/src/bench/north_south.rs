//! `cargo xtask bench north-south`: traffic from outside the cluster, from a client namespace
//! on the nodes' network (the lab's `outside`).
//!
//! Measured today: the prefilter's drop rate. The client floods a node's address with
//! minimum-size UDP datagrams (64-byte frames, `labnet flood`: `sendmmsg`, one CPU) from an
//! address in a list of denied CIDRs (10 and 1,000 CIDRs, its own /24 in the middle of the
//! list), and the node drops every one of them with:
//!
//! - `xdp-prefilter`: this mesh: a ClusterMeshPolicy denying the list to every pod, compiled by
//!   the agent into the XDP prefilter on the node's interface (native mode on the veth);
//! - `iptables-raw`: one `-s CIDR -j DROP` rule per CIDR in the raw table's PREROUTING chain
//!   (iptables-nft, the default backend), as an operator would write a blocklist;
//! - `nft-ingress`: an nftables netdev table on the interface's ingress hook dropping `ip saddr`
//!   in an interval set of the list (the best nftables offers: one lookup, before IP).
//!
//! The rate is what the client sent in the time (everything it sends is dropped, and the
//! prefilter's own counters are checked to hold at least 95% of it). On veths the whole path
//! (sender, bridge, the node's receive path, the drop) runs on the sender's CPU, so the rate is
//! packets per CPU-second of all of it, the sender's share included: the ratio between cases
//! understates how much less the drop itself costs.
//!
//! And NodePorts: short TCP connections (connect, request, reply, close; `labnet load`, the
//! service-lb benchmark's client, on CPU 0) from the outside client to node-0's NodePort of a
//! service whose 10 backends run on node-1 (CPU 1), while the service table holds 1, 1,000 and
//! 10,000 services (the measured one in the middle), balanced by:
//!
//! - `direct`: no balancer, the client connects to the backends' addresses (the baseline);
//! - `iptables`, `nftables`: kube-proxy's rules (the service-lb benchmark's, with the NodePort's
//!   KUBE-NODEPORTS / service-nodeports entries and their masquerade) in node-0's namespace;
//! - `nodeport-snat`: this mesh: node-0's agent balancing at TC on its interface, source NAT to
//!   node-0 (the backends are on node-1);
//! - `nodeport-dsr`: this mesh with direct server return (`MESH_LB_MODE=dsr`): node-0 sends the
//!   client's packets to node-1 in IP-in-IP, node-1's agent (which then also runs its pods' TC
//!   programs) takes them out and its pods answer the client directly.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet::{self, LoadReport},
    manifests::{Mesh, PodManifest, nodes},
    operator::{Operator, free_port},
};

use super::{Report, Row};

/// The flooding client's address: its /24 is one of the denied CIDRs.
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 18, 201, 10);
const CLIENT_CIDR: &str = "172.18.201.0/24";
/// Runs per case and scale; the median is reported.
const ROUNDS: usize = 3;
const CPU: usize = 0;

/// `count` denied /24s outside the cluster (100.64.0.0/10 and up), the client's in the middle.
fn cidrs(count: u32) -> Vec<String> {
    let mut list: Vec<String> =
        (0..count.saturating_sub(1)).map(|i| format!("100.{}.{}.0/24", 64 + (i >> 8), i & 0xff)).collect();
    list.insert(list.len() / 2, CLIENT_CIDR.to_owned());
    list
}

fn policy(list: &[String]) -> String {
    let mut text = String::from(
        "apiVersion: mesh.dev/v1alpha1\nkind: ClusterMeshPolicy\nmetadata: {name: blocklist}\nspec:\n  priority: 0\n  ingress:\n    - action: Deny\n      peers:\n",
    );
    for cidr in list {
        text += &format!("        - ipBlock: {{cidr: {cidr}}}\n");
    }
    text + "---\n"
}

fn iptables_rules(list: &[String]) -> String {
    let mut text = String::from("*raw\n:PREROUTING ACCEPT [0:0]\n");
    for cidr in list {
        text += &format!("-A PREROUTING -s {cidr} -j DROP\n");
    }
    text + "COMMIT\n"
}

fn nft_script(list: &[String]) -> String {
    format!(
        "table netdev blocklist {{\n  set denied {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain ingress {{\n    type filter hook ingress device eth0 priority -500; policy accept;\n    ip saddr @denied drop\n  }}\n}}\n",
        list.join(", ")
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run(cidr_scales: &[u32], service_scales: &[u32], seconds: f64) -> anyhow::Result<Report> {
    let mut report = prefilter(cidr_scales, seconds)?;
    let started = Instant::now();
    let mut failures = Vec::new();
    report.rows.extend(nodeports(service_scales, seconds, &mut failures)?);
    report.notes.push(format!("nodeports took {:.0} s", started.elapsed().as_secs_f64()));
    report.notes.extend(failures);
    Ok(report)
}

const NODE_PORT: u16 = 30080;
const SERVERS: [&str; 10] = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"];
const SERVER_CPU: usize = 1;

/// Connections/s and p99 through node-0's NodePort: direct, kube-proxy's rules, this mesh.
fn nodeports(scales: &[u32], seconds: f64, failures: &mut Vec<String>) -> anyhow::Result<Vec<Row>> {
    anyhow::ensure!(scales.iter().all(|s| (1..=60_000).contains(s)), "scales must be 1 to 60000 services");
    let duration = Duration::from_secs_f64(seconds);
    let lab = Lab::new(&[&["sink"], &SERVERS]).context("bringing up the lab")?;
    for name in SERVERS {
        labnet::serve_requests(&lab, lab.pod(name), 8080, name, Some(SERVER_CPU))?;
    }
    let backends: Vec<SocketAddr> = SERVERS.iter().map(|n| SocketAddr::from((lab.pod(n).ip, 8080))).collect();
    let outside = lab.add_outside(0, Ipv4Addr::new(172, 18, 200, 10))?;
    let client = lab.outside_placement(&outside);
    let node_ns = Placement { netns: Some(lab.nodes[0].netns_path.clone()), cgroup: lab.system_cgroup() };
    let frontend = [SocketAddr::from((lab.nodes[0].ip, NODE_PORT))];
    let load = |to: &[SocketAddr], case: &str| -> anyhow::Result<LoadReport> {
        let report = labnet::load(&lab, &client, to, duration, Some(CPU))?;
        anyhow::ensure!(report.failed == 0, "{case}: connections failed: {:?}", report.errors);
        println!(
            "      {case:<14} {:>9.0} conn/s  p50 {:>7.1} us  p99 {:>7.1} us",
            report.conn_per_s, report.p50_us, report.p99_us
        );
        Ok(report)
    };
    load(&backends, "warm-up")?;
    let mut rows = Vec::new();
    for &scale in scales {
        println!("==> NodePort, {scale} services");
        let services = super::service_lb::Services::with_node_port(scale, &backends, NODE_PORT, "node-1");
        let direct = load(&backends, "direct")?;

        let rules = lab.dir.join(format!("nodeport-{scale}.rules"));
        let flush = lab.dir.join("nodeport-flush.rules");
        std::fs::write(&rules, services.iptables())?;
        std::fs::write(&flush, "*nat\n-F\n-X\nCOMMIT\n*filter\n-F\n-X\nCOMMIT\n")?;
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&rules)])?;
        let iptables = load(&frontend, "iptables");
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&flush)])?;
        let iptables = iptables?;

        let script = lab.dir.join(format!("nodeport-{scale}.nft"));
        std::fs::write(&script, services.nftables())?;
        super::service_lb::run_in(&lab, &node_ns, "nft", &["-f", super::service_lb::path_str(&script)])?;
        let nftables = load(&frontend, "nftables");
        super::service_lb::run_in(&lab, &node_ns, "nft", &["delete", "table", "ip", "kube-proxy"])?;
        let nftables = nftables?;

        let manifests = lab.dir.join(format!("manifests-{scale}"));
        std::fs::create_dir_all(&manifests)?;
        services.write_manifests(&manifests)?;
        std::fs::write(manifests.join("nodes.yaml"), nodes(&lab))?;
        // The backends as pods of the mesh: with DSR their node's agent turns their answers
        // back to the frontend at their interfaces (endpoints alone, as the service-lb
        // benchmark has them, would leave the answers from the pods' own addresses).
        let pods: String =
            std::iter::once("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n".to_owned())
                .chain(SERVERS.iter().map(|name| PodManifest::default().render("bench", lab.pod(name))))
                .collect();
        std::fs::write(manifests.join("pods.yaml"), pods)?;
        let operator = Operator::start(&lab, &manifests, ([127, 0, 0, 1], free_port()).into())?;
        let measure = |case: &str, nodes: usize, args: &[&str]| -> anyhow::Result<LoadReport> {
            let agents = (0..nodes)
                .map(|n| Agent::follow(&lab, &lab.nodes[n], &operator.endpoint(), args))
                .collect::<Result<Vec<_>, _>>()?;
            // Every agent: with DSR node-1's takes the packets out of IP-in-IP.
            let measured = agents.iter().try_for_each(|agent| wait_for_frontend(&lab, agent)).and_then(|()| {
                let mut runs = (0..ROUNDS).map(|_| load(&frontend, case)).collect::<anyhow::Result<Vec<_>>>()?;
                runs.sort_by(|a, b| a.conn_per_s.total_cmp(&b.conn_per_s));
                Ok(runs.swap_remove(ROUNDS / 2))
            });
            for agent in &agents {
                lab.stop(agent.pid, Duration::from_secs(30))?;
            }
            measured.with_context(|| agents[0].log())
        };
        let mesh = measure("nodeport-snat", 1, &[]);
        let dsr = mesh.as_ref().ok().map(|_| measure("nodeport-dsr", 2, &["--lb-mode", "dsr"]));
        lab.stop(operator.pid, Duration::from_secs(30))?;
        let mesh = mesh?;
        // A DSR run that fails is reported and leaves its rows out (its target then counts as
        // missed); the other cases' rows stay.
        let dsr = match dsr.expect("measured after snat") {
            Ok(report) => Some(report),
            Err(err) => {
                let last = format!("{err:#}").lines().last().unwrap_or_default().to_owned();
                println!("      nodeport-dsr failed at {scale} services: {last}");
                failures.push(format!("nodeport-dsr at {scale} services failed: {last}"));
                None
            }
        };

        let scale = u64::from(scale);
        let row = |case: &str, metric: &str, value: f64, unit: &str, baseline: Option<(&str, f64)>| Row {
            case: case.into(),
            scale,
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline: baseline.map(|(b, _)| b.to_owned()),
            ratio: baseline.map(|(_, base)| value / base),
        };
        rows.push(row("direct", "conn_per_s", direct.conn_per_s, "conn/s", None));
        rows.push(row("direct", "p99_us", direct.p99_us, "us", None));
        for (case, r) in [("iptables", &iptables), ("nftables", &nftables)] {
            rows.push(row(case, "conn_per_s", r.conn_per_s, "conn/s", Some(("direct", direct.conn_per_s))));
            rows.push(row(case, "p99_us", r.p99_us, "us", Some(("direct", direct.p99_us))));
        }
        rows.push(row(
            "nodeport-snat",
            "conn_per_s",
            mesh.conn_per_s,
            "conn/s",
            Some(("iptables", iptables.conn_per_s)),
        ));
        rows.push(row("nodeport-snat", "conn_per_s", mesh.conn_per_s, "conn/s", Some(("direct", direct.conn_per_s))));
        rows.push(row("nodeport-snat", "p99_us", mesh.p99_us, "us", Some(("iptables", iptables.p99_us))));
        if let Some(dsr) = dsr {
            rows.push(row(
                "nodeport-dsr",
                "conn_per_s",
                dsr.conn_per_s,
                "conn/s",
                Some(("iptables", iptables.conn_per_s)),
            ));
            rows.push(row(
                "nodeport-dsr",
                "conn_per_s",
                dsr.conn_per_s,
                "conn/s",
                Some(("nodeport-snat", mesh.conn_per_s)),
            ));
            rows.push(row("nodeport-dsr", "p99_us", dsr.p99_us, "us", Some(("iptables", iptables.p99_us))));
        }
    }
    Ok(rows)
}

/// Waits until `agent` holds the NodePort frontend and has TC on its node's interface.
fn wait_for_frontend(lab: &Lab, agent: &Agent) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = mesh_tests::meshctl::run(&agent.observer_socket(lab), &["status"]).stdout;
        if status.contains("tcx ingress eth0") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{}'s agent did not attach TC to eth0 within 120 s\n{status}", agent.node);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The prefilter's drop rate against iptables raw and nftables ingress.
fn prefilter(scales: &[u32], seconds: f64) -> anyhow::Result<Report> {
    anyhow::ensure!(scales.iter().all(|s| (1..=60_000).contains(s)), "scales must be 1 to 60000 CIDRs");
    for tool in ["iptables-nft-restore", "nft"] {
        anyhow::ensure!(super::service_lb::find_tool(tool).is_some(), "{tool} is missing: run xtask/bootstrap.sh");
    }
    super::release_binaries()?;
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let lab = Lab::new(&[&["sink"]]).context("bringing up the lab")?;
    let outside = lab.add_outside(0, CLIENT)?;
    let client = lab.outside_placement(&outside);
    let node_ns = Placement { netns: Some(lab.nodes[0].netns_path.clone()), cgroup: lab.system_cgroup() };
    let target = SocketAddr::from((lab.nodes[0].ip, 9));
    let flood = |case: &str| -> anyhow::Result<f64> {
        let sent = labnet::flood(&lab, &client, target, duration, CPU)?;
        println!("      {case:<14} {:>12.0} packets/s ({} sent)", sent.pps, sent.sent);
        Ok(sent.pps)
    };
    // Warm up (ARP, caches); the node answers nothing on port 9.
    flood("warm-up")?;

    let mut rows = Vec::new();
    for &scale in scales {
        let list = cidrs(scale);
        println!("==> {scale} denied CIDRs");
        let mut results: Vec<(&str, f64)> = Vec::new();

        let rules = lab.dir.join(format!("raw-{scale}.rules"));
        std::fs::write(&rules, iptables_rules(&list))?;
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&rules)])?;
        let runs = (0..ROUNDS).map(|_| flood("iptables-raw")).collect::<anyhow::Result<Vec<_>>>()?;
        results.push(("iptables-raw", median(runs)));
        let flush = lab.dir.join("raw-flush.rules");
        std::fs::write(&flush, "*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")?;
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&flush)])?;

        let script = lab.dir.join(format!("ingress-{scale}.nft"));
        std::fs::write(&script, nft_script(&list))?;
        super::service_lb::run_in(&lab, &node_ns, "nft", &["-f", super::service_lb::path_str(&script)])?;
        let runs = (0..ROUNDS).map(|_| flood("nft-ingress")).collect::<anyhow::Result<Vec<_>>>()?;
        results.push(("nft-ingress", median(runs)));
        super::service_lb::run_in(&lab, &node_ns, "nft", &["delete", "table", "netdev", "blocklist"])?;

        let mesh = Mesh::start(&lab, &(nodes(&lab) + &policy(&list)), &[])?;
        wait_for_prefilter(&lab, &mesh, scale)?;
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            let before = prefilter_drops(&lab);
            let t = Instant::now();
            let pps = flood("xdp-prefilter")?;
            let dropped = prefilter_drops(&lab) - before;
            let sent = pps * t.elapsed().as_secs_f64().min(seconds);
            if dropped < sent * 0.95 {
                bail!("the prefilter counted {dropped} drops of about {sent:.0} sent\n{}", mesh.logs());
            }
            runs.push(pps);
        }
        results.push(("xdp-prefilter", median(runs)));
        mesh.stop(&lab)?;

        let base = results[0].1;
        for (case, pps) in results {
            let baseline = (case != "iptables-raw").then(|| "iptables-raw".to_owned());
            rows.push(Row {
                case: case.into(),
                scale: u64::from(scale),
                metric: "drop_pps".into(),
                value: pps,
                unit: "pps".into(),
                ratio: baseline.as_ref().map(|_| pps / base),
                baseline,
            });
        }
    }
    let notes = vec![
        format!("north-south took {:.0} s; {ROUNDS} runs of {seconds} s per case, medians", started.elapsed().as_secs_f64()),
        "drop_pps: minimum-size UDP packets/s from one sender CPU, all dropped at the node (sender, bridge and drop on that CPU)".into(),
        "nodeport-dsr runs node-1's agent too (DSR needs it), so its pods' TC programs are in its path".into(),
    ];
    Ok(Report { bench: "north-south".into(), rows, notes })
}

/// Waits until the agent's prefilter holds `count` CIDRs.
fn wait_for_prefilter(lab: &Lab, mesh: &Mesh, count: u32) -> anyhow::Result<()> {
    use aya::maps::{Map, MapData, lpm_trie::LpmTrie};
    let path = lab.nodes[0].bpffs.join(mesh_common::maps::PREFILTER);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = MapData::from_pin(&path)
            .ok()
            .and_then(|data| Map::from_map_data(data).ok())
            .and_then(|map| LpmTrie::<MapData, u32, mesh_common::prefilter::PrefilterEntry>::try_from(map).ok())
            .map_or(0, |trie| trie.keys().count());
        if held == count as usize {
            // and XDP attached: the status lists it
            let status = mesh_tests::meshctl::run(&mesh.agents[0].observer_socket(lab), &["status"]).stdout;
            if status.contains("xdp native") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the prefilter holds {held} of {count} CIDRs after 60 s\n{}", mesh.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every packet the node's prefilter dropped so far, from its pinned counters.
fn prefilter_drops(lab: &Lab) -> f64 {
    use aya::maps::{Map, MapData, PerCpuArray};
    let Ok(data) = MapData::from_pin(lab.nodes[0].bpffs.join(mesh_common::maps::PREFILTER_COUNTS)) else { return 0.0 };
    let Ok(map) = Map::from_map_data(data) else { return 0.0 };
    let Ok(counts) = PerCpuArray::<MapData, mesh_common::prefilter::PrefilterCount>::try_from(map) else { return 0.0 };
    counts
        .iter()
        .filter_map(Result::ok)
        .flat_map(|per_cpu| per_cpu.iter().map(|c| c.packets).collect::<Vec<_>>())
        .sum::<u64>() as f64
}
