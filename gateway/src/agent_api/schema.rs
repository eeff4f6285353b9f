//! The JSON bodies of the agent API and their checks. Pure code: no I/O; the time of
//! receipt is passed in.
//!
//! Two stages, two status codes:
//! * **Shape** ([`parse`]): the body must be JSON of the route's schema. Unknown fields
//!   are errors (`deny_unknown_fields`): a misspelt optional field would otherwise be
//!   dropped silently. Failures are `400` with serde's message and the JSON path, e.g.
//!   `measurements[0]: unknown field `valu`, expected one of `name`, `value`, `units`, `at_ms``.
//! * **Values** (`into_*`): names are identifiers, lists are non-empty and bounded, log
//!   lines are single lines. Failures are `422` naming the field.
//!
//! Device free text (log lines, state reasons, units) is PHI-suspect: `Debug` of every type
//! here that carries it prints [`wardgate_device_adapters::REDACTED`], and error messages
//! built here never quote it. (serde's shape messages may quote a value back to the device
//! that sent it; the server never logs them.)

use serde::de::DeserializeOwned;
use serde::Deserialize;
use wardgate_device_adapters::REDACTED;
use wardgate_proto::{DeviceState, Measurement};

/// Most measurements in one telemetry request.
pub const MAX_MEASUREMENTS: usize = 1000;
/// Most lines in one logs request.
pub const MAX_LOG_LINES: usize = 10_000;
/// Longest log line, in bytes.
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;
/// Longest measurement name or reason code.
pub const MAX_NAME_LEN: usize = 128;
/// Longest units string.
pub const MAX_UNITS_LEN: usize = 32;
/// Longest log file name.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z, so every stored time is a valid
/// RFC 3339 date and fits an `i64`.
pub const MAX_TIMESTAMP_MS: u64 = 253_402_300_799_999;

/// The states an agent may report. `offline` and `unknown` are the gateway's to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportedState {
    /// Working, not treating a patient. Also how an agent reports the end of a procedure.
    Online,
    /// Treating a patient (the start of a procedure): non-clinical work waits.
    InProcedure,
    /// The device reports a fault.
    Error,
    /// Installing an update.
    Updating,
}

impl From<ReportedState> for DeviceState {
    fn from(state: ReportedState) -> Self {
        match state {
            ReportedState::Online => DeviceState::Online,
            ReportedState::InProcedure => DeviceState::InProcedure,
            ReportedState::Error => DeviceState::Error,
            ReportedState::Updating => DeviceState::Updating,
        }
    }
}

/// `POST /v1/devices/{device_id}/state`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    /// The state the device is in now.
    pub state: ReportedState,
    /// A machine-readable reason code, e.g. `procedure-start`, `E1234`.
    #[serde(default)]
    pub reason: Option<String>,
    /// When the device entered the state (Unix ms, device clock); default: receipt time.
    #[serde(default)]
    pub at_ms: Option<u64>,
}

impl std::fmt::Debug for StateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateRequest")
            .field("state", &self.state)
            .field("reason", &self.reason.as_ref().map(|_| REDACTED))
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

/// A state report as handed to the backend: checked, times resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct StateReport {
    /// The reported state (never `offline` or `unknown`).
    pub state: DeviceState,
    /// The device's reason code, checked to be an identifier but still device-supplied:
    /// the backend decides whether it may leave the gateway.
    pub reason: Option<String>,
    /// When the device entered the state (Unix ms).
    pub at_ms: u64,
}

impl std::fmt::Debug for StateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReport")
            .field("state", &self.state)
            .field("reason", &self.reason.as_ref().map(|_| REDACTED))
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

/// `POST /v1/devices/{device_id}/telemetry`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryRequest {
    /// The readings, 1–1000.
    pub measurements: Vec<MeasurementInput>,
}

/// One reading as an agent sends it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementInput {
    /// The reading's name: 1–128 characters of `A-Z a-z 0-9 - _ . :`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Units (UCUM where possible), 1–32 characters without spaces or control characters.
    #[serde(default)]
    pub units: Option<String>,
    /// When it was read (Unix ms, device clock); default: receipt time.
    #[serde(default)]
    pub at_ms: Option<u64>,
}

