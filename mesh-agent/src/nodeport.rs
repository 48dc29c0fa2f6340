//! Services reached from outside the cluster, for this node: which frontends (this node's
//! addresses × each NodePort, external IPs, load-balancer addresses) lead to which backends
//! ([`compile`]), and the maps that hold them with their Maglev tables ([`NodePortTable`]).
//!
//! Backends are chosen as kube-proxy chooses them for external traffic: ready endpoints
//! (serving and terminating ones when none is ready), all of them for
//! `externalTrafficPolicy: Cluster`, only this node's for `Local` (none: the kernel drops with
//! `SERVICE_BACKEND_NOT_FOUND`, as kube-proxy drops). Pod weights are not applied to external
//! traffic (Maglev gives every backend an equal share).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::AsFd as _,
};

use aya::maps::{
    Array, HashMap as BpfHashMap, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use mesh_common::{
    api::{self, Kind, resource},
    cidr::Ipv4Net,
    maps,
    model::ResourceSet,
    nodeport::{
        Config, FRONTEND_AFFINITY, FRONTEND_DSR, FRONTEND_LOCAL, FRONTEND_RANGES, FRONTEND_REMOTE, Frontend,
        FrontendKey, RANGE_KEY_FRONTEND_BITS, RangeKey, SLOT_LOCAL, Slot,
    },
    proto,
};

use crate::{
    config::{ENV_MAGLEV_TABLES, ENV_SERVICES_MAX},
    map_write::{converged, insert_batch},
};

/// One frontend reached from outside, with its backends (sorted, each marked local or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub key: FrontendKey,
    /// `namespace/name:port`, for errors and logs.
    pub name: String,
    pub backends: Vec<Slot>,
    pub flags: u32,
    /// The service's first cluster IP and port (network order), named in flow events.
    pub service: (u32, u16),
    /// With [`FRONTEND_RANGES`]: the client ranges let in (`loadBalancerSourceRanges`, IPv4).
    pub ranges: Vec<Ipv4Net>,
}

