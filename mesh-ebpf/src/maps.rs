//! The maps, declared once for every program. All are pinned by name under the node's bpffs
//! directory (the agent sets it); capacities here are defaults the agent may override.

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{HashMap, LruHashMap, PerCpuHashMap},
};
use mesh_common::{
    maps::{
        DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_POD_TRAFFIC_MAX, DEFAULT_REVERSE_MAX, DEFAULT_SERVICES_MAX,
    },
    pod_traffic::PodTraffic,
    service_lb::{
        AffinityKey, AffinityValue, Backend, BackendKey, ReverseKey, ServiceAddr, ServiceEntry, ServiceKey,
        SocketService,
    },
};

#[map(name = "mesh_svc")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

#[map(name = "mesh_backend")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "mesh_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(DEFAULT_AFFINITY_MAX, 0);

#[map(name = "mesh_rev_sk")]
pub static REVERSE: LruHashMap<ReverseKey, ServiceAddr> = LruHashMap::pinned(DEFAULT_REVERSE_MAX, 0);

/// Socket-local storage: a BTF map (the kernel requires BTF for it), pinned like the others so
/// that a restarted agent's programs still read what the previous ones stored on sockets.
#[btf_map(name = "mesh_sock_svc", pin_by_name)]
pub static SOCKET_SERVICE: SkStorage<SocketService> = SkStorage::new();

#[map(name = "mesh_pod_stats")]
pub static POD_TRAFFIC: PerCpuHashMap<u32, PodTraffic> = PerCpuHashMap::pinned(DEFAULT_POD_TRAFFIC_MAX, 0);
