//! What an HTTPRoute (Gateway API) may say, one definition for the operator that validates
//! routes and the agent that matches requests against them: the regular-expression syntax and
//! its limits, header names, methods, path values and durations.

pub use regex::Regex;
use regex::RegexBuilder;

/// A compiled pattern may take at most this much memory: a route is input the mesh does not
/// control, and a pattern like `(a{1000}){1000}` would otherwise cost the agent megabytes.
pub const REGEX_SIZE_LIMIT: usize = 256 << 10;
/// Patterns are at most this long (a header value's limit in the Gateway API CRD is 4,096).
pub const REGEX_MAX_LEN: usize = 1024;

/// The HTTP methods a match may name (Gateway API's `HTTPMethod`).
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

impl crate::api::HttpRouteRule {
    /// Every Service the rule sends to: its backends, then the backends of its mirrors (the
    /// rule's and its backends').
    pub fn upstreams(&self) -> impl Iterator<Item = &crate::api::HttpBackend> {
        let mirrors = self.filters.iter().chain(self.backends.iter().flat_map(|b| b.filters.iter())).filter_map(|f| {
            match &f.kind {
                Some(crate::api::http_filter::Kind::Mirror(m)) => m.backend.as_ref(),
                _ => None,
            }
        });
        self.backends.iter().chain(mirrors)
    }
}

/// A `RegularExpression` match: the `regex` crate's syntax (RE2's, as Envoy's), matched against
/// the whole value (path, header or query parameter), never a substring.
pub fn regex(pattern: &str) -> Result<Regex, String> {
    bounded_regex(pattern, &format!("^(?:{pattern})$"))
}

/// A regular expression found anywhere in a value (Hubble's `http_path` and `http_url` flow
/// filters), with the same syntax and bounds as [`regex`].
pub fn search_regex(pattern: &str) -> Result<Regex, String> {
    bounded_regex(pattern, pattern)
}

fn bounded_regex(pattern: &str, compiled: &str) -> Result<Regex, String> {
    if pattern.len() > REGEX_MAX_LEN {
        return Err(format!("a regular expression is at most {REGEX_MAX_LEN} bytes; this one has {}", pattern.len()));
    }
    RegexBuilder::new(compiled).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_SIZE_LIMIT).build().map_err(|err| {
        match err {
            regex::Error::CompiledTooBig(_) => {
                format!("{pattern:?} compiles to more than {} KiB: simplify it", REGEX_SIZE_LIMIT >> 10)
            }
            // The syntax error's own text names the position; drop our anchoring from it.
            other => format!("{pattern:?} is not a valid regular expression (RE2 syntax): {}", first_line(&other)),
        }
    })
}

fn first_line(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines().rev().find(|l| l.starts_with("error:")).unwrap_or(&text).trim().to_owned()
}

/// An HTTP header (or query parameter) name: an RFC 9110 token, 1 to 256 characters.
pub fn is_header_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An `Exact` or `PathPrefix` value (and a rewrite's or redirect's path): absolute, and none of
/// what the Gateway API CRD refuses (`//`, `/./`, `/../`, an encoded slash, a fragment).
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.len() > 1024 {
        return Err("a path is at most 1024 characters".into());
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
        if path.contains(bad) {
            return Err(format!("{path:?} must not contain {bad:?}"));
        }
    }
    if path.ends_with("/..") || path.ends_with("/.") {
        return Err(format!("{path:?} must not end with '/..' or '/.'"));
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("{path:?} must not contain spaces or control characters"));
    }
    Ok(())
}

/// A Gateway API duration (GEP-2257): one to four parts of 1 to 5 digits, each with a unit of
/// `h`, `m`, `s` or `ms` ("1h", "10s", "1m30s", "500ms"), in milliseconds.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: write 1 to 4 parts such as 1h, 10m, 30s or 500ms (\"1m30s\")");
    let mut total = 0u64;
    let mut parts = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.bytes().next() {
                Some(b'h') => (3_600_000, 1),
                Some(b'm') => (60_000, 1),
                Some(b's') => (1_000, 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        total += value * unit_ms;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_match_whole_values_within_limits() {
        let re = regex("/v[0-9]+/.*").unwrap();
        assert!(re.is_match("/v2/items"));
        assert!(!re.is_match("/api/v2/items"), "anchored at the start");
        assert!(regex("a|b").unwrap().is_match("b"));
        assert!(!regex("a|b").unwrap().is_match("ab"), "an alternation is anchored as a whole");
        assert!(regex("(").unwrap_err().contains("not a valid regular expression"));
        assert!(regex("(a{1000}){1000}").unwrap_err().contains("simplify"));
        assert!(regex(&"a".repeat(REGEX_MAX_LEN + 1)).unwrap_err().contains("at most"));
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(is_header_name("x-request-id"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name("colon:"));
    }

    #[test]
    fn paths_are_checked_as_the_crd_does() {
        assert!(check_path("/").is_ok());
        assert!(check_path("/api/v1").is_ok());
        for bad in ["api", "/a//b", "/a/./b", "/a/../b", "/a%2fb", "/a#x", "/a/..", "/a/.", "/a b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("1h1m1s1ms"), Ok(3_661_001));
        for bad in ["", "1", "s", "1.5s", "123456s", "1h1m1s1ms1ms", "-1s", "10us"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }
}
