//! Programs the service maps that the socket hooks read.
//!
//! Each update of a service is atomic for the datapath: its new backend set is written under
//! a fresh revision, then the service entry is swapped to it in one map update, then the old
//! revision's slots are deleted. A connection sees the old set or the new one, never a mix.
//!
//! An update that would not fit the maps is refused whole, before anything is written: the
//! previous services stay in force and the error says which capacity to raise.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};
use mesh_common::{
    maps,
    service_lb::{Backend, BackendKey, ServiceEntry, ServiceKey},
};

use crate::{
    backend_filter::BackendFilter,
    map_write::{converged, insert_batch},
};

/// A service with its backends resolved to addresses, ready for the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedService {
    pub name: String,
    pub key: ServiceKey,
    pub backends: Vec<Weighted>,
    /// `sessionAffinity: ClientIP` timeout; 0: none.
    pub affinity_timeout_s: u32,
    /// `mesh_common::service_lb::SERVICE_FLAG_*` bits, as `connect4` reads them.
    pub flags: u16,
}

/// A backend and its weight (1 to [`mesh_common::service_lb::MAX_WEIGHT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weighted {
    pub backend: Backend,
    pub weight: u32,
}

/// Map capacities, in entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub services: u32,
    pub backends: u32,
    pub affinity: u32,
    pub reverse: u32,
    pub policy: u32,
    pub identities: u32,
    pub conntrack: u32,
    pub prefilter: u32,
    /// Slots per Maglev table, and tables.
    pub maglev_size: u32,
    pub maglev_tables: u32,
    pub nodeport_flows: u32,
    /// Size of the flow event ring buffer, in bytes.
    pub events_bytes: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: maps::DEFAULT_SERVICES_MAX,
            backends: maps::DEFAULT_BACKENDS_MAX,
            affinity: maps::DEFAULT_AFFINITY_MAX,
            reverse: maps::DEFAULT_REVERSE_MAX,
            policy: maps::DEFAULT_POLICY_MAX,
            identities: maps::DEFAULT_IDENTITIES_MAX,
            conntrack: maps::DEFAULT_CONNTRACK_MAX,
            prefilter: maps::DEFAULT_PREFILTER_MAX,
            maglev_size: mesh_common::nodeport::DEFAULT_MAGLEV_SIZE,
            maglev_tables: maps::DEFAULT_MAGLEV_TABLES,
            nodeport_flows: maps::DEFAULT_NODEPORT_FLOWS_MAX,
            events_bytes: maps::DEFAULT_EVENTS_BYTES,
        }
    }
}

impl Capacities {
    /// Each map's name and configured capacity.
    pub fn by_map(&self) -> [(&'static str, u32); 16] {
        [
            (maps::SERVICES, self.services),
            (maps::BACKENDS, self.backends),
            (maps::BACKEND_ADDRS, self.backends),
            (maps::AFFINITY, self.affinity),
            (maps::REVERSE, self.reverse),
            (maps::POLICY, self.policy),
            (maps::IDENTITIES, self.identities),
            (maps::CONNTRACK, self.conntrack),
            (maps::PREFILTER, self.prefilter),
            (maps::PREFILTER_COUNTS, self.prefilter),
            (maps::NODEPORT_SERVICES, self.services),
            (maps::NODEPORT_RANGES, self.services),
            (maps::MAGLEV, self.maglev_size * self.maglev_tables),
            (maps::NODEPORT_FLOWS, self.nodeport_flows),
            (maps::NODEPORT_REVERSE, self.nodeport_flows),
            (maps::EVENTS, self.events_bytes),
        ]
    }
}

/// The slots of a backend set: each backend fills `weight / gcd(weights)` slots.
pub fn slots(backends: &[Weighted]) -> Vec<Backend> {
    let divisor = backends.iter().map(|b| b.weight.max(1)).reduce(gcd).unwrap_or(1);
    backends.iter().flat_map(|b| std::iter::repeat_n(b.backend, (b.weight.max(1) / divisor) as usize)).collect()
}

/// The addresses of `slots`, each once (a weighted backend fills several slots).
fn distinct(slots: &[Backend]) -> Vec<Backend> {
    let mut addrs = slots.to_vec();
    addrs.sort_unstable_by_key(|b| (b.addr, b.port));
    addrs.dedup();
    addrs
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceLbError {
    #[error("map {map} is not in the loaded object (was the agent built from another mesh-ebpf?)")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type or layout: {source}")]
    MapType { map: &'static str, source: MapError },
    #[error("cannot duplicate the descriptor of map {map}: {source}; raise the agent's open files limit")]
    Fd { map: &'static str, source: std::io::Error },
    #[error(
        "service {service}: writing map {map} failed: {source}; if the map is full, raise its capacity. The service keeps its previous backends"
    )]
    Write { service: String, map: &'static str, source: MapError },
    #[error(
        "the update needs {needed} entries in map {map} but its capacity is {capacity}: raise {key} (or remove services); nothing was applied, the previous services stay in force"
    )]
    Capacity { map: &'static str, needed: u64, capacity: u32, key: &'static str },
    #[error(
        "service {service}: its weighted backends need {slots} slots, more than the {max} one service may have: lower the weights; nothing was applied"
    )]
    TooManySlots { service: String, slots: usize, max: usize },
}

