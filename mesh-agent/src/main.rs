//! `mesh-agent`: see the crate documentation and ARCHITECTURE.md.

use std::{cell::RefCell, process::ExitCode};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use clap::Parser as _;
use mesh_agent::{
    agent_status::AgentState,
    config::{self, Args, Config},
    datapath::Datapath,
    desired::{Compiled, Compiler},
    flows::{
        directory::{Directory, SharedDirectory},
        events,
        observer::{self, Observer, ObserverService},
        store::FlowStore,
    },
    identity::{self, Certificates, ca_client::CaClient},
    l7::{L7, connector::Upstreams},
    metrics::Metrics,
    netns,
    operator_stream::{self, Received},
    policy,
    policy_table::{LocalEndpoint, PolicyTable},
    service_lb::ServiceTable,
    state_file::StateFile,
    tunnel,
};
use mesh_common::{
    api::Kind,
    api::agent_status_server::AgentStatusServer,
    drain::{DRAIN_TIMEOUT, Drain, Shutdown},
    model::ResourceSet,
};

fn main() -> ExitCode {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mesh-agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // The state file first: its errors name the file and the field, and need no privileges.
    let state = args.state_file.as_deref().map(StateFile::load).transpose()?;
    let config = Config::from_args(args)?;
    // Capabilities and kernel features, before anything is loaded: all that is missing, named.
    mesh_agent::probe::check()?;
    // Two workers: flow events and their clients run beside reconciliation.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Before anything is loaded: a SIGTERM from here on is a clean stop, never a half-start.
    let mut shutdown = {
        let _runtime = runtime.enter();
        Shutdown::listen().context("listening for SIGTERM and SIGINT")?
    };

    let mut datapath = Datapath::load(&config.bpffs, config.capacities, config.flow_aggregation)?;
    // The tunnel carries connections only with workload certificates, which come only over
    // mutual TLS to the operator.
    let tunnel_on = config.tunnel_address.is_some() && config.tls.is_some();
    let started = datapath.attach_cgroup(&config.cgroup, tunnel_on).map_err(anyhow::Error::from).and_then(|()| {
        Ok((
            (datapath.service_table()?, datapath.nodeport_table()?),
            datapath.policy_table()?,
            datapath.flow_events()?,
            datapath.tunnel_redirect()?,
        ))
    });
    let ((mut table, nodeport), policy, (events, lost_events), (mut redirect, origins)) = match started {
        Ok(tables) => tables,
        Err(err) => {
            let _ = datapath.shutdown(false);
            return Err(err);
        }
    };
    tracing::info!(node = %config.node_name, "starting");
    let mut external =
        External { nodeport, health: mesh_agent::health_check::HealthChecks::new(runtime.handle().clone()) };
    // Shared by reconciling and the verdict reports (one thread; never held across an await).
    let policy = RefCell::new(policy);

    // Flows: the kernel's events into the store, served over the Observer API and counted
    // in the metrics.
    let store = FlowStore::new(config.flow_buffer);
    let directory = SharedDirectory::new(Directory::empty(&config.node_name));
    // Workload certificates come from the operator's CA, served only over mutual TLS.
    let certificates = Certificates::new(config.trust_domain.clone(), config.tls.is_some());
    let agent = AgentState::new(&config.node_name, config.bpffs.clone(), store.clone(), certificates.clone());
    let destinations = agent.destinations.clone();
    // The L7 proxy reaches backends from the node's namespace, as the tunnel does: as the
    // client (its address here, its certificate through the tunnel) when the agent holds
    // workload certificates (its own pool of tunnels), else from the node.
    let sockets = netns::Sockets::new(config.netns.as_deref())?;
    let upstreams = if config.tls.is_some() {
        Upstreams::as_clients(sockets, destinations.clone(), certificates.clone(), tunnel::hbone::Pool::default())
    } else {
        Upstreams::from_node(sockets)
    };
    let l7 = L7::new(upstreams, store.clone(), std::sync::Arc::new(destinations.clone()));
    agent.set_l7(l7.clone());
    let served = runtime.block_on(serve(
        &config,
        &store,
        &directory,
        &agent,
        events,
        lost_events,
        Redirected { origins, l7: l7.clone() },
    ));
    // The Observer socket this agent made (removed at exit only if still that one).
    let observer_socket = config.observer_socket.as_deref().and_then(file_id);
    let drain = match served {
        Ok(drain) => drain,
        Err(err) => {
            let _ = datapath.shutdown(false);
            return Err(err);
        }
    };
    let observe = |datapath: &Datapath, model: &ResourceSet, policy: &PolicyTable| {
        directory.set(Directory::build(&config.node_name, model, policy.attributions()));
        agent.set_programs(datapath.programs());
    };

    if let Some(state) = state {
        // Static mode: one reconciliation; any error stops the agent.
        let model = state.resources(&config.node_name);
        let mut compiler = Compiler::default();
        let compiled = compiler.update(&model, &config.node_name, None);
        let result = reconcile(
            &mut datapath,
            (&mut table, &mut external),
            &mut policy.borrow_mut(),
            &config,
            Update {
                model: &model,
                compiler: &compiler,
                services: compiled,
                policy_changed: true,
                external_changed: true,
            },
        );
        observe(&datapath, &model, &policy.borrow());
        if let Err(err) = result {
            let _ = datapath.shutdown(false);
            anyhow::bail!(err);
        }
        ready(&mut datapath, &config)?;
        agent.set_ready(true);
        runtime.block_on(async {
            tokio::select! {
                () = shutdown_signal(&mut shutdown) => {}
                () = report_verdicts(&policy) => {}
            }
        });
    } else {
        let endpoint = config.operator.clone().expect("validated: a state file or an operator");
        if let Some(tls) = &config.tls {
            let ca = CaClient { endpoint: endpoint.clone(), tls: tls.clone() };
            runtime.spawn(identity::renewal::run(certificates.clone(), ca));
        }
        let mut received = Received::default();
        let mut is_ready = false;
        // Compiled services kept between updates; an update after a failed one compiles and
        // writes everything again.
        let mut compiler = Compiler::default();
        let mut healthy = false;
        let follow = operator_stream::follow(
            &endpoint,
            config.tls.as_ref(),
            &config.node_name,
            &mut received,
            |model, update| {
                let started = std::time::Instant::now();
                if let Some(roots) = &update.workload_roots
                    && certificates.enabled()
                {
                    certificates.set_bundle(roots.clone());
                }
                let changed = if healthy { update.changed.as_deref() } else { None };
                let touched = |kinds: &[Kind]| {
                    changed.is_none_or(|keys| keys.iter().any(|key| kinds.iter().any(|kind| key.0 == *kind as i32)))
                };
                // Policy reads pods and policies; the flow directory also names services.
                let policy_changed = touched(&[Kind::Workload, Kind::NetworkPolicy, Kind::MeshPolicy]);
                let names_changed = policy_changed || touched(&[Kind::Service]);
                let services = compiler.update(model, &config.node_name, changed);
                let compiled = started.elapsed();
                let (frontends, pods) = (compiler.len(), compiler.pods().len());
                let external_changed = touched(&[Kind::Service, Kind::EndpointSlice, Kind::Node]);
                let result = reconcile(
                    &mut datapath,
                    (&mut table, &mut external),
                    &mut policy.borrow_mut(),
                    &config,
                    Update { model, compiler: &compiler, services, policy_changed, external_changed },
                );
                if policy_changed && certificates.enabled() {
                    for problem in certificates.want_for(model, &config.node_name) {
                        tracing::warn!("no workload identity: {problem}");
                    }
                }
                let mut result = result;
                if !certificates.enabled() && touched(&[Kind::Workload, Kind::PeerAuthentication]) {
                    let strict = tunnel::strict_pods(model, &config.node_name);
                    if !strict.is_empty() {
                        tracing::warn!(
                            pods = ?strict,
                            "PeerAuthentication makes these pods STRICT, but this agent has no workload certificates (it follows the operator without mutual TLS): mutual TLS is not enforced on this node; give the agent its node bundle (--tls-dir)"
                        );
                    }
                }
                // Principal rules (MeshPolicy) tunnel the pods they select, and number clients.
                let tunnel_kinds = [Kind::Workload, Kind::PeerAuthentication, Kind::Node, Kind::MeshPolicy];
                if certificates.enabled() && touched(&tunnel_kinds) {
                    destinations.set_from(model, &config.node_name, &config.trust_domain);
                    let interfaces: Vec<u32> = datapath.attached_pods().map(|pod| pod.iface.ifindex).collect();
                    if let Err(err) =
                        redirect_to_tunnel(&mut redirect, &destinations, interfaces, agent.outbound_listening())
                    {
                        result = Err(result.err().map_or(err.to_string(), |e| format!("{e}; {err}")));
                    }
                }
                let routes = [Kind::HttpRoute, Kind::GrpcRoute, Kind::BackendTrafficPolicy];
                if touched(&routes) || touched(&[Kind::Service, Kind::EndpointSlice, Kind::Workload, Kind::Node]) {
                    for err in l7.update(model, &compiler, touched(&routes)) {
                        tracing::warn!("{err}");
                    }
                }
                healthy = result.is_ok();
                let reconciled = started.elapsed();
                if names_changed {
                    observe(&datapath, model, &policy.borrow());
                } else {
                    agent.set_programs(datapath.programs());
                }
                tracing::info!(
                    version = update.version,
                    full = update.full,
                    resources = update.resources,
                    pods,
                    frontends,
                    ok = result.is_ok(),
                    compile_us = compiled.as_micros() as u64,
                    reconcile_us = (reconciled - compiled).as_micros() as u64,
                    observe_us = (started.elapsed() - reconciled).as_micros() as u64,
                    "applied update"
                );
                if result.is_ok() {
                    agent.set_applied(&update.epoch, update.version);
                }
                // The previous agent's links released once a first update applied; ready once
                // the tunnel's listeners listen too (at once without a tunnel).
                if result.is_ok() && !is_ready {
                    is_ready = true;
                    datapath.take_over();
                    let (agent, file) = (agent.clone(), config.ready_file.clone());
                    tokio::spawn(async move {
                        agent.tunnel_listens().await;
                        match write_ready_file(file.as_deref()) {
                            Ok(()) => agent.set_ready(true),
                            Err(err) => tracing::error!("{err:#}"),
                        }
                    });
                }
                result
            },
            shutdown_signal(&mut shutdown),
        );
        runtime.block_on(async {
            tokio::select! {
                () = follow => {}
                () = report_verdicts(&policy) => {}
            }
        });
    }
    // Observer clients see their streams end (GOAWAY) instead of a reset; bounded.
    let open = runtime.block_on(drain.run(DRAIN_TIMEOUT));
    if !open.is_empty() {
        tracing::info!(timeout = ?DRAIN_TIMEOUT, ?open, "drained: connections still open were closed");
    }
    // Only what is still this agent's: a new agent started beside it may have replaced both.
    if let Some(ready) = &config.ready_file
        && std::fs::read(ready).is_ok_and(|content| content == ready_content())
    {
        let _ = std::fs::remove_file(ready);
    }
    if let Some(socket) = &config.observer_socket
        && observer_socket.is_some()
        && file_id(socket) == observer_socket
    {
        let _ = std::fs::remove_file(socket);
    }
    runtime.shutdown_background();
    datapath.shutdown(config.keep_datapath)?;
    Ok(())
}

