//! How the L7 proxy's pooled clients reach backends: as the client whose request it is, so the
//! backend's policy judges, and its flows name, the client pod rather than the node.
//!
//! - A backend pod of this node: a transparent socket from the client's own address, marked
//!   as the tunnel's deliveries are (`TUNNEL_MARK`, with the client's principal number), so TC
//!   judges the client and the node's reply route brings the answers back to the proxy
//!   (`tunnel::reply_route`).
//! - A backend pod of another node: the HBONE tunnel to that node's agent with the client's own
//!   workload certificate (mutual TLS, so STRICT backends take it too), which delivers it the
//!   same way there.
//! - Anything else (an address that is no known pod, a client that is no pod of this node, a
//!   pod calling itself, or no tunnel: an agent without workload certificates): a plain
//!   connection from the node.
//!
//! Each client pod has its own pooled clients ([`Upstreams::for_client`]), so a connection
//! made as one client never carries another's requests.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    identity::Certificates,
    netns::Sockets,
    tunnel::{Destinations, HBONE_PORT, hbone},
};

/// A backend that does not accept within this long counts as a failed connection (503, or a
/// retry).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy connects to backends with: the node's network namespace, and the tunnel's
/// state to connect as a client. Cheap to clone (shared).
#[derive(Clone)]
pub struct Upstreams {
    sockets: Sockets,
    tunnel: Option<TunnelSide>,
}

#[derive(Clone)]
struct TunnelSide {
    destinations: Destinations,
    certificates: Certificates,
    pool: hbone::Pool,
}

impl Upstreams {
    /// Connections from the node only.
    pub fn from_node(sockets: Sockets) -> Self {
        Self { sockets, tunnel: None }
    }

    /// Connections as the clients (see the module's documentation).
    pub fn as_clients(
        sockets: Sockets,
        destinations: Destinations,
        certificates: Certificates,
        pool: hbone::Pool,
    ) -> Self {
        Self { sockets, tunnel: Some(TunnelSide { destinations, certificates, pool }) }
    }

    /// The connector for the requests of client `client`.
    pub fn for_client(&self, client: Ipv4Addr) -> NetnsConnector {
        NetnsConnector { upstreams: self.clone(), client }
    }
}

/// Connections to backends for one client.
#[derive(Clone)]
pub struct NetnsConnector {
    upstreams: Upstreams,
    client: Ipv4Addr,
}

/// A connection to a backend: a TCP connection, or a stream of the HBONE tunnel (kept counted
/// on its pooled connection while it lives).
pub enum Upstream {
    Tcp(TcpStream),
    Tunnel(hbone::Stream, hbone::Lease),
}

impl NetnsConnector {
    async fn connect(self, address: SocketAddr) -> std::io::Result<Upstream> {
        let SocketAddr::V4(target) = address else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address} is not IPv4")));
        };
        let sockets = &self.upstreams.sockets;
        let tunnel = self.upstreams.tunnel.as_ref();
        // A pod calling itself through its Service is reached from the node: an answer to its
        // own address would never leave it.
        let client = tunnel
            .filter(|_| *target.ip() != self.client)
            .and_then(|t| t.destinations.get(self.client).map(|pod| (t, pod)));
        let socket = sockets.tcp_v4().await?;
        if let Some((t, pod)) = client {
            if t.destinations.get(*target.ip()).is_some() {
                let principal = t.destinations.principal(&pod.identity).unwrap_or(0);
                hbone::transparent(&socket, self.client, principal)?;
            } else if let Some(peer) = t.destinations.peer(*target.ip())
                && let Some(node) = peer.node_address
            {
                drop(socket);
                let issued = t.certificates.get(&pod.identity).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "no certificate for {} yet: cannot reach {address} as it",
                        pod.identity
                    ))
                })?;
                let roots = t.certificates.roots();
                let source =
                    hbone::Source { issued: &issued, roots: &roots, address: SocketAddr::from((self.client, 0)) };
                let peer_agent = SocketAddr::from((node, HBONE_PORT));
                let (stream, lease) = tokio::time::timeout(
                    CONNECT_TIMEOUT * 2,
                    t.pool.connect(sockets, source, peer_agent, address, &peer.identity),
                )
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("tunnel to {address}")))?
                .map_err(|err| std::io::Error::other(format!("tunnel to {address}: {err}")))?;
                return Ok(Upstream::Tunnel(stream, lease));
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {address}")))??;
        stream.set_nodelay(true)?;
        Ok(Upstream::Tcp(stream))
    }
}

impl tower::Service<Uri> for NetnsConnector {
    type Response = TokioIo<Upstream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The proxy writes every backend URI as http://<ip>:<port>.
            let address: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: not ip:port")))?;
            this.connect(address).await.map(TokioIo::new)
        })
    }
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tunnel(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tunnel(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tunnel(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tunnel(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tunnel(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tunnel(s, _) => s.is_write_vectored(),
        }
    }
}
