//! Who is who, for naming flows: pods by address, services by address and port, policies by
//! rule id. Rebuilt from the model (and the policy numbering) at every reconciliation; each
//! entry carries its Hubble protobuf encoding, done once here instead of once per flow.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use mesh_common::{
    api::{self, Kind, resource},
    model::ResourceSet,
};

use super::pb;
use crate::policy_table::Attribution;

/// Hubble's label source for Kubernetes labels.
pub const K8S_SOURCE: &str = "k8s:";
/// Hubble's pseudo-labels for a pod's namespace and service account.
const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";

/// A pod, as flows name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub identity: u32,
    /// Its labels plus the namespace and service account pseudo-labels, without a source.
    pub labels: BTreeMap<String, String>,
    pub workload: Option<(String, String)>,
    /// `flow.Endpoint`, encoded.
    pub encoded: Vec<u8>,
}

/// A service, as flows name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `flow.Service`, encoded.
    pub encoded: Vec<u8>,
}

/// The policy behind a rule id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyInfo {
    /// What the agent's log says about it, e.g. `NetworkPolicy demo/web ingress rule 0`.
    pub description: String,
    /// `flow.Policy`, encoded.
    pub encoded: Vec<u8>,
    /// A rule of the policy decided (not the default deny of a pod the policy isolates).
    pub explicit: bool,
}

/// Everything flows are named with, at one model version.
#[derive(Debug, Default)]
pub struct Directory {
    pub node_name: String,
    endpoints: HashMap<u32, Arc<EndpointInfo>>,
    /// By (address, port), both in network order, and protocol.
    services: HashMap<(u32, u16, u8), Arc<ServiceInfo>>,
    policies: HashMap<u32, Arc<PolicyInfo>>,
}

/// The current directory, replaced whole at every reconciliation. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct SharedDirectory(Arc<Mutex<Arc<Directory>>>);

impl SharedDirectory {
    pub fn new(directory: Directory) -> Self {
        Self(Arc::new(Mutex::new(Arc::new(directory))))
    }

    pub fn get(&self) -> Arc<Directory> {
        self.0.lock().expect("never poisoned: no panics under the lock").clone()
    }

    pub fn set(&self, directory: Directory) {
        *self.0.lock().expect("never poisoned") = Arc::new(directory);
    }
}

impl Directory {
    /// A directory that knows only the node's name.
    pub fn empty(node_name: &str) -> Self {
        Self { node_name: node_name.to_owned(), ..Self::default() }
    }

    /// The directory of `model`, with the policies behind `rules`.
    pub fn build<'a>(
        node_name: &str,
        model: &ResourceSet,
        rules: impl Iterator<Item = (u32, &'a Attribution)>,
    ) -> Self {
        let mut directory = Self { node_name: node_name.to_owned(), ..Self::default() };
        for resource in model.of_kind(Kind::Workload) {
            let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
            let info = Arc::new(endpoint_info(w));
            for ip in &w.ips {
                if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                    directory.endpoints.insert(u32::from(ip).to_be(), info.clone());
                }
            }
        }
        for resource in model.of_kind(Kind::Service) {
            let Some(resource::Kind::Service(s)) = &resource.kind else { continue };
            let info = Arc::new(ServiceInfo {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                encoded: encode_service(&s.name, &s.namespace),
            });
            for ip in s.cluster_ips.iter().chain(&s.external_ips) {
                let Ok(ip) = ip.parse::<Ipv4Addr>() else { continue };
                for port in &s.ports {
                    let proto = match api::Protocol::try_from(port.protocol) {
                        Ok(api::Protocol::Udp) => mesh_common::proto::UDP,
                        Ok(api::Protocol::Sctp) => mesh_common::proto::SCTP,
                        _ => mesh_common::proto::TCP,
                    };
                    let Ok(number) = u16::try_from(port.port) else { continue };
                    directory.services.insert((u32::from(ip).to_be(), number.to_be(), proto), info.clone());
                }
            }
        }
        for (id, attribution) in rules {
            directory.policies.insert(id, Arc::new(policy_info(attribution)));
        }
        directory
    }

    /// The pod at `addr` (network order).
    pub fn endpoint(&self, addr: u32) -> Option<&EndpointInfo> {
        self.endpoints.get(&addr).map(AsRef::as_ref)
    }

    /// The service at `addr:port` (network order) for `proto`.
    pub fn service(&self, addr: u32, port: u16, proto: u8) -> Option<&ServiceInfo> {
        self.services.get(&(addr, port, proto)).map(AsRef::as_ref)
    }

    /// The policy behind rule `id`.
    pub fn policy(&self, id: u32) -> Option<&PolicyInfo> {
        self.policies.get(&id).map(AsRef::as_ref)
    }
}

fn endpoint_info(w: &api::Workload) -> EndpointInfo {
    let mut labels: BTreeMap<String, String> = w.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(NAMESPACE_LABEL.to_owned(), w.namespace.clone());
    if !w.service_account.is_empty() {
        labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), w.service_account.clone());
    }
    let workload = (!w.workload_name.is_empty()).then(|| (w.workload_name.clone(), w.workload_kind.clone()));
    let mut info = EndpointInfo {
        namespace: w.namespace.clone(),
        pod: w.name.clone(),
        node: w.node.clone(),
        identity: w.identity,
        labels,
        workload,
        encoded: Vec::new(),
    };
    info.encoded = encode_endpoint(&info);
    info
}

/// `flow.Endpoint`: ID 1, identity 2, namespace 3, labels 4, pod_name 5, workloads 6.
fn encode_endpoint(info: &EndpointInfo) -> Vec<u8> {
    let mut buf = Vec::new();
    pb::varint(&mut buf, 2, u64::from(info.identity));
    pb::bytes(&mut buf, 3, info.namespace.as_bytes());
    for (key, value) in &info.labels {
        pb::bytes(&mut buf, 4, format!("{K8S_SOURCE}{key}={value}").as_bytes());
    }
    pb::bytes(&mut buf, 5, info.pod.as_bytes());
    if let Some((name, kind)) = &info.workload {
        // flow.Workload: name 1, kind 2.
        pb::message(&mut buf, 6, |buf| {
            pb::bytes(buf, 1, name.as_bytes());
            pb::bytes(buf, 2, kind.as_bytes());
        });
    }
    buf
}

/// `flow.Service`: name 1, namespace 2.
fn encode_service(name: &str, namespace: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    pb::bytes(&mut buf, 1, name.as_bytes());
    pb::bytes(&mut buf, 2, namespace.as_bytes());
    buf
}

/// `flow.Policy`: name 1, namespace 2, labels 3, revision 4, kind 5.
fn policy_info(attribution: &Attribution) -> PolicyInfo {
    let policy = match attribution {
        Attribution::Rule(rule) => &rule.policy,
        Attribution::Isolation { policy, .. } => policy,
    };
    let mut buf = Vec::new();
    pb::bytes(&mut buf, 1, policy.name.as_bytes());
    pb::bytes(&mut buf, 2, policy.namespace.as_bytes());
    pb::bytes(&mut buf, 5, policy.kind.as_bytes());
    PolicyInfo {
        description: attribution.to_string(),
        encoded: buf,
        explicit: matches!(attribution, Attribution::Rule(_)),
    }
}
