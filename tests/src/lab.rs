//! The lab: N nodes x M pods as network namespaces, with a cgroup v2 subtree per node.
//!
//! ```text
//!   pod netns (eth0 10.244.N.x/32, default via 169.254.1.1)
//!        │ veth (host side: holds 169.254.1.1, a /32 route to the pod)
//!   node netns "node-N" (eth0 172.18.0.N+2/16, routes to other nodes' pod /24s)
//!        │ veth
//!   fabric netns (bridge br0 joining every node)
//! ```
//!
//! Addresses follow kind's defaults (pods 10.244.N.0/24 on node N) but the mesh never
//! assumes them. Everything a lab makes carries its id: namespaces `meshlab-<id>-…`, cgroups
//! under `<cgroup2>/meshlab-<id>/`, pins under `/sys/fs/bpf/meshlab-<id>/`, files under
//! `/run/meshlab/<id>/`. Dropping the [`Lab`] (also on panic) removes all of it; labs left by
//! crashed runs are listed and removed by [`leftovers`] and [`remove_leftovers`].

mod cleanup;
mod net;
mod process;

pub(crate) use net::{ifindex, netns_path};

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

pub use cleanup::{Leftover, leftovers, remove_leftovers};
pub use process::Placement;

/// The prefix of everything a lab creates.
pub const PREFIX: &str = "meshlab";
/// Where the lab keeps its registry and files: `/run/meshlab/<id>/`.
pub const RUN_DIR: &str = "/run/meshlab";
/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The gateway address every pod routes through: an address of each pod's host-side veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("no cgroup v2 mount found in /proc/mounts")]
    NoCgroup2,
    #[error("invalid lab layout: {0}")]
    Layout(String),
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// A node of the lab.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// The node's name, as an agent is told it (`node-0`, …).
    pub name: String,
    /// Its address on the inter-node fabric.
    pub ip: Ipv4Addr,
    /// Its pods' CIDR (routes to it from the other nodes).
    pub pod_cidr: String,
    /// Its network namespace: name and `/run/netns` path.
    pub netns: String,
    pub netns_path: PathBuf,
    /// Its cgroup v2 directory; its pods' cgroups are below it.
    pub cgroup: PathBuf,
    /// The bpffs directory an agent of this node pins in.
    pub bpffs: PathBuf,
    pub pods: Vec<Pod>,
}

/// A pod of the lab.
#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub name: String,
    /// The name of the node it runs on.
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub netns_path: PathBuf,
    /// The host side of its veth, in the node's namespace, and that interface's index there.
    pub host_iface: String,
    pub host_ifindex: u32,
    /// Its cgroup, below the node's.
    pub cgroup: PathBuf,
}

/// A client outside the cluster: a namespace on the nodes' network (see [`Lab::add_outside`]).
#[derive(Debug, Clone, Serialize)]
pub struct Outside {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub netns_path: PathBuf,
    /// Its port on the fabric's bridge (the other end of its `eth0`).
    pub fabric_port: String,
}

/// A running lab. Everything it made is removed on drop.
pub struct Lab {
    pub id: String,
    pub nodes: Vec<Node>,
    /// Scratch space for the lab's files (state files, ready files), removed with the lab.
    pub dir: PathBuf,
    cgroup_root: PathBuf,
    bpffs_root: PathBuf,
    children: Mutex<HashMap<u32, Child>>,
}

