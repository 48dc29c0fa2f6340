//! The agent's configuration: every key is a named constant here, parsed and validated in
//! this one place, from flags or the environment (a DaemonSet sets the environment).

use std::path::{Path, PathBuf};

use clap::Parser;
use mesh_common::{
    flows::aggregation,
    identity::{ENV_TRUST_DOMAIN, TrustDomain},
};

use crate::service_lb::Capacities;

/// The node this agent runs on; pods in the state file are this node's pods.
pub const ENV_NODE_NAME: &str = "MESH_NODE_NAME";
/// The cgroup v2 directory whose processes get service load balancing (`connect4`).
pub const ENV_CGROUP: &str = "MESH_CGROUP";
/// The bpffs directory where this node's maps and (with keep-datapath) links are pinned.
pub const ENV_BPFFS: &str = "MESH_BPFFS";
/// The node's network namespace (a path such as `/run/netns/node-0`); unset: the agent's own.
pub const ENV_NETNS: &str = "MESH_NETNS";
/// The static state file (pods and services) this agent programs, instead of an operator.
pub const ENV_STATE_FILE: &str = "MESH_STATE_FILE";
/// The operator's state stream (`https://host:15150`, or `http://` without TLS).
pub const ENV_OPERATOR: &str = "MESH_OPERATOR";
/// This node's TLS bundle (`ca.crt`, `tls.crt`, `tls.key`, from `mesh-operator issue`, or
/// bootstrapped into it).
pub const ENV_TLS_DIR: &str = "MESH_TLS_DIR";
/// Cluster mode: a projected ServiceAccount token (audience `mesh-operator`) that gets this
/// node's bundle from the operator when the TLS directory has none.
pub const ENV_BOOTSTRAP_TOKEN: &str = "MESH_BOOTSTRAP_TOKEN";
/// The operator's CA certificate, to verify it while bootstrapping.
pub const ENV_CA_FILE: &str = "MESH_CA_FILE";
/// Leave programs attached and maps pinned on exit, for a restarted agent to take over.
pub const ENV_KEEP_DATAPATH: &str = "MESH_KEEP_DATAPATH";
/// A file the agent creates once the datapath is attached and programmed (readiness probe).
pub const ENV_READY_FILE: &str = "MESH_READY_FILE";

