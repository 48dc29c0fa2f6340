//! Hubble's flow filters (`flow.FlowFilter`), compiled once per request and matched against
//! [`FlowView`]s. Within a filter every set field must match (a field matches when any of
//! its values does); a flow passes when it matches any allow filter (or there are none) and
//! no deny filter. The parsers here are also `meshctl`'s, so it can name a malformed flag.

use mesh_common::{cidr::Ipv4Net, http_route::Regex, hubble::flow::FlowFilter, proto};

use super::{
    directory::EndpointInfo,
    view::{FlowView, traffic_direction},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("invalid IP address or CIDR {0:?}: give an address (10.0.0.1) or a prefix (10.0.0.0/24)")]
    Ip(String),
    #[error("invalid port {0:?}: give a number from 0 to 65535")]
    Port(String),
    #[error("unknown protocol {0:?}: use tcp, udp, sctp or icmp")]
    Protocol(String),
    #[error("unknown TCP flag {0:?}: use SYN, ACK, FIN, RST, PSH, URG, ECE, CWR or NS, comma-separated")]
    TcpFlag(String),
    #[error("invalid label selector {0:?}: use key=value, key!=value, key in (a,b), key notin (a,b), key or !key")]
    Label(String),
    #[error("invalid name {0:?}: use namespace/name, namespace/ or name")]
    Name(String),
    #[error("invalid node name pattern {0:?}: use a name, with * as a wildcard")]
    NodeName(String),
    #[error("invalid HTTP status code {0:?}: give a code (404) or a prefix with + (5+, 40+)")]
    HttpStatus(String),
    #[error("invalid HTTP method {0:?}: give a method name such as GET or POST")]
    HttpMethod(String),
    #[error("invalid regular expression: {0}")]
    Regex(String),
    #[error("invalid trace id {0:?}: give the 32 hexadecimal digits of a W3C trace id")]
    TraceId(String),
    #[error("filter field {0} is not supported by this agent (it has no such data); remove it from the request")]
    Unsupported(&'static str),
    /// A request's filter field that holds an invalid value.
    #[error("filter field {field}: {source}")]
    Field { field: &'static str, source: Box<FilterError> },
}

/// Names the request field an error came from.
fn at(field: &'static str) -> impl Fn(FilterError) -> FilterError {
    move |source| FilterError::Field { field, source: Box::new(source) }
}

/// `[namespace/]pod-name-prefix`, as Hubble matches pods and services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// Empty: any namespace.
    pub namespace: String,
    pub prefix: String,
}

/// Parses Hubble's pod or service filter: `ns/prefix`, `ns/` (all of a namespace), `/prefix`
/// (any namespace) or `prefix` (namespace `default`).
pub fn parse_name(value: &str) -> Result<NamePattern, FilterError> {
    if value.is_empty() {
        return Err(FilterError::Name(value.to_owned()));
    }
    match value.split_once('/') {
        Some((namespace, prefix)) if !prefix.contains('/') => {
            Ok(NamePattern { namespace: namespace.to_owned(), prefix: prefix.to_owned() })
        }
        Some(_) => Err(FilterError::Name(value.to_owned())),
        None => Ok(NamePattern { namespace: "default".to_owned(), prefix: value.to_owned() }),
    }
}

impl NamePattern {
    fn matches(&self, namespace: &str, name: &str) -> bool {
        (self.namespace.is_empty() || self.namespace == namespace) && name.starts_with(&self.prefix)
    }
}

/// An address or a prefix (`mesh_common::cidr`, the one definition).
pub fn parse_ip(value: &str) -> Result<Ipv4Net, FilterError> {
    mesh_common::cidr::parse_v4_or_host(value).ok_or_else(|| FilterError::Ip(value.to_owned()))
}

pub fn parse_port(value: &str) -> Result<u16, FilterError> {
    value.parse().map_err(|_| FilterError::Port(value.to_owned()))
}

/// The protocol a `--protocol` value names (case-insensitive).
pub fn parse_protocol(value: &str) -> Result<u8, FilterError> {
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        "sctp" => Ok(proto::SCTP),
        "icmp" | "icmpv4" => Ok(proto::ICMP),
        _ => Err(FilterError::Protocol(value.to_owned())),
    }
}

