//! What this node's datapath should hold, compiled from the model: the local pods whose
//! interfaces carry the TC programs, and every service frontend with its backends.
//!
//! Frontends, as kube-proxy programs them for traffic from pods: each clusterIP (with
//! `internalTrafficPolicy: Local`, only this node's endpoints), each externalIP, and every
//! node address with each nodePort (both with all endpoints: kube-proxy gives pod traffic to
//! external addresses the cluster policy). Headless services are left alone.

use std::{collections::BTreeMap, net::Ipv4Addr};

use mesh_common::{
    api::{self, Kind, resource},
    model::ResourceSet,
    service_lb::{Backend, ServiceKey},
};

use crate::{
    service_lb::{ResolvedService, Weighted},
    state_file,
};

/// The datapath's desired state for one node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub pods: Vec<state_file::Pod>,
    pub services: Vec<ResolvedService>,
}

/// Compiles `model` for `node`.
pub fn compile(model: &ResourceSet, node: &str) -> Desired {
    let mut pods = Vec::new();
    let mut weights: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for resource in model.of_kind(Kind::Workload) {
        let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
        if w.weight != 0 {
            weights.insert((w.namespace.as_str(), w.name.as_str()), w.weight);
        }
        if w.node != node {
            continue;
        }
        if let Some(ip) = w.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
            pods.push(state_file::Pod { name: format!("{}/{}", w.namespace, w.name), ip });
        }
    }
    let mut slices: BTreeMap<(&str, &str), Vec<&api::EndpointSlice>> = BTreeMap::new();
    for resource in model.of_kind(Kind::EndpointSlice) {
        if let Some(resource::Kind::EndpointSlice(s)) = &resource.kind {
            slices.entry((s.namespace.as_str(), s.service.as_str())).or_default().push(s);
        }
    }
    let node_addresses: Vec<Ipv4Addr> = model
        .of_kind(Kind::Node)
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::Node(n)) => Some(n),
            _ => None,
        })
        .flat_map(|n| n.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()))
        .collect();
    let mut services = Vec::new();
    for resource in model.of_kind(Kind::Service) {
        let Some(resource::Kind::Service(svc)) = &resource.kind else { continue };
        if svc.headless {
            continue;
        }
        let slices = slices.get(&(svc.namespace.as_str(), svc.name.as_str())).map(Vec::as_slice).unwrap_or_default();
        for port in &svc.ports {
            let proto = match api::Protocol::try_from(port.protocol) {
                Ok(api::Protocol::Tcp) => mesh_common::proto::TCP,
                Ok(api::Protocol::Udp) => mesh_common::proto::UDP,
                _ => continue, // SCTP: not balanced at the socket yet
            };
            let name = format!("{}/{}:{}", svc.namespace, svc.name, port_label(port));
            let all = backends(slices, &svc.namespace, &weights, port, None);
            let internal = if svc.internal_traffic_local {
                backends(slices, &svc.namespace, &weights, port, Some(node))
            } else {
                all.clone()
            };
            let ip = |text: &String| text.parse::<Ipv4Addr>().ok();
            let frontends = svc
                .cluster_ips
                .iter()
                .filter_map(ip)
                .map(|ip| (ip, port.port, &internal))
                .chain(svc.external_ips.iter().filter_map(ip).map(|ip| (ip, port.port, &all)))
                .chain(node_addresses.iter().filter(|_| port.node_port != 0).map(|ip| (*ip, port.node_port, &all)));
            for (ip, number, backends) in frontends {
                services.push(ResolvedService {
                    name: name.clone(),
                    key: ServiceKey::new(ip.octets(), number as u16, proto),
                    backends: backends.clone(),
                    affinity_timeout_s: svc.affinity_timeout_seconds,
                });
            }
        }
    }
    Desired { pods, services }
}

/// The backends of one service port, as kube-proxy picks them: the ready endpoints; if there
/// are none, the serving and terminating ones. With `local_node`, only that node's. Each
/// carries its pod's weight (1 when not set).
fn backends(
    slices: &[&api::EndpointSlice],
    namespace: &str,
    weights: &BTreeMap<(&str, &str), u32>,
    port: &api::ServicePort,
    local_node: Option<&str>,
) -> Vec<Weighted> {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    for slice in slices {
        let Some(slice_port) = slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if local_node.is_some_and(|node| endpoint.node != node) {
                continue;
            }
            let target = if endpoint.ready {
                &mut ready
            } else if endpoint.serving && endpoint.terminating {
                &mut terminating
            } else {
                continue;
            };
            let weight = weights.get(&(namespace, endpoint.pod.as_str())).copied().unwrap_or(1);
            for address in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                target.push(Weighted { backend: Backend::new(address.octets(), slice_port.port as u16), weight });
            }
        }
    }
    let mut chosen = if ready.is_empty() { terminating } else { ready };
    chosen.sort_by_key(|b| (u32::from_be_bytes(b.backend.addr.to_ne_bytes()), u16::from_be(b.backend.port)));
    chosen.dedup_by_key(|b| b.backend);
    chosen
}

fn port_label(port: &api::ServicePort) -> String {
    if port.name.is_empty() { port.port.to_string() } else { port.name.clone() }
}
