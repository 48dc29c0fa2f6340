//! Per-CPU traffic counters kept by the TC programs on each pod's host-side interface.

/// Value of [`crate::maps::POD_TRAFFIC`] (a per-CPU hash keyed by ifindex). Directions are
/// the pod's: `from_pod` is what the pod sent (TC ingress of the host-side interface),
/// `to_pod` what it received (TC egress).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}

impl PodTraffic {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.from_pod_packets += other.from_pod_packets;
        self.from_pod_bytes += other.from_pod_bytes;
        self.to_pod_packets += other.to_pod_packets;
        self.to_pod_bytes += other.to_pod_bytes;
    }
}

// SAFETY: `repr(C)`, four u64 fields, no padding: every bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PodTraffic {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_matches_the_kernel_side() {
        assert_eq!(size_of::<PodTraffic>(), 32);
        assert_eq!(offset_of!(PodTraffic, from_pod_packets), 0);
        assert_eq!(offset_of!(PodTraffic, from_pod_bytes), 8);
        assert_eq!(offset_of!(PodTraffic, to_pod_packets), 16);
        assert_eq!(offset_of!(PodTraffic, to_pod_bytes), 24);
    }

    #[test]
    fn add_sums_every_field() {
        let mut total = PodTraffic { from_pod_packets: 1, from_pod_bytes: 2, to_pod_packets: 3, to_pod_bytes: 4 };
        total.add(&PodTraffic { from_pod_packets: 10, from_pod_bytes: 20, to_pod_packets: 30, to_pod_bytes: 40 });
        assert_eq!(
            total,
            PodTraffic { from_pod_packets: 11, from_pod_bytes: 22, to_pod_packets: 33, to_pod_bytes: 44 }
        );
    }
}
