//! Helpers on the API's model ([`crate::api`]) that operator and agent share: resource keys
//! and a keyed set of resources that applies updates.

use std::collections::BTreeMap;

use crate::api::{EndpointSlice, Kind, Resource, ResourceKey, StateUpdate, resource};

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
            resource::Kind::PeerAuthentication(p) => (Kind::PeerAuthentication, &p.namespace, &p.name),
            resource::Kind::HttpRoute(r) => (Kind::HttpRoute, &r.namespace, &r.name),
            resource::Kind::GrpcRoute(r) => (Kind::GrpcRoute, &r.namespace, &r.name),
            resource::Kind::BackendTrafficPolicy(p) => (Kind::BackendTrafficPolicy, &p.namespace, &p.name),
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
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::BackendTrafficPolicy => "BackendTrafficPolicy",
            Kind::Unspecified => "Unspecified",
        });
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

/// The size an update is cut at: its parts are about this large (a resource is never cut),
/// so neither end holds a buffer for a whole snapshot of a large cluster.
pub const UPDATE_PART_BYTES: usize = 1 << 20;

/// `update` as the messages that carry it: one, or parts of about [`UPDATE_PART_BYTES`]
/// each with `more` set on all but the last (the removals ride in the last).
pub fn update_parts(update: &StateUpdate) -> Vec<StateUpdate> {
    use prost::Message as _;
    let part = |upserts: Vec<Resource>, removals: Vec<ResourceKey>, more: bool| StateUpdate {
        epoch: update.epoch.clone(),
        version: update.version,
        full: update.full,
        upserts,
        removals,
        more,
        workload_roots: update.workload_roots.clone(),
    };
    let mut parts = Vec::new();
    let (mut upserts, mut bytes) = (Vec::new(), 0);
    for resource in &update.upserts {
        // The field's key and length prefix too.
        let size = 1 + prost::length_delimiter_len(resource.encoded_len()) + resource.encoded_len();
        if !upserts.is_empty() && bytes + size > UPDATE_PART_BYTES {
            parts.push(part(std::mem::take(&mut upserts), Vec::new(), true));
            bytes = 0;
        }
        upserts.push(resource.clone());
        bytes += size;
    }
    parts.push(part(upserts, update.removals.clone(), false));
    parts
}

/// A part that does not continue the update it follows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PartError {
    #[error("a part of update {expected} came with {field} {found}: the operator must send an update's parts in a row")]
    Mismatch { field: &'static str, expected: String, found: String },
    #[error(
        "the parts of update {version} add up to more than {limit} bytes; raise the agent's limit or split the model"
    )]
    TooLarge { version: u64, limit: usize },
}

/// Puts an update's parts back together ([`update_parts`]).
#[derive(Debug, Default)]
pub struct PartAssembler {
    pending: Option<StateUpdate>,
    bytes: usize,
}

impl PartAssembler {
    /// Takes the next message (`bytes`: its encoded size); returns the whole update once its
    /// last part is in. A part that does not match the ones before it, or parts over `limit`
    /// bytes in all, are refused and drop what was gathered.
    pub fn push(&mut self, part: StateUpdate, bytes: usize, limit: usize) -> Result<Option<StateUpdate>, PartError> {
        let Some(mut pending) = self.pending.take() else {
            if part.more {
                self.bytes = bytes;
                self.pending = Some(part);
                return Ok(None);
            }
            return Ok(Some(part));
        };
        let mismatch = |field, expected: String, found: String| Err(PartError::Mismatch { field, expected, found });
        if part.epoch != pending.epoch {
            return mismatch("epoch", pending.epoch, part.epoch);
        }
        if part.version != pending.version {
            return mismatch("version", pending.version.to_string(), part.version.to_string());
        }
        if part.full != pending.full {
            return mismatch("full", pending.full.to_string(), part.full.to_string());
        }
        self.bytes += bytes;
        if self.bytes > limit {
            return Err(PartError::TooLarge { version: pending.version, limit });
        }
        pending.upserts.extend(part.upserts);
        pending.removals.extend(part.removals);
        if part.more {
            self.pending = Some(pending);
            return Ok(None);
        }
        pending.more = false;
        Ok(Some(pending))
    }
}

