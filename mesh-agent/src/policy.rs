//! Policy compiled for this node's pods: for each local pod and direction, whether it is
//! isolated and which rules apply, each rule carrying the policy and index it comes from. This
//! is the reference form: the kernel maps are built from it ([`crate::policy_table`]), and
//! [`Direction::verdict`] is the oracle they are tested against.
//!
//! Kubernetes semantics: a pod is isolated for a direction once any policy of its namespace
//! selects it with that policy type; then only the union of the selecting policies' rules
//! allows traffic. A rule with no peers allows every peer, with no ports every port. A peer
//! with a pod selector alone means pods of the policy's namespace; with a namespace selector,
//! pods of the matching namespaces (and of the pod selector, if both are given). An ipBlock
//! matches addresses, pods' included, minus its excepts. Ports by name resolve against the
//! destination pod: the local pod for ingress, each peer pod for egress.
//!
//! The project's MeshPolicy (namespaced) and ClusterMeshPolicy add deny rules and priorities:
//! of the rules that match a flow, the lowest priority number decides, deny winning ties, and
//! every MeshPolicy rule comes before every NetworkPolicy rule. Their allow rules isolate like
//! NetworkPolicy's; deny rules do not. An audit-mode policy changes nothing that passes: a flow
//! that would be denied were it enforced passes and is reported as audit.

use std::{collections::BTreeSet, net::Ipv4Addr};

use mesh_common::{
    api::{self, Kind, resource},
    model::ResourceSet,
};

/// An IPv4 prefix: the one definition (`mesh_common::cidr`), host bits cleared.
pub use mesh_common::cidr::Ipv4Net as Cidr;

/// Where an allowed peer may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Any address at all.
    Any,
    /// Pods with these identities.
    Identities(BTreeSet<u32>),
    /// Addresses in `cidr` but in none of `except`.
    Block { cidr: Cidr, except: Vec<Cidr> },
    /// Clients that proved one of these workload identities (`crate::principals`).
    Principals(BTreeSet<crate::principals::Principal>),
}

/// Allowed destination ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    /// `first..=last` of one protocol (a single port has `first == last`; every port of the
    /// protocol is `1..=65535`).
    Range { protocol: api::Protocol, first: u16, last: u16 },
    /// A container port name, resolved against the destination pod.
    Named { protocol: api::Protocol, name: String },
}

/// NetworkPolicy.
pub const NETWORK_POLICY: &str = "NetworkPolicy";
/// The project's namespaced policy.
pub const MESH_POLICY: &str = "MeshPolicy";
/// The project's cluster-scoped policy.
pub const CLUSTER_MESH_POLICY: &str = "ClusterMeshPolicy";

/// A policy: kind and namespace/name (just the name for a cluster-scoped one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// `"ingress"` or `"egress"`, as rules are listed in a policy.
pub type Way = &'static str;

/// A rule: its policy, its list (`ingress` or `egress`) and its index there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub way: Way,
    pub index: usize,
}

impl std::fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} rule {}", self.policy, self.way, self.index)
    }
}

/// What a rule does to the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
}

/// One rule, resolved: any of `peers` (none: every peer) on any of `ports` (`None`: every
/// port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Option<Vec<PortSpec>>,
    pub rule: RuleRef,
    pub action: Action,
    /// Lower decides first; NetworkPolicy rules have [`NETWORK_POLICY_PRIORITY`].
    pub priority: u16,
    /// From an audit-mode policy.
    pub audit: bool,
    /// The HTTP requests it matches (MeshPolicy ingress rules with principals); empty: the
    /// whole connection.
    pub http: HttpMatches,
}

/// A rule's HTTP request matches (the model's messages, which have no `Eq` of their own;
/// they hold strings and booleans only, so equality is total).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpMatches(pub Vec<api::HttpRequestMatch>);

impl Eq for HttpMatches {}

impl std::ops::Deref for HttpMatches {
    type Target = [api::HttpRequestMatch];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Rule {
    /// A deny rule for some requests only: it denies no connection (the kernel never sees it);
    /// the destination's agent applies it per request.
    pub fn requests_only(&self) -> bool {
        self.action == Action::Deny && !self.http.is_empty()
    }

    /// Whether it matches a request (an L4 rule matches every request of its connections).
    fn matches_request(&self, request: &HttpRequest<'_>) -> bool {
        self.http.is_empty() || self.http.iter().any(|m| request.matches(m))
    }
}

/// What an HTTP request is, for MeshPolicy rules with `http`.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl HttpRequest<'_> {
    fn matches(&self, m: &api::HttpRequestMatch) -> bool {
        (m.methods.is_empty() || m.methods.iter().any(|x| x == self.method))
            && (m.paths.is_empty()
                || m.paths.iter().any(|p| {
                    if p.prefix {
                        p.value.is_empty()
                            || self
                                .path
                                .strip_prefix(p.value.as_str())
                                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
                    } else {
                        self.path == p.value
                    }
                }))
            && m.headers.iter().all(|h| {
                let values: Vec<&str> =
                    self.headers.get_all(h.name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
                !values.is_empty() && values.join(",") == h.value
            })
    }
}

pub use mesh_common::policy::NETWORK_POLICY_PRIORITY;

/// One direction of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Direction {
    /// The enforcing policies that isolate it (empty: what no rule denies passes).
    pub isolated_by: Vec<PolicyRef>,
    /// The audit-mode policies that would isolate it.
    pub audit_isolated_by: Vec<PolicyRef>,
    /// By priority (lowest first), deny before allow at equal priority.
    pub rules: Vec<Rule>,
}

