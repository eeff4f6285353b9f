//! Update assignments: the cloud's one instruction about updates. The manufacturer names
//! a TUF target and a group (or kind) of devices and a rollout policy; wardgate offers
//! the target to those devices in waves (module [`super::rollout`]).
//!
//! # Wire format (JSON, at most [`MAX_ASSIGNMENT_BYTES`])
//!
//! ```json
//! {
//!   "id": "pump-fw-4.2.1-ward3",
//!   "target": "infusion/pump-4.2.1.bin",
//!   "devices": {"group": "infusion-pumps"},
//!   "policy": {
//!     "required": true,
//!     "not_before_ms": 1767225600000,
//!     "maintenance_windows": ["22:00-06:00"],
//!     "wave_size": 2,
//!     "failure_threshold": 1
//!   }
//! }
//! ```
//!
//! and the cancellation of one: `{"cancel": "pump-fw-4.2.1-ward3", "reason": "recalled"}`.
//!
//! # Invariants
//! * Parsing never panics; anything other than exactly this shape (unknown fields
//!   included) is refused whole with an [`AssignmentRefusal`] that names the field.
//! * Refusals are safe for the log and the audit log: the field is a JSON path built from
//!   known names and indices, the reason is the gateway's words (bounded, no control
//!   characters), never a value copied from the document.
//! * An accepted assignment's id is usable as one URL path segment and a SQLite key, its
//!   target is a relative TUF target path without `.`/`..` segments, its selector names
//!   exactly one of group or kind, and `wave_size` is at least 1.
//!
//! # Time
//! `not_before_ms` is Unix milliseconds (UTC). Maintenance windows are daily periods in
//! the **gateway's local time zone** (`TZ` or `/etc/localtime`, the same clock as the
//! bulk uploads' clinical hours): a hospital plans maintenance in its own hours, and one
//! assignment sent to sites in several time zones then means "02:00–04:00 at each site".

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::bulk::schedule::DailyPeriod;

/// Largest assignment or cancellation document accepted.
pub const MAX_ASSIGNMENT_BYTES: usize = 16 * 1024;
/// Longest assignment id.
pub const MAX_ID_LEN: usize = 128;
/// Longest TUF target name.
pub const MAX_TARGET_LEN: usize = 255;
/// Longest group or kind (as in the device configuration).
pub const MAX_SELECTOR_LEN: usize = 64;
/// Most maintenance windows in one policy.
pub const MAX_WINDOWS: usize = 24;
/// Largest `wave_size`.
pub const MAX_WAVE_SIZE: u32 = 100_000;
/// Longest cancellation reason.
pub const MAX_CANCEL_REASON_LEN: usize = 128;
/// An id the agent API's paths reserve (`/updates/metadata/...`).
const RESERVED_ID: &str = "metadata";
/// Longest reason kept in a refusal.
const MAX_REASON_CHARS: usize = 200;

/// Why an assignment (or a cancellation) was refused, for the log and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AssignmentRefusal {
    /// The JSON path of the offending field (e.g. `policy.wave_size`), or `(document)`.
    pub field: String,
    /// Why, in the gateway's words.
    pub reason: String,
}

impl AssignmentRefusal {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        AssignmentRefusal {
            field: clean(field, MAX_ID_LEN),
            reason: clean(&reason.into(), MAX_REASON_CHARS),
        }
    }
}

/// Cuts `text` to `max` characters (marking the cut with `…`) and replaces control
/// characters, so it can go to a log line.
fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// Which devices an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    /// Every declared device of this group (`[[device]] group`, which defaults to the kind).
    Group(String),
    /// Every declared device of this kind.
    Kind(String),
}

impl DeviceSelector {
    /// Whether a device of `kind` in `group` is selected.
    #[must_use]
    pub fn matches(&self, kind: &str, group: &str) -> bool {
        match self {
            DeviceSelector::Group(g) => g == group,
            DeviceSelector::Kind(k) => k == kind,
        }
    }
}

/// A daily maintenance window in the gateway's local time, `HH:MM-HH:MM`, end exclusive;
/// an end before the start crosses midnight (`22:00-06:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    period: DailyPeriod,
    text: String,
}

