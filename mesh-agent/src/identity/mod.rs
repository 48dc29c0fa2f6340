//! Workload certificates: for every identity (namespace + service account) of a pod on this
//! node, the agent makes a key and a CSR, has the operator's workload CA sign it
//! (`ca_client`), keeps key and chain in memory only (keys never leave the node, and never
//! touch its disk), and renews each certificate when half of its lifetime is left
//! (`renewal`). Identities whose last pod left the node are forgotten.
//!
//! What holds them is [`Certificates`], shared by the renewal task, the agent's status
//! (`meshctl status`), its metrics, and (next) the mTLS tunnel.

pub mod ca_client;
pub mod renewal;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use mesh_common::{
    api::{self, resource},
    identity::{SpiffeId, TrustDomain},
    model::ResourceSet,
};
use tokio::sync::watch;

/// One identity's certificate, as the CA issued it.
#[derive(Clone)]
pub struct Issued {
    /// PKCS#8 PEM; made on this node and kept in this process.
    pub key_pem: String,
    /// PEM, leaf first, the workload CA's root last.
    pub chain_pem: Vec<String>,
    /// The leaf's serial number in hex.
    pub serial: String,
    /// The leaf's issuer (the workload CA's subject).
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Issued {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What the agent has for one identity.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The certificate in use; kept while its renewal fails, until it expires.
    pub issued: Option<Arc<Issued>>,
    /// When the renewal task next asks the CA (for a new identity: at once).
    pub due: Instant,
    /// The same as a wall-clock time, for people (unix seconds).
    pub due_unix: i64,
    /// Failed requests since the last certificate.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// The agent's workload certificates. Cheap to clone (shared).
#[derive(Clone)]
pub struct Certificates {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: TrustDomain,
    /// Off without mutual TLS to the operator: the CA serves only over it.
    enabled: bool,
    slots: Mutex<BTreeMap<SpiffeId, Slot>>,
    wanted: watch::Sender<BTreeSet<SpiffeId>>,
    /// `want_for` was called: the wanted set is the model's, not the empty start.
    wanted_known: std::sync::atomic::AtomicBool,
    /// The workload CA's trust bundle, as the operator streams it (PEM roots).
    bundle: Mutex<Vec<String>>,
    issued_total: AtomicU64,
    failed_total: AtomicU64,
}

impl Certificates {
    pub fn new(trust_domain: TrustDomain, enabled: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                trust_domain,
                enabled,
                slots: Mutex::default(),
                wanted: watch::Sender::new(BTreeSet::new()),
                wanted_known: std::sync::atomic::AtomicBool::new(false),
                bundle: Mutex::default(),
                issued_total: AtomicU64::new(0),
                failed_total: AtomicU64::new(0),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.trust_domain
    }

    /// Sets the identities this node needs (those of its pods in `model`): the renewal task
    /// gets certificates for new ones and forgets the ones no pod has any more. Returns the
    /// pods whose identity could not be formed (invalid names), for the log.
    pub fn want_for(&self, model: &ResourceSet, node: &str) -> Vec<String> {
        let (wanted, invalid) = local_identities(model, node, &self.inner.trust_domain);
        self.inner.wanted.send_if_modified(|current| {
            let changed = *current != wanted;
            *current = wanted;
            changed
        });
        self.inner.wanted_known.store(true, Ordering::Relaxed);
        invalid
    }

    /// Whether the agent knows which identities its pods need and holds a valid certificate
    /// for every one of them.
    pub fn held(&self) -> bool {
        if !self.inner.wanted_known.load(Ordering::Relaxed) {
            return false;
        }
        let wanted = self.inner.wanted.borrow().clone();
        wanted.iter().all(|identity| self.get(identity).is_some())
    }

    /// Waits until [`Self::held`], for at most `timeout`; whether they are. The tunnel's
    /// listeners accept only then: a connection waits in the queue (a new agent beside an old
    /// one, or a first start) rather than being reset for want of a certificate.
    pub async fn wait_held(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.held() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// The certificate for `identity`, if the agent holds one that has not expired.
    pub fn get(&self, identity: &SpiffeId) -> Option<Arc<Issued>> {
        let slots = self.inner.slots.lock().expect("never poisoned");
        slots.get(identity)?.issued.clone().filter(|issued| issued.not_after > unix_now())
    }

    /// The workload CA's roots this agent trusts, once each, as PEM: the CA's trust bundle
    /// (every root of a rotation under way, from the operator's snapshot) and the root (last)
    /// of every chain it holds. So during a rotation a peer's chain to the new root is trusted
    /// before this agent holds one, and to the old root until the bundle drops it and no chain
    /// of this agent ends in it.
    pub fn roots(&self) -> Vec<String> {
        let mut roots = self.inner.bundle.lock().expect("never poisoned").clone();
        let slots = self.inner.slots.lock().expect("never poisoned");
        roots.extend(slots.values().filter_map(|slot| slot.issued.as_ref()?.chain_pem.last().cloned()));
        roots.sort();
        roots.dedup();
        roots
    }

    /// Sets the CA's trust bundle (from a full snapshot of the state stream).
    pub fn set_bundle(&self, roots: Vec<String>) {
        *self.inner.bundle.lock().expect("never poisoned") = roots;
    }

    /// The subjects of [`Self::roots`], for the status.
    pub fn root_subjects(&self) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .roots()
            .iter()
            .filter_map(|pem| {
                let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
                let cert = pem.parse_x509().ok()?;
                Some(cert.subject().to_string())
            })
            .collect();
        subjects.sort();
        subjects
    }

    /// Every identity and its state, in order.
    pub fn snapshot(&self) -> Vec<(SpiffeId, Slot)> {
        let slots = self.inner.slots.lock().expect("never poisoned");
        slots.iter().map(|(id, slot)| (id.clone(), slot.clone())).collect()
    }

    /// Certificates issued and requests failed since the agent started.
    pub fn request_counts(&self) -> (u64, u64) {
        (self.inner.issued_total.load(Ordering::Relaxed), self.inner.failed_total.load(Ordering::Relaxed))
    }

    /// For the status: one line of state per identity.
    pub fn status(&self) -> Vec<api::WorkloadCertificate> {
        let now = unix_now();
        self.snapshot()
            .into_iter()
            .map(|(identity, slot)| {
                let issued = slot.issued.as_deref();
                let state = match (issued, &slot.last_error) {
                    (Some(_), None) => "valid",
                    (Some(_), Some(_)) => "renewal failing",
                    (None, None) => "requested",
                    (None, Some(_)) => "failing",
                };
                api::WorkloadCertificate {
                    identity: identity.to_string(),
                    state: state.to_owned(),
                    serial: issued.map(|i| i.serial.clone()).unwrap_or_default(),
                    not_before_unix: issued.map_or(0, |i| i.not_before),
                    not_after_unix: issued.map_or(0, |i| i.not_after),
                    next_request_unix: slot.due_unix.max(now),
                    failures: slot.failures,
                    last_error: slot.last_error.unwrap_or_default(),
                    chain_length: issued.map_or(0, |i| i.chain_pem.len() as u32),
                    issuer: issued.map(|i| i.issuer.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    pub(crate) fn wanted(&self) -> watch::Receiver<BTreeSet<SpiffeId>> {
        self.inner.wanted.subscribe()
    }

    pub(crate) fn with_slots<T>(&self, f: impl FnOnce(&mut BTreeMap<SpiffeId, Slot>) -> T) -> T {
        f(&mut self.inner.slots.lock().expect("never poisoned"))
    }

    pub(crate) fn count(&self, issued: bool) {
        let counter = if issued { &self.inner.issued_total } else { &self.inner.failed_total };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The identities of `node`'s pods in `model`, and the pods whose names make none.
pub fn local_identities(
    model: &ResourceSet,
    node: &str,
    trust_domain: &TrustDomain,
) -> (BTreeSet<SpiffeId>, Vec<String>) {
    let mut identities = BTreeSet::new();
    let mut invalid = Vec::new();
    for resource in model.of_kind(api::Kind::Workload) {
        let Some(resource::Kind::Workload(w)) = &resource.kind else { continue };
        if w.node != node {
            continue;
        }
        match SpiffeId::new(trust_domain.clone(), &w.namespace, &w.service_account) {
            Ok(id) => {
                identities.insert(id);
            }
            Err(err) => invalid.push(format!("{}/{}: {err}", w.namespace, w.name)),
        }
    }
    (identities, invalid)
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pods: &[(&str, &str, &str, &str)]) -> ResourceSet {
        let mut set = ResourceSet::default();
        for (namespace, name, node, service_account) in pods {
            let workload = api::Workload {
                namespace: (*namespace).into(),
                name: (*name).into(),
                node: (*node).into(),
                service_account: (*service_account).into(),
                ..Default::default()
            };
            let resource = api::Resource { kind: Some(resource::Kind::Workload(Box::new(workload))) };
            set.insert(resource);
        }
        set
    }

    #[test]
    fn a_node_wants_the_identities_of_its_own_pods_once_each() {
        let model = model(&[
            ("demo", "web-a", "node-0", "web"),
            ("demo", "web-c", "node-0", "web"),
            ("demo", "client", "node-0", "client"),
            ("demo", "web-b", "node-1", "web"),
            ("demo", "odd", "node-0", "Not_Valid"),
        ]);
        let td: TrustDomain = "example.org".parse().unwrap();
        let (ids, invalid) = local_identities(&model, "node-0", &td);
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(ids, ["spiffe://example.org/ns/demo/sa/client", "spiffe://example.org/ns/demo/sa/web"]);
        assert_eq!(invalid.len(), 1);
        assert!(invalid[0].starts_with("demo/odd: service account \"Not_Valid\""), "{invalid:?}");
        assert!(local_identities(&model, "node-9", &td).0.is_empty());
    }
}
