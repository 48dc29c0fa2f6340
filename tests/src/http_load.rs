//! `labnet http-load`: HTTP/1.1 requests over keep-alive connections for a duration, either as
//! fast as the answers come (closed loop: the maximum rate) or at a fixed rate (open loop: each
//! request has its planned send time, and a request sent late because its connection was
//! still busy counts its latency from then, so a stalled connection's queue shows in the
//! percentiles instead of slowing the load: no coordinated omission; the timer's own lateness,
//! about a millisecond, is not counted). The benchmark's load (`cargo xtask bench l7`).
//!
//! With `grpc`, each connection is HTTP/2 with prior knowledge and each request a gRPC unary
//! call of the standard health service (`POST /grpc.health.v1.Health/Check`, an empty
//! message, `te: trailers`), one at a time per connection as a blocking gRPC stub makes them;
//! an answer counts once its trailers are read, as 200 when its `grpc-status` is 0 (else as
//! 500, and as 502 without a `grpc-status`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// What one load run saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpLoadReport {
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests that got no answer (connection failed or closed).
    pub errors: u64,
    pub seconds: f64,
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// Connections made (one per connection unless the server closed some).
    #[serde(default)]
    pub connections: u64,
    /// Requests without an answer, by error.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
}

/// How a run paces its requests.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each connection sends its next request when the last is answered.
    Max,
    /// This many requests a second in all, spread evenly over the connections.
    Rate(f64),
}

/// Sends `GET path` with `headers` to `to` over `connections` keep-alive connections for
/// `duration`. An answer counts once its body is read.
pub fn run(
    to: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    connections: u32,
    duration: Duration,
    pace: Pace,
    grpc: bool,
) -> std::io::Result<HttpLoadReport> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let end = started + duration;
        let connections = connections.max(1);
        let mut tasks = Vec::new();
        for i in 0..connections {
            let (path, headers) = (path.to_owned(), headers.to_vec());
            tasks.push(tokio::spawn(connection(to, path, headers, i, connections, started, end, pace, grpc)));
        }
        let mut report = HttpLoadReport::default();
        let mut latencies = Vec::new();
        for task in tasks {
            let (lat, statuses, errors, connected) = task.await.map_err(std::io::Error::other)?;
            report.connections += connected;
            latencies.extend(lat);
            for (status, n) in statuses {
                *report.statuses.entry(status).or_default() += n;
            }
            for (error, n) in errors {
                report.errors += n;
                *report.error_kinds.entry(error).or_default() += n;
            }
        }
        report.seconds = started.elapsed().as_secs_f64().min(duration.as_secs_f64().max(1e-9)).max(1e-9);
        report.requests = latencies.len() as u64;
        report.req_per_s = report.requests as f64 / report.seconds;
        latencies.sort_unstable();
        let percentile = |p: f64| {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[index] as f64 / 1000.0
        };
        report.p50_us = percentile(0.50);
        report.p99_us = percentile(0.99);
        Ok(report)
    })
}

/// A connection's sending half.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Self::Http1(s) => s.is_closed(),
            Self::Http2(s) => s.is_closed(),
        }
    }
}

/// The path of the health service's unary call.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// One connection's requests: latencies (ns), statuses, and requests that failed.
#[allow(clippy::too_many_arguments)]
async fn connection(
    to: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
    index: u32,
    connections: u32,
    started: Instant,
    end: Instant,
    pace: Pace,
    grpc: bool,
) -> (Vec<u64>, BTreeMap<u16, u64>, BTreeMap<String, u64>, u64) {
    let (mut latencies, mut statuses, mut errors) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    let mut sender: Option<Sender> = None;
    let (mut n, mut connected) = (0u64, 0u64);
    loop {
        let planned = match pace {
            Pace::Max => Instant::now(),
            Pace::Rate(rate) => {
                let at = (n * u64::from(connections) + u64::from(index)) as f64 / rate.max(1e-3);
                started + Duration::from_secs_f64(at)
            }
        };
        if planned >= end {
            break;
        }
        n += 1;
        // Behind plan (the connection was busy): latency from the planned time. Ahead: sleep,
        // and count from the wake-up (never sleep on a past time: the timer would wake a
        // millisecond later anyway).
        let from = if planned > Instant::now() {
            tokio::time::sleep_until(planned.into()).await;
            Instant::now()
        } else {
            planned
        };
        let deadline = end + Duration::from_secs(5);
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            connected += 1;
        }
        match tokio::time::timeout_at(deadline.into(), request(&mut sender, to, &path, &headers, grpc)).await {
            Ok(Ok(status)) => {
                latencies.push(u64::try_from(from.elapsed().as_nanos()).unwrap_or(u64::MAX));
                *statuses.entry(status).or_default() += 1;
            }
            Ok(Err(err)) => {
                *errors.entry(err.to_string()).or_default() += 1;
                sender = None;
                if Instant::now() >= end {
                    break;
                }
            }
            Err(_) => {
                *errors.entry("timed out".to_owned()).or_default() += 1;
                sender = None;
                if Instant::now() >= end {
                    break;
                }
            }
        }
    }
    (latencies, statuses, errors, connected)
}

async fn request(
    sender: &mut Option<Sender>,
    to: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    grpc: bool,
) -> std::io::Result<u16> {
    if sender.as_ref().is_none_or(Sender::is_closed) {
        let stream = tokio::net::TcpStream::connect(to).await?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let made = if grpc {
            let (s, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http2(s)
        } else {
            let (s, connection) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http1(s)
        };
        *sender = Some(made);
    }
    let mut request = if grpc {
        Request::post(format!("http://{to}{GRPC_HEALTH_CHECK}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
    } else {
        Request::builder().uri(path).header(http::header::HOST, to.to_string())
    };
    for (name, value) in headers {
        request = request.header(name, value);
    }
    // gRPC's length-prefixed message: not compressed, 0 bytes (an empty HealthCheckRequest).
    let body = if grpc { Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])) } else { Full::default() };
    let request = request.body(body).map_err(std::io::Error::other)?;
    let response = match sender.as_mut().expect("just made") {
        Sender::Http1(s) => {
            s.ready().await.map_err(std::io::Error::other)?;
            s.send_request(request).await
        }
        Sender::Http2(s) => {
            s.ready().await.map_err(std::io::Error::other)?;
            s.send_request(request).await
        }
    }
    .map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let collected = response.into_body().collect().await.map_err(std::io::Error::other)?;
    if grpc && status == 200 {
        let grpc_status = collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes().to_vec());
        return Ok(match grpc_status.as_deref() {
            Some(b"0") => 200,
            Some(_) => 500,
            None => 502,
        });
    }
    Ok(status)
}

/// Serves the standard gRPC health service (SERVING) on `port` (all addresses) until killed.
pub fn serve_grpc_health(port: u16, ready_file: Option<&std::path::Path>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        if let Some(file) = ready_file {
            std::fs::write(file, b"listening\n")?;
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .map_err(std::io::Error::other)
    })
}
