//! Circuit breaking per Service port a BackendTrafficPolicy targets, in this node's proxy
//! (Istio's `connectionPool`, Envoy's circuit breakers): at most `maxRequests` requests in
//! flight to the Service; at most `maxConnections` HTTP/1.1 connections in use to its
//! endpoints (an HTTP/1.1 connection carries one request at a time, so a request holds one
//! from its try until its response body ends), with at most `maxPendingRequests` requests
//! waiting for one. A request over a limit is refused at once: the proxy answers 503 with
//! `x-envoy-overloaded: true`, as Envoy does, and counts it; the endpoint is not blamed.
//!
//! HTTP/2 (h2c, gRPC) tries hold no connection here: they multiplex on the pool's one
//! connection per client pod, and `maxRequests` is what bounds them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use mesh_common::api;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::routes::ServiceRef;

/// The limit a request was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    MaxRequests,
    MaxPendingRequests,
}

impl Overflow {
    pub fn field(self) -> &'static str {
        match self {
            Self::MaxRequests => "maxRequests",
            Self::MaxPendingRequests => "maxPendingRequests",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    limits: api::ConnectionLimits,
    requests: AtomicU32,
    pending: AtomicU32,
    /// `None`: connections unlimited.
    connections: Option<Arc<Semaphore>>,
}

/// What an admitted request holds until its response body ends (or is dropped).
#[derive(Debug)]
pub struct Admission {
    breaker: Arc<Breaker>,
    _connection: Option<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.breaker.limits.max_requests > 0 {
            self.breaker.requests.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Decrements the pending count however the wait ends (a timeout cancels it).
struct Pending<'a>(&'a AtomicU32);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Default)]
pub struct CircuitBreakers {
    /// Each targeted Service's limits.
    limits: Mutex<HashMap<ServiceRef, api::ConnectionLimits>>,
    /// Each Service port's counts, made on its first request.
    breakers: Mutex<HashMap<(ServiceRef, u16), Arc<Breaker>>>,
    /// `mesh_l7_overflows_total{destination_backend, limit}`.
    overflows: Family<Vec<(&'static str, String)>, Counter>,
}

impl CircuitBreakers {
    /// The counter of refused requests, to register.
    pub fn overflows_family(&self) -> Family<Vec<(&'static str, String)>, Counter> {
        self.overflows.clone()
    }

    /// Takes every targeted Service's limits. A Service whose limits did not change keeps its
    /// counts (requests in flight stay counted); others start again.
    pub fn set(&self, limits: HashMap<ServiceRef, api::ConnectionLimits>) {
        self.breakers
            .lock()
            .expect("never poisoned")
            .retain(|(service, _), breaker| limits.get(service) == Some(&breaker.limits));
        *self.limits.lock().expect("never poisoned") = limits;
    }

    /// Admits a request to `service`:`port` (an HTTP/1.1 one also needs a connection, and may
    /// wait for one); `None` when the Service has no limits.
    pub async fn admit(&self, service: &ServiceRef, port: u16, http1: bool) -> Result<Option<Admission>, Overflow> {
        let breaker = {
            let Some(limits) = self.limits.lock().expect("never poisoned").get(service).copied() else {
                return Ok(None);
            };
            let mut breakers = self.breakers.lock().expect("never poisoned");
            breakers
                .entry((service.clone(), port))
                .or_insert_with(|| {
                    Arc::new(Breaker {
                        connections: (limits.max_connections > 0)
                            .then(|| Arc::new(Semaphore::new(limits.max_connections as usize))),
                        limits,
                        requests: AtomicU32::new(0),
                        pending: AtomicU32::new(0),
                    })
                })
                .clone()
        };
        let overflow = |limit: Overflow| {
            let labels = vec![
                ("destination_backend", format!("{}/{}:{port}", service.namespace, service.name)),
                ("limit", limit.field().to_owned()),
            ];
            self.overflows.get_or_create(&labels).inc();
            limit
        };
        let max_requests = breaker.limits.max_requests;
        if max_requests > 0 && breaker.requests.fetch_add(1, Ordering::AcqRel) >= max_requests {
            breaker.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(overflow(Overflow::MaxRequests));
        }
        // From here the admission gives the request count back, whatever happens.
        let mut admission = Admission { breaker: breaker.clone(), _connection: None };
        if let (true, Some(connections)) = (http1, &breaker.connections) {
            let permit = match connections.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    if breaker.pending.fetch_add(1, Ordering::AcqRel) >= breaker.limits.max_pending_requests {
                        breaker.pending.fetch_sub(1, Ordering::AcqRel);
                        return Err(overflow(Overflow::MaxPendingRequests));
                    }
                    let _pending = Pending(&breaker.pending);
                    connections.clone().acquire_owned().await.expect("never closed")
                }
            };
            admission._connection = Some(permit);
        }
        Ok(Some(admission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceRef {
        ServiceRef { namespace: "demo".into(), name: "web".into() }
    }

    #[tokio::test]
    async fn requests_over_a_limit_are_refused_and_the_limit_frees_as_they_end() {
        let breakers = CircuitBreakers::default();
        let limits = api::ConnectionLimits { max_connections: 1, max_pending_requests: 1, max_requests: 3 };
        breakers.set(HashMap::from([(service(), limits)]));
        assert!(
            breakers
                .admit(&ServiceRef { namespace: "demo".into(), name: "other".into() }, 80, true)
                .await
                .unwrap()
                .is_none(),
            "no limits"
        );

        let first = breakers.admit(&service(), 80, true).await.unwrap().expect("limited");
        // The second waits for the first's connection; a third finds the queue full.
        let web = service();
        let waiting = breakers.admit(&web, 80, true);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        assert_eq!(breakers.admit(&service(), 80, true).await.unwrap_err(), Overflow::MaxPendingRequests);
        // HTTP/2 requests need no connection, only a request slot: one left of three.
        let h2 = breakers.admit(&service(), 80, false).await.unwrap();
        assert_eq!(breakers.admit(&service(), 80, false).await.unwrap_err(), Overflow::MaxRequests);
        drop(first);
        let second = waiting.await.unwrap();
        drop((second, h2));
        let counted = breakers.overflows_family();
        let pending =
            vec![("destination_backend", "demo/web:80".to_owned()), ("limit", "maxPendingRequests".to_owned())];
        assert_eq!(counted.get_or_create(&pending).get(), 1);
        // Everything given back: the limits hold afresh.
        let again: Vec<_> = [breakers.admit(&service(), 80, true).await, breakers.admit(&service(), 80, false).await]
            .into_iter()
            .map(|a| a.unwrap().is_some())
            .collect();
        assert_eq!(again, [true, true]);
    }
}
