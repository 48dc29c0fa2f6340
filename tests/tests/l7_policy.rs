//! HTTP rules (MeshPolicy ingress rules with `http`, `deploy/l7/web-http-rules.yaml`): the
//! client's service account may GET under /public on port 8081 of the web pods, except
//! /public/secret. Each web pod's node judges the requests: web-b's (node-1) come from the
//! client on node-0 through the tunnel, web-a's from the client on its own node through
//! node-0's outbound listener. Allowed requests reach the pod from the client's own address;
//! denied ones are answered 403 by the agent and reported as dropped L7 flows naming the rule,
//! the allowed ones as forwarded L7 flows.
//! Another service account's connections are dropped by the rule's isolation at the pod, and
//! plaintext from a node's host that skipped the agents is dropped as at a STRICT port.

use std::{net::SocketAddr, time::Duration};

use mesh_common::identity::{SpiffeId, TrustDomain};
use mesh_tests::{
    agent::Agent,
    lab::{Lab, Placement},
    labnet, manifests, meshctl,
    operator::Operator,
    privileges::privileged,
    scenario::demo,
};

const PORT: u16 = 8081;

fn rules() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/l7/web-http-rules.yaml")
}

fn spiffe(sa: &str) -> String {
    SpiffeId::new(TrustDomain::default(), "demo", sa).expect("valid").to_string()
}

fn get(lab: &Lab, from: &str, to: &str, path: &str) -> mesh_tests::http_echo::GetReport {
    let address = SocketAddr::from((lab.pod(to).ip, PORT));
    labnet::http_get(lab, &Placement::pod(lab.pod(from)), address, path, &[], 1).expect("client runs")
}

/// The routed Service's address: `web-rules` (port 80 to 8081 of both web pods) has an
/// HTTPRoute, so the client's connections to it go to its node's L7 route proxy.
const ROUTED_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 40);

fn routed_service(lab: &Lab) -> String {
    let endpoint = |pod: &str, node: &str| {
        format!(
            "  - addresses: [\"{}\"]\n    nodeName: {node}\n    targetRef: {{kind: Pod, name: {pod}}}\n    conditions: {{ready: true}}\n",
            lab.pod(pod).ip
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web-rules, namespace: demo}}\nspec:\n  clusterIP: {ROUTED_VIP}\n  ports: [{{name: http, port: 80, targetPort: {PORT}, appProtocol: http}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-rules-1, namespace: demo, labels: {{kubernetes.io/service-name: web-rules}}}}\naddressType: IPv4\nports: [{{name: http, port: {PORT}, protocol: TCP}}]\nendpoints:\n{}{}---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web-rules, namespace: demo}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: web-rules, port: 80}}]\n  rules:\n  - backendRefs: [{{name: web-rules, port: 80}}]\n",
        endpoint("web-a", "node-0"),
        endpoint("web-b", "node-1"),
    )
}

