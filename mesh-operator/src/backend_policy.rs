//! `BackendTrafficPolicy` (mesh.dev/v1alpha1): checked (each error names the field and says
//! what to write) and normalised into the model's form, defaults filled in as Istio's
//! DestinationRule fills them.

use mesh_common::{api, http_route::duration_ms, names::is_dns_label};

use crate::{crd::BackendTrafficPolicy, translate::Invalid};

/// Gateway API's limit on `targetRefs`.
const MAX_TARGETS: usize = 16;
/// Istio's defaults.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// Envoy's `max_ejection_time` default.
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
/// The pending requests allowed when `maxConnections` is set and `maxPendingRequests` is not
/// (Envoy's default circuit breaker).
pub const DEFAULT_MAX_PENDING: u32 = 1024;
/// Ejections last at most a day.
const MAX_EJECTION_MS: u64 = 86_400_000;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

/// The policy `namespace/name`, checked and normalised.
pub fn translate(
    namespace: &str,
    name: &str,
    policy: &BackendTrafficPolicy,
) -> Result<api::BackendTrafficPolicy, Invalid> {
    let spec = &policy.spec;
    if spec.target_refs.is_empty() {
        return Err(invalid("spec.targetRefs", "name at least one Service: [{group: \"\", kind: Service, name: ...}]"));
    }
    if spec.target_refs.len() > MAX_TARGETS {
        return Err(invalid(
            "spec.targetRefs",
            format!("at most {MAX_TARGETS} targets; this has {}", spec.target_refs.len()),
        ));
    }
    let mut services = Vec::new();
    for (i, target) in spec.target_refs.iter().enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        if !target.group.is_empty() || target.kind != "Service" {
            return Err(invalid(
                format!("{field}.kind"),
                format!(
                    "{}/{} cannot be targeted: only Services (group \"\", kind Service) of the policy's namespace",
                    target.group, target.kind
                ),
            ));
        }
        if !is_dns_label(&target.name) {
            return Err(invalid(format!("{field}.name"), format!("{:?} is not a Service name", target.name)));
        }
        if !services.contains(&target.name) {
            services.push(target.name.clone());
        }
    }
    let outlier_detection = spec.outlier_detection.as_ref().map(outlier_detection).transpose()?;
    let connection_limits = spec.connection_pool.as_ref().map(connection_limits).transpose()?;
    Ok(api::BackendTrafficPolicy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        services,
        outlier_detection,
        connection_limits,
        created_unix: policy.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
    })
}

fn ejection_time(field: &str, text: Option<&str>, default: u64) -> Result<u64, Invalid> {
    let Some(text) = text else { return Ok(default) };
    let ms = duration_ms(text).map_err(|m| invalid(field, m))?;
    if ms == 0 || ms > MAX_EJECTION_MS {
        return Err(invalid(field, format!("{text:?} is out of range: from 1ms to 24h")));
    }
    Ok(ms)
}

fn outlier_detection(o: &crate::crd::OutlierDetection) -> Result<api::OutlierDetection, Invalid> {
    let field = "spec.outlierDetection";
    let base =
        ejection_time(&format!("{field}.baseEjectionTime"), o.base_ejection_time.as_deref(), DEFAULT_BASE_EJECTION_MS)?;
    let max = ejection_time(
        &format!("{field}.maxEjectionTime"),
        o.max_ejection_time.as_deref(),
        DEFAULT_MAX_EJECTION_MS.max(base),
    )?;
    if max < base {
        return Err(invalid(
            format!("{field}.maxEjectionTime"),
            format!("{max} ms is shorter than baseEjectionTime ({base} ms): make it at least as long"),
        ));
    }
    let percent = o.max_ejection_percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
    if percent > 100 {
        return Err(invalid(
            format!("{field}.maxEjectionPercent"),
            format!("{percent} is not a percentage: use 0-100"),
        ));
    }
    let consecutive_5xx_errors = o.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX);
    let consecutive_gateway_errors = o.consecutive_gateway_errors.unwrap_or(0);
    if consecutive_5xx_errors == 0 && consecutive_gateway_errors == 0 {
        return Err(invalid(
            format!("{field}.consecutive5xxErrors"),
            "0, with no consecutiveGatewayErrors either, would never eject: set one of them, or remove outlierDetection",
        ));
    }
    Ok(api::OutlierDetection {
        consecutive_5xx_errors,
        consecutive_gateway_errors,
        base_ejection_ms: u32::try_from(base).unwrap_or(u32::MAX),
        max_ejection_ms: u32::try_from(max).unwrap_or(u32::MAX),
        max_ejection_percent: percent,
    })
}

