//! `mesh-flowgen`: the flows benchmark's load and its reader (`cargo xtask bench flows`).
//!
//! It follows a running agent's Observer API, then makes the kernel emit flow events at a
//! paced rate: the object's `mesh_event_gen` program, loaded with the agent's pinned ring
//! buffer and lost-event counter, run with `BPF_PROG_TEST_RUN` (each run emits one event
//! through the same code the attached programs use). When the stream has drained it prints
//! one JSON line: events offered, received by the Observer client (and when the last one
//! came), reported lost (in the stream, and by the kernel's counter), decoded whole.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    EbpfLoader,
    maps::{Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use clap::Parser;
use mesh_agent::flows::observer;
use mesh_common::{hubble::observer::GetFlowsRequest, maps, programs};

mod reader;

#[derive(Parser)]
#[command(about = "Flow event load for the flows benchmark (see cargo xtask bench flows)")]
struct Args {
    /// The agent's node bpffs directory (its pinned maps).
    #[arg(long)]
    bpffs: PathBuf,
    /// The agent's Observer unix socket.
    #[arg(long)]
    socket: PathBuf,
    /// Events per second to offer.
    #[arg(long)]
    rate: u64,
    /// Seconds to offer them for.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Source and destination of the synthetic flows (pods the agent knows, so flows are
    /// named as real ones are).
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: Ipv4Addr,
    /// The reader decodes one flow in this many whole with the generated types (1: every
    /// flow, as a typical client does); it checks every flow's addresses.
    #[arg(long, default_value_t = 1000)]
    decode_whole_every: u64,
}

/// The generator runs in slices of this long.
const SLICE: Duration = Duration::from_millis(1);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let received = Arc::new(AtomicU64::new(0));
    // When the last response arrived, in nanoseconds since `epoch`.
    let epoch = Instant::now();
    let last_at = Arc::new(AtomicU64::new(0));
    let lost_in_stream = Arc::new(AtomicU64::new(0));
    // The reader: follows GetFlows and checks every response (see `reader`).
    let socket = args.socket.clone();
    let (r, l, at) = (received.clone(), lost_in_stream.clone(), last_at.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let expected = reader::Expected::new(args.src, args.dst);
    let decoded = expected.decoded.clone();
    let decode_every = args.decode_whole_every;
    let reader = runtime.spawn(async move {
        let channel = observer::unix_channel(socket, Duration::from_secs(10)).await?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(1 << 20);
        grpc.ready().await?;
        let request = tonic::Request::new(GetFlowsRequest { follow: true, ..GetFlowsRequest::default() });
        let path = http::uri::PathAndQuery::from_static("/observer.Observer/GetFlows");
        let mut stream =
            grpc.server_streaming(request, path, reader::Codec::new(expected, decode_every)).await?.into_inner();
        let _ = ready_tx.send(());
        while let Some(response) = stream.message().await? {
            match response {
                reader::Response::Flow => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                // Kernel losses are read from the counter itself; count the follower's.
                reader::Response::Lost { source, count } if source != observer::LOST_IN_KERNEL => {
                    l.fetch_add(count, Ordering::Relaxed);
                }
                _ => {}
            }
            at.store(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("the Observer API did not answer")?;
    std::thread::sleep(Duration::from_millis(200));

    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&args.bpffs);
    let mut ebpf = loader.load(mesh_agent::datapath::OBJECT).context("loading the object with the agent's maps")?;
    let lost_counter: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::from_map_data(MapData::from_pin(args.bpffs.join(maps::EVENTS_LOST))?)?)?;
    let kernel_lost = || -> u64 { mesh_agent::flows::events::lost(&lost_counter) };
    let generator: &mut SchedClassifier =
        ebpf.program_mut(programs::EVENT_GEN).context("no generator program")?.try_into()?;
    generator.load()?;
    // Ethernet + IPv4 + TCP headers of the synthetic flows.
    let mut packet = [0u8; 64];
    packet[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    packet[14] = 0x45;
    packet[14 + 9] = 6;
    packet[14 + 12..14 + 16].copy_from_slice(&args.src.octets());
    packet[14 + 16..14 + 20].copy_from_slice(&args.dst.octets());
    packet[14 + 22..14 + 24].copy_from_slice(&8080u16.to_be_bytes());

    let lost_before = kernel_lost();
    let per_slice = (args.rate as f64 * SLICE.as_secs_f64()).max(1.0);
    let slices = (args.seconds / SLICE.as_secs_f64()) as u64;
    let start = Instant::now();
    let mut offered = 0u64;
    for i in 1..=slices {
        let due = (per_slice * i as f64) as u64 - offered;
        if due > 0 {
            let opts = TestRunOptions { data_in: Some(&packet), repeat: due as u32, ..TestRunOptions::default() };
            generator.test_run(opts).context("running the generator")?;
            offered += due;
        }
        let next = start + SLICE * i as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let generated_s = start.elapsed().as_secs_f64();
    // Drained when nothing arrives for a second (bounded: 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        let now = received.load(Ordering::Relaxed) + lost_in_stream.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    }
    // From the first event offered to the last response received.
    let drained_s = Duration::from_nanos(last_at.load(Ordering::Relaxed)).saturating_sub(start - epoch).as_secs_f64();
    let kernel = kernel_lost() - lost_before;
    // The stream never ends while following: an ended reader is a failed check.
    if reader.is_finished() {
        runtime.block_on(reader).context("the reader task")?.context("reading the Observer stream")?;
        anyhow::bail!("the Observer stream ended while following");
    }
    reader.abort();
    let decoded = decoded.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "offered": offered,
            "generated_s": generated_s,
            "drained_s": drained_s,
            "received": received.load(Ordering::Relaxed),
            "lost_in_stream": lost_in_stream.load(Ordering::Relaxed),
            "lost_in_kernel": kernel,
            "fully_decoded": decoded,
        })
    );
    Ok(())
}
