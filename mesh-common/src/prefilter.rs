//! The XDP prefilter: source CIDRs dropped on the node's external interfaces before the stack
//! sees them, each drop counted per CIDR and sampled into the flow events.
//!
//! The CIDRs come from ClusterMeshPolicy deny rules that cover every pod and name only
//! addresses outside the cluster (`mesh-agent/src/prefilter.rs` says which qualify).

/// Value of [`crate::maps::PREFILTER`] (an LPM trie keyed by the source address, network
/// order, with its prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefilterEntry {
    /// The policy rule id whose deny this CIDR is (named in the flow events); 0: an `except`
    /// inside a denied block, which passes.
    pub rule: u32,
    /// This CIDR's counters: its index in [`crate::maps::PREFILTER_COUNTS`].
    pub slot: u32,
}

/// Value of [`crate::maps::PREFILTER_COUNTS`] (per CPU): what one CIDR dropped on this CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefilterCount {
    pub packets: u64,
    pub bytes: u64,
    /// When this CPU last sent a drop event for the CIDR (`bpf_ktime_get_ns`).
    pub reported_ns: u64,
    /// Drops since then, carried by the next event.
    pub unreported: u64,
}

/// A CIDR's drops are sampled into a flow event at most this often per CPU; each event carries
/// how many packets it stands for.
pub const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, integer fields, no padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::PrefilterEntry {}
    unsafe impl aya::Pod for super::PrefilterCount {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_match_the_kernel_side() {
        assert_eq!(size_of::<PrefilterEntry>(), 8);
        assert_eq!(size_of::<PrefilterCount>(), 32);
    }
}
