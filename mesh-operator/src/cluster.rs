//! The operator's view of the cluster: the Kubernetes objects it knows (from the API server
//! or from files), and the model resources derived from them, recomputed only where an
//! object change can have an effect.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use mesh_common::{
    api::{self, Kind, Resource, resource},
    model::Key,
};

use crate::{
    backend_policy,
    crd::{
        BackendTrafficPolicy, ClusterMeshPolicy, ClusterMeshPolicySpec, MeshPolicy, MeshPolicySpec, PeerAuthentication,
    },
    grpc_route::{self, GrpcRoute},
    http_route::{self, HttpRoute},
    identity::{IdentityAllocator, SecurityLabels},
    translate::{self, Invalid},
};

/// A BackendTrafficPolicy's status for one target Service (Gateway API's `PolicyAncestorStatus`
/// with its `Accepted` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyAncestor {
    pub service: String,
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for PolicyAncestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "target Service {}, Accepted={} ({}",
            self.service,
            if self.accepted { "True" } else { "False" },
            self.reason
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        write!(f, ")")
    }
}

/// The objects the view keeps. ServiceAccounts, which the operator also accepts, are only
/// validated: a pod's identity takes its service account's name from the pod itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    Node(Box<Node>),
    MeshPolicy(Box<MeshPolicy>),
    ClusterMeshPolicy(Box<ClusterMeshPolicy>),
    PeerAuthentication(Box<PeerAuthentication>),
    HttpRoute(Box<HttpRoute>),
    GrpcRoute(Box<GrpcRoute>),
    BackendTrafficPolicy(Box<BackendTrafficPolicy>),
}

/// A MeshPolicy or a ClusterMeshPolicy, as the view keeps it.
#[derive(Debug, Clone, PartialEq)]
enum MeshPolicyObject {
    Namespaced(Box<MeshPolicy>),
    Cluster(Box<ClusterMeshPolicy>),
}

impl MeshPolicySpec {
    fn parts(&self) -> translate::MeshPolicyParts<'_> {
        translate::MeshPolicyParts {
            namespace_selector: None,
            pod_selector: self.pod_selector.as_ref(),
            priority: self.priority,
            mode: self.mode,
            ingress: &self.ingress,
            egress: &self.egress,
        }
    }
}

impl ClusterMeshPolicySpec {
    fn parts(&self) -> translate::MeshPolicyParts<'_> {
        translate::MeshPolicyParts {
            namespace_selector: self.namespace_selector.as_ref(),
            pod_selector: self.pod_selector.as_ref(),
            priority: self.priority,
            mode: self.mode,
            ingress: &self.ingress,
            egress: &self.egress,
        }
    }
}

/// Which object: kind, namespace ("" for cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A model resource that may have changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Service(String, String),
    Slice(String, String),
    Workload(String, String),
    Policy(String, String),
    Node(String),
    /// A MeshPolicy (namespace) or ClusterMeshPolicy (namespace empty).
    MeshPolicy(String, String),
    PeerAuthentication(String, String),
    HttpRoute(String, String),
    GrpcRoute(String, String),
    BackendTrafficPolicy(String, String),
    /// The endpoints derived from pods for a selector service that has no EndpointSlice.
    Derived(String, String),
}

type NsName = (String, String);

/// What the view holds, and what it derived last.
pub struct ClusterView {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<NsName, Pod>,
    services: BTreeMap<NsName, Service>,
    slices: BTreeMap<NsName, EndpointSlice>,
    policies: BTreeMap<NsName, NetworkPolicy>,
    nodes: BTreeMap<String, Node>,
    /// MeshPolicies by (namespace, name), ClusterMeshPolicies by ("", name).
    mesh_policies: BTreeMap<NsName, MeshPolicyObject>,
    peer_authentications: BTreeMap<NsName, PeerAuthentication>,
    http_routes: BTreeMap<NsName, HttpRoute>,
    grpc_routes: BTreeMap<NsName, GrpcRoute>,
    backend_policies: BTreeMap<NsName, BackendTrafficPolicy>,
    /// The namespace whose selector-less PeerAuthentication is mesh-wide.
    root_namespace: String,
    /// (namespace, service) -> names of its EndpointSlices.
    slices_of: BTreeMap<NsName, BTreeSet<String>>,
    /// (namespace, service) -> names of the slices derived for it last time.
    derived_of: BTreeMap<NsName, BTreeSet<String>>,
    identities: IdentityAllocator,
    dirty: BTreeSet<Dirty>,
}

