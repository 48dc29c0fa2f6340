//! mesh-agent: the per-node daemon. It loads the kernel programs, attaches them to its node's
//! cgroup and to each local pod's host-side interface, and keeps their maps in sync with the
//! desired state.

pub mod agent_status;
pub mod backend_filter;
pub mod config;
pub mod datapath;
pub mod desired;
pub mod devices;
pub mod flows;
pub mod health_check;
pub mod identity;
pub mod l7;
pub mod maglev;
pub mod map_fill;
pub mod map_write;
pub mod metrics;
pub mod netns;
pub mod nodeport;
pub mod operator_stream;
pub mod pod_iface;
pub mod policy;
pub mod policy_table;
pub mod prefilter;
pub mod principals;
pub mod probe;
pub mod service_lb;
pub mod state_file;
pub mod tunnel;
pub mod untrusted;
