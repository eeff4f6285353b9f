//! IHE PCD-01 (`ORU^R01`, observations) and PCD-04 (`ORU^R40`, alarms) interpretation.
//!
//! [`interpret`] turns a parsed [`Message`] into a [`PcdMessage`] of *raw* types: they
//! still carry protected health information (patient identifiers and names, free text),
//! so they implement neither `Serialize` nor `Display`, and their `Debug` prints
//! [`crate::REDACTED`]. Only the gateway's PHI stage may turn them into
//! `wardgate_proto` records.
//!
//! What is copied, and what never is:
//! - MSH: MSH-3.1/3.2 (device application, EUI-64), MSH-7, MSH-10, MSH-12.
//! - PID: identifiers (PID-3, then the deprecated PID-2 and PID-4 as fallbacks, in that
//!   order) and name tokens (PID-5, plus PID-6 mother's maiden name, PID-9 alias and the
//!   NK1-2 names of relatives). Name tokens exist only so that the gateway can redact them
//!   from anything it logs; they are upper-cased, split on white space, commas and
//!   hyphens (the hyphenated whole is kept too), de-duplicated, and tokens shorter than two
//!   characters are dropped (an initial would redact every occurrence of that letter).
//! - Every other PID, PV1 and NK1 field (birth date, address, phone, visit number,
//!   clinicians, ...) and every NTE, ORC, SFT, TQ1 and Z-segment is never copied.
//! - OBR-4 and OBR-7 per group; per OBX: OBX-3 code, OBX-2/5 value, OBX-6 units, OBX-4
//!   containment, OBX-11 status, OBX-14 time, OBX-18.1 equipment id.
//!
//! Value mapping (OBX-2 → [`ObservationValue`]):
//! - empty OBX-5 (any type, e.g. an MDS/VMD containment row) → `None`;
//! - `NM` → `Numeric`, validated as an HL7 number (sign, digits, one decimal point);
//!   several values → error;
//! - `CWE`, `CE`, `CNE`, `CF` → `Coded` (components 1-3); several values → error;
//! - `NA`, `MA` → `Samples`, every component of every repetition in order (`MA` sample
//!   groups are flattened); empty items stay as `""` to keep positions; non-empty items
//!   must be numbers;
//! - `ST`, `TX`, `FT` and every other type (`DTM`, `SN`, `ED`, ...) → `Text`, repetitions
//!   joined by a line feed. Text is possible PHI: the PHI stage drops it unless the
//!   observation code is allow-listed. Nothing is reinterpreted behind its back.
//! - a value with an empty OBX-2 → error (the type is required to read a value).
//!
//! Structure rules (errors name the segment, its sequence and the field, for the AE):
//! MSH-9 and MSH-10 are required; only `ORU^R01` and `ORU^R40` are supported (anything else
//! is [`PcdError::Unsupported`], answered AR: code 200 for the message type, 201 for the
//! event); at most one PID (one patient per message: mixing patients in one report would
//! misattribute data), before the first OBR; every OBX follows an OBR; at least one OBR;
//! `ORU^R40` has exactly one OBR (one alarm per message). Other segments may appear
//! anywhere and are ignored. Error texts never quote message content.

use std::borrow::Cow;

use wardgate_proto::{CodedValue, Observation, ObservationValue};

use crate::hl7::ack::{AckOutcome, ErrorCode};
use crate::hl7::message::{ErrorLocation, Field, Message, Repetition, Segment};
use crate::REDACTED;

/// An interpreted PCD message. Carries PHI.
#[derive(Clone, PartialEq)]
pub enum PcdMessage {
    /// PCD-01 observations.
    Observations(RawObservationReport),
    /// PCD-04 alarm.
    Alarm(RawAlarmReport),
}

impl PcdMessage {
    /// The message header.
    #[must_use]
    pub fn header(&self) -> &RawHeader {
        match self {
            PcdMessage::Observations(r) => &r.header,
            PcdMessage::Alarm(r) => &r.header,
        }
    }

    /// The patient, when the message named one.
    #[must_use]
    pub fn patient(&self) -> Option<&RawPatient> {
        match self {
            PcdMessage::Observations(r) => r.patient.as_ref(),
            PcdMessage::Alarm(r) => r.patient.as_ref(),
        }
    }
}

/// Header fields of a PCD message.
#[derive(Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// MSH-3.1: sending application (device name).
    pub application: Option<String>,
    /// MSH-3.2: the device's EUI-64 (or other universal id).
    pub eui64: Option<String>,
    /// MSH-7.1 as sent (HL7 DTM).
    pub message_time: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-12.1.
    pub version: String,
}

