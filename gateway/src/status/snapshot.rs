//! What the status endpoint shows: one [`StatusSnapshot`], taken on request from a
//! [`StatusSource`], serialized as `/status.json`, rendered as `/metrics` and as the
//! console text of `wardgate status`.
//!
//! Invariants:
//! * A snapshot carries figures and gateway-made words only: device ids and kinds from
//!   the configuration, counters, states, times, error and alert messages written by the
//!   gateway. Nothing a device sent (no payload, no free text) and so no PHI.
//! * Times are wall-clock Unix milliseconds taken by the source; ages (`uptime_secs`,
//!   `oldest_record_age_secs`) are computed by the source against the same clock
//!   (`generated_at_ms`), so a reader never mixes its own clock into them.
//! * The JSON shape only grows: fields are added with `#[serde(default)]`, never removed
//!   or re-typed, so scripts written against `wardgate status --json` keep working.

use serde::{Deserialize, Serialize};
use wardgate_device_adapters::hl7::ListenerStatsSnapshot;
use wardgate_proto::{DeviceState, Priority};

use crate::spool::SpoolStats;
use crate::uplink::UplinkStatus;

/// Everything the status page, `/metrics` and `wardgate status` show, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    /// When the snapshot was taken (Unix milliseconds, the gateway's clock).
    pub generated_at_ms: u64,
    /// The gateway itself.
    pub gateway: GatewayInfo,
    /// Every configured device, in configuration order.
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
    /// The store-and-forward spool.
    pub spool: SpoolFigures,
    /// The cloud uplink.
    pub uplink: UplinkFigures,
    /// The HL7 v2 / MLLP listener.
    pub hl7: Hl7Figures,
    /// The imaging path (DICOM receiver, bulk upload outbox and uploader); `None` when
    /// `[bulk_upload]` is not configured.
    #[serde(default)]
    pub imaging: Option<ImagingFigures>,
    /// Update targets staged for devices; `None` when updates are not configured
    /// (`[updates]`; the page and the console say so rather than showing an empty list).
    #[serde(default)]
    pub patches: Option<Vec<StagedPatch>>,
    /// Conditions a technician should look at, newest first.
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

/// The imaging path's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImagingFigures {
    /// Files waiting in the outbox for the receiver's commit.
    pub outbox_files: u64,
    /// Bytes they take.
    pub outbox_bytes: u64,
    /// The outbox's budget.
    pub outbox_budget_bytes: u64,
    /// Age of the oldest waiting file, seconds; `None` when the outbox is empty.
    #[serde(default)]
    pub oldest_file_age_secs: Option<u64>,
    /// Files the receiver committed since start.
    pub files_uploaded: u64,
    /// Payload bytes sent since start.
    pub bytes_sent: u64,
    /// Whole-file hash mismatches the receiver reported (each retried from zero).
    pub hash_mismatches: u64,
    /// Uploads held back by the patient-first rule.
    pub deferrals: u64,
    /// Failed or lost connections to the receiver.
    pub connection_failures: u64,
    /// DICOM objects de-identified into the outbox since start.
    pub dicom_stored: u64,
    /// DICOM objects quarantined (burned-in annotation, risky modality) since start.
    pub dicom_quarantined: u64,
    /// DICOM objects refused with a failure status since start.
    pub dicom_refused: u64,
}

/// The gateway's identity and uptime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// `gateway.id` from the configuration.
    pub id: String,
    /// The wardgate version (the crate version of this build).
    pub version: String,
    /// When this process started (Unix milliseconds).
    pub started_at_ms: u64,
    /// Seconds since `started_at_ms`, as of the snapshot.
    pub uptime_secs: u64,
}

impl GatewayInfo {
    /// The info for this build, started at `started_at_ms`, as of `now_ms`.
    #[must_use]
    pub fn new(id: impl Into<String>, started_at_ms: u64, now_ms: u64) -> Self {
        GatewayInfo {
            id: id.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms,
            uptime_secs: now_ms.saturating_sub(started_at_ms) / 1000,
        }
    }
}

/// One configured device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device's configured id.
    pub id: String,
    /// What it is, as configured (e.g. `patient-monitor`, `infusion-pump`).
    pub kind: String,
    /// The adapter that talks to it: `hl7`, `modbus`, `agent`, `logfile`, ...
    pub adapter: String,
    /// Its current state.
    pub state: DeviceState,
    /// When it entered `state` (Unix milliseconds; the gateway's start for `unknown`).
    pub state_since_ms: u64,
    /// When data from it last reached the spool (Unix milliseconds); `None`: not since start.
    #[serde(default)]
    pub last_data_ms: Option<u64>,
}

