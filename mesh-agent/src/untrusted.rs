//! Every input the agent does not control, each taken the way the agent takes it, as one
//! function: the fuzz targets (`fuzz/`, `cargo xtask fuzz`) and the property tests
//! (`tests/untrusted_input.rs`, in the test command) drive these. Each returns what the agent
//! would do with the input: applied, or refused with an error naming the field. None may
//! panic, hang or allocate without bound, whatever the bytes.

use mesh_common::{
    api::StateUpdate,
    flows::FlowEvent,
    hubble::observer::GetFlowsRequest,
    model::{PartAssembler, ResourceSet},
};
use prost::Message as _;

use crate::{
    desired::Compiler,
    flows::{Record, directory::Directory, filter::Filters, view::FlowView},
    l7::routes::{RouteTable, Routing, ServiceRef, pick_backend},
    operator_stream::MAX_UPDATE_BYTES,
    policy,
    policy_table::{self, LocalEndpoint, Numbering},
    state_file::StateFile,
};

/// The node the inputs are judged for.
pub const NODE: &str = "node-0";

/// What an agent following the operator holds between updates.
#[derive(Default)]
pub struct Follower {
    pub model: ResourceSet,
    compiler: Compiler,
    numbering: Numbering,
    parts: PartAssembler,
}

impl Follower {
    /// One state stream message, as the agent decodes and applies it (a part of an update
    /// only once its last part is in; until then `Ok(0)`): the model, the compiled
    /// services, the policy of this node's pods in kernel form, the flow directory. Maps are
    /// not written (that is the kernel's side); everything computed for them is.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let part = StateUpdate::decode(bytes).map_err(|err| format!("not a StateUpdate: {err}"))?;
        let whole = self.parts.push(part, bytes.len(), MAX_UPDATE_BYTES).map_err(|err| err.to_string())?;
        let Some(update) = whole else { return Ok(0) };
        // A full snapshot's trust bundle, taken and read as the tunnel reads it.
        let trusted = if update.full {
            let certificates = crate::identity::Certificates::new(Default::default(), true);
            certificates.set_bundle(update.workload_roots.clone());
            certificates.root_subjects().len()
        } else {
            0
        };
        let changed = self.model.apply(update);
        self.compiler.update(&self.model, NODE, Some(&changed));
        let compiled = policy::compile(&self.model, NODE);
        let local: Vec<LocalEndpoint<'_>> =
            compiled.iter().enumerate().map(|(i, policy)| LocalEndpoint { ifindex: i as u32 + 1, policy }).collect();
        let workloads = policy::workloads(&self.model);
        let principals =
            crate::principals::Numbering::of(&self.model, &Default::default()).map_err(|e| e.to_string())?;
        let mut kernel = policy_table::kernel_form(&local, &workloads, &mut self.numbering, &principals);
        kernel.prefilter =
            policy_table::prefilter_form(&crate::prefilter::compile(&self.model).entries, &mut self.numbering);
        // Services from outside, as the agent compiles them for its node.
        let node_addr = [std::net::Ipv4Addr::new(172, 18, 0, 2)];
        let externals = crate::nodeport::compile(&self.model, &self.compiler, NODE, &node_addr, false);
        let health_checks = crate::nodeport::health_checks(&self.model, &self.compiler, NODE);
        let directory = Directory::build(NODE, &self.model, self.numbering.attributions());
        drop(directory);
        // The routes compiled as the agent compiles them, and a request judged by each.
        let routes: Vec<&mesh_common::api::HttpRoute> = self.model.http_routes().collect();
        let (table, _) = RouteTable::build(routes.iter().copied());
        let mut selected = 0;
        for route in &routes {
            for parent in &route.parents {
                let service = ServiceRef { namespace: parent.namespace.clone(), name: parent.service.clone() };
                let port = u16::try_from(parent.port).unwrap_or(80);
                let uri = http::Uri::from_static("/a/b?x=1");
                let chosen =
                    table.select(&service, port, &route.namespace, &http::Method::GET, &uri, &http::HeaderMap::new());
                if let Routing::Rule(rule) = chosen {
                    selected += usize::from(pick_backend(&rule.rule.backends, 7).is_some());
                }
            }
        }
        Ok(kernel.entries.len() + self.compiler.len() + trusted + selected + externals.len() + health_checks.len())
    }
}

