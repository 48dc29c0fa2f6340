//! Running the mesh by hand, as RUNNING.md says, twice on one host (issue 15): two labs whose
//! nodes have the same names, each with its operator and one agent per node started with
//! nothing but the required flags. The agents pick paths of their own (the Observer socket in
//! `/run/mesh/<instance>/`, pins in `/sys/fs/bpf/mesh/<instance>/`, the instance being the node
//! namespace's name), so both meshes work; `meshctl` without `--server` names every agent of
//! the host instead of guessing; and a stopped agent leaves no pins behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mesh_tests::{
    lab::{Lab, Placement},
    labnet,
    operator::{Operator, free_port},
    privileges::privileged,
    scenario::{self, demo},
};

/// An agent started as RUNNING.md shows: node name, cgroup, namespace, operator, ready file.
struct ByHand {
    pid: u32,
    log: PathBuf,
    socket: PathBuf,
    bpffs: PathBuf,
}

fn start_agent(lab: &Lab, node: usize, operator: &str) -> ByHand {
    let node = &lab.nodes[node];
    let (mut command, ready, log) =
        lab.daemon_command(mesh_tests::agent_binary(), &format!("agent-{}", node.name)).unwrap();
    command.args(["--node-name", &node.name, "--operator", operator, "--ready-file"]).arg(&ready);
    command.arg("--cgroup").arg(&node.cgroup).arg("--netns").arg(&node.netns_path);
    let pid = lab.spawn(&mut command).unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    lab.wait_for_file(&ready, pid, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}\n{}", log_text()));
    // The namespace's name (`ip netns`): unique on the host, unlike the node's.
    let instance = node.netns_path.file_name().unwrap().to_str().unwrap().to_owned();
    ByHand {
        pid,
        log,
        socket: Path::new("/run/mesh").join(&instance).join("observer.sock"),
        bpffs: Path::new("/sys/fs/bpf/mesh").join(&instance),
    }
}

/// Files pinned under `dir` (0 when it is gone).
fn pins(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map_or(0, |entries| entries.flatten().map(|e| if e.path().is_dir() { pins(&e.path()) } else { 1 }).sum())
}

fn meshctl(args: &[&str]) -> std::process::Output {
    std::process::Command::new(mesh_tests::built_binary("meshctl")).args(args).output().expect("meshctl runs")
}

#[test]
fn two_meshes_run_by_hand_side_by_side_with_the_default_paths() {
    if !privileged("two_meshes_run_by_hand_side_by_side_with_the_default_paths") {
        return;
    }
    let labs: Vec<(Lab, PathBuf)> = (0..2).map(|_| demo::lab().expect("lab")).collect();
    let mut agents = Vec::new();
    let mut operators = Vec::new();
    for (lab, manifests) in &labs {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let operator = Operator::start(lab, manifests, listen).expect("operator serves");
        for node in 0..lab.nodes.len() {
            agents.push((lab, start_agent(lab, node, &operator.endpoint())));
        }
        operators.push(operator);
    }
    let logs = || agents.iter().map(|(_, a)| std::fs::read_to_string(&a.log).unwrap_or_default()).collect::<String>();

    // Both meshes balance their own client's connections to both of their web pods.
    for (lab, _) in &labs {
        let client = Placement::pod(lab.pod(demo::CLIENT));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let summary = labnet::connect(lab, &client, scenario::service_addr(), 20, Duration::from_secs(2)).unwrap();
            if summary.failed == 0 && summary.replies.len() == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "lab {}: {summary:?}\n{}", lab.id, logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Each agent serves on a socket of its own, and says which node and model it has.
    for (lab, agent) in &agents {
        assert!(agent.socket.exists(), "no socket at {}\n{}", agent.socket.display(), logs());
        assert!(pins(&agent.bpffs) > 0, "no pins at {}", agent.bpffs.display());
        let server = format!("unix://{}", agent.socket.display());
        let status = meshctl(&["--server", &server, "status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success() && text.contains("Model: version "), "{text}");
        let instance = agent.socket.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert!(instance.starts_with(&lab.netns_prefix()), "{instance}");
    }
    // Without --server, meshctl does not pick one of them for the user: it names them.
    if !Path::new(mesh_agent::config::DEFAULT_OBSERVER_SOCKET).exists() {
        let status = meshctl(&["status"]);
        let error = String::from_utf8_lossy(&status.stderr);
        assert!(!status.status.success(), "{error}");
        for (_, agent) in &agents {
            assert!(error.contains(&agent.socket.display().to_string()), "{error}");
        }
    }

    // Stopped, each removes its pins and its socket.
    for (lab, agent) in &agents {
        assert!(lab.stop(agent.pid, Duration::from_secs(10)).unwrap().success());
        assert_eq!(pins(&agent.bpffs), 0, "pins left at {}", agent.bpffs.display());
        assert!(!agent.socket.exists(), "{} left", agent.socket.display());
        let _ = std::fs::remove_dir(&agent.bpffs);
        let _ = std::fs::remove_dir(agent.socket.parent().unwrap());
    }
    // And the default roots the agents made, when nothing else is in them (`remove_dir` leaves
    // a directory that is not empty).
    if let Some((_, agent)) = agents.first() {
        for root in [agent.bpffs.parent(), agent.socket.parent().and_then(Path::parent)].into_iter().flatten() {
            let _ = std::fs::remove_dir(root);
        }
    }
}
