//! The sending side: the agent's outbound listener, where `connect4` sends the connections
//! of this node's pods that must go through the tunnel. For each one it finds where the
//! connection was going (`redirect::Origins`, written by `sockops`), the client pod's identity
//! and certificate, the destination pod's identity and node, and carries the connection over
//! one HBONE stream (`hbone::connect`) to that node's agent.
//!
//! A connection that cannot be carried is reset at once (the client sees a refused
//! connection, not a hang) and counted by reason.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::{TcpListener, TcpStream};

use super::{Destinations, HBONE_PORT, hbone, redirect::Origins};
use crate::identity::Certificates;

/// Why a redirected connection was not carried; each one is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `sockops` left no destination for it (evicted, or a client that connected to the
    /// listener itself).
    NoDestination,
    /// The client is no pod of this node with an identity.
    UnknownClient,
    /// The client's workload certificate is not held (yet).
    NoCertificate,
    /// The destination is no pod of another node with an identity and a node address.
    UnknownDestination,
    /// The peer agent could not be reached, or refused the tunnel.
    Tunnel,
}

impl Failure {
    pub const ALL: [Self; 5] =
        [Self::NoDestination, Self::UnknownClient, Self::NoCertificate, Self::UnknownDestination, Self::Tunnel];

    /// Its number in a drop event's `detail` (from 1).
    pub fn detail(self) -> u8 {
        self as u8 + 1
    }

    /// The failure of a drop event's `detail`.
    pub fn from_detail(detail: u8) -> Option<Self> {
        Self::ALL.get(usize::from(detail).checked_sub(1)?).copied()
    }

    /// Its name in metrics, logs and flows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoDestination => "no_destination",
            Self::UnknownClient => "unknown_client",
            Self::NoCertificate => "no_certificate",
            Self::UnknownDestination => "unknown_destination",
            Self::Tunnel => "peer_agent",
        }
    }
}

/// What the sending side counted since the agent started.
#[derive(Debug, Default)]
pub struct OutboundStats {
    /// Connections accepted from pods.
    pub connections: AtomicU64,
    /// Connections carried through a tunnel.
    pub tunnelled: AtomicU64,
    /// Connections to Service ports with HTTP routes, served by the L7 proxy.
    pub routed: AtomicU64,
    /// Connections reset, by [`Failure`] (in the order of [`Failure::ALL`]).
    pub failures: [AtomicU64; Failure::ALL.len()],
    /// Bytes from the pods into tunnels, and back.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

impl OutboundStats {
    pub fn failed(&self, failure: Failure) -> u64 {
        self.failures[failure as usize].load(Ordering::Relaxed)
    }
}

/// The sending side's state. Cheap to clone (shared).
#[derive(Clone)]
pub struct Outbound {
    pub certificates: Certificates,
    pub destinations: Destinations,
    pub origins: Arc<Origins>,
    pub stats: Arc<OutboundStats>,
    /// Where tunnels are opened from: the node's network namespace.
    pub sockets: crate::netns::Sockets,
    /// Open tunnel connections, shared by the connections they carry.
    pub pool: hbone::Pool,
    /// Where a connection not carried is reported, as a dropped flow.
    pub flows: crate::flows::store::FlowStore,
    /// The L7 proxy, for connections to Service ports with HTTP routes.
    pub l7: crate::l7::L7,
}

/// Accepts redirected connections on `listener` until `stop` resolves; then waits for the
/// carried ones to end (the caller bounds the wait: the drain's grace period). The L7 proxy's
/// connections are told to drain at once: each finishes its requests in flight and takes no
/// new one.
pub async fn serve(
    listener: TcpListener,
    outbound: Outbound,
    stop: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    let (drain, draining) = tokio::sync::watch::channel(false);
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
                let _ = drain.send(true);
                while connections.join_next().await.is_some() {}
                return Ok(());
            }
        };
        outbound.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (outbound, draining) = (outbound.clone(), draining.clone());
        connections.spawn(async move {
            if let Err((failure, reason)) = carry(stream, client, &outbound, draining).await {
                outbound.stats.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client, reason = failure.as_str(), "connection not tunnelled: {reason}");
                outbound.flows.push_made(vec![dropped(client, &outbound, failure)]);
            }
        });
    }
}