/// The patient a message is about. PHI.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPatient {
    /// Identifiers: PID-3 repetitions, then PID-2 and PID-4 (deprecated fields some
    /// devices still use), without duplicates or empty ids.
    pub identifiers: Vec<RawPatientId>,
    /// Upper-cased name tokens (patient and relatives), used to redact logs.
    pub name_tokens: Vec<String>,
}

/// One patient identifier (HL7 CX). PHI.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPatientId {
    /// CX-1.
    pub id: String,
    /// CX-4, first sub-component (namespace id).
    pub assigning_authority: String,
    /// CX-5 (e.g. `MR`, `PI`).
    pub id_type: String,
}

/// A PCD-01 message's content. PHI.
#[derive(Clone, PartialEq)]
pub struct RawObservationReport {
    /// Header.
    pub header: RawHeader,
    /// The patient, when a PID segment was present.
    pub patient: Option<RawPatient>,
    /// One group per OBR, in order.
    pub groups: Vec<RawObservationGroup>,
}

/// One OBR and its OBX rows. May carry PHI (text values).
#[derive(Clone, PartialEq)]
pub struct RawObservationGroup {
    /// OBR-4.
    pub service: CodedValue,
    /// OBR-7.1.
    pub observed_at: String,
    /// The OBX rows, in order.
    pub observations: Vec<Observation>,
}

/// A PCD-04 alarm's content. PHI.
#[derive(Clone, PartialEq)]
pub struct RawAlarmReport {
    /// Header.
    pub header: RawHeader,
    /// The patient, when a PID segment was present.
    pub patient: Option<RawPatient>,
    /// OBR-4 (e.g. `196616^MDC_EVT_ALARM^MDC`).
    pub event: CodedValue,
    /// The alarm's OBX rows (source, event phase, alarm state, ...).
    pub observations: Vec<Observation>,
}

macro_rules! redacted_debug {
    ($($ty:ty),*) => {$(
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($ty), REDACTED)
            }
        }
    )*};
}

redacted_debug!(
    PcdMessage,
    RawHeader,
    RawPatient,
    RawPatientId,
    RawObservationReport,
    RawObservationGroup,
    RawAlarmReport
);

/// Why a message cannot be taken as a PCD message. Texts never quote message content
/// (except a sanitised, short message type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcdError {
    /// Not `ORU^R01` or `ORU^R40`: answered AR (we will never take it, but it is not
    /// malformed).
    #[error("unsupported message type {message_type}^{trigger_event}")]
    Unsupported {
        /// MSH-9.1, sanitised (at most 8 alphanumeric characters).
        message_type: String,
        /// MSH-9.2, sanitised.
        trigger_event: String,
        /// 200 (message type) or 201 (event).
        code: ErrorCode,
    },
    /// The message breaks a rule: answered AE with an ERR naming the place.
    #[error("{location}: {reason}")]
    Invalid {
        /// Where.
        location: ErrorLocation,
        /// Table 0357 code.
        code: ErrorCode,
        /// What is wrong (our words, no content).
        reason: String,
    },
}

impl PcdError {
    /// The ACK outcome this error calls for.
    #[must_use]
    pub fn outcome(&self) -> AckOutcome {
        match self {
            PcdError::Unsupported { code, .. } => AckOutcome::Rejected {
                code: *code,
                text: self.to_string(),
            },
            PcdError::Invalid {
                location,
                code,
                reason,
            } => AckOutcome::Error {
                location: Some(location.clone()),
                code: *code,
                text: reason.clone(),
            },
        }
    }
}

