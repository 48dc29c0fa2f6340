//! Hubble's Observer gRPC service (`observer.Observer`): `GetFlows`, `ServerStatus` and
//! `GetNodes`. `GetFlows` is served by hand so each flow is encoded straight from its
//! [`Record`] (see `encode`); the other two use the generated server.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, BufMut as _, Bytes};
use futures::StreamExt as _;
use mesh_common::hubble::observer::{
    self, GetFlowsRequest, GetNodesRequest, GetNodesResponse, Node, NodeState, ServerStatusRequest,
    ServerStatusResponse, observer_server::ObserverServer,
};
use prost::Message as _;
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc,
};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::NamedService,
};
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health, HealthServer},
};

use super::{
    Record,
    directory::SharedDirectory,
    encode,
    filter::Filters,
    store::{Batch, FlowStore},
    view::FlowView,
};

/// The agent version Hubble clients see.
pub const VERSION: &str = concat!("mesh-agent v", env!("CARGO_PKG_VERSION"));
/// `flow.LostEventSource`: lost in the kernel's ring buffer, or by a slow follower.
pub const LOST_IN_KERNEL: i32 = 1;
pub const LOST_BY_FOLLOWER: i32 = 3;
/// Flows sent to a client in one go.
const SEND_BATCH: usize = 256;
/// Batches waiting for a client before its task waits for it.
const CLIENT_BACKLOG: usize = 64;
/// Flows a follower may have yet to judge and send before it loses the oldest (about 14 MB).
const FOLLOW_BACKLOG: usize = 131_072;
/// Flows a follower judges against its filters before it lets other tasks run.
const JUDGE_AT_ONCE: usize = 4 * SEND_BATCH;

/// What the Observer service reads.
#[derive(Clone)]
pub struct Observer {
    pub store: FlowStore,
    pub directory: SharedDirectory,
}

/// The service to add to a tonic router: `GetFlows` by hand, the rest generated.
#[derive(Clone)]
pub struct ObserverService {
    observer: Observer,
    generated: ObserverServer<Observer>,
}

impl ObserverService {
    pub fn new(observer: Observer) -> Self {
        Self { generated: ObserverServer::new(observer.clone()), observer }
    }
}

impl NamedService for ObserverService {
    const NAME: &'static str = "observer.Observer";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

impl<B> tower::Service<http::Request<B>> for ObserverService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/observer.Observer/GetFlows" {
            return self.generated.call(req);
        }
        let observer = self.observer.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(FlowsCodec);
            Ok(grpc.server_streaming(GetFlows(observer), req).await)
        })
    }
}

struct GetFlows(Observer);

/// Encoded responses sent to a client's stream in one go.
type Responses = Vec<Result<Bytes, Status>>;

type FlowStream = Pin<Box<dyn futures::Stream<Item = Result<Bytes, Status>> + Send>>;

impl tonic::server::ServerStreamingService<GetFlowsRequest> for GetFlows {
    type Response = Bytes;
    type ResponseStream = FlowStream;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<FlowStream>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<GetFlowsRequest>) -> Self::Future {
        let observer = self.0.clone();
        Box::pin(async move {
            let details = request.metadata().get(FLOW_DETAILS_HEADER).is_some_and(|v| v.as_bytes() == b"true");
            let request = request.into_inner();
            if request.first && request.follow {
                // As Cilium's Observer answers: the oldest flows and following new ones do not mix.
                return Err(Status::invalid_argument("first cannot be combined with follow: ask for one or the other"));
            }
            let filters = Filters::compile(&request.whitelist, &request.blacklist)
                .map_err(|err| Status::invalid_argument(err.to_string()))?;
            let (tx, rx) = mpsc::channel::<Responses>(CLIENT_BACKLOG);
            tokio::spawn(serve_flows(observer, request, filters, details, tx));
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(futures::stream::iter);
            Ok(tonic::Response::new(Box::pin(stream) as FlowStream))
        })
    }
}

