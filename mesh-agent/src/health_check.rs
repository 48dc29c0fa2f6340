//! `healthCheckNodePort`, served as kube-proxy serves it: for a Service with
//! `externalTrafficPolicy: Local` and a health-check node port, `GET` on that port of every
//! node address answers 200 while this node has ready endpoints of it and 503 while it has none,
//! with kube-proxy's JSON body (`{"service":{"namespace","name"},"localEndpoints":N,
//! "serviceProxyHealthy":true}`), so a cloud load balancer sends traffic only to nodes that
//! can take it. One listener per port, opened in the node's network namespace and closed when
//! the port goes; the counts change in place.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};

/// One health-checked Service of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints on this node.
    pub local_endpoints: usize,
}

struct Listener {
    service: (String, String),
    local: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The health-check listeners of this node, by port, served on `runtime`.
pub struct HealthChecks {
    listeners: BTreeMap<u16, Listener>,
    runtime: tokio::runtime::Handle,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for listener in self.listeners.values() {
            listener.task.abort();
        }
    }
}

impl HealthChecks {
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self { listeners: BTreeMap::new(), runtime }
    }

    /// Makes the listeners those of `wanted` (port -> Service): opens new ports (in `netns`),
    /// closes gone ones, updates the counts. Returns one error per port that could not be
    /// opened (tried again at the next call).
    pub fn sync(&mut self, netns: Option<&std::path::Path>, wanted: &BTreeMap<u16, HealthCheck>) -> Vec<String> {
        let _runtime = self.runtime.enter();
        let gone: Vec<u16> = self
            .listeners
            .iter()
            .filter(|(port, l)| wanted.get(port).is_none_or(|w| (w.namespace.clone(), w.name.clone()) != l.service))
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            if let Some(listener) = self.listeners.remove(&port) {
                listener.task.abort();
                tracing::info!(port, service = %format!("{}/{}", listener.service.0, listener.service.1), "health check closed");
            }
        }
        let mut errors = Vec::new();
        for (port, check) in wanted {
            if let Some(listener) = self.listeners.get(port) {
                listener.local.store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match open(netns.map(PathBuf::from), *port) {
                Ok(socket) => {
                    let local = Arc::new(AtomicUsize::new(check.local_endpoints));
                    let service = (check.namespace.clone(), check.name.clone());
                    let task = tokio::spawn(serve(socket, service.clone(), local.clone()));
                    tracing::info!(port, service = %format!("{}/{}", service.0, service.1), "health check listening");
                    self.listeners.insert(*port, Listener { service, local, task });
                }
                Err(err) => errors.push(format!(
                    "healthCheckNodePort {port} of {}/{}: cannot listen: {err}",
                    check.namespace, check.name
                )),
            }
        }
        errors
    }
}

fn open(netns: Option<PathBuf>, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let listener = crate::netns::run_in(netns.as_deref(), move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(listener)
    })
    .map_err(std::io::Error::other)??;
    tokio::net::TcpListener::from_std(listener)
}

async fn serve(listener: tokio::net::TcpListener, service: (String, String), local: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (service, local) = (service.clone(), local.clone());
        tokio::spawn(async move {
            let respond = move |_: Request<Incoming>| {
                let count = local.load(Ordering::Relaxed);
                let body = body(&service.0, &service.1, count);
                let status = if count > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                let response = Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("X-Content-Type-Options", "nosniff")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid response");
                async move { Ok::<_, Infallible>(response) }
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(mesh_common::metrics_http::HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service_fn(respond))
                .await;
        });
    }
}

/// kube-proxy's answer body.
fn body(namespace: &str, name: &str, local_endpoints: usize) -> String {
    serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_body_is_kube_proxys() {
        let body: serde_json::Value = serde_json::from_str(&super::body("t", "web", 2)).unwrap();
        assert_eq!(body["service"]["name"], "web");
        assert_eq!(body["localEndpoints"], 2);
        assert_eq!(body["serviceProxyHealthy"], true);
    }
}
