//! Gateway API's mesh conformance tests (kubernetes-sigs/gateway-api `conformance/tests/mesh/`)
//! in the lab, each with its own manifests and assertions, one after another on one mesh: the
//! base of `conformance/mesh/manifests.yaml` (namespaces `gateway-conformance-mesh` and
//! `gateway-conformance-mesh-consumer`; Services `echo` (both versions), `echo-v1` and `echo-v2`,
//! ports `http` 80 and `http-alt` 8080 to the echo servers' 8080; `echo-v1` on node-0, `echo-v2`
//! on node-1, an `echo-v1` client in the consumer namespace on node-0), then each test's routes
//! written to the operator's directory, its requests made from inside the pods it names (as
//! the upstream harness `kubectl exec`s into them), and its expectations checked as upstream
//! checks them: the status, the answering pod's name prefix, request headers the echo server
//! saw (values joined by ','), response headers, and each case eventually consistent (three
//! answers in a row within 30 s). This lab also checks what upstream only documents: the paths
//! the echo server saw after a rewrite and the redirects' `Location`. The gRPC tests
//! call `labnet grpc-echo` servers on the pods' port 7070 (`appProtocol: kubernetes.io/h2c` on
//! `echo`'s, none on the others', as upstream).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use mesh_tests::{
    http_echo::GetReport,
    lab::{Lab, Placement},
    labnet,
    manifests::{self, Mesh, PodManifest},
    meshctl,
    privileges::privileged,
};

const NS: &str = "gateway-conformance-mesh";
const CONSUMER: &str = "gateway-conformance-mesh-consumer";
const ECHO: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 62);
const ECHO_V1: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const ECHO_V2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
const PORT: u16 = 8080;
const GRPC_PORT: u16 = 7070;

fn base(lab: &Lab) -> String {
    let mut out = manifests::nodes(lab);
    for (ns, label) in [(NS, "mesh"), (CONSUMER, "mesh-consumer")] {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{gateway-conformance: {label}}}}}\n---\n"
        ));
    }
    let ports = [("http", PORT, "TCP")];
    for (pod, ns, version, name) in
        [("echo-v1", NS, "v1", None), ("echo-v2", NS, "v2", None), ("consumer", CONSUMER, "v1", Some("echo-v1"))]
    {
        let labels = [("app", "echo"), ("version", version)];
        out.push_str(
            &PodManifest { name, labels: &labels, ports: &ports, ..Default::default() }.render(ns, lab.pod(pod)),
        );
    }
    for (service, vip, pods) in [
        ("echo", ECHO, &["echo-v1", "echo-v2"][..]),
        ("echo-v1", ECHO_V1, &["echo-v1"]),
        ("echo-v2", ECHO_V2, &["echo-v2"]),
    ] {
        out.push_str(&manifests::service(
            NS,
            service,
            &format!(
                "  clusterIP: {vip}\n  ports:\n  - {{name: http, port: 80, targetPort: {PORT}, appProtocol: http}}\n  - {{name: http-alt, port: {PORT}, targetPort: {PORT}, appProtocol: http}}\n  - {{name: grpc, port: {GRPC_PORT}, targetPort: {GRPC_PORT}{}}}\n",
                if service == "echo" { ", appProtocol: kubernetes.io/h2c" } else { "" }
            ),
        ));
        let endpoints: String = pods
            .iter()
            .map(|pod| {
                let p = lab.pod(pod);
                format!(
                    "- {{addresses: ['{}'], nodeName: {}, targetRef: {{kind: Pod, name: {pod}}}, conditions: {{ready: true}}}}\n",
                    p.ip, p.node
                )
            })
            .collect();
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: {NS}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {PORT}, protocol: TCP}}, {{name: http-alt, port: {PORT}, protocol: TCP}}, {{name: grpc, port: {GRPC_PORT}, protocol: TCP}}]\nendpoints:\n{endpoints}---\n"
        ));
    }
    out
}