/// The drop flow of a connection from `client` the tunnel did not carry: from the client to
/// where it was going (the listener, if the kernel left no destination), seen leaving the
/// client pod, with the failure in the summary.
fn dropped(client: SocketAddr, outbound: &Outbound, failure: Failure) -> crate::flows::Record {
    use mesh_common::{flows, policy};
    let v4 = |address: SocketAddr| match address {
        SocketAddr::V4(v4) => crate::flows::event_addr(v4),
        SocketAddr::V6(_) => (0, 0),
    };
    let (saddr, sport) = v4(client);
    let original = match client {
        SocketAddr::V4(client) => outbound.origins.get(client),
        SocketAddr::V6(_) => None,
    };
    let (daddr, dport) = original.map_or((0, 0), |o| v4(o.pod));
    let (svc_addr, svc_port) = original.filter(|o| o.asked.ip() != o.pod.ip()).map_or((0, 0), |o| v4(o.asked));
    let event = flows::FlowEvent {
        saddr,
        sport,
        daddr,
        dport,
        svc_addr,
        svc_port,
        kind: flows::FLOW_DROP,
        proto: mesh_common::proto::TCP,
        action: policy::DENY,
        reason: policy::reason::NO_TUNNEL_ENDPOINT,
        direction: policy::EGRESS,
        tcp_flags: flows::tcp_flags::SYN,
        detail: failure.detail(),
        ..flows::FlowEvent::default()
    };
    crate::flows::Record { event, unix_ns: crate::flows::unix_now_ns(), seq: 0, http: None }
}

/// Where a redirected connection goes.
enum Carried {
    Tunnel((hbone::Stream, hbone::Lease)),
    Routed(crate::l7::proxy::Destination),
    /// To a port with HTTP rules of a pod of this node: its requests judged here.
    Judged(TcpStream, crate::l7::judged::Judged),
}

