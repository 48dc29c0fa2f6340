//! Which HTTPRoute rule a request to a Service takes, as Gateway API's mesh profile (GAMMA)
//! specifies: the routes attached to the Service (and port) the connection was made to; a
//! client's own namespace's routes (consumer routes) replace the Service namespace's (producer
//! routes) for that client; among matches, Gateway API's precedence; then a backend by weight.
//!
//! Precedence, most specific first (Gateway API, HTTPRoute "matches"): an `Exact` path, then a
//! `RegularExpression` path (longer patterns first; where regular expressions go is left to
//! implementations, and ranking them above prefixes lets `/v[0-9]+/.*` win over a catch-all
//! `/`), then `PathPrefix` by length, then a method match, then more header matches, then more
//! query-parameter matches; ties go to the older route (creation time), then to
//! `namespace/name` in alphabetical order, then to the earlier rule and match. The order is
//! worked out once when the table is built; a request takes the first match that applies.

use std::{collections::HashMap, sync::Arc};

use http::{HeaderMap, Method, Uri};
use mesh_common::{api, http_route::Regex};

/// A Service routes are attached to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// What a request gets.
#[derive(Debug, Clone)]
pub enum Routing {
    /// No route is attached to the Service's port for this client: the Service's own
    /// balancing, as without routes.
    NotRouted,
    /// Routes are attached, and no rule matches: answered 404 (what the mesh conformance tests
    /// expect).
    NoMatch,
    Rule(Selected),
}

/// The rule a request takes: the route, the rule and the match that chose it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub route: Arc<RouteName>,
    pub rule: Arc<api::HttpRouteRule>,
    /// The index of the rule in its route (for its name in flows and metrics when unnamed).
    pub rule_index: usize,
    /// The path match that applied (a `ReplacePrefixMatch` rewrite replaces its prefix).
    pub path: Arc<PathMatcher>,
}

/// `namespace/name` of a route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(String),
    /// Without its trailing '/': `/abc/` and `/abc` are the same prefix.
    Prefix(String),
    Regex(Regex),
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            // Whole path elements: `/abc` takes `/abc`, `/abc/` and `/abc/d`, not `/abcd`.
            Self::Prefix(p) => {
                p.is_empty()
                    || path.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Self::Regex(re) => re.is_match(path),
        }
    }

    /// (class, length) for precedence: Exact 3, RegularExpression 2, PathPrefix 1.
    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(p) => (3, p.len()),
            Self::Regex(re) => (2, re.as_str().len()),
            Self::Prefix(p) => (1, p.len()),
        }
    }
}

#[derive(Debug, Clone)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

/// One match of one rule, compiled, with what orders it.
#[derive(Debug, Clone)]
struct Candidate {
    /// The parent's port; 0: every port.
    port: u32,
    path: Arc<PathMatcher>,
    method: Option<Method>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    created_unix: i64,
    route: Arc<RouteName>,
    rule: Arc<api::HttpRouteRule>,
    rule_index: usize,
    match_index: usize,
}

impl Candidate {
    /// Greater is more specific; then older, then by name, then earlier.
    fn order(&self) -> impl Ord + '_ {
        let (class, len) = self.path.rank();
        (
            std::cmp::Reverse((class, len, self.method.is_some(), self.headers.len(), self.query.len())),
            self.created_unix,
            self.route.as_ref(),
            self.rule_index,
            self.match_index,
        )
    }

    fn matches(&self, port: u16, method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        (self.port == 0 || self.port == u32::from(port))
            && self.path.matches(path)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(|(name, want)| {
                // Repeated headers count as one, their values joined by ',' (RFC 9110 5.3).
                let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
                !values.is_empty() && want.matches(&values.join(","))
            })
            && self.query.iter().all(|(name, want)| {
                // The first parameter of that name decides, as Gateway API recommends.
                let value = query.into_iter().flat_map(|q| q.split('&')).find_map(|pair| {
                    let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (n == name).then_some(v)
                });
                value.is_some_and(|v| want.matches(v))
            })
    }
}

/// The routes of every Service, ready for requests. Built whole from the model on each change
/// of routes (route counts are small: at most 16 rules of at most 64 matches each).
#[derive(Debug, Default)]
pub struct RouteTable {
    services: HashMap<ServiceRef, ServiceRoutes>,
}

#[derive(Debug, Default)]
struct ServiceRoutes {
    producer: Vec<Candidate>,
    /// Client namespace -> its own routes for the Service.
    consumers: HashMap<String, Vec<Candidate>>,
}

