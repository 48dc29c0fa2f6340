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
        let run = next_run(lab, &node.name);
        let state_file = lab.dir.join(format!("{run}.state.yaml"));
        write(&state_file, state)?;
        let mut args = vec!["--state-file".to_owned(), state_file.display().to_string()];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Self::launch(lab, node, &run, &args)
    }

    /// Starts the agent of `node` following the operator at `endpoint` (`http://…`) and
    /// waits until it has applied a first update.
    pub fn follow(lab: &Lab, node: &Node, endpoint: &str, extra_args: &[&str]) -> Result<Self> {
        let run = next_run(lab, &node.name);
        let mut args = vec!["--operator".to_owned(), endpoint.to_owned()];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Self::launch(lab, node, &run, &args)
    }

    /// Starts the agent of `node` following `endpoint` without waiting for it to be ready
    /// (for agents that are meant to be refused).
    pub fn spawn_following(lab: &Lab, node: &Node, endpoint: &str, extra_args: &[&str]) -> Result<Self> {
        let run = next_run(lab, &node.name);
        let mut args = vec!["--operator".to_owned(), endpoint.to_owned()];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Self::spawn(lab, node, &run, &args)
    }

    fn launch(lab: &Lab, node: &Node, run: &str, args: &[String]) -> Result<Self> {
        let agent = Self::spawn(lab, node, run, args)?;
        if let Err(err) = lab.wait_for_file(&agent.ready_file, agent.pid, READY_TIMEOUT) {
            return Err(LabError::Command {
                command: format!("mesh-agent of {}", node.name),
                message: format!("{err}; its log:\n{}", agent.log()),
            });
        }
        Ok(agent)
    }

    fn spawn(lab: &Lab, node: &Node, run: &str, args: &[String]) -> Result<Self> {
        let ready_file = lab.dir.join(format!("{run}.ready"));
        let log_file = lab.dir.join(format!("{run}.log"));
        let log = std::fs::File::create(&log_file).map_err(|source| LabError::Io {
            what: "creating",
            path: log_file.clone(),
            source,
        })?;
        let mut command = lab.system_command(crate::agent_binary())?;
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
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let pid = lab.spawn(&mut command)?;
        Ok(Self { pid, node: node.name.clone(), ready_file, log_file })
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

/// A name for the next agent run on `node`, unique within the lab.
fn next_run(lab: &Lab, node: &str) -> String {
    (0..)
        .map(|i| format!("agent-{node}-{i}"))
        .find(|run| !lab.dir.join(format!("{run}.log")).exists())
        .expect("a free name")
}

fn write(path: &PathBuf, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| LabError::Io { what: "writing", path: path.clone(), source })
}
