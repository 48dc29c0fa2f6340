//! The L7 proxy's golden metrics, under the names Istio users query (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), with Istio's labels for what the proxy knows and
//! the route's own: `route` (`namespace/name`, empty when no rule answered), `route_rule` (its
//! name, or its index), `destination_backend` (the backend Service and port chosen, empty for
//! the proxy's own answers) and `response_code`. Reported by the client's side
//! (`reporter="source"`), as the proxy runs on the client's node.
//!
//! BackendTrafficPolicy's: `mesh_l7_outlier_ejections_total{destination_service, endpoint}`,
//! `mesh_l7_outlier_ejected` and `mesh_l7_outlier_ejection_remaining_seconds` (the endpoints
//! out now, read at scrape), `mesh_l7_overflows_total{destination_backend, limit}`. HTTP rules':
//! `mesh_l7_policy_requests_total{destination_workload_namespace, verdict, rule}`.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::Counter, family::Family, gauge::ConstGauge, histogram::Histogram},
    registry::Registry,
};

use super::{circuit_breaker::CircuitBreakers, outlier::Outliers};

type Labels = Vec<(&'static str, String)>;

/// Istio's request duration buckets up to 10 s, in milliseconds.
const BUCKETS_MS: [f64; 12] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// What a request was, for its series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLabels {
    pub source_namespace: String,
    pub service_namespace: String,
    pub service_name: String,
    pub route: String,
    pub rule: String,
    pub backend: String,
}

/// Cheap to clone (shared).
#[derive(Clone)]
pub struct L7Metrics {
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// `mesh_l7_policy_requests_total{destination_workload_namespace, verdict, rule}`.
    judged: Family<Labels, Counter>,
    outliers: Arc<Outliers>,
    breakers: Arc<CircuitBreakers>,
}

/// The endpoints ejected at scrape time.
#[derive(Debug)]
struct EjectedNow(Arc<Outliers>);

impl Collector for EjectedNow {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let ejected = self.0.ejected();
        crate::metrics::series(
            &mut encoder,
            "mesh_l7_outlier_ejected",
            "Endpoints outlier detection keeps out of their Service's balancing now (1 each), with the seconds left",
            ejected.iter().map(|e| {
                let labels = vec![
                    ("destination_service", format!("{}/{}", e.service.namespace, e.service.name)),
                    ("endpoint", e.endpoint.to_string()),
                ];
                (labels, ConstGauge::new(1_i64))
            }),
        )?;
        crate::metrics::series(
            &mut encoder,
            "mesh_l7_outlier_ejection_remaining_seconds",
            "Seconds until each ejected endpoint is back in its Service's balancing",
            ejected.iter().map(|e| {
                let labels = vec![
                    ("destination_service", format!("{}/{}", e.service.namespace, e.service.name)),
                    ("endpoint", e.endpoint.to_string()),
                ];
                (labels, ConstGauge::new(e.remaining.as_secs_f64()))
            }),
        )
    }
}

impl L7Metrics {
    pub fn new(outliers: Arc<Outliers>, breakers: Arc<CircuitBreakers>) -> Self {
        let histogram: fn() -> Histogram = || Histogram::new(BUCKETS_MS);
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
            judged: Family::default(),
            outliers,
            breakers,
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_l7_outlier_ejections",
            "Endpoints ejected by outlier detection (BackendTrafficPolicy), by Service and endpoint",
            self.outliers.ejections_family(),
        );
        registry.register(
            "mesh_l7_overflows",
            "Requests a circuit breaker (BackendTrafficPolicy connectionPool) refused, by backend and limit",
            self.breakers.overflows_family(),
        );
        registry.register_collector(Box::new(EjectedNow(self.outliers.clone())));
        registry.register(
            "mesh_l7_policy_requests",
            "Requests judged by HTTP rules (MeshPolicy http) at their destination's node, by verdict and the rule that denied them",
            self.judged.clone(),
        );
        registry.register(
            "istio_requests",
            "Requests through the L7 proxy, by route, backend and response code",
            self.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from a request's head to its response's head through the L7 proxy",
            self.duration.clone(),
        );
    }

    /// Counts one request judged by HTTP rules: allowed, or denied by `denied_by`.
    pub fn judged(&self, destination_namespace: &str, denied_by: Option<&str>) {
        let labels: Labels = vec![
            ("destination_workload_namespace", destination_namespace.to_owned()),
            ("verdict", if denied_by.is_some() { "denied" } else { "allowed" }.to_owned()),
            ("rule", denied_by.unwrap_or_default().to_owned()),
        ];
        self.judged.get_or_create(&labels).inc();
    }

    /// Counts one answered request that took `elapsed` to its response head.
    pub fn record(&self, request: &RequestLabels, code: u16, elapsed: Duration) {
        let mut labels: Labels = vec![
            ("reporter", "source".to_owned()),
            ("source_workload_namespace", request.source_namespace.clone()),
            ("destination_service_namespace", request.service_namespace.clone()),
            ("destination_service_name", request.service_name.clone()),
            ("route", request.route.clone()),
            ("route_rule", request.rule.clone()),
            ("destination_backend", request.backend.clone()),
        ];
        labels.push(("response_code", code.to_string()));
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64() * 1000.0);
    }
}
