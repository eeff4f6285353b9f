//! The device/gateway twin: the gateway's reported state and the operator's desired
//! settings, carried over the existing MQTT uplink through each cloud profile's own
//! twin/shadow mechanism.
//!
//! # Topics (part of the product interface)
//!
//! | | `generic` | `azure-iot-hub` | `aws-iot-core` (classic shadow) |
//! |---|---|---|---|
//! | Reported | `wardgate/<id>/twin/reported`, retained, the whole document | `$iothub/twin/PATCH/properties/reported/?$rid=<n>`, a merge patch | `$aws/things/<id>/shadow/update`, `{"state":{"reported":<document>}}` |
//! | Desired (pushed) | `wardgate/<id>/twin/desired`, retained, the whole desired document | `$iothub/twin/PATCH/properties/desired/?$version=<v>`, a patch | `$aws/things/<id>/shadow/update/delta`, `{"state":<delta>}` |
//! | Desired (fetched on connect) | the retained message, delivered on subscribe | `$iothub/twin/GET/?$rid=<n>` answered on `$iothub/twin/res/200/?$rid=<n>` with `{"desired":{...},"reported":{...}}` | `$aws/things/<id>/shadow/get` answered on `.../get/accepted` with `{"state":{"desired":{...}}}` |
//! | Subscriptions (QoS 1, after every CONNACK) | `wardgate/<id>/twin/desired` | `$iothub/twin/res/#`, `$iothub/twin/PATCH/properties/desired/#` | `.../shadow/update/delta`, `.../shadow/get/accepted`, `.../shadow/get/rejected`, `.../shadow/update/rejected` |
//! | Device-id keys | as is | `.` written as `%2E` (IoT Hub forbids `.` in property names) | as is |
//!
//! # The reported document
//!
//! ```json
//! {"schema":1,
//!  "gateway":{"version":"0.1.0",
//!             "spool":{"records":12,"bytes":3456,"budget_bytes":1073741824},
//!             "uplink":{"connects":1,"connection_failures":0,"held_back_records":0,
//!                       "client_cert_not_after":1790000000,"last_error":null}},
//!  "devices":{"pump-1":{"kind":"infusion-pump","group":"icu","adapters":"modbus",
//!                       "state":"online","state_since_ms":1700000000000,
//!                       "poll_interval_ms":1000}}}
//! ```
//!
//! Settings sit at the same path as the desired keys (`devices.<id>.poll_interval_ms`),
//! so that AWS's delta and IoT Hub's desired-vs-reported comparison converge once a
//! setting is applied. Fast-moving counters (records published, last data time) are
//! deliberately absent: every change of the document costs a cloud message.
//!
//! # Publishing reported state: QoS 0
//!
//! Reported documents (and the Azure/AWS GET requests) are published at QoS 0. Each
//! document supersedes the previous one entirely (or, as a merge patch, for every key it
//! carries), so a lost one is repaired by the next, and one is always sent after every
//! CONNACK. QoS 1 would buy nothing but a second kind of packet id in the uplink's
//! PUBACK bookkeeping: with QoS 0, rumqttc reports every twin publish as
//! `Outgoing::Publish(0)` (QoS 1 packet ids are never 0), so the driver tells twin traffic
//! from record batches by the id alone and the n-th non-zero `Outgoing::Publish` still
//! belongs to the n-th batch. A document is published on connect, then when it changed,
//! at most once per [`TwinOptions::min_report_interval`].
//!
//! # Desired state: an allow-list, nothing else
//!
//! Only two settings can be changed from the cloud, and nothing from the cloud makes the
//! gateway send anything to a device:
//!
//! * `devices.<device id>.poll_interval_ms`: integer in
//!   [`core::POLL_INTERVAL_MS`], for a declared device with a Modbus adapter;
//! * `devices.<device id>.log_shipping`: boolean, for a declared device with a log adapter.
//!
//! `null` for one of these settings (how IoT Hub and AWS delete a desired property)
//! means "back to the site configuration's value". Metadata (`$version`, `$metadata`,
//! `version`, `timestamp`, `metadata`, `clientToken`, any `$`-key) is ignored. Anything
//! else is refused, key by key, with a reason ([`core::RefusalReason`]); refusing one key
//! never refuses the valid keys beside it. Payloads over [`core::MAX_DESIRED_PAYLOAD`] are
//! refused whole. The outcome goes to the daemon ([`TwinChannels::outcomes`]), which
//! applies accepted settings and writes refusals to the audit log. Payloads are never
//! logged; keys and reasons are.

