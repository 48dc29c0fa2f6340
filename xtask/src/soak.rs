//! `cargo xtask soak`: the mesh under steady traffic while a chaos schedule kills, freezes and
//! churns it. A two-node lab in local mode:
//!
//! - node-0: `client`, `web-a`, `churn-a`, `routed-a`; node-1: `web-b`, `intruder`, `churn-b`,
//!   `guarded`, `secure`, `routed-b`.
//! - Services (TCP and UDP port 80 -> 8080): `web` (web-a, web-b), `churn` (the churn pods
//!   present), `guarded` (TCP), `secure` (TCP; STRICT, so every connection from `client` goes
//!   through the agents' mutual-TLS tunnel), `routed` (HTTP echo servers on both nodes, with an
//!   HTTPRoute: every connection from `client` goes through node-0's L7 proxy; HTTP rules on
//!   its pods' port, so each request is also judged by its pod's node, and a
//!   BackendTrafficPolicy). A NetworkPolicy lets only `client` into web, churn
//!   and secure pods; `guarded`'s policy flips between allowing `client` and denying everyone.
//!   The operator runs its CA (mutual TLS to the agents, workload certificates).
//! - Traffic (`labnet soak`): `client` makes `--rate` short connections, UDP requests, HTTP
//!   requests and HTTP/1.1 upgrades (each on a new connection, to routed; an upgrade then
//!   echoes through the switched connection) a second to web, churn, secure and routed, and
//!   holds long-lived connections to them; `intruder`
//!   probes web (every answer is a policy violation); `client` probes guarded (an answer while
//!   it is denied is a violation, a failure while it is allowed is a failed connection); a
//!   client outside the cluster (the lab's `outside`) makes a quarter of `--rate` short
//!   connections and holds long-lived ones through both nodes' NodePorts of `north` (source
//!   NAT to the other node's pod, the client's address to the node's own) and `north-dsr`
//!   (direct server return to the other node's pod), which web's NetworkPolicy admits from the
//!   nodes' network; one client port often reaches one pod through several of them at once.
//! - Chaos, every cycle: each agent SIGKILLed and restarted, each agent replaced as a rolling
//!   update replaces it (the new one beside the old, then SIGTERM), the operator SIGKILLed and
//!   restarted, a burst of invalid manifests, 12 s of policy churn, the operator frozen
//!   (SIGSTOP) and then down (60 s in runs of 5 minutes or more, 10 s in shorter ones); all
//!   along, a churn pod added or removed every second, and guarded's policy flipped every 2 s
//!   while nothing is down or due within 2.5 s (so that the flip reaches the datapath).
//!
//! Checked: no client attempt to a live endpoint fails (each failure printed with the chaos
//! events around it), but a tunnelled or proxied one (to secure or routed) in flight while an agent it passes through is
//! SIGKILLed and until its successor holds its certificates (a userspace hop that dies takes
//! its connections with it: counted apart, `tunnel_broken_by_kill`); no denied probe is
//! answered, agent and operator RSS (sampled every
//! second: after warm-up, peak, end), every flow event of the final window either read by an
//! agent or counted as lost, and nothing left behind. Writes `target/bench/soak.json`.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    operator::{Operator, free_port},
    traffic::{Attempt, SoakReport, now_ms, read_log},
};

use crate::{
    bench::{Report, Row},
    cargo,
};

const NODES: [&[&str]; 2] =
    [&["client", "web-a", "churn-a", "routed-a"], &["web-b", "intruder", "churn-b", "guarded", "secure", "routed-b"]];
const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const GUARDED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const CHURN: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// STRICT: only through the tunnel.
const SECURE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
/// HTTP with an HTTPRoute: every connection from `client` goes through node-0's L7 proxy.
const ROUTED: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
const NORTH: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 15);
const NORTH_DSR: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 16);
/// The NodePorts of `north` (source NAT) and `north-dsr` (direct server return).
const NORTH_PORT: u16 = 30090;
const NORTH_DSR_PORT: u16 = 30091;
/// The client outside the cluster.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(172, 18, 200, 10);
/// After a SIGKILLed agent's successor is ready, tunnelled connections may still fail this
/// long (it accepts once it holds its pods' certificates).
const KILL_EXCUSE_MS: u64 = 3_000;
/// The client's timeout for one attempt: an attempt that started this long before a kill may
/// still have been in flight through the killed agent's tunnel.
const CLIENT_TIMEOUT_MS: u64 = 1_000;
const PORT: u16 = 80;
/// Every socket event (flow aggregation `none`): the most the flow pipeline carries, so
/// "every flow event delivered or counted lost" is checked at its heaviest. The datapath is
/// kept across restarts, as the DaemonSet keeps it (an agent replaced beside its successor
/// must not take the successor's pins with it).
/// A replaced agent drains its tunnels for [`TUNNEL_DRAIN_S`] seconds.
const AGENT_ARGS: &[&str] = &["--flow-aggregation", "none", "--keep-datapath", "--tunnel-drain-seconds", "3"];
/// A tunnelled connection still open when a replaced agent's drain ends is cut (as ztunnel
/// cuts it): a held one failing this close to the end of a drain is counted apart.
const DRAIN_CUT_MS: u64 = 1_500;
const TARGET_PORT: u16 = 8080;
/// Probes a second from the intruder and to guarded.
const PROBE_RATE: u32 = 20;
/// A probe's timeout (a denied one waits for it).
const PROBE_TIMEOUT_MS: u64 = 300;
/// After a policy flip, probes are not judged for this long (the flip travels file ->
/// operator -> agents -> maps); no flip comes this close to a chaos event either way.
const FLIP_GRACE_MS: u64 = 2_000;
const FLIP_GRACE: Duration = Duration::from_millis(FLIP_GRACE_MS + 500);
/// How often guarded's policy flips while nothing is down.
const FLIP_EVERY: Duration = Duration::from_secs(2);
/// The final window in which every flow event is accounted for: no chaos but churn.
const TAIL: Duration = Duration::from_secs(10);
/// RSS is taken as "after warm-up" at this point.
const WARM_UP: Duration = Duration::from_secs(10);
/// Chaos events around a failure that are printed with it.
const CONTEXT_MS: u64 = 3_000;

