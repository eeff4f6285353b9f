//! An in-memory [`RecordSource`] for tests and benchmarks.
//!
//! Invariants: it implements the lease/ack/release contract of [`RecordSource`] exactly
//! (highest class first, by id within a class; leased records are not handed out again
//! until [`RecordSource::release_leases`]; acknowledged records are gone), but nothing is
//! durable: a process exit loses everything. Never use it where records matter.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use wardgate_proto::{Priority, RecordId};

use super::{OutgoingRecord, RecordSource, UplinkError};

/// Lease order: highest class first, then by id.
type OrderKey = (Reverse<Priority>, RecordId);

#[derive(Default)]
struct Inner {
    next_seq: u64,
    pending: BTreeMap<OrderKey, OutgoingRecord>,
    leased: HashMap<RecordId, OutgoingRecord>,
    acked: u64,
    lease_calls: u64,
    ack_calls: u64,
}

/// A non-durable record source; see the module documentation.
pub struct MemorySource {
    spool_id: u64,
    inner: Mutex<Inner>,
    pending_changed: Notify,
    drained: Notify,
}

impl MemorySource {
    /// An empty source whose record ids carry `spool_id`.
    #[must_use]
    pub fn new(spool_id: u64) -> Self {
        MemorySource {
            spool_id,
            inner: Mutex::new(Inner {
                next_seq: 1,
                ..Inner::default()
            }),
            pending_changed: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a test double, so keep going with the data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a record and returns its id (sequence numbers start at 1 and only grow).
    pub fn push(
        &self,
        device: &str,
        priority: Priority,
        accepted_ms: u64,
        payload: Vec<u8>,
    ) -> RecordId {
        let id = {
            let mut inner = self.lock();
            let id = RecordId {
                spool: self.spool_id,
                seq: inner.next_seq,
            };
            inner.next_seq += 1;
            let record = OutgoingRecord {
                id,
                device: device.to_owned(),
                priority,
                accepted_ms,
                payload,
            };
            inner.pending.insert((Reverse(priority), id), record);
            id
        };
        self.pending_changed.notify_waiters();
        id
    }

    /// Adds many records under one lock; returns the id of the last one, if any.
    pub fn push_many<I>(&self, records: I) -> Option<RecordId>
    where
        I: IntoIterator<Item = (String, Priority, u64, Vec<u8>)>,
    {
        let last = {
            let mut inner = self.lock();
            let mut last = None;
            for (device, priority, accepted_ms, payload) in records {
                let id = RecordId {
                    spool: self.spool_id,
                    seq: inner.next_seq,
                };
                inner.next_seq += 1;
                let record = OutgoingRecord {
                    id,
                    device,
                    priority,
                    accepted_ms,
                    payload,
                };
                inner.pending.insert((Reverse(priority), id), record);
                last = Some(id);
            }
            last
        };
        self.pending_changed.notify_waiters();
        last
    }

    /// Records not yet acknowledged (pending or leased).
    #[must_use]
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.pending.len() + inner.leased.len()
    }

    /// Whether every record has been acknowledged.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records currently leased.
    #[must_use]
    pub fn leased(&self) -> usize {
        self.lock().leased.len()
    }

    /// Records acknowledged so far.
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.lock().acked
    }

    /// How often `lease` and `ack` were called (for tests of batching behaviour).
    #[must_use]
    pub fn calls(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.lease_calls, inner.ack_calls)
    }

    /// Resolves once every record pushed so far has been acknowledged.
    pub async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Register before checking so an ack between the check and the await is seen.
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