/// This node's frontends from outside, in `model` (whose EndpointSlices `compiler` has indexed
/// by service): `node_addresses` are this node's; with `dsr`, services that do not say
/// otherwise use direct server return. The other nodes' NodePort frontends are there too,
/// flagged [`FRONTEND_REMOTE`]: never balanced here, they name the DSR packets other nodes
/// send.
pub fn compile(
    model: &ResourceSet,
    compiler: &crate::desired::Compiler,
    node: &str,
    node_addresses: &[Ipv4Addr],
    dsr: bool,
) -> Vec<External> {
    let peers: Vec<Ipv4Addr> = model
        .of_kind(Kind::Node)
        .filter_map(|r| match &r.kind {
            Some(resource::Kind::Node(n)) if n.name != node => Some(n),
            _ => None,
        })
        .flat_map(|n| n.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()))
        .filter(|a| !node_addresses.contains(a))
        .collect();
    let mut out = Vec::new();
    for r in model.of_kind(Kind::Service) {
        let Some(resource::Kind::Service(svc)) = &r.kind else { continue };
        let reached = svc.ports.iter().any(|p| p.node_port != 0)
            || !svc.external_ips.is_empty()
            || !svc.load_balancer_ips.is_empty();
        if svc.headless || !reached {
            continue;
        }
        let slices = compiler.slices(model, &svc.namespace, &svc.name);
        // loadBalancerSourceRanges: for the load-balancer addresses, as kube-proxy applies
        // them, per address family (only IPv6 ranges: no IPv4 restriction; an entry that is no
        // IPv6 range restricts, even one that is no range at all: closed, not open).
        let ranges: Vec<Ipv4Net> =
            svc.load_balancer_source_ranges.iter().filter_map(|r| mesh_common::cidr::parse_v4(r.trim())).collect();
        let restricted = svc
            .load_balancer_source_ranges
            .iter()
            .any(|r| r.trim().parse::<mesh_common::cidr::IpNet>().map_or(true, |net| net.addr().is_ipv4()));
        let balanced_flags = if restricted { FRONTEND_RANGES } else { 0 };
        for port in &svc.ports {
            let proto = match api::Protocol::try_from(port.protocol) {
                Ok(api::Protocol::Tcp) => proto::TCP,
                Ok(api::Protocol::Udp) => proto::UDP,
                _ => continue,
            };
            let weights = BTreeMap::new();
            let here = crate::desired::backends(&slices, &svc.namespace, &weights, port, Some(node));
            let local: BTreeSet<(u32, u16)> = here.iter().map(|w| (w.backend.addr, w.backend.port)).collect();
            // `Local`: this node's backends only.
            let chosen = if svc.external_traffic_local {
                here
            } else {
                crate::desired::backends(&slices, &svc.namespace, &weights, port, None)
            };
            let mut backends: Vec<Slot> = chosen
                .iter()
                .map(|w| Slot {
                    addr: w.backend.addr,
                    port: w.backend.port,
                    flags: if local.contains(&(w.backend.addr, w.backend.port)) { SLOT_LOCAL } else { 0 },
                })
                .collect();
            backends.sort();
            backends.dedup();
            let mut flags = 0;
            if svc.external_traffic_local {
                flags |= FRONTEND_LOCAL;
            }
            if svc.affinity_timeout_seconds > 0 {
                flags |= FRONTEND_AFFINITY;
            }
            if svc.lb_mode == "dsr" || (svc.lb_mode.is_empty() && dsr) {
                flags |= FRONTEND_DSR;
            }
            let service = svc
                .cluster_ips
                .iter()
                .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
                .map_or((0, 0), |ip| (u32::from(ip).to_be(), (port.port as u16).to_be()));
            let name = format!("{}/{}:{}", svc.namespace, svc.name, port.port);
            let ip = |text: &String| text.parse::<Ipv4Addr>().ok();
            let frontends = node_addresses
                .iter()
                .filter(|_| port.node_port != 0)
                .map(|a| (*a, port.node_port))
                .chain(svc.external_ips.iter().filter_map(ip).map(|a| (a, port.port)));
            let remote = peers.iter().filter(|_| port.node_port != 0).map(|a| (*a, port.node_port, FRONTEND_REMOTE));
            let balanced = svc.load_balancer_ips.iter().filter_map(ip).map(|a| (a, port.port, balanced_flags));
            for (addr, number, more) in frontends.map(|(a, n)| (a, n, 0)).chain(remote).chain(balanced) {
                let key = FrontendKey { addr: u32::from(addr).to_be(), port: (number as u16).to_be(), proto, _pad: 0 };
                out.push(External {
                    key,
                    name: name.clone(),
                    backends: backends.clone(),
                    flags: flags | more,
                    service,
                    ranges: if more & FRONTEND_RANGES != 0 { ranges.clone() } else { Vec::new() },
                });
            }
        }
    }
    // One entry per frontend; an address listed twice (an external IP that is also a
    // load-balancer address) keeps its restriction.
    out.sort_by(|a, b| a.key.cmp(&b.key).then(b.flags.cmp(&a.flags)));
    out.dedup_by_key(|e| e.key);
    out
}