pub fn run(seconds: u64, rate: u32, release: bool) -> anyhow::Result<()> {
    anyhow::ensure!(seconds >= 40, "--seconds: at least 40 (one chaos cycle needs 30 s and the final window 10 s)");
    anyhow::ensure!((1..=5_000).contains(&rate), "--rate: 1 to 5000 attempts a second");
    let started = Instant::now();
    if release {
        crate::bench::release_binaries()?;
    } else {
        cargo::run(&["build", "--bins"], &[])?;
        // SAFETY: single-threaded here; the lab helpers read it to find the binaries.
        unsafe { std::env::set_var(mesh_tests::ENV_BIN_DIR, cargo::workspace_root().join("target/debug")) };
    }
    let before: Vec<String> = mesh_tests::lab::leftovers().into_iter().map(|l| l.id).collect();
    let outcome = soak(seconds, rate);
    let leftovers = mesh_tests::lab::leftovers().into_iter().filter(|l| !before.contains(&l.id)).collect::<Vec<_>>();
    let (mut report, judged) = outcome?;
    report.rows.push(row("soak", "leftovers", leftovers.len() as f64, "count"));
    report
        .notes
        .push(format!("soak of {seconds} s at {rate} attempts/s took {:.0} s", started.elapsed().as_secs_f64()));
    report.print();
    let path = report.write()?;
    println!("\nwritten to {}", path.display());
    let mut problems = judged;
    if !leftovers.is_empty() {
        problems.push(format!("left behind: {leftovers:?}"));
    }
    // Memory growth is judged on long runs only: a minute is mostly restarts.
    if seconds >= 300 {
        for r in report.rows.iter().filter(|r| r.metric == "rss_end_mib") {
            let start = report.rows.iter().find(|s| s.case == r.case && s.metric == "rss_start_mib").map(|s| s.value);
            if let Some(start) = start
                && r.value > start * 1.1
            {
                problems.push(format!("{}: RSS grew from {start:.1} MiB to {:.1} MiB", r.case, r.value));
            }
        }
    }
    if problems.is_empty() {
        println!("==> soak passed");
        Ok(())
    } else {
        bail!("soak failed:\n  {}", problems.join("\n  "))
    }
}

fn row(case: &str, metric: &str, value: f64, unit: &str) -> Row {
    Row { case: case.into(), scale: 0, metric: metric.into(), value, unit: unit.into(), baseline: None, ratio: None }
}

