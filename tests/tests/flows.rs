//! Flow observability end to end: real clients in the demo lab, the real agents' flow events,
//! read with the real `meshctl` (and with a Python client generated from the .proto files).
//! Assertions are on what `meshctl` printed for what the clients did.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet, meshctl,
    operator::{Operator, free_port},
    privileges::privileged,
    scenario::{self, demo},
};
use serde_json::Value;

const CONNECTIONS: u32 = 6;

struct Mesh {
    lab: Lab,
    agents: Vec<Agent>,
    /// Kept running for the agents.
    _operator: Operator,
}

impl Mesh {
    fn socket(&self, node: usize) -> PathBuf {
        self.agents[node].observer_socket(&self.lab)
    }
}

/// The demo lab with its operator and both agents, and the demo's traffic: the client's
/// connections to the service, and the intruder's, denied.
fn demo_mesh() -> Mesh {
    let (lab, operator) = demo_operator();
    let agents = lab
        .nodes
        .iter()
        // Every socket event, so that each kind of flow can be checked.
        .map(|node| {
            Agent::follow(&lab, node, &operator.endpoint(), &["--flow-aggregation", "none"]).expect("agent ready")
        })
        .collect();
    Mesh { lab, agents, _operator: operator }
}

/// The demo lab and its operator (local mode), no agent yet.
fn demo_operator() -> (Lab, Operator) {
    let (lab, manifests) = demo::lab().expect("lab");
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let operator = Operator::start(&lab, &manifests, listen).expect("operator");
    (lab, operator)
}

fn get<'a>(flow: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(flow, |v, key| v.get(key).unwrap_or(&Value::Null))
}

fn text<'a>(flow: &'a Value, path: &str) -> &'a str {
    get(flow, path).as_str().unwrap_or("")
}

fn pod(flow: &Value, side: &str) -> String {
    format!("{}/{}", text(flow, &format!("{side}.namespace")), text(flow, &format!("{side}.pod_name")))
}

