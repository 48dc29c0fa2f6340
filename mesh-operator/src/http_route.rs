//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) for the mesh (GAMMA): the object as
//! written, checked as the Gateway API CRD and its CEL rules check it (each error names the
//! field), and normalised into the model's `HttpRoute`. Only routes with a Service among their
//! `parentRefs` concern the mesh; other parents (Gateways) are another implementation's.
//!
//! Fields of the experimental channel that the mesh does not implement (sessionPersistence,
//! CORS and external-auth filters, extensionRef filters) are refused by name rather than ignored:
//! a route that says more than the mesh does must not silently do less.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_common::{api, http_route as rules, names::is_dns_subdomain};
use serde::Deserialize;

use crate::translate::Invalid;

/// The API group of every Gateway API kind.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// Gateway API's limits (the CRD's `maxItems`).
const MAX_PARENTS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_BACKENDS: usize = 16;
const MAX_FILTERS: usize = 16;
const MAX_HEADER_MATCHES: usize = 16;
const MAX_MODIFIERS: usize = 16;
/// A backend's weight is 0 to this.
pub const MAX_WEIGHT: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
    /// Written by implementations; read back, never trusted.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Makes a Gateway API route type (`gateway.networking.k8s.io/v1`, namespaced) a kube
/// `Resource`, so cluster mode watches it and writes its status with kube's typed API.
macro_rules! gateway_route_resource {
    ($type:ty, $kind:literal, $plural:literal) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $crate::http_route::GATEWAY_GROUP.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use gateway_route_resource;

gateway_route_resource!(HttpRoute, "HTTPRoute", "httproutes");

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

impl ParentRef {
    /// A Service parent (group "" and kind Service), which makes the route a mesh route.
    pub fn is_service(&self) -> bool {
        self.group.as_deref() == Some("") && self.kind.as_deref() == Some("Service")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<Redirect>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<Rewrite>,
    pub request_mirror: Option<Mirror>,
    pub extension_ref: Option<serde_json::Value>,
    pub cors: Option<serde_json::Value>,
    pub external_auth: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<i32>,
    pub status_code: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    pub backend_ref: BackendObject,
    pub percent: Option<u32>,
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    pub denominator: Option<u32>,
}

/// A backend object reference (`BackendObjectReference`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendObject {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i32>,
    pub weight: Option<i64>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    #[serde(default)]
    pub codes: Vec<u32>,
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

fn at_most<T>(field: &str, items: &[T], max: usize) -> Result<(), Invalid> {
    if items.len() > max {
        return Err(invalid(field, format!("at most {max} entries (Gateway API's limit); this has {}", items.len())));
    }
    Ok(())
}

fn port(field: &str, value: i32) -> Result<u32, Invalid> {
    u32::try_from(value)
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| invalid(field, format!("{value} is not a port: use 1-65535")))
}

fn hostname(field: &str, host: &str) -> Result<(), Invalid> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if !is_dns_subdomain(bare) {
        return Err(invalid(
            field,
            format!("{host:?} is not a hostname: lowercase DNS names, optionally with a leading '*.'"),
        ));
    }
    Ok(())
}

