//! Cluster mode against kube's tower-test mock API server: the watchers list, then watch; a
//! watch that breaks is resumed from its last resource version; one whose version expired
//! (410) lists again, and what vanished meanwhile leaves the model; every step reaches it.

use std::time::Duration;

use futures::StreamExt as _;
use http::{Request, Response};
use kube::client::Body;
use mesh_common::api::{Kind, resource};
use mesh_operator::{cluster::ClusterView, cluster_source, identity::IdentityAllocator, model_store::ModelStore};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn pod(name: &str, ip: &str, node: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": rv},
        "spec": {"nodeName": node, "containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Response<Body> {
    let body = json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items});
    Response::new(Body::from(serde_json::to_vec(&body).unwrap()))
}

fn events(events: &[(&str, Value)]) -> Response<Body> {
    let mut body = Vec::new();
    for (kind, object) in events {
        body.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap());
        body.push(b'\n');
    }
    Response::new(Body::from(body))
}

/// The mock API server: answers lists, scripts the pod watches, and keeps every other watch
/// open. Reports the query of each pod watch.
async fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    pod_watches: mpsc::UnboundedSender<String>,
) {
    let mut open = Vec::new();
    let mut pod_watch = 0;
    let mut pod_lists = 0;
    while let Some((request, send)) = handle.next_request().await {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        if !query.contains("watch=true") {
            send.send_response(match path.as_str() {
                "/api/v1/namespaces" => list("Namespace", "v1", vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"team": "web"}}})]),
                // The first list has web-a; the re-list after the 410 finds no pod at all.
                "/api/v1/pods" => {
                    pod_lists += 1;
                    list("Pod", "v1", if pod_lists == 1 { vec![pod("web-a", "10.244.0.3", "node-0", "1")] } else { vec![] })
                }
                "/api/v1/services" => list("Service", "v1", vec![json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "demo"},
                    "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
                })]),
                "/apis/discovery.k8s.io/v1/endpointslices" => list("EndpointSlice", "discovery.k8s.io/v1", vec![]),
                "/apis/networking.k8s.io/v1/networkpolicies" => list("NetworkPolicy", "networking.k8s.io/v1", vec![json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "web-ingress", "namespace": "demo"},
                    "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}
                })]),
                "/api/v1/nodes" => list("Node", "v1", vec![json!({
                    "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0"},
                    "spec": {"podCIDR": "10.244.0.0/24"},
                    "status": {"addresses": [{"type": "Hostname", "address": "node-0"}, {"type": "InternalIP", "address": "172.18.0.2"}]}
                })]),
                "/apis/mesh.dev/v1alpha1/meshpolicies" => list("MeshPolicy", "mesh.dev/v1alpha1", vec![json!({
                    "apiVersion": "mesh.dev/v1alpha1", "kind": "MeshPolicy",
                    "metadata": {"name": "deny-other", "namespace": "demo"},
                    "spec": {"priority": 10, "ingress": [{"action": "Deny", "peers": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}
                })]),
                "/apis/mesh.dev/v1alpha1/clustermeshpolicies" => list("ClusterMeshPolicy", "mesh.dev/v1alpha1", vec![]),
                "/apis/mesh.dev/v1alpha1/peerauthentications" => list("PeerAuthentication", "mesh.dev/v1alpha1", vec![json!({
                    "apiVersion": "mesh.dev/v1alpha1", "kind": "PeerAuthentication",
                    "metadata": {"name": "default", "namespace": "mesh-system"},
                    "spec": {"mtls": {"mode": "STRICT"}}
                })]),
                "/apis/mesh.dev/v1alpha1/backendtrafficpolicies" => list("BackendTrafficPolicy", "mesh.dev/v1alpha1", vec![json!({
                    "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendTrafficPolicy",
                    "metadata": {"name": "web", "namespace": "demo"},
                    "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "web"}], "outlierDetection": {"consecutive5xxErrors": 2}}
                })]),
                "/apis/gateway.networking.k8s.io/v1/httproutes" => list("HTTPRoute", "gateway.networking.k8s.io/v1", vec![json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "web-canary", "namespace": "demo", "generation": 2},
                    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                             "rules": [{"backendRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1}]}]}
                })]),
                // Gateway API's GRPCRoute CRD is not installed here.
                "/apis/gateway.networking.k8s.io/v1/grpcroutes" => {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"});
                    let mut response = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
                    *response.status_mut() = http::StatusCode::NOT_FOUND;
                    response
                }
                other => panic!("unexpected list {other}"),
            });
            continue;
        }
        if path != "/api/v1/pods" {
            open.push(send);
            continue;
        }
        pod_watch += 1;
        let _ = pod_watches.send(query);
        match pod_watch {
            // web-b arrives, then the watch breaks (the body ends).
            1 => send.send_response(events(&[("ADDED", pod("web-b", "10.244.1.2", "node-1", "5"))])),
            // Resumed: web-a goes.
            2 => send.send_response(events(&[("DELETED", pod("web-a", "10.244.0.3", "node-0", "6"))])),
            // The version is too old: the watcher must list again, and what it does not find
            // any more (web-b) must leave the model.
            3 => send.send_response(events(&[(
                "ERROR",
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}),
            )])),
            _ => open.push(send),
        }
    }
}