/// One request of a test and what it must get.
#[derive(Clone, Copy)]
struct Case<'a> {
    /// The lab pod it is made from.
    from: &'a str,
    to: SocketAddr,
    path: &'a str,
    /// `name: value`.
    headers: &'a [&'a str],
    status: u16,
    /// The answering pod's name starts with it ("" : anyone, or nobody).
    backend: &'a str,
    /// Request headers the echo server must see (values joined by ','), and must not.
    request_headers: &'a [(&'a str, &'a str)],
    absent_request: &'a [&'a str],
    response_headers: &'a [(&'a str, &'a str)],
    absent_response: &'a [&'a str],
    /// The path the echo server must see.
    echoed_path: Option<&'a str>,
    /// The redirect's `Location`.
    location: Option<&'a str>,
    /// A gRPC call (`headers` its metadata) instead of an HTTP GET.
    grpc: bool,
}

const fn get<'a>(to: SocketAddr, path: &'a str) -> Case<'a> {
    Case {
        from: "echo-v1",
        to,
        path,
        headers: &[],
        status: 200,
        backend: "",
        request_headers: &[],
        absent_request: &[],
        response_headers: &[],
        absent_response: &[],
        echoed_path: None,
        location: None,
        grpc: false,
    }
}

fn echo() -> SocketAddr {
    SocketAddr::from((ECHO, 80))
}

/// What is wrong with `seen` for `case`, if anything.
fn problem(case: &Case<'_>, seen: &GetReport) -> Option<String> {
    if seen.last_status != case.status || !seen.errors.is_empty() {
        return Some(format!("status {} (errors {:?}), not {}", seen.last_status, seen.errors, case.status));
    }
    let echoed = seen.last_echo.as_ref();
    let pod = echoed.map(|e| e.pod.as_str()).unwrap_or_default();
    if !pod.starts_with(case.backend) {
        return Some(format!("answered by {pod:?}, not {:?}", case.backend));
    }
    let request_header =
        |name: &str| echoed.and_then(|e| e.headers.get(&name.to_ascii_lowercase())).map(|v| v.join(","));
    for (name, value) in case.request_headers {
        if request_header(name).as_deref() != Some(*value) {
            return Some(format!("request header {name} was {:?}, not {value:?}", request_header(name)));
        }
    }
    for name in case.absent_request {
        if request_header(name).is_some() {
            return Some(format!("request header {name} was there: {:?}", request_header(name)));
        }
    }
    for (name, value) in case.response_headers {
        if seen.last_headers.get(&name.to_ascii_lowercase()).map(String::as_str) != Some(*value) {
            return Some(format!(
                "response header {name} was {:?}, not {value:?}",
                seen.last_headers.get(&name.to_ascii_lowercase())
            ));
        }
    }
    for name in case.absent_response {
        if seen.last_headers.contains_key(&name.to_ascii_lowercase()) {
            return Some(format!("response header {name} was there"));
        }
    }
    if let Some(path) = case.echoed_path
        && echoed.map(|e| e.path.as_str()) != Some(path)
    {
        return Some(format!("the echo server saw path {:?}, not {path:?}", echoed.map(|e| &e.path)));
    }
    if let Some(location) = case.location
        && seen.last_headers.get("location").map(String::as_str) != Some(location)
    {
        return Some(format!("Location {:?}, not {location:?}", seen.last_headers.get("location")));
    }
    None
}