/// The default bpffs directory: `<this>/<node name>`.
/// Capacity of the services map (service address + port + protocol entries).
pub const ENV_SERVICES_MAX: &str = "MESH_SERVICES_MAX";
/// Capacity of the backend-slot map (slots of every service together).
pub const ENV_BACKENDS_MAX: &str = "MESH_BACKENDS_MAX";
/// Capacity of the affinity map (client-service pairs remembered).
pub const ENV_AFFINITY_MAX: &str = "MESH_AFFINITY_MAX";
/// Capacity of the reverse-translation map (sockets remembered).
pub const ENV_REVERSE_MAX: &str = "MESH_REVERSE_MAX";
/// Capacity of the policy rule map (rule prefixes over all local pods).
pub const ENV_POLICY_MAX: &str = "MESH_POLICY_MAX";
/// Capacity of the identity map (pod addresses and policy CIDRs of the cluster).
pub const ENV_IDENTITIES_MAX: &str = "MESH_IDENTITIES_MAX";
/// Capacity of the connection-tracking map (flows through local pods).
pub const ENV_CONNTRACK_MAX: &str = "MESH_CONNTRACK_MAX";
/// Capacity of the XDP prefilter's CIDR map (denied CIDRs and their excepts).
pub const ENV_PREFILTER_MAX: &str = "MESH_PREFILTER_MAX";
/// The node's external interfaces, where XDP runs (the prefilter): a comma-separated list of
/// interface names in the node's network namespace; `auto` (the default): every interface that
/// holds one of the node's addresses in the model; `off`: none.
pub const ENV_DEVICES: &str = "MESH_DEVICES";
pub const DEFAULT_DEVICES: &str = "auto";
/// How XDP is attached: `native` (the driver's hook; generic is used, and reported, where the
/// driver has none) or `generic` (after the stack has built the socket buffer: for tests).
pub const ENV_XDP_MODE: &str = "MESH_XDP_MODE";
pub const DEFAULT_XDP_MODE: &str = "native";
/// Slots per Maglev table (a prime; Cilium's default 16381): more slots, a more even share
/// and less movement when backends change, and more memory (8 bytes a slot).
pub const ENV_MAGLEV_SIZE: &str = "MESH_MAGLEV_SIZE";
/// How many Maglev tables the node holds (services with the same backends share one).
pub const ENV_MAGLEV_TABLES: &str = "MESH_MAGLEV_TABLES";
/// How traffic from outside reaches backends on other nodes unless a Service says otherwise
/// (annotation `mesh.dev/lb-mode`): `snat` (source NAT to the node, the default) or `dsr`
/// (direct server return: the backend's node answers the client itself). The same on every
/// node.
pub const ENV_LB_MODE: &str = "MESH_LB_MODE";
pub const DEFAULT_LB_MODE: &str = "snat";
/// Capacity of the maps of flows from outside (and their answers).
pub const ENV_NODEPORT_FLOWS_MAX: &str = "MESH_NODEPORT_FLOWS_MAX";
/// How many recent flows the agent keeps for `GetFlows` [default: 16383].
pub const ENV_FLOW_BUFFER: &str = "MESH_FLOW_BUFFER";
/// TCP address of the Observer API (Hubble's port), inside the node's network namespace;
/// `off` to serve none.
pub const ENV_OBSERVER_ADDRESS: &str = "MESH_OBSERVER_ADDRESS";
/// Unix socket of the Observer API (and the agent's status); `off` to serve none.
pub const ENV_OBSERVER_SOCKET: &str = "MESH_OBSERVER_SOCKET";
/// TCP address of the Prometheus metrics (`/metrics`), inside the node's network namespace;
/// `off` to serve none.
pub const ENV_METRICS_ADDRESS: &str = "MESH_METRICS_ADDRESS";
/// TCP address the agent accepts mutual-TLS tunnels (HBONE) on, inside the node's network
/// namespace; `off` to accept none. Served only with workload certificates (`--tls-dir`).
pub const ENV_TUNNEL_ADDRESS: &str = "MESH_TUNNEL_ADDRESS";
/// Seconds a stopping agent lets tunnelled connections finish (0-3600) after it stopped
/// accepting new ones; keep the pod's terminationGracePeriodSeconds above it.
pub const ENV_TUNNEL_DRAIN_SECONDS: &str = "MESH_TUNNEL_DRAIN_SECONDS";
pub const DEFAULT_TUNNEL_DRAIN_SECONDS: u64 = 20;
/// Size of the flow event ring buffer in bytes: a power of two, at least 4096.
pub const ENV_EVENTS_BYTES: &str = "MESH_EVENTS_BYTES";
/// How much of each TCP connection the socket programs report: `none`, `low`, `medium` or
/// `maximum`, as Hubble's monitor aggregation [default: maximum]
/// (`mesh_common::flows::aggregation`).
pub const ENV_FLOW_AGGREGATION: &str = "MESH_FLOW_AGGREGATION";
pub const DEFAULT_FLOW_BUFFER: usize = 16_383;
/// Hubble's port, on the node's loopback only: the Observer API is plaintext and shows every
/// flow of the node, so nothing beyond the node reaches it unless told to (`0.0.0.0:4244`);
/// TLS with client certificates, as Hubble serves 4244 to a relay, comes with the relay.
pub const DEFAULT_OBSERVER_ADDRESS: &str = "127.0.0.1:4244";
pub const DEFAULT_OBSERVER_SOCKET: &str = "/run/mesh/observer.sock";
/// The same socket as a `meshctl --server` URL (its default).
pub const DEFAULT_OBSERVER_URL: &str = "unix:///run/mesh/observer.sock";
/// Hubble's metrics port.
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:9965";
/// Istio's HBONE port, on every address of the node: peer agents reach it over the network.
pub const DEFAULT_TUNNEL_ADDRESS: &str = "0.0.0.0:15008";
/// The longest tunnel drain.
pub const MAX_TUNNEL_DRAIN_SECONDS: u64 = 3600;
/// The most flows the agent may be asked to keep.
pub const MAX_FLOW_BUFFER: usize = 1 << 22;
/// What turns a listener off.
pub const OFF: &str = "off";

