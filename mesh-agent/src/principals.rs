//! Principals: the client workload identities that MeshPolicy and ClusterMeshPolicy ingress
//! rules name, and how the kernel knows a client by them.
//!
//! A principal rule matches only a client that proved its identity: a connection through the
//! mutual-TLS tunnel (the receiving agent verified the client's certificate, and marks its
//! connection to the pod with the principal's number), or one from a pod of the destination's
//! own node (the node holds that pod's key itself: no wire to protect, and the packet came in
//! on the pod's own interface). Plaintext from anywhere else never matches one.
//!
//! The numbers: every principal of the mesh's trust domain that some rule of the model names,
//! in order, from 1; the kernel's identity of number `n` is
//! [`mesh_common::policy::FIRST_PRINCIPAL_IDENTITY`] + `n`. Every agent computes them from the
//! same model, and the policy table and the tunnel from the same function.

use std::collections::BTreeMap;

use mesh_common::{
    api::{self, Kind, resource},
    identity::{SpiffeId, TrustDomain},
    model::ResourceSet,
    policy::{FIRST_PRINCIPAL_IDENTITY, MAX_PRINCIPALS},
};

/// A client identity a rule names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal {
    /// Empty: the mesh's own.
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Principal {
    pub fn from_api(p: &api::Principal) -> Self {
        Self {
            trust_domain: p.trust_domain.clone(),
            namespace: p.namespace.clone(),
            service_account: p.service_account.clone(),
        }
    }

    /// Whether `id` is this principal.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.namespace == id.namespace()
            && self.service_account == id.service_account()
            && (self.trust_domain.is_empty() || self.trust_domain == id.trust_domain().as_str())
    }

    fn of_trust_domain(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain.is_empty() || self.trust_domain == trust_domain.as_str()
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = if self.trust_domain.is_empty() { "<mesh>" } else { &self.trust_domain };
        write!(f, "spiffe://{domain}/ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policies name {count} distinct principals, more than the {MAX_PRINCIPALS} a node can tell apart: nothing was changed, the previous policy stays in force; name namespaces' service accounts fewer times (or use peers)"
)]
pub struct TooManyPrincipals {
    pub count: usize,
}

/// The principals of the mesh's trust domain that the model's rules name, numbered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    trust_domain: TrustDomain,
    /// (namespace, service account) -> number (1..).
    accounts: BTreeMap<(String, String), u16>,
}

impl Numbering {
    /// Numbers the principals of `trust_domain` named by the ingress rules of every MeshPolicy
    /// and ClusterMeshPolicy of `model` (of another trust domain: never authenticated here, so
    /// not numbered).
    pub fn of(model: &ResourceSet, trust_domain: &TrustDomain) -> Result<Self, TooManyPrincipals> {
        let mut named = std::collections::BTreeSet::new();
        for policy in mesh_policies(model) {
            for rule in &policy.ingress {
                for p in rule.principals.iter().map(Principal::from_api) {
                    if p.of_trust_domain(trust_domain) {
                        named.insert((p.namespace, p.service_account));
                    }
                }
            }
        }
        if named.len() > MAX_PRINCIPALS as usize {
            return Err(TooManyPrincipals { count: named.len() });
        }
        let accounts = named.into_iter().zip(1u16..).collect();
        Ok(Self { trust_domain: trust_domain.clone(), accounts })
    }

    /// The number of the client `id`, if it is of the mesh's trust domain and a rule names it.
    pub fn number(&self, id: &SpiffeId) -> Option<u16> {
        if id.trust_domain() != &self.trust_domain {
            return None;
        }
        self.account(id.namespace(), id.service_account())
    }

    /// The number of a service account of the mesh's trust domain, if a rule names it.
    pub fn account(&self, namespace: &str, service_account: &str) -> Option<u16> {
        self.accounts.get(&(namespace.to_owned(), service_account.to_owned())).copied()
    }

    /// The kernel identity of `principal` (of another trust domain: none).
    pub fn identity(&self, principal: &Principal) -> Option<u32> {
        if !principal.of_trust_domain(&self.trust_domain) {
            return None;
        }
        self.account(&principal.namespace, &principal.service_account).map(identity)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// The kernel identity of principal number `number`.
pub fn identity(number: u16) -> u32 {
    FIRST_PRINCIPAL_IDENTITY + u32::from(number)
}

/// Every MeshPolicy and ClusterMeshPolicy of `model`.
pub fn mesh_policies(model: &ResourceSet) -> impl Iterator<Item = &api::MeshPolicy> {
    model.of_kind(Kind::MeshPolicy).filter_map(|r| match &r.kind {
        Some(resource::Kind::MeshPolicy(p)) => Some(&**p),
        _ => None,
    })
}

/// Whether an ingress rule with principals (of an enforcing or audit-mode policy) applies to
/// pod `w`: then its connections from other nodes go through the tunnel, where the client
/// can prove who it is.
pub fn selected(model: &ResourceSet, w: &api::Workload) -> bool {
    mesh_policies(model)
        .filter(|p| p.ingress.iter().any(|rule| !rule.principals.is_empty()))
        .any(|p| crate::policy::mesh_policy_selects(p, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, principals: &[(&str, &str, &str)]) -> api::Resource {
        let principals = principals
            .iter()
            .map(|(td, ns, sa)| api::Principal {
                trust_domain: (*td).into(),
                namespace: (*ns).into(),
                service_account: (*sa).into(),
            })
            .collect();
        let rule = api::MeshRule { action: api::RuleAction::Allow as i32, principals, ..Default::default() };
        let policy = api::MeshPolicy {
            namespace: "web".into(),
            name: name.into(),
            pod_selector: Some(api::LabelSelector {
                match_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
            ingress: vec![rule],
            ..Default::default()
        };
        api::Resource { kind: Some(resource::Kind::MeshPolicy(Box::new(policy))) }
    }

    fn pod(app: &str) -> api::Workload {
        api::Workload {
            namespace: "web".into(),
            name: app.into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn principals_are_numbered_the_same_from_the_same_model_and_foreign_ones_not_at_all() {
        let mut model = ResourceSet::default();
        model.insert(policy("b", &[("", "demo", "client"), ("example.org", "demo", "other")]));
        model.insert(policy("a", &[("cluster.local", "demo", "client"), ("", "aaa", "first")]));
        let domain = TrustDomain::default();
        let numbering = Numbering::of(&model, &domain).unwrap();
        assert_eq!(numbering.len(), 2, "one account named twice is one principal; another domain's is none");
        assert_eq!(numbering.account("aaa", "first"), Some(1));
        assert_eq!(numbering.account("demo", "client"), Some(2));
        let client = SpiffeId::new(domain.clone(), "demo", "client").unwrap();
        assert_eq!(numbering.number(&client), Some(2));
        let foreign =
            Principal { trust_domain: "example.org".into(), namespace: "demo".into(), service_account: "other".into() };
        assert_eq!(numbering.identity(&foreign), None);
        assert_eq!(numbering.number(&SpiffeId::new("example.org".parse().unwrap(), "demo", "client").unwrap()), None);
        assert!(!foreign.matches(&SpiffeId::new(domain.clone(), "demo", "other").unwrap()));
        assert_eq!(Numbering::of(&model, &domain).unwrap(), numbering);
    }

    #[test]
    fn only_pods_a_principal_rule_selects_are_selected() {
        let mut model = ResourceSet::default();
        assert!(!selected(&model, &pod("web")));
        model.insert(policy("a", &[("", "demo", "client")]));
        assert!(selected(&model, &pod("web")));
        assert!(!selected(&model, &pod("db")));
    }
}
