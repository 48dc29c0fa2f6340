//! The kernel's tables of the tunnel (`mesh_common::tunnel`): the other nodes' pods and ports
//! whose mode is STRICT and where `connect4` sends their connections (this agent's outbound
//! listener on the node's address); this node's STRICT pods and ports, and its pods'
//! interfaces, with which TC drops plaintext that skipped the tunnel. Written as differences
//! from a copy, and converging when retried, as every map writer of the agent.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use aya::maps::{Array, HashMap, MapData, MapError};
use mesh_common::{
    maps,
    service_lb::Backend,
    tunnel::{DIRECT, Origin, OriginKey, OutboundListener, TUNNEL, TunnelDestKey},
};

use super::{
    Destinations,
    peer_auth::{Mode, WorkloadMtls},
};
use crate::map_write::converged;

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("map {map} is not in the loaded object (was the agent built from another mesh-ebpf?)")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type or layout: {source}")]
    MapType { map: &'static str, source: MapError },
    #[error(
        "{needed} pod ports need the tunnel but map {map} holds {capacity}: nothing was changed, the previous set stays in force; fewer STRICT workloads, or a larger capacity"
    )]
    Capacity { map: &'static str, needed: usize, capacity: u32 },
    #[error("writing map {map} failed: {source}; tried again at the next update")]
    Write { map: &'static str, source: MapError },
}

/// What the kernel must hold for the tunnel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// [`maps::TUNNEL_DESTS`]: the other nodes' pods.
    pub outbound: BTreeMap<TunnelDestKey, u32>,
    /// [`maps::MTLS_INBOUND`]: this node's pods.
    pub inbound: BTreeMap<TunnelDestKey, u32>,
    /// STRICT pods of nodes without an address: nothing can be tunnelled to them.
    pub unreachable: Vec<String>,
}

/// The entries of a pod at `ip` whose mode (or some port's) is one of `tunnelled`: its address
/// with port 0 when the pod's mode is, its ports of another mode as [`DIRECT`]; for a pod
/// whose mode is not, its ports whose mode is as [`TUNNEL`]. None for a pod with no such port.
fn entries(
    ip: std::net::Ipv4Addr,
    mtls: &WorkloadMtls,
    tunnelled: impl Fn(Mode) -> bool,
    out: &mut BTreeMap<TunnelDestKey, u32>,
) {
    let addr = u32::from_ne_bytes(ip.octets());
    let key = |port: u16| TunnelDestKey { addr, port: port.to_be(), _pad: 0 };
    let pod = tunnelled(mtls.mode);
    if pod {
        out.insert(key(0), TUNNEL);
    }
    for (port, mode) in mtls.ports.iter().filter(|(port, _)| **port != 0) {
        match (pod, tunnelled(*mode)) {
            (true, false) => out.insert(key(*port), DIRECT),
            (false, true) => out.insert(key(*port), TUNNEL),
            _ => None,
        };
    }
}

/// `ports` of the pod at `ip` as [`TUNNEL`], whatever the pod's entry says.
fn policed(ip: Ipv4Addr, ports: impl Iterator<Item = u16>, out: &mut BTreeMap<TunnelDestKey, u32>) {
    let addr = u32::from_ne_bytes(ip.octets());
    for port in ports {
        out.insert(TunnelDestKey { addr, port: port.to_be(), _pad: 0 }, TUNNEL);
    }
}

/// What the kernel must hold for the pods `destinations` knows.
pub fn desired(destinations: &Destinations) -> Wanted {
    let mut wanted = Wanted::default();
    for (ip, peer) in destinations.peers() {
        // STRICT ports; with a principal rule, PERMISSIVE ones too (DISABLE: never).
        let tunnelled = |mode| mode == Mode::Strict || (peer.principal_rules && mode == Mode::Permissive);
        let mut pod = BTreeMap::new();
        entries(ip, &peer.mtls, tunnelled, &mut pod);
        // Ports with HTTP rules always: the pod's agent judges their requests.
        policed(ip, peer.http_ports.iter().copied(), &mut pod);
        if pod.is_empty() {
            continue;
        }
        if peer.node_address.is_none() {
            wanted.unreachable.push(peer.pod.clone());
            continue;
        }
        wanted.outbound.append(&mut pod);
    }
    for (ip, pod) in destinations.local() {
        // Plaintext is dropped at STRICT ports only: a principal rule alone leaves it to the
        // rules (it matches no plaintext).
        entries(ip, &pod.mtls, |mode| mode == Mode::Strict, &mut wanted.inbound);
        if let Some(requests) = &pod.requests {
            // Ports with HTTP rules: this node's pods reach them through this agent (so
            // `connect4` sends them to the outbound listener), and what skipped every agent is
            // dropped as plaintext at a STRICT port is.
            policed(ip, requests.ports.iter().copied(), &mut wanted.outbound);
            policed(ip, requests.ports.iter().copied(), &mut wanted.inbound);
        }
    }
    wanted.unreachable.sort();
    wanted.unreachable.dedup();
    wanted
}