impl Lab {
    /// A lab with one node per entry of `nodes`, each with the named pods.
    /// `Lab::new(&[&["client", "server"]])` is one node with two pods.
    pub fn new(nodes: &[&[&str]]) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        for name in nodes.iter().flat_map(|pods| pods.iter()) {
            let valid = !name.is_empty()
                && name.len() <= 40
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid || !seen.insert(*name) {
                return Err(LabError::Layout(format!("pod name {name:?} is invalid or used twice")));
            }
        }
        if nodes.is_empty() || nodes.len() > 200 || nodes.iter().any(|pods| pods.len() > 250) {
            return Err(LabError::Layout("1 to 200 nodes of at most 250 pods each".into()));
        }
        let mut lab = Self::register()?;
        // From here on, a failure drops `lab`, which removes whatever was made.
        net::build(&mut lab, nodes)?;
        Ok(lab)
    }

    /// A lab of `nodes` nodes with `pods` pods each, named `pod-<node>-<index>`.
    pub fn grid(nodes: usize, pods: usize) -> Result<Self> {
        let names: Vec<Vec<String>> = (0..nodes).map(|n| (0..pods).map(|p| format!("pod-{n}-{p}")).collect()).collect();
        let refs: Vec<Vec<&str>> = names.iter().map(|pods| pods.iter().map(String::as_str).collect()).collect();
        let slices: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
        Self::new(&slices)
    }

    /// The pod named `name`; panics if there is none (a test's own typo).
    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes
            .iter()
            .flat_map(|node| &node.pods)
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| panic!("lab {} has no pod {name:?}", self.id))
    }

    /// The node named `name`; panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("lab {} has no node {name:?}", self.id))
    }

    /// Adds a client outside the cluster at `ip` (in the nodes' 172.18.0.0/16, above the node
    /// addresses: 172.18.200.0 and up), joined to the nodes' external interfaces through the
    /// fabric; the `index`-th of this lab (0, 1, ...).
    pub fn add_outside(&self, index: usize, ip: Ipv4Addr) -> Result<Outside> {
        net::add_outside(self, index, ip)
    }

    /// Where a process of `outside` runs: its namespace, the lab's system cgroup.
    pub fn outside_placement(&self, outside: &Outside) -> Placement {
        Placement { netns: Some(outside.netns_path.clone()), cgroup: self.system_cgroup() }
    }

    /// Where a process of `pod` runs with nothing of the mesh seeing it: the pod's namespace
    /// (so its address and interface) but the lab's system cgroup, outside every node's, so
    /// no socket hook of the mesh sees it. For a pod no manifest names, whose interface no TC
    /// program is attached to either: the benchmarks' bare twins.
    pub fn bare_placement(&self, pod: &Pod) -> Placement {
        Placement { netns: Some(pod.netns_path.clone()), cgroup: self.system_cgroup() }
    }

    /// The fabric's namespace (the bridge joining every node and outside client).
    pub fn fabric_netns(&self) -> String {
        format!("{}fabric", self.netns_prefix())
    }

    /// Where this lab's processes that belong to no pod run (agents, or a client "outside"
    /// every node): a cgroup of the lab's own, outside every node's subtree.
    pub fn system_cgroup(&self) -> PathBuf {
        self.cgroup_root.join("system")
    }

    /// Every name this lab's network namespaces start with.
    pub fn netns_prefix(&self) -> String {
        format!("{PREFIX}-{}-", self.id)
    }

    /// The lab's cgroup v2 root directory.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// The lab's bpffs directory.
    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    /// Creates the registry entry and the roots, and returns the still-empty lab.
    fn register() -> Result<Self> {
        let cgroup2 = cgroup2_mount().ok_or(LabError::NoCgroup2)?;
        std::fs::create_dir_all(RUN_DIR).map_err(|source| LabError::Io {
            what: "creating",
            path: RUN_DIR.into(),
            source,
        })?;
        for attempt in 0..100u32 {
            let id = new_id(attempt);
            let dir = Path::new(RUN_DIR).join(&id);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(LabError::Io { what: "creating", path: dir, source }),
            }
            let lab = Self {
                cgroup_root: cgroup2.join(format!("{PREFIX}-{id}")),
                bpffs_root: Path::new(BPFFS).join(format!("{PREFIX}-{id}")),
                id,
                nodes: Vec::new(),
                dir,
                children: Mutex::new(HashMap::new()),
            };
            let owner = lab.dir.join(cleanup::OWNER_FILE);
            std::fs::write(&owner, cleanup::owner_record()).map_err(|source| LabError::Io {
                what: "writing",
                path: owner,
                source,
            })?;
            return Ok(lab);
        }
        Err(LabError::Layout("could not find an unused lab id".into()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for problem in self.teardown() {
            eprintln!("lab {}: cleanup: {problem}", self.id);
        }
    }
}

/// A short id, unique among the labs on this machine: interface names hold it within 15
/// characters.
fn new_id(attempt: u32) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let mut x =
        (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..5).map(|i| ALPHABET[((x >> (i * 6)) % 36) as usize] as char).collect()
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified`
/// on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_vary() {
        let ids: std::collections::HashSet<String> = (0..50).map(new_id).collect();
        assert!(ids.len() >= 49, "ids collide too often: {ids:?}");
        assert!(ids.iter().all(|id| id.len() == 5 && id.bytes().all(|b| b.is_ascii_alphanumeric())));
    }

    #[test]
    fn bad_layouts_are_refused_before_anything_is_made() {
        assert!(matches!(Lab::new(&[&["a", "a"]]), Err(LabError::Layout(_))));
        assert!(matches!(Lab::new(&[&["Bad_Name"]]), Err(LabError::Layout(_))));
        assert!(matches!(Lab::new(&[]), Err(LabError::Layout(_))));
    }
}
