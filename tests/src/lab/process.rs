//! Running processes in the lab: in a pod (its netns and cgroup), or in the lab's system
//! cgroup. Every process the lab starts is tracked and ended (by its pid) on teardown.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use super::{Lab, LabError, Pod, Result};

/// Where a process runs.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Network namespace to enter; `None`: the caller's (the host's).
    pub netns: Option<PathBuf>,
    /// cgroup v2 directory to join.
    pub cgroup: PathBuf,
}

impl Placement {
    /// Inside `pod`: its network namespace and its cgroup (below its node's).
    pub fn pod(pod: &Pod) -> Self {
        Self { netns: Some(pod.netns_path.clone()), cgroup: pod.cgroup.clone() }
    }
}

impl Lab {
    /// A command for `program` that will run inside `pod`.
    pub fn pod_command(&self, pod: &Pod, program: impl AsRef<OsStr>) -> Result<Command> {
        place(Command::new(program), &Placement::pod(pod))
    }

    /// A command for `program` that will run with `placement`.
    pub fn placed_command(&self, placement: &Placement, program: impl AsRef<OsStr>) -> Result<Command> {
        place(Command::new(program), placement)
    }

    /// A command that runs in the host's namespace, in the lab's system cgroup (agents).
    pub fn system_command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        place(Command::new(program), &Placement { netns: None, cgroup: self.system_cgroup() })
    }

    /// A command for one of the mesh's daemons (`binary`), run like [`Lab::system_command`]
    /// with its log (stderr) in the lab's directory. Returns the command, and a ready file
    /// and the log file named after the first free `<name>-N` run.
    pub fn daemon_command(&self, binary: impl AsRef<OsStr>, name: &str) -> Result<(Command, PathBuf, PathBuf)> {
        let run =
            (0..).map(|i| format!("{name}-{i}")).find(|r| !self.dir.join(format!("{r}.log")).exists()).expect("a name");
        let ready_file = self.dir.join(format!("{run}.ready"));
        let log_file = self.dir.join(format!("{run}.log"));
        let log = File::create(&log_file).map_err(|source| LabError::Io {
            what: "creating",
            path: log_file.clone(),
            source,
        })?;
        let mut command = self.system_command(binary)?;
        command.env("RUST_LOG", "info").env("NO_COLOR", "1").stdout(Stdio::null()).stderr(log);
        Ok((command, ready_file, log_file))
    }

    /// Starts `command` and tracks it; returns its pid.
    pub fn spawn(&self, command: &mut Command) -> Result<u32> {
        let child = command.stdin(Stdio::null()).spawn().map_err(|source| LabError::Io {
            what: "starting",
            path: PathBuf::from(command.get_program()),
            source,
        })?;
        let pid = child.id();
        self.children.lock().expect("lab children lock").insert(pid, child);
        Ok(pid)
    }

    /// Runs `command` to completion within `timeout` and returns its output; it is killed
    /// (and an error returned) at the timeout.
    pub fn run(&self, command: &mut Command, timeout: Duration) -> Result<Output> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let pid = self.spawn(command)?;
        // Read both pipes while the process runs: one that writes more than a pipe holds
        // (64 KiB) would otherwise block forever on a full pipe and never exit.
        let (stdout, stderr) = {
            let mut children = self.children.lock().expect("lab children lock");
            let child = children.get_mut(&pid).expect("tracked child");
            (drain(child.stdout.take()), drain(child.stderr.take()))
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(pid)? {
                self.children.lock().expect("lab children lock").remove(&pid);
                let read = |reader: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| {
                    reader.join().expect("pipe reader").map_err(|source| LabError::Io {
                        what: "reading",
                        path: PathBuf::from(command.get_program()),
                        source,
                    })
                };
                return Ok(Output { status, stdout: read(stdout)?, stderr: read(stderr)? });
            }
            if Instant::now() >= deadline {
                let _ = self.stop(pid, Duration::ZERO);
                return Err(LabError::Timeout { what: format!("{command:?}"), timeout });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the tracked process `pid` has exited, without waiting.
    pub fn try_wait(&self, pid: u32) -> Result<Option<ExitStatus>> {
        let mut children = self.children.lock().expect("lab children lock");
        let child = children
            .get_mut(&pid)
            .ok_or_else(|| LabError::Layout(format!("pid {pid} is not a process of this lab")))?;
        child.try_wait().map_err(|source| LabError::Io {
            what: "waiting for",
            path: PathBuf::from(pid.to_string()),
            source,
        })
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`, ...) to the tracked process `pid`.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<()> {
        if !self.children.lock().expect("lab children lock").contains_key(&pid) {
            return Err(LabError::Layout(format!("pid {pid} is not a process of this lab")));
        }
        let pid_t = i32::try_from(pid).map_err(|_| LabError::Layout(format!("pid {pid} out of range")))?;
        // SAFETY: kill has no memory effects; the pid is a child this lab started and has not
        // reaped, so it cannot have been reused.
        if unsafe { libc::kill(pid_t, signal) } != 0 {
            return Err(LabError::Io {
                what: "signalling",
                path: PathBuf::from(pid.to_string()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Sends SIGTERM to the tracked process `pid`, waits up to `grace` for it to exit, then
    /// kills it. Returns how it exited.
    pub fn stop(&self, pid: u32, grace: Duration) -> Result<ExitStatus> {
        let mut child = self
            .children
            .lock()
            .expect("lab children lock")
            .remove(&pid)
            .ok_or_else(|| LabError::Layout(format!("pid {pid} is not a process of this lab")))?;
        stop_child(&mut child, grace)
    }

    /// Waits until `path` exists (a server's or agent's ready file), failing early if the
    /// tracked process `pid` exits first.
    pub fn wait_for_file(&self, path: &Path, pid: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            if let Some(status) = self.try_wait(pid)? {
                return Err(LabError::Command {
                    command: format!("pid {pid}"),
                    message: format!("exited ({status}) before creating {}", path.display()),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout { what: path.display().to_string(), timeout });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Ends every tracked process, SIGTERM first.
    pub(super) fn stop_all(&self) -> Vec<String> {
        let children: Vec<_> = self.children.lock().map(|mut c| c.drain().collect()).unwrap_or_default();
        children
            .into_iter()
            .filter_map(|(pid, mut child)| {
                stop_child(&mut child, Duration::from_secs(2)).err().map(|e| format!("pid {pid}: {e}"))
            })
            .collect()
    }
}

fn stop_child(child: &mut std::process::Child, grace: Duration) -> Result<ExitStatus> {
    let pid = child.id();
    let io = |source| LabError::Io { what: "stopping", path: PathBuf::from(pid.to_string()), source };
    if let Some(status) = child.try_wait().map_err(io)? {
        return Ok(status);
    }
    // SAFETY: signalling a child of ours that has not been reaped, so the pid is still its.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().map_err(io)
}

/// Makes `command` enter `placement` between fork and exec.
fn place(mut command: Command, placement: &Placement) -> Result<Command> {
    let procs = placement.cgroup.join("cgroup.procs");
    let cgroup = OpenOptions::new().write(true).open(&procs).map_err(|source| LabError::Io {
        what: "opening",
        path: procs.clone(),
        source,
    })?;
    let netns = placement
        .netns
        .as_ref()
        .map(|path| File::open(path).map_err(|source| LabError::Io { what: "opening", path: path.clone(), source }))
        .transpose()?;
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (write, setns) on descriptors opened before the fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // "0" moves the writing process itself.
            (&cgroup).write_all(b"0")?;
            if let Some(netns) = &netns
                && libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            pipe.read_to_end(&mut out)?;
        }
        Ok(out)
    })
}
