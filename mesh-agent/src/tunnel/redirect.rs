//! The kernel's table of what goes through the tunnel (`mesh_common::tunnel`): the remote
//! pods and ports whose mode is STRICT, and where `connect4` sends their connections (this
//! agent's outbound listener on the node's address). Written as differences from a copy, and
//! converging when retried, as every map writer of the agent.

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

use super::{Destinations, peer_auth::Mode};
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

/// The entries of [`maps::TUNNEL_DESTS`] for the pods of the other nodes: a STRICT pod's
/// address with port 0, its ports of another mode as [`DIRECT`], a STRICT port of a pod of
/// another mode as [`TUNNEL`]. A pod whose node has no address cannot be tunnelled to: left
/// out (and named in the second list).
pub fn desired(destinations: &Destinations) -> (BTreeMap<TunnelDestKey, u32>, Vec<String>) {
    let mut entries = BTreeMap::new();
    let mut unreachable = Vec::new();
    for (ip, peer) in destinations.peers() {
        let strict = peer.mtls.mode == Mode::Strict || peer.mtls.ports.values().any(|m| *m == Mode::Strict);
        if !strict {
            continue;
        }
        if peer.node_address.is_none() {
            unreachable.push(peer.pod.clone());
            continue;
        }
        let addr = u32::from_ne_bytes(ip.octets());
        let key = |port: u16| TunnelDestKey { addr, port: port.to_be(), _pad: 0 };
        if peer.mtls.mode == Mode::Strict {
            entries.insert(key(0), TUNNEL);
        }
        for (port, mode) in &peer.mtls.ports {
            if *port == 0 {
                continue;
            }
            match (peer.mtls.mode == Mode::Strict, *mode == Mode::Strict) {
                (true, false) => entries.insert(key(*port), DIRECT),
                (false, true) => entries.insert(key(*port), TUNNEL),
                _ => None,
            };
        }
    }
    unreachable.sort();
    unreachable.dedup();
    (entries, unreachable)
}

/// The tunnel's maps, owned, with a copy of what the destination table holds.
pub struct Redirect {
    dests: HashMap<MapData, TunnelDestKey, u32>,
    config: Array<MapData, OutboundListener>,
    capacity: u32,
    current: BTreeMap<TunnelDestKey, u32>,
    listener: Option<OutboundListener>,
}

impl Redirect {
    /// Takes the destination table and the listener out of `ebpf` (held for the agent's
    /// life: the programs loaded later use their descriptors), and opens the origins from
    /// their pin in `bpffs` (a descriptor of its own, which the outbound side may drop).
    pub fn new(ebpf: &mut aya::Ebpf, bpffs: &std::path::Path) -> Result<(Self, Origins), RedirectError> {
        let mut take = |map: &'static str| ebpf.take_map(map).ok_or(RedirectError::MissingMap { map });
        let (dests, config) = (take(maps::TUNNEL_DESTS)?, take(maps::TUNNEL_CONFIG)?);
        let map_type = |map: &'static str| move |source| RedirectError::MapType { map, source };
        let origins = MapData::from_pin(bpffs.join(maps::TUNNEL_ORIGINS))
            .and_then(aya::maps::Map::from_map_data)
            .map_err(map_type(maps::TUNNEL_ORIGINS))?;
        let dests: HashMap<MapData, TunnelDestKey, u32> =
            HashMap::try_from(dests).map_err(map_type(maps::TUNNEL_DESTS))?;
        // The object's capacity (not configurable yet).
        let capacity = maps::DEFAULT_TUNNEL_DESTS_MAX;
        // What a previous agent left is the starting copy: differences from it are written.
        let current = dests.iter().filter_map(Result::ok).collect();
        let redirect = Self {
            dests,
            config: Array::try_from(config).map_err(map_type(maps::TUNNEL_CONFIG))?,
            capacity,
            current,
            listener: None,
        };
        let origins = Origins { map: HashMap::try_from(origins).map_err(map_type(maps::TUNNEL_ORIGINS))? };
        Ok((redirect, origins))
    }

    /// Makes the destination table hold `wanted`, and `connect4` send to `listener` (none:
    /// nothing is redirected). Too many entries change nothing.
    pub fn apply(
        &mut self,
        wanted: &BTreeMap<TunnelDestKey, u32>,
        listener: Option<SocketAddrV4>,
    ) -> Result<(), RedirectError> {
        let write = |source| RedirectError::Write { map: maps::TUNNEL_DESTS, source };
        if wanted.len() > self.capacity as usize {
            return Err(RedirectError::Capacity {
                map: maps::TUNNEL_DESTS,
                needed: wanted.len(),
                capacity: self.capacity,
            });
        }
        // Removals first, so a full table makes room; each written key is copied at once, so
        // a retry writes only what is still missing.
        let stale: Vec<TunnelDestKey> = self.current.keys().filter(|k| !wanted.contains_key(k)).copied().collect();
        for key in stale {
            converged(self.dests.remove(&key)).map_err(write)?;
            self.current.remove(&key);
        }
        for (key, mode) in wanted {
            if self.current.get(key) != Some(mode) {
                self.dests.insert(key, mode, 0).map_err(write)?;
                self.current.insert(*key, *mode);
            }
        }
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

    /// How many destinations are tunnelled.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
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
            node_address: node.map(Ipv4Addr::from),
        }
    }

    fn entries(peer: Peer) -> (Vec<(u16, u32)>, Vec<String>) {
        let destinations = Destinations::with_peers([(Ipv4Addr::new(10, 244, 1, 5), peer)]);
        let (entries, unreachable) = desired(&destinations);
        for key in entries.keys() {
            assert_eq!(key.addr.to_ne_bytes(), [10, 244, 1, 5]);
        }
        (entries.iter().map(|(k, v)| (u16::from_be(k.port), *v)).collect(), unreachable)
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
        // No node address: nowhere to send the tunnel.
        let (none, unreachable) = entries(peer(Mode::Strict, &[], None));
        assert!(none.is_empty());
        assert_eq!(unreachable, ["default/web"]);
    }
}
