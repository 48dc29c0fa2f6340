//! The project's custom resources, as Rust types. Their YAML (`deploy/crds/`) is generated
//! from these by `cargo xtask gen-crds`, never written by hand; CI fails when it is stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every mesh resource.
pub const GROUP: &str = "mesh.dev";
/// The field manager the operator applies with.
pub const FIELD_MANAGER: &str = "mesh-operator";

/// A node of the mesh, as its agent reports it through the operator. Cluster-scoped, named
/// after the Kubernetes node; the operator creates it when the node's agent first connects.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "MeshNode",
    plural = "meshnodes",
    shortname = "mn",
    status = "MeshNodeStatus",
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Version","type":"integer","jsonPath":".status.ackedVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeSpec {}

/// What the operator knows of a node's agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshNodeStatus {
    /// `Connected`: the agent's stream is open. `Synced`: it applied the latest version it was
    /// sent (False with the NACK's error as the message when it could not).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The operator run (epoch) and the last version the agent acknowledged.
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub acked_version: u64,
}

/// Every CRD of the project, in the order `deploy/crds/` lists them.
pub fn all() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt as _;
    vec![MeshNode::crd()]
}
