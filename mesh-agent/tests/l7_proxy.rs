//! The L7 proxy with real sockets on loopback: echo servers of our own as backends (they
//! answer what they received, as the Gateway API conformance echo server does), routes
//! translated by the operator from HTTPRoute manifests, requests from a real HTTP/1.1 client
//! over keep-alive connections; every assertion is on what the client saw or what a backend
//! received. Each test names the upstream mesh conformance test (kubernetes-sigs/gateway-api
//! `conformance/tests/mesh/`) whose cases it reproduces at the proxy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use mesh_agent::{
    flows::{directory::Directory, filter::Filters, store::FlowStore, view::FlowView},
    l7::{
        proxy::{self, Destination, Endpoints, Proxy, Upstream},
        routes::{RouteTable, ServiceRef},
    },
};
use mesh_common::api;

/// One echo backend: its name, and what it received.
struct Echo {
    name: String,
    addr: SocketAddr,
    requests: AtomicUsize,
    connections: AtomicUsize,
}

/// Answers with JSON of what it received: its name, method, path, headers (lowercase names).
/// `/status/N` answers N; `/slow` answers after 1 s; `/flaky` answers 503 to its first request.
/// An echo named `bad…` answers 500 to everything (a failing instance).
async fn echo(name: &str) -> Arc<Echo> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = Arc::new(Echo {
        name: name.to_owned(),
        addr: listener.local_addr().unwrap(),
        requests: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
    });
    let served = echo.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let echo = served.clone();
            echo.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let echo = echo.clone();
                    async move {
                        let count = echo.requests.fetch_add(1, Ordering::SeqCst);
                        let path = request.uri().path().to_owned();
                        // Repeated headers as one, their values joined by ',' in order.
                        let mut headers: HashMap<String, String> = HashMap::new();
                        for (name, value) in request.headers() {
                            let value = value.to_str().unwrap_or_default();
                            headers
                                .entry(name.as_str().to_owned())
                                .and_modify(|v| *v = format!("{v},{value}"))
                                .or_insert_with(|| value.to_owned());
                        }
                        let method = request.method().to_string();
                        let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let status = match path.strip_prefix("/status/") {
                            _ if echo.name.starts_with("bad") => StatusCode::INTERNAL_SERVER_ERROR,
                            Some(code) => StatusCode::from_u16(code.parse().unwrap()).unwrap(),
                            None if path == "/flaky" && count == 0 => StatusCode::SERVICE_UNAVAILABLE,
                            None => StatusCode::OK,
                        };
                        if path == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let json = serde_json::json!({
                            "backend": echo.name, "method": method, "path": path, "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        });
                        let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
                        *response.status_mut() = status;
                        response.headers_mut().insert("x-backend", echo.name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    echo
}

/// Services → their echo servers (port 80 of each); `grpc` speaks HTTP/2 only.
struct Backends(HashMap<String, Vec<SocketAddr>>);

impl Endpoints for Backends {
    fn upstream(&self, service: &ServiceRef, port: u16) -> Option<Upstream> {
        let endpoints = self.0.get(&service.name).filter(|_| service.namespace == "demo" && port == 80)?;
        Some(Upstream { endpoints: endpoints.as_slice().into(), http2: service.name == "grpc" })
    }
}

/// A gRPC server (the standard health service, SERVING) on loopback.
async fn grpc_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
    });
    address
}

/// The address the proxy's clients asked for (the Service `demo/echo`, port 80).
const SERVICE_ADDRESS: std::net::SocketAddrV4 = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 96, 0, 30), 80);

