//! The netns lab harness and the helpers the end-to-end tests share.
//!
//! A lab is a set of network namespaces on this machine playing a Kubernetes cluster: one per
//! node, one per pod, veth pairs between pods and their node, a bridge between nodes, and a
//! cgroup v2 subtree per node. See [`lab`] and ARCHITECTURE.md.

pub mod agent;
pub mod browser;
pub mod capture;
pub mod grpc_echo;
pub mod http_echo;
pub mod http_load;
pub mod image;
pub mod interleaved;
pub mod lab;
pub mod labnet;
pub mod manifests;
pub mod meshctl;
pub mod metrics;
pub mod netpol;
pub mod operator;
pub mod privileges;
pub mod scenario;
pub mod traffic;
pub mod wire;

use std::path::PathBuf;

/// Environment variable naming the `mesh-agent` binary to run (default: next to the tests).
pub const ENV_AGENT_BIN: &str = "MESH_AGENT_BIN";

/// The `mesh-agent` binary the end-to-end tests run: `$MESH_AGENT_BIN`, or the one cargo
/// built into the same target directory.
pub fn agent_binary() -> PathBuf {
    std::env::var_os(ENV_AGENT_BIN).map_or_else(|| built_binary("mesh-agent"), PathBuf::from)
}

/// Environment variable naming the directory the workspace's binaries are taken from
/// (benchmarks point it at `target/release`).
pub const ENV_BIN_DIR: &str = "MESH_BIN_DIR";

/// A binary of this workspace: in `$MESH_BIN_DIR`, or in the target directory the running
/// executable (a test under `deps/`, or xtask) lives in. Panics with what to do if missing.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("a target directory").to_owned();
    if dir.ends_with("deps") {
        dir = dir.parent().expect("a profile directory").to_owned();
    }
    if let Some(bin_dir) = std::env::var_os(ENV_BIN_DIR) {
        dir = PathBuf::from(bin_dir);
    }
    let binary = dir.join(name);
    assert!(
        binary.is_file(),
        "{} is missing: build it first (cargo build --bins; `cargo xtask test` does)",
        binary.display()
    );
    binary
}
