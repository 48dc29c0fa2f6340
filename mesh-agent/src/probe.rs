//! What the agent needs from its process and its kernel, checked at start before anything is
//! loaded, as Cilium's probes do: capabilities, program types, map types, the helpers each
//! program calls, and TCX. Everything missing is named in one error, with what to do.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

/// Capabilities: (bit, name). `CAP_SYS_ADMIN` stands in for the first two on kernels that
/// predate them.
const CAPABILITIES: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

const PROGRAMS: [(ProgramType, &str); 3] = [
    (ProgramType::CgroupSockAddr, "cgroup/sock_addr (the socket hooks)"),
    (ProgramType::SockOps, "sockops"),
    (ProgramType::SchedClassifier, "sched_cls (the TC programs)"),
];

const MAPS: [(MapType, &str); 7] = [
    (MapType::Hash, "hash"),
    (MapType::Array, "array"),
    (MapType::LruHash, "LRU hash"),
    (MapType::LpmTrie, "LPM trie"),
    (MapType::PerCpuHash, "per-CPU hash"),
    (MapType::PerCpuArray, "per-CPU array"),
    (MapType::RingBuf, "ring buffer"),
];

/// The helpers each program type calls.
const HELPERS: [(ProgramType, BpfHelper, &str); 8] = [
    (
        ProgramType::CgroupSockAddr,
        BpfHelper::BPF_FUNC_set_retval,
        "bpf_set_retval (ECONNREFUSED for a service without endpoints)",
    ),
    (ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_netns_cookie, "bpf_get_netns_cookie (session affinity)"),
    (ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_socket_cookie, "bpf_get_socket_cookie"),
    (ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_prandom_u32, "bpf_get_prandom_u32"),
    (ProgramType::SockOps, BpfHelper::BPF_FUNC_ringbuf_output, "bpf_ringbuf_output in sockops"),
    (ProgramType::SockOps, BpfHelper::BPF_FUNC_sock_ops_cb_flags_set, "bpf_sock_ops_cb_flags_set"),
    (ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_ringbuf_output, "bpf_ringbuf_output in TC"),
    (ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns"),
];

/// TCX links (the TC programs' attach point) arrived in Linux 6.6.
const TCX: KernelVersion = KernelVersion::new(6, 6, 0);

#[derive(Debug, thiserror::Error)]
#[error(
    "this agent cannot run here; missing: {}. {}",
    missing.join("; "),
    if *capabilities { "Give the agent those capabilities (the DaemonSet's securityContext: BPF, PERFMON, NET_ADMIN), or run it as root" } else { "Run it on Linux 6.6 or later with BPF enabled (CONFIG_BPF_SYSCALL, CONFIG_BPF_JIT, CONFIG_NET_CLS_BPF, CONFIG_CGROUP_BPF)" }
)]
pub struct Missing {
    pub missing: Vec<String>,
    /// Capabilities are missing (the kernel was not probed: probing needs them).
    pub capabilities: bool,
}

/// Checks everything; the error names every missing piece.
pub fn check() -> Result<(), Missing> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = missing_capabilities(&status);
    if !missing.is_empty() {
        return Err(Missing { missing, capabilities: true });
    }
    let mut missing = Vec::new();
    for (program, name) in PROGRAMS {
        if !is_program_supported(program).unwrap_or(false) {
            missing.push(format!("program type {name}"));
        }
    }
    for (map, name) in MAPS {
        if !is_map_supported(map).unwrap_or(false) {
            missing.push(format!("map type {name}"));
        }
    }
    for (program, helper, name) in HELPERS {
        if !is_helper_supported(program, helper).unwrap_or(false) {
            missing.push(format!("helper {name}"));
        }
    }
    match KernelVersion::current() {
        Ok(version) if version >= TCX => {}
        Ok(version) => missing.push(format!("TCX links (Linux 6.6; this is {version})")),
        Err(err) => missing.push(format!("TCX links (the kernel version cannot be read: {err})")),
    }
    if missing.is_empty() { Ok(()) } else { Err(Missing { missing, capabilities: false }) }
}

/// The capabilities `/proc/<pid>/status` text says the process lacks (effective set).
pub fn missing_capabilities(status: &str) -> Vec<String> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| effective & (1 << bit) != 0;
    CAPABILITIES
        .iter()
        .filter(|(bit, name)| {
            // CAP_SYS_ADMIN covers BPF and PERFMON (kernels before 5.8 have only it).
            let covered = *name != "CAP_NET_ADMIN" && has(CAP_SYS_ADMIN);
            !has(*bit) && !covered
        })
        .map(|(_, name)| format!("capability {name}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_effective_set() {
        let status = |hex: &str| format!("Name:\tmesh-agent\nCapInh:\t0000000000000000\nCapEff:\t{hex}\n");
        assert!(missing_capabilities(&status("000001ffffffffff")).is_empty(), "root has everything");
        // BPF, PERFMON and NET_ADMIN: what the DaemonSet grants.
        assert!(missing_capabilities(&status(&format!("{:016x}", (1u64 << 39) | (1 << 38) | (1 << 12)))).is_empty());
        // SYS_ADMIN stands in for BPF and PERFMON, not for NET_ADMIN.
        assert_eq!(missing_capabilities(&status(&format!("{:016x}", 1u64 << 21))), ["capability CAP_NET_ADMIN"]);
        assert_eq!(
            missing_capabilities(&status("0000000000000000")),
            ["capability CAP_BPF", "capability CAP_PERFMON", "capability CAP_NET_ADMIN"]
        );
    }
}
