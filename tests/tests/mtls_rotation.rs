//! Certificate and root rotation under a tunnelled connection: with 60-second workload
//! certificates (renewed at half-life), a connection to a STRICT pod on the other node keeps
//! carrying request/response round trips for three minutes while the client's certificate is
//! replaced several times and the workload CA's root is rotated (`mesh-operator
//! rotate-workload-ca` prepare, activate, retire, each with an operator restart): both agents
//! trust both roots before any certificate of the new one exists, every certificate is then
//! renewed from the new root while the old one is still trusted, and the old one is dropped.
//! After every step a new connection is carried too, and one opened after the last rotation
//! goes on a new tunnel connection made with the new certificate.

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
/// Another STRICT port of the server, for new connections during the stream.
const FRESH_PORT: u16 = 9001;

const STRICT: &str = "apiVersion: mesh.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: intruder-strict, namespace: demo}
spec:
  selector: {matchLabels: {app: intruder}}
  mtls: {mode: STRICT}
";

/// `node`'s status, as `meshctl status -o json` shows it.
fn status(lab: &mesh_tests::lab::Lab, node: &str) -> serde_json::Value {
    let run = meshctl::run(&observer_socket(lab, node), &["status", "-o", "json"]);
    serde_json::from_str(&run.stdout).unwrap_or_default()
}

/// The subjects of the roots `node`'s agent trusts.
fn trusted_roots(lab: &mesh_tests::lab::Lab, node: &str) -> BTreeSet<String> {
    let status = status(lab, node);
    status["trusted_roots"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_owned)).collect()
}

/// The issuers of `node`'s valid certificates.
fn issuers(lab: &mesh_tests::lab::Lab, node: &str) -> BTreeSet<String> {
    let status = status(lab, node);
    status["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["state"] == "valid")
        .filter_map(|c| c["issuer"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until `done` holds for both nodes.
fn wait_for(lab: &mesh_tests::lab::Lab, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !["node-0", "node-1"].iter().all(|node| done(node)) {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {limit:?}: {:#}", status(lab, "node-0"));
        std::thread::sleep(Duration::from_millis(500));
    }
}

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
    // Short connections beside the stream (that server takes one connection at a time).
    labnet::serve(&lab, intruder, FRESH_PORT, "fresh").expect("intruder serves short connections");
    let spiffe = |sa: &str| SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid").to_string();
    let client_id = spiffe("client");
    // Both ends: the client's certificate on node-0, the server's (which node-1 presents).
    meshctl::wait_for_certificates(&lab, "node-0", std::slice::from_ref(&client_id));
    meshctl::wait_for_certificates(&lab, "node-1", &[spiffe("intruder")]);
    scenario::wait_for_tunnel(&lab, 0, 1, intruder.ip).expect("intruder STRICT on both nodes");
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let to = SocketAddr::from((intruder.ip, STRICT_PORT));

    // Round trips on one connection for three minutes, while the serials are watched and the
    // root is rotated.
    let pki = lab.dir.join("pki");
    let operator_args = ["--pki-dir".to_owned(), pki.display().to_string(), "--workload-cert-ttl".into(), "60".into()];
    let mut operator_pid = operator.pid;
    let streaming = std::thread::scope(|scope| {
        let stream = scope.spawn(|| labnet::rr(&lab, &client, to, STREAM, None));
        let watch = scope.spawn(|| {
            let mut serials = BTreeSet::new();
            while !stream.is_finished() {
                serials.extend(serial(&lab, "node-0", &client_id));
                std::thread::sleep(Duration::from_secs(1));
            }
            (stream.join().expect("the stream's thread"), serials)
        });
        let old_roots = trusted_roots(&lab, "node-0");
        assert_eq!(old_roots.len(), 1, "one root before the rotation: {old_roots:?}");
        let mut step = |name: &str| {
            let mut command = lab.system_command(mesh_tests::built_binary("mesh-operator")).unwrap();
            command.args(["rotate-workload-ca", "--pki-dir"]).arg(&pki).arg(name);
            let output = lab.run(&mut command, Duration::from_secs(30)).unwrap();
            assert!(output.status.success(), "rotate {name}: {}", String::from_utf8_lossy(&output.stderr));
            assert!(lab.stop(operator_pid, Duration::from_secs(10)).unwrap().success());
            let args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
            operator_pid = Operator::start_with(&lab, &manifest_dir, operator.addr, &args).expect("operator back").pid;
            // A new connection is carried after every step.
            let fresh = SocketAddr::from((intruder.ip, FRESH_PORT));
            let fresh = labnet::connect(&lab, &client, fresh, 3, Duration::from_secs(5)).expect("client runs");
            assert_eq!(fresh.replies.get("fresh"), Some(&3), "new connections after {name}: {fresh:?}");
        };
        std::thread::sleep(Duration::from_secs(10));
        step("prepare");
        wait_for(&lab, "both roots trusted", Duration::from_secs(30), |node| trusted_roots(&lab, node).len() == 2);
        let new_root: String = trusted_roots(&lab, "node-0").difference(&old_roots).next().cloned().expect("new root");
        step("activate");
        // Every certificate renewed from the new root (60 s certificates: within a minute).
        wait_for(&lab, "every certificate from the new root", Duration::from_secs(90), |node| {
            issuers(&lab, node) == BTreeSet::from([new_root.clone()])
        });
        step("retire");
        wait_for(&lab, "only the new root trusted", Duration::from_secs(30), |node| {
            trusted_roots(&lab, node) == BTreeSet::from([new_root.clone()])
        });
        watch.join().expect("the watcher")
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
        // The stream, 3 new connections after each of the 3 steps, the last one.
        2.0 + 9.0
    );
}
