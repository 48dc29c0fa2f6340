//! Prometheus metrics on the agent (`GET /metrics`, OpenMetrics text from a
//! `prometheus-client` registry), named after Hubble's and Istio's where they have one:
//!
//! - `hubble_flows_processed_total{type,subtype,verdict,protocol}`: flow events read.
//! - `hubble_drop_total{reason,traffic_direction}`: packets dropped, from the kernel's
//!   verdict counters (never lost).
//! - `hubble_policy_verdicts_total{direction,action,policy}`: flows judged, same source.
//! - `istio_tcp_connections_opened_total`, `istio_tcp_connections_closed_total`,
//!   `istio_tcp_received_bytes_total` (request bytes), `istio_tcp_sent_bytes_total` (response
//!   bytes), with `reporter` (source: at the client's interface, destination: at the
//!   server's) and the workloads and service: from TCP flow start and end events.
//! - `mesh_tcp_retransmits_total`: from sockops close events.
//! - `hubble_lost_events_total{source}`: `perf_event_ring_buffer` (the kernel's ring buffer
//!   was full) and `hubble_ring_buffer` (a follower read too slowly).
//! - `mesh_bpf_map_entries`, `mesh_bpf_map_capacity`, `mesh_bpf_map_pressure` (0-1, as
//!   `cilium_bpf_map_pressure`) per `map_name`; `mesh_flows_kept`, `mesh_flows_seen_total`.
//! - `mesh_agent_model_version`, `mesh_agent_model_applied_timestamp_seconds`: the operator's
//!   model the datapath holds (once an update applied).
//! - `mesh_workload_certificate_expiry_timestamp_seconds{identity}`: when each local
//!   identity's certificate expires (alert on it coming close: renewal is at half-life);
//!   `mesh_workload_certificate_requests_total{result}`: `issued` or `failed`.
//! - `mesh_tunnel_inbound_handshakes_total{result}` (`ok`, `failed`),
//!   `mesh_tunnel_inbound_streams_total{result}` (`opened`, `refused`) and
//!   `mesh_tunnel_inbound_bytes_total{direction}` (`to_pod`, `from_pod`, counted when a
//!   tunnelled connection ends): the receiving side of the mutual-TLS tunnel.
//! - `mesh_tunnel_outbound_connections_total{result}` (`tunnelled`, `routed` (to the L7 proxy), or the reason a
//!   redirected connection was reset: `no_destination`, `unknown_client`, `no_certificate`,
//!   `unknown_destination`, `tunnel`) and `mesh_tunnel_outbound_bytes_total{direction}`
//!   (`from_pod`, `to_pod`): the sending side, the connections `connect4` redirected.
//!
//! Event-derived counters are the registry's own metrics; what the kernel and the flow store
//! count is read at each scrape (a [`Collector`]). Event-derived counters count the events the
//! agent received; what the kernel could not deliver is in `hubble_lost_events_total`.

use std::{collections::BTreeMap, fmt, sync::Arc};

use aya::maps::{Map, MapData, PerCpuHashMap};
use mesh_common::{
    flows::{CLOSED, FLOW_END, FLOW_START},
    maps,
    policy::{AUDIT, DENY, INGRESS, VerdictCount, VerdictKey},
    proto,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    agent_status::AgentState,
    flows::{directory::SharedDirectory, view::FlowView},
};

/// A series' labels, in the order they are written.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// The agent's metrics. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    state: AgentState,
    directory: SharedDirectory,
    flows: Family<Labels, Counter>,
    /// Opened, closed, received bytes, sent bytes.
    tcp: [Family<Labels, Counter>; 4],
    retransmits: Counter,
}

