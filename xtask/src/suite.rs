//! `cargo xtask test`: the whole suite, as CI runs it.

use anyhow::bail;
use mesh_tests::{lab, privileges::ENV_REQUIRE_PRIVILEGED};

use crate::cargo;

pub fn run() -> anyhow::Result<()> {
    let before: Vec<String> = lab::leftovers().into_iter().map(|l| l.id).collect();
    cargo::run(&["fmt", "--all", "--check"], &[])?;
    // Dependencies: licenses, duplicate versions, sources (deny.toml). Offline: the machines
    // reach no advisory database. cargo-deny reads the metadata of every platform's
    // dependencies, which a build on this one never downloads: fetch them first (a fresh
    // machine failed here without it).
    cargo::run(&["fetch", "--locked"], &[])?;
    cargo::run(&["deny", "--offline", "check", "licenses", "bans", "sources"], &[])?;
    crate::crds::run(true)?;
    // The default members: everything but mesh-ebpf, which only builds for the BPF target.
    cargo::run(&["clippy", "--all-targets", "--", "-D", "warnings"], &[])?;
    cargo::run(
        &[
            "clippy",
            "--package",
            "mesh-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
        &[("RUSTC_BOOTSTRAP", "1")],
    )?;
    // The end-to-end tests run the agent and lab binaries: build them first.
    cargo::run(&["build", "--bins"], &[])?;
    // A privileged test that cannot run fails instead of skipping.
    cargo::run(&["test"], &[(ENV_REQUIRE_PRIVILEGED, "1")])?;
    // A minute of the soak: traffic through every data path under the chaos schedule.
    crate::soak::run(60, 1000, false)?;

    let left: Vec<lab::Leftover> = lab::leftovers().into_iter().filter(|l| !before.contains(&l.id)).collect();
    if !left.is_empty() {
        let (_, problems) = lab::remove_leftovers(false);
        bail!(
            "the tests left labs behind (now removed{}): {left:#?}",
            if problems.is_empty() { String::new() } else { format!("; problems: {problems:?}") }
        );
    }
    println!("==> all tests passed; no lab left behind");
    Ok(())
}
