//! Certificate rotation under a tunnelled connection: with 60-second workload certificates
//! (renewed at half-life), a connection to a STRICT pod on the other node keeps carrying
//! request/response round trips for three minutes while the client's certificate is replaced
//! several times, and a connection opened after the last rotation is carried too (on a new
//! tunnel connection made with the new certificate).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use mesh_common::identity::{SpiffeId, TrustDomain};
use mesh_tests::{
    agent::{Agent, observer_socket},
    lab::Placement,
    labnet, manifests, meshctl, metrics,
    operator::Operator,
    privileges::privileged,
    scenario::{self, demo},
};

const STRICT_PORT: u16 = 9000;
const STREAM: Duration = Duration::from_secs(180);

const STRICT: &str = "apiVersion: mesh.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: intruder-strict, namespace: demo}
spec:
  selector: {matchLabels: {app: intruder}}
  mtls: {mode: STRICT}
";

/// The serial of `node`'s certificate for `identity`, as `meshctl status` shows it.
fn serial(lab: &mesh_tests::lab::Lab, node: &str, identity: &str) -> Option<String> {
    let run = meshctl::run(&observer_socket(lab, node), &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).ok()?;
    status["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["identity"] == identity && c["state"] == "valid")
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
}

#[test]
fn a_tunnelled_connection_outlives_certificate_rotations() {
    if !privileged("a_tunnelled_connection_outlives_certificate_rotations") {
        return;
    }
    let (lab, manifest_dir) = demo::lab().expect("lab");
    std::fs::write(manifest_dir.join("nodes.yaml"), manifests::nodes(&lab)).unwrap();
    std::fs::write(manifest_dir.join("strict.yaml"), STRICT).unwrap();
    let (operator, bundles) =
        Operator::start_with_pki(&lab, &manifest_dir, &["--workload-cert-ttl", "60"]).expect("operator serves");
    let agents = Agent::follow_each_over_tls(&lab, &operator, &bundles, &[]).expect("agents ready over TLS");
    let intruder = lab.pod(demo::INTRUDER);
    labnet::serve_requests(&lab, intruder, STRICT_PORT, "strict", None).expect("intruder serves");
    let spiffe = |sa: &str| SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid").to_string();
    let client_id = spiffe("client");
    // Both ends: the client's certificate on node-0, the server's (which node-1 presents).
    meshctl::wait_for_certificates(&lab, "node-0", std::slice::from_ref(&client_id));
    meshctl::wait_for_certificates(&lab, "node-1", &[spiffe("intruder")]);
    scenario::wait_for_tunnel(&lab, 0, 1, intruder.ip).expect("intruder STRICT on both nodes");
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let to = SocketAddr::from((intruder.ip, STRICT_PORT));

    // Round trips on one connection for three minutes, while the serials are watched.
    let streaming = std::thread::scope(|scope| {
        let stream = scope.spawn(|| labnet::rr(&lab, &client, to, STREAM, None));
        let mut serials = BTreeSet::new();
        while !stream.is_finished() {
            serials.extend(serial(&lab, "node-0", &client_id));
            std::thread::sleep(Duration::from_secs(1));
        }
        (stream.join().expect("the stream's thread"), serials)
    });
    let (report, serials) = streaming;
    let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n---\n");
    let report = report.unwrap_or_else(|err| panic!("the tunnelled connection broke: {err}\n{}", logs()));
    assert!(report.elapsed_s >= STREAM.as_secs_f64() - 1.0, "{report:?}");
    assert!(report.round_trips > 1_000, "{report:?}");
    assert!(serials.len() >= 3, "the client's certificate was not replaced twice during the stream: {serials:?}");

    // A new connection after the rotations: carried on a tunnel connection made with the
    // current certificate.
    let handshakes = |text: &str| metrics::value(text, "mesh_tunnel_inbound_handshakes_total{result=\"ok\"}");
    let before = handshakes(&metrics::agent(&lab.nodes[1].netns_path));
    let after_rotation = labnet::rr(&lab, &client, to, Duration::from_secs(1), None).expect("a new connection");
    assert!(after_rotation.round_trips > 0, "{after_rotation:?}");
    let text = metrics::agent(&lab.nodes[1].netns_path);
    assert_eq!(handshakes(&text), before + 1.0, "a new certificate, a new tunnel connection: {text}");
    assert_eq!(
        metrics::value(
            &metrics::agent(&lab.nodes[0].netns_path),
            "mesh_tunnel_outbound_connections_total{result=\"tunnelled\"}"
        ),
        2.0
    );
}
