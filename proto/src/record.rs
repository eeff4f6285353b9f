//! Records: what the spool stores and the uplink publishes.

use serde::{Deserialize, Serialize};

/// Delivery and eviction class of a record. When the spool is full the lowest class
/// is evicted first, oldest first; alarms go last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Device log lines.
    Log = 0,
    /// Device state transitions.
    State = 1,
    /// Physiological observations (PCD-01).
    Observation = 2,
    /// Alarms (PCD-04).
    Alarm = 3,
}

impl Priority {
    /// All classes, lowest (first evicted) first.
    pub const ALL: [Priority; 4] = [
        Priority::Log,
        Priority::State,
        Priority::Observation,
        Priority::Alarm,
    ];

    /// Stable small integer used in storage.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`Priority::as_u8`].
    #[must_use]
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Priority::Log),
            1 => Some(Priority::State),
            2 => Some(Priority::Observation),
            3 => Some(Priority::Alarm),
            _ => None,
        }
    }

    /// Lower-case name, as used in config keys, metrics and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Priority::Log => "log",
            Priority::State => "state",
            Priority::Observation => "observation",
            Priority::Alarm => "alarm",
        }
    }
}

/// A stable record identifier the cloud can deduplicate on: the spool's random
/// 64-bit instance id (new whenever a spool file is created) and a sequence number
/// that only grows within that spool. Rendered as `"<spool hex>-<seq>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    /// Random id of the spool file that assigned `seq`.
    pub spool: u64,
    /// Monotonic sequence number within that spool.
    pub seq: u64,
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.spool, self.seq)
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (spool, seq) = s
            .split_once('-')
            .ok_or_else(|| serde::de::Error::custom("record id must be <spool hex>-<seq>"))?;
        Ok(RecordId {
            spool: u64::from_str_radix(spool, 16).map_err(serde::de::Error::custom)?,
            seq: seq.parse().map_err(serde::de::Error::custom)?,
        })
    }
}

/// The pseudonym of a patient: `HMAC-SHA256(site key, identifier ‖ assigning authority)`,
/// hex encoded. The cloud can link a patient's data over time, but cannot learn who
/// the patient is without the site key, which never leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pseudonym(pub String);

/// Identity of the device that produced a record. Device identifiers (EUI-64,
/// application names) are kept: they are needed for device management and do not
/// by themselves link to a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIdentity {
    /// The gateway-wide device key records are ordered by (per-device FIFO).
    pub id: String,
    /// MSH-3 namespace id (sending application), when the device sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// EUI-64 or other universal id of the device (MSH-3.2), when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eui64: Option<String>,
}

/// An observation value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "v", rename_all = "lowercase")]
pub enum ObservationValue {
    /// Numeric (HL7 `NM`), kept as decimal text to preserve the device's precision.
    Numeric(String),
    /// A coded value (HL7 `CWE`/`CE`/`CNE`): code, text, coding system.
    Coded(CodedValue),
    /// Free text from an allow-listed observation code (site configuration).
    Text(String),
    /// Waveform/sample array (HL7 `NA`/`MA`), as decimal text items.
    Samples(Vec<String>),
    /// No value (e.g. an MDS/VMD containment row with OBX-11 `X`).
    None,
    /// The device sent free text here and the gateway's PHI rules removed it (the code is
    /// not on the site's free-text allow-list).
    Withheld,
}

/// A coded value (MDC or other coding system).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodedValue {
    /// Code, e.g. `150456`.
    pub code: String,
    /// Text, e.g. `MDC_PULS_OXIM_SAT_O2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// Coding system, e.g. `MDC`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system: String,
}

/// One OBX row of an IHE PCD-01 message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// OBX-3: the observation identifier (MDC code, reference id, system).
    pub code: CodedValue,
    /// OBX-2 and OBX-5.
    pub value: ObservationValue,
    /// OBX-6: units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<CodedValue>,
    /// OBX-4: dotted containment `<MDS>.<VMD>.<CHAN>.<METRIC>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub containment: String,
    /// OBX-11: observation result status (`R`, `F`, `X`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// OBX-14 as sent (HL7 DTM). Observation times are kept unshifted: they are
    /// needed clinically and, without the patient's identity, do not identify anyone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observed_at: String,
    /// OBX-18: equipment instance identifier (EUI-64).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub equipment: String,
}

