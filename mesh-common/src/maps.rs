//! Map names and default capacities.
//!
//! Every map is pinned under the node's bpffs directory by its name, so a restarted agent
//! finds the datapath it left. Names carry the `mesh_` prefix and stay within the kernel's
//! 15 characters (`BPF_OBJ_NAME_LEN` - 1), or the kernel would truncate them.

/// Services: [`crate::service_lb::ServiceKey`] -> [`crate::service_lb::ServiceEntry`].
pub const SERVICES: &str = "mesh_svc";
/// Backend slots: [`crate::service_lb::BackendKey`] -> [`crate::service_lb::Backend`].
pub const BACKENDS: &str = "mesh_backend";
/// Remembered backends (LRU): [`crate::service_lb::AffinityKey`] ->
/// [`crate::service_lb::AffinityValue`].
pub const AFFINITY: &str = "mesh_affinity";
/// What each unconnected UDP socket asked for, per backend it sent to (LRU):
/// [`crate::service_lb::ReverseKey`] (socket cookie and backend) ->
/// [`crate::service_lb::ServiceAddr`]. Connected sockets are in [`SOCKET_SERVICES`].
pub const REVERSE: &str = "mesh_rev_sk";
/// What each connected socket was translated from, by socket cookie (an array of
/// [`crate::service_lb::SOCKET_SLOTS`] [`crate::service_lb::SocketService`] slots, the slot
/// of a cookie its low bits): written by `connect4` without a search for a free entry or a
/// lock, read by `getpeername4`, `recvmsg4` and `sockops`.
pub const SOCKET_SERVICES: &str = "mesh_sk_svc";
/// Every backend address of any service: [`crate::service_lb::Backend`] -> `u32` (unused).
/// `getpeername4` and `recvmsg4` look up the reverse map only for peers in it (and look here
/// only for peers whose bits are set in [`BACKEND_FILTER`]).
pub const BACKEND_ADDRS: &str = "mesh_be_addrs";
/// A filter in front of [`BACKEND_ADDRS`] (array of [`crate::service_lb::BACKEND_FILTER_WORDS`]
/// `u64` words, 40 KiB): the bits [`crate::service_lb::Backend::filter_slots`] (its port, its
/// address and port hashed) of every backend in it are set, so a peer with either bit clear
/// (most accepted sockets' clients: their ports are no backend's) costs a read that stays in
/// cache, not a lookup in a map of megabytes. A superset: a bit may be set for an address that
/// is gone, never clear for one that is there.
pub const BACKEND_FILTER: &str = "mesh_be_filter";
/// Per-CPU traffic counters of each pod interface: ifindex (`u32`) ->
/// [`crate::pod_traffic::PodTraffic`].
pub const POD_TRAFFIC: &str = "mesh_pod_stats";

/// Addresses to identities (LPM trie): `Key<`[`crate::policy::IpKey`]`>` -> `u32`.
pub const IDENTITIES: &str = "mesh_ident";
/// Local pod interfaces under policy: ifindex (`u32`) -> [`crate::policy::Endpoint`].
pub const ENDPOINTS: &str = "mesh_endpoint";
/// Policy rules (LPM trie): `Key<`[`crate::policy::PolicyKey`]`>` ->
/// [`crate::policy::PolicyEntry`].
pub const POLICY: &str = "mesh_policy";
/// Flows and their verdicts (LRU): [`crate::policy::CtKey`] -> [`crate::policy::CtEntry`].
pub const CONNTRACK: &str = "mesh_ct";
/// The policy revision (array of one `u32`): bumped by the agent after every policy change,
/// so denied flows (and new connections on a remembered 5-tuple) are judged again.
pub const POLICY_REVISION: &str = "mesh_pol_rev";
/// Verdict counters (per-CPU hash): [`crate::policy::VerdictKey`] ->
/// [`crate::policy::VerdictCount`].
pub const VERDICTS: &str = "mesh_verdicts";

/// Flow events (ring buffer of [`crate::flows::FlowEvent`] records; its size is in bytes).
pub const EVENTS: &str = "mesh_events";
/// The events' counters (per-CPU array of `u64`): at [`EVENTS_LOST_SLOT`] the events that
/// did not fit in [`EVENTS`] (counted, never silent), at [`EVENTS_SENT_SLOT`] those that did,
/// so that every event is either read by the agent or counted as lost, and a check can tell.
pub const EVENTS_LOST: &str = "mesh_ev_lost";
pub const EVENTS_LOST_SLOT: u32 = 0;
pub const EVENTS_SENT_SLOT: u32 = 1;
/// Translated TCP connections (LRU): [`crate::flows::TupleKey`] ->
/// [`crate::service_lb::ServiceAddr`], so TC names the service in a flow's events.
pub const XLATE: &str = "mesh_xlate";