/// What the other end of a connection is.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo<'a> {
    pub ip: Ipv4Addr,
    /// Its identity, when it is a pod the model knows.
    pub identity: Option<u32>,
    /// Its named ports, when it is a pod (egress rules' port names resolve against them).
    pub named_ports: &'a [api::NamedPort],
    /// The workload identity it proved (through the tunnel, or as a pod of this node).
    pub principal: Option<&'a mesh_common::identity::SpiffeId>,
}

/// What decided a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Rule(RuleRef),
    /// No rule matched and these policies isolate the pod (default deny).
    Isolation(Vec<PolicyRef>),
}

/// A decision and what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Passes: allowed by a rule, or (`None`) not isolated and denied by none.
    Allowed(Option<RuleRef>),
    Denied(Cause),
    /// Passes, but an audit-mode policy would deny it.
    Audited(Cause),
}

impl Verdict {
    pub fn passes(&self) -> bool {
        !matches!(self, Self::Denied(_))
    }
}

impl Direction {
    /// The verdict for traffic with `peer` to destination port `port` (`protocol`), where
    /// `destination_ports` are the named ports of the destination pod (the local pod for
    /// ingress; `None` for egress, where the peer's own are used).
    pub fn verdict(
        &self,
        peer: PeerInfo<'_>,
        protocol: api::Protocol,
        port: u16,
        destination_ports: Option<&[api::NamedPort]>,
    ) -> Verdict {
        self.decide(peer, protocol, port, destination_ports, |rule| !rule.requests_only())
    }

    /// The verdict for one HTTP request on a connection with `peer` to TCP port `port` of a
    /// local pod with `destination_ports`: the rules matching the connection and, for those
    /// with `http`, the request; the same order and isolation as connections.
    pub fn request_verdict(
        &self,
        peer: PeerInfo<'_>,
        port: u16,
        destination_ports: &[api::NamedPort],
        request: &HttpRequest<'_>,
    ) -> Verdict {
        self.decide(peer, api::Protocol::Tcp, port, Some(destination_ports), |rule| rule.matches_request(request))
    }

    fn decide(
        &self,
        peer: PeerInfo<'_>,
        protocol: api::Protocol,
        port: u16,
        destination_ports: Option<&[api::NamedPort]>,
        applies: impl Fn(&Rule) -> bool,
    ) -> Verdict {
        let named = destination_ports.unwrap_or(peer.named_ports);
        let matching = self.rules.iter().filter(|rule| applies(rule)).filter(|rule| {
            let peer_ok = rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(p, &peer));
            let port_ok = rule.ports.as_ref().is_none_or(|ports| {
                ports.iter().any(|spec| match spec {
                    PortSpec::Range { protocol: p, first, last } => *p == protocol && (*first..=*last).contains(&port),
                    PortSpec::Named { protocol: p, name } => {
                        *p == protocol
                            && named.iter().any(|n| {
                                n.name == *name && n.protocol == protocol as i32 && n.number == u32::from(port)
                            })
                    }
                })
            });
            peer_ok && port_ok
        });
        // Rules are sorted: the first match of a set decides for it.
        let mut enforced = None;
        let mut with_audit = None;
        for rule in matching {
            if enforced.is_none() && !rule.audit {
                enforced = Some(rule);
            }
            if with_audit.is_none() {
                with_audit = Some(rule);
            }
        }
        match enforced {
            Some(rule) if rule.action == Action::Deny => return Verdict::Denied(Cause::Rule(rule.rule.clone())),
            None if !self.isolated_by.is_empty() => return Verdict::Denied(Cause::Isolation(self.isolated_by.clone())),
            _ => {}
        }
        match with_audit {
            Some(rule) if rule.action == Action::Deny => return Verdict::Audited(Cause::Rule(rule.rule.clone())),
            None if !self.audit_isolated_by.is_empty() => {
                return Verdict::Audited(Cause::Isolation(self.audit_isolated_by.clone()));
            }
            _ => {}
        }
        Verdict::Allowed(enforced.map(|rule| rule.rule.clone()))
    }
}

/// Sorts rules into decision order: priority, then deny before allow, then as listed.
pub fn sort_rules(rules: &mut [Rule]) {
    rules.sort_by_key(|rule| (rule.priority, rule.action == Action::Allow));
}

fn peer_matches(peer: &Peer, info: &PeerInfo<'_>) -> bool {
    match peer {
        Peer::Any => true,
        Peer::Identities(ids) => info.identity.is_some_and(|id| ids.contains(&id)),
        Peer::Block { cidr, except } => cidr.contains(&info.ip) && !except.iter().any(|e| e.contains(&info.ip)),
        Peer::Principals(principals) => info.principal.is_some_and(|id| principals.iter().any(|p| p.matches(id))),
    }
}

/// Whether MeshPolicy or ClusterMeshPolicy `policy` selects pod `pod`.
pub fn mesh_policy_selects(policy: &api::MeshPolicy, pod: &api::Workload) -> bool {
    let selected = if policy.namespace.is_empty() {
        policy.namespace_selector.as_ref().is_none_or(|s| selects(s, |k| namespace_label(pod, k)))
    } else {
        policy.namespace == pod.namespace
    };
    selected && policy.pod_selector.as_ref().is_none_or(|s| selects(s, |k| pod.labels.get(k).map(String::as_str)))
}

/// The policy of one local pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// `namespace/name`.
    pub pod: String,
    pub identity: u32,
    pub named_ports: Vec<api::NamedPort>,
    pub ingress: Direction,
    pub egress: Direction,
}