/// gRPC metadata a client sends (`true`) to get each flow's `extensions`, a
/// `mesh.v1.FlowDetails` (the policy rule, the bytes of a connection, the L7 route); `meshctl`
/// does. Without it flows hold only what Cilium's `flow.proto` defines, so a client that does
/// not know the type (`hubble observe -o json`, any protojson printer) can print every flow.
pub const FLOW_DETAILS_HEADER: &str = "x-mesh-flow-details";

/// The name `hubble status` checks with gRPC health before it asks the Observer anything.
pub const HUBBLE_HEALTH_SERVICE: &str = "hubble.server.Observer";

/// gRPC health (`grpc.health.v1.Health`): the Observer serving under its own name and under
/// the one Hubble's CLI checks.
pub async fn health_service() -> HealthServer<impl Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_serving::<ObserverService>().await;
    reporter.set_service_status(HUBBLE_HEALTH_SERVICE, ServingStatus::Serving).await;
    service
}

fn unix_ns(ts: &prost_types::Timestamp) -> u64 {
    u64::try_from(ts.seconds).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.nanos).unwrap_or(0)
}

/// A client channel to an Observer API on the unix socket at `path`.
pub async fn unix_channel(
    path: std::path::PathBuf,
    connect_timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
    });
    // The URI is a placeholder: the connector ignores it.
    tonic::transport::Endpoint::from_static("http://agent")
        .connect_timeout(connect_timeout)
        .connect_with_connector(connector)
        .await
}

/// Sends the flows `request` asks for to `tx` until they are all sent, the client goes, or
/// (following) forever.
async fn serve_flows(
    observer: Observer,
    request: GetFlowsRequest,
    filters: Filters,
    details: bool,
    tx: mpsc::Sender<Responses>,
) {
    let since = request.since.as_ref().map_or(0, unix_ns);
    let until = if request.follow { u64::MAX } else { request.until.as_ref().map_or(u64::MAX, unix_ns) };
    // Subscribed before the snapshot, so no flow falls between the two.
    let mut updates = request.follow.then(|| observer.store.subscribe());
    let directory = observer.directory.get();
    // Copied out first: filtering runs outside the store's lock, which the reader needs.
    let (mut history, seen_by_snapshot) = observer.store.snapshot();
    history.retain(|r| r.unix_ns >= since && r.unix_ns <= until && filters.matches(&FlowView::new(r, &directory)));
    let number = usize::try_from(request.number).unwrap_or(usize::MAX);
    if request.first {
        history.truncate(number.max(1).min(history.len()));
    } else if number > 0 || request.follow {
        // `number` last flows; following with no number: only new flows.
        history.drain(..history.len().saturating_sub(number));
    }
    // Followers skip what the snapshot already judged.
    let last_seq = seen_by_snapshot;
    for chunk in history.chunks(SEND_BATCH) {
        let batch = chunk.iter().map(|r| Ok(encode_flow(&FlowView::new(r, &directory), details))).collect();
        if tx.send(batch).await.is_err() {
            return;
        }
    }
    let Some(updates) = updates.as_mut() else { return };
    follow(&observer, &filters, details, updates, last_seq, &tx).await;
}