impl Metrics {
    /// `l7`: the L7 proxy's request metrics, registered beside the agent's own.
    pub fn new(state: AgentState, directory: SharedDirectory, l7: Option<&crate::l7::metrics::L7Metrics>) -> Self {
        let mut registry = Registry::default();
        if let Some(l7) = l7 {
            l7.register(&mut registry);
        }
        let flows = Family::<Labels, Counter>::default();
        registry.register("hubble_flows_processed", "Flow events processed", flows.clone());
        let tcp: [Family<Labels, Counter>; 4] = Default::default();
        for ((name, help), family) in [
            ("istio_tcp_connections_opened", "TCP connections opened"),
            ("istio_tcp_connections_closed", "TCP connections closed"),
            ("istio_tcp_received_bytes", "Bytes of the requests (client to server) of closed TCP connections"),
            ("istio_tcp_sent_bytes", "Bytes of the responses (server to client) of closed TCP connections"),
        ]
        .into_iter()
        .zip(&tcp)
        {
            registry.register(name, help, family.clone());
        }
        let retransmits = Counter::default();
        registry.register(
            "mesh_tcp_retransmits",
            "TCP segments retransmitted by closed connections",
            retransmits.clone(),
        );
        registry.register_collector(Box::new(Scraped { state: state.clone(), directory: directory.clone() }));
        Self { registry: Arc::new(registry), state, directory, flows, tcp, retransmits }
    }

    /// Counts every flow the store receives. Never returns.
    pub async fn count_flows(self) {
        let mut updates = self.state.store.subscribe();
        loop {
            let batch = match updates.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            self.count_batch(&batch);
        }
    }