/// A backend that closes its first connection as soon as the request's head arrives, without
/// answering (a pooled connection closing as a request goes, a restarting server), then
/// answers `200 second` on every later one.
async fn drops_first_connection() -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut stream, _)) = listener.accept().await {
            let drop_it = std::mem::take(&mut first);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer).await {
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buffer[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if drop_it {
                            return; // closed unanswered
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    address
}

/// A backend that switches any request to protocol `echo` (101), then echoes bytes: what a
/// WebSocket server does, without the framing.
async fn upgrade_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: echo") || !head.contains("connection: upgrade") {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .await;
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    address
}

struct Lab {
    proxy: SocketAddr,
    /// Tells the proxy's connections to drain.
    drain: tokio::sync::watch::Sender<bool>,
    metrics: mesh_agent::l7::metrics::L7Metrics,
    /// The proxy's L7 flows.
    flows: FlowStore,
    client: Client<HttpConnector, Full<Bytes>>,
    echoes: HashMap<String, Arc<Echo>>,
    proxy_handle: Arc<Proxy<HttpConnector>>,
}

/// The services `echo` (v1 and v2), `echo-v1`, `echo-v2`, `mirror` and `empty` (no endpoint),
/// the routes of `routes` (HTTPRoute YAML documents), and a proxy for clients in namespace
/// `demo` connecting to `demo/echo:80`.
async fn start(routes: &str) -> Lab {
    let mut echoes = HashMap::new();
    for name in ["v1", "v2", "mirror", "bad1", "bad2"] {
        echoes.insert(name.to_owned(), echo(name).await);
    }
    let addr = |n: &str| vec![echoes[n].addr];
    let grpc = grpc_backend().await;
    let upgrade = upgrade_backend().await;
    let backends = Backends(HashMap::from([
        ("grpc".to_owned(), vec![grpc]),
        ("upgrade".to_owned(), vec![upgrade]),
        ("echo".to_owned(), vec![echoes["v1"].addr, echoes["v2"].addr]),
        ("echo-v1".to_owned(), addr("v1")),
        ("echo-v2".to_owned(), addr("v2")),
        ("mirror".to_owned(), addr("mirror")),
        ("empty".to_owned(), vec![]),
        // One healthy and one failing instance; two failing ones beside a healthy one.
        ("half-bad".to_owned(), vec![echoes["v1"].addr, echoes["bad1"].addr]),
        ("mostly-bad".to_owned(), vec![echoes["v1"].addr, echoes["bad1"].addr, echoes["bad2"].addr]),
        ("dropper".to_owned(), vec![drops_first_connection().await]),
    ]));
    let (resources, errors) = mesh_operator::local_dir::model_of_text(routes);
    assert!(errors.is_empty(), "{errors:?}");
    let policies: HashMap<ServiceRef, Arc<api::BackendTrafficPolicy>> = resources
        .iter()
        .filter_map(|r| match &r.kind {
            Some(api::resource::Kind::BackendTrafficPolicy(p)) => Some(p),
            _ => None,
        })
        .flat_map(|p| {
            let shared = Arc::new(p.clone());
            p.services
                .iter()
                .map(move |name| (ServiceRef { namespace: p.namespace.clone(), name: name.clone() }, shared.clone()))
        })
        .collect();
    let routes: Vec<api::HttpRoute> = resources
        .into_iter()
        .filter_map(|r| match r.kind {
            Some(api::resource::Kind::HttpRoute(route) | api::resource::Kind::GrpcRoute(route)) => Some(*route),
            _ => None,
        })
        .collect();
    let (table, errors) = RouteTable::build(&routes);
    assert!(errors.is_empty(), "{errors:?}");
    let flows = FlowStore::new(1024);
    let proxy = Arc::new(Proxy::new(|_| HttpConnector::new(), Arc::new(backends)).with_flows(flows.clone()));
    proxy.set_routes(table);
    proxy.set_backend_policies(policies);
    let metrics = proxy.metrics().clone();
    let proxy_handle = proxy.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (drain, draining) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((stream, client)) = listener.accept().await else { return };
            let SocketAddr::V4(client) = client else { return };
            let destination = Destination {
                service: ServiceRef { namespace: "demo".into(), name: "echo".into() },
                port: 80,
                client_namespace: "demo".into(),
                client,
                asked: SERVICE_ADDRESS,
            };
            tokio::spawn(proxy.clone().serve(stream, destination, draining.clone()));
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Lab { proxy: address, drain, metrics, flows, client, echoes, proxy_handle }
}

/// What the client saw.
struct Seen {
    status: StatusCode,
    headers: http::HeaderMap,
    json: serde_json::Value,
}

impl Seen {
    fn backend(&self) -> &str {
        self.json["backend"].as_str().unwrap_or_default()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.json["headers"][name].as_str()
    }
}

impl Lab {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut request =
            Request::builder().method(method).uri(format!("http://{}{path}", self.proxy)).header("host", "echo");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.client.request(request.body(Full::default()).unwrap()).await.expect("the proxy answers");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Seen { status, headers, json }
    }

    async fn get(&self, path: &str) -> Seen {
        self.send("GET", path, &[]).await
    }
}

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: echo, port: 80}}]\n{spec}\n---\n"
    )
}