/// Runs the lab, the traffic and the chaos; returns the report and what failed.
fn soak(seconds: u64, rate: u32) -> anyhow::Result<(Report, Vec<String>)> {
    let lab = Lab::new(&NODES).context("bringing up the lab")?;
    let outside = lab.add_outside(0, OUTSIDE)?;
    for pod in ["web-a", "web-b", "churn-a", "churn-b", "guarded", "secure"] {
        mesh_tests::labnet::serve(&lab, lab.pod(pod), TARGET_PORT, pod)?;
    }
    for pod in ["routed-a", "routed-b"] {
        mesh_tests::labnet::http_echo(&lab, lab.pod(pod), "soak", TARGET_PORT)?;
    }
    let manifests = lab.dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    write_atomic(&manifests, "base.yaml", &base_manifests(&lab))?;
    // The nodes and their addresses: where the tunnel goes.
    write_atomic(&manifests, "nodes.yaml", &mesh_tests::manifests::nodes(&lab))?;
    write_atomic(&manifests, "churn.yaml", &churn_manifests(&lab, &["churn-a", "churn-b"]))?;
    write_atomic(&manifests, "guarded.yaml", &guarded_policy(true))?;

    // The operator's CA: mutual TLS to the agents, and the workload certificates the tunnel
    // needs; the same PKI directory across the operator's restarts.
    let pki = lab.dir.join("pki");
    let bundles = lab.nodes.iter().map(|n| Operator::issue(&lab, &pki, &n.name)).collect::<Result<Vec<_>, _>>()?;
    let operator_args = vec!["--pki-dir".to_owned(), pki.display().to_string()];
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let endpoint = format!("https://{listen}");
    let args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
    let operator = Operator::start_with(&lab, &manifests, listen, &args)?;
    let mut chaos = Chaos {
        lab: &lab,
        manifests: manifests.clone(),
        listen,
        endpoint,
        operator_args,
        bundles,
        operator: Some(operator.pid),
        agents: Vec::new(),
        kills: Vec::new(),
        drains: Vec::new(),
        events: Vec::new(),
        flips: vec![(now_ms(), true)],
        churn_step: 0,
        quiet_until: Instant::now(),
        pids: Arc::new(Mutex::new(BTreeMap::new())),
    };
    for index in 0..lab.nodes.len() {
        let agent = chaos.start_agent(index)?;
        chaos.agents.push(agent);
    }
    chaos.publish_pids();
    let identity = |pod: &str| format!("spiffe://cluster.local/ns/soak/sa/{pod}");
    mesh_tests::meshctl::wait_for_certificates(&lab, "node-0", &[identity("client")]);
    mesh_tests::meshctl::wait_for_certificates(&lab, "node-1", &[identity("secure")]);
    mesh_tests::scenario::wait_for_tunnel(&lab, 0, 1, lab.pod("secure").ip)?;

    // RSS of every daemon, every second, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pids, stop) = (chaos.pids.clone(), stop.clone());
        std::thread::spawn(move || sample_rss(&pids, &stop))
    };

    let main_span = Duration::from_secs(seconds) - TAIL;
    let schedule = schedule(main_span);
    println!("==> soak: {seconds} s, {rate} attempts/s; chaos: {}", describe(&schedule));
    let logs = lab.dir.join("soak");
    std::fs::create_dir_all(&logs)?;
    // The chaos segment.
    let first = traffic(&lab, &outside, &logs, "chaos", rate, main_span, || chaos.run(main_span, &schedule))?;
    // Quiet: the held connections of the first segment close; then count every event.
    std::thread::sleep(Duration::from_secs(2));
    let counted_before = count_events(&lab, &chaos)?;
    let second = traffic(&lab, &outside, &logs, "tail", rate, TAIL, || chaos.run(TAIL, &[]))?;
    std::thread::sleep(Duration::from_secs(2));
    let counted_after = count_events(&lab, &chaos)?;
    // The requests node-0's agent (the one that ran through the final window) proxied to routed.
    let proxy_metrics = mesh_tests::metrics::agent(&lab.nodes[0].netns_path);
    let through_proxy =
        mesh_tests::metrics::sum(&proxy_metrics, "istio_requests_total", &["destination_service_name=\"routed\""]);
    // The requests node-1's agent (at the tunnel's far end) judged by routed-b's HTTP rules.
    let judged_metrics = mesh_tests::metrics::agent(&lab.nodes[1].netns_path);
    let judged_far =
        mesh_tests::metrics::sum(&judged_metrics, "mesh_l7_policy_requests_total", &["verdict=\"allowed\""]);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("the RSS sampler panicked");

    let mut problems = Vec::new();
    let mut rows = Vec::new();
    // Failures of the client to live endpoints, with the events around each; but tunnelled
    // ones while an agent they pass through was SIGKILLed (until its successor could carry
    // them), which are counted apart.
    let secure = SocketAddr::from((SECURE, PORT)).to_string();
    let routed = SocketAddr::from((ROUTED, PORT)).to_string();
    let killed = |a: &Attempt| {
        (a.to == secure || a.to == routed)
            && chaos
                .kills
                .iter()
                .any(|(at, ready)| (at.saturating_sub(CLIENT_TIMEOUT_MS)..=ready + KILL_EXCUSE_MS).contains(&a.at_ms))
    };
    let cut = |a: &Attempt| {
        a.to == secure && a.kind == "held" && chaos.drains.iter().any(|end| a.at_ms.abs_diff(*end) <= DRAIN_CUT_MS)
    };
    let (excused, mut failures): (Vec<&Attempt>, Vec<&Attempt>) = first
        .client_log
        .iter()
        .chain(&second.client_log)
        .filter(|a| !a.error.is_empty())
        .partition(|a| killed(a) || cut(a));
    // From outside (NodePorts, SNAT and DSR): the kernel carries them, so an agent's restart
    // should break none. Runs saw a few break around an agent's SIGKILL or rolling replacement
    // (before one client port through two frontends to one pod was told apart): those are
    // counted apart (`north_south_broken_by_restart`), any other is a failure.
    let restarting = |a: &Attempt| {
        chaos
            .kills
            .iter()
            .any(|(at, ready)| (at.saturating_sub(CLIENT_TIMEOUT_MS)..=ready + KILL_EXCUSE_MS).contains(&a.at_ms))
            || chaos.drains.iter().any(|end| a.at_ms.abs_diff(*end) <= DRAIN_CUT_MS)
    };
    let (north_south_restart, north_south_failed): (Vec<&Attempt>, Vec<&Attempt>) = first
        .outside_log
        .iter()
        .chain(&second.outside_log)
        .filter(|a| !a.error.is_empty())
        .partition(|a| restarting(a));
    failures.extend(north_south_failed);
    let (broken_by_kill, cut_after_drain): (Vec<&Attempt>, Vec<&Attempt>) =
        excused.into_iter().partition(|a| killed(a));
    let (violations, guarded_failures) = judge_probes(&chaos.flips, &first, &second);
    failures.extend(guarded_failures.iter());
    for failure in failures.iter().take(20) {
        println!("FAILED {failure:?}");
        for (at, what) in chaos.events.iter().filter(|(at, _)| at.abs_diff(failure.at_ms) <= CONTEXT_MS) {
            println!("    {:+} ms: {what}", *at as i64 - failure.at_ms as i64);
        }
    }
    for violation in violations.iter().take(20) {
        println!("VIOLATION {violation:?}");
        for (at, what) in chaos.events.iter().filter(|(at, _)| at.abs_diff(violation.at_ms) <= CONTEXT_MS) {
            println!("    {:+} ms: {what}", *at as i64 - violation.at_ms as i64);
        }
    }
    let connections = first.client.attempts + second.client.attempts;
    let held = first.client.held_exchanges + second.client.held_exchanges;
    let failed = failures.len() as u64;
    rows.push(row("soak", "connections", connections as f64, "count"));
    rows.push(row("soak", "held_exchanges", held as f64, "count"));
    rows.push(row("soak", "failed", failed as f64, "count"));
    rows.push(row("soak", "north_south", (first.outside.attempts + second.outside.attempts) as f64, "count"));
    rows.push(row("soak", "north_south_broken_by_restart", north_south_restart.len() as f64, "count"));
    let (proxy_broken, tunnel_broken): (Vec<&Attempt>, Vec<&Attempt>) =
        broken_by_kill.iter().partition(|a| a.to == routed);
    let proxied = [&first.client, &second.client].iter().filter_map(|r| r.ok_by_kind.get("http")).sum::<u64>();
    rows.push(row("soak", "tunnel_broken_by_kill", tunnel_broken.len() as f64, "count"));
    rows.push(row("soak", "proxied", proxied as f64, "count"));
    rows.push(row("soak", "proxy_broken_by_kill", proxy_broken.len() as f64, "count"));
    let upgraded = [&first.client, &second.client].iter().filter_map(|r| r.ok_by_kind.get("upgrade")).sum::<u64>();
    rows.push(row("soak", "upgraded", upgraded as f64, "count"));
    // Every HTTP request (and upgrade) of the final window went through the proxy (a broken
    // redirect would reach the pods directly and still be answered).
    let tail_proxied = second.client.ok_by_kind.get("http").copied().unwrap_or_default();
    let tail_upgraded = second.client.ok_by_kind.get("upgrade").copied().unwrap_or_default();
    if tail_proxied == 0 || tail_upgraded == 0 || through_proxy < (tail_proxied + tail_upgraded) as f64 {
        problems.push(format!(
            "{tail_proxied} HTTP requests and {tail_upgraded} upgrades to routed answered in the final window, but node-0's L7 proxy counted {through_proxy} requests"
        ));
    }
    // Half of them (routed-b's) passed node-1's judged path (HTTP rules) in the final window.
    if judged_far == 0.0 {
        problems.push("node-1's agent judged no request to routed-b by its HTTP rules".to_owned());
    }
    rows.push(row("soak", "judged_at_destination", judged_far, "count"));
    rows.push(row("soak", "tunnel_held_cut_after_drain", cut_after_drain.len() as f64, "count"));
    rows.push(row(
        "soak",
        "denied_probes",
        (first.intruder.attempts + second.intruder.attempts + first.guarded.attempts + second.guarded.attempts) as f64,
        "count",
    ));
    rows.push(row("soak", "policy_violations", violations.len() as f64, "count"));
    if failed > 0 {
        problems.push(format!("{failed} failed connections to live endpoints"));
    }
    if !violations.is_empty() {
        problems.push(format!("{} denied probes were answered", violations.len()));
    }
    // Every flow event of the final window: read by an agent, or counted as lost.
    let mut uncounted = 0i64;
    let mut lost = 0u64;
    for (node, before) in &counted_before {
        let after = &counted_after[node];
        let sent = after.sent - before.sent;
        let read = after.seen - before.seen;
        let node_lost = after.lost - before.lost;
        lost += node_lost;
        uncounted += sent as i64 - read as i64 - node_lost as i64;
        println!("{node}: final window: {sent} events sent, {read} read, {node_lost} counted lost");
    }
    rows.push(row("soak", "lost_counted", lost as f64, "count"));
    rows.push(row("soak", "lost_uncounted", uncounted.unsigned_abs() as f64, "count"));
    if uncounted != 0 {
        problems.push(format!("{uncounted} flow events neither read nor counted as lost"));
    }
    for (process, series) in &samples {
        let after_warm_up: Vec<f64> = series.iter().filter(|(t, _)| *t >= WARM_UP).map(|(_, v)| *v).collect();
        let start = after_warm_up.first().copied().unwrap_or(0.0);
        let peak = series.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let end = series.last().map_or(0.0, |(_, v)| *v);
        rows.push(row(process, "rss_start_mib", start, "MiB"));
        rows.push(row(process, "rss_peak_mib", peak, "MiB"));
        rows.push(row(process, "rss_end_mib", end, "MiB"));
    }
    let notes = vec![format!(
        "chaos events: {}; client errors: {:?}",
        chaos.events.len(),
        first.client.errors.keys().chain(second.client.errors.keys()).collect::<Vec<_>>()
    )];
    drop(chaos);
    drop(lab);
    Ok((Report { bench: "soak".into(), rows, notes }, problems))
}