/// An Observer `GetFlows` request (any gRPC client may send one): its filters compiled as the
/// Observer does, then judged against `events` (each [`FlowEvent`]'s bytes, as the ring
/// buffer gives them) and an L7 proxy's request and response flows, named by an empty
/// directory. Returns how many matched.
pub fn flow_request(request: &[u8], events: &[&[u8]]) -> Result<usize, String> {
    let request = GetFlowsRequest::decode(request).map_err(|err| format!("not a GetFlowsRequest: {err}"))?;
    let filters = Filters::compile(&request.whitelist, &request.blacklist).map_err(|err| err.to_string())?;
    let directory = Directory::empty(NODE);
    let exchange = std::sync::Arc::new(crate::flows::http::HttpExchange {
        method: "GET".into(),
        url: "http://web/api/v1?q=1".into(),
        protocol: "HTTP/1.1",
        code: 404,
        latency_ns: 1_500_000,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        ..Default::default()
    });
    let l7 = [mesh_common::flows::L7_REQUEST, mesh_common::flows::L7_RESPONSE].map(|kind| Record {
        event: FlowEvent { kind, proto: mesh_common::proto::TCP, ..FlowEvent::default() },
        unix_ns: 0,
        seq: 1,
        http: Some(exchange.clone()),
    });
    let records: Vec<Record> = events
        .iter()
        .filter_map(|bytes| crate::flows::events::decode(bytes))
        .map(|event: FlowEvent| Record { event, unix_ns: 0, seq: 1, http: None })
        .chain(l7)
        .collect();
    Ok(records.iter().filter(|r| filters.matches(&FlowView::new(r, &directory))).count())
}

/// The static state file, as `--state-file` reads it, compiled for [`NODE`].
pub fn state_file(text: &str) -> Result<usize, String> {
    let state = StateFile::parse(text).map_err(|(field, message)| format!("{field}: {message}"))?;
    let model = state.resources(NODE);
    Ok(crate::desired::compile(&model, NODE).services.len() + policy::compile(&model, NODE).len())
}

/// The identity [`certificate_answer`] checks an answer against.
pub const ANSWER_IDENTITY: (&str, &str) = ("demo", "web");

/// The workload CA's answer to a certificate request, as the agent takes it: decoded, then
/// checked to be a chain for `public_key` (the key the agent made) naming exactly
/// [`ANSWER_IDENTITY`]. The CA is the operator, reached over mutual TLS, but its answer is
/// checked all the same. Returns the leaf's serial.
pub fn certificate_answer(bytes: &[u8], public_key: &[u8]) -> Result<String, String> {
    use mesh_common::{
        identity::{SpiffeId, TrustDomain},
        istio_ca::IstioCertificateResponse,
    };
    let answer =
        IstioCertificateResponse::decode(bytes).map_err(|err| format!("not an IstioCertificateResponse: {err}"))?;
    let identity =
        SpiffeId::new(TrustDomain::default(), ANSWER_IDENTITY.0, ANSWER_IDENTITY.1).expect("a valid identity");
    crate::identity::ca_client::check_chain(&answer.cert_chain, &identity, public_key).map(|checked| checked.serial)
}

/// The one pod of the node [`tunnel_request`] judges for: demo/web at this address.
pub const TUNNEL_POD: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 0, 2);
/// The one pod of another node [`tunnel_request`] knows: demo/client at this address.
pub const TUNNEL_CLIENT: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 1, 7);