/// The web service's endpoint addresses in the model, sorted.
fn web_endpoints(store: &ModelStore) -> Vec<String> {
    let mut addresses: Vec<String> = store
        .snapshot()
        .upserts
        .into_iter()
        .filter_map(|r| match r.kind {
            Some(resource::Kind::EndpointSlice(s)) if s.service == "web" => Some(s.endpoints),
            _ => None,
        })
        .flatten()
        .flat_map(|e| e.addresses)
        .collect();
    addresses.sort();
    addresses
}

#[tokio::test]
async fn watches_list_then_follow_and_resume_after_a_break() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (watches_sender, mut pod_watches) = mpsc::unbounded_channel();
    tokio::spawn(api_server(handle, watches_sender));
    let client = kube::Client::new(service, "default");

    let mut view = ClusterView::new(IdentityAllocator::open(None).unwrap());
    let mut store = ModelStore::new("test".into());
    let mut batches = Box::pin(cluster_source::watch(client));
    let mut listed = std::collections::BTreeSet::new();
    let mut seen = Vec::new();
    let step = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(batch) = batches.next().await {
            // The expired watch is reported (and then listed again), and the missing GRPCRoute
            // CRD; nothing else may go wrong.
            let expected = |p: &String| {
                p.contains("too old resource version")
                    || p.starts_with("the GRPCRoute CRD (gateway.networking.k8s.io) is not installed")
            };
            assert!(batch.problems.iter().all(expected), "{:?}", batch.problems);
            listed.extend(batch.listed);
            batch.changes.into_iter().for_each(|c| c.apply(&mut view));
            let (changes, errors) = view.changes();
            assert!(errors.is_empty(), "{errors:?}");
            store.commit(changes);
            let endpoints = web_endpoints(&store);
            if seen.last() != Some(&endpoints) {
                seen.push(endpoints);
            }
            if seen.len() > 1 && seen.last().is_some_and(Vec::is_empty) {
                break;
            }
        }
    });
    step.await.unwrap_or_else(|_| panic!("the model never lost web-b after the re-list; it went through {seen:?}"));

    assert_eq!(listed.len(), cluster_source::KINDS, "every kind listed: {listed:?}");
    // After the list: web-a; after the first watch: both; after the resumed watch: web-b;
    // after the re-list: nothing.
    let expected: Vec<Vec<String>> = vec![
        vec!["10.244.0.3".into()],
        vec!["10.244.0.3".into(), "10.244.1.2".into()],
        vec!["10.244.1.2".into()],
        vec![],
    ];
    assert!(seen.ends_with(&expected), "{seen:?}");
    assert!(store.get(&(Kind::Service as i32, "demo".into(), "web".into())).is_some());
    let Some(resource::Kind::NetworkPolicy(policy)) =
        &store.get(&(Kind::NetworkPolicy as i32, "demo".into(), "web-ingress".into())).unwrap().kind
    else {
        panic!("the policy is not in the model")
    };
    assert!(policy.ingress_isolated && !policy.egress_isolated);
    let Some(resource::Kind::MeshPolicy(mesh)) =
        &store.get(&(Kind::MeshPolicy as i32, "demo".into(), "deny-other".into())).unwrap().kind
    else {
        panic!("the MeshPolicy is not in the model")
    };
    assert_eq!((mesh.priority, mesh.ingress[0].action), (10, mesh_common::api::RuleAction::Deny as i32));
    let Some(resource::Kind::PeerAuthentication(peer)) =
        &store.get(&(Kind::PeerAuthentication as i32, "mesh-system".into(), "default".into())).unwrap().kind
    else {
        panic!("the PeerAuthentication is not in the model")
    };
    assert!(peer.mesh_wide && peer.mode == mesh_common::api::MtlsMode::Strict as i32, "{peer:?}");
    let Some(resource::Kind::BackendTrafficPolicy(backend)) =
        &store.get(&(Kind::BackendTrafficPolicy as i32, "demo".into(), "web".into())).unwrap().kind
    else {
        panic!("the BackendTrafficPolicy is not in the model")
    };
    let Some(resource::Kind::HttpRoute(route)) =
        &store.get(&(Kind::HttpRoute as i32, "demo".into(), "web-canary".into())).unwrap().kind
    else {
        panic!("the HTTPRoute is not in the model")
    };
    assert_eq!(route.parents[0].service, "web");
    assert_eq!(
        (backend.services.clone(), backend.outlier_detection.map(|o| o.consecutive_5xx_errors)),
        (vec!["web".to_owned()], Some(2))
    );
    let Some(resource::Kind::Node(node)) =
        &store.get(&(Kind::Node as i32, String::new(), "node-0".into())).unwrap().kind
    else {
        panic!("the node is not in the model")
    };
    assert_eq!(
        (node.addresses.clone(), node.pod_cidrs.clone()),
        (vec!["172.18.0.2".to_owned()], vec!["10.244.0.0/24".to_owned()])
    );

    // The second pod watch resumed from the last version the first one delivered.
    let first = pod_watches.recv().await.unwrap();
    let second = pod_watches.recv().await.unwrap();
    assert!(first.contains("resourceVersion=1"), "{first}");
    assert!(second.contains("resourceVersion=5"), "the broken watch was not resumed from its version: {second}");
}

