//! The demo's bookkeeping: what the monitors sent and got acknowledged, and what the
//! cloud received — so the summary can say whether every acknowledged message arrived.
//!
//! Invariants:
//! - A message is matched to a cloud record by its control id (MSH-10), which the PHI
//!   stage keeps and the monitors make unique per run.
//! - Records are counted once per record id; repeats (delivery is at least once) are
//!   counted as duplicates, not as new records.
//! - Log lines are matched by count: every line the simulated device wrote must arrive
//!   in exactly one (distinct) log record; the log adapter neither splits nor merges the
//!   demo's short lines.
//! - [`DemoTally::monitor_acked`] completes only after the gateway acknowledged a message
//!   of that monitor, i.e. after the HL7 PHI stage saw (and learned the names of) its
//!   patient.
//! - Images are matched by count: every image the gateway acknowledged to the simulated
//!   modality (C-STORE success) must arrive at the cloud imaging ingest, and every one that
//!   arrives must pass the demo's checks (de-identified, pixels intact).

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;
use wardgate_proto::{RecordBody, RecordId, UplinkRecord};

use super::monitors::{AckCode, MessageKind, OutgoingMessage};

#[derive(Default)]
struct Inner {
    snapshot: TallySnapshot,
    acked_ids: HashSet<String>,
    received_ids: HashSet<String>,
    record_ids: HashSet<RecordId>,
    /// Patient pseudonyms on the observation and alarm records the cloud received.
    patients: HashSet<String>,
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
    /// ... of which device measurement reports (Modbus).
    pub measurement_records: u64,
    /// ... of which device log batches.
    pub log_records: u64,
    /// ... of which device state changes.
    pub state_records: u64,
    /// Lines the simulated device wrote to its log.
    pub log_lines_written: u64,
    /// Lines in the log records the cloud received.
    pub log_lines_received: u64,
    /// Payloads the viewer could not decode.
    pub undecodable: u64,
    /// Acknowledged messages whose record has not (yet) reached the cloud.
    pub undelivered: u64,
    /// Images the simulated modality sent (C-STORE requests).
    pub images_sent: u64,
    /// ... that the gateway answered with success.
    pub images_stored: u64,
    /// ... that failed (a failure status, or no association or answer).
    pub images_failed: u64,
    /// Distinct images the cloud imaging ingest received.
    pub images_received: u64,
    /// ... of which failed the demo's checks (unreadable, not de-identified, pixels
    /// changed).
    pub images_bad: u64,
}

impl TallySnapshot {
    /// Log lines written that have not (yet) reached the cloud.
    #[must_use]
    pub const fn log_lines_undelivered(&self) -> u64 {
        self.log_lines_written
            .saturating_sub(self.log_lines_received)
    }

    /// Images stored at the gateway that have not (yet) reached the cloud.
    #[must_use]
    pub const fn images_undelivered(&self) -> u64 {
        self.images_stored.saturating_sub(self.images_received)
    }
}

/// Shared bookkeeping of one demo run.
#[derive(Default)]
pub struct DemoTally {
    inner: Mutex<Inner>,
    /// Indices of the monitors with at least one acknowledged message.
    monitors_acked: watch::Sender<BTreeSet<usize>>,
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
        drop(inner);
        self.monitors_acked
            .send_if_modified(|acked| acked.insert(message.monitor));
    }

    /// Completes once the gateway acknowledged a message of monitor `index` (at once if it
    /// already has).
    pub fn monitor_acked(&self, index: usize) -> impl Future<Output = ()> + Send + 'static {
        let mut acked = self.monitors_acked.subscribe();
        async move {
            // The sender lives as long as the tally; if it is gone, so is the demo.
            let _ = acked.wait_for(|set| set.contains(&index)).await;
        }
    }

    /// The simulated device wrote `lines` lines to its log.
    pub fn log_lines_written(&self, lines: u64) {
        self.lock().snapshot.log_lines_written += lines;
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
        let patient = match &record.body {
            RecordBody::Observations(r) => r.patient.as_ref(),
            RecordBody::Alarm(r) => r.patient.as_ref(),
            _ => None,
        };
        if let Some(patient) = patient {
            inner.patients.insert(patient.0.clone());
        }
        let control_id = match &record.body {
            RecordBody::Observations(r) => Some(&r.control_id),
            RecordBody::Alarm(r) => {
                inner.snapshot.alarm_records += 1;
                Some(&r.control_id)
            }
            RecordBody::Measurements(_) => {
                inner.snapshot.measurement_records += 1;
                None
            }
            RecordBody::LogLines(batch) => {
                inner.snapshot.log_records += 1;
                inner.snapshot.log_lines_received += batch.lines.len() as u64;
                None
            }
            RecordBody::DeviceState(_) => {
                inner.snapshot.state_records += 1;
                None
            }
            RecordBody::GatewayAlert(_) | RecordBody::UpdateRollout(_) => None,
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

    /// Whether the cloud received an observation or alarm record about `pseudonym`.
    #[must_use]
    pub fn patient_seen(&self, pseudonym: &str) -> bool {
        self.lock().patients.contains(pseudonym)
    }

    /// The simulated modality is about to send an image.
    pub fn image_sent(&self) {
        self.lock().snapshot.images_sent += 1;
    }

    /// The gateway answered the image's C-STORE: stored (success) or not.
    pub fn image_answered(&self, stored: bool) {
        let mut inner = self.lock();
        if stored {
            inner.snapshot.images_stored += 1;
        } else {
            inner.snapshot.images_failed += 1;
        }
    }

    /// The cloud imaging ingest received an image; `good` if it passed the checks.
    pub fn image_received(&self, good: bool) {
        let mut inner = self.lock();
        inner.snapshot.images_received += 1;
        if !good {
            inner.snapshot.images_bad += 1;
        }
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
