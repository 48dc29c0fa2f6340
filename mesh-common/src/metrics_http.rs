//! The `/metrics` endpoint the agent and the operator serve: HTTP/1.1 over hyper (keep-alive,
//! a deadline for the request head, a graceful end on drain), the body the OpenMetrics text
//! of a `prometheus-client` registry that the caller renders (off the runtime: the agent's
//! reads BPF maps). Beside it `/ready`, the readiness probe of their Kubernetes manifests
//! (their images hold no shell or `test` for an exec probe): 200 once the daemon is ready
//! (when it writes its ready file), 503 before.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};

/// The content type of `prometheus_client::encoding::text`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A client has this long to send its request head (a silent connection is closed).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Renders the exposition; called on a blocking thread for every scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;
/// Whether the daemon is ready (`GET /ready`).
pub type Ready = Arc<dyn Fn() -> bool + Send + Sync>;
/// The readiness probe's path.
pub const READY_PATH: &str = "/ready";

/// Serves `listener` ([`serve`]) on its own task, tracked by `drain` (it stops accepting on
/// SIGTERM); an accept error is logged.
pub fn spawn(drain: &mut crate::drain::Drain, listener: tokio::net::TcpListener, render: Render, ready: Ready) {
    let stop = drain.signal();
    drain.track(
        "metrics",
        tokio::spawn(async move {
            if let Err(err) = serve(listener, render, ready, stop).await {
                tracing::error!("metrics listener stopped: {err}");
            }
        }),
    );
}

/// Serves `GET /metrics` and `GET /ready` (anything else: 404, a method other than GET or
/// HEAD: 405) on `listener` until `stop` resolves; returns an accept error otherwise.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: Render,
    ready: Ready,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut stop => return Ok(()),
        };
        let (render, ready) = (render.clone(), ready.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, render.clone(), ready.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    render: Render,
    ready: Ready,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        Ok(response)
    };
    let path = request.uri().path();
    if path != "/metrics" && path != READY_PATH {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at GET /metrics, readiness at GET /ready\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", format!("use GET {path}\n"));
    }
    if path == READY_PATH {
        return match ready() {
            true => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            false => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n".into()),
        };
    }
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "rendering the metrics failed\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The status line's code for `GET path` (one request, then the connection closes).
    async fn status(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer.split_whitespace().nth(1).unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn ready_answers_503_until_the_daemon_is_ready_then_200() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(|| "# EOF\n".to_owned()),
            Arc::new(move || flag.load(Ordering::Relaxed)),
            async move {
                let _ = stopped.await;
            },
        ));
        assert_eq!(status(addr, "GET", READY_PATH).await, "503");
        assert_eq!(status(addr, "GET", "/metrics").await, "200");
        ready.store(true, Ordering::Relaxed);
        assert_eq!(status(addr, "GET", READY_PATH).await, "200");
        assert_eq!(status(addr, "POST", READY_PATH).await, "405");
        assert_eq!(status(addr, "GET", "/healthz").await, "404");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
