//! The foundation's end-to-end path: a client pod connects to a virtual service address and
//! is answered by a backend pod, because `connect4`, attached by the real agent, rewrote the
//! connection. Everything runs in a fresh lab; assertions are on what the client saw.

use std::{collections::BTreeSet, time::Duration};

use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet::{self, Summary},
    privileges::privileged,
    scenario::{self, BACKENDS, CLIENT},
};

const PER_CONNECTION: Duration = Duration::from_secs(2);
/// For connections expected to fail: long enough for an answer on this machine to arrive.
const SHORT: Duration = Duration::from_millis(1000);

fn connect(lab: &Lab, placement: &Placement, count: u32, per_connection: Duration) -> Summary {
    labnet::connect(lab, placement, scenario::service_addr(), count, per_connection).expect("client runs")
}

#[test]
fn connections_to_the_virtual_ip_reach_both_backends() {
    if !privileged("connections_to_the_virtual_ip_reach_both_backends") {
        return;
    }
    let lab = scenario::web_lab().expect("lab");
    let client = Placement::pod(lab.pod(CLIENT));

    // Without the agent nothing answers on the virtual IP: the node has no route to it.
    let before = connect(&lab, &client, 1, SHORT);
    assert_eq!((before.ok, before.failed), (0, 1), "the VIP answered before the agent ran: {before:?}");

    let agent = Agent::start(&lab, &lab.nodes[0], &scenario::web_state(&lab), &[]).expect("agent ready");
    let summary = connect(&lab, &client, 100, PER_CONNECTION);
    assert_eq!(summary.ok, 100, "every connection must be answered: {summary:?}\nagent log:\n{}", agent.log());
    let answered: BTreeSet<&str> = summary.replies.keys().map(String::as_str).collect();
    assert_eq!(answered, BTreeSet::from(BACKENDS), "both backends, and only they, answer: {summary:?}");

    // A process in the same pod network namespace but outside the node's cgroup is not
    // rewritten: its connection to the VIP goes nowhere.
    let outside = Placement { netns: Some(lab.pod(CLIENT).netns_path.clone()), cgroup: lab.system_cgroup() };
    let summary = connect(&lab, &outside, 1, SHORT);
    assert_eq!((summary.ok, summary.failed), (0, 1), "outside the cgroup the VIP must not be rewritten: {summary:?}");

    // The TC programs counted the traffic on the backends' (and the client's) interfaces.
    for pod in [BACKENDS[0], BACKENDS[1], CLIENT] {
        let counted = scenario::pod_traffic(&lab.nodes[0], lab.pod(pod)).expect("counters");
        assert!(counted.to_pod_packets > 0 && counted.from_pod_packets > 0, "{pod}: {counted:?}");
        assert!(counted.to_pod_bytes >= 40 * counted.to_pod_packets, "{pod}: bytes not counted: {counted:?}");
    }

    // SIGTERM: a clean exit that detaches everything and removes the pins.
    let status = lab.stop(agent.pid, Duration::from_secs(10)).expect("agent stops");
    assert!(status.success(), "agent exit: {status}\n{}", agent.log());
    let after = connect(&lab, &client, 1, SHORT);
    assert_eq!((after.ok, after.failed), (0, 1), "the VIP still answered after the agent detached: {after:?}");
    assert!(!lab.nodes[0].bpffs.exists(), "pins left behind in {}", lab.nodes[0].bpffs.display());
}