#[tokio::test]
async fn agent_events_reach_the_meshnode_status_by_server_side_apply() {
    use mesh_operator::node_status::{AgentEvent, report};
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (events, reports) = mpsc::unbounded_channel();
    events.send(AgentEvent::Connected { node: "node-0".into(), epoch: "e1".into() }).unwrap();
    events.send(AgentEvent::Acked { node: "node-0".into(), version: 3 }).unwrap();
    events
        .send(AgentEvent::Nacked { node: "node-0".into(), version: 4, error: "map mesh_backend is full".into() })
        .unwrap();
    tokio::spawn(report(kube::Client::new(service, "default"), reports));

    let mut handle = Box::pin(handle);
    // First the Node, whose uid makes it the MeshNode's owner.
    let (request, send) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.expect("a request").expect("alive");
    assert_eq!((request.method(), request.uri().path()), (&http::Method::GET, "/api/v1/nodes/node-0"));
    let kube_node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-0", "uid": "uid-of-node-0"}});
    send.send_response(Response::new(Body::from(serde_json::to_vec(&kube_node).unwrap())));
    let node =
        json!({"apiVersion": "mesh.dev/v1alpha1", "kind": "MeshNode", "metadata": {"name": "node-0"}, "spec": {}});
    let mut bodies = Vec::new();
    for expected_path in ["/apis/mesh.dev/v1alpha1/meshnodes/node-0", "/apis/mesh.dev/v1alpha1/meshnodes/node-0/status"]
    {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("a request")
            .expect("the client is alive");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(request.uri().path(), expected_path);
        let query = request.uri().query().unwrap_or_default().to_owned();
        assert!(query.contains("fieldManager=mesh-operator") && query.contains("force=true"), "{query}");
        bodies.push(String::from_utf8(request.into_body().collect_bytes().await.unwrap().to_vec()).unwrap());
        send.send_response(Response::new(Body::from(serde_json::to_vec(&node).unwrap())));
    }
    let object: Value = serde_json::from_str(&bodies[0]).unwrap();
    let owners = object["metadata"]["ownerReferences"].as_array().expect("an owner");
    assert_eq!(
        (&owners[0]["kind"], &owners[0]["name"], &owners[0]["uid"]),
        (&json!("Node"), &json!("node-0"), &json!("uid-of-node-0"))
    );
    // The three events were coalesced into one status: connected, not synced (the NACK), v3.
    let status: Value = serde_json::from_str(&bodies[1]).unwrap();
    let conditions = status["status"]["conditions"].as_array().unwrap();
    let condition = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(condition("Connected")["status"], "True");
    assert_eq!(condition("Synced")["status"], "False");
    assert!(condition("Synced")["message"].as_str().unwrap().contains("map mesh_backend is full"));
    assert_eq!(status["status"]["ackedVersion"], 3);
}