/// Where the connections `connect4` sends to the agent go: their original destinations, and
/// the L7 proxy.
struct Redirected {
    origins: tunnel::redirect::Origins,
    l7: L7,
}

/// Starts the flow event reader, the metrics, and the Observer API (with the agent status)
/// on its TCP address (in the node's network namespace) and its unix socket.
async fn serve(
    config: &Config,
    store: &FlowStore,
    directory: &SharedDirectory,
    state: &AgentState,
    events: RingBuf<MapData>,
    lost_events: PerCpuArray<MapData, u64>,
    redirected: Redirected,
) -> anyhow::Result<Drain> {
    let Redirected { origins, l7 } = redirected;
    let mut drain = Drain::default();
    let reader = events::run(events, lost_events, store.clone());
    tokio::spawn(async move {
        let err = reader.await;
        tracing::error!("flow events stopped: {err}");
    });
    let metrics = Metrics::new(state.clone(), directory.clone(), Some(l7.metrics()));
    tokio::spawn(metrics.clone().count_flows());
    // Listeners are bound inside the node's network namespace: a node agent's ports are the
    // node's, as with hostNetwork. Every one with SO_REUSEPORT: a new agent listens beside
    // this one while it stops (a rolling update with a surge), so no port is ever closed.
    let socket = |address: std::net::SocketAddr, key: &str| -> anyhow::Result<tokio::net::TcpSocket> {
        netns::run_in(config.netns.as_deref(), || netns::shared_socket(address))?
            .with_context(|| format!("{key}: cannot listen on {address}; give another address or \"off\""))
    };
    let bind = |address: std::net::SocketAddr, key: &str| -> anyhow::Result<tokio::net::TcpListener> {
        Ok(socket(address, key)?.listen(1024)?)
    };
    if let Some(address) = config.metrics_address {
        let listener = bind(address, config::ENV_METRICS_ADDRESS)?;
        tracing::info!(%address, "metrics at /metrics");
        let status = state.clone();
        mesh_common::metrics_http::spawn(
            &mut drain,
            listener,
            std::sync::Arc::new(move || metrics.render()),
            std::sync::Arc::new(move || status.is_ready()),
        );
    }
    // Tunnels need workload certificates, which come only over mutual TLS to the operator.
    if let Some(address) = config.tunnel_address.filter(|_| state.certificates.enabled()) {
        // A new agent binds the port while this one drains its tunnels; what waits in this
        // one's accept queue when it closes moves to the new one's (`tcp_migrate_req`).
        let inbound_socket = socket(address, config::ENV_TUNNEL_ADDRESS)?;
        if let Err(err) = netns::run_in(config.netns.as_deref(), netns::migrate_requests_on_close)? {
            tracing::warn!(
                "cannot set {}: {err}; connections queued at an agent's tunnel listeners when it stops are reset",
                netns::TCP_MIGRATE_REQ
            );
        }
        tracing::info!(%address, "accepting mutual-TLS tunnels (HBONE)");
        let tunnel_runtime = tunnel::runtime().context("starting the tunnel's thread")?;
        let inbound = tunnel::hbone::Inbound {
            certificates: state.certificates.clone(),
            destinations: state.destinations.clone(),
            stats: state.tunnel.clone(),
            sockets: mesh_agent::netns::Sockets::new(config.netns.as_deref())?,
            flows: mesh_agent::l7::access_log::AccessLog::new(state.store.clone()),
            l7_metrics: l7.metrics().clone(),
        };
        // Replies to the inbound side's transparent connections come back to it.
        netns::run_in(config.netns.as_deref(), tunnel::reply_route::install)?
            .context("installing the tunnel's reply route (a rule for its mark and a local route)")?;
        state.set_tunnel_address(address);
        // The outbound listener: where `connect4` sends the connections that need the tunnel.
        let outbound_address = std::net::SocketAddr::new(address.ip(), tunnel::OUTBOUND_PORT);
        let outbound_socket =
            socket(outbound_address, config::ENV_TUNNEL_ADDRESS).context("the outbound port of the tunnel address")?;
        let outbound = tunnel::outbound::Outbound {
            certificates: state.certificates.clone(),
            destinations: state.destinations.clone(),
            origins: std::sync::Arc::new(origins),
            stats: state.outbound.clone(),
            sockets: mesh_agent::netns::Sockets::new(config.netns.as_deref())?,
            pool: tunnel::hbone::Pool::default(),
            flows: store.clone(),
            l7,
        };
        tracing::info!(address = %outbound_address, "redirected connections to tunnel (outbound)");
        state.set_outbound_listening();
        // Both listen once the pods' certificates are held; the agent is ready only then.
        state.tunnel_bound(2);
        let (stop, listening) = (drain.signal(), state.clone());
        drain.track_for(
            "tunnel (outbound)",
            tunnel_runtime.spawn(async move {
                // Listening here registers the listener with the tunnel's runtime.
                let mut stop = std::pin::pin!(stop);
                let served = match tunnel::listen_with_certificates(
                    outbound_socket,
                    &listening,
                    "outbound",
                    stop.as_mut(),
                )
                .await
                {
                    Some(Ok(listener)) => tunnel::outbound::serve(listener, outbound, stop).await,
                    Some(Err(err)) => Err(err),
                    None => Ok(()),
                };
                if let Err(err) = served {
                    tracing::error!("the outbound tunnel listener stopped: {err}");
                }
            }),
            config.tunnel_drain,
        );
        let (stop, listening) = (drain.signal(), state.clone());
        drain.track_for(
            "tunnel",
            tunnel_runtime.spawn(async move {
                let mut stop = std::pin::pin!(stop);
                let served =
                    match tunnel::listen_with_certificates(inbound_socket, &listening, "tunnel", stop.as_mut()).await {
                        Some(Ok(listener)) => tunnel::hbone::serve(listener, inbound, stop).await,
                        Some(Err(err)) => Err(err),
                        None => Ok(()),
                    };
                if let Err(err) = served {
                    tracing::error!("the tunnel listener stopped: {err}");
                }
            }),
            config.tunnel_drain,
        );
    }
    let observer = Observer { store: store.clone(), directory: directory.clone() };
    let health = observer::health_service().await;
    let router = || {
        tonic::transport::Server::builder()
            .add_service(ObserverService::new(observer.clone()))
            .add_service(AgentStatusServer::new(state.clone()))
            .add_service(health.clone())
    };
    if let Some(address) = config.observer_address {
        let listener = bind(address, config::ENV_OBSERVER_ADDRESS)?;
        tracing::info!(%address, "Observer API (Hubble) on tcp");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = router().serve_with_incoming_shutdown(incoming, drain.signal());
        drain.track(
            "Observer API (tcp)",
            tokio::spawn(async move {
                if let Err(err) = server.await {
                    tracing::error!("Observer API (tcp) stopped: {err}");
                }
            }),
        );
    }
    if let Some(socket) = &config.observer_socket {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).with_context(|| {
            format!(
                "{}: cannot listen on {}; give another path or \"off\"",
                config::ENV_OBSERVER_SOCKET,
                socket.display()
            )
        })?;
        tracing::info!(socket = %socket.display(), "Observer API (Hubble) on a unix socket");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = router().serve_with_incoming_shutdown(incoming, drain.signal());
        drain.track(
            "Observer API (unix)",
            tokio::spawn(async move {
                if let Err(err) = server.await {
                    tracing::error!("Observer API (unix) stopped: {err}");
                }
            }),
        );
    }
    Ok(drain)
}

