//! The L7 proxy for one client connection to a Service with routes: HTTP/1.1 (keep-alive) or
//! HTTP/2 cleartext (prior knowledge, as gRPC clients speak it) from the client, told apart by
//! the HTTP/2 preface; each request routed by the route table, its filters applied, sent to a
//! backend chosen by weight through a pooled client (hyper-util's), with the rule's timeouts
//! and retries.
//!
//! Answers of its own, as Envoy-based meshes give them: 404 when routes are attached and none
//! matches, 500 when the chosen rule has no backend with weight or its backend Service (or
//! port) does not exist, 503 when a backend Service has
//! no endpoint or its connection fails (after retries), 504 when a timeout passes, 413 when a
//! body that must be kept for a retry or a mirror is larger than [`MAX_BUFFERED_BODY`], 502 when
//! a backend switches protocols unasked. HTTP/1.1 upgrades (WebSocket's) are passed through:
//! the backend's 101 goes back, and the two connections are joined byte for byte.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header, request::Parts};
use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::body::{Body as _, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::Connect},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use mesh_common::api;

use super::{
    access_log::{AccessLog, Hop, RequestLine},
    circuit_breaker::{Admission, CircuitBreakers},
    filters,
    metrics::{L7Metrics, RequestLabels, Series},
    outlier::{Ejected, Outliers, TryResult},
    request_policy::RequestJudge,
    routes::{RouteTable, Routing, ServiceRef, pick_backend},
    trace_context,
};
use crate::flows::{http::HttpExchange, store::FlowStore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A request body kept for a retry or a mirror is at most this large.
pub const MAX_BUFFERED_BODY: usize = 4 << 20;
/// The wait before the default second try of a request without a body (Istio's default
/// retry backoff).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// A client has this long to send a request's head (slow-loris bound).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pooled connections to backends idle this long are closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 connections (both sides) are PINGed after this much silence, and dropped when the
/// answer takes twice as long.
pub const H2_KEEPALIVE: Duration = Duration::from_secs(10);

/// A backend Service port as the model has it: its ready endpoints (empty: 503), and whether
/// it speaks HTTP/2 cleartext (`appProtocol` `kubernetes.io/h2c` or `grpc`: requests to it go
/// over HTTP/2 even when the client spoke HTTP/1.1). Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub endpoints: Arc<[SocketAddr]>,
    pub http2: bool,
}

/// The backend Service ports requests may go to.
pub trait Endpoints: Send + Sync + 'static {
    /// `None` when there is no such Service or port (an invalid backend: answered 500, as
    /// Gateway API specifies).
    fn upstream(&self, service: &ServiceRef, port: u16) -> Option<Upstream>;
}

/// Where a client connection was going: the Service and port it connected to, and the
/// namespace of the client's pod (consumer routes are per client namespace).
#[derive(Debug, Clone)]
pub struct Destination {
    pub service: ServiceRef,
    pub port: u16,
    pub client_namespace: String,
    /// The client's address and port, and the Service address it connected to (for flows).
    pub client: SocketAddrV4,
    pub asked: SocketAddrV4,
}

/// What answering a request decided: the series it is counted in, and the endpoint its
/// (last) try went to.
#[derive(Debug, Default)]
struct Outcome {
    labels: RequestLabels,
    endpoint: Option<SocketAddr>,
    /// The rule of a pod of this node that denied the request (HTTP rules), if one did.
    denied_by: String,
}

/// A client pod's pooled clients: HTTP/1.1, and HTTP/2 with prior knowledge (for h2c and gRPC
/// backends and for HTTP/2 clients' requests).
struct Clients<C> {
    http1: Client<C, Body>,
    http2: Client<C, Body>,
}

impl<C> Clients<C> {
    /// The pooled client for requests of `version`.
    fn for_version(&self, version: http::Version) -> &Client<C, Body> {
        if version == http::Version::HTTP_2 { &self.http2 } else { &self.http1 }
    }
}

/// At most this many client pods' pools are kept; past it they are all dropped (their
/// connections close as their requests end) and made again as requests come.
const MAX_CLIENT_POOLS: usize = 4096;

