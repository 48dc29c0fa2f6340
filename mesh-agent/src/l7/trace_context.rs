//! W3C Trace Context through the proxy: a request's valid `traceparent` goes on with the
//! proxy's own span as its parent (the trace id and flags kept), so a tracing backend sees the
//! hop; the trace id goes into the request's flows (`trace_context`). A request without one, or
//! with an invalid one, is passed on as it came: the proxy starts no trace of its own.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";

/// The fields of a valid `traceparent` (version 00, or a later version read as 00 as the
/// specification asks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn all_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Parses a `traceparent` value as W3C Trace Context (level 1, section 3.2) reads it.
pub fn parse(value: &str) -> Option<TraceParent<'_>> {
    let version = value.get(0..2)?;
    if !lower_hex(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may add fields after a dash.
    let valid_length =
        if version == "00" { value.len() == 55 } else { value.len() == 55 || value.get(55..56) == Some("-") };
    if !valid_length {
        return None;
    }
    let (trace_id, parent_id, flags) = (value.get(3..35)?, value.get(36..52)?, value.get(53..55)?);
    let dashes = [2, 35, 52].iter().all(|&i| value.as_bytes()[i] == b'-');
    let valid = dashes
        && lower_hex(trace_id, 32)
        && !all_zero(trace_id)
        && lower_hex(parent_id, 16)
        && !all_zero(parent_id)
        && lower_hex(flags, 2);
    valid.then_some(TraceParent { trace_id, parent_id, flags })
}

/// Makes the proxy's span (`span_id`, non-zero) the parent of the request's trace; returns the
/// trace id, or `None` (headers untouched) when the request carries no single valid
/// `traceparent`.
pub fn propagate(headers: &mut HeaderMap, span_id: u64) -> Option<String> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let parent = parse(value.to_str().ok()?)?;
    let trace_id = parent.trace_id.to_owned();
    let next = format!("00-{trace_id}-{:016x}-{}", span_id.max(1), parent.flags);
    headers.insert(TRACEPARENT, HeaderValue::from_str(&next).ok()?);
    Some(trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_specifications_examples() {
        let parent = parse(VALID).unwrap();
        assert_eq!(
            (parent.trace_id, parent.parent_id, parent.flags),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
        );
        // A later version with more fields is read as version 00.
        assert!(parse(&format!("cc{}-extra", &VALID[2..])).is_some());
        for invalid in [
            "",
            &VALID[..54],
            &format!("{VALID}-"),
            &VALID.to_uppercase(),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(parse(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn the_proxys_span_becomes_the_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(propagate(&mut headers, 0xabc).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(headers[TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01");
        // Two values, or an invalid one: passed on untouched, no trace id.
        let mut two = HeaderMap::new();
        two.append(TRACEPARENT, HeaderValue::from_static(VALID));
        two.append(TRACEPARENT, HeaderValue::from_static(VALID));
        assert_eq!(propagate(&mut two, 1), None);
        assert_eq!(two.get_all(TRACEPARENT).iter().count(), 2);
        let mut bad = HeaderMap::new();
        bad.insert(TRACEPARENT, HeaderValue::from_static("00-zz"));
        assert_eq!(propagate(&mut bad, 1), None);
        assert_eq!(bad[TRACEPARENT], "00-zz");
    }
}