/// MeshHTTPRouteMatching and MeshHTTPRouteQueryParamMatching, MeshHTTPRouteMethodMatching.
#[tokio::test]
async fn matches_choose_rules_and_unmatched_requests_get_404() {
    let lab = start(&route(
        "matching",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /q}, queryParams: [{name: animal, value: whale}]}, {path: {type: Exact, value: /m}, method: POST}]
    backendRefs: [{name: echo-v2, port: 80}]",
    ))
    .await;
    assert_eq!(lab.get("/").await.backend(), "v1");
    assert_eq!(lab.get("/example").await.backend(), "v1");
    assert_eq!(lab.get("/v2").await.backend(), "v2");
    assert_eq!(lab.get("/v2/example").await.backend(), "v2");
    assert_eq!(lab.get("/v2example").await.backend(), "v1", "a prefix takes whole path elements");
    assert_eq!(lab.send("GET", "/", &[("version", "two")]).await.backend(), "v2");
    assert_eq!(lab.get("/q?animal=whale").await.backend(), "v2");
    assert_eq!(lab.send("POST", "/m", &[]).await.backend(), "v2");

    let exact = lab_exact().await;
    let miss = exact.get("/nothing").await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND, "a route is attached and no rule matches");
    assert_eq!(exact.get("/only").await.backend(), "v2");
}

async fn lab_exact() -> Lab {
    start(&route(
        "exact",
        "  rules:\n  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: echo-v2, port: 80}]",
    ))
    .await
}

/// MeshHTTPRouteWeight: 70/30 within 5 points over 2,000 requests (4.9 standard deviations);
/// weight 0 never.
#[tokio::test]
async fn weights_split_requests_and_weight_zero_gets_none() {
    let lab = start(&route(
        "weights",
        "  rules:\n  - backendRefs: [{name: echo-v1, port: 80, weight: 70}, {name: echo-v2, port: 80, weight: 30}, {name: mirror, port: 80, weight: 0}]",
    ))
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..2000 {
        *counts.entry(lab.get("/").await.backend().to_owned()).or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or_default() as f64 / 2000.0;
    assert!((v1 - 0.7).abs() < 0.05, "{counts:?}");
    // Every request counted, by backend, under Istio's metric names.
    let mut registry = prometheus_client::registry::Registry::default();
    lab.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let count = |backend: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("destination_backend=\"demo/{backend}:80\""))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("echo-v1") + count("echo-v2"), 2000.0, "{text}");
    assert_eq!(count("echo-v1"), counts["v1"] as f64, "{text}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
    assert_eq!(counts.get("mirror"), None, "weight 0: {counts:?}");
    assert_eq!(lab.echoes["mirror"].requests.load(Ordering::SeqCst), 0);

    let zero = start(&route("zero", "  rules:\n  - backendRefs: [{name: echo-v1, port: 80, weight: 0}]")).await;
    assert_eq!(zero.get("/").await.status, StatusCode::INTERNAL_SERVER_ERROR, "every weight 0: 500");
    let missing = start(&route("missing", "  rules:\n  - backendRefs: [{name: echo-v3, port: 80}]")).await;
    assert_eq!(
        missing.get("/").await.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a backend Service that does not exist: 500"
    );
    let empty = start(&route("empty", "  rules:\n  - backendRefs: [{name: empty, port: 80}]")).await;
    assert_eq!(empty.get("/").await.status, StatusCode::SERVICE_UNAVAILABLE, "a Service without endpoints: 503");
}

/// MeshHTTPRouteRequestHeaderModifier, MeshHTTPRouteResponseHeaderModifier and
/// MeshHTTPRouteBackendRequestHeaderModifier.
#[tokio::test]
async fn header_modifiers_change_what_backends_and_clients_see() {
    let lab = start(&route(
        "headers",
        "  rules:
  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}], add: [{name: X-Header-Add, value: add-appends-values}], remove: [X-Header-Remove]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Response-Set, value: set}], remove: [x-backend]}}
    backendRefs:
    - name: echo-v1
      port: 80
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Backend-Header, value: v1}]}}]",
    ))
    .await;
    let seen = lab
        .send(
            "GET",
            "/",
            &[("X-Header-Set", "some-other-value"), ("X-Header-Add", "original"), ("X-Header-Remove", "gone")],
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.header("x-header-set"), Some("set-overwrites-values"));
    assert_eq!(seen.header("x-header-add"), Some("original,add-appends-values"));
    assert_eq!(seen.header("x-header-remove"), None);
    assert_eq!(seen.header("x-backend-header"), Some("v1"));
    assert_eq!(seen.headers.get("x-response-set").map(|v| v.to_str().unwrap()), Some("set"));
    assert!(!seen.headers.contains_key("x-backend"), "a response header removed");
}

