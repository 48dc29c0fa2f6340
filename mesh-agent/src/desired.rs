//! What this node's datapath should hold, compiled from the model: the local pods whose
//! interfaces carry the TC programs, and every service frontend with its backends.
//!
//! Frontends, as kube-proxy programs them for traffic from pods: each clusterIP (with
//! `internalTrafficPolicy: Local`, only this node's endpoints), each externalIP, and every
//! node address with each nodePort (both with all endpoints: kube-proxy gives pod traffic to
//! external addresses the cluster policy). Headless services are left alone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use mesh_common::{
    api::{self, Kind, resource},
    model::{Key, ResourceSet},
    service_lb::{Backend, SERVICE_FLAG_L7, ServiceKey},
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
    let mut compiler = Compiler::default();
    compiler.update(model, node, None);
    Desired { pods: compiler.pods.clone(), services: compiler.services() }
}

/// What [`Compiler::update`] found to change in the services.
#[derive(Debug, PartialEq, Eq)]
pub enum Compiled {
    /// Everything was compiled again ([`Compiler::services`] holds it all).
    Everything,
    /// Only these frontends changed: program `upserts`, remove `removals`.
    Delta { upserts: Vec<ResolvedService>, removals: Vec<ServiceKey> },
}

/// EndpointSlice or Service identity: (namespace, name).
type Named = (String, String);

/// The compiled model, kept between updates so that an update compiles again only the
/// services it touched: an EndpointSlice change costs the same with 10 services or 10,000.
/// A change of pod weights or node addresses (which every service may use) compiles
/// everything again.
#[derive(Debug, Default)]
pub struct Compiler {
    primed: bool,
    pods: Vec<state_file::Pod>,
    weights: Weights,
    node_addresses: Vec<Ipv4Addr>,
    /// The EndpointSlices of each service (sorted; a `Vec`, not a set: a service has one or a
    /// few, and a `BTreeSet` of one name costs 280 bytes), and the service each slice was for.
    slices_of: HashMap<Named, Vec<String>>,
    slice_owner: HashMap<Named, String>,
    /// Each service's frontends, in model order.
    frontends: BTreeMap<Named, Vec<ResolvedService>>,
    /// Service ports with HTTP routes (port 0: every port of the service).
    routed: Routed,
}

/// (namespace, service, port) of each HTTPRoute parent; port 0: every port.
pub type Routed = BTreeSet<(String, String, u32)>;

/// Every Service port an HTTPRoute of the model is attached to, and every HTTP port (by its
/// `appProtocol`) of the Services a BackendTrafficPolicy targets: their connections go through
/// the L7 proxy, which ejects endpoints and breaks circuits per request.
pub fn routed(model: &ResourceSet) -> Routed {
    let mut routed: Routed = model
        .http_routes()
        .flat_map(|route| route.parents.iter().map(|p| (p.namespace.clone(), p.service.clone(), p.port)))
        .collect();
    for policy in model.backend_traffic_policies() {
        for name in &policy.services {
            let key = (Kind::Service as i32, policy.namespace.clone(), name.clone());
            let Some(api::resource::Kind::Service(svc)) = model.get(&key).and_then(|r| r.kind.as_ref()) else {
                continue;
            };
            for port in svc.ports.iter().filter(|p| crate::l7::HTTP_APP_PROTOCOLS.contains(&p.app_protocol.as_str())) {
                routed.insert((policy.namespace.clone(), name.clone(), port.port));
            }
        }
    }
    routed
}

/// Pod weights by namespace, then pod name.
type Weights = BTreeMap<String, BTreeMap<String, u32>>;