impl MaintenanceWindow {
    /// Parses `HH:MM-HH:MM`.
    ///
    /// # Errors
    /// The reason it is not a window.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() != 11 {
            return Err("must be HH:MM-HH:MM (24-hour clock)".to_owned());
        }
        let period = DailyPeriod::parse(text)?;
        Ok(MaintenanceWindow {
            period,
            text: text.to_owned(),
        })
    }

    /// Whether the local minute of the day (0..1440) is inside the window.
    #[must_use]
    pub const fn contains(&self, local_minute_of_day: u16) -> bool {
        self.period.contains(local_minute_of_day)
    }

    /// The window as written, `HH:MM-HH:MM`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// How the rollout proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The device must install it (`true`) or may decline it (`false`). Carried in the
    /// offer for the device's agent; the gateway treats both alike otherwise.
    pub required: bool,
    /// Nothing is offered before this instant (Unix ms, UTC).
    pub not_before_ms: Option<u64>,
    /// New offers are listed only inside one of these daily windows (gateway local
    /// time); empty: at any time of day.
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// Devices per wave (see [`super::rollout`] for when the next wave opens).
    pub wave_size: NonZeroU32,
    /// Most failed devices tolerated: the rollout halts as soon as the number of failed
    /// devices *exceeds* this count (0 halts at the first failure).
    pub failure_threshold: u32,
}

impl Policy {
    /// Whether the schedule allows offers at `unix_ms` / `local_minute_of_day`.
    #[must_use]
    pub fn open_at(&self, unix_ms: u64, local_minute_of_day: u16) -> bool {
        self.not_before_ms.is_none_or(|t| unix_ms >= t)
            && (self.maintenance_windows.is_empty()
                || self
                    .maintenance_windows
                    .iter()
                    .any(|w| w.contains(local_minute_of_day)))
    }
}

/// An accepted assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The cloud's id for it: `[A-Za-z0-9._-]`, 1–128 characters, not starting with `.`.
    pub id: String,
    /// The TUF target name (a relative path in the repository).
    pub target: String,
    /// Which devices.
    pub devices: DeviceSelector,
    /// How.
    pub policy: Policy,
}

/// The wire shape of an assignment.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAssignment {
    /// The assignment's id (unique per gateway; a URL path segment).
    id: String,
    /// TUF target name.
    target: String,
    /// Exactly one of `group` or `kind`.
    devices: WireSelector,
    /// Rollout policy.
    policy: WirePolicy,
}

/// The wire shape of the selector.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSelector {
    /// A device group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// A device kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
}

/// The wire shape of the policy.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePolicy {
    /// Required (`true`) or optional (`false`); no default: the sender must say.
    required: bool,
    /// Earliest offer, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before_ms: Option<u64>,
    /// Daily windows, `HH:MM-HH:MM`, gateway local time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    maintenance_windows: Vec<String>,
    /// Devices per wave, at least 1.
    wave_size: u32,
    /// Failures tolerated (halt when exceeded).
    failure_threshold: u32,
}

/// The wire shape of a cancellation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireCancel {
    /// The assignment to cancel.
    cancel: String,
    /// A short reason for the records.
    #[serde(default)]
    reason: Option<String>,
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id != RESERVED_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_valid_target(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TARGET_LEN
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
        })
}

fn is_valid_selector(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SELECTOR_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses JSON of type `T` within the size limit; shape errors name the JSON path.
fn parse_wire<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AssignmentRefusal> {
    if bytes.len() > MAX_ASSIGNMENT_BYTES {
        return Err(AssignmentRefusal::new(
            "(document)",
            format!(
                "{} bytes is larger than the limit of {MAX_ASSIGNMENT_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // `.`: the top level; `?`: serde could not tell where (a syntax error).
        let field = if path == "." || path == "?" {
            "(document)"
        } else {
            &path
        };
        AssignmentRefusal::new(field, shape_reason(e.inner()))
    })?;
    de.end()
        .map_err(|_| AssignmentRefusal::new("(document)", "trailing data after the JSON object"))?;
    Ok(value)
}

/// serde's message without the value it may quote (`invalid type: string "x", ...`):
/// only its category and what was expected.
fn shape_reason(e: &serde_json::Error) -> String {
    let message = e.to_string();
    // serde_json appends " at line L column C"; the path already locates the problem.
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(head, _)| head);
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        // `unknown field `x`, expected one of ...`: the name is a key, which is what the
        // refusal is about; keep it (cleaned and bounded by the caller).
        return message.to_owned();
    }
    if let Some((_, expected)) = message.split_once(", expected ") {
        return format!("wrong type or value, expected {expected}");
    }
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            "not a JSON document".to_owned()
        }
        _ => "wrong type or value".to_owned(),
    }
}