/// The route `namespace/name`, checked and normalised. `Ok(None)`: valid, but with no Service
/// parent, so nothing for the mesh.
pub fn translate(namespace: &str, name: &str, route: &HttpRoute) -> Result<Option<api::HttpRoute>, Invalid> {
    let spec = &route.spec;
    at_most("spec.parentRefs", &spec.parent_refs, MAX_PARENTS)?;
    at_most("spec.hostnames", &spec.hostnames, MAX_HOSTNAMES)?;
    at_most("spec.rules", &spec.rules, MAX_RULES)?;
    let mut parents = Vec::new();
    for (i, parent) in spec.parent_refs.iter().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        // The CRD's defaults: group gateway.networking.k8s.io, kind Gateway.
        let parent = ParentRef {
            group: Some(parent.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into())),
            kind: Some(parent.kind.clone().unwrap_or_else(|| "Gateway".into())),
            ..parent.clone()
        };
        if !parent.is_service() {
            continue;
        }
        if !is_dns_subdomain(&parent.name) {
            return Err(invalid(format!("{field}.name"), format!("{:?} is not a Service name", parent.name)));
        }
        let parent_ns = parent.namespace.clone().unwrap_or_else(|| namespace.to_owned());
        if parent.section_name.is_some() {
            return Err(invalid(
                format!("{field}.sectionName"),
                "a Service parent is chosen by port, not by section name: use port, or leave both out for every port",
            ));
        }
        let port = parent.port.map(|p| port(&format!("{field}.port"), p)).transpose()?.unwrap_or(0);
        parents.push(api::RouteParent { namespace: parent_ns, service: parent.name.clone(), port });
    }
    for (i, host) in spec.hostnames.iter().enumerate() {
        hostname(&format!("spec.hostnames[{i}]"), host)?;
    }
    let matches: usize = spec.rules.iter().map(|r| r.matches.len()).sum();
    if matches > 128 {
        return Err(invalid(
            "spec.rules",
            format!("at most 128 matches in all rules (Gateway API's limit); this has {matches}"),
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let field = format!("spec.rules[{i}]");
            if let Some(name) = &rule.name
                && !names.insert(name.as_str())
            {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{name:?} names another rule too: rule names are unique"),
                ));
            }
            self::rule(&field, namespace, rule)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if parents.is_empty() {
        return Ok(None);
    }
    let created_unix = route.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    Ok(Some(api::HttpRoute {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        parents,
        hostnames: spec.hostnames.clone(),
        rules,
        created_unix,
    }))
}

fn rule(field: &str, namespace: &str, rule: &Rule) -> Result<api::HttpRouteRule, Invalid> {
    if let Some(name) = &rule.name
        && !mesh_common::names::is_dns_label(name)
    {
        return Err(invalid(
            format!("{field}.name"),
            format!("{name:?} is not a section name: lowercase letters, digits and '-'"),
        ));
    }
    at_most(&format!("{field}.matches"), &rule.matches, MAX_MATCHES)?;
    at_most(&format!("{field}.filters"), &rule.filters, MAX_FILTERS)?;
    at_most(&format!("{field}.backendRefs"), &rule.backend_refs, MAX_BACKENDS)?;
    let mut matches = rule
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| route_match(&format!("{field}.matches[{j}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    if matches.is_empty() {
        matches.push(api::HttpRouteMatch {
            path_match: api::PathMatch::Prefix as i32,
            path: "/".into(),
            ..Default::default()
        });
    }
    let filters = filters(&format!("{field}.filters"), namespace, &rule.filters, &matches)?;
    let backends = rule
        .backend_refs
        .iter()
        .enumerate()
        .map(|(j, b)| {
            let at = format!("{field}.backendRefs[{j}]");
            let object = BackendObject {
                group: b.group.clone(),
                kind: b.kind.clone(),
                name: b.name.clone(),
                namespace: b.namespace.clone(),
                port: b.port,
            };
            let mut backend = backend(&at, namespace, &object)?;
            backend.weight = match b.weight {
                None => 1,
                Some(w) => u32::try_from(w).ok().filter(|w| *w <= MAX_WEIGHT).ok_or_else(|| {
                    invalid(format!("{at}.weight"), format!("{w} is not a weight: use 0 to {MAX_WEIGHT}"))
                })?,
            };
            backend.filters = self::filters(&format!("{at}.filters"), namespace, &b.filters, &matches)?;
            if backend.filters.iter().any(|f| matches!(f.kind, Some(api::http_filter::Kind::Redirect(_)))) {
                return Err(invalid(
                    format!("{at}.filters"),
                    "a backend cannot redirect: put RequestRedirect on the rule",
                ));
            }
            Ok(backend)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut request_timeout_ms, mut backend_request_timeout_ms) = (0, 0);
    if let Some(timeouts) = &rule.timeouts {
        let ms = |name: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| rules::duration_ms(v).map_err(|m| invalid(format!("{field}.timeouts.{name}"), m)))
                .transpose()
                .map(|v| u32::try_from(v.unwrap_or(0)).unwrap_or(u32::MAX))
        };
        request_timeout_ms = ms("request", &timeouts.request)?;
        backend_request_timeout_ms = ms("backendRequest", &timeouts.backend_request)?;
        if request_timeout_ms > 0 && backend_request_timeout_ms > request_timeout_ms {
            return Err(invalid(
                format!("{field}.timeouts.backendRequest"),
                "must not be longer than timeouts.request (every try of a request fits in the request's time)",
            ));
        }
    }
    let redirects = filters.iter().any(|f| matches!(f.kind, Some(api::http_filter::Kind::Redirect(_))));
    if redirects && !backends.is_empty() {
        return Err(invalid(
            format!("{field}.backendRefs"),
            "a rule with RequestRedirect answers itself: remove its backendRefs (Gateway API refuses both)",
        ));
    }
    let retry = rule.retry.as_ref().map(|r| retry(&format!("{field}.retry"), r)).transpose()?;
    Ok(api::HttpRouteRule {
        name: rule.name.clone().unwrap_or_default(),
        matches,
        filters,
        backends,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
    })
}

