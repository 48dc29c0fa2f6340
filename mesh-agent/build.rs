//! Builds `mesh-ebpf` for the BPF target with the pinned toolchain and leaves the object in
//! `OUT_DIR`, where `src/datapath.rs` embeds it.

use anyhow::{Context as _, anyhow};

/// The eBPF crate, relative to this one.
const EBPF_PACKAGE: &str = "mesh-ebpf";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("..").join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    let toolchain = pinned_toolchain(&manifest_dir)?;
    // aya-build adds `-Z build-std=core` when RUSTC_BOOTSTRAP=1: the eBPF target has no
    // prebuilt core. Set in this build script's process only, so the cargo it spawns for the
    // eBPF crate sees it and no userspace crate ever does.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    let (result, messages) = capture_stdout(&std::path::Path::new(&out_dir).join("aya-build.log"), || {
        aya_build::build_ebpf(
            [aya_build::Package { name: EBPF_PACKAGE, root_dir, ..Default::default() }],
            aya_build::Toolchain::Custom(&toolchain),
        )
    })?;
    // aya-build turns every line of the inner cargo's output into a cargo warning, which
    // cargo then replays on every build. Keep the directives, and of the output only the
    // compiler's diagnostics, unless the build failed: then all of it.
    for line in messages.lines() {
        let Some(text) = line.strip_prefix("cargo::warning=") else {
            println!("{line}");
            continue;
        };
        let diagnostic = text.starts_with("warning") || text.starts_with("error") || text.starts_with("  ");
        let progress = ["Compiling", "Downloaded", "Downloading", "Updating", "Finished", "Locking", "Adding"]
            .iter()
            .any(|word| text.trim_start().starts_with(word));
        if result.is_err() || (diagnostic && !progress && !text.trim().is_empty()) {
            println!("{line}");
        }
    }
    result
}

/// Runs `f` with this process's stdout sent to `log`, and returns what it printed.
fn capture_stdout<T>(log: &std::path::Path, f: impl FnOnce() -> T) -> anyhow::Result<(T, String)> {
    use std::{io::Write as _, os::fd::AsRawFd as _};
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor juggling on fds this process owns; fd 1 is restored below.
    let saved = unsafe { libc::dup(1) };
    anyhow::ensure!(saved >= 0 && unsafe { libc::dup2(file.as_raw_fd(), 1) } >= 0, "redirecting stdout failed");
    let result = f();
    std::io::stdout().flush()?;
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    Ok((result, std::fs::read_to_string(log)?))
}

/// The channel pinned in `rust-toolchain.toml`: the eBPF crate is built with the same
/// toolchain (its LLVM must match bpf-linker's), never a floating nightly.
fn pinned_toolchain(manifest_dir: &str) -> anyhow::Result<String> {
    let path = std::path::Path::new(manifest_dir).join("../rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("no `channel = \"...\"` in {}", path.display()))
}