/// MeshHTTPRouteRedirectHostAndStatus, MeshHTTPRouteRedirectPort, MeshHTTPRouteSchemeRedirect,
/// MeshHTTPRouteRedirectPath, MeshHTTPRoute301/302/303/307/308Redirect.
#[tokio::test]
async fn redirects_answer_with_the_location_and_status() {
    let lab = start(&route(
        "redirect",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 308}}]
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement}, statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /one}, statusCode: 303}}]",
    ))
    .await;
    let cases = [
        ("/hostname-redirect", 302, "http://example.org/hostname-redirect"),
        ("/host-and-status", 301, "http://example.org/host-and-status"),
        ("/scheme", 302, "https://echo/scheme"),
        ("/port", 308, "http://echo:8083/port"),
        ("/prefix/page?x=1", 307, "http://echo/replacement/page?x=1"),
        ("/full/anything", 303, "http://echo/one"),
    ];
    for (path, status, location) in cases {
        let seen = lab.get(path).await;
        assert_eq!(seen.status.as_u16(), status, "{path}");
        assert_eq!(seen.headers.get("location").map(|v| v.to_str().unwrap()), Some(location), "{path}");
    }
    assert_eq!(lab.echoes["v1"].requests.load(Ordering::SeqCst) + lab.echoes["v2"].requests.load(Ordering::SeqCst), 0);
}

/// MeshHTTPRouteRewritePath (and the hostname rewrite of HTTPRouteRewriteHost).
#[tokio::test]
async fn rewrites_change_the_path_and_host_backends_see() {
    let lab = start(&route(
        "rewrite",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/path}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]",
    ))
    .await;
    assert_eq!(lab.get("/prefix/one/two").await.json["path"], "/one/two");
    assert_eq!(lab.get("/strip-prefix/three").await.json["path"], "/three");
    assert_eq!(lab.get("/strip-prefix").await.json["path"], "/");
    let full = lab.get("/full/path/original").await;
    assert_eq!(full.json["path"], "/one");
    assert_eq!(full.header("host"), Some("rewritten.example"));
}

/// HTTPRouteTimeoutRequest / HTTPRouteTimeoutBackendRequest at the proxy, and HTTPRouteRetry's
/// codes and attempts.
#[tokio::test]
async fn timeouts_answer_504_and_retries_try_again() {
    let lab = start(&route(
        "resilience",
        "  rules:
  - matches: [{path: {type: Exact, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /status}}, {path: {type: Exact, value: /flaky}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: echo-v2, port: 80}]",
    ))
    .await;
    let started = std::time::Instant::now();
    assert_eq!(lab.get("/slow").await.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_millis(900), "answered at the timeout, not the backend's 1 s");

    let v2 = &lab.echoes["v2"].requests;
    assert_eq!(lab.get("/flaky").await.status, StatusCode::OK, "a 503 retried once then answered");
    assert_eq!(v2.load(Ordering::SeqCst), 2);
    assert_eq!(lab.get("/status/503").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v2.load(Ordering::SeqCst), 5, "one try and two retries");
    assert_eq!(lab.get("/status/500").await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v2.load(Ordering::SeqCst), 6, "500 is not among the codes: no retry");
}

/// HTTPRouteRequestMirror at the proxy: the mirror gets a copy, the client the backend's answer.
#[tokio::test]
async fn mirrors_get_a_copy_and_the_client_the_backend_answer() {
    let lab = start(&route(
        "mirror",
        "  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 80}]",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(lab.get("/").await.backend(), "v1");
    }
    let mirrored = &lab.echoes["mirror"].requests;
    for _ in 0..50 {
        if mirrored.load(Ordering::SeqCst) == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mirrored.load(Ordering::SeqCst), 5);
}

/// Keep-alive on both sides: many requests over few connections.
#[tokio::test]
async fn connections_are_kept_alive_and_pooled() {
    let lab = start(&route("pool", "  rules:\n  - backendRefs: [{name: echo-v1, port: 80}]")).await;
    for _ in 0..200 {
        assert_eq!(lab.get("/").await.status, StatusCode::OK);
    }
    let v1 = &lab.echoes["v1"];
    assert_eq!(v1.requests.load(Ordering::SeqCst), 200);
    // Requests in turn reuse the pooled connection; one may open beside it when a request
    // comes before the last answer's connection is back in the pool.
    let connections = v1.connections.load(Ordering::SeqCst);
    assert!(connections <= 10, "{connections} connections to the backend for 200 requests in turn");
}

/// gRPC through the proxy: a real gRPC client (HTTP/2 with prior knowledge, `te: trailers`) to
/// the standard health service, routed by its method path; the answer's status travels in the
/// HTTP/2 trailers.
#[tokio::test]
async fn grpc_requests_are_routed_over_http2() {
    let lab = start(&route(
        "grpc",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /grpc.health.v1.Health}}]
    backendRefs: [{name: grpc, port: 80}]
  - backendRefs: [{name: echo-v1, port: 80}]",
    ))
    .await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", lab.proxy)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..20 {
        let answer =
            health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("served");
        assert_eq!(answer.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
    // An unknown service: the server's NOT_FOUND status, carried in the trailers.
    let unknown = health.check(tonic_health::pb::HealthCheckRequest { service: "nope".into() }).await;
    assert_eq!(unknown.expect_err("not found").code(), tonic::Code::NotFound);
    // HTTP/1.1 clients still reach the other rule on the same connection-level listener.
    assert_eq!(lab.get("/").await.backend(), "v1");
}