/// What one reconciliation works from: the model, its compiled form, and what changed.
struct Update<'a> {
    model: &'a ResourceSet,
    compiler: &'a Compiler,
    services: Compiled,
    /// Pods or policies changed (or anything may have): compile the policy again.
    policy_changed: bool,
    /// Services, endpoints or nodes changed (or anything may have): compile the frontends from
    /// outside again.
    external_changed: bool,
}

/// Makes the datapath hold the compiled model; every problem is in the error, nothing stops
/// early. Services are written as a delta when only some changed; policy is compiled again
/// only when pods or policies changed.
/// What serves traffic from outside: the frontends' maps and the health checks.
struct External {
    nodeport: mesh_agent::nodeport::NodePortTable,
    health: mesh_agent::health_check::HealthChecks,
}

fn reconcile(
    datapath: &mut Datapath,
    (table, external): (&mut ServiceTable, &mut External),
    policy_table: &mut PolicyTable,
    config: &Config,
    update: Update<'_>,
) -> Result<(), String> {
    let Update { model, compiler, services, policy_changed, external_changed } = update;
    let started = std::time::Instant::now();
    let mut problems: Vec<String> =
        datapath.sync_pods(config.netns.as_deref(), compiler.pods()).iter().map(ToString::to_string).collect();
    let pods_done = started.elapsed();
    let applied = match services {
        Compiled::Everything => table.apply(&compiler.services()),
        Compiled::Delta { upserts, removals } => table.update(&upserts, &removals),
    };
    match applied {
        Ok(stats) => tracing::debug!(
            ?stats,
            pods_us = pods_done.as_micros() as u64,
            services_us = (started.elapsed() - pods_done).as_micros() as u64,
            "services reconciled"
        ),
        Err(err) => problems.push(err.to_string()),
    }
    if policy_changed {
        // Policy for the pods whose interfaces carry the programs (the others are retried).
        let compiled = policy::compile(model, &config.node_name);
        let local: Vec<LocalEndpoint<'_>> = datapath
            .attached_pods()
            .filter_map(|pod| {
                let policy = compiled.iter().find(|e| e.pod == pod.pod)?;
                Some(LocalEndpoint { ifindex: pod.iface.ifindex, policy })
            })
            .collect();
        let prefilter = mesh_agent::prefilter::compile(model);
        for why in &prefilter.left_out {
            tracing::info!("not prefiltered, enforced at the pods: {why}");
        }
        match mesh_agent::principals::Numbering::of(model, &config.trust_domain) {
            Ok(principals) => {
                match policy_table.apply(&local, &policy::workloads(model), &principals, &prefilter.entries) {
                    Ok(stats) => {
                        tracing::debug!(?stats, total_us = started.elapsed().as_micros() as u64, "policy reconciled");
                    }
                    Err(err) => problems.push(err.to_string()),
                }
            }
            Err(err) => problems.push(err.to_string()),
        }
    }
    let addresses = node_addresses(model, &config.node_name);
    if external_changed {
        let externals = mesh_agent::nodeport::compile(model, compiler, &config.node_name, &addresses, config.dsr);
        if let Err(err) = external.nodeport.apply(&externals, addresses.first().copied()) {
            problems.push(err.to_string());
        }
        let checks = mesh_agent::nodeport::health_checks(model, compiler, &config.node_name);
        problems.extend(external.health.sync(config.netns.as_deref(), &checks));
    }
    // XDP and TC run on the external interfaces only while they have work (a prefilter CIDR,
    // frontends reached from outside): an interface without them costs nothing.
    let wanted = (policy_table.prefilter_active(), external.nodeport.active());
    let devices = if wanted != (false, false) { external_devices(&addresses, config) } else { Ok(Vec::new()) };
    match devices {
        Ok(devices) => {
            let xdp = if wanted.0 { &devices[..] } else { &[] };
            let tc = if wanted.1 { &devices[..] } else { &[] };
            let errors = datapath.sync_devices(config.netns.as_deref(), xdp, tc, config.xdp_mode);
            problems.extend(errors.iter().map(ToString::to_string));
        }
        Err(err) => problems.push(err),
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// This node's addresses in the model (its Node object's).
fn node_addresses(model: &ResourceSet, node: &str) -> Vec<std::net::Ipv4Addr> {
    model
        .of_kind(Kind::Node)
        .filter_map(|r| match &r.kind {
            Some(mesh_common::api::resource::Kind::Node(n)) if n.name == node => Some(n),
            _ => None,
        })
        .flat_map(|n| n.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect()
}

/// The node's external interfaces as configured (`MESH_DEVICES`): by name, or those holding
/// `addresses` (none while the model gives the node none).
fn external_devices(
    addresses: &[std::net::Ipv4Addr],
    config: &Config,
) -> Result<Vec<mesh_agent::devices::Device>, String> {
    use mesh_agent::devices;
    let found = match &config.devices {
        config::Devices::Off => return Ok(Vec::new()),
        config::Devices::Named(names) => netns::run_in(config.netns.as_deref(), || devices::named(names)),
        config::Devices::Auto => netns::run_in(config.netns.as_deref(), || devices::holding(addresses)),
    };
    found.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// Makes `connect4` send the connections to remote STRICT pods (and ports) to this agent's
/// outbound listener on the node's address, once the listener is up and the model gives the
/// node an address (until then nothing is redirected).
fn redirect_to_tunnel(
    redirect: &mut tunnel::redirect::Redirect,
    destinations: &tunnel::Destinations,
    interfaces: impl IntoIterator<Item = u32>,
    listening: bool,
) -> Result<(), tunnel::redirect::RedirectError> {
    let wanted = tunnel::redirect::desired(destinations);
    if !wanted.unreachable.is_empty() {
        tracing::warn!(unreachable = ?wanted.unreachable, "STRICT pods on nodes without an address in the model: not tunnelled");
    }
    let listener = destinations
        .node_address()
        .filter(|_| listening)
        .map(|ip| std::net::SocketAddrV4::new(ip, tunnel::OUTBOUND_PORT));
    if listening && listener.is_none() && !wanted.outbound.is_empty() {
        tracing::warn!("this node has no address in the model: nothing is redirected to the tunnel");
    }
    redirect.apply(&wanted, interfaces, listener)?;
    tracing::debug!(tables = ?redirect.len(), ?listener, "tunnel redirect applied");
    Ok(())
}

/// The datapath holds the desired state: release a previous agent's links, say so.
/// What this agent writes in its ready file: its pid, so that it removes the file at exit only
/// if no later agent wrote it since.
fn ready_content() -> Vec<u8> {
    format!("ready {}\n", std::process::id()).into_bytes()
}

/// The device and inode of `path`, if it exists.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn ready(datapath: &mut Datapath, config: &Config) -> anyhow::Result<()> {
    datapath.take_over();
    write_ready_file(config.ready_file.as_deref())
}

/// Writes the ready file, if there is one.
fn write_ready_file(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(ready) = file {
        std::fs::write(ready, ready_content())
            .with_context(|| format!("writing the ready file {}", ready.display()))?;
    }
    tracing::info!("ready");
    Ok(())
}

/// How often the agent logs the verdicts counted since its last report.
const VERDICT_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs, every [`VERDICT_REPORT_INTERVAL`], the policy verdicts counted since the last report,
/// each with the rule that decided it. Never ends.
async fn report_verdicts(policy: &RefCell<PolicyTable>) {
    let mut tick = tokio::time::interval(VERDICT_REPORT_INTERVAL);
    loop {
        tick.tick().await;
        for line in policy.borrow_mut().verdict_report() {
            tracing::info!("verdict {line}");
        }
    }
}

/// Keeps glibc's heap from holding on to what a large snapshot used: a fixed mmap threshold
/// (glibc raises it after every large free, after which decoded snapshots land in the heap and
/// fragment it) and two arenas instead of one per thread. Measured by `bench control-plane`.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Resolves on SIGTERM or SIGINT (received since the agent started).
async fn shutdown_signal(shutdown: &mut Shutdown) {
    let signal = shutdown.recv().await;
    tracing::info!("{signal}: shutting down");
}
