//! `mesh-agent`: see the crate documentation and ARCHITECTURE.md.

use std::{cell::RefCell, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use mesh_agent::{
    config::{Args, Config},
    datapath::Datapath,
    desired::{self, Desired},
    operator_stream::{self, Received},
    policy,
    policy_table::{LocalEndpoint, PolicyTable},
    service_lb::ServiceTable,
    state_file::StateFile,
};
use mesh_common::model::ResourceSet;

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
    let state = args.state_file.as_deref().map(StateFile::load).transpose()?;
    let config = Config::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let mut datapath = Datapath::load(&config.bpffs, config.capacities)?;
    let started = datapath
        .attach_cgroup(&config.cgroup)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok((datapath.service_table()?, datapath.policy_table()?)));
    let (mut table, policy) = match started {
        Ok(tables) => tables,
        Err(err) => {
            let _ = datapath.shutdown(false);
            return Err(err);
        }
    };
    tracing::info!(node = %config.node_name, "starting");
    // Shared by reconciling and the verdict reports (one thread; never held across an await).
    let policy = RefCell::new(policy);

    if let Some(state) = state {
        // Static mode: one reconciliation; any error stops the agent.
        let model = state.resources(&config.node_name);
        let desired = desired::compile(&model, &config.node_name);
        if let Err(err) = reconcile(&mut datapath, &mut table, &mut policy.borrow_mut(), &config, &model, &desired) {
            let _ = datapath.shutdown(false);
            anyhow::bail!(err);
        }
        ready(&mut datapath, &config)?;
        runtime.block_on(async {
            tokio::select! {
                () = shutdown_signal() => {}
                () = report_verdicts(&policy) => {}
            }
        });
    } else {
        let endpoint = config.operator.clone().expect("validated: a state file or an operator");
        let mut received = Received::default();
        let mut is_ready = false;
        let mut ready_error = None;
        let follow = operator_stream::follow(
            &endpoint,
            config.tls.as_ref(),
            &config.node_name,
            &mut received,
            |model, update| {
                let desired = desired::compile(model, &config.node_name);
                let result = reconcile(&mut datapath, &mut table, &mut policy.borrow_mut(), &config, model, &desired);
                tracing::info!(
                    version = update.version,
                    full = update.full,
                    resources = update.resources,
                    pods = desired.pods.len(),
                    frontends = desired.services.len(),
                    ok = result.is_ok(),
                    "applied update"
                );
                // Ready (and the previous agent's links released) once a first update applied.
                if result.is_ok() && !is_ready {
                    is_ready = true;
                    if let Err(err) = ready(&mut datapath, &config) {
                        ready_error = Some(err);
                    }
                }
                result
            },
            shutdown_signal(),
        );
        runtime.block_on(async {
            tokio::select! {
                () = follow => {}
                () = report_verdicts(&policy) => {}
            }
        });
        if let Some(err) = ready_error {
            return Err(err);
        }
    }
    if let Some(ready) = &config.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    datapath.shutdown(config.keep_datapath)?;
    Ok(())
}

/// Makes the datapath hold `desired`; every problem is in the error, nothing stops early.
fn reconcile(
    datapath: &mut Datapath,
    table: &mut ServiceTable,
    policy_table: &mut PolicyTable,
    config: &Config,
    model: &ResourceSet,
    desired: &Desired,
) -> Result<(), String> {
    let mut problems: Vec<String> =
        datapath.sync_pods(config.netns.as_deref(), &desired.pods).iter().map(ToString::to_string).collect();
    match table.apply(&desired.services) {
        Ok(stats) => tracing::debug!(?stats, "services reconciled"),
        Err(err) => problems.push(err.to_string()),
    }
    // Policy for the pods whose interfaces carry the programs (the others are retried above).
    let compiled = policy::compile(model, &config.node_name);
    let local: Vec<LocalEndpoint<'_>> = datapath
        .attached_pods()
        .filter_map(|pod| {
            let policy = compiled.iter().find(|e| e.pod == pod.pod)?;
            Some(LocalEndpoint { ifindex: pod.iface.ifindex, policy })
        })
        .collect();
    match policy_table.apply(&local, &policy::workloads(model)) {
        Ok(stats) => tracing::debug!(?stats, "policy reconciled"),
        Err(err) => problems.push(err.to_string()),
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// The datapath holds the desired state: release a previous agent's links, say so.
fn ready(datapath: &mut Datapath, config: &Config) -> anyhow::Result<()> {
    datapath.take_over();
    if let Some(ready) = &config.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("writing the ready file {}", ready.display()))?;
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
