//! `/metrics`: a [`StatusSnapshot`] in the Prometheus text exposition format, version
//! 0.0.4 (`text/plain; version=0.0.4`), written by hand: the format is a few lines of
//! grammar and the `prometheus` crate would bring a registry we do not need.
//!
//! Invariants:
//! * Every family is written as `# HELP`, `# TYPE`, then all of its samples, contiguously;
//!   no family appears twice.
//! * Counter families end in `_total`; timestamps are `_timestamp_seconds`, durations
//!   `_seconds`, sizes `_bytes` (Prometheus naming conventions).
//! * Label values are escaped (`\\`, `\"`, `\n`), so a device id cannot break the format
//!   or forge a sample.
//! * Device state is a state set: one sample per possible state, 1 for the current one,
//!   0 for the others, so an alert rule sees a device leave a state as well as enter it.
//! * Figures that do not exist yet are left out, not written as 0 (a client certificate
//!   not loaded yet, a device with no data since start, staging absent from this build);
//!   an empty spool's oldest-record age is 0.

use std::fmt::Write as _;

use wardgate_proto::{DeviceState, Priority};

use super::snapshot::{PerClass, StatusSnapshot};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state a device can be in, in the order written.
const DEVICE_STATES: [DeviceState; 6] = [
    DeviceState::Unknown,
    DeviceState::Online,
    DeviceState::Offline,
    DeviceState::InProcedure,
    DeviceState::Updating,
    DeviceState::Error,
];

/// The Prometheus metric kinds used here.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// Writes families; each `family` call emits HELP and TYPE, then the samples follow.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label_value(value));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per spool class, labelled `class`.
    fn per_class(&mut self, name: &str, kind: Kind, help: &str, values: &PerClass) {
        self.family(name, kind, help);
        for class in Priority::ALL {
            self.sample(name, &[("class", class.name())], as_f64(values.get(class)));
        }
    }
}