fn retry(field: &str, retry: &Retry) -> Result<api::HttpRetry, Invalid> {
    for (i, code) in retry.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            return Err(invalid(format!("{field}.codes[{i}]"), format!("{code} cannot be retried: use 400-599")));
        }
    }
    let attempts = retry.attempts.unwrap_or(0);
    if attempts > 10 {
        return Err(invalid(format!("{field}.attempts"), format!("{attempts} is too many: at most 10")));
    }
    let backoff_ms = retry
        .backoff
        .as_deref()
        .map(|b| rules::duration_ms(b).map_err(|m| invalid(format!("{field}.backoff"), m)))
        .transpose()?
        .unwrap_or(0);
    Ok(api::HttpRetry {
        codes: retry.codes.clone(),
        attempts,
        backoff_ms: u32::try_from(backoff_ms).unwrap_or(u32::MAX),
    })
}

fn route_match(field: &str, m: &Match) -> Result<api::HttpRouteMatch, Invalid> {
    let (path_match, path) = match &m.path {
        None => (api::PathMatch::Prefix, "/".to_owned()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let kind = match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => api::PathMatch::Exact,
                "PathPrefix" => api::PathMatch::Prefix,
                "RegularExpression" => api::PathMatch::Regex,
                other => {
                    return Err(invalid(
                        format!("{field}.path.type"),
                        format!("{other:?} is not a path match: use Exact, PathPrefix or RegularExpression"),
                    ));
                }
            };
            match kind {
                api::PathMatch::Regex => {
                    rules::regex(&value).map_err(|m| invalid(format!("{field}.path.value"), m))?;
                }
                _ => rules::check_path(&value).map_err(|m| invalid(format!("{field}.path.value"), m))?,
            }
            (kind, value)
        }
    };
    let headers = value_matches(&format!("{field}.headers"), &m.headers, true)?;
    let query_params = value_matches(&format!("{field}.queryParams"), &m.query_params, false)?;
    let method = match &m.method {
        None => String::new(),
        Some(method) if rules::METHODS.contains(&method.as_str()) => method.clone(),
        Some(method) => {
            return Err(invalid(
                format!("{field}.method"),
                format!("{method:?} is not a method: use one of {}", rules::METHODS.join(", ")),
            ));
        }
    };
    Ok(api::HttpRouteMatch { path_match: path_match as i32, path, headers, query_params, method })
}

/// Header names are case-insensitive (kept lowercase); query parameter names are not.
fn value_matches(field: &str, list: &[ValueMatch], header: bool) -> Result<Vec<api::NameValueMatch>, Invalid> {
    at_most(field, list, MAX_HEADER_MATCHES)?;
    let mut seen = std::collections::BTreeSet::new();
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("{field}[{i}]");
            if !rules::is_header_name(&m.name) {
                return Err(invalid(format!("{at}.name"), format!("{:?} is not a valid name (an HTTP token)", m.name)));
            }
            let name = if header { m.name.to_ascii_lowercase() } else { m.name.clone() };
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("{:?} is matched twice: one match per name", m.name),
                ));
            }
            let kind = match m.kind.as_deref().unwrap_or("Exact") {
                "Exact" => api::ValueMatch::Exact,
                "RegularExpression" => {
                    rules::regex(&m.value).map_err(|e| invalid(format!("{at}.value"), e))?;
                    api::ValueMatch::Regex
                }
                other => {
                    return Err(invalid(
                        format!("{at}.type"),
                        format!("{other:?} is not a match type: use Exact or RegularExpression"),
                    ));
                }
            };
            if m.value.len() > 4096 {
                return Err(invalid(format!("{at}.value"), "at most 4096 characters"));
            }
            Ok(api::NameValueMatch { r#match: kind as i32, name, value: m.value.clone() })
        })
        .collect()
}

