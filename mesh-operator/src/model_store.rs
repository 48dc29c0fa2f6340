//! The versioned model the operator serves: every committed change gets the next version,
//! is kept in a bounded log (so a reconnecting agent can catch up), and is broadcast to the
//! open streams.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use mesh_common::{
    api::{Resource, ResourceKey, StateUpdate},
    model::Key,
};
use tokio::sync::broadcast;

/// How many updates the log keeps for catching up.
pub const LOG_CAPACITY: usize = 4096;
/// How many updates a slow stream may lag before it is sent a full snapshot instead.
pub const BROADCAST_CAPACITY: usize = 1024;

pub struct ModelStore {
    epoch: String,
    version: u64,
    resources: BTreeMap<Key, Resource>,
    log: VecDeque<Arc<StateUpdate>>,
    sender: broadcast::Sender<Arc<StateUpdate>>,
    /// The workload CA's trusted roots, in every snapshot.
    workload_roots: Vec<String>,
}

/// What a new stream starts with: the updates to send first, and the live feed after them.
pub struct Subscription {
    pub initial: Vec<Arc<StateUpdate>>,
    pub live: broadcast::Receiver<Arc<StateUpdate>>,
}

impl ModelStore {
    /// An empty store of a new epoch (one per operator run).
    pub fn new(epoch: String) -> Self {
        Self {
            epoch,
            version: 0,
            resources: BTreeMap::new(),
            log: VecDeque::new(),
            sender: broadcast::channel(BROADCAST_CAPACITY).0,
            workload_roots: Vec::new(),
        }
    }

    /// Sets the workload CA's trusted roots that every snapshot carries (fixed for an epoch:
    /// the CA's files are read when the operator starts).
    pub fn set_workload_roots(&mut self, roots: Vec<String>) {
        self.workload_roots = roots;
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &Key) -> Option<&Resource> {
        self.resources.get(key)
    }

    /// Whether node `node` runs a workload of `namespace` with service account
    /// `service_account`: what entitles its agent to that identity's certificate.
    pub fn node_runs(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        use mesh_common::api::resource::Kind;
        self.resources.values().any(|resource| {
            matches!(&resource.kind, Some(Kind::Workload(w))
                if w.node == node && w.namespace == namespace && w.service_account == service_account)
        })
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Sets each key to the given resource (`None`: removes it). Unchanged keys are dropped;
    /// if anything is left, it becomes the next version. Returns that version.
    pub fn commit(&mut self, changes: Vec<(Key, Option<Resource>)>) -> Option<u64> {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for (key, resource) in changes {
            match resource {
                Some(resource) if self.resources.get(&key) != Some(&resource) => {
                    self.resources.insert(key, resource.clone());
                    upserts.push(resource);
                }
                None if self.resources.remove(&key).is_some() => {
                    removals.push(ResourceKey { kind: key.0, namespace: key.1, name: key.2 });
                }
                _ => {}
            }
        }
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        self.version += 1;
        let update = Arc::new(StateUpdate {
            epoch: self.epoch.clone(),
            version: self.version,
            full: false,
            upserts,
            removals,
            more: false,
            workload_roots: Vec::new(),
        });
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(update.clone());
        // No receiver is not an error: no agent is connected.
        let _ = self.sender.send(update);
        Some(self.version)
    }

    /// Everything, as one full update at the current version.
    pub fn snapshot(&self) -> StateUpdate {
        StateUpdate {
            epoch: self.epoch.clone(),
            version: self.version,
            full: true,
            upserts: self.resources.values().cloned().collect(),
            removals: Vec::new(),
            more: false,
            workload_roots: self.workload_roots.clone(),
        }
    }

    /// What a stream whose agent last applied (`epoch`, `version`) starts with: the logged
    /// updates after `version` if the epoch is this one and the log reaches back that far,
    /// else a snapshot. Subscribing under the same borrow guarantees nothing falls between.
    pub fn subscribe(&self, epoch: &str, version: u64) -> Subscription {
        let live = self.sender.subscribe();
        let oldest_logged = self.log.front().map_or(self.version + 1, |u| u.version);
        let initial = if epoch == self.epoch && version <= self.version && version + 1 >= oldest_logged {
            self.log.iter().filter(|u| u.version > version).cloned().collect()
        } else {
            vec![Arc::new(self.snapshot())]
        };
        Subscription { initial, live }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::api::{Kind, Service, resource};

    fn service(name: &str, ip: &str) -> (Key, Option<Resource>) {
        let resource = Resource {
            kind: Some(resource::Kind::Service(Service {
                namespace: "ns".into(),
                name: name.into(),
                cluster_ips: vec![ip.into()],
                ..Default::default()
            })),
        };
        ((Kind::Service as i32, "ns".into(), name.into()), Some(resource))
    }

    #[test]
    fn commits_version_only_real_changes() {
        let mut store = ModelStore::new("e1".into());
        assert_eq!(store.commit(vec![service("a", "10.0.0.1")]), Some(1));
        assert_eq!(store.commit(vec![service("a", "10.0.0.1")]), None, "no change, no version");
        assert_eq!(store.commit(vec![service("a", "10.0.0.2"), service("b", "10.0.0.3")]), Some(2));
        let removal = ((Kind::Service as i32, "ns".into(), "b".into()), None);
        assert_eq!(store.commit(vec![removal.clone()]), Some(3));
        assert_eq!(store.commit(vec![removal]), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_current_agent_catches_up_and_others_get_a_snapshot() {
        let mut store = ModelStore::new("e1".into());
        for i in 0..5 {
            store.commit(vec![service(&format!("s{i}"), "10.0.0.1")]);
        }
        let resume = store.subscribe("e1", 3);
        assert_eq!(resume.initial.iter().map(|u| u.version).collect::<Vec<_>>(), vec![4, 5]);
        assert!(resume.initial.iter().all(|u| !u.full));

        let up_to_date = store.subscribe("e1", 5);
        assert!(up_to_date.initial.is_empty());

        for (epoch, version) in [("old", 3), ("e1", 9), ("", 0)] {
            let fresh = store.subscribe(epoch, version);
            assert_eq!(fresh.initial.len(), 1, "{epoch} {version}");
            assert!(fresh.initial[0].full && fresh.initial[0].upserts.len() == 5);
        }
    }

    #[test]
    fn an_agent_behind_the_log_gets_a_snapshot() {
        let mut store = ModelStore::new("e1".into());
        for i in 0..(LOG_CAPACITY + 10) {
            store.commit(vec![service("a", &format!("10.0.{}.{}", i / 256, i % 256))]);
        }
        let behind = store.subscribe("e1", 2);
        assert!(behind.initial.len() == 1 && behind.initial[0].full);
        let recent = store.subscribe("e1", (LOG_CAPACITY as u64) + 5);
        assert_eq!(recent.initial.len(), 5);
    }

    #[test]
    fn live_updates_follow_the_subscription() {
        let mut store = ModelStore::new("e1".into());
        let mut sub = store.subscribe("", 0);
        store.commit(vec![service("a", "10.0.0.1")]);
        assert_eq!(sub.live.try_recv().unwrap().version, 1);
    }
}
