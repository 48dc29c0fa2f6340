//! HTTP for the lab (`labnet http-echo`, `labnet http-get`): an echo server that answers as
//! the Gateway API conformance echo server does (what it received, and who it is), and a
//! keep-alive client that sends requests one after another and sums up what came back.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// What the echo server answers (JSON): the pod and namespace it runs as, and the request as
/// it arrived (header names lowercase, repeated headers' values in order), and the address it
/// came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echoed {
    pub pod: String,
    pub namespace: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub host: String,
    pub headers: BTreeMap<String, Vec<String>>,
    /// The client's address and port, as the server sees the connection.
    #[serde(default)]
    pub peer: String,
}

/// Serves on `port` (all addresses) until killed: `/status/N` answers N, anything else 200
/// (or `fail_with`, when given, whatever the path), each with the [`Echoed`] request as its
/// body and `x-echo-pod` naming the pod. An HTTP/1.1 upgrade (`Connection: upgrade` and an
/// `Upgrade` header, as WebSocket's handshake) is answered 101 with the protocol asked for;
/// the switched connection then carries the pod's name on a line, and echoes whatever comes.
pub fn serve(
    port: u16,
    pod: &str,
    namespace: &str,
    ready_file: Option<&Path>,
    fail_with: Option<u16>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        if let Some(file) = ready_file {
            std::fs::write(file, b"listening\n")?;
        }
        loop {
            let (stream, peer) = listener.accept().await?;
            let (pod, namespace) = (pod.to_owned(), namespace.to_owned());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (pod, namespace) = (pod.clone(), namespace.clone());
                    async move {
                        if let Some(protocol) = upgrade_asked(&request) {
                            return Ok(switch(request, protocol, pod));
                        }
                        let mut response = answer(request, &pod, &namespace, peer).await;
                        if let Some(status) = fail_with.and_then(|code| StatusCode::from_u16(code).ok()) {
                            *response.status_mut() = status;
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

/// The protocol an HTTP/1.1 upgrade request asks for, if it is one.
fn upgrade_asked(request: &Request<Incoming>) -> Option<http::HeaderValue> {
    let asked = request
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| request.headers().get(http::header::UPGRADE).cloned()).flatten()
}

/// Answers an upgrade 101; once switched, the connection gets `pod` on a line, then its own
/// bytes back until it closes.
fn switch(mut request: Request<Incoming>, protocol: http::HeaderValue, pod: String) -> Response<Full<Bytes>> {
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let Ok(upgraded) = upgraded.await else { return };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(format!("{pod}\n").as_bytes()).await.is_ok() {
            let (mut reader, mut writer) = tokio::io::split(io);
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        }
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    response.headers_mut().insert(http::header::UPGRADE, protocol);
    response
}

async fn answer(request: Request<Incoming>, pod: &str, namespace: &str, peer: SocketAddr) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echoed = Echoed {
        pod: pod.to_owned(),
        namespace: namespace.to_owned(),
        method: request.method().to_string(),
        path: request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        host: request
            .headers()
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default(),
        headers,
        peer: peer.to_string(),
    };
    let status = request
        .uri()
        .path()
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let _ = request.into_body().collect().await;
    let body = serde_json::to_vec(&echoed).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = pod.parse() {
        response.headers_mut().insert("x-echo-pod", value);
    }
    response
}

/// What `labnet http-get` saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetReport {
    pub sent: u32,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u32>,
    /// Answers by the pod that echoed them (answers without an echo are not counted here).
    pub pods: BTreeMap<String, u32>,
    /// Requests that got no answer, by error.
    pub errors: BTreeMap<String, u32>,
    /// Connections the client made (one, unless the server closed one).
    pub connections: u32,
    /// The last answer: its status, headers, and echo (when it was one).
    pub last_status: u16,
    pub last_headers: BTreeMap<String, String>,
    pub last_echo: Option<Echoed>,
}

/// One answer: its status, its headers (lowercase names) and its echo, if it was one.
pub type Answer = (u16, BTreeMap<String, String>, Option<Echoed>);

impl GetReport {
    /// Counts one request's outcome (an answer, an error, or a timeout); false when its
    /// connection is not to be used again.
    pub fn record(&mut self, outcome: Result<std::io::Result<Answer>, tokio::time::error::Elapsed>) -> bool {
        match outcome {
            Ok(Ok((status, headers, echo))) => {
                *self.statuses.entry(status).or_default() += 1;
                if let Some(echo) = &echo {
                    *self.pods.entry(echo.pod.clone()).or_default() += 1;
                }
                self.last_status = status;
                self.last_headers = headers;
                self.last_echo = echo;
                true
            }
            Ok(Err(err)) => {
                *self.errors.entry(err.to_string()).or_default() += 1;
                false
            }
            Err(_) => {
                *self.errors.entry("timed out".into()).or_default() += 1;
                false
            }
        }
    }
}

/// Sends `count` requests (`method` `path`, with `headers`) to `to` one after another over
/// keep-alive connections, each given `timeout` for its answer.
pub fn get(
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    count: u32,
    timeout: Duration,
) -> std::io::Result<GetReport> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut report = GetReport::default();
        let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
        for _ in 0..count {
            report.sent += 1;
            let outcome = tokio::time::timeout(timeout, async {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let stream = tokio::net::TcpStream::connect(to).await?;
                    let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .map_err(std::io::Error::other)?;
                    tokio::spawn(connection);
                    report.connections += 1;
                    sender = Some(s);
                }
                let s = sender.as_mut().expect("just made");
                s.ready().await.map_err(std::io::Error::other)?;
                let mut request = Request::builder().method(method).uri(path);
                // The address as Host, unless the caller gives one.
                if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
                    request = request.header(http::header::HOST, to.to_string());
                }
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let request = request.body(Full::default()).map_err(std::io::Error::other)?;
                let response = s.send_request(request).await.map_err(std::io::Error::other)?;
                let status = response.status().as_u16();
                let headers: BTreeMap<String, String> = response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let body = response.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
                Ok::<_, std::io::Error>((status, headers, serde_json::from_slice::<Echoed>(&body).ok()))
            })
            .await;
            if !report.record(outcome) {
                sender = None;
            }
        }
        Ok(report)
    })
}