/// The TCP flag bits of a comma-separated list (all must be set).
pub fn parse_tcp_flags(value: &str) -> Result<u16, FilterError> {
    let mut bits = 0u16;
    for flag in value.split(',') {
        bits |= match flag.trim().to_ascii_uppercase().as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            "NS" => 0x100,
            _ => return Err(FilterError::TcpFlag(flag.to_owned())),
        };
    }
    Ok(bits)
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A Kubernetes label selector (`app=web,tier!=db,env in (a,b),!legacy`); keys may carry
/// Hubble's source prefix (`k8s:app`, `any:app`).
pub fn parse_selector(value: &str) -> Result<Vec<Requirement>, FilterError> {
    let err = || FilterError::Label(value.to_owned());
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in value.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(err());
        }
    }
    if depth != 0 {
        return Err(err());
    }
    parts.push(&value[start..]);
    let label_value = |v: &str| -> Result<String, FilterError> {
        let v = v.trim();
        if v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            Ok(v.to_owned())
        } else {
            Err(err())
        }
    };
    let key = |k: &str| -> Result<String, FilterError> {
        let k = k.trim();
        let k = k.strip_prefix("k8s:").or_else(|| k.strip_prefix("any:")).unwrap_or(k);
        let valid = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if valid { Ok(k.to_owned()) } else { Err(err()) }
    };
    let list = |v: &str| -> Result<Vec<String>, FilterError> {
        let inner = v.trim().strip_prefix('(').and_then(|v| v.strip_suffix(')')).ok_or_else(err)?;
        inner.split(',').map(label_value).collect()
    };
    parts
        .into_iter()
        .map(|part| {
            let part = part.trim();
            if let Some((k, v)) = part.split_once("!=") {
                Ok(Requirement::NotEquals(key(k)?, label_value(v)?))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Ok(Requirement::Equals(key(k)?, label_value(v)?))
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Ok(Requirement::NotIn(key(k)?, list(v)?))
            } else if let Some((k, v)) = part.split_once(" in ") {
                Ok(Requirement::In(key(k)?, list(v)?))
            } else if let Some(k) = part.strip_prefix('!') {
                Ok(Requirement::NotExists(key(k)?))
            } else {
                Ok(Requirement::Exists(key(part)?))
            }
        })
        .collect()
}

fn selector_matches(selector: &[Requirement], endpoint: Option<&EndpointInfo>) -> bool {
    let Some(endpoint) = endpoint else { return false };
    let labels = &endpoint.labels;
    selector.iter().all(|r| match r {
        Requirement::Equals(k, v) => labels.get(k) == Some(v),
        Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
        Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
        Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
        Requirement::Exists(k) => labels.contains_key(k),
        Requirement::NotExists(k) => !labels.contains_key(k),
    })
}

/// A node name glob (`*` for any run of name characters); a `cluster/` part is ignored (one
/// cluster here).
pub fn parse_node_name(value: &str) -> Result<String, FilterError> {
    let name = value.rsplit_once('/').map_or(value, |(_, node)| node).to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*')) {
        return Err(FilterError::NodeName(value.to_owned()));
    }
    Ok(name)
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(rest) = text.strip_prefix(head) else { return false };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// An HTTP status filter: a code (`404`) or a prefix (`5+`, `40+`), as Hubble's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPattern {
    prefix: String,
    exact: bool,
}

pub fn parse_http_status(value: &str) -> Result<StatusPattern, FilterError> {
    let (prefix, exact) = match value.strip_suffix('+') {
        Some(prefix) => (prefix, false),
        None => (value, true),
    };
    let digits = prefix.bytes().all(|b| b.is_ascii_digit());
    let valid = digits && if exact { prefix.len() == 3 } else { (1..=3).contains(&prefix.len()) };
    if !valid || !prefix.starts_with(['1', '2', '3', '4', '5']) {
        return Err(FilterError::HttpStatus(value.to_owned()));
    }
    Ok(StatusPattern { prefix: prefix.to_owned(), exact })
}

impl StatusPattern {
    fn matches(&self, code: u16) -> bool {
        let code = code.to_string();
        if self.exact { code == self.prefix } else { code.starts_with(&self.prefix) }
    }
}

/// An HTTP method (a token, RFC 9110), matched without regard to case.
pub fn parse_http_method(value: &str) -> Result<String, FilterError> {
    let token =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token { Ok(value.to_ascii_uppercase()) } else { Err(FilterError::HttpMethod(value.to_owned())) }
}