/// Sends new flows as they come. The flows this follower has yet to send wait in its own
/// queue of at most [`FOLLOW_BACKLOG`]: a client slower than the flows loses the oldest, is
/// told how many, and never makes the agent hold more.
async fn follow(
    observer: &Observer,
    filters: &Filters,
    details: bool,
    updates: &mut broadcast::Receiver<Batch>,
    mut last_seq: u64,
    tx: &mpsc::Sender<Responses>,
) {
    let mut queue: VecDeque<Record> = VecDeque::new();
    let mut missed = 0u64;
    let mut lost_kernel = observer.store.lost_kernel();
    loop {
        tokio::select! {
            update = updates.recv() => {
                let batch = match update {
                    Ok(batch) => batch,
                    // The gap in flow numbers says how many (next batch).
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let first = batch.first().map_or(0, |r| r.seq);
                if first > last_seq + 1 && last_seq > 0 {
                    missed += first - last_seq - 1;
                }
                let skip = last_seq;
                queue.extend(batch.iter().filter(|r| r.seq > skip).cloned());
                last_seq = last_seq.max(batch.last().map_or(0, |r| r.seq));
                // Judged when sent: a client that cannot keep up costs no filtering.
                let overflow = queue.len().saturating_sub(FOLLOW_BACKLOG);
                queue.drain(..overflow);
                missed += overflow as u64;
            }
            // A client that goes while no flows come is let go at once, not at the next flow.
            () = tx.closed(), if queue.is_empty() && missed == 0 => return,
            permit = tx.reserve(), if !queue.is_empty() || missed > 0 => {
                let Ok(permit) = permit else { return };
                let directory = observer.directory.get();
                let mut out = Vec::with_capacity(queue.len().min(SEND_BATCH) + 2);
                let now = super::unix_now_ns();
                let kernel = observer.store.lost_kernel();
                if kernel > lost_kernel {
                    out.push(Ok(lost(LOST_IN_KERNEL, kernel - lost_kernel, &directory.node_name, now)));
                    lost_kernel = kernel;
                }
                if missed > 0 {
                    observer.store.add_lost_followers(missed);
                    out.push(Ok(lost(LOST_BY_FOLLOWER, missed, &directory.node_name, now)));
                    missed = 0;
                }
                let mut judged = 0;
                while out.len() < SEND_BATCH && judged < JUDGE_AT_ONCE {
                    let Some(record) = queue.pop_front() else { break };
                    judged += 1;
                    let view = FlowView::new(&record, &directory);
                    if filters.matches(&view) {
                        out.push(Ok(encode_flow(&view, details)));
                    }
                }
                if !out.is_empty() {
                    permit.send(out);
                }
            }
        }
    }
}

fn encode_flow(view: &FlowView<'_>, details: bool) -> Bytes {
    let mut buf = Vec::with_capacity(512);
    encode::response(&mut buf, view, details);
    Bytes::from(buf)
}

fn lost(source: i32, count: u64, node_name: &str, now: u64) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    encode::lost_events(&mut buf, source, count, node_name, now);
    Bytes::from(buf)
}

#[tonic::async_trait]
impl observer::observer_server::Observer for Observer {
    type GetFlowsStream = Pin<Box<dyn futures::Stream<Item = Result<observer::GetFlowsResponse, Status>> + Send>>;

    async fn get_flows(
        &self,
        _request: tonic::Request<GetFlowsRequest>,
    ) -> Result<tonic::Response<Self::GetFlowsStream>, Status> {
        // Served by `ObserverService` before the generated server sees the request.
        Err(Status::internal("GetFlows is served by ObserverService"))
    }

