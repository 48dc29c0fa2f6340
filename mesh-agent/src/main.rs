//! `mesh-agent`: see the crate documentation and ARCHITECTURE.md.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use mesh_agent::{
    config::{Args, Config},
    datapath::Datapath,
    service_lb::ResolvedService,
    state_file::StateFile,
};
use mesh_common::service_lb::{Backend, ServiceKey};

fn main() -> ExitCode {
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
    let state = StateFile::load(&args.state_file)?;
    let config = Config::from_args(args)?;
    let services = resolve(&state);
    tracing::info!(node = %config.node_name, pods = state.pods.len(), services = services.len(), "starting");

    let mut datapath = Datapath::load(&config.bpffs)?;
    if let Err(err) = start(&mut datapath, &config, &state, &services) {
        // Leave nothing half-attached: drop what this run attached (a previous agent's pinned
        // links, if any, stay in force).
        let _ = datapath.shutdown(false);
        return Err(err);
    }
    datapath.take_over();
    if let Some(ready) = &config.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("writing the ready file {}", ready.display()))?;
    }
    tracing::info!("ready");

    wait_for_shutdown_signal()?;
    if let Some(ready) = &config.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    datapath.shutdown(config.keep_datapath)?;
    Ok(())
}

fn start(
    datapath: &mut Datapath,
    config: &Config,
    state: &StateFile,
    services: &[ResolvedService],
) -> anyhow::Result<()> {
    datapath.attach_cgroup(&config.cgroup)?;
    datapath.attach_pods(config.netns.as_deref(), &state.pods)?;
    let mut table = datapath.service_table()?;
    let stats = table.apply(services)?;
    tracing::info!(?stats, "services reconciled");
    Ok(())
}

/// The services of `state` with their backends' addresses (the file was validated: every
/// backend names a declared pod).
fn resolve(state: &StateFile) -> Vec<ResolvedService> {
    state
        .services
        .iter()
        .map(|service| ResolvedService {
            name: service.name.clone(),
            key: ServiceKey::new(service.ip.octets(), service.port.0, service.protocol.number()),
            backends: service
                .backends
                .iter()
                .filter_map(|b| Some(Backend::new(state.pod_ip(&b.pod)?.octets(), b.port.0)))
                .collect(),
        })
        .collect()
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        Ok(())
    })
}