    /// Counts one batch of flows. A batch's flows are tallied per series first and each series
    /// is then looked up once: a series lookup hashes its labels and takes the family's lock,
    /// and per flow that was a quarter of the agent's CPU at 1M flows a second
    /// (`cargo xtask bench flows`).
    fn count_batch(&self, batch: &[crate::flows::Record]) {
        let directory = self.directory.get();
        // (type, subtype, verdict, protocol) -> flows; few distinct series: a short list.
        let mut flows: Vec<([&'static str; 4], u64)> = Vec::new();
        // TCP series: opened, closed, received and sent bytes.
        let mut tcp: std::collections::HashMap<TcpSeries<'_>, [u64; 4]> = std::collections::HashMap::new();
        let mut retransmits = 0u64;
        for record in batch {
            let view = FlowView::new(record, &directory);
            let e = &record.event;
            let key = [flow_type(&view), subtype(&view), verdict_name(view.verdict), protocol_name(e.proto)];
            match flows.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => flows.push((key, 1)),
            }
            if e.kind == CLOSED {
                retransmits += u64::from(e.retrans);
            }
            if e.proto != proto::TCP || !(e.kind == FLOW_START || e.kind == FLOW_END) || e.action == DENY {
                continue;
            }
            let series = TcpSeries {
                destination_reporter: e.direction == INGRESS,
                source: view.source,
                destination: view.destination,
                service: view.destination_service,
            };
            let counts = tcp.entry(series).or_insert([0; 4]);
            if e.kind == FLOW_START {
                counts[0] += 1;
            } else {
                counts[1] += 1;
                counts[2] += e.bytes;
                counts[3] += e.reply_bytes;
            }
        }
        for (key, n) in flows {
            let labels: Labels = ["type", "subtype", "verdict", "protocol"]
                .into_iter()
                .zip(key)
                .map(|(name, value)| (name, value.to_owned()))
                .collect();
            self.flows.get_or_create(&labels).inc_by(n);
        }
        if retransmits > 0 {
            self.retransmits.inc_by(retransmits);
        }
        for (series, counts) in tcp {
            let labels = series.labels();
            for (family, n) in self.tcp.iter().zip(counts) {
                if n > 0 {
                    family.get_or_create(&labels).inc_by(n);
                }
            }
        }
    }

    /// The OpenMetrics text. Reads maps: run it off the runtime.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector's error would end the text early.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the kernel and the flow store count, read at each scrape.
struct Scraped {
    state: AgentState,
    directory: SharedDirectory,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").field("bpffs", &self.state.bpffs).finish_non_exhaustive()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = self.state.store.stats();
        let directory = self.directory.get();
        series(
            &mut encoder,
            "hubble_lost_events",
            "Flow events lost, by where.",
            [
                (vec![("source", "perf_event_ring_buffer".to_owned())], ConstCounter::new(stats.lost_kernel)),
                (vec![("source", "hubble_ring_buffer".to_owned())], ConstCounter::new(stats.lost_followers)),
            ],
        )?;
        // Policy verdicts and drops, from the kernel's counters.
        let mut drops: BTreeMap<(String, &str), u64> = BTreeMap::new();
        let mut verdicts: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
        if let Ok(map) = pinned_verdicts(&self.state.bpffs.join(maps::VERDICTS)) {
            for (key, per_cpu) in map.iter().filter_map(Result::ok) {
                let total = per_cpu.iter().fold(VerdictCount::default(), |sum, c| VerdictCount {
                    flows: sum.flows + c.flows,
                    dropped_packets: sum.dropped_packets + c.dropped_packets,
                });
                let direction = if key.direction == INGRESS { "ingress" } else { "egress" };
                if key.action == DENY {
                    let reason = crate::flows::view::drop_reason_name(u32::from(key.reason)).to_owned();
                    *drops.entry((reason, direction)).or_default() += total.dropped_packets;
                }
                let action = match key.action {
                    DENY => "dropped",
                    AUDIT => "audit",
                    _ => "forwarded",
                };
                let policy = directory.policy(key.rule).map_or_else(
                    || if key.rule == 0 { "none".to_owned() } else { format!("rule {}", key.rule) },
                    |p| p.description.clone(),
                );
                *verdicts.entry((direction, action, policy)).or_default() += total.flows;
            }
        }
        // The XDP prefilter's drops, per CIDR (its events are sampled; these are exact).
        let prefiltered = crate::prefilter::dropped(&self.state.bpffs);
        let prefilter_policy =
            |rule: u32| directory.policy(rule).map_or_else(|| format!("rule {rule}"), |p| p.description.clone());
        for d in &prefiltered {
            *drops.entry(("POLICY_DENY".to_owned(), "ingress")).or_default() += d.packets;
        }
        series(
            &mut encoder,
            "mesh_prefilter_dropped_packets",
            "Packets the XDP prefilter dropped, by source CIDR and the rule that denies it.",
            prefiltered.iter().map(|d| {
                (vec![("cidr", d.cidr.to_string()), ("policy", prefilter_policy(d.rule))], ConstCounter::new(d.packets))
            }),
        )?;
        series(
            &mut encoder,
            "mesh_prefilter_dropped_bytes",
            "Bytes the XDP prefilter dropped, by source CIDR and the rule that denies it.",
            prefiltered.iter().map(|d| {
                (vec![("cidr", d.cidr.to_string()), ("policy", prefilter_policy(d.rule))], ConstCounter::new(d.bytes))
            }),
        )?;
        series(
            &mut encoder,
            "hubble_drop",
            "Packets dropped, by reason.",
            drops.into_iter().map(|((reason, direction), n)| {
                (vec![("reason", reason), ("traffic_direction", direction.to_owned())], ConstCounter::new(n))
            }),
        )?;
        series(
            &mut encoder,
            "hubble_policy_verdicts",
            "Flows judged by policy, by verdict and rule.",
            verdicts.into_iter().map(|((direction, action, policy), n)| {
                let labels =
                    vec![("direction", direction.to_owned()), ("action", action.to_owned()), ("policy", policy)];
                (labels, ConstCounter::new(n))
            }),
        )?;
        let fills = crate::map_fill::all(&self.state.bpffs);
        let map_name = |name: &str| vec![("map_name", name.to_owned())];
        series(
            &mut encoder,
            "mesh_bpf_map_entries",
            "Entries in a BPF map.",
            fills.iter().filter_map(|f| Some((map_name(f.name), ConstGauge::new(i64::try_from(f.entries?).ok()?)))),
        )?;
        series(
            &mut encoder,
            "mesh_bpf_map_capacity",
            "Capacity of a BPF map (entries; bytes for the ring buffer).",
            fills.iter().filter_map(|f| Some((map_name(f.name), ConstGauge::new(i64::try_from(f.capacity).ok()?)))),
        )?;
        series(
            &mut encoder,
            "mesh_bpf_map_pressure",
            "Fill ratio of a BPF map (0 to 1).",
            fills
                .iter()
                .filter(|f| f.capacity > 0)
                .filter_map(|f| Some((map_name(f.name), ConstGauge::new(f.entries? as f64 / f.capacity as f64)))),
        )?;
        series(
            &mut encoder,
            "mesh_flows_kept",
            "Flows kept for GetFlows.",
            [(Vec::new(), ConstGauge::new(i64::try_from(stats.num_flows).unwrap_or(i64::MAX)))],
        )?;
        // Which model the datapath holds (the operator's ACKed version; its epoch in `meshctl status`).
        if let Some((_, version, at)) = self.state.applied() {
            series(
                &mut encoder,
                "mesh_agent_model_version",
                "The version of the operator's model this agent last applied.",
                [(Vec::new(), ConstGauge::new(i64::try_from(version).unwrap_or(i64::MAX)))],
            )?;
            series(
                &mut encoder,
                "mesh_agent_model_applied_timestamp_seconds",
                "When this agent last applied an update of the operator's model (unix seconds).",
                [(Vec::new(), ConstGauge::new(at as f64 / 1e9))],
            )?;
        }
        let certificates = &self.state.certificates;
        series(
            &mut encoder,
            "mesh_workload_certificate_expiry_timestamp_seconds",
            "When a local workload identity's certificate expires (unix seconds).",
            certificates.snapshot().into_iter().filter_map(|(identity, slot)| {
                Some((vec![("identity", identity.to_string())], ConstGauge::new(slot.issued?.not_after)))
            }),
        )?;
        if certificates.enabled() {
            let (issued, failed) = certificates.request_counts();
            series(
                &mut encoder,
                "mesh_workload_certificate_requests",
                "Workload certificate requests to the CA, by result.",
                [
                    (vec![("result", "issued".to_owned())], ConstCounter::new(issued)),
                    (vec![("result", "failed".to_owned())], ConstCounter::new(failed)),
                ],
            )?;
            let tunnel = &self.state.tunnel;
            let count = |counter: &std::sync::atomic::AtomicU64| {
                ConstCounter::new(counter.load(std::sync::atomic::Ordering::Relaxed))
            };
            series(
                &mut encoder,
                "mesh_tunnel_inbound_handshakes",
                "TLS handshakes of tunnels from peer agents, by result.",
                [
                    (vec![("result", "ok".to_owned())], count(&tunnel.handshakes)),
                    (vec![("result", "failed".to_owned())], count(&tunnel.handshake_failures)),
                ],
            )?;
            series(
                &mut encoder,
                "mesh_tunnel_inbound_streams",
                "Tunnelled connections (CONNECT streams) to local pods, by result.",
                [
                    (vec![("result", "opened".to_owned())], count(&tunnel.streams)),
                    (vec![("result", "refused".to_owned())], count(&tunnel.refused)),
                ],
            )?;
            series(
                &mut encoder,
                "mesh_tunnel_inbound_bytes",
                "Bytes of tunnelled connections to local pods that ended, by direction.",
                [
                    (vec![("direction", "to_pod".to_owned())], count(&tunnel.bytes_in)),
                    (vec![("direction", "from_pod".to_owned())], count(&tunnel.bytes_out)),
                ],
            )?;
            let outbound = &self.state.outbound;
            let results = std::iter::once((vec![("result", "tunnelled".to_owned())], count(&outbound.tunnelled)))
                .chain(std::iter::once((vec![("result", "routed".to_owned())], count(&outbound.routed))))
                .chain(crate::tunnel::outbound::Failure::ALL.map(|failure| {
                    (vec![("result", failure.as_str().to_owned())], ConstCounter::new(outbound.failed(failure)))
                }));
            series(
                &mut encoder,
                "mesh_tunnel_outbound_connections",
                "Connections of local pods redirected to the agent, by result (tunnelled, routed by the L7 proxy, or why they were reset).",
                results,
            )?;
            series(
                &mut encoder,
                "mesh_tunnel_outbound_bytes",
                "Bytes of local pods' connections carried through tunnels that ended, by direction.",
                [
                    (vec![("direction", "from_pod".to_owned())], count(&outbound.bytes_out)),
                    (vec![("direction", "to_pod".to_owned())], count(&outbound.bytes_in)),
                ],
            )?;
        }
        series(
            &mut encoder,
            "mesh_flows_seen",
            "Flows seen since the agent started.",
            [(Vec::new(), ConstCounter::new(stats.seen_flows))],
        )
    }
}

/// The workloads and service of an Istio TCP series, as a flow names them. One series per
/// directory entry: equal when the reporter is and the entries are the same ones (by address,
/// in the directory that lives for the batch), so tallying a batch compares no strings.
#[derive(Clone, Copy)]
struct TcpSeries<'a> {
    /// Reported at the server's interface (`reporter="destination"`), else at the client's.
    destination_reporter: bool,
    source: Option<&'a crate::flows::directory::EndpointInfo>,
    destination: Option<&'a crate::flows::directory::EndpointInfo>,
    service: Option<&'a crate::flows::directory::ServiceInfo>,
}

