//! The L7 proxy's golden metrics, under the names Istio users query (`istio_requests_total`,
//! `istio_request_duration_milliseconds`), with Istio's labels for what the proxy knows and
//! the route's own: `route` (`namespace/name`, empty when no rule answered), `route_rule` (its
//! name, or its index), `destination_backend` (the backend Service and port chosen, empty for
//! the proxy's own answers) and `response_code`. Reported by the client's side
//! (`reporter="source"`), as the proxy runs on the client's node.

use std::time::Duration;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

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
}

impl Default for L7Metrics {
    fn default() -> Self {
        let histogram: fn() -> Histogram = || Histogram::new(BUCKETS_MS);
        Self { requests: Family::default(), duration: Family::new_with_constructor(histogram) }
    }
}

impl L7Metrics {
    pub fn register(&self, registry: &mut Registry) {
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