/// What one traffic segment saw.
struct Segment {
    client: SoakReport,
    client_log: Vec<Attempt>,
    intruder: SoakReport,
    intruder_log: Vec<Attempt>,
    guarded: SoakReport,
    guarded_log: Vec<Attempt>,
    outside: SoakReport,
    outside_log: Vec<Attempt>,
}

/// Runs the three traffic generators for `span` while `during` runs on this thread.
fn traffic(
    lab: &Lab,
    outside: &mesh_tests::lab::Outside,
    logs: &Path,
    name: &str,
    rate: u32,
    span: Duration,
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Segment> {
    let service = |ip: Ipv4Addr| SocketAddr::from((ip, PORT)).to_string();
    let (both, web, guarded) = (format!("{},{}", service(WEB), service(CHURN)), service(WEB), service(GUARDED));
    let tcp = format!("{both},{}", service(SECURE));
    let http = service(ROUTED);
    // Through both nodes' NodePorts of `north` and `north-dsr`: source NAT, the client's
    // address kept (a pod on the node), DSR; the client's ports reach one pod through several
    // of them at once (the later flows source-NATed at the pod's node: ARCHITECTURE.md,
    // North–south).
    let north: Vec<String> = lab
        .nodes
        .iter()
        .flat_map(|n| [NORTH_PORT, NORTH_DSR_PORT].map(|port| SocketAddr::from((n.ip, port)).to_string()))
        .collect();
    let north = north.join(",");
    let pod = |name: &str| Placement::pod(lab.pod(name));
    let generators = [
        (
            "client",
            pod("client"),
            vec!["--tcp", &tcp, "--udp", &both, "--http", &http, "--upgrade", &http, "--hold", "6"],
            rate,
            CLIENT_TIMEOUT_MS,
            false,
        ),
        ("intruder", pod("intruder"), vec!["--tcp", &web, "--udp", &web], PROBE_RATE, PROBE_TIMEOUT_MS, true),
        ("guarded", pod("client"), vec!["--tcp", &guarded], PROBE_RATE, PROBE_TIMEOUT_MS, true),
        (
            "outside",
            lab.outside_placement(outside),
            vec!["--tcp", &north, "--hold", "2"],
            (rate / 4).max(1),
            CLIENT_TIMEOUT_MS,
            false,
        ),
    ];
    let outputs = std::thread::scope(|scope| -> anyhow::Result<Vec<(SoakReport, Vec<Attempt>)>> {
        let handles: Vec<_> = generators
            .iter()
            .map(|(label, placement, args, rate, timeout_ms, log_all)| {
                let log = logs.join(format!("{name}-{label}.jsonl"));
                scope.spawn(move || -> anyhow::Result<(SoakReport, Vec<Attempt>)> {
                    let mut command = lab.placed_command(placement, mesh_tests::labnet::binary())?;
                    command.arg("soak").args(args);
                    command.args(["--rate", &rate.to_string(), "--duration-ms", &span.as_millis().to_string()]);
                    command.args(["--timeout-ms", &timeout_ms.to_string()]).arg("--log").arg(&log);
                    if *log_all {
                        command.arg("--log-all");
                    }
                    let output = lab.run(&mut command, span + Duration::from_secs(30))?;
                    anyhow::ensure!(
                        output.status.success(),
                        "labnet soak ({label}) failed: {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    let report: SoakReport = serde_json::from_slice(&output.stdout).with_context(|| {
                        format!("labnet soak ({label}) printed {:?}", String::from_utf8_lossy(&output.stdout))
                    })?;
                    Ok((report, read_log(&log)?))
                })
            })
            .collect();
        let chaos = during();
        let outputs: Vec<_> = handles.into_iter().map(|h| h.join().expect("a traffic thread panicked")).collect();
        chaos?;
        outputs.into_iter().collect()
    })?;
    let mut outputs = outputs.into_iter();
    let mut next = || outputs.next().expect("four generators");
    let (client, client_log) = next();
    let (intruder, intruder_log) = next();
    let (guarded, guarded_log) = next();
    let (outside, outside_log) = next();
    Ok(Segment { client, client_log, intruder, intruder_log, guarded, guarded_log, outside, outside_log })
}

