//! A flow as Hubble sees it: a [`Record`] with its names looked up and its Hubble fields
//! (verdict, type, observation point, direction) worked out. Filters and the encoder read it.

use std::net::Ipv4Addr;

use mesh_common::{
    flows::{CLOSED, ESTABLISHED, FLOW_DROP, FLOW_END, FLOW_START, L7_REQUEST, L7_RESPONSE, TRANSLATED},
    policy::{AUDIT, DENY, EGRESS, INGRESS},
};

use super::{
    Record,
    directory::{Directory, EndpointInfo, PolicyInfo, ServiceInfo},
    http::HttpExchange,
};

/// `flow.Verdict` values.
pub mod verdict {
    pub const FORWARDED: i32 = 1;
    pub const DROPPED: i32 = 2;
    pub const AUDIT: i32 = 4;
    pub const TRACED: i32 = 6;
    pub const TRANSLATED: i32 = 7;
}

/// `flow.FlowType` values.
pub mod flow_type {
    pub const L3_L4: i32 = 1;
    pub const L7: i32 = 2;
    pub const SOCK: i32 = 3;
}

/// `flow.TrafficDirection` values.
pub mod traffic_direction {
    pub const UNKNOWN: i32 = 0;
    pub const INGRESS: i32 = 1;
    pub const EGRESS: i32 = 2;
}

/// `flow.TraceObservationPoint` values, and Cilium's raw trace points (`event_type.sub_type`).
pub mod observation {
    pub const UNKNOWN: i32 = 0;
    pub const FROM_ENDPOINT: i32 = 5;
    pub const TO_ENDPOINT: i32 = 101;
    pub const RAW_TO_ENDPOINT: u32 = 0;
    pub const RAW_FROM_ENDPOINT: u32 = 5;
}

/// Cilium's monitor message types (`event_type.type`).
pub mod event_type {
    pub const DROP: u32 = 1;
    pub const TRACE: u32 = 4;
    pub const TRACE_SOCK: u32 = 7;
    /// An L7 proxy's record (Cilium's `MessageTypeAccessLog`).
    pub const ACCESS_LOG: u32 = 129;
}

/// `flow.L7FlowType` values.
pub mod l7_type {
    pub const REQUEST: i32 = 1;
    pub const RESPONSE: i32 = 2;
}

/// `flow.SocketTranslationPoint`: after the forward translation.
pub const SOCK_XLATE_POST_DIRECTION_FWD: i32 = 2;

/// One flow, named.
pub struct FlowView<'a> {
    pub record: &'a Record,
    pub verdict: i32,
    pub flow_type: i32,
    pub source: Option<&'a EndpointInfo>,
    pub destination: Option<&'a EndpointInfo>,
    pub source_ip: Ipv4Addr,
    pub destination_ip: Ipv4Addr,
    /// Host order.
    pub source_port: u16,
    pub destination_port: u16,
    pub destination_service: Option<&'a ServiceInfo>,
    pub policy: Option<&'a PolicyInfo>,
    pub traffic_direction: i32,
    pub observation_point: i32,
    /// (`type`, `sub_type`) of `event_type`.
    pub event_type: (u32, u32),
    /// `is_reply`: known (false) for TC events, unknown for socket events.
    pub is_reply: Option<bool>,
    pub drop_reason: u32,
    pub node_name: &'a str,
    /// Carried by the mutual-TLS tunnel (`IP.encrypted`, `auth_type`).
    pub encrypted: bool,
    /// An L7 proxy's flow: its request (and `l7_type`, request or response).
    pub http: Option<(&'a HttpExchange, i32)>,
}

