//! HBONE: a TCP connection carried as one HTTP/2 CONNECT stream (`:authority` = the
//! destination pod's address and port, the client's address in `Forwarded`) over mutual TLS
//! 1.3 to port [`super::HBONE_PORT`] of the destination node's agent. `serve` is the
//! receiving side, `connect` the sending one. HTTP/2 is `hyper`'s (CONNECT streams become
//! upgraded byte streams); TLS is `rustls`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_common::identity::SpiffeId;
use tokio::net::TcpListener;

use super::{Destinations, tls};
use crate::identity::{Certificates, Issued};

/// A TCP connect (to a peer agent, or to the destination pod) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS handshake or a CONNECT's answer gives up after this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Both ends PING an HTTP/2 connection after this much silence ...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ... and close it when the answer takes longer than this (ztunnel's 10 s and 20 s).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow-control windows and frame size, ztunnel's: a stream may have 4 MiB in flight,
/// a connection 16 MiB.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// Concurrent CONNECT streams a peer may open on one connection (ztunnel's server limit).
pub const MAX_STREAMS: u32 = 200;
/// The `Forwarded` header: who the tunnelled connection is from (RFC 7239, as ztunnel sends it).
pub const FORWARDED: &str = "forwarded";

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot reach the agent at {peer}: {source}; is its node up and its agent serving the tunnel port?")]
    Connect { peer: SocketAddr, source: std::io::Error },
    #[error("no TLS with the agent at {peer}: {source}")]
    Handshake { peer: SocketAddr, source: std::io::Error },
    #[error("HTTP/2 with the agent at {peer} failed: {source}")]
    Http { peer: SocketAddr, source: hyper::Error },
    #[error("the agent at {peer} refused the tunnel to {target}: {status}{reason}")]
    Refused { peer: SocketAddr, target: SocketAddr, status: StatusCode, reason: String },
    #[error("the agent at {peer} did not answer within {timeout:?} ({during})")]
    Timeout { peer: SocketAddr, during: &'static str, timeout: Duration },
    #[error("no identity for the tunnel: {0}")]
    Identity(String),
}

/// What the receiving side counted since the agent started.
#[derive(Debug, Default)]
pub struct InboundStats {
    pub handshakes: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub streams: AtomicU64,
    pub refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// The receiving side's state. Cheap to clone (shared).
#[derive(Clone)]
pub struct Inbound {
    pub certificates: Certificates,
    pub destinations: Destinations,
    pub stats: Arc<InboundStats>,
    /// Where connections to pods are made: the node's network namespace.
    pub sockets: crate::netns::Sockets,
    /// Where requests judged by HTTP rules are logged.
    pub flows: crate::l7::access_log::AccessLog,
    /// Where they are counted.
    pub l7_metrics: crate::l7::metrics::L7Metrics,
}

/// Accepts tunnels on `listener` until `stop` resolves; then asks every open HTTP/2
/// connection to finish (GOAWAY: open streams continue, new ones go elsewhere) and returns
/// when the last one has ended (the caller bounds the wait: the drain's grace period).
pub async fn serve(
    listener: TcpListener,
    inbound: Inbound,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let config = tls::server_config(inbound.certificates.clone()).map_err(std::io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match super::accepted(accepted).await {
                Some(accepted) => accepted,
                None => continue,
            },
            () = &mut stop => {
                drop(listener);
                let _ = stopping.send(true);
                if !connections.is_empty() {
                    tracing::info!(open = connections.len(), "draining tunnels");
                }
                while connections.join_next().await.is_some() {}
                return Ok(());
            }
        };
        let (acceptor, inbound, mut stopping) = (acceptor.clone(), inbound.clone(), stopping.subscribe());
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    inbound.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%client, "tunnel handshake failed: {err}");
                    return;
                }
                Err(_) => {
                    inbound.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%client, "tunnel handshake timed out");
                    return;
                }
            };
            inbound.stats.handshakes.fetch_add(1, Ordering::Relaxed);
            let session = tls.get_ref().1;
            let peer = session.peer_certificates().and_then(|c| c.first()).map(tls::identity_in);
            let (Some(Ok(peer)), Some(name)) = (peer, session.server_name().map(str::to_owned)) else {
                tracing::info!(%client, "tunnel without a peer identity or a server name; closed");
                return;
            };
            let served = SessionInfo { peer, server_name: name, client };
            // Streams served as HTTP (ports with HTTP rules) drain with the agent too.
            let draining = stopping.clone();
            let service = hyper::service::service_fn(move |request| {
                let (inbound, served, draining) = (inbound.clone(), served.clone(), draining.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(accept_stream(request, &inbound, &served, draining).await)
                }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_concurrent_streams(MAX_STREAMS)
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%client, "tunnel connection ended: {err}");
                    }
                }
                () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

