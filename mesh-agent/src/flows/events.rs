//! Reading the kernel's flow events from the ring buffer, and its count of lost ones.

use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use mesh_common::flows::FlowEvent;
use tokio::io::unix::AsyncFd;

use super::{Clock, Record, store::FlowStore};

/// At most this many events are decoded before the batch goes to the store (and followers).
const MAX_BATCH: usize = 1024;
/// How long the reader lets events gather in the ring buffer after it drained it. Each drain
/// costs two wake-ups (the kernel's, then the timer's): at 1 ms they cost a short connection
/// (three events) 4.3 µs of agent CPU, at 10 ms 2.4 µs (`cargo xtask bench service-lb`).
const GATHER: Duration = Duration::from_millis(10);
/// How often the lost-event counter is read and the wall clock offset taken again.
const LOST_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot wait on the flow event ring buffer: {0}")]
    Poll(std::io::Error),
}

/// The kernel's count of events that did not fit in the ring buffer, summed over CPUs.
pub fn lost(counter: &PerCpuArray<MapData, u64>) -> u64 {
    counter.get(&mesh_common::maps::EVENTS_LOST_SLOT, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the length is checked; `FlowEvent` is plain data valid for every bit pattern.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// Moves events from the ring buffer into `store` until an error. Never returns otherwise.
pub async fn run(ring: RingBuf<MapData>, lost_counter: PerCpuArray<MapData, u64>, store: FlowStore) -> EventsError {
    // SAFETY: the descriptor belongs to `ring`, which the `AsyncFd` owns: it stays open for as
    // long as it is registered.
    let mut ring = match unsafe { AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(err) => return EventsError::Poll(err.into_parts().1),
    };
    let mut clock = Clock::now();
    let mut poll = tokio::time::interval(LOST_POLL);
    let mut malformed = 0u64;
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => return EventsError::Poll(err),
                };
                let ring = guard.get_inner_mut();
                loop {
                    let mut batch = Vec::with_capacity(64);
                    while batch.len() < MAX_BATCH {
                        let Some(item) = ring.next() else { break };
                        match decode(&item) {
                            Some(event) => batch.push(Record { unix_ns: clock.unix_ns(event.time_ns), event, seq: 0, http: None }),
                            None => malformed += 1,
                        }
                    }
                    let full = batch.len() == MAX_BATCH;
                    store.push(batch);
                    if !full {
                        break;
                    }
                }
                guard.clear_ready();
                drop(guard);
                // Let events gather: at most one batch per GATHER reaches the followers,
                // however busy the kernel is, and each costs them one wake-up.
                tokio::time::sleep(GATHER).await;
            }
            _ = poll.tick() => {
                clock = Clock::now();
                store.set_lost_kernel(lost(&lost_counter));
                if malformed > 0 {
                    tracing::warn!(malformed, "flow events shorter than a FlowEvent were skipped: agent and programs disagree");
                    malformed = 0;
                }
            }
        }
    }
}