/// The ports of fragmented datagrams (LRU): [`crate::policy::FragKey`] (addresses, IP id,
/// protocol, direction) -> [`crate::policy::FragPorts`], written at the first fragment so the
/// later ones (which carry no ports) belong to the same flow.
pub const FRAGMENTS: &str = "mesh_frag";

/// Remote pods (and ports) reached only through the tunnel: [`crate::tunnel::TunnelDestKey`]
/// -> [`crate::tunnel::TUNNEL`] or [`crate::tunnel::DIRECT`]. Written by the agent.
pub const TUNNEL_DESTS: &str = "mesh_tun_dst";
/// One [`crate::tunnel::OutboundListener`]: where `connect4` sends tunnelled connections.
pub const TUNNEL_CONFIG: &str = "mesh_tun_cfg";
/// Redirected connections not yet accepted by the agent (LRU): [`crate::tunnel::OriginKey`]
/// -> [`crate::tunnel::Origin`].
pub const TUNNEL_ORIGINS: &str = "mesh_tun_orig";
/// This node's pods (and ports) that accept only mutual TLS:
/// [`crate::tunnel::TunnelDestKey`] -> [`crate::tunnel::TUNNEL`] (STRICT) or
/// [`crate::tunnel::DIRECT`] (a port of another mode). Written by the agent.
pub const MTLS_INBOUND: &str = "mesh_mtls_in";
/// The host-side interfaces of this node's pods (ifindex -> 1), so TC tells a pod's packet from
/// one off the wire. Written by the agent.
pub const POD_INTERFACES: &str = "mesh_pod_ifs";

/// The prefilter's CIDRs (LPM trie): `Key<u32>` (source address, network order) ->
/// [`crate::prefilter::PrefilterEntry`]. Written by the agent.
pub const PREFILTER: &str = "mesh_prefilter";
/// The prefilter's counters (per-CPU array of [`crate::prefilter::PrefilterCount`]), one slot
/// per CIDR, as large as [`PREFILTER`].
pub const PREFILTER_COUNTS: &str = "mesh_pf_counts";

/// Frontends reached from outside: [`crate::nodeport::FrontendKey`] ->
/// [`crate::nodeport::Frontend`]. Written by the agent.
pub const NODEPORT_SERVICES: &str = "mesh_np_svc";
/// The Maglev tables, one after another (array of [`crate::nodeport::Slot`]).
pub const MAGLEV: &str = "mesh_maglev";
/// Flows from outside (LRU): [`crate::nodeport::FlowKey`] (as the client sent it) ->
/// [`crate::nodeport::Flow`], so every packet of a flow reaches its backend.
pub const NODEPORT_FLOWS: &str = "mesh_np_flows";
/// Their answers (LRU): [`crate::nodeport::FlowKey`] (as the backend answers) ->
/// [`crate::nodeport::Reverse`].
pub const NODEPORT_REVERSE: &str = "mesh_np_rev";
/// `loadBalancerSourceRanges` (LPM trie): [`crate::nodeport::RangeKey`] (a frontend and a
/// client range) -> 1. Sized as [`NODEPORT_SERVICES`].
pub const NODEPORT_RANGES: &str = "mesh_np_ranges";
/// Per CPU, two counters of sampled drop reports (see [`crate::nodeport::SAMPLE_LAST`]).
pub const NODEPORT_SAMPLES: &str = "mesh_np_samples";
/// One [`crate::nodeport::Config`]: the node's address, the Maglev table size.
pub const NODEPORT_CONFIG: &str = "mesh_np_cfg";

/// Default capacity of [`SERVICES`] (service address + port + protocol entries).
pub const DEFAULT_SERVICES_MAX: u32 = 16_384;
/// Default capacity of [`BACKENDS`] (backend slots over all services).
pub const DEFAULT_BACKENDS_MAX: u32 = 131_072;
/// Default capacity of [`AFFINITY`] (client-service pairs; least recently used go first).
pub const DEFAULT_AFFINITY_MAX: u32 = 65_536;
/// Default capacity of [`REVERSE`] (backends of unconnected UDP sockets; least recently used
/// go first). Connected sockets use [`SOCKET_SERVICES`] instead, so this holds only the
/// (socket, backend) pairs of datagram clients that send without `connect()` (DNS
/// resolvers, mostly): 65,536, not the 262,144 it had when every connection had an entry; an
/// LRU map is preallocated whole, and 15 MiB less of it is measurable here (see
/// `mesh-ebpf/src/maps.rs`).
pub const DEFAULT_REVERSE_MAX: u32 = 65_536;
/// Default capacity of [`POD_TRAFFIC`] (pod interfaces on one node).
pub const DEFAULT_POD_TRAFFIC_MAX: u32 = 1_024;

