//! `cargo xtask bench <name>`: benchmarks. Each prints a table with the baseline measured in
//! the same run and the ratio to it, and writes the same rows to `target/bench/<name>.json`
//! in one shape: `{"bench": name, "rows": [{case, scale, metric, value, unit, baseline,
//! ratio}]}`.

mod control_plane;
mod flows;
mod policy;
mod service_lb;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde::Serialize;

#[derive(Subcommand)]
pub enum Bench {
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
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    let report = match bench {
        Bench::ControlPlane { services, endpoints, changes } => control_plane::run(services, endpoints, changes)?,
        Bench::ServiceLb { scales, seconds } => service_lb::run(&scales, seconds)?,
        Bench::Policy { scales, seconds } => policy::run(&scales, seconds)?,
        Bench::Flows { scales, seconds } => flows::run(&scales, seconds)?,
    };
    report.print();
    let path = report.write()?;
    println!("\nwritten to {}", path.display());
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
    fn print(&self) {
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

    fn write(&self) -> anyhow::Result<PathBuf> {
        let dir = crate::cargo::workspace_root().join("target/bench");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.bench));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}
