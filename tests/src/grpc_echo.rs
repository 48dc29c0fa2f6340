//! gRPC for the lab's conformance tests: `serve` answers every unary call (any service and
//! method, HTTP/2 with prior knowledge) with an empty message and `grpc-status: 0`, telling
//! what it received in a response header as the HTTP echo server does in its body (`x-echo`:
//! the [`Echoed`] JSON: its pod, the method path, the request's metadata); `call` makes calls
//! one after another over one connection and reports them as `labnet http-get` does (a call
//! counts as 200 when its `grpc-status` is 0).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::http_echo::{Echoed, GetReport};

/// The method the client calls (any would do: the server answers all).
pub const METHOD: &str = "/mesh.test.Echo/Echo";

type Body = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

/// Serves on `port` (all addresses) until killed.
pub fn serve(port: u16, pod: &str, namespace: &str, ready_file: Option<&Path>) -> std::io::Result<()> {
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
                    async move { Ok::<_, std::convert::Infallible>(answer(request, &pod, &namespace, peer).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn answer(request: Request<Incoming>, pod: &str, namespace: &str, peer: SocketAddr) -> Response<Body> {
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
        path: request.uri().path().to_owned(),
        host: request.uri().authority().map(|a| a.to_string()).unwrap_or_default(),
        headers,
        peer: peer.to_string(),
    };
    let _ = request.into_body().collect().await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    // An empty message: not compressed, length 0.
    let frames = vec![Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))), Ok(Frame::trailers(trailers))];
    let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
    let json = serde_json::to_string(&echoed).unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if let Ok(value) = HeaderValue::from_str(&json) {
        headers.insert("x-echo", value);
    }
    response
}

/// Makes `count` calls with `metadata` (`name`, `value`) to `to`, one after another over one
/// connection (a new one after a failure), each given `timeout`.
pub fn call(
    to: SocketAddr,
    metadata: &[(String, String)],
    count: u32,
    timeout: Duration,
) -> std::io::Result<GetReport> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut report = GetReport::default();
        let mut sender: Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>> = None;
        for _ in 0..count {
            report.sent += 1;
            let outcome = tokio::time::timeout(timeout, async {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let stream = tokio::net::TcpStream::connect(to).await?;
                    let (s, connection) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                            .await
                            .map_err(std::io::Error::other)?;
                    tokio::spawn(connection);
                    report.connections += 1;
                    sender = Some(s);
                }
                let s = sender.as_mut().expect("just made");
                s.ready().await.map_err(std::io::Error::other)?;
                let mut request = Request::post(format!("http://{to}{METHOD}"))
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .header(http::header::TE, "trailers");
                for (name, value) in metadata {
                    request = request.header(name, value);
                }
                let request =
                    request.body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]))).map_err(std::io::Error::other)?;
                let response = s.send_request(request).await.map_err(std::io::Error::other)?;
                let headers: BTreeMap<String, String> = response
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let status = response.status().as_u16();
                let echo =
                    response.headers().get("x-echo").and_then(|v| serde_json::from_slice::<Echoed>(v.as_bytes()).ok());
                let collected = response.into_body().collect().await.map_err(std::io::Error::other)?;
                let grpc_status =
                    collected.trailers().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes().to_vec());
                let status = match (status, grpc_status.as_deref()) {
                    (200, Some(b"0")) => 200,
                    (200, _) => 500,
                    (other, _) => other,
                };
                Ok::<crate::http_echo::Answer, std::io::Error>((status, headers, echo))
            })
            .await;
            if !report.record(outcome) {
                sender = None;
            }
        }
        Ok(report)
    })
}