#[test]
fn a_sigterm_while_the_agent_starts_is_a_clean_stop() {
    if !privileged("a_sigterm_while_the_agent_starts_is_a_clean_stop") {
        return;
    }
    let lab = scenario::web_lab().expect("lab");
    let node = &lab.nodes[0];
    let agent = Agent::spawn_with_state(&lab, node, &scenario::web_state(&lab), &[]).expect("agent runs");
    // Its programs are loaded and pinned, its pods not yet attached: a stop now (a rollout,
    // a node drain) must neither kill it halfway nor leave pins behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !agent.log().contains("programs loaded") {
        assert!(std::time::Instant::now() < deadline, "the agent never loaded its programs:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = lab.stop(agent.pid, Duration::from_secs(10)).expect("agent stops");
    assert!(status.success(), "a SIGTERM while starting ended the agent with {status}:\n{}", agent.log());
    assert!(agent.log().contains("SIGTERM: shutting down"), "{}", agent.log());
    assert!(!node.bpffs.exists(), "pins left behind in {}", node.bpffs.display());
    let after = connect(&lab, &Placement::pod(lab.pod(CLIENT)), 1, SHORT);
    assert_eq!((after.ok, after.failed), (0, 1), "the VIP still answered after the agent stopped: {after:?}");
}

#[test]
fn a_kept_datapath_outlives_the_agent_and_is_taken_over() {
    if !privileged("a_kept_datapath_outlives_the_agent_and_is_taken_over") {
        return;
    }
    datapath_outlives_its_agent(&["--keep-datapath"], |lab, first| {
        assert!(lab.stop(first.pid, Duration::from_secs(10)).expect("agent stops").success(), "{}", first.log());
    });
}

#[test]
fn a_killed_agent_leaves_the_datapath_running_and_the_next_one_takes_over() {
    if !privileged("a_killed_agent_leaves_the_datapath_running_and_the_next_one_takes_over") {
        return;
    }
    // Without --keep-datapath: a crash is not a choice the agent made.
    datapath_outlives_its_agent(&[], |lab, first| {
        lab.signal(first.pid, libc::SIGKILL).expect("SIGKILL");
        lab.stop(first.pid, Duration::from_secs(10)).expect("reaped");
    });
}

/// A first agent (started with `first_args`) ends by `end`; its datapath must keep answering
/// with no agent; a second agent takes over; once that one stops without keep-datapath,
/// nothing of either is left.
fn datapath_outlives_its_agent(first_args: &[&str], end: impl FnOnce(&Lab, &Agent)) {
    let lab = scenario::web_lab().expect("lab");
    let client = Placement::pod(lab.pod(CLIENT));
    let node = &lab.nodes[0];
    let state = scenario::web_state(&lab);

    let first = Agent::start(&lab, node, &state, first_args).expect("agent ready");
    end(&lab, &first);
    let summary = connect(&lab, &client, 20, PER_CONNECTION);
    assert_eq!(summary.ok, 20, "the datapath must keep answering with no agent: {summary:?}\n{}", first.log());

    let second = Agent::start(&lab, node, &state, &[]).expect("second agent ready");
    assert!(second.log().contains("took over"), "the second agent did not take over:\n{}", second.log());
    let summary = connect(&lab, &client, 20, PER_CONNECTION);
    assert_eq!(summary.ok, 20, "{summary:?}");

    assert!(lab.stop(second.pid, Duration::from_secs(10)).expect("agent stops").success(), "{}", second.log());
    let after = connect(&lab, &client, 1, SHORT);
    assert_eq!((after.ok, after.failed), (0, 1), "the first agent's links must be gone too: {after:?}");
    assert!(!node.bpffs.exists(), "pins left behind");
}

#[test]
fn a_pod_the_node_cannot_route_stops_the_agent_with_the_pod_named() {
    if !privileged("a_pod_the_node_cannot_route_stops_the_agent_with_the_pod_named") {
        return;
    }
    let lab = scenario::web_lab().expect("lab");
    // An address the node has no route to: the agent cannot find the pod's interface.
    let state = scenario::web_state(&lab).replace(&lab.pod(BACKENDS[1]).ip.to_string(), "10.250.0.9");
    let err = Agent::start(&lab, &lab.nodes[0], &state, &[]).expect_err("the agent must refuse to start");
    let message = err.to_string();
    assert!(message.contains("no route to pod default/backend-b (10.250.0.9)"), "{message}");
    assert!(!lab.nodes[0].bpffs.exists(), "a failed start left pins behind");
    let summary = connect(&lab, &Placement::pod(lab.pod(CLIENT)), 1, SHORT);
    assert_eq!((summary.ok, summary.failed), (0, 1), "a failed start left the VIP rewritten: {summary:?}");
}

#[test]
fn an_agent_without_its_capabilities_names_what_is_missing_and_loads_nothing() {
    if !privileged("an_agent_without_its_capabilities_names_what_is_missing_and_loads_nothing") {
        return;
    }
    let lab = scenario::web_lab().expect("lab");
    let node = &lab.nodes[0];
    let state = lab.dir.join("state.yaml");
    std::fs::write(&state, scenario::web_state(&lab)).expect("state file");
    // Root, but with the capabilities the DaemonSet grants taken away (and SYS_ADMIN, which
    // would stand in for two of them).
    let output = std::process::Command::new("setpriv")
        .arg("--bounding-set=-bpf,-perfmon,-net_admin,-sys_admin")
        .arg(mesh_tests::agent_binary())
        .args(["--node-name", &node.name, "--cgroup"])
        .arg(&node.cgroup)
        .arg("--bpffs")
        .arg(&node.bpffs)
        .arg("--state-file")
        .arg(&state)
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for missing in ["capability CAP_BPF", "capability CAP_PERFMON", "capability CAP_NET_ADMIN"] {
        assert!(stderr.contains(missing), "{missing} is not named: {stderr}");
    }
    assert!(stderr.contains("securityContext"), "no advice: {stderr}");
    assert!(!node.bpffs.exists(), "something was loaded: {}", node.bpffs.display());
}
