//! Observer `GetFlows` requests (any gRPC client can send one), their filters judged against
//! flow events: the input's last two event lengths of bytes, when it has more, are two events.
#![no_main]

const EVENT: usize = size_of::<mesh_common::flows::FlowEvent>();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (request, events) = if data.len() > 2 * EVENT { data.split_at(data.len() - 2 * EVENT) } else { (data, &[][..]) };
    let events: Vec<&[u8]> = events.chunks(EVENT).collect();
    let _ = mesh_agent::untrusted::flow_request(request, &events);
});