/// A regular expression found anywhere in the path or URL (RE2 syntax, bounded in size).
pub fn parse_http_regex(value: &str) -> Result<Regex, FilterError> {
    mesh_common::http_route::search_regex(value).map_err(FilterError::Regex)
}

/// A W3C trace id: 32 hexadecimal digits (matched in lowercase, as `traceparent` carries it).
pub fn parse_trace_id(value: &str) -> Result<String, FilterError> {
    if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(FilterError::TraceId(value.to_owned()))
    }
}

/// One compiled `FlowFilter`.
#[derive(Debug, Default)]
pub struct Filter {
    source_ip: Vec<Ipv4Net>,
    destination_ip: Vec<Ipv4Net>,
    source_pod: Vec<NamePattern>,
    destination_pod: Vec<NamePattern>,
    source_label: Vec<Vec<Requirement>>,
    destination_label: Vec<Vec<Requirement>>,
    source_service: Vec<NamePattern>,
    destination_service: Vec<NamePattern>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    traffic_direction: Vec<i32>,
    verdict: Vec<i32>,
    drop_reason_desc: Vec<i32>,
    protocol: Vec<u8>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    tcp_flags: Vec<u16>,
    node_name: Vec<String>,
    reply: Vec<bool>,
    event_type: Vec<(i32, Option<i32>)>,
    encrypted: Vec<bool>,
    http_status: Vec<StatusPattern>,
    http_method: Vec<String>,
    http_path: Vec<Regex>,
    http_url: Vec<Regex>,
    trace_id: Vec<String>,
}

