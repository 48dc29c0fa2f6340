//! Helpers on the API's model ([`crate::api`]) that operator and agent share: resource keys
//! and a keyed set of resources that applies updates.

use std::collections::BTreeMap;

use crate::api::{Kind, Resource, ResourceKey, StateUpdate, resource};

/// The name in the operator's server certificate, which agents verify.
pub const OPERATOR_TLS_NAME: &str = "mesh-operator";
/// The files of a TLS bundle directory, as a Kubernetes TLS secret holds them.
pub const TLS_CA_FILE: &str = "ca.crt";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";

/// The state stream's liveness, the same on both ends: each sends an HTTP/2 PING after this
/// much silence (and over an idle connection) ...
pub const STREAM_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// ... and drops the connection when the answer takes longer than this. A half-open
/// connection (the peer's node gone, the peer frozen, a silent network) is noticed within
/// the sum, instead of never.
pub const STREAM_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// An agent's connection attempt (TCP and TLS) gives up after this long and tries again.
pub const STREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An ordered, hashable form of [`ResourceKey`].
pub type Key = (i32, String, String);

impl Resource {
    /// The key of this resource; `None` for an empty resource.
    pub fn key(&self) -> Option<ResourceKey> {
        let (kind, namespace, name) = match self.kind.as_ref()? {
            resource::Kind::Service(s) => (Kind::Service, &s.namespace, &s.name),
            resource::Kind::EndpointSlice(s) => (Kind::EndpointSlice, &s.namespace, &s.name),
            resource::Kind::Workload(w) => (Kind::Workload, &w.namespace, &w.name),
            resource::Kind::NetworkPolicy(p) => (Kind::NetworkPolicy, &p.namespace, &p.name),
            resource::Kind::Node(n) => (Kind::Node, &String::new(), &n.name),
            resource::Kind::MeshPolicy(p) => (Kind::MeshPolicy, &p.namespace, &p.name),
        };
        Some(ResourceKey { kind: kind as i32, namespace: namespace.clone(), name: name.clone() })
    }
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self { kind: kind as i32, namespace: namespace.to_owned(), name: name.to_owned() }
    }

    pub fn ordered(&self) -> Key {
        (self.kind, self.namespace.clone(), self.name.clone())
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = Kind::try_from(self.kind).map_or("Unknown", |k| match k {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Workload => "Workload",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
            Kind::MeshPolicy => "MeshPolicy",
            Kind::Unspecified => "Unspecified",
        });
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

/// The resources an agent (or a test) holds, by key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResourceSet {
    pub resources: BTreeMap<Key, Resource>,
}

impl ResourceSet {
    /// Applies `update` (taking its resources, not copying them: a snapshot can be large);
    /// returns the keys it changed (upserted or removed).
    pub fn apply(&mut self, update: StateUpdate) -> Vec<Key> {
        let mut changed = Vec::new();
        if update.full {
            let fresh: BTreeMap<Key, Resource> =
                update.upserts.into_iter().filter_map(|r| Some((r.key()?.ordered(), r))).collect();
            changed.extend(self.resources.keys().filter(|k| !fresh.contains_key(*k)).cloned());
            changed.extend(fresh.iter().filter(|(k, r)| self.resources.get(*k) != Some(r)).map(|(k, _)| k.clone()));
            self.resources = fresh;
            return changed;
        }
        for key in &update.removals {
            let key = key.ordered();
            if self.resources.remove(&key).is_some() {
                changed.push(key);
            }
        }
        for resource in update.upserts {
            let Some(key) = resource.key() else { continue };
            let key = key.ordered();
            if self.resources.get(&key) != Some(&resource) {
                self.resources.insert(key.clone(), resource);
                changed.push(key);
            }
        }
        changed
    }

    /// The resources of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        let kind = kind as i32;
        self.resources
            .range((kind, String::new(), String::new())..)
            .take_while(move |(k, _)| k.0 == kind)
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Service, Workload};

    fn service(name: &str, ip: &str) -> Resource {
        Resource {
            kind: Some(resource::Kind::Service(Service {
                namespace: "default".into(),
                name: name.into(),
                cluster_ips: vec![ip.into()],
                ..Default::default()
            })),
        }
    }

    fn workload(name: &str) -> Resource {
        Resource {
            kind: Some(resource::Kind::Workload(Workload {
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn deltas_and_snapshots_apply_and_report_what_changed() {
        let mut set = ResourceSet::default();
        let changed = set.apply(StateUpdate {
            version: 1,
            upserts: vec![service("a", "10.96.0.1"), service("b", "10.96.0.2"), workload("p")],
            ..Default::default()
        });
        assert_eq!(changed.len(), 3);
        assert_eq!(set.of_kind(Kind::Service).count(), 2);
        assert_eq!(set.of_kind(Kind::Workload).count(), 1);

        // A delta: one change, one removal, one no-op.
        let changed = set.apply(StateUpdate {
            version: 2,
            upserts: vec![service("a", "10.96.0.9"), workload("p")],
            removals: vec![ResourceKey::new(Kind::Service, "default", "b")],
            ..Default::default()
        });
        assert_eq!(changed.len(), 2, "{changed:?}");

        // A snapshot replaces everything.
        let changed =
            set.apply(StateUpdate { version: 3, full: true, upserts: vec![workload("q")], ..Default::default() });
        assert_eq!(changed.len(), 3, "a and p gone, q new: {changed:?}");
        assert_eq!(set.resources.len(), 1);
    }
}
