//! HTTP rules of MeshPolicy and ClusterMeshPolicy (`http` on an ingress rule with principals),
//! applied per request by the agent of the destination's node, as Istio's sidecars and
//! Cilium's per-node proxy enforce L7 policy: the destination's node holds the pod's policy
//! and sees every connection to it.
//!
//! The ports such rules name ("policed" ports) are reached only through an agent: connections
//! from other nodes are tunnelled (the client's agent redirects them as it does STRICT ports),
//! connections from pods of this node are redirected to this agent's outbound listener, and
//! the kernel drops plaintext that skipped both, as at STRICT ports (`tunnel::redirect`). The
//! agent then serves the connection as HTTP (`judged`): each request gets the verdict of the
//! pod's ingress rules that match the connection and, for those with `http`, the request;
//! a denied request is answered 403 and logged as a dropped L7 flow naming the rule.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use mesh_common::{api, identity::SpiffeId, model::ResourceSet};

use crate::policy::{EndpointPolicy, HttpRequest, PeerInfo, Verdict};

/// The HTTP-policed ports of one pod of this node, and its compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequestPolicy {
    pub ports: BTreeSet<u16>,
    pub policy: Arc<EndpointPolicy>,
}

/// The client of a judged connection, as the destination's agent knows it.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: Ipv4Addr,
    /// Its pod's identity (the kernel's number), when it is a pod the model knows.
    pub identity: Option<u32>,
    /// The workload identity it proved (its tunnel certificate, or its pod on this node).
    pub principal: Option<SpiffeId>,
}

impl PodRequestPolicy {
    /// The namespace of its pod.
    pub fn namespace(&self) -> &str {
        self.policy.pod.split_once('/').map_or("", |(namespace, _)| namespace)
    }

    /// The verdict for a request of `client` to `port`.
    pub fn verdict(&self, client: &Client, port: u16, request: &HttpRequest<'_>) -> Verdict {
        let peer = PeerInfo {
            ip: client.ip,
            identity: client.identity,
            named_ports: &[],
            principal: client.principal.as_ref(),
        };
        self.policy.ingress.request_verdict(peer, port, &self.policy.named_ports, request)
    }
}

/// The ports of pod `w` that HTTP rules of `model`'s MeshPolicies and ClusterMeshPolicies name.
pub fn policed_ports(model: &ResourceSet, w: &api::Workload) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for policy in crate::principals::mesh_policies(model) {
        if !policy.ingress.iter().any(|r| !r.http.is_empty()) || !crate::policy::mesh_policy_selects(policy, w) {
            continue;
        }
        for rule in policy.ingress.iter().filter(|r| !r.http.is_empty()) {
            for port in &rule.ports {
                match &port.port {
                    Some(api::policy_port::Port::Number(n)) => ports.extend(u16::try_from(*n).ok()),
                    Some(api::policy_port::Port::Name(name)) => ports.extend(
                        w.named_ports
                            .iter()
                            .filter(|p| p.name == *name && p.protocol == api::Protocol::Tcp as i32)
                            .filter_map(|p| u16::try_from(p.number).ok()),
                    ),
                    None => {}
                }
            }
        }
    }
    ports
}

/// Whether any MeshPolicy of `model` has an HTTP rule (most have none: then nothing is
/// compiled for requests).
pub fn any(model: &ResourceSet) -> bool {
    crate::principals::mesh_policies(model).any(|p| p.ingress.iter().any(|r| !r.http.is_empty()))
}

/// Judges requests the L7 route proxy sends to endpoints of this node (a route's backend may
/// be a pod with HTTP rules: the proxy delivers to it directly, so it applies them itself).
pub trait RequestJudge: Send + Sync + 'static {
    /// The judgment on a request of `client` to `endpoint`, when that endpoint's requests are
    /// judged (a pod of this node with HTTP rules on that port).
    fn judge(&self, client: Ipv4Addr, endpoint: std::net::SocketAddrV4, request: &HttpRequest<'_>) -> Option<Judgment>;
}

/// A request judged by a pod's HTTP rules: the pod's rules, and the rule that denied it, if
/// one did.
pub struct Judgment {
    pub requests: Arc<PodRequestPolicy>,
    pub denied_by: Option<String>,
}

impl RequestJudge for crate::tunnel::Destinations {
    fn judge(&self, client: Ipv4Addr, endpoint: std::net::SocketAddrV4, request: &HttpRequest<'_>) -> Option<Judgment> {
        let requests = self.requests(*endpoint.ip(), endpoint.port())?;
        let known = self.get(client);
        let client = Client {
            ip: client,
            identity: known.as_ref().map(|pod| pod.number),
            principal: known.map(|pod| pod.identity),
        };
        let denied_by = match requests.verdict(&client, endpoint.port(), request) {
            Verdict::Denied(cause) => Some(denial(&cause)),
            _ => None,
        };
        Some(Judgment { requests, denied_by })
    }
}

/// What denied a request, in its answer and its flow.
pub fn denial(cause: &crate::policy::Cause) -> String {
    match cause {
        crate::policy::Cause::Rule(rule) => rule.to_string(),
        crate::policy::Cause::Isolation(policies) => {
            let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
            format!("no rule allows it ({} isolate the pod)", names.join(", "))
        }
    }
}