/// GRPCRoute (MeshGRPCRoute... the upstream suite has no mesh GRPCRoute test; its gateway
/// GRPCRouteExactMethodMatching and GRPCRouteHeaderMatching cases, at the proxy): the exact
/// method goes to the gRPC backend, a header match sends the same method elsewhere, another
/// method of the service matches no rule (404 from the proxy, which gRPC reports as
/// UNIMPLEMENTED).
#[tokio::test]
async fn grpc_routes_match_methods_and_headers() {
    let lab = start(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: health, namespace: demo}
spec:
  parentRefs: [{group: '', kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}, headers: [{name: version, value: two}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
    backendRefs: [{name: grpc, port: 80}]
---
",
    )
    .await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", lab.proxy)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = || tonic_health::pb::HealthCheckRequest { service: String::new() };
    let answer = health.check(request()).await.expect("served by the gRPC backend");
    assert_eq!(answer.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    // The header match: to echo-v2, which is no gRPC server.
    let mut with_header = tonic::Request::new(request());
    with_header.metadata_mut().insert("version", "two".parse().unwrap());
    assert!(health.check(with_header).await.is_err(), "the echo server answered as a gRPC server");
    // Watch is another method of the service: no rule matches it.
    let watched = match health.watch(request()).await {
        Err(status) => Err(status),
        Ok(stream) => stream.into_inner().message().await,
    };
    assert!(watched.is_err(), "{watched:?}");
    // Which rule and backend answered each call, from the proxy's flows.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while lab.flows.snapshot().0.len() < 6 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(mesh_agent::l7::access_log::GATHER).await;
    }
    let answered: Vec<(String, String, String)> = lab
        .flows
        .snapshot()
        .0
        .iter()
        .filter(|r| r.event.kind == mesh_common::flows::L7_RESPONSE)
        .filter_map(|r| r.http.as_deref())
        .map(|h| (format!("{}#{}", h.route, h.rule), h.backend.clone(), format!("{} {}", h.code, h.url)))
        .collect();
    let url = |method: &str| format!("http://{}/grpc.health.v1.Health/{method}", lab.proxy);
    let expected = [
        ("demo/health#1", "demo/grpc:80", format!("200 {}", url("Check"))),
        // echo-v2 speaks HTTP/1.1 only: the HTTP/2 call cannot be sent there (503).
        ("demo/health#0", "demo/echo-v2:80", format!("503 {}", url("Check"))),
        ("#", "", format!("404 {}", url("Watch"))),
    ]
    .map(|(rule, backend, answer)| (rule.to_owned(), backend.to_owned(), answer));
    assert_eq!(answered, expected);
}

/// A draining proxy (its agent SIGTERMed) answers the request in flight, then closes the
/// kept-alive connection instead of waiting for the next request.
#[tokio::test]
async fn draining_answers_requests_in_flight_then_closes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let lab = start(&route("drain", "  rules:\n  - backendRefs: [{name: echo-v1, port: 80}]")).await;
    let mut stream = tokio::net::TcpStream::connect(lab.proxy).await.unwrap();
    stream.write_all(b"GET /slow HTTP/1.1\r\nhost: echo\r\n\r\n").await.unwrap();
    // In flight: the backend answers after 1 s.
    tokio::time::sleep(Duration::from_millis(200)).await;
    lab.drain.send(true).unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open after its answer: {:?}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"backend\":\"v1\""), "{text}");
}