/// The health checks of this node (`healthCheckNodePort` of Services with
/// `externalTrafficPolicy: Local`), by port, with this node's ready endpoints of each.
pub fn health_checks(
    model: &ResourceSet,
    compiler: &crate::desired::Compiler,
    node: &str,
) -> BTreeMap<u16, crate::health_check::HealthCheck> {
    let mut out = BTreeMap::new();
    for r in model.of_kind(Kind::Service) {
        let Some(resource::Kind::Service(svc)) = &r.kind else { continue };
        let Ok(port) = u16::try_from(svc.health_check_node_port) else { continue };
        if port == 0 || !svc.external_traffic_local || svc.headless {
            continue;
        }
        let slices = compiler.slices(model, &svc.namespace, &svc.name);
        let weights = BTreeMap::new();
        let local: BTreeSet<u32> = svc
            .ports
            .iter()
            .flat_map(|p| crate::desired::backends(&slices, &svc.namespace, &weights, p, Some(node)))
            .map(|w| w.backend.addr)
            .collect();
        out.insert(
            port,
            crate::health_check::HealthCheck {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                local_endpoints: local.len(),
            },
        );
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum NodePortError {
    #[error("map {map} is not in the loaded object (was the agent built from another mesh-ebpf?)")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type or layout: {source}")]
    MapType { map: &'static str, source: MapError },
    #[error(
        "external frontends need {needed} {what} but {map} holds {capacity}: raise {key}; nothing was applied, the previous state stays in force"
    )]
    Capacity { map: &'static str, what: &'static str, needed: usize, capacity: u32, key: &'static str },
    #[error("writing map {map} failed: {source}; the frontends are partly applied and are tried again")]
    Write { map: &'static str, source: MapError },
}

/// The NodePort maps, owned, with a copy of what they hold.
pub struct NodePortTable {
    services: BpfHashMap<MapData, FrontendKey, Frontend>,
    /// Written in batches, through its descriptor. Held for as long as the programs may be
    /// loaded: they were relocated against this descriptor's number.
    maglev: Array<MapData, Slot>,
    config: Array<MapData, Config>,
    ranges: LpmTrie<MapData, RangeKey, u32>,
    /// Each programmed frontend.
    current: BTreeMap<FrontendKey, Frontend>,
    /// Each programmed source range: its key data and prefix length.
    current_ranges: BTreeSet<(RangeKey, u32)>,
    /// Each backend set with a table, its table index.
    tables: BTreeMap<Vec<Slot>, u32>,
    size: u32,
    max_tables: u32,
    max_frontends: u32,
    written_config: Option<Config>,
}

impl NodePortTable {
    /// Takes the maps out of `ebpf`. A previous agent's frontends are removed at the first
    /// apply (its tables are not known, so all are written again).
    pub fn new(ebpf: &mut aya::Ebpf, size: u32, max_tables: u32, max_frontends: u32) -> Result<Self, NodePortError> {
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(NodePortError::MissingMap { map });
        let services: BpfHashMap<MapData, FrontendKey, Frontend> = BpfHashMap::try_from(take(maps::NODEPORT_SERVICES)?)
            .map_err(|source| NodePortError::MapType { map: maps::NODEPORT_SERVICES, source })?;
        let maglev: Array<MapData, Slot> = Array::try_from(take(maps::MAGLEV)?)
            .map_err(|source| NodePortError::MapType { map: maps::MAGLEV, source })?;
        let config = Array::try_from(take(maps::NODEPORT_CONFIG)?)
            .map_err(|source| NodePortError::MapType { map: maps::NODEPORT_CONFIG, source })?;
        let ranges: LpmTrie<MapData, RangeKey, u32> = LpmTrie::try_from(take(maps::NODEPORT_RANGES)?)
            .map_err(|source| NodePortError::MapType { map: maps::NODEPORT_RANGES, source })?;
        let current = services.iter().filter_map(Result::ok).collect();
        let current_ranges = ranges.keys().filter_map(Result::ok).map(|key| (key.data(), key.prefix_len())).collect();
        Ok(Self {
            services,
            maglev,
            config,
            ranges,
            current,
            current_ranges,
            tables: BTreeMap::new(),
            size,
            max_tables,
            max_frontends,
            written_config: None,
        })
    }

    /// Whether any frontend is programmed (TC has work on the external interfaces).
    pub fn active(&self) -> bool {
        !self.current.is_empty()
    }

    /// Makes the maps hold `externals`, checked whole first: new tables are written before
    /// the frontends that use them, tables no frontend uses are freed after.
    pub fn apply(&mut self, externals: &[External], node_addr: Option<Ipv4Addr>) -> Result<(), NodePortError> {
        let wanted_sets: BTreeSet<&Vec<Slot>> =
            externals.iter().filter(|e| !e.backends.is_empty()).map(|e| &e.backends).collect();
        let new_sets = wanted_sets.iter().filter(|s| !self.tables.contains_key(**s)).count();
        let tables_needed = self.tables.len() + new_sets;
        if tables_needed > self.max_tables as usize {
            return Err(NodePortError::Capacity {
                map: maps::MAGLEV,
                what: "Maglev tables (one per distinct backend set)",
                needed: tables_needed,
                capacity: self.max_tables,
                key: ENV_MAGLEV_TABLES,
            });
        }
        let new_frontends = externals.iter().filter(|e| !self.current.contains_key(&e.key)).count();
        if self.current.len() + new_frontends > self.max_frontends as usize {
            return Err(NodePortError::Capacity {
                map: maps::NODEPORT_SERVICES,
                what: "frontends",
                needed: self.current.len() + new_frontends,
                capacity: self.max_frontends,
                key: ENV_SERVICES_MAX,
            });
        }
        let wanted_ranges: BTreeSet<(RangeKey, u32)> = externals
            .iter()
            .flat_map(|e| {
                e.ranges.iter().map(|net| {
                    let source = u32::from(net.network()).to_be();
                    (RangeKey { frontend: e.key, source }, RANGE_KEY_FRONTEND_BITS + u32::from(net.prefix_len()))
                })
            })
            .collect();
        if wanted_ranges.len() > self.max_frontends as usize {
            return Err(NodePortError::Capacity {
                map: maps::NODEPORT_RANGES,
                what: "loadBalancerSourceRanges entries (frontends x ranges)",
                needed: wanted_ranges.len(),
                capacity: self.max_frontends,
                key: ENV_SERVICES_MAX,
            });
        }
        let write = |map: &'static str| move |source| NodePortError::Write { map, source };
        // The ranges before the frontends that check them; when old and new do not fit
        // together, the old ones go first (meanwhile their frontends admit fewer clients, never
        // more).
        if self.current_ranges.union(&wanted_ranges).count() > self.max_frontends as usize {
            self.remove_ranges(&wanted_ranges)?;
        }
        for (data, len) in wanted_ranges.difference(&self.current_ranges.clone()) {
            self.ranges.insert(&Key::new(*len, *data), &1, 0).map_err(write(maps::NODEPORT_RANGES))?;
            self.current_ranges.insert((*data, *len));
        }
        for set in wanted_sets {
            if self.tables.contains_key(set) {
                continue;
            }
            let used: BTreeSet<u32> = self.tables.values().copied().collect();
            let index = (0..self.max_tables).find(|i| !used.contains(i)).expect("checked to fit");
            let slots = crate::maglev::table(set, self.size);
            let keys: Vec<u32> = (index * self.size..(index + 1) * self.size).collect();
            insert_batch(aya::maps::IterableMap::map(&self.maglev).fd().as_fd(), &keys, &slots)
                .map_err(|(_, source)| write(maps::MAGLEV)(source))?;
            self.tables.insert(set.clone(), index);
        }
        let config = Config {
            node_addr: node_addr.map_or(0, |a| u32::from(a).to_be()),
            maglev_size: self.size,
            local_backends: u32::from(externals.iter().any(|e| e.backends.iter().any(|b| b.flags & SLOT_LOCAL != 0))),
            _pad: 0,
        };
        if self.written_config != Some(config) {
            self.config.set(0, &config, 0).map_err(write(maps::NODEPORT_CONFIG))?;
            self.written_config = Some(config);
        }
        for e in externals {
            let frontend = Frontend {
                table: self.tables.get(&e.backends).copied().unwrap_or(0),
                backends: e.backends.len() as u32,
                flags: e.flags,
                service_addr: e.service.0,
                service_port: e.service.1,
                _pad: 0,
            };
            if self.current.get(&e.key) != Some(&frontend) {
                self.services.insert(&e.key, &frontend, 0).map_err(write(maps::NODEPORT_SERVICES))?;
                self.current.insert(e.key, frontend);
            }
        }
        let wanted: BTreeSet<FrontendKey> = externals.iter().map(|e| e.key).collect();
        let gone: Vec<FrontendKey> = self.current.keys().filter(|k| !wanted.contains(k)).copied().collect();
        for key in gone {
            converged(self.services.remove(&key)).map_err(write(maps::NODEPORT_SERVICES))?;
            self.current.remove(&key);
        }
        let used: BTreeSet<&Vec<Slot>> = externals.iter().map(|e| &e.backends).collect();
        self.tables.retain(|set, _| used.contains(set));
        // Ranges no frontend checks any more.
        self.remove_ranges(&wanted_ranges)
    }

    /// Removes the programmed ranges not in `wanted`.
    fn remove_ranges(&mut self, wanted: &BTreeSet<(RangeKey, u32)>) -> Result<(), NodePortError> {
        for (data, len) in self.current_ranges.difference(wanted).copied().collect::<Vec<_>>() {
            converged(self.ranges.remove(&Key::new(len, data)))
                .map_err(|source| NodePortError::Write { map: maps::NODEPORT_RANGES, source })?;
            self.current_ranges.remove(&(data, len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(local: bool) -> ResourceSet {
        let mut set = ResourceSet::default();
        let mut insert = |kind| set.insert(api::Resource { kind: Some(kind) });
        insert(resource::Kind::Service(api::Service {
            namespace: "t".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.10".into()],
            ports: vec![api::ServicePort {
                name: "http".into(),
                protocol: api::Protocol::Tcp as i32,
                port: 80,
                node_port: 30080,
                ..Default::default()
            }],
            external_traffic_local: local,
            load_balancer_ips: vec!["192.0.2.10".into()],
            ..Default::default()
        }));
        let endpoint = |ip: &str, node: &str| api::Endpoint {
            addresses: vec![ip.into()],
            node: node.into(),
            ready: true,
            ..Default::default()
        };
        insert(resource::Kind::EndpointSlice(api::EndpointSlice {
            namespace: "t".into(),
            name: "web-1".into(),
            service: "web".into(),
            ports: vec![api::EndpointPort { name: "http".into(), protocol: api::Protocol::Tcp as i32, port: 8080 }],
            endpoints: vec![endpoint("10.244.0.2", "node-0"), endpoint("10.244.1.2", "node-1")],
        }));
        set
    }

    #[test]
    fn frontends_are_this_nodes_addresses_and_the_load_balancer_address() {
        let node_ip: Ipv4Addr = "172.18.0.2".parse().unwrap();
        let compile = |model: &ResourceSet, node: &str, addrs: &[Ipv4Addr]| {
            let mut compiler = crate::desired::Compiler::default();
            compiler.update(model, node, None);
            super::compile(model, &compiler, node, addrs, false)
        };
        let all: Vec<External> = compile(&model(false), "node-0", &[node_ip])
            .into_iter()
            .filter(|e| e.flags & FRONTEND_REMOTE == 0)
            .collect();
        let frontends: Vec<(Ipv4Addr, u16)> =
            all.iter().map(|e| (Ipv4Addr::from(u32::from_be(e.key.addr)), u16::from_be(e.key.port))).collect();
        assert_eq!(frontends, [(node_ip, 30080), ("192.0.2.10".parse().unwrap(), 80)]);
        let backends: Vec<(Ipv4Addr, u16)> =
            all[0].backends.iter().map(|b| (Ipv4Addr::from(u32::from_be(b.addr)), b.flags)).collect();
        assert_eq!(backends, [("10.244.0.2".parse().unwrap(), SLOT_LOCAL), ("10.244.1.2".parse().unwrap(), 0)]);
        assert_eq!(all[0].flags, 0);

        let local = compile(&model(true), "node-1", &[node_ip]);
        assert_eq!(local[0].flags, FRONTEND_LOCAL);
        assert_eq!(local[0].backends.len(), 1, "only node-1's backend: {local:?}");
        assert_eq!(local[0].backends[0].flags, SLOT_LOCAL);
        assert!(compile(&model(true), "node-2", &[node_ip])[0].backends.is_empty(), "no backend here");

        // loadBalancerSourceRanges: the load-balancer address checks them (its family's), the
        // NodePort not; IPv6 ranges alone restrict no IPv4 address.
        let mut restricted = model(false);
        for r in restricted.of_kind(Kind::Service).cloned().collect::<Vec<_>>() {
            let Some(resource::Kind::Service(mut svc)) = r.kind else { continue };
            svc.load_balancer_source_ranges = vec!["203.0.113.0/24".into(), "2001:db8::/32".into()];
            restricted.insert(api::Resource { kind: Some(resource::Kind::Service(svc)) });
        }
        let all = compile(&restricted, "node-0", &[node_ip]);
        let balanced = all.iter().find(|e| e.key.addr == u32::from(Ipv4Addr::new(192, 0, 2, 10)).to_be()).unwrap();
        assert_eq!(balanced.flags & FRONTEND_RANGES, FRONTEND_RANGES);
        assert_eq!(balanced.ranges, ["203.0.113.0/24".parse::<Ipv4Net>().unwrap()]);
        assert!(
            all.iter().filter(|e| e.key != balanced.key).all(|e| e.flags & FRONTEND_RANGES == 0 && e.ranges.is_empty())
        );
        for r in restricted.of_kind(Kind::Service).cloned().collect::<Vec<_>>() {
            let Some(resource::Kind::Service(mut svc)) = r.kind else { continue };
            svc.load_balancer_source_ranges = vec!["2001:db8::/32".into()];
            restricted.insert(api::Resource { kind: Some(resource::Kind::Service(svc)) });
        }
        assert!(compile(&restricted, "node-0", &[node_ip]).iter().all(|e| e.flags & FRONTEND_RANGES == 0));
        // Padded entries are read; one that is no range restricts (closed, not open).
        for (ranges, expected) in [(" 203.0.113.0/24 ", 1), ("not-a-range", 0)] {
            for r in restricted.of_kind(Kind::Service).cloned().collect::<Vec<_>>() {
                let Some(resource::Kind::Service(mut svc)) = r.kind else { continue };
                svc.load_balancer_source_ranges = vec![ranges.into()];
                restricted.insert(api::Resource { kind: Some(resource::Kind::Service(svc)) });
            }
            let all = compile(&restricted, "node-0", &[node_ip]);
            let lb = all.iter().find(|e| e.flags & FRONTEND_RANGES != 0).expect("restricted");
            assert_eq!(lb.ranges.len(), expected, "{ranges:?}");
        }
    }
}
