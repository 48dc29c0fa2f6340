//! Outlier detection, as Istio's DestinationRule sets it and Envoy does it: each endpoint of a
//! Service a BackendTrafficPolicy targets is watched as this node's proxy sees its answers; one
//! that gives `consecutive5xxErrors` 5xx answers in a row (or `consecutiveGatewayErrors` 502,
//! 503 or 504; a failed connection and a timeout count as both) is ejected: it gets no request
//! for the base ejection time multiplied by how many times it has been ejected, at most the
//! maximum ejection time. An endpoint that stayed in for a maximum ejection time after its last
//! ejection starts again from one (Envoy lowers the multiplier step by step instead).
//!
//! At most `maxEjectionPercent` of a Service's endpoints (rounded down) are out at once; a
//! failing endpoint past that share stays in. When every endpoint is out (possible only at
//! 100%), requests go to all of them (Envoy's panic mode): an answer, even a failing one, is
//! better than none.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use mesh_common::api;
use prometheus_client::metrics::{counter::Counter, family::Family};

use super::routes::ServiceRef;

/// How a try to an endpoint went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryResult {
    /// The endpoint answered with this status.
    Answered(u16),
    /// No answer: the connection failed or closed before the response's head, or the try
    /// timed out.
    Failed,
}

impl TryResult {
    fn is_5xx(self) -> bool {
        match self {
            Self::Answered(code) => (500..600).contains(&code),
            Self::Failed => true,
        }
    }

    fn is_gateway_error(self) -> bool {
        match self {
            Self::Answered(code) => matches!(code, 502..=504),
            Self::Failed => true,
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Times ejected since it last stayed in for a maximum ejection time.
    ejections: u32,
    /// When its last ejection ends (or ended).
    ejected_until: Option<Instant>,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| until > now)
    }
}

/// An endpoint out of its Service's balancing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejected {
    pub service: ServiceRef,
    pub endpoint: SocketAddr,
    /// Until its ejection ends.
    pub remaining: Duration,
    /// How many times in a row it has been ejected (this one included).
    pub ejections: u32,
}

/// The health of the endpoints of every Service with outlier detection, as this proxy saw them.
#[derive(Debug, Default)]
pub struct Outliers {
    services: Mutex<HashMap<ServiceRef, HashMap<SocketAddr, Health>>>,
    /// `mesh_l7_outlier_ejections_total{destination_service, endpoint}`.
    ejections: Family<Vec<(&'static str, String)>, Counter>,
}

impl Outliers {
    /// The counter of ejections, to register.
    pub fn ejections_family(&self) -> Family<Vec<(&'static str, String)>, Counter> {
        self.ejections.clone()
    }

    /// Forgets the Services no longer watched (their policy is gone or changed).
    pub fn retain(&self, watched: impl Fn(&ServiceRef) -> bool) {
        self.services.lock().expect("never poisoned").retain(|service, _| watched(service));
    }

    /// One of `endpoints` of `service` (not empty) by `random`, among those not ejected.
    pub fn choose(&self, service: &ServiceRef, endpoints: &[SocketAddr], random: u32) -> SocketAddr {
        let now = Instant::now();
        let services = self.services.lock().expect("never poisoned");
        let Some(health) = services.get(service) else { return endpoints[random as usize % endpoints.len()] };
        let is_in = |e: &&SocketAddr| !health.get(*e).is_some_and(|h| h.ejected(now));
        let eligible = endpoints.iter().filter(is_in).count();
        if eligible == 0 {
            // Every endpoint is out: all of them (panic mode).
            return endpoints[random as usize % endpoints.len()];
        }
        *endpoints.iter().filter(is_in).nth(random as usize % eligible).expect("counted")
    }