/// Denied probes answered (violations), and probes of guarded refused while it was allowed
/// (failures), each judged against the policy in force: the last flip at least
/// [`FLIP_GRACE_MS`] before the probe.
fn judge_probes(flips: &[(u64, bool)], segments: &Segment, tail: &Segment) -> (Vec<Attempt>, Vec<Attempt>) {
    let mut violations: Vec<Attempt> =
        segments.intruder_log.iter().chain(&tail.intruder_log).filter(|a| a.error.is_empty()).cloned().collect();
    let mut failures = Vec::new();
    for attempt in segments.guarded_log.iter().chain(&tail.guarded_log) {
        let Some(index) = flips.iter().rposition(|(at, _)| *at <= attempt.at_ms) else { continue };
        let (at, open) = flips[index];
        let settled = attempt.at_ms >= at + FLIP_GRACE_MS;
        // The next flip may already be on its way.
        let before_next = flips.get(index + 1).is_none_or(|(next, _)| attempt.at_ms < *next);
        if !settled || !before_next {
            continue;
        }
        match (open, attempt.error.is_empty()) {
            (false, true) => violations.push(attempt.clone()),
            (true, false) => failures.push(attempt.clone()),
            _ => {}
        }
    }
    (violations, failures)
}

/// One chaos event, at an offset into a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    KillAgent(usize),
    /// A new agent beside the old one, then the old one stopped (SIGTERM): a rolling update.
    RestartAgent(usize),
    KillOperator,
    InvalidBurst,
    InvalidBurstEnd,
    FreezeOperator,
    /// The frozen operator is killed and stays down for the given time.
    OperatorDown(Duration),
}

