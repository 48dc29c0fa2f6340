//! HTTP routes for the mesh, end to end in the lab: an HTTPRoute (GAMMA) attached to Service
//! `echo` makes the kernel send the client's connections to that Service to its node's agent,
//! whose L7 proxy routes each request (a header match to one backend, a weighted split, a
//! response header set, 404 for what matches no rule) to HTTP echo servers on both nodes; the
//! client still sees the Service's address. Connections to the pods themselves and to Services
//! without routes never reach the agent. Cases after the upstream mesh conformance tests
//! MeshHTTPRouteMatching, MeshHTTPRouteWeight and MeshHTTPRouteResponseHeaderModifier. Each
//! request is two L7 flows in the Observer API (`meshctl observe --type l7`), with Hubble's
//! HTTP filters; a W3C `traceparent` reaches the backend with the proxy's span as parent.

use std::net::{Ipv4Addr, SocketAddr};

use mesh_tests::{
    agent::{self, Agent},
    lab::Placement,
    labnet, manifests, meshctl, metrics,
    operator::Operator,
    privileges::privileged,
    scenario::demo,
};

const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const ECHO_PORT: u16 = 8081;

/// Services `echo` (both web pods), `echo-v1` (web-a, node-0) and `echo-v2` (web-b, node-1),
/// each port 80 to the pods' 8081, and the route.
fn manifests(web_a: Ipv4Addr, web_b: Ipv4Addr) -> String {
    let service = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: {ECHO_PORT}, appProtocol: http}}]\n---\n"
        )
    };
    let slice = |name: &str, service: &str, pods: &[(&str, Ipv4Addr, &str)]| {
        let endpoints: Vec<String> = pods
            .iter()
            .map(|(pod, ip, node)| {
                format!("- {{addresses: ['{ip}'], nodeName: {node}, targetRef: {{kind: Pod, name: {pod}}}, conditions: {{ready: true}}}}")
            })
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: demo, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {ECHO_PORT}, protocol: TCP}}]\nendpoints:\n{}\n---\n",
            endpoints.join("\n")
        )
    };
    let a = ("web-a", web_a, "node-0");
    let b = ("web-b", web_b, "node-1");
    let mut text = String::new();
    text += &service("echo", &ECHO_VIP.to_string());
    text += &service("echo-v1", "10.96.0.31");
    text += &service("echo-v2", "10.96.0.32");
    text += &slice("echo-1", "echo", &[a, b]);
    text += &slice("echo-v1-1", "echo-v1", &[a]);
    text += &slice("echo-v2-1", "echo-v2", &[b]);
    text += &format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: echo-from-team, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{namespaceSelector: {{matchLabels: {{team: web}}}}}}]
    ports: [{{port: {ECHO_PORT}}}]
---
"
    );
    text += "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}]
  - matches: [{path: {type: Exact, value: /v1}}]
    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-routed, value: v1}]}}]
    backendRefs: [{name: echo-v1, port: 80}]
";
    text
}

