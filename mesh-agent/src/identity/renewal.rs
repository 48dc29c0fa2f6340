//! Keeps a valid certificate for every identity the node needs: asks at once for a new
//! identity, again when half of a certificate's remaining lifetime has passed (Istio's agent
//! and ztunnel renew at half-life too), and after a failure with a backoff, keeping the old
//! certificate meanwhile until it expires. A certificate is replaced, never revoked: whatever
//! was made with the old one (a TLS session) stays up.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use mesh_common::identity::SpiffeId;

use super::{
    Certificates, Issued, Slot,
    ca_client::{CaClient, CertError},
    unix_now,
};

/// Backoff after a failed request: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(60);

/// Runs until the agent stops.
pub async fn run(certificates: Certificates, ca: CaClient) {
    let mut wanted = certificates.wanted();
    loop {
        let ids = wanted.borrow_and_update().clone();
        track(&certificates, &ids);
        let due: Vec<SpiffeId> = certificates.with_slots(|slots| {
            slots.iter().filter(|(_, s)| s.due <= Instant::now()).map(|(id, _)| id.clone()).collect()
        });
        if !due.is_empty() {
            request_round(&certificates, &ca, &due).await;
        }
        let next = certificates.with_slots(|slots| {
            expire(slots);
            slots.values().map(|slot| slot.due).min()
        });
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
    }
}

/// Adds a slot, due now, for each new identity and forgets those no longer wanted.
fn track(certificates: &Certificates, wanted: &BTreeSet<SpiffeId>) {
    certificates.with_slots(|slots| {
        slots.retain(|id, _| wanted.contains(id));
        for id in wanted {
            slots.entry(id.clone()).or_insert_with(|| Slot {
                issued: None,
                due: Instant::now(),
                due_unix: unix_now(),
                failures: 0,
                last_error: None,
            });
        }
    });
}

/// Asks for a certificate for each identity in `due`, one channel for all of them.
async fn request_round(certificates: &Certificates, ca: &CaClient, due: &[SpiffeId]) {
    let channel = match ca.channel() {
        Ok(channel) => channel,
        Err(err) => {
            let err = err.to_string();
            for identity in due {
                record(certificates, identity, Err(err.clone()));
            }
            return;
        }
    };
    for identity in due {
        let result = ca.issue(channel.clone(), identity).await.map_err(|err: CertError| err.to_string());
        record(certificates, identity, result);
    }
}

/// Keeps what one request gave and sets when the next is due.
fn record(certificates: &Certificates, identity: &SpiffeId, result: Result<Issued, String>) {
    certificates.count(result.is_ok());
    certificates.with_slots(|slots| {
        // The identity may have gone while the request ran.
        let Some(slot) = slots.get_mut(identity) else { return };
        let wait = match result {
            Ok(issued) => {
                let remaining = (issued.not_after - unix_now()).max(0) as u64;
                let renew_in = Duration::from_secs(remaining / 2);
                tracing::info!(%identity, serial = issued.serial, ?renew_in, "workload certificate issued");
                slot.issued = Some(std::sync::Arc::new(issued));
                slot.failures = 0;
                slot.last_error = None;
                renew_in
            }
            Err(err) => {
                let retry = backoff(slot.failures);
                slot.failures = slot.failures.saturating_add(1);
                tracing::warn!(%identity, retry_in = ?retry, failures = slot.failures, "{err}");
                slot.last_error = Some(err);
                retry
            }
        };
        slot.due = Instant::now() + wait;
        slot.due_unix = unix_now() + wait.as_secs() as i64;
    });
}

/// Drops certificates that expired (their renewal kept failing).
fn expire(slots: &mut std::collections::BTreeMap<SpiffeId, Slot>) {
    let now = unix_now();
    for (identity, slot) in slots.iter_mut() {
        if slot.issued.as_ref().is_some_and(|issued| issued.not_after <= now) {
            tracing::warn!(%identity, "workload certificate expired before it could be renewed");
            slot.issued = None;
        }
    }
}

/// The wait after `failures` failed requests in a row.
pub fn backoff(failures: u32) -> Duration {
    RETRY_FIRST.saturating_mul(1 << failures.min(6)).min(RETRY_LAST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), RETRY_LAST);
    }
}
