//! Kubernetes manifests for lab tests, written as the YAML a user would write, and a running
//! mesh (operator in local mode + one agent per node) that reads them.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    agent::Agent,
    lab::{Lab, LabError, Pod, Result},
    operator::Operator,
};

/// A namespace.
pub fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n---\n")
}

/// A Node with its lab fabric address as InternalIP.
pub fn node(name: &str, ip: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n    - type: InternalIP\n      address: {ip}\n---\n"
    )
}

/// The Node objects of every lab node.
pub fn nodes(lab: &Lab) -> String {
    lab.nodes.iter().map(|n| node(&n.name, n.ip)).collect()
}

/// A pod of the lab, as its manifest.
#[derive(Debug, Clone, Default)]
pub struct PodManifest<'a> {
    /// Its name in the manifest, if not the lab pod's.
    pub name: Option<&'a str>,
    pub labels: &'a [(&'a str, &'a str)],
    pub annotations: &'a [(&'a str, &'a str)],
    /// Container ports: name, number, protocol.
    pub ports: &'a [(&'a str, u16, &'a str)],
    /// Not ready (its Ready condition False).
    pub unready: bool,
    /// Being deleted (a deletionTimestamp).
    pub terminating: bool,
}

impl PodManifest<'_> {
    /// The manifest of lab pod `pod` in namespace `ns`.
    pub fn render(&self, ns: &str, pod: &Pod) -> String {
        let node = &pod.node;
        let name = self.name.unwrap_or(&pod.name);
        let mut out = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n");
        if self.terminating {
            out.push_str("  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n");
        }
        for (title, pairs) in [("labels", self.labels), ("annotations", self.annotations)] {
            if !pairs.is_empty() {
                let _ = writeln!(out, "  {title}:");
                for (k, v) in pairs {
                    let _ = writeln!(out, "    {k}: \"{v}\"");
                }
            }
        }
        let _ = write!(out, "spec:\n  nodeName: {node}\n  containers:\n    - name: main\n      image: labnet\n");
        if !self.ports.is_empty() {
            out.push_str("      ports:\n");
            for (name, number, protocol) in self.ports {
                let _ = writeln!(out, "        - {{name: {name}, containerPort: {number}, protocol: {protocol}}}");
            }
        }
        let ready = if self.unready { "False" } else { "True" };
        let _ = write!(
            out,
            "status:\n  phase: Running\n  podIP: {}\n  conditions:\n    - {{type: Ready, status: \"{ready}\"}}\n---\n",
            pod.ip
        );
        out
    }
}

/// A Service in `ns` with `spec` (YAML, indented by two spaces, without `spec:`).
pub fn service(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n")
}

/// The operator in local mode on a manifests directory and one agent per lab node.
pub struct Mesh {
    pub manifests: PathBuf,
    pub operator: Operator,
    pub agents: Vec<Agent>,
}

/// The manifests file tests write (one file; rewritten whole).
const FILE: &str = "cluster.yaml";

impl Mesh {
    /// Writes `text` as the cluster's manifests, starts the operator and an agent per node
    /// (with `agent_args`), and waits until each agent has applied the first update.
    pub fn start(lab: &Lab, text: &str, agent_args: &[&str]) -> Result<Self> {
        let manifests = Self::prepare(lab, text)?;
        let listen = SocketAddr::from(([127, 0, 0, 1], crate::operator::free_port()));
        let operator = Operator::start(lab, &manifests, listen)?;
        let mut mesh = Self { manifests, operator, agents: Vec::new() };
        for node in &lab.nodes {
            mesh.agents.push(Agent::follow(lab, node, &mesh.operator.endpoint(), agent_args)?);
        }
        Ok(mesh)
    }

    /// As [`Mesh::start`], with the operator's CA and every agent on mutual TLS with its node
    /// bundle: the agents get workload certificates and run the tunnel.
    pub fn start_with_pki(lab: &Lab, text: &str, agent_args: &[&str]) -> Result<Self> {
        let manifests = Self::prepare(lab, text)?;
        let (operator, bundles) = Operator::start_with_pki(lab, &manifests, &[])?;
        let agents = Agent::follow_each_over_tls(lab, &operator, &bundles, agent_args)?;
        Ok(Self { manifests, operator, agents })
    }

    /// The manifests directory with `text` as its one file.
    fn prepare(lab: &Lab, text: &str) -> Result<PathBuf> {
        let manifests = lab.dir.join("manifests");
        std::fs::create_dir_all(&manifests).map_err(|source| LabError::Io {
            what: "creating",
            path: manifests.clone(),
            source,
        })?;
        write_atomically(&manifests, text)?;
        Ok(manifests)
    }

    /// Stops the agents (SIGTERM: each detaches its programs) and then the operator, and
    /// fails unless each exited cleanly. Dropping a `Mesh` leaves them running (the lab ends
    /// them when it goes).
    pub fn stop(self, lab: &Lab) -> Result<()> {
        let grace = Duration::from_secs(30);
        for agent in &self.agents {
            let status = lab.stop(agent.pid, grace)?;
            if !status.success() {
                return Err(LabError::Command {
                    command: format!("mesh-agent of {}", agent.node),
                    message: format!("exited with {status} when stopped; its log:\n{}", agent.log()),
                });
            }
        }
        let status = lab.stop(self.operator.pid, grace)?;
        if !status.success() {
            return Err(LabError::Command {
                command: "mesh-operator".into(),
                message: format!("exited with {status} when stopped; its log:\n{}", self.operator.log()),
            });
        }
        Ok(())
    }

    /// Replaces the manifests (atomically: the operator never reads half a file).
    pub fn write(&self, text: &str) -> Result<()> {
        write_atomically(&self.manifests, text)
    }

    /// The operator's and agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = format!("--- operator:\n{}", self.operator.log());
        for agent in &self.agents {
            let _ = write!(out, "--- agent {}:\n{}", agent.node, agent.log());
        }
        out
    }
}

fn write_atomically(dir: &std::path::Path, text: &str) -> Result<()> {
    let tmp = dir.join(".cluster.yaml.tmp");
    let io = |source| LabError::Io { what: "writing", path: tmp.clone(), source };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io)
}

/// Polls `check` every 50 ms until it returns `Ok`, for at most `timeout`; the last error
/// otherwise.
pub fn eventually<T>(
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if std::time::Instant::now() >= deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
