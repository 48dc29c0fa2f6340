//! The kernel decides per connection: a TCP connection from a pod to a STRICT pod of another
//! node (through a ClusterIP or to the pod's own address) is sent by `connect4` to the local
//! agent's outbound listener and carried through the mutual-TLS tunnel, while the client
//! still sees the address it asked for; a connection to a PERMISSIVE or DISABLE destination
//! never reaches the agent. A capture on node-0's link shows only TLS to port 15008 and never
//! the server's plaintext. The receiving agent connects to the pod from the client pod's own
//! address, so the server sees the real client. A plaintext connection to the STRICT port that
//! did not come through the tunnel (from another node's host, or from the pod's node itself) is
//! dropped at TC with AUTH_REQUIRED, while a pod of the same node still connects directly. When
//! the peer agent is gone, a client's connection is refused at once, and the reason is counted.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use mesh_agent::tunnel::HBONE_PORT;
use mesh_common::identity::{SpiffeId, TrustDomain};
use mesh_tests::{
    agent::Agent,
    capture::{Capture, contains},
    lab::{POD_GATEWAY, Placement},
    labnet, manifests, meshctl, metrics,
    operator::Operator,
    privileges::privileged,
    scenario::demo,
};

/// What intruder's STRICT port answers: must never be seen on the wire.
const MARKER: &str = "plaintext-marker-7c41e9";
const STRICT_PORT: u16 = 9000;
/// A port of intruder that its PeerAuthentication makes plaintext only.
const DISABLED_PORT: u16 = 9001;
const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const ECHO_PORT: u16 = 90;

const MANIFESTS: &str = "apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: intruder}
  ports:
    - {name: echo, port: 90, targetPort: 9000}
---
apiVersion: mesh.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: intruder-strict, namespace: demo}
spec:
  selector: {matchLabels: {app: intruder}}
  mtls: {mode: STRICT}
  portLevelMtls:
    '9001': {mode: DISABLE}
";

fn spiffe(sa: &str) -> String {
    SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid").to_string()
}

fn outbound(text: &str, result: &str) -> f64 {
    metrics::value(text, &format!("mesh_tunnel_outbound_connections_total{{result=\"{result}\"}}"))
}