/// Carries one connection; on failure it has been reset.
async fn carry(
    mut client_stream: TcpStream,
    client: SocketAddr,
    outbound: &Outbound,
    draining: tokio::sync::watch::Receiver<bool>,
) -> Result<(), (Failure, String)> {
    let refuse = |stream: &TcpStream| {
        // A reset, not an orderly close: the client must not take it for an empty answer.
        let _ = stream.set_zero_linger();
    };
    let fail = |failure, reason: String| (failure, reason);
    let result = async {
        let SocketAddr::V4(client_v4) = client else {
            return Err(fail(Failure::UnknownClient, format!("{client} is not IPv4")));
        };
        let original = outbound
            .origins
            .get(client_v4)
            .ok_or_else(|| fail(Failure::NoDestination, "the kernel left no original destination".into()))?;
        if let SocketAddr::V4(asked) = original.asked
            && let Some(service) = outbound.l7.routed(asked)
        {
            // Routed: the proxy serves it (and chooses backends per request). A client that is
            // no known pod gets the producer routes.
            let client_namespace = outbound
                .destinations
                .get(*client_v4.ip())
                .and_then(|pod| pod.pod.split_once('/').map(|(namespace, _)| namespace.to_owned()))
                .unwrap_or_default();
            return Ok(Carried::Routed(crate::l7::proxy::Destination {
                service,
                port: asked.port(),
                client_namespace,
                client: client_v4,
                asked,
            }));
        }
        let source = outbound
            .destinations
            .get(*client_v4.ip())
            .ok_or_else(|| fail(Failure::UnknownClient, format!("{} is no pod of this node", client.ip())))?;
        let issued = outbound
            .certificates
            .get(&source.identity)
            .ok_or_else(|| fail(Failure::NoCertificate, format!("no certificate for {} yet", source.identity)))?;
        let IpAddr::V4(pod_ip) = original.pod.ip() else {
            return Err(fail(Failure::UnknownDestination, format!("{} is not IPv4", original.pod)));
        };
        if let Some(local) = outbound.destinations.get(pod_ip) {
            let requests = local
                .requests
                .filter(|r| r.ports.contains(&original.pod.port()))
                .ok_or_else(|| fail(Failure::UnknownDestination, format!("{} is a pod of this node", original.pod)))?;
            let SocketAddr::V4(pod_address) = original.pod else { unreachable!("checked IPv4 above") };
            // From the client's own address, marked with its principal: the pod's TC takes it
            // as delivered by the agent, and its policy and flows see the client.
            let principal = outbound.destinations.principal(&source.identity).unwrap_or(0);
            let connect = async {
                let socket = outbound.sockets.tcp_v4().await?;
                socket.set_nodelay(true)?;
                hbone::transparent(&socket, *client_v4.ip(), principal)?;
                socket.connect(original.pod).await
            };
            let pod = match tokio::time::timeout(crate::l7::judged::CONNECT_TIMEOUT, connect).await {
                Ok(Ok(pod)) => pod,
                Ok(Err(err)) => return Err(fail(Failure::Tunnel, format!("connecting to {}: {err}", original.pod))),
                Err(_) => return Err(fail(Failure::Tunnel, format!("connecting to {}: no answer", original.pod))),
            };
            let judged = crate::l7::judged::Judged {
                pod: pod_address,
                requests,
                client: crate::l7::request_policy::Client {
                    ip: *client_v4.ip(),
                    identity: Some(source.number),
                    principal: Some(source.identity.clone()),
                },
                client_address: client_v4,
                flows: crate::l7::access_log::AccessLog::new(outbound.flows.clone()),
                metrics: outbound.l7.metrics().clone(),
            };
            return Ok(Carried::Judged(pod, judged));
        }
        let destination = outbound
            .destinations
            .peer(pod_ip)
            .ok_or_else(|| fail(Failure::UnknownDestination, format!("{} is no pod of another node", original.pod)))?;
        let node = destination.node_address.ok_or_else(|| {
            fail(Failure::UnknownDestination, format!("the node of {} has no address", destination.pod))
        })?;
        let roots = outbound.certificates.roots();
        let source = hbone::Source { issued: &issued, roots: &roots, address: client };
        let peer = SocketAddr::V4(SocketAddrV4::new(node, HBONE_PORT));
        let tunnel = (outbound.pool)
            .connect(&outbound.sockets, source, peer, original.pod, &destination.identity)
            .await
            .map_err(|err| {
                fail(
                    Failure::Tunnel,
                    format!("to {} ({}) asked as {}: {err}", original.pod, destination.pod, original.asked),
                )
            })?;
        Ok(Carried::Tunnel(tunnel))
    }
    .await;
    // The lease keeps the stream counted on its pooled connection until the copy ends.
    let (mut tunnel, _lease) = match result {
        Ok(Carried::Tunnel(tunnel)) => tunnel,
        Ok(Carried::Routed(destination)) => {
            outbound.stats.routed.fetch_add(1, Ordering::Relaxed);
            outbound.l7.serve(client_stream, destination, draining).await;
            return Ok(());
        }
        Ok(Carried::Judged(pod, judged)) => {
            outbound.stats.routed.fetch_add(1, Ordering::Relaxed);
            let _ = client_stream.set_nodelay(true);
            if let Err(err) = crate::l7::judged::serve(client_stream, pod, judged, draining).await {
                tracing::debug!("a judged local connection ended: {err}");
            }
            return Ok(());
        }
        Err(err) => {
            refuse(&client_stream);
            return Err(err);
        }
    };
    outbound.stats.tunnelled.fetch_add(1, Ordering::Relaxed);
    let _ = client_stream.set_nodelay(true);
    let copied = tokio::io::copy_bidirectional_with_sizes(
        &mut client_stream,
        &mut tunnel,
        hbone::COPY_BUFFER,
        hbone::COPY_BUFFER,
    )
    .await;
    if let Ok((out, back)) = copied {
        outbound.stats.bytes_out.fetch_add(out, Ordering::Relaxed);
        outbound.stats.bytes_in.fetch_add(back, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Failure;

    #[test]
    fn every_failure_has_its_own_detail_number() {
        for failure in Failure::ALL {
            assert_eq!(Failure::from_detail(failure.detail()), Some(failure));
        }
        assert_eq!(Failure::from_detail(0), None, "0: no failure (a kernel event)");
        assert_eq!(Failure::from_detail(Failure::ALL.len() as u8 + 1), None);
    }
}