fn backend(field: &str, namespace: &str, object: &BackendObject) -> Result<api::HttpBackend, Invalid> {
    let group = object.group.as_deref().unwrap_or("");
    let kind = object.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(invalid(
            format!("{field}.kind"),
            format!("{kind} (group {group:?}) is not a backend the mesh routes to: use a Service (group \"\")"),
        ));
    }
    if !is_dns_subdomain(&object.name) {
        return Err(invalid(format!("{field}.name"), format!("{:?} is not a Service name", object.name)));
    }
    let Some(p) = object.port else {
        return Err(invalid(format!("{field}.port"), "required for a Service backend: the Service port to send to"));
    };
    Ok(api::HttpBackend {
        namespace: object.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
        service: object.name.clone(),
        port: port(&format!("{field}.port"), p)?,
        weight: 1,
        filters: Vec::new(),
    })
}

fn header_modifier(field: &str, m: &HeaderModifier) -> Result<api::HeaderModifier, Invalid> {
    at_most(&format!("{field}.set"), &m.set, MAX_MODIFIERS)?;
    at_most(&format!("{field}.add"), &m.add, MAX_MODIFIERS)?;
    at_most(&format!("{field}.remove"), &m.remove, MAX_MODIFIERS)?;
    let mut named = std::collections::BTreeSet::new();
    let mut pairs = |list: &[Header], part: &str| {
        list.iter()
            .enumerate()
            .map(|(i, h)| {
                let at = format!("{field}.{part}[{i}]");
                if !rules::is_header_name(&h.name) {
                    return Err(invalid(format!("{at}.name"), format!("{:?} is not a header name", h.name)));
                }
                if !named.insert((part.to_owned(), h.name.to_ascii_lowercase())) {
                    return Err(invalid(format!("{at}.name"), format!("{:?} appears twice in {part}", h.name)));
                }
                if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err(invalid(format!("{at}.value"), "a header value has no line breaks or NULs"));
                }
                Ok(api::NameValue { name: h.name.to_ascii_lowercase(), value: h.value.clone() })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let set = pairs(&m.set, "set")?;
    let add = pairs(&m.add, "add")?;
    for (i, name) in m.remove.iter().enumerate() {
        if !rules::is_header_name(name) {
            return Err(invalid(format!("{field}.remove[{i}]"), format!("{name:?} is not a header name")));
        }
    }
    Ok(api::HeaderModifier { set, add, remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect() })
}

fn path_modifier(field: &str, m: &PathModifier, matches: &[api::HttpRouteMatch]) -> Result<api::PathRewrite, Invalid> {
    let (kind, value) = match (m.kind.as_str(), &m.replace_full_path, &m.replace_prefix_match) {
        ("ReplaceFullPath", Some(full), None) => (api::PathModifier::Full, full.clone()),
        ("ReplacePrefixMatch", None, Some(prefix)) => {
            // CEL: the prefix replaced is a PathPrefix match's, so every match must be one.
            let one_prefix = matches.len() == 1 && matches[0].path_match == api::PathMatch::Prefix as i32;
            if !one_prefix {
                return Err(invalid(
                    format!("{field}.replacePrefixMatch"),
                    "only in a rule with exactly one match, a PathPrefix one: the prefix it replaces is the matched one",
                ));
            }
            (api::PathModifier::Prefix, prefix.clone())
        }
        ("ReplaceFullPath", ..) => {
            return Err(invalid(format!("{field}.replaceFullPath"), "required with type ReplaceFullPath, and alone"));
        }
        ("ReplacePrefixMatch", ..) => {
            return Err(invalid(
                format!("{field}.replacePrefixMatch"),
                "required with type ReplacePrefixMatch, and alone",
            ));
        }
        (other, ..) => {
            return Err(invalid(
                format!("{field}.type"),
                format!("{other:?} is not a path modifier: use ReplaceFullPath or ReplacePrefixMatch"),
            ));
        }
    };
    rules::check_path(&value).map_err(|e| invalid(field, e))?;
    Ok(api::PathRewrite { kind: kind as i32, value })
}

fn filters(
    field: &str,
    namespace: &str,
    list: &[Filter],
    matches: &[api::HttpRouteMatch],
) -> Result<Vec<api::HttpFilter>, Invalid> {
    use api::http_filter::Kind;
    let mut out = Vec::new();
    let mut once = std::collections::BTreeSet::new();
    for (i, f) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let given = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            ("ResponseHeaderModifier", f.response_header_modifier.is_some()),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
            ("CORS", f.cors.is_some()),
            ("ExternalAuth", f.external_auth.is_some()),
        ];
        if let Some((other, _)) = given.iter().find(|(kind, set)| *set && *kind != f.kind) {
            return Err(invalid(
                at,
                format!("type {:?} with the settings of {other}: give only the settings of its type", f.kind),
            ));
        }
        if f.kind != "RequestMirror" && !once.insert(f.kind.clone()) {
            return Err(invalid(format!("{at}.type"), format!("{} appears twice: at most once per rule", f.kind)));
        }
        let missing = || invalid(at.clone(), format!("type {} without its settings", f.kind));
        let kind = match f.kind.as_str() {
            "RequestHeaderModifier" => Kind::RequestHeaders(header_modifier(
                &format!("{at}.requestHeaderModifier"),
                f.request_header_modifier.as_ref().ok_or_else(missing)?,
            )?),
            "ResponseHeaderModifier" => Kind::ResponseHeaders(header_modifier(
                &format!("{at}.responseHeaderModifier"),
                f.response_header_modifier.as_ref().ok_or_else(missing)?,
            )?),
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                let at = format!("{at}.requestRedirect");
                let scheme = r.scheme.clone().unwrap_or_default();
                if !matches!(scheme.as_str(), "" | "http" | "https") {
                    return Err(invalid(format!("{at}.scheme"), format!("{scheme:?}: use http or https")));
                }
                if let Some(host) = &r.hostname {
                    hostname(&format!("{at}.hostname"), host)?;
                }
                let status_code = r.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&status_code) {
                    return Err(invalid(
                        format!("{at}.statusCode"),
                        format!("{status_code}: use 301, 302, 303, 307 or 308"),
                    ));
                }
                let path = r.path.as_ref().map(|p| path_modifier(&format!("{at}.path"), p, matches)).transpose()?;
                let port = r.port.map(|p| port(&format!("{at}.port"), p)).transpose()?.unwrap_or(0);
                Kind::Redirect(api::HttpRedirect {
                    scheme,
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path,
                    port,
                    status_code,
                })
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                let at = format!("{at}.urlRewrite");
                if let Some(host) = &r.hostname {
                    hostname(&format!("{at}.hostname"), host)?;
                }
                let path = r.path.as_ref().map(|p| path_modifier(&format!("{at}.path"), p, matches)).transpose()?;
                Kind::Rewrite(api::UrlRewrite { hostname: r.hostname.clone().unwrap_or_default(), path })
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or_else(missing)?;
                let at = format!("{at}.requestMirror");
                let backend = backend(&format!("{at}.backendRef"), namespace, &m.backend_ref)?;
                let (numerator, denominator) = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(at, "percent or fraction, not both"));
                    }
                    (Some(p), None) if p <= 100 => (p, 100),
                    (Some(p), None) => return Err(invalid(format!("{at}.percent"), format!("{p}: use 0-100"))),
                    (None, Some(f)) => {
                        let d = f.denominator.unwrap_or(100);
                        if d == 0 || f.numerator > d {
                            return Err(invalid(
                                format!("{at}.fraction"),
                                "numerator 0 to denominator, denominator at least 1",
                            ));
                        }
                        (f.numerator, d)
                    }
                    (None, None) => (100, 100),
                };
                Kind::Mirror(api::HttpMirror { backend: Some(backend), numerator, denominator })
            }
            other @ ("ExtensionRef" | "CORS" | "ExternalAuth") => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!("{other} filters are not implemented by this mesh: remove it"),
                ));
            }
            other => {
                return Err(invalid(
                    format!("{at}.type"),
                    format!(
                        "{other:?} is not a filter: use RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror"
                    ),
                ));
            }
        };
        out.push(api::HttpFilter { kind: Some(kind) });
    }
    let redirects = out.iter().any(|f| matches!(f.kind, Some(Kind::Redirect(_))));
    let rewrites = out.iter().any(|f| matches!(f.kind, Some(Kind::Rewrite(_))));
    if redirects && rewrites {
        return Err(invalid(
            field,
            "RequestRedirect and URLRewrite cannot both be used: a redirect is answered, never sent on",
        ));
    }
    Ok(out)
}

