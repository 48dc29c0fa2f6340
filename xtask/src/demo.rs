//! `cargo xtask demo`: the mesh on the local lab, end to end, with what the client saw.

use std::time::Duration;

use anyhow::Context as _;
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet,
    scenario::{self, BACKENDS, CLIENT},
};

use crate::cargo;

/// Connections the demo's client makes.
const CONNECTIONS: u32 = 20;

pub fn run() -> anyhow::Result<()> {
    cargo::run(&["build", "--bins"], &[])?;

    step("Bringing up a local lab: node-0 with pods client, backend-a, backend-b");
    let lab = scenario::web_lab().context("bringing up the lab")?;
    describe(&lab);
    println!("  backend-a and backend-b answer TCP {} with their own name", scenario::BACKEND_PORT);

    let client = Placement::pod(lab.pod(CLIENT));
    let before = labnet::connect(&lab, &client, scenario::service_addr(), 1, Duration::from_secs(1))?;
    step(&format!("Before the mesh: client -> {} (service web)", scenario::service_addr()));
    show(&before);

    step("Starting mesh-agent for node-0 (state file below)");
    print!("{}", indent(&scenario::web_state(&lab)));
    let agent = Agent::start(&lab, &lab.nodes[0], &scenario::web_state(&lab), &[]).context("starting the agent")?;
    for line in agent.log().lines().filter(|l| l.contains("attached") || l.contains("service programmed")) {
        println!("  agent: {}", line.split_once(" INFO ").map_or(line, |(_, rest)| rest.trim()));
    }

    step(&format!("With the mesh: client makes {CONNECTIONS} connections to {}", scenario::service_addr()));
    let after = labnet::connect(&lab, &client, scenario::service_addr(), CONNECTIONS, Duration::from_secs(2))?;
    show(&after);

    step("What the TC programs counted on each pod's interface (from the pinned map)");
    println!("  {:<10} {:>12} {:>12} {:>12} {:>12}", "pod", "pkts sent", "bytes sent", "pkts recv", "bytes recv");
    for pod in [CLIENT, BACKENDS[0], BACKENDS[1]] {
        let t = scenario::pod_traffic(&lab.nodes[0], lab.pod(pod))?;
        println!(
            "  {pod:<10} {:>12} {:>12} {:>12} {:>12}",
            t.from_pod_packets, t.from_pod_bytes, t.to_pod_packets, t.to_pod_bytes
        );
    }

    step("Stopping the agent (SIGTERM): it detaches its programs and removes its pins");
    let status = lab.stop(agent.pid, Duration::from_secs(10))?;
    println!("  agent exited: {status}");
    drop(lab);
    step("Lab removed: no namespace, cgroup, pin or process of it remains");

    let balanced = after.ok == CONNECTIONS && BACKENDS.iter().all(|b| after.replies.contains_key(*b));
    anyhow::ensure!(balanced, "the demo's connections were not all answered by both backends: {after:?}");
    println!("\nThe virtual IP answered through the mesh. Run it again with: make demo");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn describe(lab: &Lab) {
    for node in &lab.nodes {
        println!("  {} ({}), pods {}:", node.name, node.ip, node.pod_cidr);
        for pod in &node.pods {
            println!("    {:<10} {:<12} host interface {}", pod.name, pod.ip.to_string(), pod.host_iface);
        }
    }
}

fn show(summary: &labnet::Summary) {
    println!("  answered {} of {}", summary.ok, summary.ok + summary.failed);
    for (reply, count) in &summary.replies {
        println!("    {count:>3} x reply from {reply:?}");
    }
    for (error, count) in &summary.errors {
        println!("    {count:>3} x failed: {error}");
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  | {l}\n")).collect()
}