/// The resources an agent (or a test) holds, by key.
///
/// EndpointSlices are kept encoded (protobuf, exactly as large as their contents) and decoded
/// when read: they are most of what an agent holds and are read only when their service is
/// compiled. At 10,000 services of 10 endpoints the decoded slices took 22 MB of a 45 MB heap
/// (each endpoint's struct, its address list, address and node name are four allocations);
/// encoded they take about 4 MB. Every other kind is read on most updates and stays decoded.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResourceSet {
    decoded: BTreeMap<Key, Resource>,
    encoded: BTreeMap<Key, Box<[u8]>>,
}

/// A resource as [`ResourceSet`] stores it.
#[derive(Debug)]
enum Stored {
    Decoded(Resource),
    Encoded(Box<[u8]>),
}

/// Whether a kind is stored encoded.
fn stored_encoded(kind: i32) -> bool {
    kind == Kind::EndpointSlice as i32
}

impl Stored {
    /// What to keep of `resource` (copied, not the decoded resource itself: see [`ResourceSet::apply`]).
    fn of(key: &Key, resource: &Resource) -> Self {
        use prost::Message as _;
        if stored_encoded(key.0) {
            Self::Encoded(resource.encode_to_vec().into_boxed_slice())
        } else {
            Self::Decoded(resource.clone())
        }
    }
}

/// Decodes an EndpointSlice [`Stored::of`] encoded (which cannot fail: the bytes were made here).
fn slice_of(bytes: &[u8]) -> Option<EndpointSlice> {
    use prost::Message as _;
    let decoded = Resource::decode(bytes);
    debug_assert!(decoded.is_ok(), "a stored resource does not decode: {decoded:?}");
    match decoded.ok()?.kind? {
        resource::Kind::EndpointSlice(slice) => Some(slice),
        _ => None,
    }
}

impl ResourceSet {
    /// Applies `update`; returns the keys it changed (upserted or removed).
    ///
    /// What is kept is a copy, not the decoded resources themselves: prost grows repeated
    /// fields by doubling, so a decoded slice of 10 endpoints holds room for 16, each with
    /// room for 4 addresses (22 MB of an agent's 60 MB heap at 10,000 services of 10
    /// endpoints, measured with heaptrack). A copy is exactly as large as its contents, and
    /// making every copy before the decoded update is freed leaves that update's memory free
    /// in one piece, which the allocator can return (freed piecemeal, it stays as holes
    /// between what is kept).
    pub fn apply(&mut self, update: StateUpdate) -> Vec<Key> {
        let StateUpdate { full, removals, upserts: decoded, .. } = update;
        let upserts: Vec<(Key, Stored)> = decoded
            .iter()
            .filter_map(|r| {
                let key = r.key()?.ordered();
                let stored = Stored::of(&key, r);
                Some((key, stored))
            })
            .collect();
        drop(decoded);
        let mut changed = Vec::new();
        if full {
            let old = std::mem::take(self);
            for (key, stored) in upserts {
                if !old.holds(&key, &stored) {
                    changed.push(key.clone());
                }
                self.put(key, stored);
            }
            changed.extend(old.keys().filter(|k| !self.contains(k)).cloned());
            return changed;
        }
        for key in &removals {
            let key = key.ordered();
            if self.remove(&key) {
                changed.push(key);
            }
        }
        for (key, stored) in upserts {
            if !self.holds(&key, &stored) {
                self.put(key.clone(), stored);
                changed.push(key);
            }
        }
        changed
    }

    /// Adds (or replaces) one resource; an empty one is ignored.
    pub fn insert(&mut self, resource: Resource) {
        if let Some(key) = resource.key() {
            let key = key.ordered();
            let stored = Stored::of(&key, &resource);
            self.put(key, stored);
        }
    }

