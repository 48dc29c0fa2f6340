//! In-cluster bootstrap of a node's certificate: an agent proves which node it runs on with
//! its projected ServiceAccount token (audience [`TOKEN_AUDIENCE`]); the operator asks the API
//! server to review the token (TokenReview) and issues that node's certificate only if the
//! token is the agent ServiceAccount's and is bound to a pod on that very node.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};

/// The audience agents request for their bootstrap token.
pub const TOKEN_AUDIENCE: &str = "mesh-operator";
/// The extra field the API server sets on tokens bound to a pod: the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("the token review failed: {0}")]
    Review(String),
    #[error("the token is not valid for audience {TOKEN_AUDIENCE}: {0}")]
    NotAuthenticated(String),
    #[error("the token belongs to {found:?}, not to the agent ServiceAccount {expected:?}")]
    WrongAccount { found: String, expected: String },
    #[error(
        "the token is bound to no node (the API server sets {NODE_NAME_EXTRA} from Kubernetes 1.32; mount a projected ServiceAccount token)"
    )]
    NoNode,
    #[error("the token's pod runs on node {found:?}, not on {claimed:?}")]
    WrongNode { found: String, claimed: String },
}

/// Checks that `token` is the agent ServiceAccount's (`system:serviceaccount:<ns>:<name>`)
/// and is bound to a pod on `node`.
pub async fn verify(client: Client, token: &str, node: &str, agent_account: &str) -> Result<(), BootstrapError> {
    let review = TokenReview {
        spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]) },
        ..Default::default()
    };
    let api: Api<TokenReview> = Api::all(client);
    let review =
        api.create(&PostParams::default(), &review).await.map_err(|e| BootstrapError::Review(e.to_string()))?;
    let status = review.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(BootstrapError::NotAuthenticated(status.error.unwrap_or_else(|| "not authenticated".into())));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    if username != agent_account {
        return Err(BootstrapError::WrongAccount { found: username, expected: agent_account.to_owned() });
    }
    let found = user
        .extra
        .unwrap_or_default()
        .remove(NODE_NAME_EXTRA)
        .and_then(|v| v.into_iter().next())
        .ok_or(BootstrapError::NoNode)?;
    if found != node {
        return Err(BootstrapError::WrongNode { found, claimed: node.to_owned() });
    }
    Ok(())
}

/// The `mesh.v1.NodeBootstrap` service.
pub struct BootstrapServer {
    pub pki: std::sync::Arc<crate::pki::Pki>,
    /// The API server to review tokens with; `None` in local mode.
    pub client: Option<Client>,
    /// `system:serviceaccount:<namespace>:<name>` of the agents.
    pub agent_account: String,
}

#[tonic::async_trait]
impl mesh_common::api::node_bootstrap_server::NodeBootstrap for BootstrapServer {
    async fn bootstrap(
        &self,
        request: tonic::Request<mesh_common::api::BootstrapRequest>,
    ) -> Result<tonic::Response<mesh_common::api::BootstrapResponse>, tonic::Status> {
        let request = request.into_inner();
        let Some(client) = self.client.clone() else {
            return Err(tonic::Status::unimplemented(
                "local mode has no API server to review tokens: issue the node's bundle with `mesh-operator issue`",
            ));
        };
        if let Err(err) = verify(client, &request.token, &request.node, &self.agent_account).await {
            tracing::warn!(node = request.node, "refused a bootstrap: {err}");
            return Err(tonic::Status::permission_denied(err.to_string()));
        }
        let bundle = self.pki.node(&request.node).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        tracing::info!(node = request.node, "issued a node certificate (bootstrap)");
        Ok(tonic::Response::new(mesh_common::api::BootstrapResponse {
            ca: bundle.ca,
            cert: bundle.cert,
            key: bundle.key,
        }))
    }
}

/// The ConfigMap agents read the operator's CA from before they have a bundle.
pub const CA_CONFIG_MAP: &str = "mesh-ca";

/// Publishes the CA certificate as ConfigMap [`CA_CONFIG_MAP`] in `namespace` (server-side
/// apply), for the agents to verify the operator when they bootstrap.
pub async fn publish_ca(client: Client, namespace: &str, ca_pem: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config_map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CA_CONFIG_MAP, "namespace": namespace},
        "data": {mesh_common::model::TLS_CA_FILE: ca_pem},
    });
    let params = kube::api::PatchParams::apply(crate::crd::FIELD_MANAGER).force();
    api.patch(CA_CONFIG_MAP, &params, &kube::api::Patch::Apply(config_map)).await?;
    Ok(())
}
