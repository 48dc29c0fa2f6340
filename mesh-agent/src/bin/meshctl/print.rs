//! `meshctl observe` outputs, in `hubble observe`'s formats: `compact` (one line per flow,
//! coloured on a terminal), `json` (each `GetFlowsResponse` as protojson with proto field
//! names, as `hubble observe -o json`), `dict` and `table`.

// `Summary` and `drop_reason` are deprecated in Hubble's proto, yet Hubble still fills and
// prints them; so do we.
#![allow(deprecated)]

use std::io::Write;

use mesh_common::{
    api::FlowDetails,
    hubble::{
        flow::{self, Flow, LostEvent, layer4::Protocol},
        observer::{GetFlowsResponse, get_flows_response::ResponseTypes},
    },
};
use prost::Message as _;
use serde_json::{Map, Value, json};

use mesh_agent::flows::time::civil;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Compact,
    Json,
    Jsonpb,
    Dict,
    Table,
}

pub struct Printer {
    pub output: Output,
    pub color: bool,
    pub node_name: bool,
    /// Table rows, written at the end.
    rows: Vec<[String; 7]>,
    printed: usize,
}

const RESET: &str = "\x1b[0m";
const CYAN: &str = "\x1b[36m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";

impl Printer {
    pub fn new(output: Output, color: bool, node_name: bool) -> Self {
        Self { output, color: color && output != Output::Table, node_name, rows: Vec::new(), printed: 0 }
    }

    pub fn write(&mut self, out: &mut impl Write, response: &GetFlowsResponse) -> std::io::Result<()> {
        if matches!(self.output, Output::Json | Output::Jsonpb) {
            return writeln!(out, "{}", response_json(response));
        }
        match &response.response_types {
            Some(ResponseTypes::Flow(flow)) => self.flow(out, flow),
            Some(ResponseTypes::LostEvents(lost)) => self.lost(out, lost, response),
            _ => Ok(()),
        }
    }

    fn lost(&mut self, out: &mut impl Write, lost: &LostEvent, response: &GetFlowsResponse) -> std::io::Result<()> {
        let source = flow::LostEventSource::try_from(lost.source).map_or("UNKNOWN", |s| s.as_str_name());
        let time = response.time.as_ref().map_or("N/A".to_owned(), timestamp);
        writeln!(out, "{time} EVENTS LOST: {source} CPU(0) {}", lost.num_events_lost)
    }

    fn flow(&mut self, out: &mut impl Write, flow: &Flow) -> std::io::Result<()> {
        let time = flow.time.as_ref().map_or("N/A".to_owned(), timestamp);
        let (sport, dport) = ports(flow);
        let ip = flow.ip.clone().unwrap_or_default();
        let src_host = host(flow.source.as_ref(), None, &ip.source, sport);
        let dst_host = host(flow.destination.as_ref(), flow.destination_service.as_ref(), &ip.destination, dport);
        let kind = flow_kind(flow);
        let verdict = flow::Verdict::try_from(flow.verdict).map_or("VERDICT_UNKNOWN", |v| v.as_str_name());
        let summary = flow.summary.clone();
        let node = if self.node_name { format!(" [{}]", flow.node_name) } else { String::new() };
        match self.output {
            Output::Compact => {
                let arrow = match flow.is_reply {
                    None => "<>",
                    Some(true) => "<-",
                    Some(false) => "->",
                };
                let paint = |text: &str, color: &str| {
                    if self.color { format!("{color}{text}{RESET}") } else { text.to_owned() }
                };
                let endpoint = |(name, port): &(String, String), identity: String| {
                    let hostport = if port.is_empty() {
                        paint(name, CYAN)
                    } else if self.color {
                        format!("{CYAN}{name}:{YELLOW}{port}{RESET}{RESET}")
                    } else {
                        format!("{name}:{port}")
                    };
                    format!("{hostport} {}", paint(&identity, MAGENTA))
                };
                let verdict_color = match verdict {
                    "FORWARDED" | "REDIRECTED" => GREEN,
                    "DROPPED" | "ERROR" => RED,
                    _ => YELLOW,
                };
                let mut ends = [
                    endpoint(&src_host, identity(flow.source.as_ref())),
                    endpoint(&dst_host, identity(flow.destination.as_ref())),
                ];
                if flow.is_reply == Some(true) {
                    // As hubble prints a reply: the original direction's ends, the arrow back.
                    ends.swap(0, 1);
                }
                let [first, second] = ends;
                writeln!(
                    out,
                    "{time}{node}: {first} {arrow} {second} {kind} {}{} ({summary})",
                    paint(verdict, verdict_color),
                    tunnel(flow),
                )
            }
            Output::Dict => {
                if self.printed > 0 {
                    writeln!(out, "------------")?;
                }
                self.printed += 1;
                writeln!(out, "  TIMESTAMP: {time}")?;
                if self.node_name {
                    writeln!(out, "       NODE: {}", flow.node_name)?;
                }
                writeln!(out, "     SOURCE: {}", join(&src_host))?;
                writeln!(out, "DESTINATION: {}", join(&dst_host))?;
                writeln!(out, "       TYPE: {kind}")?;
                writeln!(out, "    VERDICT: {verdict}")?;
                if flow.ip.as_ref().is_some_and(|ip| ip.encrypted) {
                    writeln!(out, "     TUNNEL:{}", tunnel(flow))?;
                }
                writeln!(out, "    SUMMARY: {summary}")
            }
            Output::Table => {
                self.rows.push([
                    time,
                    flow.node_name.clone(),
                    join(&src_host),
                    join(&dst_host),
                    kind,
                    verdict.to_owned(),
                    summary,
                ]);
                Ok(())
            }
            Output::Json | Output::Jsonpb => unreachable!("handled above"),
        }
    }

