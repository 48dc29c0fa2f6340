//! Driving the `labnet` traffic tool (`src/bin/labnet.rs`) from tests and the demo.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabError, Placement, Pod, Result};

/// What `labnet connect` prints: replies by text, failures by error.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub ok: u32,
    pub failed: u32,
    pub replies: BTreeMap<String, u32>,
    pub errors: BTreeMap<String, u32>,
    pub elapsed_ms: u128,
}

/// The `labnet` binary.
pub fn binary() -> PathBuf {
    crate::built_binary("labnet")
}

/// Starts `labnet serve` in `pod` on `port`, answering `reply`, and waits until it listens.
pub fn serve(lab: &Lab, pod: &Pod, port: u16, reply: &str) -> Result<u32> {
    let ready = lab.dir.join(format!("serve-{}-{port}.ready", pod.name));
    let mut command = lab.pod_command(pod, binary())?;
    command.args(["serve", "--port", &port.to_string(), "--reply", reply, "--ready-file"]).arg(&ready);
    let pid = lab.spawn(&mut command)?;
    lab.wait_for_file(&ready, pid, Duration::from_secs(10))?;
    Ok(pid)
}

/// Runs `labnet connect` with `placement`: `count` connections to `to`, one after another,
/// each given `per_connection` to connect and read the reply.
pub fn connect(
    lab: &Lab,
    placement: &Placement,
    to: SocketAddr,
    count: u32,
    per_connection: Duration,
) -> Result<Summary> {
    let mut command = lab.placed_command(placement, binary())?;
    command.args(["connect", "--to", &to.to_string(), "--count", &count.to_string()]);
    command.args(["--timeout-ms", &per_connection.as_millis().to_string()]);
    let bound = per_connection * count.saturating_mul(2) + Duration::from_secs(5);
    let output = lab.run(&mut command, bound)?;
    let invalid = |message: String| LabError::Command { command: "labnet connect".into(), message };
    if !output.status.success() {
        return Err(invalid(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|err| invalid(format!("{err}: {}", String::from_utf8_lossy(&output.stdout))))
}