impl std::fmt::Debug for MeasurementInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasurementInput")
            .field("name", &self.name)
            .field("value", &self.value)
            .field("units", &self.units.as_ref().map(|_| REDACTED))
            .field("at_ms", &self.at_ms)
            .finish()
    }
}

/// `POST /v1/devices/{device_id}/logs`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// The log file's name, without directory, e.g. `system.log`.
    pub file: String,
    /// The lines, in file order, 1–10,000, each without line breaks.
    pub lines: Vec<String>,
}

impl std::fmt::Debug for LogsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogsRequest")
            .field("file", &self.file)
            .field(
                "lines",
                &format_args!("{} lines, {REDACTED}", self.lines.len()),
            )
            .finish()
    }
}

/// Why a body was refused, and at which status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not JSON at all (400 `malformed_json`).
    Malformed(String),
    /// JSON, but not of the route's schema (400 `schema_mismatch`).
    Shape(String),
    /// The right shape with a refused value (422 `invalid_value`).
    Value(String),
}

/// Parses `body` as `T`, reporting where the shape is wrong.
///
/// # Errors
/// [`BodyProblem::Malformed`] for bytes that are not JSON, [`BodyProblem::Shape`] for JSON
/// that does not fit `T`; both carry serde's message prefixed by the JSON path.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BodyProblem> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        if inner.is_data() {
            BodyProblem::Shape(message)
        } else {
            BodyProblem::Malformed(message)
        }
    })?;
    // Trailing garbage after the value (`{...}x`) is malformed too.
    deserializer
        .end()
        .map_err(|e| BodyProblem::Malformed(e.to_string()))?;
    Ok(value)
}

pub(crate) fn is_identifier(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn check_time(field: &str, at_ms: Option<u64>, now_ms: u64) -> Result<u64, BodyProblem> {
    match at_ms {
        None => Ok(now_ms),
        Some(t) if t <= MAX_TIMESTAMP_MS => Ok(t),
        Some(_) => Err(BodyProblem::Value(format!(
            "{field}: must be Unix milliseconds no later than {MAX_TIMESTAMP_MS} (year 9999)"
        ))),
    }
}

impl StateRequest {
    /// Checks the values; `now_ms` stands in for a missing `at_ms`.
    ///
    /// # Errors
    /// [`BodyProblem::Value`] naming the field.
    pub fn into_report(self, now_ms: u64) -> Result<StateReport, BodyProblem> {
        if let Some(reason) = &self.reason {
            if !is_identifier(reason, MAX_NAME_LEN) {
                return Err(BodyProblem::Value(format!(
                    "reason: must be a code of 1–{MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . : (no free text)"
                )));
            }
        }
        Ok(StateReport {
            state: self.state.into(),
            reason: self.reason,
            at_ms: check_time("at_ms", self.at_ms, now_ms)?,
        })
    }
}

impl TelemetryRequest {
    /// Checks the values; `now_ms` stands in for a missing `at_ms`.
    ///
    /// # Errors
    /// [`BodyProblem::Value`] naming the first refused field.
    pub fn into_measurements(self, now_ms: u64) -> Result<Vec<Measurement>, BodyProblem> {
        if self.measurements.is_empty() || self.measurements.len() > MAX_MEASUREMENTS {
            return Err(BodyProblem::Value(format!(
                "measurements: must hold 1–{MAX_MEASUREMENTS} readings (got {})",
                self.measurements.len()
            )));
        }
        self.measurements
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                if !is_identifier(&m.name, MAX_NAME_LEN) {
                    return Err(BodyProblem::Value(format!(
                        "measurements[{i}].name: must be 1–{MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . :"
                    )));
                }
                if !m.value.is_finite() {
                    return Err(BodyProblem::Value(format!(
                        "measurements[{i}].value: must be a finite number"
                    )));
                }
                if let Some(units) = &m.units {
                    if units.is_empty()
                        || units.chars().count() > MAX_UNITS_LEN
                        || units.chars().any(|c| c.is_control() || c.is_whitespace())
                    {
                        return Err(BodyProblem::Value(format!(
                            "measurements[{i}].units: must be 1–{MAX_UNITS_LEN} characters without spaces or control characters"
                        )));
                    }
                }
                let at_ms = check_time(&format!("measurements[{i}].at_ms"), m.at_ms, now_ms)?;
                Ok(Measurement {
                    name: m.name,
                    value: m.value,
                    units: m.units,
                    at_ms,
                })
            })
            .collect()
    }
}