/// Answers one TokenReview with `status`, checking what was asked.
async fn review_once(
    handle: &mut std::pin::Pin<Box<tower_test::mock::Handle<Request<Body>, Response<Body>>>>,
    status: Value,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.unwrap().unwrap();
    assert_eq!(request.method(), http::Method::POST);
    assert_eq!(request.uri().path(), "/apis/authentication.k8s.io/v1/tokenreviews");
    let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
    assert_eq!(body["spec"]["token"], "the-token");
    assert_eq!(body["spec"]["audiences"], json!(["mesh-operator"]));
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": body["spec"], "status": status});
    send.send_response(Response::new(Body::from(serde_json::to_vec(&review).unwrap())));
}

#[tokio::test]
async fn a_bootstrap_token_is_accepted_only_for_the_agent_account_on_its_own_node() {
    use mesh_operator::bootstrap::{BootstrapError, verify};
    const AGENT: &str = "system:serviceaccount:mesh-system:mesh-agent";
    let user = |name: &str, node: Option<&str>| {
        let extra = node.map(|n| json!({"authentication.kubernetes.io/node-name": [n]})).unwrap_or(json!({}));
        json!({"authenticated": true, "user": {"username": name, "extra": extra}})
    };
    let cases: Vec<(Value, Result<(), BootstrapError>)> = vec![
        (user(AGENT, Some("node-1")), Ok(())),
        (
            user(AGENT, Some("node-2")),
            Err(BootstrapError::WrongNode { found: "node-2".into(), claimed: "node-1".into() }),
        ),
        (
            user("system:serviceaccount:default:default", Some("node-1")),
            Err(BootstrapError::WrongAccount {
                found: "system:serviceaccount:default:default".into(),
                expected: AGENT.into(),
            }),
        ),
        (user(AGENT, None), Err(BootstrapError::NoNode)),
        (
            json!({"authenticated": false, "error": "token expired"}),
            Err(BootstrapError::NotAuthenticated("token expired".into())),
        ),
    ];
    for (status, expected) in cases {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut handle = Box::pin(handle);
        let client = kube::Client::new(service, "default");
        let (result, ()) =
            tokio::join!(verify(client, "the-token", "node-1", AGENT), review_once(&mut handle, status.clone()));
        assert_eq!(result, expected, "{status}");
    }
}