/// Whether `labels` satisfy `selector` (an empty selector selects everything).
pub fn selects<'a>(selector: &api::LabelSelector, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
    selector.match_labels.iter().all(|(k, v)| labels(k) == Some(v.as_str()))
        && selector.match_expressions.iter().all(|req| {
            let value = labels(&req.key);
            match api::SelectorOperator::try_from(req.operator) {
                Ok(api::SelectorOperator::In) => value.is_some_and(|v| req.values.iter().any(|x| x == v)),
                Ok(api::SelectorOperator::NotIn) => value.is_none_or(|v| !req.values.iter().any(|x| x == v)),
                Ok(api::SelectorOperator::Exists) => value.is_some(),
                Ok(api::SelectorOperator::DoesNotExist) => value.is_none(),
                // Validated by the operator; an unknown operator selects nothing.
                _ => false,
            }
        })
}

/// Every pod of the model.
pub fn workloads(model: &ResourceSet) -> Vec<&api::Workload> {
    model
        .of_kind(Kind::Workload)
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::Workload(w)) => Some(&**w),
            _ => None,
        })
        .collect()
}

/// Compiles every NetworkPolicy, MeshPolicy and ClusterMeshPolicy for the pods of `node`.
pub fn compile(model: &ResourceSet, node: &str) -> Vec<EndpointPolicy> {
    let workloads = workloads(model);
    let policies: Vec<&api::NetworkPolicy> = model
        .of_kind(Kind::NetworkPolicy)
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::NetworkPolicy(p)) => Some(&**p),
            _ => None,
        })
        .collect();
    let mesh_policies: Vec<&api::MeshPolicy> = crate::principals::mesh_policies(model).collect();
    let mut out = Vec::new();
    for pod in workloads.iter().filter(|w| w.node == node) {
        let mut endpoint = EndpointPolicy {
            pod: format!("{}/{}", pod.namespace, pod.name),
            identity: pod.identity,
            named_ports: pod.named_ports.clone(),
            ingress: Direction::default(),
            egress: Direction::default(),
        };
        let pod_label = |k: &str| pod.labels.get(k).map(String::as_str);
        for policy in policies.iter().filter(|p| p.namespace == pod.namespace) {
            if !policy.pod_selector.as_ref().is_none_or(|s| selects(s, pod_label)) {
                continue;
            }
            let policy_ref =
                PolicyRef { kind: NETWORK_POLICY, namespace: policy.namespace.clone(), name: policy.name.clone() };
            for (isolated, rules, direction, way) in [
                (policy.ingress_isolated, &policy.ingress, &mut endpoint.ingress, "ingress"),
                (policy.egress_isolated, &policy.egress, &mut endpoint.egress, "egress"),
            ] {
                if !isolated {
                    continue;
                }
                direction.isolated_by.push(policy_ref.clone());
                for (index, rule) in rules.iter().enumerate() {
                    direction.rules.push(Rule {
                        peers: rule
                            .peers
                            .iter()
                            .map(|peer| resolve_peer(peer, Some(&policy.namespace), &workloads))
                            .collect(),
                        ports: ports(&rule.ports),
                        rule: RuleRef { policy: policy_ref.clone(), way, index },
                        action: Action::Allow,
                        priority: NETWORK_POLICY_PRIORITY,
                        audit: false,
                        http: HttpMatches::default(),
                    });
                }
            }
        }
        for policy in &mesh_policies {
            let cluster_scoped = policy.namespace.is_empty();
            if !mesh_policy_selects(policy, pod) {
                continue;
            }
            let policy_ref = PolicyRef {
                kind: if cluster_scoped { CLUSTER_MESH_POLICY } else { MESH_POLICY },
                namespace: policy.namespace.clone(),
                name: policy.name.clone(),
            };
            // Priorities are validated to fit below NetworkPolicy's.
            let priority = u16::try_from(policy.priority).unwrap_or(NETWORK_POLICY_PRIORITY - 1);
            let peer_namespace = (!cluster_scoped).then_some(policy.namespace.as_str());
            for (rules, direction, way) in
                [(&policy.ingress, &mut endpoint.ingress, "ingress"), (&policy.egress, &mut endpoint.egress, "egress")]
            {
                let isolates = rules.iter().any(|r| r.action == api::RuleAction::Allow as i32);
                if isolates {
                    let list = if policy.audit { &mut direction.audit_isolated_by } else { &mut direction.isolated_by };
                    list.push(policy_ref.clone());
                }
                for (index, rule) in rules.iter().enumerate() {
                    let mut peers: Vec<Peer> =
                        rule.peers.iter().map(|peer| resolve_peer(peer, peer_namespace, &workloads)).collect();
                    if !rule.principals.is_empty() {
                        // Validated by the operator: ingress only, never with peers.
                        let principals = rule.principals.iter().map(crate::principals::Principal::from_api);
                        peers.push(Peer::Principals(principals.collect()));
                    }
                    direction.rules.push(Rule {
                        peers,
                        ports: ports(&rule.ports),
                        rule: RuleRef { policy: policy_ref.clone(), way, index },
                        action: if rule.action == api::RuleAction::Deny as i32 { Action::Deny } else { Action::Allow },
                        priority,
                        audit: policy.audit,
                        http: HttpMatches(rule.http.clone()),
                    });
                }
            }
        }
        sort_rules(&mut endpoint.ingress.rules);
        sort_rules(&mut endpoint.egress.rules);
        out.push(endpoint);
    }
    out
}

