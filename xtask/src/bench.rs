//! `cargo xtask bench <name>`: benchmarks. Each prints a table with the baseline measured in
//! the same run and the ratio to it, and writes the same rows to `target/bench/<name>.json`
//! in one shape: `{"bench": name, "rows": [{case, scale, metric, value, unit, baseline,
//! ratio}]}`.

pub(crate) mod control_plane;
mod flows;
mod l7;
mod mtls;
mod north_south;
mod policy;
mod service_lb;
mod targets;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;

#[derive(Subcommand)]
pub enum Bench {
    /// Every benchmark below with its defaults, one after another, then every issue's target
    /// as met or missed (also in `target/bench/targets.json`). Needs a quiet machine.
    All,
    /// Local mode with many services: full sync time, change latency, memory.
    ControlPlane {
        /// Services (each with one port and one EndpointSlice).
        #[arg(long, default_value_t = 10_000)]
        services: u32,
        /// Endpoints per service.
        #[arg(long, default_value_t = 10)]
        endpoints: u32,
        /// EndpointSlice changes timed.
        #[arg(long, default_value_t = 50)]
        changes: u32,
    },
    /// Short TCP connections to a service: direct, this mesh's ClusterIP, kube-proxy's
    /// iptables and nftables rules, at several service-table sizes.
    ServiceLb {
        /// Services in the table (comma-separated scales), each with 10 backends.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
        scales: Vec<u32>,
        /// Seconds per load run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// Flow events per second from the kernel to an Observer API client, with loss counted.
    Flows {
        /// Offered events per second (comma-separated scales). 3M/s is more than this
        /// machine delivers: it shows the loss is counted and the agent's memory bounded.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000,1200000,3000000")]
        scales: Vec<u64>,
        /// Seconds per offered load.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Pod-to-pod throughput (iperf3) and request/response latency, on one node and across
    /// nodes: no programs, programs without policy, and policies of many rules.
    Policy {
        /// Rules selecting the servers (comma-separated scales).
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        scales: Vec<u32>,
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// What mutual TLS costs (the HBONE tunnel across nodes) and what the mesh costs when it
    /// is not required: throughput, latency, connection rate, the agents' CPU and memory.
    Mtls {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Traffic from outside the cluster: the XDP prefilter's drop rate against iptables' raw
    /// table and an nftables ingress hook, for the same list of denied CIDRs; NodePort
    /// connections/s and latency against kube-proxy's iptables and nftables rules.
    NorthSouth {
        /// Denied CIDRs in the prefilter's list (comma-separated scales).
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        cidrs: Vec<u32>,
        /// Services in the table behind the NodePort (comma-separated scales).
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
        services: Vec<u32>,
        /// Seconds per run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// HTTP through the L7 proxy (a Service with a route), through the mesh without routes,
    /// direct, and through nginx as a per-node reverse proxy: rate, latency, proxy CPU, memory.
    L7 {
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    if let Bench::All = bench {
        return all();
    }
    let report = match bench {
        Bench::All => unreachable!("handled above"),
        Bench::ControlPlane { services, endpoints, changes } => control_plane::run(services, endpoints, changes)?,
        Bench::ServiceLb { scales, seconds } => service_lb::run(&scales, seconds)?,
        Bench::Policy { scales, seconds } => policy::run(&scales, seconds)?,
        Bench::Flows { scales, seconds } => flows::run(&scales, seconds)?,
        Bench::Mtls { seconds } => mtls::run(seconds)?,
        Bench::L7 { seconds } => l7::run(seconds)?,
        Bench::NorthSouth { cidrs, services, seconds } => north_south::run(&cidrs, &services, seconds)?,
    };
    report.print();
    let path = report.write()?;
    println!("\nwritten to {}", path.display());
    targets::print(&targets::judge(&report));
    Ok(())
}

/// A benchmark with its defaults.
type RunBench = fn() -> anyhow::Result<Report>;

/// `bench all`: each benchmark with its defaults; a benchmark that fails is reported and its
/// targets count as missed, the others still run.
fn all() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let benches: [(&str, RunBench); 7] = [
        ("control-plane", || control_plane::run(10_000, 10, 50)),
        ("service-lb", || service_lb::run(&[1, 1000, 10_000], 2.0)),
        ("policy", || policy::run(&[10, 1000, 10_000], 3.0)),
        ("flows", || flows::run(&[100_000, 1_000_000, 1_200_000, 3_000_000], 3.0)),
        ("mtls", || mtls::run(3.0)),
        ("l7", || l7::run(3.0)),
        ("north-south", || north_south::run(&[10, 1000], &[1, 1000, 10_000], 2.0)),
    ];
    let mut judged = Vec::new();
    for (name, bench) in benches {
        println!("\n==> bench {name}");
        match bench() {
            Ok(report) => {
                report.print();
                report.write()?;
                judged.extend(targets::judge(&report));
            }
            Err(err) => {
                println!("bench {name} failed: {err:#}");
                judged.push(targets::Judged {
                    bench: name.into(),
                    target: "runs".into(),
                    measured: format!("failed: {err}"),
                    met: false,
                });
            }
        }
    }
    targets::print(&judged);
    println!("all benchmarks took {:.0} s", started.elapsed().as_secs_f64());
    let path = crate::cargo::workspace_root().join("target/bench/targets.json");
    std::fs::write(&path, serde_json::to_string_pretty(&judged)?)
        .with_context(|| format!("writing {}", path.display()))?;
    anyhow::ensure!(judged.iter().all(|j| j.met), "{} targets missed", judged.iter().filter(|j| !j.met).count());
    Ok(())
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub scale: u64,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// The case this row's ratio is taken against; `None` for baseline rows.
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub bench: String,
    pub rows: Vec<Row>,
    /// Not in the rows: what the benchmark ran on and how long it took.
    #[serde(skip)]
    pub notes: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        println!(
            "\n{:<14} {:>7} {:<18} {:>12} {:<5} {:<14} {:>8}",
            "case", "scale", "metric", "value", "unit", "baseline", "ratio"
        );
        for r in &self.rows {
            let ratio = r.ratio.map_or("-".to_owned(), |x| format!("{x:.3}"));
            println!(
                "{:<14} {:>7} {:<18} {:>12.3} {:<5} {:<14} {:>8}",
                r.case,
                r.scale,
                r.metric,
                r.value,
                r.unit,
                r.baseline.as_deref().unwrap_or("-"),
                ratio
            );
        }
        for note in &self.notes {
            println!("{note}");
        }
    }

    pub fn write(&self) -> anyhow::Result<PathBuf> {
        let dir = crate::cargo::workspace_root().join("target/bench");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.bench));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// The binaries benchmarks run (each release build links with link-time optimisation, a
/// minute or more apiece: xtask's own is not built).
const BENCHED_BINARIES: [&str; 5] = ["mesh-agent", "mesh-operator", "meshctl", "labnet", "mesh-flowgen"];

/// Builds the release binaries and points the lab helpers at them (benchmarks measure those).
pub fn release_binaries() -> anyhow::Result<()> {
    let mut args = vec!["build", "--release"];
    for binary in BENCHED_BINARIES {
        args.extend(["--bin", binary]);
    }
    crate::cargo::run(&args, &[])?;
    // SAFETY: benchmarks and the soak run single-threaded here; the lab helpers read it.
    unsafe { std::env::set_var(mesh_tests::ENV_BIN_DIR, crate::cargo::workspace_root().join("target/release")) };
    Ok(())
}

/// The median of `values` (the upper one of an even count; NaN for none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Total run time and runs of every loaded program named `name`, from the kernel's BPF
/// statistics (counted while an `aya::sys::enable_stats` descriptor is open).
fn program_runs(name: &str) -> (Duration, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .fold((Duration::ZERO, 0), |(time, runs), p| (time + p.run_time(), runs + p.run_count()))
}

/// Context switches (voluntary and not) of every thread of process `pid` so far: how often
/// it woke up, which on a VM costs the other processes more than its own CPU time says.
pub(crate) fn process_wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// User plus system CPU time of process `pid` so far.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}
