//! Prometheus metrics on the agent (`GET /metrics`), named after Hubble's and Istio's where
//! they have one:
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
//!   `cilium_bpf_map_pressure`) per `map_name`.
//!
//! Event-derived counters count the events the agent received; what the kernel could not
//! deliver is in `hubble_lost_events_total`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use aya::maps::{Map, MapData, PerCpuHashMap};
use mesh_common::{
    flows::{CLOSED, FLOW_END, FLOW_START},
    maps,
    policy::{AUDIT, DENY, INGRESS, VerdictCount, VerdictKey},
    proto,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::broadcast::error::RecvError,
};

use crate::{
    agent_status::AgentState,
    flows::{directory::SharedDirectory, view::FlowView},
};

/// Labels of the Istio TCP metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct TcpLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct TcpCounts {
    opened: u64,
    closed: u64,
    received_bytes: u64,
    sent_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// (type, subtype, verdict, protocol)
    flows: BTreeMap<(&'static str, &'static str, &'static str, &'static str), u64>,
    tcp: BTreeMap<TcpLabels, TcpCounts>,
    retransmits: u64,
}

/// The agent's metrics. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    counters: Arc<Mutex<Counters>>,
    state: AgentState,
    directory: SharedDirectory,
}

impl Metrics {
    pub fn new(state: AgentState, directory: SharedDirectory) -> Self {
        Self { counters: Arc::default(), state, directory }
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
            let directory = self.directory.get();
            let mut counters = self.counters.lock().expect("never poisoned");
            for record in batch.iter() {
                let view = FlowView::new(record, &directory);
                let e = &record.event;
                let key = (flow_type(&view), subtype(&view), verdict_name(view.verdict), protocol_name(e.proto));
                *counters.flows.entry(key).or_default() += 1;
                if e.kind == CLOSED {
                    counters.retransmits += u64::from(e.retrans);
                }
                if e.proto != proto::TCP || !(e.kind == FLOW_START || e.kind == FLOW_END) || e.action == DENY {
                    continue;
                }
                let workload = |ep: Option<&crate::flows::directory::EndpointInfo>| {
                    ep.map_or(("unknown".to_owned(), "unknown".to_owned()), |ep| {
                        let name = ep.workload.as_ref().map_or(ep.pod.clone(), |(name, _)| name.clone());
                        (name, ep.namespace.clone())
                    })
                };
                let (source_workload, source_workload_namespace) = workload(view.source);
                let (destination_workload, destination_workload_namespace) = workload(view.destination);
                let labels = TcpLabels {
                    reporter: if e.direction == INGRESS { "destination" } else { "source" },
                    source_workload,
                    source_workload_namespace,
                    destination_workload,
                    destination_workload_namespace,
                    destination_service: view
                        .destination_service
                        .map_or("unknown".to_owned(), |s| format!("{}.{}", s.name, s.namespace)),
                };
                let counts = counters.tcp.entry(labels).or_default();
                if e.kind == FLOW_START {
                    counts.opened += 1;
                } else {
                    counts.closed += 1;
                    counts.received_bytes += e.bytes;
                    counts.sent_bytes += e.reply_bytes;
                }
            }
        }
    }

    /// The text exposition (Prometheus 0.0.4). Reads maps: run it off the runtime.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let stats = self.state.store.stats();
        let directory = self.directory.get();
        {
            let counters = self.counters.lock().expect("never poisoned");
            family(&mut out, "hubble_flows_processed_total", "counter", "Flow events processed");
            for ((kind, subtype, verdict, protocol), n) in &counters.flows {
                let _ = writeln!(
                    out,
                    "hubble_flows_processed_total{{type=\"{kind}\",subtype=\"{subtype}\",verdict=\"{verdict}\",protocol=\"{protocol}\"}} {n}"
                );
            }
            for (name, help, pick) in [
                ("istio_tcp_connections_opened_total", "TCP connections opened", 0),
                ("istio_tcp_connections_closed_total", "TCP connections closed", 1),
                (
                    "istio_tcp_received_bytes_total",
                    "Bytes of the requests (client to server) of closed TCP connections",
                    2,
                ),
                (
                    "istio_tcp_sent_bytes_total",
                    "Bytes of the responses (server to client) of closed TCP connections",
                    3,
                ),
            ] {
                family(&mut out, name, "counter", help);
                for (l, c) in &counters.tcp {
                    let value = [c.opened, c.closed, c.received_bytes, c.sent_bytes][pick];
                    let _ = writeln!(
                        out,
                        "{name}{{reporter=\"{}\",source_workload=\"{}\",source_workload_namespace=\"{}\",destination_workload=\"{}\",destination_workload_namespace=\"{}\",destination_service=\"{}\",request_protocol=\"tcp\"}} {value}",
                        l.reporter,
                        escape(&l.source_workload),
                        escape(&l.source_workload_namespace),
                        escape(&l.destination_workload),
                        escape(&l.destination_workload_namespace),
                        escape(&l.destination_service),
                    );
                }
            }
            family(
                &mut out,
                "mesh_tcp_retransmits_total",
                "counter",
                "TCP segments retransmitted by closed connections",
            );
            let _ = writeln!(out, "mesh_tcp_retransmits_total {}", counters.retransmits);
        }
        family(&mut out, "hubble_lost_events_total", "counter", "Flow events lost, by where");
        let _ = writeln!(out, "hubble_lost_events_total{{source=\"perf_event_ring_buffer\"}} {}", stats.lost_kernel);
        let _ = writeln!(out, "hubble_lost_events_total{{source=\"hubble_ring_buffer\"}} {}", stats.lost_followers);
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
        family(&mut out, "hubble_drop_total", "counter", "Packets dropped, by reason");
        for ((reason, direction), n) in &drops {
            let _ = writeln!(out, "hubble_drop_total{{reason=\"{reason}\",traffic_direction=\"{direction}\"}} {n}");
        }
        family(&mut out, "hubble_policy_verdicts_total", "counter", "Flows judged by policy, by verdict and rule");
        for ((direction, action, policy), n) in &verdicts {
            let _ = writeln!(
                out,
                "hubble_policy_verdicts_total{{direction=\"{direction}\",action=\"{action}\",policy=\"{}\"}} {n}",
                escape(policy)
            );
        }
        let fills = crate::map_fill::all(&self.state.bpffs);
        family(&mut out, "mesh_bpf_map_entries", "gauge", "Entries in a BPF map");
        for fill in fills.iter().filter(|f| f.entries.is_some()) {
            let _ = writeln!(out, "mesh_bpf_map_entries{{map_name=\"{}\"}} {}", fill.name, fill.entries.unwrap_or(0));
        }
        family(
            &mut out,
            "mesh_bpf_map_capacity",
            "gauge",
            "Capacity of a BPF map (entries; bytes for the ring buffer)",
        );
        for fill in &fills {
            let _ = writeln!(out, "mesh_bpf_map_capacity{{map_name=\"{}\"}} {}", fill.name, fill.capacity);
        }
        family(&mut out, "mesh_bpf_map_pressure", "gauge", "Fill ratio of a BPF map (0 to 1)");
        for fill in fills.iter().filter(|f| f.entries.is_some() && f.capacity > 0) {
            let ratio = fill.entries.unwrap_or(0) as f64 / fill.capacity as f64;
            let _ = writeln!(out, "mesh_bpf_map_pressure{{map_name=\"{}\"}} {ratio}", fill.name);
        }
        family(&mut out, "mesh_flows_kept", "gauge", "Flows kept for GetFlows");
        let _ = writeln!(out, "mesh_flows_kept {}", stats.num_flows);
        family(&mut out, "mesh_flows_seen_total", "counter", "Flows seen since the agent started");
        let _ = writeln!(out, "mesh_flows_seen_total {}", stats.seen_flows);
        out
    }

    /// Serves `GET /metrics` on `listener` until an accept error. Never returns otherwise.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Error {
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => return err,
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let mut request = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, body) = if request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?") {
                    let body = tokio::task::spawn_blocking(move || metrics.render()).await.unwrap_or_default();
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "metrics are at GET /metrics\n".to_owned())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }
}

fn pinned_verdicts(
    path: &std::path::Path,
) -> Result<PerCpuHashMap<MapData, VerdictKey, VerdictCount>, Box<dyn std::error::Error>> {
    let data = MapData::from_pin(path)?;
    Ok(PerCpuHashMap::try_from(Map::from_map_data(data)?)?)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
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
