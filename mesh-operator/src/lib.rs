//! mesh-operator: the control plane. It turns Kubernetes objects (from a directory of
//! manifests in local mode) into the mesh model, allocates identities, and streams the model
//! to every agent with versions, ACK/NACK and resume.

pub mod backend_policy;
pub mod bootstrap;
pub mod ca_server;
pub mod cluster;
pub mod cluster_source;
pub mod crd;
pub mod gateway_status;
pub mod grpc_route;
pub mod http_route;
pub mod identity;
pub mod local_dir;
pub mod metrics;
pub mod model_store;
pub mod node_status;
pub mod pki;
pub mod state_server;
pub mod translate;
pub mod workload_ca;