/// Each request and its answer are two L7 flows in Hubble's shape, found by Hubble's HTTP
/// filters; a request's W3C `traceparent` reaches the backend with the proxy's span as its
/// parent, and its trace id is in both flows.
#[tokio::test]
async fn requests_become_l7_flows_and_carry_their_trace() {
    use mesh_common::{
        flows::{L7_REQUEST, L7_RESPONSE},
        hubble::flow::FlowFilter,
    };
    let lab = lab_exact().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let seen = lab.send("GET", "/only?x=1", &[("traceparent", &traceparent)]).await;
    assert_eq!(seen.status, StatusCode::OK);
    let forwarded = seen.header("traceparent").expect("the backend got a traceparent");
    assert!(forwarded.starts_with(&format!("00-{trace}-")) && forwarded.ends_with("-01"), "{forwarded}");
    assert_ne!(forwarded, traceparent, "the proxy's own span is the parent");
    assert_eq!(lab.get("/nothing").await.status, StatusCode::NOT_FOUND);

    // Handed to the store in batches (within access_log::GATHER).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while lab.flows.snapshot().0.len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(mesh_agent::l7::access_log::GATHER).await;
    }
    let (records, _) = lab.flows.snapshot();
    let kinds: Vec<u8> = records.iter().map(|r| r.event.kind).collect();
    assert_eq!(kinds, [L7_REQUEST, L7_RESPONSE, L7_REQUEST, L7_RESPONSE]);
    let routed = records[1].http.as_deref().unwrap();
    assert_eq!(
        (routed.method.as_str(), routed.url.as_str(), routed.protocol),
        ("GET", "http://echo/only?x=1", "HTTP/1.1")
    );
    assert_eq!((routed.code, routed.route.as_str(), routed.rule.as_str()), (200, "demo/exact", "0"));
    assert_eq!(routed.backend, "demo/echo-v2:80");
    assert_eq!(routed.trace_id, trace);
    assert!(routed.latency_ns > 0);
    // The request goes from the client to the endpoint that answered, the response back.
    let v2 = lab.echoes["v2"].addr;
    assert_eq!(records[0].event.dport, v2.port().to_be());
    assert_eq!(records[1].event.sport, v2.port().to_be());
    assert_eq!(records[0].event.svc_port, 80u16.to_be(), "the request names the Service it asked for");
    let unmatched = records[3].http.as_deref().unwrap();
    assert_eq!((unmatched.code, unmatched.route.as_str(), unmatched.backend.as_str()), (404, "", ""));

    // Hubble's filters, as `meshctl observe --http-status/--http-method/--http-path/--trace-id`
    // send them.
    let directory = Directory::empty("node-0");
    let matching = |filter: FlowFilter| -> Vec<(u8, u16)> {
        let filters = Filters::compile(&[filter], &[]).unwrap();
        records
            .iter()
            .filter(|r| filters.matches(&FlowView::new(r, &directory)))
            .map(|r| (r.event.kind, r.http.as_ref().unwrap().code))
            .collect()
    };
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(matching(FlowFilter { http_status_code: strings(&["4+"]), ..Default::default() }), [(L7_RESPONSE, 404)]);
    assert_eq!(
        matching(FlowFilter { http_status_code: strings(&["200"]), ..Default::default() }),
        [(L7_RESPONSE, 200)]
    );
    assert_eq!(matching(FlowFilter { http_path: strings(&["^/only$"]), ..Default::default() }).len(), 2);
    assert_eq!(matching(FlowFilter { http_url: strings(&["x=1"]), ..Default::default() }).len(), 2);
    assert_eq!(matching(FlowFilter { http_method: strings(&["post"]), ..Default::default() }), []);
    assert_eq!(matching(FlowFilter { trace_id: strings(&[trace]), ..Default::default() }).len(), 2);

    // Encoded as Hubble clients decode them: Type L7, l7.http, the trace context, the summary.
    let mut buf = Vec::new();
    mesh_agent::flows::encode::response(&mut buf, &FlowView::new(&records[1], &directory), true);
    let decoded = <mesh_common::hubble::observer::GetFlowsResponse as prost::Message>::decode(&buf[..]).unwrap();
    let Some(mesh_common::hubble::observer::get_flows_response::ResponseTypes::Flow(flow)) = decoded.response_types
    else {
        panic!("not a flow")
    };
    assert_eq!(flow.r#type, mesh_common::hubble::flow::FlowType::L7 as i32);
    assert_eq!(flow.event_type.unwrap().r#type, 129);
    assert_eq!(flow.is_reply, Some(true));
    let l7 = flow.l7.unwrap();
    assert_eq!(l7.r#type, mesh_common::hubble::flow::L7FlowType::Response as i32);
    let Some(mesh_common::hubble::flow::layer7::Record::Http(http)) = l7.record else { panic!("no http record") };
    assert_eq!((http.code, http.method.as_str(), http.url.as_str()), (200, "GET", "http://echo/only?x=1"));
    assert_eq!(flow.trace_context.unwrap().parent.unwrap().trace_id, trace);
    #[allow(deprecated)]
    let summary = flow.summary;
    assert!(summary.starts_with("HTTP/1.1 200 ") && summary.ends_with("ms (GET http://echo/only?x=1)"), "{summary}");
}

/// HTTP/1.1 upgrades (what WebSocket does) are passed through: the backend's 101 reaches the
/// client with its Upgrade header, and then bytes flow both ways on the same connection.
#[tokio::test]
async fn upgrades_are_passed_through() {
    let lab = start(&route(
        "upgrade",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /chat}}]\n    backendRefs: [{name: upgrade, port: 80}]",
    ))
    .await;
    upgrade_and_echo(tokio::net::TcpStream::connect(lab.proxy).await.unwrap()).await;
    // Without the upgrade asked for, the same backend is an ordinary request (it answers 400).
    assert_eq!(lab.get("/chat").await.status, StatusCode::BAD_REQUEST);
}

