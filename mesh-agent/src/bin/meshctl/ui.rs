//! `meshctl ui`: a live service map in the browser, in the manner of Hubble UI. It follows the
//! flows of one or more agents' Observer APIs (what `meshctl observe --follow` reads), folds
//! them into a graph of workloads (a pod's `app` label, or its name, per namespace; a Service
//! when a flow has its address but no pod yet, as a connection the L7 proxy answers; addresses
//! outside the mesh as `world`) whose edges are keyed by verdict (forwarded, dropped, audited),
//! and serves one page (`ui.html`: SVG and a few lines of script, nothing fetched from
//! elsewhere) that draws it and polls `GET /api/graph` every second. A click on an edge lists
//! its recent flows with their drop reasons and the policy that decided them.

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use mesh_common::hubble::observer::{GetFlowsRequest, observer_client::ObserverClient};
use serde_json::{Value, json};

/// The page, served at `/`.
const PAGE: &str = include_str!("ui.html");
/// Flows listed per edge.
const RECENT_FLOWS: usize = 20;
/// Rates are flows per second over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Flows each agent replays when the map starts (then it follows).
const REPLAY: u64 = 2_000;
/// Pause before reconnecting to an agent that went away.
const RECONNECT: Duration = Duration::from_secs(1);

/// Connections remembered (to give each one verdict); the oldest are forgotten first.
const CONNECTIONS: usize = 65_536;

/// One edge: the connections of one verdict from one workload to another. A connection is
/// counted once, on the edge of the worst verdict any of its flows had (dropped, then audited,
/// then forwarded): the intruder's SYN is forwarded where it leaves its pod and dropped where it
/// reaches web's, and the map shows a dropped connection.
#[derive(Default)]
struct Edge {
    total: u64,
    /// First-seen times (ns) of its connections within the rate window.
    times: VecDeque<u64>,
    services: std::collections::BTreeSet<String>,
    /// Recent flows of its connections, with their connection.
    recent: VecDeque<(Connection, Value)>,
}

/// A connection: protocol, source address and port, destination port (the client's ephemeral
/// port tells connections apart; the destination address changes with service translation).
type Connection = (String, String, u64, u64);
type EdgeKey = (String, String, String);

/// The edge a connection is counted on, and when it was first seen.
struct Counted {
    edge: EdgeKey,
    first_seen: u64,
}

/// What an agent's stream is doing.
#[derive(Clone, Default)]
struct AgentState {
    connected: bool,
    flows: u64,
    error: String,
}

#[derive(Default)]
struct Graph {
    nodes: BTreeMap<String, Value>,
    edges: BTreeMap<EdgeKey, Edge>,
    connections: std::collections::HashMap<Connection, Counted>,
    /// Connections in the order they were first seen.
    order: VecDeque<Connection>,
    agents: BTreeMap<String, AgentState>,
}

fn severity(verdict: &str) -> u8 {
    match verdict {
        "dropped" => 2,
        "audited" => 1,
        _ => 0,
    }
}

type Shared = Arc<Mutex<Graph>>;

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(value, |v, key| &v[key]).as_str().unwrap_or("")
}

/// The workload an endpoint belongs to: `namespace/app` (its `app` label), else its pod's name;
/// an address outside the mesh is `world`.
fn workload(endpoint: &Value) -> Option<(String, Value)> {
    let namespace = text(endpoint, "namespace");
    let pod = text(endpoint, "pod_name");
    if namespace.is_empty() || pod.is_empty() {
        return None;
    }
    let app = endpoint["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|label| label.strip_prefix("k8s:app="))
        .unwrap_or(pod);
    let id = format!("{namespace}/{app}");
    Some((id.clone(), json!({"id": id, "namespace": namespace, "name": app, "kind": "workload"})))
}

fn verdict(flow: &Value) -> Option<&'static str> {
    match text(flow, "verdict") {
        "FORWARDED" => Some("forwarded"),
        "DROPPED" => Some("dropped"),
        "AUDIT" => Some("audited"),
        _ => None,
    }
}

