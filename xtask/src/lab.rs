//! `cargo xtask lab`: bring up a lab by hand, list labs, remove leftovers.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use mesh_tests::lab::{self, Lab};

#[derive(Subcommand)]
pub enum Action {
    /// Brings up a lab of NODES x PODS, prints it as JSON, and removes it on Ctrl-C (or
    /// after --for seconds).
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[arg(long, default_value_t = 3)]
        pods: usize,
        /// Remove the lab after this many seconds.
        #[arg(long = "for", default_value_t = 3600)]
        seconds: u64,
    },
    /// Lists the labs on this machine, with their owner and what exists of them.
    List,
    /// Removes labs whose owner process is gone (crashed or killed runs).
    Clean {
        /// Also remove labs whose owner still runs.
        #[arg(long)]
        all: bool,
    },
}

pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up { nodes, pods, seconds } => {
            let lab = Lab::grid(nodes, pods).context("bringing up the lab")?;
            println!("{}", serde_json::to_string_pretty(&lab.nodes)?);
            println!("lab {} is up; Ctrl-C or {seconds} s removes it", lab.id);
            wait_for_interrupt(Duration::from_secs(seconds));
            drop(lab);
            println!("lab removed");
        }
        Action::List => {
            let labs = lab::leftovers();
            if labs.is_empty() {
                println!("no labs");
            }
            for l in labs {
                let owner = l.owner.map_or("unknown".into(), |pid| format!("pid {pid}"));
                let state = if l.owner_alive { "running" } else { "LEFTOVER" };
                println!("{}  {state}  owner {owner}", l.id);
                for resource in &l.resources {
                    println!("    {resource}");
                }
            }
        }
        Action::Clean { all } => {
            let (removed, problems) = lab::remove_leftovers(all);
            for l in &removed {
                println!("removed lab {} ({} resources)", l.id, l.resources.len());
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            anyhow::ensure!(problems.is_empty(), "some resources could not be removed: {problems:#?}");
        }
    }
    Ok(())
}

/// Returns on SIGINT or SIGTERM (so the lab is dropped and removed), or after `limit`.
pub fn wait_for_interrupt(limit: Duration) {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let deadline = std::time::Instant::now() + limit;
    while !STOP.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}