/// An object change the model could not take (it is left as it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {problem}")]
pub struct ModelError {
    pub object: String,
    pub problem: String,
}

impl ClusterView {
    pub fn new(identities: IdentityAllocator) -> Self {
        Self {
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            policies: BTreeMap::new(),
            nodes: BTreeMap::new(),
            mesh_policies: BTreeMap::new(),
            peer_authentications: BTreeMap::new(),
            http_routes: BTreeMap::new(),
            grpc_routes: BTreeMap::new(),
            backend_policies: BTreeMap::new(),
            root_namespace: crate::crd::DEFAULT_ROOT_NAMESPACE.to_owned(),
            slices_of: BTreeMap::new(),
            derived_of: BTreeMap::new(),
            identities,
            dirty: BTreeSet::new(),
        }
    }

    /// Sets the namespace whose selector-less PeerAuthentication is mesh-wide (the operator's).
    pub fn with_root_namespace(mut self, namespace: &str) -> Self {
        namespace.clone_into(&mut self.root_namespace);
        self
    }

    /// Checks `object` the way the model will use it, without taking it.
    pub fn check(key: &ObjectKey, object: &Object) -> Result<(), Invalid> {
        match object {
            Object::Namespace(_) => Ok(()),
            Object::Pod(pod) => translate::pod_facts(pod).map(drop),
            Object::Service(svc) => translate::service(&key.namespace, &key.name, svc).map(drop),
            Object::EndpointSlice(slice) => translate::endpoint_slice(&key.namespace, &key.name, slice).map(drop),
            Object::NetworkPolicy(policy) => translate::network_policy(&key.namespace, &key.name, policy).map(drop),
            Object::Node(node) => translate::node(&key.name, node).map(drop),
            Object::MeshPolicy(p) => translate::mesh_policy(&key.namespace, &key.name, &p.spec.parts()).map(drop),
            Object::ClusterMeshPolicy(p) => translate::mesh_policy("", &key.name, &p.spec.parts()).map(drop),
            Object::PeerAuthentication(p) => {
                translate::peer_authentication(&key.namespace, &key.name, &p.spec, crate::crd::DEFAULT_ROOT_NAMESPACE)
                    .map(drop)
            }
            Object::HttpRoute(route) => http_route::translate(&key.namespace, &key.name, route).map(drop),
            Object::GrpcRoute(route) => grpc_route::translate(&key.namespace, &key.name, route).map(drop),
            Object::BackendTrafficPolicy(p) => backend_policy::translate(&key.namespace, &key.name, p).map(drop),
        }
    }

