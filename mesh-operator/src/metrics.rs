//! Prometheus metrics of the operator, served as text on `/metrics`: the model's version and
//! size, the agents connected, and every agent's ACKs and NACKs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The default address of the metrics endpoint.
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:15151";

#[derive(Default)]
pub struct Metrics {
    connected: AtomicI64,
    /// node -> (ACKs, NACKs)
    replies: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
    pub fn connected(&self, up: bool) {
        self.connected.fetch_add(if up { 1 } else { -1 }, Ordering::Relaxed);
    }

    pub fn reply(&self, node: &str, ack: bool) {
        let mut replies = self.replies.lock().expect("metrics lock");
        let counts = replies.entry(node.to_owned()).or_default();
        if ack {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    /// The exposition text, with the model's `version` and `resources`.
    pub fn render(&self, version: u64, resources: usize) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(
            &mut out,
            "mesh_operator_model_version",
            "Version of the model the operator serves.",
            version.to_string(),
        );
        gauge(&mut out, "mesh_operator_model_resources", "Resources in the model.", resources.to_string());
        gauge(
            &mut out,
            "mesh_operator_agents_connected",
            "Agent streams open.",
            self.connected.load(Ordering::Relaxed).to_string(),
        );
        let replies = self.replies.lock().expect("metrics lock");
        for (name, help, pick) in [
            ("mesh_operator_agent_acks_total", "Updates agents acknowledged.", 0),
            ("mesh_operator_agent_nacks_total", "Updates agents rejected (NACK).", 1),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (node, counts) in replies.iter() {
                let value = if pick == 0 { counts.0 } else { counts.1 };
                let _ = writeln!(out, "{name}{{node=\"{}\"}} {value}", node.replace('\\', "\\\\").replace('"', "\\\""));
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` forever; `render` makes the body.
pub async fn serve(listener: tokio::net::TcpListener, render: impl Fn() -> String + Send + Sync + 'static) {
    let render = std::sync::Arc::new(render);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(n) = stream.read(&mut request).await else { return };
            let found = request[..n].starts_with(b"GET /metrics ") || request[..n].starts_with(b"GET /metrics?");
            let (status, body) =
                if found { ("200 OK", render()) } else { ("404 Not Found", "see /metrics\n".to_owned()) };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_each_nodes_replies() {
        let metrics = Metrics::default();
        metrics.connected(true);
        metrics.reply("node-0", true);
        metrics.reply("node-0", false);
        metrics.reply("node-1", true);
        let text = metrics.render(7, 42);
        for line in [
            "mesh_operator_model_version 7",
            "mesh_operator_model_resources 42",
            "mesh_operator_agents_connected 1",
            "mesh_operator_agent_acks_total{node=\"node-0\"} 1",
            "mesh_operator_agent_nacks_total{node=\"node-0\"} 1",
            "mesh_operator_agent_nacks_total{node=\"node-1\"} 0",
            "# TYPE mesh_operator_agent_nacks_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
    }
}