/// The two service maps, owned, and a copy of what they hold so that reconciling compares in
/// memory and writes only what changed.
pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
    /// Every backend address in any service (the reverse lookups' filter), its copy, and how
    /// many programmed frontends hold each address (an address leaves the filter at 0).
    backend_addrs: HashMap<MapData, Backend, u32>,
    /// Descriptors of `backends` and `backend_addrs` for batch writes (`map_write`).
    backends_fd: OwnedFd,
    backend_addrs_fd: OwnedFd,
    known_addrs: HashSet<Backend>,
    /// The bits in front of `backend_addrs` (a superset of `known_addrs`), and whether an
    /// address left since they were last made exact.
    filter: BackendFilter,
    filter_stale: bool,
    addr_refs: std::collections::HashMap<Backend, u32>,
    next_revision: u32,
    programmed: std::collections::HashMap<ServiceKey, (ServiceEntry, Vec<Backend>)>,
    /// Slots of every programmed frontend together (what `check_fits` starts from).
    programmed_slots: u64,
    /// Slots and filter addresses whose removal failed: removed again at the next apply.
    unremoved_slots: Vec<BackendKey>,
    unremoved_addrs: Vec<Backend>,
    capacities: Capacities,
}

/// Up to this many services in one apply, each one programmed is logged at info level.
const LOG_EACH_MAX: usize = 100;

