//! What the agent tells about itself: the `mesh.v1.AgentStatus` service (`meshctl status`),
//! beside the Observer API on the same listeners.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use mesh_common::api::{
    AgentStatusRequest, AgentStatusResponse, AttachedProgram, EjectedEndpoint, MapFill, PodMtls, TunnelStatus,
    agent_status_server,
};

use crate::{flows::store::FlowStore, identity::Certificates, map_fill};

/// The agent's state as its status reports it. Cheap to clone (shared).
#[derive(Clone)]
pub struct AgentState {
    pub node_name: String,
    pub bpffs: PathBuf,
    pub store: FlowStore,
    pub certificates: Certificates,
    /// What the tunnel's receiving side counted.
    pub tunnel: Arc<crate::tunnel::hbone::InboundStats>,
    /// What the tunnel's sending side counted.
    pub outbound: Arc<crate::tunnel::outbound::OutboundStats>,
    /// This node's pods as the tunnel sees them.
    pub destinations: crate::tunnel::Destinations,
    /// Where the tunnel is served, once it is.
    tunnel_address: Arc<Mutex<Option<std::net::SocketAddr>>>,
    /// The outbound listener takes redirected connections.
    outbound_listening: Arc<AtomicBool>,
    /// Tunnel listeners bound but not listening yet (they wait for the pods' certificates).
    tunnel_pending: Arc<tokio::sync::watch::Sender<usize>>,
    ready: Arc<AtomicBool>,
    /// The last update applied: epoch, version, when (unix ns).
    applied: Arc<Mutex<Option<(String, u64, u64)>>>,
    programs: Arc<Mutex<Vec<AttachedProgram>>>,
    /// The L7 proxy, once made (for the endpoints it ejected).
    l7: Arc<std::sync::OnceLock<crate::l7::L7>>,
}

impl AgentState {
    pub fn new(node_name: &str, bpffs: PathBuf, store: FlowStore, certificates: Certificates) -> Self {
        Self {
            node_name: node_name.to_owned(),
            bpffs,
            store,
            certificates,
            tunnel: Arc::default(),
            outbound: Arc::default(),
            destinations: crate::tunnel::Destinations::default(),
            tunnel_address: Arc::default(),
            outbound_listening: Arc::default(),
            tunnel_pending: Arc::new(tokio::sync::watch::Sender::new(0)),
            ready: Arc::default(),
            applied: Arc::default(),
            programs: Arc::default(),
            l7: Arc::default(),
        }
    }

    /// Records that the tunnel is served at `address`.
    pub fn set_tunnel_address(&self, address: std::net::SocketAddr) {
        *self.tunnel_address.lock().expect("never poisoned") = Some(address);
    }

    /// Records that the outbound listener takes redirected connections.
    pub fn set_outbound_listening(&self) {
        self.outbound_listening.store(true, Ordering::Relaxed);
    }

    pub fn outbound_listening(&self) -> bool {
        self.outbound_listening.load(Ordering::Relaxed)
    }

    /// Records that `count` more tunnel listeners are bound and will listen.
    pub fn tunnel_bound(&self, count: usize) {
        self.tunnel_pending.send_modify(|pending| *pending += count);
    }

    /// Records that a bound tunnel listener listens (or will never: the agent stops).
    pub fn tunnel_listening(&self) {
        self.tunnel_pending.send_modify(|pending| *pending = pending.saturating_sub(1));
    }

