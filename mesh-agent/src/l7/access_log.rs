//! The proxy's flows: each request and its answer become two Hubble L7 flows (`Type` L7,
//! `l7.http`, event type 129 as Cilium's proxy access log), in the agent's flow store beside
//! the kernel's, so `meshctl observe --type l7` and any Hubble client see them.
//!
//! The request's flow goes from the client to the endpoint that answered (or to the Service's
//! address when the proxy answered itself); the response's flow goes back, with the code and
//! the latency.
//!
//! Flows are handed to the store in batches, at most one per [`GATHER`], as the kernel's are:
//! each batch wakes the store's followers (the metrics' flow counter among them) on the agent's
//! main runtime, and a wake per request was the proxy's largest cost after its own sockets
//! (futex and eventfd wake-ups across threads, `cargo xtask bench l7`).

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, header};
use mesh_common::{
    flows::{FlowEvent, L7_REQUEST, L7_RESPONSE},
    policy, proto,
};

use crate::flows::{Record, http::HttpExchange, store::FlowStore};

/// What is known of a request when its head arrives.
#[derive(Debug, Clone)]
pub struct RequestLine {
    pub method: String,
    pub url: String,
    pub protocol: &'static str,
    pub unix_ns: u64,
}

impl RequestLine {
    /// The request line of `request`, sent to `asked` (the Service address the client
    /// connected to, the authority when the request names none).
    pub fn of<B>(request: &Request<B>, asked: SocketAddrV4) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_else(|| asked.to_string());
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let protocol = match request.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        Self {
            method: request.method().as_str().to_owned(),
            url: format!("http://{authority}{path}"),
            protocol,
            unix_ns: crate::flows::unix_now_ns(),
        }
    }
}

/// Where a request came from and went.
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    pub client: SocketAddrV4,
    pub asked: SocketAddrV4,
    /// The endpoint the (last) try went to; `None` when the proxy answered itself.
    pub endpoint: Option<SocketAddr>,
    /// Seen by the destination's agent (HTTP rules), not the client's proxy.
    pub ingress: bool,
}

/// How long a request's flows may wait for others before they go to the store together.
pub const GATHER: Duration = Duration::from_millis(10);

/// The proxy's flows on their way to the store. Cheap to clone (shared).
#[derive(Clone)]
pub struct AccessLog {
    store: FlowStore,
    pending: Arc<Mutex<Vec<Record>>>,
}

impl AccessLog {
    pub fn new(store: FlowStore) -> Self {
        Self { store, pending: Arc::default() }
    }

    /// Logs the two flows of an answered request; they reach the store within [`GATHER`]
    /// (the first flow of a batch starts a task, on the caller's runtime, that hands it over).
    pub fn log(&self, line: RequestLine, hop: Hop, exchange: HttpExchange, latency: Duration) {
        let records = records(line, hop, exchange, latency);
        let first = {
            let mut pending = self.pending.lock().expect("never poisoned: no panics under the lock");
            pending.extend(records);
            pending.len() == 2
        };
        if first {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                let batch = std::mem::take(&mut *this.pending.lock().expect("never poisoned"));
                this.store.push_made(batch);
            });
        }
    }
}

/// The two flows of an answered request.
fn records(line: RequestLine, hop: Hop, mut exchange: HttpExchange, latency: Duration) -> [Record; 2] {
    exchange.method = line.method;
    exchange.url = line.url;
    exchange.protocol = line.protocol;
    exchange.latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let denied = !exchange.denied_by.is_empty();
    let exchange = Arc::new(exchange);
    let be = crate::flows::event_addr;
    let (client, client_port) = be(hop.client);
    let (asked, asked_port) = be(hop.asked);
    let (server, server_port) = match hop.endpoint {
        Some(SocketAddr::V4(endpoint)) => be(endpoint),
        _ => (asked, asked_port),
    };
    let event = |kind, (saddr, sport), (daddr, dport), (svc_addr, svc_port)| FlowEvent {
        kind,
        proto: proto::TCP,
        saddr,
        sport,
        daddr,
        dport,
        svc_addr,
        svc_port,
        action: if denied { policy::DENY } else { policy::ALLOW },
        reason: if denied { policy::reason::POLICY_DENIED } else { 0 },
        direction: if hop.ingress { policy::INGRESS } else { policy::EGRESS },
        ..FlowEvent::default()
    };
    let request = Record {
        event: event(L7_REQUEST, (client, client_port), (server, server_port), (asked, asked_port)),
        unix_ns: line.unix_ns,
        seq: 0,
        http: Some(exchange.clone()),
    };
    let response = Record {
        event: event(L7_RESPONSE, (server, server_port), (client, client_port), (0, 0)),
        unix_ns: line.unix_ns + exchange.latency_ns,
        seq: 0,
        http: Some(exchange),
    };
    [request, response]
}