impl Compiler {
    /// The EndpointSlices of service `namespace/name` in `model` (as of the last update).
    pub fn slices(&self, model: &ResourceSet, namespace: &str, name: &str) -> Vec<api::EndpointSlice> {
        self.slices_of
            .get(&(namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|slice| model.endpoint_slice(namespace, slice))
            .collect()
    }

    /// This node's pods.
    pub fn pods(&self) -> &[state_file::Pod] {
        &self.pods
    }

    /// How many frontends there are.
    pub fn len(&self) -> usize {
        self.frontends.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    /// The endpoints of `namespace/name` port `port` (TCP) as its cluster IP gives them to pods
    /// (the L7 proxy's backends); `None`: no such service or port.
    pub fn endpoints(&self, namespace: &str, name: &str, port: u16) -> Option<Vec<std::net::SocketAddr>> {
        let frontends = self.frontends.get(&(namespace.to_owned(), name.to_owned()))?;
        let frontend =
            frontends.iter().find(|f| f.key.port == port.to_be() && f.key.proto == mesh_common::proto::TCP)?;
        Some(
            frontend
                .backends
                .iter()
                .map(|w| {
                    std::net::SocketAddr::from((
                        Ipv4Addr::from(w.backend.addr.to_ne_bytes()),
                        u16::from_be(w.backend.port),
                    ))
                })
                .collect(),
        )
    }

    /// Every frontend, in model order.
    pub fn services(&self) -> Vec<ResolvedService> {
        self.frontends.values().flatten().cloned().collect()
    }

    /// Brings the compiled form up to `model`; `changed` lists the keys the last update
    /// changed (`None`: anything may have, compile everything).
    pub fn update(&mut self, model: &ResourceSet, node: &str, changed: Option<&[Key]>) -> Compiled {
        let kind_changed = |kind: Kind| changed.is_none_or(|keys| keys.iter().any(|k| k.0 == kind as i32));
        let mut everything = !self.primed || changed.is_none();
        self.primed = true;
        if everything || kind_changed(Kind::Workload) {
            let (pods, weights) = pods_and_weights(model, node);
            self.pods = pods;
            if weights != self.weights {
                self.weights = weights;
                everything = true;
            }
        }
        let l7_kinds = [Kind::HttpRoute, Kind::GrpcRoute, Kind::BackendTrafficPolicy, Kind::Service];
        if everything || l7_kinds.into_iter().any(kind_changed) {
            let routed = routed(model);
            if routed != self.routed {
                self.routed = routed;
                everything = true;
            }
        }
        if everything || kind_changed(Kind::Node) {
            let addresses = node_addresses(model);
            if addresses != self.node_addresses {
                self.node_addresses = addresses;
                everything = true;
            }
        }
        let mut dirty: BTreeSet<Named> = BTreeSet::new();
        match changed {
            Some(keys) if !everything => {
                for (kind, namespace, name) in keys {
                    if *kind == Kind::Service as i32 {
                        dirty.insert((namespace.clone(), name.clone()));
                    } else if *kind == Kind::EndpointSlice as i32 {
                        let slice = (namespace.clone(), name.clone());
                        if let Some(owner) = self.slice_owner.remove(&slice) {
                            let service = (namespace.clone(), owner);
                            if let Some(slices) = self.slices_of.get_mut(&service) {
                                slices.retain(|s| s != name);
                                if slices.is_empty() {
                                    self.slices_of.remove(&service);
                                }
                            }
                            dirty.insert(service);
                        }
                        if let Some(s) = model.endpoint_slice(namespace, name) {
                            let service = (namespace.clone(), s.service.clone());
                            add_slice(self.slices_of.entry(service.clone()).or_default(), name);
                            self.slice_owner.insert(slice, s.service.clone());
                            dirty.insert(service);
                        }
                    }
                }
            }
            _ => {
                self.slices_of.clear();
                self.slice_owner.clear();
                for s in model.endpoint_slices() {
                    add_slice(self.slices_of.entry((s.namespace.clone(), s.service.clone())).or_default(), &s.name);
                    self.slice_owner.insert((s.namespace, s.name), s.service);
                }
                dirty.extend(self.frontends.keys().cloned());
                for resource in model.of_kind(Kind::Service) {
                    if let Some(resource::Kind::Service(svc)) = &resource.kind {
                        dirty.insert((svc.namespace.clone(), svc.name.clone()));
                    }
                }
            }
        }
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for service in dirty {
            let mut fresh = match model
                .get(&(Kind::Service as i32, service.0.clone(), service.1.clone()))
                .and_then(|r| r.kind.as_ref())
            {
                Some(resource::Kind::Service(svc)) => {
                    let slices = self.slices(model, &service.0, &service.1);
                    frontends(svc, &slices, &self.weights, &self.node_addresses, node, &self.routed)
                }
                _ => Vec::new(),
            };
            let old = self.frontends.remove(&service).unwrap_or_default();
            removals.extend(old.iter().map(|f| f.key).filter(|key| !fresh.iter().any(|f| f.key == *key)));
            if !everything {
                upserts.extend(fresh.iter().cloned());
            }
            if !fresh.is_empty() {
                fresh.shrink_to_fit();
                self.frontends.insert(service, fresh);
            }
        }
        if everything { Compiled::Everything } else { Compiled::Delta { upserts, removals } }
    }
}

/// Adds `name` to a service's sorted slice names, once.
fn add_slice(slices: &mut Vec<String>, name: &str) {
    if let Err(at) = slices.binary_search_by(|s| s.as_str().cmp(name)) {
        slices.insert(at, name.to_owned());
    }
}

/// This node's pods, and every pod's weight (those other than the default).
fn pods_and_weights(model: &ResourceSet, node: &str) -> (Vec<state_file::Pod>, Weights) {
    let mut pods = Vec::new();
    let mut weights: Weights = BTreeMap::new();
    for resource in model.of_kind(Kind::Workload) {
        let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
        if w.weight != 0 {
            weights.entry(w.namespace.clone()).or_default().insert(w.name.clone(), w.weight);
        }
        if w.node != node {
            continue;
        }
        if let Some(ip) = w.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
            pods.push(state_file::Pod { name: format!("{}/{}", w.namespace, w.name), ip });
        }
    }
    (pods, weights)
}

/// Every node's addresses (the nodePort frontends).
fn node_addresses(model: &ResourceSet) -> Vec<Ipv4Addr> {
    model
        .of_kind(Kind::Node)
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::Node(n)) => Some(n),
            _ => None,
        })
        .flat_map(|n| n.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()))
        .collect()
}

