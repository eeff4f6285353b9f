//! The twin's protocol logic, sans-IO: per-profile topics, the reported document, the
//! allow-list parser for desired documents, and the debounce of reported publishes.
//! No tokio, no clock (time is an argument), no MQTT client types.
//!
//! Invariants:
//! * [`desired_changes`] never panics and never fails as a whole except for an unusable
//!   payload (too large, not JSON, no object where the profile puts one); otherwise each
//!   key is accepted or refused on its own.
//! * An accepted [`DesiredSetting`] is always one of the two allow-listed settings, for a
//!   declared device that has the adapter the setting belongs to, with a value in range.
//! * Keys in a [`Refusal`] are bounded in length and free of control characters, so they
//!   can go to logs and the audit log; values never appear in a refusal.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{DeviceReport, TwinReport};
use crate::uplink::mqtt::Profile;
use crate::uplink::UplinkStatus;

/// Largest desired payload accepted; larger ones are refused whole.
pub const MAX_DESIRED_PAYLOAD: usize = 64 * 1024;
/// Accepted values of `poll_interval_ms`.
pub const POLL_INTERVAL_MS: RangeInclusive<u64> = 100..=3_600_000;
/// Most refusals listed per document; the rest are summed up in one last refusal, so a
/// hostile document cannot flood the audit log.
pub const MAX_REFUSALS: usize = 32;
/// Longest key segment kept in a refusal (longer ones are cut and marked with `…`).
pub const MAX_KEY_SEGMENT: usize = 64;
/// Version of the reported document's layout.
pub const REPORTED_SCHEMA: u32 = 1;
/// Key used in refusals that concern the whole document.
pub const DOCUMENT_KEY: &str = "(document)";

/// IoT Hub's limit for the reported properties of a twin.
pub const AZURE_MAX_REPORTED: usize = 32 * 1024;
/// AWS IoT's limit for a shadow document.
pub const AWS_MAX_REPORTED: usize = 8 * 1024;
/// The generic profile's limit for a reported document.
pub const GENERIC_MAX_REPORTED: usize = 64 * 1024;

/// Setting names (the last segment of a desired key).
const POLL_INTERVAL: &str = "poll_interval_ms";
const LOG_SHIPPING: &str = "log_shipping";
/// Keys the clouds add beside the settings; ignored at the top of the desired section.
const METADATA_KEYS: [&str; 4] = ["version", "timestamp", "metadata", "clientToken"];

/// What a declared device can be configured for from the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCapabilities {
    /// Device id.
    pub id: String,
    /// It has a Modbus adapter (so `poll_interval_ms` applies).
    pub modbus: bool,
    /// It has a log adapter (so `log_shipping` applies).
    pub logs: bool,
}

impl DeviceCapabilities {
    /// Capabilities from a device's adapter names (`hl7`, `modbus`, `logs`, `agent`).
    #[must_use]
    pub fn from_adapters<'a>(id: &str, adapters: impl IntoIterator<Item = &'a str>) -> Self {
        let mut capabilities = DeviceCapabilities {
            id: id.to_owned(),
            modbus: false,
            logs: false,
        };
        for adapter in adapters {
            match adapter.trim() {
                "modbus" => capabilities.modbus = true,
                "logs" => capabilities.logs = true,
                _ => {}
            }
        }
        capabilities
    }

    /// Capabilities of a device as the registry shows it.
    #[must_use]
    pub fn from_view(view: &crate::devices::DeviceView) -> Self {
        Self::from_adapters(&view.id, view.adapters.split(','))
    }
}

/// One accepted change. `None` means "back to the site configuration's value" (the
/// cloud deleted the desired property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredSetting {
    /// Modbus poll interval of a device.
    PollInterval {
        /// Device id.
        device: String,
        /// Milliseconds, within [`POLL_INTERVAL_MS`].
        interval_ms: Option<u64>,
    },
    /// Whether a device's logs are shipped.
    LogShipping {
        /// Device id.
        device: String,
        /// On or off.
        enabled: Option<bool>,
    },
}

impl DesiredSetting {
    /// The device the setting is for.
    #[must_use]
    pub fn device(&self) -> &str {
        match self {
            DesiredSetting::PollInterval { device, .. }
            | DesiredSetting::LogShipping { device, .. } => device,
        }
    }

    /// The desired key, e.g. `devices.pump-1.poll_interval_ms`.
    #[must_use]
    pub fn key(&self) -> String {
        let setting = match self {
            DesiredSetting::PollInterval { .. } => POLL_INTERVAL,
            DesiredSetting::LogShipping { .. } => LOG_SHIPPING,
        };
        format!("devices.{}.{setting}", self.device())
    }