/// Makes `case`'s request until it gets what it must three times in a row (30 s at most), as
/// upstream's `MakeRequestAndExpectEventuallyConsistentResponse` does.
fn expect(lab: &Lab, test: &str, case: Case<'_>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut in_a_row = 0;
    loop {
        let placement = Placement::pod(lab.pod(case.from));
        let seen = if case.grpc {
            labnet::grpc_get(lab, &placement, case.to, case.headers, 1)
        } else {
            labnet::http_get(lab, &placement, case.to, case.path, case.headers, 1)
        }
        .expect("client runs");
        match problem(&case, &seen) {
            None => {
                in_a_row += 1;
                if in_a_row == 3 {
                    return;
                }
            }
            Some(problem) => {
                in_a_row = 0;
                assert!(
                    Instant::now() < deadline,
                    "{test}: {} {} from {} with {:?}: {problem}\n{seen:?}",
                    case.to,
                    case.path,
                    case.from,
                    case.headers
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Replaces the test routes in the operator's directory (whole, in one rename).
fn apply(mesh: &Mesh, routes: &str) {
    let temp = mesh.manifests.join(".routes.tmp");
    std::fs::write(&temp, routes).expect("routes written");
    std::fs::rename(&temp, mesh.manifests.join("routes.yaml")).expect("routes renamed");
}

/// An HTTPRoute of namespace `ns` with `parent_refs` and `rules` (YAML flow lists).
fn route(ns: &str, name: &str, parent_refs: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: {parent_refs}\n  rules:\n{rules}\n---\n"
    )
}

/// A redirect test: its name, its route's name, its rules (path prefix, `requestRedirect`) and
/// its cases (path, status, `Location`).
type RedirectTest =
    (&'static str, &'static str, Vec<(&'static str, &'static str)>, Vec<(&'static str, u16, &'static str)>);

const ECHO_80: &str = "[{group: '', kind: Service, name: echo, port: 80}]";

#[test]
fn upstream_mesh_conformance_tests_pass_in_the_lab() {
    if !privileged("upstream_mesh_conformance_tests_pass_in_the_lab") {
        return;
    }
    let lab = Lab::new(&[&["echo-v1", "consumer"], &["echo-v2"]]).expect("lab");
    let mesh = Mesh::start_with_pki(&lab, &base(&lab), &[]).expect("mesh");
    for pod in ["echo-v1", "echo-v2"] {
        labnet::http_echo(&lab, lab.pod(pod), NS, PORT).expect("echo serves");
        labnet::grpc_echo(&lab, lab.pod(pod), NS, GRPC_PORT).expect("gRPC echo serves");
    }
    let identity = |ns: &str| format!("spiffe://cluster.local/ns/{ns}/sa/default");
    meshctl::wait_for_certificates(&lab, "node-0", &[identity(NS), identity(CONSUMER)]);
    meshctl::wait_for_certificates(&lab, "node-1", &[identity(NS)]);
    let (v1, v2, echo) = (SocketAddr::from((ECHO_V1, 80)), SocketAddr::from((ECHO_V2, 80)), echo());

    // MeshBasic: no route, either version answers.
    expect(&lab, "MeshBasic", get(echo, "/"));

    // MeshConsumerRoute: a route in the consumer namespace applies to its clients only.
    apply(
        &mesh,
        &route(
            CONSUMER,
            "mesh-echo-add-header",
            &format!("[{{group: '', kind: Service, name: echo-v1, namespace: {NS}}}]"),
            &format!(
                "  - filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}}}]\n    backendRefs: [{{name: echo-v1, namespace: {NS}, port: 80}}]"
            ),
        ),
    );
    let consumer =
        Case { from: "consumer", backend: "echo-v1", response_headers: &[("X-Header-Set", "set")], ..get(v1, "/") };
    expect(&lab, "MeshConsumerRoute", consumer);
    expect(&lab, "MeshConsumerRoute", Case { backend: "echo-v1", absent_response: &["X-Header-Set"], ..get(v1, "/") });

    // MeshFrontend and MeshFrontendHostname: the route binds to the Service's address, not to
    // the pod's, nor to the Host header.
    apply(
        &mesh,
        &route(
            NS,
            "mesh-split-v1",
            "[{group: '', kind: Service, name: echo-v2}]",
            "  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]",
        ),
    );
    let set = &[("X-Header-Set", "set")][..];
    expect(&lab, "MeshFrontend", Case { backend: "echo-v2", response_headers: set, ..get(v2, "/") });
    let pod_v2 = SocketAddr::from((lab.pod("echo-v2").ip, PORT));
    expect(&lab, "MeshFrontend", Case { backend: "echo-v2", absent_response: &["X-Header-Set"], ..get(pod_v2, "/") });
    let host_v1 = &["host: echo-v1"][..];
    expect(
        &lab,
        "MeshFrontendHostname",
        Case { headers: host_v1, backend: "echo-v2", response_headers: set, ..get(v2, "/") },
    );
    let host_v2 = &["host: echo-v2"][..];
    expect(
        &lab,
        "MeshFrontendHostname",
        Case { headers: host_v2, backend: "echo-v1", absent_response: &["X-Header-Set"], ..get(v1, "/") },
    );

    // MeshPorts: a parent's port limits the route to it; without one, every port.
    apply(
        &mesh,
        &(route(
            NS,
            "mesh-split-v1",
            "[{group: '', kind: Service, name: echo-v1, port: 80}]",
            "  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]\n    backendRefs: [{name: echo-v1, port: 80}]",
        ) + &route(
            NS,
            "mesh-split-v2",
            "[{group: '', kind: Service, name: echo-v2}]",
            "  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]\n    backendRefs: [{name: echo-v2, port: 80}]",
        )),
    );
    let (v1_alt, v2_alt) = (SocketAddr::from((ECHO_V1, PORT)), SocketAddr::from((ECHO_V2, PORT)));
    expect(&lab, "MeshPorts", Case { backend: "echo-v1", response_headers: &[("X-Header-Set", "v1")], ..get(v1, "/") });
    expect(&lab, "MeshPorts", Case { backend: "echo-v1", absent_response: &["X-Header-Set"], ..get(v1_alt, "/") });
    expect(&lab, "MeshPorts", Case { backend: "echo-v2", response_headers: &[("X-Header-Set", "v2")], ..get(v2, "/") });
    expect(
        &lab,
        "MeshPorts",
        Case { backend: "echo-v2", response_headers: &[("X-Header-Set", "v2")], ..get(v2_alt, "/") },
    );

    // MeshTrafficSplit: exact paths to each version.
    apply(
        &mesh,
        &route(
            NS,
            "mesh-split",
            "[{group: '', kind: Service, name: echo}]",
            "  - matches: [{path: {type: Exact, value: /v1}}]\n    backendRefs: [{name: echo-v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /v2}}]\n    backendRefs: [{name: echo-v2, port: 80}]",
        ),
    );
    expect(&lab, "MeshTrafficSplit", Case { backend: "echo-v1", ..get(echo, "/v1") });
    expect(&lab, "MeshTrafficSplit", Case { backend: "echo-v2", ..get(echo, "/v2") });

    // MeshHTTPRouteSimpleSameNamespace: the route replaces the Service's own balancing.
    apply(
        &mesh,
        &route(NS, "gateway-conformance-mesh-test", ECHO_80, "  - backendRefs: [{name: echo-v1, port: 8080}]"),
    );
    expect(&lab, "MeshHTTPRouteSimpleSameNamespace", Case { backend: "echo-v1", ..get(echo, "/") });

    // MeshHTTPRouteNamedRule.
    apply(
        &mesh,
        &route(
            NS,
            "mesh-http-named-rules",
            ECHO_80,
            "  - name: named-rule\n    matches: [{path: {type: PathPrefix, value: /named}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /unnamed}}]\n    backendRefs: [{name: echo-v2, port: 8080}]",
        ),
    );
    expect(
        &lab,
        "MeshHTTPRouteNamedRule",
        Case { backend: "echo-v1", echoed_path: Some("/named"), ..get(echo, "/named") },
    );
    expect(&lab, "MeshHTTPRouteNamedRule", Case { backend: "echo-v2", ..get(echo, "/unnamed") });

    // MeshHTTPRouteWeight: 70/30 within 5 points over 500 requests (up to 10 batches).
    apply(
        &mesh,
        &route(
            NS,
            "mesh-weighted-backends",
            ECHO_80,
            "  - backendRefs: [{name: echo-v1, port: 8080, weight: 70}, {name: echo-v2, port: 8080, weight: 30}]",
        ),
    );
    expect(&lab, "MeshHTTPRouteWeight", get(echo, "/"));
    let client = Placement::pod(lab.pod("echo-v1"));
    let mut batches = Vec::new();
    let within = (0..10).any(|_| {
        let batch = labnet::http_get(&lab, &client, echo, "/", &[], 500).expect("client runs");
        let share = |pod: &str| f64::from(batch.pods.get(pod).copied().unwrap_or_default()) / 500.0;
        let ok =
            batch.pods.len() == 2 && (share("echo-v1") - 0.7).abs() <= 0.05 && (share("echo-v2") - 0.3).abs() <= 0.05;
        batches.push(batch.pods);
        ok
    });
    assert!(within, "MeshHTTPRouteWeight: no batch of 500 within 5 points of 70/30: {batches:?}");

    // MeshHTTPRouteMatching.
    apply(
        &mesh,
        &route(
            NS,
            "mesh-matching",
            ECHO_80,
            "  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: echo-v2, port: 8080}]",
        ),
    );
    for (path, headers, backend) in [
        ("/", &[][..], "echo-v1"),
        ("/example", &[], "echo-v1"),
        ("/", &["Version: one"], "echo-v1"),
        ("/v2", &[], "echo-v2"),
        ("/v2/example", &[], "echo-v2"),
        ("/", &["Version: two"], "echo-v2"),
        ("/v2/", &[], "echo-v2"),
        ("/v2example", &[], "echo-v1"),
        ("/foo/v2/example", &[], "echo-v1"),
    ] {
        expect(&lab, "MeshHTTPRouteMatching", Case { headers, backend, ..get(echo, path) });
    }

    // MeshHTTPRouteQueryParamMatching.
    let qp = |name: &str, value: &str| format!("{{name: {name}, value: {value}}}");
    let rule = |matches: String, backend: &str| {
        format!("  - matches: [{matches}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let rules = [
        rule(format!("{{queryParams: [{}]}}", qp("animal", "whale")), "echo-v1"),
        rule(format!("{{queryParams: [{}]}}", qp("animal", "dolphin")), "echo-v2"),
        rule(format!("{{path: {{type: PathPrefix, value: /path1}}, queryParams: [{}]}}", qp("animal", "whale")), "echo-v1"),
        rule(format!("{{headers: [{}], queryParams: [{}]}}", qp("version", "one"), qp("animal", "whale")), "echo-v2"),
        rule(
            format!(
                "{{path: {{type: PathPrefix, value: /path3}}, queryParams: [{}]}}, {{path: {{type: PathPrefix, value: /path4}}, headers: [{}], queryParams: [{}]}}",
                qp("animal", "shark"),
                qp("version", "three"),
                qp("animal", "kraken")
            ),
            "echo-v1",
        ),
        rule("{path: {type: PathPrefix, value: /path5}}".into(), "echo-v1"),
        rule(format!("{{queryParams: [{}]}}", qp("animal", "hydra")), "echo-v2"),
    ]
    .concat();
    apply(&mesh, &route(NS, "mesh-query-param-matching", ECHO_80, rules.trim_end()));
    for (path, headers, status, backend) in [
        ("/?animal=whale", &[][..], 200, "echo-v1"),
        ("/?animal=dolphin", &[], 200, "echo-v2"),
        ("/?animal=whale&otherparam=irrelevant", &[], 200, "echo-v1"),
        ("/?animal=dolphin&color=yellow", &[], 200, "echo-v2"),
        ("/?color=blue", &[], 404, ""),
        ("/?animal=dog", &[], 404, ""),
        ("/?animal=whaledolphin", &[], 404, ""),
        ("/", &[], 404, ""),
        ("/path1?animal=whale", &[], 200, "echo-v1"),
        ("/?animal=whale", &["version: one"], 200, "echo-v2"),
        ("/path3?animal=shark", &[], 200, "echo-v1"),
        ("/path4?animal=kraken", &["version: three"], 200, "echo-v1"),
        ("/?animal=shark", &[], 404, ""),
        ("/path4?animal=kraken", &[], 404, ""),
        ("/path5?animal=hydra", &[], 200, "echo-v1"),
    ] {
        expect(&lab, "MeshHTTPRouteQueryParamMatching", Case { headers, status, backend, ..get(echo, path) });
    }

    // MeshHTTPRouteRequestHeaderModifier (filters on the rule) and
    // MeshHTTPRouteBackendRequestHeaderModifier (the same filters on the backendRef).
    let modifiers = [
        ("/set", "{set: [{name: X-Header-Set, value: set-overwrites-values}]}"),
        ("/add", "{add: [{name: X-Header-Add, value: add-appends-values}]}"),
        ("/remove", "{remove: [X-Header-Remove]}"),
        (
            "/multiple",
            "{set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}",
        ),
        (
            "/case-insensitivity",
            "{set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}",
        ),
    ];
    for (test, on_backend) in
        [("MeshHTTPRouteRequestHeaderModifier", false), ("MeshHTTPRouteBackendRequestHeaderModifier", true)]
    {
        let rules: String = modifiers
            .iter()
            .map(|(path, modifier)| {
                let filter = format!("[{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]");
                if on_backend {
                    format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: echo-v1, port: 8080, filters: {filter}}}]\n")
                } else {
                    format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: {filter}\n    backendRefs: [{{name: echo-v1, port: 8080}}]\n")
                }
            })
            .collect();
        apply(&mesh, &route(NS, "mesh-request-header-modifier", ECHO_80, rules.trim_end()));
        let base = Case { backend: "echo-v1", ..get(echo, "/") };
        expect(
            &lab,
            test,
            Case {
                path: "/set",
                headers: &["Some-Other-Header: val"],
                request_headers: &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
                ..base
            },
        );
        expect(
            &lab,
            test,
            Case {
                path: "/set",
                headers: &["Some-Other-Header: val", "X-Header-Set: some-other-value"],
                request_headers: &[("X-Header-Set", "set-overwrites-values")],
                ..base
            },
        );
        expect(
            &lab,
            test,
            Case {
                path: "/add",
                headers: &["Some-Other-Header: val"],
                request_headers: &[("X-Header-Add", "add-appends-values")],
                ..base
            },
        );
        expect(
            &lab,
            test,
            Case {
                path: "/add",
                headers: &["X-Header-Add: some-other-value"],
                request_headers: &[("X-Header-Add", "some-other-value,add-appends-values")],
                ..base
            },
        );
        expect(
            &lab,
            test,
            Case { path: "/remove", headers: &["X-Header-Remove: val"], absent_request: &["X-Header-Remove"], ..base },
        );
        expect(
            &lab,
            test,
            Case {
                path: "/multiple",
                headers: &[
                    "X-Header-Set-2: set-val-2",
                    "X-Header-Add-2: add-val-2",
                    "X-Header-Remove-2: remove-val-2",
                    "Another-Header: another-header-val",
                ],
                request_headers: &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "add-val-2,header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                    ("Another-Header", "another-header-val"),
                ],
                absent_request: &["X-Header-Remove-1", "X-Header-Remove-2"],
                ..base
            },
        );
        expect(
            &lab,
            test,
            Case {
                path: "/case-insensitivity",
                headers: &[
                    "x-header-set: original-val-set",
                    "x-header-add: original-val-add",
                    "x-header-remove: original-val-remove",
                    "Another-Header: another-header-val",
                ],
                request_headers: &[
                    ("X-Header-Set", "header-set"),
                    ("X-Header-Add", "original-val-add,header-add"),
                    ("Another-Header", "another-header-val"),
                ],
                absent_request: &["X-Header-Remove"],
                ..base
            },
        );
    }

    // MeshHTTPRouteRewritePath (and the paths the echo server saw, which upstream only documents).
    let modify = "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}], remove: [X-Header-Remove]}}";
    let rewrite = |path: &str, kind: &str, value: &str, extra: &str| {
        let field = if kind == "ReplacePrefixMatch" { "replacePrefixMatch" } else { "replaceFullPath" };
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: {kind}, {field}: {value}}}}}}}{extra}]\n    backendRefs: [{{name: echo-v1, port: 80}}]\n"
        )
    };
    let with_headers = format!(", {modify}");
    let rules = [
        rewrite("/prefix/one", "ReplacePrefixMatch", "/one", ""),
        rewrite("/strip-prefix", "ReplacePrefixMatch", "/", ""),
        rewrite("/full/one", "ReplaceFullPath", "/one", ""),
        rewrite("/full/rewrite-path-and-modify-headers", "ReplaceFullPath", "/test", &with_headers),
        rewrite("/prefix/rewrite-path-and-modify-headers", "ReplacePrefixMatch", "/prefix", &with_headers),
    ]
    .concat();
    apply(&mesh, &route(NS, "mesh-rewrite-path", ECHO_80, rules.trim_end()));
    let base = Case { backend: "echo-v1", ..get(echo, "/") };
    for (path, seen) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ] {
        expect(&lab, "MeshHTTPRouteRewritePath", Case { path, echoed_path: Some(seen), ..base });
    }
    let sent = &["X-Header-Remove: remove-val", "X-Header-Add-Append: append-val-1", "X-Header-Set: set-val"][..];
    let modified = &[
        ("X-Header-Add", "header-val-1"),
        ("X-Header-Add-Append", "append-val-1,header-val-2"),
        ("X-Header-Set", "set-overwrites-values"),
    ][..];
    for (path, seen) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        expect(
            &lab,
            "MeshHTTPRouteRewritePath",
            Case {
                path,
                headers: sent,
                request_headers: modified,
                absent_request: &["X-Header-Remove"],
                echoed_path: Some(seen),
                ..base
            },
        );
    }

    // The redirect tests: status, and the Location (which upstream only documents).
    let redirect = |path: &str, redirect: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {redirect}}}]\n"
        )
    };
    let redirects: [RedirectTest; 7] = [
        (
            "MeshHTTPRouteRedirectHostAndStatus",
            "mesh-redirect-host-and-status",
            vec![
                ("/hostname-redirect", "{hostname: example.org}"),
                ("/host-and-status", "{statusCode: 301, hostname: example.org}"),
            ],
            vec![
                ("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
                ("/host-and-status", 301, "http://example.org/host-and-status"),
            ],
        ),
        (
            "MeshHTTPRouteRedirectPath",
            "mesh-redirect-path",
            vec![
                ("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
                ("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
                (
                    "/path-and-host",
                    "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}",
                ),
                (
                    "/path-and-status",
                    "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}",
                ),
                (
                    "/full-path-and-host",
                    "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}",
                ),
                (
                    "/full-path-and-status",
                    "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}",
                ),
            ],
            vec![
                ("/original-prefix/lemon", 302, "http://10.96.0.62/replacement-prefix/lemon"),
                ("/full/path/original", 302, "http://10.96.0.62/full-path-replacement"),
                ("/path-and-host", 302, "http://example.org/replacement-prefix"),
                ("/path-and-status", 301, "http://10.96.0.62/replacement-prefix"),
                ("/full-path-and-host", 302, "http://example.org/replacement-full"),
                ("/full-path-and-status", 301, "http://10.96.0.62/replacement-full"),
            ],
        ),
        (
            "MeshHTTPRouteRedirectPort",
            "mesh-redirect-port",
            vec![
                ("/port", "{port: 8083}"),
                ("/port-and-host", "{hostname: example.org, port: 8083}"),
                ("/port-and-status", "{port: 8083, statusCode: 301}"),
                ("/port-and-host-and-status", "{port: 8083, hostname: example.org, statusCode: 302}"),
            ],
            vec![
                ("/port", 302, "http://10.96.0.62:8083/port"),
                ("/port-and-host", 302, "http://example.org:8083/port-and-host"),
                ("/port-and-status", 301, "http://10.96.0.62:8083/port-and-status"),
                ("/port-and-host-and-status", 302, "http://example.org:8083/port-and-host-and-status"),
            ],
        ),
        (
            "MeshHTTPRouteSchemeRedirect",
            "mesh-redirect-scheme",
            vec![
                ("/scheme", "{scheme: https}"),
                ("/scheme-and-host", "{hostname: example.org, scheme: https}"),
                ("/scheme-and-status", "{scheme: https, statusCode: 301}"),
                ("/scheme-and-host-and-status", "{scheme: https, statusCode: 302, hostname: example.org}"),
            ],
            vec![
                ("/scheme", 302, "https://10.96.0.62/scheme"),
                ("/scheme-and-host", 302, "https://example.org/scheme-and-host"),
                ("/scheme-and-status", 301, "https://10.96.0.62/scheme-and-status"),
                ("/scheme-and-host-and-status", 302, "https://example.org/scheme-and-host-and-status"),
            ],
        ),
        (
            "MeshHTTPRoute303Redirect",
            "mesh-303-redirect",
            vec![("/redirect", "{statusCode: 303}")],
            vec![("/redirect", 303, "http://10.96.0.62/redirect")],
        ),
        (
            "MeshHTTPRoute307Redirect",
            "mesh-307-redirect",
            vec![("/temporary", "{statusCode: 307}")],
            vec![("/temporary", 307, "http://10.96.0.62/temporary")],
        ),
        (
            "MeshHTTPRoute308Redirect",
            "mesh-308-redirect",
            vec![("/permanent", "{statusCode: 308}")],
            vec![("/permanent", 308, "http://10.96.0.62/permanent")],
        ),
    ];
    for (test, name, rules, cases) in redirects {
        let rules: String = rules.iter().map(|(path, r)| redirect(path, r)).collect();
        apply(&mesh, &route(NS, name, ECHO_80, rules.trim_end()));
        for (path, status, location) in cases {
            // The client's Host is the Service's address (our client's default), so
            // redirects that keep the host name it.
            expect(&lab, test, Case { status, location: Some(location), ..get(echo, path) });
        }
    }
    grpc_tests(&lab, &mesh);
    mesh.stop(&lab).expect("the mesh stops cleanly");
}

/// A GRPCRoute of the mesh namespace attached to `echo`'s gRPC port.
fn grpc_route(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: echo, port: {GRPC_PORT}}}]\n  rules:\n{rules}\n---\n"
    )
}