#[derive(Clone)]
struct SessionInfo {
    peer: SpiffeId,
    server_name: String,
    client: SocketAddr,
}

fn answer(status: StatusCode, reason: &str) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(reason) {
        response.headers_mut().insert(REASON, value);
    }
    response
}

/// Why a CONNECT was refused, in the answer (for the sending agent's log and flows).
pub const REASON: &str = "x-mesh-reason";

/// What a CONNECT on a connection opened for `server_name` by `peer` asks for, checked: the
/// address of a pod of this node whose identity is the one the connection was opened for,
/// asked for by a peer of this trust domain, on a port whose mode is not DISABLE; or the
/// status and reason of the refusal.
pub fn judge(
    method: &Method,
    uri: &http::Uri,
    server_name: &str,
    peer: &SpiffeId,
    destinations: &Destinations,
    trust_domain: &mesh_common::identity::TrustDomain,
) -> Result<SocketAddr, (StatusCode, String)> {
    if method != Method::CONNECT {
        return Err((StatusCode::BAD_REQUEST, format!("{method} is not CONNECT")));
    }
    let Some(target) = uri.authority().and_then(|a| a.as_str().parse::<SocketAddr>().ok()) else {
        return Err((StatusCode::BAD_REQUEST, format!("the authority of {uri} is not an address and port")));
    };
    let IpAddr::V4(ip) = target.ip() else {
        return Err((StatusCode::BAD_REQUEST, format!("{target} is not IPv4")));
    };
    let Some(pod) = destinations.get(ip) else {
        return Err((StatusCode::BAD_REQUEST, format!("{ip} is no pod of this node")));
    };
    let destination = pod.identity;
    if tls::server_name(&destination).ok().is_none_or(|name| name.to_str() != server_name) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{target} is {destination}, not the identity this connection was opened for ({server_name})"),
        ));
    }
    if peer.trust_domain() != trust_domain {
        return Err((StatusCode::UNAUTHORIZED, format!("{peer} is not of this trust domain")));
    }
    if pod.mtls.for_port(target.port()) == super::peer_auth::Mode::Disable {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("{target}: its PeerAuthentication mode is DISABLE (plaintext only), so it is never tunnelled"),
        ));
    }
    Ok(target)
}