impl Assignment {
    /// Parses and checks an assignment document (see the module doc).
    ///
    /// # Errors
    /// The first problem, naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Assignment, AssignmentRefusal> {
        let wire: WireAssignment = parse_wire(bytes)?;
        Assignment::from_wire(wire)
    }

    fn from_wire(wire: WireAssignment) -> Result<Assignment, AssignmentRefusal> {
        if !is_valid_id(&wire.id) {
            return Err(AssignmentRefusal::new(
                "id",
                format!("must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -, not starting with `.`, and not `{RESERVED_ID}`"),
            ));
        }
        if !is_valid_target(&wire.target) {
            return Err(AssignmentRefusal::new(
                "target",
                format!("must be a relative TUF target path of at most {MAX_TARGET_LEN} characters (segments of A-Z a-z 0-9 . _ - +, no `.` or `..`)"),
            ));
        }
        let devices = match (wire.devices.group, wire.devices.kind) {
            (Some(group), None) => {
                if !is_valid_selector(&group) {
                    return Err(AssignmentRefusal::new(
                        "devices.group",
                        format!("must be 1-{MAX_SELECTOR_LEN} characters of A-Z a-z 0-9 . _ -"),
                    ));
                }
                DeviceSelector::Group(group)
            }
            (None, Some(kind)) => {
                if !is_valid_selector(&kind) {
                    return Err(AssignmentRefusal::new(
                        "devices.kind",
                        format!("must be 1-{MAX_SELECTOR_LEN} characters of A-Z a-z 0-9 . _ -"),
                    ));
                }
                DeviceSelector::Kind(kind)
            }
            _ => {
                return Err(AssignmentRefusal::new(
                    "devices",
                    "must name exactly one of `group` or `kind`",
                ))
            }
        };
        let p = wire.policy;
        if p.maintenance_windows.len() > MAX_WINDOWS {
            return Err(AssignmentRefusal::new(
                "policy.maintenance_windows",
                format!("at most {MAX_WINDOWS} windows"),
            ));
        }
        let mut maintenance_windows = Vec::with_capacity(p.maintenance_windows.len());
        for (index, text) in p.maintenance_windows.iter().enumerate() {
            let window = MaintenanceWindow::parse(text).map_err(|_| {
                AssignmentRefusal::new(
                    &format!("policy.maintenance_windows[{index}]"),
                    "must be HH:MM-HH:MM from 00:00 to 23:59 with start and end different",
                )
            })?;
            maintenance_windows.push(window);
        }
        let wave_size = NonZeroU32::new(p.wave_size)
            .filter(|n| n.get() <= MAX_WAVE_SIZE)
            .ok_or_else(|| {
                AssignmentRefusal::new("policy.wave_size", format!("must be 1-{MAX_WAVE_SIZE}"))
            })?;
        Ok(Assignment {
            id: wire.id,
            target: wire.target,
            devices,
            policy: Policy {
                required: p.required,
                not_before_ms: p.not_before_ms,
                maintenance_windows,
                wave_size,
                failure_threshold: p.failure_threshold,
            },
        })
    }

    /// The assignment as a JSON document that [`Assignment::parse`] accepts (for the
    /// store).
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let (group, kind) = match &self.devices {
            DeviceSelector::Group(g) => (Some(g.clone()), None),
            DeviceSelector::Kind(k) => (None, Some(k.clone())),
        };
        let wire = WireAssignment {
            id: self.id.clone(),
            target: self.target.clone(),
            devices: WireSelector { group, kind },
            policy: WirePolicy {
                required: self.policy.required,
                not_before_ms: self.policy.not_before_ms,
                maintenance_windows: self
                    .policy
                    .maintenance_windows
                    .iter()
                    .map(|w| w.text.clone())
                    .collect(),
                wave_size: self.policy.wave_size.get(),
                failure_threshold: self.policy.failure_threshold,
            },
        };
        // Serializing plain strings, integers and booleans cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// The cloud withdraws an assignment: no further offers, its file is no longer served;
