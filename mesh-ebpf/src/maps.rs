//! The maps, declared once for every program. All are pinned by name under the node's bpffs
//! directory (the agent sets it); capacities here are defaults the agent may override.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use mesh_common::{
    flows::TupleKey,
    maps::{
        DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_CONNTRACK_MAX, DEFAULT_ENDPOINTS_MAX, DEFAULT_EVENTS_BYTES,
        DEFAULT_FRAGMENTS_MAX, DEFAULT_IDENTITIES_MAX, DEFAULT_LOCAL_PODS_MAX, DEFAULT_MAGLEV_TABLES,
        DEFAULT_NODEPORT_FLOWS_MAX, DEFAULT_POD_TRAFFIC_MAX, DEFAULT_POLICY_MAX, DEFAULT_PREFILTER_MAX,
        DEFAULT_REVERSE_MAX, DEFAULT_SERVICES_MAX, DEFAULT_TUNNEL_DESTS_MAX, DEFAULT_VERDICTS_MAX, DEFAULT_XLATE_MAX,
        TUNNEL_ORIGINS_MAX,
    },
    nodeport::{Config as NodePortConfig, Flow, FlowKey, Frontend, FrontendKey, RangeKey, Reverse, Slot},
    pod_traffic::PodTraffic,
    policy::{CtEntry, CtKey, Endpoint, FragKey, FragPorts, IpKey, PolicyEntry, PolicyKey, VerdictCount, VerdictKey},
    prefilter::{PrefilterCount, PrefilterEntry},
    service_lb::{
        AffinityKey, AffinityValue, BACKEND_FILTER_WORDS, Backend, BackendKey, ReverseKey, SOCKET_SLOTS, ServiceAddr,
        ServiceEntry, ServiceKey, SocketService,
    },
    tunnel::{Origin, OriginKey, OutboundListener, TunnelDestKey},
};

/// The maps only the agent writes hold what the model holds, not their capacity: allocated
/// per entry (`BPF_F_NO_PREALLOC`), as Cilium's load-balancing maps are. Preallocated, the
/// capacities cost ~21 MiB of kernel memory per agent whatever the cluster holds, and that
/// memory is not free here: with every large map of the agent small (~85 MiB less), pod-to-pod
/// iperf on one node measured 0.97x of no mesh against 0.90-0.93x at the default capacities
/// (bench policy, one run each; the programs' own time per packet was the same). Programs
/// only read these maps, so an entry costs a lookup either way.
const AGENT_WRITTEN: u32 = BPF_F_NO_PREALLOC;

#[map(name = "mesh_svc")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(DEFAULT_SERVICES_MAX, AGENT_WRITTEN);

