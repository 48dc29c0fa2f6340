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

/// Makes TCP sockets inside the node's network namespace for async tasks (a socket belongs to
/// the namespace of the thread that made it; the runtime's threads stay in the agent's).
/// One long-lived thread does it, not a thread per socket.
#[derive(Debug, Clone)]
pub struct Sockets {
    requests: Option<std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<std::io::Result<tokio::net::TcpSocket>>>>,
}

impl Sockets {
    /// Sockets in `netns`, or in the agent's own namespace when `None`.
    pub fn new(netns: Option<&Path>) -> Result<Self, NetnsError> {
        let Some(path) = netns else { return Ok(Self { requests: None }) };
        let file = File::open(path).map_err(|source| NetnsError::Open { path: path.to_owned(), source })?;
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (tx, rx) =
            std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<std::io::Result<tokio::net::TcpSocket>>>();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                // SAFETY: `file` is an open namespace file; setns affects this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = entered_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let _ = entered_tx.send(Ok(()));
                // Ends when every `Sockets` is dropped.
                while let Ok(reply) = rx.recv() {
                    let _ = reply.send(tokio::net::TcpSocket::new_v4());
                }
            })
            .map_err(|source| NetnsError::Enter { path: path.to_owned(), source })?;
        let entered = entered_rx.recv().unwrap_or_else(|_| Err(std::io::Error::other("the thread ended")));
        entered.map_err(|source| NetnsError::Enter { path: path.to_owned(), source })?;
        Ok(Self { requests: Some(tx) })
    }

    /// A new IPv4 TCP socket in the namespace.
    pub async fn tcp_v4(&self) -> std::io::Result<tokio::net::TcpSocket> {
        let Some(requests) = &self.requests else { return tokio::net::TcpSocket::new_v4() };
        let (reply, answer) = tokio::sync::oneshot::channel();
        requests.send(reply).map_err(|_| std::io::Error::other("the namespace's socket thread ended"))?;
        answer.await.map_err(|_| std::io::Error::other("the namespace's socket thread ended"))?
    }
}

/// A TCP socket bound to `address` with `SO_REUSEADDR` and `SO_REUSEPORT`, in the calling
/// thread's namespace (listen on the runtime that will serve it). Two agents of one node (the
/// old one stopping, the new one starting) both listen on the node's ports.
pub fn shared_socket(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// The sysctl that moves the connections waiting in a closing listener's accept queue to
/// another listener of its `SO_REUSEPORT` group, instead of resetting them (Linux 5.14).
pub const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Sets [`TCP_MIGRATE_REQ`] in the calling thread's network namespace (the node's): an agent
/// that stops closes its listeners, and what waits in their queues goes to the new agent's.
pub fn migrate_requests_on_close() -> std::io::Result<()> {
    if std::fs::read_to_string(TCP_MIGRATE_REQ)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(TCP_MIGRATE_REQ, "1")
}