/// A rule's ports: `None` (every port) when it lists none.
fn ports(ports: &[api::PolicyPort]) -> Option<Vec<PortSpec>> {
    (!ports.is_empty()).then(|| ports.iter().filter_map(port_spec).collect())
}

/// The identities of the pods a selector peer selects, or the addresses of an ipBlock. A peer
/// without a namespace selector means `policy_namespace` (every namespace when `None`).
fn resolve_peer(peer: &api::PolicyPeer, policy_namespace: Option<&str>, workloads: &[&api::Workload]) -> Peer {
    if let Some(block) = &peer.ip_block {
        return match mesh_common::cidr::parse_v4(&block.cidr) {
            Some(cidr) => Peer::Block {
                cidr,
                except: block.except.iter().filter_map(|e| mesh_common::cidr::parse_v4(e)).collect(),
            },
            // An IPv6 block: no IPv4 address is in it.
            None => Peer::Identities(BTreeSet::new()),
        };
    }
    let identities = workloads
        .iter()
        .filter(|w| match &peer.namespace_selector {
            None => policy_namespace.is_none_or(|ns| w.namespace == ns),
            Some(selector) => selects(selector, |k| namespace_label(w, k)),
        })
        .filter(|w| peer.pod_selector.as_ref().is_none_or(|s| selects(s, |k| w.labels.get(k).map(String::as_str))))
        .map(|w| w.identity)
        .collect();
    Peer::Identities(identities)
}

/// A namespace label of `w`'s namespace, with the `kubernetes.io/metadata.name` label the API
/// server sets on every namespace.
fn namespace_label<'a>(w: &'a api::Workload, key: &str) -> Option<&'a str> {
    if key == "kubernetes.io/metadata.name" {
        return Some(w.namespace.as_str());
    }
    w.namespace_labels.get(key).map(String::as_str)
}

fn port_spec(port: &api::PolicyPort) -> Option<PortSpec> {
    let protocol = api::Protocol::try_from(port.protocol).unwrap_or(api::Protocol::Tcp);
    match &port.port {
        None => Some(PortSpec::Range { protocol, first: 1, last: u16::MAX }),
        Some(api::policy_port::Port::Number(n)) => {
            let first = u16::try_from(*n).ok()?;
            let last = if port.end_port == 0 { first } else { u16::try_from(port.end_port).ok()? };
            Some(PortSpec::Range { protocol, first, last })
        }
        Some(api::policy_port::Port::Name(name)) => Some(PortSpec::Named { protocol, name: name.clone() }),
    }
}

#[cfg(test)]
mod tests {
    //! The upstream e2e model (kubernetes/kubernetes test/e2e/network/netpol): namespaces x, y,
    //! z with pods a, b, c each, serving TCP and UDP on 80 and 81 (`serve-80-tcp`, ...).
    //! A probe is allowed when the source's egress and the destination's ingress both allow it.

    use super::*;
    use mesh_common::api::{LabelRequirement, LabelSelector, PolicyPeer, PolicyPort, PolicyRule, SelectorOperator};

    const NAMESPACES: [&str; 3] = ["x", "y", "z"];
    const PODS: [&str; 3] = ["a", "b", "c"];

