//! Running the real `meshctl` against a lab agent's Observer API.

use std::{path::Path, process::Command};

/// What one `meshctl` run printed.
#[derive(Debug, Clone)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `meshctl --server unix://<socket> <args>` to completion.
pub fn run(socket: &Path, args: &[&str]) -> Run {
    let output = Command::new(crate::built_binary("meshctl"))
        .arg("--server")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .expect("meshctl runs");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The flows of `meshctl observe -o json --all <args>`, each the `flow` object of a
/// `GetFlowsResponse` line. Panics with meshctl's error if it fails.
pub fn flows(socket: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let run = run(socket, &[&["observe", "-o", "json", "--all"], args].concat());
    assert!(run.success, "meshctl observe {args:?} failed: {}", run.stderr);
    run.stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|response| response.get("flow").cloned())
        .collect()
}
