//! `mesh-operator`: see the crate documentation and ARCHITECTURE.md.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_common::api::state_stream_server::StateStreamServer;
use mesh_common::drain::{DRAIN_TIMEOUT, Drain, Shutdown};
use mesh_common::identity::TrustDomain;
use mesh_operator::{
    bootstrap::BootstrapServer,
    ca_server::CaServer,
    cluster::ClusterView,
    identity::IdentityAllocator,
    local_dir::{LocalDir, ManifestError},
    model_store::ModelStore,
    pki::Pki,
    state_server::StateServer,
    workload_ca::WorkloadCa,
};
use notify::Watcher as _;

/// The default gRPC address of the state stream.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15150";
/// How long a burst of file events is collected before the files are read again.
const DEBOUNCE: Duration = Duration::from_millis(5);

#[derive(Parser)]
#[command(name = "mesh-operator", version, about = "The mesh's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How the state stream is served, in either mode.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the state stream.
    #[arg(long, env = "MESH_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where identities are kept across restarts [default: /var/lib/mesh/identities.json in
    /// cluster mode; in local mode one per manifests directory, /var/lib/mesh/local/<its path,
    /// with '/' as '-'>/identities.json, so operators of different directories on one host
    /// never share one].
    #[arg(long, env = "MESH_IDENTITY_FILE")]
    identity_file: Option<PathBuf>,
    /// Written with the bound address once the model is loaded and the stream serves.
    #[arg(long, env = "MESH_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// The CA directory: the stream is then mutual TLS, and each agent must present its
    /// node's certificate (see `issue`). Without it the stream is plaintext.
    #[arg(long, env = "MESH_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// Names (DNS or IP) agents reach the operator by, for its certificate.
    #[arg(long = "server-name", env = "MESH_SERVER_NAMES", value_delimiter = ',', default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    server_names: Vec<String>,
    /// Address of the Prometheus metrics endpoint (`/metrics`).
    #[arg(long, env = "MESH_METRICS_LISTEN", default_value = mesh_operator::metrics::DEFAULT_METRICS_LISTEN)]
    metrics_listen: SocketAddr,
    /// The namespace the operator runs in, where it publishes its CA (cluster mode); a
    /// PeerAuthentication without a selector here is the mesh-wide default.
    #[arg(long, env = "MESH_NAMESPACE", default_value = mesh_operator::crd::DEFAULT_ROOT_NAMESPACE)]
    namespace: String,
    /// The agents' ServiceAccount, whose tokens may bootstrap node certificates (cluster mode).
    #[arg(long, env = "MESH_AGENT_SERVICE_ACCOUNT", default_value = "system:serviceaccount:mesh-system:mesh-agent")]
    agent_service_account: String,
    /// The trust domain of workload identities (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, env = mesh_common::identity::ENV_TRUST_DOMAIN, default_value = mesh_common::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
    /// The longest lifetime of a workload certificate, in seconds (at least 60); a request
    /// for longer, or for none, gets this.
    #[arg(long, env = "MESH_WORKLOAD_CERT_TTL", default_value_t = mesh_operator::workload_ca::DEFAULT_TTL.as_secs())]
    workload_cert_ttl: u64,
}

/// The TLS side of serving: the stream's CA and the workload CA, both in the PKI directory.
struct Tls {
    dir: PathBuf,
    server_names: Vec<String>,
    agent_account: String,
    trust_domain: TrustDomain,
    workload_cert_ttl: Duration,
}

