//! Prometheus metrics of the operator (`GET /metrics`, OpenMetrics text from a
//! `prometheus-client` registry): the model's version and size, the agents connected, every
//! agent's ACKs and NACKs, and the version each node's agent last ACKed (in local mode as well,
//! where no MeshNode status holds it).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The default address of the metrics endpoint.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:15151";

/// A node's series: `node="<name>"`.
type NodeLabels = [(&'static str, String); 1];
/// A refusal's series: `reason="<why>"`.
type ReasonLabels = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    version: Gauge<u64, AtomicU64>,
    resources: Gauge,
    connected: Gauge,
    acks: Family<NodeLabels, Counter>,
    nacks: Family<NodeLabels, Counter>,
    acked_version: Family<NodeLabels, Gauge<u64, AtomicU64>>,
    certificates_issued: Counter,
    certificates_refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let version = Gauge::<u64, AtomicU64>::default();
        registry.register("mesh_operator_model_version", "Version of the model the operator serves.", version.clone());
        let resources = Gauge::default();
        registry.register("mesh_operator_model_resources", "Resources in the model.", resources.clone());
        let connected = Gauge::default();
        registry.register("mesh_operator_agents_connected", "Agent streams open.", connected.clone());
        let acks = Family::<NodeLabels, Counter>::default();
        registry.register("mesh_operator_agent_acks", "Updates agents acknowledged.", acks.clone());
        let nacks = Family::<NodeLabels, Counter>::default();
        registry.register("mesh_operator_agent_nacks", "Updates agents rejected (NACK).", nacks.clone());
        let acked_version = Family::<NodeLabels, Gauge<u64, AtomicU64>>::default();
        registry.register(
            "mesh_operator_agent_acked_version",
            "The model version each node's agent last acknowledged (applied).",
            acked_version.clone(),
        );
        let certificates_issued = Counter::default();
        registry.register(
            "mesh_ca_certificates_issued",
            "Workload certificates the CA signed.",
            certificates_issued.clone(),
        );
        let certificates_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "mesh_ca_requests_refused",
            "Certificate requests the CA refused, by reason.",
            certificates_refused.clone(),
        );
        Self {
            registry,
            version,
            resources,
            connected,
            acks,
            nacks,
            acked_version,
            certificates_issued,
            certificates_refused,
        }
    }
}

impl Metrics {
    pub fn connected(&self, up: bool) {
        self.connected.inc_by(if up { 1 } else { -1 });
    }

    /// Counts an agent's reply, an ACK of `acked` or a NACK (`None`); both of a node's series
    /// exist once it has replied at all.
    pub fn reply(&self, node: &str, acked: Option<u64>) {
        let labels = [("node", node.to_owned())];
        if let Some(version) = acked {
            self.acked_version.get_or_create(&labels).set(version);
        }
        let (counted, other) = if acked.is_some() { (&self.acks, &self.nacks) } else { (&self.nacks, &self.acks) };
        counted.get_or_create(&labels).inc();
        drop(other.get_or_create(&labels));
    }

    /// Counts a certificate the CA signed.
    pub fn certificate_issued(&self) {
        self.certificates_issued.inc();
    }

    /// Counts a certificate request the CA refused, for `reason`.
    pub fn certificate_refused(&self, reason: &'static str) {
        self.certificates_refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// The exposition text, with the model's `version` and `resources`.
    pub fn render(&self, version: u64, resources: usize) -> String {
        self.version.set(version);
        self.resources.set(i64::try_from(resources).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_each_nodes_replies() {
        let metrics = Metrics::default();
        metrics.connected(true);
        metrics.reply("node-0", Some(6));
        metrics.reply("node-0", None);
        metrics.reply("node-1", Some(7));
        metrics.certificate_issued();
        metrics.certificate_refused("not_on_node");
        let text = metrics.render(7, 42);
        for line in [
            "mesh_operator_model_version 7",
            "mesh_operator_model_resources 42",
            "mesh_operator_agents_connected 1",
            "mesh_operator_agent_acks_total{node=\"node-0\"} 1",
            "mesh_operator_agent_nacks_total{node=\"node-0\"} 1",
            "mesh_operator_agent_nacks_total{node=\"node-1\"} 0",
            "mesh_operator_agent_acked_version{node=\"node-0\"} 6",
            "mesh_operator_agent_acked_version{node=\"node-1\"} 7",
            "mesh_ca_certificates_issued_total 1",
            "mesh_ca_requests_refused_total{reason=\"not_on_node\"} 1",
            "# TYPE mesh_operator_agent_nacks counter",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
    }
}