/// The largest Maglev table.
pub const MAX_MAGLEV_SIZE: u32 = 131_071;
/// The largest capacity a map may be given.
pub const MAX_CAPACITY: u32 = 1 << 24;
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/mesh";
/// Where per-instance Observer sockets go (`<this>/<instance>/observer.sock`).
pub const RUN_DIR: &str = "/run/mesh";

/// The name of an agent that runs outside its node's network namespace (`--netns`), where
/// several agents share one host: the namespace's name when it is one of `ip netns`'s (unique
/// on the host, and what the user named), else the node's name and the namespace's inode (two
/// labs may both have a `node1`). `None` for an agent in its node's namespace (a DaemonSet's,
/// one per host), which keeps the plain defaults.
pub fn instance(node_name: &str, netns: Option<&Path>) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let netns = netns?;
    let named = netns.parent().is_some_and(|dir| dir == Path::new("/run/netns") || dir == Path::new("/var/run/netns"));
    match netns.file_name().and_then(|n| n.to_str()) {
        Some(name) if named && is_dns_subdomain(name) => Some(name.to_owned()),
        _ => Some(match std::fs::metadata(netns) {
            Ok(metadata) => format!("{node_name}-{}", metadata.ino()),
            Err(_) => node_name.to_owned(),
        }),
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "The mesh's per-node daemon: loads, attaches and programs the kernel datapath."
)]
pub struct Args {
    /// Name of this node.
    #[arg(long, env = ENV_NODE_NAME)]
    pub node_name: String,
    /// cgroup v2 directory to attach the socket programs to (the node's pods live below it).
    #[arg(long, env = ENV_CGROUP)]
    pub cgroup: PathBuf,
    /// bpffs directory to pin maps and links in [default: /sys/fs/bpf/mesh/<node-name>, or with
    /// --netns /sys/fs/bpf/mesh/<instance> (see --observer-socket)].
    #[arg(long, env = ENV_BPFFS)]
    pub bpffs: Option<PathBuf>,
    /// Network namespace of the node's pod interfaces [default: the agent's own].
    #[arg(long, env = ENV_NETNS)]
    pub netns: Option<PathBuf>,
    /// YAML file with the node's pods and the services to balance (instead of --operator).
    #[arg(long, env = ENV_STATE_FILE, conflicts_with = "operator", required_unless_present = "operator")]
    pub state_file: Option<PathBuf>,
    /// The operator's state stream, such as https://127.0.0.1:15150.
    #[arg(long, env = ENV_OPERATOR)]
    pub operator: Option<String>,
    /// This node's TLS bundle directory (ca.crt, tls.crt, tls.key); needed for https.
    #[arg(long, env = ENV_TLS_DIR)]
    pub tls_dir: Option<PathBuf>,
    /// A ServiceAccount token file to bootstrap the bundle with when the directory has none.
    #[arg(long, env = ENV_BOOTSTRAP_TOKEN, requires = "ca_file")]
    pub bootstrap_token: Option<PathBuf>,
    /// The operator's CA certificate (for bootstrapping).
    #[arg(long, env = ENV_CA_FILE, requires = "bootstrap_token")]
    pub ca_file: Option<PathBuf>,
    /// Keep programs attached and maps pinned when the agent exits.
    #[arg(long, env = ENV_KEEP_DATAPATH)]
    pub keep_datapath: bool,
    /// File to create once the datapath is attached and programmed.
    #[arg(long, env = ENV_READY_FILE)]
    pub ready_file: Option<PathBuf>,
    /// Capacity of the services map [default: 16384].
    #[arg(long, env = ENV_SERVICES_MAX)]
    pub services_max: Option<u32>,
    /// Capacity of the backend-slot map [default: 131072].
    #[arg(long, env = ENV_BACKENDS_MAX)]
    pub backends_max: Option<u32>,
    /// Capacity of the affinity map [default: 65536].
    #[arg(long, env = ENV_AFFINITY_MAX)]
    pub affinity_max: Option<u32>,
    /// Capacity of the reverse-translation map (unconnected UDP sockets) [default: 65536].
    #[arg(long, env = ENV_REVERSE_MAX)]
    pub reverse_max: Option<u32>,
    /// Capacity of the policy rule map [default: 65536].
    #[arg(long, env = ENV_POLICY_MAX)]
    pub policy_max: Option<u32>,
    /// Capacity of the identity map [default: 65536].
    #[arg(long, env = ENV_IDENTITIES_MAX)]
    pub identities_max: Option<u32>,
    /// Capacity of the connection-tracking map [default: 262144].
    #[arg(long, env = ENV_CONNTRACK_MAX)]
    pub conntrack_max: Option<u32>,
    /// Capacity of the XDP prefilter's CIDR map [default: 16384].
    #[arg(long, env = ENV_PREFILTER_MAX)]
    pub prefilter_max: Option<u32>,
    /// Slots per Maglev table, a prime [default: 16381].
    #[arg(long, env = ENV_MAGLEV_SIZE)]
    pub maglev_size: Option<u32>,
    /// Maglev tables (distinct backend sets of external frontends) [default: 32].
    #[arg(long, env = ENV_MAGLEV_TABLES)]
    pub maglev_tables: Option<u32>,
    /// How traffic from outside reaches backends on other nodes: snat or dsr.
    #[arg(long, env = ENV_LB_MODE, default_value = DEFAULT_LB_MODE)]
    pub lb_mode: String,
    /// Capacity of the maps of flows from outside [default: 65536].
    #[arg(long, env = ENV_NODEPORT_FLOWS_MAX)]
    pub nodeport_flows_max: Option<u32>,
    /// The node's external interfaces (XDP), comma-separated; "auto": those holding the node's
    /// addresses; "off": none.
    #[arg(long, env = ENV_DEVICES, default_value = DEFAULT_DEVICES)]
    pub devices: String,
    /// XDP attach mode: native (falling back to generic, reported) or generic.
    #[arg(long, env = ENV_XDP_MODE, default_value = DEFAULT_XDP_MODE)]
    pub xdp_mode: String,
    /// Size of the flow event ring buffer in bytes, a power of two [default: 16777216].
    #[arg(long, env = ENV_EVENTS_BYTES)]
    pub events_bytes: Option<u32>,
    /// How many recent flows to keep for GetFlows [default: 16383].
    #[arg(long, env = ENV_FLOW_BUFFER)]
    pub flow_buffer: Option<usize>,
    /// How much of each TCP connection the socket programs report: none (every event), low
    /// (translations and closes), medium (translations) or maximum (nothing) [default: maximum].
    #[arg(long, env = ENV_FLOW_AGGREGATION)]
    pub flow_aggregation: Option<String>,
    /// TCP address of the Observer API (in the node's network namespace), or "off".
    #[arg(long, env = ENV_OBSERVER_ADDRESS, default_value = DEFAULT_OBSERVER_ADDRESS)]
    pub observer_address: String,
    /// Unix socket of the Observer API and the agent status, or "off" [default:
    /// /run/mesh/observer.sock; with --netns, where several agents share one host,
    /// /run/mesh/<instance>/observer.sock, the instance being the namespace's name under
    /// /run/netns, else <node-name>-<its inode>].
    #[arg(long, env = ENV_OBSERVER_SOCKET)]
    pub observer_socket: Option<String>,
    /// TCP address of the Prometheus metrics (in the node's network namespace), or "off".
    #[arg(long, env = ENV_METRICS_ADDRESS, default_value = DEFAULT_METRICS_ADDRESS)]
    pub metrics_address: String,
    /// TCP address of the mutual-TLS tunnel (HBONE; in the node's network namespace), or "off".
    #[arg(long, env = ENV_TUNNEL_ADDRESS, default_value = DEFAULT_TUNNEL_ADDRESS)]
    pub tunnel_address: String,
    /// Seconds a stopping agent lets tunnelled connections finish.
    #[arg(long, env = ENV_TUNNEL_DRAIN_SECONDS, default_value_t = DEFAULT_TUNNEL_DRAIN_SECONDS)]
    pub tunnel_drain_seconds: u64,
    /// The mesh's trust domain: workload identities are spiffe://<this>/ns/<ns>/sa/<sa>; the
    /// operator's must be the same.
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = mesh_common::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
    pub netns: Option<PathBuf>,
    pub operator: Option<String>,
    pub tls: Option<crate::operator_stream::Tls>,
    pub keep_datapath: bool,
    pub ready_file: Option<PathBuf>,
    pub capacities: Capacities,
    pub flow_buffer: usize,
    /// A level of `mesh_common::flows::aggregation`.
    pub flow_aggregation: u8,
    pub observer_address: Option<std::net::SocketAddr>,
    pub observer_socket: Option<PathBuf>,
    pub metrics_address: Option<std::net::SocketAddr>,
    pub tunnel_address: Option<std::net::SocketAddr>,
    pub tunnel_drain: std::time::Duration,
    pub trust_domain: TrustDomain,
    pub devices: Devices,
    pub xdp_mode: XdpMode,
    /// Direct server return by default ([`ENV_LB_MODE`]).
    pub dsr: bool,
}