pub struct Proxy<C> {
    routes: RwLock<Arc<RouteTable>>,
    metrics: L7Metrics,
    endpoints: Arc<dyn Endpoints>,
    /// The connector for a client's requests (connections made as that client).
    connectors: Box<dyn Fn(Ipv4Addr) -> C + Send + Sync>,
    /// Each client pod's pools: a connection made as one client never carries another's.
    clients: std::sync::Mutex<std::collections::HashMap<Ipv4Addr, Arc<Clients<C>>>>,
    /// Where each request's flows go (none: not logged).
    flows: Option<AccessLog>,
    /// The BackendTrafficPolicy of each Service one targets.
    policies: RwLock<Arc<HashMap<ServiceRef, Arc<api::BackendTrafficPolicy>>>>,
    outliers: Arc<Outliers>,
    breakers: Arc<CircuitBreakers>,
    /// HTTP rules of this node's pods, for requests delivered to them straight.
    judge: Option<Arc<dyn RequestJudge>>,
}

impl<C: Connect + Clone + Send + Sync + 'static> Proxy<C> {
    /// A proxy reaching backends with `connectors(client)` for each client's requests.
    pub fn new(connectors: impl Fn(Ipv4Addr) -> C + Send + Sync + 'static, endpoints: Arc<dyn Endpoints>) -> Self {
        let (outliers, breakers) = (Arc::new(Outliers::default()), Arc::new(CircuitBreakers::default()));
        Self {
            routes: RwLock::new(Arc::default()),
            metrics: L7Metrics::new(outliers.clone(), breakers.clone()),
            endpoints,
            connectors: Box::new(connectors),
            clients: std::sync::Mutex::default(),
            flows: None,
            policies: RwLock::default(),
            outliers,
            breakers,
            judge: None,
        }
    }

    /// The pools of client `client`.
    fn clients(&self, client: Ipv4Addr) -> Arc<Clients<C>> {
        let mut all = self.clients.lock().expect("never poisoned: no panics under the lock");
        if let Some(clients) = all.get(&client) {
            return clients.clone();
        }
        if all.len() >= MAX_CLIENT_POOLS {
            all.clear();
        }
        let connector = (self.connectors)(client);
        let builder = || {
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).timer(TokioTimer::new());
            builder
        };
        let clients = Arc::new(Clients {
            http1: builder().build(connector.clone()),
            http2: builder()
                .http2_only(true)
                .http2_keep_alive_interval(H2_KEEPALIVE)
                .http2_keep_alive_timeout(H2_KEEPALIVE * 2)
                .build(connector),
        });
        all.insert(client, clients.clone());
        clients
    }

    /// Applies the HTTP rules of this node's pods (`judge`) to requests sent to them.
    pub fn with_judge(mut self, judge: Arc<dyn RequestJudge>) -> Self {
        self.judge = Some(judge);
        self
    }

    /// Logs each request and its answer as L7 flows in `store`.
    pub fn with_flows(mut self, store: FlowStore) -> Self {
        self.flows = Some(AccessLog::new(store));
        self
    }

    /// Its request metrics (to register with the agent's).
    pub fn metrics(&self) -> &L7Metrics {
        &self.metrics
    }

    /// Replaces the route table (requests already routed keep the table they were routed by).
    pub fn set_routes(&self, table: RouteTable) {
        *self.routes.write().expect("routes lock") = Arc::new(table);
    }

    /// Serves one client connection until it closes. Once `draining` turns true, the
    /// connection finishes the requests in flight and takes no new one (HTTP/1.1 closes after
    /// its current answer, HTTP/2 sends GOAWAY), as a SIGTERMed agent drains.
    pub async fn serve<IO>(
        self: Arc<Self>,
        io: IO,
        destination: Destination,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BoxError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // What every request of the connection shares: its series, and its client's pools.
        let series = Arc::new(Series::new(&destination.client_namespace, &destination.service));
        let clients = self.clients(*destination.client.ip());
        let destination = Arc::new(destination);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (proxy, destination, series, clients) =
                (self.clone(), destination.clone(), series.clone(), clients.clone());
            async move {
                let started = Instant::now();
                let line = proxy.flows.as_ref().map(|_| RequestLine::of(&request, destination.asked));
                let mut request = request;
                let span_id = u64::from(random_u32()) << 32 | u64::from(random_u32());
                let trace_id = trace_context::propagate(request.headers_mut(), span_id).unwrap_or_default();
                let mut outcome = Outcome::default();
                let upgrade = ClientUpgrade::of(&mut request);
                let response = proxy.handle(request, &destination, &clients, &mut outcome, upgrade).await;
                let (code, elapsed) = (response.status().as_u16(), started.elapsed());
                proxy.metrics.record(&series, &outcome.labels, code, elapsed);
                if let (Some(log), Some(line)) = (&proxy.flows, line) {
                    let hop = Hop {
                        client: destination.client,
                        asked: destination.asked,
                        endpoint: outcome.endpoint,
                        ingress: false,
                    };
                    let Outcome { labels, denied_by, .. } = outcome;
                    let exchange = HttpExchange {
                        code,
                        route: labels.route,
                        rule: labels.rule,
                        backend: labels.backend,
                        trace_id,
                        denied_by,
                        ..HttpExchange::default()
                    };
                    log.log(line, hop, exchange, elapsed);
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_KEEPALIVE).keep_alive_timeout(H2_KEEPALIVE * 2);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        super::serve_draining!(connection, draining)
    }

    /// Answers one request; `outcome` gets the route, rule, backend and endpoint that answered.
    async fn handle(
        &self,
        request: Request<Incoming>,
        to: &Destination,
        clients: &Clients<C>,
        outcome: &mut Outcome,
        mut upgrade: Option<ClientUpgrade>,
    ) -> Response<Body> {
        let labels = &mut outcome.labels;
        let endpoint = &mut outcome.endpoint;
        let denied_by = &mut outcome.denied_by;
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = &upgrade {
            // The one hop-by-hop request the backend must see: the upgrade itself.
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, upgrade.protocols.clone());
        }
        let table = self.routes.read().expect("routes lock").clone();
        let selected =
            match table.select(&to.service, to.port, &to.client_namespace, &parts.method, &parts.uri, &parts.headers) {
                Routing::NotRouted => {
                    labels.backend = format!("{}/{}:{}", to.service.namespace, to.service.name, to.port);
                    // Without a body: tried again once when the first try got no answer.
                    let tries = if body.is_end_stream() { 2 } else { 1 };
                    let mut body = Some(body.map_err(BoxError::from).boxed());
                    for attempt in 1..=tries {
                        let this_body = body.take().unwrap_or_else(|| body_of(Bytes::new()));
                        match self
                            .send_once(
                                (*to.client.ip(), clients),
                                &to.service,
                                to.port,
                                &parts,
                                this_body,
                                (endpoint, denied_by),
                                None,
                            )
                            .await
                        {
                            Ok(response) => return finish(response, &[], &mut upgrade),
                            Err(refusal) if attempt < tries && refusal.retryable() => {
                                tokio::time::sleep(DEFAULT_RETRY_BACKOFF).await;
                            }
                            Err(refusal) => return refusal.into_response(),
                        }
                    }
                    unreachable!("the last try returns");
                }
                Routing::NoMatch => return answer(StatusCode::NOT_FOUND, "no route matches this request"),
                Routing::Rule(selected) => selected,
            };
        let rule = selected.rule.clone();
        labels.route = selected.route.to_string();
        labels.rule = if rule.name.is_empty() { selected.rule_index.to_string() } else { rule.name.clone() };
        let mut response_modifiers = Vec::new();
        let mut mirrors = Vec::new();
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
        for filter in rule.filters.iter().filter_map(|f| f.kind.as_ref()) {
            use api::http_filter::Kind;
            match filter {
                Kind::RequestHeaders(m) => filters::modify_headers(&mut parts.headers, m),
                Kind::ResponseHeaders(m) => response_modifiers.push(m),
                Kind::Redirect(r) => {
                    let location = filters::redirect_location(r, &host, to.port, &parts.uri, &selected.path);
                    let status =
                        StatusCode::from_u16(u16::try_from(r.status_code).unwrap_or(302)).unwrap_or(StatusCode::FOUND);
                    let mut response = answer(status, "");
                    if let Ok(value) = HeaderValue::from_str(&location) {
                        response.headers_mut().insert(header::LOCATION, value);
                    }
                    modify_response(&mut response, &response_modifiers);
                    return response;
                }
                Kind::Rewrite(r) => rewrite(&mut parts, r, &selected.path),
                Kind::Mirror(m) => mirrors.push(m),
            }
        }
        let Some(backend) = pick_backend(&rule.backends, random_u32()) else {
            return answer(StatusCode::INTERNAL_SERVER_ERROR, "the route's rule has no backend with weight");
        };
        for filter in backend.filters.iter().filter_map(|f| f.kind.as_ref()) {
            use api::http_filter::Kind;
            match filter {
                Kind::RequestHeaders(m) => filters::modify_headers(&mut parts.headers, m),
                Kind::ResponseHeaders(m) => response_modifiers.push(m),
                Kind::Rewrite(r) => rewrite(&mut parts, r, &selected.path),
                Kind::Mirror(m) => mirrors.push(m),
                Kind::Redirect(_) => {} // refused by the operator on a backend
            }
        }
        let service = ServiceRef { namespace: backend.namespace.clone(), name: backend.service.clone() };
        let port = u16::try_from(backend.port).unwrap_or_default();
        labels.backend = format!("{}/{}:{port}", service.namespace, service.name);
        let retry = rule.retry.as_ref().filter(|r| r.attempts > 0);
        // Without a retry of its own, a request without a body is tried again once when its
        // try got no answer at all (the connection failed, or closed before the response's
        // head), as Istio's default retry policy does: a backend's agent restarting, or a
        // pooled connection closing as the request goes, is not the client's failure.
        let empty = retry.is_none() && body.is_end_stream();
        // A body is kept only when it may be sent more than once.
        let (kept, mut streamed) = if empty {
            (Some(Bytes::new()), None)
        } else if retry.is_some() || !mirrors.is_empty() {
            match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(_) => {
                    return answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "a request body kept for a retry or a mirror is at most 4 MiB",
                    );
                }
            }
        } else {
            (None, Some(body.map_err(BoxError::from).boxed()))
        };
        for mirror in mirrors {
            self.mirror(*to.client.ip(), mirror, &parts, kept.clone().unwrap_or_default());
        }
        let started = Instant::now();
        let request_deadline =
            (rule.request_timeout_ms > 0).then(|| started + Duration::from_millis(u64::from(rule.request_timeout_ms)));
        let try_timeout = (rule.backend_request_timeout_ms > 0)
            .then(|| Duration::from_millis(u64::from(rule.backend_request_timeout_ms)));
        let tries = 1 + retry.map_or(u32::from(empty), |r| r.attempts);
        let mut last = answer(StatusCode::SERVICE_UNAVAILABLE, "no try was made");
        for attempt in 0..tries {
            if attempt > 0 {
                let backoff = retry.map_or(DEFAULT_RETRY_BACKOFF, |r| Duration::from_millis(u64::from(r.backoff_ms)));
                if request_deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                    break;
                }
                tokio::time::sleep(backoff).await;
            }
            let this_body = match (&kept, streamed.take()) {
                (Some(bytes), _) => body_of(bytes.clone()),
                (None, Some(b)) => b,
                (None, None) => break,
            };
            let limit = match (request_deadline, try_timeout) {
                (Some(d), Some(t)) => Some(d.saturating_duration_since(Instant::now()).min(t)),
                (Some(d), None) => Some(d.saturating_duration_since(Instant::now())),
                (None, t) => t,
            };
            let outcome = self
                .send_once((*to.client.ip(), clients), &service, port, &parts, this_body, (endpoint, denied_by), limit)
                .await;
            let retryable = match &outcome {
                Ok(response) => retry.is_some_and(|r| r.codes.contains(&u32::from(response.status().as_u16()))),
                Err(refusal) => (retry.is_some() || empty) && refusal.retryable(),
            };
            match outcome {
                Ok(response) if !retryable || attempt + 1 == tries => {
                    return finish(response, &response_modifiers, &mut upgrade);
                }
                Ok(response) => last = finish(response, &response_modifiers, &mut upgrade),
                Err(refusal) if !retryable => return refusal.into_response(),
                Err(refusal) => last = refusal.into_response(),
            }
            if request_deadline.is_some_and(|d| Instant::now() >= d) {
                return answer(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            }
        }
        last
    }

    /// One try to one endpoint of `service`:`port` (written to `chosen`), within `limit`:
    /// admitted by the Service's circuit breakers, its result told to outlier detection. The
    /// response's body holds the admission until it ends.
    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        (client, clients): (Ipv4Addr, &Clients<C>),
        service: &ServiceRef,
        port: u16,
        parts: &Parts,
        body: Body,
        (chosen, denied_by): (&mut Option<SocketAddr>, &mut String),
        limit: Option<Duration>,
    ) -> Result<Response<Body>, Refusal> {
        let policy = self.backend_policy(service);
        let outlier = policy.as_ref().and_then(|p| p.outlier_detection.as_ref());
        let (request, endpoint, endpoints) = self.upstream_request(service, port, parts, body, outlier.is_some())?;
        *chosen = Some(endpoint);
        if let (Some(judge), SocketAddr::V4(pod)) = (&self.judge, endpoint) {
            let view = crate::policy::HttpRequest {
                method: parts.method.as_str(),
                path: request.uri().path(),
                headers: request.headers(),
            };
            if let Some(judgment) = judge.judge(client, pod, &view) {
                self.metrics.judged(judgment.requests.namespace(), judgment.denied_by.as_deref());
                if let Some(rule) = judgment.denied_by {
                    let reason = format!("RBAC: access denied by {rule}\n");
                    *denied_by = rule;
                    return Err(Refusal::new(StatusCode::FORBIDDEN, reason));
                }
            }
        }
        let http1 = request.version() != http::Version::HTTP_2;
        let client = clients.for_version(request.version());
        let tried = async {
            let admission = self.breakers.admit(service, port, http1).await.map_err(|overflow| {
                let reason = format!(
                    "upstream overflow: {}/{}:{port} is at its {}",
                    service.namespace,
                    service.name,
                    overflow.field()
                );
                Refusal(StatusCode::SERVICE_UNAVAILABLE, reason.into(), true)
            })?;
            let response = client.request(request).await.map_err(|err| {
                tracing::debug!("{}/{}:{port} at {endpoint}: {err:?}", service.namespace, service.name);
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers",
                )
            })?;
            Ok(response.map(|body| match admission {
                Some(admission) => Admitted { body, _admission: admission }.boxed(),
                None => body.map_err(BoxError::from).boxed(),
            }))
        };
        let outcome = match limit {
            Some(limit) => tokio::time::timeout(limit, tried)
                .await
                .unwrap_or_else(|_| Err(Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"))),
            None => tried.await,
        };
        if let Some(outlier) = outlier {
            let result = match &outcome {
                Ok(response) => Some(TryResult::Answered(response.status().as_u16())),
                Err(refusal) if refusal.2 => None, // refused here: the endpoint was never asked
                Err(_) => Some(TryResult::Failed),
            };
            if let Some(result) = result {
                self.outliers.report(service, outlier, endpoint, &endpoints, result);
            }
        }
        outcome
    }

    /// The policy targeting `service`, if any.
    fn backend_policy(&self, service: &ServiceRef) -> Option<Arc<api::BackendTrafficPolicy>> {
        let policies = self.policies.read().expect("never poisoned");
        if policies.is_empty() { None } else { policies.get(service).cloned() }
    }

    /// Takes the BackendTrafficPolicy of each Service one targets. Endpoint health and
    /// circuit counts are kept for Services whose policy did not change.
    pub fn set_backend_policies(&self, policies: HashMap<ServiceRef, Arc<api::BackendTrafficPolicy>>) {
        self.outliers.retain(|service| {
            let old = self.backend_policy(service);
            let new = policies.get(service);
            new.is_some_and(|n| old.is_some_and(|o| o.outlier_detection == n.outlier_detection))
        });
        self.breakers.set(policies.iter().filter_map(|(s, p)| Some((s.clone(), p.connection_limits?))).collect());
        *self.policies.write().expect("never poisoned") = Arc::new(policies);
    }

    /// The endpoints outlier detection has ejected now.
    pub fn ejected(&self) -> Vec<Ejected> {
        self.outliers.ejected()
    }

    /// The request to an endpoint of `service`:`port` (chosen at random, among those not
    /// ejected when `outliers`), that endpoint, and all of them.
    fn upstream_request(
        &self,
        service: &ServiceRef,
        port: u16,
        parts: &Parts,
        body: Body,
        outliers: bool,
    ) -> Result<Chosen, Refusal> {
        let Some(Upstream { endpoints, http2 }) = self.endpoints.upstream(service, port) else {
            let reason =
                format!("backend Service {}/{} has no port {port}, or does not exist", service.namespace, service.name);
            return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, reason));
        };
        if endpoints.is_empty() {
            return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"));
        }
        let endpoint = if outliers {
            self.outliers.choose(service, &endpoints, random_u32())
        } else {
            endpoints[random_u32() as usize % endpoints.len()]
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("http://{endpoint}{path}").parse::<Uri>() else {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "the request's path is not valid"));
        };
        // An HTTP/1.1 upgrade stays HTTP/1.1 (HTTP/2 has no such thing).
        let http2 = !parts.headers.contains_key(header::UPGRADE) && (parts.version == http::Version::HTTP_2 || http2);
        let version = if http2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
        let mut request = Request::builder().method(parts.method.clone()).uri(uri).version(version);
        if let Some(headers) = request.headers_mut() {
            headers.clone_from(&parts.headers);
            if http2 {
                // HTTP/2 carries the authority as a pseudo-header (from the URI), never as Host.
                headers.remove(header::HOST);
            }
        }
        let request =
            request.body(body).map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "the request cannot be forwarded"))?;
        Ok((request, endpoint, endpoints))
    }

    /// Sends a copy of the request to a mirror's backend, answer ignored, for the mirror's share of requests.
    fn mirror(&self, client: Ipv4Addr, mirror: &api::HttpMirror, parts: &Parts, body: Bytes) {
        let Some(backend) = &mirror.backend else { return };
        let chance = u64::from(random_u32()) * u64::from(mirror.denominator.max(1));
        if chance >= u64::from(mirror.numerator) << 32 {
            return;
        }
        let service = ServiceRef { namespace: backend.namespace.clone(), name: backend.service.clone() };
        let port = u16::try_from(backend.port).unwrap_or_default();
        let Ok((request, ..)) = self.upstream_request(&service, port, parts, body_of(body), false) else { return };
        let client = self.clients(client).for_version(request.version()).clone();
        tokio::spawn(async move {
            // The mirror's answer is read and dropped; it never reaches the client.
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                let _ = response.into_body().collect().await;
            }
        });
    }
}