/// A tunnel's CONNECT, as the receiving agent judges it after the TLS handshake:
/// `peer_certificate` is the client's leaf (DER; its chain was checked during the handshake,
/// its identity is read here), `server_name` the name the client asked for, `uri` the
/// CONNECT's target, `forwarded` its `Forwarded` header. Judged for a node whose one pod is
/// [`TUNNEL_POD`], of identity [`ANSWER_IDENTITY`], STRICT but on port 9 (DISABLE), in a
/// cluster whose one other pod is [`TUNNEL_CLIENT`] (demo/client). Returns the address the
/// agent would connect to, and the client address it would connect from.
pub fn tunnel_request(
    peer_certificate: &[u8],
    server_name: &str,
    uri: &str,
    forwarded: &str,
) -> Result<(std::net::SocketAddr, std::net::Ipv4Addr), String> {
    use mesh_common::identity::{SpiffeId, TrustDomain};

    use crate::tunnel::{
        Destination, Destinations, Peer, hbone,
        peer_auth::{Mode, WorkloadMtls},
    };
    let peer = crate::tunnel::tls::identity_in(&peer_certificate.to_vec().into())?;
    let uri: http::Uri = uri.parse().map_err(|err| format!("the CONNECT's target: {err}"))?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        hbone::FORWARDED,
        http::HeaderValue::from_str(forwarded).map_err(|err| format!("the Forwarded header: {err}"))?,
    );
    let identity = SpiffeId::new(TrustDomain::default(), ANSWER_IDENTITY.0, ANSWER_IDENTITY.1).expect("valid");
    // Port 9 of the pod is DISABLE.
    let mtls = WorkloadMtls { mode: Mode::Strict, ports: [(9, Mode::Disable)].into() };
    let client = Peer {
        pod: "demo/client".into(),
        identity: SpiffeId::new(TrustDomain::default(), "demo", "client").expect("valid"),
        mtls: WorkloadMtls { mode: Mode::Permissive, ports: Default::default() },
        principal_rules: false,
        node_address: Some(std::net::Ipv4Addr::new(172, 18, 0, 3)),
        number: 0,
        http_ports: Default::default(),
    };
    let destinations = Destinations::of(
        [(TUNNEL_POD, Destination { pod: "demo/web".into(), identity, mtls, number: 0, requests: None })],
        [(TUNNEL_CLIENT, client)],
    );
    let refused = |(status, reason): (http::StatusCode, String)| format!("{status}: {reason}");
    let target = hbone::judge(&http::Method::CONNECT, &uri, server_name, &peer, &destinations, &TrustDomain::default())
        .map_err(refused)?;
    let from = hbone::forwarded_client(&headers, &peer, &destinations).map_err(refused)?;
    Ok((target, from))
}

/// The agent's command line (flags; environment variables are read as the agent reads them).
pub fn config(args: &[String]) -> Result<(), String> {
    use clap::Parser as _;
    let args =
        crate::config::Args::try_parse_from(std::iter::once("mesh-agent".to_owned()).chain(args.iter().cloned()))
            .map_err(|err| err.to_string())?;
    crate::config::Config::from_args(args).map(drop).map_err(|err| err.to_string())
}

/// Routes every HTTP request of [`http_request`] meets: one of each kind of match (a regular
/// expression and a header, a prefix and a query parameter, an exact path and a method), with
/// the filters that rewrite what the proxy forwards (path, host, headers) and a redirect.
fn request_routes() -> Vec<mesh_common::api::HttpRoute> {
    use mesh_common::api::{self, http_filter::Kind as Filter};
    let value = |name: &str, value: &str, kind: api::ValueMatch| api::NameValueMatch {
        r#match: kind as i32,
        name: name.into(),
        value: value.into(),
    };
    let backend =
        api::HttpBackend { namespace: "demo".into(), service: "web".into(), port: 80, weight: 1, ..Default::default() };
    let rewrite = |kind: api::PathModifier, value: &str| {
        Filter::Rewrite(api::UrlRewrite {
            hostname: "rewritten.demo".into(),
            path: Some(api::PathRewrite { kind: kind as i32, value: value.into() }),
        })
    };
    let rule = |matches: Vec<api::HttpRouteMatch>, filters: Vec<Filter>| api::HttpRouteRule {
        matches,
        filters: filters.into_iter().map(|kind| api::HttpFilter { kind: Some(kind) }).collect(),
        backends: vec![backend.clone()],
        ..Default::default()
    };
    let path = |kind: api::PathMatch, path: &str| api::HttpRouteMatch {
        path_match: kind as i32,
        path: path.into(),
        ..Default::default()
    };
    let headers = api::HeaderModifier {
        set: vec![api::NameValue { name: "x-set".into(), value: "1".into() }],
        add: vec![api::NameValue { name: "x-add".into(), value: "2".into() }],
        remove: vec!["x-remove".into()],
    };
    let redirect = Filter::Redirect(api::HttpRedirect {
        scheme: "https".into(),
        hostname: "elsewhere.demo".into(),
        path: Some(api::PathRewrite { kind: api::PathModifier::Prefix as i32, value: "/moved".into() }),
        port: 8443,
        status_code: 301,
    });
    let rules = vec![
        rule(
            vec![api::HttpRouteMatch {
                headers: vec![value("x-version", "v[0-9]+", api::ValueMatch::Regex)],
                ..path(api::PathMatch::Regex, "/api/v[0-9]+/.*")
            }],
            vec![rewrite(api::PathModifier::Full, "/full"), Filter::RequestHeaders(headers)],
        ),
        rule(
            vec![api::HttpRouteMatch {
                query_params: vec![value("q", "1", api::ValueMatch::Exact)],
                ..path(api::PathMatch::Prefix, "/static")
            }],
            vec![rewrite(api::PathModifier::Prefix, "/")],
        ),
        rule(vec![api::HttpRouteMatch { method: "POST".into(), ..path(api::PathMatch::Exact, "/") }], vec![]),
        api::HttpRouteRule { backends: vec![], ..rule(vec![path(api::PathMatch::Prefix, "/old")], vec![redirect]) },
    ];
    vec![api::HttpRoute {
        namespace: "demo".into(),
        name: "web".into(),
        parents: vec![api::RouteParent { namespace: "demo".into(), service: "web".into(), port: 80 }],
        rules,
        ..Default::default()
    }]
}

