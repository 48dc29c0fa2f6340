//! `cargo xtask`: the project's tasks. `make test` and `make demo` (README.md) call the first
//! two after installing what is missing (`xtask/bootstrap.sh`).

mod bench;
mod cargo;
mod crds;
mod demo;
mod fuzz;
mod image;
mod lab;
mod soak;
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
    Demo {
        /// Keep the lab and the mesh running, with the service map in the browser, until Ctrl-C
        /// (`make demo KEEP=1`).
        #[arg(long)]
        keep: bool,
    },
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
    /// The mesh under steady traffic and a chaos schedule (agents and operator killed,
    /// frozen, down; endpoint and policy churn; invalid manifests): fails on any failed
    /// connection to a live endpoint, any answered denied probe, any uncounted flow event or
    /// anything left behind. Writes target/bench/soak.json.
    Soak {
        /// How long (CI runs 60).
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Short connections and UDP requests a second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Run the debug build (CI's) instead of the release build.
        #[arg(long)]
        debug: bool,
    },
    /// Every fuzz target (fuzz/) under libFuzzer for RUNS executions each, corpora seeded
    /// from deploy/; installs cargo-fuzz if missing. Writes target/bench/fuzz.json.
    Fuzz {
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// The agent's and the operator's OCI images, from scratch with buildah: kept in the local
    /// containers storage (mesh/mesh-agent:VERSION, mesh/mesh-operator:VERSION) and saved as
    /// OCI archives in target/image/; prints their sizes and digests.
    Image {
        /// From the debug binaries (faster to build; the tests' images).
        #[arg(long)]
        debug: bool,
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
        Task::Demo { keep } => demo::run(keep),
        Task::GenCrds { check } => crds::run(check),
        Task::Bench { bench } => bench::run(bench),
        Task::Soak { seconds, rate, debug } => soak::run(seconds, rate, !debug),
        Task::Fuzz { runs, target } => fuzz::run(runs, target.as_deref()),
        Task::Image { debug } => image::run(debug),
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