    fn ip(ns: usize, pod: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, ns as u8, pod as u8 + 2)
    }

    fn named_ports() -> Vec<api::NamedPort> {
        let mut ports = Vec::new();
        for number in [80u32, 81] {
            for (protocol, suffix) in [(api::Protocol::Tcp, "tcp"), (api::Protocol::Udp, "udp")] {
                ports.push(api::NamedPort {
                    name: format!("serve-{number}-{suffix}"),
                    protocol: protocol as i32,
                    number,
                });
            }
        }
        ports
    }

    fn workload(ns: usize, pod: usize) -> api::Workload {
        api::Workload {
            namespace: NAMESPACES[ns].into(),
            name: PODS[pod].into(),
            node: "node-0".into(),
            ips: vec![ip(ns, pod).to_string()],
            identity: 1000 + (ns * 3 + pod) as u32,
            labels: [("pod".to_owned(), PODS[pod].to_owned())].into(),
            namespace_labels: [("ns".to_owned(), NAMESPACES[ns].to_owned())].into(),
            named_ports: named_ports(),
            ..Default::default()
        }
    }

    fn model(policies: Vec<api::NetworkPolicy>) -> ResourceSet {
        let mut set = ResourceSet::default();
        let mut insert = |kind| {
            let resource = api::Resource { kind: Some(kind) };
            set.insert(resource);
        };
        for ns in 0..3 {
            for pod in 0..3 {
                insert(resource::Kind::Workload(Box::new(workload(ns, pod))));
            }
        }
        for policy in policies {
            insert(resource::Kind::NetworkPolicy(Box::new(policy)));
        }
        set
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            match_expressions: vec![],
        }
    }

    fn policy(
        ns: &str,
        name: &str,
        selector: LabelSelector,
        ingress: Option<Vec<PolicyRule>>,
        egress: Option<Vec<PolicyRule>>,
    ) -> api::NetworkPolicy {
        api::NetworkPolicy {
            namespace: ns.into(),
            name: name.into(),
            pod_selector: Some(selector),
            ingress_isolated: ingress.is_some(),
            egress_isolated: egress.is_some(),
            ingress: ingress.unwrap_or_default(),
            egress: egress.unwrap_or_default(),
        }
    }

    fn tcp(port: u32) -> PolicyPort {
        PolicyPort {
            protocol: api::Protocol::Tcp as i32,
            port: Some(api::policy_port::Port::Number(port)),
            end_port: 0,
        }
    }

    /// The 9x9 reachability matrix for `protocol`/`port`: one line per source (x/a .. z/c),
    /// one column per destination; `X` allowed, `.` denied, `A` passed as audit. Computed by
    /// the oracle and, from the kernel form of the same policy, as the kernel does; both must
    /// agree.
    fn matrix(policies: Vec<api::NetworkPolicy>, protocol: api::Protocol, port: u16) -> String {
        mesh_matrix(policies, vec![], protocol, port)
    }

    fn mesh_matrix(
        policies: Vec<api::NetworkPolicy>,
        mesh: Vec<api::MeshPolicy>,
        protocol: api::Protocol,
        port: u16,
    ) -> String {
        let mut set = model(policies);
        for policy in mesh {
            let resource = api::Resource { kind: Some(resource::Kind::MeshPolicy(Box::new(policy))) };
            set.insert(resource);
        }
        let compiled = compile(&set, "node-0");
        let oracle = oracle_matrix(&compiled, protocol, port);
        let kernel = kernel_matrix(&set, &compiled, protocol, port);
        assert_eq!(oracle, kernel, "the kernel form disagrees with the oracle");
        oracle
    }

    fn kernel_matrix(set: &ResourceSet, compiled: &[EndpointPolicy], protocol: api::Protocol, port: u16) -> String {
        use crate::policy_table::{LocalEndpoint, Numbering, kernel_form};
        use mesh_common::policy::{EGRESS, INGRESS};
        let workloads = workloads(set);
        let index = |ns: usize, pod: usize| (ns * 3 + pod) as u32 + 10;
        let endpoints: Vec<LocalEndpoint<'_>> = (0..9)
            .map(|i| LocalEndpoint {
                ifindex: index(i / 3, i % 3),
                policy: compiled.iter().find(|e| e.pod == format!("{}/{}", NAMESPACES[i / 3], PODS[i % 3])).unwrap(),
            })
            .collect();
        let kernel = kernel_form(&endpoints, &workloads, &mut Numbering::default(), &Default::default());
        let proto = match protocol {
            api::Protocol::Udp => mesh_common::proto::UDP,
            api::Protocol::Sctp => mesh_common::proto::SCTP,
            _ => mesh_common::proto::TCP,
        };
        let mut out = String::new();
        for s in 0..9 {
            for d in 0..9 {
                let egress = crate::policy_table::tests::judge(
                    &kernel,
                    index(s / 3, s % 3),
                    EGRESS,
                    ip(d / 3, d % 3),
                    proto,
                    port,
                );
                let ingress = crate::policy_table::tests::judge(
                    &kernel,
                    index(d / 3, d % 3),
                    INGRESS,
                    ip(s / 3, s % 3),
                    proto,
                    port,
                );
                out.push(combine(egress, ingress));
            }
            out.push('\n');
        }
        out
    }

    /// One cell: denied if either side denies, audit if either audits.
    fn combine(egress: u8, ingress: u8) -> char {
        use mesh_common::policy::{AUDIT, DENY};
        if egress == DENY || ingress == DENY {
            '.'
        } else if egress == AUDIT || ingress == AUDIT {
            'A'
        } else {
            'X'
        }
    }

    fn oracle_matrix(compiled: &[EndpointPolicy], protocol: api::Protocol, port: u16) -> String {
        let find = |ns: usize, pod: usize| {
            compiled.iter().find(|e| e.pod == format!("{}/{}", NAMESPACES[ns], PODS[pod])).expect("compiled")
        };
        let ports = named_ports();
        let mut out = String::new();
        for (sns, spod) in (0..3).flat_map(|n| (0..3).map(move |p| (n, p))) {
            for (dns, dpod) in (0..3).flat_map(|n| (0..3).map(move |p| (n, p))) {
                let source = find(sns, spod);
                let destination = find(dns, dpod);
                let to = PeerInfo {
                    ip: ip(dns, dpod),
                    identity: Some(destination.identity),
                    named_ports: &ports,
                    principal: None,
                };
                let from = PeerInfo {
                    ip: ip(sns, spod),
                    identity: Some(source.identity),
                    named_ports: &ports,
                    principal: None,
                };
                let egress = source.egress.verdict(to, protocol, port, None);
                let ingress = destination.ingress.verdict(from, protocol, port, Some(&destination.named_ports));
                let code = |v: &Verdict| match v {
                    Verdict::Denied(_) => mesh_common::policy::DENY,
                    Verdict::Audited(_) => mesh_common::policy::AUDIT,
                    Verdict::Allowed(_) => mesh_common::policy::ALLOW,
                };
                out.push(combine(code(&egress), code(&ingress)));
            }
            out.push('\n');
        }
        out
    }

    /// Expected matrix from rows of 9 characters (sources x/a .. z/c).
    fn expect(rows: [&str; 9]) -> String {
        rows.iter().map(|r| format!("{r}\n")).collect()
    }

    const ALL: [&str; 9] = ["XXXXXXXXX"; 9];

    #[test]
    fn no_policy_allows_everything() {
        assert_eq!(matrix(vec![], api::Protocol::Tcp, 80), expect(ALL));
    }

    #[test]
    fn deny_all_ingress_isolates_every_pod_of_the_namespace() {
        let deny = policy("x", "deny-all", labels(&[]), Some(vec![]), None);
        let row = "...XXXXXX";
        assert_eq!(matrix(vec![deny], api::Protocol::Tcp, 80), expect([row; 9]));
    }

    #[test]
    fn namespace_and_pod_selectors_together_are_an_and() {
        // x/a accepts only pods labelled pod=b in namespaces labelled ns=y.
        let rule = PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: Some(labels(&[("pod", "b")])),
                namespace_selector: Some(labels(&[("ns", "y")])),
                ip_block: None,
            }],
            ports: vec![],
        };
        let p = policy("x", "allow-y-b", labels(&[("pod", "a")]), Some(vec![rule]), None);
        let mut rows = [".XXXXXXXX"; 9];
        rows[4] = "XXXXXXXXX"; // y/b
        assert_eq!(matrix(vec![p], api::Protocol::Tcp, 80), expect(rows));
    }

    #[test]
    fn match_expressions_not_in_and_metadata_name() {
        // x/a accepts every pod of namespaces whose name is not y.
        let selector = LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![LabelRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: SelectorOperator::NotIn as i32,
                values: vec!["y".into()],
            }],
        };
        let rule = PolicyRule {
            peers: vec![PolicyPeer { pod_selector: None, namespace_selector: Some(selector), ip_block: None }],
            ports: vec![],
        };
        let p = policy("x", "not-y", labels(&[("pod", "a")]), Some(vec![rule]), None);
        let mut rows = ["XXXXXXXXX"; 9];
        for row in &mut rows[3..6] {
            *row = ".XXXXXXXX";
        }
        assert_eq!(matrix(vec![p], api::Protocol::Tcp, 80), expect(rows));
    }

    #[test]
    fn ports_by_number_name_and_range_and_the_union_of_policies() {
        // x/a: one policy allows TCP 81 by name, another TCP 80-80 as a range: both open.
        let by_name = PolicyRule {
            peers: vec![],
            ports: vec![PolicyPort {
                protocol: api::Protocol::Tcp as i32,
                port: Some(api::policy_port::Port::Name("serve-81-tcp".into())),
                end_port: 0,
            }],
        };
        let by_range = PolicyRule { peers: vec![], ports: vec![PolicyPort { end_port: 80, ..tcp(79) }] };
        let policies = || {
            vec![
                policy("x", "named", labels(&[("pod", "a")]), Some(vec![by_name.clone()]), None),
                policy("x", "range", labels(&[("pod", "a")]), Some(vec![by_range.clone()]), None),
            ]
        };
        assert_eq!(matrix(policies(), api::Protocol::Tcp, 81), expect(ALL));
        assert_eq!(matrix(policies(), api::Protocol::Tcp, 80), expect(ALL));
        assert_eq!(matrix(policies(), api::Protocol::Udp, 80), expect([".XXXXXXXX"; 9]));
        // The verdict names the rule that allowed it.
        let compiled = compile(&model(policies()), "node-0");
        let xa = compiled.iter().find(|e| e.pod == "x/a").unwrap();
        let from = PeerInfo { ip: ip(1, 1), identity: Some(1004), named_ports: &[], principal: None };
        let Verdict::Allowed(Some(rule)) = xa.ingress.verdict(from, api::Protocol::Tcp, 81, Some(&xa.named_ports))
        else {
            panic!("allowed")
        };
        assert_eq!(rule.to_string(), "NetworkPolicy x/named ingress rule 0");
        let Verdict::Denied(Cause::Isolation(by)) =
            xa.ingress.verdict(from, api::Protocol::Tcp, 82, Some(&xa.named_ports))
        else {
            panic!("denied")
        };
        assert_eq!(by.len(), 2, "both policies isolate x/a: {by:?}");
    }

    #[test]
    fn egress_ip_block_with_except() {
        // x/a may reach 10.244.1.0/24 (namespace y) but not y/b.
        let rule = PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: None,
                namespace_selector: None,
                ip_block: Some(api::IpBlock { cidr: "10.244.1.0/24".into(), except: vec![format!("{}/32", ip(1, 1))] }),
            }],
            ports: vec![],
        };
        let p = policy("x", "egress-block", labels(&[("pod", "a")]), None, Some(vec![rule]));
        let mut rows = ["XXXXXXXXX"; 9];
        rows[0] = "...X.X...";
        assert_eq!(matrix(vec![p], api::Protocol::Tcp, 80), expect(rows));
    }

    #[test]
    fn egress_only_policy_leaves_ingress_open() {
        let p = policy("x", "deny-egress", labels(&[("pod", "a")]), None, Some(vec![]));
        let mut rows = ["XXXXXXXXX"; 9];
        rows[0] = ".........";
        assert_eq!(matrix(vec![p], api::Protocol::Tcp, 80), expect(rows));
    }

    fn mesh(ns: &str, name: &str, priority: u32, audit: bool, ingress: Vec<api::MeshRule>) -> api::MeshPolicy {
        api::MeshPolicy {
            namespace: ns.into(),
            name: name.into(),
            pod_selector: Some(labels(&[("pod", "a")])),
            namespace_selector: (ns.is_empty()).then(|| labels(&[("ns", "x")])),
            priority,
            audit,
            ingress,
            egress: vec![],
        }
    }

    fn from_namespace(action: api::RuleAction, ns: &str, pod: Option<&str>) -> api::MeshRule {
        api::MeshRule {
            action: action as i32,
            peers: vec![PolicyPeer {
                pod_selector: pod.map(|p| labels(&[("pod", p)])),
                namespace_selector: Some(labels(&[("ns", ns)])),
                ip_block: None,
            }],
            ports: vec![],
            principals: vec![],
            http: vec![],
        }
    }

    /// Ingress to x/a on TCP 80 from each of the 9 pods, as the oracle and the kernel form
    /// judge it, for a client that proved its identity (`proved`) or not: `X` allowed, `.`
    /// denied. Each pod's service account is its name.
    fn principal_row(mesh_policies: Vec<api::MeshPolicy>, proved: bool) -> String {
        use crate::policy_table::{LocalEndpoint, Numbering, kernel_form, tests::judge_as};
        use mesh_common::{
            identity::{SpiffeId, TrustDomain},
            policy::{ALLOW, INGRESS},
        };
        let mut set = ResourceSet::default();
        for ns in 0..3 {
            for (pod, name) in PODS.iter().enumerate() {
                let w = api::Workload { service_account: (*name).into(), ..workload(ns, pod) };
                set.insert(api::Resource { kind: Some(resource::Kind::Workload(Box::new(w))) });
            }
        }
        for policy in mesh_policies {
            set.insert(api::Resource { kind: Some(resource::Kind::MeshPolicy(Box::new(policy))) });
        }
        let compiled = compile(&set, "node-0");
        let xa = compiled.iter().find(|e| e.pod == "x/a").unwrap();
        let principals = crate::principals::Numbering::of(&set, &TrustDomain::default()).unwrap();
        let workloads = workloads(&set);
        let kernel = kernel_form(
            &[LocalEndpoint { ifindex: 10, policy: xa }],
            &workloads,
            &mut Numbering::default(),
            &principals,
        );
        let mut row = String::new();
        for s in 0..9 {
            let id = SpiffeId::new(TrustDomain::default(), NAMESPACES[s / 3], PODS[s % 3]).unwrap();
            let from = PeerInfo {
                ip: ip(s / 3, s % 3),
                identity: Some(1000 + s as u32),
                named_ports: &[],
                principal: proved.then_some(&id),
            };
            let oracle = xa.ingress.verdict(from, api::Protocol::Tcp, 80, Some(&xa.named_ports)).passes();
            let number = proved.then(|| principals.number(&id)).flatten().map(crate::principals::identity);
            let kernel = judge_as(&kernel, 10, INGRESS, ip(s / 3, s % 3), number, mesh_common::proto::TCP, 80) == ALLOW;
            assert_eq!(oracle, kernel, "the kernel form disagrees with the oracle for source {s}");
            row.push(if oracle { 'X' } else { '.' });
        }
        row
    }

    #[test]
    fn a_principal_rule_allows_only_clients_that_proved_that_identity() {
        let principal = |ns: &str, sa: &str| api::Principal {
            trust_domain: String::new(),
            namespace: ns.into(),
            service_account: sa.into(),
        };
        let only_yb = api::MeshRule {
            action: api::RuleAction::Allow as i32,
            principals: vec![principal("y", "b"), principal("z", "nobody")],
            ..Default::default()
        };
        let policies = vec![mesh("x", "only-y-b", 100, false, vec![only_yb])];
        assert_eq!(principal_row(policies.clone(), true), "....X....");
        // The same addresses without a proof: the rule matches nobody, and it isolates x/a.
        assert_eq!(principal_row(policies.clone(), false), ".........");
        // A deny rule by principal, under an allow-all: only y/b's proven connections drop.
        let deny_yb = api::MeshRule {
            action: api::RuleAction::Deny as i32,
            principals: vec![principal("y", "b")],
            ..Default::default()
        };
        let allow_all = api::MeshRule { action: api::RuleAction::Allow as i32, ..Default::default() };
        let policies = vec![mesh("x", "deny-y-b", 100, false, vec![deny_yb, allow_all])];
        assert_eq!(principal_row(policies.clone(), true), "XXXX.XXXX");
        assert_eq!(principal_row(policies, false), "XXXXXXXXX");
        // Another trust domain's principal is never matched here.
        let foreign = api::MeshRule {
            action: api::RuleAction::Allow as i32,
            principals: vec![api::Principal { trust_domain: "example.org".into(), ..principal("y", "b") }],
            ..Default::default()
        };
        assert_eq!(principal_row(vec![mesh("x", "foreign", 100, false, vec![foreign])], true), ".........");
    }

    /// HTTP rules: at L4 (the oracle and the kernel alike) an allow rule with requests allows
    /// its principals' connections and a deny rule with requests denies none; per request,
    /// the first rule matching the connection and the request decides, and a request no rule
    /// matches on an isolated pod is denied.
    #[test]
    fn http_rules_decide_requests_and_only_allow_rules_reach_the_kernel() {
        use mesh_common::identity::{SpiffeId, TrustDomain};
        let principal = |ns: &str, sa: &str| api::Principal {
            trust_domain: String::new(),
            namespace: ns.into(),
            service_account: sa.into(),
        };
        let port80 = vec![PolicyPort {
            protocol: api::Protocol::Tcp as i32,
            port: Some(api::policy_port::Port::Number(80)),
            end_port: 0,
        }];
        let get_public = api::HttpRequestMatch {
            methods: vec!["GET".into()],
            paths: vec![api::HttpPathMatch { prefix: true, value: "/public".into() }],
            headers: vec![],
        };
        let allow_yb = api::MeshRule {
            action: api::RuleAction::Allow as i32,
            principals: vec![principal("y", "b")],
            ports: port80.clone(),
            http: vec![get_public],
            ..Default::default()
        };
        let policies = vec![mesh("x", "public-for-y-b", 100, false, vec![allow_yb])];
        assert_eq!(principal_row(policies.clone(), true), "....X....", "the connection is allowed at L4");
        let deny_admin = api::MeshRule {
            action: api::RuleAction::Deny as i32,
            principals: vec![principal("y", "b")],
            ports: port80,
            http: vec![api::HttpRequestMatch {
                paths: vec![api::HttpPathMatch { prefix: false, value: "/admin".into() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            principal_row(vec![mesh("x", "no-admin", 100, false, vec![deny_admin.clone()])], true),
            "XXXXXXXXX",
            "a deny rule for requests denies no connection"
        );

        let mut set = ResourceSet::default();
        for ns in 0..3 {
            for (pod, name) in PODS.iter().enumerate() {
                let w = api::Workload { service_account: (*name).into(), ..workload(ns, pod) };
                set.insert(api::Resource { kind: Some(resource::Kind::Workload(Box::new(w))) });
            }
        }
        for policy in [policies[0].clone(), mesh("x", "no-admin", 50, false, vec![deny_admin])] {
            set.insert(api::Resource { kind: Some(resource::Kind::MeshPolicy(Box::new(policy))) });
        }
        let compiled = compile(&set, "node-0");
        let xa = compiled.iter().find(|e| e.pod == "x/a").unwrap();
        let yb = SpiffeId::new(TrustDomain::default(), "y", "b").unwrap();
        let from = PeerInfo { ip: ip(1, 1), identity: Some(1004), named_ports: &[], principal: Some(&yb) };
        let headers = http::HeaderMap::new();
        let verdict = |method: &str, path: &str| {
            let request = HttpRequest { method, path, headers: &headers };
            xa.ingress.request_verdict(from, 80, &xa.named_ports, &request)
        };
        assert!(verdict("GET", "/public").passes());
        assert!(verdict("GET", "/public/x").passes());
        assert!(!verdict("GET", "/publicity").passes(), "a prefix takes whole path elements");
        assert!(!verdict("POST", "/public").passes(), "no rule matches: the pod is isolated");
        let denied = verdict("GET", "/admin");
        assert!(
            matches!(&denied, Verdict::Denied(Cause::Rule(r)) if r.policy.name == "no-admin"),
            "the deny rule decides first (priority 50): {denied:?}"
        );
    }

    #[test]
    fn mesh_policies_deny_over_allows_by_priority_and_audit_without_enforcing() {
        use api::RuleAction::{Allow, Deny};
        let allow_all = PolicyRule { peers: vec![], ports: vec![] };
        let np = || policy("x", "allow-all", labels(&[("pod", "a")]), Some(vec![allow_all.clone()]), None);
        // A deny wins over a NetworkPolicy allow: y cannot reach x/a.
        let deny_y = mesh("x", "deny-y", 100, false, vec![from_namespace(Deny, "y", None)]);
        let mut rows = ["XXXXXXXXX"; 9];
        rows[3..6].fill(".XXXXXXXX");
        assert_eq!(mesh_matrix(vec![np()], vec![deny_y.clone()], api::Protocol::Tcp, 80), expect(rows));
        // A lower priority allow beats it for y/b; its allow isolates x/a: others are denied.
        let allow_yb = mesh("x", "allow-y-b", 50, false, vec![from_namespace(Allow, "y", Some("b"))]);
        let mut rows = [".XXXXXXXX"; 9];
        rows[4] = "XXXXXXXXX";
        assert_eq!(mesh_matrix(vec![], vec![deny_y.clone(), allow_yb], api::Protocol::Tcp, 80), expect(rows));
        // The same deny in audit mode, cluster-scoped: everything passes, y's flows as audit.
        let audit = mesh("", "audit-y", 100, true, vec![from_namespace(Deny, "y", None)]);
        let mut rows = ["XXXXXXXXX"; 9];
        rows[3..6].fill("AXXXXXXXX");
        assert_eq!(mesh_matrix(vec![np()], vec![audit.clone()], api::Protocol::Tcp, 80), expect(rows));
        // Audit never relaxes: an enforced deny still drops what an audit allow would allow.
        let audit_allow = mesh("", "audit-allow-y", 10, true, vec![from_namespace(Allow, "y", None)]);
        let mut rows = ["XXXXXXXXX"; 9];
        rows[3..6].fill(".XXXXXXXX");
        assert_eq!(mesh_matrix(vec![np()], vec![deny_y, audit_allow.clone()], api::Protocol::Tcp, 80), expect(rows));
        // An audit-mode allow alone isolates in audit: what it does not allow is reported.
        let mut rows = ["AXXXXXXXX"; 9];
        rows[3..6].fill("XXXXXXXXX");
        assert_eq!(mesh_matrix(vec![], vec![audit_allow], api::Protocol::Tcp, 80), expect(rows));
    }

    #[test]
    fn selector_operators() {
        let get = |k: &str| (k == "app").then_some("web");
        let req = |operator: SelectorOperator, values: &[&str]| LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![LabelRequirement {
                key: "app".into(),
                operator: operator as i32,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        };
        assert!(selects(&req(SelectorOperator::In, &["web", "db"]), get));
        assert!(!selects(&req(SelectorOperator::NotIn, &["web"]), get));
        assert!(selects(&req(SelectorOperator::Exists, &[]), get));
        assert!(!selects(&req(SelectorOperator::DoesNotExist, &[]), get));
        assert!(selects(&req(SelectorOperator::DoesNotExist, &[]), |_| None));
        assert!(selects(&req(SelectorOperator::NotIn, &["web"]), |_| None));
        assert!(selects(&LabelSelector::default(), |_| None), "an empty selector selects everything");
    }
}
