//! Gateway API `GRPCRoute` (gateway.networking.k8s.io/v1) for the mesh (GAMMA): the object as
//! written, its gRPC parts checked as the CRD and its CEL rules check them (errors name the
//! GRPCRoute's own fields), then rewritten as the HTTPRoute it means, since a gRPC call is an
//! HTTP/2 POST to `/<service>/<method>`: an Exact method match is an Exact path (or, with only
//! the service, the path prefix `/<service>`; with only the method, the expression
//! `/[^/]+/<method>`), a RegularExpression one is the expression `/(<service>)/(<method>)`.
//! Parents, header matches, filters, backends and weights are HTTPRoute's, so they are checked,
//! routed, weighted and reported (status) by one implementation, `http_route`, and served by the
//! agent's L7 proxy over HTTP/2 (gRPC clients speak it, and a backend port's `appProtocol: grpc`
//! asks for it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_common::api;
use serde::Deserialize;

use crate::{
    http_route::{self, BackendRef, Filter, HttpRoute, HttpRouteSpec, Match, ParentRef, PathMatch, Rule, ValueMatch},
    translate::Invalid,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: GrpcRouteSpec,
    /// Written by implementations; read back, never trusted.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

crate::http_route::gateway_route_resource!(GrpcRoute, "GRPCRoute", "grpcroutes");

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMatch {
    pub method: Option<MethodMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MethodMatch {
    /// Exact (the default) or RegularExpression.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

/// The filters a GRPCRoute may use (the CRD's enum): no redirects or rewrites in gRPC.
const FILTERS: [&str; 4] = ["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"];

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

/// A gRPC service name (`package.Service`), as the CRD's pattern allows it for Exact matches.
fn is_service(name: &str) -> bool {
    let name = name.strip_prefix('.').unwrap_or(name);
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A gRPC method name, as the CRD's pattern allows it for Exact matches.
fn is_method(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The path match a method match means.
fn path_of(field: &str, m: &MethodMatch) -> Result<PathMatch, Invalid> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err(invalid(field, "one of service or method must be given"));
    }
    let path = |kind: &str, value: String| PathMatch { kind: Some(kind.to_owned()), value: Some(value) };
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            if let Some(s) = service.filter(|s| !is_service(s)) {
                return Err(invalid(
                    format!("{field}.service"),
                    format!("{s:?} is not a gRPC service name (package.Service): letters, digits, '_' and '.'"),
                ));
            }
            if let Some(m) = method.filter(|m| !is_method(m)) {
                return Err(invalid(
                    format!("{field}.method"),
                    format!("{m:?} is not a gRPC method name: letters, digits and '_'"),
                ));
            }
            Ok(match (service, method) {
                (Some(s), Some(m)) => path("Exact", format!("/{s}/{m}")),
                (Some(s), None) => path("PathPrefix", format!("/{s}")),
                (None, Some(m)) => path("RegularExpression", format!("/[^/]+/{m}")),
                (None, None) => unreachable!("checked above"),
            })
        }
        "RegularExpression" => {
            for (name, value) in [("service", service), ("method", method)] {
                if let Some(v) = value {
                    mesh_common::http_route::regex(v).map_err(|e| invalid(format!("{field}.{name}"), e))?;
                }
            }
            let (s, m) = (service.unwrap_or("[^/]+"), method.unwrap_or("[^/]+"));
            Ok(path("RegularExpression", format!("/(?:{s})/(?:{m})")))
        }
        other => Err(invalid(format!("{field}.type"), format!("{other:?}: use Exact or RegularExpression"))),
    }
}

impl GrpcRoute {
    /// The HTTPRoute this route means, or the GRPCRoute field at fault.
    pub fn as_http_route(&self) -> Result<HttpRoute, Invalid> {
        let rules = self
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = format!("spec.rules[{i}]");
                let mut all_filters: Vec<(String, &Filter)> =
                    rule.filters.iter().enumerate().map(|(j, f)| (format!("{field}.filters[{j}]"), f)).collect();
                for (j, b) in rule.backend_refs.iter().enumerate() {
                    all_filters.extend(
                        b.filters
                            .iter()
                            .enumerate()
                            .map(|(k, f)| (format!("{field}.backendRefs[{j}].filters[{k}]"), f)),
                    );
                }
                for (at, filter) in all_filters {
                    if !FILTERS.contains(&filter.kind.as_str()) {
                        return Err(invalid(
                            format!("{at}.type"),
                            format!("{:?} is not a GRPCRoute filter: use one of {}", filter.kind, FILTERS.join(", ")),
                        ));
                    }
                }
                let matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| {
                        let path =
                            m.method.as_ref().map(|method| path_of(&format!("{field}.matches[{j}].method"), method));
                        Ok(Match { path: path.transpose()?, headers: m.headers.clone(), ..Match::default() })
                    })
                    .collect::<Result<Vec<_>, Invalid>>()?;
                Ok(Rule {
                    name: rule.name.clone(),
                    matches,
                    filters: rule.filters.clone(),
                    backend_refs: rule.backend_refs.clone(),
                    timeouts: None,
                    retry: None,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        Ok(HttpRoute {
            api_version: self.api_version.clone(),
            kind: "HTTPRoute".into(),
            metadata: self.metadata.clone(),
            spec: HttpRouteSpec {
                parent_refs: self.spec.parent_refs.clone(),
                hostnames: self.spec.hostnames.clone(),
                rules,
            },
            status: None,
        })
    }
}

/// The route `namespace/name`, checked and normalised as the model's route. `Ok(None)`: valid,
/// but with no Service parent, so nothing for the mesh.
pub fn translate(namespace: &str, name: &str, route: &GrpcRoute) -> Result<Option<api::HttpRoute>, Invalid> {
    http_route::translate(namespace, name, &route.as_http_route()?)
}

/// The route's status per Service parent, as an HTTPRoute's.
pub fn status(
    namespace: &str,
    route: &GrpcRoute,
    ports: impl Fn(&str, &str) -> Option<Vec<u32>>,
) -> Vec<http_route::ParentStatus> {
    let translated = translate(namespace, route.metadata.name.as_deref().unwrap_or_default(), route);
    http_route::status_of(namespace, &route.spec.parent_refs, &translated, ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "parentRefs: [{group: '', kind: Service, name: grpc, port: 50051}]";

    fn translated(spec: &str) -> Result<Option<api::HttpRoute>, Invalid> {
        let yaml = format!(
            "{{apiVersion: gateway.networking.k8s.io/v1, kind: GRPCRoute, metadata: {{name: r, namespace: demo}}, spec: {spec}}}"
        );
        let route: GrpcRoute = mesh_common::yaml::document(&yaml).expect("parses");
        translate("demo", "r", &route)
    }

    fn paths(spec: &str) -> Vec<(i32, String)> {
        let route = translated(spec).unwrap().unwrap();
        route.rules[0].matches.iter().map(|m| (m.path_match, m.path.clone())).collect()
    }

    #[test]
    fn methods_become_paths() {
        let spec = format!(
            "{{{PARENT}, rules: [{{matches: [
              {{method: {{service: grpc.health.v1.Health, method: Check}}}},
              {{method: {{service: grpc.health.v1.Health}}}},
              {{method: {{method: Watch}}}},
              {{method: {{type: RegularExpression, service: 'grpc\\.health\\..*'}}}},
              {{headers: [{{name: version, value: two}}]}}
            ], backendRefs: [{{name: grpc, port: 50051}}]}}]}}"
        );
        assert_eq!(
            paths(&spec),
            [
                (api::PathMatch::Exact as i32, "/grpc.health.v1.Health/Check".to_owned()),
                (api::PathMatch::Prefix as i32, "/grpc.health.v1.Health".to_owned()),
                (api::PathMatch::Regex as i32, "/[^/]+/Watch".to_owned()),
                (api::PathMatch::Regex as i32, "/(?:grpc\\.health\\..*)/(?:[^/]+)".to_owned()),
                (api::PathMatch::Prefix as i32, "/".to_owned()),
            ]
        );
    }

    #[test]
    fn errors_name_the_grpcroute_field() {
        let err = |rules: &str| translated(&format!("{{{PARENT}, rules: [{rules}]}}")).unwrap_err().to_string();
        let e = err("{matches: [{method: {}}]}");
        assert!(e.starts_with("spec.rules[0].matches[0].method: ") && e.contains("one of service or method"), "{e}");
        let e = err("{matches: [{method: {service: 'not a service'}}]}");
        assert!(e.starts_with("spec.rules[0].matches[0].method.service: "), "{e}");
        let e = err("{matches: [{method: {method: 'Get-It'}}]}");
        assert!(e.starts_with("spec.rules[0].matches[0].method.method: "), "{e}");
        let e = err("{matches: [{method: {type: RegularExpression, method: '('}}]}");
        assert!(e.starts_with("spec.rules[0].matches[0].method.method: "), "{e}");
        let e = err("{matches: [{method: {type: Prefix, method: Check}}]}");
        assert!(e.starts_with("spec.rules[0].matches[0].method.type: "), "{e}");
        let e =
            err("{filters: [{type: URLRewrite, urlRewrite: {hostname: x}}], backendRefs: [{name: grpc, port: 50051}]}");
        assert!(e.starts_with("spec.rules[0].filters[0].type: ") && e.contains("not a GRPCRoute filter"), "{e}");
        // Shared parts are checked as HTTPRoute's, under the same field names.
        let e = err("{backendRefs: [{name: grpc}]}");
        assert!(e.starts_with("spec.rules[0].backendRefs[0].port: "), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let yaml = format!(
            "{{apiVersion: gateway.networking.k8s.io/v1, kind: GRPCRoute, metadata: {{name: r, namespace: demo}}, spec: {{{PARENT}, rules: [{{timeouts: {{request: 1s}}}}]}}}}"
        );
        let (field, _) = mesh_common::yaml::document::<GrpcRoute>(&yaml).unwrap_err();
        assert!(field.contains("timeouts"), "GRPCRoute has no timeouts: refused by name, not ignored: {field}");
    }
}