/// One service's frontends with their backends.
fn frontends(
    svc: &api::Service,
    slices: &[api::EndpointSlice],
    weights: &Weights,
    node_addresses: &[Ipv4Addr],
    node: &str,
    routed: &Routed,
) -> Vec<ResolvedService> {
    let mut services = Vec::new();
    if svc.headless {
        return services;
    }
    for port in &svc.ports {
        let proto = match api::Protocol::try_from(port.protocol) {
            Ok(api::Protocol::Tcp) => mesh_common::proto::TCP,
            Ok(api::Protocol::Udp) => mesh_common::proto::UDP,
            _ => continue, // SCTP: not balanced at the socket yet
        };
        let name = format!("{}/{}:{}", svc.namespace, svc.name, port_label(port));
        let all = backends(slices, &svc.namespace, weights, port, None);
        let internal = if svc.internal_traffic_local {
            backends(slices, &svc.namespace, weights, port, Some(node))
        } else {
            all.clone()
        };
        let ip = |text: &String| text.parse::<Ipv4Addr>().ok();
        // Mesh routes are for connections to the cluster IPs (GAMMA), over TCP.
        let route = |port: u32| (svc.namespace.clone(), svc.name.clone(), port);
        let l7 = proto == mesh_common::proto::TCP && (routed.contains(&route(port.port)) || routed.contains(&route(0)));
        let cluster_flags = if l7 { SERVICE_FLAG_L7 } else { 0 };
        // Cluster IPs first: `Compiler::endpoints` takes the first frontend of a port.
        let frontends = svc
            .cluster_ips
            .iter()
            .filter_map(ip)
            .map(|ip| (ip, port.port, &internal, cluster_flags))
            .chain(svc.external_ips.iter().filter_map(ip).map(|ip| (ip, port.port, &all, 0)))
            .chain(node_addresses.iter().filter(|_| port.node_port != 0).map(|ip| (*ip, port.node_port, &all, 0)));
        for (ip, number, backends, flags) in frontends {
            services.push(ResolvedService {
                name: name.clone(),
                key: ServiceKey::new(ip.octets(), number as u16, proto),
                backends: backends.clone(),
                affinity_timeout_s: svc.affinity_timeout_seconds,
                flags,
            });
        }
    }
    services
}

