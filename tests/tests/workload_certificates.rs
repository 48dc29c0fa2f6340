//! Workload identity in a two-node lab: each agent gets, from the operator's workload CA and
//! over its node's mutual TLS, a certificate for every identity (namespace + service account)
//! of its own pods; renews it at half-life; forgets an identity whose last pod left. Read the
//! way a user reads it: `meshctl status`, the agent's metrics, the operator's metrics.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use mesh_tests::{
    agent::{Agent, observer_socket},
    lab::Lab,
    meshctl, metrics,
    operator::{Operator, free_port},
    privileges::privileged,
    scenario::demo,
};

/// The certificates of `node`'s agent by identity, from `meshctl status -o json`.
fn certificates(lab: &Lab, node: &str) -> BTreeMap<String, serde_json::Value> {
    let run = meshctl::run(&observer_socket(lab, node), &["status", "-o", "json"]);
    assert!(run.success, "meshctl status: {}", run.stderr);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("status is JSON");
    assert_eq!(status["certificates_enabled"], true, "{status}");
    status["certificates"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| (c["identity"].as_str().expect("named").to_owned(), c.clone()))
        .collect()
}

/// Waits (bounded) until `node`'s certificates satisfy `done`; returns them.
fn wait_for(
    lab: &Lab,
    node: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
) -> BTreeMap<String, serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let certificates = certificates(lab, node);
        if done(&certificates) {
            return certificates;
        }
        assert!(Instant::now() < deadline, "{node}: {what} within {timeout:?}; it has {certificates:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

fn valid(certificates: &BTreeMap<String, serde_json::Value>, identities: &[&str]) -> bool {
    let wanted: Vec<String> = identities.iter().map(|sa| spiffe(sa)).collect();
    certificates.keys().eq(wanted.iter()) && certificates.values().all(|c| c["state"] == "valid")
}

fn operator_metric(addr: SocketAddr, series: &str) -> f64 {
    metrics::operator(addr).lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[test]
fn each_agent_holds_certificates_for_its_pods_identities_and_renews_them_at_half_life() {
    if !privileged("each_agent_holds_certificates_for_its_pods_identities_and_renews_them_at_half_life") {
        return;
    }
    let (lab, manifests) = demo::lab().expect("lab");
    let operator_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = operator_metrics.to_string();
    // The shortest lifetime the CA gives: renewal comes after about 30 s.
    let args = ["--metrics-listen", &metrics_arg, "--workload-cert-ttl", "60"];
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifests, &args).expect("operator serves");
    let _agents: Vec<Agent> = lab
        .nodes
        .iter()
        .zip(&bundles)
        .map(|(node, bundle)| {
            let bundle = bundle.display().to_string();
            Agent::follow(&lab, node, &operator.tls_endpoint(), &["--tls-dir", &bundle]).expect("agent ready over TLS")
        })
        .collect();

    // node-0 runs client and web-a, node-1 web-b and intruder: each its own pods' identities.
    let issued = Duration::from_secs(15);
    let node0 = wait_for(&lab, "node-0", "client and web valid", issued, |c| valid(c, &["client", "web"]));
    wait_for(&lab, "node-1", "intruder and web valid", issued, |c| valid(c, &["intruder", "web"]));
    let web = &node0[&spiffe("web")];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (not_after, next) = (web["not_after_unix"].as_i64().unwrap(), web["next_request_unix"].as_i64().unwrap());
    assert!((55..=61).contains(&(not_after - now)), "a 60 s certificate: {web}");
    assert!((25..=31).contains(&(next - now)), "renewal at half-life: {web}");
    assert_eq!(web["chain_length"], 2, "leaf and root: {web}");
    assert_eq!(operator_metric(operator_metrics, "mesh_ca_requests_refused_total"), 0.0, "{}", operator.log());
    let text = meshctl::run(&observer_socket(&lab, "node-0"), &["status"]).stdout;
    assert!(text.contains("Workload certificates (2):"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with(&spiffe("client")) && l.contains(" valid ")), "{text}");

    // Renewed before it expires: a new serial, a later expiry, still valid throughout.
    let first_serial = web["serial"].as_str().unwrap().to_owned();
    let renewed = wait_for(&lab, "node-0", "web renewed", Duration::from_secs(45), |c| {
        assert!(valid(c, &["client", "web"]), "a certificate lapsed while renewing: {c:#?}");
        c[&spiffe("web")]["serial"] != first_serial.as_str()
    });
    assert!(renewed[&spiffe("web")]["not_after_unix"].as_i64().unwrap() > not_after, "{renewed:#?}");
    assert!(operator_metric(operator_metrics, "mesh_ca_certificates_issued_total") >= 5.0, "{}", operator.log());

    // The agent's metrics tell when each certificate expires.
    let agent_metrics = metrics::agent(&lab.nodes[0].netns_path);
    let expiry = format!("mesh_workload_certificate_expiry_timestamp_seconds{{identity=\"{}\"}} ", spiffe("web"));
    assert!(agent_metrics.lines().any(|l| l.starts_with(&expiry)), "{agent_metrics}");
    assert!(agent_metrics.contains("mesh_workload_certificate_requests_total{result=\"failed\"} 0"), "{agent_metrics}");

    // intruder leaves node-1: its identity goes with it; web (web-b) stays.
    let demo_file = manifests.join("demo.yaml");
    let text = std::fs::read_to_string(&demo_file).unwrap();
    let without: Vec<&str> = text.split("\n---\n").filter(|doc| !doc.contains("name: intruder\n")).collect();
    assert_eq!(without.len() + 1, text.split("\n---\n").count(), "one document names intruder");
    std::fs::write(&demo_file, without.join("\n---\n")).unwrap();
    wait_for(&lab, "node-1", "only web left", Duration::from_secs(15), |c| valid(c, &["web"]));
}