/// The tunnel's maps, owned, with a copy of what the destination table holds.
pub struct Redirect {
    outbound: Table<TunnelDestKey, u32>,
    inbound: Table<TunnelDestKey, u32>,
    interfaces: Table<u32, u32>,
    config: Array<MapData, OutboundListener>,
    listener: Option<OutboundListener>,
}

/// A hash map the agent alone writes, with a copy of what it holds.
struct Table<K, V> {
    name: &'static str,
    map: HashMap<MapData, K, V>,
    capacity: u32,
    current: BTreeMap<K, V>,
}

impl<K: aya::Pod + Ord, V: aya::Pod + PartialEq> Table<K, V> {
    fn new(ebpf: &mut aya::Ebpf, name: &'static str, capacity: u32) -> Result<Self, RedirectError> {
        let map = ebpf.take_map(name).ok_or(RedirectError::MissingMap { map: name })?;
        let map: HashMap<MapData, K, V> =
            HashMap::try_from(map).map_err(|source| RedirectError::MapType { map: name, source })?;
        // What a previous agent left is the starting copy: differences from it are written.
        let current = map.iter().filter_map(Result::ok).collect();
        Ok(Self { name, map, capacity, current })
    }

    fn check(&self, wanted: &BTreeMap<K, V>) -> Result<(), RedirectError> {
        if wanted.len() > self.capacity as usize {
            return Err(RedirectError::Capacity { map: self.name, needed: wanted.len(), capacity: self.capacity });
        }
        Ok(())
    }

    /// Removals first, so a full table makes room; each write is copied at once, so a retry
    /// writes only what is still missing.
    fn apply(&mut self, wanted: &BTreeMap<K, V>) -> Result<(), RedirectError> {
        let write = |source| RedirectError::Write { map: self.name, source };
        let stale: Vec<K> = self.current.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in stale {
            converged(self.map.remove(&key)).map_err(write)?;
            self.current.remove(&key);
        }
        for (key, value) in wanted {
            if self.current.get(key) != Some(value) {
                self.map.insert(key, value, 0).map_err(write)?;
                self.current.insert(*key, *value);
            }
        }
        Ok(())
    }
}

impl Redirect {
    /// Takes the tables and the listener out of `ebpf` (held for the agent's life: the
    /// programs loaded later use their descriptors), and opens the origins from their pin in
    /// `bpffs` (a descriptor of its own, which the outbound side may drop).
    pub fn new(ebpf: &mut aya::Ebpf, bpffs: &std::path::Path) -> Result<(Self, Origins), RedirectError> {
        let map_type = |map: &'static str| move |source| RedirectError::MapType { map, source };
        // The object's capacities (not configurable yet).
        let outbound = Table::new(ebpf, maps::TUNNEL_DESTS, maps::DEFAULT_TUNNEL_DESTS_MAX)?;
        let inbound = Table::new(ebpf, maps::MTLS_INBOUND, maps::DEFAULT_LOCAL_PODS_MAX)?;
        let interfaces = Table::new(ebpf, maps::POD_INTERFACES, maps::DEFAULT_LOCAL_PODS_MAX)?;
        let config =
            ebpf.take_map(maps::TUNNEL_CONFIG).ok_or(RedirectError::MissingMap { map: maps::TUNNEL_CONFIG })?;
        let config = Array::try_from(config).map_err(map_type(maps::TUNNEL_CONFIG))?;
        let origins = MapData::from_pin(bpffs.join(maps::TUNNEL_ORIGINS))
            .and_then(aya::maps::Map::from_map_data)
            .map_err(map_type(maps::TUNNEL_ORIGINS))?;
        let origins = Origins { map: HashMap::try_from(origins).map_err(map_type(maps::TUNNEL_ORIGINS))? };
        Ok((Self { outbound, inbound, interfaces, config, listener: None }, origins))
    }