    /// The value as text (`1000`, `true`, `default`), for logs and the audit log.
    #[must_use]
    pub fn value_text(&self) -> String {
        match self {
            DesiredSetting::PollInterval {
                interval_ms: Some(ms),
                ..
            } => ms.to_string(),
            DesiredSetting::LogShipping {
                enabled: Some(on), ..
            } => on.to_string(),
            _ => "default".to_owned(),
        }
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// The payload exceeds [`MAX_DESIRED_PAYLOAD`].
    PayloadTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The payload is not JSON (or not UTF-8, or nested too deeply).
    NotJson,
    /// A JSON object was expected here.
    NotAnObject,
    /// The key is not on the allow-list.
    UnknownKey,
    /// No declared device has this id.
    UndeclaredDevice,
    /// The device has no adapter this setting applies to.
    NotApplicable {
        /// The adapter the setting needs.
        needs: &'static str,
    },
    /// The value has the wrong JSON type.
    WrongType {
        /// What is expected.
        expected: &'static str,
    },
    /// The value is outside the accepted range.
    OutOfRange {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// More entries than one document may carry.
    TooMany {
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_REFUSALS`] keys were refused; this many more were not listed.
    TooManyRefusals {
        /// Refusals not listed.
        more: usize,
    },
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::PayloadTooLarge { bytes } => write!(
                f,
                "payload of {bytes} bytes exceeds the {MAX_DESIRED_PAYLOAD}-byte limit"
            ),
            RefusalReason::NotJson => f.write_str("payload is not a JSON document"),
            RefusalReason::NotAnObject => f.write_str("a JSON object is expected here"),
            RefusalReason::UnknownKey => f.write_str("not an allowed setting"),
            RefusalReason::UndeclaredDevice => f.write_str("no declared device has this id"),
            RefusalReason::NotApplicable { needs } => {
                write!(f, "the device has no {needs} adapter")
            }
            RefusalReason::WrongType { expected } => write!(f, "{expected} expected"),
            RefusalReason::OutOfRange { min, max } => {
                write!(f, "value outside {min}..={max}")
            }
            RefusalReason::TooMany { max } => write!(f, "more than {max} entries"),
            RefusalReason::TooManyRefusals { more } => {
                write!(f, "{more} more keys refused (not listed)")
            }
        }
    }
}

/// A refused key and why. Keys are cleaned for logging (see the module invariants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Dotted key, e.g. `devices.pump-1.poll_interval_ms`, or [`DOCUMENT_KEY`].
    pub key: String,
    /// Why.
    pub reason: RefusalReason,
}

/// Where a desired document came from, which says where the settings sit in it and
/// whether it is the complete desired state or a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesiredSource {
    /// `generic`: the retained document on `wardgate/<id>/twin/desired` (complete).
    GenericDocument,
    /// IoT Hub: a desired-properties patch.
    AzurePatch,
    /// IoT Hub: the `desired` section of a full twin (answer to GET; complete).
    AzureFullTwin,
    /// AWS: `update/delta`, `{"state":{...}}` (the keys that differ from reported).
    AwsDelta,
    /// AWS: `get/accepted`, `{"state":{"desired":{...}}}` (complete).
    AwsShadow,
}

impl DesiredSource {
    /// Whether the document is the complete desired state: settings it does not mention
    /// have no desired value (so they return to the site configuration). A patch or a
    /// delta only says what changed.
    #[must_use]
    pub const fn is_complete(self) -> bool {
        matches!(
            self,
            DesiredSource::GenericDocument
                | DesiredSource::AzureFullTwin
                | DesiredSource::AwsShadow
        )
    }

    /// A short name for logs and the audit log.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DesiredSource::GenericDocument => "generic-document",
            DesiredSource::AzurePatch => "azure-patch",
            DesiredSource::AzureFullTwin => "azure-full-twin",
            DesiredSource::AwsDelta => "aws-delta",
            DesiredSource::AwsShadow => "aws-shadow",
        }
    }
}

/// The result of one desired document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredOutcome {
    /// Where it came from.
    pub source: DesiredSource,
    /// Whether it is the complete desired state ([`DesiredSource::is_complete`]).
    pub complete: bool,
    /// The cloud's version of the desired state (IoT Hub `$version`, AWS `version`).
    pub version: Option<u64>,
    /// Settings to apply, in document order.
    pub accepted: Vec<DesiredSetting>,
    /// Keys refused, in document order.
    pub refused: Vec<Refusal>,
    /// Update assignments and cancellations under `updates.assignments`, in document
    /// order, passed on unparsed: the updates manager validates each against its schema
    /// and the TUF metadata, and audits the result.
    pub update_instructions: Vec<UpdateInstruction>,
}

/// One entry of the desired `updates.assignments` object.
#[derive(Clone, PartialEq, Eq)]
pub struct UpdateInstruction {
    /// The assignment id (the entry's key).
    pub id: String,
    /// The assignment document (the entry's value, with `"id"` set to the key), or `None`
    /// when the cloud deleted the entry (`null`): cancel the assignment.
    pub document: Option<Vec<u8>>,
}

impl std::fmt::Debug for UpdateInstruction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateInstruction")
            .field("id", &self.id)
            .field("document_bytes", &self.document.as_ref().map(Vec::len))
            .finish()
    }
}

/// Most update instructions taken from one desired document.
pub const MAX_UPDATE_INSTRUCTIONS: usize = 64;

impl DesiredOutcome {
    fn new(source: DesiredSource) -> Self {
        DesiredOutcome {
            source,
            complete: source.is_complete(),
            version: None,
            accepted: Vec::new(),
            refused: Vec::new(),
            update_instructions: Vec::new(),
        }
    }

    fn refuse_document(mut self, reason: RefusalReason) -> Self {
        self.refused.push(Refusal {
            key: DOCUMENT_KEY.to_owned(),
            reason,
        });
        self
    }
}

/// What an incoming publish is, for the twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingTopic {
    /// A desired document.
    Desired(DesiredSource),
    /// IoT Hub's answer to a request (`$iothub/twin/res/<status>/?$rid=<rid>`); a 200
    /// carries the full twin ([`DesiredSource::AzureFullTwin`]).
    AzureResponse {
        /// HTTP-like status.
        status: u16,
        /// The request id it answers, if it parses.
        rid: Option<u32>,
    },
    /// AWS refused the shadow GET.
    AwsGetRejected,
    /// AWS refused a reported update.
    AwsUpdateRejected,
    /// Not a twin topic of this gateway.
    Unrelated,
}

/// The twin topics of one gateway under one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinTopics {
    profile: Profile,
    gateway_id: String,
    /// `wardgate/<id>/twin` or `$aws/things/<id>/shadow`.
    base: String,
}

const AZURE_RES: &str = "$iothub/twin/res/";
const AZURE_DESIRED_PATCH: &str = "$iothub/twin/PATCH/properties/desired/";

impl TwinTopics {
    /// Topics for `gateway_id` (already validated by the uplink configuration).
    #[must_use]
    pub fn new(profile: Profile, gateway_id: &str) -> Self {
        let base = match profile {
            Profile::Generic => format!("wardgate/{gateway_id}/twin"),
            Profile::AzureIotHub => "$iothub/twin".to_owned(),
            Profile::AwsIotCore => format!("$aws/things/{gateway_id}/shadow"),
        };
        TwinTopics {
            profile,
            gateway_id: gateway_id.to_owned(),
            base,
        }
    }

    /// The profile.
    #[must_use]
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The gateway id.
    #[must_use]
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Topic filters to subscribe to after every CONNACK.
    #[must_use]
    pub fn subscriptions(&self) -> Vec<String> {
        match self.profile {
            Profile::Generic => vec![format!("{}/desired", self.base)],
            Profile::AzureIotHub => {
                vec![format!("{AZURE_RES}#"), format!("{AZURE_DESIRED_PATCH}#")]
            }
            Profile::AwsIotCore => [
                "update/delta",
                "get/accepted",
                "get/rejected",
                "update/rejected",
            ]
            .iter()
            .map(|suffix| format!("{}/{suffix}", self.base))
            .collect(),
        }
    }

    /// Topic for a reported document; `rid` is IoT Hub's request id (unused elsewhere).
    #[must_use]
    pub fn reported(&self, rid: u32) -> String {
        match self.profile {
            Profile::Generic => format!("{}/reported", self.base),
            Profile::AzureIotHub => {
                format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
            }
            Profile::AwsIotCore => format!("{}/update", self.base),
        }
    }

    /// Whether reported documents are retained (only `generic`: a late subscriber sees
    /// the current state, as IoT Hub's and AWS's stored twins provide).
    #[must_use]
    pub fn reported_retained(&self) -> bool {
        self.profile == Profile::Generic
    }

    /// The request fetching the full desired state on connect (topic, payload); none for
    /// `generic`, whose retained desired document arrives with the subscription.
    #[must_use]
    pub fn get_request(&self, rid: u32) -> Option<(String, Vec<u8>)> {
        match self.profile {
            Profile::Generic => None,
            Profile::AzureIotHub => Some((format!("$iothub/twin/GET/?$rid={rid}"), Vec::new())),
            Profile::AwsIotCore => Some((format!("{}/get", self.base), Vec::new())),
        }
    }

    /// Classifies an incoming publish's topic.
    #[must_use]
    pub fn classify(&self, topic: &str) -> IncomingTopic {
        match self.profile {
            Profile::Generic => {
                if topic.strip_prefix(self.base.as_str()) == Some("/desired") {
                    IncomingTopic::Desired(DesiredSource::GenericDocument)
                } else {
                    IncomingTopic::Unrelated
                }
            }
            Profile::AzureIotHub => {
                if let Some(rest) = topic.strip_prefix(AZURE_RES) {
                    return parse_azure_response(rest).unwrap_or(IncomingTopic::Unrelated);
                }
                if topic.starts_with(AZURE_DESIRED_PATCH) {
                    return IncomingTopic::Desired(DesiredSource::AzurePatch);
                }
                IncomingTopic::Unrelated
            }
            Profile::AwsIotCore => match topic
                .strip_prefix(self.base.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some("update/delta") => IncomingTopic::Desired(DesiredSource::AwsDelta),
                Some("get/accepted") => IncomingTopic::Desired(DesiredSource::AwsShadow),
                Some("get/rejected") => IncomingTopic::AwsGetRejected,
                Some("update/rejected") => IncomingTopic::AwsUpdateRejected,
                _ => IncomingTopic::Unrelated,
            },
        }
    }
}

/// `<status>/?$rid=<rid>[&$version=<v>]`.
fn parse_azure_response(rest: &str) -> Option<IncomingTopic> {
    let (status, query) = rest.split_once('/')?;
    let status = status.parse::<u16>().ok()?;
    let rid = query
        .strip_prefix('?')
        .unwrap_or(query)
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))
        .and_then(|rid| rid.parse::<u32>().ok());
    Some(IncomingTopic::AzureResponse { status, rid })
}

/// The largest reported payload the profile's twin accepts.
#[must_use]
pub const fn reported_limit(profile: Profile) -> usize {
    match profile {
        Profile::Generic => GENERIC_MAX_REPORTED,
        Profile::AzureIotHub => AZURE_MAX_REPORTED,
        Profile::AwsIotCore => AWS_MAX_REPORTED,
    }
}

/// How a device id appears as a twin key: IoT Hub forbids `.` in property names, so it
/// is written `%2E` there (`%` is not allowed in device ids, so this is reversible).
#[must_use]
pub fn device_key(profile: Profile, device_id: &str) -> String {
    match profile {
        Profile::AzureIotHub => device_id.replace('.', "%2E"),
        Profile::Generic | Profile::AwsIotCore => device_id.to_owned(),
    }
}

fn device_id_from_key(profile: Profile, key: &str) -> String {
    match profile {
        Profile::AzureIotHub => key.replace("%2E", "."),
        Profile::Generic | Profile::AwsIotCore => key.to_owned(),
    }
}

#[derive(Serialize)]
struct UplinkSection<'a> {
    connects: u64,
    connection_failures: u64,
    held_back_records: u64,
    client_cert_not_after: Option<i64>,
    last_error: Option<&'a str>,
}

/// The reported document (see the layout in [`crate::twin`]), device keys spelt for
/// `profile`.
#[must_use]
pub fn reported_document(profile: Profile, report: &TwinReport, uplink: &UplinkStatus) -> Value {
    let devices: Map<String, Value> = report
        .devices
        .iter()
        .map(|device| (device_key(profile, &device.id), device_entry(device)))
        .collect();
    json!({
        "schema": REPORTED_SCHEMA,
        "gateway": {
            "version": report.version,
            "spool": report.spool,
            "uplink": UplinkSection {
                connects: uplink.connects,
                connection_failures: uplink.connection_failures,
                held_back_records: uplink.held_back_records,
                client_cert_not_after: uplink.client_cert_not_after,
                last_error: uplink.last_error.as_deref(),
            },
        },
        "devices": devices,
        "updates": {
            "rollouts": report
                .updates
                .iter()
                .map(|r| (device_key(profile, &r.assignment_id), json!(r)))
                .collect::<Map<String, Value>>(),
        },
    })
}

fn device_entry(device: &DeviceReport) -> Value {
    let mut entry = Map::new();
    entry.insert("kind".into(), device.kind.clone().into());
    entry.insert("group".into(), device.group.clone().into());
    entry.insert("adapters".into(), device.adapters.clone().into());
    entry.insert("state".into(), device.state.name().into());
    entry.insert("state_since_ms".into(), device.state_since_ms.into());
    if let Some(ms) = device.poll_interval_ms {
        entry.insert(POLL_INTERVAL.into(), ms.into());
    }
    if let Some(on) = device.log_shipping {
        entry.insert(LOG_SHIPPING.into(), on.into());
    }
    if let Some(update) = &device.update {
        entry.insert("update".into(), json!(update));
    }
    Value::Object(entry)
}

/// The bytes to publish for `document` under `profile`, within `limit` bytes.
///
/// `gone` are device keys published earlier that are no longer declared: IoT Hub and AWS
/// merge reported documents, so they are set to `null` to remove them. If the document
/// does not fit, device details are cut to their state, then devices are left out
/// (`devices_omitted` says how many); the gateway section always fits.
#[must_use]
pub fn reported_payload(
    profile: Profile,
    document: &Value,
    gone: &BTreeSet<String>,
    limit: usize,
) -> Vec<u8> {
    let mut document = document.clone();
    if profile != Profile::Generic {
        if let Some(Value::Object(devices)) = document.get_mut("devices") {
            for key in gone {
                devices.entry(key.clone()).or_insert(Value::Null);
            }
        }
    }
    let encode = |document: &Value| {
        let wrapped;
        let body = if profile == Profile::AwsIotCore {
            wrapped = json!({ "state": { "reported": document } });
            &wrapped
        } else {
            document
        };
        serde_json::to_vec(body).unwrap_or_default()
    };
    let full = encode(&document);
    if full.len() <= limit {
        return full;
    }
    if let Some(Value::Object(devices)) = document.get_mut("devices") {
        for entry in devices.values_mut() {
            if let Value::Object(fields) = entry {
                fields.retain(|key, _| key == "state");
            }
        }
    }
    let reduced = encode(&document);
    if reduced.len() <= limit {
        return reduced;
    }
    let omitted = match document.get_mut("devices") {
        Some(Value::Object(devices)) => {
            let count = devices.len();
            devices.clear();
            count
        }
        _ => 0,
    };
    if let Value::Object(root) = &mut document {
        root.insert("devices_omitted".into(), omitted.into());
    }
    encode(&document)
}

/// Device keys in a reported document.
#[must_use]
pub fn device_keys(document: &Value) -> BTreeSet<String> {
    match document.get("devices") {
        Some(Value::Object(devices)) => devices.keys().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

/// Parses a desired document from `source` against the declared devices. See the
/// allow-list in [`crate::twin`].
#[must_use]
pub fn desired_changes(
    profile: Profile,
    source: DesiredSource,
    payload: &[u8],
    known_devices: &[DeviceCapabilities],
) -> DesiredOutcome {
    let outcome = DesiredOutcome::new(source);
    if payload.len() > MAX_DESIRED_PAYLOAD {
        return outcome.refuse_document(RefusalReason::PayloadTooLarge {
            bytes: payload.len(),
        });
    }
    // serde_json limits nesting to 128 levels, so hostile depth is an error, not a crash.
    let Ok(root) = serde_json::from_slice::<Value>(payload) else {
        return outcome.refuse_document(RefusalReason::NotJson);
    };
    let section = match source {
        DesiredSource::GenericDocument | DesiredSource::AzurePatch => Some(&root),
        DesiredSource::AzureFullTwin => root.get("desired"),
        DesiredSource::AwsDelta => root.get("state"),
        // A shadow nobody set a desired state in has no `desired`: nothing is desired.
        DesiredSource::AwsShadow => Some(
            root.get("state")
                .and_then(|state| state.get("desired"))
                .unwrap_or(&Value::Null),
        ),
    };
    let version = match source {
        DesiredSource::AzurePatch => root.get("$version"),
        DesiredSource::AzureFullTwin => section.and_then(|s| s.get("$version")),
        DesiredSource::AwsDelta | DesiredSource::AwsShadow => root.get("version"),
        DesiredSource::GenericDocument => None,
    }
    .and_then(Value::as_u64);
    let mut outcome = DesiredOutcome { version, ..outcome };
    let empty = Map::new();
    let settings = match section {
        Some(Value::Object(settings)) => settings,
        Some(Value::Null) if source == DesiredSource::AwsShadow => &empty,
        _ => return outcome.refuse_document(RefusalReason::NotAnObject),
    };

    let mut refusals = Refusals::default();
    for (key, value) in settings {
        if is_metadata(key) || METADATA_KEYS.contains(&key.as_str()) {
            continue;
        }
        if key == UPDATES {
            update_instructions(
                profile,
                value,
                &mut outcome.update_instructions,
                &mut refusals,
            );
            continue;
        }
        if key != "devices" {
            refusals.push(vec![key], RefusalReason::UnknownKey);
            continue;
        }
        let Value::Object(devices) = value else {
            refusals.push(vec![key], RefusalReason::NotAnObject);
            continue;
        };
        for (device_key, device_settings) in devices {
            if is_metadata(device_key) {
                continue;
            }
            let id = device_id_from_key(profile, device_key);
            let Some(device) = known_devices.iter().find(|d| d.id == id) else {
                refusals.push(vec![key, device_key], RefusalReason::UndeclaredDevice);
                continue;
            };
            let Value::Object(device_settings) = device_settings else {
                refusals.push(vec![key, device_key], RefusalReason::NotAnObject);
                continue;
            };
            for (name, value) in device_settings {
                if is_metadata(name) {
                    continue;
                }
                let path = || vec![key.as_str(), device_key.as_str(), name.as_str()];
                match setting(device, name, value) {
                    Ok(accepted) => outcome.accepted.push(accepted),
                    Err(reason) => refusals.push(path(), reason),
                }
            }
        }
    }
    outcome.refused = refusals.finish();
    outcome
}

fn is_metadata(key: &str) -> bool {
    key.starts_with('$')
}

/// The desired key holding update instructions: `updates.assignments.<id>`.
pub const UPDATES: &str = "updates";

/// Collects `updates.assignments.<id>` entries. A complete document's absent entries
/// cancel nothing: a cancellation is always an explicit `null`, so a truncated or stale
/// desired document can never withdraw a security update by omission.
fn update_instructions(
    profile: Profile,
    value: &Value,
    out: &mut Vec<UpdateInstruction>,
    refusals: &mut Refusals,
) {
    let Value::Object(updates) = value else {
        refusals.push(vec![UPDATES], RefusalReason::NotAnObject);
        return;
    };
    for (name, value) in updates {
        if is_metadata(name) {
            continue;
        }
        if name != "assignments" {
            refusals.push(vec![UPDATES, name], RefusalReason::UnknownKey);
            continue;
        }
        let Value::Object(assignments) = value else {
            refusals.push(vec![UPDATES, name], RefusalReason::NotAnObject);
            continue;
        };
        for (key, document) in assignments {
            if is_metadata(key) {
                continue;
            }
            // IoT Hub property names cannot hold `.`: ids are escaped as device ids are.
            let id = &device_id_from_key(profile, key);
            let path = || vec![UPDATES, "assignments", id.as_str()];
            if out.len() >= MAX_UPDATE_INSTRUCTIONS {
                refusals.push(
                    path(),
                    RefusalReason::TooMany {
                        max: MAX_UPDATE_INSTRUCTIONS,
                    },
                );
                continue;
            }
            match document {
                Value::Null => out.push(UpdateInstruction {
                    id: id.clone(),
                    document: None,
                }),
                Value::Object(fields) => {
                    let mut fields = fields.clone();
                    fields.retain(|k, _| !is_metadata(k));
                    match fields.get("id") {
                        Some(Value::String(inner)) if inner != id => {
                            refusals.push(
                                path(),
                                RefusalReason::WrongType {
                                    expected: "an assignment whose \"id\" equals its key",
                                },
                            );
                            continue;
                        }
                        _ => {}
                    }
                    fields.insert("id".to_owned(), Value::String(id.clone()));
                    match serde_json::to_vec(&Value::Object(fields)) {
                        Ok(bytes) => out.push(UpdateInstruction {
                            id: id.clone(),
                            document: Some(bytes),
                        }),
                        Err(_) => refusals.push(path(), RefusalReason::NotJson),
                    }
                }
                _ => refusals.push(
                    path(),
                    RefusalReason::WrongType {
                        expected: "an assignment object, or null to cancel it",
                    },
                ),
            }
        }
    }
}

fn setting(
    device: &DeviceCapabilities,
    name: &str,
    value: &Value,
) -> Result<DesiredSetting, RefusalReason> {
    match name {
        POLL_INTERVAL => {
            if !device.modbus {
                return Err(RefusalReason::NotApplicable { needs: "modbus" });
            }
            let interval_ms = match value {
                Value::Null => None,
                Value::Number(n) if n.is_u64() || n.is_i64() => {
                    let ms = n.as_u64().filter(|ms| POLL_INTERVAL_MS.contains(ms));
                    Some(ms.ok_or(RefusalReason::OutOfRange {
                        min: *POLL_INTERVAL_MS.start(),
                        max: *POLL_INTERVAL_MS.end(),
                    })?)
                }
                _ => {
                    return Err(RefusalReason::WrongType {
                        expected: "an integer number of milliseconds",
                    })
                }
            };
            Ok(DesiredSetting::PollInterval {
                device: device.id.clone(),
                interval_ms,
            })
        }
        LOG_SHIPPING => {
            if !device.logs {
                return Err(RefusalReason::NotApplicable { needs: "logs" });
            }
            let enabled = match value {
                Value::Null => None,
                Value::Bool(on) => Some(*on),
                _ => {
                    return Err(RefusalReason::WrongType {
                        expected: "true or false",
                    })
                }
            };
            Ok(DesiredSetting::LogShipping {
                device: device.id.clone(),
                enabled,
            })
        }
        _ => Err(RefusalReason::UnknownKey),
    }
}

#[derive(Default)]
struct Refusals {
    listed: Vec<Refusal>,
    more: usize,
}

impl Refusals {
    fn push(&mut self, path: Vec<&str>, reason: RefusalReason) {
        if self.listed.len() < MAX_REFUSALS {
            let key = path
                .into_iter()
                .map(clean_segment)
                .collect::<Vec<_>>()
                .join(".");
            self.listed.push(Refusal { key, reason });
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<Refusal> {
        if self.more > 0 {
            self.listed.push(Refusal {
                key: DOCUMENT_KEY.to_owned(),
                reason: RefusalReason::TooManyRefusals { more: self.more },
            });
        }
        self.listed
    }
}

/// A key segment safe to log: control characters replaced, long segments cut.
fn clean_segment(segment: &str) -> String {
    let mut out: String = segment
        .chars()
        .take(MAX_KEY_SEGMENT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if segment.chars().nth(MAX_KEY_SEGMENT).is_some() {
        out.push('…');
    }
    out
}

/// When to publish the reported document: on connect, then on change, at most once per
/// `min_interval_ms`, and only if the document differs from the last one published.
#[derive(Debug, Clone)]
pub struct ReportScheduler {
    min_interval_ms: u64,
    /// The document (not the payload: removal nulls come and go) last published.
    last_document: Option<Value>,
    last_sent_ms: Option<u64>,
    /// Device keys the cloud may hold in its reported state, for removal nulls.
    published_devices: BTreeSet<String>,
}

/// What [`ReportScheduler::poll`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportDecision {
    /// Publish these bytes now, then call [`ReportScheduler::sent`].
    Publish(Vec<u8>),
    /// The document changed; poll again at this time (ms).
    WaitUntil(u64),
    /// Nothing to publish.
    Unchanged,
}

impl ReportScheduler {
    /// A scheduler publishing at most once per `min_interval_ms`.
    #[must_use]
    pub fn new(min_interval_ms: u64) -> Self {
        ReportScheduler {
            min_interval_ms,
            last_document: None,
            last_sent_ms: None,
            published_devices: BTreeSet::new(),
        }
    }

    /// A new session: the next poll publishes at once, whatever was sent before.
    pub fn on_connected(&mut self) {
        self.last_document = None;
        self.last_sent_ms = None;
    }

    /// The cloud refused the last document (or it may have been lost): publish again
    /// at the next allowed time even if nothing changed.
    pub fn on_rejected(&mut self) {
        self.last_document = None;
    }

    /// The cloud holds reported state for these device keys (from a full twin or
    /// shadow), so removed devices among them get a `null`.
    pub fn remember_published_devices(&mut self, keys: impl IntoIterator<Item = String>) {
        let current = self
            .last_document
            .as_ref()
            .map(device_keys)
            .unwrap_or_default();
        let mut stale = false;
        for key in keys {
            stale |= !current.contains(&key);
            self.published_devices.insert(key);
        }
        if stale {
            // The cloud holds a device we no longer declare: the next poll removes it
            // even if our own document did not change.
            self.last_document = None;
        }
    }

    /// Decides about `document` at `now_ms`; a payload is cut to `limit` bytes as
    /// [`reported_payload`] describes.
    #[must_use]
    pub fn poll(
        &self,
        now_ms: u64,
        profile: Profile,
        document: &Value,
        limit: usize,
    ) -> ReportDecision {
        if self.last_document.as_ref() == Some(document) {
            return ReportDecision::Unchanged;
        }
        if let Some(last) = self.last_sent_ms {
            let due = last.saturating_add(self.min_interval_ms);
            if now_ms < due {
                return ReportDecision::WaitUntil(due);
            }
        }
        let current = device_keys(document);
        let gone: BTreeSet<String> = self
            .published_devices
            .difference(&current)
            .cloned()
            .collect();
        ReportDecision::Publish(reported_payload(profile, document, &gone, limit))
    }

    /// `document` was handed to the MQTT client at `now_ms`.
    pub fn sent(&mut self, now_ms: u64, document: Value) {
        // Removed devices were nulled in this publish; the current ones are now held.
        self.published_devices = device_keys(&document);
        self.last_document = Some(document);
        self.last_sent_ms = Some(now_ms);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::twin::SpoolReport;
    use wardgate_proto::DeviceState;

    fn devices() -> Vec<DeviceCapabilities> {
        vec![
            DeviceCapabilities::from_adapters("pump-1", ["modbus"]),
            DeviceCapabilities::from_adapters("mapper.2", ["agent", "logs"]),
            DeviceCapabilities::from_adapters("monitor-3", ["hl7"]),
            DeviceCapabilities::from_adapters("both", "modbus,logs".split(',')),
        ]
    }

    fn parse(source: DesiredSource, payload: &str) -> DesiredOutcome {
        desired_changes(Profile::Generic, source, payload.as_bytes(), &devices())
    }

    #[test]
    fn update_assignments_are_passed_on_and_nulls_cancel() {
        let outcome = parse(
            DesiredSource::GenericDocument,
            r#"{"updates":{"assignments":{
                "a-1":{"target":"pump/fw-2.bin","devices":{"group":"icu"}},
                "a-0":null,
                "a-2":{"id":"other","target":"x"},
                "a-3":"install now",
                "$version":3},
              "firmware_url":"http://x"}}"#,
        );
        let ids: Vec<(&str, bool)> = outcome
            .update_instructions
            .iter()
            .map(|i| (i.id.as_str(), i.document.is_some()))
            .collect();
        assert_eq!(ids, [("a-0", false), ("a-1", true)]);
        let doc: Value =
            serde_json::from_slice(outcome.update_instructions[1].document.as_ref().unwrap())
                .unwrap();
        assert_eq!(doc["id"], "a-1");
        assert_eq!(doc["target"], "pump/fw-2.bin");
        let refused: Vec<&str> = outcome.refused.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            refused,
            [
                "updates.assignments.a-2",
                "updates.assignments.a-3",
                "updates.firmware_url"
            ]
        );
        assert!(outcome.accepted.is_empty());
        // A value under `updates` that is not an object is refused, not guessed at.
        let outcome = parse(DesiredSource::GenericDocument, r#"{"updates":[1]}"#);
        assert!(outcome.update_instructions.is_empty());
        assert_eq!(
            reasons(&outcome),
            [("updates", &RefusalReason::NotAnObject)]
        );
    }

    fn reasons(outcome: &DesiredOutcome) -> Vec<(&str, &RefusalReason)> {
        outcome
            .refused
            .iter()
            .map(|r| (r.key.as_str(), &r.reason))
            .collect()
    }

    fn poll(device: &str, ms: u64) -> DesiredSetting {
        DesiredSetting::PollInterval {
            device: device.into(),
            interval_ms: Some(ms),
        }
    }

    fn logs(device: &str, on: bool) -> DesiredSetting {
        DesiredSetting::LogShipping {
            device: device.into(),
            enabled: Some(on),
        }
    }

    #[test]
    fn generic_document_with_valid_settings() {
        let outcome = parse(
            DesiredSource::GenericDocument,
            r#"{"devices":{"pump-1":{"poll_interval_ms":2500},"mapper.2":{"log_shipping":false},
                "both":{"poll_interval_ms":100,"log_shipping":true}}}"#,
        );
        assert!(outcome.complete);
        assert_eq!(outcome.version, None);
        assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
        assert_eq!(
            outcome.accepted,
            vec![
                // serde_json maps are sorted: both, mapper.2, pump-1.
                logs("both", true),
                poll("both", 100),
                logs("mapper.2", false),
                poll("pump-1", 2500),
            ]
        );
        assert_eq!(outcome.accepted[3].key(), "devices.pump-1.poll_interval_ms");
        assert_eq!(outcome.accepted[3].value_text(), "2500");
    }

    #[test]
    fn each_refusal_reason_refuses_only_its_key() {
        let outcome = parse(
            DesiredSource::GenericDocument,
            r#"{"devices":{
                "pump-1":{"poll_interval_ms":99,"log_shipping":true,"reboot":true},
                "both":{"poll_interval_ms":3600001,"log_shipping":"yes"},
                "mapper.2":{"poll_interval_ms":1000,"log_shipping":true},
                "monitor-3":{"poll_interval_ms":1.5e3},
                "ghost":{"poll_interval_ms":1000},
                "scalar":5},
               "firmware":{"url":"http://x"}}"#,
        );
        assert_eq!(outcome.accepted, vec![logs("mapper.2", true)]);
        let range = RefusalReason::OutOfRange {
            min: 100,
            max: 3_600_000,
        };
        assert_eq!(
            reasons(&outcome),
            vec![
                (
                    "devices.both.log_shipping",
                    &RefusalReason::WrongType {
                        expected: "true or false"
                    }
                ),
                ("devices.both.poll_interval_ms", &range),
                ("devices.ghost", &RefusalReason::UndeclaredDevice),
                (
                    "devices.mapper.2.poll_interval_ms",
                    &RefusalReason::NotApplicable { needs: "modbus" }
                ),
                (
                    "devices.monitor-3.poll_interval_ms",
                    &RefusalReason::NotApplicable { needs: "modbus" }
                ),
                (
                    "devices.pump-1.log_shipping",
                    &RefusalReason::NotApplicable { needs: "logs" }
                ),
                ("devices.pump-1.poll_interval_ms", &range),
                ("devices.pump-1.reboot", &RefusalReason::UnknownKey),
                ("devices.scalar", &RefusalReason::UndeclaredDevice),
                ("firmware", &RefusalReason::UnknownKey),
            ]
        );
    }

    #[test]
    fn wrong_types_and_nested_structures_are_refused() {
        let outcome = parse(
            DesiredSource::GenericDocument,
            r#"{"devices":{"pump-1":{"poll_interval_ms":{"value":1000}},
                           "both":{"poll_interval_ms":"1000","log_shipping":[true]},
                           "mapper.2":true}}"#,
        );
        assert!(outcome.accepted.is_empty());
        let ms = RefusalReason::WrongType {
            expected: "an integer number of milliseconds",
        };
        assert_eq!(
            reasons(&outcome),
            vec![
                (
                    "devices.both.log_shipping",
                    &RefusalReason::WrongType {
                        expected: "true or false"
                    }
                ),
                ("devices.both.poll_interval_ms", &ms),
                ("devices.mapper.2", &RefusalReason::NotAnObject),
                ("devices.pump-1.poll_interval_ms", &ms),
            ]
        );
        for (payload, key) in [
            (r#"{"devices":[1]}"#, "devices"),
            (r#"{"devices":"pump-1"}"#, "devices"),
            (r#"[1,2]"#, DOCUMENT_KEY),
            (r#""devices""#, DOCUMENT_KEY),
        ] {
            let outcome = parse(DesiredSource::GenericDocument, payload);
            assert_eq!(
                reasons(&outcome),
                vec![(key, &RefusalReason::NotAnObject)],
                "{payload}"
            );
        }
        // Negative and huge integers are out of range, not a crash.
        let outcome = parse(
            DesiredSource::GenericDocument,
            r#"{"devices":{"pump-1":{"poll_interval_ms":-5},"both":{"poll_interval_ms":18446744073709551615}}}"#,
        );
        assert_eq!(outcome.refused.len(), 2);
        assert!(outcome
            .refused
            .iter()
            .all(|r| matches!(r.reason, RefusalReason::OutOfRange { .. })));
    }

    #[test]
    fn null_returns_a_setting_to_the_site_configuration() {
        let outcome = parse(
            DesiredSource::AzurePatch,
            r#"{"devices":{"pump-1":{"poll_interval_ms":null},"mapper.2":{"log_shipping":null}}}"#,
        );
        assert!(!outcome.complete);
        assert_eq!(
            outcome.accepted,
            vec![
                DesiredSetting::LogShipping {
                    device: "mapper.2".into(),
                    enabled: None
                },
                DesiredSetting::PollInterval {
                    device: "pump-1".into(),
                    interval_ms: None
                },
            ]
        );
        assert_eq!(outcome.accepted[1].value_text(), "default");
    }

    #[test]
    fn unusable_payloads_are_refused_whole() {
        let big = vec![b' '; MAX_DESIRED_PAYLOAD + 1];
        let outcome = desired_changes(
            Profile::Generic,
            DesiredSource::GenericDocument,
            &big,
            &devices(),
        );
        assert_eq!(
            reasons(&outcome),
            vec![(
                DOCUMENT_KEY,
                &RefusalReason::PayloadTooLarge {
                    bytes: MAX_DESIRED_PAYLOAD + 1
                }
            )]
        );
        for payload in [
            &b"not json"[..],
            b"",
            b"{\"devices\":",
            b"\xff\xfe{}",
            "[".repeat(10_000).as_bytes(),
        ] {
            let outcome = desired_changes(
                Profile::Generic,
                DesiredSource::GenericDocument,
                payload,
                &devices(),
            );
            assert_eq!(
                reasons(&outcome),
                vec![(DOCUMENT_KEY, &RefusalReason::NotJson)]
            );
        }
    }

    #[test]
    fn refusals_are_capped_and_keys_cleaned() {
        let mut doc = Map::new();
        for n in 0..100 {
            doc.insert(format!("k{n:03}"), Value::Bool(true));
        }
        doc.insert(format!("{}\u{7}x", "a".repeat(100)), Value::Bool(true));
        let payload = serde_json::to_vec(&Value::Object(doc)).unwrap();
        let outcome = desired_changes(
            Profile::Generic,
            DesiredSource::GenericDocument,
            &payload,
            &devices(),
        );
        assert_eq!(outcome.refused.len(), MAX_REFUSALS + 1);
        // Sorted keys: the long "aaa…" key comes first.
        let first = &outcome.refused[0].key;
        assert_eq!(first.chars().count(), MAX_KEY_SEGMENT + 1);
        assert!(first.ends_with('…'));
        assert!(!first.chars().any(char::is_control));
        assert_eq!(
            outcome.refused.last().unwrap().reason,
            RefusalReason::TooManyRefusals {
                more: 101 - MAX_REFUSALS
            }
        );
    }

    #[test]
    fn azure_patch_and_full_twin_shapes() {
        // A desired-properties patch as IoT Hub sends it.
        let patch = br#"{"devices":{"pump-1":{"poll_interval_ms":5000},"mapper%2E2":{"log_shipping":true}},"$version":7}"#;
        let outcome = desired_changes(
            Profile::AzureIotHub,
            DesiredSource::AzurePatch,
            patch,
            &devices(),
        );
        assert_eq!(outcome.version, Some(7));
        assert!(!outcome.complete);
        assert_eq!(
            outcome.accepted,
            vec![logs("mapper.2", true), poll("pump-1", 5000)]
        );
        assert!(outcome.refused.is_empty());

        // The answer to GET: desired and reported sections with metadata.
        let full = br#"{"desired":{"devices":{"pump-1":{"poll_interval_ms":1000}},
            "$metadata":{"$lastUpdated":"2025-01-01T00:00:00Z"},"$version":9},
            "reported":{"devices":{"gone":{"state":"online"}},"$version":3}}"#;
        let outcome = desired_changes(
            Profile::AzureIotHub,
            DesiredSource::AzureFullTwin,
            full,
            &devices(),
        );
        assert!(outcome.complete);
        assert_eq!(outcome.version, Some(9));
        assert_eq!(outcome.accepted, vec![poll("pump-1", 1000)]);
        assert!(outcome.refused.is_empty());

        let outcome = desired_changes(
            Profile::AzureIotHub,
            DesiredSource::AzureFullTwin,
            br#"{"reported":{}}"#,
            &devices(),
        );
        assert_eq!(
            reasons(&outcome),
            vec![(DOCUMENT_KEY, &RefusalReason::NotAnObject)]
        );
    }

    #[test]
    fn aws_delta_and_shadow_shapes() {
        let delta = br#"{"version":12,"timestamp":1700000000,
            "state":{"devices":{"pump-1":{"poll_interval_ms":750}},"mode":"x"},
            "metadata":{"devices":{"pump-1":{"poll_interval_ms":{"timestamp":1700000000}}}},
            "clientToken":"abc"}"#;
        let outcome = desired_changes(
            Profile::AwsIotCore,
            DesiredSource::AwsDelta,
            delta,
            &devices(),
        );
        assert_eq!(outcome.version, Some(12));
        assert!(!outcome.complete);
        assert_eq!(outcome.accepted, vec![poll("pump-1", 750)]);
        assert_eq!(
            reasons(&outcome),
            vec![("mode", &RefusalReason::UnknownKey)]
        );

        let shadow = br#"{"state":{"desired":{"devices":{"mapper.2":{"log_shipping":false}}},
            "reported":{"devices":{}},"delta":{}},"metadata":{},"version":4,"timestamp":1}"#;
        let outcome = desired_changes(
            Profile::AwsIotCore,
            DesiredSource::AwsShadow,
            shadow,
            &devices(),
        );
        assert!(outcome.complete);
        assert_eq!(outcome.version, Some(4));
        assert_eq!(outcome.accepted, vec![logs("mapper.2", false)]);

        // A shadow without desired state: complete and empty.
        let outcome = desired_changes(
            Profile::AwsIotCore,
            DesiredSource::AwsShadow,
            br#"{"state":{"reported":{}},"version":1}"#,
            &devices(),
        );
        assert!(outcome.complete && outcome.accepted.is_empty() && outcome.refused.is_empty());
    }

    #[test]
    fn topics_per_profile() {
        let generic = TwinTopics::new(Profile::Generic, "gw-1");
        assert_eq!(generic.subscriptions(), vec!["wardgate/gw-1/twin/desired"]);
        assert_eq!(generic.reported(5), "wardgate/gw-1/twin/reported");
        assert!(generic.reported_retained());
        assert_eq!(generic.get_request(1), None);
        assert_eq!(
            generic.classify("wardgate/gw-1/twin/desired"),
            IncomingTopic::Desired(DesiredSource::GenericDocument)
        );
        for other in [
            "wardgate/gw-2/twin/desired",
            "wardgate/gw-1/twin/desired/x",
            "wardgate/gw-1/twin/reported",
            "",
        ] {
            assert_eq!(generic.classify(other), IncomingTopic::Unrelated, "{other}");
        }

        let azure = TwinTopics::new(Profile::AzureIotHub, "gw-1");
        assert_eq!(
            azure.subscriptions(),
            vec![
                "$iothub/twin/res/#",
                "$iothub/twin/PATCH/properties/desired/#"
            ]
        );
        assert_eq!(
            azure.reported(42),
            "$iothub/twin/PATCH/properties/reported/?$rid=42"
        );
        assert!(!azure.reported_retained());
        assert_eq!(
            azure.get_request(3),
            Some(("$iothub/twin/GET/?$rid=3".to_owned(), Vec::new()))
        );
        assert_eq!(
            azure.classify("$iothub/twin/PATCH/properties/desired/?$version=8"),
            IncomingTopic::Desired(DesiredSource::AzurePatch)
        );
        assert_eq!(
            azure.classify("$iothub/twin/res/200/?$rid=3"),
            IncomingTopic::AzureResponse {
                status: 200,
                rid: Some(3)
            }
        );
        assert_eq!(
            azure.classify("$iothub/twin/res/204/?$rid=42&$version=5"),
            IncomingTopic::AzureResponse {
                status: 204,
                rid: Some(42)
            }
        );
        assert_eq!(
            azure.classify("$iothub/twin/res/429/?$rid=x"),
            IncomingTopic::AzureResponse {
                status: 429,
                rid: None
            }
        );
        for other in [
            "$iothub/twin/res/abc/?$rid=1",
            "$iothub/twin/res/",
            "devices/gw-1/messages/devicebound/x",
        ] {
            assert_eq!(azure.classify(other), IncomingTopic::Unrelated, "{other}");
        }

        let aws = TwinTopics::new(Profile::AwsIotCore, "gw-1");
        assert_eq!(
            aws.subscriptions(),
            vec![
                "$aws/things/gw-1/shadow/update/delta",
                "$aws/things/gw-1/shadow/get/accepted",
                "$aws/things/gw-1/shadow/get/rejected",
                "$aws/things/gw-1/shadow/update/rejected",
            ]
        );
        assert_eq!(aws.reported(1), "$aws/things/gw-1/shadow/update");
        assert_eq!(
            aws.get_request(1),
            Some(("$aws/things/gw-1/shadow/get".to_owned(), Vec::new()))
        );
        assert_eq!(
            aws.classify("$aws/things/gw-1/shadow/update/delta"),
            IncomingTopic::Desired(DesiredSource::AwsDelta)
        );
        assert_eq!(
            aws.classify("$aws/things/gw-1/shadow/get/accepted"),
            IncomingTopic::Desired(DesiredSource::AwsShadow)
        );
        assert_eq!(
            aws.classify("$aws/things/gw-1/shadow/get/rejected"),
            IncomingTopic::AwsGetRejected
        );
        assert_eq!(
            aws.classify("$aws/things/gw-1/shadow/update/rejected"),
            IncomingTopic::AwsUpdateRejected
        );
        for other in [
            "$aws/things/gw-1/shadow/update/accepted",
            "$aws/things/gw-10/shadow/update/delta",
            "$aws/things/gw-1/shadow/name/x/update/delta",
        ] {
            assert_eq!(aws.classify(other), IncomingTopic::Unrelated, "{other}");
        }
    }

    fn report() -> TwinReport {
        TwinReport {
            version: "1.2.3".into(),
            spool: SpoolReport {
                records: 12,
                bytes: 3456,
                budget_bytes: 1 << 30,
            },
            devices: vec![
                DeviceReport {
                    id: "mapper.2".into(),
                    kind: "mapping-system".into(),
                    group: "ep-lab".into(),
                    adapters: "agent,logs".into(),
                    state: DeviceState::InProcedure,
                    state_since_ms: 1_700_000_000_000,
                    poll_interval_ms: None,
                    log_shipping: Some(false),
                    update: Some(crate::twin::DeviceUpdateReport {
                        assignment: "fw.1".into(),
                        stage: "deferred".into(),
                        reason: Some("in-use".into()),
                    }),
                },
                DeviceReport {
                    id: "pump-1".into(),
                    kind: "infusion-pump".into(),
                    group: "icu".into(),
                    adapters: "modbus".into(),
                    state: DeviceState::Online,
                    state_since_ms: 1_700_000_000_001,
                    poll_interval_ms: Some(1000),
                    log_shipping: None,
                    update: None,
                },
            ],
            updates: vec![crate::twin::RolloutReport {
                assignment_id: "fw.1".into(),
                target: "mapper/fw-2.bin".into(),
                members: 1,
                installed: 0,
                failed: 0,
                deferred: 1,
                halted: None,
            }],
        }
    }

    fn uplink() -> UplinkStatus {
        UplinkStatus {
            connected: true,
            connects: 2,
            connection_failures: 1,
            client_cert_not_after: Some(1_790_000_000),
            published_records: 999,
            ..UplinkStatus::default()
        }
    }

    #[test]
    fn reported_document_layout() {
        let doc = reported_document(Profile::Generic, &report(), &uplink());
        assert_eq!(
            doc,
            json!({
                "schema": 1,
                "gateway": {
                    "version": "1.2.3",
                    "spool": {"records": 12, "bytes": 3456, "budget_bytes": 1u64 << 30},
                    "uplink": {"connects": 2, "connection_failures": 1, "held_back_records": 0,
                               "client_cert_not_after": 1_790_000_000, "last_error": null}
                },
                "devices": {
                    "mapper.2": {"kind": "mapping-system", "group": "ep-lab", "adapters": "agent,logs",
                                 "state": "in-procedure", "state_since_ms": 1_700_000_000_000u64,
                                 "log_shipping": false,
                                 "update": {"assignment": "fw.1", "stage": "deferred", "reason": "in-use"}},
                    "pump-1": {"kind": "infusion-pump", "group": "icu", "adapters": "modbus",
                               "state": "online", "state_since_ms": 1_700_000_000_001u64,
                               "poll_interval_ms": 1000}
                },
                "updates": {"rollouts": {"fw.1": {"target": "mapper/fw-2.bin", "members": 1,
                                                  "installed": 0, "failed": 0, "deferred": 1}}}
            })
        );
        // Azure spells dots in device ids as %2E; the desired parser reads them back.
        let azure = reported_document(Profile::AzureIotHub, &report(), &uplink());
        assert!(azure["devices"].get("mapper%2E2").is_some());
        assert!(azure["devices"].get("mapper.2").is_none());
        assert!(azure["updates"]["rollouts"].get("fw%2E1").is_some());
    }

    #[test]
    fn reported_payload_envelopes_and_removals() {
        let doc = reported_document(Profile::AwsIotCore, &report(), &uplink());
        let gone: BTreeSet<String> = ["old-1".to_owned()].into();
        let aws: Value =
            serde_json::from_slice(&reported_payload(Profile::AwsIotCore, &doc, &gone, 8192))
                .unwrap();
        assert_eq!(aws["state"]["reported"]["gateway"]["version"], "1.2.3");
        assert_eq!(aws["state"]["reported"]["devices"]["old-1"], Value::Null);
        assert!(aws["state"]["reported"]["devices"]["pump-1"].is_object());

        // The generic document is replaced whole (retained), so no nulls.
        let generic: Value =
            serde_json::from_slice(&reported_payload(Profile::Generic, &doc, &gone, 8192)).unwrap();
        assert!(generic["devices"].get("old-1").is_none());
        assert_eq!(generic, doc);
    }

    #[test]
    fn oversized_reported_documents_degrade_but_keep_the_gateway_section() {
        let mut big = report();
        for n in 0..200 {
            big.devices.push(DeviceReport {
                id: format!("monitor-{n:03}"),
                kind: "patient-monitor-with-a-long-kind-name".into(),
                group: "intensive-care-unit-west-wing".into(),
                adapters: "hl7,agent,logs".into(),
                state: DeviceState::Online,
                state_since_ms: 1,
                poll_interval_ms: None,
                log_shipping: Some(true),
                update: None,
            });
        }
        let doc = reported_document(Profile::AwsIotCore, &big, &uplink());
        let full = reported_payload(Profile::AwsIotCore, &doc, &BTreeSet::new(), 1 << 20);
        assert!(full.len() > 16 * 1024, "{} bytes", full.len());
        let payload = reported_payload(Profile::AwsIotCore, &doc, &BTreeSet::new(), 16 * 1024);
        let reduced: Value = serde_json::from_slice(&payload).unwrap();
        assert!(payload.len() <= 16 * 1024);
        assert_eq!(
            reduced["state"]["reported"]["devices"]["monitor-000"],
            json!({"state": "online"})
        );

        let payload = reported_payload(Profile::AwsIotCore, &doc, &BTreeSet::new(), 4096);
        assert!(payload.len() <= 4096);
        let minimal: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(minimal["state"]["reported"]["devices_omitted"], 202);
        assert_eq!(
            minimal["state"]["reported"]["gateway"]["spool"]["records"],
            12
        );
    }

    #[test]
    fn scheduler_publishes_on_connect_then_on_change_at_most_once_per_interval() {
        let mut scheduler = ReportScheduler::new(5000);
        let doc1 = reported_document(Profile::Generic, &report(), &uplink());
        let ReportDecision::Publish(bytes) = scheduler.poll(1000, Profile::Generic, &doc1, 65536)
        else {
            panic!("first document must be published at once");
        };
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), doc1);
        scheduler.sent(1000, doc1.clone());
        assert_eq!(
            scheduler.poll(1001, Profile::Generic, &doc1, 65536),
            ReportDecision::Unchanged
        );

        let mut changed = report();
        changed.spool.records = 13;
        let doc2 = reported_document(Profile::Generic, &changed, &uplink());
        assert_eq!(
            scheduler.poll(2000, Profile::Generic, &doc2, 65536),
            ReportDecision::WaitUntil(6000)
        );
        assert!(matches!(
            scheduler.poll(6000, Profile::Generic, &doc2, 65536),
            ReportDecision::Publish(_)
        ));
        scheduler.sent(6000, doc2.clone());
        // Changed back within the interval: waits; unchanged after a reconnect: sent anyway.
        assert_eq!(
            scheduler.poll(7000, Profile::Generic, &doc1, 65536),
            ReportDecision::WaitUntil(11_000)
        );
        scheduler.on_connected();
        assert!(matches!(
            scheduler.poll(7000, Profile::Generic, &doc2, 65536),
            ReportDecision::Publish(_)
        ));
        scheduler.sent(7000, doc2.clone());
        scheduler.on_rejected();
        assert_eq!(
            scheduler.poll(8000, Profile::Generic, &doc2, 65536),
            ReportDecision::WaitUntil(12_000)
        );
    }

    #[test]
    fn scheduler_removes_devices_the_cloud_still_holds_once() {
        let mut scheduler = ReportScheduler::new(0);
        scheduler.remember_published_devices(["old-1".to_owned()]);
        let doc = reported_document(Profile::AzureIotHub, &report(), &uplink());
        let ReportDecision::Publish(bytes) = scheduler.poll(0, Profile::AzureIotHub, &doc, 65536)
        else {
            panic!("expected a publish");
        };
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["devices"]["old-1"], Value::Null);
        scheduler.sent(0, doc);

        let mut fewer = report();
        fewer.devices.truncate(1);
        let doc = reported_document(Profile::AzureIotHub, &fewer, &uplink());
        let ReportDecision::Publish(bytes) = scheduler.poll(1, Profile::AzureIotHub, &doc, 65536)
        else {
            panic!("expected a publish");
        };
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(sent["devices"]["pump-1"], Value::Null);
        assert!(sent["devices"].get("old-1").is_none());
    }

    #[test]
    fn capabilities_from_adapters() {
        let c = DeviceCapabilities::from_adapters("x", "hl7, modbus".split(','));
        assert!(c.modbus && !c.logs);
        let c = DeviceCapabilities::from_adapters("x", "".split(','));
        assert!(!c.modbus && !c.logs);
    }
}
