//! `meshctl observe`'s filter flags, turned into Hubble allow and deny filters the way
//! `hubble observe` does: a flag for either side (`--pod`, `--ip`, `--label`, `--service`,
//! `--port`) makes a source filter and a destination filter (either matches); other flags
//! narrow both; `--not` moves the next filter flag to the deny list; namespaces apply last.
//! Values are checked here, so a malformed one is reported with its flag.

use mesh_agent::flows::filter;
use mesh_common::hubble::flow::{DropReason, EventTypeFilter, FlowFilter, TcpFlags, TrafficDirection, Verdict};

/// Every filter flag: (long name, short name, either side).
pub const FILTER_FLAGS: &[(&str, Option<char>)] = &[
    ("pod", None),
    ("from-pod", None),
    ("to-pod", None),
    ("namespace", Some('n')),
    ("from-namespace", None),
    ("to-namespace", None),
    ("ip", None),
    ("from-ip", None),
    ("to-ip", None),
    ("label", Some('l')),
    ("from-label", None),
    ("to-label", None),
    ("service", None),
    ("from-service", None),
    ("to-service", None),
    ("port", None),
    ("from-port", None),
    ("to-port", None),
    ("protocol", None),
    ("verdict", None),
    ("drop-reason-desc", None),
    ("tcp-flags", None),
    ("traffic-direction", None),
    ("node-name", None),
    ("encrypted", None),
    ("unencrypted", None),
    ("type", Some('t')),
    ("http-status", None),
    ("http-method", None),
    ("http-path", None),
    ("http-url", None),
    ("trace-id", None),
];

/// Cilium's monitor event type names (`--type name[:sub-type]`).
const EVENT_TYPES: &[(&str, i32)] = &[
    ("drop", 1),
    ("debug", 2),
    ("capture", 3),
    ("trace", 4),
    ("policy-verdict", 5),
    ("recorder", 6),
    ("trace-sock", 7),
    ("l7", 129),
    ("agent", 130),
];

/// The named sub-types of `trace` events (Cilium's observation points).
const TRACE_SUB_TYPES: &[(&str, i32)] = &[
    ("to-endpoint", 0),
    ("to-proxy", 1),
    ("to-host", 2),
    ("to-stack", 3),
    ("to-overlay", 4),
    ("from-endpoint", 5),
    ("from-proxy", 6),
    ("from-host", 7),
    ("from-stack", 8),
    ("from-overlay", 9),
    ("from-network", 10),
    ("to-network", 11),
];

