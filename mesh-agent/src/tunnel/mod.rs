//! The mutual-TLS tunnel between agents, spoken as Istio ambient's HBONE: an HTTP/2 CONNECT
//! to the destination node's agent on port 15008, over TLS 1.3 with workload certificates on
//! both ends (`tls`), one CONNECT stream per tunnelled TCP connection (`hbone`).
//!
//! The receiving agent accepts a CONNECT only to a pod of its own node whose identity is the
//! one it proved to the client, from a client of its trust domain, and then connects to the
//! pod (not to a port whose PeerAuthentication mode is DISABLE: plaintext only, never
//! tunnelled; `peer_auth`). [`Destinations`] is what it knows of the pods.
//!
//! The sending side: `connect4` sends a TCP connection to a remote pod whose port is STRICT
//! (or, unless DISABLE, that a principal rule selects: `crate::principals`) to this agent's
//! outbound listener (`redirect` keeps the kernel's table of them), which
//! finds where it was going and carries it through a tunnel (`outbound`).

pub mod hbone;
pub mod outbound;
pub mod peer_auth;
pub mod redirect;
pub mod reply_route;
pub mod tls;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use mesh_common::{
    api::{self, resource},
    identity::{SpiffeId, TrustDomain},
    model::ResourceSet,
};

/// The port agents accept tunnels on (Istio's HBONE port).
pub const HBONE_PORT: u16 = 15008;
/// The port of the agent's outbound listener, on the node's address: where `connect4` sends
/// the connections that need the tunnel (Istio's outbound capture port).
pub const OUTBOUND_PORT: u16 = 15001;

/// A pod of this node, as the tunnel's receiving side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `namespace/name`.
    pub pod: String,
    pub identity: SpiffeId,
    /// Its mutual-TLS modes (PeerAuthentication).
    pub mtls: peer_auth::WorkloadMtls,
    /// Its pod's identity (the kernel's number).
    pub number: u32,
    /// Its ports with HTTP rules, and its policy, when it has any (`l7::request_policy`).
    pub requests: Option<Arc<crate::l7::request_policy::PodRequestPolicy>>,
}

/// A pod of another node, as the tunnel's sending side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `namespace/name`.
    pub pod: String,
    pub identity: SpiffeId,
    pub mtls: peer_auth::WorkloadMtls,
    /// A principal rule applies to it (`crate::principals`): its ports that are not DISABLE
    /// are tunnelled too, so that the client can prove who it is.
    pub principal_rules: bool,
    /// Its node's address (the node's first IPv4 address in the model), where its agent
    /// serves the tunnel; none when the model gives its node no address.
    pub node_address: Option<Ipv4Addr>,
    /// Its pod's identity (the kernel's number).
    pub number: u32,
    /// Its ports with HTTP rules: always tunnelled, whatever their mode (its agent judges
    /// their requests).
    pub http_ports: std::collections::BTreeSet<u16>,
}

/// What the tunnel knows of the pods: this node's by address (the receiving side, and the
/// sending side's client identities), the other nodes' (the sending side's destinations),
/// and this node's own address (where `connect4` sends tunnelled connections). Cheap to
/// clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    known: Arc<RwLock<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    pods: HashMap<Ipv4Addr, Destination>,
    peers: HashMap<Ipv4Addr, Peer>,
    node_address: Option<Ipv4Addr>,
    principals: crate::principals::Numbering,
}