    /// Adds or replaces an object.
    pub fn upsert(&mut self, key: &ObjectKey, object: Object) {
        self.remove(key);
        let nn = (key.namespace.clone(), key.name.clone());
        match object {
            Object::Namespace(ns) => {
                self.namespaces.insert(key.name.clone(), *ns);
                self.mark_namespace(&key.name);
            }
            Object::Pod(pod) => {
                self.pods.insert(nn.clone(), *pod);
                self.mark_pod(&nn);
            }
            Object::Service(svc) => {
                self.services.insert(nn.clone(), *svc);
                self.dirty.insert(Dirty::Service(nn.0.clone(), nn.1.clone()));
                self.dirty.insert(Dirty::Derived(nn.0, nn.1));
            }
            Object::EndpointSlice(slice) => {
                if let Some(service) = slice_service(&slice) {
                    self.slices_of.entry((nn.0.clone(), service.clone())).or_default().insert(nn.1.clone());
                    self.dirty.insert(Dirty::Derived(nn.0.clone(), service));
                }
                self.slices.insert(nn.clone(), *slice);
                self.dirty.insert(Dirty::Slice(nn.0, nn.1));
            }
            Object::NetworkPolicy(policy) => {
                self.policies.insert(nn.clone(), *policy);
                self.dirty.insert(Dirty::Policy(nn.0, nn.1));
            }
            Object::Node(node) => {
                self.nodes.insert(key.name.clone(), *node);
                self.dirty.insert(Dirty::Node(key.name.clone()));
            }
            Object::MeshPolicy(p) => {
                self.mesh_policies.insert(nn.clone(), MeshPolicyObject::Namespaced(p));
                self.dirty.insert(Dirty::MeshPolicy(nn.0, nn.1));
            }
            Object::ClusterMeshPolicy(p) => {
                self.mesh_policies.insert((String::new(), key.name.clone()), MeshPolicyObject::Cluster(p));
                self.dirty.insert(Dirty::MeshPolicy(String::new(), key.name.clone()));
            }
            Object::PeerAuthentication(p) => {
                self.peer_authentications.insert(nn.clone(), *p);
                self.dirty.insert(Dirty::PeerAuthentication(nn.0, nn.1));
            }
            Object::GrpcRoute(route) => {
                self.grpc_routes.insert(nn.clone(), *route);
                self.dirty.insert(Dirty::GrpcRoute(nn.0, nn.1));
            }
            Object::HttpRoute(route) => {
                self.http_routes.insert(nn.clone(), *route);
                self.dirty.insert(Dirty::HttpRoute(nn.0, nn.1));
            }
            Object::BackendTrafficPolicy(p) => {
                self.backend_policies.insert(nn.clone(), *p);
                self.dirty.insert(Dirty::BackendTrafficPolicy(nn.0, nn.1));
            }
        }
    }

