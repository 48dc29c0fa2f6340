//! Running work inside the node's network namespace.
//!
//! Interface names, indexes and routes belong to a network namespace. The agent stays in its
//! own (bpffs and cgroupfs are the host's there) and enters the node's namespace on one
//! short-lived thread only, for the lookups and the TC attachments that need it.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}; check MESH_NETNS")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("cannot enter network namespace {path}: {source}; the agent needs CAP_SYS_ADMIN")]
    Enter { path: PathBuf, source: std::io::Error },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// Runs `work` on a thread inside the namespace at `netns`, or on the calling thread when
/// `netns` is `None` (the agent's own namespace).
pub fn run_in<T: Send>(netns: Option<&Path>, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let Some(path) = netns else { return Ok(work()) };
    let file = File::open(path).map_err(|source| NetnsError::Open { path: path.to_owned(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `file` is an open namespace file; setns affects this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let source = std::io::Error::last_os_error();
                    return Err(NetnsError::Enter { path: path.to_owned(), source });
                }
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Panicked { path: path.to_owned() })?
    })
}
