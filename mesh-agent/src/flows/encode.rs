//! Encoding a flow as Hubble's `observer.GetFlowsResponse`, by hand (see `pb`), with the
//! field numbers of Cilium's `flow.proto` and `observer.proto`.

use std::io::Write as _;

use mesh_common::{
    flows::{CLOSED, ESTABLISHED, FLOW_END, tcp_flags},
    policy::{EGRESS, INGRESS},
    proto,
};

use super::{
    http::HttpExchange,
    pb,
    view::{FlowView, l7_type},
};

/// `flow.AuthType.SPIRE`.
pub const AUTH_TYPE_SPIRE: u64 = 1;

/// `Flow.extensions` type URL of our `mesh.v1.FlowDetails`.
pub const FLOW_DETAILS_TYPE_URL: &str = "type.googleapis.com/mesh.v1.FlowDetails";

/// `GetFlowsResponse { flow = 1, node_name = 1000, time = 1001 }` for `view`, appended to
/// `buf`; with `details`, the flow's `extensions` too (`observer::FLOW_DETAILS_HEADER`).
pub fn response(buf: &mut Vec<u8>, view: &FlowView<'_>, details: bool) {
    pb::message(buf, 1, |buf| flow(buf, view, details));
    pb::bytes(buf, 1000, view.node_name.as_bytes());
    pb::timestamp(buf, 1001, view.record.unix_ns);
}

/// `GetFlowsResponse { lost_events = 3 { source = 1, num_events_lost = 2, cpu = 3 } }`.
pub fn lost_events(buf: &mut Vec<u8>, source: i32, lost: u64, node_name: &str, unix_ns: u64) {
    pb::message(buf, 3, |buf| {
        pb::varint(buf, 1, source as u64);
        pb::varint(buf, 2, lost);
    });
    pb::bytes(buf, 1000, node_name.as_bytes());
    pb::timestamp(buf, 1001, unix_ns);
}

fn flow(buf: &mut Vec<u8>, view: &FlowView<'_>, with_details: bool) {
    let e = &view.record.event;
    pb::timestamp(buf, 1, view.record.unix_ns);
    pb::varint(buf, 2, view.verdict as u64);
    pb::varint(buf, 3, u64::from(view.drop_reason));
    // IP { source = 1, destination = 2, ipVersion = 3, encrypted = 4 }
    pb::message(buf, 5, |buf| {
        let mut text = [0u8; 15];
        pb::bytes(buf, 1, ip_text(&mut text, view.source_ip));
        pb::bytes(buf, 2, ip_text(&mut text, view.destination_ip));
        pb::varint(buf, 3, 1);
        if view.encrypted {
            pb::varint(buf, 4, 1);
        }
    });
    // Layer4 { TCP = 1 { source_port = 1, destination_port = 2, flags = 3 }, UDP = 2, SCTP = 5 }
    let l4_tag = match e.proto {
        proto::TCP => Some(1),
        proto::UDP => Some(2),
        proto::SCTP => Some(5),
        _ => None,
    };
    if let Some(tag) = l4_tag {
        pb::message(buf, 6, |buf| {
            pb::message(buf, tag, |buf| {
                pb::varint(buf, 1, u64::from(view.source_port));
                pb::varint(buf, 2, u64::from(view.destination_port));
                if e.proto == proto::TCP && e.tcp_flags != 0 {
                    pb::message(buf, 3, |buf| {
                        for (bit, field) in TCP_FLAG_FIELDS {
                            if e.tcp_flags & bit != 0 {
                                pb::bool_always(buf, field, true);
                            }
                        }
                    });
                }
            });
        });
    }
    if let Some(source) = view.source {
        pb::raw(buf, 8, &source.encoded);
    }
    if let Some(destination) = view.destination {
        pb::raw(buf, 9, &destination.encoded);
    }
    if let Some((http, l7_type)) = view.http {
        layer7(buf, http, l7_type);
    }
    pb::varint(buf, 10, view.flow_type as u64);
    pb::bytes(buf, 11, view.node_name.as_bytes());
    // CiliumEventType { type = 1, sub_type = 2 }
    pb::message(buf, 19, |buf| {
        pb::varint(buf, 1, u64::from(view.event_type.0));
        pb::varint(buf, 2, u64::from(view.event_type.1));
    });
    if let Some(service) = view.destination_service {
        pb::raw(buf, 21, &service.encoded);
    }
    pb::varint(buf, 22, view.traffic_direction as u64);
    pb::varint(buf, 24, view.observation_point as u64);
    pb::varint(buf, 25, u64::from(view.drop_reason));
    if let Some(is_reply) = view.is_reply {
        // google.protobuf.BoolValue { value = 1 }: present, even when false.
        pb::message(buf, 26, |buf| pb::varint(buf, 1, u64::from(is_reply)));
    }
    if e.kind == mesh_common::flows::TRANSLATED {
        pb::varint(buf, 31, super::view::SOCK_XLATE_POST_DIRECTION_FWD as u64);
    }
    pb::varint(buf, 32, e.cookie);
    let mut uuid = [0u8; 36];
    pb::bytes(buf, 34, flow_uuid(&mut uuid, view.record.seq));
    if view.encrypted {
        // auth_type = SPIRE: Hubble's one value for SPIFFE mutual authentication (here the
        // tunnel's mutual TLS with workload certificates).
        pb::varint(buf, 35, AUTH_TYPE_SPIRE);
    }
    if let Some((http, _)) = view.http.filter(|(http, _)| !http.trace_id.is_empty()) {
        // TraceContext { parent = 1 { trace_id = 1 } }
        pb::message(buf, 30, |buf| pb::message(buf, 1, |buf| pb::bytes(buf, 1, http.trace_id.as_bytes())));
    }
    match view.http {
        Some((http, l7_type)) => pb::bytes(buf, 100_000, l7_summary(http, l7_type).as_bytes()),
        None => {
            let mut summary = [0u8; 160];
            pb::bytes(buf, 100_000, summary_text(&mut summary, view));
        }
    }
    // extensions = Any { type_url = 1, value = 2 } holding mesh.v1.FlowDetails.
    if with_details {
        pb::message(buf, 150_000, |buf| {
            pb::bytes(buf, 1, FLOW_DETAILS_TYPE_URL.as_bytes());
            pb::message(buf, 2, |buf| details(buf, view));
        });
    }
    // `*_denied_by` are, as in Cilium's flow.proto, the policies whose rules denied the flow: a
    // drop by default deny (the pod is isolated and no rule allowed it) names none there, as
    // Cilium's do not; the isolating policy is in the details' rule ("... isolation (default deny)").
    if let Some(policy) = view.policy.filter(|p| p.explicit || view.verdict == super::view::verdict::FORWARDED) {
        let denied = view.verdict == super::view::verdict::DROPPED || view.verdict == super::view::verdict::AUDIT;
        // egress_allowed_by 21001, ingress_allowed_by 21002, egress_denied_by 21004,
        // ingress_denied_by 21005.
        let tag = match (e.direction, denied) {
            (EGRESS, false) => 21_001,
            (INGRESS, false) => 21_002,
            (EGRESS, true) => 21_004,
            _ => 21_005,
        };
        pb::raw(buf, tag, &policy.encoded);
    }
}