impl LogsRequest {
    /// Checks the values and returns the file name and the lines.
    ///
    /// # Errors
    /// [`BodyProblem::Value`] naming the first refused field.
    pub fn into_parts(self) -> Result<(String, Vec<String>), BodyProblem> {
        let file = &self.file;
        if file.is_empty()
            || file.len() > MAX_FILE_NAME_LEN
            || file == "."
            || file == ".."
            || file.contains(['/', '\\'])
            || file.chars().any(char::is_control)
        {
            return Err(BodyProblem::Value(format!(
                "file: must be a file name of 1–{MAX_FILE_NAME_LEN} bytes without directory or control characters"
            )));
        }
        if self.lines.is_empty() || self.lines.len() > MAX_LOG_LINES {
            return Err(BodyProblem::Value(format!(
                "lines: must hold 1–{MAX_LOG_LINES} lines (got {})",
                self.lines.len()
            )));
        }
        for (i, line) in self.lines.iter().enumerate() {
            if line.len() > MAX_LOG_LINE_BYTES {
                return Err(BodyProblem::Value(format!(
                    "lines[{i}]: longer than {MAX_LOG_LINE_BYTES} bytes"
                )));
            }
            if line.contains(['\n', '\r']) {
                return Err(BodyProblem::Value(format!(
                    "lines[{i}]: contains a line break; send one line per array item"
                )));
            }
        }
        Ok((self.file, self.lines))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    const NOW: u64 = 1_735_732_800_000;

    #[test]
    fn state_reports_parse_and_default_their_time() {
        let req: StateRequest =
            parse(br#"{"state":"in-procedure","reason":"procedure-start"}"#).unwrap();
        let report = req.into_report(NOW).unwrap();
        assert_eq!(report.state, DeviceState::InProcedure);
        assert_eq!(report.reason.as_deref(), Some("procedure-start"));
        assert_eq!(report.at_ms, NOW);
        let req: StateRequest = parse(br#"{"state":"online","at_ms":5}"#).unwrap();
        assert_eq!(req.into_report(NOW).unwrap().at_ms, 5);
    }

    #[test]
    fn gateway_owned_states_are_not_reportable() {
        let err = parse::<StateRequest>(br#"{"state":"offline"}"#).unwrap_err();
        let BodyProblem::Shape(message) = err else {
            panic!("{err:?}")
        };
        assert!(
            message.starts_with("state: unknown variant `offline`"),
            "{message}"
        );
        assert!(message.contains("`in-procedure`"), "{message}");
    }

    #[test]
    fn shape_errors_name_the_field_and_the_path() {
        let err = parse::<TelemetryRequest>(
            br#"{"measurements":[{"name":"t","value":1},{"name":"p","valu":2}]}"#,
        )
        .unwrap_err();
        let BodyProblem::Shape(message) = err else {
            panic!("{err:?}")
        };
        assert!(message.starts_with("measurements[1]"), "{message}");
        assert!(message.contains("unknown field `valu`"), "{message}");
        assert!(message.contains("expected one of"), "{message}");

        let err = parse::<TelemetryRequest>(br#"{"measurements":[{"name":"t","value":"x"}]}"#)
            .unwrap_err();
        assert!(
            matches!(&err, BodyProblem::Shape(m) if m.starts_with("measurements[0].value: invalid type")),
            "{err:?}"
        );
        let err = parse::<LogsRequest>(br#"{"lines":[]}"#).unwrap_err();
        assert!(
            matches!(&err, BodyProblem::Shape(m) if m.contains("missing field `file`")),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_json_is_told_apart_from_shape_errors() {
        for body in [
            &b"{"[..],
            b"not json",
            b"",
            br#"{"state":"online"} trailing"#,
        ] {
            let err = parse::<StateRequest>(body).unwrap_err();
            assert!(
                matches!(err, BodyProblem::Malformed(_)),
                "{body:?}: {err:?}"
            );
        }
    }

    #[test]
    fn telemetry_values_are_checked() {
        let ok: TelemetryRequest = parse(
            br#"{"measurements":[{"name":"catheter.temp","value":37.5,"units":"Cel","at_ms":7},{"name":"power","value":30}]}"#,
        )
        .unwrap();
        let measurements = ok.into_measurements(NOW).unwrap();
        assert_eq!(measurements.len(), 2);
        assert_eq!(measurements[0].at_ms, 7);
        assert_eq!(measurements[0].units.as_deref(), Some("Cel"));
        assert_eq!(measurements[1].at_ms, NOW);

        let value_err = |body: &[u8]| match parse::<TelemetryRequest>(body)
            .unwrap()
            .into_measurements(NOW)
        {
            Err(BodyProblem::Value(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(value_err(br#"{"measurements":[]}"#).starts_with("measurements:"));
        assert!(
            value_err(br#"{"measurements":[{"name":"Jane Doe","value":1}]}"#)
                .starts_with("measurements[0].name")
        );
        assert!(
            value_err(br#"{"measurements":[{"name":"a","value":1,"units":"beats per min"}]}"#)
                .starts_with("measurements[0].units")
        );
        assert!(value_err(
            br#"{"measurements":[{"name":"a","value":1,"at_ms":18446744073709551615}]}"#
        )
        .starts_with("measurements[0].at_ms"));
        let too_many = format!(
            r#"{{"measurements":[{}]}}"#,
            vec![r#"{"name":"a","value":1}"#; MAX_MEASUREMENTS + 1].join(",")
        );
        assert!(value_err(too_many.as_bytes()).contains("got 1001"));
    }

    #[test]
    fn log_values_are_checked_and_never_quoted() {
        let (file, lines) = parse::<LogsRequest>(br#"{"file":"system.log","lines":["a","b"]}"#)
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(file, "system.log");
        assert_eq!(lines, vec!["a", "b"]);

        for (body, field) in [
            (&br#"{"file":"../etc/passwd","lines":["a"]}"#[..], "file:"),
            (br#"{"file":"..","lines":["a"]}"#, "file:"),
            (br#"{"file":"","lines":["a"]}"#, "file:"),
            (br#"{"file":"x.log","lines":[]}"#, "lines:"),
            (
                br#"{"file":"x.log","lines":["ok","Jane Doe\nMRN 123"]}"#,
                "lines[1]:",
            ),
        ] {
            let err = parse::<LogsRequest>(body)
                .unwrap()
                .into_parts()
                .unwrap_err();
            let BodyProblem::Value(message) = err else {
                panic!("{err:?}")
            };
            assert!(message.starts_with(field), "{message}");
            assert!(!message.contains("Jane"), "{message}");
        }
    }

    #[test]
    fn reasons_are_codes_and_redacted_in_debug() {
        let err = parse::<StateRequest>(br#"{"state":"error","reason":"patient Jane fell"}"#)
            .unwrap()
            .into_report(NOW)
            .unwrap_err();
        assert!(
            matches!(&err, BodyProblem::Value(m) if m.starts_with("reason:") && !m.contains("Jane"))
        );

        let report = parse::<StateRequest>(br#"{"state":"error","reason":"E1234"}"#)
            .unwrap()
            .into_report(NOW)
            .unwrap();
        let debug = format!("{report:?}");
        assert!(
            !debug.contains("E1234") && debug.contains(REDACTED),
            "{debug}"
        );
        let logs: LogsRequest = parse(br#"{"file":"a.log","lines":["Jane Doe"]}"#).unwrap();
        let debug = format!("{logs:?}");
        assert!(
            !debug.contains("Jane") && debug.contains("1 lines"),
            "{debug}"
        );
    }
}