pub mod core;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use wardgate_proto::DeviceState;

pub use self::core::{
    DesiredOutcome, DesiredSetting, DesiredSource, DeviceCapabilities, Refusal, RefusalReason,
};
pub use self::session::TwinSession;

use crate::devices::DeviceView;
use crate::spool::SpoolStats;

/// What the daemon knows about the gateway and its devices, for the reported document.
/// The uplink adds its own status (connects, certificate expiry, last error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TwinReport {
    /// The gateway's software version.
    pub version: String,
    /// Spool depth.
    pub spool: SpoolReport,
    /// Every declared device, in a stable order (the registry's is by id).
    pub devices: Vec<DeviceReport>,
    /// Every update rollout on this gateway, in arrival order.
    pub updates: Vec<RolloutReport>,
}

/// One update rollout as reported in the twin (`updates.rollouts.<assignment id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutReport {
    /// The assignment.
    #[serde(skip)]
    pub assignment_id: String,
    /// Its TUF target.
    pub target: String,
    /// Devices it selects now.
    pub members: u32,
    /// Installed.
    pub installed: u32,
    /// Failed.
    pub failed: u32,
    /// Deferred (not failures).
    pub deferred: u32,
    /// Why it halted, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
}

/// A device's place in an update rollout, as reported in the twin (`devices.<id>.update`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceUpdateReport {
    /// The assignment.
    pub assignment: String,
    /// `offered`, `downloading`, `downloaded`, `installing`, `installed`, `failed`, `deferred`.
    pub stage: String,
    /// The device's reason code for `failed` or `deferred`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Spool depth as reported in the twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SpoolReport {
    /// Records held (all classes, leased or not).
    pub records: u64,
    /// Budget charge of the held records.
    pub bytes: u64,
    /// The configured budget.
    pub budget_bytes: u64,
}

impl SpoolReport {
    /// The twin's view of the spool's statistics.
    #[must_use]
    pub fn from_stats(stats: &SpoolStats) -> Self {
        SpoolReport {
            records: stats.records.iter().sum(),
            bytes: stats.bytes,
            budget_bytes: stats.budget_bytes,
        }
    }
}

/// One device as reported in the twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// Device id.
    pub id: String,
    /// What it is.
    pub kind: String,
    /// Its group.
    pub group: String,
    /// Adapters serving it, comma-separated.
    pub adapters: String,
    /// Current state.
    pub state: DeviceState,
    /// Since when (Unix ms).
    pub state_since_ms: u64,
    /// The poll interval in effect, for a Modbus device.
    pub poll_interval_ms: Option<u64>,
    /// Whether log shipping is on, for a device with a log adapter.
    pub log_shipping: Option<bool>,
    /// Where it stands with its current (or latest) update, if any.
    pub update: Option<DeviceUpdateReport>,
}

impl DeviceReport {
    /// A report from the registry's view and the settings in effect.
    #[must_use]
    pub fn from_view(
        view: &DeviceView,
        poll_interval_ms: Option<u64>,
        log_shipping: Option<bool>,
    ) -> Self {
        DeviceReport {
            id: view.id.clone(),
            kind: view.kind.clone(),
            group: view.group.clone(),
            adapters: view.adapters.clone(),
            state: view.state,
            state_since_ms: view.state_since_ms,
            poll_interval_ms,
            log_shipping,
            update: None,
        }
    }
}

/// Tuning of the twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinOptions {
    /// Least time between two reported documents (a change inside it is published when
    /// it ends). The first document after a connect is sent at once.
    pub min_report_interval: Duration,
}