/// An HTTP request a client pod sends to a Service with routes (any pod may send anything),
/// taken as the L7 proxy takes it once hyper has parsed it: `method`, `target` (origin or
/// absolute form) and `headers` must be what the `http` crate accepts (else refused, as hyper
/// refuses them); then its `traceparent` carried on, its rule chosen among
/// [`request_routes`], the rule's filters applied (path and host rewrites, header changes, a
/// redirect's `Location`), and its flow's URL written. Returns the rule and the request as it
/// would be forwarded (`<method> <path> host=<host>`, or the redirect).
pub fn http_request(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    use crate::l7::{access_log::RequestLine, filters, trace_context};
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|err| format!("method: {err}"))?;
    let uri: http::Uri = target.parse().map_err(|err| format!("target: {err}"))?;
    let mut request = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|err| format!("header name: {err}"))?;
        let value = http::HeaderValue::from_bytes(value.as_bytes()).map_err(|err| format!("header {name}: {err}"))?;
        request = request.header(name, value);
    }
    let mut request = request.body(()).map_err(|err| format!("request: {err}"))?;
    let asked = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 96, 0, 10), 80);
    let line = RequestLine::of(&request, asked);
    let trace = trace_context::propagate(request.headers_mut(), 0x5eed).unwrap_or_default();
    let (mut parts, ()) = request.into_parts();
    crate::l7::proxy::strip_hop_by_hop(&mut parts.headers);
    let routes = request_routes();
    let (table, errors) = RouteTable::build(&routes);
    assert!(errors.is_empty(), "the fixed routes are valid: {errors:?}");
    let service = ServiceRef { namespace: "demo".into(), name: "web".into() };
    let selected = match table.select(&service, 80, "demo", &parts.method, &parts.uri, &parts.headers) {
        Routing::Rule(selected) => selected,
        Routing::NoMatch => return Ok(format!("404 {} trace={trace}", line.url)),
        Routing::NotRouted => return Err("the fixed routes route port 80".into()),
    };
    let host = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    for filter in selected.rule.filters.iter().filter_map(|f| f.kind.as_ref()) {
        use mesh_common::api::http_filter::Kind;
        match filter {
            Kind::RequestHeaders(m) | Kind::ResponseHeaders(m) => filters::modify_headers(&mut parts.headers, m),
            Kind::Redirect(r) => {
                let location = filters::redirect_location(r, &host, 80, &parts.uri, &selected.path);
                return Ok(format!("rule {} redirect {location}", selected.rule_index));
            }
            Kind::Rewrite(r) => {
                if !r.hostname.is_empty() {
                    filters::set_host(&mut parts.headers, &r.hostname);
                }
                if let Some(path) = &r.path {
                    let new_path = filters::rewrite_path(parts.uri.path(), path, &selected.path);
                    parts.uri = filters::with_path(&parts.uri, &new_path);
                }
            }
            Kind::Mirror(_) => {}
        }
    }
    let host = parts.headers.get(http::header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    Ok(format!(
        "rule {} {} {} host={} trace={trace} url={}",
        selected.rule_index,
        parts.method,
        parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        host.unwrap_or_default(),
        line.url
    ))
}