/// Default capacity of [`IDENTITIES`] (pod addresses and policy CIDRs in the cluster).
pub const DEFAULT_IDENTITIES_MAX: u32 = 65_536;
/// Default capacity of [`ENDPOINTS`] (pod interfaces on one node).
pub const DEFAULT_ENDPOINTS_MAX: u32 = 1_024;
/// Default capacity of [`POLICY`] (rule prefixes over all local pods).
pub const DEFAULT_POLICY_MAX: u32 = 65_536;
/// Default capacity of [`CONNTRACK`] (flows through local pods; least recently used go first).
pub const DEFAULT_CONNTRACK_MAX: u32 = 262_144;
/// Default capacity of [`VERDICTS`] (rule × verdict pairs).
pub const DEFAULT_VERDICTS_MAX: u32 = 16_384;

/// Default capacity of [`FRAGMENTS`] (datagrams being fragmented at once; least recently
/// used go first, and a datagram whose entry went is dropped whole at a pod under policy).
pub const DEFAULT_FRAGMENTS_MAX: u32 = 8_192;

/// Default size of [`EVENTS`] in bytes (a power of two): 4 MiB, about 42,000 events, so the
/// agent may fall 40 ms behind a million events a second before any is lost (and every loss
/// is counted). The kernel maps a ring buffer's pages twice into the reader (so a record
/// never wraps), so it costs the agent twice its size in RSS: 8 MiB here, 32 MiB at the
/// 16 MiB this was before the control-plane benchmark counted it.
pub const DEFAULT_EVENTS_BYTES: u32 = 4 << 20;
/// Default capacity of [`XLATE`] (translated TCP connections; least recently used go first).
pub const DEFAULT_XLATE_MAX: u32 = 65_536;
/// Default capacity of [`TUNNEL_DESTS`]: remote pods' addresses and ports, allocated per entry.
pub const DEFAULT_TUNNEL_DESTS_MAX: u32 = 65_536;
/// Capacity of [`TUNNEL_ORIGINS`]: connections between `connect()` and the agent's accept
/// (an entry lives for a round trip on the node), least recently used first.
pub const TUNNEL_ORIGINS_MAX: u32 = 16_384;
/// Capacity of [`MTLS_INBOUND`] and [`POD_INTERFACES`]: this node's pods (and their ports).
pub const DEFAULT_LOCAL_PODS_MAX: u32 = 4_096;

/// Default capacity of [`PREFILTER`] (and [`PREFILTER_COUNTS`]): denied CIDRs and their
/// excepts.
pub const DEFAULT_PREFILTER_MAX: u32 = 16_384;

/// Default number of Maglev tables (services with the same backends share one).
pub const DEFAULT_MAGLEV_TABLES: u32 = 32;
/// Default capacity of [`NODEPORT_FLOWS`] and [`NODEPORT_REVERSE`] (flows from outside).
pub const DEFAULT_NODEPORT_FLOWS_MAX: u32 = 65_536;

/// Every map the datapath pins, in the order the agent reports them.
pub const ALL: [&str; 32] = [
    SERVICES,
    BACKENDS,
    BACKEND_ADDRS,
    BACKEND_FILTER,
    AFFINITY,
    REVERSE,
    SOCKET_SERVICES,
    POD_TRAFFIC,
    IDENTITIES,
    ENDPOINTS,
    POLICY,
    CONNTRACK,
    FRAGMENTS,
    POLICY_REVISION,
    VERDICTS,
    EVENTS,
    EVENTS_LOST,
    XLATE,
    TUNNEL_DESTS,
    TUNNEL_CONFIG,
    TUNNEL_ORIGINS,
    MTLS_INBOUND,
    POD_INTERFACES,
    PREFILTER,
    PREFILTER_COUNTS,
    NODEPORT_SERVICES,
    MAGLEV,
    NODEPORT_FLOWS,
    NODEPORT_REVERSE,
    NODEPORT_RANGES,
    NODEPORT_SAMPLES,
    NODEPORT_CONFIG,
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_limit_and_carry_the_prefix() {
        for name in super::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
            assert!(name.starts_with("mesh_"), "{name} lacks the mesh_ prefix");
        }
    }
}
