//! The lab removes everything it made: namespaces, links, cgroups, pins, files and
//! processes, when dropped normally and when the test body panics.

use std::path::Path;

use mesh_tests::{
    agent::Agent,
    lab::{Lab, leftovers},
    labnet,
    privileges::privileged,
};

/// What a lab made, recorded while it runs.
struct Footprint {
    id: String,
    netns: Vec<String>,
    paths: Vec<std::path::PathBuf>,
    pids: Vec<u32>,
    host_ifaces: Vec<String>,
}

/// Builds a 2-node lab, starts a server and an agent in it, and records its footprint.
fn busy_lab() -> (Lab, Footprint) {
    let lab = Lab::new(&[&["a", "b"], &["c"]]).expect("lab");
    let server = labnet::serve(&lab, lab.pod("b"), 8080, "b").expect("server");
    let state = format!("pods:\n  - {{name: a, ip: {}}}\n  - {{name: b, ip: {}}}\n", lab.pod("a").ip, lab.pod("b").ip);
    let agent = Agent::start(&lab, &lab.nodes[0], &state, &[]).expect("agent");
    let footprint = Footprint {
        id: lab.id.clone(),
        netns: std::fs::read_dir("/run/netns")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(&lab.netns_prefix()))
            .collect(),
        paths: vec![
            lab.cgroup_root().to_owned(),
            lab.bpffs_root().to_owned(),
            lab.nodes[0].bpffs.clone(),
            lab.dir.clone(),
        ],
        pids: vec![server, agent.pid],
        host_ifaces: lab.nodes.iter().flat_map(|n| &n.pods).map(|p| p.host_iface.clone()).collect(),
    };
    // 1 fabric + 2 nodes + 3 pods.
    assert_eq!(footprint.netns.len(), 6, "{:?}", footprint.netns);
    for path in &footprint.paths {
        assert!(path.exists(), "{} should exist while the lab runs", path.display());
    }
    (lab, footprint)
}

fn assert_gone(footprint: &Footprint) {
    for netns in &footprint.netns {
        assert!(!Path::new("/run/netns").join(netns).exists(), "namespace {netns} left behind");
    }
    for path in &footprint.paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    for pid in &footprint.pids {
        // Gone, or (for a lab whose `Lab` was never dropped) a zombie nobody reaped. A reused
        // pid would be some other program.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ours = status.contains("labnet") || status.contains("mesh-agent");
        assert!(!ours || status.contains("State:\tZ"), "process {pid} left behind:\n{status}");
    }
    // The host-side veths lived in the node namespaces; none may have leaked to the host.
    let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    for iface in &footprint.host_ifaces {
        assert!(!links.contains(iface.as_str()), "link {iface} left behind");
    }
    assert!(leftovers().iter().all(|l| l.id != footprint.id), "lab {} still listed", footprint.id);
}

#[test]
fn a_dropped_lab_leaves_nothing_behind() {
    if !privileged("a_dropped_lab_leaves_nothing_behind") {
        return;
    }
    let (lab, footprint) = busy_lab();
    drop(lab);
    assert_gone(&footprint);
}

#[test]
fn a_panicking_test_body_leaves_nothing_behind() {
    if !privileged("a_panicking_test_body_leaves_nothing_behind") {
        return;
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let (_lab, footprint) = busy_lab();
        sender.send(footprint).unwrap();
        panic!("the test body fails while the lab runs");
    });
    assert!(outcome.is_err(), "the body was meant to panic");
    let footprint = receiver.recv().expect("the footprint was recorded before the panic");
    assert_gone(&footprint);
}

#[test]
fn a_crashed_runs_lab_is_found_and_removed_as_a_leftover() {
    if !privileged("a_crashed_runs_lab_is_found_and_removed_as_a_leftover") {
        return;
    }
    let (lab, footprint) = busy_lab();
    // Make it look like a lab whose owner died without dropping it: its owner record names a
    // process that has exited, and the `Lab` value is never dropped.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(lab.dir.join("owner"), format!("{dead_pid} 1")).unwrap();
    std::mem::forget(lab);

    let found = leftovers().into_iter().find(|l| l.id == footprint.id).expect("the crashed lab is listed");
    assert!(!found.owner_alive, "{found:?}");
    assert!(found.resources.len() >= 6 + 3, "namespaces, cgroup, bpffs and run dir: {found:?}");

    let (removed, problems) = mesh_tests::lab::remove_leftovers(false);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(removed.iter().any(|l| l.id == footprint.id), "{removed:?}");
    // Its processes were killed through its cgroup (they stay zombies of this test process).
    assert_gone(&footprint);
}