/// devices already installing finish and may still report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// The assignment's id.
    pub id: String,
    /// A short reason for the records (`A-Z a-z 0-9 . _ - :` and spaces, at most
    /// [`MAX_CANCEL_REASON_LEN`]).
    pub reason: Option<String>,
}

impl Cancellation {
    /// Parses `{"cancel": "<id>", "reason": "<optional>"}`.
    ///
    /// # Errors
    /// The first problem, naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Cancellation, AssignmentRefusal> {
        let wire: WireCancel = parse_wire(bytes)?;
        if !is_valid_id(&wire.cancel) {
            return Err(AssignmentRefusal::new(
                "cancel",
                "not a valid assignment id",
            ));
        }
        if let Some(reason) = &wire.reason {
            let ok = !reason.is_empty()
                && reason.len() <= MAX_CANCEL_REASON_LEN
                && reason.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b' ')
                });
            if !ok {
                return Err(AssignmentRefusal::new(
                    "reason",
                    format!("must be 1-{MAX_CANCEL_REASON_LEN} characters of A-Z a-z 0-9 . _ - : and spaces"),
                ));
            }
        }
        Ok(Cancellation {
            id: wire.cancel,
            reason: wire.reason,
        })
    }
}

/// Either instruction the cloud can send about updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// Roll out a target.
    Assign(Assignment),
    /// Withdraw an assignment.
    Cancel(Cancellation),
}

