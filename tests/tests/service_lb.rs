//! Service load balancing at the socket, with kube-proxy's semantics, in a lab driven by
//! Kubernetes manifests (operator in local mode, one agent per node) and probed by real
//! clients: TCP and UDP, getpeername, refusal, affinity, weights, endpoint removal, overflow
//! and an agent restart under load.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet::{self, Summary},
    manifests::{self, Mesh, PodManifest, eventually},
    privileges::privileged,
};

const NS: &str = "lb";
const TIMEOUT: Duration = Duration::from_secs(2);

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

fn client(lab: &Lab) -> Placement {
    Placement::pod(lab.pod("client"))
}

fn connect(lab: &Lab, to: SocketAddr, count: u32) -> Summary {
    labnet::connect(lab, &client(lab), to, count, TIMEOUT).expect("the client runs")
}

/// `count` connections to `to`, waiting (bounded) until the datapath has the service: every
/// one answered, and by backends among `expected` only.
fn answered_by(lab: &Lab, mesh: &Mesh, to: SocketAddr, count: u32, expected: &[&str]) -> Summary {
    eventually(Duration::from_secs(10), || {
        let summary = connect(lab, to, count);
        let strangers: Vec<&String> = summary.replies.keys().filter(|r| !expected.contains(&r.as_str())).collect();
        if summary.failed == 0 && strangers.is_empty() { Ok(summary) } else { Err(format!("{summary:?}")) }
    })
    .unwrap_or_else(|last| panic!("{to}: expected replies from {expected:?} only, last: {last}\n{}", mesh.logs()))
}

/// Asserts that `count` (out of `total`) is within five standard deviations of a binomial
/// with probability `p`: a fair choice passes but for one run in millions.
fn assert_binomial(what: &str, count: u32, total: u32, p: f64) {
    let mean = f64::from(total) * p;
    let sd = (f64::from(total) * p * (1.0 - p)).sqrt();
    let (low, high) = (mean - 5.0 * sd, mean + 5.0 * sd);
    assert!(
        (low..=high).contains(&f64::from(count)),
        "{what}: {count} of {total}, expected {mean:.0} (between {low:.0} and {high:.0})"
    );
}

/// Four web backends over two nodes, each with its own number for the named port `http`
/// (and `dns` for UDP), `alt` on 9090; web-e is serving but terminating; web-f is not ready.
fn kube_semantics_lab() -> (Lab, String) {
    let lab = Lab::new(&[&["client", "web-a", "web-b", "web-c"], &["web-d", "web-e", "web-f"]]).expect("lab");
    let mut text = manifests::namespace(NS) + &manifests::nodes(&lab);
    text += &PodManifest::default().render(NS, lab.pod("client"));
    for (i, name) in ["web-a", "web-b", "web-c", "web-d", "web-e", "web-f"].into_iter().enumerate() {
        let port = 8080 + i as u16;
        let ports = [("http", port, "TCP"), ("dns", port, "UDP"), ("alt", 9090, "TCP")];
        let app = if name == "web-e" { "drain" } else { "web" };
        let pod = PodManifest {
            labels: &[("tier", "web"), ("app", app)],
            ports: &ports,
            terminating: name == "web-e",
            unready: name == "web-f",
            ..Default::default()
        };
        text += &pod.render(NS, lab.pod(name));
        labnet::serve(&lab, lab.pod(name), port, name).expect("web serves");
        labnet::serve(&lab, lab.pod(name), 9090, &format!("alt-{name}")).expect("alt serves");
    }
    text += &manifests::service(
        NS,
        "web",
        "  type: NodePort\n  clusterIP: 10.96.0.10\n  externalIPs: [10.200.0.10]\n  selector: {tier: web}\n  ports:\n    - {name: http, port: 80, targetPort: http, nodePort: 30080}\n    - {name: alt, port: 81, targetPort: 9090}\n    - {name: dns, port: 53, protocol: UDP, targetPort: dns}\n",
    );
    text += &manifests::service(
        NS,
        "drain",
        "  clusterIP: 10.96.0.11\n  selector: {app: drain}\n  ports:\n    - {port: 80, targetPort: http}\n",
    );
    text += &manifests::service(
        NS,
        "empty",
        "  clusterIP: 10.96.0.20\n  selector: {app: nothing}\n  ports:\n    - {name: http, port: 80}\n    - {name: dns, port: 53, protocol: UDP}\n",
    );
    (lab, text)
}

