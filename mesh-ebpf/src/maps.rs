//! The maps, declared once for every program. All are pinned by name under the node's bpffs
//! directory (the agent sets it); capacities here are defaults the agent may override.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuHashMap},
};
use mesh_common::{
    maps::{
        DEFAULT_AFFINITY_MAX, DEFAULT_BACKENDS_MAX, DEFAULT_POD_TRAFFIC_MAX, DEFAULT_REVERSE_MAX, DEFAULT_SERVICES_MAX,
    },
    pod_traffic::PodTraffic,
    service_lb::{AffinityKey, AffinityValue, Backend, BackendKey, ReverseKey, ServiceAddr, ServiceEntry, ServiceKey},
};

#[map(name = "mesh_svc")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> = HashMap::pinned(DEFAULT_SERVICES_MAX, 0);

#[map(name = "mesh_backend")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "mesh_be_addrs")]
pub static BACKEND_ADDRS: HashMap<Backend, u32> = HashMap::pinned(DEFAULT_BACKENDS_MAX, 0);

#[map(name = "mesh_affinity")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(DEFAULT_AFFINITY_MAX, 0);

#[map(name = "mesh_rev_sk")]
pub static REVERSE: LruHashMap<ReverseKey, ServiceAddr> = LruHashMap::pinned(DEFAULT_REVERSE_MAX, 0);

#[map(name = "mesh_pod_stats")]
pub static POD_TRAFFIC: PerCpuHashMap<u32, PodTraffic> = PerCpuHashMap::pinned(DEFAULT_POD_TRAFFIC_MAX, 0);
