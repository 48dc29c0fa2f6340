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

/// Waits (bounded, 20 s) until the agent of `node` holds a valid certificate for every one of
/// `identities` (SPIFFE IDs), as `meshctl status` shows them. Panics with the status if not.
pub fn wait_for_certificates(lab: &crate::lab::Lab, node: &str, identities: &[String]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let run = run(&crate::agent::observer_socket(lab, node), &["status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        let valid: Vec<&str> = status["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"] == "valid")
            .filter_map(|c| c["identity"].as_str())
            .collect();
        if identities.iter().all(|identity| valid.contains(&identity.as_str())) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node}: no valid certificates for {identities:?}: {}",
            run.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Starts `meshctl ui` on `listen` following `agents`' Observer sockets, in the lab (ended with
/// it); returns its pid and the address it serves on, once it serves.
pub fn start_ui(
    lab: &crate::lab::Lab,
    agents: &[crate::agent::Agent],
    listen: &str,
) -> crate::lab::Result<(u32, String)> {
    let ready = lab.dir.join("ui.ready");
    let mut command = lab.system_command(crate::built_binary("meshctl"))?;
    command.args(["ui", "--listen", listen, "--ready-file"]).arg(&ready);
    for agent in agents {
        command.arg("--agent").arg(format!("unix://{}", agent.observer_socket(lab).display()));
    }
    let pid = lab.spawn(&mut command)?;
    lab.wait_for_file(&ready, pid, std::time::Duration::from_secs(10))?;
    let address = std::fs::read_to_string(&ready).map_err(|source| crate::lab::LabError::Io {
        what: "reading",
        path: ready.clone(),
        source,
    })?;
    Ok((pid, address))
}