#[tokio::test]
async fn a_node_bootstraps_its_certificate_over_tls_with_a_reviewed_token() {
    use mesh_common::api::{
        BootstrapRequest, node_bootstrap_client::NodeBootstrapClient, node_bootstrap_server::NodeBootstrapServer,
    };
    use mesh_operator::{bootstrap::BootstrapServer, pki::Pki};
    const AGENT: &str = "system:serviceaccount:mesh-system:mesh-agent";

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::open(dir.path()).unwrap();
    let server_bundle = pki.server(&["127.0.0.1".into()]).unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let bootstrap = BootstrapServer {
        pki: std::sync::Arc::new(pki),
        client: Some(kube::Client::new(service, "default")),
        agent_account: AGENT.into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = server_bundle.server_tls();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(NodeBootstrapServer::new(bootstrap))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // The API server: the first token is node-1's agent, the second one's pod is on node-2.
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        let user = |node: &str| json!({"authenticated": true, "user": {"username": AGENT, "extra": {"authentication.kubernetes.io/node-name": [node]}}});
        review_once(&mut handle, user("node-1")).await;
        review_once(&mut handle, user("node-2")).await;
    });

    // The agent has only the CA: TLS authenticates the operator, not the agent.
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&server_bundle.ca))
                .domain_name(mesh_common::model::OPERATOR_TLS_NAME),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = NodeBootstrapClient::new(channel);
    let request = || BootstrapRequest { node: "node-1".into(), token: "the-token".into() };
    let bundle = client.bootstrap(request()).await.expect("node-1's agent gets its bundle").into_inner();
    let (_, pem) = x509_parser::pem::parse_x509_pem(bundle.cert.as_bytes()).unwrap();
    assert_eq!(mesh_operator::pki::node_of(&pem.contents).as_deref(), Some("node-1"));
    assert_eq!(bundle.ca, server_bundle.ca);
    assert!(bundle.key.contains("PRIVATE KEY"));

    let refused =
        client.bootstrap(request()).await.expect_err("a token of a pod on node-2 cannot get node-1's certificate");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("node-2"), "{}", refused.message());
}

/// Route status as a Gateway API implementation writes it: read, the operator's entry per
/// Service parent replaced beside another controller's (kept), written back with the
/// resourceVersion read; a conflict (409) is read and tried again.
#[tokio::test]
async fn route_status_is_written_per_parent_beside_other_controllers() {
    use mesh_operator::{
        gateway_status::{CONTROLLER_NAME, RouteStatusUpdate, write},
        http_route::{Condition, ParentStatus},
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut handle = Box::pin(handle);
    let client = kube::Client::new(service, "default");
    let update = RouteStatusUpdate {
        kind: "HTTPRoute",
        namespace: "demo".into(),
        name: "web-canary".into(),
        parents: vec![ParentStatus {
            parent: mesh_common::api::RouteParent { namespace: "demo".into(), service: "web".into(), port: 80 },
            conditions: [
                Condition { kind: "Accepted", status: true, reason: "Accepted", message: String::new() },
                Condition {
                    kind: "ResolvedRefs",
                    status: false,
                    reason: "BackendNotFound",
                    message: "Service demo/gone does not exist".into(),
                },
            ],
        }],
    };
    let route = |rv: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web-canary", "namespace": "demo", "generation": 3, "resourceVersion": rv},
            "spec": {},
            "status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "example.com/gateway", "conditions": []}]}
        })
    };
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/demo/httproutes/web-canary";
    let server = async {
        let mut patches = Vec::new();
        for (rv, answer) in [("7", 409), ("8", 200)] {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!((request.method(), request.uri().path()), (&http::Method::GET, path));
            send.send_response(Response::new(Body::from(serde_json::to_vec(&route(rv)).unwrap())));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!((request.method(), request.uri().path()), (&http::Method::PATCH, &*format!("{path}/status")));
            let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
            patches.push(body);
            let mut response = if answer == 409 {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"});
                Response::new(Body::from(serde_json::to_vec(&status).unwrap()))
            } else {
                Response::new(Body::from(serde_json::to_vec(&route(rv)).unwrap()))
            };
            *response.status_mut() = http::StatusCode::from_u16(answer).unwrap();
            send.send_response(response);
        }
        patches
    };
    let (written, patches) = tokio::join!(write(&client, &update), server);
    written.unwrap();
    assert_eq!(patches[0]["metadata"]["resourceVersion"], "7");
    assert_eq!(patches[1]["metadata"]["resourceVersion"], "8", "read again after the conflict");
    let parents = patches[1]["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "example.com/gateway", "another controller's entry is kept");
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], CONTROLLER_NAME);
    assert_eq!(
        ours["parentRef"],
        json!({"group": "", "kind": "Service", "namespace": "demo", "name": "web", "port": 80})
    );
    let conditions = ours["conditions"].as_array().unwrap();
    assert_eq!((&conditions[0]["type"], &conditions[0]["status"]), (&json!("Accepted"), &json!("True")));
    assert_eq!((&conditions[1]["reason"], &conditions[1]["status"]), (&json!("BackendNotFound"), &json!("False")));
    assert_eq!(conditions[1]["observedGeneration"], 3);
    assert!(conditions[1]["lastTransitionTime"].is_string());
}