impl TcpSeries<'_> {
    /// What tells series apart: the reporter and the entries' addresses.
    fn identity(&self) -> (bool, *const (), *const (), *const ()) {
        fn address<T>(entry: Option<&T>) -> *const () {
            entry.map_or(std::ptr::null(), |e| std::ptr::from_ref(e).cast())
        }
        (self.destination_reporter, address(self.source), address(self.destination), address(self.service))
    }

    fn labels(&self) -> Labels {
        let workload = |ep: Option<&crate::flows::directory::EndpointInfo>| {
            ep.map_or(("unknown".to_owned(), "unknown".to_owned()), |ep| {
                let name = ep.workload.as_ref().map_or(ep.pod.clone(), |(name, _)| name.clone());
                (name, ep.namespace.clone())
            })
        };
        let (source_workload, source_workload_namespace) = workload(self.source);
        let (destination_workload, destination_workload_namespace) = workload(self.destination);
        vec![
            ("reporter", if self.destination_reporter { "destination" } else { "source" }.to_owned()),
            ("source_workload", source_workload),
            ("source_workload_namespace", source_workload_namespace),
            ("destination_workload", destination_workload),
            ("destination_workload_namespace", destination_workload_namespace),
            (
                "destination_service",
                self.service.map_or("unknown".to_owned(), |s| format!("{}.{}", s.name, s.namespace)),
            ),
            ("request_protocol", "tcp".to_owned()),
        ]
    }
}

