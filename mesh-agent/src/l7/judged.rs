//! Serving a connection to a port with HTTP rules (`request_policy`) on the destination's
//! node: the client's side as HTTP/1.1 or HTTP/2 cleartext (told apart by the preface), every
//! request judged before it goes on over the one connection already made to the pod (from the
//! client's own address), in the protocol the client spoke. A denied request is answered 403
//! with the rule that denied it, and logged as a dropped L7 flow naming it; the connection
//! stays open for the next request. An allowed request and its answer are logged as forwarded
//! L7 flows (ingress, with the pod's code and latency). An allowed HTTP/1.1 upgrade
//! (WebSocket's) goes to the pod as asked; when the pod switches protocols (101), the client's
//! connection and the pod's are joined byte for byte, as the route proxy does.

use std::{
    net::SocketAddrV4,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{
    access_log::{AccessLog, Hop, RequestLine},
    proxy::{BoxError, H2_KEEPALIVE, HEADER_READ_TIMEOUT},
    request_policy::{Client, PodRequestPolicy},
};
use crate::{
    flows::http::HttpExchange,
    policy::{HttpRequest, Verdict},
};

type Body = BoxBody<Bytes, BoxError>;

/// A judged connection: the pod port it goes to, the pod's policy, the client.
pub struct Judged {
    pub pod: SocketAddrV4,
    pub requests: Arc<PodRequestPolicy>,
    pub client: Client,
    pub client_address: SocketAddrV4,
    /// Where judged requests' flows go.
    pub flows: AccessLog,
    /// Where every judged request is counted.
    pub metrics: super::metrics::L7Metrics,
}

/// The sending half of the connection to the pod, made at the first request.
enum Upstream {
    Http1(hyper::client::conn::http1::SendRequest<Incoming>),
    Http2(hyper::client::conn::http2::SendRequest<Incoming>),
}

/// Serves `downstream` (the client's side) until it closes, passing allowed requests to the
/// pod over `upstream`; once `draining` turns true, until its requests in flight are answered.
pub async fn serve<IO>(
    downstream: IO,
    upstream: tokio::net::TcpStream,
    judged: Judged,
    draining: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let judged = Arc::new(judged);
    let pod = Arc::new(tokio::sync::Mutex::new((Some(upstream), None::<Upstream>)));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (judged, pod) = (judged.clone(), pod.clone());
        async move { Ok::<_, std::convert::Infallible>(answer(request, &judged, &pod).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_KEEPALIVE).keep_alive_timeout(H2_KEEPALIVE * 2);
    super::serve_draining!(builder.serve_connection_with_upgrades(TokioIo::new(downstream), service), draining)
}

type PodConnection = tokio::sync::Mutex<(Option<tokio::net::TcpStream>, Option<Upstream>)>;

async fn answer(mut request: Request<Incoming>, judged: &Judged, pod: &PodConnection) -> Response<Body> {
    let started = Instant::now();
    let view =
        HttpRequest { method: request.method().as_str(), path: request.uri().path(), headers: request.headers() };
    let verdict = judged.requests.verdict(&judged.client, judged.pod.port(), &view);
    let namespace = judged.requests.namespace();
    let line = RequestLine::of(&request, judged.pod);
    if let Verdict::Denied(cause) = verdict {
        let rule = super::request_policy::denial(&cause);
        judged.metrics.judged(namespace, Some(&rule));
        let hop = Hop { client: judged.client_address, asked: judged.pod, endpoint: None, ingress: true };
        let exchange = HttpExchange { code: 403, denied_by: rule.clone(), ..HttpExchange::default() };
        judged.flows.log(line, hop, exchange, started.elapsed());
        tracing::debug!(client = %judged.client_address, pod = %judged.pod, "request denied by {rule}");
        return plain(StatusCode::FORBIDDEN, format!("RBAC: access denied by {rule}\n"));
    }
    judged.metrics.judged(namespace, None);
    // The client's side of an upgrade it asks for (the request goes on with its headers).
    let upgrade = (request.version() == http::Version::HTTP_11 && request.headers().contains_key(header::UPGRADE))
        .then(|| hyper::upgrade::on(&mut request));
    let response = match forward(request, pod).await {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let Some(client) = upgrade else {
                    return plain(
                        StatusCode::BAD_GATEWAY,
                        "the pod switched protocols without being asked\n".to_owned(),
                    );
                };
                tokio::spawn(super::proxy::splice(client, hyper::upgrade::on(&mut response)));
            }
            response.map(|body| body.map_err(BoxError::from).boxed())
        }
        Err(err) => {
            tracing::debug!(pod = %judged.pod, "a judged request got no answer: {err}");
            plain(StatusCode::BAD_GATEWAY, format!("the pod did not answer: {err}\n"))
        }
    };
    let hop =
        Hop { client: judged.client_address, asked: judged.pod, endpoint: Some(judged.pod.into()), ingress: true };
    let exchange = HttpExchange { code: response.status().as_u16(), ..HttpExchange::default() };
    judged.flows.log(line, hop, exchange, started.elapsed());
    response
}

/// Sends an allowed request to the pod, making the connection's client half at the first one
/// (HTTP/2 when the client spoke it).
async fn forward(request: Request<Incoming>, pod: &PodConnection) -> Result<Response<Incoming>, BoxError> {
    let mut guard = pod.lock().await;
    if guard.1.is_none() {
        let stream = guard.0.take().ok_or("the connection to the pod is gone")?;
        let io = TokioIo::new(stream);
        let upstream = if request.version() == http::Version::HTTP_2 {
            let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE)
                .keep_alive_timeout(H2_KEEPALIVE * 2)
                .handshake(io)
                .await?;
            tokio::spawn(connection);
            Upstream::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            // With upgrades: a 101 hands the connection over to the splice.
            tokio::spawn(connection.with_upgrades());
            Upstream::Http1(sender)
        };
        guard.1 = Some(upstream);
    }
    match guard.1.as_mut().expect("made above") {
        Upstream::Http2(sender) => {
            // HTTP/2 multiplexes: the lock is not held while the answer comes.
            let mut sender = sender.clone();
            drop(guard);
            sender.ready().await?;
            Ok(sender.send_request(request).await?)
        }
        // HTTP/1.1 takes one request at a time, as the client's side does.
        Upstream::Http1(sender) => {
            sender.ready().await?;
            Ok(sender.send_request(request).await?)
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// How long a judged connection's pod has to accept (as the tunnel's).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
