//! The mesh's OCI images, built from scratch with Debian's `buildah` (no daemon, no base image
//! pulled from anywhere): the workspace's binaries, stripped, and the few shared libraries they
//! load (`ldd` says which: glibc's `libc`, `libm`, the loader, and `libgcc_s`), at the paths the
//! loader looks for them. `cargo xtask image` builds them from the release binaries; the tests
//! build them from the debug ones and run them with `podman`.
//!
//! Reproducible: every file is copied with fixed modes, owned by root and stamped with the
//! source's time (`epoch`, the commit's), the image's timestamps are that time
//! (`buildah commit --timestamp`), and nothing else of the build machine goes in, so the same
//! binaries and labels give the same digest.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

/// One image: its name, the binaries it carries (in `/usr/bin`), and how it starts.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    /// `mesh/mesh-agent`: what `deploy/kubernetes` names (with the version as the tag).
    pub name: &'static str,
    pub binaries: &'static [&'static str],
    pub entrypoint: &'static str,
    /// `uid:gid`, or root.
    pub user: Option<&'static str>,
    pub title: &'static str,
}

/// The agent, with `meshctl` beside it (`kubectl exec ... meshctl status`).
pub const AGENT: ImageSpec = ImageSpec {
    name: "mesh/mesh-agent",
    binaries: &["mesh-agent", "meshctl"],
    entrypoint: "mesh-agent",
    user: None,
    title: "mesh-agent: the mesh's per-node daemon (eBPF datapath, tunnel, L7 proxy, Observer API)",
};

/// The operator, as the unprivileged user its Deployment runs it as.
pub const OPERATOR: ImageSpec = ImageSpec {
    name: "mesh/mesh-operator",
    binaries: &["mesh-operator"],
    entrypoint: "mesh-operator",
    user: Some("65532:65532"),
    title: "mesh-operator: the mesh's controller (model, identities, CAs)",
};

pub const ALL: [ImageSpec; 2] = [AGENT, OPERATOR];

/// What an image is built from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Where the binaries are (`target/release`).
    pub bin_dir: PathBuf,
    /// The tag, and `org.opencontainers.image.version`.
    pub version: String,
    /// `org.opencontainers.image.revision`: the source's commit.
    pub revision: String,
    /// Seconds since the Unix epoch: every timestamp of the image (the commit's time).
    pub epoch: u64,
    /// Staging goes here.
    pub out_dir: PathBuf,
    /// Where the image is kept.
    pub store: Store,
}

/// Where buildah and podman keep images and containers: the machine's containers storage, or a
/// directory of its own (a test's: its images never replace the user's of the same name, and
/// go with the directory; the `vfs` driver leaves no mounts behind).
#[derive(Debug, Clone, Default)]
pub struct Store {
    pub root: Option<PathBuf>,
}

impl Store {
    /// A store in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { root: Some(dir.to_owned()) }
    }

    /// The global options that make buildah or podman use it.
    pub fn args(&self) -> Vec<String> {
        match &self.root {
            None => Vec::new(),
            Some(root) => vec![
                "--root".into(),
                root.join("storage").display().to_string(),
                "--runroot".into(),
                root.join("run").display().to_string(),
                "--storage-driver".into(),
                "vfs".into(),
            ],
        }
    }

    /// `buildah` or `podman` (`tool`) with these options.
    pub fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command.args(self.args());
        command
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Built {
    /// `mesh/mesh-agent:0.1.0`, in the local containers storage (`podman run` finds it).
    pub reference: String,
    /// The manifest's digest (`sha256:...`).
    pub digest: String,
    /// The files it holds, uncompressed.
    pub content_bytes: u64,
}