/// The events of `span`: cycles of the events below, as many as fit.
fn schedule(span: Duration) -> Vec<(Duration, Event)> {
    let down = if span >= Duration::from_secs(290) { Duration::from_secs(60) } else { Duration::from_secs(10) };
    // 27 s to 36 s: nothing but churn, so guarded's policy flips every 2 s.
    let cycle = [
        (4, Event::KillAgent(0)),
        (8, Event::KillAgent(1)),
        (12, Event::RestartAgent(0)),
        (16, Event::RestartAgent(1)),
        (20, Event::KillOperator),
        (24, Event::InvalidBurst),
        (27, Event::InvalidBurstEnd),
        (36, Event::FreezeOperator),
        (39, Event::OperatorDown(down)),
    ];
    let length = Duration::from_secs(44) + down;
    let mut events = Vec::new();
    let mut start = Duration::ZERO;
    while start + length <= span || events.is_empty() {
        events.extend(cycle.iter().map(|(at, event)| (start + Duration::from_secs(*at), *event)));
        start += length;
    }
    events
}

fn describe(schedule: &[(Duration, Event)]) -> String {
    schedule.iter().map(|(at, e)| format!("{:.0}s {e:?}", at.as_secs_f64())).collect::<Vec<_>>().join(", ")
}

/// The running daemons and what was done to them.
struct Chaos<'a> {
    lab: &'a Lab,
    manifests: PathBuf,
    listen: SocketAddr,
    endpoint: String,
    /// The operator's arguments (its PKI directory), the same at every restart.
    operator_args: Vec<String>,
    /// Each node's TLS bundle, for its agents.
    bundles: Vec<PathBuf>,
    operator: Option<u32>,
    agents: Vec<Agent>,
    /// (unix ms) an agent was SIGKILLed, and its successor was ready.
    kills: Vec<(u64, u64)>,
    /// (unix ms) a replaced agent had drained and exited.
    drains: Vec<u64>,
    /// (unix ms, what) of every chaos action.
    events: Vec<(u64, String)>,
    /// (unix ms, allowed) of every write of guarded's policy.
    flips: Vec<(u64, bool)>,
    churn_step: u64,
    /// No policy flip before this (something was down).
    quiet_until: Instant,
    /// The daemons' pids by name, for the RSS sampler.
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Chaos<'_> {
    fn note(&mut self, what: String) {
        println!("    chaos: {what}");
        self.events.push((now_ms(), what));
    }

    fn publish_pids(&self) {
        let mut pids = self.pids.lock().expect("pids lock");
        pids.clear();
        if let Some(pid) = self.operator {
            pids.insert("operator".into(), pid);
        }
        for agent in &self.agents {
            pids.insert(format!("agent {}", agent.node), agent.pid);
        }
    }

    /// Runs `schedule` (offsets from now) for `span`, with churn every second and a policy
    /// flip every [`FLIP_EVERY`] while everything is up (and nothing is due for a while).
    fn run(&mut self, span: Duration, schedule: &[(Duration, Event)]) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pending = schedule.iter().peekable();
        let mut next_churn = Duration::from_secs(1);
        let mut next_flip = FLIP_EVERY;
        while started.elapsed() < span {
            let now = started.elapsed();
            if let Some((at, event)) = pending.peek().copied()
                && now >= *at
            {
                pending.next();
                self.act(*event)?;
                continue;
            }
            if now >= next_churn {
                next_churn += Duration::from_secs(1);
                self.churn()?;
            }
            let event_soon = pending.peek().is_some_and(|(at, _)| *at < now + FLIP_GRACE);
            if now >= next_flip && !event_soon && Instant::now() >= self.quiet_until && self.operator.is_some() {
                next_flip = now + FLIP_EVERY;
                let open = !self.flips.last().is_some_and(|(_, open)| *open);
                write_atomic(&self.manifests, "guarded.yaml", &guarded_policy(open))?;
                self.flips.push((now_ms(), open));
                self.note(format!("guarded's policy flipped to {}", if open { "allow client" } else { "deny all" }));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn act(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::KillAgent(index) => {
                let node = self.lab.nodes[index].clone();
                let old = self.agents[index].pid;
                let killed = now_ms();
                self.lab.signal(old, libc::SIGKILL)?;
                self.lab.stop(old, Duration::from_secs(5))?;
                self.note(format!("agent {} SIGKILLed", node.name));
                self.agents[index] = self.start_agent(index)?;
                self.kills.push((killed, now_ms()));
                self.note(format!("agent {} restarted and ready", node.name));
            }
            Event::RestartAgent(index) => {
                let node = self.lab.nodes[index].name.clone();
                let new = self.start_agent(index)?;
                self.note(format!("agent {node}: a new one ready beside the old"));
                let old = std::mem::replace(&mut self.agents[index], new);
                let status = self.lab.stop(old.pid, Duration::from_secs(30))?;
                anyhow::ensure!(status.success(), "the replaced agent of {node} exited with {status}:\n{}", old.log());
                self.drains.push(now_ms());
                self.note(format!("agent {node}: the old one stopped (SIGTERM) and drained"));
            }
            Event::KillOperator => {
                let pid = self.operator.take().context("the operator runs")?;
                self.lab.signal(pid, libc::SIGKILL)?;
                self.lab.stop(pid, Duration::from_secs(5))?;
                self.note("operator SIGKILLed".into());
                self.start_operator()?;
            }
            Event::InvalidBurst => {
                for (i, text) in invalid_manifests().iter().enumerate() {
                    write_atomic(&self.manifests, &format!("invalid-{i:02}.yaml"), text)?;
                }
                self.note(format!("{} invalid manifests written", invalid_manifests().len()));
            }
            Event::InvalidBurstEnd => {
                for i in 0..invalid_manifests().len() {
                    let _ = std::fs::remove_file(self.manifests.join(format!("invalid-{i:02}.yaml")));
                }
                self.note("invalid manifests removed".into());
            }
            Event::FreezeOperator => {
                let pid = self.operator.context("the operator runs")?;
                self.lab.signal(pid, libc::SIGSTOP)?;
                self.note("operator frozen (SIGSTOP)".into());
            }
            Event::OperatorDown(down) => {
                let pid = self.operator.take().context("the operator runs")?;
                self.lab.signal(pid, libc::SIGKILL)?;
                self.lab.stop(pid, Duration::from_secs(5))?;
                self.publish_pids();
                self.note(format!("frozen operator SIGKILLed; down for {} s", down.as_secs()));
                let until = Instant::now() + down;
                while Instant::now() < until {
                    // Churn goes on while the operator is down: it finds it when it is back.
                    self.churn()?;
                    std::thread::sleep(Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())));
                }
                self.start_operator()?;
            }
        }
        self.quiet_until = Instant::now() + FLIP_GRACE;
        self.publish_pids();
        Ok(())
    }

    /// A new agent of node `index`, over mutual TLS with its bundle, ready.
    fn start_agent(&self, index: usize) -> anyhow::Result<Agent> {
        let node = &self.lab.nodes[index];
        let bundle = self.bundles[index].display().to_string();
        let args = [AGENT_ARGS, &["--tls-dir", &bundle]].concat();
        Agent::follow(self.lab, node, &self.endpoint, &args).with_context(|| format!("the agent of {}", node.name))
    }

    fn start_operator(&mut self) -> anyhow::Result<()> {
        let args: Vec<&str> = self.operator_args.iter().map(String::as_str).collect();
        let operator =
            Operator::start_with(self.lab, &self.manifests, self.listen, &args).context("restarting the operator")?;
        self.operator = Some(operator.pid);
        self.note("operator restarted and serving".into());
        Ok(())
    }

    /// One step of endpoint churn: both churn pods, then one, then both, then the other.
    fn churn(&mut self) -> anyhow::Result<()> {
        let present: &[&str] = match self.churn_step % 4 {
            0 => &["churn-b"],
            2 => &["churn-a"],
            _ => &["churn-a", "churn-b"],
        };
        self.churn_step += 1;
        write_atomic(&self.manifests, "churn.yaml", &churn_manifests(self.lab, present))?;
        self.events.push((now_ms(), format!("churn: {present:?}")));
        Ok(())
    }
}