/// The policy that decided a flow: the rule the agent names, else the policies Hubble lists.
fn policy(flow: &Value) -> String {
    let rule = text(flow, "extensions.rule");
    if !rule.is_empty() {
        return rule.to_owned();
    }
    ["ingress_denied_by", "egress_denied_by", "ingress_allowed_by", "egress_allowed_by"]
        .iter()
        .flat_map(|key| flow[*key].as_array().into_iter().flatten())
        .map(|p| format!("{} {}/{}", text(p, "kind"), text(p, "namespace"), text(p, "name")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Graph {
    /// Folds one flow (Hubble's JSON) in, seen at `now_ns`.
    fn add(&mut self, flow: &Value, now_ns: u64) {
        if flow["is_reply"] == true {
            return;
        }
        let Some(verdict) = verdict(flow) else { return };
        let world = |ip: &str| {
            (format!("world/{ip}"), json!({"id": format!("world/{ip}"), "namespace": "", "name": ip, "kind": "world"}))
        };
        let (source, source_node) = workload(&flow["source"]).unwrap_or_else(|| world(text(flow, "IP.source")));
        // A connection to a Service address the proxy answers has no pod yet: the Service.
        let service = |flow: &Value| {
            let (namespace, name) =
                (text(flow, "destination_service.namespace"), text(flow, "destination_service.name"));
            (!name.is_empty()).then(|| {
                let id = format!("{namespace}/service/{name}");
                (id.clone(), json!({"id": id, "namespace": namespace, "name": name, "kind": "service"}))
            })
        };
        let (target, target_node) = workload(&flow["destination"])
            .or_else(|| service(flow))
            .unwrap_or_else(|| world(text(flow, "IP.destination")));
        self.nodes.insert(source.clone(), source_node);
        self.nodes.insert(target.clone(), target_node);
        let l4 = &flow["l4"];
        let (protocol, ports) = ["TCP", "UDP", "SCTP"]
            .iter()
            .find(|p| l4[**p].is_object())
            .map(|p| (p.to_string(), &l4[*p]))
            .unwrap_or(("IP".into(), &Value::Null));
        let port = |key: &str| ports[key].as_u64().unwrap_or(0);
        let connection: Connection =
            (protocol, text(flow, "IP.source").to_owned(), port("source_port"), port("destination_port"));
        let key: EdgeKey = (source, target, verdict.to_owned());
        // Which edge the connection is on now, and whether it moves to this (worse) one.
        let moved_from = match self.connections.get_mut(&connection) {
            None => {
                self.connections.insert(connection.clone(), Counted { edge: key.clone(), first_seen: now_ns });
                self.order.push_back(connection.clone());
                if self.order.len() > CONNECTIONS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.connections.remove(&oldest);
                }
                let edge = self.edges.entry(key.clone()).or_default();
                edge.total += 1;
                edge.times.push_back(now_ns);
                None
            }
            Some(counted) if severity(verdict) > severity(&counted.edge.2) => {
                let from = std::mem::replace(&mut counted.edge, key.clone());
                Some((from, counted.first_seen))
            }
            Some(_) => None,
        };
        let mut carried = VecDeque::new();
        if let Some((from, first_seen)) = moved_from {
            if let Some(old) = self.edges.get_mut(&from) {
                old.total -= 1;
                if let Some(at) = old.times.iter().position(|t| *t == first_seen) {
                    old.times.remove(at);
                }
                let (theirs, others) = old.recent.drain(..).partition(|(c, _)| *c == connection);
                old.recent = others;
                carried = theirs;
                if old.total == 0 {
                    self.edges.remove(&from);
                }
            }
            let edge = self.edges.entry(key.clone()).or_default();
            edge.total += 1;
            edge.times.push_back(first_seen);
        }
        let counted_on = self.connections.get(&connection).map(|c| c.edge.clone()).unwrap_or(key);
        let Some(edge) = self.edges.get_mut(&counted_on) else { return };
        edge.recent.extend(carried);
        let service = text(flow, "destination_service.name");
        if !service.is_empty() {
            edge.services.insert(format!("{}/{service}", text(flow, "destination_service.namespace")));
        }
        let pod = |e: &Value| match (text(e, "namespace"), text(e, "pod_name")) {
            ("", _) | (_, "") => None,
            (ns, pod) => Some(format!("{ns}/{pod}")),
        };
        let entry = json!({
            "time": text(flow, "time"),
            "node": text(flow, "node_name"),
            "source": pod(&flow["source"]).unwrap_or_else(|| text(flow, "IP.source").to_owned()),
            "destination": format!("{}:{}", pod(&flow["destination"]).unwrap_or_else(|| text(flow, "IP.destination").to_owned()), connection.3),
            "verdict": verdict,
            "drop_reason": text(flow, "drop_reason_desc"),
            "policy": policy(flow),
            "summary": text(flow, "Summary"),
        });
        edge.recent.push_back((connection, entry));
        while edge.recent.len() > RECENT_FLOWS {
            edge.recent.pop_front();
        }
    }

    /// The graph as the page reads it, rates over the window ending at `now_ns`.
    fn json(&mut self, now_ns: u64) -> Value {
        let window = RATE_WINDOW.as_nanos() as u64;
        let edges: Vec<Value> = self
            .edges
            .iter_mut()
            .map(|((source, target, verdict), edge)| {
                while edge.times.front().is_some_and(|t| now_ns.saturating_sub(*t) > window) {
                    edge.times.pop_front();
                }
                json!({
                    "id": format!("{source}->{target}:{verdict}"),
                    "source": source,
                    "target": target,
                    "verdict": verdict,
                    "total": edge.total,
                    "rate": edge.times.len() as f64 / RATE_WINDOW.as_secs_f64(),
                    "services": edge.services,
                    "recent": edge.recent.iter().rev().map(|(_, flow)| flow).collect::<Vec<_>>(),
                })
            })
            .collect();
        let agents: Vec<Value> = self
            .agents
            .iter()
            .map(|(url, a)| json!({"url": url, "connected": a.connected, "flows": a.flows, "error": a.error}))
            .collect();
        json!({"nodes": self.nodes.values().collect::<Vec<_>>(), "edges": edges, "agents": agents, "window_seconds": RATE_WINDOW.as_secs()})
    }
}

/// Follows `url`'s flows into `graph` until the process ends, reconnecting when it goes away.
async fn follow(url: String, timeout: Duration, graph: Shared) {
    loop {
        let result = async {
            let channel = crate::channel(&url, timeout).await?;
            let request = GetFlowsRequest { number: REPLAY, follow: true, ..GetFlowsRequest::default() };
            let mut stream = ObserverClient::new(channel)
                .get_flows(crate::with_details(request))
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            if let Ok(mut g) = graph.lock() {
                let agent = g.agents.entry(url.clone()).or_default();
                agent.connected = true;
                agent.error.clear();
            }
            while let Some(response) = stream.message().await.map_err(|s| s.message().to_owned())? {
                let value = crate::print::response_json(&response);
                if let Ok(mut g) = graph.lock() {
                    // Rates by when the flow happened (the replayed ones are older), never later
                    // than now.
                    let now = mesh_agent::flows::unix_now_ns();
                    let at = response.time.as_ref().map_or(now, |t| {
                        (t.seconds.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(t.nanos.max(0) as u64)
                    });
                    g.add(&value["flow"], at.min(now));
                    if let Some(agent) = g.agents.get_mut(&url) {
                        agent.flows += 1;
                    }
                }
            }
            Err::<(), String>("the agent ended the stream".into())
        }
        .await;
        if let (Err(error), Ok(mut g)) = (result, graph.lock()) {
            let agent = g.agents.entry(url.clone()).or_default();
            agent.connected = false;
            agent.error = error;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

async fn respond(request: Request<Incoming>, graph: Shared) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        Ok(response)
    };
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into());
    }
    match request.uri().path() {
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned()),
        "/api/graph" => {
            let body =
                graph.lock().map(|mut g| g.json(mesh_agent::flows::unix_now_ns()).to_string()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "the map is at /, its data at /api/graph\n".into()),
    }
}

/// Serves the map on `listen` for the agents at `agents`; writes the bound address to
/// `ready_file` once it listens. Runs until the process is stopped.
pub async fn run(
    listen: SocketAddr,
    agents: Vec<String>,
    timeout: Duration,
    ready_file: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("--listen {listen}: {e}; choose a free port (--listen 127.0.0.1:PORT)"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let graph: Shared = Arc::default();
    for url in agents {
        tokio::spawn(follow(url, timeout, graph.clone()));
    }
    eprintln!("meshctl: the service map is at http://{bound}/ (Ctrl-C to stop)");
    if let Some(path) = ready_file {
        std::fs::write(&path, bound.to_string()).map_err(|e| format!("--ready-file {}: {e}", path.display()))?;
    }
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| e.to_string())?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let graph = graph.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, graph.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(source: &str, port: u64, destination: &str, verdict: &str) -> Value {
        let endpoint =
            |name: &str| json!({"namespace": "demo", "pod_name": name, "labels": [format!("k8s:app={name}")]});
        json!({
            "verdict": verdict,
            "source": endpoint(source),
            "destination": endpoint(destination),
            "IP": {"source": format!("10.0.0.{}", source.len()), "destination": "10.0.0.2"},
            "l4": {"TCP": {"source_port": port, "destination_port": 8080}},
            "drop_reason_desc": if verdict == "DROPPED" { "POLICY_DENY" } else { "" },
            "extensions": {"rule": "MeshPolicy demo/deny-intruder ingress rule 0"},
        })
    }

    #[test]
    fn connections_fold_into_edges_by_workload_and_worst_verdict() {
        let mut graph = Graph::default();
        let now = 100 * 1_000_000_000;
        // Two client connections, each seen twice (leaving the client, reaching web).
        for port in [40000, 40001] {
            graph.add(&flow("client", port, "web", "FORWARDED"), now);
            graph.add(&flow("client", port, "web", "FORWARDED"), now);
        }
        // The intruder's connection: forwarded where it leaves, dropped where it arrives.
        graph.add(&flow("intruder", 50000, "web", "FORWARDED"), now);
        graph.add(&flow("intruder", 50000, "web", "DROPPED"), now);
        let mut reply = flow("web", 8080, "client", "FORWARDED");
        reply["is_reply"] = json!(true);
        graph.add(&reply, now);
        let json = graph.json(now);
        let edges = json["edges"].as_array().unwrap();
        assert_eq!(edges.len(), 2, "{json:#}");
        let forwarded = edges.iter().find(|e| e["verdict"] == "forwarded").unwrap();
        assert_eq!(
            (forwarded["source"].as_str(), forwarded["target"].as_str()),
            (Some("demo/client"), Some("demo/web"))
        );
        assert_eq!(forwarded["total"], 2);
        assert_eq!(forwarded["rate"], 0.2);
        let dropped = edges.iter().find(|e| e["verdict"] == "dropped").unwrap();
        assert_eq!(dropped["source"], "demo/intruder");
        assert_eq!(dropped["total"], 1);
        // Both of its flows, the newest first.
        assert_eq!(dropped["recent"].as_array().unwrap().len(), 2, "{dropped:#}");
        assert_eq!(dropped["recent"][0]["drop_reason"], "POLICY_DENY");
        assert_eq!(dropped["recent"][0]["policy"], "MeshPolicy demo/deny-intruder ingress rule 0");
        assert_eq!(dropped["recent"][0]["destination"], "demo/web:8080");
        // Out of the window, the rate falls to 0; the total stays.
        let later = graph.json(now + 2 * RATE_WINDOW.as_nanos() as u64);
        assert_eq!(later["edges"][0]["rate"], 0.0);
        assert_eq!(later["edges"][0]["total"], 2);
    }
}