/// A route the agent could not compile (the operator validated it, so this means an operator
/// of another version); the route is left out and named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTPRoute {route}: {problem}; the route is left out until it is fixed")]
pub struct RouteError {
    pub route: String,
    pub problem: String,
}

impl RouteTable {
    pub fn build<'a>(routes: impl IntoIterator<Item = &'a api::HttpRoute>) -> (Self, Vec<RouteError>) {
        let mut table = Self::default();
        let mut errors = Vec::new();
        for route in routes {
            let name = Arc::new(RouteName { namespace: route.namespace.clone(), name: route.name.clone() });
            let candidates = match compile(route, &name) {
                Ok(candidates) => candidates,
                Err(problem) => {
                    errors.push(RouteError { route: name.to_string(), problem });
                    continue;
                }
            };
            for parent in &route.parents {
                let service = ServiceRef { namespace: parent.namespace.clone(), name: parent.service.clone() };
                let entry = table.services.entry(service).or_default();
                let list = if route.namespace == parent.namespace {
                    &mut entry.producer
                } else {
                    entry.consumers.entry(route.namespace.clone()).or_default()
                };
                list.extend(candidates.iter().cloned().map(|mut c| {
                    c.port = parent.port;
                    c
                }));
            }
        }
        for routes in table.services.values_mut() {
            routes.producer.sort_by(|a, b| a.order().cmp(&b.order()));
            for list in routes.consumers.values_mut() {
                list.sort_by(|a, b| a.order().cmp(&b.order()));
            }
        }
        (table, errors)
    }

    /// Whether any route is attached to the Service (on any port): its connections need the
    /// L7 proxy.
    pub fn has_routes(&self, service: &ServiceRef) -> bool {
        self.services.contains_key(service)
    }

    /// What a request from a pod of `client_namespace` to `service`:`port` gets.
    pub fn select(
        &self,
        service: &ServiceRef,
        port: u16,
        client_namespace: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Routing {
        let Some(routes) = self.services.get(service) else { return Routing::NotRouted };
        let on_port = |list: &&Vec<Candidate>| list.iter().any(|c| c.port == 0 || c.port == u32::from(port));
        let consumer = routes.consumers.get(client_namespace).filter(on_port);
        let Some(list) = consumer.or(Some(&routes.producer).filter(on_port)) else { return Routing::NotRouted };
        let path = uri.path();
        match list.iter().find(|c| c.matches(port, method, path, uri.query(), headers)) {
            Some(c) => Routing::Rule(Selected {
                route: c.route.clone(),
                rule: c.rule.clone(),
                rule_index: c.rule_index,
                path: c.path.clone(),
            }),
            None => Routing::NoMatch,
        }
    }
}