/// A figure per spool priority class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerClass {
    /// Device log lines.
    pub log: u64,
    /// Device state changes and gateway alerts.
    pub state: u64,
    /// Observations.
    pub observation: u64,
    /// Alarms.
    pub alarm: u64,
}

impl PerClass {
    /// From an array indexed by [`Priority::as_u8`], as [`SpoolStats`] keeps them.
    #[must_use]
    pub const fn from_array(values: [u64; 4]) -> Self {
        PerClass {
            log: values[0],
            state: values[1],
            observation: values[2],
            alarm: values[3],
        }
    }

    /// The figure of one class.
    #[must_use]
    pub const fn get(&self, class: Priority) -> u64 {
        match class {
            Priority::Log => self.log,
            Priority::State => self.state,
            Priority::Observation => self.observation,
            Priority::Alarm => self.alarm,
        }
    }

    /// The sum over all classes.
    #[must_use]
    pub const fn total(&self) -> u64 {
        self.log
            .saturating_add(self.state)
            .saturating_add(self.observation)
            .saturating_add(self.alarm)
    }
}

/// Spool figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolFigures {
    /// Records held (waiting for the cloud's acknowledgement), all classes.
    pub records: u64,
    /// Records held, per class.
    pub records_by_class: PerClass,
    /// Of `records`, those handed to the uplink and not yet acknowledged.
    pub leased_records: u64,
    /// Budget charge of the held records, in bytes.
    pub bytes: u64,
    /// The configured budget, in bytes.
    pub budget_bytes: u64,
    /// Age of the oldest held record, in seconds; `None` when the spool is empty.
    #[serde(default)]
    pub oldest_record_age_secs: Option<u64>,
    /// Records evicted to make room for higher classes since start, per class.
    pub evicted_records: PerClass,
    /// Records dropped because their class's time to live passed, since start, per class.
    pub expired_records: PerClass,
    /// Records refused because the budget was taken by their class or higher, since start.
    pub refused_records: u64,
    /// Records accepted since start.
    pub appended_records: u64,
    /// Records deleted after the cloud acknowledged them, since start.
    pub acked_records: u64,
}

impl SpoolFigures {
    /// The figures of `stats`, with the oldest record's age as of `now_ms`.
    #[must_use]
    pub fn from_stats(stats: &SpoolStats, now_ms: u64) -> Self {
        let records_by_class = PerClass::from_array(stats.records);
        let records = records_by_class.total();
        SpoolFigures {
            records,
            records_by_class,
            leased_records: stats.leased,
            bytes: stats.bytes,
            budget_bytes: stats.budget_bytes,
            // The acceptance time outlives a record only until its deletion; an empty
            // spool has no oldest record whatever the stats say.
            oldest_record_age_secs: stats
                .oldest_accepted_ms
                .filter(|_| records > 0)
                .map(|oldest| now_ms.saturating_sub(oldest) / 1000),
            evicted_records: PerClass::from_array(stats.evicted),
            expired_records: PerClass::from_array(stats.expired),
            refused_records: stats.refused_full,
            appended_records: stats.appended_total,
            acked_records: stats.acked_total,
        }
    }
}

/// Uplink figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkFigures {
    /// Whether a broker session is established now.
    pub connected: bool,
    /// When `connected` last changed (Unix milliseconds); 0: never connected since start.
    pub since_ms: u64,
    /// The most recent error, kept after recovery so a technician can see what happened.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Records the broker acknowledged since start.
    pub published_records: u64,
    /// Publishes the broker acknowledged since start.
    pub published_batches: u64,
    /// Records published and not yet acknowledged, or leased and waiting for the window.
    pub in_flight_records: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Connection attempts or sessions that ended in an error since start.
    pub connection_failures: u64,
    /// Records held back because they can never be published (see `UplinkStatus`).
    pub held_back_records: u64,
    /// When the client certificate expires (Unix seconds), once it has been loaded.
    #[serde(default)]
    pub client_cert_not_after: Option<i64>,
}

impl From<&UplinkStatus> for UplinkFigures {
    fn from(s: &UplinkStatus) -> Self {
        UplinkFigures {
            connected: s.connected,
            since_ms: s.since_ms,
            last_error: s.last_error.clone(),
            published_records: s.published_records,
            published_batches: s.published_batches,
            in_flight_records: s.in_flight_records,
            connects: s.connects,
            connection_failures: s.connection_failures,
            held_back_records: s.held_back_records,
            client_cert_not_after: s.client_cert_not_after,
        }
    }
}