/// One CONNECT: checks it, connects to the pod, and joins the two once the stream is upgraded.
async fn accept_stream(
    mut request: Request<hyper::body::Incoming>,
    inbound: &Inbound,
    session: &SessionInfo,
    draining: tokio::sync::watch::Receiver<bool>,
) -> Response<Empty<Bytes>> {
    let refuse = |status, reason: String| {
        inbound.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(client = %session.client, peer = %session.peer, %status, "tunnel refused: {reason}");
        answer(status, &reason)
    };
    let target = match judge(
        request.method(),
        request.uri(),
        &session.server_name,
        &session.peer,
        &inbound.destinations,
        inbound.certificates.trust_domain(),
    ) {
        Ok(target) => target,
        Err((status, reason)) => return refuse(status, reason),
    };
    let from = match forwarded_client(request.headers(), &session.peer, &inbound.destinations) {
        Ok(from) => from,
        Err((status, reason)) => return refuse(status, reason),
    };
    // From the client's own address: the pod's TC policy, conntrack and flows see the client.
    let connect = async {
        let socket = inbound.sockets.tcp_v4().await?;
        socket.set_nodelay(true)?;
        // The mark's low bits: the client's principal number, for principal rules at TC.
        transparent(&socket, from, inbound.destinations.principal(&session.peer).unwrap_or(0))?;
        socket.connect(target).await
    };
    let pod = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(pod)) => pod,
        Ok(Err(err)) => return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("connecting to {target}: {err}")),
        Err(_) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("connecting to {target}: no answer in {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    inbound.stats.streams.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(client = %session.client, peer = %session.peer, %target, "tunnel open");
    let upgrade = hyper::upgrade::on(&mut request);
    let stats = inbound.stats.clone();
    // A port with HTTP rules: its requests are judged here, the pod's node.
    let judged = match target {
        SocketAddr::V4(pod_address) => inbound
            .destinations
            .get(*pod_address.ip())
            .and_then(|d| d.requests)
            .filter(|requests| requests.ports.contains(&pod_address.port()))
            .map(|requests| crate::l7::judged::Judged {
                pod: pod_address,
                requests,
                client: crate::l7::request_policy::Client {
                    ip: from,
                    identity: inbound.destinations.peer(from).map(|p| p.number),
                    principal: Some(session.peer.clone()),
                },
                // The client's port is not carried by the tunnel (`Forwarded: for=` names its
                // address only).
                client_address: std::net::SocketAddrV4::new(from, 0),
                flows: inbound.flows.clone(),
                metrics: inbound.l7_metrics.clone(),
            }),
        _ => None,
    };
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        if let Some(judged) = judged {
            if let Err(err) = crate::l7::judged::serve(TokioIo::new(upgraded), pod, judged, draining).await {
                tracing::debug!("a judged tunnelled connection ended: {err}");
            }
            return;
        }
        let mut pod = pod;
        let copied =
            tokio::io::copy_bidirectional_with_sizes(&mut TokioIo::new(upgraded), &mut pod, COPY_BUFFER, COPY_BUFFER)
                .await;
        if let Ok((to_pod, from_pod)) = copied {
            stats.bytes_in.fetch_add(to_pod, Ordering::Relaxed);
            stats.bytes_out.fetch_add(from_pod, Ordering::Relaxed);
        }
    });
    answer(StatusCode::OK, "")
}

/// The client a CONNECT is for (its `Forwarded: for=`), checked: a pod of another node whose
/// identity is the peer's own (a peer may not speak for another identity's address).
pub fn forwarded_client(
    headers: &http::HeaderMap,
    peer: &SpiffeId,
    destinations: &Destinations,
) -> Result<std::net::Ipv4Addr, (StatusCode, String)> {
    let value = headers.get(FORWARDED).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(client) = forwarded_address(value) else {
        return Err((StatusCode::BAD_REQUEST, format!("no client address in Forwarded ({value:?})")));
    };
    let IpAddr::V4(ip) = client.ip() else {
        return Err((StatusCode::BAD_REQUEST, format!("the client {client} is not IPv4")));
    };
    match destinations.peer(ip) {
        Some(pod) if pod.identity == *peer => Ok(ip),
        Some(pod) => Err((StatusCode::UNAUTHORIZED, format!("the client {ip} is {}, not {peer}", pod.identity))),
        None => Err((StatusCode::UNAUTHORIZED, format!("the client {ip} is no pod of another node"))),
    }
}

/// The address in a `Forwarded` value's first `for=` (quoted or not, with or without a port).
pub fn forwarded_address(value: &str) -> Option<SocketAddr> {
    let element = value.split(',').next()?;
    let for_ = element.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        key.eq_ignore_ascii_case("for").then_some(value.trim().trim_matches('"'))
    })?;
    for_.parse::<SocketAddr>().ok().or_else(|| Some(SocketAddr::new(for_.parse().ok()?, 0)))
}

