//! `meshctl`: the mesh's CLI. `meshctl observe` reads flows from an agent's Observer API the
//! way `hubble observe` does (same filters, same outputs); `meshctl status` shows an agent's
//! health, programs, map fill and lost events; `meshctl ui` serves a live service map of their flows; `meshctl completion` prints shell
//! completions.

mod filters;
mod print;
mod ui;

use std::{io::Write as _, process::ExitCode};

use clap::{ArgAction, CommandFactory as _, Parser, Subcommand};
use mesh_agent::flows::{
    observer::{HUBBLE_HEALTH_SERVICE, unix_channel},
    time,
};
use mesh_common::{
    api::{AgentStatusRequest, agent_status_client::AgentStatusClient},
    hubble::observer::{GetFlowsRequest, ServerStatusRequest, observer_client::ObserverClient},
    maps,
};
use tonic::transport::{Channel, Endpoint};

/// `hubble observe` prints this many flows when told nothing else.
const DEFAULT_LAST: u64 = 20;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "Observe and inspect the mesh: flows, verdicts, agent status.")]
struct Cli {
    /// The agent's Observer API: unix:///path/to/socket or host:port.
    #[arg(long, global = true, env = "MESHCTL_SERVER", default_value = mesh_agent::config::DEFAULT_OBSERVER_URL)]
    server: String,
    /// Seconds to wait for the agent to answer (connecting and unary calls).
    #[arg(long, global = true, default_value_t = 5)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show flows, filtered as with `hubble observe`.
    Observe(Box<ObserveArgs>),
    /// Show the agent's health, attached programs, map fill and lost events.
    Status {
        /// compact or json.
        #[arg(short, long, default_value = "compact")]
        output: StatusOutput,
    },
    /// Serve a live service map of the agents' flows in the browser (workloads, edges by
    /// verdict with their rates; a click on an edge lists its recent flows).
    Ui {
        /// Where to serve the page.
        #[arg(long, default_value = "127.0.0.1:12000")]
        listen: std::net::SocketAddr,
        /// An agent's Observer API (unix:///path or host:port), once per agent [default: --server,
        /// or when that is the default socket and missing, every agent under /run/mesh/*/].
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Written with the bound address once it serves.
        #[arg(long)]
        ready_file: Option<std::path::PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatusOutput {
    Compact,
    Json,
}

#[derive(Debug, clap::Args)]
struct ObserveArgs {
    /// Flows from or to pods with this name prefix ([namespace/]name; no namespace: default).
    #[arg(long, action = ArgAction::Append)]
    pod: Vec<String>,
    /// Flows from pods with this name prefix.
    #[arg(long, action = ArgAction::Append)]
    from_pod: Vec<String>,
    /// Flows to pods with this name prefix.
    #[arg(long, action = ArgAction::Append)]
    to_pod: Vec<String>,
    /// Flows from or to this namespace.
    #[arg(short = 'n', long, action = ArgAction::Append)]
    namespace: Vec<String>,
    /// Flows from this namespace.
    #[arg(long, action = ArgAction::Append)]
    from_namespace: Vec<String>,
    /// Flows to this namespace.
    #[arg(long, action = ArgAction::Append)]
    to_namespace: Vec<String>,
    /// Flows from or to this address or CIDR.
    #[arg(long, action = ArgAction::Append)]
    ip: Vec<String>,
    /// Flows from this address or CIDR.
    #[arg(long, action = ArgAction::Append)]
    from_ip: Vec<String>,
    /// Flows to this address or CIDR.
    #[arg(long, action = ArgAction::Append)]
    to_ip: Vec<String>,
    /// Flows from or to pods matching this label selector (app=web,tier in (a,b)).
    #[arg(short = 'l', long, action = ArgAction::Append)]
    label: Vec<String>,
    /// Flows from pods matching this label selector.
    #[arg(long, action = ArgAction::Append)]
    from_label: Vec<String>,
    /// Flows to pods matching this label selector.
    #[arg(long, action = ArgAction::Append)]
    to_label: Vec<String>,
    /// Flows from or to this service ([namespace/]name prefix).
    #[arg(long, action = ArgAction::Append)]
    service: Vec<String>,
    /// Flows from this service.
    #[arg(long, action = ArgAction::Append)]
    from_service: Vec<String>,
    /// Flows to this service.
    #[arg(long, action = ArgAction::Append)]
    to_service: Vec<String>,
    /// Flows with this source or destination port.
    #[arg(long, action = ArgAction::Append)]
    port: Vec<String>,
    /// Flows with this source port.
    #[arg(long, action = ArgAction::Append)]
    from_port: Vec<String>,
    /// Flows with this destination port.
    #[arg(long, action = ArgAction::Append)]
    to_port: Vec<String>,
    /// Flows of this protocol (tcp, udp, sctp, icmp).
    #[arg(long, action = ArgAction::Append)]
    protocol: Vec<String>,
    /// Flows with this verdict (FORWARDED, DROPPED, AUDIT, TRANSLATED, TRACED, ...).
    #[arg(long, action = ArgAction::Append)]
    verdict: Vec<String>,
    /// Drops with this reason (POLICY_DENIED, POLICY_DENY, UNSUPPORTED_L3_PROTOCOL, ...).
    #[arg(long, action = ArgAction::Append)]
    drop_reason_desc: Vec<String>,
    /// TCP flows with all these flags set (SYN,ACK,FIN,RST,PSH,URG,ECE,CWR,NS).
    #[arg(long, action = ArgAction::Append)]
    tcp_flags: Vec<String>,
    /// Flows seen in this direction at the pod (ingress or egress).
    #[arg(long, action = ArgAction::Append)]
    traffic_direction: Vec<String>,
    /// Flows seen on nodes matching this name pattern (* as a wildcard).
    #[arg(long, action = ArgAction::Append)]
    node_name: Vec<String>,
    /// Only flows carried by the mutual-TLS tunnel (authenticated, encrypted on the wire).
    #[arg(long)]
    encrypted: bool,
    /// Only flows not carried by the mutual-TLS tunnel.
    #[arg(long)]
    unencrypted: bool,
    /// Flows of this event type: drop, trace, trace-sock, l7, policy-verdict, ..., optionally
    /// with a sub-type (trace:to-endpoint, drop:133).
    #[arg(short = 't', long = "type", action = ArgAction::Append)]
    event_type: Vec<String>,
    /// L7 responses with this HTTP status code (404) or code prefix (5+).
    #[arg(long, action = ArgAction::Append)]
    http_status: Vec<String>,
    /// L7 flows of requests with this HTTP method.
    #[arg(long, action = ArgAction::Append)]
    http_method: Vec<String>,
    /// L7 flows of requests whose path matches this regular expression.
    #[arg(long, action = ArgAction::Append)]
    http_path: Vec<String>,
    /// L7 flows of requests whose URL matches this regular expression.
    #[arg(long, action = ArgAction::Append)]
    http_url: Vec<String>,
    /// L7 flows of requests in this W3C trace (its 32 hexadecimal digits).
    #[arg(long, action = ArgAction::Append)]
    trace_id: Vec<String>,
    /// Negates the next filter flag.
    #[arg(long = "not", action = ArgAction::Count)]
    not: u8,
    /// Flows since this time: a duration ago (5m, 1h30m) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Flows until this time (ignored with --follow).
    #[arg(long)]
    until: Option<String>,
    /// The last N flows [default: 20 unless --since, --until or --follow].
    #[arg(long, conflicts_with_all = ["first", "all"])]
    last: Option<u64>,
    /// The first N flows kept.
    #[arg(long, conflicts_with_all = ["all", "follow"])]
    first: Option<u64>,
    /// Every flow the agent keeps.
    #[arg(long)]
    all: bool,
    /// Keep printing new flows.
    #[arg(short, long)]
    follow: bool,
    /// compact, json (as hubble's jsonpb), jsonpb, dict or table.
    #[arg(short, long, default_value = "compact")]
    output: print::Output,
    /// Colours in compact and dict output: auto (on a terminal), always or never.
    #[arg(long, default_value = "auto")]
    color: Color,
    /// Print each flow's node name.
    #[arg(long)]
    print_node_name: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("meshctl: error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Observe(ref args) => runtime.block_on(observe(&cli, args)),
        Command::Status { output } => runtime.block_on(status(&cli, output)),
        Command::Ui { listen, ref agents, ref ready_file } => {
            // Without --agent: every agent of this host.
            let agents = if agents.is_empty() { local_servers(&cli.server) } else { agents.clone() };
            runtime.block_on(ui::run(listen, agents, std::time::Duration::from_secs(cli.timeout), ready_file.clone()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("meshctl: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> Result<Channel, String> {
    channel(&default_server(&cli.server)?, std::time::Duration::from_secs(cli.timeout)).await
}

/// The agents `server` means: itself, unless it is the default socket and that is missing:
/// then every agent serving under `/run/mesh/<instance>/` (agents run by hand beside each
/// other, `--netns`).
fn local_servers(server: &str) -> Vec<String> {
    let default = mesh_agent::config::DEFAULT_OBSERVER_SOCKET;
    if server != mesh_agent::config::DEFAULT_OBSERVER_URL || std::path::Path::new(default).exists() {
        return vec![server.to_owned()];
    }
    let mut found: Vec<String> = std::fs::read_dir(mesh_agent::config::RUN_DIR)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let socket = entry.ok()?.path().join("observer.sock");
            socket.exists().then(|| format!("unix://{}", socket.display()))
        })
        .collect();
    found.sort();
    if found.is_empty() { vec![server.to_owned()] } else { found }
}

/// The one agent `server` means, or an error naming them all when several serve by default.
fn default_server(server: &str) -> Result<String, String> {
    let mut found = local_servers(server);
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    Err(format!(
        "{} does not exist and several agents serve on this host; choose one with --server: {}",
        mesh_agent::config::DEFAULT_OBSERVER_SOCKET,
        found.join(", ")
    ))
}

/// `request` asking for each flow's details (`extensions`: the rule, bytes, route), which
/// meshctl prints; clients that do not ask get Cilium's fields only.
fn with_details<T>(request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert(mesh_agent::flows::observer::FLOW_DETAILS_HEADER, tonic::metadata::MetadataValue::from_static("true"));
    request
}

/// A channel to the agent at `server` (`unix:///path` or `host:port`).
async fn channel(server: &str, timeout: std::time::Duration) -> Result<Channel, String> {
    let unreachable = |err: &dyn std::fmt::Display| {
        format!("cannot reach the agent at {server}: {err}; is it running? (--server or MESHCTL_SERVER)")
    };
    if let Some(path) = server.strip_prefix("unix://").or_else(|| server.strip_prefix("unix:")) {
        return unix_channel(path.into(), timeout).await.map_err(|e| unreachable(&e));
    }
    let url = if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
    Endpoint::from_shared(url)
        .map_err(|e| format!("--server {server:?}: {e}"))?
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|e| unreachable(&e))
}

fn timestamp(unix_ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (unix_ns / 1_000_000_000) as i64, nanos: (unix_ns % 1_000_000_000) as i32 }
}

/// The request `args` ask for (the filters from the command line words, in order).
fn request(args: &ObserveArgs, words: &[String], now_ns: u64) -> Result<GetFlowsRequest, String> {
    let (whitelist, blacklist) = filters::build(&filters::in_order(words)).map_err(|e| e.to_string())?;
    let time = |flag: &str, value: &Option<String>| -> Result<Option<prost_types::Timestamp>, String> {
        value
            .as_deref()
            .map(|v| {
                time::parse(v, now_ns).map(timestamp).ok_or_else(|| {
                    format!("--{flag}: cannot parse {v:?}: use a duration ago (5m, 1h30m, 300ms) or an RFC 3339 time")
                })
            })
            .transpose()
    };
    let since = time("since", &args.since)?;
    let until = if args.follow { None } else { time("until", &args.until)? };
    let number = match (args.all, args.first, args.last) {
        (true, _, _) => u64::MAX,
        (_, Some(first), _) => first,
        (_, _, Some(last)) => last,
        _ if since.is_none() && until.is_none() && !args.follow => DEFAULT_LAST,
        _ => 0,
    };
    Ok(GetFlowsRequest {
        number,
        first: args.first.is_some(),
        follow: args.follow,
        whitelist,
        blacklist,
        since,
        until,
        ..GetFlowsRequest::default()
    })
}

async fn observe(cli: &Cli, args: &ObserveArgs) -> Result<(), String> {
    if args.output == print::Output::Table && args.follow {
        return Err("--output table is not compatible with --follow: use compact, dict or json".into());
    }
    // The words after `observe`, for the order of the filter flags (`--not` negates the next).
    let words: Vec<String> = std::env::args().skip_while(|w| w != "observe").skip(1).collect();
    let request = request(args, &words, mesh_agent::flows::unix_now_ns())?;
    let channel = connect(cli).await?;
    let mut client = ObserverClient::new(channel);
    let mut stream = client.get_flows(with_details(request)).await.map_err(|s| s.message().to_owned())?.into_inner();
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut printer = print::Printer::new(args.output, color, args.print_node_name);
    let stdout = std::io::stdout();
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => break,
            Err(status) => return Err(format!("the agent ended the stream: {}", status.message())),
        };
        let mut out = stdout.lock();
        printer.write(&mut out, &response).map_err(|e| e.to_string())?;
        if args.follow {
            out.flush().map_err(|e| e.to_string())?;
        }
    }
    printer.finish(&mut stdout.lock()).map_err(|e| e.to_string())
}

/// The workload certificates part of `meshctl status`: one line per local identity.
fn print_certificates(agent: &mesh_common::api::AgentStatusResponse) {
    if !agent.certificates_enabled {
        println!(
            "Workload certificates: off (the agent has no mutual TLS to the operator, whose CA serves only there)"
        );
        return;
    }
    println!("Workload certificates ({}):", agent.certificates.len());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let within = |at: i64| {
        let s = at - now;
        match s {
            ..=0 => "now".to_owned(),
            1..60 => format!("in {s}s"),
            60..3600 => format!("in {}m{:02}s", s / 60, s % 60),
            _ => format!("in {}h{:02}m", s / 3600, s % 3600 / 60),
        }
    };
    println!("  {:<52} {:<16} {:<12} {:<12} SERIAL", "IDENTITY", "STATE", "EXPIRES", "NEXT REQUEST");
    for c in &agent.certificates {
        let expires = if c.not_after_unix > 0 { within(c.not_after_unix) } else { "-".to_owned() };
        println!(
            "  {:<52} {:<16} {expires:<12} {:<12} {}",
            c.identity,
            c.state,
            within(c.next_request_unix),
            if c.serial.is_empty() { "-" } else { &c.serial }
        );
        if !c.issuer.is_empty() {
            println!("    issued by {}", c.issuer);
        }
        if !c.last_error.is_empty() {
            println!("    last error ({} failed in a row): {}", c.failures, c.last_error);
        }
    }
    println!("  Trusted roots ({}):", agent.trusted_roots.len());
    for subject in &agent.trusted_roots {
        println!("    {subject}");
    }
}

/// The tunnel's receiving side and the local pods' mutual-TLS modes.
fn print_tunnel(agent: &mesh_common::api::AgentStatusResponse) {
    let Some(tunnel) = agent.tunnel.as_ref().filter(|t| t.enabled) else {
        println!("Tunnel (HBONE): off (it needs workload certificates, and a tunnel address other than \"off\")");
        return;
    };
    println!(
        "Tunnel (HBONE) on {}: {} handshakes ({} failed), {} connections ({} refused), {} bytes to pods, {} from pods",
        tunnel.address,
        tunnel.handshakes,
        tunnel.handshake_failures,
        tunnel.streams_opened,
        tunnel.streams_refused,
        tunnel.bytes_to_pods,
        tunnel.bytes_from_pods
    );
    println!("Pods' mutual TLS ({}):", agent.pods_mtls.len());
    println!("  {:<32} {:<52} {:<11} PORTS", "POD", "IDENTITY", "MODE");
    for pod in &agent.pods_mtls {
        let ports = if pod.port_modes.is_empty() { "-".to_owned() } else { pod.port_modes.join(" ") };
        println!("  {:<32} {:<52} {:<11} {ports}", pod.pod, pod.identity, pod.mode);
    }
}

async fn status(cli: &Cli, output: StatusOutput) -> Result<(), String> {
    let address = default_server(&cli.server)?;
    let channel = channel(&address, std::time::Duration::from_secs(cli.timeout)).await?;
    let deadline = std::time::Duration::from_secs(cli.timeout);
    let agent =
        tokio::time::timeout(deadline, AgentStatusClient::new(channel.clone()).get_status(AgentStatusRequest {}))
            .await
            .map_err(|_| format!("the agent did not answer within {}s", cli.timeout))?
            .map_err(|s| s.message().to_owned())?
            .into_inner();
    // What `hubble status` checks first: gRPC health under Hubble's name for the Observer.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest { service: HUBBLE_HEALTH_SERVICE.to_owned() })
        .await
        .map_or_else(|s| format!("unknown ({})", s.message()), |r| r.into_inner().status().as_str_name().to_owned());
    let server = ObserverClient::new(channel)
        .server_status(ServerStatusRequest {})
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    if output == StatusOutput::Json {
        let value = serde_json::json!({
            "node_name": agent.node_name,
            "version": agent.version,
            "ready": agent.ready,
            "model": {
                "epoch": agent.model_epoch,
                "version": agent.model_version,
                "applied_unix_ns": agent.model_applied_unix_ns.to_string(),
            },
            "observer_health": health,
            "uptime_ns": agent.uptime_ns.to_string(),
            "num_flows": server.num_flows.to_string(),
            "max_flows": server.max_flows.to_string(),
            "seen_flows": server.seen_flows.to_string(),
            "made_flows": agent.made_flows.to_string(),
            // The kernel's events the agent read: both counts from one moment of the store.
            "kernel_flows": agent.seen_flows.saturating_sub(agent.made_flows).to_string(),
            "flows_rate": server.flows_rate,
            "lost_events_kernel": agent.lost_events_kernel.to_string(),
            "lost_events_followers": agent.lost_events_followers.to_string(),
            "programs": agent.programs.iter().map(|p| serde_json::json!({"name": p.name, "attach_point": p.attach_point, "pod": p.pod})).collect::<Vec<_>>(),
            "maps": agent.maps.iter().map(|m| serde_json::json!({"name": m.name, "entries": m.entries, "capacity": m.capacity})).collect::<Vec<_>>(),
            "certificates_enabled": agent.certificates_enabled,
            "trusted_roots": agent.trusted_roots,
            "certificates": agent.certificates.iter().map(|c| serde_json::json!({
                "identity": c.identity,
                "state": c.state,
                "serial": c.serial,
                "not_before_unix": c.not_before_unix,
                "not_after_unix": c.not_after_unix,
                "next_request_unix": c.next_request_unix,
                "failures": c.failures,
                "last_error": c.last_error,
                "chain_length": c.chain_length,
                "issuer": c.issuer,
            })).collect::<Vec<_>>(),
            "tunnel": agent.tunnel.as_ref().map(|t| serde_json::json!({
                "enabled": t.enabled,
                "address": t.address,
                "handshakes": t.handshakes,
                "handshake_failures": t.handshake_failures,
                "streams_opened": t.streams_opened,
                "streams_refused": t.streams_refused,
                "bytes_to_pods": t.bytes_to_pods,
                "bytes_from_pods": t.bytes_from_pods,
            })),
            "ejected_endpoints": agent.ejected_endpoints.iter().map(|e| serde_json::json!({
                "service": e.service,
                "endpoint": e.endpoint,
                "remaining_ms": e.remaining_ms,
                "ejections": e.ejections,
            })).collect::<Vec<_>>(),
            "pods_mtls": agent.pods_mtls.iter().map(|p| serde_json::json!({
                "pod": p.pod,
                "identity": p.identity,
                "mode": p.mode,
                "port_modes": p.port_modes,
            })).collect::<Vec<_>>(),
        });
        println!("{value}");
        return Ok(());
    }
    let grouped = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    println!("Healthcheck (via {address}): {}", if agent.ready { "Ok" } else { "Not ready" });
    println!("Observer health ({HUBBLE_HEALTH_SERVICE}): {health}");
    println!("Node: {} ({}), up {}s", agent.node_name, agent.version, agent.uptime_ns / 1_000_000_000);
    if agent.model_applied_unix_ns == 0 {
        println!("Model: none applied yet (or a static state file)");
    } else {
        let ago = mesh_agent::flows::unix_now_ns().saturating_sub(agent.model_applied_unix_ns) / 1_000_000_000;
        println!("Model: version {} of operator run {}, applied {ago}s ago", agent.model_version, agent.model_epoch);
    }
    let percent = if server.max_flows > 0 { server.num_flows as f64 * 100.0 / server.max_flows as f64 } else { 0.0 };
    println!("Current/Max Flows: {}/{} ({percent:.2}%)", grouped(server.num_flows), grouped(server.max_flows));
    println!("Flows/s: {:.2}", server.flows_rate);
    println!(
        "Lost events: {} (kernel ring buffer full), {} (followers too slow)",
        agent.lost_events_kernel, agent.lost_events_followers
    );
    println!("Programs ({}):", agent.programs.len());
    for p in &agent.programs {
        let pod = if p.pod.is_empty() { String::new() } else { format!("  pod {}", p.pod) };
        println!("  {:<16} {}{pod}", p.name, p.attach_point);
    }
    println!("Maps:");
    println!("  {:<16} {:>10} {:>10} {:>7}", "NAME", "ENTRIES", "CAPACITY", "FILL");
    for m in &agent.maps {
        // Arrays have all their entries; the ring buffer has bytes, not entries.
        let counted = ![maps::EVENTS, maps::EVENTS_LOST, maps::POLICY_REVISION].contains(&m.name.as_str());
        let (entries, fill) = if counted && m.capacity > 0 {
            (m.entries.to_string(), format!("{:.1}%", m.entries as f64 * 100.0 / m.capacity as f64))
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        println!("  {:<16} {entries:>10} {:>10} {fill:>7}", m.name, m.capacity);
    }
    print_certificates(&agent);
    print_tunnel(&agent);
    print_ejected(&agent);
    Ok(())
}

/// The endpoints the L7 proxy's outlier detection keeps out now.
fn print_ejected(agent: &mesh_common::api::AgentStatusResponse) {
    println!("Ejected endpoints (outlier detection, BackendTrafficPolicy): {}", agent.ejected_endpoints.len());
    if agent.ejected_endpoints.is_empty() {
        return;
    }
    println!("  {:<32} {:<22} {:>10} {:>9}", "SERVICE", "ENDPOINT", "BACK IN", "EJECTIONS");
    for e in &agent.ejected_endpoints {
        let back = format!("{:.1}s", e.remaining_ms as f64 / 1000.0);
        println!("  {:<32} {:<22} {back:>10} {:>9}", e.service, e.endpoint, e.ejections);
    }
}