/// Renders `snapshot` as a Prometheus text exposition.
#[must_use]
pub fn render(snapshot: &StatusSnapshot) -> String {
    let mut e = Exposition {
        out: String::with_capacity(4096 + snapshot.devices.len() * 900),
    };
    let g = &snapshot.gateway;
    e.family(
        "wardgate_info",
        Kind::Gauge,
        "The gateway's id and version; always 1.",
    );
    e.sample(
        "wardgate_info",
        &[("gateway", &g.id), ("version", &g.version)],
        1.0,
    );
    e.single(
        "wardgate_start_time_seconds",
        Kind::Gauge,
        "When the wardgate process started, Unix seconds.",
        ms_to_secs(g.started_at_ms),
    );

    e.family(
        "wardgate_device_state",
        Kind::Gauge,
        "1 for the state each configured device is in, 0 for the others.",
    );
    for d in &snapshot.devices {
        for state in DEVICE_STATES {
            let value = if d.state == state { 1.0 } else { 0.0 };
            e.sample(
                "wardgate_device_state",
                &[
                    ("device", &d.id),
                    ("kind", &d.kind),
                    ("adapter", &d.adapter),
                    ("state", state.name()),
                ],
                value,
            );
        }
    }
    e.family(
        "wardgate_device_state_since_timestamp_seconds",
        Kind::Gauge,
        "When each device entered its current state, Unix seconds.",
    );
    for d in &snapshot.devices {
        e.sample(
            "wardgate_device_state_since_timestamp_seconds",
            &[("device", &d.id)],
            ms_to_secs(d.state_since_ms),
        );
    }
    e.family(
        "wardgate_device_last_data_timestamp_seconds",
        Kind::Gauge,
        "When data from each device last reached the spool, Unix seconds (absent: none since start).",
    );
    for d in &snapshot.devices {
        if let Some(at) = d.last_data_ms {
            e.sample(
                "wardgate_device_last_data_timestamp_seconds",
                &[("device", &d.id)],
                ms_to_secs(at),
            );
        }
    }

    let s = &snapshot.spool;
    e.per_class(
        "wardgate_spool_records",
        Kind::Gauge,
        "Records held in the spool, waiting for the cloud's acknowledgement.",
        &s.records_by_class,
    );
    e.single(
        "wardgate_spool_leased_records",
        Kind::Gauge,
        "Spooled records handed to the uplink and not yet acknowledged.",
        as_f64(s.leased_records),
    );
    e.single(
        "wardgate_spool_bytes",
        Kind::Gauge,
        "Budget charge of the spooled records, bytes.",
        as_f64(s.bytes),
    );
    e.single(
        "wardgate_spool_budget_bytes",
        Kind::Gauge,
        "The spool's configured disk budget, bytes.",
        as_f64(s.budget_bytes),
    );
    e.single(
        "wardgate_spool_oldest_record_age_seconds",
        Kind::Gauge,
        "Age of the oldest spooled record, seconds (0 when the spool is empty).",
        as_f64(s.oldest_record_age_secs.unwrap_or(0)),
    );
    e.per_class(
        "wardgate_spool_evicted_records_total",
        Kind::Counter,
        "Records evicted to make room for higher classes.",
        &s.evicted_records,
    );
    e.per_class(
        "wardgate_spool_expired_records_total",
        Kind::Counter,
        "Records dropped because their class's time to live passed.",
        &s.expired_records,
    );
    e.single(
        "wardgate_spool_refused_records_total",
        Kind::Counter,
        "Records refused because the budget was taken by their class or higher.",
        as_f64(s.refused_records),
    );
    e.single(
        "wardgate_spool_appended_records_total",
        Kind::Counter,
        "Records accepted into the spool.",
        as_f64(s.appended_records),
    );
    e.single(
        "wardgate_spool_acked_records_total",
        Kind::Counter,
        "Records deleted from the spool after the cloud acknowledged them.",
        as_f64(s.acked_records),
    );

    let u = &snapshot.uplink;
    e.single(
        "wardgate_uplink_connected",
        Kind::Gauge,
        "1 while a session with the cloud broker is established.",
        if u.connected { 1.0 } else { 0.0 },
    );
    if u.since_ms > 0 {
        e.single(
            "wardgate_uplink_state_since_timestamp_seconds",
            Kind::Gauge,
            "When the uplink last connected or disconnected, Unix seconds.",
            ms_to_secs(u.since_ms),
        );
    }
    e.single(
        "wardgate_uplink_published_records_total",
        Kind::Counter,
        "Records the cloud broker acknowledged.",
        as_f64(u.published_records),
    );
    e.single(
        "wardgate_uplink_published_batches_total",
        Kind::Counter,
        "Publishes the cloud broker acknowledged.",
        as_f64(u.published_batches),
    );
    e.single(
        "wardgate_uplink_in_flight_records",
        Kind::Gauge,
        "Records published and not yet acknowledged, or waiting for the in-flight window.",
        as_f64(u.in_flight_records),
    );
    e.single(
        "wardgate_uplink_connects_total",
        Kind::Counter,
        "Successful connections to the cloud broker.",
        as_f64(u.connects),
    );
    e.single(
        "wardgate_uplink_connection_failures_total",
        Kind::Counter,
        "Connection attempts or sessions that ended in an error.",
        as_f64(u.connection_failures),
    );
    e.single(
        "wardgate_uplink_held_back_records_total",
        Kind::Counter,
        "Times a record that can never be published was met and held back.",
        as_f64(u.held_back_records),
    );
    if let Some(not_after) = u.client_cert_not_after {
        e.single(
            "wardgate_uplink_client_certificate_expiry_timestamp_seconds",
            Kind::Gauge,
            "When the gateway's client certificate expires, Unix seconds.",
            // Certificate dates are whole seconds well inside f64's exact range.
            #[allow(clippy::cast_precision_loss)]
            {
                not_after as f64
            },
        );
    }

    let h = &snapshot.hl7;
    e.single(
        "wardgate_hl7_connections_active",
        Kind::Gauge,
        "HL7 MLLP connections open now.",
        as_f64(h.connections_active),
    );
    e.family(
        "wardgate_hl7_connections_total",
        Kind::Counter,
        "HL7 MLLP connections by outcome: accepted, refused (connection cap), denied (allow-list).",
    );
    for (result, value) in [
        ("accepted", h.connections_accepted),
        ("refused", h.connections_refused),
        ("denied", h.connections_denied),
    ] {
        e.sample(
            "wardgate_hl7_connections_total",
            &[("result", result)],
            as_f64(value),
        );
    }
    e.single(
        "wardgate_hl7_idle_timeouts_total",
        Kind::Counter,
        "HL7 connections closed because no frame completed in time.",
        as_f64(h.idle_timeouts),
    );
    e.family(
        "wardgate_hl7_messages_total",
        Kind::Counter,
        "HL7 messages by answer: accepted (AA/CA), errored (AE/CE), rejected (AR/CR).",
    );
    for (result, value) in [
        ("accepted", h.messages_accepted),
        ("errored", h.messages_errored),
        ("rejected", h.messages_rejected),
    ] {
        e.sample(
            "wardgate_hl7_messages_total",
            &[("result", result)],
            as_f64(value),
        );
    }
    e.single(
        "wardgate_hl7_frames_too_large_total",
        Kind::Counter,
        "HL7 frames larger than hl7.max_message_bytes.",
        as_f64(h.frames_too_large),
    );
    e.single(
        "wardgate_hl7_rate_limited_total",
        Kind::Counter,
        "HL7 messages refused by the per-source rate limit.",
        as_f64(h.rate_limited),
    );
    e.single(
        "wardgate_hl7_garbage_bytes_total",
        Kind::Counter,
        "Bytes received outside MLLP frames and skipped.",
        as_f64(h.garbage_bytes),
    );

    if let Some(i) = &snapshot.imaging {
        e.single(
            "wardgate_outbox_files",
            Kind::Gauge,
            "Bulk upload files waiting for the receiver's commit.",
            as_f64(i.outbox_files),
        );
        e.single(
            "wardgate_outbox_bytes",
            Kind::Gauge,
            "Bytes of the files waiting in the bulk upload outbox.",
            as_f64(i.outbox_bytes),
        );
        e.single(
            "wardgate_outbox_budget_bytes",
            Kind::Gauge,
            "The bulk upload outbox's disk budget (bulk_upload.outbox_budget_bytes).",
            as_f64(i.outbox_budget_bytes),
        );
        e.single(
            "wardgate_bulk_files_uploaded_total",
            Kind::Counter,
            "Files the bulk upload receiver committed since start.",
            as_f64(i.files_uploaded),
        );
        e.single(
            "wardgate_bulk_bytes_sent_total",
            Kind::Counter,
            "Bulk upload payload bytes sent since start.",
            as_f64(i.bytes_sent),
        );
        e.single(
            "wardgate_bulk_hash_mismatches_total",
            Kind::Counter,
            "Whole-file hash mismatches the receiver reported (each file retried from zero).",
            as_f64(i.hash_mismatches),
        );
        e.single(
            "wardgate_bulk_connection_failures_total",
            Kind::Counter,
            "Failed or lost connections to the bulk upload receiver.",
            as_f64(i.connection_failures),
        );
        e.family(
            "wardgate_dicom_objects_total",
            Kind::Counter,
            "DICOM objects received, by outcome: stored (de-identified into the outbox), quarantined, refused.",
        );
        for (outcome, value) in [
            ("stored", i.dicom_stored),
            ("quarantined", i.dicom_quarantined),
            ("refused", i.dicom_refused),
        ] {
            e.sample(
                "wardgate_dicom_objects_total",
                &[("outcome", outcome)],
                as_f64(value),
            );
        }
    }
    if let Some(patches) = &snapshot.patches {
        e.single(
            "wardgate_patches_staged",
            Kind::Gauge,
            "Update packages staged for devices.",
            as_f64(u64::try_from(patches.len()).unwrap_or(u64::MAX)),
        );
    }
    e.single(
        "wardgate_alerts",
        Kind::Gauge,
        "Conditions a technician should look at (see the status page).",
        as_f64(u64::try_from(snapshot.alerts.len()).unwrap_or(u64::MAX)),
    );
    e.out
}

