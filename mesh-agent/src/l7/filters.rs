//! What an HTTPRoute's filters do to a request or a response, as Gateway API specifies them:
//! header modifiers, path rewrites (whole path or the matched prefix), and a redirect's
//! `Location`.

use http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use mesh_common::api;

use super::routes::PathMatcher;

/// Applies a RequestHeaderModifier or ResponseHeaderModifier: `set` replaces, `add` appends,
/// `remove` drops (names were validated by the operator; one that is not a header name here is
/// skipped rather than failing a request).
pub fn modify_headers(headers: &mut HeaderMap, modifier: &api::HeaderModifier) {
    for pair in &modifier.set {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(pair.name.as_bytes()), HeaderValue::from_str(&pair.value))
        {
            headers.insert(name, value);
        }
    }
    for pair in &modifier.add {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(pair.name.as_bytes()), HeaderValue::from_str(&pair.value))
        {
            headers.append(name, value);
        }
    }
    for name in &modifier.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// The path after a rewrite: the whole path, or the matched prefix replaced (the rest kept,
/// with exactly one '/' between them).
pub fn rewrite_path(path: &str, rewrite: &api::PathRewrite, matched: &PathMatcher) -> String {
    match api::PathModifier::try_from(rewrite.kind) {
        Ok(api::PathModifier::Full) => rewrite.value.clone(),
        Ok(api::PathModifier::Prefix) => {
            let PathMatcher::Prefix(prefix) = matched else { return path.to_owned() };
            let rest = path.strip_prefix(prefix.as_str()).unwrap_or(path);
            let base = rewrite.value.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{base}{rest}"),
            }
        }
        _ => path.to_owned(),
    }
}

/// The URI with a new path, its query kept.
pub fn with_path(uri: &Uri, path: &str) -> Uri {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The `Location` of a RequestRedirect. `host` is the request's Host header (its port, if any,
/// is dropped); `port` the Service port the request came to. As Gateway API specifies: without
/// a port, a redirect with a scheme goes to that scheme's well-known port, one without to the
/// port the request came to; the port is left out of the Location when it is the scheme's own
/// (80 for http, 443 for https).
pub fn redirect_location(
    redirect: &api::HttpRedirect,
    host: &str,
    port: u16,
    uri: &Uri,
    matched: &PathMatcher,
) -> String {
    let scheme = if redirect.scheme.is_empty() { "http" } else { redirect.scheme.as_str() };
    let hostname = if redirect.hostname.is_empty() { host_only(host) } else { redirect.hostname.as_str() };
    let port = match (redirect.port, redirect.scheme.as_str()) {
        (p, _) if p != 0 => p,
        (_, "https") => 443,
        (_, "http") => 80,
        _ => u32::from(port),
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &redirect.path {
        Some(rewrite) => rewrite_path(uri.path(), rewrite, matched),
        None => uri.path().to_owned(),
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    if default_port {
        format!("{scheme}://{hostname}{path}{query}")
    } else {
        format!("{scheme}://{hostname}:{port}{path}{query}")
    }
}

/// A Host header's name without its port (`[v6]:port` kept bracketed).
pub fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
}

/// Sets the Host header (a URLRewrite's hostname).
pub fn set_host(headers: &mut HeaderMap, hostname: &str) {
    if let Ok(value) = HeaderValue::from_str(hostname) {
        headers.insert(header::HOST, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatcher {
        PathMatcher::Prefix(p.trim_end_matches('/').to_owned())
    }

    fn replace_prefix(value: &str) -> api::PathRewrite {
        api::PathRewrite { kind: api::PathModifier::Prefix as i32, value: value.into() }
    }

    #[test]
    fn prefix_rewrites_keep_the_rest_with_one_slash() {
        // The cases of Gateway API's HTTPRouteRewritePath and its mesh twin.
        let cases = [
            ("/prefix/one", "/prefix/one/two", "/one", "/one/two"),
            ("/prefix/one", "/prefix/one", "/one", "/one"),
            ("/strip-prefix", "/strip-prefix/three", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            ("/strip-prefix/", "/strip-prefix/", "/", "/"),
            ("/", "/a/b", "/x", "/x/a/b"),
            ("/prefix/one", "/prefix/one/", "/one/", "/one/"),
        ];
        for (matched, path, value, want) in cases {
            assert_eq!(rewrite_path(path, &replace_prefix(value), &prefix(matched)), want, "{matched} {path} {value}");
        }
        let full = api::PathRewrite { kind: api::PathModifier::Full as i32, value: "/one".into() };
        assert_eq!(rewrite_path("/full/path/original", &full, &prefix("/full")), "/one");
    }

    #[test]
    fn headers_are_set_added_and_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-set", "old".parse().unwrap());
        headers.insert("x-add", "one".parse().unwrap());
        headers.insert("x-remove", "gone".parse().unwrap());
        let pair = |n: &str, v: &str| api::NameValue { name: n.into(), value: v.into() };
        modify_headers(
            &mut headers,
            &api::HeaderModifier {
                set: vec![pair("x-set", "new"), pair("x-fresh", "1")],
                add: vec![pair("x-add", "two")],
                remove: vec!["x-remove".into()],
            },
        );
        assert_eq!(headers["x-set"], "new");
        assert_eq!(headers["x-fresh"], "1");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["one", "two"]);
        assert!(!headers.contains_key("x-remove"));
    }

    #[test]
    fn redirect_locations_follow_gateway_api() {
        let uri: Uri = "/path?x=1".parse().unwrap();
        let redirect = |scheme: &str, hostname: &str, port: u32| api::HttpRedirect {
            scheme: scheme.into(),
            hostname: hostname.into(),
            port,
            status_code: 302,
            path: None,
        };
        let any = prefix("/");
        assert_eq!(redirect_location(&redirect("", "", 0), "echo:80", 80, &uri, &any), "http://echo/path?x=1");
        assert_eq!(redirect_location(&redirect("", "", 0), "echo", 8080, &uri, &any), "http://echo:8080/path?x=1");
        assert_eq!(redirect_location(&redirect("https", "", 0), "echo:80", 80, &uri, &any), "https://echo/path?x=1");
        assert_eq!(
            redirect_location(&redirect("", "example.org", 0), "echo", 80, &uri, &any),
            "http://example.org/path?x=1"
        );
        assert_eq!(redirect_location(&redirect("", "", 8443), "echo", 80, &uri, &any), "http://echo:8443/path?x=1");
        assert_eq!(redirect_location(&redirect("https", "", 443), "echo", 80, &uri, &any), "https://echo/path?x=1");
        let mut with_path = redirect("", "", 0);
        with_path.path = Some(replace_prefix("/new"));
        let old: Uri = "/old/page".parse().unwrap();
        assert_eq!(redirect_location(&with_path, "echo", 80, &old, &prefix("/old")), "http://echo/new/page");
    }

    #[test]
    fn host_ports_are_dropped() {
        assert_eq!(host_only("echo:80"), "echo");
        assert_eq!(host_only("echo"), "echo");
        assert_eq!(host_only("[::1]:80"), "[::1]");
        assert_eq!(host_only("10.0.0.1:8080"), "10.0.0.1");
    }
}
