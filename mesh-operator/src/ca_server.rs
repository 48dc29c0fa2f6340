//! Istio's certificate API (`istio.v1.auth.IstioCertificateService/CreateCertificate`) on the
//! operator's gRPC port: the workload CA for node agents. The caller proves its node with its
//! node certificate (mutual TLS, as on the state stream); the CA signs an identity only for a
//! node that runs a pod of that namespace and service account, and refuses anything else with
//! PERMISSION_DENIED, logged and counted (`mesh_ca_requests_refused_total{reason}`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_common::istio_ca::{
    IstioCertificateRequest, IstioCertificateResponse, istio_certificate_service_server::IstioCertificateService,
};
use tonic::{Request, Response, Status};

use crate::{metrics::Metrics, model_store::ModelStore, workload_ca::WorkloadCa};

/// The metadata key naming the identity a node agent asks for on a workload's behalf
/// (ztunnel's).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Clone)]
pub struct CaServer {
    pub ca: Arc<WorkloadCa>,
    pub store: Arc<Mutex<ModelStore>>,
    pub metrics: Arc<Metrics>,
}

impl CaServer {
    fn refuse(&self, reason: &'static str, status: Status) -> Status {
        self.metrics.certificate_refused(reason);
        tracing::warn!(reason, message = status.message(), "refused a certificate request");
        status
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaServer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let node = request.peer_certs().and_then(|certs| certs.first().and_then(|c| crate::pki::node_of(c.as_ref())));
        let Some(node) = node else {
            return Err(self.refuse(
                "unauthenticated",
                Status::unauthenticated("a node certificate is required: call with the agent's node bundle"),
            ));
        };
        let request = request.into_inner();
        let impersonated =
            request.metadata.as_ref().and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)).and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        // Reading the CSR checks its signature and signing makes one: CPU work, off the
        // runtime's threads.
        let ca = self.ca.clone();
        let csr = tokio::task::spawn_blocking(move || ca.read_csr(&request.csr))
            .await
            .map_err(|err| Status::internal(err.to_string()))?
            .map_err(|err| self.refuse("bad_csr", Status::invalid_argument(err.to_string())))?;
        let identity = csr.identity.clone();
        if let Some(asked) = impersonated
            && asked != identity.to_string()
        {
            return Err(self.refuse(
                "identity_mismatch",
                Status::permission_denied(format!(
                    "{IMPERSONATED_IDENTITY} is {asked:?} but the CSR names {identity}: ask for the identity the CSR names"
                )),
            ));
        }
        let entitled =
            self.store.lock().expect("store lock").node_runs(&node, identity.namespace(), identity.service_account());
        if !entitled {
            return Err(self.refuse(
                "not_on_node",
                Status::permission_denied(format!(
                    "node {node:?} runs no pod of namespace {:?} with service account {:?}: it may not hold {identity}",
                    identity.namespace(),
                    identity.service_account()
                )),
            ));
        }
        let ttl = Duration::from_secs(u64::try_from(request.validity_duration).unwrap_or(0));
        let ca = self.ca.clone();
        let (cert_chain, ttl) = tokio::task::spawn_blocking(move || ca.sign(csr, ttl))
            .await
            .map_err(|err| Status::internal(err.to_string()))?
            .map_err(|err| Status::internal(err.to_string()))?;
        self.metrics.certificate_issued();
        tracing::info!(node, %identity, ttl_s = ttl.as_secs(), "signed a workload certificate");
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