impl Drop for Chaos<'_> {
    fn drop(&mut self) {
        for agent in &self.agents {
            let _ = self.lab.stop(agent.pid, Duration::from_secs(10));
        }
        if let Some(pid) = self.operator {
            let _ = self.lab.signal(pid, libc::SIGCONT);
            let _ = self.lab.stop(pid, Duration::from_secs(10));
        }
    }
}

/// A node's event counters: sent and lost (the kernel's), read (its agent's).
struct Counted {
    sent: u64,
    lost: u64,
    seen: u64,
}

fn count_events(lab: &Lab, chaos: &Chaos<'_>) -> anyhow::Result<BTreeMap<String, Counted>> {
    use aya::maps::{MapData, PerCpuArray};
    let mut counted = BTreeMap::new();
    for agent in &chaos.agents {
        let node = lab.node(&agent.node);
        let counters: PerCpuArray<MapData, u64> =
            mesh_tests::scenario::pinned_map(&node.bpffs.join(mesh_common::maps::EVENTS_LOST))?;
        let sum = |slot: u32| counters.get(&slot, 0).map(|per_cpu| per_cpu.iter().sum::<u64>()).unwrap_or(0);
        let status = mesh_tests::meshctl::run(&agent.observer_socket(lab), &["status", "-o", "json"]);
        anyhow::ensure!(status.success, "meshctl status ({}): {}", agent.node, status.stderr);
        let value: serde_json::Value = serde_json::from_str(&status.stdout)?;
        // The kernel's events read (the agent's own flows, the L7 proxy's, left out).
        let seen = value["kernel_flows"].as_str().and_then(|s| s.parse().ok()).context("kernel_flows")?;
        counted.insert(
            agent.node.clone(),
            Counted {
                sent: sum(mesh_common::maps::EVENTS_SENT_SLOT),
                lost: sum(mesh_common::maps::EVENTS_LOST_SLOT),
                seen,
            },
        );
    }
    Ok(counted)
}

/// Samples each daemon's RSS every second until `stop`: (seconds since start, MiB) by name.
fn sample_rss(pids: &Mutex<BTreeMap<String, u32>>, stop: &AtomicBool) -> BTreeMap<String, Vec<(Duration, f64)>> {
    let started = Instant::now();
    let mut samples: BTreeMap<String, Vec<(Duration, f64)>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let current = pids.lock().expect("pids lock").clone();
        for (name, pid) in current {
            if let Ok(mib) = crate::bench::control_plane::rss_mib(pid) {
                samples.entry(name).or_default().push((started.elapsed(), mib));
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    samples
}

/// Writes `dir/name` whole, in one rename: the operator never reads half a file.
fn write_atomic(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, dir.join(name)).with_context(|| format!("renaming {}", temp.display()))?;
    Ok(())
}

/// A pod of the lab, with a service account of its own name (its workload identity).
fn pod(lab: &Lab, name: &str, app: &str) -> String {
    let node = lab.nodes.iter().find(|n| n.pods.iter().any(|p| p.name == name)).expect("a lab pod");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: soak, labels: {{app: {app}, pod: {name}}}}}\nspec:\n  nodeName: {}\n  serviceAccountName: {name}\n  containers: [{{name: c, image: labnet, ports: [{{name: serve, containerPort: {TARGET_PORT}}}]}}]\nstatus: {{podIP: {}}}\n---\n",
        node.name,
        lab.pod(name).ip
    )
}