impl Destinations {
    /// Sets them from the pods of `model`, this node being `node` (a pod whose names make no
    /// identity is left out: nothing can be tunnelled to or from it).
    pub fn set_from(&self, model: &ResourceSet, node: &str, trust_domain: &TrustDomain) {
        let mut nodes = HashMap::new();
        for resource in model.of_kind(api::Kind::Node) {
            let Some(resource::Kind::Node(n)) = &resource.kind else { continue };
            if let Some(address) = n.addresses.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) {
                nodes.insert(n.name.as_str(), address);
            }
        }
        // Too many principals: none is numbered (no tunnelled client matches a principal
        // rule), and the policy's reconcile reports why.
        let principals = crate::principals::Numbering::of(model, trust_domain).unwrap_or_default();
        let mut known = Known { node_address: nodes.get(node).copied(), principals, ..Known::default() };
        // This node's pods' policies, compiled only when some rule judges requests.
        let any_http = crate::l7::request_policy::any(model);
        let compiled: HashMap<String, Arc<crate::policy::EndpointPolicy>> = if any_http {
            crate::policy::compile(model, node).into_iter().map(|e| (e.pod.clone(), Arc::new(e))).collect()
        } else {
            HashMap::new()
        };
        for resource in model.of_kind(api::Kind::Workload) {
            let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
            let Ok(identity) = SpiffeId::new(trust_domain.clone(), &w.namespace, &w.service_account) else { continue };
            let pod = format!("{}/{}", w.namespace, w.name);
            let mtls = peer_auth::resolve(model, w);
            let ips = w.ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok());
            let http_ports = if any_http {
                crate::l7::request_policy::policed_ports(model, w)
            } else {
                std::collections::BTreeSet::new()
            };
            if w.node == node {
                let requests = compiled.get(&pod).filter(|_| !http_ports.is_empty()).map(|policy| {
                    Arc::new(crate::l7::request_policy::PodRequestPolicy { ports: http_ports, policy: policy.clone() })
                });
                let destination = Destination { pod, identity, mtls, number: w.identity, requests };
                known.pods.extend(ips.map(|ip| (ip, destination.clone())));
            } else {
                let peer = Peer {
                    pod,
                    identity,
                    mtls,
                    principal_rules: crate::principals::selected(model, w),
                    node_address: nodes.get(w.node.as_str()).copied(),
                    number: w.identity,
                    http_ports,
                };
                known.peers.extend(ips.map(|ip| (ip, peer.clone())));
            }
        }
        *self.known.write().expect("never poisoned") = known;
    }

    /// Exactly these pods: of this node, and of the other nodes.
    pub fn of(
        pods: impl IntoIterator<Item = (Ipv4Addr, Destination)>,
        peers: impl IntoIterator<Item = (Ipv4Addr, Peer)>,
    ) -> Self {
        let known = Known { pods: pods.into_iter().collect(), peers: peers.into_iter().collect(), ..Known::default() };
        Self { known: Arc::new(RwLock::new(known)) }
    }

    /// Every pod of this node, once (a pod with several addresses is listed once), by name.
    pub fn pods(&self) -> Vec<Destination> {
        let known = self.known.read().expect("never poisoned");
        let mut all: Vec<Destination> = known.pods.values().cloned().collect();
        all.sort_by(|a, b| a.pod.cmp(&b.pod));
        all.dedup_by(|a, b| a.pod == b.pod);
        all
    }

    /// The pod at `ip` on this node.
    pub fn get(&self, ip: Ipv4Addr) -> Option<Destination> {
        self.known.read().expect("never poisoned").pods.get(&ip).cloned()
    }

    /// The HTTP rules of the pod at `ip` on this node, if its `port` has any (no copy of the
    /// rest: the L7 proxy asks at every request).
    pub fn requests(&self, ip: Ipv4Addr, port: u16) -> Option<Arc<crate::l7::request_policy::PodRequestPolicy>> {
        let known = self.known.read().expect("never poisoned");
        known.pods.get(&ip)?.requests.as_ref().filter(|r| r.ports.contains(&port)).cloned()
    }

    /// Every pod of this node, by address.
    pub fn local(&self) -> Vec<(Ipv4Addr, Destination)> {
        let known = self.known.read().expect("never poisoned");
        let mut all: Vec<_> = known.pods.iter().map(|(ip, pod)| (*ip, pod.clone())).collect();
        all.sort_by_key(|(ip, _)| *ip);
        all
    }

    /// The pod at `ip` on another node.
    pub fn peer(&self, ip: Ipv4Addr) -> Option<Peer> {
        self.known.read().expect("never poisoned").peers.get(&ip).cloned()
    }

    /// Every pod of the other nodes, by address.
    pub fn peers(&self) -> Vec<(Ipv4Addr, Peer)> {
        let known = self.known.read().expect("never poisoned");
        let mut all: Vec<_> = known.peers.iter().map(|(ip, peer)| (*ip, peer.clone())).collect();
        all.sort_by_key(|(ip, _)| *ip);
        all
    }

    /// The number of client `id` in the kernel's principal identities (the low bits of the
    /// mark on the connection to the pod), if a rule names it.
    pub fn principal(&self, id: &SpiffeId) -> Option<u16> {
        self.known.read().expect("never poisoned").principals.number(id)
    }

    /// This node's address, if the model gives one.
    pub fn node_address(&self) -> Option<Ipv4Addr> {
        self.known.read().expect("never poisoned").node_address
    }
}

