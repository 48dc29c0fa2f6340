//! Layer 7 for the Services that ask for it (Gateway API routes for the mesh, GAMMA). The
//! kernel sends the TCP connections to a Service port with routes to the agent's listener
//! (`SERVICE_FLAG_L7`, set by `desired`); the listener hands each to the proxy with the
//! Service it was made to and the client pod's namespace. Everything else never reaches it.
//!
//! `routes` decides a request's rule and backend, `filters` applies a rule's filters,
//! `proxy` serves a client connection, `connector` reaches backends as the client (from its
//! own address on this node, through the tunnel with its certificate to other nodes), `access_log` writes each request's L7 flows, `trace_context` carries W3C
//! `traceparent` through with the proxy's span; `outlier` ejects endpoints that keep failing
//! and `circuit_breaker` limits requests and connections, for the Services a
//! BackendTrafficPolicy targets (whose HTTP ports come to the proxy even without a route).

/// Serves a hyper server connection (`connection`, of `hyper_util`'s auto builder) until it
/// ends or, once `draining` (a `watch::Receiver<bool>`) turns true, until it has answered its
/// requests in flight (HTTP/1.1 closes after its current answer, HTTP/2 sends GOAWAY): how every
/// L7 connection of the agent drains on SIGTERM. A macro: the connection types of the auto
/// builder (with and without upgrades) share no trait.
macro_rules! serve_draining {
    ($connection:expr, $draining:expr) => {{
        let connection = $connection;
        let mut draining = $draining;
        tokio::pin!(connection);
        let drain = async {
            // A dropped sender never drains.
            if draining.wait_for(|draining| *draining).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = connection.as_mut() => return served,
            () = drain => {}
        }
        connection.as_mut().graceful_shutdown();
        connection.await
    }};
}
pub(crate) use serve_draining;

pub mod access_log;
pub mod circuit_breaker;
pub mod connector;
pub mod filters;
pub mod judged;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod request_policy;
pub mod routes;
pub mod trace_context;

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, RwLock},
};

use mesh_common::{
    api::{self, Kind, resource},
    model::ResourceSet,
};

use self::{
    connector::{NetnsConnector, Upstreams},
    proxy::{Destination, Endpoints, Proxy, Upstream},
    routes::{RouteError, RouteTable, ServiceRef},
};
use crate::desired::Compiler;

/// The endpoints of the Services routes send to, as the compiled model gives them, and whether
/// each port speaks HTTP/2 cleartext; looked up at every request without copying a key.
#[derive(Debug, Default)]
struct ModelEndpoints(RwLock<HashMap<ServiceRef, HashMap<u16, Upstream>>>);

impl Endpoints for ModelEndpoints {
    fn upstream(&self, service: &ServiceRef, port: u16) -> Option<Upstream> {
        self.0.read().expect("never poisoned").get(service)?.get(&port).cloned()
    }
}

/// The Service `service` of `model`.
fn service_of<'a>(model: &'a ResourceSet, service: &ServiceRef) -> Option<&'a api::Service> {
    let key = (Kind::Service as i32, service.namespace.clone(), service.name.clone());
    match model.get(&key)?.kind.as_ref()? {
        resource::Kind::Service(svc) => Some(svc),
        _ => None,
    }
}

/// The BackendTrafficPolicy that applies to each Service one targets: the oldest, then the
/// first by name (Gateway API's policy precedence).
fn backend_policies(model: &ResourceSet) -> HashMap<ServiceRef, Arc<api::BackendTrafficPolicy>> {
    let mut policies: Vec<&api::BackendTrafficPolicy> = model.backend_traffic_policies().collect();
    policies.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
    let mut applied = HashMap::new();
    for policy in policies {
        let shared = Arc::new(policy.clone());
        for name in &policy.services {
            let service = ServiceRef { namespace: policy.namespace.clone(), name: name.clone() };
            applied.entry(service).or_insert_with(|| shared.clone());
        }
    }
    applied
}

/// `appProtocol` values that mean HTTP/2 cleartext (Kubernetes' own, and gRPC's).
pub const HTTP2_APP_PROTOCOLS: [&str; 2] = ["kubernetes.io/h2c", "grpc"];
/// `appProtocol` values that mean HTTP of some version in clear: the ports a
/// BackendTrafficPolicy brings to the proxy without a route.
pub const HTTP_APP_PROTOCOLS: [&str; 4] = ["http", "kubernetes.io/h2c", "grpc", "kubernetes.io/ws"];

/// The proxy and what it needs from the model. Cheap to clone (shared).
#[derive(Clone)]
pub struct L7 {
    proxy: Arc<Proxy<NetnsConnector>>,
    endpoints: Arc<ModelEndpoints>,
    /// Cluster IP and port -> the routed Service.
    frontends: Arc<RwLock<HashMap<SocketAddrV4, ServiceRef>>>,
}