/// A BackendTrafficPolicy's status: one ancestor per target Service with its Accepted
/// condition, by server-side apply with the operator's field manager.
#[tokio::test]
async fn policy_status_is_applied_per_target_service() {
    use mesh_operator::{
        cluster::PolicyAncestor,
        gateway_status::{CONTROLLER_NAME, PolicyStatusUpdate, write_policy},
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut handle = Box::pin(handle);
    let client = kube::Client::new(service, "default");
    let update = PolicyStatusUpdate {
        namespace: "demo".into(),
        name: "younger".into(),
        ancestors: vec![
            PolicyAncestor {
                service: "web".into(),
                accepted: false,
                reason: "Conflicted",
                message: "older applies".into(),
            },
            PolicyAncestor { service: "api".into(), accepted: true, reason: "Accepted", message: String::new() },
        ],
    };
    let policy = json!({
        "apiVersion": "mesh.dev/v1alpha1", "kind": "BackendTrafficPolicy",
        "metadata": {"name": "younger", "namespace": "demo", "generation": 2},
        "spec": {"targetRefs": [{"kind": "Service", "name": "web"}, {"kind": "Service", "name": "api"}]}
    });
    let path = "/apis/mesh.dev/v1alpha1/namespaces/demo/backendtrafficpolicies/younger";
    let server = async {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!((request.method(), request.uri().path()), (&http::Method::GET, path));
        send.send_response(Response::new(Body::from(serde_json::to_vec(&policy).unwrap())));
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!((request.method(), request.uri().path()), (&http::Method::PATCH, &*format!("{path}/status")));
        let query = request.uri().query().unwrap_or_default().to_owned();
        let body: Value = serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        send.send_response(Response::new(Body::from(serde_json::to_vec(&policy).unwrap())));
        (query, body)
    };
    let (written, (query, body)) = tokio::join!(write_policy(&client, &update), server);
    written.unwrap();
    assert!(query.contains("fieldManager=mesh-operator") && query.contains("force=true"), "{query}");
    let ancestors = body["status"]["ancestors"].as_array().unwrap();
    assert_eq!(ancestors.len(), 2);
    assert_eq!(
        ancestors[0]["ancestorRef"],
        json!({"group": "", "kind": "Service", "namespace": "demo", "name": "web"})
    );
    assert_eq!(ancestors[0]["controllerName"], CONTROLLER_NAME);
    let condition = &ancestors[0]["conditions"][0];
    assert_eq!(
        (&condition["type"], &condition["status"], &condition["reason"]),
        (&json!("Accepted"), &json!("False"), &json!("Conflicted"))
    );
    assert_eq!(condition["observedGeneration"], 2);
    assert_eq!(ancestors[1]["conditions"][0]["status"], "True");
}
