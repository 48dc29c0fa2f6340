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
//! The rate is packets dropped per second of the CPU that received them, with the receiver
//! saturated. The client's packets reach node-0 as frames from a NIC would: the object's
//! `mesh_wire` XDP program on the client's fabric port sends each one straight to node-0's
//! port as an XDP frame (`mesh_tests::wire`; a veth would otherwise hand XDP a socket buffer to
//! copy into a page first, which no NIC driver does). Node-0's interface has GRO on, so it
//! receives through a NAPI poll as a driver does, and that poll runs in a thread of its own
//! (threaded NAPI) pinned to CPU 1 at nice [`RECEIVER_NICE`] beside a busy loop at nice 0: it
//! gets a few percent of the CPU, far less than what the client sends needs, so it always has
//! a full ring to work through (a receiver that keeps up sleeps and wakes between small
//! batches, and the wakeups would be most of what is measured).
//! The sender runs on CPU 0. The thread's CPU time (`/proc/<tid>/schedstat`) is what the node
//! spent receiving and dropping; the packets are each case's own count (the iptables rule's
//! counter, an nftables `counter`, the prefilter's per-CIDR counters, with the stack's UDP
//! NoPorts checked not to grow: nothing got past XDP). The prefilter program's own time per
//! packet is counted by the kernel in a run of its own.
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

use super::{Report, Row, median};

