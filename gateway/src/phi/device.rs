//! Rules for device-plane records: state changes and named measurements.
//!
//! These carry no patient data by design, but some of their strings come from a device
//! (an agent names its telemetry, reports a reason code) and a device can put anything in
//! a string. So every device-supplied string that leaves is an *identifier token* —
//! 1–64 characters of `A-Z a-z 0-9 _ - . / %` (units such as `mL/h` or `%` included),
//! starting with a letter or digit — and anything else is refused, not cleaned: a
//! measurement named `John Smith HR` is an error for the device's maker to fix, not a
//! string to guess at. Values are finite numbers. Gateway-made strings (state reasons
//! such as `3 polls failed`) are not device data and pass as they are.

use wardgate_proto::{
    DeviceIdentity, DeviceStateChange, Measurement, MeasurementReport, RecordBody,
};

use super::{PhiError, Sanitized};

/// Longest identifier token.
pub const MAX_TOKEN_LEN: usize = 64;

/// Most measurements in one record.
pub const MAX_MEASUREMENTS: usize = 1024;

/// Why device-supplied content was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A name, unit or code is not an identifier token.
    #[error("{field} {value_hint}: must be 1–64 characters of A-Z a-z 0-9 _ - . / %, starting with a letter or digit")]
    NotAToken {
        /// Which field, e.g. `measurements[2].name`.
        field: String,
        /// A hint that never echoes the value (it may be PHI): its length.
        value_hint: String,
    },
    /// A value is NaN or infinite.
    #[error("{field}: must be a finite number")]
    NotFinite {
        /// Which field.
        field: String,
    },
    /// Too many measurements in one request.
    #[error("at most {MAX_MEASUREMENTS} measurements per report, got {0}")]
    TooMany(usize),
    /// The record could not be encoded.
    #[error(transparent)]
    Encode(#[from] PhiError),
}

/// Whether `value` is an identifier token (see the module doc).
#[must_use]
pub fn is_token(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value.len() <= MAX_TOKEN_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '%'))
}

fn token(field: impl FnOnce() -> String, value: &str) -> Result<(), Refused> {
    if is_token(value) {
        Ok(())
    } else {
        Err(Refused::NotAToken {
            field: field(),
            value_hint: format!("({} characters)", value.chars().count()),
        })
    }
}

impl Sanitized {
    /// A device state change. `reason` is gateway-made.
    ///
    /// # Errors
    /// Only if the record cannot be encoded.
    pub fn device_state(change: DeviceStateChange) -> Result<Self, PhiError> {
        Sanitized::from_body(&RecordBody::DeviceState(change))
    }

    /// Named measurements of a declared device. `source` is `modbus` (names and units
    /// come from the site's config) or `agent` (they come from the device).
    ///
    /// # Errors
    /// [`Refused`] naming the first field that is not acceptable.
    pub fn measurements(
        device_id: &str,
        source: &'static str,
        heartbeat: bool,
        measurements: Vec<Measurement>,
    ) -> Result<Self, Refused> {
        if measurements.len() > MAX_MEASUREMENTS {
            return Err(Refused::TooMany(measurements.len()));
        }
        for (i, m) in measurements.iter().enumerate() {
            token(|| format!("measurements[{i}].name"), &m.name)?;
            if let Some(units) = &m.units {
                // `%` is a unit of its own (UCUM), the only one not starting alphanumeric.
                if units != "%" {
                    token(|| format!("measurements[{i}].units"), units)?;
                }
            }
            if !m.value.is_finite() {
                return Err(Refused::NotFinite {
                    field: format!("measurements[{i}].value"),
                });
            }
        }
        Ok(Sanitized::from_body(&RecordBody::Measurements(
            MeasurementReport {
                device: DeviceIdentity {
                    id: device_id.to_owned(),
                    application: None,
                    eui64: None,
                },
                source: source.to_owned(),
                heartbeat,
                measurements,
            },
        ))?)
    }

    /// Checks an agent's reason code (see the module doc).
    ///
    /// # Errors
    /// [`Refused::NotAToken`].
    pub fn check_reason_code(code: &str) -> Result<(), Refused> {
        token(|| "reason".to_owned(), code)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(name: &str, units: Option<&str>, value: f64) -> Measurement {
        Measurement {
            name: name.into(),
            value,
            units: units.map(Into::into),
            at_ms: 1,
        }
    }

    #[test]
    fn identifier_names_and_units_pass() {
        let r = Sanitized::measurements(
            "pump-1",
            "agent",
            false,
            vec![m("rate", Some("mL/h"), 12.5), m("battery", Some("%"), 80.0)],
        )
        .unwrap();
        assert_eq!(r.device(), "pump-1");
        assert_eq!(r.priority(), wardgate_proto::Priority::Observation);
    }

    #[test]
    fn free_text_in_a_name_is_refused_without_echoing_it() {
        let err = Sanitized::measurements(
            "pump-1",
            "agent",
            false,
            vec![m("rate", None, 1.0), m("John Smith HR", None, 70.0)],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("measurements[1].name"), "{text}");
        assert!(
            !text.contains("Smith"),
            "the refusal must not echo the value"
        );
    }

    #[test]
    fn non_finite_values_and_bad_units_are_refused() {
        assert!(matches!(
            Sanitized::measurements("d", "agent", false, vec![m("x", None, f64::NAN)]),
            Err(Refused::NotFinite { .. })
        ));
        assert!(matches!(
            Sanitized::measurements("d", "agent", false, vec![m("x", Some("mm Hg"), 1.0)]),
            Err(Refused::NotAToken { .. })
        ));
        assert!(!is_token(""));
        assert!(!is_token("-leading"));
        assert!(!is_token(&"a".repeat(65)));
        assert!(is_token("procedure-end"));
    }
}