    /// Makes the tables hold `wanted` and the pods' interfaces `interfaces` (ifindexes), and
    /// `connect4` send to `listener` (none: nothing is redirected). Too many entries for a
    /// table change nothing.
    pub fn apply(
        &mut self,
        wanted: &Wanted,
        interfaces: impl IntoIterator<Item = u32>,
        listener: Option<SocketAddrV4>,
    ) -> Result<(), RedirectError> {
        let interfaces: BTreeMap<u32, u32> = interfaces.into_iter().map(|ifindex| (ifindex, 1)).collect();
        self.outbound.check(&wanted.outbound)?;
        self.inbound.check(&wanted.inbound)?;
        self.interfaces.check(&interfaces)?;
        // The interfaces before the STRICT ports: a pod of this node is never refused as
        // plaintext from elsewhere.
        self.interfaces.apply(&interfaces)?;
        self.inbound.apply(&wanted.inbound)?;
        self.outbound.apply(&wanted.outbound)?;
        let listener = listener.map(|address| OutboundListener {
            addr: u32::from_ne_bytes(address.ip().octets()),
            port: address.port().to_be(),
            _pad: 0,
        });
        if listener != self.listener {
            self.config
                .set(0, &listener.unwrap_or_default(), 0)
                .map_err(|source| RedirectError::Write { map: maps::TUNNEL_CONFIG, source })?;
            self.listener = listener;
        }
        Ok(())
    }

    /// How many remote destinations are tunnelled, and local ones are STRICT.
    pub fn len(&self) -> (usize, usize) {
        (self.outbound.current.len(), self.inbound.current.len())
    }
}

/// Where each redirected connection was going, by its client's address and port.
pub struct Origins {
    map: HashMap<MapData, OriginKey, Origin>,
}

/// A redirected connection's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// The pod it goes to.
    pub pod: SocketAddr,
    /// The address the application asked for (a service's, or the pod's).
    pub asked: SocketAddr,
}

impl Origins {
    /// The destination of the connection from `client`, if `sockops` wrote one. One map lookup
    /// (a syscall that does not block).
    pub fn get(&self, client: SocketAddrV4) -> Option<Original> {
        let key = OriginKey { addr: u32::from_ne_bytes(client.ip().octets()), port: client.port().to_be(), _pad: 0 };
        let origin = self.map.get(&key, 0).ok()?;
        let address = |addr: u32, port: u16| SocketAddr::from((Ipv4Addr::from(addr.to_ne_bytes()), u16::from_be(port)));
        let Origin { backend: Backend { addr, port, .. }, service } = origin;
        Some(Original { pod: address(addr, port), asked: address(service.addr, service.port) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::{Peer, peer_auth::WorkloadMtls};
    use mesh_common::identity::{SpiffeId, TrustDomain};

    fn peer(mode: Mode, ports: &[(u16, Mode)], node: Option<[u8; 4]>) -> Peer {
        Peer {
            pod: "default/web".into(),
            identity: SpiffeId::new(TrustDomain::default(), "default", "web").unwrap(),
            mtls: WorkloadMtls { mode, ports: ports.iter().copied().collect() },
            principal_rules: false,
            node_address: node.map(Ipv4Addr::from),
            number: 0,
            http_ports: Default::default(),
        }
    }

    fn entries(peer: Peer) -> (Vec<(u16, u32)>, Vec<String>) {
        let destinations = Destinations::of([], [(Ipv4Addr::new(10, 244, 1, 5), peer)]);
        let wanted = desired(&destinations);
        assert!(wanted.inbound.is_empty());
        for key in wanted.outbound.keys() {
            assert_eq!(key.addr.to_ne_bytes(), [10, 244, 1, 5]);
        }
        (wanted.outbound.iter().map(|(k, v)| (u16::from_be(k.port), *v)).collect(), wanted.unreachable)
    }

    #[test]
    fn strict_pods_and_ports_are_tunnelled_and_exceptions_go_direct() {
        let node = Some([172, 18, 0, 3]);
        assert_eq!(entries(peer(Mode::Strict, &[], node)).0, [(0, TUNNEL)]);
        assert_eq!(
            entries(peer(Mode::Strict, &[(9000, Mode::Disable), (80, Mode::Strict)], node)).0,
            [(0, TUNNEL), (9000, DIRECT)]
        );
        assert_eq!(entries(peer(Mode::Permissive, &[(80, Mode::Strict), (81, Mode::Disable)], node)).0, [(80, TUNNEL)]);
        assert!(entries(peer(Mode::Permissive, &[], node)).0.is_empty());
        assert!(entries(peer(Mode::Disable, &[(81, Mode::Permissive)], node)).0.is_empty());
        // A principal rule tunnels what is not DISABLE, so the client can prove who it is.
        let principal = |mode, ports: &[(u16, Mode)]| Peer { principal_rules: true, ..peer(mode, ports, node) };
        assert_eq!(entries(principal(Mode::Permissive, &[(81, Mode::Disable)])).0, [(0, TUNNEL), (81, DIRECT)]);
        assert_eq!(entries(principal(Mode::Disable, &[(80, Mode::Permissive)])).0, [(80, TUNNEL)]);
        // No node address: nowhere to send the tunnel.
        let (none, unreachable) = entries(peer(Mode::Strict, &[], None));
        assert!(none.is_empty());
        assert_eq!(unreachable, ["default/web"]);
    }
}
