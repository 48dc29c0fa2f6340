//! A principal rule (a MeshPolicy ingress rule naming workload identities) allows the clients
//! that proved one of them and nobody else, whatever their addresses: across nodes through the
//! mutual-TLS tunnel (the receiving agent marks its connection to the pod with the client's
//! principal, which TC looks up), on one node by the local pod's own identity (the node
//! vouches for its pods). The pods are PERMISSIVE: the rule alone sends other nodes'
//! connections through the tunnel. Plaintext from a node's host proves nothing and is dropped
//! by the rule's isolation, as is an authenticated client of another service account.

use std::{net::SocketAddr, time::Duration};

use mesh_common::identity::{SpiffeId, TrustDomain};
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet, manifests, meshctl, metrics,
    operator::Operator,
    privileges::privileged,
    scenario::{self, demo},
};

/// The port the rule opens, on both web pods.
const PORT: u16 = 9100;

/// The policy: `deploy/mtls/web-by-identity.yaml` (service account `client` by namespace and
/// name, `web` by SPIFFE ID, on port 9100); the demo's own policies are left out of this lab.
fn policy() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mtls/web-by-identity.yaml")
}

fn spiffe(sa: &str) -> String {
    SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid").to_string()
}

/// `from` connects `count` times to `pod`'s rule port; the replies name the client the server
/// saw.
fn connect(lab: &Lab, from: &str, pod: &str, count: u32, timeout: Duration) -> labnet::Summary {
    let to = SocketAddr::from((lab.pod(pod).ip, PORT));
    labnet::connect(lab, &Placement::pod(lab.pod(from)), to, count, timeout).expect("client runs")
}

#[test]
fn a_principal_rule_allows_one_service_account_and_denies_another() {
    if !privileged("a_principal_rule_allows_one_service_account_and_denies_another") {
        return;
    }
    let (lab, manifest_dir) = demo::lab().expect("lab");
    std::fs::remove_file(manifest_dir.join("policy.yaml")).expect("the demo's policies removed");
    std::fs::write(manifest_dir.join("nodes.yaml"), manifests::nodes(&lab)).unwrap();
    std::fs::copy(policy(), manifest_dir.join("web-by-identity.yaml")).expect("the policy copied");
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifest_dir, &[]).expect("operator serves");
    let agents = Agent::follow_each_over_tls(&lab, &operator, &bundles, &[]).expect("agents ready over TLS");
    for web in demo::WEB {
        labnet::serve(&lab, lab.pod(web), PORT, &format!("{web} {{peer}}")).expect("web serves the rule's port");
    }
    meshctl::wait_for_certificates(&lab, "node-0", &[spiffe("client"), spiffe("web")]);
    meshctl::wait_for_certificates(&lab, "node-1", &[spiffe("intruder"), spiffe("web")]);
    // web-a is on node-0, web-b on node-1: each node tunnels to the other's web pod.
    scenario::wait_for_redirect(&lab, 0, lab.pod("web-b").ip).expect("node-0 tunnels to web-b");
    scenario::wait_for_redirect(&lab, 1, lab.pod("web-a").ip).expect("node-1 tunnels to web-a");
    let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n---\n");
    let allowed = |from: &str, to: &str| {
        let summary = connect(&lab, from, to, 3, Duration::from_secs(5));
        let seen = format!("{to} {}", lab.pod(from).ip);
        assert_eq!(summary.replies.get(&seen), Some(&3), "{from} -> {to}: {summary:?}\n{}", logs());
    };
    let denied = |from: &str, to: &str| {
        let summary = connect(&lab, from, to, 2, Duration::from_millis(1500));
        assert_eq!(summary.failed, 2, "{from} -> {to} was let through: {summary:?}");
    };

    // Service account `client`: across nodes through the tunnel, and on its own node.
    allowed("client", "web-b");
    allowed("client", "web-a");
    // Service account `web`, named by SPIFFE ID, across nodes.
    allowed("web-b", "web-a");
    // Service account `intruder`: authenticated across nodes, but not the rule's; and on its
    // own node.
    denied("intruder", "web-a");
    denied("intruder", "web-b");

    // Plaintext from node-0's host (no identity to prove) to web-b on node-1.
    let host = Placement { netns: Some(lab.nodes[0].netns_path.clone()), cgroup: lab.system_cgroup() };
    let plain = labnet::connect(&lab, &host, (lab.pod("web-b").ip, PORT).into(), 2, Duration::from_millis(1500))
        .expect("client runs");
    assert_eq!(plain.failed, 2, "plaintext from node-0's host matched a principal rule: {plain:?}");

    // The cross-node connections went through the tunnel: client's 3 from node-0, and
    // intruder's 2 from node-1 (refused by the pod's policy behind the tunnel).
    let tunnelled = |node: usize| {
        let text = metrics::agent(&lab.nodes[node].netns_path);
        metrics::value(&text, "mesh_tunnel_outbound_connections_total{result=\"tunnelled\"}")
    };
    assert_eq!(tunnelled(0), 3.0, "node-0's agent: {}", logs());
    assert!(tunnelled(1) >= 3.0, "node-1's agent carried web-b's 3 connections (and intruder's): {}", logs());

    // Each denial is a policy drop at the web pod's interface, from intruder's own address.
    let intruder = lab.pod(demo::INTRUDER).ip.to_string();
    for (node, web) in [(0, "web-a"), (1, "web-b")] {
        let dropped = meshctl::flows(&agents[node].observer_socket(&lab), &["--drop-reason-desc", "POLICY_DENIED"]);
        let web_ip = lab.pod(web).ip.to_string();
        let from_intruder = dropped.iter().any(|f| {
            f["IP"]["source"] == intruder.as_str()
                && f["IP"]["destination"] == web_ip.as_str()
                && f["l4"]["TCP"]["destination_port"] == u64::from(PORT)
        });
        assert!(from_intruder, "no POLICY_DENIED flow from intruder to {web} on node-{node}: {dropped:#?}");
    }
}
