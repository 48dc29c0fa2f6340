//! Whether a privileged test can run here, and what happens when it cannot.
//!
//! Under `cargo xtask test` (and so in CI) `MESH_REQUIRE_PRIVILEGED=1` is set and a test that
//! cannot run *fails*. Run by hand without root, it prints why it skipped.

use std::path::Path;

/// Set to `1` to make every privileged test fail instead of skip when it cannot run.
pub const ENV_REQUIRE_PRIVILEGED: &str = "MESH_REQUIRE_PRIVILEGED";

/// What a privileged test needs from the machine, or why it is missing.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces, cgroups and eBPF need it)".into());
    }
    if crate::lab::cgroup2_mount().is_none() {
        return Some("no cgroup v2 mount in /proc/mounts".into());
    }
    if !mesh_agent::config::is_bpffs(Path::new(crate::lab::BPFFS)) {
        return Some(format!("no bpffs at {} (mount -t bpf bpf {0}; `make test` does)", crate::lab::BPFFS));
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Call first in every privileged test: `if !privileged("name") { return; }`. Returns
/// whether the test can run; panics instead of skipping when `MESH_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var(ENV_REQUIRE_PRIVILEGED).as_deref() == Ok("1") {
        panic!("privileged test {test} cannot run: {why} ({ENV_REQUIRE_PRIVILEGED}=1 forbids skipping)");
    }
    eprintln!("SKIPPED privileged test {test}: {why}");
    false
}