/// One condition of a route's status for one parent, as Gateway API's `RouteParentStatus`
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// A route's status for one Service parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: api::RouteParent,
    pub conditions: [Condition; 2],
}

impl std::fmt::Display for ParentStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.parent;
        write!(f, "parent Service/{}/{}", p.namespace, p.service)?;
        if p.port != 0 {
            write!(f, ":{}", p.port)?;
        }
        for c in &self.conditions {
            write!(f, ", {}={} ({}", c.kind, if c.status { "True" } else { "False" }, c.reason)?;
            if !c.message.is_empty() {
                write!(f, ": {}", c.message)?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// The status of route `namespace/name` for each of its Service parents: `Accepted` (the route
/// is valid and its parent Service, and port, exist) and `ResolvedRefs` (every backend is a
/// Service that exists, with the port). `ports(namespace, name)`: the
/// ports of a Service the model holds.
pub fn status(namespace: &str, route: &HttpRoute, ports: impl Fn(&str, &str) -> Option<Vec<u32>>) -> Vec<ParentStatus> {
    let translated = translate(namespace, route.metadata.name.as_deref().unwrap_or_default(), route);
    status_of(namespace, &route.spec.parent_refs, &translated, ports)
}

/// The status of a route (HTTPRoute, or a GRPCRoute as the HTTPRoute it means) with
/// `parent_refs`, translated (or refused) as `translated`.
pub fn status_of(
    namespace: &str,
    parent_refs: &[ParentRef],
    translated: &Result<Option<api::HttpRoute>, Invalid>,
    ports: impl Fn(&str, &str) -> Option<Vec<u32>>,
) -> Vec<ParentStatus> {
    let condition = |kind, status, reason, message: String| Condition { kind, status, reason, message };
    let parents: Vec<api::RouteParent> = parent_refs
        .iter()
        .filter(|p| p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service"))
        .map(|p| api::RouteParent {
            namespace: p.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
            service: p.name.clone(),
            port: p.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        })
        .collect();
    let resolved = match translated {
        Err(_) => condition("ResolvedRefs", false, "Invalid", "the route is not valid (see Accepted)".into()),
        Ok(route) => {
            let route = route.as_ref().expect("a route with Service parents is translated");
            let backends = route.rules.iter().flat_map(api::HttpRouteRule::upstreams);
            let mut problem = None;
            for b in backends {
                let name = format!("Service/{}/{}:{}", b.namespace, b.service, b.port);
                match ports(&b.namespace, &b.service) {
                    None => {
                        problem = Some((
                            "BackendNotFound",
                            format!("{name}: no such Service: requests to it are answered 500"),
                        ));
                        break;
                    }
                    Some(list) if !list.contains(&b.port) => {
                        problem = Some((
                            "BackendNotFound",
                            format!("{name}: the Service has no port {}: requests to it are answered 500", b.port),
                        ));
                        break;
                    }
                    Some(_) => {}
                }
            }
            match problem {
                None => condition("ResolvedRefs", true, "ResolvedRefs", String::new()),
                Some((reason, message)) => condition("ResolvedRefs", false, reason, message),
            }
        }
    };
    parents
        .into_iter()
        .map(|parent| {
            let accepted = match (translated, ports(&parent.namespace, &parent.service)) {
                (Err(err), _) => condition("Accepted", false, "UnsupportedValue", err.to_string()),
                (Ok(_), None) => condition(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("no Service {}/{}", parent.namespace, parent.service),
                ),
                (Ok(_), Some(list)) if parent.port != 0 && !list.contains(&parent.port) => condition(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("Service {}/{} has no port {}", parent.namespace, parent.service, parent.port),
                ),
                (Ok(_), Some(_)) => condition("Accepted", true, "Accepted", String::new()),
            };
            ParentStatus { parent, conditions: [accepted, resolved.clone()] }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> HttpRoute {
        mesh_common::yaml::document(&format!(
            "{{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {{name: r, namespace: demo}}, spec: {yaml}}}"
        ))
        .unwrap()
    }

    fn translated(yaml: &str) -> Result<Option<api::HttpRoute>, Invalid> {
        translate("demo", "r", &route(yaml))
    }

    const WEB: &str = "parentRefs: [{group: '', kind: Service, name: web, port: 80}]";

    #[test]
    fn a_mesh_route_is_normalised_with_gateway_api_defaults() {
        let r = translated(&format!(
            "{{{WEB}, rules: [{{backendRefs: [{{name: web-v1, port: 80}}, {{name: web-v2, port: 80, weight: 10}}]}},
              {{name: api, matches: [{{path: {{type: Exact, value: /api}}, headers: [{{name: X-Canary, value: 'yes'}}], method: GET}}],
               backendRefs: [{{name: web-v2, port: 80}}]}}]}}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.parents, [api::RouteParent { namespace: "demo".into(), service: "web".into(), port: 80 }]);
        let default = &r.rules[0];
        assert_eq!(default.matches.len(), 1, "a rule without matches matches every path");
        assert_eq!(
            (default.matches[0].path_match, default.matches[0].path.as_str()),
            (api::PathMatch::Prefix as i32, "/")
        );
        let weights: Vec<u32> = default.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 10], "weight defaults to 1");
        assert!(default.backends.iter().all(|b| b.namespace == "demo"));
        let api = &r.rules[1];
        assert_eq!(api.name, "api");
        assert_eq!(api.matches[0].headers[0].name, "x-canary", "header names are case-insensitive");
        assert_eq!(api.matches[0].method, "GET");
    }

    #[test]
    fn a_route_without_service_parents_is_not_the_mesh_s() {
        let gateway = "{parentRefs: [{name: edge}], rules: [{backendRefs: [{name: web, port: 80}]}]}";
        assert_eq!(translated(gateway), Ok(None), "parentRefs default to a Gateway");
    }

    #[test]
    fn bad_routes_are_refused_with_the_field() {
        let cases = [
            ("rules: [{matches: [{path: {type: Glob, value: /}}]}]", "spec.rules[0].matches[0].path.type"),
            (
                "rules: [{matches: [{path: {type: RegularExpression, value: '('}}]}]",
                "spec.rules[0].matches[0].path.value",
            ),
            ("rules: [{matches: [{path: {type: Exact, value: 'a//b'}}]}]", "spec.rules[0].matches[0].path.value"),
            ("rules: [{matches: [{method: FETCH}]}]", "spec.rules[0].matches[0].method"),
            (
                "rules: [{matches: [{headers: [{name: a, value: x}, {name: A, value: y}]}]}]",
                "spec.rules[0].matches[0].headers[1].name",
            ),
            ("rules: [{backendRefs: [{name: web}]}]", "spec.rules[0].backendRefs[0].port"),
            ("rules: [{backendRefs: [{name: web, port: 80, weight: 1000001}]}]", "spec.rules[0].backendRefs[0].weight"),
            ("rules: [{backendRefs: [{name: web, port: 80, kind: Pod}]}]", "spec.rules[0].backendRefs[0].kind"),
            ("rules: [{name: a}, {name: a}]", "spec.rules[1].name"),
            ("rules: [{timeouts: {request: 1s, backendRequest: 2s}}]", "spec.rules[0].timeouts.backendRequest"),
            ("rules: [{timeouts: {request: 1.5s}}]", "spec.rules[0].timeouts.request"),
            ("rules: [{retry: {codes: [200]}}]", "spec.rules[0].retry.codes[0]"),
            (
                "rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]}]",
                "spec.rules[0].filters[0].requestRedirect.statusCode",
            ),
            (
                "rules: [{filters: [{type: RequestRedirect, requestRedirect: {}}, {type: URLRewrite, urlRewrite: {}}]}]",
                "spec.rules[0].filters",
            ),
            (
                "rules: [{filters: [{type: RequestRedirect, requestRedirect: {}}], backendRefs: [{name: web, port: 80}]}]",
                "spec.rules[0].backendRefs",
            ),
            (
                "rules: [{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]",
                "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
            ),
            (
                "rules: [{filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}]}]",
                "spec.rules[0].filters[0]",
            ),
            ("rules: [{filters: [{type: ExtensionRef, extensionRef: {}}]}]", "spec.rules[0].filters[0].type"),
            (
                "rules: [{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'a b', value: x}]}}]}]",
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
            ),
            ("hostnames: ['Web.Example']", "spec.hostnames[0]"),
        ];
        for (spec, field) in cases {
            let err = translated(&format!("{{{WEB}, {spec}}}")).expect_err(spec);
            assert_eq!(err.field, field, "{spec}: {err}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_the_parser_naming_them() {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo}}\nspec: {{{WEB}, rules: [{{sessionPersistence: {{}}}}]}}\n"
        );
        let (objects, errors) = crate::local_dir::parse_text("r.yaml", &text);
        assert!(objects.is_empty());
        assert_eq!(errors[0].field, "spec.rules[0].sessionPersistence", "{errors:?}");
        assert!(errors[0].message.contains("sessionPersistence"), "{errors:?}");
    }

    #[test]
    fn status_reports_missing_parents_and_backends_per_parent() {
        let r = route(
            "{parentRefs: [{group: '', kind: Service, name: web, port: 80}, {group: '', kind: Service, name: gone}],
              rules: [{backendRefs: [{name: web-v1, port: 80}, {name: web-v2, port: 8080}]}]}",
        );
        let ports = |ns: &str, name: &str| match (ns, name) {
            ("demo", "web" | "web-v1" | "web-v2") => Some(vec![80]),
            _ => None,
        };
        let status = status("demo", &r, ports);
        assert_eq!(status.len(), 2);
        let [accepted, resolved] = &status[0].conditions;
        assert!(accepted.status, "{}", status[0]);
        assert_eq!((resolved.status, resolved.reason), (false, "BackendNotFound"), "{}", status[0]);
        assert!(resolved.message.contains("web-v2:8080"), "{}", status[0]);
        let [accepted, _] = &status[1].conditions;
        assert_eq!((accepted.status, accepted.reason), (false, "NoMatchingParent"), "{}", status[1]);

        // For the mesh, another namespace's Service needs no ReferenceGrant (GEP-1294).
        let across =
            route(&format!("{{{WEB}, rules: [{{backendRefs: [{{name: web, namespace: other, port: 80}}]}}]}}"));
        let status = super::status("demo", &across, |_, _| Some(vec![80]));
        assert!(status[0].conditions[1].status, "{}", status[0]);

        let fine = route(&format!("{{{WEB}, rules: [{{backendRefs: [{{name: web-v1, port: 80}}]}}]}}"));
        let status = super::status("demo", &fine, ports);
        assert!(status[0].conditions.iter().all(|c| c.status), "{}", status[0]);

        let invalid = route(&format!("{{{WEB}, rules: [{{matches: [{{method: FETCH}}]}}]}}"));
        let status = super::status("demo", &invalid, ports);
        assert_eq!((status[0].conditions[0].status, status[0].conditions[0].reason), (false, "UnsupportedValue"));
        assert!(status[0].conditions[0].message.contains("spec.rules[0].matches[0].method"), "{}", status[0]);
    }

    #[test]
    fn the_model_of_a_directory_carries_mesh_routes() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec: {{ports: [{{port: 80, appProtocol: http}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: demo}}\nspec: {{{WEB}, rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}\n"
        );
        let (resources, errors) = crate::local_dir::model_of_text(&text);
        assert!(errors.is_empty(), "{errors:?}");
        let routes: Vec<_> = resources
            .iter()
            .filter_map(|r| match &r.kind {
                Some(api::resource::Kind::HttpRoute(route)) => Some(route),
                _ => None,
            })
            .collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].rules[0].backends[0].service, "web");
        let app_protocol = resources.iter().find_map(|r| match &r.kind {
            Some(api::resource::Kind::Service(s)) => Some(s.ports[0].app_protocol.clone()),
            _ => None,
        });
        assert_eq!(app_protocol.as_deref(), Some("http"));
    }
}