#[map(name = "mesh_backend")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(DEFAULT_BACKENDS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_be_addrs")]
pub static BACKEND_ADDRS: HashMap<Backend, u32> = HashMap::pinned(DEFAULT_BACKENDS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_be_filter")]
pub static BACKEND_FILTER: Array<u64> = Array::pinned(BACKEND_FILTER_WORDS, 0);

#[map(name = "mesh_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(DEFAULT_AFFINITY_MAX, 0);

#[map(name = "mesh_rev_sk")]
pub static REVERSE: LruHashMap<ReverseKey, ServiceAddr> = LruHashMap::pinned(DEFAULT_REVERSE_MAX, 0);

/// An array, not an LRU map: an LRU insert per `connect()` cost ~700 ns in the program and
/// ~3% of a short connection's rate in all (bench service-lb, same run: 0.950x direct with it,
/// 0.982x without); a slot write costs neither a lock nor a search for a free entry.
#[map(name = "mesh_sk_svc")]
pub static SOCKET_SERVICES: Array<SocketService> = Array::pinned(SOCKET_SLOTS, 0);

#[map(name = "mesh_pod_stats")]
pub static POD_TRAFFIC: PerCpuHashMap<u32, PodTraffic> = PerCpuHashMap::pinned(DEFAULT_POD_TRAFFIC_MAX, 0);

#[map(name = "mesh_ident")]
pub static IDENTITIES: LpmTrie<IpKey, u32> = LpmTrie::pinned(DEFAULT_IDENTITIES_MAX, 0);

#[map(name = "mesh_endpoint")]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(DEFAULT_ENDPOINTS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_policy")]
pub static POLICY: LpmTrie<PolicyKey, PolicyEntry> = LpmTrie::pinned(DEFAULT_POLICY_MAX, 0);

#[map(name = "mesh_ct")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(DEFAULT_CONNTRACK_MAX, 0);

#[map(name = "mesh_frag")]
pub static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(DEFAULT_FRAGMENTS_MAX, 0);

#[map(name = "mesh_pol_rev")]
pub static POLICY_REVISION: Array<u32> = Array::pinned(1, 0);

#[map(name = "mesh_verdicts")]
pub static VERDICTS: PerCpuHashMap<VerdictKey, VerdictCount> = PerCpuHashMap::pinned(DEFAULT_VERDICTS_MAX, 0);

#[map(name = "mesh_events")]
pub static EVENTS: RingBuf = RingBuf::pinned(DEFAULT_EVENTS_BYTES, 0);

#[map(name = "mesh_ev_lost")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

#[map(name = "mesh_xlate")]
pub static XLATE: LruHashMap<TupleKey, ServiceAddr> = LruHashMap::pinned(DEFAULT_XLATE_MAX, 0);

#[map(name = "mesh_tun_dst")]
pub static TUNNEL_DESTS: HashMap<TunnelDestKey, u32> = HashMap::pinned(DEFAULT_TUNNEL_DESTS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_tun_cfg")]
pub static TUNNEL_CONFIG: Array<OutboundListener> = Array::pinned(1, 0);

#[map(name = "mesh_tun_orig")]
pub static TUNNEL_ORIGINS: LruHashMap<OriginKey, Origin> = LruHashMap::pinned(TUNNEL_ORIGINS_MAX, 0);

#[map(name = "mesh_mtls_in")]
pub static MTLS_INBOUND: HashMap<TunnelDestKey, u32> = HashMap::pinned(DEFAULT_LOCAL_PODS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_pod_ifs")]
pub static POD_INTERFACES: HashMap<u32, u32> = HashMap::pinned(DEFAULT_LOCAL_PODS_MAX, AGENT_WRITTEN);

#[map(name = "mesh_prefilter")]
pub static PREFILTER: LpmTrie<u32, PrefilterEntry> = LpmTrie::pinned(DEFAULT_PREFILTER_MAX, 0);

#[map(name = "mesh_pf_counts")]
pub static PREFILTER_COUNTS: PerCpuArray<PrefilterCount> = PerCpuArray::pinned(DEFAULT_PREFILTER_MAX, 0);

#[map(name = "mesh_np_svc")]
pub static NODEPORT_SERVICES: HashMap<FrontendKey, Frontend> = HashMap::pinned(DEFAULT_SERVICES_MAX, AGENT_WRITTEN);

/// The agent sizes it: tables x slots per table.
#[map(name = "mesh_maglev")]
pub static MAGLEV: Array<Slot> = Array::pinned(DEFAULT_MAGLEV_TABLES * mesh_common::nodeport::DEFAULT_MAGLEV_SIZE, 0);

#[map(name = "mesh_np_flows")]
pub static NODEPORT_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::pinned(DEFAULT_NODEPORT_FLOWS_MAX, 0);

#[map(name = "mesh_np_rev")]
pub static NODEPORT_REVERSE: LruHashMap<FlowKey, Reverse> = LruHashMap::pinned(DEFAULT_NODEPORT_FLOWS_MAX, 0);

#[map(name = "mesh_np_ranges")]
pub static NODEPORT_RANGES: LpmTrie<RangeKey, u32> = LpmTrie::pinned(DEFAULT_SERVICES_MAX, 0);

#[map(name = "mesh_np_samples")]
pub static NODEPORT_SAMPLES: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

#[map(name = "mesh_np_cfg")]
pub static NODEPORT_CONFIG: Array<NodePortConfig> = Array::pinned(1, 0);