#[test]
fn services_follow_kube_proxy_semantics() {
    if !privileged("services_follow_kube_proxy_semantics") {
        return;
    }
    let (lab, text) = kube_semantics_lab();
    let mesh = Mesh::start(&lab, &text, &[]).expect("mesh");
    let ready = ["web-a", "web-b", "web-c", "web-d"];

    // Uniform over the ready endpoints (never the terminating web-e or the unready web-f),
    // each reached on its own number for the named port; getpeername shows the service.
    let vip = addr([10, 96, 0, 10], 80);
    answered_by(&lab, &mesh, vip, 4, &ready);
    let summary = connect(&lab, vip, 400);
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.peers, BTreeMap::from([(vip.to_string(), 400)]), "getpeername must return the service");
    for backend in ready {
        assert_binomial(backend, summary.replies.get(backend).copied().unwrap_or(0), 400, 0.25);
    }

    // A second port of the same service, by number.
    let alt = connect(&lab, addr([10, 96, 0, 10], 81), 40);
    assert_eq!(alt.failed, 0, "{alt:?}");
    assert!(alt.replies.keys().all(|r| ready.iter().any(|b| *r == format!("alt-{b}"))), "{alt:?}");
    assert!(alt.replies.len() >= 2, "{alt:?}");

    // externalIPs and every node's address with the nodePort, reached from a pod.
    for to in [
        addr([10, 200, 0, 10], 80),
        SocketAddr::from((lab.nodes[0].ip, 30080)),
        SocketAddr::from((lab.nodes[1].ip, 30080)),
    ] {
        let summary = connect(&lab, to, 20);
        assert_eq!(summary.failed, 0, "{to}: {summary:?}");
        assert!(summary.replies.keys().all(|r| ready.contains(&r.as_str())), "{to}: {summary:?}");
        assert_eq!(summary.peers, BTreeMap::from([(to.to_string(), 20)]), "{to}");
    }

    // With no ready endpoint, serving-and-terminating ones take the traffic.
    let drain = connect(&lab, addr([10, 96, 0, 11], 80), 10);
    assert_eq!(drain.replies, BTreeMap::from([("web-e".to_owned(), 10)]), "{drain:?}");

    // UDP: each reply comes from the service address, wherever it was answered.
    let dns = addr([10, 96, 0, 10], 53);
    let udp = labnet::udp(&lab, &client(&lab), dns, 40, TIMEOUT).expect("udp client");
    assert_eq!(udp.failed, 0, "{udp:?}");
    assert_eq!(udp.peers, BTreeMap::from([(dns.to_string(), 40)]), "UDP replies must come from the service");
    assert!(udp.replies.keys().all(|r| ready.contains(&r.as_str())) && udp.replies.len() >= 2, "{udp:?}");

    // No endpoints: refused at once, TCP and UDP.
    for summary in [
        connect(&lab, addr([10, 96, 0, 20], 80), 5),
        labnet::udp(&lab, &client(&lab), addr([10, 96, 0, 20], 53), 5, TIMEOUT).expect("udp client"),
    ] {
        assert_eq!(summary.failed, 5, "{summary:?}");
        assert!(summary.errors.keys().all(|e| e.contains("Connection refused")), "{summary:?}");
        assert!(summary.elapsed_ms < 500, "refusal must be immediate, took {} ms", summary.elapsed_ms);
    }
}

#[test]
fn client_ip_affinity_sticks_and_expires() {
    if !privileged("client_ip_affinity_sticks_and_expires") {
        return;
    }
    let backends = ["web-a", "web-b", "web-c", "web-d"];
    let lab = Lab::new(&[&["client", "web-a", "web-b", "web-c", "web-d"]]).expect("lab");
    let mut text = manifests::namespace(NS);
    text += &PodManifest::default().render(NS, lab.pod("client"));
    for name in backends {
        text += &PodManifest { labels: &[("app", "web")], ..Default::default() }.render(NS, lab.pod(name));
        labnet::serve(&lab, lab.pod(name), 8080, name).expect("web serves");
    }
    text += &manifests::service(
        NS,
        "sticky",
        "  clusterIP: 10.96.0.30\n  selector: {app: web}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n  ports:\n    - {port: 80, targetPort: 8080}\n",
    );
    let mesh = Mesh::start(&lab, &text, &[]).expect("mesh");
    let vip = addr([10, 96, 0, 30], 80);
    answered_by(&lab, &mesh, vip, 1, &backends);

    // Sticky while used: connections 400 ms apart (longer in total than the timeout, which
    // counts from the last use) all reach one backend.
    let paced = labnet::connect_paced(&lab, &client(&lab), vip, 6, Duration::from_millis(400), TIMEOUT).unwrap();
    assert_eq!((paced.failed, paced.replies.len()), (0, 1), "one backend while the client keeps using it: {paced:?}");

    // Expired after a second of silence: a new random choice each round. Every round sticks
    // within itself; over eight rounds, four backends, all rounds on one backend has
    // probability 4^-7.
    let mut chosen = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1300));
        let round = connect(&lab, vip, 3);
        assert_eq!((round.failed, round.replies.len()), (0, 1), "{round:?}");
        chosen.extend(round.replies.into_keys());
    }
    chosen.sort();
    chosen.dedup();
    assert!(chosen.len() > 1, "the affinity never expired: every round reached {chosen:?}");
}