/// A PCD-01 message's observations, PHI removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationReport {
    /// The device that sent the message.
    pub device: DeviceIdentity,
    /// The patient's pseudonym, when the message carried a patient identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<Pseudonym>,
    /// MSH-7 (message time) as sent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_time: String,
    /// MSH-10, so a device-side trace can be correlated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub control_id: String,
    /// OBR-4 of each order in the message, in order, with its observations.
    pub groups: Vec<ObservationGroup>,
}

/// One OBR and its OBX rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationGroup {
    /// OBR-4: universal service identifier.
    pub service: CodedValue,
    /// OBR-7: observation date/time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observed_at: String,
    /// The OBX rows.
    pub observations: Vec<Observation>,
}

/// A PCD-04 alarm (ORU^R40), PHI removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmReport {
    /// The device that raised the alarm.
    pub device: DeviceIdentity,
    /// The patient's pseudonym, when the message carried a patient identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<Pseudonym>,
    /// MSH-7 as sent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message_time: String,
    /// MSH-10.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub control_id: String,
    /// OBR-4 (e.g. `196616^MDC_EVT_ALARM^MDC`).
    pub event: CodedValue,
    /// The alarm's OBX rows (alarm source, event phase, alarm state, inactivation state, ...).
    pub observations: Vec<Observation>,
}

/// The body of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordBody {
    /// IHE PCD-01 observations.
    Observations(ObservationReport),
    /// IHE PCD-04 alarm.
    Alarm(AlarmReport),
    /// Something about the gateway itself that its operators must know (e.g. a corrupt
    /// spool was quarantined). Never carries device data.
    GatewayAlert(GatewayAlert),
    /// A device changed state (online, offline, in procedure, ...).
    DeviceState(DeviceStateChange),
    /// Named numeric readings from a device that is polled (Modbus) or reports through
    /// the agent API.
    Measurements(MeasurementReport),
    /// Lines of a device's log file, already scrubbed of PHI.
    LogLines(LogBatch),
    /// The progress of a security-update rollout across the devices it addresses.
    UpdateRollout(UpdateRolloutReport),
}

/// The state wardgate tracks for each device. Serialized in kebab-case
/// (`in-procedure`), the spelling used in the config, the API and the twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Declared, not heard from yet since the gateway started.
    Unknown,
    /// Reachable and sending (or answering polls).
    Online,
    /// Not reachable: polls fail, or the agent stopped reporting.
    Offline,
    /// Treating a patient: only clinical data flows, non-clinical work waits.
    InProcedure,
    /// Installing an update.
    Updating,
    /// The device reported a fault, or its adapter cannot work with it.
    Error,
}

impl DeviceState {
    /// The kebab-case name, as serialized.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DeviceState::Unknown => "unknown",
            DeviceState::Online => "online",
            DeviceState::Offline => "offline",
            DeviceState::InProcedure => "in-procedure",
            DeviceState::Updating => "updating",
            DeviceState::Error => "error",
        }
    }
}

/// A device state transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStateChange {
    /// The device's configured id.
    pub device: String,
    /// The state before.
    pub from: DeviceState,
    /// The state after.
    pub to: DeviceState,
    /// Why, in gateway-made words (never device free text), e.g. `3 polls failed`.
    pub reason: String,
    /// When the transition happened (Unix milliseconds).
    pub at_ms: u64,
}

/// One named reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The point's configured name, e.g. `supply_temperature`.
    pub name: String,
    /// The value after scaling.
    pub value: f64,
    /// Units, when configured (UCUM where possible).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<String>,
    /// When it was read (Unix milliseconds).
    pub at_ms: u64,
}

/// Readings from one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementReport {
    /// The device.
    pub device: DeviceIdentity,
    /// Where the readings came from: `modbus` or `agent`.
    pub source: String,
    /// True when sent because the heartbeat interval passed rather than because a value
    /// moved beyond its deadband.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub heartbeat: bool,
    /// The readings.
    pub measurements: Vec<Measurement>,
}