/// The flooding client's address: its /24 is one of the denied CIDRs.
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 18, 201, 10);
const CLIENT_CIDR: &str = "172.18.201.0/24";
/// Runs per case and scale; the median is reported.
const ROUNDS: usize = 3;
/// The flooding client's CPU.
const CPU: usize = 0;
/// The CPU of the node's receive path (its interface's NAPI thread).
const RECEIVER_CPU: usize = 1;
/// The receive thread's nice beside a busy loop at 0: weight 15 against 1,024, a few percent of
/// the CPU, given in slices long enough for the ring to fill between them. At nice 10 (about
/// 10%) every case measured the same 0.55-0.65M drops per CPU-second, iptables' 10 rules and
/// XDP alike: the thread's time was then mostly its preemptions and wakeups, not packets.
const RECEIVER_NICE: i32 = 19;

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
        "table netdev blocklist {{\n  set denied {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n  chain ingress {{\n    type filter hook ingress device eth0 priority -500; policy accept;\n    ip saddr @denied counter drop\n  }}\n}}\n",
        list.join(", ")
    )
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
    for tool in ["iptables-nft-restore", "iptables-nft", "nft", "ethtool"] {
        anyhow::ensure!(super::service_lb::find_tool(tool).is_some(), "{tool} is missing: run xtask/bootstrap.sh");
    }
    super::release_binaries()?;
    let started = Instant::now();
    let duration = Duration::from_secs_f64(seconds);
    let lab = Lab::new(&[&["sink"]]).context("bringing up the lab")?;
    let outside = lab.add_outside(0, CLIENT)?;
    let client = lab.outside_placement(&outside);
    let node_ns = Placement { netns: Some(lab.nodes[0].netns_path.clone()), cgroup: lab.system_cgroup() };
    receive_as_a_nic(&lab, &node_ns)?;
    mesh_tests::wire::outside_to_node(&lab, &outside, 0)?;
    let target = SocketAddr::from((lab.nodes[0].ip, 9));
    // One run: the client floods for `duration`; what `dropped` counted per second of the
    // node's receiving CPU.
    let flood = |case: &str, dropped: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<(f64, f64)> {
        // Attaching XDP may give the interface a new NAPI instance, and so a new thread: found
        // and set up again for every run.
        let napi = napi_thread(&lab)?;
        pin(napi)?;
        nice(napi)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _ = pin(0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let (cpu, count) = (thread_cpu(napi)?, dropped()?);
        let sent = labnet::flood(&lab, &client, target, duration, CPU);
        let (cpu, count) = (thread_cpu(napi)? - cpu, dropped()? - count);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hog.join().expect("hog");
        let sent = sent?;
        let rate = count / cpu.as_secs_f64().max(1e-6);
        println!(
            "      {case:<14} {rate:>12.0} drops per receiving CPU-second ({count} dropped in {:.2} s of CPU; client sent {:.0}/s)",
            cpu.as_secs_f64(),
            sent.pps
        );
        Ok((rate, count))
    };
    // Datagrams node-0's stack refused for want of a listener (port 9): what passes every
    // filter.
    let no_port = || -> anyhow::Result<f64> {
        Ok(udp_no_ports(&super::service_lb::run_in(&lab, &node_ns, "cat", &["/proc/net/snmp"])?))
    };
    // Warm up (ARP, caches). The check below that nothing passed the prefilter can fail:
    // unfiltered, the flood reaches the stack and is counted.
    let (_, reached) = flood("warm-up", &no_port)?;
    anyhow::ensure!(reached > 0.0, "the flood did not reach node-0's stack (UDP NoPorts did not grow)");

    let mut rows = Vec::new();
    let mut program_ns = Vec::new();
    for &scale in scales {
        let list = cidrs(scale);
        println!("==> {scale} denied CIDRs");
        let mut results: Vec<(&str, f64)> = Vec::new();

        let rules = lab.dir.join(format!("raw-{scale}.rules"));
        std::fs::write(&rules, iptables_rules(&list))?;
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&rules)])?;
        // The client's rule alone, by its number.
        let number = (list.iter().position(|c| c == CLIENT_CIDR).expect("the client's CIDR is listed") + 1).to_string();
        let counter = || -> anyhow::Result<f64> {
            let listing = super::service_lb::run_in(
                &lab,
                &node_ns,
                "iptables-nft",
                &["-t", "raw", "-L", "PREROUTING", &number, "-v", "-x", "-n"],
            )?;
            rule_packets(&listing, CLIENT_CIDR)
        };
        let runs =
            (0..ROUNDS).map(|_| flood("iptables-raw", &counter).map(|r| r.0)).collect::<anyhow::Result<Vec<_>>>()?;
        results.push(("iptables-raw", median(runs)));
        let flush = lab.dir.join("raw-flush.rules");
        std::fs::write(&flush, "*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")?;
        super::service_lb::run_in(&lab, &node_ns, "iptables-nft-restore", &[super::service_lb::path_str(&flush)])?;

        let script = lab.dir.join(format!("ingress-{scale}.nft"));
        std::fs::write(&script, nft_script(&list))?;
        super::service_lb::run_in(&lab, &node_ns, "nft", &["-f", super::service_lb::path_str(&script)])?;
        let counter = || -> anyhow::Result<f64> {
            nft_packets(&super::service_lb::run_in(&lab, &node_ns, "nft", &["list", "table", "netdev", "blocklist"])?)
        };
        let runs =
            (0..ROUNDS).map(|_| flood("nft-ingress", &counter).map(|r| r.0)).collect::<anyhow::Result<Vec<_>>>()?;
        results.push(("nft-ingress", median(runs)));
        super::service_lb::run_in(&lab, &node_ns, "nft", &["delete", "table", "netdev", "blocklist"])?;

        let mesh = Mesh::start(&lab, &(nodes(&lab) + &policy(&list)), &[])?;
        wait_for_prefilter(&lab, &mesh, scale)?;
        let mut runs = Vec::new();
        for _ in 0..ROUNDS {
            // Everything that reached the node is dropped at XDP: the stack (which would
            // count a datagram to port 9 under NoPorts) sees none of it.
            let reached_stack = no_port()?;
            let (rate, dropped) = flood("xdp-prefilter", &|| Ok(prefilter_drops(&lab)))?;
            let reached_stack = no_port()? - reached_stack;
            if dropped == 0.0 || reached_stack > 0.0 {
                bail!("the prefilter dropped {dropped} packets and {reached_stack} reached the stack\n{}", mesh.logs());
            }
            runs.push(rate);
        }
        results.push(("xdp-prefilter", median(runs)));
        // What of that is the program itself, counted by the kernel in a run of its own
        // (counting reads the clock around every run, which the measured runs do not pay).
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enabling BPF run-time statistics")?;
        let before = super::program_runs(mesh_common::programs::FROM_WIRE);
        flood("(counted)", &|| Ok(prefilter_drops(&lab)))?;
        let after = super::program_runs(mesh_common::programs::FROM_WIRE);
        drop(stats);
        let ns = after.0.saturating_sub(before.0).as_nanos() as f64 / after.1.saturating_sub(before.1).max(1) as f64;
        println!("      xdp-prefilter: the program takes {ns:.0} ns a packet");
        program_ns.push(format!("{scale} CIDRs {ns:.0} ns"));
        mesh.stop(&lab)?;

        let base = results[0].1;
        for (case, pps) in results {
            let baseline = (case != "iptables-raw").then(|| "iptables-raw".to_owned());
            rows.push(Row {
                case: case.into(),
                scale: u64::from(scale),
                metric: "drop_pps".into(),
                value: pps,
                unit: "pps/CPU".into(),
                ratio: baseline.as_ref().map(|_| pps / base),
                baseline,
            });
        }
    }
    let notes = vec![
        format!(
            "north-south took {:.0} s; {ROUNDS} runs of {seconds} s per case, medians",
            started.elapsed().as_secs_f64()
        ),
        format!(
            "drop_pps: minimum-size UDP packets dropped per second of the node's receiving CPU, saturated (its interface's NAPI thread on CPU {RECEIVER_CPU} at nice {RECEIVER_NICE} beside a busy loop; GRO on, frames from the wire program as from a NIC driver); the sender on CPU {CPU}"
        ),
        "nodeport-dsr runs node-1's agent too (DSR needs it), so its pods' TC programs are in its path".into(),
        format!(
            "the prefilter program's own time per packet (kernel BPF statistics, a run of its own): {}",
            program_ns.join("; ")
        ),
    ];
    Ok(Report { bench: "north-south".into(), rows, notes })
}

