//! Running the real `mesh-agent` for a lab node.

use std::{path::PathBuf, time::Duration};

use crate::lab::{Lab, LabError, Node, Result};

/// How long an agent may take from start to ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent of a lab node.
#[derive(Debug, Clone)]
pub struct Agent {
    pub pid: u32,
    pub node: String,
    pub ready_file: PathBuf,
    /// Its stderr (the tracing log).
    pub log_file: PathBuf,
}

impl Agent {
    /// Starts the agent of `node` with the state file `state` (YAML) and waits until it is
    /// ready. `extra_args` are added to its command line (`--keep-datapath`).
    pub fn start(lab: &Lab, node: &Node, state: &str, extra_args: &[&str]) -> Result<Self> {
        let agent = Self::spawn_with_state(lab, node, state, extra_args)?;
        agent.wait_ready(lab)?;
        Ok(agent)
    }

    /// Starts the agent of `node` with the state file `state` without waiting for it.
    pub fn spawn_with_state(lab: &Lab, node: &Node, state: &str, extra_args: &[&str]) -> Result<Self> {
        let state_file = (0..)
            .map(|i| lab.dir.join(format!("state-{}-{i}.yaml", node.name)))
            .find(|path| !path.exists())
            .expect("a free name");
        std::fs::write(&state_file, state).map_err(|source| LabError::Io {
            what: "writing",
            path: state_file.clone(),
            source,
        })?;
        let state_arg = state_file.display().to_string();
        Self::spawn(lab, node, &[&["--state-file", &state_arg], extra_args].concat())
    }

    /// Starts the agent of `node` following the operator at `endpoint` (`http://…`) and
    /// waits until it has applied a first update.
    pub fn follow(lab: &Lab, node: &Node, endpoint: &str, extra_args: &[&str]) -> Result<Self> {
        Self::launch(lab, node, &[&["--operator", endpoint], extra_args].concat())
    }

    /// One agent per lab node, in the lab's order, following `operator` over mutual TLS with
    /// its node's bundle (`bundles`, as `Operator::start_with_pki` issued them), each ready.
    pub fn follow_each_over_tls(
        lab: &Lab,
        operator: &crate::operator::Operator,
        bundles: &[PathBuf],
        extra_args: &[&str],
    ) -> Result<Vec<Self>> {
        lab.nodes
            .iter()
            .zip(bundles)
            .map(|(node, bundle)| {
                let bundle = bundle.display().to_string();
                let args = [extra_args, &["--tls-dir", bundle.as_str()]].concat();
                Self::follow(lab, node, &operator.tls_endpoint(), &args)
            })
            .collect()
    }

    /// Starts the agent of `node` following `endpoint` without waiting for it to be ready
    /// (for agents that are meant to be refused).
    pub fn spawn_following(lab: &Lab, node: &Node, endpoint: &str, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(lab, node, &[&["--operator", endpoint], extra_args].concat())
    }

    fn launch(lab: &Lab, node: &Node, args: &[&str]) -> Result<Self> {
        let agent = Self::spawn(lab, node, args)?;
        agent.wait_ready(lab)?;
        Ok(agent)
    }

    fn wait_ready(&self, lab: &Lab) -> Result<()> {
        lab.wait_for_file(&self.ready_file, self.pid, READY_TIMEOUT).map_err(|err| LabError::Command {
            command: format!("mesh-agent of {}", self.node),
            message: format!("{err}; its log:\n{}", self.log()),
        })
    }

    fn spawn(lab: &Lab, node: &Node, args: &[&str]) -> Result<Self> {
        let (mut command, ready_file, log_file) =
            lab.daemon_command(crate::agent_binary(), &format!("agent-{}", node.name))?;
        command
            .arg("--node-name")
            .arg(&node.name)
            .arg("--cgroup")
            .arg(&node.cgroup)
            .arg("--bpffs")
            .arg(&node.bpffs)
            .arg("--netns")
            .arg(&node.netns_path)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--observer-socket")
            .arg(observer_socket(lab, &node.name))
            .args(args);
        let pid = lab.spawn(&mut command)?;
        Ok(Self { pid, node: node.name.clone(), ready_file, log_file })
    }

    /// Its Observer API socket (`meshctl --server unix://…`).
    pub fn observer_socket(&self, lab: &Lab) -> PathBuf {
        observer_socket(lab, &self.node)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

/// Where the agent of `node` serves the Observer API: one socket per lab node.
pub fn observer_socket(lab: &Lab, node: &str) -> PathBuf {
    lab.dir.join(format!("observer-{node}.sock"))
}