impl ServeArgs {
    /// With a PKI directory: what serving with TLS (and the workload CA) needs.
    fn tls(&self) -> Option<Tls> {
        self.pki_dir.clone().map(|dir| Tls {
            dir,
            server_names: self.server_names.clone(),
            agent_account: self.agent_service_account.clone(),
            trust_domain: self.trust_domain.clone(),
            workload_cert_ttl: Duration::from_secs(self.workload_cert_ttl),
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Local mode: serve the model of a directory of Kubernetes manifests, following its changes.
    Local {
        /// The directory of manifests (Namespaces, Pods, Services, EndpointSlices, …).
        #[arg(long, env = "MESH_MANIFESTS")]
        manifests: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Cluster mode: serve the model of the cluster the in-cluster config (or the kubeconfig)
    /// points at.
    Cluster {
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Issues a node's bundle (ca.crt, tls.crt, tls.key) for its agent, creating the CA if
    /// needed.
    Issue {
        #[arg(long, env = "MESH_PKI_DIR")]
        pki_dir: PathBuf,
        #[arg(long)]
        node: String,
        /// Directory to write the bundle to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a directory of manifests: prints one line per invalid object; exit 1 if any.
    Check { manifests: PathBuf },
    /// One step of a workload CA root rotation, on the PKI directory's files: prepare (a next
    /// root, trusted), activate (it signs; the old one stays trusted), retire (the old one is
    /// trusted no more, once every certificate it signed has expired). Each step takes effect
    /// when the operator starts.
    RotateWorkloadCa {
        #[arg(long, env = "MESH_PKI_DIR")]
        pki_dir: PathBuf,
        #[arg(long, env = mesh_common::identity::ENV_TRUST_DOMAIN, default_value = mesh_common::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: TrustDomain,
        #[arg(value_enum)]
        step: mesh_operator::workload_ca::RotationStep,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Local { manifests, serve } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(local(&manifests, serve))),
        Command::Cluster { serve } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(cluster(serve))),
        Command::Issue { pki_dir, node, out } => Pki::open(&pki_dir)
            .and_then(|pki| pki.node(&node))
            .and_then(|bundle| bundle.write(&out))
            .map(|()| println!("wrote the bundle of node {node} to {}", out.display()))
            .map_err(anyhow::Error::from),
        Command::Check { manifests } => check(&manifests),
        Command::RotateWorkloadCa { pki_dir, trust_domain, step } => {
            mesh_operator::workload_ca::rotate(&pki_dir, step, &trust_domain)
                .map(|done| println!("{done}"))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-operator: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check(manifests: &Path) -> anyhow::Result<()> {
    let mut dir = LocalDir::new(manifests);
    let (changes, errors) = dir.load().with_context(|| format!("reading {}", manifests.display()))?;
    let mut view = ClusterView::new(IdentityAllocator::open(None)?);
    let objects = changes.len();
    changes.into_iter().for_each(|change| change.apply(&mut view));
    let (_, model_errors) = view.changes();
    for err in &errors {
        println!("{err}");
    }
    for err in &model_errors {
        println!("{err}");
    }
    for ((kind, ns, name), parents) in view.route_statuses() {
        for parent in parents {
            println!("{kind}/{ns}/{name}: {parent}");
        }
    }
    for ((ns, name), ancestors) in view.policy_statuses() {
        for ancestor in ancestors {
            println!("BackendTrafficPolicy/{ns}/{name}: {ancestor}");
        }
    }
    anyhow::ensure!(
        errors.is_empty() && model_errors.is_empty(),
        "{} invalid objects",
        errors.len() + model_errors.len()
    );
    println!("{objects} objects, all valid");
    Ok(())
}

async fn local(manifests: &Path, serve_args: ServeArgs) -> anyhow::Result<()> {
    // First: a SIGTERM while starting is a clean stop, not the signal's default action.
    let mut shutdown = Shutdown::listen().context("listening for SIGTERM and SIGINT")?;
    let tls = serve_args.tls();
    let identity_file = serve_args.identity_file.clone().unwrap_or_else(|| local_identity_file(manifests));
    let ready_file = serve_args.ready_file.as_deref();
    let (listen, metrics_listen) = (serve_args.listen, serve_args.metrics_listen);
    let mut view = open_view(&identity_file)?.with_root_namespace(&serve_args.namespace);
    let mut dir = LocalDir::new(manifests);
    let mut statuses = RouteStatuses::default();
    let epoch = new_epoch();
    let store = Arc::new(Mutex::new(ModelStore::new(epoch.clone())));

    // Follow the directory from before the first read, so no change falls in between.
    let (events, mut changed) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if is_complete_change(&event.kind) => {
            let _ = events.send(event.paths);
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("watching the manifests: {err}"),
    })?;
    watcher
        .watch(manifests, notify::RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", manifests.display()))?;

    // Bind before loading: agents that connect meanwhile wait in the listen queue instead of
    // backing off; they are served only once the model is complete (an empty first snapshot
    // would make them drop their state).
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    // Reading and parsing files and writing the identity table block: off the async workers.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let (changes, errors) = dir.load().with_context(|| format!("reading {}", manifests.display()))?;
        apply(&mut view, &mut statuses, &store, changes, &errors);
        Ok(())
    })?;

    // Local mode has no API server to report on: agent events are only logged.
    let metrics = (Arc::default(), bind_metrics(metrics_listen).await?);
    let source = manifests.display().to_string();
    let drain = serve(Serving {
        listener,
        store: &store,
        tls: tls.as_ref(),
        metrics,
        ready_file,
        source: &source,
        events: None,
        api: None,
    })?;

    loop {
        tokio::select! {
            Some(mut paths) = changed.recv() => {
                // Collect the rest of the burst (an editor's write is several events).
                tokio::time::sleep(DEBOUNCE).await;
                while let Ok(more) = changed.try_recv() {
                    paths.extend(more);
                }
                paths.sort();
                paths.dedup();
                tokio::task::block_in_place(|| {
                    let (changes, errors) = dir.reload(&paths);
                    apply(&mut view, &mut statuses, &store, changes, &errors);
                });
            }
            signal = shutdown.recv() => {
                tracing::info!("{signal}: shutting down");
                break;
            }
        }
    }
    drained(drain).await;
    Ok(())
}

/// Serves the state stream from `listener` (TLS with a PKI directory), then writes the ready
/// file with the bound address.
/// What [`serve`] needs; the cluster-only parts are `None` in local mode.
struct Serving<'a> {
    listener: tokio::net::TcpListener,
    store: &'a Arc<Mutex<ModelStore>>,
    tls: Option<&'a Tls>,
    metrics: (Arc<mesh_operator::metrics::Metrics>, tokio::net::TcpListener),
    ready_file: Option<&'a Path>,
    source: &'a str,
    /// Agent events for `MeshNode` status.
    events: Option<tokio::sync::mpsc::UnboundedSender<mesh_operator::node_status::AgentEvent>>,
    /// The API server, to review bootstrap tokens.
    api: Option<kube::Client>,
}

fn serve(serving: Serving<'_>) -> anyhow::Result<Drain> {
    let Serving { listener, store, tls, metrics, ready_file, source, events, api } = serving;
    let bound = listener.local_addr()?;
    let (counters, metrics_listener) = metrics;
    let server =
        StateServer { store: store.clone(), require_node_cert: tls.is_some(), events, metrics: counters.clone() };
    let model = store.clone();
    let metrics_counters = counters.clone();
    let render: mesh_common::metrics_http::Render = Arc::new(move || {
        let (version, resources) = {
            let store = model.lock().expect("store lock");
            (store.version(), store.len())
        };
        metrics_counters.render(version, resources)
    });
    let mut drain = Drain::default();
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let serving = ready.clone();
    mesh_common::metrics_http::spawn(
        &mut drain,
        metrics_listener,
        render,
        Arc::new(move || serving.load(std::sync::atomic::Ordering::Relaxed)),
    );
    use mesh_common::model::{STREAM_KEEPALIVE_INTERVAL, STREAM_KEEPALIVE_TIMEOUT};
    // A frozen or vanished agent's stream is dropped (and counted as disconnected) instead of
    // being held open forever.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(STREAM_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(STREAM_KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(STREAM_KEEPALIVE_INTERVAL));
    let (mut bootstrap, mut workload_ca) = (None, None);
    match tls {
        Some(tls) => {
            let pki = Pki::open(&tls.dir)?;
            let bundle = pki.server(&tls.server_names)?;
            builder = builder.tls_config(bundle.server_tls()).context("configuring TLS")?;
            bootstrap =
                Some(BootstrapServer { pki: Arc::new(pki), client: api, agent_account: tls.agent_account.clone() });
            let ca = WorkloadCa::open(&tls.dir, tls.trust_domain.clone(), tls.workload_cert_ttl)?;
            // Agents trust every root of a rotation from the first snapshot they get.
            store.lock().expect("store lock").set_workload_roots(ca.trusted_roots().to_vec());
            workload_ca = Some(CaServer { ca: Arc::new(ca), store: store.clone(), metrics: counters.clone() });
            tracing::info!(pki = %tls.dir.display(), names = ?tls.server_names, trust_domain = %tls.trust_domain, "the stream is mutual TLS: agents need their node's bundle; the workload CA serves istio.v1.auth.IstioCertificateService");
        }
        None => tracing::warn!(
            "the stream is plaintext and there is no workload CA: give --pki-dir for mutual TLS between operator and agents"
        ),
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let router = builder
        .add_service(StateStreamServer::new(server))
        .add_optional_service(bootstrap.map(mesh_common::api::node_bootstrap_server::NodeBootstrapServer::new))
        .add_optional_service(
            workload_ca
                .map(mesh_common::istio_ca::istio_certificate_service_server::IstioCertificateServiceServer::new),
        );
    let shutdown = drain.signal();
    drain.track(
        "state stream",
        tokio::spawn(async move {
            if let Err(err) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                tracing::error!("state stream server: {err}");
            }
        }),
    );
    {
        let store = store.lock().expect("store lock");
        tracing::info!(%bound, epoch = store.epoch(), version = store.version(), resources = store.len(), source, "serving");
    }
    if let Some(ready) = ready_file {
        // Written whole, then renamed into place: a reader never sees it half-written.
        let partial = ready.with_extension("partial");
        std::fs::write(&partial, bound.to_string()).with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, ready).with_context(|| format!("writing {}", ready.display()))?;
    }
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(drain)
}

/// Drains the servers on SIGTERM: agents are told to go away and reconnect to the next
/// operator; streams still open after [`DRAIN_TIMEOUT`] are closed.
async fn drained(drain: Drain) {
    let open = drain.run(DRAIN_TIMEOUT).await;
    if open.is_empty() {
        tracing::info!("drained: every connection finished");
    } else {
        tracing::info!(timeout = ?DRAIN_TIMEOUT, ?open, "drained: connections still open were closed");
    }
}

async fn bind_metrics(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {listen} (MESH_METRICS_LISTEN)"))
}

/// Cluster mode's identity file (on the Deployment's volume).
const CLUSTER_IDENTITY_FILE: &str = "/var/lib/mesh/identities.json";

/// Local mode's identity file for `manifests`: one per directory, named after its absolute path.
fn local_identity_file(manifests: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(manifests).unwrap_or_else(|_| manifests.to_owned());
    let name: String = absolute
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' { c } else { '-' })
        .collect();
    Path::new("/var/lib/mesh/local").join(if name.is_empty() { "root".into() } else { name }).join("identities.json")
}

/// The view, with identities persisted in `identity_file`.
fn open_view(identity_file: &Path) -> anyhow::Result<ClusterView> {
    if let Some(parent) = identity_file.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(ClusterView::new(IdentityAllocator::open(Some(identity_file))?))
}

/// Cluster mode: the API server (in-cluster config, or the kubeconfig) is the source.
async fn cluster(serve_args: ServeArgs) -> anyhow::Result<()> {
    // First: a SIGTERM while starting is a clean stop, not the signal's default action.
    let mut shutdown = Shutdown::listen().context("listening for SIGTERM and SIGINT")?;
    let tls = serve_args.tls();
    let identity_file = serve_args.identity_file.clone().unwrap_or_else(|| PathBuf::from(CLUSTER_IDENTITY_FILE));
    let ready_file = serve_args.ready_file.as_deref();
    let (listen, metrics_listen) = (serve_args.listen, serve_args.metrics_listen);
    use futures::StreamExt as _;
    let mut view = open_view(&identity_file)?.with_root_namespace(&serve_args.namespace);
    let store = Arc::new(Mutex::new(ModelStore::new(new_epoch())));
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (in-cluster or kubeconfig)")?;
    let (writer, route_statuses) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mesh_operator::gateway_status::write_all(client.clone(), route_statuses));
    let mut statuses = RouteStatuses { writer: Some(writer), ..RouteStatuses::default() };
    let api = client.clone();
    if let Some(Tls { dir, .. }) = &tls {
        let pki = Pki::open(dir)?;
        mesh_operator::bootstrap::publish_ca(client.clone(), &serve_args.namespace, pki.ca_pem())
            .await
            .with_context(|| format!("publishing the CA as ConfigMap {}/mesh-ca", serve_args.namespace))?;
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let (events, reports) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mesh_operator::node_status::report(client.clone(), reports));
    let mut events = Some(events);
    let mut batches = Box::pin(mesh_operator::cluster_source::watch(client));
    let mut metrics = Some((Arc::default(), bind_metrics(metrics_listen).await?));
    let mut listed = std::collections::BTreeSet::new();
    let mut listener = Some(listener);
    let mut drain = None;
    loop {
        tokio::select! {
            batch = batches.next() => {
                let Some(batch) = batch else { anyhow::bail!("the watches ended") };
                let problems: Vec<String> = batch.problems;
                for problem in &problems {
                    tracing::warn!("{problem}");
                }
                if let Some(kind) = batch.listed {
                    listed.insert(kind);
                }
                tokio::task::block_in_place(|| apply(&mut view, &mut statuses, &store, batch.changes, &[]));
                // Serve only once every kind was listed: a partial first snapshot would make
                // agents drop state they should keep.
                if listed.len() == mesh_operator::cluster_source::KINDS && let Some(listener) = listener.take() {
                    let metrics = metrics.take().expect("served once");
                    drain = Some(serve(Serving {
                        listener,
                        store: &store,
                        tls: tls.as_ref(),
                        metrics,
                        ready_file,
                        source: "the Kubernetes API",
                        events: events.take(),
                        api: Some(api.clone()),
                    })?);
                }
            }
            signal = shutdown.recv() => {
                tracing::info!("{signal}: shutting down");
                break;
            }
        }
    }
    if let Some(drain) = drain {
        drained(drain).await;
    }
    Ok(())
}

/// Whether an event means a file is complete in its new state. A file being written (created,
/// truncated, appended) is read once it is closed, never half-written, so a rewrite never
/// looks like its objects were deleted; a rename into place, a removal, and a new directory
/// count at once.
fn is_complete_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
            | EventKind::Create(CreateKind::Folder)
    )
}