    /// Writes what is buffered (the table).
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.output != Output::Table {
            return Ok(());
        }
        let mut header = vec!["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"];
        let mut rows: Vec<Vec<String>> = self.rows.iter().map(|r| r.to_vec()).collect();
        if !self.node_name {
            header.remove(1);
            rows.iter_mut().for_each(|r| drop(r.remove(1)));
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let last = cells.len() - 1;
            cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| if i == last { c } else { format!("{c:<width$}   ", width = widths[i]) })
                .collect::<String>()
        };
        writeln!(out, "{}", line(header.iter().map(|h| (*h).to_owned()).collect()))?;
        for row in rows {
            writeln!(out, "{}", line(row))?;
        }
        self.rows.clear();
        Ok(())
    }
}

fn join((name, port): &(String, String)) -> String {
    if port.is_empty() { name.clone() } else { format!("{name}:{port}") }
}

/// Hubble's `Jan _2 15:04:05.000`, UTC.
fn timestamp(ts: &prost_types::Timestamp) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (_, month, day, h, m, s) = civil(ts.seconds);
    format!("{} {day:>2} {h:02}:{m:02}:{s:02}.{:03}", MONTHS[(month - 1) as usize], ts.nanos / 1_000_000)
}

fn ports(flow: &Flow) -> (u32, u32) {
    match flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => (u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => (s.source_port, s.destination_port),
        _ => (0, 0),
    }
}

/// The name of an end: its pod, else its service, else its address; and its port.
fn host(endpoint: Option<&flow::Endpoint>, service: Option<&flow::Service>, ip: &str, port: u32) -> (String, String) {
    let name = match (endpoint, service) {
        (Some(ep), _) if !ep.pod_name.is_empty() => format!("{}/{}", ep.namespace, ep.pod_name),
        (_, Some(svc)) if !svc.name.is_empty() => format!("{}/{}", svc.namespace, svc.name),
        _ => ip.to_owned(),
    };
    (name, if port == 0 { String::new() } else { port.to_string() })
}

/// For a flow through the mutual-TLS tunnel, ` mTLS <client> => <server>`: both workload
/// identities (namespace/service account, from the endpoints' service-account labels); else
/// nothing.
fn tunnel(flow: &Flow) -> String {
    if !flow.ip.as_ref().is_some_and(|ip| ip.encrypted) {
        return String::new();
    }
    let account = |ep: Option<&flow::Endpoint>| {
        ep.and_then(|ep| {
            use mesh_agent::flows::directory::{K8S_SOURCE, SERVICE_ACCOUNT_LABEL};
            let prefix = format!("{K8S_SOURCE}{SERVICE_ACCOUNT_LABEL}=");
            let sa = ep.labels.iter().find_map(|l| l.strip_prefix(prefix.as_str()))?;
            Some(format!("{}/{sa}", ep.namespace))
        })
        .unwrap_or_else(|| "?".to_owned())
    };
    format!(" mTLS {} => {}", account(flow.source.as_ref()), account(flow.destination.as_ref()))
}