impl<'a> FlowView<'a> {
    pub fn new(record: &'a Record, directory: &'a Directory) -> Self {
        let e = &record.event;
        let (source_ip, destination_ip) =
            (Ipv4Addr::from(u32::from_be(e.saddr)), Ipv4Addr::from(u32::from_be(e.daddr)));
        let tc = matches!(e.kind, FLOW_START | FLOW_DROP | FLOW_END);
        let l7 = matches!(e.kind, L7_REQUEST | L7_RESPONSE);
        let verdict = match e.kind {
            L7_REQUEST | L7_RESPONSE if e.action == DENY => verdict::DROPPED,
            L7_REQUEST | L7_RESPONSE => verdict::FORWARDED,
            FLOW_DROP => verdict::DROPPED,
            FLOW_START | FLOW_END if e.action == AUDIT => verdict::AUDIT,
            FLOW_START | FLOW_END if e.action == DENY => verdict::DROPPED,
            FLOW_START | FLOW_END => verdict::FORWARDED,
            TRANSLATED => verdict::TRANSLATED,
            ESTABLISHED | CLOSED => verdict::TRACED,
            _ => 0,
        };
        let (traffic_direction, observation_point, raw_point) = match (tc, e.direction) {
            // The route proxy runs on the client's node: its flows leave the client; the
            // requests judged at the destination's node (HTTP rules) come in to the pod.
            (false, INGRESS) if l7 => (traffic_direction::INGRESS, observation::UNKNOWN, 0),
            (false, _) if l7 => (traffic_direction::EGRESS, observation::UNKNOWN, 0),
            // Socket events: the pod's side, as the program knew it (a close it did not
            // translate is unknown).
            (false, INGRESS) => (traffic_direction::INGRESS, observation::UNKNOWN, 0),
            (false, EGRESS) => (traffic_direction::EGRESS, observation::UNKNOWN, 0),
            (false, _) => (traffic_direction::UNKNOWN, observation::UNKNOWN, 0),
            (true, INGRESS) => (traffic_direction::INGRESS, observation::TO_ENDPOINT, observation::RAW_TO_ENDPOINT),
            (true, _) => (traffic_direction::EGRESS, observation::FROM_ENDPOINT, observation::RAW_FROM_ENDPOINT),
        };
        let event_type = match e.kind {
            FLOW_DROP => (event_type::DROP, u32::from(e.reason)),
            _ if l7 => (event_type::ACCESS_LOG, 0),
            _ if tc => (event_type::TRACE, raw_point),
            _ => (event_type::TRACE_SOCK, 0),
        };
        let destination_service = if e.kind == L7_RESPONSE {
            None // from the backend (or the proxy) back to the client
        } else if e.svc_addr != 0 {
            directory.service(e.svc_addr, e.svc_port, e.proto)
        } else {
            // Traffic sent to a service address itself (not translated at the socket).
            directory.service(e.daddr, e.dport, e.proto)
        };
        Self {
            record,
            verdict,
            flow_type: match (tc, l7) {
                (true, _) => flow_type::L3_L4,
                (_, true) => flow_type::L7,
                _ => flow_type::SOCK,
            },
            source: directory.endpoint(e.saddr),
            destination: directory.endpoint(e.daddr),
            source_ip,
            destination_ip,
            source_port: u16::from_be(e.sport),
            destination_port: u16::from_be(e.dport),
            destination_service,
            policy: if tc && e.rule != 0 { directory.policy(e.rule) } else { None },
            traffic_direction,
            observation_point,
            event_type,
            is_reply: if l7 { Some(e.kind == L7_RESPONSE) } else { tc.then_some(false) },
            drop_reason: if e.kind == FLOW_DROP { u32::from(e.reason) } else { 0 },
            node_name: &directory.node_name,
            encrypted: e.auth == mesh_common::flows::AUTH_MTLS,
            http: record
                .http
                .as_deref()
                .filter(|_| l7)
                .map(|exchange| (exchange, if e.kind == L7_RESPONSE { l7_type::RESPONSE } else { l7_type::REQUEST })),
        }
    }
}

/// The `flow.DropReason` name of the reasons this datapath gives.
pub fn drop_reason_name(reason: u32) -> &'static str {
    match reason {
        133 => "POLICY_DENIED",
        134 => "INVALID_PACKET_DROPPED",
        139 => "UNSUPPORTED_L3_PROTOCOL",
        175 => "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
        158 => "SERVICE_BACKEND_NOT_FOUND",
        167 => "NO_MAPPING_FOR_NAT_MASQUERADE",
        169 => "FIB_LOOKUP_FAILED",
        177 => "DENIED_BY_LB_SRC_RANGE_CHECK",
        181 => "POLICY_DENY",
        189 => "AUTH_REQUIRED",
        160 => "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
        0 => "DROP_REASON_UNKNOWN",
        _ => "OTHER",
    }
}
