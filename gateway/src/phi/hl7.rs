//! PHI rules for HL7 v2 (IHE PCD-01 observations, PCD-04 alarms).
//!
//! The rule is an allow-list of *outputs*, not a deny-list of inputs: a record is built
//! field by field from what the adapter extracted, and nothing else of the message is
//! ever copied. So every HIPAA Safe Harbor field the message may carry (PID-5/6/9 names,
//! PID-7 birth date, PID-11/12 address, PID-13/14 phones, PID-19 SSN, PID-2/3/4/18
//! identifiers, PID-20 licence, NK1/GT1/IN1 relatives, employers and insurers, PV1
//! clinicians and visit numbers, NTE notes) is dropped by construction, and a field a
//! future device invents is dropped too.
//!
//! What is kept, and why:
//! - the patient as a keyed pseudonym of (PID-3 identifier, assigning authority),
//!   preferring the identifier of type `MR`, so the cloud can link a patient over time;
//! - device identity (MSH-3 application and EUI-64, OBX-18 equipment): needed for device
//!   management; a device id does not identify a patient outside the hospital;
//! - observation codes, numeric and coded values, units, containment, status;
//! - free text (OBX-2 `ST`/`TX`/`FT`) only for codes the site allow-lists; any other
//!   free-text value is replaced by `Withheld`, because free text can name a patient;
//! - timestamps (MSH-7, OBR-7, OBX-14) unshifted. *Policy:* observation times are
//!   clinically essential (trend and alarm timing) and, stripped of every identifier and
//!   date of birth, are not Safe Harbor "dates directly related to an individual" that
//!   re-identify; the HIPAA expert-determination route is the site's if it wants more.
//!   Birth, admission and discharge dates are never copied.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use wardgate_device_adapters::hl7::{PcdMessage, RawHeader, RawPatient};
use wardgate_proto::{
    AlarmReport, DeviceIdentity, Observation, ObservationGroup, ObservationReport,
    ObservationValue, Pseudonym, RecordBody,
};

use super::freetext::NameTokens;
use super::pseudonym::PseudonymKey;
use super::{PhiError, Sanitized};

/// The HL7 rules of one site.
#[derive(Debug, Clone)]
pub struct Hl7Rules {
    key: PseudonymKey,
    free_text_allowed_codes: BTreeSet<String>,
    name_tokens: Option<Arc<NameTokens>>,
}

impl Hl7Rules {
    /// Rules with the site's pseudonym key and its free-text allow-list (OBX-3 codes or
    /// reference ids, e.g. `184326` or `MDC_ATTR_ALERT_SOURCE`).
    #[must_use]
    pub fn new(key: PseudonymKey, free_text_allowed_codes: BTreeSet<String>) -> Self {
        Hl7Rules {
            key,
            free_text_allowed_codes,
            name_tokens: None,
        }
    }

    /// Also remember (as keyed hashes) the name tokens of every patient and relative the
    /// messages name (PID-5/6/9, NK1-2), so the free-text rules can redact them from logs.
    #[must_use]
    pub fn with_name_tokens(mut self, name_tokens: Arc<NameTokens>) -> Self {
        self.name_tokens = Some(name_tokens);
        self
    }

    /// Turns what a device sent into a storable record. `peer` names the device when its
    /// message carries no identity of its own (no MSH-3).
    ///
    /// # Errors
    /// [`PhiError::Encode`] if the record cannot be serialized (not expected).
    pub fn sanitize(&self, message: PcdMessage, peer: SocketAddr) -> Result<Sanitized, PhiError> {
        if let (Some(names), Some(patient)) = (&self.name_tokens, message.patient()) {
            names.learn(&patient.name_tokens);
        }
        let body = match message {
            PcdMessage::Observations(raw) => RecordBody::Observations(ObservationReport {
                device: device_identity(&raw.header, peer),
                patient: self.patient_pseudonym(raw.patient.as_ref()),
                message_time: raw.header.message_time,
                control_id: raw.header.control_id,
                groups: raw
                    .groups
                    .into_iter()
                    .map(|g| ObservationGroup {
                        service: g.service,
                        observed_at: g.observed_at,
                        observations: g
                            .observations
                            .into_iter()
                            .map(|o| self.observation(o))
                            .collect(),
                    })
                    .collect(),
            }),
            PcdMessage::Alarm(raw) => RecordBody::Alarm(AlarmReport {
                device: device_identity(&raw.header, peer),
                patient: self.patient_pseudonym(raw.patient.as_ref()),
                message_time: raw.header.message_time,
                control_id: raw.header.control_id,
                event: raw.event,
                observations: raw
                    .observations
                    .into_iter()
                    .map(|o| self.observation(o))
                    .collect(),
            }),
        };
        Sanitized::from_body(&body)
    }

    fn patient_pseudonym(&self, patient: Option<&RawPatient>) -> Option<Pseudonym> {
        let ids = &patient?.identifiers;
        let chosen = ids
            .iter()
            .filter(|i| !i.id.trim().is_empty())
            .find(|i| i.id_type.eq_ignore_ascii_case("MR"))
            .or_else(|| ids.iter().find(|i| !i.id.trim().is_empty()))?;
        Some(self.key.pseudonym(&chosen.id, &chosen.assigning_authority))
    }

    fn observation(&self, mut o: Observation) -> Observation {
        if matches!(o.value, ObservationValue::Text(_)) && !self.free_text_allowed(&o) {
            o.value = ObservationValue::Withheld;
        }
        o
    }

    fn free_text_allowed(&self, o: &Observation) -> bool {
        let allowed = |s: &str| !s.is_empty() && self.free_text_allowed_codes.contains(s);
        allowed(&o.code.code) || allowed(&o.code.text)
    }
}