fn identity(endpoint: Option<&flow::Endpoint>) -> String {
    match endpoint.map_or(0, |ep| ep.identity) {
        0 => "(unknown)".to_owned(),
        1 => "(host)".to_owned(),
        2 => "(world)".to_owned(),
        id => format!("(ID:{id})"),
    }
}

/// Hubble's text for the drop reasons this datapath gives.
pub fn drop_reason_text(code: u32) -> String {
    match code {
        133 => "Policy denied".to_owned(),
        134 => "Invalid packet".to_owned(),
        139 => "Unsupported L3 protocol".to_owned(),
        175 => "First logical datagram fragment not found".to_owned(),
        181 => "Policy denied by denylist".to_owned(),
        189 => "Authentication required".to_owned(),
        160 => "No tunnel or encapsulation endpoint".to_owned(),
        other => format!("{other}, 0"),
    }
}

/// The details our agent puts in `extensions`.
pub fn details(flow: &Flow) -> Option<FlowDetails> {
    let any = flow.extensions.as_ref()?;
    (any.type_url.ends_with("/mesh.v1.FlowDetails")).then(|| FlowDetails::decode(&any.value[..]).ok())?
}

/// The TYPE column: where it was seen, why it was dropped, or what the socket did.
fn flow_kind(flow: &Flow) -> String {
    let event = flow.event_type.unwrap_or_default();
    match event.r#type {
        1 => drop_reason_text(event.sub_type as u32),
        4 => match flow::TraceObservationPoint::try_from(flow.trace_observation_point) {
            Ok(flow::TraceObservationPoint::ToEndpoint) => "to-endpoint".to_owned(),
            Ok(flow::TraceObservationPoint::FromEndpoint) => "from-endpoint".to_owned(),
            _ => "trace".to_owned(),
        },
        7 => match flow.sock_xlate_point {
            1 => "pre-xlate-fwd".to_owned(),
            2 => "post-xlate-fwd".to_owned(),
            3 => "pre-xlate-rev".to_owned(),
            4 => "post-xlate-rev".to_owned(),
            _ => match details(flow).map(|d| d.event()) {
                Some(mesh_common::api::flow_details::Event::Established) => "sock-established".to_owned(),
                Some(mesh_common::api::flow_details::Event::Closed) => "sock-closed".to_owned(),
                _ => "sock".to_owned(),
            },
        },
        129 => {
            let l7 = flow.l7.as_ref();
            let kind = match l7.map(|l7| l7.r#type()) {
                Some(flow::L7FlowType::Request) => "request",
                Some(flow::L7FlowType::Response) => "response",
                Some(flow::L7FlowType::Sample) => "sample",
                _ => "l7",
            };
            match l7.and_then(|l7| l7.record.as_ref()) {
                Some(flow::layer7::Record::Http(_)) => format!("http-{kind}"),
                None => kind.to_owned(),
            }
        }
        _ => "UNKNOWN".to_owned(),
    }
}

/// protojson of a `GetFlowsResponse` with proto field names, as Hubble prints it.
pub fn response_json(response: &GetFlowsResponse) -> Value {
    let mut top = Map::new();
    match &response.response_types {
        Some(ResponseTypes::Flow(flow)) => {
            top.insert("flow".into(), flow_json(flow));
        }
        Some(ResponseTypes::LostEvents(lost)) => {
            let source =
                flow::LostEventSource::try_from(lost.source).map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name());
            top.insert(
                "lost_events".into(),
                json!({"source": source, "num_events_lost": lost.num_events_lost.to_string()}),
            );
        }
        _ => {}
    }
    if !response.node_name.is_empty() {
        top.insert("node_name".into(), json!(response.node_name));
    }
    if let Some(time) = &response.time {
        top.insert("time".into(), json!(rfc3339(time)));
    }
    Value::Object(top)
}

fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let (y, mo, d, h, mi, s) = civil(ts.seconds);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z", ts.nanos)
}

fn endpoint_json(ep: &flow::Endpoint) -> Value {
    let mut m = Map::new();
    if ep.identity != 0 {
        m.insert("identity".into(), json!(ep.identity));
    }
    if !ep.namespace.is_empty() {
        m.insert("namespace".into(), json!(ep.namespace));
    }
    if !ep.labels.is_empty() {
        m.insert("labels".into(), json!(ep.labels));
    }
    if !ep.pod_name.is_empty() {
        m.insert("pod_name".into(), json!(ep.pod_name));
    }
    if !ep.workloads.is_empty() {
        m.insert(
            "workloads".into(),
            json!(ep.workloads.iter().map(|w| json!({"name": w.name, "kind": w.kind})).collect::<Vec<_>>()),
        );
    }
    Value::Object(m)
}

fn flow_json(flow: &Flow) -> Value {
    let mut m = Map::new();
    if let Some(time) = &flow.time {
        m.insert("time".into(), json!(rfc3339(time)));
    }
    if !flow.uuid.is_empty() {
        m.insert("uuid".into(), json!(flow.uuid));
    }
    m.insert(
        "verdict".into(),
        json!(flow::Verdict::try_from(flow.verdict).map_or("VERDICT_UNKNOWN", |v| v.as_str_name())),
    );
    if flow.drop_reason != 0 {
        m.insert("drop_reason".into(), json!(flow.drop_reason));
    }
    if let Some(ip) = &flow.ip {
        let mut value = json!({"source": ip.source, "destination": ip.destination, "ipVersion": "IPv4"});
        if ip.encrypted {
            value["encrypted"] = json!(true);
        }
        m.insert("IP".into(), value);
    }
    if let Some(l4) = flow.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        let ports = |s: u32, d: u32| {
            let mut p = Map::new();
            if s != 0 {
                p.insert("source_port".into(), json!(s));
            }
            if d != 0 {
                p.insert("destination_port".into(), json!(d));
            }
            p
        };
        let value = match l4 {
            Protocol::Tcp(t) => {
                let mut p = ports(t.source_port, t.destination_port);
                if let Some(f) = &t.flags {
                    let mut flags = Map::new();
                    for (set, name) in [
                        (f.fin, "FIN"),
                        (f.syn, "SYN"),
                        (f.rst, "RST"),
                        (f.psh, "PSH"),
                        (f.ack, "ACK"),
                        (f.urg, "URG"),
                        (f.ece, "ECE"),
                        (f.cwr, "CWR"),
                        (f.ns, "NS"),
                    ] {
                        if set {
                            flags.insert(name.into(), json!(true));
                        }
                    }
                    p.insert("flags".into(), Value::Object(flags));
                }
                json!({"TCP": p})
            }
            Protocol::Udp(u) => json!({"UDP": ports(u.source_port, u.destination_port)}),
            Protocol::Sctp(s) => json!({"SCTP": ports(s.source_port, s.destination_port)}),
            _ => json!({}),
        };
        m.insert("l4".into(), value);
    }
    if let Some(ep) = &flow.source {
        m.insert("source".into(), endpoint_json(ep));
    }
    if let Some(l7) = &flow.l7 {
        let mut value = Map::new();
        value.insert("type".into(), json!(l7.r#type().as_str_name()));
        if l7.latency_ns != 0 {
            value.insert("latency_ns".into(), json!(l7.latency_ns.to_string()));
        }
        if let Some(flow::layer7::Record::Http(http)) = &l7.record {
            let mut h = Map::new();
            if http.code != 0 {
                h.insert("code".into(), json!(http.code));
            }
            h.insert("method".into(), json!(http.method));
            h.insert("url".into(), json!(http.url));
            h.insert("protocol".into(), json!(http.protocol));
            value.insert("http".into(), Value::Object(h));
        }
        m.insert("l7".into(), Value::Object(value));
    }
    if let Some(parent) = flow.trace_context.as_ref().and_then(|t| t.parent.as_ref()) {
        m.insert("trace_context".into(), json!({"parent": {"trace_id": parent.trace_id}}));
    }
    if let Some(ep) = &flow.destination {
        m.insert("destination".into(), endpoint_json(ep));
    }
    m.insert("Type".into(), json!(flow::FlowType::try_from(flow.r#type).map_or("UNKNOWN_TYPE", |t| t.as_str_name())));
    if !flow.node_name.is_empty() {
        m.insert("node_name".into(), json!(flow.node_name));
    }
    if let Some(e) = &flow.event_type {
        let mut t = Map::new();
        t.insert("type".into(), json!(e.r#type));
        if e.sub_type != 0 {
            t.insert("sub_type".into(), json!(e.sub_type));
        }
        m.insert("event_type".into(), Value::Object(t));
    }
    if let Some(s) = &flow.destination_service {
        m.insert("destination_service".into(), json!({"name": s.name, "namespace": s.namespace}));
    }
    if flow.traffic_direction != 0 {
        m.insert(
            "traffic_direction".into(),
            json!(
                flow::TrafficDirection::try_from(flow.traffic_direction)
                    .map_or("TRAFFIC_DIRECTION_UNKNOWN", |d| d.as_str_name())
            ),
        );
    }
    if flow.trace_observation_point != 0 {
        m.insert(
            "trace_observation_point".into(),
            json!(
                flow::TraceObservationPoint::try_from(flow.trace_observation_point)
                    .map_or("UNKNOWN_POINT", |p| p.as_str_name())
            ),
        );
    }
    if flow.drop_reason_desc != 0 {
        m.insert(
            "drop_reason_desc".into(),
            json!(flow::DropReason::try_from(flow.drop_reason_desc).map_or("DROP_REASON_UNKNOWN", |r| r.as_str_name())),
        );
    }
    if let Some(reply) = flow.is_reply {
        m.insert("is_reply".into(), json!(reply));
    }
    if flow.sock_xlate_point != 0 {
        m.insert(
            "sock_xlate_point".into(),
            json!(
                flow::SocketTranslationPoint::try_from(flow.sock_xlate_point)
                    .map_or("SOCK_XLATE_POINT_UNKNOWN", |p| p.as_str_name())
            ),
        );
    }
    if flow.socket_cookie != 0 {
        m.insert("socket_cookie".into(), json!(flow.socket_cookie.to_string()));
    }
    if flow.auth_type != 0 {
        let name = flow::AuthType::try_from(flow.auth_type).map_or("DISABLED", |a| a.as_str_name());
        m.insert("auth_type".into(), json!(name));
    }
    if !flow.summary.is_empty() {
        m.insert("Summary".into(), json!(flow.summary));
    }
    if let Some(d) = details(flow) {
        let mut x = Map::new();
        x.insert("@type".into(), json!("type.googleapis.com/mesh.v1.FlowDetails"));
        x.insert("event".into(), json!(d.event().as_str_name()));
        for (name, value) in [
            ("packets", d.packets),
            ("bytes", d.bytes),
            ("reply_packets", d.reply_packets),
            ("reply_bytes", d.reply_bytes),
        ] {
            if value != 0 {
                x.insert(name.into(), json!(value.to_string()));
            }
        }
        if d.srtt_us != 0 {
            x.insert("srtt_us".into(), json!(d.srtt_us));
        }
        if d.retransmits != 0 {
            x.insert("retransmits".into(), json!(d.retransmits));
        }
        for (name, value) in
            [("rule", &d.rule), ("route", &d.route), ("route_rule", &d.route_rule), ("backend", &d.backend)]
        {
            if !value.is_empty() {
                x.insert(name.into(), json!(value));
            }
        }
        m.insert("extensions".into(), Value::Object(x));
    }
    let policies = |ps: &[flow::Policy]| {
        json!(ps.iter().map(|p| json!({"name": p.name, "namespace": p.namespace, "kind": p.kind})).collect::<Vec<_>>())
    };
    for (name, list) in [
        ("egress_allowed_by", &flow.egress_allowed_by),
        ("ingress_allowed_by", &flow.ingress_allowed_by),
        ("egress_denied_by", &flow.egress_denied_by),
        ("ingress_denied_by", &flow.ingress_denied_by),
    ] {
        if !list.is_empty() {
            m.insert(name.into(), policies(list));
        }
    }
    Value::Object(m)
}
