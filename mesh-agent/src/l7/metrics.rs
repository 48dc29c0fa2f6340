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

/// What a request was, for its series (with its connection's [`Series`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLabels {
    pub route: String,
    pub rule: String,
    pub backend: String,
}

/// One client connection's series: its labels (the client's namespace and the Service it
/// asked for), and the counter and histogram of each label set its requests had so far, so a
/// request like an earlier one is counted without building and hashing its label set again.
pub struct Series {
    source_namespace: String,
    service_namespace: String,
    service_name: String,
    seen: std::sync::Mutex<Vec<(RequestLabels, u16, Counter, Histogram)>>,
}

/// A connection remembers at most this many label sets (routes × backends × codes); others
/// are looked up in the families at each request.
const SERIES_PER_CONNECTION: usize = 16;

impl Series {
    pub fn new(source_namespace: &str, service: &super::routes::ServiceRef) -> Self {
        Self {
            source_namespace: source_namespace.to_owned(),
            service_namespace: service.namespace.clone(),
            service_name: service.name.clone(),
            seen: std::sync::Mutex::default(),
        }
    }
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

    /// Counts one answered request of a connection (`series`) that took `elapsed` to its
    /// response head.
    pub fn record(&self, series: &Series, request: &RequestLabels, code: u16, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut seen = series.seen.lock().expect("never poisoned: no panics under the lock");
        if let Some((.., counter, histogram)) = seen.iter().find(|(r, c, ..)| *c == code && r == request) {
            counter.inc();
            histogram.observe(ms);
            return;
        }
        let labels: Labels = vec![
            ("reporter", "source".to_owned()),
            ("source_workload_namespace", series.source_namespace.clone()),
            ("destination_service_namespace", series.service_namespace.clone()),
            ("destination_service_name", series.service_name.clone()),
            ("route", request.route.clone()),
            ("route_rule", request.rule.clone()),
            ("destination_backend", request.backend.clone()),
            ("response_code", code.to_string()),
        ];
        let counter = self.requests.get_or_create(&labels).clone();
        let histogram = self.duration.get_or_create(&labels).clone();
        counter.inc();
        histogram.observe(ms);
        if seen.len() < SERIES_PER_CONNECTION {
            seen.push((request.clone(), code, counter, histogram));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::routes::ServiceRef;

    /// Every request is counted in its own series, whether its connection remembered the
    /// series (the first 16 label sets) or not, and two connections share a series.
    #[test]
    fn connections_count_in_the_shared_series() {
        let metrics = L7Metrics::new(Arc::default(), Arc::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let service = ServiceRef { namespace: "demo".into(), name: "web".into() };
        let (first, second) = (Series::new("client", &service), Series::new("client", &service));
        let request = |backend: usize| RequestLabels {
            route: "demo/canary".into(),
            rule: "0".into(),
            backend: format!("demo/web-{backend}:80"),
        };
        for _ in 0..3 {
            for backend in 0..20 {
                metrics.record(&first, &request(backend), 200, Duration::from_millis(2));
            }
            metrics.record(&second, &request(0), 200, Duration::from_millis(2));
            metrics.record(&second, &request(0), 503, Duration::from_millis(2));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count = |backend: usize, code: u16| {
            let series = text
                .lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| l.contains(&format!("destination_backend=\"demo/web-{backend}:80\"")))
                .filter(|l| l.contains(&format!("response_code=\"{code}\"")))
                .collect::<Vec<_>>();
            assert_eq!(series.len(), 1, "one series for web-{backend}, {code}: {text}");
            assert!(series[0].contains("source_workload_namespace=\"client\""), "{text}");
            series[0].rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
        };
        assert_eq!((count(0, 200), count(0, 503)), (6.0, 3.0));
        for backend in 1..20 {
            assert_eq!(count(backend, 200), 3.0, "web-{backend}");
        }
        assert!(text.contains("istio_request_duration_milliseconds_count{"), "{text}");
    }
}