/// HL7 listener figures, counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hl7Figures {
    /// Connections open now.
    pub connections_active: u64,
    /// Connections admitted.
    pub connections_accepted: u64,
    /// Connections closed at once because `hl7.max_connections` were open.
    pub connections_refused: u64,
    /// Connections closed at once because the source is not in `hl7.allow_sources`.
    pub connections_denied: u64,
    /// Connections closed because no frame completed within the idle timeout.
    pub idle_timeouts: u64,
    /// Messages durably stored and acknowledged.
    pub messages_accepted: u64,
    /// Messages answered with an error (AE/CE).
    pub messages_errored: u64,
    /// Messages rejected (AR/CR): rate-limited, oversized, over budget, during shutdown.
    pub messages_rejected: u64,
    /// Frames larger than `hl7.max_message_bytes`.
    pub frames_too_large: u64,
    /// Messages refused by the per-source rate limit (also counted in `messages_rejected`).
    pub rate_limited: u64,
    /// Bytes skipped outside MLLP frames.
    pub garbage_bytes: u64,
}

impl From<ListenerStatsSnapshot> for Hl7Figures {
    fn from(s: ListenerStatsSnapshot) -> Self {
        Hl7Figures {
            connections_active: s.connections_active,
            connections_accepted: s.connections_accepted,
            connections_refused: s.connections_refused,
            connections_denied: s.connections_denied,
            idle_timeouts: s.idle_timeouts,
            messages_accepted: s.messages_accepted,
            messages_errored: s.messages_errored,
            messages_rejected: s.messages_rejected,
            frames_too_large: s.frames_too_large,
            rate_limited: s.rate_limited,
            garbage_bytes: s.garbage_bytes,
        }
    }
}

/// An update target verified and staged on the gateway, with the rollouts that use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedPatch {
    /// The TUF target name.
    pub target: String,
    /// Its size, in bytes.
    pub bytes: u64,
    /// Its SHA-256 (hex), as verified against the TUF targets metadata.
    pub sha256: String,
    /// The rollouts offering it, one line each
    /// (`<assignment>: 3/10 installed, 1 failed, 2 deferred[, halted: ...]`).
    #[serde(default)]
    pub rollouts: Vec<String>,
}

/// A condition a technician should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// When it was raised (Unix milliseconds).
    pub at_ms: u64,
    /// A stable machine-readable code, e.g. `spool-evicting`, `client-cert-expiring`.
    pub code: String,
    /// What happened and what to do, in the gateway's words.
    pub message: String,
}

/// Where the status endpoint gets its figures; the daemon implements it over its spool,
/// uplink, listeners and device adapters.
///
/// `snapshot` is called once per request (page polls every 2 s, Prometheus scrapes) on
/// the server's async worker: it must be quick and must not block on I/O.
pub trait StatusSource: Send + Sync + 'static {
    /// The figures as of now.
    fn snapshot(&self) -> StatusSnapshot;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_figures_sum_classes_and_age_the_oldest_record() {
        let stats = SpoolStats {
            records: [1, 2, 3, 4],
            oldest_accepted_ms: Some(10_000),
            evicted: [5, 0, 0, 0],
            ..SpoolStats::default()
        };
        let f = SpoolFigures::from_stats(&stats, 75_500);
        assert_eq!(f.records, 10);
        assert_eq!(f.records_by_class.get(Priority::Observation), 3);
        assert_eq!(f.oldest_record_age_secs, Some(65));
        assert_eq!(f.evicted_records.log, 5);
    }

    #[test]
    fn an_empty_spool_has_no_oldest_record() {
        let stats = SpoolStats {
            oldest_accepted_ms: Some(10_000),
            ..SpoolStats::default()
        };
        assert_eq!(
            SpoolFigures::from_stats(&stats, 20_000).oldest_record_age_secs,
            None
        );
    }

    #[test]
    fn a_clock_step_back_does_not_underflow() {
        let stats = SpoolStats {
            records: [1, 0, 0, 0],
            oldest_accepted_ms: Some(50_000),
            ..SpoolStats::default()
        };
        assert_eq!(
            SpoolFigures::from_stats(&stats, 1_000).oldest_record_age_secs,
            Some(0)
        );
        assert_eq!(GatewayInfo::new("gw", 9_000, 1_000).uptime_secs, 0);
    }
}