impl PartialEq for TcpSeries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for TcpSeries<'_> {}

impl std::hash::Hash for TcpSeries<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// One metric family read at scrape time: its series, each with its labels.
pub(crate) fn series<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else { return Ok(()) };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, value) in series {
        if labels.is_empty() {
            // A series without labels is the family's only one.
            return value.encode(metric);
        }
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn pinned_verdicts(
    path: &std::path::Path,
) -> Result<PerCpuHashMap<MapData, VerdictKey, VerdictCount>, Box<dyn std::error::Error>> {
    let data = MapData::from_pin(path)?;
    Ok(PerCpuHashMap::try_from(Map::from_map_data(data)?)?)
}

fn flow_type(view: &FlowView<'_>) -> &'static str {
    match view.event_type.0 {
        crate::flows::view::event_type::DROP => "Drop",
        crate::flows::view::event_type::TRACE => "Trace",
        _ => "Sock",
    }
}

fn subtype(view: &FlowView<'_>) -> &'static str {
    match view.observation_point {
        crate::flows::view::observation::TO_ENDPOINT => "to-endpoint",
        crate::flows::view::observation::FROM_ENDPOINT => "from-endpoint",
        _ => "",
    }
}

pub fn verdict_name(verdict: i32) -> &'static str {
    use crate::flows::view::verdict::*;
    match verdict {
        FORWARDED => "FORWARDED",
        DROPPED => "DROPPED",
        AUDIT => "AUDIT",
        TRACED => "TRACED",
        TRANSLATED => "TRANSLATED",
        _ => "VERDICT_UNKNOWN",
    }
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        proto::SCTP => "SCTP",
        proto::ICMP => "ICMPv4",
        _ => "Unknown L4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{directory::Directory, store::FlowStore};

    fn certificates() -> crate::identity::Certificates {
        crate::identity::Certificates::new(mesh_common::identity::TrustDomain::default(), false)
    }

    #[test]
    fn the_exposition_is_openmetrics_with_every_family_and_no_maps_yet() {
        let store = FlowStore::new(16);
        let state = AgentState::new("node-0", std::path::PathBuf::from("/nonexistent/bpffs"), store, certificates());
        let metrics = Metrics::new(state, SharedDirectory::new(Directory::empty("node-0")), None);
        metrics.flows.get_or_create(&vec![("type", "Trace".to_owned()), ("verdict", "FORWARDED".to_owned())]).inc();
        metrics.retransmits.inc_by(3);
        let text = metrics.render();
        for line in [
            "# TYPE hubble_flows_processed counter",
            "hubble_flows_processed_total{type=\"Trace\",verdict=\"FORWARDED\"} 1",
            "mesh_tcp_retransmits_total 3",
            "hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 0",
            "hubble_lost_events_total{source=\"hubble_ring_buffer\"} 0",
            "mesh_flows_kept 0",
            "mesh_flows_seen_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A family without series is left out (no TCP flows yet); nothing pinned: no map series.
        assert!(!text.contains("istio_tcp_connections_opened"), "{text}");
        assert!(!text.contains("mesh_bpf_map_entries{"), "{text}");
    }

    #[test]
    fn a_batch_is_counted_per_series_once_whatever_its_order() {
        use mesh_common::flows::FlowEvent;
        let store = FlowStore::new(16);
        let state = AgentState::new("node-0", std::path::PathBuf::from("/nonexistent/bpffs"), store, certificates());
        let metrics = Metrics::new(state, SharedDirectory::new(Directory::empty("node-0")), None);
        let event = |kind: u8, proto: u8, bytes: u64, retrans: u32| crate::flows::Record {
            event: FlowEvent { kind, proto, bytes, reply_bytes: 2 * bytes, retrans, ..FlowEvent::default() },
            ..crate::flows::Record::default()
        };
        // Interleaved: two TCP starts, a UDP start, a TCP end, a close with retransmits.
        let batch = [
            event(FLOW_START, proto::TCP, 0, 0),
            event(FLOW_START, proto::UDP, 0, 0),
            event(FLOW_END, proto::TCP, 100, 0),
            event(FLOW_START, proto::TCP, 0, 0),
            event(CLOSED, proto::TCP, 0, 4),
        ];
        metrics.count_batch(&batch);
        metrics.count_batch(&batch[..1]);
        let text = metrics.render();
        let value = |prefix: &str, labels: &[&str]| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(prefix) && labels.iter().all(|label| l.contains(label)))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(value("hubble_flows_processed_total{", &["protocol=\"TCP\""]), 5, "{text}");
        assert_eq!(value("hubble_flows_processed_total{", &["protocol=\"UDP\""]), 1, "{text}");
        assert_eq!(value("istio_tcp_connections_opened_total{", &["reporter=\"source\""]), 3, "{text}");
        assert_eq!(value("istio_tcp_connections_closed_total{", &["destination_service=\"unknown\""]), 1, "{text}");
        assert_eq!(value("istio_tcp_received_bytes_total{", &[]), 100, "{text}");
        assert_eq!(value("istio_tcp_sent_bytes_total{", &[]), 200, "{text}");
        assert_eq!(value("mesh_tcp_retransmits_total", &[]), 4, "{text}");
    }
}