/// Asks for protocol `echo` on `stream` (to `upgrade_backend` through a proxy): the 101 comes
/// back with its Upgrade header, then two messages are echoed on the same connection.
async fn upgrade_and_echo(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nhost: echo\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the proxy closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo") && head.contains("connection: upgrade"), "{head}");
    for message in [&b"ping"[..], b"a second message"] {
        stream.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
}

/// At a port with HTTP rules (the destination's side), an allowed upgrade goes on to the pod
/// over the connection already made to it, and the two connections are joined once the pod
/// switches protocols (such ports answered 501 before). The allowed request is logged as
/// forwarded ingress L7 flows with the pod's answer.
#[tokio::test]
async fn judged_connections_pass_upgrades_on() {
    use mesh_agent::{
        l7::{access_log::AccessLog, judged, metrics::L7Metrics, request_policy},
        policy::EndpointPolicy,
    };
    let pod = upgrade_backend().await;
    let store = FlowStore::new(64);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (downstream, SocketAddr::V4(client_address)) = listener.accept().await.unwrap() else { unreachable!() };
    let SocketAddr::V4(pod_v4) = pod else { unreachable!("bound on 127.0.0.1") };
    let policy = EndpointPolicy {
        pod: "demo/chat".into(),
        identity: 0,
        named_ports: Vec::new(),
        ingress: Default::default(),
        egress: Default::default(),
    };
    let judged = judged::Judged {
        pod: pod_v4,
        requests: Arc::new(request_policy::PodRequestPolicy { ports: [pod.port()].into(), policy: Arc::new(policy) }),
        client: request_policy::Client { ip: *client_address.ip(), identity: None, principal: None },
        client_address,
        flows: AccessLog::new(store.clone()),
        metrics: L7Metrics::new(Arc::default(), Arc::default()),
    };
    let upstream = tokio::net::TcpStream::connect(pod).await.unwrap();
    let (_drain, draining) = tokio::sync::watch::channel(false);
    tokio::spawn(judged::serve(downstream, upstream, judged, draining));
    upgrade_and_echo(client).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while store.snapshot().0.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(mesh_agent::l7::access_log::GATHER).await;
    }
    let (records, _) = store.snapshot();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.event.kind, r.event.action, r.event.direction, r.http.as_ref().map(|h| (h.code, h.url.clone()))))
        .collect();
    let exchange = Some((101, "http://echo/chat".to_owned()));
    use mesh_common::{flows, policy};
    let (allow, ingress) = (policy::ALLOW, policy::INGRESS);
    assert_eq!(
        seen,
        [(flows::L7_REQUEST, allow, ingress, exchange.clone()), (flows::L7_RESPONSE, allow, ingress, exchange)],
        "{records:?}"
    );
    assert_eq!(records[0].event.dport, pod.port().to_be(), "the request goes to the pod");
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mesh.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n{spec}\n---\n"
    )
}

/// Istio's default retry, kept without a retry rule: a request without a body whose try got no
/// answer at all (its connection closed before the response) is tried once more; one with a
/// body is not (it may have been acted on).
#[tokio::test]
async fn a_bodiless_request_that_got_no_answer_is_tried_once_more() {
    let lab = start(&route("dropper", "  rules:\n  - backendRefs: [{name: dropper, port: 80}]")).await;
    let started = std::time::Instant::now();
    let response = lab
        .client
        .request(Request::get(format!("http://{}/", lab.proxy)).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the second try answered");
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "second");
    assert!(started.elapsed() >= proxy::DEFAULT_RETRY_BACKOFF, "after the default backoff");

    let lab = start(&route("dropper", "  rules:\n  - backendRefs: [{name: dropper, port: 80}]")).await;
    let post = Request::post(format!("http://{}/", lab.proxy)).body(Full::new(Bytes::from_static(b"x"))).unwrap();
    let response = lab.client.request(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "a request with a body is sent once");
}

