//! Draining on SIGTERM, the same for operator and agent: servers stop accepting, requests in
//! flight finish, streams are told to go away (HTTP/2 GOAWAY), and whatever is still open
//! after a bounded time is closed, so a stop never hangs on a client that keeps a stream.

use std::{future::Future, time::Duration};

/// How long a stopping process lets its connections finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The signal every server of a process waits on, and the servers to wait for.
#[derive(Debug)]
pub struct Drain {
    stop: tokio::sync::watch::Sender<bool>,
    /// Each with its own grace period, if it has one (else the drain's timeout).
    servers: Vec<(&'static str, tokio::task::JoinHandle<()>, Option<Duration>)>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { stop: tokio::sync::watch::channel(false).0, servers: Vec::new() }
    }
}

impl Drain {
    /// A future that resolves when the drain starts: give it to `serve_with_*_shutdown`.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }

    /// Waits for `server` (a spawned task serving until [`Self::signal`]) when draining.
    pub fn track(&mut self, name: &'static str, server: tokio::task::JoinHandle<()>) {
        self.servers.push((name, server, None));
    }

    /// The same, for a server whose connections get `grace` to finish instead of the drain's
    /// timeout (tunnels carrying applications' connections).
    pub fn track_for(&mut self, name: &'static str, server: tokio::task::JoinHandle<()>, grace: Duration) {
        self.servers.push((name, server, Some(grace)));
    }

    /// Starts the drain and waits for every server, for at most `timeout` (or the server's own
    /// grace period) from now; returns the servers that had not finished (their connections
    /// are closed when the process ends).
    pub async fn run(self, timeout: Duration) -> Vec<&'static str> {
        let _ = self.stop.send(true);
        let started = tokio::time::Instant::now();
        let mut open = Vec::new();
        // Every deadline counts from the start, so waiting in turn waits no longer.
        for (name, server, grace) in self.servers {
            if tokio::time::timeout_at(started + grace.unwrap_or(timeout), server).await.is_err() {
                open.push(name);
            }
        }
        open
    }
}

/// SIGTERM and SIGINT, listened for from the moment this is made: a stop that arrives while
/// the process is still starting (loading programs, reading manifests, writing its ready
/// file) is kept and answered with a clean shutdown, instead of the signal's default action
/// killing the process halfway. Make it first, before anything worth cleaning up exists.
#[derive(Debug)]
pub struct Shutdown {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Shutdown {
    /// Installs the handlers; needs a Tokio runtime (`Runtime::enter` or inside one).
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT since [`Self::listen`], and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn servers_stop_at_the_signal_and_a_stuck_one_is_given_up_on() {
        let mut drain = Drain::default();
        let signal = drain.signal();
        drain.track("polite", tokio::spawn(signal));
        drain.track("stuck", tokio::spawn(std::future::pending()));
        let started = std::time::Instant::now();
        assert_eq!(drain.run(Duration::from_millis(200)).await, vec!["stuck"]);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_signal_that_arrives_before_anyone_waits_is_kept() {
        let mut shutdown = Shutdown::listen().expect("handlers");
        // Sent before recv is first polled: without the handler installed up front, this
        // would end the test process.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGINT) }, 0);
        let name = tokio::time::timeout(Duration::from_secs(5), shutdown.recv()).await.expect("kept");
        assert_eq!(name, "SIGINT");
    }
}
