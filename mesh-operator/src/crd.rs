//! The project's custom resources, as Rust types. Their YAML (`deploy/crds/`) is generated
//! from these by `cargo xtask gen-crds`, never written by hand; CI fails when it is stale.

use k8s_openapi::{
    api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector},
};
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

/// A namespaced policy of the project: what NetworkPolicy cannot say. Its rules allow or deny;
/// of the rules matching a flow the lowest `priority` decides (deny wins a tie), and every
/// MeshPolicy rule decides before any NetworkPolicy. Allow rules isolate the selected pods the
/// way a NetworkPolicy does; deny rules do not. In `Audit` mode nothing is enforced: a flow the
/// policy would deny passes and is reported with the verdict AUDIT.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    derive = "PartialEq",
    plural = "meshpolicies",
    shortname = "mp",
    namespaced,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// The pods of the policy's namespace it applies to; absent or empty: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// 0 (decides first) to 1000; default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub priority: Option<u32>,
    /// `Enforce` (default) or `Audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PolicyMode>,
    /// Rules for traffic into the selected pods; `peers` are the sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<MeshRule>,
    /// Rules for traffic out of the selected pods; `peers` are the destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<MeshRule>,
}

/// A cluster-scoped MeshPolicy: it selects pods across namespaces, and its peers without a
/// namespaceSelector are pods of every namespace.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "ClusterMeshPolicy",
    derive = "PartialEq",
    plural = "clustermeshpolicies",
    shortname = "cmp",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMeshPolicySpec {
    /// The namespaces whose pods it applies to; absent or empty: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Of those, the pods it applies to; absent or empty: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// 0 (decides first) to 1000; default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub priority: Option<u32>,
    /// `Enforce` (default) or `Audit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PolicyMode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<MeshRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<MeshRule>,
}

/// Whether a policy's verdicts are enforced or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyMode {
    #[default]
    Enforce,
    Audit,
}

/// What a rule does to the flows it matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuleAction {
    #[default]
    Allow,
    Deny,
}

/// One rule: any of `peers` (none: every peer) on any of `ports` (none: every port), with the
/// peer and port syntax of NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshRule {
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<NetworkPolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
    /// Ingress rules only, instead of `peers`: the clients' workload identities. Such a rule
    /// matches only a connection whose client proved one of them (through the mutual-TLS
    /// tunnel, or from a pod of the destination's own node), so the selected pods' ports are
    /// tunnelled from other nodes unless their PeerAuthentication mode is DISABLE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<Principal>,
    /// Ingress rules with `principals` and `ports` only: the HTTP requests the rule matches
    /// (any of them); absent: the whole connection. Decided per request by the agent of the
    /// destination's node: an allowed request is passed on, a denied one answered 403 and
    /// reported as a dropped L7 flow naming the rule. The selected pods' `ports` are then
    /// reached only through the agents (tunnelled from other nodes, redirected on their own),
    /// and must speak HTTP/1.1 or HTTP/2 cleartext.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRequestRule>,
}

/// An HTTP request a rule matches: every part given must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestRule {
    /// Any of these methods (`GET`, `POST`, ...); absent: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Any of these paths; absent: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<HttpPathRule>,
    /// Every one of these headers, with exactly this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderRule>,
}

/// A path: `Exact`, or `PathPrefix` (whole path elements, as Gateway API's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpPathRule {
    #[serde(rename = "type", default)]
    pub kind: HttpPathType,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpPathType {
    Exact,
    #[default]
    PathPrefix,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpHeaderRule {
    pub name: String,
    pub value: String,
}

/// A workload identity: a SPIFFE ID, or a namespace and service account (of the mesh's trust
/// domain). Exactly one of the two forms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Whether connections to the selected workloads must be mutual TLS, with the semantics of
/// Istio's PeerAuthentication: in the mesh's root namespace (the operator's, `mesh-system` by
/// default) without a selector it is the mesh-wide default; elsewhere without a selector, its
/// namespace's; with a selector, the matching pods' (and only then per port). The most
/// specific scope that sets a mode decides; `UNSET` inherits; the top default is PERMISSIVE.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    derive = "PartialEq",
    plural = "peerauthentications",
    shortname = "pa",
    namespaced,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// The pods of the namespace it applies to; absent: the whole namespace (or mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The mode for every port of the selected pods (but those of `portLevelMtls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Per container port (a number, as a string key): its mode. Only with a selector.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub port_level_mtls: std::collections::BTreeMap<String, PeerMtls>,
}