/// The device's identity: EUI-64 if it sent one (MSH-3.2), else its application name
/// (MSH-3.1), else its network address — in that order, the most stable key first.
fn device_identity(header: &RawHeader, peer: SocketAddr) -> DeviceIdentity {
    let non_empty = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let eui64 = non_empty(&header.eui64);
    let application = non_empty(&header.application);
    let id = eui64
        .clone()
        .or_else(|| application.clone())
        .unwrap_or_else(|| format!("ip:{}", peer.ip()));
    DeviceIdentity {
        id,
        application,
        eui64,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use wardgate_device_adapters::hl7::{RawObservationGroup, RawObservationReport, RawPatientId};
    use wardgate_proto::CodedValue;

    fn coded(code: &str, text: &str) -> CodedValue {
        CodedValue {
            code: code.into(),
            text: text.into(),
            system: "MDC".into(),
        }
    }

    fn obs(code: CodedValue, value: ObservationValue) -> Observation {
        Observation {
            code,
            value,
            units: None,
            containment: "1.3.1.150456".into(),
            status: "R".into(),
            observed_at: "20250101120000".into(),
            equipment: "0011223344556677^EUI-64".into(),
        }
    }

    fn report(patient: Option<RawPatient>, observations: Vec<Observation>) -> PcdMessage {
        PcdMessage::Observations(RawObservationReport {
            header: RawHeader {
                application: Some("MONITOR".into()),
                eui64: Some("0011223344556677".into()),
                message_time: "20250101120000".into(),
                control_id: "42".into(),
                version: "2.6".into(),
            },
            patient,
            groups: vec![RawObservationGroup {
                service: coded("182777000", "monitoring of patient"),
                observed_at: "20250101120000".into(),
                observations,
            }],
        })
    }

    fn patient() -> RawPatient {
        RawPatient {
            identifiers: vec![
                RawPatientId {
                    id: "ACCT-777".into(),
                    assigning_authority: "HOSP".into(),
                    id_type: "AN".into(),
                },
                RawPatientId {
                    id: "MRN-123456".into(),
                    assigning_authority: "HOSP".into(),
                    id_type: "MR".into(),
                },
            ],
            name_tokens: vec!["DOE".into(), "JANE".into()],
        }
    }

    fn rules(allowed: &[&str]) -> Hl7Rules {
        Hl7Rules::new(
            PseudonymKey::from_bytes(&[9; 32]),
            allowed.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    fn peer() -> SocketAddr {
        "10.0.0.5:40000".parse().unwrap()
    }

    #[test]
    fn patient_becomes_pseudonym_of_mr_identifier() {
        let r = rules(&[]);
        let s = r.sanitize(report(Some(patient()), vec![]), peer()).unwrap();
        let text = String::from_utf8(s.payload().to_vec()).unwrap();
        let expected = PseudonymKey::from_bytes(&[9; 32]).pseudonym("MRN-123456", "HOSP");
        assert!(text.contains(&expected.0), "{text}");
        for planted in ["MRN-123456", "ACCT-777", "DOE", "JANE"] {
            assert!(!text.contains(planted), "{planted} leaked: {text}");
        }
        assert_eq!(s.device(), "0011223344556677");
        assert_eq!(s.priority(), wardgate_proto::Priority::Observation);
    }

    #[test]
    fn free_text_is_withheld_unless_allow_listed() {
        let note = obs(
            coded("0", "MDC_NOTE"),
            ObservationValue::Text("Jane Doe, 555-0100".into()),
        );
        let allowed = obs(
            coded("184326", "MDC_ATTR_ALERT_SOURCE"),
            ObservationValue::Text("SpO2 probe".into()),
        );
        let s = rules(&["MDC_ATTR_ALERT_SOURCE"])
            .sanitize(report(None, vec![note, allowed]), peer())
            .unwrap();
        let body: RecordBody = serde_json::from_slice(s.payload()).unwrap();
        let RecordBody::Observations(r) = body else {
            panic!("kind")
        };
        assert_eq!(
            r.groups[0].observations[0].value,
            ObservationValue::Withheld
        );
        assert_eq!(
            r.groups[0].observations[1].value,
            ObservationValue::Text("SpO2 probe".into())
        );
        assert!(r.patient.is_none());
        let text = String::from_utf8(s.payload().to_vec()).unwrap();
        assert!(!text.contains("555-0100") && !text.contains("Jane"));
    }

    #[test]
    fn device_without_msh3_is_keyed_by_address() {
        let PcdMessage::Observations(mut raw) = report(None, vec![]) else {
            unreachable!()
        };
        raw.header.application = None;
        raw.header.eui64 = Some("  ".into());
        let s = rules(&[])
            .sanitize(PcdMessage::Observations(raw), peer())
            .unwrap();
        assert_eq!(s.device(), "ip:10.0.0.5");
    }

    #[test]
    fn patient_name_tokens_are_learned_for_log_redaction() {
        let names = Arc::new(NameTokens::new(&PseudonymKey::from_bytes(&[9; 32]), 100));
        let r = rules(&[]).with_name_tokens(Arc::clone(&names));
        r.sanitize(report(Some(patient()), vec![]), peer()).unwrap();
        assert!(names.contains("Doe") && names.contains("jane"));
        assert!(!names.contains("MRN"));
    }

    #[test]
    fn debug_of_sanitized_never_prints_payload() {
        let s = rules(&[])
            .sanitize(report(Some(patient()), vec![]), peer())
            .unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("p-") && d.contains("payload_bytes"), "{d}");
    }
}