    /// Returns once every tunnel listener bound listens (at once without a tunnel): the agent
    /// is ready only then, so that an old agent stopped once this one is ready leaves a
    /// listener behind it.
    pub async fn tunnel_listens(&self) {
        let mut pending = self.tunnel_pending.subscribe();
        let _ = pending.wait_for(|pending| *pending == 0).await;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The datapath now holds the model of `epoch` at `version`.
    pub fn set_applied(&self, epoch: &str, version: u64) {
        *self.applied.lock().expect("never poisoned") = Some((epoch.to_owned(), version, crate::flows::unix_now_ns()));
    }

    /// The last update applied: epoch, version, when (unix ns).
    pub fn applied(&self) -> Option<(String, u64, u64)> {
        self.applied.lock().expect("never poisoned").clone()
    }

    /// Whether it is ready (what `/ready` answers).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The L7 proxy, whose ejected endpoints the status lists.
    pub fn set_l7(&self, l7: crate::l7::L7) {
        let _ = self.l7.set(l7);
    }

    /// Records what is attached where: (program, attach point, pod).
    pub fn set_programs(&self, programs: Vec<(&'static str, String, String)>) {
        let programs = programs
            .into_iter()
            .map(|(name, attach_point, pod)| AttachedProgram { name: name.to_owned(), attach_point, pod })
            .collect();
        *self.programs.lock().expect("never poisoned") = programs;
    }

    /// The whole status; counting map entries takes a moment (run it off the runtime).
    pub fn status(&self) -> AgentStatusResponse {
        let stats = self.store.stats();
        let maps = map_fill::all(&self.bpffs)
            .into_iter()
            .map(|fill| MapFill {
                name: fill.name.to_owned(),
                entries: fill.entries.unwrap_or(0),
                capacity: fill.capacity,
            })
            .collect();
        let applied = self.applied();
        AgentStatusResponse {
            node_name: self.node_name.clone(),
            version: crate::flows::observer::VERSION.to_owned(),
            uptime_ns: stats.uptime_ns,
            ready: self.ready.load(Ordering::Relaxed),
            programs: self.programs.lock().expect("never poisoned").clone(),
            maps,
            lost_events_kernel: stats.lost_kernel,
            lost_events_followers: stats.lost_followers,
            seen_flows: stats.seen_flows,
            made_flows: stats.made_flows,
            ejected_endpoints: self
                .l7
                .get()
                .map(crate::l7::L7::ejected)
                .unwrap_or_default()
                .into_iter()
                .map(|e| EjectedEndpoint {
                    service: format!("{}/{}", e.service.namespace, e.service.name),
                    endpoint: e.endpoint.to_string(),
                    remaining_ms: u64::try_from(e.remaining.as_millis()).unwrap_or(u64::MAX),
                    ejections: e.ejections,
                })
                .collect(),
            num_flows: stats.num_flows,
            max_flows: stats.max_flows,
            certificates_enabled: self.certificates.enabled(),
            certificates: self.certificates.status(),
            trusted_roots: self.certificates.root_subjects(),
            tunnel: Some(self.tunnel_status()),
            pods_mtls: self
                .destinations
                .pods()
                .into_iter()
                .map(|pod| PodMtls {
                    pod: pod.pod,
                    identity: pod.identity.to_string(),
                    mode: pod.mtls.mode.as_str().to_owned(),
                    port_modes: pod.mtls.ports.iter().map(|(port, mode)| format!("{port}={}", mode.as_str())).collect(),
                })
                .collect(),
            model_epoch: applied.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            model_version: applied.as_ref().map_or(0, |a| a.1),
            model_applied_unix_ns: applied.as_ref().map_or(0, |a| a.2),
        }
    }

    fn tunnel_status(&self) -> TunnelStatus {
        let address = *self.tunnel_address.lock().expect("never poisoned");
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let t = &self.tunnel;
        TunnelStatus {
            enabled: address.is_some(),
            address: address.map(|a| a.to_string()).unwrap_or_default(),
            handshakes: count(&t.handshakes),
            handshake_failures: count(&t.handshake_failures),
            streams_opened: count(&t.streams),
            streams_refused: count(&t.refused),
            bytes_to_pods: count(&t.bytes_in),
            bytes_from_pods: count(&t.bytes_out),
        }
    }
}

#[tonic::async_trait]
impl agent_status_server::AgentStatus for AgentState {
    async fn get_status(
        &self,
        _request: tonic::Request<AgentStatusRequest>,
    ) -> Result<tonic::Response<AgentStatusResponse>, tonic::Status> {
        let state = self.clone();
        let status = tokio::task::spawn_blocking(move || state.status())
            .await
            .map_err(|err| tonic::Status::internal(format!("status task failed: {err}")))?;
        Ok(tonic::Response::new(status))
    }
}
