//! What the kernel programs (`mesh-ebpf`) and userspace (`mesh-agent`, tests) share.
//!
//! `no_std` (but for the `user` feature), `#[repr(C)]`, explicit padding, no `bool`: the layout of every type here is the
//! layout of a BPF map key or value, checked by the tests at the bottom of each module.
// The userspace half (`user`: the API) is std; the kernel half never is.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(feature = "user")]
pub mod cidr;
#[cfg(feature = "user")]
pub mod drain;
pub mod flows;
#[cfg(feature = "user")]
pub mod http_route;
#[cfg(feature = "user")]
pub mod identity;
pub mod maps;
#[cfg(feature = "user")]
pub mod metrics_http;
#[cfg(feature = "user")]
pub mod model;
pub mod names;
pub mod nodeport;
pub mod pod_traffic;
pub mod policy;
pub mod prefilter;
pub mod service_lb;
pub mod tunnel;
#[cfg(feature = "user")]
pub mod yaml;

/// IANA protocol numbers, as they appear in map keys.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
    pub const ICMP: u8 = 1;
}

/// Program names: the names of the entry functions in `mesh-ebpf`, by which the agent finds
/// them in the object.
pub mod programs {
    /// `cgroup/connect4`: service load balancing at `connect()`.
    pub const CONNECT4: &str = "mesh_connect4";
    /// `cgroup/sendmsg4`: service load balancing of unconnected UDP datagrams.
    pub const SENDMSG4: &str = "mesh_sendmsg4";
    /// `cgroup/recvmsg4`: UDP replies appear to come from the service address.
    pub const RECVMSG4: &str = "mesh_recvmsg4";
    /// `cgroup/getpeername4`: `getpeername()` returns the service address.
    pub const GETPEERNAME4: &str = "mesh_peername4";
    /// Every socket hook, attached to the node's cgroup in this order.
    pub const SOCKET_HOOKS: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
    /// TC ingress of a pod's host-side interface (what the pod sends).
    pub const FROM_POD: &str = "mesh_from_pod";
    /// TC egress of a pod's host-side interface (what the pod receives).
    pub const TO_POD: &str = "mesh_to_pod";
    /// `sockops` on the node cgroup: TCP connection events and the translated 4-tuples.
    pub const SOCKOPS: &str = "mesh_sockops";
    /// TC (TCX) ingress of the node's external interfaces: NodePorts, external IPs and
    /// load-balancer addresses from outside, and the answers to source-NATed flows.
    pub const FROM_NETDEV: &str = "mesh_from_netdev";
    /// XDP on the node's external interfaces: the prefilter (source CIDRs dropped before the
    /// stack).
    pub const FROM_WIRE: &str = "mesh_from_wire";
    /// Emits synthetic flow events when run with `BPF_PROG_TEST_RUN`: the flows benchmark's
    /// generator. Never attached.
    pub const EVENT_GEN: &str = "mesh_event_gen";
    /// Sends every frame on to another interface as an XDP frame: the north-south benchmark's
    /// wire into the lab node (`WIRE_TO` is its global). Never attached by the agent.
    pub const WIRE: &str = "mesh_wire";
}

/// The control-plane API (`proto/mesh/v1/state.proto`): the state stream from operator to
/// agents, and the model it carries.
#[cfg(feature = "user")]
pub mod api {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("mesh.v1");
}

/// Istio's certificate API (`proto/istio/ca.proto`): `istio.v1.auth.IstioCertificateService`,
/// which the operator's workload CA serves.
#[cfg(feature = "user")]
pub mod istio_ca {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

/// Hubble's Observer API (`proto/flow.proto`, `proto/observer.proto`): the same packages,
/// messages, field names and numbers as Cilium's, for the fields this project fills, so
/// Hubble clients read the agent's flows.
#[cfg(feature = "user")]
pub mod hubble {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }
}
