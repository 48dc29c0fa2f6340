//! Running the real `mesh-operator` in local mode for a lab.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::lab::{Lab, LabError, Result};

/// A running operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub pid: u32,
    /// Where its state stream listens.
    pub addr: SocketAddr,
    pub log_file: PathBuf,
}

impl Operator {
    /// Starts `mesh-operator local` on `manifests`, its stream on `listen` (port 0: any),
    /// with its identities in the lab's directory, and waits until it serves.
    pub fn start(lab: &Lab, manifests: &std::path::Path, listen: SocketAddr) -> Result<Self> {
        Self::start_with(lab, manifests, listen, &[])
    }

    /// [`Operator::start`] with more arguments (`--pki-dir DIR`).
    pub fn start_with(lab: &Lab, manifests: &std::path::Path, listen: SocketAddr, extra_args: &[&str]) -> Result<Self> {
        let (pid, ready_file, log_file) = Self::spawn_with(lab, manifests, listen, extra_args)?;
        let log_text = || std::fs::read_to_string(&log_file).unwrap_or_default();
        lab.wait_for_file(&ready_file, pid, Duration::from_secs(60)).map_err(|err| LabError::Command {
            command: "mesh-operator".into(),
            message: format!("{err}; its log:\n{}", log_text()),
        })?;
        let addr =
            std::fs::read_to_string(&ready_file).ok().and_then(|text| text.trim().parse().ok()).ok_or_else(|| {
                LabError::Command { command: "mesh-operator".into(), message: "its ready file holds no address".into() }
            })?;
        Ok(Self { pid, addr, log_file })
    }

    /// The operator with its CA (`--pki-dir <lab>/pki`) and `extra_args`, on a free loopback
    /// port, with a TLS bundle issued for every node of the lab (in node order).
    pub fn start_with_pki(lab: &Lab, manifests: &std::path::Path, extra_args: &[&str]) -> Result<(Self, Vec<PathBuf>)> {
        let pki = lab.dir.join("pki");
        let bundles = lab.nodes.iter().map(|n| Self::issue(lab, &pki, &n.name)).collect::<Result<Vec<_>>>()?;
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let pki_arg = pki.display().to_string();
        let operator = Self::start_with(lab, manifests, listen, &[&["--pki-dir", &pki_arg], extra_args].concat())?;
        Ok((operator, bundles))
    }

    /// Starts the operator without waiting for it: its pid, ready file and log.
    pub fn spawn(lab: &Lab, manifests: &std::path::Path, listen: SocketAddr) -> Result<(u32, PathBuf, PathBuf)> {
        Self::spawn_with(lab, manifests, listen, &[])
    }

    fn spawn_with(
        lab: &Lab,
        manifests: &std::path::Path,
        listen: SocketAddr,
        extra_args: &[&str],
    ) -> Result<(u32, PathBuf, PathBuf)> {
        let (mut command, ready_file, log_file) =
            lab.daemon_command(crate::built_binary("mesh-operator"), "operator")?;
        command
            .arg("local")
            .arg("--manifests")
            .arg(manifests)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--identity-file")
            .arg(lab.dir.join("identities.json"))
            .arg("--ready-file")
            .arg(&ready_file)
            .args(extra_args);
        // Labs run side by side: unless told otherwise, metrics go to a port of their own.
        if !extra_args.contains(&"--metrics-listen") {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        let pid = lab.spawn(&mut command)?;
        Ok((pid, ready_file, log_file))
    }

    /// The URL agents follow (plaintext).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL agents follow over TLS.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Issues `node`'s TLS bundle from the CA in `pki_dir` with `mesh-operator issue`;
    /// returns the bundle's directory.
    pub fn issue(lab: &Lab, pki_dir: &std::path::Path, node: &str) -> Result<PathBuf> {
        let out = lab.dir.join(format!("bundle-{node}"));
        let mut command = lab.system_command(crate::built_binary("mesh-operator"))?;
        command.arg("issue").arg("--pki-dir").arg(pki_dir).arg("--node").arg(node).arg("--out").arg(&out);
        let output = lab.run(&mut command, Duration::from_secs(30))?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: "mesh-operator issue".into(),
                message: String::from_utf8_lossy(&output.stderr).into(),
            });
        }
        Ok(out)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }
}

/// A loopback port nobody listens on right now (for a stream address that must survive an
/// operator restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
