//! The agent binary, given a bad state file, exits with an error that names the file and the
//! field, before it touches the kernel.

use std::process::Command;

const GOOD: &str = "pods:
  - {name: backend-a, ip: 10.244.0.3}
  - {name: backend-b, ip: 10.244.0.4}
services:
  - name: web
    ip: 10.96.0.10
    port: 80
    backends:
      - {pod: backend-a, port: 8080}
      - {pod: backend-b, port: 8080}
";

/// Runs the agent on `state`; returns its exit success and stderr, and the file's path.
fn run_agent(state: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.yaml");
    std::fs::write(&file, state).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["--node-name", "node-0", "--cgroup", "/nonexistent", "--state-file"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), file.display().to_string())
}

fn assert_refused(state: &str, field: &str, detail: &str) {
    let (success, stderr, file) = run_agent(state);
    assert!(!success, "the agent accepted a bad state file:\n{state}");
    let expected = format!("mesh-agent: error: {file}: {field}: ");
    assert!(stderr.contains(&expected), "expected {expected:?} in:\n{stderr}");
    assert!(stderr.contains(detail), "expected {detail:?} in:\n{stderr}");
}

#[test]
fn an_unknown_pod_is_refused_with_file_and_field() {
    assert_refused(
        &GOOD.replace("{pod: backend-b,", "{pod: backend-z,"),
        "services[0].backends[1].pod",
        "\"backend-z\"",
    );
}

#[test]
fn a_bad_ip_is_refused_with_file_and_field() {
    assert_refused(&GOOD.replace("10.244.0.4", "10.244.0.400"), "pods[1].ip", "invalid IP");
    assert_refused(&GOOD.replace("10.96.0.10", "not-an-ip"), "services[0].ip", "invalid IP");
}

#[test]
fn a_port_out_of_range_is_refused_with_file_and_field() {
    assert_refused(&GOOD.replace("port: 80\n", "port: 65536\n"), "services[0].port", "65536 is out of range");
    assert_refused(
        &GOOD.replace("{pod: backend-a, port: 8080}", "{pod: backend-a, port: -1}"),
        "services[0].backends[0].port",
        "-1 is out of range",
    );
}

#[test]
fn a_valid_file_gets_past_parsing_to_the_next_check() {
    // The control for the cases above: the unmodified file is accepted, and the agent stops
    // at the (deliberately) missing cgroup instead.
    let (success, stderr, _) = run_agent(GOOD);
    assert!(!success && stderr.contains("MESH_CGROUP: /nonexistent is not a cgroup v2 directory"), "{stderr}");
}

#[test]
fn a_missing_file_is_refused_with_its_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["--node-name", "node-0", "--cgroup", "/nonexistent", "--state-file", "/nonexistent/state.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mesh-agent: error: /nonexistent/state.yaml: cannot read it"), "{stderr}");
}
