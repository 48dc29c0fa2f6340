//! The agent's side of the state stream: connect, say Hello with the last applied version,
//! apply every update, ACK or NACK it, and reconnect (resuming) when the stream breaks.

use std::{future::Future, time::Duration};

use mesh_common::{
    api::{AgentMessage, Hello, agent_message::Kind, state_stream_client::StateStreamClient},
    model::ResourceSet,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Backoff between reconnection attempts.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot reach the operator at {endpoint}: {source}; check MESH_OPERATOR and that mesh-operator runs")]
    Connect { endpoint: String, source: tonic::transport::Error },
    #[error("the operator refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the operator sent a broken update: {0}")]
    Parts(#[from] mesh_common::model::PartError),
    #[error("the operator closed the stream")]
    Closed,
    #[error("cannot read the TLS bundle {path}: {source}")]
    Bundle { path: std::path::PathBuf, source: std::io::Error },
    #[error("the operator refused to bootstrap this node's certificate: {0}")]
    Bootstrap(tonic::Status),
}

/// Gets this node's bundle from the operator with a ServiceAccount token, over TLS that
/// authenticates the operator (with its CA from `ca_file`), and writes it to `dir`.
pub async fn bootstrap(
    endpoint: &str,
    ca_file: &std::path::Path,
    token_file: &std::path::Path,
    node: &str,
    dir: &std::path::Path,
) -> Result<(), StreamError> {
    use mesh_common::{
        api::{BootstrapRequest, node_bootstrap_client::NodeBootstrapClient},
        model::{OPERATOR_TLS_NAME, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE},
    };
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| StreamError::Bundle { path, source }
    };
    let ca = std::fs::read(ca_file).map_err(io(ca_file))?;
    // A projected token is rotated by the kubelet: read it at every attempt.
    let token = std::fs::read_to_string(token_file).map_err(io(token_file))?;
    let connect_error = |source| StreamError::Connect { endpoint: endpoint.to_owned(), source };
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name(OPERATOR_TLS_NAME);
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(connect_error)?
        .tls_config(config)
        .map_err(connect_error)?
        .connect()
        .await
        .map_err(connect_error)?;
    let request = BootstrapRequest { node: node.to_owned(), token: token.trim().to_owned() };
    let bundle =
        NodeBootstrapClient::new(channel).bootstrap(request).await.map_err(StreamError::Bootstrap)?.into_inner();
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (file, content, private) in
        [(TLS_CA_FILE, &bundle.ca, false), (TLS_KEY_FILE, &bundle.key, true), (TLS_CERT_FILE, &bundle.cert, false)]
    {
        // The certificate is written last: its presence means the bundle is complete.
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let path = dir.join(file);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(io(&path))?;
        out.write_all(content.as_bytes()).map_err(io(&path))?;
    }
    tracing::info!(node, dir = %dir.display(), "bootstrapped this node's certificate");
    Ok(())
}

/// The client side of mutual TLS, from this node's bundle.
pub fn tls_config(dir: &std::path::Path) -> Result<tonic::transport::ClientTlsConfig, StreamError> {
    use mesh_common::model::{OPERATOR_TLS_NAME, TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|source| StreamError::Bundle { path, source })
    };
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(TLS_CA_FILE)?))
        .identity(tonic::transport::Identity::from_pem(read(TLS_CERT_FILE)?, read(TLS_KEY_FILE)?))
        .domain_name(OPERATOR_TLS_NAME))
}

/// How long after a failed apply the agent tries the same state again.
pub const RETRY_FAILED: Duration = Duration::from_secs(2);

/// The largest update the agent accepts.
pub const MAX_UPDATE_BYTES: usize = 512 << 20;

/// What an applied update was.
#[derive(Debug, Clone)]
pub struct UpdateInfo {
    /// The operator run (epoch) and version of the model it brings.
    pub epoch: String,
    pub version: u64,
    pub full: bool,
    pub resources: usize,
    /// The keys it changed in the model; `None` when anything may have (a retry of a state
    /// that failed to apply).
    pub changed: Option<Vec<mesh_common::model::Key>>,
    /// A full snapshot's workload CA trust bundle (`None` for other updates).
    pub workload_roots: Option<Vec<String>>,
}

/// Gives the memory a decoded snapshot used back to the system (glibc keeps it otherwise).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the agent holds from the operator.
#[derive(Debug, Default)]
pub struct Received {
    pub model: ResourceSet,
    pub epoch: String,
    pub version: u64,
}