/// A counter or level as a sample value. Above 2^53 the value rounds, which Prometheus
/// (whose samples are f64) would do anyway.
#[allow(clippy::cast_precision_loss)]
fn as_f64(v: u64) -> f64 {
    v as f64
}

/// Unix milliseconds as Unix seconds with millisecond precision.
fn ms_to_secs(ms: u64) -> f64 {
    as_f64(ms) / 1000.0
}

/// Sample values: integers without a fraction, others as Rust prints them (which
/// Prometheus parses: `1.5`, `1e21`); non-finite values use the format's spellings.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value: backslash, double quote and line feed.
#[must_use]
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::status::snapshot::{
        Alert, DeviceStatus, GatewayInfo, Hl7Figures, SpoolFigures, UplinkFigures,
    };

    /// One parsed sample.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A strict parser for the subset of the 0.0.4 text format we write; panics (fails
    /// the test) on anything else, and checks the family rules on the way.
    fn parse(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "exposition must end with a line feed");
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut helped: BTreeSet<String> = BTreeSet::new();
        let mut finished: BTreeSet<String> = BTreeSet::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').unwrap();
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
                if let Some(prev) = current.replace(name.to_owned()) {
                    finished.insert(prev);
                }
                assert!(!finished.contains(name), "family {name} split");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "gauge" | "counter"), "{line}");
                assert_eq!(current.as_deref(), Some(name), "TYPE not after its HELP");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice for {name}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                }
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line}");
                let sample = parse_sample(line);
                assert!(
                    types.contains_key(&sample.name),
                    "sample of {} without a TYPE line before it",
                    sample.name
                );
                assert_eq!(
                    current.as_deref(),
                    Some(sample.name.as_str()),
                    "sample {line} outside its family"
                );
                samples.push(sample);
            }
        }
        samples
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name {name:?}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut label = String::new();
            loop {
                let (_, c) = chars.next().unwrap();
                match c {
                    '}' => break,
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().unwrap().1, '"');
                        let mut value = String::new();
                        loop {
                            match chars.next().unwrap().1 {
                                '\\' => match chars.next().unwrap().1 {
                                    '\\' => value.push('\\'),
                                    '"' => value.push('"'),
                                    'n' => value.push('\n'),
                                    other => panic!("bad escape \\{other} in {line}"),
                                },
                                '"' => break,
                                '\n' => panic!("raw line feed in a label value"),
                                c => value.push(c),
                            }
                        }
                        assert!(
                            labels.insert(std::mem::take(&mut label), value).is_none(),
                            "duplicate label in {line}"
                        );
                    }
                    c => label.push(c),
                }
            }
            let consumed = chars.next().map_or(inner.len(), |(i, _)| i);
            rest = &inner[consumed..];
        }
        let value = rest.strip_prefix(' ').unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap(),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            generated_at_ms: 1_700_000_100_000,
            gateway: GatewayInfo::new("gw-1", 1_700_000_000_000, 1_700_000_100_000),
            devices: vec![
                DeviceStatus {
                    id: "icu-3 \"bed\" \\ 7\nx".to_owned(),
                    kind: "patient-monitor".to_owned(),
                    adapter: "hl7".to_owned(),
                    state: DeviceState::InProcedure,
                    state_since_ms: 1_700_000_050_500,
                    last_data_ms: Some(1_700_000_099_000),
                },
                DeviceStatus {
                    id: "pump-1".to_owned(),
                    kind: "infusion-pump".to_owned(),
                    adapter: "modbus".to_owned(),
                    state: DeviceState::Unknown,
                    state_since_ms: 1_700_000_000_000,
                    last_data_ms: None,
                },
            ],
            spool: SpoolFigures {
                records: 10,
                records_by_class: PerClass::from_array([1, 2, 3, 4]),
                oldest_record_age_secs: Some(42),
                evicted_records: PerClass::from_array([7, 0, 0, 0]),
                ..SpoolFigures::default()
            },
            uplink: UplinkFigures {
                connected: true,
                since_ms: 1_700_000_001_000,
                client_cert_not_after: Some(1_800_000_000),
                ..UplinkFigures::default()
            },
            hl7: Hl7Figures {
                messages_accepted: 99,
                messages_rejected: 2,
                ..Hl7Figures::default()
            },
            imaging: None,
            patches: None,
            alerts: vec![Alert {
                at_ms: 1,
                code: "spool-evicting".to_owned(),
                message: "m".to_owned(),
            }],
        }
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    #[test]
    fn every_sample_has_a_type_and_families_are_contiguous() {
        let samples = parse(&render(&snapshot()));
        assert!(samples.len() > 30);
    }

    #[test]
    fn figures_land_in_the_named_metrics() {
        let samples = parse(&render(&snapshot()));
        assert_eq!(
            find(&samples, "wardgate_spool_records", &[("class", "alarm")]).value,
            4.0
        );
        assert_eq!(
            find(&samples, "wardgate_spool_oldest_record_age_seconds", &[]).value,
            42.0
        );
        assert_eq!(find(&samples, "wardgate_uplink_connected", &[]).value, 1.0);
        assert_eq!(
            find(
                &samples,
                "wardgate_hl7_messages_total",
                &[("result", "accepted")]
            )
            .value,
            99.0
        );
        assert_eq!(
            find(
                &samples,
                "wardgate_spool_evicted_records_total",
                &[("class", "log")]
            )
            .value,
            7.0
        );
        assert_eq!(
            find(
                &samples,
                "wardgate_device_state_since_timestamp_seconds",
                &[("device", "pump-1")]
            )
            .value,
            1_700_000_000.0
        );
        assert_eq!(
            find(&samples, "wardgate_info", &[("gateway", "gw-1")]).value,
            1.0
        );
    }

    #[test]
    fn device_state_is_a_state_set_with_escaped_labels() {
        let samples = parse(&render(&snapshot()));
        let tricky = "icu-3 \"bed\" \\ 7\nx";
        let states: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == "wardgate_device_state"
                    && s.labels.get("device").map(String::as_str) == Some(tricky)
            })
            .collect();
        assert_eq!(states.len(), DEVICE_STATES.len());
        let on: Vec<&str> = states
            .iter()
            .filter(|s| s.value == 1.0)
            .map(|s| s.labels["state"].as_str())
            .collect();
        assert_eq!(on, ["in-procedure"]);
        assert_eq!(states[0].labels["kind"], "patient-monitor");
    }

    #[test]
    fn absent_figures_are_left_out() {
        let samples = parse(&render(&snapshot()));
        let last_data: Vec<&str> = samples
            .iter()
            .filter(|s| s.name == "wardgate_device_last_data_timestamp_seconds")
            .map(|s| s.labels["device"].as_str())
            .collect();
        assert_eq!(last_data, ["icu-3 \"bed\" \\ 7\nx"]);
        assert!(!samples.iter().any(|s| s.name == "wardgate_patches_staged"));
        let mut with_patches = snapshot();
        with_patches.patches = Some(Vec::new());
        let samples = parse(&render(&with_patches));
        assert_eq!(find(&samples, "wardgate_patches_staged", &[]).value, 0.0);
    }

    #[test]
    fn label_escaping_round_trips() {
        for raw in [
            "plain",
            "a\"b",
            "back\\slash",
            "line\nfeed",
            "\\n literal",
            "",
        ] {
            let line = format!("m{{l=\"{}\"}} 1", escape_label_value(raw));
            assert_eq!(parse_sample(&line).labels["l"], raw, "{line}");
        }
    }

    #[test]
    fn values_use_the_formats_spellings() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1_700_000_050.5), "1700000050.5");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}