/// A batch of scrubbed log lines from one file of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The device.
    pub device: DeviceIdentity,
    /// The file's name (no directory), e.g. `system.log`.
    pub file: String,
    /// The lines, in file order, PHI replaced by markers such as `[NAME]`.
    pub lines: Vec<String>,
}

/// A gateway alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAlert {
    /// A stable machine-readable code, e.g. `spool.quarantined`.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

/// The progress of one update assignment (rollout) on this gateway: how many of the
/// devices it addresses are at each stage. Device ids only; never patient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRolloutReport {
    /// The assignment's id, as the cloud gave it.
    pub assignment_id: String,
    /// The TUF target it installs.
    pub target: String,
    /// Devices the assignment selects now.
    pub members: u32,
    /// Not offered yet (waiting for their wave, a maintenance window or the patient).
    pub pending: u32,
    /// Offered, not fetching yet.
    pub offered: u32,
    /// Fetching the file.
    pub downloading: u32,
    /// Have the whole file.
    pub downloaded: u32,
    /// Installing.
    pub installing: u32,
    /// Installed.
    pub installed: u32,
    /// Failed (final for this assignment).
    pub failed: u32,
    /// Deferred by the device (not failures; offered again later).
    pub deferred: u32,
    /// Waves opened so far.
    pub waves_opened: u32,
    /// Why the rollout halted (failure threshold exceeded, cancelled), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// When it halted (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_at_ms: Option<u64>,
}

/// The device key under which gateway alerts are ordered.
pub const GATEWAY_DEVICE_KEY: &str = "_gateway";

impl RecordBody {
    /// The delivery class of this body.
    #[must_use]
    pub const fn priority(&self) -> Priority {
        match self {
            RecordBody::Observations(_) => Priority::Observation,
            RecordBody::Alarm(_) => Priority::Alarm,
            RecordBody::GatewayAlert(_)
            | RecordBody::DeviceState(_)
            | RecordBody::UpdateRollout(_) => Priority::State,
            RecordBody::Measurements(_) => Priority::Observation,
            RecordBody::LogLines(_) => Priority::Log,
        }
    }

    /// The device key this record is ordered under.
    #[must_use]
    pub fn device_id(&self) -> &str {
        match self {
            RecordBody::Observations(r) => &r.device.id,
            RecordBody::Alarm(r) => &r.device.id,
            RecordBody::GatewayAlert(_) | RecordBody::UpdateRollout(_) => GATEWAY_DEVICE_KEY,
            RecordBody::DeviceState(r) => &r.device,
            RecordBody::Measurements(r) => &r.device.id,
            RecordBody::LogLines(r) => &r.device.id,
        }
    }
}

/// One record as published: its stable id, the time the gateway accepted it
/// (RFC 3339, UTC) and the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkRecord {
    /// Stable id for deduplication: delivery is at least once.
    pub id: RecordId,
    /// Delivery class.
    pub priority: Priority,
    /// When the gateway durably accepted the record (Unix milliseconds).
    pub accepted_ms: u64,
    /// The body, already PHI-free.
    pub body: RecordBody,
}

/// The payload of one MQTT publish: a batch of records from one gateway, in spool
/// order (per device, ids increase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkBatch {
    /// Always [`crate::SCHEMA_VERSION`] for payloads built by this crate.
    pub schema: u32,
    /// `gateway.id`.
    pub gateway: String,
    /// The records.
    pub records: Vec<UplinkRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_id_round_trips_through_json() {
        let id = RecordId {
            spool: 0xdead_beef,
            seq: 42,
        };
        let s = serde_json::to_string(&id).expect("serialize");
        assert_eq!(s, "\"00000000deadbeef-42\"");
        let back: RecordId = serde_json::from_str(&s).expect("deserialize");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<RecordId>("\"nodash\"").is_err());
    }

    #[test]
    fn priorities_order_alarm_last_to_evict() {
        assert!(Priority::Alarm > Priority::Observation);
        assert!(Priority::Observation > Priority::State);
        assert!(Priority::State > Priority::Log);
        for p in Priority::ALL {
            assert_eq!(Priority::from_u8(p.as_u8()), Some(p));
        }
        assert_eq!(Priority::from_u8(9), None);
    }
}