#[test]
fn the_kernel_sends_connections_to_strict_pods_through_the_tunnel_and_no_other() {
    if !privileged("the_kernel_sends_connections_to_strict_pods_through_the_tunnel_and_no_other") {
        return;
    }
    let (lab, manifest_dir) = demo::lab().expect("lab");
    std::fs::write(manifest_dir.join("nodes.yaml"), manifests::nodes(&lab)).unwrap();
    std::fs::write(manifest_dir.join("echo.yaml"), MANIFESTS).unwrap();
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifest_dir, &[]).expect("operator serves");
    let agents = Agent::follow_each_over_tls(&lab, &operator, &bundles, &[]).expect("agents ready over TLS");
    let intruder = lab.pod(demo::INTRUDER);
    labnet::serve(&lab, intruder, STRICT_PORT, &format!("{MARKER} {{peer}}")).expect("intruder serves its STRICT port");
    labnet::serve(&lab, intruder, DISABLED_PORT, "plain").expect("intruder serves its DISABLE port");
    meshctl::wait_for_certificates(&lab, "node-0", &[spiffe("client")]);
    meshctl::wait_for_certificates(&lab, "node-1", &[spiffe("intruder")]);
    let client_pod = lab.pod(demo::CLIENT);
    let client = Placement::pod(client_pod);
    // What the STRICT port answers the client: its marker and the client as the server saw it.
    let seen_from_client = format!("{MARKER} {}", client_pod.ip);
    let (node0, node1) = (&lab.nodes[0], &lab.nodes[1]);

    let capture = Capture::start(&node0.netns_path, "eth0").expect("a capture on node-0's link");
    // Through the service and to the pod's own address: tunnelled, and the client sees the
    // address it asked for.
    let echo = SocketAddr::from((ECHO_VIP, ECHO_PORT));
    let pod = SocketAddr::from((intruder.ip, STRICT_PORT));
    for (to, what) in [(echo, "the echo service"), (pod, "intruder's STRICT port")] {
        let summary = labnet::connect(&lab, &client, to, 5, Duration::from_secs(5)).expect("client runs");
        let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n---\n");
        assert_eq!(summary.ok, 5, "{what}: {summary:?}\n{}", logs());
        assert_eq!(summary.replies.get(&seen_from_client), Some(&5), "{what}: the server saw: {summary:?}");
        assert_eq!(summary.peers.get(&to.to_string()), Some(&5), "{what}: getpeername: {summary:?}");
    }
    let segments = capture.stop();

    let leaked: Vec<_> = segments.iter().filter(|s| contains(&s.payload, MARKER.as_bytes())).collect();
    assert!(leaked.is_empty(), "the server's plaintext crossed the link: {leaked:?}");
    // TLS 1.3 application data records (type 23, legacy version 3.3) both ways on 15008.
    let tls_records = |to_peer: bool| {
        segments
            .iter()
            .filter(|s| if to_peer { s.dport == HBONE_PORT } else { s.sport == HBONE_PORT })
            .filter(|s| s.payload.starts_with(&[23, 3, 3]))
            .count()
    };
    assert!(tls_records(true) > 0 && tls_records(false) > 0, "no TLS application data on {HBONE_PORT}");
    let to_pod_port = segments.iter().filter(|s| s.dport == STRICT_PORT || s.sport == STRICT_PORT).count();
    assert_eq!(to_pod_port, 0, "segments of the pod's port itself crossed the link");

    let text = metrics::agent(&node0.netns_path);
    assert_eq!(outbound(&text, "tunnelled"), 10.0, "{text}");
    assert!(
        metrics::value(&text, "mesh_tunnel_outbound_bytes_total{direction=\"to_pod\"}") >= (10 * MARKER.len()) as f64,
        "{text}"
    );
    let text = metrics::agent(&node1.netns_path);
    assert_eq!(metrics::value(&text, "mesh_tunnel_inbound_streams_total{result=\"opened\"}"), 10.0, "{text}");
    // One client certificate to one identity behind one agent: one pooled TLS connection.
    assert_eq!(metrics::value(&text, "mesh_tunnel_inbound_handshakes_total{result=\"ok\"}"), 1.0, "{text}");

    // A DISABLE port and a PERMISSIVE service (web): straight to the pod, never the agent.
    let plain = labnet::connect(&lab, &client, (intruder.ip, DISABLED_PORT).into(), 3, Duration::from_secs(5))
        .expect("client runs");
    assert_eq!(plain.replies.get("plain"), Some(&3), "{plain:?}");
    let web = labnet::connect(&lab, &client, (demo_vip(), 80).into(), 3, Duration::from_secs(5)).expect("client runs");
    assert_eq!(web.ok, 3, "{web:?}");
    let text = metrics::agent(&node0.netns_path);
    assert_eq!(outbound(&text, "tunnelled"), 10.0, "a connection that needs no tunnel reached the agent: {text}");

    // The flows say which connections the tunnel carried, with both workload identities: at
    // the client (to the pod it was going to, not to the agent's listener; through the echo
    // service for half of them) and at the server (from the client itself).
    let mtls = "mTLS demo/client => demo/intruder";
    for (node, direction) in [(0, "EGRESS"), (1, "INGRESS")] {
        let socket = agents[node].observer_socket(&lab);
        let starts = |filter: &str, port: u16| {
            let port = port.to_string();
            let flows = meshctl::flows(&socket, &[filter, "--to-port", &port, "--traffic-direction", direction]);
            flows.into_iter().filter(|f| f["IP"]["source"] == client_pod.ip.to_string().as_str()).collect::<Vec<_>>()
        };
        // One connection per client port (a start and an end event each).
        let connections = |flows: &[serde_json::Value]| {
            flows
                .iter()
                .filter_map(|f| f["l4"]["TCP"]["source_port"].as_u64())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        };
        let tunnelled = starts("--encrypted", STRICT_PORT);
        assert_eq!(connections(&tunnelled), 10, "node-{node}: tunnelled {direction} flows: {tunnelled:#?}");
        for flow in &tunnelled {
            assert_eq!(flow["IP"]["destination"], intruder.ip.to_string().as_str(), "{flow:#}");
            assert_eq!(flow["IP"]["encrypted"], true, "{flow:#}");
            assert_eq!(flow["auth_type"], "SPIRE", "{flow:#}");
        }
        if node == 0 {
            let via_echo: Vec<_> =
                tunnelled.iter().filter(|f| f["destination_service"]["name"] == "echo").cloned().collect();
            assert_eq!(
                connections(&via_echo),
                5,
                "the client's flows through the echo service name it: {tunnelled:#?}"
            );
        }
        assert!(starts("--unencrypted", STRICT_PORT).is_empty(), "node-{node}: a STRICT flow not tunnelled");
        assert_eq!(connections(&starts("--unencrypted", DISABLED_PORT)), 3, "node-{node}: the DISABLE port's flows");
        assert!(starts("--encrypted", DISABLED_PORT).is_empty(), "node-{node}: the DISABLE port tunnelled");
    }
    let compact = meshctl::run(&agents[1].observer_socket(&lab), &["observe", "--all", "--encrypted"]);
    assert!(compact.stdout.contains(mtls), "meshctl observe names both identities:\n{}", compact.stdout);

    // Plaintext to the STRICT port that skipped the tunnel: from node-0's host (not a pod, so
    // no redirect) across the link, and from node-1's own host; dropped at TC, and reported.
    let host =
        |node: &mesh_tests::lab::Node| Placement { netns: Some(node.netns_path.clone()), cgroup: lab.system_cgroup() };
    for node in [node0, node1] {
        let denied = labnet::connect(&lab, &host(node), pod, 2, Duration::from_millis(1500)).expect("client runs");
        assert_eq!(denied.failed, 2, "plaintext from {}'s host reached the STRICT port: {denied:?}", node.name);
        let allowed =
            labnet::connect(&lab, &host(node), (intruder.ip, DISABLED_PORT).into(), 1, Duration::from_secs(5))
                .expect("client runs");
        assert_eq!(allowed.replies.get("plain"), Some(&1), "{}'s host to the DISABLE port: {allowed:?}", node.name);
    }
    // A pod of intruder's own node connects directly (not tunnelled, allowed at TC).
    let neighbour = Placement::pod(lab.pod("web-b"));
    let local = labnet::connect(&lab, &neighbour, pod, 2, Duration::from_secs(5)).expect("client runs");
    let seen_from_neighbour = format!("{MARKER} {}", lab.pod("web-b").ip);
    assert_eq!(local.replies.get(&seen_from_neighbour), Some(&2), "{local:?}");
    let dropped = meshctl::flows(&agents[1].observer_socket(&lab), &["--drop-reason-desc", "AUTH_REQUIRED"]);
    let to_strict = |f: &&serde_json::Value| f["l4"]["TCP"]["destination_port"] == u64::from(STRICT_PORT);
    let sources: std::collections::BTreeSet<_> =
        dropped.iter().filter(to_strict).filter_map(|f| f["IP"]["source"].as_str()).collect();
    // node-0's host over the link; node-1's host from the pod's gateway address (its veth).
    let expected: std::collections::BTreeSet<_> = [node0.ip.to_string(), POD_GATEWAY.to_string()].into_iter().collect();
    assert!(
        expected.iter().all(|ip| sources.contains(ip.as_str())),
        "AUTH_REQUIRED drops from {sources:?}, expected from {expected:?}: {dropped:#?}"
    );

    // node-1's agent gone: a tunnelled connection is refused at once, not left hanging.
    lab.signal(agents[1].pid, libc::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.try_wait(agents[1].pid).expect("a lab process").is_none() {
        assert!(Instant::now() < deadline, "node-1's agent did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let refused = labnet::connect(&lab, &client, echo, 1, Duration::from_secs(10)).expect("client runs");
    assert_eq!(refused.failed, 1, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "refused only after {:?}", started.elapsed());
    let text = metrics::agent(&node0.netns_path);
    assert_eq!(outbound(&text, "peer_agent"), 1.0, "{text}");
    // And a flow says why: a drop at the client, to the pod it was going to through the echo
    // service, with the tunnel's reason.
    let dropped = meshctl::flows(
        &agents[0].observer_socket(&lab),
        &["--drop-reason-desc", "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT"],
    );
    let refused_flow = dropped.iter().find(|f| {
        f["IP"]["source"] == client_pod.ip.to_string().as_str()
            && f["IP"]["destination"] == intruder.ip.to_string().as_str()
            && f["destination_service"]["name"] == "echo"
    });
    let summary = refused_flow.and_then(|f| f["Summary"].as_str()).unwrap_or_default();
    assert!(summary.contains("tunnel: peer_agent"), "no drop flow naming the tunnel's failure: {dropped:#?}");
}

fn demo_vip() -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, 10)
}