    /// Removes an object, if the view has it.
    pub fn remove(&mut self, key: &ObjectKey) {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            "Namespace" => {
                if self.namespaces.remove(&key.name).is_some() {
                    self.mark_namespace(&key.name);
                }
            }
            "Pod" => {
                if self.pods.contains_key(&nn) {
                    self.mark_pod(&nn);
                    self.pods.remove(&nn);
                }
            }
            "Service" => {
                if self.services.remove(&nn).is_some() {
                    self.dirty.insert(Dirty::Service(nn.0.clone(), nn.1.clone()));
                    self.dirty.insert(Dirty::Derived(nn.0, nn.1));
                }
            }
            "EndpointSlice" => {
                if let Some(slice) = self.slices.remove(&nn) {
                    if let Some(service) = slice_service(&slice) {
                        let owner = (nn.0.clone(), service.clone());
                        if let Some(names) = self.slices_of.get_mut(&owner) {
                            names.remove(&nn.1);
                            if names.is_empty() {
                                self.slices_of.remove(&owner);
                            }
                        }
                        self.dirty.insert(Dirty::Derived(nn.0.clone(), service));
                    }
                    self.dirty.insert(Dirty::Slice(nn.0, nn.1));
                }
            }
            "NetworkPolicy" if self.policies.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::Policy(nn.0, nn.1));
            }
            "Node" if self.nodes.remove(&key.name).is_some() => {
                self.dirty.insert(Dirty::Node(key.name.clone()));
            }
            "MeshPolicy" | "ClusterMeshPolicy" if self.mesh_policies.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::MeshPolicy(nn.0, nn.1));
            }
            "PeerAuthentication" if self.peer_authentications.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::PeerAuthentication(nn.0, nn.1));
            }
            "GRPCRoute" if self.grpc_routes.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::GrpcRoute(nn.0, nn.1));
            }
            "HTTPRoute" if self.http_routes.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::HttpRoute(nn.0, nn.1));
            }
            "BackendTrafficPolicy" if self.backend_policies.remove(&nn).is_some() => {
                self.dirty.insert(Dirty::BackendTrafficPolicy(nn.0, nn.1));
            }
            _ => {}
        }
    }

    /// The model resources changed since the last call, and the objects that could not be
    /// turned into resources.
    pub fn changes(&mut self) -> (Vec<(Key, Option<Resource>)>, Vec<ModelError>) {
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for dirty in std::mem::take(&mut self.dirty) {
            match dirty {
                Dirty::Service(ns, name) => {
                    let resource = self.services.get(&(ns.clone(), name.clone())).and_then(|svc| {
                        checked(&mut errors, format!("Service/{ns}/{name}"), translate::service(&ns, &name, svc))
                    });
                    changes.push((key(Kind::Service, &ns, &name), resource.map(|s| wrap(resource::Kind::Service(s)))));
                }
                Dirty::Slice(ns, name) => {
                    let resource = self.slices.get(&(ns.clone(), name.clone())).and_then(|slice| {
                        let slice = translate::endpoint_slice(&ns, &name, slice);
                        checked(&mut errors, format!("EndpointSlice/{ns}/{name}"), slice).flatten()
                    });
                    changes.push((
                        key(Kind::EndpointSlice, &ns, &name),
                        resource.map(|s| wrap(resource::Kind::EndpointSlice(s))),
                    ));
                }
                Dirty::Workload(ns, name) => {
                    let resource = match self.workload(&ns, &name) {
                        Ok(workload) => workload.map(|w| wrap(resource::Kind::Workload(Box::new(w)))),
                        Err(problem) => {
                            errors.push(ModelError { object: format!("Pod/{ns}/{name}"), problem });
                            None
                        }
                    };
                    changes.push((key(Kind::Workload, &ns, &name), resource));
                }
                Dirty::Policy(ns, name) => {
                    let resource = self.policies.get(&(ns.clone(), name.clone())).and_then(|policy| {
                        let policy = translate::network_policy(&ns, &name, policy);
                        checked(&mut errors, format!("NetworkPolicy/{ns}/{name}"), policy)
                    });
                    changes.push((
                        key(Kind::NetworkPolicy, &ns, &name),
                        resource.map(|p| wrap(resource::Kind::NetworkPolicy(Box::new(p)))),
                    ));
                }
                Dirty::Node(name) => {
                    let resource = self
                        .nodes
                        .get(&name)
                        .and_then(|node| checked(&mut errors, format!("Node/{name}"), translate::node(&name, node)));
                    changes.push((key(Kind::Node, "", &name), resource.map(|n| wrap(resource::Kind::Node(n)))));
                }
                Dirty::MeshPolicy(ns, name) => {
                    let resource = self.mesh_policies.get(&(ns.clone(), name.clone())).and_then(|policy| {
                        let (kind, spec) = match policy {
                            MeshPolicyObject::Namespaced(p) => ("MeshPolicy", p.spec.parts()),
                            MeshPolicyObject::Cluster(p) => ("ClusterMeshPolicy", p.spec.parts()),
                        };
                        let object =
                            if ns.is_empty() { format!("{kind}/{name}") } else { format!("{kind}/{ns}/{name}") };
                        checked(&mut errors, object, translate::mesh_policy(&ns, &name, &spec))
                    });
                    changes.push((
                        key(Kind::MeshPolicy, &ns, &name),
                        resource.map(|p| wrap(resource::Kind::MeshPolicy(Box::new(p)))),
                    ));
                }
                Dirty::PeerAuthentication(ns, name) => {
                    let resource = self.peer_authentications.get(&(ns.clone(), name.clone())).and_then(|p| {
                        let translated = translate::peer_authentication(&ns, &name, &p.spec, &self.root_namespace);
                        checked(&mut errors, format!("PeerAuthentication/{ns}/{name}"), translated)
                    });
                    changes.push((
                        key(Kind::PeerAuthentication, &ns, &name),
                        resource.map(|p| wrap(resource::Kind::PeerAuthentication(Box::new(p)))),
                    ));
                }
                Dirty::HttpRoute(ns, name) => {
                    let resource = self.http_routes.get(&(ns.clone(), name.clone())).and_then(|route| {
                        let translated = http_route::translate(&ns, &name, route);
                        checked(&mut errors, format!("HTTPRoute/{ns}/{name}"), translated).flatten()
                    });
                    changes.push((
                        key(Kind::HttpRoute, &ns, &name),
                        resource.map(|r| wrap(resource::Kind::HttpRoute(Box::new(r)))),
                    ));
                }
                Dirty::GrpcRoute(ns, name) => {
                    let resource = self.grpc_routes.get(&(ns.clone(), name.clone())).and_then(|route| {
                        let translated = grpc_route::translate(&ns, &name, route);
                        checked(&mut errors, format!("GRPCRoute/{ns}/{name}"), translated).flatten()
                    });
                    changes.push((
                        key(Kind::GrpcRoute, &ns, &name),
                        resource.map(|r| wrap(resource::Kind::GrpcRoute(Box::new(r)))),
                    ));
                }
                Dirty::BackendTrafficPolicy(ns, name) => {
                    let resource = self.backend_policies.get(&(ns.clone(), name.clone())).and_then(|p| {
                        let translated = backend_policy::translate(&ns, &name, p);
                        checked(&mut errors, format!("BackendTrafficPolicy/{ns}/{name}"), translated)
                    });
                    changes.push((
                        key(Kind::BackendTrafficPolicy, &ns, &name),
                        resource.map(|p| wrap(resource::Kind::BackendTrafficPolicy(p))),
                    ));
                }
                Dirty::Derived(ns, service) => changes.extend(self.derived(&ns, &service)),
            }
        }
        // New identity numbers are durable before any workload carrying one is published; if
        // the table cannot be written, the workloads wait (and are tried again next time).
        if let Err(err) = self.identities.flush() {
            errors.push(ModelError { object: "identity table".into(), problem: err.to_string() });
            changes.retain(|((kind, ns, name), resource)| {
                let held = *kind == Kind::Workload as i32 && resource.is_some();
                if held {
                    self.dirty.insert(Dirty::Workload(ns.clone(), name.clone()));
                }
                !held
            });
        }
        (changes, errors)
    }

    /// Every HTTPRoute's and GRPCRoute's status, per Service parent (routes without one have
    /// none), by (kind, namespace, name).
    pub fn route_statuses(&self) -> BTreeMap<(&'static str, String, String), Vec<http_route::ParentStatus>> {
        let ports = |ns: &str, name: &str| {
            let service = self.services.get(&(ns.to_owned(), name.to_owned()))?;
            let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
            Some(ports.into_iter().flatten().filter_map(|p| u32::try_from(p.port).ok()).collect())
        };
        let http = self
            .http_routes
            .iter()
            .map(|((ns, name), route)| (("HTTPRoute", ns.clone(), name.clone()), http_route::status(ns, route, ports)));
        let grpc = self
            .grpc_routes
            .iter()
            .map(|((ns, name), route)| (("GRPCRoute", ns.clone(), name.clone()), grpc_route::status(ns, route, ports)));
        http.chain(grpc).filter(|(_, status)| !status.is_empty()).collect()
    }

    /// Every BackendTrafficPolicy's status per target Service, as Gateway API's policy
    /// attachment (GEP-713) reports it: Accepted, or not with the reason (`Invalid` with the
    /// error, `TargetNotFound`, or `Conflicted`: an older policy, or one of the same age first
    /// by name, applies to that Service), by (namespace, name).
    pub fn policy_statuses(&self) -> BTreeMap<(String, String), Vec<PolicyAncestor>> {
        type Translated<'a> = ((&'a String, &'a String), Result<api::BackendTrafficPolicy, Invalid>);
        let translated: Vec<Translated<'_>> = self
            .backend_policies
            .iter()
            .map(|((ns, name), p)| ((ns, name), backend_policy::translate(ns, name, p)))
            .collect();
        let mut valid: Vec<&api::BackendTrafficPolicy> =
            translated.iter().filter_map(|(_, t)| t.as_ref().ok()).collect();
        valid.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        let mut winners: BTreeMap<(&str, &str), &str> = BTreeMap::new();
        for policy in &valid {
            for service in &policy.services {
                winners.entry((policy.namespace.as_str(), service.as_str())).or_insert(policy.name.as_str());
            }
        }
        let mut out = BTreeMap::new();
        for ((ns, name), result) in &translated {
            let spec = &self.backend_policies[&((*ns).clone(), (*name).clone())].spec;
            let targets: Vec<String> = spec.target_refs.iter().map(|t| t.name.clone()).collect();
            let ancestor = |service: &String, accepted, reason, message: String| PolicyAncestor {
                service: service.clone(),
                accepted,
                reason,
                message,
            };
            let statuses = targets
                .iter()
                .map(|service| match result {
                    Err(invalid) => ancestor(service, false, "Invalid", invalid.to_string()),
                    Ok(_) if !self.services.contains_key(&((*ns).clone(), service.clone())) => {
                        ancestor(service, false, "TargetNotFound", format!("Service {ns}/{service} does not exist"))
                    }
                    Ok(_) => match winners.get(&(ns.as_str(), service.as_str())) {
                        Some(winner) if winner != name => ancestor(
                            service,
                            false,
                            "Conflicted",
                            format!("BackendTrafficPolicy {ns}/{winner} (older, or first by name) applies to Service {ns}/{service}"),
                        ),
                        _ => ancestor(service, true, "Accepted", String::new()),
                    },
                })
                .collect();
            out.insert(((*ns).clone(), (*name).clone()), statuses);
        }
        out
    }

    fn workload(&mut self, ns: &str, name: &str) -> Result<Option<api::Workload>, String> {
        let Some(pod) = self.pods.get(&(ns.to_owned(), name.to_owned())) else { return Ok(None) };
        let facts = translate::pod_facts(pod).map_err(|e| e.to_string())?;
        if facts.node.is_empty() || facts.ips.is_empty() {
            return Ok(None); // not scheduled or no address yet: nothing for a node to do
        }
        let namespace_labels = self.namespaces.get(ns).and_then(|n| n.metadata.labels.clone()).unwrap_or_default();
        let labels = SecurityLabels {
            namespace: ns.to_owned(),
            namespace_labels: namespace_labels.clone(),
            pod_labels: facts.labels.clone(),
            service_account: facts.service_account.clone(),
        };
        let identity = self.identities.identity(&labels).map_err(|e| e.to_string())?;
        Ok(Some(api::Workload {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            node: facts.node,
            ips: facts.ips,
            identity,
            labels: facts.labels.into_iter().collect(),
            service_account: facts.service_account,
            weight: facts.weight,
            namespace_labels: namespace_labels.into_iter().collect(),
            named_ports: translate::named_ports(pod),
            workload_kind: facts.workload.0,
            workload_name: facts.workload.1,
        }))
    }

    /// The slices derived from pods for a selector service without EndpointSlices of its
    /// own, grouped by resolved ports (a named targetPort may resolve differently per pod),
    /// and the removal of the ones derived before that are gone.
    fn derived(&mut self, ns: &str, service: &str) -> Vec<(Key, Option<Resource>)> {
        let owner = (ns.to_owned(), service.to_owned());
        let mut groups: BTreeMap<Vec<(String, i32, u32)>, Vec<api::Endpoint>> = BTreeMap::new();
        let selector = self.services.get(&owner).and_then(|svc| {
            let spec = svc.spec.as_ref()?;
            let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
            (!self.slices_of.contains_key(&owner))
                .then(|| (selector.clone(), translate::service(ns, service, svc).ok()))
        });
        if let Some((selector, Some(model))) = selector {
            for ((_, pod_name), pod) in
                self.pods.range((ns.to_owned(), String::new())..).take_while(|((n, _), _)| n == ns)
            {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                let Ok(facts) = translate::pod_facts(pod) else { continue };
                if facts.ips.is_empty() {
                    continue;
                }
                let ports: Vec<(String, i32, u32)> = model
                    .ports
                    .iter()
                    .filter_map(|p| {
                        let protocol = api::Protocol::try_from(p.protocol).unwrap_or(api::Protocol::Tcp);
                        let number = match p.target.as_ref()? {
                            api::service_port::Target::TargetPortNumber(n) => Some(*n),
                            api::service_port::Target::TargetPortName(name) => {
                                translate::named_port(pod, name, protocol)
                            }
                        }?;
                        Some((p.name.clone(), p.protocol, number))
                    })
                    .collect();
                groups.entry(ports).or_default().push(api::Endpoint {
                    addresses: facts.ips.clone(),
                    node: facts.node.clone(),
                    pod: pod_name.clone(),
                    ready: facts.ready && !facts.terminating,
                    serving: facts.ready,
                    terminating: facts.terminating,
                });
            }
        }
        let mut changes = Vec::new();
        let mut names = BTreeSet::new();
        for (i, (ports, endpoints)) in groups.into_iter().enumerate() {
            // '~' cannot occur in a Kubernetes name, so these never collide with real slices.
            let name = format!("{service}~derived-{i}");
            let ports =
                ports.into_iter().map(|(name, protocol, port)| api::EndpointPort { name, protocol, port }).collect();
            let slice = api::EndpointSlice {
                namespace: ns.to_owned(),
                name: name.clone(),
                service: service.to_owned(),
                ports,
                endpoints,
            };
            changes.push((key(Kind::EndpointSlice, ns, &name), Some(wrap(resource::Kind::EndpointSlice(slice)))));
            names.insert(name);
        }
        for gone in self.derived_of.get(&owner).into_iter().flatten().filter(|n| !names.contains(*n)) {
            changes.push((key(Kind::EndpointSlice, ns, gone), None));
        }
        if names.is_empty() {
            self.derived_of.remove(&owner);
        } else {
            self.derived_of.insert(owner, names);
        }
        changes
    }

    fn mark_namespace(&mut self, ns: &str) {
        let pods: Vec<NsName> = self
            .pods
            .range((ns.to_owned(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in pods {
            self.dirty.insert(Dirty::Workload(ns, name));
        }
    }

    /// A pod changed: its workload, and the derived endpoints of its namespace's services.
    fn mark_pod(&mut self, (ns, name): &NsName) {
        self.dirty.insert(Dirty::Workload(ns.clone(), name.clone()));
        let services: Vec<String> = self
            .services
            .range((ns.clone(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .filter(|(_, svc)| svc.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some_and(|s| !s.is_empty()))
            .map(|((_, svc), _)| svc.clone())
            .collect();
        for service in services {
            self.dirty.insert(Dirty::Derived(ns.clone(), service));
        }
    }
}

/// `result`'s value, or `None` with its error recorded against `object`.
fn checked<T>(errors: &mut Vec<ModelError>, object: String, result: Result<T, Invalid>) -> Option<T> {
    result.map_err(|invalid| errors.push(ModelError { object, problem: invalid.to_string() })).ok()
}

fn slice_service(slice: &EndpointSlice) -> Option<String> {
    slice.metadata.labels.as_ref()?.get(translate::SERVICE_NAME_LABEL).cloned()
}

fn key(kind: Kind, ns: &str, name: &str) -> Key {
    (kind as i32, ns.to_owned(), name.to_owned())
}

fn wrap(kind: resource::Kind) -> Resource {
    Resource { kind: Some(kind) }
}
