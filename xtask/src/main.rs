//! `cargo xtask`: the project's tasks. `make test` and `make demo` (README.md) call the first
//! two after installing what is missing (`xtask/bootstrap.sh`).

mod bench;
mod cargo;
mod crds;
mod demo;
mod lab;
mod suite;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "The mesh's build, test, demo and lab tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The whole test suite: formatting, clippy, unit and privileged end-to-end tests, and a
    /// check that no lab was left behind. What CI runs.
    Test,
    /// Builds, brings up a local lab, runs the agent and sends traffic through the mesh.
    Demo,
    /// Writes deploy/crds/ from the CRD types in mesh-operator (--check: fail if stale).
    GenCrds {
        #[arg(long)]
        check: bool,
    },
    /// Benchmarks, each with its baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
    /// Local labs: bring one up, list them, remove leftovers of crashed runs.
    Lab {
        #[command(subcommand)]
        action: lab::Action,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().task {
        Task::Test => suite::run(),
        Task::Demo => demo::run(),
        Task::GenCrds { check } => crds::run(check),
        Task::Bench { bench } => bench::run(bench),
        Task::Lab { action } => lab::run(action),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