/// This node's pods (`namespace/name`) with a STRICT mode (for the pod or a port): what an
/// agent without workload certificates cannot enforce, and says so.
pub fn strict_pods(model: &ResourceSet, node: &str) -> Vec<String> {
    model
        .of_kind(api::Kind::Workload)
        .filter_map(|resource| match &resource.kind {
            Some(resource::Kind::Workload(w)) if w.node == node => Some(w),
            _ => None,
        })
        .filter(|w| {
            let mtls = peer_auth::resolve(model, w);
            mtls.mode == peer_auth::Mode::Strict || mtls.ports.values().any(|m| *m == peer_auth::Mode::Strict)
        })
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect()
}

/// How long a tunnel listener waits for the certificates of this node's pods before it
/// accepts (then connections that need a missing one are refused, and say why).
pub const CERTIFICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Listens on `socket` (bound, with `SO_REUSEPORT`) once the agent holds the certificates of
/// this node's pods (at most [`CERTIFICATE_WAIT`]); `None` if `stop` came first. Until it
/// listens, a bound socket of a reuseport group gets no connection: a new agent beside the old
/// one takes its share only once it can carry them, and none waits in its queue meanwhile.
/// The agent is ready only once both listen (`AgentState::tunnel_listens`).
pub async fn listen_with_certificates(
    socket: tokio::net::TcpSocket,
    state: &crate::agent_status::AgentState,
    listener: &str,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<std::io::Result<tokio::net::TcpListener>> {
    let listening = tokio::select! {
        held = state.certificates.wait_held(CERTIFICATE_WAIT) => {
            if !held {
                tracing::warn!(listener, "listening without every pod's certificate after {CERTIFICATE_WAIT:?}");
            }
            Some(socket.listen(1024))
        }
        () = stop => None,
    };
    state.tunnel_listening();
    listening
}

/// A listener whose `accept()` fails (no descriptor or buffer left) tries again after this long,
/// instead of ending.
pub const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// What an `accept()` of the tunnel's listeners gave: the connection, or `None` after logging
/// the error and waiting [`ACCEPT_RETRY`] (the listener stays).
pub async fn accepted(
    result: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match result {
        Ok(accepted) => Some(accepted),
        Err(err) => {
            tracing::warn!("accepting a connection failed: {err}; trying again in {ACCEPT_RETRY:?}");
            tokio::time::sleep(ACCEPT_RETRY).await;
            None
        }
    }
}

/// A single-threaded runtime on a thread of its own for the tunnel's data path (both
/// listeners and every connection they carry). A tunnelled connection's bytes pass between
/// tasks that wake each other at every read (the copy, the HTTP/2 connection, TLS); on one
/// thread a wake is a queue push, across the agent's two workers it was a futex wake and a
/// migration (`bench mtls`, same run: see ARCHITECTURE.md). The thread lives as long as the
/// process.
pub fn runtime() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("tunnel".into()).spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}