impl Instruction {
    /// Parses either document: one with a top-level `cancel` key is a cancellation,
    /// anything else must be an assignment.
    ///
    /// # Errors
    /// The first problem, naming the field.
    pub fn parse(bytes: &[u8]) -> Result<Instruction, AssignmentRefusal> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            cancel: Option<serde::de::IgnoredAny>,
        }
        let probe: Result<Probe, _> = if bytes.len() > MAX_ASSIGNMENT_BYTES {
            Err(())
        } else {
            serde_json::from_slice(bytes).map_err(|_| ())
        };
        match probe {
            Ok(Probe { cancel: Some(_) }) => Cancellation::parse(bytes).map(Instruction::Cancel),
            _ => Assignment::parse(bytes).map(Instruction::Assign),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn doc() -> Value {
        json!({
            "id": "pump-fw-4.2.1",
            "target": "infusion/pump-4.2.1.bin",
            "devices": {"group": "infusion-pumps"},
            "policy": {
                "required": true,
                "not_before_ms": 1000,
                "maintenance_windows": ["22:00-06:00", "12:00-13:00"],
                "wave_size": 2,
                "failure_threshold": 1
            }
        })
    }

    fn parse(value: &Value) -> Result<Assignment, AssignmentRefusal> {
        Assignment::parse(&serde_json::to_vec(value).unwrap())
    }

    fn refused_field(value: &Value) -> String {
        parse(value).unwrap_err().field
    }

    #[test]
    fn a_complete_assignment_parses_and_round_trips() {
        let a = parse(&doc()).unwrap();
        assert_eq!(a.id, "pump-fw-4.2.1");
        assert_eq!(a.devices, DeviceSelector::Group("infusion-pumps".into()));
        assert!(a.policy.required);
        assert_eq!(a.policy.wave_size.get(), 2);
        assert_eq!(a.policy.maintenance_windows[0].as_str(), "22:00-06:00");
        assert_eq!(Assignment::parse(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn optional_policy_fields_default_to_always_open() {
        let mut v = doc();
        let policy = v["policy"].as_object_mut().unwrap();
        policy.remove("not_before_ms");
        policy.remove("maintenance_windows");
        let a = parse(&v).unwrap();
        assert!(a.policy.open_at(0, 0));
        assert_eq!(Assignment::parse(&a.to_json()).unwrap(), a);
    }

    #[test]
    fn windows_cross_midnight_and_not_before_holds() {
        let a = parse(&doc()).unwrap();
        let p = &a.policy;
        assert!(!p.open_at(999, 23 * 60), "before not_before");
        assert!(p.open_at(1000, 23 * 60));
        assert!(p.open_at(1000, 3 * 60));
        assert!(p.open_at(1000, 12 * 60 + 30));
        assert!(!p.open_at(1000, 6 * 60), "end is exclusive");
        assert!(!p.open_at(1000, 21 * 60 + 59));
    }

    #[test]
    fn refusals_name_the_field() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|v| v["id"] = json!("")), "id"),
            (Box::new(|v| v["id"] = json!("metadata")), "id"),
            (Box::new(|v| v["id"] = json!("../x")), "id"),
            (Box::new(|v| v["target"] = json!("../etc/passwd")), "target"),
            (Box::new(|v| v["target"] = json!("/abs")), "target"),
            (Box::new(|v| v["target"] = json!("a//b")), "target"),
            (Box::new(|v| v["devices"] = json!({})), "devices"),
            (
                Box::new(|v| v["devices"] = json!({"group": "a", "kind": "b"})),
                "devices",
            ),
            (
                Box::new(|v| v["devices"] = json!({"group": "a b"})),
                "devices.group",
            ),
            (
                Box::new(|v| v["devices"] = json!({"model": "x"})),
                "devices.model",
            ),
            (
                Box::new(|v| v["policy"]["wave_size"] = json!(0)),
                "policy.wave_size",
            ),
            (
                Box::new(|v| v["policy"]["wave_size"] = json!(-1)),
                "policy.wave_size",
            ),
            (
                Box::new(|v| v["policy"]["maintenance_windows"] = json!(["25:00-01:00"])),
                "policy.maintenance_windows[0]",
            ),
            (
                Box::new(|v| v["policy"]["maintenance_windows"] = json!(["01:00-01:00"])),
                "policy.maintenance_windows[0]",
            ),
            (
                Box::new(|v| v["policy"]["maintenance_windows"] = json!(["1:00-2:00"])),
                "policy.maintenance_windows[0]",
            ),
            (
                Box::new(|v| {
                    v["policy"].as_object_mut().unwrap().remove("required");
                }),
                "policy",
            ),
            (
                Box::new(|v| v["policy"]["retries"] = json!(3)),
                "policy.retries",
            ),
            (Box::new(|v| v["extra"] = json!(1)), "extra"),
            (
                Box::new(|v| v["policy"]["required"] = json!("yes")),
                "policy.required",
            ),
        ];
        for (change, field) in cases {
            let mut v = doc();
            change(&mut v);
            assert_eq!(refused_field(&v), field, "{v}");
        }
    }

    #[test]
    fn refusals_do_not_quote_values() {
        let mut v = doc();
        v["policy"]["required"] = json!("SECRET-VALUE");
        let refusal = parse(&v).unwrap_err();
        assert!(!refusal.to_string().contains("SECRET"), "{refusal}");
        let refusal = Assignment::parse(b"{not json").unwrap_err();
        assert_eq!(refusal.field, "(document)");
        let refusal = Assignment::parse(b"{} {}").unwrap_err();
        assert_eq!(refusal.field, "(document)");
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let big = vec![b' '; MAX_ASSIGNMENT_BYTES + 1];
        let refusal = Assignment::parse(&big).unwrap_err();
        assert_eq!(refusal.field, "(document)");
        assert!(refusal.reason.contains("limit"));
    }

    #[test]
    fn selectors_match_group_or_kind() {
        let g = DeviceSelector::Group("ward3".into());
        assert!(g.matches("pump", "ward3"));
        assert!(!g.matches("ward3", "pumps"));
        let k = DeviceSelector::Kind("pump".into());
        assert!(k.matches("pump", "ward3"));
        assert!(!k.matches("monitor", "pump"));
    }

    #[test]
    fn instructions_distinguish_cancellations() {
        let bytes = serde_json::to_vec(&doc()).unwrap();
        assert!(matches!(
            Instruction::parse(&bytes).unwrap(),
            Instruction::Assign(_)
        ));
        let cancel = br#"{"cancel":"pump-fw-4.2.1","reason":"recalled by vendor"}"#;
        assert_eq!(
            Instruction::parse(cancel).unwrap(),
            Instruction::Cancel(Cancellation {
                id: "pump-fw-4.2.1".into(),
                reason: Some("recalled by vendor".into())
            })
        );
        let refusal = Instruction::parse(br#"{"cancel":"x","why":1}"#).unwrap_err();
        assert_eq!(refusal.field, "why");
        let refusal = Cancellation::parse(br#"{"cancel":"x","reason":"a\nb"}"#).unwrap_err();
        assert_eq!(refusal.field, "reason");
    }
}