/// Outlier detection (BackendTrafficPolicy, Istio's DestinationRule semantics): the failing
/// instance of `half-bad` gets three requests (three consecutive 5xx), then none while ejected;
/// the ejection is in the metrics and the proxy's list; back in after its time, it is ejected
/// again on three more failures, for twice as long. With two failing instances of three and
/// at most 50% out, one of them stays in.
#[tokio::test]
async fn failing_endpoints_are_ejected_within_the_allowed_share() {
    let routes = route(
        "pool",
        "  rules:
  - matches: [{path: {type: PathPrefix, value: /half}}]
    backendRefs: [{name: half-bad, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mostly}}]
    backendRefs: [{name: mostly-bad, port: 80}]",
    ) + &policy(
        "eject",
        "  targetRefs: [{group: '', kind: Service, name: half-bad}, {kind: Service, name: mostly-bad}]
  outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 1s, maxEjectionPercent: 50}",
    );
    let lab = start(&routes).await;
    let bad = &lab.echoes["bad1"].requests;
    let mut statuses = HashMap::<u16, usize>::new();
    for _ in 0..40 {
        *statuses.entry(lab.get("/half").await.status.as_u16()).or_default() += 1;
    }
    assert_eq!(bad.load(Ordering::SeqCst), 3, "ejected after three 5xx in a row: {statuses:?}");
    assert_eq!(statuses.get(&500), Some(&3));
    let ejected = lab.proxy_handle.ejected();
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    assert_eq!((ejected[0].endpoint, ejected[0].ejections), (lab.echoes["bad1"].addr, 1));
    let mut registry = prometheus_client::registry::Registry::default();
    lab.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let endpoint = lab.echoes["bad1"].addr;
    assert!(
        text.contains(&format!(
            "mesh_l7_outlier_ejected{{destination_service=\"demo/half-bad\",endpoint=\"{endpoint}\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "mesh_l7_outlier_ejections_total{{destination_service=\"demo/half-bad\",endpoint=\"{endpoint}\"}} 1"
    )));

    // Back in after 1 s; three more failures eject it for 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    while bad.load(Ordering::SeqCst) < 6 {
        lab.get("/half").await;
    }
    let again = lab.proxy_handle.ejected();
    assert_eq!(again.len(), 1);
    assert!(again[0].remaining > Duration::from_millis(1500), "the second ejection lasts twice as long: {again:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        lab.get("/half").await;
    }
    assert_eq!(bad.load(Ordering::SeqCst), 6, "still out 1.1 s into a 2 s ejection");

    // Two failing of three, at most 50% (one) out: the other failing one keeps its share.
    let bad2 = &lab.echoes["bad2"].requests;
    for _ in 0..60 {
        lab.get("/mostly").await;
    }
    let (b1, b2) = (bad.load(Ordering::SeqCst) - 6, bad2.load(Ordering::SeqCst));
    assert!(b1.min(b2) <= 3 && b1.max(b2) >= 6, "one failing instance ejected, the other still in: {b1} and {b2}");
    assert_eq!(lab.proxy_handle.ejected().iter().filter(|e| e.service.name == "mostly-bad").count(), 1);
}

/// Circuit breaking (BackendTrafficPolicy connectionPool): with one connection and one pending
/// request allowed, of three slow requests at once one is answered, one waits for its
/// connection and is answered after it, and one is refused at once with 503 and
/// `x-envoy-overloaded`, which the endpoint never sees; the refusal is counted.
#[tokio::test]
async fn requests_over_the_circuit_limits_are_refused_at_once() {
    let routes = route("slow", "  rules:\n  - backendRefs: [{name: echo-v1, port: 80}]")
        + &policy(
            "limits",
            "  targetRefs: [{kind: Service, name: echo-v1}]\n  connectionPool: {maxConnections: 1, maxPendingRequests: 1}",
        );
    let lab = Arc::new(start(&routes).await);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let lab = lab.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered, so the third comes when the first holds the connection and the second waits.
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let seen = lab.get("/slow").await;
            (seen.status, seen.headers.get("x-envoy-overloaded").cloned(), started.elapsed())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let ok: Vec<_> = results.iter().filter(|r| r.0 == StatusCode::OK).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert_eq!((ok.len(), refused.len()), (2, 1), "{results:?}");
    assert_eq!(refused[0].1.as_ref().map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert!(refused[0].2 < Duration::from_millis(900), "refused at once, not after the backend: {results:?}");
    let latest = ok.iter().map(|r| r.2).max().unwrap();
    assert!(latest >= Duration::from_millis(1900), "the pending one waited for the first's connection: {results:?}");
    assert_eq!(lab.echoes["v1"].requests.load(Ordering::SeqCst), 2);
    let mut registry = prometheus_client::registry::Registry::default();
    lab.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            "mesh_l7_overflows_total{destination_backend=\"demo/echo-v1:80\",limit=\"maxPendingRequests\"} 1"
        ),
        "{text}"
    );
}