/// Random for each run of the agent: flow UUIDs of two runs (or two agents) never meet.
fn run_id() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // std's hasher keys are random per process.
    *RUN.get_or_init(|| std::collections::hash_map::RandomState::new().build_hasher().finish())
}

/// `Flow.uuid`: a version-4-shaped UUID made of this run's random id and the flow's number, so
/// it is unique, the same every time the flow is sent, and costs no random draw per flow.
fn flow_uuid(buf: &mut [u8; 36], seq: u64) -> &[u8] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&run_id().to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    // The variant's two bits: the flow number's top two, which no agent reaches.
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[at] = b'-';
            at += 1;
        }
        buf[at] = HEX[usize::from(byte >> 4)];
        buf[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    &buf[..]
}

/// `mesh.v1.FlowDetails`.
fn details(buf: &mut Vec<u8>, view: &FlowView<'_>) {
    let e = &view.record.event;
    pb::varint(buf, 1, u64::from(e.kind));
    if e.kind == FLOW_END || e.kind == CLOSED {
        pb::varint(buf, 2, e.packets);
        pb::varint(buf, 3, e.bytes);
        pb::varint(buf, 4, e.reply_packets);
        pb::varint(buf, 5, e.reply_bytes);
    }
    if e.kind == ESTABLISHED || e.kind == CLOSED {
        pb::varint(buf, 6, u64::from(e.srtt_us));
        pb::varint(buf, 7, u64::from(e.retrans));
    }
    if let Some(policy) = view.policy {
        pb::bytes(buf, 8, policy.description.as_bytes());
    } else if let Some((http, _)) = view.http.filter(|(http, _)| !http.denied_by.is_empty()) {
        // A request an HTTP rule denied: that rule.
        pb::bytes(buf, 8, http.denied_by.as_bytes());
    }
    if let Some((http, _)) = view.http {
        pb::bytes(buf, 9, http.route.as_bytes());
        pb::bytes(buf, 10, http.rule.as_bytes());
        pb::bytes(buf, 11, http.backend.as_bytes());
    }
}