/// One mutual-TLS setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PeerMtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// Istio's modes, spelled as Istio spells them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// How the L7 proxy treats the endpoints of the Services it targets: outlier detection
/// (ejecting endpoints that keep failing) and circuit breaking (limits on connections and
/// requests), with the fields and defaults of Istio's DestinationRule `trafficPolicy`.
///
/// Attached as Gateway API policies are (GEP-713, direct attachment): `targetRefs` name
/// Services of its namespace, the same objects HTTPRoutes attach to and `backendRefs` send to,
/// rather than a host string as a DestinationRule does. So the mesh's one way of naming a
/// destination is the Service; subsets, which a DestinationRule also carries, are what
/// HTTPRoute's weighted `backendRefs` to per-version Services already do. When several
/// policies target one Service, the oldest applies (then the first by name).
///
/// Connections to a targeted Service's HTTP ports (`appProtocol` `http`, `kubernetes.io/h2c`,
/// `grpc`, `kubernetes.io/ws`) go through the L7 proxy even without a route, since ejection
/// and circuit breaking are decided per request.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mesh.dev",
    version = "v1alpha1",
    kind = "BackendTrafficPolicy",
    derive = "PartialEq",
    plural = "backendtrafficpolicies",
    shortname = "btp",
    namespaced,
    status = "BackendTrafficPolicyStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicySpec {
    /// The Services it applies to (group "", kind Service), in its namespace: 1 to 16.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// Absent: no endpoint is ever ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
}

/// What the operator says of a BackendTrafficPolicy (Gateway API's `PolicyStatus`): one entry
/// per target Service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendTrafficPolicyStatus {
    #[serde(default)]
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// Gateway API's `PolicyAncestorStatus`: `Accepted` True, or False with the reason
/// (`Conflicted`, `TargetNotFound`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    pub ancestor_ref: PolicyAncestorRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Gateway API's `ParentReference`, as a policy's ancestor (a Service).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Gateway API's LocalPolicyTargetReference.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// "" (the core group).
    #[serde(default)]
    pub group: String,
    /// Service.
    pub kind: String,
    pub name: String,
}

/// Istio's outlier detection, per endpoint of each targeted Service as this node's proxy sees
/// it. An ejected endpoint gets no request until its ejection ends; when every endpoint of a
/// Service is ejected (only possible with `maxEjectionPercent: 100`), requests go to all of
/// them again rather than fail (Envoy's panic mode).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers that eject an endpoint (a failed connection and a timeout count
    /// as 5xx). Default 5; 0: not counted.
    #[serde(default, rename = "consecutive5xxErrors", skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502, 503 and 504 answers (and failed connections and timeouts) that eject
    /// an endpoint. Default 0: not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// An ejection lasts this times the number of times the endpoint has been ejected
    /// (a Gateway API duration, e.g. `30s`). Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// No ejection lasts longer (Envoy's `max_ejection_time`). Default 300s, and at least
    /// `baseEjectionTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// At most this percentage of a Service's endpoints is ejected at once, rounded down:
    /// with the default 10, a Service needs 10 endpoints before one can be ejected (Envoy
    /// ejects one regardless; say 50 or 100 for small Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Istio's connection pool settings, as circuit breakers per targeted Service port in each
/// node's proxy. A request over a limit is answered 503 at once with `x-envoy-overloaded:
/// true`, counted in `mesh_l7_overflows_total`. Absent fields: unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// HTTP/1.1 connections in use to the Service's endpoints (each carries one request at a
    /// time; HTTP/2 and gRPC multiplex, and are held by `maxRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for one of those connections. Default 1024 when `maxConnections` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the Service, over any protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// The namespace whose selector-less PeerAuthentication is the mesh-wide default (Istio's
/// root namespace): the operator's own, by default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "mesh-system";

/// The priority of a MeshPolicy that gives none.
pub const DEFAULT_PRIORITY: u32 = 500;
/// The largest priority a MeshPolicy may have.
pub const MAX_PRIORITY: u32 = 1000;

/// Every CRD of the project, in the order `deploy/crds/` lists them.
pub fn all() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt as _;
    vec![
        MeshNode::crd(),
        MeshPolicy::crd(),
        ClusterMeshPolicy::crd(),
        PeerAuthentication::crd(),
        BackendTrafficPolicy::crd(),
    ]
}
