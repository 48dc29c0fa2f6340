//! `cargo xtask image`: the agent's and the operator's OCI images (`mesh_tests::image`), built
//! with buildah from the release binaries, kept in the local containers storage under the names
//! `deploy/kubernetes` uses, and saved as OCI archives in `target/image/` for a push
//! (`skopeo copy oci-archive:target/image/mesh-agent-0.1.0.oci.tar docker://REGISTRY/...`).

use anyhow::Context as _;
use mesh_tests::image::{self, Inputs, Store};

use crate::cargo;

pub fn run(debug: bool) -> anyhow::Result<()> {
    let root = cargo::workspace_root();
    let profile = if debug { "debug" } else { "release" };
    let mut args = vec!["build"];
    if !debug {
        args.push("--release");
    }
    for spec in image::ALL {
        for binary in spec.binaries {
            args.extend(["--bin", binary]);
        }
    }
    cargo::run(&args, &[])?;
    let inputs = Inputs {
        bin_dir: root.join("target").join(profile),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: git(&["rev-parse", "HEAD"])?,
        epoch: git(&["log", "-1", "--format=%ct"])?.parse().context("the commit's time")?,
        out_dir: root.join("target/image"),
        store: Store::default(),
    };
    std::fs::create_dir_all(&inputs.out_dir)?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    println!(
        "==> images of {} ({profile} binaries{}), timestamped {}",
        inputs.revision,
        if dirty { ", uncommitted changes: the revision label does not describe them" } else { "" },
        inputs.epoch
    );
    println!("{:<34} {:>10} {:>10}  digest", "image", "content", "archive");
    for spec in image::ALL {
        let built = image::build(&spec, &inputs, &inputs.version)?;
        let base = spec.name.rsplit('/').next().unwrap_or(spec.name);
        let archive = inputs.out_dir.join(format!("{base}-{}.oci.tar", inputs.version));
        let archive_bytes = image::save(&built, &inputs.store, &archive)?;
        println!(
            "{:<34} {:>7.1} MB {:>7.1} MB  {}",
            built.reference,
            built.content_bytes as f64 / 1e6,
            archive_bytes as f64 / 1e6,
            built.digest
        );
        println!("    saved as {}", archive.display());
    }
    Ok(())
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(cargo::workspace_root())
        .output()
        .context("running git")?;
    anyhow::ensure!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