/// `Flow.l7`: `Layer7 { type = 1, latency_ns = 2, http = 101 { code = 1, method = 2, url = 3,
/// protocol = 4 } }`. Requests carry no code or latency, as Hubble's do not.
fn layer7(buf: &mut Vec<u8>, http: &HttpExchange, l7_type: i32) {
    let response = l7_type == l7_type::RESPONSE;
    pb::message(buf, 15, |buf| {
        pb::varint(buf, 1, l7_type as u64);
        if response {
            pb::varint(buf, 2, http.latency_ns);
        }
        pb::message(buf, 101, |buf| {
            if response {
                pb::varint(buf, 1, u64::from(http.code));
            }
            pb::bytes(buf, 2, http.method.as_bytes());
            pb::bytes(buf, 3, http.url.as_bytes());
            pb::bytes(buf, 4, http.protocol.as_bytes());
        });
    });
}

/// Hubble's summary of an HTTP record: `HTTP/1.1 GET http://web/` for a request,
/// `HTTP/1.1 200 3ms (GET http://web/)` for its response.
fn l7_summary(http: &HttpExchange, l7_type: i32) -> String {
    if l7_type == l7_type::RESPONSE {
        let ms = http.latency_ns / 1_000_000;
        format!("{} {} {ms}ms ({} {})", http.protocol, http.code, http.method, http.url)
    } else {
        format!("{} {} {}", http.protocol, http.method, http.url)
    }
}

/// TCP flag bits and their `flow.TCPFlags` fields.
const TCP_FLAG_FIELDS: [(u8, u32); 8] = [
    (tcp_flags::FIN, 1),
    (tcp_flags::SYN, 2),
    (tcp_flags::RST, 3),
    (tcp_flags::PSH, 4),
    (tcp_flags::ACK, 5),
    (tcp_flags::URG, 6),
    (tcp_flags::ECE, 7),
    (tcp_flags::CWR, 8),
];

/// Hubble's flag order in summaries.
const SUMMARY_FLAGS: [(u8, &str); 8] = [
    (tcp_flags::SYN, "SYN"),
    (tcp_flags::ACK, "ACK"),
    (tcp_flags::RST, "RST"),
    (tcp_flags::FIN, "FIN"),
    (tcp_flags::PSH, "PSH"),
    (tcp_flags::URG, "URG"),
    (tcp_flags::ECE, "ECE"),
    (tcp_flags::CWR, "CWR"),
];

/// The dotted quad of `ip`. By hand: through `fmt` it was a twentieth of the agent's CPU at
/// 1M flows a second (`cargo xtask bench flows`).
fn ip_text(buf: &mut [u8; 15], ip: std::net::Ipv4Addr) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    &buf[..len]
}

