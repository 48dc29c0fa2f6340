//! The proxy's flows: each request and its answer become two Hubble L7 flows (`Type` L7,
//! `l7.http`, event type 129 as Cilium's proxy access log), in the agent's flow store beside
//! the kernel's, so `meshctl observe --type l7` and any Hubble client see them.
//!
//! The request's flow goes from the client to the endpoint that answered (or to the Service's
//! address when the proxy answered itself); the response's flow goes back, with the code and
//! the latency.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
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
}

/// Writes the two flows of an answered request to `store`.
pub fn log(store: &FlowStore, line: RequestLine, hop: Hop, mut exchange: HttpExchange, latency: Duration) {
    exchange.method = line.method;
    exchange.url = line.url;
    exchange.protocol = line.protocol;
    exchange.latency_ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    let exchange = Arc::new(exchange);
    let be = |a: SocketAddrV4| (u32::from_ne_bytes(a.ip().octets()), a.port().to_be());
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
        action: policy::ALLOW,
        direction: policy::EGRESS,
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
    store.push(vec![request, response]);
}