impl TwinOptions {
    /// Default least time between reported documents.
    pub const DEFAULT_MIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);
}

impl Default for TwinOptions {
    fn default() -> Self {
        TwinOptions {
            min_report_interval: Self::DEFAULT_MIN_REPORT_INTERVAL,
        }
    }
}

/// How long the uplink waits for room in [`TwinChannels::outcomes`].
pub const OUTCOME_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The declared devices and what they can be configured for, asked for each desired
/// document (rarely: on connect and when the operator changes something).
pub type DeviceCatalog = Arc<dyn Fn() -> Vec<DeviceCapabilities> + Send + Sync>;

/// Everything the MQTT uplink needs to run the twin; pass it to
/// [`crate::uplink::mqtt::run_with_twin`].
pub struct TwinChannels {
    /// The latest report; `None` until the daemon has one (nothing is published before).
    pub reports: watch::Receiver<Option<TwinReport>>,
    /// Outcomes of desired documents, for the daemon to apply and audit. Bounded: if it
    /// is full the uplink waits up to [`OUTCOME_SEND_TIMEOUT`] (holding records back
    /// meanwhile), then drops the outcome with an error log. Desired documents are rare;
    /// a capacity of 16 is plenty.
    pub outcomes: mpsc::Sender<DesiredOutcome>,
    /// The declared devices' capabilities.
    pub devices: DeviceCatalog,
    /// Tuning.
    pub options: TwinOptions,
}

impl std::fmt::Debug for TwinChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinChannels")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Audit entry kind of an accepted desired setting.
pub const AUDIT_ACCEPTED: &str = "twin.accepted";
/// Audit entry kind of a refused desired key.
pub const AUDIT_REFUSED: &str = "twin.refused";

/// Writes one audit entry per accepted setting ([`AUDIT_ACCEPTED`], subject the key,
/// detail the value) and per refused key ([`AUDIT_REFUSED`], subject the key, detail the
/// reason), each detail naming the document's source and version. Values of refused keys
/// are never written: they are the cloud's, unchecked.
///
/// # Errors
/// The first [`crate::audit::AuditError`]; entries before it are written.
pub async fn audit_outcome(
    audit: &Arc<crate::audit::AuditLog>,
    outcome: &DesiredOutcome,
) -> Result<(), crate::audit::AuditError> {
    let origin = match outcome.version {
        Some(version) => format!("{} version {version}", outcome.source.name()),
        None => outcome.source.name().to_owned(),
    };
    for setting in &outcome.accepted {
        let detail = format!("set to {} ({origin})", setting.value_text());
        audit
            .append_async(AUDIT_ACCEPTED, &setting.key(), &detail)
            .await?;
    }
    for refusal in &outcome.refused {
        let detail = format!("{} ({origin})", refusal.reason);
        audit
            .append_async(AUDIT_REFUSED, &refusal.key, &detail)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::audit::{verify, AuditLog};
    use crate::uplink::mqtt::Profile;

    #[tokio::test]
    async fn outcomes_are_audited_key_by_key_without_refused_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Arc::new(AuditLog::open(&path).unwrap());
        let outcome = core::desired_changes(
            Profile::AzureIotHub,
            DesiredSource::AzurePatch,
            br#"{"devices":{"pump-1":{"poll_interval_ms":2000,"firmware_url":"http://secret"}},"$version":7}"#,
            &[DeviceCapabilities::from_adapters("pump-1", ["modbus"])],
        );
        audit_outcome(&audit, &outcome).await.unwrap();
        let report = verify(&path).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.entries, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(r#""kind":"twin.accepted","subject":"devices.pump-1.poll_interval_ms","detail":"set to 2000 (azure-patch version 7)""#), "{}", lines[0]);
        assert!(lines[1].contains(r#""kind":"twin.refused","subject":"devices.pump-1.firmware_url","detail":"not an allowed setting (azure-patch version 7)""#), "{}", lines[1]);
        assert!(!text.contains("secret"));
    }
}