impl Filter {
    pub fn compile(f: &FlowFilter) -> Result<Self, FilterError> {
        let unsupported: [(&'static str, bool); 12] = [
            ("uuid", !f.uuid.is_empty()),
            ("source_ip_xlated", !f.source_ip_xlated.is_empty()),
            ("source_fqdn", !f.source_fqdn.is_empty()),
            ("destination_fqdn", !f.destination_fqdn.is_empty()),
            ("source_workload", !f.source_workload.is_empty()),
            ("destination_workload", !f.destination_workload.is_empty()),
            ("interface", !f.interface.is_empty()),
            ("dns_query", !f.dns_query.is_empty()),
            ("http_header", !f.http_header.is_empty()),
            ("node_labels", !f.node_labels.is_empty()),
            ("ip_trace_id", !f.ip_trace_id.is_empty()),
            ("ip_version (only IPv4 flows exist)", f.ip_version.iter().any(|v| *v != 1)),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(FilterError::Unsupported(field));
        }
        let ips = |v: &[String]| v.iter().map(|s| parse_ip(s)).collect::<Result<Vec<_>, _>>();
        let names = |v: &[String]| v.iter().map(|s| parse_name(s)).collect::<Result<Vec<_>, _>>();
        let selectors = |v: &[String]| v.iter().map(|s| parse_selector(s)).collect::<Result<Vec<_>, _>>();
        let ports = |v: &[String]| v.iter().map(|s| parse_port(s)).collect::<Result<Vec<_>, _>>();
        let flag_bits = |t: &mesh_common::hubble::flow::TcpFlags| {
            [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr, t.ns]
                .iter()
                .enumerate()
                .fold(0u16, |bits, (i, set)| if *set { bits | (1 << i) } else { bits })
        };
        Ok(Self {
            source_ip: ips(&f.source_ip).map_err(at("source_ip"))?,
            destination_ip: ips(&f.destination_ip).map_err(at("destination_ip"))?,
            source_pod: names(&f.source_pod).map_err(at("source_pod"))?,
            destination_pod: names(&f.destination_pod).map_err(at("destination_pod"))?,
            source_label: selectors(&f.source_label).map_err(at("source_label"))?,
            destination_label: selectors(&f.destination_label).map_err(at("destination_label"))?,
            source_service: names(&f.source_service).map_err(at("source_service"))?,
            destination_service: names(&f.destination_service).map_err(at("destination_service"))?,
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            traffic_direction: f.traffic_direction.clone(),
            verdict: f.verdict.clone(),
            drop_reason_desc: f.drop_reason_desc.clone(),
            protocol: f.protocol.iter().map(|p| parse_protocol(p)).collect::<Result<_, _>>().map_err(at("protocol"))?,
            source_port: ports(&f.source_port).map_err(at("source_port"))?,
            destination_port: ports(&f.destination_port).map_err(at("destination_port"))?,
            tcp_flags: f.tcp_flags.iter().map(flag_bits).collect(),
            node_name: f
                .node_name
                .iter()
                .map(|n| parse_node_name(n))
                .collect::<Result<_, _>>()
                .map_err(at("node_name"))?,
            reply: f.reply.clone(),
            event_type: f.event_type.iter().map(|t| (t.r#type, t.match_sub_type.then_some(t.sub_type))).collect(),
            encrypted: f.encrypted.clone(),
            http_status: f
                .http_status_code
                .iter()
                .map(|c| parse_http_status(c))
                .collect::<Result<_, _>>()
                .map_err(at("http_status_code"))?,
            http_method: f
                .http_method
                .iter()
                .map(|m| parse_http_method(m))
                .collect::<Result<_, _>>()
                .map_err(at("http_method"))?,
            http_path: f
                .http_path
                .iter()
                .map(|p| parse_http_regex(p))
                .collect::<Result<_, _>>()
                .map_err(at("http_path"))?,
            http_url: f
                .http_url
                .iter()
                .map(|u| parse_http_regex(u))
                .collect::<Result<_, _>>()
                .map_err(at("http_url"))?,
            trace_id: f.trace_id.iter().map(|t| parse_trace_id(t)).collect::<Result<_, _>>().map_err(at("trace_id"))?,
        })
    }

    pub fn matches(&self, v: &FlowView<'_>) -> bool {
        fn any<T>(values: &[T], matches: impl Fn(&T) -> bool) -> bool {
            values.is_empty() || values.iter().any(matches)
        }
        let e = &v.record.event;
        let pod = |p: &NamePattern, ep: Option<&EndpointInfo>| ep.is_some_and(|ep| p.matches(&ep.namespace, &ep.pod));
        any(&self.source_ip, |n| n.contains(&v.source_ip))
            && any(&self.destination_ip, |n| n.contains(&v.destination_ip))
            && any(&self.source_pod, |p| pod(p, v.source))
            && any(&self.destination_pod, |p| pod(p, v.destination))
            && any(&self.source_label, |s| selector_matches(s, v.source))
            && any(&self.destination_label, |s| selector_matches(s, v.destination))
            // No flow has a source service: requests go to services, not from them.
            && self.source_service.is_empty()
            && any(&self.destination_service, |p| {
                v.destination_service.is_some_and(|s| p.matches(&s.namespace, &s.name))
            })
            && any(&self.source_identity, |id| v.source.is_some_and(|ep| ep.identity == *id))
            && any(&self.destination_identity, |id| v.destination.is_some_and(|ep| ep.identity == *id))
            && any(&self.traffic_direction, |d| *d == v.traffic_direction && *d != traffic_direction::UNKNOWN)
            && any(&self.verdict, |x| *x == v.verdict)
            && any(&self.drop_reason_desc, |r| {
                v.verdict == super::view::verdict::DROPPED && *r as u32 == v.drop_reason
            })
            && any(&self.protocol, |p| *p == e.proto)
            && any(&self.source_port, |p| *p == v.source_port && e.proto != proto::ICMP)
            && any(&self.destination_port, |p| *p == v.destination_port && e.proto != proto::ICMP)
            && any(&self.tcp_flags, |bits| e.proto == proto::TCP && u16::from(e.tcp_flags) & bits == *bits)
            && any(&self.node_name, |n| glob(n, &v.node_name.to_ascii_lowercase()))
            && any(&self.reply, |r| v.is_reply == Some(*r))
            && any(&self.encrypted, |x| *x == v.encrypted)
            // Status codes are the responses'; the rest match a request and its response.
            && any(&self.http_status, |c| {
                v.http.is_some_and(|(h, t)| t == super::view::l7_type::RESPONSE && c.matches(h.code))
            })
            && any(&self.http_method, |m| v.http.is_some_and(|(h, _)| h.method.eq_ignore_ascii_case(m)))
            && any(&self.http_path, |re| v.http.is_some_and(|(h, _)| re.is_match(h.path())))
            && any(&self.http_url, |re| v.http.is_some_and(|(h, _)| re.is_match(&h.url)))
            && any(&self.trace_id, |id| v.http.is_some_and(|(h, _)| h.trace_id == *id))
            && any(&self.event_type, |(t, sub)| {
                *t as u32 == v.event_type.0 && sub.is_none_or(|s| s as u32 == v.event_type.1)
            })
    }
}

/// The allow and deny lists of a request.
#[derive(Debug, Default)]
pub struct Filters {
    allow: Vec<Filter>,
    deny: Vec<Filter>,
}

impl Filters {
    pub fn compile(allow: &[FlowFilter], deny: &[FlowFilter]) -> Result<Self, FilterError> {
        Ok(Self {
            allow: allow.iter().map(Filter::compile).collect::<Result<_, _>>()?,
            deny: deny.iter().map(Filter::compile).collect::<Result<_, _>>()?,
        })
    }

    pub fn matches(&self, v: &FlowView<'_>) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|f| f.matches(v))) && !self.deny.iter().any(|f| f.matches(v))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn names_follow_hubble() {
        assert_eq!(parse_name("web").unwrap(), NamePattern { namespace: "default".into(), prefix: "web".into() });
        assert_eq!(parse_name("demo/").unwrap(), NamePattern { namespace: "demo".into(), prefix: String::new() });
        assert_eq!(parse_name("/web").unwrap(), NamePattern { namespace: String::new(), prefix: "web".into() });
        assert!(parse_name("a/b/c").is_err());
        assert!(parse_name("").is_err());
    }

    #[test]
    fn ips_and_prefixes() {
        let net = parse_ip("10.244.1.0/24").unwrap();
        assert!(net.contains(&"10.244.1.7".parse::<Ipv4Addr>().unwrap()));
        assert!(!net.contains(&"10.244.2.7".parse::<Ipv4Addr>().unwrap()));
        assert!(parse_ip("10.244.1.0/33").is_err());
        assert!(parse_ip("10.244.1.300").is_err());
        assert!(parse_ip("0.0.0.0/0").unwrap().contains(&"1.2.3.4".parse::<Ipv4Addr>().unwrap()));
    }

    #[test]
    fn selectors() {
        let s = parse_selector("k8s:app=web,tier in (a, b),!legacy").unwrap();
        assert_eq!(
            s,
            vec![
                Requirement::Equals("app".into(), "web".into()),
                Requirement::In("tier".into(), vec!["a".into(), "b".into()]),
                Requirement::NotExists("legacy".into()),
            ]
        );
        assert!(parse_selector("app=(").is_err());
        assert!(parse_selector("a b").is_err());
        assert!(parse_selector("=x").is_err());
    }

    #[test]
    fn tcp_flags_and_globs() {
        assert_eq!(parse_tcp_flags("syn,ACK").unwrap(), 0x12);
        assert_eq!(parse_tcp_flags("syn,").unwrap_err(), FilterError::TcpFlag(String::new()));
        assert!(glob("node-*", "node-1"));
        assert!(!glob("node-*", "other"));
        assert!(glob("*", "anything"));
        assert_eq!(parse_node_name("kind/node-1").unwrap(), "node-1");
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let f = FlowFilter { dns_query: vec!["web".into()], ..FlowFilter::default() };
        assert_eq!(Filter::compile(&f).unwrap_err(), FilterError::Unsupported("dns_query"));
    }

    #[test]
    fn http_filters_follow_hubble() {
        let status = |v: &str| parse_http_status(v).map(|p| (p.matches(404), p.matches(503), p.matches(200)));
        assert_eq!(status("404"), Ok((true, false, false)));
        assert_eq!(status("5+"), Ok((false, true, false)));
        assert_eq!(status("40+"), Ok((true, false, false)));
        for bad in ["4", "4040", "+", "6+", "abc", "40x", ""] {
            assert_eq!(parse_http_status(bad), Err(FilterError::HttpStatus(bad.to_owned())), "{bad}");
        }
        assert_eq!(parse_http_method("get").unwrap(), "GET");
        assert!(parse_http_method("GE T").is_err());
        assert!(parse_http_regex("^/api/v[0-9]+").unwrap().is_match("/api/v2/x"));
        assert!(parse_http_regex("(").is_err());
        assert_eq!(parse_trace_id(&"A".repeat(32)).unwrap(), "a".repeat(32));
        assert!(parse_trace_id("abc").is_err());
        let f = FlowFilter { http_status_code: vec!["2xx".into()], ..FlowFilter::default() };
        let err = Filter::compile(&f).unwrap_err().to_string();
        assert!(err.starts_with("filter field http_status_code: ") && err.contains("2xx"), "{err}");
    }
}
