//! The demo's bookkeeping: what the monitors sent and got acknowledged, and what the
//! cloud received — so the summary can say whether every acknowledged message arrived.
//!
//! Invariants:
//! - A message is matched to a cloud record by its control id (MSH-10), which the PHI
//!   stage keeps and the monitors make unique per run.
//! - Records are counted once per record id; repeats (delivery is at least once) are
//!   counted as duplicates, not as new records.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use wardgate_proto::{RecordBody, RecordId, UplinkRecord};

use super::monitors::{AckCode, MessageKind, OutgoingMessage};

#[derive(Default)]
struct Inner {
    snapshot: TallySnapshot,
    acked_ids: HashSet<String>,
    received_ids: HashSet<String>,
    record_ids: HashSet<RecordId>,
}

/// Counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TallySnapshot {
    /// HL7 messages sent.
    pub sent: u64,
    /// ... of which PCD-04 alarms.
    pub alarms_sent: u64,
    /// Messages answered AA/CA.
    pub acked: u64,
    /// Messages answered AE/CE.
    pub errors: u64,
    /// Messages answered AR/CR.
    pub rejected: u64,
    /// Messages without a usable ACK (connection or timeout).
    pub failed: u64,
    /// Distinct records the cloud received.
    pub records: u64,
    /// ... of which alarms.
    pub alarm_records: u64,
    /// Records received again (same record id).
    pub duplicates: u64,
    /// Payloads the viewer could not decode.
    pub undecodable: u64,
    /// Acknowledged messages whose record has not (yet) reached the cloud.
    pub undelivered: u64,
}

/// Shared bookkeeping of one demo run.
#[derive(Default)]
pub struct DemoTally {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DemoTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoTally")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl DemoTally {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A message is about to be sent.
    pub fn sent(&self, message: &OutgoingMessage) {
        let mut inner = self.lock();
        inner.snapshot.sent += 1;
        if matches!(message.kind, MessageKind::Alarm(_)) {
            inner.snapshot.alarms_sent += 1;
        }
    }

    /// The gateway accepted it.
    pub fn acked(&self, message: &OutgoingMessage) {
        let mut inner = self.lock();
        inner.snapshot.acked += 1;
        inner.acked_ids.insert(message.control_id.clone());
    }

    /// The gateway answered with an error or a rejection.
    pub fn not_accepted(&self, code: AckCode) {
        let mut inner = self.lock();
        match code {
            AckCode::Accepted => {}
            AckCode::Error => inner.snapshot.errors += 1,
            AckCode::Rejected => inner.snapshot.rejected += 1,
        }
    }

    /// No usable ACK came back.
    pub fn failed(&self) {
        self.lock().snapshot.failed += 1;
    }

    /// The cloud received a record; returns `false` if it is a repeat.
    pub fn record_received(&self, record: &UplinkRecord) -> bool {
        let mut inner = self.lock();
        if !inner.record_ids.insert(record.id) {
            inner.snapshot.duplicates += 1;
            return false;
        }
        inner.snapshot.records += 1;
        let control_id = match &record.body {
            RecordBody::Observations(r) => Some(&r.control_id),
            RecordBody::Alarm(r) => {
                inner.snapshot.alarm_records += 1;
                Some(&r.control_id)
            }
            RecordBody::GatewayAlert(_)
            | RecordBody::DeviceState(_)
            | RecordBody::Measurements(_)
            | RecordBody::LogLines(_) => None,
        };
        if let Some(id) = control_id {
            inner.received_ids.insert(id.clone());
        }
        true
    }

    /// The cloud received a payload the viewer could not decode.
    pub fn undecodable(&self) {
        self.lock().snapshot.undecodable += 1;
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> TallySnapshot {
        let inner = self.lock();
        let mut snapshot = inner.snapshot;
        snapshot.undelivered = inner.acked_ids.difference(&inner.received_ids).count() as u64;
        snapshot
    }
}
