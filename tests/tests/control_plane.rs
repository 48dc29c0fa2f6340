//! The whole control-plane path in a two-node lab: mesh-operator in local mode reads the
//! demo manifests, each node's agent follows its stream, and a client pod's connections to
//! the service reach backends on both nodes. Manifest changes reach the datapath; an operator
//! restart and an agent restart keep the datapath working.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet,
    operator::{Operator, free_port},
    privileges::privileged,
    scenario::{self, demo},
};

/// Who answered `count` connections from the client (all must be answered).
fn answered(lab: &Lab, count: u32) -> BTreeSet<String> {
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let summary =
        labnet::connect(lab, &client, scenario::service_addr(), count, Duration::from_secs(2)).expect("client runs");
    assert_eq!(summary.failed, 0, "connections failed: {summary:?}");
    summary.replies.into_keys().collect()
}

/// Waits (bounded) until the client's connections are answered by exactly `expected`.
fn eventually_answered_by(lab: &Lab, expected: &[&str], what: &str, logs: impl Fn() -> String) {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = BTreeSet::new();
    while Instant::now() < deadline {
        last = answered(lab, 20);
        if last == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: answered by {last:?}, expected {expected:?}\n{}", logs());
}

#[test]
fn manifests_reach_both_nodes_datapaths_through_the_operator() {
    if !privileged("manifests_reach_both_nodes_datapaths_through_the_operator") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let operator =
        Operator::start_with(&lab, &manifests, listen, &["--metrics-listen", &metrics_arg]).expect("operator serves");
    let agents: Vec<Agent> = lab
        .nodes
        .iter()
        .map(|node| Agent::follow(&lab, node, &operator.endpoint(), &["--keep-datapath"]).expect("agent ready"))
        .collect();
    let logs =
        || format!("operator:\n{}\nagents:\n{}", operator.log(), agents.iter().map(Agent::log).collect::<String>());

    // Both backends answer, one of them across nodes.
    eventually_answered_by(&lab, &demo::WEB, "at start", logs);

    // A manifest change: web-b leaves the service (its label changes).
    let file = manifests.join("demo.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    let web_b_out =
        original.replacen("app: web\nspec:\n  nodeName: node-1", "app: retired\nspec:\n  nodeName: node-1", 1);
    assert_ne!(web_b_out, original, "the demo manifests changed shape; fix this test's edit");
    std::fs::write(&file, &web_b_out).unwrap();
    eventually_answered_by(&lab, &["web-a"], "after web-b left the service", logs);

    // Whether the change is applied is read from each node's agent (`meshctl status`, its
    // metrics) and from the operator's metrics, not from logs: every one says the operator's
    // model version.
    let version = metric(metrics, "mesh_operator_model_version ");
    assert!(version >= 2.0, "the change is a new version: {version}");
    let deadline = Instant::now() + Duration::from_secs(10);
    for (node, agent) in lab.nodes.iter().zip(&agents) {
        loop {
            let status = mesh_tests::meshctl::run(&agent.observer_socket(&lab), &["status", "-o", "json"]);
            let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap_or_default();
            let acked = metric(metrics, &format!("mesh_operator_agent_acked_version{{node=\"{}\"}} ", node.name));
            let exposed =
                mesh_tests::metrics::value(&mesh_tests::metrics::agent(&node.netns_path), "mesh_agent_model_version ");
            if status["model"]["version"] == version as u64 && acked == version && exposed == version {
                assert!(!status["model"]["epoch"].as_str().unwrap_or_default().is_empty(), "{status}");
                let text = mesh_tests::meshctl::run(&agent.observer_socket(&lab), &["status"]).stdout;
                assert!(text.contains(&format!("Model: version {version} of operator run ")), "{text}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: status {} / operator's ACKed {acked} / agent's metric {exposed}, model {version}",
                node.name,
                status["model"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn the_datapath_survives_operator_and_agent_restarts() {
    if !privileged("the_datapath_survives_operator_and_agent_restarts") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let operator = Operator::start(&lab, &manifests, listen).expect("operator serves");
    let node0 = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &["--keep-datapath"]).expect("agent ready");
    let node1 = Agent::follow(&lab, &lab.nodes[1], &operator.endpoint(), &[]).expect("agent ready");
    eventually_answered_by(&lab, &demo::WEB, "at start", || operator.log());

    // The operator goes away: the agents keep their datapath.
    let stopping = Instant::now();
    assert!(lab.stop(operator.pid, Duration::from_secs(10)).unwrap().success(), "{}", operator.log());
    // SIGTERM drains: bounded, whatever the agents' streams do.
    assert!(
        stopping.elapsed() < mesh_common::drain::DRAIN_TIMEOUT + Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    assert!(operator.log().contains("drained"), "{}", operator.log());
    assert_eq!(answered(&lab, 20), demo::WEB.iter().map(|s| (*s).to_owned()).collect(), "without the operator");

    // While it is down the manifests change; the restarted operator (a new epoch) sends a
    // snapshot and the agents, reconnecting by themselves, apply it.
    let (file, text) = retire_web_b(&manifests);
    let operator = Operator::start(&lab, &manifests, listen).expect("operator serves again");
    let logs = || format!("operator:\n{}\nnode-0:\n{}\nnode-1:\n{}", operator.log(), node0.log(), node1.log());
    eventually_answered_by(&lab, &["web-a"], "after the operator restart", logs);
    for agent in [&node0, &node1] {
        // Each reconnects by itself, after a backoff of its own, and applies the snapshot.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.log().matches("applied update").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} did not reconnect and apply the snapshot:\n{}",
                agent.node,
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // node-0's agent restarts (it keeps its datapath while it is down): the client on node-0
    // is served throughout, and the new agent takes over.
    assert!(lab.stop(node0.pid, Duration::from_secs(10)).unwrap().success(), "{}", node0.log());
    assert_eq!(answered(&lab, 20), BTreeSet::from(["web-a".to_owned()]), "while node-0's agent is down");
    let node0 = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &[]).expect("agent ready again");
    assert!(node0.log().contains("took over"), "{}", node0.log());
    std::fs::write(&file, text).unwrap();
    eventually_answered_by(&lab, &demo::WEB, "after the agent restart and web-b's return", || node0.log());
}

#[test]
fn the_stream_is_mutual_tls_and_each_agent_proves_its_node() {
    if !privileged("the_stream_is_mutual_tls_and_each_agent_proves_its_node") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifests, &[]).expect("operator serves");

    // Refused: node-1's agent with node-0's certificate, then one that speaks plaintext (one
    // at a time: two agents of one node would share its pins).
    let wrong_bundle = bundles[0].display().to_string();
    let attempts: [(&str, Vec<&str>, &str); 2] = [
        (&operator.tls_endpoint(), vec!["--tls-dir", &wrong_bundle], "each agent needs its own node's bundle"),
        (&operator.endpoint(), vec![], "WARN"),
    ];
    for (endpoint, args, expected) in attempts {
        let refused = Agent::spawn_following(&lab, &lab.nodes[1], endpoint, &args).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !refused.log().contains(expected) {
            assert!(Instant::now() < deadline, "expected {expected:?} in:\n{}", refused.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!refused.ready_file.exists() && !refused.log().contains("applied update"), "{}", refused.log());
        assert!(lab.stop(refused.pid, Duration::from_secs(10)).unwrap().success(), "{}", refused.log());
    }
    assert!(operator.log().contains("refused a stream: the certificate names another node"), "{}", operator.log());

    // Each node's own bundle: served, and the service works across nodes.
    let _agents: Vec<Agent> = lab
        .nodes
        .iter()
        .zip(&bundles)
        .map(|(node, bundle)| {
            let bundle = bundle.display().to_string();
            Agent::follow(&lab, node, &operator.tls_endpoint(), &["--tls-dir", &bundle]).expect("agent ready over TLS")
        })
        .collect();
    eventually_answered_by(&lab, &demo::WEB, "over mutual TLS", || operator.log());
}

#[test]
fn a_nacked_update_is_reported_and_retried_until_it_applies() {
    if !privileged("a_nacked_update_is_reported_and_retried_until_it_applies") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    // A pod of node-0 whose interface does not exist yet (its sandbox is still being made).
    std::fs::write(
        manifests.join("late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: demo}\nspec: {nodeName: node-0, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.0.99}\n",
    )
    .unwrap();
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let operator =
        Operator::start_with(&lab, &manifests, listen, &["--metrics-listen", &metrics_arg]).expect("operator serves");
    let agent = Agent::spawn_following(&lab, &lab.nodes[0], &operator.endpoint(), &[]).unwrap();

    // The agent NACKs with the reason; the operator reports it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reason = "no route to pod demo/late (10.244.0.99)";
    while !(agent.log().contains("NACK") && operator.log().contains(reason)) {
        assert!(Instant::now() < deadline, "agent:\n{}\noperator:\n{}", agent.log(), operator.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!agent.ready_file.exists(), "ready although the state did not apply");
    let nacks = metric(metrics, "mesh_operator_agent_nacks_total{node=\"node-0\"}");
    assert!(nacks >= 1.0, "the NACK is not in the operator's metrics ({nacks})");

    // The interface appears: the agent's retry applies the same version and becomes ready.
    let netns = &lab.nodes[0].netns;
    for args in [
        vec!["link", "add", "late0", "type", "veth", "peer", "name", "late1"],
        vec!["link", "set", "late0", "up"],
        vec!["route", "add", "10.244.0.99/32", "dev", "late0"],
    ] {
        let status = std::process::Command::new("ip").arg("-n").arg(netns).args(&args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    lab.wait_for_file(&agent.ready_file, agent.pid, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent.log().contains("pod=demo/late"), "{}", agent.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(metrics, "mesh_operator_agent_acks_total{node=\"node-0\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the ACK after the retry is not in the operator's metrics");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn half_open_streams_are_noticed_on_both_ends() {
    if !privileged("half_open_streams_are_noticed_on_both_ends") {
        return;
    }
    use mesh_common::model::{STREAM_KEEPALIVE_INTERVAL, STREAM_KEEPALIVE_TIMEOUT};
    // Noticed within interval + timeout; the rest is scheduling slack on a busy machine.
    let notice = STREAM_KEEPALIVE_INTERVAL + STREAM_KEEPALIVE_TIMEOUT + Duration::from_secs(5);
    let (lab, manifests) = demo::lab().expect("lab");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let operator =
        Operator::start_with(&lab, &manifests, listen, &["--metrics-listen", &metrics_arg]).expect("operator serves");
    let agent = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &[]).expect("agent ready");
    assert_eq!(metric(metrics, "mesh_operator_agents_connected"), 1.0);

    // A frozen agent (its connection open, nothing answering) is dropped by the operator.
    lab.signal(agent.pid, libc::SIGSTOP).expect("freeze the agent");
    let frozen = Instant::now();
    while metric(metrics, "mesh_operator_agents_connected") > 0.0 {
        assert!(frozen.elapsed() < notice, "the operator still counts a frozen agent\n{}", operator.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.signal(agent.pid, libc::SIGCONT).expect("thaw the agent");
    let thawed = Instant::now();
    while metric(metrics, "mesh_operator_agents_connected") < 1.0 {
        assert!(thawed.elapsed() < notice, "the agent did not come back\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A frozen operator: the agent notices by itself (no RST ever comes) ...
    let broken = |log: &str| log.matches("the stream broke").count() + log.matches("cannot reach the operator").count();
    let before = broken(&agent.log());
    lab.signal(operator.pid, libc::SIGSTOP).expect("freeze the operator");
    let frozen = Instant::now();
    while broken(&agent.log()) == before {
        assert!(frozen.elapsed() < notice, "the agent still follows a frozen operator\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... and follows the operator that replaces it at the same address, with the changes
    // made meanwhile.
    let _ = lab.stop(operator.pid, Duration::from_millis(100));
    retire_web_b(&manifests);
    let connected = agent.log().matches("connected to the operator").count();
    let successor = Operator::start(&lab, &manifests, listen).expect("a new operator serves");
    let logs = || format!("operator:\n{}\nagent:\n{}", successor.log(), agent.log());
    eventually_answered_by(&lab, &["web-a"], "after the new operator's snapshot", logs);
    assert!(agent.log().matches("connected to the operator").count() > connected, "{}", logs());
}

/// Takes web-b out of the demo service (its label changes) in the manifests; returns the
/// file and its text before, to put it back.
fn retire_web_b(manifests: &std::path::Path) -> (std::path::PathBuf, String) {
    let file = manifests.join("demo.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let retired = text.replacen("app: web\nspec:\n  nodeName: node-1", "app: retired\nspec:\n  nodeName: node-1", 1);
    assert_ne!(retired, text, "demo.yaml no longer has web-b where this test expects it");
    std::fs::write(&file, retired).unwrap();
    (file, text)
}

/// One sample of the operator's Prometheus endpoint (0 if absent).
fn metric(addr: SocketAddr, series: &str) -> f64 {
    mesh_tests::metrics::operator(addr).lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}
