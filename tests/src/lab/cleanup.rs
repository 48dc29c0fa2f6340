//! Removing a lab: on drop, and for labs whose owner died without dropping them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{BPFFS, Lab, PREFIX, RUN_DIR, cgroup2_mount, net};

/// The file in a lab's run directory that names its owner: `<pid> <start time>`.
pub(super) const OWNER_FILE: &str = "owner";

impl Lab {
    /// Removes everything the lab made; returns what could not be removed.
    pub(super) fn teardown(&self) -> Vec<String> {
        let mut problems = self.stop_all();
        problems.extend(remove_lab(&self.id));
        problems
    }
}

/// Writes the owner file's content for the current process.
pub(super) fn owner_record() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or_default())
}

/// A lab found on this machine that no live process owns.
#[derive(Debug, Clone, Serialize)]
pub struct Leftover {
    pub id: String,
    /// The pid that created it, if its record survived.
    pub owner: Option<u32>,
    /// Whether that owner still runs (then it is not a leftover, unless `--all`).
    pub owner_alive: bool,
    /// What exists of it: namespaces, cgroup, bpffs directory, run directory.
    pub resources: Vec<String>,
}

/// Every lab on this machine (its resources), whether its owner is alive or not.
pub fn leftovers() -> Vec<Leftover> {
    let mut labs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let ns_prefix = format!("{PREFIX}-");
    for name in dir_names(Path::new("/run/netns")) {
        if let Some(id) = name.strip_prefix(&ns_prefix).and_then(|rest| rest.split('-').next()) {
            labs.entry(id.to_owned()).or_default().push(format!("netns {name}"));
        }
    }
    let roots = [cgroup2_mount().map(|p| ("cgroup", p)), Some(("bpffs", PathBuf::from(BPFFS)))];
    for (kind, root) in roots.into_iter().flatten() {
        for name in dir_names(&root) {
            if let Some(id) = name.strip_prefix(&ns_prefix) {
                labs.entry(id.to_owned()).or_default().push(format!("{kind} {}", root.join(&name).display()));
            }
        }
    }
    for id in dir_names(Path::new(RUN_DIR)) {
        labs.entry(id.clone()).or_default().push(format!("dir {}", Path::new(RUN_DIR).join(&id).display()));
    }
    labs.into_iter()
        .map(|(id, resources)| {
            let record = std::fs::read_to_string(Path::new(RUN_DIR).join(&id).join(OWNER_FILE)).unwrap_or_default();
            let mut fields = record.split_whitespace();
            let owner = fields.next().and_then(|pid| pid.parse::<u32>().ok());
            let started = fields.next().and_then(|t| t.parse::<u64>().ok());
            let owner_alive = owner.is_some_and(|pid| start_time(pid).is_some() && start_time(pid) == started);
            Leftover { id, owner, owner_alive, resources }
        })
        .collect()
}

/// Removes every lab whose owner is gone (with `all`, every lab, owned or not). Returns the
/// labs removed and the problems met.
pub fn remove_leftovers(all: bool) -> (Vec<Leftover>, Vec<String>) {
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    for lab in leftovers() {
        if lab.owner_alive && !all {
            continue;
        }
        problems.extend(remove_lab(&lab.id).into_iter().map(|p| format!("lab {}: {p}", lab.id)));
        removed.push(lab);
    }
    (removed, problems)
}

/// Removes what lab `id` made, in an order that lets each step succeed: processes, cgroups,
/// namespaces (and with them every link), pins, files.
fn remove_lab(id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let name = format!("{PREFIX}-{id}");
    if let Some(cgroup2) = cgroup2_mount() {
        let root = cgroup2.join(&name);
        if root.exists() {
            problems.extend(kill_cgroup(&root));
            problems.extend(remove_cgroup_tree(&root));
        }
    }
    let ns_prefix = format!("{name}-");
    for netns in dir_names(Path::new("/run/netns")).into_iter().filter(|n| n.starts_with(&ns_prefix)) {
        if let Err(err) = net::run(Command::new("ip").args(["netns", "del", &netns])) {
            problems.push(err.to_string());
        }
    }
    for dir in [Path::new(BPFFS).join(&name), Path::new(RUN_DIR).join(id)] {
        if let Err(err) = std::fs::remove_dir_all(&dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {err}", dir.display()));
        }
    }
    problems
}

/// Kills every process in the cgroup subtree (all were started by the lab) and waits until
/// it is empty.
fn kill_cgroup(root: &Path) -> Option<String> {
    if let Err(err) = std::fs::write(root.join("cgroup.kill"), "1") {
        return Some(format!("{}: cgroup.kill: {err}", root.display()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(root.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|line| line == "populated 0") {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(format!("{}: processes still running 5 s after cgroup.kill", root.display()))
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for child in dir_names(dir) {
        let path = dir.join(&child);
        if path.is_dir() {
            problems.extend(remove_cgroup_tree(&path));
        }
    }
    if let Err(err) = std::fs::remove_dir(dir) {
        problems.push(format!("removing cgroup {}: {err}", dir.display()));
    }
    problems
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// A process's start time (clock ticks since boot), which tells it apart from a later
/// process that reuses its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let record = owner_record();
        let mut fields = record.split_whitespace();
        assert_eq!(fields.next().unwrap(), std::process::id().to_string());
        assert!(fields.next().unwrap().parse::<u64>().unwrap() > 0);
    }
}