/// Where XDP runs ([`ENV_DEVICES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Every interface of the node's namespace holding one of the node's addresses.
    Auto,
    /// These interfaces.
    Named(Vec<String>),
    Off,
}

/// How XDP is attached ([`ENV_XDP_MODE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver's hook, else generic (reported).
    Native,
    Generic,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{key}: node name {value:?} is not a valid name: use lowercase letters, digits, '-' and '.', at most 253 characters"
    )]
    NodeName { key: &'static str, value: String },
    #[error(
        "{key}: {path} is not a cgroup v2 directory (no cgroup.procs in it): give the node's cgroup under the cgroup2 mount"
    )]
    Cgroup { key: &'static str, path: PathBuf },
    #[error(
        "{key}: {path} is not on a bpffs mount: mount one (mount -t bpf bpf /sys/fs/bpf) and give a directory below it"
    )]
    Bpffs { key: &'static str, path: PathBuf },
    #[error("{key}: {path} does not exist: give a network namespace file such as /run/netns/<name>")]
    Netns { key: &'static str, path: PathBuf },
    #[error("{key}: {value:?} is not an http:// or https:// URL of the operator's state stream")]
    Operator { key: &'static str, value: String },
    #[error("{key}: {reason}")]
    Tls { key: &'static str, reason: String },
    #[error("{key}: capacity {value} is out of range: use 1 to {MAX_CAPACITY}")]
    Capacity { key: &'static str, value: u32 },
    #[error("{key}: {value} is not a power of two from 4096 to {MAX_EVENTS_BYTES} (bytes)")]
    EventsBytes { key: &'static str, value: u32 },
    #[error("{key}: {value} is out of range: keep 1 to {MAX_FLOW_BUFFER} flows")]
    FlowBuffer { key: &'static str, value: usize },
    #[error("{key}: {value:?} is not an aggregation level: use none, low, medium or maximum")]
    FlowAggregation { key: &'static str, value: String },
    #[error("{key}: {value:?} is not an address and port (such as 0.0.0.0:4244) nor \"off\"")]
    Address { key: &'static str, value: String },
    #[error("{key}: {source}")]
    TrustDomain { key: &'static str, source: mesh_common::identity::IdentityError },
    #[error(
        "{key}: {value:?} is not an interface list: give \"auto\", \"off\" or comma-separated interface names (at most 15 characters each)"
    )]
    Devices { key: &'static str, value: String },
    #[error(
        "{key}: {value} is not a prime from 251 to {MAX_MAGLEV_SIZE}: use a prime such as 16381 (the default) or 65521"
    )]
    MaglevSize { key: &'static str, value: u32 },
    #[error("{key}: {value:?} is not a load-balancing mode: use snat or dsr")]
    LbMode { key: &'static str, value: String },
    #[error("{key}: {value:?} is not an XDP mode: use native or generic")]
    XdpMode { key: &'static str, value: String },
    #[error("{key}: {value} s is too long a drain: give at most {MAX_TUNNEL_DRAIN_SECONDS} s")]
    TunnelDrain { key: &'static str, value: u64 },
}

/// The largest flow event ring buffer: 1 GiB.
pub const MAX_EVENTS_BYTES: u32 = 1 << 30;

impl Config {
    /// Validates `args`; every check names the key it failed on.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        if !is_dns_subdomain(&args.node_name) {
            return Err(ConfigError::NodeName { key: ENV_NODE_NAME, value: args.node_name });
        }
        if !args.cgroup.join("cgroup.procs").is_file() {
            return Err(ConfigError::Cgroup { key: ENV_CGROUP, path: args.cgroup });
        }
        let instance = instance(&args.node_name, args.netns.as_deref());
        let bpffs = args
            .bpffs
            .unwrap_or_else(|| Path::new(DEFAULT_BPFFS_ROOT).join(instance.as_deref().unwrap_or(&args.node_name)));
        if !bpffs_ancestor(&bpffs).is_some_and(|p| is_bpffs(&p)) {
            return Err(ConfigError::Bpffs { key: ENV_BPFFS, path: bpffs });
        }
        if let Some(netns) = &args.netns
            && !netns.exists()
        {
            return Err(ConfigError::Netns { key: ENV_NETNS, path: netns.clone() });
        }
        if let Some(operator) = &args.operator
            && !(operator.starts_with("http://") || operator.starts_with("https://"))
        {
            return Err(ConfigError::Operator { key: ENV_OPERATOR, value: operator.clone() });
        }
        let https = args.operator.as_deref().is_some_and(|o| o.starts_with("https://"));
        match &args.tls_dir {
            Some(dir) => {
                use mesh_common::model::{TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE};
                if let Some(missing) =
                    [TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE].iter().find(|f| !dir.join(f).is_file())
                {
                    let reason = format!(
                        "{} has no {missing}: issue the node's bundle with `mesh-operator issue`",
                        dir.display()
                    );
                    return Err(ConfigError::Tls { key: ENV_TLS_DIR, reason });
                }
                if !https {
                    let reason = "a TLS bundle is given but MESH_OPERATOR is not an https:// URL".into();
                    return Err(ConfigError::Tls { key: ENV_OPERATOR, reason });
                }
            }
            None if https => {
                let reason = "an https:// operator needs this node's TLS bundle: give MESH_TLS_DIR".into();
                return Err(ConfigError::Tls { key: ENV_TLS_DIR, reason });
            }
            None => {}
        }
        let mut capacities = Capacities::default();
        for (key, value, field) in [
            (ENV_SERVICES_MAX, args.services_max, &mut capacities.services),
            (ENV_BACKENDS_MAX, args.backends_max, &mut capacities.backends),
            (ENV_AFFINITY_MAX, args.affinity_max, &mut capacities.affinity),
            (ENV_REVERSE_MAX, args.reverse_max, &mut capacities.reverse),
            (ENV_POLICY_MAX, args.policy_max, &mut capacities.policy),
            (ENV_IDENTITIES_MAX, args.identities_max, &mut capacities.identities),
            (ENV_CONNTRACK_MAX, args.conntrack_max, &mut capacities.conntrack),
            (ENV_PREFILTER_MAX, args.prefilter_max, &mut capacities.prefilter),
            (ENV_MAGLEV_TABLES, args.maglev_tables, &mut capacities.maglev_tables),
            (ENV_NODEPORT_FLOWS_MAX, args.nodeport_flows_max, &mut capacities.nodeport_flows),
        ] {
            if let Some(value) = value {
                if !(1..=MAX_CAPACITY).contains(&value) {
                    return Err(ConfigError::Capacity { key, value });
                }
                *field = value;
            }
        }
        if let Some(value) = args.events_bytes {
            if !value.is_power_of_two() || !(4096..=MAX_EVENTS_BYTES).contains(&value) {
                return Err(ConfigError::EventsBytes { key: ENV_EVENTS_BYTES, value });
            }
            capacities.events_bytes = value;
        }
        if let Some(size) = args.maglev_size {
            if !crate::maglev::is_prime(size) || !(251..=MAX_MAGLEV_SIZE).contains(&size) {
                return Err(ConfigError::MaglevSize { key: ENV_MAGLEV_SIZE, value: size });
            }
            capacities.maglev_size = size;
        }
        if u64::from(capacities.maglev_size) * u64::from(capacities.maglev_tables) > u64::from(MAX_CAPACITY) {
            return Err(ConfigError::Capacity { key: ENV_MAGLEV_TABLES, value: capacities.maglev_tables });
        }
        let flow_buffer = args.flow_buffer.unwrap_or(DEFAULT_FLOW_BUFFER);
        if !(1..=MAX_FLOW_BUFFER).contains(&flow_buffer) {
            return Err(ConfigError::FlowBuffer { key: ENV_FLOW_BUFFER, value: flow_buffer });
        }
        let flow_aggregation = match args.flow_aggregation.as_deref() {
            None => aggregation::DEFAULT,
            Some(value) => {
                aggregation::NAMES.iter().find(|(name, _)| *name == value).map(|(_, level)| *level).ok_or_else(
                    || ConfigError::FlowAggregation { key: ENV_FLOW_AGGREGATION, value: value.to_owned() },
                )?
            }
        };
        let address = |key: &'static str, value: &str| -> Result<Option<std::net::SocketAddr>, ConfigError> {
            if value == OFF {
                return Ok(None);
            }
            value.parse().map(Some).map_err(|_| ConfigError::Address { key, value: value.to_owned() })
        };
        let observer_address = address(ENV_OBSERVER_ADDRESS, &args.observer_address)?;
        let metrics_address = address(ENV_METRICS_ADDRESS, &args.metrics_address)?;
        let tunnel_address = address(ENV_TUNNEL_ADDRESS, &args.tunnel_address)?;
        if args.tunnel_drain_seconds > MAX_TUNNEL_DRAIN_SECONDS {
            return Err(ConfigError::TunnelDrain { key: ENV_TUNNEL_DRAIN_SECONDS, value: args.tunnel_drain_seconds });
        }
        let tunnel_drain = std::time::Duration::from_secs(args.tunnel_drain_seconds);
        let observer_socket = match args.observer_socket.as_deref() {
            Some(OFF) => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(match &instance {
                Some(instance) => Path::new(RUN_DIR).join(instance).join("observer.sock"),
                None => PathBuf::from(DEFAULT_OBSERVER_SOCKET),
            }),
        };
        let devices = match args.devices.as_str() {
            DEFAULT_DEVICES => Devices::Auto,
            OFF => Devices::Off,
            list => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_owned()).collect();
                let valid =
                    |n: &String| !n.is_empty() && n.len() < 16 && !n.contains(['/', ' ']) && n != "." && n != "..";
                if !names.iter().all(valid) {
                    return Err(ConfigError::Devices { key: ENV_DEVICES, value: args.devices });
                }
                Devices::Named(names)
            }
        };
        let xdp_mode = match args.xdp_mode.as_str() {
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            _ => return Err(ConfigError::XdpMode { key: ENV_XDP_MODE, value: args.xdp_mode }),
        };
        let dsr = match args.lb_mode.as_str() {
            "snat" => false,
            "dsr" => true,
            _ => return Err(ConfigError::LbMode { key: ENV_LB_MODE, value: args.lb_mode }),
        };
        let trust_domain =
            args.trust_domain.parse().map_err(|source| ConfigError::TrustDomain { key: ENV_TRUST_DOMAIN, source })?;
        Ok(Self {
            trust_domain,
            devices,
            xdp_mode,
            dsr,
            capacities,
            flow_buffer,
            flow_aggregation,
            observer_address,
            observer_socket,
            metrics_address,
            tunnel_address,
            tunnel_drain,
            node_name: args.node_name,
            cgroup: args.cgroup,
            bpffs,
            netns: args.netns,
            operator: args.operator,
            tls: args
                .tls_dir
                .map(|dir| crate::operator_stream::Tls { dir, bootstrap: args.ca_file.zip(args.bootstrap_token) }),
            keep_datapath: args.keep_datapath,
            ready_file: args.ready_file,
        })
    }
}

pub use mesh_common::names::is_dns_subdomain;

/// `dir`, or if it does not exist yet its nearest existing ancestor: where it will live.
fn bpffs_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|p| p.exists()).map(Path::to_owned)
}

/// Whether `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: `c_path` is a valid C string; `stat` is written by the kernel on success.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_kubernetes_rules() {
        for ok in ["node-0", "kind-worker2", "ip-10-0-0-1.ec2.internal"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b", &"x".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn the_plaintext_observer_listens_on_loopback_unless_told_otherwise() {
        let address: std::net::SocketAddr = DEFAULT_OBSERVER_ADDRESS.parse().unwrap();
        assert!(address.ip().is_loopback(), "{address}");
    }

    #[test]
    fn a_directory_that_is_not_a_cgroup_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            node_name: "node-0".into(),
            cgroup: dir.path().into(),
            bpffs: None,
            netns: None,
            state_file: Some(dir.path().join("state.yaml")),
            operator: None,
            tls_dir: None,
            bootstrap_token: None,
            ca_file: None,
            keep_datapath: false,
            ready_file: None,
            services_max: None,
            backends_max: None,
            affinity_max: None,
            reverse_max: None,
            policy_max: None,
            identities_max: None,
            conntrack_max: None,
            prefilter_max: None,
            maglev_size: None,
            maglev_tables: None,
            nodeport_flows_max: None,
            lb_mode: DEFAULT_LB_MODE.into(),
            devices: DEFAULT_DEVICES.into(),
            xdp_mode: DEFAULT_XDP_MODE.into(),
            events_bytes: None,
            flow_buffer: None,
            flow_aggregation: None,
            observer_address: DEFAULT_OBSERVER_ADDRESS.into(),
            observer_socket: None,
            metrics_address: DEFAULT_METRICS_ADDRESS.into(),
            tunnel_address: DEFAULT_TUNNEL_ADDRESS.into(),
            tunnel_drain_seconds: DEFAULT_TUNNEL_DRAIN_SECONDS,
            trust_domain: mesh_common::identity::DEFAULT_TRUST_DOMAIN.into(),
        };
        let err = Config::from_args(args).unwrap_err().to_string();
        assert!(err.starts_with(ENV_CGROUP), "{err}");
    }

    #[test]
    fn flow_settings_are_checked_with_their_key() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "").unwrap();
        let parse = |extra: &[&str]| {
            let mut words = vec!["mesh-agent", "--node-name", "n", "--cgroup", root.path().to_str().unwrap()];
            words.extend_from_slice(&["--bpffs", "/sys/fs/bpf/x", "--state-file", "/nonexistent.yaml"]);
            words.extend_from_slice(extra);
            Config::from_args(Args::parse_from(words)).map(|_| ()).map_err(|e| e.to_string())
        };
        let err = parse(&["--events-bytes", "5000"]).unwrap_err();
        assert!(err.starts_with(ENV_EVENTS_BYTES), "{err}");
        let err = parse(&["--flow-buffer", "0"]).unwrap_err();
        assert!(err.starts_with(ENV_FLOW_BUFFER), "{err}");
        let err = parse(&["--flow-aggregation", "high"]).unwrap_err();
        assert!(err.starts_with(ENV_FLOW_AGGREGATION) && err.contains("none, low, medium or maximum"), "{err}");
        let err = parse(&["--observer-address", "nowhere"]).unwrap_err();
        assert!(err.starts_with(ENV_OBSERVER_ADDRESS), "{err}");
        let err = parse(&["--metrics-address", "1.2.3.4"]).unwrap_err();
        assert!(err.starts_with(ENV_METRICS_ADDRESS), "{err}");
        let err = parse(&["--trust-domain", "Cluster.Local"]).unwrap_err();
        assert!(err.starts_with(ENV_TRUST_DOMAIN) && err.contains("lowercase"), "{err}");
    }

    #[test]
    fn agents_beside_each_other_on_one_host_get_paths_of_their_own() {
        // A DaemonSet's agent, in its node's namespace: the plain defaults.
        assert_eq!(instance("node1", None), None);
        // `ip netns` names are unique on the host: two labs' `node1`s differ by them.
        assert_eq!(instance("node1", Some(Path::new("/run/netns/lab-a-node1"))).as_deref(), Some("lab-a-node1"));
        assert_eq!(instance("node1", Some(Path::new("/var/run/netns/lab-b-node1"))).as_deref(), Some("lab-b-node1"));
        // Any other namespace file: the node and the namespace's inode.
        let own = instance("node1", Some(Path::new("/proc/self/ns/net"))).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/ns/net").unwrap());
        assert_eq!(own, format!("node1-{inode}"));
    }

    #[test]
    fn meshctl_looks_where_the_agent_serves_by_default() {
        assert_eq!(DEFAULT_OBSERVER_URL, format!("unix://{DEFAULT_OBSERVER_SOCKET}"));
    }
}