/// Waits until `meshctl` shows a flow matching `args` and `check`, for up to 5 s.
fn wait_for(socket: &Path, args: &[&str], check: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = meshctl::flows(socket, args);
        if flows.iter().any(&check) || Instant::now() > deadline {
            return flows;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn flows_show_pods_verdicts_reasons_services_and_filter_like_hubble() {
    if !privileged("flows_show_pods_verdicts_reasons_services_and_filter_like_hubble") {
        return;
    }
    let mesh = demo_mesh();
    let lab = &mesh.lab;
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let answered = labnet::connect(lab, &client, scenario::service_addr(), CONNECTIONS, Duration::from_secs(2))
        .expect("client runs");
    assert_eq!(answered.ok, CONNECTIONS, "the client must be answered: {answered:?}");
    let intruder = Placement::pod(lab.pod(demo::INTRUDER));
    let denied = labnet::connect(lab, &intruder, scenario::service_addr(), 2, Duration::from_millis(700))
        .expect("intruder runs");
    assert_eq!(denied.ok, 0, "the policy must keep the intruder out: {denied:?}");
    let node0 = mesh.socket(0);

    // A real client's connection: forwarded, from client to a web pod, through demo/web.
    let forwarded = wait_for(&node0, &["--from-pod", "demo/client", "--verdict", "FORWARDED"], |f| {
        text(f, "destination_service.name") == "web"
    });
    let start = forwarded
        .iter()
        .find(|f| get(f, "l4.TCP.flags.SYN") == &Value::Bool(true) && text(f, "traffic_direction") == "EGRESS")
        .unwrap_or_else(|| panic!("no forwarded SYN from the client: {forwarded:#?}"));
    assert!(pod(start, "destination").starts_with("demo/web-"), "{start:#}");
    assert_eq!(text(start, "destination_service.namespace"), "demo", "{start:#}");
    assert_eq!(get(start, "l4.TCP.destination_port"), &Value::from(demo::WEB_PORT), "{start:#}");
    assert_eq!(get(start, "is_reply"), &Value::Bool(false), "{start:#}");
    assert_eq!(text(start, "node_name"), "node-0");
    assert!(get(start, "source.labels").to_string().contains("k8s:app=client"), "{start:#}");
    // Its end, with the bytes both ways.
    let ended = wait_for(&node0, &["--from-pod", "demo/client", "--tcp-flags", "FIN"], |f| {
        text(f, "extensions.event") == "FLOW_END"
    });
    let end = ended.iter().find(|f| text(f, "extensions.event") == "FLOW_END").expect("a flow end");
    assert!(text(end, "extensions.bytes").parse::<u64>().unwrap_or(0) > 0, "{end:#}");
    assert!(text(end, "extensions.reply_bytes").parse::<u64>().unwrap_or(0) > 0, "{end:#}");

    // The translation at the socket: which service, which backend.
    let translated = wait_for(&node0, &["--verdict", "TRANSLATED"], |f| pod(f, "source") == "demo/client");
    let xlate = translated.iter().find(|f| pod(f, "source") == "demo/client").expect("a translated flow");
    assert_eq!(text(xlate, "destination_service.name"), "web", "{xlate:#}");
    assert_eq!(text(xlate, "sock_xlate_point"), "SOCK_XLATE_POINT_POST_DIRECTION_FWD", "{xlate:#}");
    assert!(pod(xlate, "destination").starts_with("demo/web-"), "{xlate:#}");

    // The denied connection: dropped at the web pod's ingress, by the MeshPolicy, with its reason.
    let drops: Vec<Value> = (0..2)
        .flat_map(|node| {
            wait_for(&mesh.socket(node), &["--verdict", "DROPPED"], |f| pod(f, "source") == "demo/intruder")
        })
        .filter(|f| pod(f, "source") == "demo/intruder")
        .collect();
    let denied_flow = drops.first().unwrap_or_else(|| panic!("no drop of the intruder on either node"));
    assert_eq!(text(denied_flow, "drop_reason_desc"), "POLICY_DENY", "{denied_flow:#}");
    assert_eq!(text(denied_flow, "traffic_direction"), "INGRESS", "{denied_flow:#}");
    assert!(pod(denied_flow, "destination").starts_with("demo/web-"), "{denied_flow:#}");
    let by = &get(denied_flow, "ingress_denied_by")[0];
    assert_eq!((text(by, "kind"), text(by, "namespace"), text(by, "name")), ("MeshPolicy", "demo", "deny-intruder"));

    // A drop by default deny (web is isolated by its NetworkPolicy, which lets only the team's
    // namespaces in; node-1's host is none of them): no policy in `ingress_denied_by`, which
    // names policies whose rules deny, as Cilium's do; the isolating policy is in the rule.
    let host = Placement { netns: Some(lab.nodes[1].netns_path.clone()), cgroup: lab.system_cgroup() };
    let web_a = SocketAddr::from((lab.pod("web-a").ip, demo::WEB_PORT));
    let refused = labnet::connect(lab, &host, web_a, 1, Duration::from_millis(700)).expect("host client runs");
    assert_eq!(refused.ok, 0, "{refused:?}");
    let node1_ip = lab.nodes[1].ip.to_string();
    let isolated = wait_for(&node0, &["--verdict", "DROPPED", "--from-ip", &node1_ip], |f| {
        text(f, "extensions.rule").contains("isolation (default deny)")
    });
    let isolated =
        isolated.iter().find(|f| text(f, "extensions.rule").contains("isolation")).expect("a default-deny drop");
    assert!(text(isolated, "extensions.rule").contains("web-from-team"), "{isolated:#}");
    assert_eq!(get(isolated, "ingress_denied_by"), &Value::Null, "{isolated:#}");
    assert_eq!(text(isolated, "drop_reason_desc"), "POLICY_DENIED", "{isolated:#}");

    // Every filter selects exactly what it claims, and --not the rest.
    std::thread::sleep(Duration::from_millis(500));
    let all = meshctl::flows(&node0, &[]);
    let client_ip = lab.pod(demo::CLIENT).ip.to_string();
    let starts = |v: &str, p: &str| v.starts_with(p);
    type Check = Box<dyn Fn(&Value) -> bool>;
    let cases: Vec<(Vec<&str>, Check)> = vec![
        (
            vec!["--pod", "demo/client"],
            Box::new(|f| pod(f, "source") == "demo/client" || pod(f, "destination") == "demo/client"),
        ),
        (vec!["--from-pod", "demo/web"], Box::new(move |f| starts(&pod(f, "source"), "demo/web"))),
        (vec!["--to-pod", "demo/web"], Box::new(move |f| starts(&pod(f, "destination"), "demo/web"))),
        (
            vec!["-n", "demo"],
            Box::new(|f| text(f, "source.namespace") == "demo" || text(f, "destination.namespace") == "demo"),
        ),
        (vec!["--from-namespace", "demo"], Box::new(|f| text(f, "source.namespace") == "demo")),
        (vec!["--to-namespace", "demo"], Box::new(|f| text(f, "destination.namespace") == "demo")),
        (
            vec!["--ip", &client_ip],
            Box::new({
                let ip = client_ip.clone();
                move |f| text(f, "IP.source") == ip || text(f, "IP.destination") == ip
            }),
        ),
        (vec!["--from-ip", "10.244.0.0/24"], Box::new(|f| text(f, "IP.source").starts_with("10.244.0."))),
        (vec!["--to-ip", "10.244.0.3"], Box::new(|f| text(f, "IP.destination") == "10.244.0.3")),
        (
            vec!["-l", "app=web"],
            Box::new(|f| {
                get(f, "source.labels").to_string().contains("k8s:app=web\"")
                    || get(f, "destination.labels").to_string().contains("k8s:app=web\"")
            }),
        ),
        (vec!["--service", "demo/web"], Box::new(|f| text(f, "destination_service.name") == "web")),
        (
            vec!["--port", "8080"],
            Box::new(|f| {
                get(f, "l4.TCP.source_port") == &Value::from(8080)
                    || get(f, "l4.TCP.destination_port") == &Value::from(8080)
            }),
        ),
        (vec!["--protocol", "udp"], Box::new(|f| get(f, "l4.UDP") != &Value::Null)),
        (vec!["--verdict", "FORWARDED"], Box::new(|f| text(f, "verdict") == "FORWARDED")),
        (vec!["--verdict", "TRACED"], Box::new(|f| text(f, "verdict") == "TRACED")),
        (vec!["--tcp-flags", "SYN"], Box::new(|f| get(f, "l4.TCP.flags.SYN") == &Value::Bool(true))),
        (vec!["--traffic-direction", "ingress"], Box::new(|f| text(f, "traffic_direction") == "INGRESS")),
        (vec!["--node-name", "node-*"], Box::new(|f| text(f, "node_name").starts_with("node-"))),
        (vec!["--node-name", "other"], Box::new(|_| false)),
    ];
    let key = |f: &Value| f.to_string();
    let all_keys: Vec<String> = all.iter().map(key).collect();
    assert!(all.len() >= 10, "too few flows to test filters on: {all:#?}");
    for (args, check) in &cases {
        let expected: Vec<String> = all.iter().filter(|f| check(f)).map(key).collect();
        let got: Vec<String> = meshctl::flows(&node0, args).iter().map(key).collect();
        assert_eq!(got, expected, "meshctl observe {args:?} selected something else");
        let negated: Vec<&str> = [&["--not"], &args[..]].concat();
        let got: Vec<String> = meshctl::flows(&node0, &negated).iter().map(key).collect();
        let rest: Vec<String> = all_keys.iter().filter(|k| !expected.contains(k)).cloned().collect();
        assert_eq!(got, rest, "meshctl observe {negated:?} is not the complement");
    }
    // The drop filters on the node that saw the drop.
    let drop_node = (0..2)
        .find(|n| !meshctl::flows(&mesh.socket(*n), &["--drop-reason-desc", "POLICY_DENY"]).is_empty())
        .expect("a node with the intruder's drops");
    let reason = meshctl::flows(&mesh.socket(drop_node), &["--drop-reason-desc", "POLICY_DENY"]);
    assert!(!reason.is_empty() && reason.iter().all(|f| text(f, "drop_reason_desc") == "POLICY_DENY"), "{reason:#?}");
    // The default-deny drop of node-1's host is the only other reason, on node-0.
    let denied = meshctl::flows(&node0, &["--drop-reason-desc", "POLICY_DENIED"]);
    assert!(!denied.is_empty() && denied.iter().all(|f| text(f, "drop_reason_desc") == "POLICY_DENIED"), "{denied:#?}");

    // The other outputs show the same flows.
    for output in ["compact", "dict", "table"] {
        let run =
            meshctl::run(&node0, &["observe", "--from-pod", "demo/client", "--verdict", "TRANSLATED", "-o", output]);
        assert!(
            run.success && run.stdout.contains("demo/client") && run.stdout.contains("TRANSLATED"),
            "{output}: {run:?}"
        );
    }
    let compact = meshctl::run(
        &node0,
        &["observe", "--from-pod", "demo/client", "--to-port", "8080", "--verdict", "FORWARDED", "--last", "1"],
    );
    let line = compact.stdout.lines().next().unwrap_or_default().to_owned();
    assert!(line.contains("demo/client:") && line.contains(" -> demo/web-") && line.contains("FORWARDED ("), "{line}");

    // meshctl status: health, programs, maps.
    let status = meshctl::run(&node0, &["status"]);
    assert!(status.success, "{status:?}");
    let needles = [
        "Healthcheck",
        "Ok",
        "Observer health (hubble.server.Observer): SERVING",
        "mesh_sockops",
        "mesh_from_pod",
        "pod demo/client",
        "mesh_ct",
        "Lost events: 0",
    ];
    for needle in needles {
        assert!(status.stdout.contains(needle), "status lacks {needle:?}:\n{}", status.stdout);
    }

    // Prometheus metrics on the node's port 9965.
    let metrics = mesh_tests::metrics::agent(&lab.nodes[drop_node].netns_path);
    let value = |prefix: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    };
    assert!(value("hubble_drop_total{reason=\"POLICY_DENY\",traffic_direction=\"ingress\"}") >= 1.0, "{metrics}");
    assert!(
        value(
            "hubble_policy_verdicts_total{direction=\"ingress\",action=\"dropped\",policy=\"MeshPolicy demo/deny-intruder ingress rule 0\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("istio_tcp_connections_opened_total{reporter="), "{metrics}");
    assert!(value("mesh_bpf_map_entries{map_name=\"mesh_ct\"}") >= 1.0, "{metrics}");
    assert!(metrics.contains("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 0"), "{metrics}");

    // A client that is not Rust: Python code generated from the .proto files reads GetFlows.
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-common/proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/observe_client.py");
    let python = Command::new("python3")
        .arg(&script)
        .arg("--proto-dir")
        .arg(&proto_dir)
        .arg("--out-dir")
        .arg(lab.dir.join("python"))
        .arg("--target")
        .arg(format!("unix://{}", mesh.socket(drop_node).display()))
        .args(["--last", "1000"])
        .output()
        .expect("python3 runs (grpcio-tools is installed by xtask/bootstrap.sh)");
    let stdout = String::from_utf8_lossy(&python.stdout);
    assert!(python.status.success(), "python client failed: {}", String::from_utf8_lossy(&python.stderr));
    let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(get(&lines[0], "server_status.num_flows").as_u64().unwrap_or(0) > 0, "{stdout}");
    let py_drop = lines
        .iter()
        .find(|l| text(l, "flow.verdict") == "DROPPED" && text(l, "flow.source_pod") == "intruder")
        .unwrap_or_else(|| panic!("the Python client saw no drop of the intruder:\n{stdout}"));
    assert_eq!(text(py_drop, "flow.drop_reason_desc"), "POLICY_DENY", "{py_drop}");
    assert_eq!(text(py_drop, "flow.traffic_direction"), "INGRESS", "{py_drop}");
    assert!(text(py_drop, "flow.destination_pod").starts_with("web-"), "{py_drop}");
    assert_eq!(get(py_drop, "flow.ingress_denied_by")[0], Value::from("MeshPolicy/demo/deny-intruder"), "{py_drop}");
    assert_eq!(get(py_drop, "flow.is_reply"), &Value::Bool(false), "{py_drop}");
    assert_eq!(text(py_drop, "flow.protocol"), "TCP", "{py_drop}");
    assert_eq!(get(py_drop, "flow.destination_port"), &Value::from(demo::WEB_PORT), "{py_drop}");
    // What Hubble's own clients need: every flow printable as protojson (no extension of a
    // type they do not know unless asked for), a UUID on each, unique.
    let flows: Vec<&Value> = lines.iter().filter(|l| l.get("flow").is_some()).collect();
    assert!(flows.iter().all(|l| get(l, "flow.json") == &Value::Bool(true)), "{stdout}");
    assert!(flows.iter().all(|l| get(l, "flow.has_extensions") == &Value::Bool(false)), "{stdout}");
    let uuids: std::collections::BTreeSet<&str> = flows.iter().map(|l| text(l, "flow.uuid")).collect();
    assert!(uuids.len() == flows.len() && !uuids.contains(""), "{stdout}");
    // Socket events have the pod's direction: a client's translated connect() leaves it.
    let translated: Vec<&&Value> = flows.iter().filter(|l| text(l, "flow.verdict") == "TRANSLATED").collect();
    assert!(!translated.is_empty(), "no socket translation among the flows: {stdout}");
    assert!(translated.iter().all(|l| text(l, "flow.traffic_direction") == "EGRESS"), "{translated:#?}");
    let refused = lines.iter().find_map(|l| l.get("first_and_follow")).expect("first and follow asked");
    assert_eq!(refused, "INVALID_ARGUMENT", "{stdout}");
}

/// Each aggregation level, on node 0's agent, for two connections of the client through the
/// service: which socket events the client's end reports, and whether TC's flow start at the
/// client names the service. TC's flow starts and ends come at every level.
#[test]
fn aggregation_levels_decide_which_socket_events_a_connection_reports() {
    if !privileged("aggregation_levels_decide_which_socket_events_a_connection_reports") {
        return;
    }
    let (lab, operator) = demo_operator();
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let connections = 2;
    // (level, TRANSLATED, ESTABLISHED, CLOSED per connection at the client's end, TC names
    // the service); None is the default.
    let levels: [(Option<&str>, usize, usize, usize, bool); 5] = [
        (Some("none"), 1, 1, 1, true),
        (Some("low"), 1, 0, 1, true),
        (Some("medium"), 1, 0, 0, true),
        (Some("maximum"), 0, 0, 0, false),
        (None, 0, 0, 0, false),
    ];
    for (level, translated, established, closed, named) in levels {
        let args: Vec<&str> = level.map(|l| vec!["--flow-aggregation", l]).unwrap_or_default();
        let agent = Agent::follow(&lab, &lab.nodes[0], &operator.endpoint(), &args).expect("agent ready");
        let socket = agent.observer_socket(&lab);
        let answered = labnet::connect(&lab, &client, scenario::service_addr(), connections, Duration::from_secs(2))
            .expect("client runs");
        assert_eq!(answered.ok, connections, "{level:?}: the client must be answered: {answered:?}");
        let n = connections as usize;
        // TC events at the client's own interface only (a web pod on node 0 has its own).
        let event = |f: &Value, name: &str| {
            text(f, "extensions.event") == name
                && (!name.starts_with("FLOW_") || text(f, "traffic_direction") == "EGRESS")
        };
        // TC reports each flow's end at every level; the socket events came before it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let flows = loop {
            let flows = meshctl::flows(&socket, &["--from-pod", "demo/client"]);
            let ended = flows.iter().filter(|f| event(f, "FLOW_END")).count() >= n;
            let closed_all = flows.iter().filter(|f| event(f, "CLOSED")).count() >= closed * n;
            if (ended && closed_all) || Instant::now() > deadline {
                break flows;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let count = |name: &str| flows.iter().filter(|f| event(f, name)).count();
        assert_eq!(
            (count("TRANSLATED"), count("ESTABLISHED"), count("CLOSED"), count("FLOW_START"), count("FLOW_END")),
            (translated * n, established * n, closed * n, n, n),
            "{level:?}: events of the client's connections: {flows:#?}"
        );
        for close in flows.iter().filter(|f| event(f, "CLOSED")) {
            assert_eq!(text(close, "destination_service.name"), "web", "{level:?}: {close:#}");
            assert!(text(close, "extensions.reply_bytes").parse::<u64>().unwrap_or(0) > 0, "{level:?}: {close:#}");
        }
        for start in flows.iter().filter(|f| event(f, "FLOW_START")) {
            let service = text(start, "destination_service.name");
            assert_eq!(service == "web", named, "{level:?}: {start:#}");
        }
        assert!(lab.stop(agent.pid, Duration::from_secs(30)).expect("agent stops").success(), "{}", agent.log());
    }
}

#[test]
fn a_follower_sees_a_new_flow_within_100_ms() {
    if !privileged("a_follower_sees_a_new_flow_within_100_ms") {
        return;
    }
    let mesh = demo_mesh();
    let lab = &mesh.lab;
    let mut follower = Command::new(mesh_tests::built_binary("meshctl"))
        .arg("--server")
        .arg(format!("unix://{}", mesh.socket(0).display()))
        .args([
            "observe",
            "-f",
            "-o",
            "json",
            "--from-pod",
            "demo/client",
            "--verdict",
            "FORWARDED",
            "--tcp-flags",
            "SYN",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("meshctl starts");
    let stdout = follower.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line, mesh_agent::flows::unix_now_ns())).is_err() {
                return;
            }
        }
    });
    // Let the follower connect, then make the flows; each must arrive within 100 ms of the
    // moment the kernel saw it.
    std::thread::sleep(Duration::from_millis(700));
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let summary =
            labnet::connect(lab, &client, scenario::service_addr(), 1, Duration::from_secs(2)).expect("client");
        assert_eq!(summary.ok, 1, "{summary:?}");
        let (line, received_ns) = rx.recv_timeout(Duration::from_secs(3)).expect("the follower got the flow");
        let flow: Value = serde_json::from_str(&line).expect("json");
        let time = text(&flow, "flow.time").to_owned();
        let seen_ns = mesh_agent::flows::time::parse(&time, 0).expect("an RFC 3339 time");
        latencies.push(received_ns.saturating_sub(seen_ns) as f64 / 1e6);
        // Drain the rest of this connection's flows.
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {}
    }
    // The follower never ends by itself: this test started it, and ends it.
    let _ = follower.kill();
    let _ = follower.wait();
    println!("follow latencies (ms): {latencies:?}");
    assert!(latencies.iter().all(|ms| *ms < 100.0), "a followed flow came later than 100 ms: {latencies:?} ms");
}

#[test]
fn malformed_filters_are_refused_naming_the_flag() {
    // No agent needed: meshctl checks values before it connects.
    let socket = Path::new("/nonexistent/observer.sock");
    for (args, flag) in [
        (vec!["--ip", "10.0.0.300"], "--ip"),
        (vec!["--from-ip", "10.0.0.0/40"], "--from-ip"),
        (vec!["--port", "70000"], "--port"),
        (vec!["--tcp-flags", "SYN,BOGUS"], "--tcp-flags"),
        (vec!["--verdict", "forwarded"], "--verdict"),
        (vec!["--drop-reason-desc", "NOPE"], "--drop-reason-desc"),
        (vec!["--traffic-direction", "sideways"], "--traffic-direction"),
        (vec!["-l", "app=("], "--label"),
        (vec!["--protocol", "carrier-pigeon"], "--protocol"),
        (vec!["--since", "yesterday"], "--since"),
        (vec!["--pod", "a/b/c"], "--pod"),
        (vec!["--node-name", "bad name!"], "--node-name"),
    ] {
        let run = meshctl::run(socket, &[&["observe"], &args[..]].concat());
        assert!(!run.success, "{args:?} was accepted");
        assert!(run.stderr.contains(flag), "the error for {args:?} does not name {flag}: {}", run.stderr);
    }
    let run = meshctl::run(socket, &["observe", "--pod", "x", "--not"]);
    assert!(!run.success && run.stderr.contains("--not"), "{run:?}");
    let run = meshctl::run(socket, &["completion", "bash"]);
    assert!(run.success && run.stdout.contains("meshctl") && run.stdout.contains("--drop-reason-desc"), "{run:?}");
}