#[test]
fn http_rules_allow_and_deny_requests_at_the_destinations_node() {
    if !privileged("http_rules_allow_and_deny_requests_at_the_destinations_node") {
        return;
    }
    let (lab, manifest_dir) = demo::lab().expect("lab");
    std::fs::remove_file(manifest_dir.join("policy.yaml")).expect("the demo's policies removed");
    std::fs::write(manifest_dir.join("nodes.yaml"), manifests::nodes(&lab)).unwrap();
    std::fs::copy(rules(), manifest_dir.join("web-http-rules.yaml")).expect("the rules copied");
    std::fs::write(manifest_dir.join("routed.yaml"), routed_service(&lab)).unwrap();
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifest_dir, &[]).expect("operator serves");
    let agents = Agent::follow_each_over_tls(&lab, &operator, &bundles, &[]).expect("agents ready over TLS");
    for web in demo::WEB {
        labnet::http_echo(&lab, lab.pod(web), "demo", PORT).expect("web serves HTTP");
    }
    meshctl::wait_for_certificates(&lab, "node-0", &[spiffe("client"), spiffe("web")]);
    meshctl::wait_for_certificates(&lab, "node-1", &[spiffe("intruder"), spiffe("web")]);
    let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n---\n");
    let client_ip = lab.pod(demo::CLIENT).ip.to_string();
    for web in demo::WEB {
        // Until both agents have the rules, the request may go straight (and be dropped).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut public = get(&lab, demo::CLIENT, web, "/public/page");
        while public.statuses.get(&200) != Some(&1) {
            assert!(std::time::Instant::now() < deadline, "GET /public/page on {web}: {public:?}\n{}", logs());
            std::thread::sleep(Duration::from_millis(300));
            public = get(&lab, demo::CLIENT, web, "/public/page");
        }
        assert_eq!(public.pods.get(web), Some(&1), "{public:?}");
        let peer = public.last_echo.as_ref().map(|e| e.peer.clone()).unwrap_or_default();
        assert!(peer.starts_with(&format!("{client_ip}:")), "{web} saw the client as {peer}, not its own address");
        for path in ["/admin", "/publicity", "/public/secret"] {
            let denied = get(&lab, demo::CLIENT, web, path);
            assert_eq!(denied.statuses.get(&403), Some(&1), "GET {path} on {web}: {denied:?}");
            assert!(denied.pods.is_empty(), "a denied request reached {web}: {denied:?}");
        }
    }
    // Through the client's L7 route proxy (a Service with an HTTPRoute): it delivers to web-a
    // (its own node) itself and applies web-a's rules; web-b's node judges what it tunnels.
    let routed = SocketAddr::from((ROUTED_VIP, 80));
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let public = labnet::http_get(&lab, &client, routed, "/public/page", &[], 20).expect("client runs");
    assert_eq!(public.statuses.get(&200), Some(&20), "{public:?}\n{}", logs());
    assert!(demo::WEB.iter().all(|w| public.pods.contains_key(*w)), "both web pods answer: {public:?}");
    let secret = labnet::http_get(&lab, &client, routed, "/public/secret", &[], 20).expect("client runs");
    assert_eq!(secret.statuses.get(&403), Some(&20), "{secret:?}");
    assert!(secret.pods.is_empty(), "a denied request reached a web pod through the route proxy: {secret:?}");

    // Another service account: its connection matches no rule, and the allow isolates the port.
    let intruder = labnet::connect(
        &lab,
        &Placement::pod(lab.pod(demo::INTRUDER)),
        (lab.pod("web-a").ip, PORT).into(),
        2,
        Duration::from_millis(1500),
    )
    .expect("client runs");
    assert_eq!(intruder.ok, 0, "intruder reached web-a's HTTP port: {intruder:?}");
    // Plaintext from node-1's host to web-b, skipping the agents.
    let host = Placement { netns: Some(lab.nodes[1].netns_path.clone()), cgroup: lab.system_cgroup() };
    let plain =
        labnet::connect(&lab, &host, (lab.pod("web-b").ip, PORT).into(), 2, Duration::from_millis(1500)).expect("runs");
    assert_eq!(plain.ok, 0, "plaintext reached web-b's HTTP port around the agents: {plain:?}");

    // Each web pod's node counted the requests it judged.
    for node in [0, 1] {
        let text = mesh_tests::metrics::agent(&lab.nodes[node].netns_path);
        let count = |verdict: &str| {
            mesh_tests::metrics::sum(
                &text,
                "mesh_l7_policy_requests_total",
                &[&format!("verdict=\"{verdict}\""), "destination_workload_namespace=\"demo\""],
            )
        };
        assert!(count("allowed") >= 1.0 && count("denied") >= 3.0, "node-{node} judged requests: {text}");
        assert!(
            text.contains("rule=\"MeshPolicy demo/web-no-secret ingress rule 0\""),
            "node-{node} does not count the denials by rule"
        );
    }

    // Each web pod's node reported its denials as dropped L7 flows naming the rule.
    for (node, web) in [(0, "web-a"), (1, "web-b")] {
        let socket = agents[node].observer_socket(&lab);
        let flows =
            meshctl::flows(&socket, &["--type", "l7", "--verdict", "DROPPED", "--to-pod", &format!("demo/{web}")]);
        let rule = |f: &serde_json::Value| f["extensions"]["rule"].as_str().unwrap_or_default().to_owned();
        let secret =
            flows.iter().find(|f| f["l7"]["http"]["url"].as_str().is_some_and(|u| u.ends_with("/public/secret")));
        let secret =
            secret.unwrap_or_else(|| panic!("no dropped flow of GET /public/secret on node-{node}: {flows:#?}"));
        assert_eq!(rule(secret), "MeshPolicy demo/web-no-secret ingress rule 0", "{secret:#}");
        assert_eq!(secret["source"]["pod_name"], "client", "{secret:#}");
        assert_eq!(secret["traffic_direction"], "INGRESS", "judged coming in to {web}: {secret:#}");
        if node == 0 {
            // GET /public/secret straight to web-a, and the route proxy's to web-a (about half
            // of 20): each a dropped flow naming the rule.
            let secrets = flows
                .iter()
                .filter(|f| f["l7"]["http"]["url"].as_str().is_some_and(|u| u.ends_with("/public/secret")))
                .filter(|f| rule(f) == "MeshPolicy demo/web-no-secret ingress rule 0")
                .count();
            assert!(
                secrets > 1,
                "the route proxy's denials to web-a are not dropped flows naming the rule: {flows:#?}"
            );
        }
        let admin = flows.iter().find(|f| f["l7"]["http"]["url"].as_str().is_some_and(|u| u.ends_with("/admin")));
        let admin = admin.unwrap_or_else(|| panic!("no dropped flow of GET /admin on node-{node}: {flows:#?}"));
        assert!(rule(admin).contains("MeshPolicy demo/web-public-reads isolate"), "{admin:#}");
        // And its allowed requests as forwarded ones, inbound, with the pod's answer.
        let forwarded =
            meshctl::flows(&socket, &["--type", "l7", "--verdict", "FORWARDED", "--to-pod", &format!("demo/{web}")]);
        let page = forwarded.iter().find(|f| {
            f["l7"]["http"]["url"].as_str().is_some_and(|u| u.ends_with("/public/page"))
                && f["traffic_direction"] == "INGRESS"
        });
        let page =
            page.unwrap_or_else(|| panic!("no forwarded inbound GET /public/page on node-{node}: {forwarded:#?}"));
        assert_eq!(page["source"]["pod_name"], "client", "{page:#}");
    }
}