impl RecordSource for MemorySource {
    async fn lease(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutgoingRecord>, UplinkError> {
        let mut inner = self.lock();
        inner.lease_calls += 1;
        let mut out: Vec<OutgoingRecord> = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records {
            let Some(entry) = inner.pending.first_entry() else {
                break;
            };
            let size = entry.get().payload.len();
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            out.push(entry.remove());
        }
        for record in &out {
            inner.leased.insert(record.id, record.clone());
        }
        Ok(out)
    }

    async fn ack(&self, ids: Vec<RecordId>) -> Result<(), UplinkError> {
        let now_empty = {
            let mut inner = self.lock();
            inner.ack_calls += 1;
            for id in ids {
                if let Some(record) = inner.leased.remove(&id) {
                    inner.acked += 1;
                    drop(record);
                } else {
                    // Acked after a release: it may sit in pending again.
                    let key = inner
                        .pending
                        .keys()
                        .find(|(_, pending_id)| *pending_id == id)
                        .copied();
                    if let Some(key) = key {
                        inner.pending.remove(&key);
                        inner.acked += 1;
                    }
                }
            }
            inner.pending.is_empty() && inner.leased.is_empty()
        };
        if now_empty {
            self.drained.notify_waiters();
        }
        Ok(())
    }

    fn release_leases(&self) {
        let released = {
            let mut inner = self.lock();
            let leased: Vec<OutgoingRecord> =
                inner.leased.drain().map(|(_, record)| record).collect();
            let released = !leased.is_empty();
            for record in leased {
                inner
                    .pending
                    .insert((Reverse(record.priority), record.id), record);
            }
            released
        };
        if released {
            self.pending_changed.notify_waiters();
        }
    }

    async fn wait_for_pending(&self) {
        loop {
            let notified = self.pending_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().pending.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn source_with(records: &[(&str, Priority)]) -> MemorySource {
        let source = MemorySource::new(7);
        for (i, (device, priority)) in records.iter().enumerate() {
            source.push(
                device,
                *priority,
                i as u64,
                format!("{{\"n\":{i}}}").into_bytes(),
            );
        }
        source
    }

    #[tokio::test]
    async fn leases_highest_class_first_then_by_id() {
        let source = source_with(&[
            ("a", Priority::Observation),
            ("b", Priority::Alarm),
            ("a", Priority::Observation),
            ("c", Priority::Log),
            ("b", Priority::Alarm),
        ]);
        let leased = source.lease(10, usize::MAX).await.unwrap();
        let seqs: Vec<u64> = leased.iter().map(|r| r.id.seq).collect();
        assert_eq!(seqs, vec![2, 5, 1, 3, 4]);
        assert!(source.lease(10, usize::MAX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn byte_limit_still_returns_one_oversized_record() {
        let source = MemorySource::new(1);
        source.push("a", Priority::Observation, 0, vec![b'x'; 100]);
        source.push("a", Priority::Observation, 0, vec![b'x'; 10]);
        let first = source.lease(10, 50).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].payload.len(), 100);
        let second = source.lease(10, 50).await.unwrap();
        assert_eq!(second.len(), 1);
    }

    #[tokio::test]
    async fn release_replays_in_order_and_ack_deletes() {
        let source = source_with(&[("a", Priority::Observation); 4]);
        let first = source.lease(2, usize::MAX).await.unwrap();
        let _second = source.lease(2, usize::MAX).await.unwrap();
        source.ack(vec![first[0].id]).await.unwrap();
        source.release_leases();
        let replay: Vec<u64> = source
            .lease(10, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.seq)
            .collect();
        assert_eq!(replay, vec![2, 3, 4]);
        assert_eq!(source.acked(), 1);
        source
            .ack(vec![
                RecordId { spool: 7, seq: 2 },
                RecordId { spool: 7, seq: 3 },
            ])
            .await
            .unwrap();
        source
            .ack(vec![
                RecordId { spool: 7, seq: 4 },
                RecordId { spool: 7, seq: 99 },
            ])
            .await
            .unwrap();
        assert!(source.is_empty());
        assert_eq!(source.acked(), 4);
        source.wait_drained().await;
    }

    #[tokio::test]
    async fn wait_for_pending_wakes_on_push() {
        let source = std::sync::Arc::new(MemorySource::new(1));
        let waiter = {
            let source = source.clone();
            tokio::spawn(async move { source.wait_for_pending().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        source.push("a", Priority::Alarm, 0, b"{}".to_vec());
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Level-triggered: resolves at once while something is pending.
        source.wait_for_pending().await;
    }
}