/// What [`ServiceTable::apply`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl ServiceTable {
    /// Takes the maps; existing entries (pinned by an earlier agent) are kept and reconciled.
    pub fn new(
        services: Map,
        backends: Map,
        backend_addrs: Map,
        backend_filter: Map,
        capacities: Capacities,
    ) -> Result<Self, ServiceLbError> {
        let services: HashMap<MapData, ServiceKey, ServiceEntry> =
            HashMap::try_from(services).map_err(|source| ServiceLbError::MapType { map: maps::SERVICES, source })?;
        let backends =
            HashMap::try_from(backends).map_err(|source| ServiceLbError::MapType { map: maps::BACKENDS, source })?;
        let backend_addrs: HashMap<MapData, Backend, u32> = HashMap::try_from(backend_addrs)
            .map_err(|source| ServiceLbError::MapType { map: maps::BACKEND_ADDRS, source })?;
        let duplicate = |map: &MapData, name: &'static str| {
            map.fd().as_fd().try_clone_to_owned().map_err(|source| ServiceLbError::Fd { map: name, source })
        };
        let backends_fd = duplicate(IterableMap::map(&backends), maps::BACKENDS)?;
        let backend_addrs_fd = duplicate(IterableMap::map(&backend_addrs), maps::BACKEND_ADDRS)?;
        let known_addrs: HashSet<Backend> = backend_addrs.keys().filter_map(Result::ok).collect();
        // Made exact for what the set holds before anything reads it through the new programs.
        let filter_error = |source| ServiceLbError::Write {
            service: "(the backend filter)".into(),
            map: maps::BACKEND_FILTER,
            source,
        };
        let mut filter = BackendFilter::new(backend_filter).map_err(filter_error)?;
        filter.rebuild(&known_addrs).map_err(filter_error)?;
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
        let mut addr_refs = std::collections::HashMap::new();
        for (_, slots) in programmed.values() {
            for addr in distinct(slots) {
                *addr_refs.entry(addr).or_insert(0) += 1;
            }
        }
        let programmed_slots = programmed.values().map(|(_, slots)| slots.len() as u64).sum();
        Ok(Self {
            services,
            backends,
            backend_addrs,
            backends_fd,
            backend_addrs_fd,
            known_addrs,
            filter,
            filter_stale: false,
            addr_refs,
            next_revision,
            programmed,
            programmed_slots,
            unremoved_slots: Vec::new(),
            unremoved_addrs: Vec::new(),
            capacities,
        })
    }

    /// How many service frontends the maps hold.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// Makes the maps hold exactly `desired`. An update that does not fit is refused whole
    /// before anything is written. A service whose write still fails keeps its previous
    /// backends; the first such error is returned after the others were applied.
    pub fn apply(&mut self, desired: &[ResolvedService]) -> Result<ApplyStats, ServiceLbError> {
        let planned: Vec<(&ResolvedService, Vec<Backend>)> =
            desired.iter().map(|service| (service, slots(&service.backends))).collect();
        let wanted: HashSet<ServiceKey> = desired.iter().map(|s| s.key).collect();
        let stale: Vec<ServiceKey> = self.programmed.keys().filter(|key| !wanted.contains(key)).copied().collect();
        self.check_fits(&planned, &stale)?;
        let result = self.write(&planned, &stale);
        // Addresses that no frontend holds (left by an earlier agent) leave the filter too.
        let unheld: Vec<Backend> =
            self.known_addrs.iter().filter(|addr| !self.addr_refs.contains_key(*addr)).copied().collect();
        for addr in unheld {
            self.release_addr(addr);
        }
        self.settle_filter();
        result
    }

    /// Changes only the frontends named: `upserts` are programmed (those already holding the
    /// same backends are left alone), `removals` removed. The same guarantees as
    /// [`ServiceTable::apply`]: a change that does not fit is refused whole, before anything
    /// is written. What an EndpointSlice change costs does not grow with the number of
    /// services.
    pub fn update(
        &mut self,
        upserts: &[ResolvedService],
        removals: &[ServiceKey],
    ) -> Result<ApplyStats, ServiceLbError> {
        let planned: Vec<(&ResolvedService, Vec<Backend>)> =
            upserts.iter().map(|service| (service, slots(&service.backends))).collect();
        let upserted: HashSet<ServiceKey> = upserts.iter().map(|s| s.key).collect();
        let removals: Vec<ServiceKey> = removals
            .iter()
            .filter(|key| !upserted.contains(*key) && self.programmed.contains_key(*key))
            .copied()
            .collect();
        self.check_fits(&planned, &removals)?;
        let result = self.write(&planned, &removals);
        self.settle_filter();
        result
    }

    /// Clears the filter bits of addresses that left the set (a failure leaves a superset,
    /// which only costs lookups, and is tried again at the next change).
    fn settle_filter(&mut self) {
        if !self.filter_stale {
            return;
        }
        match self.filter.rebuild(&self.known_addrs) {
            Ok(()) => self.filter_stale = false,
            Err(err) => tracing::warn!("cannot update {}: {err}", maps::BACKEND_FILTER),
        }
    }

    /// Removes `stale` and programs `planned`, in that order (stale slots make room).
    fn write(
        &mut self,
        planned: &[(&ResolvedService, Vec<Backend>)],
        stale: &[ServiceKey],
    ) -> Result<ApplyStats, ServiceLbError> {
        let mut first_error = None;
        let mut stats = ApplyStats::default();
        // Removals that failed last time (each map writer converges when retried:
        // `map_write`).
        for key in std::mem::take(&mut self.unremoved_slots) {
            self.remove_slot(key);
        }
        for addr in std::mem::take(&mut self.unremoved_addrs) {
            if !self.addr_refs.contains_key(&addr) {
                self.release_addr(addr);
            }
        }
        for key in stale {
            // The entry goes first, so no connection can pick a slot that is being deleted. If
            // it cannot go, the service stays programmed and is removed at the next apply.
            if let Err(source) = converged(self.services.remove(key)) {
                let err = ServiceLbError::Write { service: frontend(key), map: maps::SERVICES, source };
                tracing::error!("{err}");
                first_error.get_or_insert(err);
                continue;
            }
            let (entry, slots) = self.programmed.remove(key).expect("listed as programmed");
            self.programmed_slots -= slots.len() as u64;
            self.delete_slots(entry);
            self.drop_refs(&slots);
            stats.removed += 1;
        }
        // Each service's line at info for a small change; a full sync of thousands logs one
        // summary (each line at debug): 10,000 lines took a tenth of a full sync's time.
        let each = planned.len() <= LOG_EACH_MAX;
        for (service, slots) in planned {
            match self.apply_one(service, slots, each) {
                Ok(true) => stats.updated += 1,
                Ok(false) => stats.unchanged += 1,
                Err(err) => {
                    tracing::error!("{err}");
                    first_error.get_or_insert(err);
                }
            }
        }
        if !each && stats.updated > 0 {
            tracing::info!(
                programmed = stats.updated,
                unchanged = stats.unchanged,
                removed = stats.removed,
                "services programmed (each one at debug level)"
            );
        }
        first_error.map_or(Ok(stats), Err)
    }

    /// Puts the addresses of `slots` in the filter (before any connection can be sent to
    /// them); on failure nothing of the service is written.
    fn hold_addrs(&mut self, service: &str, slots: &[Backend]) -> Result<(), ServiceLbError> {
        let new: Vec<Backend> = distinct(slots).into_iter().filter(|addr| !self.known_addrs.contains(addr)).collect();
        // Their bits first: the filter never lacks an address of the set.
        self.filter.add(&new).map_err(|source| ServiceLbError::Write {
            service: service.to_owned(),
            map: maps::BACKEND_FILTER,
            source,
        })?;
        let present = vec![1u32; new.len()];
        let result = insert_batch(self.backend_addrs_fd.as_fd(), &new, &present);
        let written = result.as_ref().map_or_else(|(written, _)| *written, |()| new.len());
        self.known_addrs.extend(&new[..written]);
        result.map_err(|(_, source)| ServiceLbError::Write {
            service: service.to_owned(),
            map: maps::BACKEND_ADDRS,
            source,
        })
    }

    /// One frontend fewer holds each address of `slots`; an address none holds leaves the
    /// filter.
    fn drop_refs(&mut self, slots: &[Backend]) {
        for addr in distinct(slots) {
            let Some(refs) = self.addr_refs.get_mut(&addr) else { continue };
            *refs -= 1;
            if *refs == 0 {
                self.addr_refs.remove(&addr);
                self.release_addr(addr);
            }
        }
    }

    fn release_addr(&mut self, addr: Backend) {
        match converged(self.backend_addrs.remove(&addr)) {
            Ok(()) => {
                self.known_addrs.remove(&addr);
                self.filter_stale = true;
            }
            // Removed again at the next apply.
            Err(err) => {
                tracing::warn!(addr = %backend_addr(&addr), "cannot remove from {}: {err}", maps::BACKEND_ADDRS);
                self.unremoved_addrs.push(addr);
            }
        }
    }

    /// Refuses an update that would overflow a map at any point of applying it. Stale
    /// services are removed first; each changed service then holds its old and its new slots
    /// for a moment, so the peak is the larger of the two per service plus the largest new set.
    fn check_fits(
        &self,
        planned: &[(&ResolvedService, Vec<Backend>)],
        stale: &[ServiceKey],
    ) -> Result<(), ServiceLbError> {
        for (service, slots) in planned {
            if slots.len() > mesh_common::service_lb::MAX_SLOTS {
                return Err(ServiceLbError::TooManySlots {
                    service: service.name.clone(),
                    slots: slots.len(),
                    max: mesh_common::service_lb::MAX_SLOTS,
                });
            }
        }
        // What stays untouched (what is held, less what changes), then what changes: this
        // costs what the change touches, not what the maps hold.
        let touched: HashSet<ServiceKey> = planned.iter().map(|(s, _)| s.key).chain(stale.iter().copied()).collect();
        let (touched_services, touched_slots) = touched
            .iter()
            .filter_map(|key| self.backends_of(key))
            .fold((0u64, 0u64), |(n, slots), backends| (n + 1, slots + backends.len() as u64));
        let kept_slots = self.programmed_slots - touched_slots;
        let services = self.programmed.len() as u64 - touched_services + planned.len() as u64;
        if services > u64::from(self.capacities.services) {
            return Err(ServiceLbError::Capacity {
                map: maps::SERVICES,
                needed: services,
                capacity: self.capacities.services,
                key: crate::config::ENV_SERVICES_MAX,
            });
        }
        let mut steady = kept_slots;
        let mut largest_new = 0u64;
        for (service, slots) in planned {
            let programmed = self.backends_of(&service.key);
            let old = programmed.map_or(0, <[Backend]>::len) as u64;
            let new = slots.len() as u64;
            steady += old.max(new);
            if programmed != Some(slots.as_slice()) {
                largest_new = largest_new.max(new);
            }
        }
        let needed = steady + largest_new;
        if needed > u64::from(self.capacities.backends) {
            return Err(ServiceLbError::Capacity {
                map: maps::BACKENDS,
                needed,
                capacity: self.capacities.backends,
                key: crate::config::ENV_BACKENDS_MAX,
            });
        }
        Ok(())
    }

    /// The backends `connect4` currently picks from for `key`, in slot order.
    pub fn backends_of(&self, key: &ServiceKey) -> Option<&[Backend]> {
        self.programmed.get(key).map(|(_, backends)| backends.as_slice())
    }

    fn apply_one(&mut self, service: &ResolvedService, slots: &[Backend], log: bool) -> Result<bool, ServiceLbError> {
        let previous = self.programmed.get(&service.key).map(|(entry, _)| *entry);
        if previous.is_some_and(|p| p.affinity_timeout_s == service.affinity_timeout_s && p.flags == service.flags)
            && self.backends_of(&service.key) == Some(slots)
        {
            return Ok(false);
        }
        self.hold_addrs(&service.name, slots)?;
        let revision = self.allocate_revision();
        let count = u16::try_from(slots.len()).expect("checked: at most MAX_SLOTS slots");
        let entry = ServiceEntry {
            revision,
            count,
            flags: service.flags,
            affinity_timeout_s: service.affinity_timeout_s,
            _pad: 0,
        };
        let keys: Vec<BackendKey> = (0u32..).take(slots.len()).map(|slot| BackendKey { revision, slot }).collect();
        if let Err((written, source)) = insert_batch(self.backends_fd.as_fd(), &keys, slots) {
            self.delete_slots(ServiceEntry { count: written as u16, ..entry });
            return Err(ServiceLbError::Write { service: service.name.clone(), map: maps::BACKENDS, source });
        }
        if let Err(source) = self.services.insert(&service.key, &entry, 0) {
            self.delete_slots(entry);
            return Err(ServiceLbError::Write { service: service.name.clone(), map: maps::SERVICES, source });
        }
        if let Some(previous) = previous {
            self.delete_slots(previous);
        }
        // The same event at either level (a tracing level is fixed per call site).
        macro_rules! programmed {
            ($level:ident) => {
                tracing::$level!(
                    service = %service.name,
                    frontend = %frontend(&service.key),
                    backends = %service.backends.iter().map(|b| format!("{}*{}", backend_addr(&b.backend), b.weight)).collect::<Vec<_>>().join(","),
                    slots = count,
                    affinity_s = service.affinity_timeout_s,
                    revision,
                    "service programmed"
                )
            };
        }
        if log {
            programmed!(info);
        } else {
            programmed!(debug);
        }
        for addr in distinct(slots) {
            *self.addr_refs.entry(addr).or_insert(0) += 1;
        }
        self.programmed_slots += slots.len() as u64;
        if let Some((_, old)) = self.programmed.insert(service.key, (entry, slots.to_vec())) {
            self.programmed_slots -= old.len() as u64;
            self.drop_refs(&old);
        }
        Ok(true)
    }

    fn allocate_revision(&mut self) -> u32 {
        let revision = self.next_revision;
        self.next_revision = self.next_revision.wrapping_add(1).max(1);
        revision
    }

    fn delete_slots(&mut self, entry: ServiceEntry) {
        for slot in 0..u32::from(entry.count) {
            self.remove_slot(BackendKey { revision: entry.revision, slot });
        }
    }

    /// Removes one slot; a failure is remembered and tried again at the next apply (no
    /// service refers to the slot any more, so it only holds room).
    fn remove_slot(&mut self, key: BackendKey) {
        if let Err(err) = converged(self.backends.remove(&key)) {
            tracing::warn!(revision = key.revision, slot = key.slot, "cannot remove from {}: {err}", maps::BACKENDS);
            self.unremoved_slots.push(key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(last_octet: u8, weight: u32) -> Weighted {
        Weighted { backend: Backend::new([10, 244, 0, last_octet], 80), weight }
    }

    #[test]
    fn weights_become_slots_reduced_by_their_common_divisor() {
        let slots = slots(&[weighted(2, 20), weighted(3, 60)]);
        assert_eq!(slots.len(), 4);
        assert_eq!(slots.iter().filter(|b| **b == weighted(3, 0).backend).count(), 3);
        assert_eq!(super::slots(&[weighted(2, 1), weighted(3, 1)]).len(), 2);
        assert!(super::slots(&[]).is_empty());
    }
}
