//! The benchmark's Observer client: a codec that reads each `GetFlowsResponse` without
//! building it. Every response's wire format is walked to its end, every flow's source and
//! destination addresses are compared with the generator's, and one flow in `decode_every`
//! is also decoded whole with the generated types and compared. So the client checks what it
//! counts, at a cost that leaves the two cores to the agent (or, with `decode_every` 1, at the
//! cost of a typical client that builds every message).

use std::{
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Buf, Bytes};
use mesh_common::hubble::observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes};
use prost::{
    Message as _,
    encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field},
};
use tonic::{
    Status,
    codec::{DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// What a response was.
pub enum Response {
    Flow,
    Lost { source: i32, count: u64 },
    Other,
}

/// The generator's addresses, as Hubble writes them, and the count of whole decodes.
#[derive(Clone)]
pub struct Expected {
    source: Arc<str>,
    destination: Arc<str>,
    pub decoded: Arc<AtomicU64>,
}

impl Expected {
    pub fn new(source: Ipv4Addr, destination: Ipv4Addr) -> Self {
        Self { source: source.to_string().into(), destination: destination.to_string().into(), decoded: Arc::default() }
    }
}

#[derive(Clone)]
pub struct Codec {
    expected: Expected,
    decode_every: u64,
    flows: u64,
}

impl Codec {
    pub fn new(expected: Expected, decode_every: u64) -> Self {
        Self { expected, decode_every: decode_every.max(1), flows: 0 }
    }
}

impl tonic::codec::Codec for Codec {
    type Encode = GetFlowsRequest;
    type Decode = Response;
    type Encoder = RequestEncoder;
    type Decoder = Self;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> Self {
        self.clone()
    }
}

pub struct RequestEncoder;

impl Encoder for RequestEncoder {
    type Item = GetFlowsRequest;
    type Error = Status;

    fn encode(&mut self, item: GetFlowsRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|err| Status::internal(err.to_string()))
    }
}

fn malformed(what: impl std::fmt::Display) -> Status {
    Status::data_loss(format!("malformed GetFlowsResponse: {what}"))
}

impl Decoder for Codec {
    type Item = Response;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Response>, Status> {
        let mut message = src.copy_to_bytes(src.remaining());
        let whole = message.clone();
        let mut response = Response::Other;
        while message.has_remaining() {
            let (tag, wire) = decode_key(&mut message).map_err(malformed)?;
            match (tag, wire) {
                (1, WireType::LengthDelimited) => {
                    let flow = delimited(&mut message)?;
                    self.check_flow(flow)?;
                    response = Response::Flow;
                }
                (3, WireType::LengthDelimited) => {
                    let mut lost = delimited(&mut message)?;
                    let (mut source, mut count) = (0, 0);
                    while lost.has_remaining() {
                        match decode_key(&mut lost).map_err(malformed)? {
                            (1, WireType::Varint) => source = decode_varint(&mut lost).map_err(malformed)? as i32,
                            (2, WireType::Varint) => count = decode_varint(&mut lost).map_err(malformed)?,
                            (tag, wire) => {
                                skip_field(wire, tag, &mut lost, DecodeContext::default()).map_err(malformed)?
                            }
                        }
                    }
                    response = Response::Lost { source, count };
                }
                (tag, wire) => skip_field(wire, tag, &mut message, DecodeContext::default()).map_err(malformed)?,
            }
        }
        if matches!(response, Response::Flow) {
            self.flows += 1;
            if self.flows.is_multiple_of(self.decode_every) {
                self.check_whole(whole)?;
            }
        }
        Ok(Some(response))
    }
}

/// The next length-delimited field's bytes.
fn delimited(buf: &mut Bytes) -> Result<Bytes, Status> {
    let len = usize::try_from(decode_varint(buf).map_err(malformed)?).map_err(malformed)?;
    if len > buf.remaining() {
        return Err(malformed("a field runs past the message"));
    }
    Ok(buf.split_to(len))
}

impl Codec {
    /// Walks a `Flow` and compares `IP.source` and `IP.destination` (field 5: 1, 2).
    fn check_flow(&self, mut flow: Bytes) -> Result<(), Status> {
        let mut seen_ip = false;
        while flow.has_remaining() {
            let (tag, wire) = decode_key(&mut flow).map_err(malformed)?;
            if (tag, wire) != (5, WireType::LengthDelimited) {
                skip_field(wire, tag, &mut flow, DecodeContext::default()).map_err(malformed)?;
                continue;
            }
            let mut ip = delimited(&mut flow)?;
            let (mut source, mut destination) = (Bytes::new(), Bytes::new());
            while ip.has_remaining() {
                match decode_key(&mut ip).map_err(malformed)? {
                    (1, WireType::LengthDelimited) => source = delimited(&mut ip)?,
                    (2, WireType::LengthDelimited) => destination = delimited(&mut ip)?,
                    (tag, wire) => skip_field(wire, tag, &mut ip, DecodeContext::default()).map_err(malformed)?,
                }
            }
            self.compare(&source, &destination)?;
            seen_ip = true;
        }
        if !seen_ip {
            return Err(malformed("a flow without IP addresses"));
        }
        Ok(())
    }

    /// Decodes a whole response with the generated types and compares its addresses.
    fn check_whole(&self, message: Bytes) -> Result<(), Status> {
        let response = GetFlowsResponse::decode(message).map_err(malformed)?;
        let Some(ResponseTypes::Flow(flow)) = response.response_types else {
            return Err(malformed("the generated types see no flow where the walk saw one"));
        };
        let ip = flow.ip.unwrap_or_default();
        self.compare(ip.source.as_bytes(), ip.destination.as_bytes())?;
        if flow.source.is_none() || flow.destination.is_none() {
            return Err(malformed("a generated flow without its named endpoints"));
        }
        self.expected.decoded.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn compare(&self, source: &[u8], destination: &[u8]) -> Result<(), Status> {
        if source != self.expected.source.as_bytes() || destination != self.expected.destination.as_bytes() {
            return Err(Status::data_loss(format!(
                "a flow from {} to {}, expected {} to {}",
                String::from_utf8_lossy(source),
                String::from_utf8_lossy(destination),
                self.expected.source,
                self.expected.destination
            )));
        }
        Ok(())
    }
}