#[test]
fn weights_split_traffic_and_removed_endpoints_keep_established_connections() {
    if !privileged("weights_split_traffic_and_removed_endpoints_keep_established_connections") {
        return;
    }
    let lab = Lab::new(&[&["client", "w1", "w3"]]).expect("lab");
    let pods = |w3_app: &str| {
        let mut text = manifests::namespace(NS);
        text += &PodManifest::default().render(NS, lab.pod("client"));
        text += &PodManifest {
            labels: &[("app", "split")],
            annotations: &[("mesh.dev/weight", "1")],
            ..Default::default()
        }
        .render(NS, lab.pod("w1"));
        text +=
            &PodManifest { labels: &[("app", w3_app)], annotations: &[("mesh.dev/weight", "3")], ..Default::default() }
                .render(NS, lab.pod("w3"));
        text + &manifests::service(
            NS,
            "split",
            "  clusterIP: 10.96.0.40\n  selector: {app: split}\n  ports:\n    - {port: 80, targetPort: 8080}\n",
        )
    };
    for name in ["w1", "w3"] {
        labnet::serve(&lab, lab.pod(name), 8080, name).expect("serves");
    }
    let mesh = Mesh::start(&lab, &pods("split"), &[]).expect("mesh");
    let vip = addr([10, 96, 0, 40], 80);
    answered_by(&lab, &mesh, vip, 1, &["w1", "w3"]);

    // Weight 3 against weight 1: three quarters of the connections.
    let summary = connect(&lab, vip, 400);
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_binomial("w3 (weight 3 of 4)", summary.replies.get("w3").copied().unwrap_or(0), 400, 0.75);

    // A connection established to w3 stays up while w3 leaves the service; new connections
    // stop reaching it.
    let established = lab.dir.join("held.established");
    let held = std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            loop {
                let _ = std::fs::remove_file(&established);
                let mut command = lab.placed_command(&client(&lab), labnet::binary()).unwrap();
                command
                    .args(["hold", "--to", &vip.to_string(), "--hold-ms", "3000", "--established-file"])
                    .arg(&established);
                let output = lab.run(&mut command, Duration::from_secs(15)).unwrap();
                let summary: Summary = serde_json::from_slice(&output.stdout).unwrap();
                // Only a connection that landed on w3 tests the removal; w1 gets a quarter.
                if summary.replies.contains_key("w3") || summary.failed > 0 {
                    return summary;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no held connection reached w3");
            if std::fs::read_to_string(&established).is_ok_and(|r| r.trim() == "w3") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        mesh.write(&pods("retired")).unwrap();
        answered_by(&lab, &mesh, vip, 20, &["w1"]);
        holder.join().unwrap()
    });
    assert_eq!((held.ok, held.failed), (1, 0), "the established connection to w3 was broken: {held:?}");
}