    /// The resource under `key`, of any kind but EndpointSlice ([`Self::endpoint_slice`]).
    pub fn get(&self, key: &Key) -> Option<&Resource> {
        debug_assert!(!stored_encoded(key.0), "EndpointSlices are read with endpoint_slice");
        self.decoded.get(key)
    }

    /// The resources of one kind but EndpointSlice ([`Self::endpoint_slices`]), in key order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        let kind = kind as i32;
        debug_assert!(!stored_encoded(kind), "EndpointSlices are read with endpoint_slices");
        self.decoded.range((kind, String::new(), String::new())..).take_while(move |(k, _)| k.0 == kind).map(|(_, r)| r)
    }

    /// One EndpointSlice, decoded.
    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        let key = (Kind::EndpointSlice as i32, namespace.to_owned(), name.to_owned());
        slice_of(self.encoded.get(&key)?)
    }

    /// Every HTTPRoute, in key order, then every GRPCRoute (as the HTTPRoute it means).
    pub fn http_routes(&self) -> impl Iterator<Item = &crate::api::HttpRoute> {
        self.of_kind(Kind::HttpRoute).chain(self.of_kind(Kind::GrpcRoute)).filter_map(|r| match &r.kind {
            Some(resource::Kind::HttpRoute(route) | resource::Kind::GrpcRoute(route)) => Some(route.as_ref()),
            _ => None,
        })
    }

    /// Every BackendTrafficPolicy, in key order.
    pub fn backend_traffic_policies(&self) -> impl Iterator<Item = &crate::api::BackendTrafficPolicy> {
        self.of_kind(Kind::BackendTrafficPolicy).filter_map(|r| match &r.kind {
            Some(resource::Kind::BackendTrafficPolicy(policy)) => Some(policy),
            _ => None,
        })
    }

    /// Every EndpointSlice, decoded, in key order.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = EndpointSlice> {
        self.encoded.values().filter_map(|bytes| slice_of(bytes))
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.decoded.len() + self.encoded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        self.decoded.keys().chain(self.encoded.keys())
    }

    fn contains(&self, key: &Key) -> bool {
        self.decoded.contains_key(key) || self.encoded.contains_key(key)
    }

    /// Whether `key` holds exactly `stored`.
    fn holds(&self, key: &Key, stored: &Stored) -> bool {
        match stored {
            Stored::Decoded(resource) => self.decoded.get(key) == Some(resource),
            Stored::Encoded(bytes) => self.encoded.get(key) == Some(bytes),
        }
    }

    fn put(&mut self, key: Key, stored: Stored) {
        match stored {
            Stored::Decoded(resource) => {
                self.decoded.insert(key, resource);
            }
            Stored::Encoded(bytes) => {
                self.encoded.insert(key, bytes);
            }
        }
    }

    /// Removes `key`; whether it was there.
    fn remove(&mut self, key: &Key) -> bool {
        self.decoded.remove(key).is_some() || self.encoded.remove(key).is_some()
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
            kind: Some(resource::Kind::Workload(Box::new(Workload {
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            }))),
        }
    }

    #[test]
    fn a_large_update_goes_in_parts_and_comes_back_whole() {
        use prost::Message as _;
        let update = StateUpdate {
            epoch: "e".into(),
            version: 7,
            full: true,
            upserts: (0..30_000)
                .map(|n| service(&format!("svc-{n}"), &format!("10.96.{}.{}", n / 256, n % 256)))
                .collect(),
            removals: vec![ResourceKey::new(Kind::Service, "default", "gone")],
            more: false,
            workload_roots: vec!["a root".into()],
        };
        let parts = update_parts(&update);
        assert!(parts.iter().all(|p| p.workload_roots == update.workload_roots), "every part has the roots");
        assert!(parts.len() > 1, "{} parts", parts.len());
        let sizes: Vec<usize> = parts.iter().map(|p| p.encoded_len()).collect();
        assert!(sizes.iter().all(|&s| s <= UPDATE_PART_BYTES + 1024), "{sizes:?}");
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more && p.removals.is_empty()));
        let mut assembler = PartAssembler::default();
        let mut whole = None;
        for (n, part) in parts.into_iter().enumerate() {
            let size = sizes[n];
            whole = assembler.push(part, size, usize::MAX).expect("parts in a row");
            assert_eq!(whole.is_some(), n == sizes.len() - 1);
        }
        assert_eq!(whole, Some(update.clone()));

        // A small one is one message; a part from another version is refused, as is too much.
        assert_eq!(update_parts(&StateUpdate { upserts: vec![], ..update.clone() }).len(), 1);
        let mut assembler = PartAssembler::default();
        let first = StateUpdate { more: true, ..update.clone() };
        assert_eq!(assembler.push(first.clone(), 10, 100), Ok(None));
        let err = assembler.push(StateUpdate { version: 8, ..first.clone() }, 10, 100).unwrap_err();
        assert!(err.to_string().contains("version 8"), "{err}");
        assert_eq!(assembler.push(first.clone(), 60, 100), Ok(None));
        assert_eq!(assembler.push(first, 60, 100), Err(PartError::TooLarge { version: 7, limit: 100 }));
    }

    fn slice(name: &str, addresses: &[&str]) -> Resource {
        Resource {
            kind: Some(resource::Kind::EndpointSlice(crate::api::EndpointSlice {
                namespace: "default".into(),
                name: name.into(),
                service: "a".into(),
                endpoints: addresses
                    .iter()
                    .map(|a| crate::api::Endpoint { addresses: vec![(*a).into()], ready: true, ..Default::default() })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn endpoint_slices_are_kept_encoded_and_read_back_whole() {
        let mut set = ResourceSet::default();
        let changed = set.apply(StateUpdate {
            upserts: vec![
                slice("a-1", &["10.0.0.1", "10.0.0.2"]),
                slice("a-2", &["10.0.0.3"]),
                service("a", "10.96.0.1"),
            ],
            ..Default::default()
        });
        assert_eq!(changed.len(), 3);
        assert_eq!(set.len(), 3);
        let Some(resource::Kind::EndpointSlice(expected)) = slice("a-1", &["10.0.0.1", "10.0.0.2"]).kind else {
            unreachable!()
        };
        assert_eq!(set.endpoint_slice("default", "a-1"), Some(expected));
        assert_eq!(set.endpoint_slice("default", "a-3"), None);
        let names: Vec<String> = set.endpoint_slices().map(|s| s.name).collect();
        assert_eq!(names, ["a-1", "a-2"]);
        assert_eq!(set.of_kind(Kind::Service).count(), 1, "other kinds are not mixed in");

        // The same slice again is no change; another address is.
        let changed = set.apply(StateUpdate {
            upserts: vec![slice("a-1", &["10.0.0.1", "10.0.0.2"]), slice("a-2", &["10.0.0.4"])],
            ..Default::default()
        });
        assert_eq!(changed, [(Kind::EndpointSlice as i32, "default".to_owned(), "a-2".to_owned())]);
        assert_eq!(set.endpoint_slice("default", "a-2").unwrap().endpoints[0].addresses, ["10.0.0.4"]);

        // Removed as other kinds are, and a snapshot drops what it lacks.
        let changed = set.apply(StateUpdate {
            removals: vec![ResourceKey::new(Kind::EndpointSlice, "default", "a-2")],
            ..Default::default()
        });
        assert_eq!(changed.len(), 1);
        let changed =
            set.apply(StateUpdate { full: true, upserts: vec![service("a", "10.96.0.1")], ..Default::default() });
        assert_eq!(changed, [(Kind::EndpointSlice as i32, "default".to_owned(), "a-1".to_owned())]);
        assert_eq!(set.endpoint_slices().count(), 0);
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
        assert_eq!(set.len(), 1);
    }
}