/// Object changes -> model -> a new version; every error logged (and nothing else lost).
fn apply(
    view: &mut ClusterView,
    statuses: &mut RouteStatuses,
    store: &Mutex<ModelStore>,
    changes: Vec<mesh_operator::local_dir::ObjectChange>,
    errors: &[ManifestError],
) {
    for err in errors {
        tracing::warn!("invalid manifest: {err}");
    }
    changes.into_iter().for_each(|change| change.apply(view));
    let (resources, model_errors) = view.changes();
    for err in &model_errors {
        tracing::warn!("not in the model: {err}");
    }
    log_route_statuses(view, statuses);
    let mut store = store.lock().expect("store lock");
    if let Some(version) = store.commit(resources) {
        tracing::info!(version, resources = store.len(), "model updated");
    }
}

/// The last status of each route, and in cluster mode where it is written (local mode has no
/// API server to write it to: it is only logged).
#[derive(Default)]
struct RouteStatuses {
    logged: std::collections::BTreeMap<(&'static str, String, String), Vec<mesh_operator::http_route::ParentStatus>>,
    /// Each BackendTrafficPolicy's status per target, as last logged.
    policies: std::collections::BTreeMap<(String, String), Vec<mesh_operator::cluster::PolicyAncestor>>,
    writer: Option<tokio::sync::mpsc::UnboundedSender<mesh_operator::gateway_status::StatusUpdate>>,
}

/// Logs each route status that changed (at warn when a condition is False) and, in cluster
/// mode, has it written to the route.
fn log_route_statuses(view: &ClusterView, statuses: &mut RouteStatuses) {
    let now = view.route_statuses();
    for (key @ (kind, ns, name), parents) in &now {
        if statuses.logged.get(key) == Some(parents) {
            continue;
        }
        for parent in parents {
            if parent.conditions.iter().all(|c| c.status) {
                tracing::info!("{kind}/{ns}/{name}: {parent}");
            } else {
                tracing::warn!("{kind}/{ns}/{name}: {parent}");
            }
        }
        if let Some(writer) = &statuses.writer {
            let update = mesh_operator::gateway_status::RouteStatusUpdate {
                kind,
                namespace: ns.clone(),
                name: name.clone(),
                parents: parents.clone(),
            };
            let _ = writer.send(mesh_operator::gateway_status::StatusUpdate::Route(update));
        }
    }
    statuses.logged = now;
    let policies = view.policy_statuses();
    for (key @ (ns, name), ancestors) in &policies {
        if statuses.policies.get(key) == Some(ancestors) {
            continue;
        }
        for ancestor in ancestors {
            if ancestor.accepted {
                tracing::info!("BackendTrafficPolicy/{ns}/{name}: {ancestor}");
            } else {
                tracing::warn!("BackendTrafficPolicy/{ns}/{name}: {ancestor}");
            }
        }
        if let Some(writer) = &statuses.writer {
            let update = mesh_operator::gateway_status::PolicyStatusUpdate {
                namespace: ns.clone(),
                name: name.clone(),
                ancestors: ancestors.clone(),
            };
            let _ = writer.send(mesh_operator::gateway_status::StatusUpdate::Policy(update));
        }
    }
    statuses.policies = policies;
}

/// A new epoch for this run: versions restart with it.
fn new_epoch() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{:x}-{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_mode_keeps_one_identity_file_per_manifests_directory() {
        let a = local_identity_file(Path::new("/nonexistent/lab-a/manifests"));
        let b = local_identity_file(Path::new("/nonexistent/lab-b/manifests"));
        assert_eq!(a, Path::new("/var/lib/mesh/local/nonexistent-lab-a-manifests/identities.json"));
        assert_ne!(a, b);
        assert_eq!(local_identity_file(Path::new("/")), Path::new("/var/lib/mesh/local/root/identities.json"));
    }
}