/// Makes `socket` send from `client` (any port) with the tunnel's mark carrying principal
/// number `principal` (0: none a rule names): a transparent socket, whose replies the node's
/// reply route delivers here (`reply_route`).
pub(crate) fn transparent(
    socket: &tokio::net::TcpSocket,
    client: std::net::Ipv4Addr,
    principal: u16,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = socket.as_raw_fd();
    let set = |level, option, value: u32| {
        // SAFETY: a valid option value of its size on an open socket.
        let ret = unsafe {
            libc::setsockopt(fd, level, option, (&raw const value).cast(), size_of::<u32>() as libc::socklen_t)
        };
        if ret == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    set(libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    set(libc::SOL_SOCKET, libc::SO_MARK, mesh_common::tunnel::TUNNEL_MARK | u32::from(principal))?;
    socket.bind(SocketAddr::from((client, 0)))
}

/// The `Forwarded` value naming the client, as ztunnel writes it: `for="<ip>:<port>"`
/// (RFC 7239 quotes an address with a port; IPv6 in brackets).
pub fn forwarded_for(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

/// A tunnelled connection: read and write it as the TCP connection it carries.
pub type Stream = TokioIo<hyper::upgrade::Upgraded>;

/// The sending side of one tunnelled connection: the client pod's certificate, the roots its
/// peer's chain must lead to, and the client's address and port (sent in `Forwarded`).
pub struct Source<'a> {
    pub issued: &'a Issued,
    pub roots: &'a [String],
    pub address: SocketAddr,
}

/// Opens a tunnel from `source` to `target` (a pod with identity `destination`) through the
/// agent at `peer`, with a socket from `sockets` (the node's network namespace), on a TLS
/// connection of its own.
pub async fn connect(
    sockets: &crate::netns::Sockets,
    source: Source<'_>,
    peer: SocketAddr,
    target: SocketAddr,
    destination: &SpiffeId,
) -> Result<Stream, TunnelError> {
    let sender = open(sockets, &source, peer, destination).await?;
    stream(sender, peer, target, source.address).await
}

/// The sending half of an HTTP/2 connection to a peer agent.
type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// A mutual-TLS HTTP/2 connection to the agent at `peer`, as `source`'s identity, to reach
/// pods of identity `destination`.
async fn open(
    sockets: &crate::netns::Sockets,
    source: &Source<'_>,
    peer: SocketAddr,
    destination: &SpiffeId,
) -> Result<Sender, TunnelError> {
    let config = tls::client_config(source.issued, destination.clone(), source.roots).map_err(TunnelError::Identity)?;
    let name = tls::server_name(destination).map_err(TunnelError::Identity)?;
    let timeout = |during, timeout| TunnelError::Timeout { peer, during, timeout };
    let connect = async {
        let socket = sockets.tcp_v4().await?;
        socket.set_nodelay(true)?;
        socket.connect(peer).await
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| timeout("connecting", CONNECT_TIMEOUT))?
        .map_err(|source| TunnelError::Connect { peer, source })?;
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| timeout("the TLS handshake", HANDSHAKE_TIMEOUT))?
        .map_err(|source| TunnelError::Handshake { peer, source })?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|source| TunnelError::Http { peer, source })?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%peer, "tunnel connection ended: {err}");
        }
    });
    Ok(sender)
}

/// One CONNECT stream to `target` on `sender`'s connection, for `client`.
async fn stream(
    mut sender: Sender,
    peer: SocketAddr,
    target: SocketAddr,
    client: SocketAddr,
) -> Result<Stream, TunnelError> {
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header(FORWARDED, forwarded_for(client))
        .body(Empty::<Bytes>::new())
        .expect("a CONNECT to an address is a valid request");
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| TunnelError::Timeout { peer, during: "the CONNECT's answer", timeout: HANDSHAKE_TIMEOUT })?
        .map_err(|source| TunnelError::Http { peer, source })?;
    if response.status() != StatusCode::OK {
        let reason = response.headers().get(REASON).and_then(|v| v.to_str().ok()).map(|r| format!(": {r}"));
        return Err(TunnelError::Refused {
            peer,
            target,
            status: response.status(),
            reason: reason.unwrap_or_default(),
        });
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|source| TunnelError::Http { peer, source })?;
    Ok(TokioIo::new(upgraded))
}