fn grpc_tests(lab: &Lab, mesh: &Mesh) {
    let echo = SocketAddr::from((ECHO, GRPC_PORT));
    let call = Case { grpc: true, ..get(echo, "") };

    // MeshGRPCRouteWeight: 70/30 within 5 points over 500 calls; a weight-0 backend that does
    // not exist is never chosen.
    apply(
        mesh,
        &grpc_route(
            "mesh-grpc-weighted-backends",
            &format!(
                "  - backendRefs: [{{name: echo-v1, port: {GRPC_PORT}, weight: 70}}, {{name: echo-v2, port: {GRPC_PORT}, weight: 30}}, {{name: echo-v3, port: {GRPC_PORT}, weight: 0}}]"
            ),
        ),
    );
    expect(lab, "MeshGRPCRouteWeight", call);
    let client = Placement::pod(lab.pod("echo-v1"));
    let mut batches = Vec::new();
    let within = (0..10).any(|_| {
        let batch = labnet::grpc_get(lab, &client, echo, &[], 500).expect("client runs");
        let share = |pod: &str| f64::from(batch.pods.get(pod).copied().unwrap_or_default()) / 500.0;
        let ok = batch.statuses.get(&200) == Some(&500)
            && batch.pods.len() == 2
            && (share("echo-v1") - 0.7).abs() <= 0.05
            && (share("echo-v2") - 0.3).abs() <= 0.05;
        batches.push((batch.pods, batch.statuses));
        ok
    });
    assert!(within, "MeshGRPCRouteWeight: no batch of 500 within 5 points of 70/30: {batches:?}");

    // MeshGRPCRouteRequestHeaderModifier.
    let rule = |case: &str, modifier: &str, backend: &str| {
        format!(
            "  - matches: [{{headers: [{{name: x-test-case, value: {case}}}]}}]\n    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {modifier}}}]\n    backendRefs: [{{name: {backend}, port: {GRPC_PORT}}}]\n"
        )
    };
    let rules = [
        rule("set", "{set: [{name: x-header-set, value: set-overwrites-values}]}", "echo-v1"),
        rule("add", "{add: [{name: x-header-add, value: add-appends-values}]}", "echo-v1"),
        rule("remove", "{remove: [x-header-remove]}", "echo-v1"),
        rule(
            "multi",
            "{set: [{name: x-header-set-1, value: header-set-1}, {name: x-header-set-2, value: header-set-2}], add: [{name: x-header-add-1, value: header-add-1}, {name: x-header-add-2, value: header-add-2}], remove: [x-header-remove-1, x-header-remove-2]}",
            "echo-v2",
        ),
    ]
    .concat();
    apply(mesh, &grpc_route("grpc-request-header-modifier", rules.trim_end()));
    let test = "MeshGRPCRouteRequestHeaderModifier";
    expect(
        lab,
        test,
        Case {
            headers: &[
                "x-test-case: set",
                "some-other-header: this-header-should-be-set",
                "x-header-set: this-value-should-be-overwritten",
            ],
            backend: "echo-v1",
            request_headers: &[
                ("x-test-case", "set"),
                ("some-other-header", "this-header-should-be-set"),
                ("x-header-set", "set-overwrites-values"),
            ],
            ..call
        },
    );
    expect(
        lab,
        test,
        Case {
            headers: &["x-test-case: add", "x-header-add: this-value-should-be-appended"],
            backend: "echo-v1",
            request_headers: &[("x-header-add", "this-value-should-be-appended,add-appends-values")],
            ..call
        },
    );
    expect(
        lab,
        test,
        Case {
            headers: &["x-test-case: remove", "x-header-remove: this-should-be-removed"],
            backend: "echo-v1",
            request_headers: &[("x-test-case", "remove")],
            absent_request: &["x-header-remove"],
            ..call
        },
    );
    expect(
        lab,
        test,
        Case {
            from: "echo-v2",
            headers: &[
                "x-test-case: multi",
                "x-header-set-2: set-header-2",
                "x-header-add-2: add-header-2",
                "x-header-remove-2: should-be-removed-2",
            ],
            backend: "echo-v2",
            request_headers: &[
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-header-2,header-add-2"),
            ],
            absent_request: &["x-header-remove-1", "x-header-remove-2"],
            ..call
        },
    );
}