/// Makes node-0's `eth0` receive as a NIC driver does, in a thread of its own on
/// [`RECEIVER_CPU`]: GRO on gives a veth its NAPI poll (which also takes the wire's XDP frames),
/// and threaded NAPI gives that poll a kernel thread whose CPU time is the node's receive cost
/// and nothing else.
fn receive_as_a_nic(lab: &Lab, node_ns: &Placement) -> anyhow::Result<()> {
    super::service_lb::run_in(lab, node_ns, "ethtool", &["-K", "eth0", "gro", "on"])?;
    // sysfs shows the namespace of the process that mounted it: `ip netns exec` mounts the
    // node's own.
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.nodes[0].netns, "sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"])
        .output()
        .context("running ip netns exec")?;
    anyhow::ensure!(
        output.status.success(),
        "threaded NAPI on node-0's eth0: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Pins thread `tid` (0: the calling thread) to [`RECEIVER_CPU`].
fn pin(tid: u32) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    let set = unsafe {
        let mut set = std::mem::zeroed::<libc::cpu_set_t>();
        libc::CPU_SET(RECEIVER_CPU, &mut set);
        set
    };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    anyhow::ensure!(rc == 0, "pinning thread {tid} to CPU {RECEIVER_CPU}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Gives thread `tid` [`RECEIVER_NICE`].
fn nice(tid: u32) -> anyhow::Result<()> {
    // SAFETY: a plain syscall on a thread id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, RECEIVER_NICE) };
    anyhow::ensure!(rc == 0, "nice {RECEIVER_NICE} for NAPI thread {tid}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// The one NAPI thread of an `eth0` on this machine (`napi/eth0-<id>`): node-0's, the only
/// `eth0` of the lab with threaded NAPI.
fn napi_thread(lab: &Lab) -> anyhow::Result<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with("napi/eth0-") {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        _ => bail!(
            "expected one NAPI thread of an eth0 (node-0's of lab {}), found {found:?}: is another benchmark running?",
            lab.id
        ),
    }
}

/// A thread's time on a CPU so far (`/proc/<tid>/schedstat`, nanoseconds).
fn thread_cpu(tid: u32) -> anyhow::Result<Duration> {
    let text =
        std::fs::read_to_string(format!("/proc/{tid}/schedstat")).context("reading the NAPI thread's schedstat")?;
    let ns =
        text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).context("schedstat without a run time")?;
    Ok(Duration::from_nanos(ns))
}

/// The packet count of the rule matching source `cidr` in `iptables -L -v -x -n` output.
fn rule_packets(listing: &str, cidr: &str) -> anyhow::Result<f64> {
    listing
        .lines()
        .find(|line| line.split_whitespace().any(|field| field == cidr))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no rule for {cidr} in:\n{listing}"))
}

/// The packets of the `counter` in `nft list table` output.
fn nft_packets(listing: &str) -> anyhow::Result<f64> {
    listing
        .split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in:\n{listing}"))
}

/// UDP datagrams to no listening port so far (`Udp: ... NoPorts` in `/proc/net/snmp`): what
/// the stack drops when nothing else does.
fn udp_no_ports(snmp: &str) -> f64 {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0.0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "NoPorts")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
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