    async fn get_nodes(
        &self,
        _request: tonic::Request<GetNodesRequest>,
    ) -> Result<tonic::Response<GetNodesResponse>, Status> {
        let stats = self.store.stats();
        Ok(tonic::Response::new(GetNodesResponse {
            nodes: vec![Node {
                name: self.directory.get().node_name.clone(),
                version: VERSION.to_owned(),
                state: NodeState::NodeConnected as i32,
                uptime_ns: stats.uptime_ns,
                num_flows: stats.num_flows,
                max_flows: stats.max_flows,
                seen_flows: stats.seen_flows,
                ..Node::default()
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: tonic::Request<ServerStatusRequest>,
    ) -> Result<tonic::Response<ServerStatusResponse>, Status> {
        let stats = self.store.stats();
        let uptime_s = stats.uptime_ns as f64 / 1e9;
        Ok(tonic::Response::new(ServerStatusResponse {
            num_flows: stats.num_flows,
            max_flows: stats.max_flows,
            seen_flows: stats.seen_flows,
            uptime_ns: stats.uptime_ns,
            version: VERSION.to_owned(),
            flows_rate: if uptime_s > 0.0 { stats.seen_flows as f64 / uptime_s } else { 0.0 },
            ..ServerStatusResponse::default()
        }))
    }
}

/// Requests decoded with prost; responses already encoded.
#[derive(Clone, Copy, Default)]
struct FlowsCodec;

impl Codec for FlowsCodec {
    type Encode = Bytes;
    type Decode = GetFlowsRequest;
    type Encoder = BytesEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = GetFlowsRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<GetFlowsRequest>, Status> {
        let request = GetFlowsRequest::decode(src.copy_to_bytes(src.remaining()))
            .map_err(|err| Status::invalid_argument(format!("malformed GetFlowsRequest: {err}")))?;
        Ok(Some(request))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_common::hubble::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

    use super::*;
    use crate::flows::directory::Directory;

    /// Flows received and flows reported missed, from one stream item.
    fn tally(item: &[Result<Bytes, Status>]) -> (u64, u64) {
        let (mut flows, mut missed) = (0, 0);
        for response in item {
            let response = GetFlowsResponse::decode(response.clone().expect("no error")).expect("a response");
            match response.response_types {
                Some(ResponseTypes::Flow(_)) => flows += 1,
                Some(ResponseTypes::LostEvents(lost)) => {
                    assert_eq!(lost.source, LOST_BY_FOLLOWER, "only the follower lost flows");
                    missed += lost.num_events_lost;
                }
                other => panic!("unexpected response {other:?}"),
            }
        }
        (flows, missed)
    }

    /// A store with a follower (no filters) whose client's channel holds one item.
    fn spawn_follower() -> (Observer, mpsc::Receiver<Responses>, tokio::task::JoinHandle<()>) {
        let observer =
            Observer { store: FlowStore::new(16), directory: SharedDirectory::new(Directory::empty("node-a")) };
        let filters = Filters::compile(&[], &[]).expect("no filters");
        let mut updates = observer.store.subscribe();
        let (tx, rx) = mpsc::channel(1);
        let follower = tokio::spawn({
            let observer = observer.clone();
            async move { follow(&observer, &filters, true, &mut updates, 0, &tx).await }
        });
        (observer, rx, follower)
    }

    #[tokio::test]
    async fn a_follower_ends_when_its_client_goes_even_with_no_flows() {
        let (_observer, rx, follower) = spawn_follower();
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the follower ends when its client goes")
            .expect("the follower did not panic");
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_holds_a_bounded_queue_and_is_told_what_it_missed() {
        // Nobody reads the client's channel until every flow is pushed.
        let (observer, mut rx, follower) = spawn_follower();
        let total = FOLLOW_BACKLOG + 100 * 1024;
        for _ in 0..total / 1024 {
            observer.store.push(vec![Record::default(); 1024]);
            // The follower takes each batch to its queue, as it would between reader wake-ups.
            tokio::task::yield_now().await;
        }
        let (mut flows, mut missed) = (0, 0);
        while flows + missed < total as u64 {
            let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("the follower keeps sending")
                .expect("the follower is running");
            let (f, m) = tally(&item);
            (flows, missed) = (flows + f, missed + m);
        }
        assert_eq!(flows + missed, total as u64, "every flow is either sent or reported missed");
        assert!(missed > 0, "the follower fell behind by more than its queue");
        assert!(
            flows <= (FOLLOW_BACKLOG + 2 * JUDGE_AT_ONCE) as u64,
            "the follower held at most its queue and what was already in its channel: {flows} flows sent"
        );
        assert_eq!(observer.store.stats().lost_followers, missed, "the store counts what followers missed");
        follower.abort();
    }
}