fn service(name: &str, ip: Ipv4Addr, udp: bool) -> String {
    let mut ports = format!("  - {{name: tcp, port: {PORT}, targetPort: {TARGET_PORT}, protocol: TCP}}\n");
    if udp {
        ports.push_str(&format!("  - {{name: udp, port: {PORT}, targetPort: {TARGET_PORT}, protocol: UDP}}\n"));
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: soak}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: {name}}}\n  ports:\n{ports}---\n"
    )
}

/// The namespace, the stable pods, the services and the policy of web and churn pods.
fn base_manifests(lab: &Lab) -> String {
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: soak}\n---\n");
    for (name, app) in [
        ("client", "client"),
        ("intruder", "intruder"),
        ("web-a", "web"),
        ("web-b", "web"),
        ("guarded", "guarded"),
        ("secure", "secure"),
        ("routed-a", "routed"),
        ("routed-b", "routed"),
    ] {
        text.push_str(&pod(lab, name, app));
    }
    text.push_str(&service("routed", ROUTED, false));
    text.push_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: routed, namespace: soak}\nspec:\n  parentRefs: [{group: '', kind: Service, name: routed, port: 80}]\n  rules:\n  - backendRefs: [{name: routed, port: 80}]\n---\n",
    );
    // The routed pods' port has HTTP rules (each request judged by the routed pod's node: on
    // node-0 by the route proxy delivering to routed-a, on node-1 by the agent at the end of
    // the tunnel) and outlier detection and circuit breaking (BackendTrafficPolicy): every
    // request to routed takes those paths through the chaos.
    text.push_str(&format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: routed-reads, namespace: soak}}\nspec:\n  podSelector: {{matchLabels: {{app: routed}}}}\n  ingress:\n  - action: Allow\n    ports: [{{port: {TARGET_PORT}}}]\n    principals: [{{namespace: soak, serviceAccount: client}}]\n    http: [{{methods: [GET], paths: [{{type: PathPrefix, value: /soak}}]}}]\n---\n"
    ));
    text.push_str(
        "apiVersion: mesh.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {name: routed, namespace: soak}\nspec:\n  targetRefs: [{kind: Service, name: routed}]\n  outlierDetection: {consecutive5xxErrors: 5, baseEjectionTime: 5s, maxEjectionPercent: 50}\n  connectionPool: {maxRequests: 4096}\n---\n",
    );
    text.push_str(&service("web", WEB, true));
    text.push_str(&service("churn", CHURN, true));
    text.push_str(&service("guarded", GUARDED, false));
    text.push_str(&service("secure", SECURE, false));
    // Reached from outside through either node: web's pods by NodePort, with source NAT and
    // with direct server return.
    for (name, ip, port, annotations) in [
        ("north", NORTH, NORTH_PORT, ""),
        ("north-dsr", NORTH_DSR, NORTH_DSR_PORT, ", annotations: {mesh.dev/lb-mode: dsr}"),
    ] {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: soak{annotations}}}\nspec:\n  type: NodePort\n  clusterIP: {ip}\n  selector: {{app: web}}\n  ports:\n  - {{port: {PORT}, targetPort: {TARGET_PORT}, nodePort: {port}}}\n---\n"
        ));
    }
    text.push_str(
        "apiVersion: mesh.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: secure, namespace: soak}\nspec:\n  selector: {matchLabels: {app: secure}}\n  mtls: {mode: STRICT}\n---\n",
    );
    text.push_str(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-only, namespace: soak}}\nspec:\n  podSelector:\n    matchExpressions: [{{key: app, operator: In, values: [web, churn, secure]}}]\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}, {{ipBlock: {{cidr: 172.18.0.0/16}}}}]\n    ports: [{{port: {TARGET_PORT}, protocol: TCP}}, {{port: {TARGET_PORT}, protocol: UDP}}]\n"
    ));
    text
}

fn churn_manifests(lab: &Lab, present: &[&str]) -> String {
    present.iter().map(|name| pod(lab, name, "churn")).collect()
}

fn guarded_policy(open: bool) -> String {
    let ingress = if open { "\n  - from: [{podSelector: {matchLabels: {app: client}}}]" } else { " []" };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: guarded, namespace: soak}}\nspec:\n  podSelector: {{matchLabels: {{app: guarded}}}}\n  policyTypes: [Ingress]\n  ingress:{ingress}\n"
    )
}

/// Manifests the operator must refuse without losing anything: broken syntax, hostile
/// nesting, invalid fields, and a second definition of a live pod at another address.
fn invalid_manifests() -> Vec<String> {
    let mut files = vec![
        "a: [b\n".to_owned(),
        "[".repeat(100_000),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: soak}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 70000}]}\n".to_owned(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-a, namespace: soak, labels: {app: web}}\nspec: {nodeName: node-0}\nstatus: {podIP: 10.244.9.9}\n".to_owned(),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-only, namespace: soak}\nspec: {podSelector: {matchExpressions: [{key: app, operator: Bogus}]}}\n".to_owned(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n".to_owned(),
        "a: &a [*a]\n".to_owned(),
        "\u{0}\u{1}binary".to_owned(),
    ];
    for i in 0..12 {
        files.push(format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: Bad_{i}, namespace: soak}}\n"));
    }
    files
}