impl L7 {
    /// The proxy, logging its requests' flows to `flows`, applying this node's pods' HTTP
    /// rules (`judge`) to the requests it delivers to them.
    pub fn new(
        upstreams: Upstreams,
        flows: crate::flows::store::FlowStore,
        judge: Arc<dyn request_policy::RequestJudge>,
    ) -> Self {
        let endpoints = Arc::new(ModelEndpoints::default());
        let connectors = move |client| upstreams.for_client(client);
        let proxy = Arc::new(Proxy::new(connectors, endpoints.clone()).with_flows(flows).with_judge(judge));
        Self { proxy, endpoints, frontends: Arc::default() }
    }

    /// Takes the frontends the routes of `model` route and the endpoints of every Service they
    /// send to (from `compiler`, already brought up to `model`); with `routes_changed`, the
    /// routes themselves too (compiling them, regular expressions included, only then).
    /// Returns the routes left out.
    pub fn update(&self, model: &ResourceSet, compiler: &Compiler, routes_changed: bool) -> Vec<RouteError> {
        let mut frontends = HashMap::new();
        let mut backends = BTreeSet::new();
        let policies = backend_policies(model);
        // A targeted Service's HTTP ports come to the proxy without a route too.
        for service in policies.keys() {
            let Some(svc) = service_of(model, service) else { continue };
            for port in svc.ports.iter().filter(|p| HTTP_APP_PROTOCOLS.contains(&p.app_protocol.as_str())) {
                let port = u16::try_from(port.port).unwrap_or_default();
                for ip in svc.cluster_ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
                    frontends.insert(SocketAddrV4::new(ip, port), service.clone());
                }
            }
        }
        for route in model.http_routes() {
            for parent in &route.parents {
                let service = ServiceRef { namespace: parent.namespace.clone(), name: parent.service.clone() };
                let Some(svc) = service_of(model, &service) else { continue };
                for port in svc.ports.iter().filter(|p| parent.port == 0 || p.port == parent.port) {
                    let port = u16::try_from(port.port).unwrap_or_default();
                    for ip in svc.cluster_ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
                        frontends.insert(SocketAddrV4::new(ip, port), service.clone());
                    }
                }
            }
            for backend in route.rules.iter().flat_map(api::HttpRouteRule::upstreams) {
                let service = ServiceRef { namespace: backend.namespace.clone(), name: backend.service.clone() };
                backends.insert((service, u16::try_from(backend.port).unwrap_or_default()));
            }
        }
        // Requests no rule routes go to the Service asked for: its endpoints are needed too.
        for (address, service) in &frontends {
            backends.insert((service.clone(), address.port()));
        }
        let mut endpoints: HashMap<ServiceRef, HashMap<u16, Upstream>> = HashMap::new();
        for (service, port) in backends {
            let Some(addresses) = compiler.endpoints(&service.namespace, &service.name, port) else { continue };
            let http2 = service_of(model, &service).is_some_and(|svc| {
                svc.ports
                    .iter()
                    .any(|p| p.port == u32::from(port) && HTTP2_APP_PROTOCOLS.contains(&p.app_protocol.as_str()))
            });
            endpoints.entry(service).or_default().insert(port, Upstream { endpoints: addresses.into(), http2 });
        }
        let errors = if routes_changed {
            let (table, errors) = RouteTable::build(model.http_routes());
            self.proxy.set_routes(table);
            errors
        } else {
            Vec::new()
        };
        *self.endpoints.0.write().expect("never poisoned") = endpoints;
        *self.frontends.write().expect("never poisoned") = frontends;
        self.proxy.set_backend_policies(policies);
        errors
    }

    /// The endpoints outlier detection has ejected now.
    pub fn ejected(&self) -> Vec<outlier::Ejected> {
        self.proxy.ejected()
    }

    /// The proxy's request metrics.
    pub fn metrics(&self) -> &metrics::L7Metrics {
        self.proxy.metrics()
    }

    /// The routed Service a connection asked for at `asked` (cluster IP and port), if any.
    pub fn routed(&self, asked: SocketAddrV4) -> Option<ServiceRef> {
        self.frontends.read().expect("never poisoned").get(&asked).cloned()
    }

    /// Serves one client connection to a routed Service until it closes, or (once `draining`
    /// turns true) until its requests in flight are answered.
    pub async fn serve(
        &self,
        stream: tokio::net::TcpStream,
        destination: Destination,
        draining: tokio::sync::watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        if let Err(err) = self.proxy.clone().serve(stream, destination, draining).await {
            tracing::debug!("an L7 client connection ended: {err}");
        }
    }
}
