//! The mutual-TLS tunnel between agents, spoken as Istio ambient's HBONE: an HTTP/2 CONNECT
//! to the destination node's agent on port 15008, over TLS 1.3 with workload certificates on
//! both ends (`tls`), one CONNECT stream per tunnelled TCP connection (`hbone`).
//!
//! The receiving agent accepts a CONNECT only to a pod of its own node whose identity is the
//! one it proved to the client, from a client of its trust domain, and then connects to the
//! pod (not to a port whose PeerAuthentication mode is DISABLE: plaintext only, never
//! tunnelled; `peer_auth`). [`Destinations`] is what it knows of its node's pods.

pub mod hbone;
pub mod peer_auth;
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

/// A pod of this node, as the tunnel's receiving side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `namespace/name`.
    pub pod: String,
    pub identity: SpiffeId,
    /// Its mutual-TLS modes (PeerAuthentication).
    pub mtls: peer_auth::WorkloadMtls,
}

/// The pods of this node by address. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    pods: Arc<RwLock<HashMap<Ipv4Addr, Destination>>>,
}

impl Destinations {
    /// Sets them from the pods of `node` in `model` (a pod whose names make no identity is left
    /// out: nothing can be tunnelled to it).
    pub fn set_from(&self, model: &ResourceSet, node: &str, trust_domain: &TrustDomain) {
        let mut pods = HashMap::new();
        for resource in model.of_kind(api::Kind::Workload) {
            let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
            if w.node != node {
                continue;
            }
            let Ok(identity) = SpiffeId::new(trust_domain.clone(), &w.namespace, &w.service_account) else { continue };
            let pod = format!("{}/{}", w.namespace, w.name);
            let destination = Destination { pod, identity, mtls: peer_auth::resolve(model, w) };
            for ip in w.ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
                pods.insert(ip, destination.clone());
            }
        }
        *self.pods.write().expect("never poisoned") = pods;
    }

    /// Exactly these pods.
    pub fn of(pods: impl IntoIterator<Item = (Ipv4Addr, Destination)>) -> Self {
        Self { pods: Arc::new(RwLock::new(pods.into_iter().collect())) }
    }

    /// Every pod, once (a pod with several addresses is listed once), by name.
    pub fn pods(&self) -> Vec<Destination> {
        let pods = self.pods.read().expect("never poisoned");
        let mut all: Vec<Destination> = pods.values().cloned().collect();
        all.sort_by(|a, b| a.pod.cmp(&b.pod));
        all.dedup_by(|a, b| a.pod == b.pod);
        all
    }

    /// The pod at `ip` on this node.
    pub fn get(&self, ip: Ipv4Addr) -> Option<Destination> {
        self.pods.read().expect("never poisoned").get(&ip).cloned()
    }
}