    /// Takes the result of a try to `endpoint` of `service` (whose endpoints are now
    /// `endpoints`); returns how long the endpoint is ejected for when this ejects it.
    pub fn report(
        &self,
        service: &ServiceRef,
        policy: &api::OutlierDetection,
        endpoint: SocketAddr,
        endpoints: &[SocketAddr],
        result: TryResult,
    ) -> Option<Duration> {
        let now = Instant::now();
        let mut services = self.services.lock().expect("never poisoned");
        if !result.is_5xx() {
            // The common case, at every answered request: nothing to remember (and nothing
            // allocated) for an endpoint that never failed.
            if let Some(h) = services.get_mut(service).and_then(|health| health.get_mut(&endpoint)) {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
            return None;
        }
        let health = services.entry(service.clone()).or_default();
        if health.len() > 2 * endpoints.len() + 16 {
            // Endpoints that left the Service are forgotten.
            health.retain(|e, _| endpoints.contains(e));
        }
        let ejected_now = endpoints.iter().filter(|e| health.get(*e).is_some_and(|h| h.ejected(now))).count();
        let h = health.entry(endpoint).or_default();
        if h.ejected(now) {
            return None; // a try that was already under way when it was ejected
        }
        h.consecutive_5xx += 1;
        if result.is_gateway_error() {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        let tripped = |count: u32, limit: u32| limit > 0 && count >= limit;
        if !tripped(h.consecutive_5xx, policy.consecutive_5xx_errors)
            && !tripped(h.consecutive_gateway, policy.consecutive_gateway_errors)
        {
            return None;
        }
        // Rounded down: at 10%, one of ten endpoints may be out.
        let allowed = endpoints.len() * policy.max_ejection_percent as usize / 100;
        if ejected_now + 1 > allowed {
            return None;
        }
        let max = Duration::from_millis(u64::from(policy.max_ejection_ms));
        if h.ejected_until.is_some_and(|ended| now > ended + max) {
            h.ejections = 0;
        }
        h.ejections = h.ejections.saturating_add(1);
        let duration = (Duration::from_millis(u64::from(policy.base_ejection_ms)) * h.ejections).min(max);
        h.ejected_until = Some(now + duration);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        let labels = vec![
            ("destination_service", format!("{}/{}", service.namespace, service.name)),
            ("endpoint", endpoint.to_string()),
        ];
        self.ejections.get_or_create(&labels).inc();
        tracing::info!(
            service = %format!("{}/{}", service.namespace, service.name),
            %endpoint,
            ejections = h.ejections,
            seconds = duration.as_secs_f64(),
            "ejected a failing endpoint (outlier detection)"
        );
        Some(duration)
    }

    /// The endpoints ejected now.
    pub fn ejected(&self) -> Vec<Ejected> {
        let now = Instant::now();
        let services = self.services.lock().expect("never poisoned");
        let mut out: Vec<Ejected> = services
            .iter()
            .flat_map(|(service, endpoints)| {
                endpoints.iter().filter(|(_, h)| h.ejected(now)).map(move |(endpoint, h)| Ejected {
                    service: service.clone(),
                    endpoint: *endpoint,
                    remaining: h.ejected_until.map_or(Duration::ZERO, |until| until - now),
                    ejections: h.ejections,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.service, a.endpoint).cmp(&(&b.service, b.endpoint)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32) -> api::OutlierDetection {
        api::OutlierDetection {
            consecutive_5xx_errors: 3,
            consecutive_gateway_errors: 0,
            base_ejection_ms: 200,
            max_ejection_ms: 500,
            max_ejection_percent: percent,
        }
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 80))
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time_within_the_share() {
        let outliers = Outliers::default();
        let service = ServiceRef { namespace: "demo".into(), name: "web".into() };
        let endpoints = [addr(1), addr(2), addr(3), addr(4)];
        let p = policy(50);
        // A success in between starts the count again.
        assert_eq!(outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(500)), None);
        assert_eq!(outliers.report(&service, &p, addr(1), &endpoints, TryResult::Failed), None);
        assert_eq!(outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(200)), None);
        assert_eq!(outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(503)), None);
        assert_eq!(
            outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(404)),
            None,
            "4xx is no failure"
        );
        for _ in 0..2 {
            assert_eq!(outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(500)), None);
        }
        let first = outliers.report(&service, &p, addr(1), &endpoints, TryResult::Answered(500));
        assert_eq!(first, Some(Duration::from_millis(200)));
        for random in 0..100 {
            assert_ne!(outliers.choose(&service, &endpoints, random), addr(1), "an ejected endpoint gets nothing");
        }
        // Two of four may be out at 50%; a third failing endpoint stays in.
        for _ in 0..3 {
            outliers.report(&service, &p, addr(2), &endpoints, TryResult::Failed);
        }
        for _ in 0..3 {
            assert_eq!(outliers.report(&service, &p, addr(3), &endpoints, TryResult::Failed), None);
        }
        let out: Vec<SocketAddr> = outliers.ejected().iter().map(|e| e.endpoint).collect();
        assert_eq!(out, [addr(1), addr(2)]);
        // Back in after its time; ejected again, for twice as long.
        std::thread::sleep(Duration::from_millis(250));
        assert!(outliers.ejected().iter().all(|e| e.endpoint != addr(1)));
        for _ in 0..2 {
            outliers.report(&service, &p, addr(1), &endpoints, TryResult::Failed);
        }
        let second = outliers.report(&service, &p, addr(1), &endpoints, TryResult::Failed);
        assert_eq!(second, Some(Duration::from_millis(400)));
    }

    #[test]
    fn the_share_is_rounded_down_and_all_out_means_all_in() {
        let outliers = Outliers::default();
        let service = ServiceRef { namespace: "demo".into(), name: "web".into() };
        let two = [addr(1), addr(2)];
        for _ in 0..5 {
            assert_eq!(outliers.report(&service, &policy(10), addr(1), &two, TryResult::Failed), None, "10% of 2 is 0");
        }
        let single = ServiceRef { namespace: "demo".into(), name: "single".into() };
        let one = [addr(1)];
        for _ in 0..2 {
            assert_eq!(outliers.report(&single, &policy(100), addr(1), &one, TryResult::Failed), None);
        }
        assert!(outliers.report(&single, &policy(100), addr(1), &one, TryResult::Failed).is_some());
        assert_eq!(outliers.choose(&single, &one, 7), addr(1), "every endpoint out: all of them");
    }
}