/// Hubble's summary (`TCP Flags: SYN, ACK`, `UDP`, `TCP`), then what our events add: a
/// flow's totals at its end, a connection's RTT.
fn summary_text<'b>(buf: &'b mut [u8; 160], view: &FlowView<'_>) -> &'b [u8] {
    let e = &view.record.event;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let tc = view.flow_type == super::view::flow_type::L3_L4;
    let _ = match e.proto {
        proto::TCP if tc && e.tcp_flags != 0 => {
            // Bytes copied, not formatted: every TC event of a TCP flow has flags.
            let _ = cursor.write_all(b"TCP Flags:");
            let mut first = true;
            for (bit, name) in SUMMARY_FLAGS {
                if e.tcp_flags & bit != 0 {
                    let _ = cursor.write_all(if first { b" " } else { b", " });
                    let _ = cursor.write_all(name.as_bytes());
                    first = false;
                }
            }
            Ok(())
        }
        proto::TCP => write!(cursor, "TCP"),
        proto::UDP => write!(cursor, "UDP"),
        proto::SCTP => write!(cursor, "SCTP"),
        other => write!(cursor, "IP protocol {other}"),
    };
    let _ = match e.kind {
        FLOW_END => write!(
            cursor,
            "; flow ended: {} packets/{} bytes sent, {} packets/{} bytes back",
            e.packets, e.bytes, e.reply_packets, e.reply_bytes
        ),
        mesh_common::flows::TRANSLATED => match view.destination_service {
            Some(service) => write!(
                cursor,
                "; service {}/{} {}:{}",
                service.namespace,
                service.name,
                std::net::Ipv4Addr::from(u32::from_be(e.svc_addr)),
                u16::from_be(e.svc_port)
            ),
            None => Ok(()),
        },
        ESTABLISHED => write!(cursor, "; established, RTT {} µs", e.srtt_us),
        CLOSED => write!(
            cursor,
            "; closed, RTT {} µs, {} retransmits, {} bytes sent, {} received",
            e.srtt_us, e.retrans, e.bytes, e.reply_bytes
        ),
        mesh_common::flows::FLOW_DROP if e.detail != 0 => {
            let failure = crate::tunnel::outbound::Failure::from_detail(e.detail);
            write!(cursor, "; tunnel: {}", failure.map_or("unknown failure", |f| f.as_str()))
        }
        _ => Ok(()),
    };
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    #[test]
    fn flow_uuids_are_unique_stable_and_shaped_as_version_4() {
        use super::flow_uuid;
        let (mut a, mut b) = ([0u8; 36], [0u8; 36]);
        let first = String::from_utf8(flow_uuid(&mut a, 1).to_vec()).unwrap();
        let again = String::from_utf8(flow_uuid(&mut b, 1).to_vec()).unwrap();
        let second = String::from_utf8(flow_uuid(&mut b, 2).to_vec()).unwrap();
        assert_eq!(first, again);
        assert_ne!(first, second);
        let groups: Vec<&str> = first.split('-').collect();
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{first}");
        assert!(groups[2].starts_with('4') && "89ab".contains(&groups[3][..1]), "{first}");
        assert!(first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{first}");
    }

    #[test]
    fn ip_text_is_the_dotted_quad() {
        let mut buf = [0u8; 15];
        // Every octet value in every position, and the widest and narrowest addresses.
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 9, 10),
                Ipv4Addr::new(99, octet, 100, 255),
                Ipv4Addr::new(1, 200, octet, 7),
                Ipv4Addr::new(255, 10, 0, octet),
            ] {
                assert_eq!(super::ip_text(&mut buf, ip), ip.to_string().as_bytes());
            }
        }
        assert_eq!(super::ip_text(&mut buf, Ipv4Addr::BROADCAST), b"255.255.255.255");
        assert_eq!(super::ip_text(&mut buf, Ipv4Addr::UNSPECIFIED), b"0.0.0.0");
    }

    #[test]
    fn the_summary_names_tcp_flags_in_hubbles_order() {
        use mesh_common::flows::{FLOW_START, FlowEvent, tcp_flags};

        use crate::flows::{Record, directory::Directory, view::FlowView};
        let directory = Directory::empty("node-0");
        let mut buf = [0u8; 160];
        let mut summary = |tcp_flags: u8, proto: u8| {
            let record = Record {
                event: FlowEvent { kind: FLOW_START, proto, tcp_flags, ..FlowEvent::default() },
                ..Record::default()
            };
            String::from_utf8(super::summary_text(&mut buf, &FlowView::new(&record, &directory)).to_vec()).unwrap()
        };
        assert_eq!(summary(tcp_flags::ACK | tcp_flags::SYN, mesh_common::proto::TCP), "TCP Flags: SYN, ACK");
        assert_eq!(
            summary(tcp_flags::FIN | tcp_flags::PSH | tcp_flags::ACK, mesh_common::proto::TCP),
            "TCP Flags: ACK, FIN, PSH"
        );
        assert_eq!(summary(0, mesh_common::proto::TCP), "TCP");
        assert_eq!(summary(0, mesh_common::proto::UDP), "UDP");
    }

    #[test]
    fn a_tunnelled_flow_is_encrypted_with_spiffe_authentication() {
        use mesh_common::{
            flows::{AUTH_MTLS, FLOW_START, FlowEvent},
            hubble::{flow::AuthType, observer::GetFlowsResponse},
        };
        use prost::Message as _;

        use crate::flows::{Record, directory::Directory, view::FlowView};
        let directory = Directory::empty("node-0");
        let decoded = |auth: u8| {
            let record =
                Record { event: FlowEvent { kind: FLOW_START, auth, ..FlowEvent::default() }, ..Record::default() };
            let mut buf = Vec::new();
            super::response(&mut buf, &FlowView::new(&record, &directory), true);
            GetFlowsResponse::decode(&buf[..]).unwrap().response_types.unwrap()
        };
        let flow = |auth| match decoded(auth) {
            mesh_common::hubble::observer::get_flows_response::ResponseTypes::Flow(flow) => flow,
            other => panic!("not a flow: {other:?}"),
        };
        let tunnelled = flow(AUTH_MTLS);
        assert!(tunnelled.ip.unwrap().encrypted);
        assert_eq!(tunnelled.auth_type, AuthType::Spire as i32);
        let plain = flow(0);
        assert!(!plain.ip.unwrap().encrypted);
        assert_eq!(plain.auth_type, AuthType::Disabled as i32);
    }
}
