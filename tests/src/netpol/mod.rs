//! The upstream NetworkPolicy e2e model (kubernetes/kubernetes `test/e2e/network/netpol/`),
//! played in the lab: namespaces x, y, z (labelled `ns: <name>`), pods a, b, c in each
//! (labelled `pod: <name>`), every pod serving TCP and UDP on ports 80 and 81 (container
//! ports named `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`) behind a
//! ClusterIP service `s-<ns>-<pod>`. A probe connects from every pod to every pod's service
//! and compares the 9×9 matrix with the expected one. A pod's probe of itself never leaves
//! the pod (its own service resolves to itself at `connect()`), so, as upstream's validation
//! does, the diagonal is not compared.

pub mod model_lab;
pub mod upstream;

use std::collections::BTreeMap;

/// The namespaces of the model.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];

/// A transport protocol a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    /// Not probed on this kernel (no SCTP); cases that only probe SCTP are listed, not run.
    Sctp,
}

/// A pod of the model: `"x/a"`.
pub type PodName = &'static str;

/// Which pods a reachability rule talks about: a namespace (or all), a pod name (or all).
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub namespace: Option<&'static str>,
    pub pod: Option<&'static str>,
}

impl Peer {
    fn matches(&self, pod: &str) -> bool {
        let (ns, name) = pod.split_once('/').expect("pods are ns/name");
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == name)
    }
}

/// Every pod of namespace `ns`.
pub fn in_namespace(ns: &'static str) -> Peer {
    Peer { namespace: Some(ns), pod: None }
}

/// Pod `pod` of namespace `ns`.
pub fn pod(ns: &'static str, pod: &'static str) -> Peer {
    Peer { namespace: Some(ns), pod: Some(pod) }
}

/// Pods named `pod` in every namespace.
pub fn named(pod: &'static str) -> Peer {
    Peer { namespace: None, pod: Some(pod) }
}

/// The expected 9×9 matrix: `from` pod → `to` pod → reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    pub cells: BTreeMap<(String, String), bool>,
}

/// Every pod of the model, `ns/name`.
pub fn all_pods() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

impl Reachability {
    /// Every cell `default`.
    pub fn new(default: bool) -> Self {
        let pods = all_pods();
        let cells = pods.iter().flat_map(|f| pods.iter().map(move |t| ((f.clone(), t.clone()), default))).collect();
        Self { cells }
    }

    /// Sets `from` → `to` (both `ns/pod`).
    pub fn expect(mut self, from: &str, to: &str, allowed: bool) -> Self {
        let cell = self.cells.get_mut(&(from.to_owned(), to.to_owned())).expect("a pod of the model");
        *cell = allowed;
        self
    }

    /// Sets every cell from a pod matching `from` to a pod matching `to` (upstream `ExpectPeer`).
    pub fn expect_peer(mut self, from: Peer, to: Peer, allowed: bool) -> Self {
        for ((f, t), cell) in &mut self.cells {
            if from.matches(f) && to.matches(t) {
                *cell = allowed;
            }
        }
        self
    }

    /// Sets every cell into `to` (upstream `ExpectAllIngress`).
    pub fn expect_all_ingress(mut self, to: Peer, allowed: bool) -> Self {
        for ((_, t), cell) in &mut self.cells {
            if to.matches(t) {
                *cell = allowed;
            }
        }
        self
    }

    /// Sets every cell out of `from` (upstream `ExpectAllEgress`).
    pub fn expect_all_egress(mut self, from: Peer, allowed: bool) -> Self {
        for ((f, _), cell) in &mut self.cells {
            if from.matches(f) {
                *cell = allowed;
            }
        }
        self
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create or replace policies: YAML documents (NetworkPolicy, or the project's MeshPolicy /
    /// ClusterMeshPolicy), separated by `---`. `{ip:x/b}` is replaced by that pod's IP.
    Apply(String),
    /// Delete the policy `namespace/name`.
    Delete { namespace: &'static str, name: &'static str },
    /// Replace a namespace's labels (the `ns: <name>` label is not kept unless listed).
    NamespaceLabels { namespace: &'static str, labels: Vec<(&'static str, &'static str)> },
    /// Replace a pod's labels (`ns/pod`; the `pod: <name>` label is not kept unless listed).
    PodLabels { pod: &'static str, labels: Vec<(&'static str, &'static str)> },
    /// Probe from every pod to every pod's service on `port`/`protocol` and compare.
    Probe { port: u16, protocol: Protocol, expect: Reachability },
}

/// One upstream test (`ginkgo.It`), as steps. The model starts fresh (default labels, no
/// policies) for every case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The upstream test's name.
    pub name: &'static str,
    pub steps: Vec<Step>,
}