fn connection_limits(c: &crate::crd::ConnectionPool) -> Result<api::ConnectionLimits, Invalid> {
    let positive = |name: &str, value: Option<u32>| match value {
        Some(0) => Err(invalid(
            format!("spec.connectionPool.{name}"),
            "0 would refuse every request: give at least 1, or leave it out for no limit",
        )),
        other => Ok(other.unwrap_or(0)),
    };
    let max_connections = positive("maxConnections", c.max_connections)?;
    let mut max_pending_requests = positive("maxPendingRequests", c.max_pending_requests)?;
    if max_connections > 0 && max_pending_requests == 0 {
        max_pending_requests = DEFAULT_MAX_PENDING;
    }
    Ok(api::ConnectionLimits {
        max_connections,
        max_pending_requests,
        max_requests: positive("maxRequests", c.max_requests)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spec: &str) -> Result<api::BackendTrafficPolicy, Invalid> {
        let p: BackendTrafficPolicy = mesh_common::yaml::document(&format!(
            "{{apiVersion: mesh.dev/v1alpha1, kind: BackendTrafficPolicy, metadata: {{name: p, namespace: demo}}, spec: {spec}}}"
        ))
        .unwrap();
        translate("demo", "p", &p)
    }

    #[test]
    fn defaults_are_istios() {
        let p = policy("{targetRefs: [{group: '', kind: Service, name: web}], outlierDetection: {}, connectionPool: {maxConnections: 10}}").unwrap();
        assert_eq!(p.services, ["web"]);
        let o = p.outlier_detection.unwrap();
        assert_eq!((o.consecutive_5xx_errors, o.consecutive_gateway_errors), (5, 0));
        assert_eq!((o.base_ejection_ms, o.max_ejection_ms, o.max_ejection_percent), (30_000, 300_000, 10));
        let c = p.connection_limits.unwrap();
        assert_eq!((c.max_connections, c.max_pending_requests, c.max_requests), (10, 1024, 0));
        let bare = policy("{targetRefs: [{kind: Service, name: web}]}").unwrap();
        assert!(bare.outlier_detection.is_none() && bare.connection_limits.is_none());
    }

    #[test]
    fn bad_policies_name_their_field() {
        let field = |spec: &str| policy(spec).unwrap_err().field;
        assert_eq!(field("{targetRefs: []}"), "spec.targetRefs");
        assert_eq!(field("{targetRefs: [{group: apps, kind: Deployment, name: web}]}"), "spec.targetRefs[0].kind");
        assert_eq!(field("{targetRefs: [{kind: Service, name: Web_1}]}"), "spec.targetRefs[0].name");
        let target = "targetRefs: [{kind: Service, name: web}]";
        assert_eq!(
            field(&format!("{{{target}, outlierDetection: {{maxEjectionPercent: 101}}}}")),
            "spec.outlierDetection.maxEjectionPercent"
        );
        assert_eq!(
            field(&format!("{{{target}, outlierDetection: {{baseEjectionTime: soon}}}}")),
            "spec.outlierDetection.baseEjectionTime"
        );
        assert_eq!(
            field(&format!("{{{target}, outlierDetection: {{baseEjectionTime: 10m, maxEjectionTime: 1m}}}}")),
            "spec.outlierDetection.maxEjectionTime"
        );
        assert_eq!(
            field(&format!("{{{target}, outlierDetection: {{consecutive5xxErrors: 0}}}}")),
            "spec.outlierDetection.consecutive5xxErrors"
        );
        assert_eq!(
            field(&format!("{{{target}, connectionPool: {{maxRequests: 0}}}}")),
            "spec.connectionPool.maxRequests"
        );
    }
}

#[cfg(test)]
mod status_tests {
    use crate::{cluster::ClusterView, identity::IdentityAllocator, local_dir::parse_text};

    /// The oldest policy targeting a Service is Accepted there, a younger one Conflicted; a
    /// Service that does not exist is TargetNotFound.
    #[test]
    fn policy_status_names_conflicts_and_missing_targets() {
        let policy = |name: &str, created: &str, targets: &str| {
            format!(
                "apiVersion: mesh.dev/v1alpha1\nkind: BackendTrafficPolicy\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: '{created}'}}\nspec: {{targetRefs: [{targets}], connectionPool: {{maxRequests: 10}}}}\n---\n"
            )
        };
        let text = [
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\n".to_owned(),
            policy("older", "2026-01-01T00:00:00Z", "{kind: Service, name: web}"),
            policy("younger", "2026-06-01T00:00:00Z", "{kind: Service, name: web}, {kind: Service, name: gone}"),
        ]
        .concat();
        let (objects, errors) = parse_text("input.yaml", &text);
        assert!(errors.is_empty(), "{errors:?}");
        let mut view = ClusterView::new(IdentityAllocator::open(None).unwrap());
        for (key, object, _) in objects {
            view.upsert(&key, object);
        }
        let statuses = view.policy_statuses();
        let of = |name: &str| -> Vec<(String, bool, &'static str)> {
            statuses[&("demo".to_owned(), name.to_owned())]
                .iter()
                .map(|a| (a.service.clone(), a.accepted, a.reason))
                .collect()
        };
        assert_eq!(of("older"), [("web".to_owned(), true, "Accepted")]);
        assert_eq!(
            of("younger"),
            [("web".to_owned(), false, "Conflicted"), ("gone".to_owned(), false, "TargetNotFound")]
        );
    }
}