fn compile(route: &api::HttpRoute, name: &Arc<RouteName>) -> Result<Vec<Candidate>, String> {
    let mut out = Vec::new();
    for (rule_index, rule) in route.rules.iter().enumerate() {
        let shared = Arc::new(rule.clone());
        for (match_index, m) in rule.matches.iter().enumerate() {
            let at = format!("rules[{rule_index}].matches[{match_index}]");
            let path = match api::PathMatch::try_from(m.path_match) {
                Ok(api::PathMatch::Exact) => PathMatcher::Exact(m.path.clone()),
                Ok(api::PathMatch::Prefix) => PathMatcher::Prefix(m.path.trim_end_matches('/').to_owned()),
                Ok(api::PathMatch::Regex) => {
                    PathMatcher::Regex(mesh_common::http_route::regex(&m.path).map_err(|e| format!("{at}.path: {e}"))?)
                }
                _ => return Err(format!("{at}.path: no match type")),
            };
            let method = match m.method.as_str() {
                "" => None,
                text => Some(Method::from_bytes(text.as_bytes()).map_err(|_| format!("{at}.method: {text:?}"))?),
            };
            let value = |v: &api::NameValueMatch, field: &str| match api::ValueMatch::try_from(v.r#match) {
                Ok(api::ValueMatch::Regex) => mesh_common::http_route::regex(&v.value)
                    .map(ValueMatcher::Regex)
                    .map_err(|e| format!("{at}.{field}: {e}")),
                _ => Ok(ValueMatcher::Exact(v.value.clone())),
            };
            let headers = m
                .headers
                .iter()
                .map(|h| {
                    let name = http::HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| format!("{at}.headers: {:?}", h.name))?;
                    Ok((name, value(h, "headers")?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let query = m
                .query_params
                .iter()
                .map(|q| Ok((q.name.clone(), value(q, "queryParams")?)))
                .collect::<Result<_, String>>()?;
            out.push(Candidate {
                port: 0,
                path: Arc::new(path),
                method,
                headers,
                query,
                created_unix: route.created_unix,
                route: name.clone(),
                rule: shared.clone(),
                rule_index,
                match_index,
            });
        }
    }
    Ok(out)
}

/// The backend a request goes to: each with probability weight / total; `None` when every
/// weight is 0 or there is none (the request is answered 500, as Gateway API specifies).
/// `random` is uniform over `u32`.
pub fn pick_backend(backends: &[api::HttpBackend], random: u32) -> Option<&api::HttpBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // Scaled rather than taken modulo the total, so no backend gains from the remainder.
    let mut point = (u64::from(random) * total) >> 32;
    backends.iter().find(|b| {
        if point < u64::from(b.weight) {
            return true;
        }
        point -= u64::from(b.weight);
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(namespace: &str, name: &str, created: i64, yaml: &str) -> api::HttpRoute {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {yaml}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec: {{ports: [{{port: 80}}]}}\n"
        );
        let (resources, errors) = mesh_operator_model(&text);
        assert!(errors.is_empty(), "{errors:?}");
        let mut route = resources
            .into_iter()
            .find_map(|r| match r.kind {
                Some(api::resource::Kind::HttpRoute(route)) => Some(*route),
                _ => None,
            })
            .expect("the route");
        route.created_unix = created;
        route
    }

    /// The operator's translation, so tests see what the agent is sent. (A dev-dependency: the
    /// agent itself never links the operator.)
    fn mesh_operator_model(text: &str) -> (Vec<api::Resource>, Vec<String>) {
        mesh_operator::local_dir::model_of_text(text)
    }

    fn web() -> ServiceRef {
        ServiceRef { namespace: "demo".into(), name: "web".into() }
    }

    fn request(table: &RouteTable, client: &str, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        match table.select(&web(), 80, client, &method, &uri.parse().unwrap(), &map) {
            Routing::Rule(s) => {
                let rule = if s.rule.name.is_empty() { format!("#{}", s.rule_index) } else { s.rule.name.clone() };
                Some(format!("{}:{rule}", s.route.name))
            }
            Routing::NoMatch => Some("404".into()),
            Routing::NotRouted => None,
        }
    }

    const PARENT: &str = "parentRefs: [{group: '', kind: Service, name: web, namespace: demo, port: 80}]";

    #[test]
    fn precedence_follows_gateway_api() {
        let r = route(
            "demo",
            "r",
            0,
            &format!(
                "{{{PARENT}, rules: [
                  {{name: all, matches: [{{path: {{type: PathPrefix, value: /}}}}]}},
                  {{name: v2, matches: [{{path: {{type: PathPrefix, value: /v2/}}}}]}},
                  {{name: v2-exact, matches: [{{path: {{type: Exact, value: /v2/exact}}}}]}},
                  {{name: regex, matches: [{{path: {{type: RegularExpression, value: '/v[0-9]+/r.*'}}}}]}},
                  {{name: get, matches: [{{path: {{type: PathPrefix, value: /v2}}, method: GET}}]}},
                  {{name: header, matches: [{{path: {{type: PathPrefix, value: /v2}}, method: GET, headers: [{{name: version, value: two}}]}}]}},
                  {{name: query, matches: [{{path: {{type: PathPrefix, value: /v2}}, method: GET, headers: [{{name: version, value: two}}], queryParams: [{{name: q, value: '1'}}]}}]}}
                ]}}"
            ),
        );
        let (table, errors) = RouteTable::build([&r]);
        assert!(errors.is_empty());
        let cases = [
            ("POST", "/", vec![], "r:all"),
            ("POST", "/v2", vec![], "r:v2"),
            ("POST", "/v2/", vec![], "r:v2"),
            ("POST", "/v2/x", vec![], "r:v2"),
            ("POST", "/v2x", vec![], "r:all"),
            ("POST", "/v2/exact", vec![], "r:v2-exact"),
            ("GET", "/v2/exact", vec![("version", "two")], "r:v2-exact"),
            ("POST", "/v3/rest", vec![], "r:regex"),
            ("POST", "/x/v3/rest", vec![], "r:all"),
            ("GET", "/v2/x", vec![], "r:get"),
            ("GET", "/v2/x", vec![("Version", "two")], "r:header"),
            ("GET", "/v2/x", vec![("version", "Two")], "r:get"),
            ("GET", "/v2/x?q=1", vec![("version", "two")], "r:query"),
            ("GET", "/v2/x?q=2&q=1", vec![("version", "two")], "r:header"),
        ];
        for (method, uri, headers, want) in cases {
            assert_eq!(
                request(&table, "demo", method, uri, &headers).as_deref(),
                Some(want),
                "{method} {uri} {headers:?}"
            );
        }
    }

    #[test]
    fn ties_go_to_the_older_route_then_the_name_then_the_first_rule() {
        let rule = |name: &str| format!("{{name: {name}, matches: [{{path: {{type: PathPrefix, value: /a}}}}]}}");
        let newer = route("demo", "a-newer", 200, &format!("{{{PARENT}, rules: [{}]}}", rule("x")));
        let older =
            route("demo", "z-older", 100, &format!("{{{PARENT}, rules: [{}, {}]}}", rule("first"), rule("second")));
        let (table, _) = RouteTable::build([&newer, &older]);
        assert_eq!(request(&table, "demo", "GET", "/a", &[]).as_deref(), Some("z-older:first"));
        let same_age = route("demo", "b", 100, &format!("{{{PARENT}, rules: [{}]}}", rule("y")));
        let (table, _) = RouteTable::build([&older, &same_age]);
        assert_eq!(request(&table, "demo", "GET", "/a", &[]).as_deref(), Some("b:y"), "alphabetical on a tie in age");
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let producer = route("demo", "producer", 0, &format!("{{{PARENT}, rules: [{{name: p}}]}}"));
        let consumer = route(
            "client-ns",
            "consumer",
            0,
            &format!("{{{PARENT}, rules: [{{name: c, matches: [{{path: {{type: Exact, value: /only}}}}]}}]}}"),
        );
        let (table, _) = RouteTable::build([&producer, &consumer]);
        assert_eq!(request(&table, "demo", "GET", "/x", &[]).as_deref(), Some("producer:p"));
        assert_eq!(request(&table, "other", "GET", "/x", &[]).as_deref(), Some("producer:p"));
        assert_eq!(request(&table, "client-ns", "GET", "/only", &[]).as_deref(), Some("consumer:c"));
        assert_eq!(
            request(&table, "client-ns", "GET", "/x", &[]).as_deref(),
            Some("404"),
            "the producer's routes do not apply to this client"
        );
    }

    #[test]
    fn a_parent_port_limits_the_route_to_that_port() {
        let r = route("demo", "r", 0, "{parentRefs: [{group: '', kind: Service, name: web, port: 8080}], rules: [{}]}");
        let (table, _) = RouteTable::build([&r]);
        assert!(table.has_routes(&web()));
        assert_eq!(request(&table, "demo", "GET", "/", &[]), None, "port 80 has no route: not routed");
        let exact = route(
            "demo",
            "e",
            0,
            &format!("{{{PARENT}, rules: [{{matches: [{{path: {{type: Exact, value: /x}}}}]}}]}}"),
        );
        let (table, _) = RouteTable::build([&exact]);
        assert_eq!(request(&table, "demo", "GET", "/y", &[]).as_deref(), Some("404"), "routed, and no rule matches");
    }

    #[test]
    fn backends_are_picked_by_weight_and_weight_zero_never() {
        let backend = |weight| api::HttpBackend { weight, ..Default::default() };
        let backends = [backend(99), backend(1), backend(0)];
        let mut counts = [0u32; 3];
        // Every 2^16th point of the u32 range: exact proportions, no randomness in the test.
        for i in 0..65_536u32 {
            let chosen = pick_backend(&backends, i << 16).unwrap();
            let index = backends.iter().position(|b| std::ptr::eq(b, chosen)).unwrap();
            counts[index] += 1;
        }
        assert_eq!(counts[2], 0, "weight 0 gets nothing");
        let share = f64::from(counts[1]) / 65_536.0;
        assert!((share - 0.01).abs() < 0.0005, "{share}");
        assert!(pick_backend(&[backend(0)], 7).is_none(), "all zero: none (500)");
        assert!(pick_backend(&[], 7).is_none());
        assert!(
            std::ptr::eq(pick_backend(&backends, u32::MAX).unwrap(), &backends[1]),
            "the top of the range stays in bounds"
        );
    }
}