fn rewrite(parts: &mut Parts, rewrite: &api::UrlRewrite, matched: &super::routes::PathMatcher) {
    if !rewrite.hostname.is_empty() {
        filters::set_host(&mut parts.headers, &rewrite.hostname);
    }
    if let Some(path) = &rewrite.path {
        let new_path = filters::rewrite_path(parts.uri.path(), path, matched);
        parts.uri = filters::with_path(&parts.uri, &new_path);
    }
}

fn body_of(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A request made for an endpoint: the request, that endpoint, and all of its Service port's.
type Chosen = (Request<Body>, SocketAddr, Arc<[SocketAddr]>);

/// Why a try gave no response: the status and reason the client is answered with, and
/// whether a circuit breaker refused it (not retried; answered with `x-envoy-overloaded`).
struct Refusal(StatusCode, std::borrow::Cow<'static, str>, bool);

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        Self(status, reason.into(), false)
    }

    /// Whether another try may get an answer: the try got none, and no limit refused it.
    fn retryable(&self) -> bool {
        self.0 == StatusCode::SERVICE_UNAVAILABLE && !self.2
    }

    fn into_response(self) -> Response<Body> {
        let mut response = answer(self.0, &self.1);
        if self.2 {
            response.headers_mut().insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        response
    }
}

/// An answer of the proxy's own, with its reason as the body.
fn answer(status: StatusCode, reason: &str) -> Response<Body> {
    let mut response = Response::new(body_of(Bytes::copy_from_slice(reason.as_bytes())));
    *response.status_mut() = status;
    if !reason.is_empty() {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// An HTTP/1.1 upgrade a client asked for (`Connection: upgrade` with an `Upgrade` header, as
/// WebSocket clients send): the protocols it named, and its side of the connection once the
/// proxy's answer (101) is sent.
pub struct ClientUpgrade {
    protocols: HeaderValue,
    client: hyper::upgrade::OnUpgrade,
}

impl ClientUpgrade {
    fn of(request: &mut Request<Incoming>) -> Option<Self> {
        if request.version() != http::Version::HTTP_11 {
            return None;
        }
        let asked = request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        let protocols = request.headers().get(header::UPGRADE)?.clone();
        asked.then(|| Self { protocols, client: hyper::upgrade::on(request) })
    }
}

/// The client's response from a backend's. A backend's 101 to an upgrade the client asked for
/// is passed on with its `Upgrade` header, and both connections, once switched, are joined
/// until either side closes; a 101 nobody asked for is a bad gateway.
fn finish(
    mut response: Response<Body>,
    modifiers: &[&api::HeaderModifier],
    upgrade: &mut Option<ClientUpgrade>,
) -> Response<Body> {
    let switched = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade.take() else {
            return answer(StatusCode::BAD_GATEWAY, "the backend switched protocols without being asked");
        };
        let backend = hyper::upgrade::on(&mut response);
        tokio::spawn(splice(client.client, backend));
        response.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocols) = switched {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocols);
    }
    let mut response = Response::from_parts(parts, body);
    modify_response(&mut response, modifiers);
    response
}

/// Joins an upgraded client connection and its backend's until either closes.
pub(crate) async fn splice(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = tokio::join!(client, backend);
    match (client, backend) {
        (Ok(client), Ok(backend)) => {
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(backend)).await;
        }
        (client, backend) => {
            tracing::debug!(
                "an upgraded connection did not switch: client {:?}, backend {:?}",
                client.err(),
                backend.err()
            );
        }
    }
}

fn modify_response(response: &mut Response<Body>, modifiers: &[&api::HeaderModifier]) {
    for modifier in modifiers {
        filters::modify_headers(response.headers_mut(), modifier);
    }
}

/// Headers of one hop only (RFC 9110 7.6.1): never forwarded, nor those the Connection header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    // `te: trailers` is end to end in HTTP/2 (gRPC sends it); any other TE is not.
    let trailers = headers.get(header::TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

pin_project_lite::pin_project! {
    /// A backend's response body holding its request's circuit-breaker admission (its place
    /// among the Service's requests and, for HTTP/1.1, its connection) until it ends.
    struct Admitted {
        #[pin]
        body: Incoming,
        _admission: Admission,
    }
}

impl hyper::body::Body for Admitted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx).map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A uniformly distributed number for choosing backends and mirrored requests. The standard
/// library's `RandomState` is seeded from the OS once per thread and then varies per instance,
/// so hashing nothing with a fresh one is a cheap generator; choosing a backend needs no more.
fn random_u32() -> u32 {
    std::collections::hash_map::RandomState::new().build_hasher().finish() as u32
}
