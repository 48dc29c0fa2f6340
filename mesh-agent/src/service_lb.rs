//! Programs the service maps that `connect4` reads.
//!
//! Each update of a service is atomic for the datapath: its new backend set is written under
//! a fresh revision, then the service entry is swapped to it in one map update, then the old
//! revision's slots are deleted. A connection sees the old set or the new one, never a mix.

use std::{collections::HashSet, net::Ipv4Addr};

use aya::maps::{HashMap, Map, MapData, MapError};
use mesh_common::{
    maps,
    service_lb::{Backend, BackendKey, ServiceEntry, ServiceKey},
};

/// A service with its backends resolved to addresses, ready for the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedService {
    pub name: String,
    pub key: ServiceKey,
    pub backends: Vec<Backend>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceLbError {
    #[error("map {map} is not in the loaded object (was the agent built from another mesh-ebpf?)")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type or layout: {source}")]
    MapType { map: &'static str, source: MapError },
    #[error(
        "service {service}: writing map {map} failed: {source}; if the map is full, raise its capacity. The service keeps its previous backends"
    )]
    Write { service: String, map: &'static str, source: MapError },
}

/// The two service maps, owned, and a copy of what they hold so that reconciling compares in
/// memory and writes only what changed.
pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
    next_revision: u32,
    programmed: std::collections::HashMap<ServiceKey, (ServiceEntry, Vec<Backend>)>,
}

/// What [`ServiceTable::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl ServiceTable {
    /// Takes the maps; existing entries (pinned by an earlier agent) are kept and reconciled.
    pub fn new(services: Map, backends: Map) -> Result<Self, ServiceLbError> {
        let services: HashMap<MapData, ServiceKey, ServiceEntry> =
            HashMap::try_from(services).map_err(|source| ServiceLbError::MapType { map: maps::SERVICES, source })?;
        let backends =
            HashMap::try_from(backends).map_err(|source| ServiceLbError::MapType { map: maps::BACKENDS, source })?;
        let mut programmed = std::collections::HashMap::new();
        for (key, entry) in services.iter().filter_map(Result::ok) {
            let slots: Option<Vec<Backend>> = (0..u32::from(entry.count))
                .map(|slot| backends.get(&BackendKey { revision: entry.revision, slot }, 0).ok())
                .collect();
            // A service whose slots are incomplete (a crash mid-write) is rewritten by apply.
            programmed.insert(key, (entry, slots.unwrap_or_default()));
        }
        let next_revision =
            programmed.values().map(|(entry, _)| entry.revision).max().map_or(1, |r| r.wrapping_add(1).max(1));
        Ok(Self { services, backends, next_revision, programmed })
    }

    /// How many service frontends the maps hold.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// Makes the maps hold exactly `desired`. A service whose write fails keeps its previous
    /// backends; the first such error is returned after the others were applied.
    pub fn apply(&mut self, desired: &[ResolvedService]) -> Result<ApplyStats, ServiceLbError> {
        let mut stats = ApplyStats::default();
        let mut first_error = None;
        for service in desired {
            match self.apply_one(service) {
                Ok(true) => stats.updated += 1,
                Ok(false) => stats.unchanged += 1,
                Err(err) => {
                    tracing::error!("{err}");
                    first_error.get_or_insert(err);
                }
            }
        }
        let wanted: HashSet<ServiceKey> = desired.iter().map(|s| s.key).collect();
        let stale: Vec<ServiceKey> = self.programmed.keys().filter(|key| !wanted.contains(key)).copied().collect();
        for key in stale {
            // The entry goes first, so no connection can pick a slot that is being deleted.
            let (entry, _) = self.programmed.remove(&key).expect("listed above");
            let _ = self.services.remove(&key);
            self.delete_slots(entry);
            stats.removed += 1;
        }
        first_error.map_or(Ok(stats), Err)
    }

    /// The backends `connect4` currently picks from for `key`, in slot order.
    pub fn backends_of(&self, key: &ServiceKey) -> Option<&[Backend]> {
        self.programmed.get(key).map(|(_, backends)| backends.as_slice())
    }

    fn apply_one(&mut self, service: &ResolvedService) -> Result<bool, ServiceLbError> {
        if self.backends_of(&service.key) == Some(service.backends.as_slice()) {
            return Ok(false);
        }
        let previous = self.programmed.get(&service.key).map(|(entry, _)| *entry);
        let revision = self.allocate_revision();
        let count = u16::try_from(service.backends.len()).expect("validated: at most u16::MAX backends");
        let entry = ServiceEntry { revision, count, flags: 0 };
        for (slot, backend) in (0u32..).zip(&service.backends) {
            if let Err(source) = self.backends.insert(&BackendKey { revision, slot }, backend, 0) {
                self.delete_slots(ServiceEntry { count: slot as u16, ..entry });
                return Err(ServiceLbError::Write { service: service.name.clone(), map: maps::BACKENDS, source });
            }
        }
        if let Err(source) = self.services.insert(&service.key, &entry, 0) {
            self.delete_slots(entry);
            return Err(ServiceLbError::Write { service: service.name.clone(), map: maps::SERVICES, source });
        }
        if let Some(previous) = previous {
            self.delete_slots(previous);
        }
        self.programmed.insert(service.key, (entry, service.backends.clone()));
        tracing::info!(
            service = %service.name,
            frontend = %frontend(&service.key),
            backends = %service.backends.iter().map(backend_addr).collect::<Vec<_>>().join(","),
            revision,
            "service programmed"
        );
        Ok(true)
    }

    fn allocate_revision(&mut self) -> u32 {
        let revision = self.next_revision;
        self.next_revision = self.next_revision.wrapping_add(1).max(1);
        revision
    }

    fn delete_slots(&mut self, entry: ServiceEntry) {
        for slot in 0..u32::from(entry.count) {
            let _ = self.backends.remove(&BackendKey { revision: entry.revision, slot });
        }
    }
}

/// `ip:port/proto` of a service key, for logs.
pub fn frontend(key: &ServiceKey) -> String {
    let proto = if key.proto == mesh_common::proto::UDP { "UDP" } else { "TCP" };
    format!("{}:{}/{proto}", Ipv4Addr::from(key.addr.to_ne_bytes()), u16::from_be(key.port))
}

/// `ip:port` of a backend, for logs.
pub fn backend_addr(backend: &Backend) -> String {
    format!("{}:{}", Ipv4Addr::from(backend.addr.to_ne_bytes()), u16::from_be(backend.port))
}
