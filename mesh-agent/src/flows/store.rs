//! The ring of recent flows and the stream of new ones.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::broadcast;

use super::Record;

/// How many batches a follower's task may fall behind before it loses flows (it is told how
/// many). Followers move new flows to their own bounded queues as soon as they come, so this
/// only absorbs scheduling delays; with the reader's batches of at most 1,024 flows it holds
/// at most about 27 MB.
const FOLLOW_BACKLOG_BATCHES: usize = 256;

/// A batch of new flows, as the reader drained them from the ring buffer.
pub type Batch = Arc<[Record]>;

/// Recent flows, the number seen, and the followers' channel. Cheap to clone (shared).
#[derive(Clone)]
pub struct FlowStore {
    inner: Arc<Inner>,
}

struct Inner {
    ring: Mutex<VecDeque<Record>>,
    capacity: usize,
    seen: AtomicU64,
    /// Of those, flows the agent made itself (the L7 proxy's, the tunnel's failures).
    made: AtomicU64,
    /// Events the kernel could not put in the ring buffer (kept up to date by the reader).
    lost_kernel: AtomicU64,
    /// Flows followers missed because they fell behind.
    lost_followers: AtomicU64,
    started_ns: u64,
    tx: broadcast::Sender<Batch>,
}

/// What [`FlowStore::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub num_flows: u64,
    pub max_flows: u64,
    pub seen_flows: u64,
    /// Of `seen_flows`, those the agent made itself rather than read from the kernel.
    pub made_flows: u64,
    pub lost_kernel: u64,
    pub lost_followers: u64,
    pub uptime_ns: u64,
}

impl FlowStore {
    /// A store keeping the last `capacity` flows.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG_BATCHES);
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(VecDeque::with_capacity(capacity)),
                capacity,
                seen: AtomicU64::new(0),
                made: AtomicU64::new(0),
                lost_kernel: AtomicU64::new(0),
                lost_followers: AtomicU64::new(0),
                started_ns: super::unix_now_ns(),
                tx,
            }),
        }
    }

    /// Adds new flows: kept (the oldest go) and sent to the followers.
    pub fn push(&self, batch: Vec<Record>) {
        self.push_counted(batch, false);
    }

    fn push_counted(&self, mut batch: Vec<Record>, made: bool) {
        if batch.is_empty() {
            return;
        }
        {
            let mut ring = self.inner.ring.lock().expect("never poisoned: no panics under the lock");
            // Numbered (and counted) under the lock, so followers, snapshots and the counts
            // agree.
            let first = self.inner.seen.fetch_add(batch.len() as u64, Ordering::Relaxed) + 1;
            if made {
                self.inner.made.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            for (record, seq) in batch.iter_mut().zip(first..) {
                record.seq = seq;
            }
            let keep = batch.len().min(self.inner.capacity);
            let overflow = (ring.len() + keep).saturating_sub(self.inner.capacity);
            ring.drain(..overflow);
            ring.extend(batch[batch.len() - keep..].iter().cloned());
        }
        // No follower: nothing to do.
        let _ = self.inner.tx.send(batch.into());
    }

    /// The kept flows, oldest first, and the number of the last one (0 when none).
    pub fn snapshot(&self) -> (Vec<Record>, u64) {
        let ring = self.inner.ring.lock().expect("never poisoned");
        (ring.iter().cloned().collect(), ring.back().map_or(0, |r| r.seq))
    }

    /// Adds flows the agent made itself (not the kernel's events): kept, sent and counted as
    /// [`FlowStore::push`] does, and counted apart too, so the kernel's events can be accounted
    /// for exactly.
    pub fn push_made(&self, batch: Vec<Record>) {
        self.push_counted(batch, true);
    }

    /// New flows from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.inner.tx.subscribe()
    }

    pub fn set_lost_kernel(&self, lost: u64) {
        self.inner.lost_kernel.store(lost, Ordering::Relaxed);
    }

    /// Events the kernel could not put in the ring buffer, as the reader last read them
    /// (without the ring's lock, which `stats` takes).
    pub fn lost_kernel(&self) -> u64 {
        self.inner.lost_kernel.load(Ordering::Relaxed)
    }

    pub fn add_lost_followers(&self, lost: u64) {
        self.inner.lost_followers.fetch_add(lost, Ordering::Relaxed);
    }

    pub fn stats(&self) -> StoreStats {
        // Under the lock: the flows seen and made, of the same moment.
        let ring = self.inner.ring.lock().expect("never poisoned");
        let (num_flows, seen_flows, made_flows) =
            (ring.len() as u64, self.inner.seen.load(Ordering::Relaxed), self.inner.made.load(Ordering::Relaxed));
        drop(ring);
        StoreStats {
            num_flows,
            max_flows: self.inner.capacity as u64,
            seen_flows,
            made_flows,
            lost_kernel: self.lost_kernel(),
            lost_followers: self.inner.lost_followers.load(Ordering::Relaxed),
            uptime_ns: super::unix_now_ns().saturating_sub(self.inner.started_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> Record {
        Record { unix_ns: n, ..Record::default() }
    }

    #[test]
    fn keeps_the_last_flows_and_counts_all() {
        let store = FlowStore::new(3);
        store.push((0..2).map(record).collect());
        store.push((2..7).map(record).collect());
        let kept: Vec<u64> = store.snapshot().0.iter().map(|r| r.unix_ns).collect();
        assert_eq!(kept, [4, 5, 6]);
        let stats = store.stats();
        assert_eq!((stats.num_flows, stats.max_flows, stats.seen_flows), (3, 3, 7));
    }

    #[test]
    fn flows_the_agent_made_are_counted_apart() {
        let store = FlowStore::new(8);
        store.push(vec![record(1)]);
        store.push_made(vec![record(2), record(3)]);
        let stats = store.stats();
        assert_eq!((stats.seen_flows, stats.made_flows), (3, 2));
        let numbers: Vec<u64> = store.snapshot().0.iter().map(|r| r.seq).collect();
        assert_eq!(numbers, [1, 2, 3], "one numbering for both");
    }

    #[test]
    fn followers_get_new_batches() {
        let store = FlowStore::new(8);
        let mut rx = store.subscribe();
        store.push(vec![record(1), record(2)]);
        let batch = rx.try_recv().expect("a batch");
        assert_eq!(batch.len(), 2);
    }
}