/// Builds `spec` from `inputs`, tagged `tag` (the version, unless a test gives its own).
pub fn build(spec: &ImageSpec, inputs: &Inputs, tag: &str) -> anyhow::Result<Built> {
    let base = spec.name.rsplit('/').next().unwrap_or(spec.name);
    let staging = inputs.out_dir.join(format!("{base}-{tag}.rootfs"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let content_bytes = stage(spec, inputs, &staging)?;
    let reference = format!("{}:{tag}", spec.name);
    let container = format!("mesh-image-{base}-{}", std::process::id());
    let buildah = |args: &[&str]| run(inputs.store.command("buildah").args(args));
    let built = (|| -> anyhow::Result<String> {
        buildah(&["from", "--name", &container, "scratch"])?;
        let rootfs = format!("{}/", staging.display());
        buildah(&["add", "--chown", "0:0", &container, &rootfs, "/"])?;
        let mut config: Vec<String> = vec![
            "config".into(),
            "--os".into(),
            "linux".into(),
            "--arch".into(),
            "amd64".into(),
            "--entrypoint".into(),
            serde_json::to_string(&[format!("/usr/bin/{}", spec.entrypoint)])?,
            "--cmd".into(),
            String::new(),
            "--created-by".into(),
            "cargo xtask image".into(),
        ];
        let labels = [
            ("org.opencontainers.image.title", spec.title.to_owned()),
            ("org.opencontainers.image.version", inputs.version.clone()),
            ("org.opencontainers.image.revision", inputs.revision.clone()),
            ("org.opencontainers.image.licenses", "Apache-2.0".to_owned()),
        ];
        for (key, value) in labels {
            config.extend(["--label".into(), format!("{key}={value}")]);
        }
        if let Some(user) = spec.user {
            config.extend(["--user".into(), user.to_owned()]);
        }
        config.push(container.clone());
        buildah(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
        let epoch = inputs.epoch.to_string();
        buildah(&[
            "commit",
            "--quiet",
            "--format",
            "oci",
            "--identity-label=false",
            "--timestamp",
            &epoch,
            &container,
            &reference,
        ])?;
        buildah(&["inspect", "--type", "image", "--format", "{{.FromImageDigest}}", &reference])
    })();
    // The working container goes whatever happened (its image stays).
    let _ = inputs.store.command("buildah").args(["rm", &container]).output();
    let _ = std::fs::remove_dir_all(&staging);
    let digest = built?.trim().to_owned();
    Ok(Built { reference, digest, content_bytes })
}

/// Saves `built` from `store` as an OCI archive (`oci-archive:` for `skopeo copy` or
/// `podman load`) at `archive`; returns its size in bytes.
pub fn save(built: &Built, store: &Store, archive: &Path) -> anyhow::Result<u64> {
    let _ = std::fs::remove_file(archive);
    let target = format!("oci-archive:{}:{}", archive.display(), built.reference);
    run(store.command("buildah").args(["push", "--quiet", &built.reference, &target]))?;
    Ok(std::fs::metadata(archive)?.len())
}

/// The image's root filesystem in `dir`: the binaries stripped into `/usr/bin`, their
/// libraries at their own paths. Returns its size in bytes.
fn stage(spec: &ImageSpec, inputs: &Inputs, dir: &Path) -> anyhow::Result<u64> {
    let bin = dir.join("usr/bin");
    std::fs::create_dir_all(&bin)?;
    let mut libraries = BTreeSet::new();
    for name in spec.binaries {
        let source = inputs.bin_dir.join(name);
        anyhow::ensure!(source.is_file(), "{} is missing: build it first", source.display());
        libraries.extend(shared_libraries(&source)?);
        let target = bin.join(name);
        run(Command::new("strip").arg("--strip-all").arg("-o").arg(&target).arg(&source))?;
    }
    for library in &libraries {
        let relative = library.strip_prefix("/").context("a library path that is not absolute")?;
        let target = dir.join(relative);
        std::fs::create_dir_all(target.parent().context("a library at /")?)?;
        // The file the path resolves to, under the path the loader asks for.
        std::fs::copy(library, &target).with_context(|| format!("copying {}", library.display()))?;
    }
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_secs(inputs.epoch);
    let mut bytes = 0;
    settle(dir, stamp, &mut bytes)?;
    Ok(bytes)
}

/// Fixed modes (0755 for directories and executables, 0644 for the rest) and one timestamp
/// for everything under `path`, depth first; counts file bytes into `bytes`.
fn settle(path: &Path, stamp: SystemTime, bytes: &mut u64) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            settle(&entry, stamp, bytes)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    } else {
        *bytes += metadata.len();
        let executable = metadata.permissions().mode() & 0o111 != 0;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(if executable { 0o755 } else { 0o644 }))?;
    }
    let file = std::fs::File::open(path)?;
    file.set_times(std::fs::FileTimes::new().set_accessed(stamp).set_modified(stamp))
        .with_context(|| format!("stamping {}", path.display()))?;
    Ok(())
}

/// The shared libraries `binary` loads, the loader among them (`ldd`).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static binary needs nothing.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&output.stderr));
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader's
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        match path {
            Some("not") => bail!("{}: a library is not found: {line}", binary.display()),
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            _ => {}
        }
    }
    Ok(libraries)
}

/// Runs `command`: its output, or an error with what it said.
fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| {
        format!("running {command:?}: is it installed? (`make test` installs Debian's buildah and podman)")
    })?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