fn invalid(location: ErrorLocation, code: ErrorCode, reason: &str) -> PcdError {
    PcdError::Invalid {
        location,
        code,
        reason: reason.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Observations,
    Alarm,
}

/// Interprets a parsed message as IHE PCD-01 or PCD-04. See the module documentation.
///
/// # Errors
/// [`PcdError::Unsupported`] for other message types, [`PcdError::Invalid`] for messages
/// that break a rule.
pub fn interpret(message: &Message) -> Result<PcdMessage, PcdError> {
    let msh = message.msh();
    let kind = message_kind(&msh)?;
    let header = read_header(&msh)?;

    let mut patient: Option<RawPatient> = None;
    let mut relatives: Vec<String> = Vec::new();
    let mut groups: Vec<RawObservationGroup> = Vec::new();
    for segment in message.all_segments().skip(1) {
        match segment.id() {
            "PID" => {
                if patient.is_some() {
                    return Err(invalid(
                        segment.segment_location(),
                        ErrorCode::SegmentSequenceError,
                        "only one PID (one patient) per message is supported",
                    ));
                }
                if !groups.is_empty() {
                    return Err(invalid(
                        segment.segment_location(),
                        ErrorCode::SegmentSequenceError,
                        "PID must come before the first OBR",
                    ));
                }
                patient = Some(read_patient(&segment));
            }
            "NK1" => collect_name_tokens(&segment.field(2), &mut relatives),
            "OBR" => {
                if kind == Kind::Alarm && !groups.is_empty() {
                    return Err(invalid(
                        segment.segment_location(),
                        ErrorCode::SegmentSequenceError,
                        "ORU^R40 carries one alarm: a second OBR is not supported",
                    ));
                }
                groups.push(read_obr(&segment)?);
            }
            "OBX" => {
                let Some(group) = groups.last_mut() else {
                    return Err(invalid(
                        segment.segment_location(),
                        ErrorCode::SegmentSequenceError,
                        "OBX before the first OBR",
                    ));
                };
                group.observations.push(read_obx(&segment)?);
            }
            _ => {}
        }
    }
    if let Some(patient) = patient.as_mut() {
        for token in relatives {
            push_unique(&mut patient.name_tokens, token);
        }
    }

    match kind {
        Kind::Observations => {
            if groups.is_empty() {
                return Err(missing_obr());
            }
            Ok(PcdMessage::Observations(RawObservationReport {
                header,
                patient,
                groups,
            }))
        }
        Kind::Alarm => {
            let group = groups.pop().ok_or_else(missing_obr)?;
            Ok(PcdMessage::Alarm(RawAlarmReport {
                header,
                patient,
                event: group.service,
                observations: group.observations,
            }))
        }
    }
}

fn missing_obr() -> PcdError {
    invalid(
        ErrorLocation::new("OBR", None, None),
        ErrorCode::SegmentSequenceError,
        "the message has no OBR segment",
    )
}

fn message_kind(msh: &Segment<'_>) -> Result<Kind, PcdError> {
    let field = msh.field(9);
    let message_type = field.component(1, 1);
    let trigger_event = field.component(1, 2);
    let (message_type, trigger_event) = (message_type.trim(), trigger_event.trim());
    if message_type.is_empty() {
        return Err(invalid(
            msh.location(9),
            ErrorCode::RequiredFieldMissing,
            "MSH-9 (message type) is missing",
        ));
    }
    let unsupported = |code| PcdError::Unsupported {
        message_type: sanitise(message_type),
        trigger_event: sanitise(trigger_event),
        code,
    };
    if message_type != "ORU" {
        return Err(unsupported(ErrorCode::UnsupportedMessageType));
    }
    match trigger_event {
        "R01" => Ok(Kind::Observations),
        "R40" => Ok(Kind::Alarm),
        _ => Err(unsupported(ErrorCode::UnsupportedEventCode)),
    }
}

/// Keeps a device-supplied code printable and short enough for logs and ACK texts.
fn sanitise(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(8)
        .collect()
}

fn non_empty(value: Cow<'_, str>) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn read_header(msh: &Segment<'_>) -> Result<RawHeader, PcdError> {
    let control_id = msh.field(10).decoded().trim().to_owned();
    if control_id.is_empty() {
        return Err(invalid(
            msh.location(10),
            ErrorCode::RequiredFieldMissing,
            "MSH-10 (message control id) is missing",
        ));
    }
    Ok(RawHeader {
        application: non_empty(msh.field(3).component(1, 1)),
        eui64: non_empty(msh.field(3).component(1, 2)),
        message_time: msh.field(7).value().trim().to_owned(),
        control_id,
        version: msh.field(12).value().trim().to_owned(),
    })
}

fn read_patient(pid: &Segment<'_>) -> RawPatient {
    let mut identifiers: Vec<RawPatientId> = Vec::new();
    for field in [3, 2, 4] {
        for rep in pid.field(field).repetitions() {
            let id = rep.component(1).decoded().trim().to_owned();
            if id.is_empty() {
                continue;
            }
            let candidate = RawPatientId {
                id,
                assigning_authority: rep.component(4).subcomponent(1).trim().to_owned(),
                id_type: rep.component(5).decoded().trim().to_owned(),
            };
            if !identifiers.contains(&candidate) {
                identifiers.push(candidate);
            }
        }
    }
    let mut name_tokens = Vec::new();
    for field in [5, 6, 9] {
        collect_name_tokens(&pid.field(field), &mut name_tokens);
    }
    RawPatient {
        identifiers,
        name_tokens,
    }
}

/// Adds the tokens of an XPN field's family (all sub-components), given and middle names.
fn collect_name_tokens(field: &Field<'_>, tokens: &mut Vec<String>) {
    for rep in field.repetitions() {
        let family = rep.component(1);
        let parts = family
            .subcomponents()
            .chain([rep.component(2).decoded(), rep.component(3).decoded()]);
        for part in parts {
            for word in part.split(|c: char| c.is_whitespace() || c == ',') {
                let word = word.to_uppercase();
                if word.contains('-') {
                    for piece in word.split('-') {
                        push_token(tokens, piece);
                    }
                }
                push_token(tokens, &word);
            }
        }
    }
}

fn push_token(tokens: &mut Vec<String>, token: &str) {
    let token = token.trim_matches(|c: char| c == '-' || c == '.');
    if token.chars().count() >= 2 {
        push_unique(tokens, token.to_owned());
    }
}

fn push_unique(tokens: &mut Vec<String>, token: String) {
    if !tokens.contains(&token) {
        tokens.push(token);
    }
}

fn coded(rep: &Repetition<'_>) -> CodedValue {
    CodedValue {
        code: rep.component(1).decoded().trim().to_owned(),
        text: rep.component(2).decoded().trim().to_owned(),
        system: rep.component(3).decoded().trim().to_owned(),
    }
}

fn is_blank(value: &CodedValue) -> bool {
    value.code.is_empty() && value.text.is_empty()
}

fn read_obr(obr: &Segment<'_>) -> Result<RawObservationGroup, PcdError> {
    let service = coded(&obr.field(4).repetition(1));
    if is_blank(&service) {
        return Err(invalid(
            obr.location(4),
            ErrorCode::RequiredFieldMissing,
            "OBR-4 (universal service identifier) is missing",
        ));
    }
    Ok(RawObservationGroup {
        service,
        observed_at: obr.field(7).value().trim().to_owned(),
        observations: Vec::new(),
    })
}

fn read_obx(obx: &Segment<'_>) -> Result<Observation, PcdError> {
    let code = coded(&obx.field(3).repetition(1));
    if is_blank(&code) {
        return Err(invalid(
            obx.location(3),
            ErrorCode::RequiredFieldMissing,
            "OBX-3 (observation identifier) is missing",
        ));
    }
    let units = coded(&obx.field(6).repetition(1));
    Ok(Observation {
        code,
        value: read_value(obx)?,
        units: (!is_blank(&units)).then_some(units),
        containment: obx.field(4).value().trim().to_owned(),
        status: obx.field(11).value().trim().to_owned(),
        observed_at: obx.field(14).value().trim().to_owned(),
        equipment: obx.field(18).value().trim().to_owned(),
    })
}

fn read_value(obx: &Segment<'_>) -> Result<ObservationValue, PcdError> {
    let field = obx.field(5);
    let values: Vec<Repetition<'_>> = field.repetitions().filter(|r| !r.is_empty()).collect();
    let Some(first) = values.first() else {
        return Ok(ObservationValue::None);
    };
    let value_type = obx.field(2).value().trim().to_ascii_uppercase();
    let single = |what: &str| {
        if values.len() > 1 {
            Err(invalid(
                obx.location(5),
                ErrorCode::DataTypeError,
                &format!("OBX-5 holds more than one {what} value"),
            ))
        } else {
            Ok(())
        }
    };
    match value_type.as_str() {
        "" => Err(invalid(
            obx.location(2),
            ErrorCode::RequiredFieldMissing,
            "OBX-2 (value type) is required when OBX-5 has a value",
        )),
        "NM" => {
            single("NM")?;
            let number = first.decoded().trim().to_owned();
            if !is_hl7_number(&number) {
                return Err(invalid(
                    obx.location(5),
                    ErrorCode::DataTypeError,
                    "OBX-5 is not a number (type NM)",
                ));
            }
            Ok(ObservationValue::Numeric(number))
        }
        "CWE" | "CE" | "CNE" | "CF" => {
            single("coded")?;
            Ok(ObservationValue::Coded(coded(first)))
        }
        "NA" | "MA" => {
            let mut samples = Vec::new();
            for rep in &values {
                for component in rep.components() {
                    let item = component.decoded().trim().to_owned();
                    if !item.is_empty() && !is_hl7_number(&item) {
                        return Err(invalid(
                            obx.location(5),
                            ErrorCode::DataTypeError,
                            "OBX-5 holds a sample that is not a number (type NA/MA)",
                        ));
                    }
                    samples.push(item);
                }
            }
            Ok(ObservationValue::Samples(samples))
        }
        _ => {
            let lines: Vec<Cow<'_, str>> = values.iter().map(Repetition::decoded).collect();
            Ok(ObservationValue::Text(lines.join("\n")))
        }
    }
}

/// HL7 `NM`: optional sign, digits with at most one decimal point, at least one digit.
fn is_hl7_number(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    let mut seen_digit = false;
    let mut seen_point = false;
    for c in digits.chars() {
        match c {
            '0'..='9' => seen_digit = true,
            '.' if !seen_point => seen_point = true,
            _ => return false,
        }
    }
    seen_digit
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SYNTHETIC: &str = include_str!("testdata/pcd01_synthetic.hl7");
    const MULTI_OBR: &str = include_str!("testdata/pcd01_multi_obr.hl7");
    const ALARM: &str = include_str!("testdata/pcd04_alarm.hl7");

    fn cr(text: &str) -> String {
        text.replace('\n', "\r")
    }

    fn parse(text: &str) -> Result<PcdMessage, PcdError> {
        interpret(&Message::parse(cr(text).as_bytes()).unwrap())
    }

    fn observations(msg: PcdMessage) -> RawObservationReport {
        match msg {
            PcdMessage::Observations(r) => r,
            PcdMessage::Alarm(_) => panic!("expected observations"),
        }
    }

    fn mdc(code: &str, text: &str) -> CodedValue {
        CodedValue {
            code: code.into(),
            text: text.into(),
            system: "MDC".into(),
        }
    }

    const HEAD: &str = "MSH|^~\\&|DEV^0011223344556677^EUI-64||||20250101120000||ORU^R01^ORU_R01|C1|P|2.6|||AL|NE\n";
    const OBR: &str = "OBR|1|||182777000^monitoring of patient^SCT|||20250101120000\n";

    fn obx_value(obx: &str) -> Result<ObservationValue, PcdError> {
        let report = observations(parse(&format!("{HEAD}{OBR}{obx}\n"))?);
        Ok(report.groups[0].observations[0].value.clone())
    }

    #[test]
    fn synthetic_domain_example() {
        let report = observations(parse(SYNTHETIC).unwrap());
        assert_eq!(report.header.application.as_deref(), Some("MONITOR"));
        assert_eq!(report.header.eui64.as_deref(), Some("0011223344556677"));
        assert_eq!(report.header.message_time, "20250101120000");
        assert_eq!(report.header.control_id, "1");
        assert_eq!(report.header.version, "2.6");
        let patient = report.patient.as_ref().unwrap();
        assert_eq!(
            patient.identifiers,
            vec![RawPatientId {
                id: "MRN1".into(),
                assigning_authority: "HOSP".into(),
                id_type: "PI".into()
            }]
        );
        assert_eq!(
            patient.name_tokens,
            vec!["DOE".to_owned(), "JANE".to_owned()]
        );
        assert_eq!(report.groups.len(), 1);
        let group = &report.groups[0];
        assert_eq!(
            group.service,
            CodedValue {
                code: "182777000".into(),
                text: "monitoring of patient".into(),
                system: "SCT".into()
            }
        );
        assert_eq!(group.observed_at, "20250101120000");
        assert_eq!(
            group.observations,
            vec![
                Observation {
                    code: mdc("69965", "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS"),
                    value: ObservationValue::None,
                    units: None,
                    containment: "1.0.0.0".into(),
                    status: "X".into(),
                    observed_at: String::new(),
                    equipment: "0011223344556677".into(),
                },
                Observation {
                    code: mdc("150456", "MDC_PULS_OXIM_SAT_O2"),
                    value: ObservationValue::Numeric("97".into()),
                    units: Some(mdc("262688", "MDC_DIM_PERCENT")),
                    containment: "1.3.1.150456".into(),
                    status: "R".into(),
                    observed_at: String::new(),
                    equipment: String::new(),
                },
            ]
        );
    }

    #[test]
    fn segment_terminators_do_not_change_the_result() {
        let with_cr = parse(SYNTHETIC).unwrap();
        let with_lf = interpret(&Message::parse(SYNTHETIC.as_bytes()).unwrap()).unwrap();
        let with_crlf =
            interpret(&Message::parse(SYNTHETIC.replace('\n', "\r\n").as_bytes()).unwrap())
                .unwrap();
        assert!(with_cr == with_lf && with_lf == with_crlf);
    }

    #[test]
    fn realistic_multi_obr_report() {
        let report = observations(parse(MULTI_OBR).unwrap());
        assert_eq!(report.header.control_id, "BM-000481516");
        assert_eq!(report.header.eui64.as_deref(), Some("0123456789ABCDEF"));
        assert_eq!(report.header.message_time, "20250314093015+0100");
        let patient = report.patient.as_ref().unwrap();
        assert_eq!(
            patient.identifiers,
            vec![
                RawPatientId {
                    id: "HOSP-7734211".into(),
                    assigning_authority: "GENHOSP".into(),
                    id_type: "MR".into()
                },
                RawPatientId {
                    id: "998877665".into(),
                    assigning_authority: "SSA".into(),
                    id_type: "SS".into()
                },
            ]
        );
        assert_eq!(
            patient.name_tokens,
            [
                "MUSTERMANN",
                "BAKER",
                "MUSTERMANN-BAKER",
                "ERIKA",
                "ANNA",
                "SCHMIDT",
                "JOHN"
            ]
            .map(String::from)
            .to_vec()
        );
        let sizes: Vec<usize> = report.groups.iter().map(|g| g.observations.len()).collect();
        assert_eq!(sizes, vec![10, 4, 2]);
        assert_eq!(report.groups[1].observed_at, "20250314092800+0100");
        let first = &report.groups[0].observations;
        assert_eq!(first[2].value, ObservationValue::Numeric("72".into()));
        assert_eq!(first[2].observed_at, "20250314093000+0100");
        assert_eq!(first[2].equipment, "0123456789ABCDEF");
        assert_eq!(
            first[3].value,
            ObservationValue::Coded(CodedValue {
                code: "SINUS".into(),
                text: "Sinus rhythm".into(),
                system: "99DEV".into()
            })
        );
        let samples = ["12", "15", "19", "22", "18", "11", "4", "-3", "-8", "-5"]
            .map(String::from)
            .to_vec();
        assert_eq!(first[4].value, ObservationValue::Samples(samples));
        assert_eq!(
            first[9].value,
            ObservationValue::Text("Artifact & motion on lead II".into())
        );
        assert_eq!(
            report.groups[2].observations[1].value,
            ObservationValue::Numeric("37.4".into())
        );

        // Nothing outside identifiers and names leaks into the raw types: no birth date,
        // address, phone, visit number, clinician, relative's address or NTE text.
        let everything = format!(
            "{:?}",
            report
                .groups
                .iter()
                .map(|g| &g.observations)
                .collect::<Vec<_>>()
        );
        for leaked in [
            "19581122",
            "EXAMPLE ROAD",
            "555-01",
            "V0000123",
            "HOUSE",
            "SMITH",
            "restless",
            "Spouse",
        ] {
            assert!(!everything.contains(leaked), "{leaked} copied");
            assert!(!patient
                .name_tokens
                .iter()
                .chain(patient.identifiers.iter().map(|i| &i.id))
                .any(|t| t.contains(leaked)));
        }
    }

    #[test]
    fn alarm_report() {
        let PcdMessage::Alarm(alarm) = parse(ALARM).unwrap() else {
            panic!("expected an alarm")
        };
        assert_eq!(alarm.event, mdc("196616", "MDC_EVT_ALARM"));
        assert_eq!(alarm.header.control_id, "BM-AL-000007");
        assert_eq!(alarm.observations.len(), 7);
        assert_eq!(
            alarm.observations[0].code,
            mdc("196670", "MDC_EVT_LO_VAL_LT_LIM")
        );
        assert_eq!(alarm.observations[0].containment, "1.2.1.150456.1");
        assert_eq!(
            alarm.observations[1].value,
            ObservationValue::Numeric("85".into())
        );
        assert_eq!(
            alarm.observations[2].value,
            ObservationValue::Text("start".into())
        );
        assert_eq!(
            alarm.patient.unwrap().name_tokens,
            vec!["MUSTERMANN".to_owned(), "ERIKA".to_owned()]
        );
    }

    #[test]
    fn pid_is_optional() {
        let report = observations(parse(&format!("{HEAD}{OBR}OBX|1|NM|1^X^MDC||5\n")).unwrap());
        assert!(report.patient.is_none());
        let report = observations(parse(&format!("{HEAD}PID|1\n{OBR}")).unwrap());
        let patient = report.patient.unwrap();
        assert!(patient.identifiers.is_empty() && patient.name_tokens.is_empty());
    }

    #[test]
    fn deprecated_pid_identifier_fields_are_fallbacks() {
        let msg =
            format!("{HEAD}PID|1|OLD1^^^A^PI||ALT1^^^B^PI~OLD1^^^A^PI|O'NEIL-SMITH^J^^JR\n{OBR}");
        let patient = observations(parse(&msg).unwrap()).patient.unwrap();
        let ids: Vec<&str> = patient.identifiers.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["OLD1", "ALT1"]);
        assert_eq!(
            patient.name_tokens,
            ["O'NEIL", "SMITH", "O'NEIL-SMITH"]
                .map(String::from)
                .to_vec()
        );
    }

    #[test]
    fn value_types() {
        assert_eq!(
            obx_value("OBX|1|NM|1^X^MDC||-0.5").unwrap(),
            ObservationValue::Numeric("-0.5".into())
        );
        assert_eq!(
            obx_value("OBX|1|NM|1^X^MDC|| +12. ").unwrap(),
            ObservationValue::Numeric("+12.".into())
        );
        assert_eq!(
            obx_value("OBX|1|NM|1^X^MDC||").unwrap(),
            ObservationValue::None
        );
        assert_eq!(
            obx_value("OBX|1|ce|1^X^MDC||a^b^c").unwrap(),
            ObservationValue::Coded(CodedValue {
                code: "a".into(),
                text: "b".into(),
                system: "c".into()
            })
        );
        assert_eq!(
            obx_value("OBX|1|MA|1^X^MDC||1^2~3^^4").unwrap(),
            ObservationValue::Samples(["1", "2", "3", "", "4"].map(String::from).to_vec())
        );
        assert_eq!(
            obx_value("OBX|1|TX|1^X^MDC||line one~line two").unwrap(),
            ObservationValue::Text("line one\nline two".into())
        );
        assert_eq!(
            obx_value("OBX|1|DTM|1^X^MDC||20250101").unwrap(),
            ObservationValue::Text("20250101".into())
        );
        assert_eq!(
            obx_value("OBX|1|ST|1^X^MDC||a\\S\\b^c").unwrap(),
            ObservationValue::Text("a^b^c".into())
        );
    }

    fn invalid_at(result: Result<ObservationValue, PcdError>) -> (String, ErrorCode) {
        match result {
            Err(PcdError::Invalid { location, code, .. }) => (location.to_string(), code),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn value_errors_name_the_field() {
        let cases = [
            (
                "OBX|1|NM|1^X^MDC||97 bpm",
                "OBX[1]-5",
                ErrorCode::DataTypeError,
            ),
            (
                "OBX|1|NM|1^X^MDC||1e3",
                "OBX[1]-5",
                ErrorCode::DataTypeError,
            ),
            ("OBX|1|NM|1^X^MDC||.", "OBX[1]-5", ErrorCode::DataTypeError),
            (
                "OBX|1|NM|1^X^MDC||1~2",
                "OBX[1]-5",
                ErrorCode::DataTypeError,
            ),
            (
                "OBX|1|CWE|1^X^MDC||a~b",
                "OBX[1]-5",
                ErrorCode::DataTypeError,
            ),
            (
                "OBX|1|NA|1^X^MDC||1^x",
                "OBX[1]-5",
                ErrorCode::DataTypeError,
            ),
            (
                "OBX|1||1^X^MDC||5",
                "OBX[1]-2",
                ErrorCode::RequiredFieldMissing,
            ),
            ("OBX|1|NM|||5", "OBX[1]-3", ErrorCode::RequiredFieldMissing),
        ];
        for (obx, location, code) in cases {
            assert_eq!(
                invalid_at(obx_value(obx)),
                (location.to_owned(), code),
                "{obx}"
            );
        }
    }

    #[test]
    fn second_obx_is_located_by_sequence() {
        let msg = format!("{HEAD}{OBR}OBX|1|NM|1^X^MDC||1\nOBX|2|NM|2^Y^MDC||oops\n");
        let err = parse(&msg).unwrap_err();
        assert_eq!(err.to_string(), "OBX[2]-5: OBX-5 is not a number (type NM)");
        assert!(
            !err.to_string().contains("oops"),
            "error texts never quote content"
        );
        match err.outcome() {
            AckOutcome::Error {
                location: Some(l),
                code: ErrorCode::DataTypeError,
                ..
            } => {
                assert_eq!(
                    (l.segment.as_str(), l.sequence, l.field),
                    ("OBX", Some(2), Some(5))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn structure_error(msg: &str) -> (String, ErrorCode) {
        match parse(msg) {
            Err(PcdError::Invalid { location, code, .. }) => (location.to_string(), code),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn structure_errors() {
        let seq = ErrorCode::SegmentSequenceError;
        assert_eq!(
            structure_error(&format!("{HEAD}OBX|1|NM|1^X^MDC||1\n{OBR}")),
            ("OBX[1]".into(), seq)
        );
        assert_eq!(
            structure_error(&format!("{HEAD}{OBR}PID|1\n")),
            ("PID[1]".into(), seq)
        );
        assert_eq!(
            structure_error(&format!("{HEAD}PID|1\nPID|2\n{OBR}")),
            ("PID[2]".into(), seq)
        );
        assert_eq!(
            structure_error(&format!("{HEAD}PID|1\n")),
            ("OBR".into(), seq)
        );
        assert_eq!(
            structure_error(&format!("{HEAD}OBR|1\n")),
            ("OBR[1]-4".into(), ErrorCode::RequiredFieldMissing)
        );
        let alarm_head = HEAD.replace("ORU^R01^ORU_R01", "ORU^R40^ORU_R40");
        assert_eq!(
            structure_error(&format!("{alarm_head}{OBR}{OBR}")),
            ("OBR[2]".into(), seq)
        );
        assert_eq!(structure_error(&alarm_head), ("OBR".into(), seq));
        assert_eq!(
            structure_error(&HEAD.replace("|C1|", "||")),
            ("MSH[1]-10".into(), ErrorCode::RequiredFieldMissing)
        );
        assert_eq!(
            structure_error(&HEAD.replace("ORU^R01^ORU_R01", "")),
            ("MSH[1]-9".into(), ErrorCode::RequiredFieldMissing)
        );
    }

    #[test]
    fn unsupported_types_are_rejected_not_errors() {
        let adt = HEAD.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01");
        let err = parse(&format!("{adt}PID|1\n")).unwrap_err();
        assert_eq!(
            err,
            PcdError::Unsupported {
                message_type: "ADT".into(),
                trigger_event: "A01".into(),
                code: ErrorCode::UnsupportedMessageType
            }
        );
        assert!(matches!(
            err.outcome(),
            AckOutcome::Rejected {
                code: ErrorCode::UnsupportedMessageType,
                ..
            }
        ));
        let r30 = HEAD.replace("ORU^R01^ORU_R01", "ORU^R30");
        assert!(matches!(
            parse(&r30).unwrap_err(),
            PcdError::Unsupported {
                code: ErrorCode::UnsupportedEventCode,
                ..
            }
        ));
        let weird = HEAD.replace("ORU^R01^ORU_R01", "O<b>R\\F\\U-LONGER-THAN-EIGHT^x");
        let PcdError::Unsupported { message_type, .. } = parse(&weird).unwrap_err() else {
            panic!()
        };
        assert_eq!(message_type, "ObRULONG");
    }

    #[test]
    fn ignored_segments_anywhere() {
        let msg = format!("{HEAD}SFT|x\nZXX|secret\n{OBR}NTE|1||free text\nOBX|1|NM|1^X^MDC||1\nNTE|2||more\nZYY|1\n");
        let report = observations(parse(&msg).unwrap());
        assert_eq!(report.groups[0].observations.len(), 1);
    }

    #[test]
    fn debug_of_raw_types_is_redacted() {
        let report = observations(parse(MULTI_OBR).unwrap());
        let patient = report.patient.clone().unwrap();
        let shown = [
            format!("{report:?}"),
            format!("{:?}", PcdMessage::Observations(report.clone())),
            format!("{patient:?}"),
            format!("{:?}", patient.identifiers[0]),
            format!("{:?}", report.groups[0]),
            format!("{:?}", report.header),
            format!("{:?}", parse(ALARM).unwrap()),
        ];
        for s in shown {
            assert!(s.contains(REDACTED), "{s}");
            for secret in ["MUSTERMANN", "HOSP-7734211", "Artifact", "BM-000481516"] {
                assert!(!s.contains(secret), "{s}");
            }
        }
    }

    proptest! {
        #[test]
        fn interpret_never_panics(body in proptest::collection::vec(
            prop_oneof![
                Just("PID|1|x|y^^^A&B&C^MR~z||N^G^M\r".to_owned()),
                Just("OBR|1|||a^b^c|||t\r".to_owned()),
                Just("OBX|1|NM|1^X^MDC|1.2|5|u^v^w|||||R|||t||||e\r".to_owned()),
                Just("NK1|1|K^L\r".to_owned()),
                "[A-Z]{3}(\\|[-0-9A-Za-z^~&.\\\\ ]{0,12}){0,20}\r",
            ],
            0..12),
            event in prop_oneof![Just("R01"), Just("R40"), Just("A01")],
        ) {
            let text = format!("MSH|^~\\&|D||||||ORU^{event}|C|P|2.6\r{}", body.concat());
            if let Ok(message) = Message::parse(text.as_bytes()) {
                let _ = interpret(&message);
            }
        }

        #[test]
        fn numbers_accepted_by_nm_parse_as_f64(s in "[-+]?[0-9]{0,6}(\\.[0-9]{0,4})?") {
            if is_hl7_number(&s) {
                let parsed = s.parse::<f64>().or_else(|_| format!("{s}0").parse::<f64>());
                prop_assert!(parsed.is_ok(), "{}", s);
            }
        }
    }
}