#[test]
fn routes_of_a_service_send_its_requests_through_the_l7_proxy() {
    if !privileged("routes_of_a_service_send_its_requests_through_the_l7_proxy") {
        return;
    }
    let (lab, manifest_dir) = demo::lab().expect("lab");
    // The demo's policy stays: web takes only the team's namespaces (and not the intruder), on
    // its http port and (below) the echo port. The proxy connects to backends as the client,
    // so the client's requests pass it.
    std::fs::write(manifest_dir.join("nodes.yaml"), manifests::nodes(&lab)).unwrap();
    let (web_a, web_b) = (lab.pod("web-a"), lab.pod("web-b"));
    std::fs::write(manifest_dir.join("echo.yaml"), manifests(web_a.ip, web_b.ip)).unwrap();
    let (operator, bundles) = Operator::start_with_pki(&lab, &manifest_dir, &[]).expect("operator serves");
    let agents = Agent::follow_each_over_tls(&lab, &operator, &bundles, &[]).expect("agents ready over TLS");
    for web in [web_a, web_b] {
        labnet::http_echo(&lab, web, "demo", ECHO_PORT).expect("echo serves");
    }
    let client = Placement::pod(lab.pod(demo::CLIENT));
    let echo = SocketAddr::from((ECHO_VIP, 80));
    let logs = || agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n---\n");

    // A header match: every request to web-b's echo (node-1), over one kept-alive connection.
    let two = labnet::http_get(&lab, &client, echo, "/", &["version: two"], 20).expect("client runs");
    assert_eq!(two.statuses.get(&200), Some(&20), "{two:?}\n{}", logs());
    assert_eq!(two.pods.get("web-b"), Some(&20), "{two:?}");
    assert_eq!(two.connections, 1, "{two:?}");
    let echoed = two.last_echo.as_ref().expect("an echo");
    assert_eq!((echoed.path.as_str(), echoed.method.as_str()), ("/", "GET"));
    assert_eq!(echoed.host, echo.to_string(), "the Host the client sent reaches the backend");
    // From the client's own address, through the tunnel with its certificate (web-b is on the
    // other node), as the backend's policy and flows see it.
    let client_ip = lab.pod(demo::CLIENT).ip.to_string();
    assert!(echoed.peer.starts_with(&format!("{client_ip}:")), "{echoed:?}");

    // A weighted split, 70/30, within 10 points over 300 requests (6 standard deviations).
    let split = labnet::http_get(&lab, &client, echo, "/split/x", &[], 300).expect("client runs");
    assert_eq!(split.statuses.get(&200), Some(&300), "{split:?}");
    let v1 = f64::from(split.pods.get("web-a").copied().unwrap_or_default()) / 300.0;
    assert!((v1 - 0.7).abs() < 0.1, "{split:?}");

    // A response header set by the route; and a request no rule matches: 404 from the proxy.
    let one = labnet::http_get(&lab, &client, echo, "/v1", &[], 3).expect("client runs");
    assert_eq!(one.pods.get("web-a"), Some(&3), "{one:?}");
    // web-a is on the client's node: from the client's address too.
    let peer = one.last_echo.as_ref().map(|e| e.peer.clone()).unwrap_or_default();
    assert!(peer.starts_with(&format!("{client_ip}:")), "{one:?}");
    assert_eq!(one.last_headers.get("x-routed").map(String::as_str), Some("v1"), "{one:?}");
    let none = labnet::http_get(&lab, &client, echo, "/nothing", &[], 3).expect("client runs");
    assert_eq!(none.statuses.get(&404), Some(&3), "{none:?}");

    // Straight to a pod, and to a Service without routes: never the agent.
    let node0 = &lab.nodes[0];
    let routed_before =
        metrics::value(&metrics::agent(&node0.netns_path), "mesh_tunnel_outbound_connections_total{result=\"routed\"}");
    assert!(routed_before >= 4.0, "each client run is at least one routed connection: {routed_before}");
    let direct =
        labnet::http_get(&lab, &client, (web_b.ip, ECHO_PORT).into(), "/nothing", &[], 3).expect("client runs");
    assert_eq!(direct.statuses.get(&200), Some(&3), "the pod itself answers every path: {direct:?}");
    let v1_service = labnet::http_get(&lab, &client, (Ipv4Addr::new(10, 96, 0, 31), 80).into(), "/nothing", &[], 3)
        .expect("client runs");
    assert_eq!(v1_service.pods.get("web-a"), Some(&3), "{v1_service:?}");
    let routed_after =
        metrics::value(&metrics::agent(&node0.netns_path), "mesh_tunnel_outbound_connections_total{result=\"routed\"}");
    assert_eq!(routed_after, routed_before, "a connection without routes reached the proxy");

    // Golden metrics under Istio's names: the requests by route, backend and response code.
    let text = metrics::agent(&node0.netns_path);
    let requests = |labels: &[&str]| metrics::sum(&text, "istio_requests_total", labels);
    let echo = ["destination_service_namespace=\"demo\"", "destination_service_name=\"echo\""];
    let header_rule = [
        &echo[..],
        &[
            "route=\"demo/echo\"",
            "route_rule=\"0\"",
            "destination_backend=\"demo/echo-v2:80\"",
            "response_code=\"200\"",
        ],
    ]
    .concat();
    assert_eq!(requests(&header_rule), 20.0, "{text}");
    let split = [&echo[..], &["route_rule=\"1\""]].concat();
    assert_eq!(requests(&split), 300.0, "{text}");
    let unmatched = [&echo[..], &["route=\"\"", "response_code=\"404\""]].concat();
    assert_eq!(requests(&unmatched), 3.0, "{text}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");

    // L7 flows through the Observer API, read by the real meshctl: the 3 unmatched requests'
    // responses by status, the header-matched requests by method, path and destination pod.
    let socket = agent::observer_socket(&lab, "node-0");
    let not_found = flows_eventually(&socket, &["--type", "l7", "--http-status", "404"], 3);
    assert_eq!(not_found.len(), 3, "{not_found:#?}");
    for flow in &not_found {
        assert_eq!(flow["Type"], "L7", "{flow}");
        assert_eq!(flow["l7"]["type"], "RESPONSE", "{flow}");
        assert_eq!(flow["l7"]["http"]["code"], 404, "{flow}");
        assert_eq!(flow["l7"]["http"]["method"], "GET", "{flow}");
        assert!(flow["l7"]["http"]["url"].as_str().unwrap_or_default().ends_with("/nothing"), "{flow}");
        assert_eq!(flow["is_reply"], true, "{flow}");
        assert_eq!(flow["destination"]["pod_name"], demo::CLIENT, "the response goes back to the client: {flow}");
    }
    let to_web_b = meshctl::flows(
        &socket,
        &["--type", "l7", "--to-pod", "demo/web-b", "--http-method", "get", "--http-path", "^/$"],
    );
    assert_eq!(to_web_b.len(), 20, "the header-matched requests, each from the client to web-b: {to_web_b:#?}");
    assert!(to_web_b.iter().all(|f| f["l7"]["type"] == "REQUEST" && f["source"]["pod_name"] == demo::CLIENT));
    assert_eq!(to_web_b[0]["destination_service"]["name"], "echo", "{:#}", to_web_b[0]);
    let compact = meshctl::run(&socket, &["observe", "--all", "--type", "l7", "--http-url", "/v1$"]);
    assert!(compact.success, "{}", compact.stderr);
    assert_eq!(compact.stdout.matches("http-request FORWARDED (HTTP/1.1 GET http://").count(), 3, "{}", compact.stdout);
    assert_eq!(compact.stdout.matches("http-response FORWARDED (HTTP/1.1 200 ").count(), 3, "{}", compact.stdout);
    // As hubble prints them: a response with the client first and the arrow back.
    for line in compact.stdout.lines().filter(|l| l.contains("http-response")) {
        let (client_end, server_end) = line.split_once(" <- ").unwrap_or_default();
        assert!(client_end.contains("demo/client:") && server_end.starts_with("demo/web-a:"), "{line}");
    }

    // A traced request: the backend gets the trace with the proxy's span as the parent, and
    // both of its flows carry the trace id.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("traceparent: 00-{trace}-b7ad6b7169203331-01");
    let traced = labnet::http_get(&lab, &client, echo_address(), "/v1", &[&traceparent], 1).expect("client runs");
    let received = traced.last_echo.as_ref().and_then(|e| e.headers.get("traceparent")).cloned().unwrap_or_default();
    assert_eq!(received.len(), 1, "{traced:?}");
    assert!(received[0].starts_with(&format!("00-{trace}-")), "{received:?}");
    assert!(!received[0].contains("b7ad6b7169203331"), "the proxy's span replaces the client's: {received:?}");
    let in_trace = flows_eventually(&socket, &["--trace-id", trace], 2);
    assert_eq!(in_trace.len(), 2, "{in_trace:#?}");
    assert!(in_trace.iter().all(|f| f["trace_context"]["parent"]["trace_id"] == trace), "{in_trace:#?}");
}

/// `meshctl::flows`, asked again (for at most 3 s) until it gives `count` flows: the proxy
/// hands its flows to the agent's store in batches, up to 10 ms after the answers.
fn flows_eventually(socket: &std::path::Path, args: &[&str], count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let flows = meshctl::flows(socket, args);
        if flows.len() >= count || std::time::Instant::now() >= deadline {
            return flows;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn echo_address() -> SocketAddr {
    SocketAddr::from((ECHO_VIP, 80))
}