/// An HTTP request as the agent of a pod with HTTP rules judges it (`l7::request_policy`):
/// `method`, `target` and `headers` as [`http_request`] takes them, from `demo/client`, against
/// fixed rules (GET and HEAD under /public for demo/client on port 8081, but not
/// /public/secret). Returns `allowed` or `denied by <rule>`.
pub fn judged_request(method: &str, target: &str, headers: &[(&str, &str)]) -> Result<String, String> {
    use mesh_common::{
        api,
        identity::{SpiffeId, TrustDomain},
    };
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|err| format!("method: {err}"))?;
    let uri: http::Uri = target.parse().map_err(|err| format!("target: {err}"))?;
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|err| format!("header name: {err}"))?;
        let value = http::HeaderValue::from_bytes(value.as_bytes()).map_err(|err| format!("header {name}: {err}"))?;
        map.append(name, value);
    }
    let client =
        api::Principal { trust_domain: String::new(), namespace: "demo".into(), service_account: "client".into() };
    let port = vec![api::PolicyPort {
        protocol: api::Protocol::Tcp as i32,
        port: Some(api::policy_port::Port::Number(8081)),
        end_port: 0,
    }];
    let rule = |action: api::RuleAction, http: api::HttpRequestMatch| api::MeshRule {
        action: action as i32,
        ports: port.clone(),
        principals: vec![client.clone()],
        http: vec![http],
        ..Default::default()
    };
    let policy = |name: &str, priority: u32, ingress: api::MeshRule| api::MeshPolicy {
        namespace: "demo".into(),
        name: name.into(),
        priority,
        ingress: vec![ingress],
        ..Default::default()
    };
    let path = |prefix: bool, value: &str| api::HttpPathMatch { prefix, value: value.into() };
    let reads = api::HttpRequestMatch {
        methods: vec!["GET".into(), "HEAD".into()],
        paths: vec![path(true, "/public")],
        headers: vec![api::NameValue { name: "x-team".into(), value: "web".into() }],
    };
    let secret = api::HttpRequestMatch { paths: vec![path(false, "/public/secret")], ..Default::default() };
    let mut model = ResourceSet::default();
    let web = api::Workload {
        namespace: "demo".into(),
        name: "web".into(),
        node: NODE.into(),
        ips: vec!["10.244.0.3".into()],
        identity: 258,
        service_account: "web".into(),
        ..Default::default()
    };
    for resource in [
        api::resource::Kind::Workload(Box::new(web)),
        api::resource::Kind::MeshPolicy(Box::new(policy("reads", 500, rule(api::RuleAction::Allow, reads)))),
        api::resource::Kind::MeshPolicy(Box::new(policy("secret", 100, rule(api::RuleAction::Deny, secret)))),
    ] {
        model.insert(api::Resource { kind: Some(resource) });
    }
    let compiled = policy::compile(&model, NODE);
    let pod = compiled.first().ok_or("the fixed pod compiles")?;
    let principal = SpiffeId::new(TrustDomain::default(), "demo", "client").map_err(|e| e.to_string())?;
    let peer = policy::PeerInfo {
        ip: std::net::Ipv4Addr::new(10, 244, 0, 2),
        identity: Some(256),
        named_ports: &[],
        principal: Some(&principal),
    };
    let request = policy::HttpRequest { method: method.as_str(), path: uri.path(), headers: &map };
    Ok(match pod.ingress.request_verdict(peer, 8081, &pod.named_ports, &request) {
        policy::Verdict::Denied(cause) => format!("denied by {}", crate::l7::request_policy::denial(&cause)),
        _ => "allowed".to_owned(),
    })
}