/// `--type`'s value as Hubble reads it: an event type name, optionally `:` and a sub-type
/// (a trace observation point's name, or a number).
fn event_type(value: &str) -> Result<EventTypeFilter, String> {
    let (name, sub) = match value.split_once(':') {
        Some((name, sub)) => (name, Some(sub)),
        None => (value, None),
    };
    let names = || EVENT_TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    let Some(&(_, r#type)) = EVENT_TYPES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Err(format!("unknown event type {name:?}: use one of {}", names()));
    };
    let sub_type = match sub {
        None => None,
        Some(sub) => Some(
            TRACE_SUB_TYPES
                .iter()
                .find(|(n, _)| r#type == 4 && n.eq_ignore_ascii_case(sub))
                .map(|(_, t)| *t)
                .or_else(|| sub.parse::<u8>().ok().map(i32::from))
                .ok_or_else(|| format!("unknown sub-type {sub:?} of {name}: use a number, or for trace an observation point such as to-endpoint"))?,
        ),
    };
    Ok(EventTypeFilter { r#type, match_sub_type: sub_type.is_some(), sub_type: sub_type.unwrap_or(0) })
}

/// Filter flags that take no value.
const SWITCHES: &[&str] = &["encrypted", "unencrypted"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    #[error("--{flag}: {message}")]
    Value { flag: &'static str, message: String },
    #[error("filters --{0} and --{1} cannot be combined")]
    Conflict(&'static str, &'static str),
    #[error("consecutive --not statements: put one --not before each filter flag to negate")]
    ConsecutiveNot,
    #[error("trailing --not found in the arguments: put a filter flag after it")]
    TrailingNot,
}

/// The filters of one list (allow or deny): a source side and a destination side.
#[derive(Debug, Default)]
struct Tracker {
    left: FlowFilter,
    right: FlowFilter,
    ns: Vec<String>,
    src_ns: Vec<String>,
    dst_ns: Vec<String>,
    seen: Vec<&'static str>,
}

impl Tracker {
    fn both(&mut self, f: impl Fn(&mut FlowFilter)) {
        f(&mut self.left);
        f(&mut self.right);
    }

    fn filters(mut self) -> Vec<FlowFilter> {
        let (dst, src, ns) = (self.dst_ns.clone(), self.src_ns.clone(), self.ns.clone());
        if !dst.is_empty() {
            apply(&mut self.left, &dst, false);
            apply(&mut self.right, &dst, false);
        }
        if !src.is_empty() {
            apply(&mut self.left, &src, true);
            apply(&mut self.right, &src, true);
        }
        if !ns.is_empty() {
            apply(&mut self.left, &ns, true);
            apply(&mut self.right, &ns, false);
        }
        let empty = FlowFilter::default();
        match (self.left == empty, self.left == self.right) {
            (true, true) => vec![],
            (_, true) => vec![self.left],
            _ => vec![self.left, self.right],
        }
    }
}

/// Puts the namespaces on the source (or destination) pods and services of `f`.
fn apply(f: &mut FlowFilter, namespaces: &[String], source: bool) {
    let (pods, services) = if source {
        (&mut f.source_pod, &mut f.source_service)
    } else {
        (&mut f.destination_pod, &mut f.destination_service)
    };
    if pods.is_empty() && services.is_empty() {
        pods.push(String::new());
    }
    for names in [pods, services] {
        let mut out = Vec::new();
        for name in names.iter() {
            if name.contains('/') {
                out.push(name.clone());
            } else {
                out.extend(namespaces.iter().map(|ns| format!("{ns}/{name}")));
            }
        }
        *names = out;
    }
}

/// Groups of flags that cannot be used together (in one list).
const CONFLICTS: &[&[&str]] = &[
    &["from-ip", "ip", "from-namespace", "namespace"],
    &["from-ip", "ip", "from-pod", "pod"],
    &["to-ip", "ip", "to-namespace", "namespace"],
    &["to-ip", "ip", "to-pod", "pod"],
    &["to-pod", "namespace"],
    &["from-pod", "namespace"],
    &["label", "from-label"],
    &["label", "to-label"],
    &["service", "from-service"],
    &["service", "to-service"],
    &["port", "to-port"],
    &["port", "from-port"],
    &["encrypted", "unencrypted"],
];

/// Builds (allow, deny) from the filter flags in command-line order: (flag, value), with
/// `("not", "")` for each `--not`.
pub fn build(flags: &[(&'static str, String)]) -> Result<(Vec<FlowFilter>, Vec<FlowFilter>), FlagError> {
    let (mut allow, mut deny) = (Tracker::default(), Tracker::default());
    let mut negate = false;
    for (flag, value) in flags {
        if *flag == "not" {
            if negate {
                return Err(FlagError::ConsecutiveNot);
            }
            negate = true;
            continue;
        }
        let tracker = if negate { &mut deny } else { &mut allow };
        negate = false;
        for group in CONFLICTS {
            if group.contains(flag)
                && let Some(other) = tracker.seen.iter().find(|s| *s != flag && group.contains(s))
            {
                return Err(FlagError::Conflict(other, flag));
            }
        }
        tracker.seen.push(flag);
        add(tracker, flag, value)?;
    }
    if negate {
        return Err(FlagError::TrailingNot);
    }
    Ok((allow.filters(), deny.filters()))
}

fn add(t: &mut Tracker, flag: &'static str, value: &str) -> Result<(), FlagError> {
    let bad = |message: String| FlagError::Value { flag, message };
    let v = value.to_owned();
    let check_name = |v: &str| filter::parse_name(v).map(|_| ()).map_err(|e| bad(e.to_string()));
    match flag {
        "pod" | "from-pod" | "to-pod" | "service" | "from-service" | "to-service" => check_name(value)?,
        "ip" | "from-ip" | "to-ip" => {
            filter::parse_ip(value).map_err(|e| bad(e.to_string()))?;
        }
        "label" | "from-label" | "to-label" => {
            filter::parse_selector(value).map_err(|e| bad(e.to_string()))?;
        }
        "port" | "from-port" | "to-port" => {
            filter::parse_port(value).map_err(|e| bad(e.to_string()))?;
        }
        "namespace" | "from-namespace" | "to-namespace" if value.is_empty() || value.contains('/') => {
            return Err(bad(format!("{value:?} is not a namespace name")));
        }
        _ => {}
    }
    match flag {
        "pod" => {
            t.left.source_pod.push(v.clone());
            t.right.destination_pod.push(v);
        }
        "from-pod" => t.both(|f| f.source_pod.push(v.clone())),
        "to-pod" => t.both(|f| f.destination_pod.push(v.clone())),
        "namespace" => t.ns.push(v),
        "from-namespace" => t.src_ns.push(v),
        "to-namespace" => t.dst_ns.push(v),
        "ip" => {
            t.left.source_ip.push(v.clone());
            t.right.destination_ip.push(v);
        }
        "from-ip" => t.both(|f| f.source_ip.push(v.clone())),
        "to-ip" => t.both(|f| f.destination_ip.push(v.clone())),
        "label" => {
            t.left.source_label.push(v.clone());
            t.right.destination_label.push(v);
        }
        "from-label" => t.both(|f| f.source_label.push(v.clone())),
        "to-label" => t.both(|f| f.destination_label.push(v.clone())),
        "service" => {
            t.left.source_service.push(v.clone());
            t.right.destination_service.push(v);
        }
        "from-service" => t.both(|f| f.source_service.push(v.clone())),
        "to-service" => t.both(|f| f.destination_service.push(v.clone())),
        "port" => {
            t.left.source_port.push(v.clone());
            t.right.destination_port.push(v);
        }
        "from-port" => t.both(|f| f.source_port.push(v.clone())),
        "to-port" => t.both(|f| f.destination_port.push(v.clone())),
        "protocol" => {
            filter::parse_protocol(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.protocol.push(v.clone()));
        }
        "verdict" => {
            let verdict = Verdict::from_str_name(value).filter(|v| *v != Verdict::Unknown).ok_or_else(|| {
                bad(format!(
                    "invalid value {value:?}: use FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED or TRANSLATED"
                ))
            })?;
            t.both(|f| f.verdict.push(verdict as i32));
        }
        // Through the mutual-TLS tunnel (IP.encrypted), or not.
        "encrypted" => t.both(|f| f.encrypted.push(true)),
        "unencrypted" => t.both(|f| f.encrypted.push(false)),
        "drop-reason-desc" => {
            let reason = DropReason::from_str_name(value).ok_or_else(|| {
                bad(format!("invalid value {value:?}: use a drop reason name such as POLICY_DENIED or POLICY_DENY"))
            })?;
            t.both(|f| f.drop_reason_desc.push(reason as i32));
        }
        "tcp-flags" => {
            let bits = filter::parse_tcp_flags(value).map_err(|e| bad(e.to_string()))?;
            let has = |bit: u16| bits & bit != 0;
            let flags = TcpFlags {
                fin: has(0x01),
                syn: has(0x02),
                rst: has(0x04),
                psh: has(0x08),
                ack: has(0x10),
                urg: has(0x20),
                ece: has(0x40),
                cwr: has(0x80),
                ns: has(0x100),
            };
            t.both(|f| f.tcp_flags.push(flags));
        }
        "traffic-direction" => {
            let direction = match value.to_ascii_lowercase().as_str() {
                "ingress" => TrafficDirection::Ingress,
                "egress" => TrafficDirection::Egress,
                _ => return Err(bad(format!("{value}: invalid traffic direction, expected ingress or egress"))),
            };
            t.both(|f| f.traffic_direction.push(direction as i32));
        }
        "node-name" => {
            filter::parse_node_name(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.node_name.push(v.clone()));
        }
        "type" => {
            let event_type = event_type(value).map_err(bad)?;
            t.both(|f| f.event_type.push(event_type));
        }
        "http-status" => {
            filter::parse_http_status(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.http_status_code.push(v.clone()));
        }
        "http-method" => {
            filter::parse_http_method(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.http_method.push(v.clone()));
        }
        "http-path" => {
            filter::parse_http_regex(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.http_path.push(v.clone()));
        }
        "http-url" => {
            filter::parse_http_regex(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.http_url.push(v.clone()));
        }
        "trace-id" => {
            filter::parse_trace_id(value).map_err(|e| bad(e.to_string()))?;
            t.both(|f| f.trace_id.push(v.clone()));
        }
        other => unreachable!("{other} is not a filter flag"),
    }
    Ok(())
}

/// The filter flags of `args` (the words after `observe`), in order, as `build` takes them.
pub fn in_order(args: &[String]) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--not" {
            out.push(("not", String::new()));
            continue;
        }
        let (name, inline) = if let Some(long) = word.strip_prefix("--") {
            match long.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (long.to_owned(), None),
            }
        } else if let Some(short) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or_default();
            let rest: String = chars.collect();
            let Some((long, _)) = FILTER_FLAGS.iter().find(|(_, s)| *s == Some(c)) else { continue };
            ((*long).to_owned(), (!rest.is_empty()).then(|| rest.trim_start_matches('=').to_owned()))
        } else {
            continue;
        };
        let Some((flag, _)) = FILTER_FLAGS.iter().find(|(long, _)| *long == name) else { continue };
        let value = match inline {
            Some(value) => value,
            None if SWITCHES.contains(flag) => String::new(),
            None => words.next().cloned().unwrap_or_default(),
        };
        out.push((*flag, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(words: &str) -> Vec<(&'static str, String)> {
        in_order(&words.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn either_side_flags_make_two_filters() {
        let (allow, deny) = build(&flags("--pod demo/web --verdict DROPPED")).unwrap();
        assert_eq!(allow.len(), 2);
        assert_eq!(allow[0].source_pod, ["demo/web"]);
        assert_eq!(allow[1].destination_pod, ["demo/web"]);
        assert_eq!(allow[0].verdict, [Verdict::Dropped as i32]);
        assert!(deny.is_empty());
    }

    #[test]
    fn encrypted_takes_no_value() {
        let (allow, deny) = build(&flags("--encrypted --protocol tcp --not --unencrypted")).unwrap();
        assert_eq!(
            (allow.len(), allow[0].encrypted.as_slice(), allow[0].protocol.as_slice()),
            (1, &[true][..], &["tcp".to_owned()][..])
        );
        assert_eq!(deny[0].encrypted, [false]);
        assert_eq!(
            build(&flags("--encrypted --unencrypted")).unwrap_err(),
            FlagError::Conflict("encrypted", "unencrypted")
        );
    }

    #[test]
    fn not_negates_the_next_flag_only() {
        let (allow, deny) = build(&flags("--not --to-pod demo/web --protocol tcp")).unwrap();
        assert_eq!(allow.len(), 1);
        assert_eq!(allow[0].protocol, ["tcp"]);
        assert_eq!(deny.len(), 1);
        assert_eq!(deny[0].destination_pod, ["demo/web"]);
        assert_eq!(build(&flags("--not --not --pod a")).unwrap_err(), FlagError::ConsecutiveNot);
        assert_eq!(build(&flags("--pod a --not")).unwrap_err(), FlagError::TrailingNot);
    }

    #[test]
    fn namespaces_apply_last() {
        let (allow, _) = build(&flags("-n demo --port 80")).unwrap();
        assert_eq!(allow[0].source_pod, ["demo/"]);
        assert_eq!(allow[1].destination_pod, ["demo/"]);
        let (allow, _) = build(&flags("--from-namespace demo --to-pod web")).unwrap();
        assert_eq!(allow.len(), 1);
        assert_eq!(allow[0].source_pod, ["demo/"]);
        assert_eq!(allow[0].destination_pod, ["default/web"].map(|_| "web".to_owned()));
        assert_eq!(build(&flags("-n demo --to-pod web")).unwrap_err(), FlagError::Conflict("namespace", "to-pod"));
    }

    #[test]
    fn types_and_http_flags_follow_hubble() {
        let (allow, _) =
            build(&flags("--type l7 --type trace:to-endpoint --http-status 5+ --http-method get")).unwrap();
        assert_eq!(allow.len(), 1);
        let types: Vec<(i32, bool, i32)> =
            allow[0].event_type.iter().map(|t| (t.r#type, t.match_sub_type, t.sub_type)).collect();
        assert_eq!(types, [(129, false, 0), (4, true, 0)]);
        assert_eq!(
            (allow[0].http_status_code.as_slice(), allow[0].http_method.as_slice()),
            (&["5+".to_owned()][..], &["get".to_owned()][..])
        );
        let (allow, _) = build(&flags("-t drop:133")).unwrap();
        assert_eq!((allow[0].event_type[0].r#type, allow[0].event_type[0].sub_type), (1, 133));
        for (words, flag) in [
            ("--type l8", "--type: "),
            ("--type trace:sideways", "--type: "),
            ("--http-status 2xx", "--http-status: "),
            ("--http-path (", "--http-path: "),
            ("--trace-id 12", "--trace-id: "),
        ] {
            let err = build(&flags(words)).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{words}: {err}");
        }
    }

    #[test]
    fn malformed_values_name_their_flag() {
        let err = build(&flags("--ip 10.0.0.300")).unwrap_err().to_string();
        assert!(err.starts_with("--ip: "), "{err}");
        let err = build(&flags("--verdict forwarded")).unwrap_err().to_string();
        assert!(err.starts_with("--verdict: "), "{err}");
        let err = build(&flags("--tcp-flags SYN,BOGUS")).unwrap_err().to_string();
        assert!(err.starts_with("--tcp-flags: ") && err.contains("BOGUS"), "{err}");
        let err = build(&flags("-l app=(")).unwrap_err().to_string();
        assert!(err.starts_with("--label: "), "{err}");
        let err = build(&flags("--port=70000")).unwrap_err().to_string();
        assert!(err.starts_with("--port: "), "{err}");
    }
}
