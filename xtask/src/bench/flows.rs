//! `cargo xtask bench flows`: flow events per second from the kernel to a client of the
//! Observer API, with loss counted, at offered loads of 100k, 1M and 1.2M events/s, and
//! 3M (beyond two cores: the loss is counted and the agent's memory bounded).
//!
//! One lab node runs the real agent. `mesh-flowgen` follows its Observer API over the unix
//! socket (walking every `GetFlowsResponse`, checking each flow's addresses and decoding one in a
//! thousand whole), then runs the object's event generator with
//! `BPF_PROG_TEST_RUN` at the offered rate: each run emits one event into the agent's ring
//! buffer through the same code as the attached programs. The baseline is what was offered;
//! `lost_counted` is what the kernel's counter and the stream's lost-event messages report;
//! `lost_uncounted` is offered - received - counted, which must be 0.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use mesh_tests::{agent::Agent, scenario};

use super::{Report, Row};

/// The benchmark's reader decodes one flow in this many whole (it checks every flow's addresses).
const CHECKED_READER: u64 = 1000;
/// The scale also read by a client that decodes every flow whole.
const WHOLE_DECODE_SCALE: u64 = 1_000_000;

pub fn run(scales: &[u64], seconds: f64) -> anyhow::Result<Report> {
    let began = Instant::now();
    super::release_binaries()?;
    let lab = scenario::web_lab().context("bringing up the lab")?;
    let node = &lab.nodes[0];
    let agent = Agent::start(&lab, node, &scenario::web_state(&lab), &[]).context("starting the agent")?;
    let (src, dst) = (lab.pod(scenario::CLIENT).ip, lab.pod(scenario::BACKENDS[0]).ip);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // Every scale with the benchmark's reader; at 1M/s also with a reader that builds every
    // response with the generated types, as a typical client does.
    let mut runs: Vec<(&str, u64, u64)> = scales.iter().map(|&scale| ("observer", scale, CHECKED_READER)).collect();
    if scales.contains(&WHOLE_DECODE_SCALE) {
        runs.push(("observer_whole_decode", WHOLE_DECODE_SCALE, 1));
    }
    for (case, scale, decode_every) in runs {
        // Where the two cores went: the agent's CPU, and mesh-flowgen's (generator and reader).
        let (agent_cpu, flowgen_cpu, t) = (super::process_cpu(agent.pid), children_cpu(), Instant::now());
        let output = std::process::Command::new(mesh_tests::built_binary("mesh-flowgen"))
            .arg("--bpffs")
            .arg(&node.bpffs)
            .arg("--socket")
            .arg(agent.observer_socket(&lab))
            .args(["--rate", &scale.to_string(), "--seconds", &seconds.to_string()])
            .args(["--src", &src.to_string(), "--dst", &dst.to_string()])
            .args(["--decode-whole-every", &decode_every.to_string()])
            .output()
            .context("running mesh-flowgen")?;
        anyhow::ensure!(
            output.status.success(),
            "mesh-flowgen failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            agent.log()
        );
        let wall = t.elapsed().as_secs_f64();
        let share = |used: Duration| used.as_secs_f64() / wall * 100.0;
        let agent_share =
            share(super::process_cpu(agent.pid).unwrap_or_default().saturating_sub(agent_cpu.unwrap_or_default()));
        let flowgen_share = share(children_cpu().saturating_sub(flowgen_cpu));
        let result: serde_json::Value = serde_json::from_slice(&output.stdout).context("mesh-flowgen's JSON")?;
        let number = |key: &str| result.get(key).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let (offered, generated_s, received) = (number("offered"), number("generated_s"), number("received"));
        // The reader walks every response and decodes the asked share of flows whole.
        anyhow::ensure!(
            number("fully_decoded") >= (received / decode_every as f64).floor(),
            "mesh-flowgen decoded {} flows whole of {received} received: its reader skipped its checks",
            number("fully_decoded"),
        );
        let counted = number("lost_in_kernel") + number("lost_in_stream");
        let uncounted = (offered - received - counted).max(0.0);
        let offered_rate = offered / generated_s;
        // Delivered per second, from the first event offered to the last one received.
        let delivered_rate = received / number("drained_s").max(generated_s);
        let row = |case: &str, metric: &str, value: f64, unit: &str, baseline: Option<f64>| Row {
            case: case.into(),
            scale,
            metric: metric.into(),
            value,
            unit: unit.into(),
            baseline: baseline.map(|_| "offered".into()),
            ratio: baseline.map(|b| if b > 0.0 { value / b } else { 0.0 }),
        };
        if case == "observer" {
            rows.push(row("offered", "events_per_s", offered_rate, "1/s", None));
        }
        rows.push(row(case, "events_per_s", delivered_rate, "1/s", Some(offered_rate)));
        rows.push(row(case, "lost_counted", counted, "events", None));
        rows.push(row(case, "lost_uncounted", uncounted, "events", None));
        // What the agent's memory grew to so far (a slow follower's backlog is bounded).
        rows.push(row("agent", "peak_rss_bytes", peak_rss(agent.pid)?, "bytes", None));
        notes.push(format!(
            "{case} at {scale}: offered {offered} events in {generated_s:.2} s (at {offered_rate:.0}/s), received {received} (the last {:.2} s after the first was offered; {} decoded whole, every one's addresses checked), lost {} in the kernel ring buffer and {} by the follower",
            number("drained_s"),
            number("fully_decoded"),
            number("lost_in_kernel"),
            number("lost_in_stream")
        ));
        notes.push(format!(
            "{case} at {scale}: over its {wall:.1} s the agent used {agent_share:.0}% of a CPU, mesh-flowgen (generator and reader) {flowgen_share:.0}%"
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = lab.stop(agent.pid, Duration::from_secs(10));
    notes.push(format!("ran for {:.0} s", began.elapsed().as_secs_f64()));
    Ok(Report { bench: "flows".into(), rows, notes })
}

/// A process's peak resident set size (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmHWM in the agent's status")?;
    Ok(kib * 1024.0)
}

/// User plus system CPU time of this process's children that have ended (and were waited for).
fn children_cpu() -> Duration {
    // SAFETY: `getrusage` fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}