/// How the agent proves itself to the operator.
#[derive(Debug, Clone)]
pub struct Tls {
    /// This node's bundle directory (`ca.crt`, `tls.crt`, `tls.key`).
    pub dir: std::path::PathBuf,
    /// Without a bundle yet: the operator's CA and a ServiceAccount token file to bootstrap
    /// one with (cluster mode).
    pub bootstrap: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Follows the operator at `endpoint` until `shutdown` resolves. After every update,
/// `apply` is given the whole model; its error becomes a NACK.
pub async fn follow(
    endpoint: &str,
    tls: Option<&Tls>,
    node: &str,
    received: &mut Received,
    mut apply: impl FnMut(&ResourceSet, &UpdateInfo) -> Result<(), String>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut retry = RETRY_MIN;
    loop {
        let before = received.version;
        tokio::select! {
            _ = &mut shutdown => return,
            result = stream_once(endpoint, tls, node, received, &mut apply) => {
                let err = result.expect_err("a stream only ends with an error");
                if received.version != before {
                    retry = RETRY_MIN;
                }
                tracing::warn!(retry_in = ?retry, "{err}");
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

async fn stream_once(
    endpoint: &str,
    tls: Option<&Tls>,
    node: &str,
    received: &mut Received,
    apply: &mut impl FnMut(&ResourceSet, &UpdateInfo) -> Result<(), String>,
) -> Result<(), StreamError> {
    use mesh_common::model::{STREAM_CONNECT_TIMEOUT, STREAM_KEEPALIVE_INTERVAL, STREAM_KEEPALIVE_TIMEOUT};
    let connect_error = |source| StreamError::Connect { endpoint: endpoint.to_owned(), source };
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(connect_error)?
        .connect_timeout(STREAM_CONNECT_TIMEOUT)
        .http2_keep_alive_interval(STREAM_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(STREAM_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(STREAM_KEEPALIVE_INTERVAL));
    if let Some(tls) = tls {
        if let Some((ca_file, token_file)) = &tls.bootstrap
            && !tls.dir.join(mesh_common::model::TLS_CERT_FILE).exists()
        {
            bootstrap(endpoint, ca_file, token_file, node, &tls.dir).await?;
        }
        // Read at every connection, so a renewed bundle is picked up.
        channel = channel.tls_config(tls_config(&tls.dir)?).map_err(connect_error)?;
    }
    let client = StateStreamClient::new(channel.connect().await.map_err(connect_error)?);
    // The operator sends large updates in parts of about 1 MiB (`UPDATE_PART_BYTES`); an
    // operator that does not may still send a whole snapshot as one message.
    let mut client = client.max_decoding_message_size(MAX_UPDATE_BYTES);
    let mut parts = mesh_common::model::PartAssembler::default();
    let (outbound, messages) = mpsc::channel(16);
    let hello = Hello { node: node.to_owned(), epoch: received.epoch.clone(), version: received.version };
    outbound.send(AgentMessage { kind: Some(Kind::Hello(hello)) }).await.map_err(|_| StreamError::Closed)?;
    let mut updates = client.subscribe(ReceiverStream::new(messages)).await.map_err(StreamError::Refused)?.into_inner();
    tracing::info!(endpoint, epoch = received.epoch, version = received.version, "connected to the operator");
    // After a NACK the same state is tried again every RETRY_FAILED (a pod's interface may
    // appear after the pod does), until it applies: then the version is ACKed.
    let mut failed: Option<UpdateInfo> = None;
    loop {
        let info = tokio::select! {
            update = updates.message() => {
                let Some(part) = update.map_err(StreamError::Broken)? else { break };
                let size = prost::Message::encoded_len(&part);
                let Some(update) = parts.push(part, size, MAX_UPDATE_BYTES)? else { continue };
                let (version, full, resources) = (update.version, update.full, update.upserts.len());
                received.epoch.clone_from(&update.epoch);
                received.version = update.version;
                let workload_roots = full.then(|| update.workload_roots.clone());
                let changed = received.model.apply(update);
                if full {
                    release_freed_memory();
                }
                UpdateInfo { epoch: received.epoch.clone(), version, full, resources, changed: Some(changed), workload_roots }
            }
            _ = tokio::time::sleep(RETRY_FAILED), if failed.is_some() => {
                UpdateInfo { changed: None, ..failed.take().expect("guarded") }
            }
        };
        let applied = apply(&received.model, &info);
        if info.full {
            // And what compiling and writing all of it used for the moment.
            release_freed_memory();
        }
        let reply = match applied {
            Ok(()) => Kind::Ack(mesh_common::api::Ack { version: info.version }),
            Err(error) => {
                tracing::warn!(version = info.version, retry_in = ?RETRY_FAILED, "NACK: {error}");
                failed = Some(info.clone());
                Kind::Nack(mesh_common::api::Nack { version: info.version, error, rejected: Vec::new() })
            }
        };
        outbound.send(AgentMessage { kind: Some(reply) }).await.map_err(|_| StreamError::Closed)?;
    }
    Err(StreamError::Closed)
}