#[test]
fn an_update_that_overflows_a_map_is_refused_whole() {
    if !privileged("an_update_that_overflows_a_map_is_refused_whole") {
        return;
    }
    let lab = Lab::new(&[&["client", "w1", "w2"]]).expect("lab");
    let base = {
        let mut text = manifests::namespace(NS) + &PodManifest::default().render(NS, lab.pod("client"));
        for name in ["w1", "w2"] {
            text += &PodManifest { labels: &[("app", "web")], ..Default::default() }.render(NS, lab.pod(name));
        }
        text + &manifests::service(
            NS,
            "a",
            "  clusterIP: 10.96.0.50\n  selector: {app: web}\n  ports:\n    - {port: 80, targetPort: 8080}\n",
        )
    };
    for name in ["w1", "w2"] {
        labnet::serve(&lab, lab.pod(name), 8080, name).expect("serves");
    }
    // Two backends per service: a takes 2 slots and 2 more while it is rewritten; a capacity
    // of 5 holds it, not a second service (2 + 2, and 2 more while one is rewritten).
    let mesh = Mesh::start(&lab, &base, &["--backends-max", "5"]).expect("mesh");
    let a = addr([10, 96, 0, 50], 80);
    let b = addr([10, 96, 0, 51], 80);
    eventually(Duration::from_secs(10), || {
        let s = connect(&lab, a, 6);
        if s.failed == 0 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .unwrap_or_else(|e| panic!("service a never answered: {e}\n{}", mesh.logs()));

    mesh.write(
        &(base.clone()
            + &manifests::service(
                NS,
                "b",
                "  clusterIP: 10.96.0.51\n  selector: {app: web}\n  ports:\n    - {port: 80, targetPort: 8080}\n",
            )),
    )
    .unwrap();
    let agent = &mesh.agents[0];
    eventually(Duration::from_secs(10), || {
        let log = agent.log();
        if log.contains("MESH_BACKENDS_MAX") { Ok(()) } else { Err("no capacity error yet".to_owned()) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.logs()));
    assert!(agent.log().contains("nothing was applied"), "{}", agent.log());
    // The previous state stays in force: a still answers, b was never programmed.
    let still = connect(&lab, a, 12);
    assert_eq!(still.failed, 0, "{still:?}");
    assert!(still.replies.keys().all(|r| r == "w1" || r == "w2"), "{still:?}");
    let never = labnet::connect(&lab, &client(&lab), b, 1, Duration::from_millis(300)).unwrap();
    assert_eq!(never.ok, 0, "service b must not be programmed: {never:?}");
}

#[test]
fn connections_keep_working_while_the_agent_restarts() {
    if !privileged("connections_keep_working_while_the_agent_restarts") {
        return;
    }
    let lab = Lab::new(&[&["client", "w1", "w2"]]).expect("lab");
    let mut text = manifests::namespace(NS);
    text += &PodManifest::default().render(NS, lab.pod("client"));
    for name in ["w1", "w2"] {
        text += &PodManifest { labels: &[("app", "web")], ..Default::default() }.render(NS, lab.pod(name));
        labnet::serve(&lab, lab.pod(name), 8080, name).expect("serves");
    }
    text += &manifests::service(
        NS,
        "web",
        "  clusterIP: 10.96.0.60\n  selector: {app: web}\n  ports:\n    - {port: 80, targetPort: 8080}\n",
    );
    let mesh = Mesh::start(&lab, &text, &["--keep-datapath"]).expect("mesh");
    let vip = addr([10, 96, 0, 60], 80);
    answered_by(&lab, &mesh, vip, 4, &["w1", "w2"]);

    // A loop of 400 connections, 5 ms apart, and one connection held open, while the agent
    // stops (keeping the datapath), is away, and a new one takes over.
    let node = &lab.nodes[0];
    let (summary, held, new_agent) = std::thread::scope(|scope| {
        let load = scope
            .spawn(|| labnet::connect_paced(&lab, &client(&lab), vip, 400, Duration::from_millis(5), TIMEOUT).unwrap());
        let hold = scope.spawn(|| {
            let mut command = lab.placed_command(&client(&lab), labnet::binary()).unwrap();
            command.args(["hold", "--to", &vip.to_string(), "--hold-ms", "2500"]);
            let output = lab.run(&mut command, Duration::from_secs(15)).unwrap();
            serde_json::from_slice::<Summary>(&output.stdout).unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        let status = lab.stop(mesh.agents[0].pid, Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{}", mesh.agents[0].log());
        std::thread::sleep(Duration::from_millis(300));
        let agent = Agent::follow(&lab, node, &mesh.operator.endpoint(), &["--keep-datapath"]).expect("new agent");
        (load.join().unwrap(), hold.join().unwrap(), agent)
    });
    assert_eq!(summary.failed, 0, "connections failed during the restart: {summary:?}\n{}", new_agent.log());
    assert_eq!(summary.replies.len(), 2, "{summary:?}");
    assert_eq!((held.ok, held.failed), (1, 0), "the connection held across the restart broke: {held:?}");
    assert_eq!(held.peers, BTreeMap::from([(vip.to_string(), 1)]), "getpeername of a connection made before");
    assert!(new_agent.log().contains("took over"), "{}", new_agent.log());

    // Pinned maps keep their capacity: an agent configured with another one says what to do.
    assert!(lab.stop(new_agent.pid, Duration::from_secs(10)).unwrap().success());
    let mut command = lab.system_command(mesh_tests::agent_binary()).unwrap();
    command.args(["--node-name", &node.name, "--cgroup"]).arg(&node.cgroup).arg("--bpffs").arg(&node.bpffs).args([
        "--operator",
        &mesh.operator.endpoint(),
        "--services-max",
        "100",
    ]);
    let output = lab.run(&mut command, Duration::from_secs(30)).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("capacity 16384, but 100 is configured"), "{stderr}");
}
