//! How the L7 proxy's pooled client reaches backends: TCP connections made in the node's
//! network namespace (`netns::Sockets`), with a connect timeout and no Nagle delay.

use std::{future::Future, net::SocketAddr, pin::Pin, task::Poll, time::Duration};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::netns::Sockets;

/// A backend that does not accept within this long counts as a failed connection (503, or a
/// retry).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct NetnsConnector {
    sockets: Sockets,
}

impl NetnsConnector {
    pub fn new(sockets: Sockets) -> Self {
        Self { sockets }
    }
}

impl tower::Service<Uri> for NetnsConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let sockets = self.sockets.clone();
        Box::pin(async move {
            // The proxy writes every backend URI as http://<ip>:<port>.
            let address: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: not ip:port")))?;
            let socket = sockets.tcp_v4().await?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(address))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {address}")))??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
