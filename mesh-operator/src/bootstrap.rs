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
