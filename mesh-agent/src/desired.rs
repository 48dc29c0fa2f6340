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

#[cfg(test)]
mod tests {
    use mesh_common::api::{self, resource::Kind as R};

    use super::*;

    fn model(resources: Vec<R>) -> ResourceSet {
        let mut set = ResourceSet::default();
        for kind in resources {
            let resource = api::Resource { kind: Some(kind) };
            set.resources.insert(resource.key().expect("named").ordered(), resource);
        }
        set
    }

    fn endpoint(ip: &str, node: &str, pod: &str, ready: bool) -> api::Endpoint {
        api::Endpoint {
            addresses: vec![ip.into()],
            node: node.into(),
            pod: pod.into(),
            ready,
            serving: true,
            terminating: !ready,
        }
    }

    fn web(internal_local: bool, headless: bool) -> R {
        R::Service(api::Service {
            namespace: "ns".into(),
            name: "web".into(),
            cluster_ips: if headless { vec![] } else { vec!["10.96.0.10".into()] },
            headless,
            ports: vec![api::ServicePort {
                name: "http".into(),
                protocol: api::Protocol::Tcp as i32,
                port: 80,
                node_port: 30080,
                target: None,
            }],
            affinity_timeout_seconds: 30,
            internal_traffic_local: internal_local,
            external_ips: vec!["10.200.0.10".into()],
        })
    }

    fn resources(internal_local: bool, headless: bool) -> ResourceSet {
        model(vec![
            web(internal_local, headless),
            R::EndpointSlice(api::EndpointSlice {
                namespace: "ns".into(),
                name: "web-1".into(),
                service: "web".into(),
                ports: vec![api::EndpointPort { name: "http".into(), protocol: api::Protocol::Tcp as i32, port: 8080 }],
                endpoints: vec![
                    endpoint("10.244.0.3", "node-0", "a", true),
                    endpoint("10.244.1.3", "node-1", "b", true),
                    endpoint("10.244.1.4", "node-1", "c", false),
                ],
            }),
            R::Workload(api::Workload {
                namespace: "ns".into(),
                name: "b".into(),
                node: "node-1".into(),
                ips: vec!["10.244.1.3".into()],
                weight: 5,
                ..Default::default()
            }),
            R::Node(api::Node { name: "node-0".into(), addresses: vec!["172.18.0.2".into()], pod_cidrs: vec![] }),
            R::Node(api::Node { name: "node-1".into(), addresses: vec!["172.18.0.3".into()], pod_cidrs: vec![] }),
        ])
    }

    fn frontend(desired: &Desired, ip: [u8; 4], port: u16) -> &ResolvedService {
        let key = ServiceKey::new(ip, port, mesh_common::proto::TCP);
        desired.services.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("no frontend {ip:?}:{port}"))
    }

    #[test]
    fn every_frontend_gets_the_ready_endpoints_with_their_weights() {
        let desired = compile(&resources(false, false), "node-0");
        assert_eq!(desired.services.len(), 4, "cluster IP, external IP, two node addresses");
        let expected = vec![
            Weighted { backend: Backend::new([10, 244, 0, 3], 8080), weight: 1 },
            Weighted { backend: Backend::new([10, 244, 1, 3], 8080), weight: 5 },
        ];
        for (ip, port) in
            [([10, 96, 0, 10], 80), ([10, 200, 0, 10], 80), ([172, 18, 0, 2], 30080), ([172, 18, 0, 3], 30080)]
        {
            let service = frontend(&desired, ip, port);
            assert_eq!(service.backends, expected, "{ip:?}:{port}");
            assert_eq!(service.affinity_timeout_s, 30);
        }
    }

    #[test]
    fn internal_traffic_policy_local_narrows_only_the_cluster_ip() {
        let desired = compile(&resources(true, false), "node-0");
        assert_eq!(frontend(&desired, [10, 96, 0, 10], 80).backends.len(), 1);
        assert_eq!(frontend(&desired, [10, 200, 0, 10], 80).backends.len(), 2);
        // A node with no local endpoint gets none: its pods' connections are refused.
        let on_node_2 = compile(&resources(true, false), "node-2");
        assert!(frontend(&on_node_2, [10, 96, 0, 10], 80).backends.is_empty());
    }

    #[test]
    fn headless_services_are_left_alone() {
        let desired = compile(&resources(false, true), "node-0");
        assert!(desired.services.is_empty(), "{:?}", desired.services);
    }
}