/// The backends of `port` of a service (in `namespace`) from its `slices`, as kube-proxy
/// chooses them: ready endpoints, else serving and terminating ones; only `local_node`'s if
/// given.
pub(crate) fn backends(
    slices: &[api::EndpointSlice],
    namespace: &str,
    weights: &Weights,
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
            let weight = weights.get(namespace).and_then(|pods| pods.get(&endpoint.pod)).copied().unwrap_or(1);
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
            set.insert(resource);
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
                app_protocol: String::new(),
            }],
            affinity_timeout_seconds: 30,
            internal_traffic_local: internal_local,
            external_ips: vec!["10.200.0.10".into()],
            ..Default::default()
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
            R::Workload(Box::new(api::Workload {
                namespace: "ns".into(),
                name: "b".into(),
                node: "node-1".into(),
                ips: vec!["10.244.1.3".into()],
                weight: 5,
                ..Default::default()
            })),
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

    /// Applies `upserts` and `removals` to `model` as the stream does, then checks that the
    /// incremental compiler agrees with compiling everything, and that its delta says exactly
    /// what changed.
    fn step(model: &mut ResourceSet, compiler: &mut Compiler, upserts: Vec<R>, removals: Vec<api::ResourceKey>) {
        let before: HashMap<ServiceKey, ResolvedService> =
            compiler.services().into_iter().map(|s| (s.key, s)).collect();
        let update = api::StateUpdate {
            upserts: upserts.into_iter().map(|kind| api::Resource { kind: Some(kind) }).collect(),
            removals,
            ..Default::default()
        };
        let changed = model.apply(update);
        let compiled = compiler.update(model, "node-0", Some(&changed));
        let full = compile(model, "node-0");
        assert_eq!(compiler.services(), full.services, "the incremental form differs from a full compile");
        assert_eq!(compiler.pods(), full.pods.as_slice());
        let after: HashMap<ServiceKey, ResolvedService> = full.services.into_iter().map(|s| (s.key, s)).collect();
        let Compiled::Delta { upserts, removals } = compiled else { panic!("expected a delta") };
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            assert!(removals.contains(key), "{key:?} went away but is not removed");
        }
        for (key, service) in &after {
            if before.get(key) != Some(service) {
                assert!(upserts.contains(service), "{} changed but is not upserted", service.name);
            }
        }
        assert!(removals.iter().all(|key| !after.contains_key(key)), "a live frontend is removed");
    }

    #[test]
    fn an_update_compiles_only_what_it_touched_and_agrees_with_a_full_compile() {
        let mut model = resources(false, false);
        let mut compiler = Compiler::default();
        assert_eq!(compiler.update(&model, "node-0", Some(&[])), Compiled::Everything, "the first update compiles all");
        assert_eq!(compiler.services(), compile(&model, "node-0").services);
        let slice = |name: &str, service: &str, ip: &str| {
            R::EndpointSlice(api::EndpointSlice {
                namespace: "ns".into(),
                name: name.into(),
                service: service.into(),
                ports: vec![api::EndpointPort { name: "http".into(), protocol: api::Protocol::Tcp as i32, port: 8080 }],
                endpoints: vec![endpoint(ip, "node-0", "x", true)],
            })
        };
        let mut other = web(false, false);
        if let R::Service(s) = &mut other {
            s.name = "other".into();
            s.cluster_ips = vec!["10.96.0.11".into()];
            s.external_ips.clear();
            s.ports[0].node_port = 0;
        }
        let key = |kind: Kind, name: &str| api::ResourceKey::new(kind, "ns", name);
        // A second service, a slice for it, a slice moved from one service to the other,
        // an endpoint changed, a slice removed, a service removed.
        step(&mut model, &mut compiler, vec![other.clone()], vec![]);
        step(&mut model, &mut compiler, vec![slice("other-1", "other", "10.244.0.9")], vec![]);
        step(&mut model, &mut compiler, vec![slice("web-1", "other", "10.244.0.7")], vec![]);
        step(&mut model, &mut compiler, vec![slice("web-1", "web", "10.244.0.8")], vec![]);
        step(&mut model, &mut compiler, vec![], vec![key(Kind::EndpointSlice, "other-1")]);
        step(&mut model, &mut compiler, vec![], vec![key(Kind::Service, "other")]);
        step(&mut model, &mut compiler, vec![slice("late", "gone", "10.244.0.6")], vec![]);
        step(&mut model, &mut compiler, vec![other], vec![]);
        // Node addresses and weights reach every service: everything is compiled again.
        let node =
            R::Node(api::Node { name: "node-2".into(), addresses: vec!["172.18.0.4".into()], pod_cidrs: vec![] });
        let changed =
            model.apply(api::StateUpdate { upserts: vec![api::Resource { kind: Some(node) }], ..Default::default() });
        assert_eq!(compiler.update(&model, "node-0", Some(&changed)), Compiled::Everything);
        assert_eq!(compiler.services(), compile(&model, "node-0").services);
    }
}