/// A pooled connection is closed once no new stream used it for this long (its open streams
/// carry on until they end).
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Tunnel connections shared by every connection of one client certificate to pods of one
/// identity behind one peer agent, as ztunnel pools them: the TLS handshake is paid once, not
/// per connection (`bench mtls`: 511 short connections/s with one TLS connection each). A
/// connection carries at most [`MAX_STREAMS`] at once (the peer's limit); past that another is
/// opened. A renewed certificate has another serial, so new streams go on a connection made
/// with it. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Pool(Arc<std::sync::Mutex<std::collections::HashMap<PoolKey, Vec<Pooled>>>>);

/// (client certificate serial, destination identity, peer agent).
type PoolKey = (String, SpiffeId, SocketAddr);

struct Pooled {
    sender: Sender,
    used: std::time::Instant,
    /// Streams open on it now (leases alive).
    streams: Arc<AtomicU64>,
}

/// A tunnelled connection's place on its pooled HTTP/2 connection: counted while it lives.
#[must_use = "the stream is counted on its connection while the lease lives"]
pub struct Lease(Arc<AtomicU64>);

impl Lease {
    fn on(streams: &Arc<AtomicU64>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    /// As [`connect`], on a pooled connection when one is open and has room; a pooled
    /// connection that fails (its peer agent restarted, say) is dropped and the stream tried
    /// once on a new one. Keep the lease as long as the stream.
    pub async fn connect(
        &self,
        sockets: &crate::netns::Sockets,
        source: Source<'_>,
        peer: SocketAddr,
        target: SocketAddr,
        destination: &SpiffeId,
    ) -> Result<(Stream, Lease), TunnelError> {
        let key = (source.issued.serial.clone(), destination.clone(), peer);
        if let Some((sender, lease)) = self.take(&key) {
            match stream(sender, peer, target, source.address).await {
                Ok(stream) => return Ok((stream, lease)),
                Err(TunnelError::Http { .. }) => self.forget(&key, &lease.0),
                Err(other) => return Err(other),
            }
        }
        let sender = open(sockets, &source, peer, destination).await?;
        let streams = Arc::new(AtomicU64::new(0));
        let lease = Lease::on(&streams);
        let pooled = Pooled { sender: sender.clone(), used: std::time::Instant::now(), streams };
        self.lock().entry(key).or_default().push(pooled);
        stream(sender, peer, target, source.address).await.map(|stream| (stream, lease))
    }

    /// Connections pooled now.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An open connection for `key` with room for a stream, if any, and the stream's lease;
    /// drops closed connections, and idle ones, on the way.
    fn take(&self, key: &PoolKey) -> Option<(Sender, Lease)> {
        let mut pool = self.lock();
        let now = std::time::Instant::now();
        pool.retain(|_, connections| {
            connections.retain(|p| {
                let busy = p.streams.load(Ordering::Relaxed) > 0;
                !p.sender.is_closed() && (busy || now.duration_since(p.used) < POOL_IDLE)
            });
            !connections.is_empty()
        });
        let pooled =
            pool.get_mut(key)?.iter_mut().find(|p| p.streams.load(Ordering::Relaxed) < u64::from(MAX_STREAMS))?;
        pooled.used = now;
        Some((pooled.sender.clone(), Lease::on(&pooled.streams)))
    }

    /// Drops the connection whose stream count is `streams`.
    fn forget(&self, key: &PoolKey, streams: &Arc<AtomicU64>) {
        if let Some(connections) = self.lock().get_mut(key) {
            connections.retain(|p| !Arc::ptr_eq(&p.streams, streams));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PoolKey, Vec<Pooled>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Bytes a tunnelled connection's copy reads at once, each way: TLS records are 16 KiB, and
/// tokio's default of 8 KiB cost a syscall and a frame per half record.
pub const COPY_BUFFER: usize = 64 << 10;
