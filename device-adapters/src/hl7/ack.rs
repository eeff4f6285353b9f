//! HL7 v2 acknowledgement rules, as pure functions (no clock, no I/O).
//!
//! Given the inbound MSH ([`InboundHeader`]), the outcome of handling the message
//! ([`AckOutcome`]) and the device's [`AckMode`], [`build_ack`] returns the ACK to send, or
//! `None` when the sender asked not to be answered in this case. The timestamp (MSH-7) and
//! the ACK's own control id (MSH-10) are arguments: the driver owns the clock.
//!
//! Rules (HL7 v2.x chapter 2, "acknowledgment modes"):
//! - **Original mode** (MSH-15 and MSH-16 both empty, or [`AckMode::OriginalAlways`]): always
//!   answer, at application level: `AA` accepted, `AE` error in the message (with ERR),
//!   `AR` rejected (unsupported type, over capacity, shutting down).
//! - **Enhanced mode** (MSH-15 or MSH-16 set): MSH-15 (accept acknowledgement) governs the
//!   commit-level answer `CA`/`CE`/`CR`: `AL` always, `NE` never, `ER` only for errors and
//!   rejections, `SU` only on success. An unknown MSH-15/16 value is treated as `AL`: an
//!   unexpected ACK is harmless, a missing one makes the device retransmit or stall.
//!   *We only ever send one answer per message* (one message in flight per MLLP connection,
//!   and a receiver never starts transactions): when MSH-15 asks for a commit ACK, that is
//!   it. For us the "application" is the store-and-forward, which is complete once the
//!   message is durable, so when MSH-15 does not ask for an answer but MSH-16 does (e.g.
//!   `NE`/`AL`), we send the application-level `AA`/`AE`/`AR` instead, on the same
//!   connection. When neither asks, nothing is sent (e.g. `NE`/`NE`, or `ER`/`NE` on
//!   success).
//! - **Acknowledgements are never acknowledged**: an inbound `ACK` gets no answer, which
//!   rules out ACK ping-pong with a confused peer.
//! - **Message type** (MSH-9): a commit ACK is always `ACK^<event>^ACK`. The application
//!   answer to an IHE PCD-04 `ORU^R40` is `ORA^R41^ORA_R41` (HL7 v2.6+ / IHE PCD TF-2);
//!   every other application answer is `ACK^<event>^ACK`. So with PCD's usual `AL`/`NE` an
//!   alarm is answered `ACK^R40^ACK` + `CA`; in original mode it is answered
//!   `ORA^R41^ORA_R41` + `AA`.
//! - **Header**: our MSH-3/4 are the configured application/facility (falling back to the
//!   inbound MSH-5/6 when not configured); MSH-5/6 echo the inbound MSH-3/4; MSH-11 and
//!   MSH-12 echo the inbound processing id and version; MSA-2 echoes MSH-10. Enhanced-mode
//!   answers carry MSH-15/16 `NE` so that nobody acknowledges our acknowledgement.
//! - **ERR**: for v2.5 and later, `ERR||<seg>^<seq>^<field>|<code>^<text>^HL70357|E||||<msg>`
//!   (ERR-2 location, ERR-3 table 0357 code, ERR-4 severity, ERR-8 user message). Before
//!   v2.5, ERR-1 (`<seg>^<seq>^<field>^<code>&<text>&HL70357`) and MSA-3 carry it instead.
//! - Everything placed in the ACK is escaped for [`Delimiters::STANDARD`] (the ACK always
//!   uses `|^~\&`), control characters included, so no value can break the message or its
//!   MLLP framing. ACKs are plain ASCII unless the inbound header echoed non-ASCII names.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::hl7::message::{escape, Delimiters, ErrorLocation, Message};

/// How a device wants to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AckMode {
    /// Follow MSH-15/MSH-16 (original mode when both are empty, enhanced otherwise).
    #[default]
    Auto,
    /// Always answer in original mode (`MSA|AA`, `AE`, `AR`), whatever MSH-15/16 say: some
    /// devices set `AL`/`NE` but only understand `AA`.
    OriginalAlways,
}

impl std::str::FromStr for AckMode {
    type Err = String;

    /// Parses `auto` or `original-always` (as written in configuration).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AckMode::Auto),
            "original-always" | "original_always" => Ok(AckMode::OriginalAlways),
            other => Err(format!(
                "unknown ACK mode {other:?} (expected auto or original-always)"
            )),
        }
    }
}

/// An MSH-15/MSH-16 value (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    /// `AL`: always.
    Always,
    /// `NE`: never.
    Never,
    /// `ER`: only for errors and rejections.
    ErrorOnly,
    /// `SU`: only on successful completion.
    SuccessOnly,
}

impl AckCondition {
    /// Reads an MSH-15/16 value: `None` when empty; unknown values read as
    /// [`AckCondition::Always`] (see the module documentation).
    #[must_use]
    pub fn from_field(value: &str) -> Option<Self> {
        match value.trim() {
            "" => None,
            "NE" => Some(AckCondition::Never),
            "ER" => Some(AckCondition::ErrorOnly),
            "SU" => Some(AckCondition::SuccessOnly),
            _ => Some(AckCondition::Always),
        }
    }

    fn wants(self, outcome: &AckOutcome) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::ErrorOnly => !outcome.is_accepted(),
            AckCondition::SuccessOnly => outcome.is_accepted(),
        }
    }
}

/// HL7 table 0357 (message error condition codes) values we report in ERR-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 100: segments out of order, or a required segment missing.
    SegmentSequenceError,
    /// 101: a required field is missing.
    RequiredFieldMissing,
    /// 102: a field's value does not fit its data type.
    DataTypeError,
    /// 103: a coded value is not in its table.
    TableValueNotFound,
    /// 200: unsupported message type.
    UnsupportedMessageType,
    /// 201: unsupported event code.
    UnsupportedEventCode,
    /// 202: unsupported processing id.
    UnsupportedProcessingId,
    /// 203: unsupported version id.
    UnsupportedVersionId,
    /// 207: application internal error (also: cannot take the message now).
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    #[must_use]
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequenceError => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table's description, used as the code's text in ERR-3.
    #[must_use]
    pub const fn description(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// What happened to a message, as far as the ACK is concerned. Texts are written by us
/// (or the gateway's sink) and must not contain message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Durably stored.
    Accepted,
    /// Something in the message is wrong (AE / CE): resending it unchanged will not help.
    Error {
        /// Where, when it can be said.
        location: Option<ErrorLocation>,
        /// Table 0357 code.
        code: ErrorCode,
        /// Human-readable reason (ERR-8 / MSA-3).
        text: String,
    },
    /// We cannot or will not take the message (AR / CR): unsupported type, rate limit,
    /// storage unavailable, shutting down.
    Rejected {
        /// Table 0357 code.
        code: ErrorCode,
        /// Human-readable reason.
        text: String,
    },
}

impl AckOutcome {
    /// Whether this is [`AckOutcome::Accepted`].
    #[must_use]
    pub fn is_accepted(&self) -> bool {
        matches!(self, AckOutcome::Accepted)
    }
}

/// MSA-1 (HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// `AA`: application accept.
    ApplicationAccept,
    /// `AE`: application error.
    ApplicationError,
    /// `AR`: application reject.
    ApplicationReject,
    /// `CA`: commit accept.
    CommitAccept,
    /// `CE`: commit error.
    CommitError,
    /// `CR`: commit reject.
    CommitReject,
}

impl AckCode {
    /// The two-letter code.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AckCode::ApplicationAccept => "AA",
            AckCode::ApplicationError => "AE",
            AckCode::ApplicationReject => "AR",
            AckCode::CommitAccept => "CA",
            AckCode::CommitError => "CE",
            AckCode::CommitReject => "CR",
        }
    }

    /// Whether this is a commit-level (enhanced mode accept) acknowledgement.
    #[must_use]
    pub const fn is_commit(self) -> bool {
        matches!(
            self,
            AckCode::CommitAccept | AckCode::CommitError | AckCode::CommitReject
        )
    }

    fn application(outcome: &AckOutcome) -> Self {
        match outcome {
            AckOutcome::Accepted => AckCode::ApplicationAccept,
            AckOutcome::Error { .. } => AckCode::ApplicationError,
            AckOutcome::Rejected { .. } => AckCode::ApplicationReject,
        }
    }

    fn commit(outcome: &AckOutcome) -> Self {
        match outcome {
            AckOutcome::Accepted => AckCode::CommitAccept,
            AckOutcome::Error { .. } => AckCode::CommitError,
            AckOutcome::Rejected { .. } => AckCode::CommitReject,
        }
    }
}

impl std::fmt::Display for AckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the ACK needs from the inbound MSH. Holds device and routing identifiers only, no
/// patient data. Echoed HD fields are already encoded for [`Delimiters::STANDARD`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundHeader {
    /// MSH-3, encoded for the standard delimiters.
    pub sending_application: String,
    /// MSH-3.1 decoded: the key for per-device ACK mode overrides.
    pub application_namespace: String,
    /// MSH-4, encoded for the standard delimiters.
    pub sending_facility: String,
    /// MSH-5, encoded for the standard delimiters.
    pub receiving_application: String,
    /// MSH-6, encoded for the standard delimiters.
    pub receiving_facility: String,
    /// MSH-9.1, e.g. `ORU`.
    pub message_type: String,
    /// MSH-9.2, e.g. `R01`.
    pub trigger_event: String,
    /// MSH-10 decoded.
    pub control_id: String,
    /// MSH-11.1 (`P`, `T`, `D`).
    pub processing_id: String,
    /// MSH-12.1, e.g. `2.6`.
    pub version: String,
    /// MSH-15.
    pub accept_ack: Option<AckCondition>,
    /// MSH-16.
    pub application_ack: Option<AckCondition>,
}

impl InboundHeader {
    /// Reads the header of a parsed message (a full parse or [`Message::parse_header`]).
    #[must_use]
    pub fn from_message(message: &Message) -> Self {
        let msh = message.msh();
        let std = &Delimiters::STANDARD;
        InboundHeader {
            sending_application: msh.field(3).reencode(std),
            application_namespace: msh.field(3).component(1, 1).into_owned(),
            sending_facility: msh.field(4).reencode(std),
            receiving_application: msh.field(5).reencode(std),
            receiving_facility: msh.field(6).reencode(std),
            message_type: msh.field(9).component(1, 1).trim().to_owned(),
            trigger_event: msh.field(9).component(1, 2).trim().to_owned(),
            control_id: msh.field(10).decoded().into_owned(),
            processing_id: msh.field(11).component(1, 1).trim().to_owned(),
            version: msh.field(12).component(1, 1).trim().to_owned(),
            accept_ack: AckCondition::from_field(&msh.field(15).value()),
            application_ack: AckCondition::from_field(&msh.field(16).value()),
        }
    }

    /// Whether the message uses enhanced acknowledgement mode.
    #[must_use]
    pub fn is_enhanced_mode(&self) -> bool {
        self.accept_ack.is_some() || self.application_ack.is_some()
    }

    /// Whether HL7 v2.5+ ERR layout applies (unknown or unparsable versions count as
    /// modern, PCD being v2.6).
    #[must_use]
    pub fn uses_v25_err(&self) -> bool {
        let mut parts = self.version.split('.');
        let major = parts.next().and_then(|p| p.trim().parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.trim().parse::<u32>().ok());
        match (major, minor) {
            (Some(2), Some(minor)) => minor >= 5,
            (Some(2), None) => false,
            _ => true,
        }
    }
}

/// Decides the MSA-1 code, or `None` when no ACK is to be sent. See the module
/// documentation for the rules.
#[must_use]
pub fn choose_ack_code(
    inbound: &InboundHeader,
    outcome: &AckOutcome,
    mode: AckMode,
) -> Option<AckCode> {
    if inbound.message_type == "ACK" {
        return None;
    }
    if mode == AckMode::OriginalAlways || !inbound.is_enhanced_mode() {
        return Some(AckCode::application(outcome));
    }
    if inbound.accept_ack.is_some_and(|c| c.wants(outcome)) {
        return Some(AckCode::commit(outcome));
    }
    if inbound.application_ack.is_some_and(|c| c.wants(outcome)) {
        return Some(AckCode::application(outcome));
    }
    None
}

/// Everything [`build_ack`] needs.
#[derive(Debug, Clone, Copy)]
pub struct AckRequest<'a> {
    /// The inbound message's header.
    pub inbound: &'a InboundHeader,
    /// What happened to the message.
    pub outcome: &'a AckOutcome,
    /// The device's acknowledgement mode.
    pub mode: AckMode,
    /// Our MSH-3 (sending application), plain text.
    pub application: &'a str,
    /// Our MSH-4 (sending facility), plain text.
    pub facility: &'a str,
    /// MSH-7, an HL7 DTM (see [`hl7_timestamp`]).
    pub timestamp: &'a str,
    /// MSH-10 of the ACK itself: unique per ACK we send.
    pub control_id: &'a str,
}

/// A built acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// MSA-1.
    pub code: AckCode,
    /// MSH-9, e.g. `ACK^R01^ACK` or `ORA^R41^ORA_R41`.
    pub message_type: String,
    /// The HL7 message (segments terminated by CR), not yet MLLP framed.
    pub message: Vec<u8>,
}

/// Longest reason text placed in an ACK; the rest is cut (reasons are ours and short).
const MAX_TEXT_CHARS: usize = 512;

/// Builds the acknowledgement for `request`, or `None` when none is to be sent.
#[must_use]
pub fn build_ack(request: &AckRequest<'_>) -> Option<Ack> {
    let inbound = request.inbound;
    let code = choose_ack_code(inbound, request.outcome, request.mode)?;
    let d = &Delimiters::STANDARD;
    let enhanced = request.mode == AckMode::Auto && inbound.is_enhanced_mode();
    let message_type = ack_message_type(inbound, code);

    let our_application = if request.application.is_empty() {
        Cow::Borrowed(inbound.receiving_application.as_str())
    } else {
        escape(request.application, d)
    };
    let our_facility = if request.facility.is_empty() {
        Cow::Borrowed(inbound.receiving_facility.as_str())
    } else {
        escape(request.facility, d)
    };
    let processing_id = if inbound.processing_id.is_empty() {
        "P"
    } else {
        &inbound.processing_id
    };
    let version = if inbound.version.is_empty() {
        "2.6"
    } else {
        &inbound.version
    };

    let timestamp = escape(request.timestamp, d);
    let control_id = escape(request.control_id, d);
    let processing_id = escape(processing_id, d);
    let version = escape(version, d);

    let mut out = String::with_capacity(256);
    out.push_str("MSH|^~\\&|");
    for field in [
        our_application.as_ref(),
        our_facility.as_ref(),
        inbound.sending_application.as_str(),
        inbound.sending_facility.as_str(),
        timestamp.as_ref(),
        "",
        message_type.as_str(),
        control_id.as_ref(),
        processing_id.as_ref(),
        version.as_ref(),
    ] {
        out.push_str(field);
        out.push('|');
    }
    out.pop();
    if enhanced {
        // MSH-13, MSH-14 empty; MSH-15/16: our acknowledgement is not to be acknowledged.
        out.push_str("|||NE|NE");
    }
    out.push('\r');

    out.push_str("MSA|");
    out.push_str(code.as_str());
    out.push('|');
    out.push_str(&escape(&inbound.control_id, d));
    let failure = match request.outcome {
        AckOutcome::Accepted => None,
        AckOutcome::Error {
            location,
            code,
            text,
        } => Some((location.as_ref(), *code, text)),
        AckOutcome::Rejected { code, text } => Some((None, *code, text)),
    };
    let Some((location, error_code, text)) = failure else {
        out.push('\r');
        return Some(Ack {
            code,
            message_type,
            message: out.into_bytes(),
        });
    };
    let text = escape(cut(text), d);
    let location = location.map(render_location).unwrap_or_default();
    let number = error_code.code();
    let description = error_code.description();
    if inbound.uses_v25_err() {
        out.push('\r');
        let _ = write!(
            out,
            "ERR||{location}|{number}^{description}^HL70357|E||||{text}\r"
        );
    } else {
        // Before v2.5: MSA-3 text and ERR-1 (ELD), whose 4th component is a CE written
        // with sub-component separators.
        out.push('|');
        out.push_str(&text);
        out.push('\r');
        let location = if location.is_empty() {
            "^^".to_owned()
        } else {
            location
        };
        let _ = write!(out, "ERR|{location}^{number}&{description}&HL70357\r");
    }
    Some(Ack {
        code,
        message_type,
        message: out.into_bytes(),
    })
}

fn ack_message_type(inbound: &InboundHeader, code: AckCode) -> String {
    if !code.is_commit() && inbound.message_type == "ORU" && inbound.trigger_event == "R40" {
        return "ORA^R41^ORA_R41".to_owned();
    }
    // Echo the trigger event only when it looks like one; it comes from the device.
    let event = &inbound.trigger_event;
    if (1..=3).contains(&event.len()) && event.bytes().all(|b| b.is_ascii_alphanumeric()) {
        format!("ACK^{event}^ACK")
    } else {
        "ACK".to_owned()
    }
}

/// `SEG^seq^field` (ERL), escaped; empty components where unknown.
fn render_location(location: &ErrorLocation) -> String {
    let d = &Delimiters::STANDARD;
    let seq = location.sequence.map(|s| s.to_string()).unwrap_or_default();
    let field = location.field.map(|f| f.to_string()).unwrap_or_default();
    format!("{}^{seq}^{field}", escape(&location.segment, d))
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// Formats seconds since the Unix epoch as an HL7 DTM in UTC:
/// `YYYYMMDDHHMMSS+0000`.
#[must_use]
pub fn hl7_timestamp(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}+0000",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;

    fn header(msh: &str) -> InboundHeader {
        InboundHeader::from_message(&Message::parse(msh.as_bytes()).unwrap())
    }

    const PCD01: &str = "MSH|^~\\&|MONITOR^0011223344556677^EUI-64|WARD1|CIS|HOSP|20250101120000||ORU^R01^ORU_R01|MSG00042|P|2.6|||AL|NE";
    const ORIGINAL: &str = "MSH|^~\\&|MONITOR|WARD1|CIS|HOSP|20250101120000||ORU^R01|MSG7|P|2.6";

    fn request<'a>(
        inbound: &'a InboundHeader,
        outcome: &'a AckOutcome,
        mode: AckMode,
    ) -> AckRequest<'a> {
        AckRequest {
            inbound,
            outcome,
            mode,
            application: "WARDGATE",
            facility: "EDGE",
            timestamp: "20250101120001+0000",
            control_id: "A1",
        }
    }

    fn text(ack: &Ack) -> &str {
        std::str::from_utf8(&ack.message).unwrap()
    }

    fn error(code: ErrorCode) -> AckOutcome {
        AckOutcome::Error {
            location: Some(ErrorLocation::new("OBX", Some(2), Some(5))),
            code,
            text: "OBX-5 is not a number".to_owned(),
        }
    }

    fn rejected() -> AckOutcome {
        AckOutcome::Rejected {
            code: ErrorCode::ApplicationInternalError,
            text: "rate limit exceeded".to_owned(),
        }
    }

    #[test]
    fn original_mode_accept_exact_bytes() {
        let inbound = header(ORIGINAL);
        let ack = build_ack(&request(&inbound, &AckOutcome::Accepted, AckMode::Auto)).unwrap();
        assert_eq!(ack.code, AckCode::ApplicationAccept);
        assert_eq!(
            text(&ack),
            "MSH|^~\\&|WARDGATE|EDGE|MONITOR|WARD1|20250101120001+0000||ACK^R01^ACK|A1|P|2.6\rMSA|AA|MSG7\r"
        );
    }

    #[test]
    fn original_mode_error_and_reject_carry_err() {
        let inbound = header(ORIGINAL);
        let ack = build_ack(&request(
            &inbound,
            &error(ErrorCode::DataTypeError),
            AckMode::Auto,
        ))
        .unwrap();
        assert_eq!(ack.code, AckCode::ApplicationError);
        assert!(text(&ack).ends_with(
            "MSA|AE|MSG7\rERR||OBX^2^5|102^Data type error^HL70357|E||||OBX-5 is not a number\r"
        ));
        let ack = build_ack(&request(&inbound, &rejected(), AckMode::Auto)).unwrap();
        assert_eq!(ack.code, AckCode::ApplicationReject);
        assert!(text(&ack).ends_with(
            "MSA|AR|MSG7\rERR|||207^Application internal error^HL70357|E||||rate limit exceeded\r"
        ));
    }

    #[test]
    fn enhanced_mode_pcd_al_ne_sends_commit_acks() {
        let inbound = header(PCD01);
        let ack = build_ack(&request(&inbound, &AckOutcome::Accepted, AckMode::Auto)).unwrap();
        assert_eq!(ack.code, AckCode::CommitAccept);
        assert_eq!(
            text(&ack),
            "MSH|^~\\&|WARDGATE|EDGE|MONITOR^0011223344556677^EUI-64|WARD1|20250101120001+0000||ACK^R01^ACK|A1|P|2.6|||NE|NE\rMSA|CA|MSG00042\r"
        );
        let ack = build_ack(&request(
            &inbound,
            &error(ErrorCode::RequiredFieldMissing),
            AckMode::Auto,
        ))
        .unwrap();
        assert_eq!(ack.code, AckCode::CommitError);
        let ack = build_ack(&request(&inbound, &rejected(), AckMode::Auto)).unwrap();
        assert_eq!(ack.code, AckCode::CommitReject);
    }

    #[test]
    fn enhanced_mode_conditions() {
        let ok = AckOutcome::Accepted;
        let err = error(ErrorCode::DataTypeError);
        let rej = rejected();
        let cases: &[(&str, &str, [Option<AckCode>; 3])] = &[
            ("NE", "NE", [None, None, None]),
            (
                "ER",
                "NE",
                [
                    None,
                    Some(AckCode::CommitError),
                    Some(AckCode::CommitReject),
                ],
            ),
            ("SU", "NE", [Some(AckCode::CommitAccept), None, None]),
            (
                "AL",
                "AL",
                [
                    Some(AckCode::CommitAccept),
                    Some(AckCode::CommitError),
                    Some(AckCode::CommitReject),
                ],
            ),
            (
                "NE",
                "AL",
                [
                    Some(AckCode::ApplicationAccept),
                    Some(AckCode::ApplicationError),
                    Some(AckCode::ApplicationReject),
                ],
            ),
            (
                "",
                "ER",
                [
                    None,
                    Some(AckCode::ApplicationError),
                    Some(AckCode::ApplicationReject),
                ],
            ),
            (
                "SU",
                "ER",
                [
                    Some(AckCode::CommitAccept),
                    Some(AckCode::ApplicationError),
                    Some(AckCode::ApplicationReject),
                ],
            ),
            (
                "XX",
                "",
                [
                    Some(AckCode::CommitAccept),
                    Some(AckCode::CommitError),
                    Some(AckCode::CommitReject),
                ],
            ),
        ];
        for (msh15, msh16, expected) in cases {
            let inbound = header(&format!(
                "MSH|^~\\&|DEV||||||ORU^R01|1|P|2.6|||{msh15}|{msh16}"
            ));
            let got = [&ok, &err, &rej].map(|o| choose_ack_code(&inbound, o, AckMode::Auto));
            assert_eq!(&got, expected, "MSH-15 {msh15:?} MSH-16 {msh16:?}");
            // The override always answers in original mode.
            let forced =
                [&ok, &err, &rej].map(|o| choose_ack_code(&inbound, o, AckMode::OriginalAlways));
            assert_eq!(
                forced,
                [
                    Some(AckCode::ApplicationAccept),
                    Some(AckCode::ApplicationError),
                    Some(AckCode::ApplicationReject)
                ]
            );
        }
    }

    #[test]
    fn original_always_override_omits_enhanced_fields() {
        let inbound = header("MSH|^~\\&|DEV||||||ORU^R01|9|P|2.6|||NE|NE");
        let ack = build_ack(&request(
            &inbound,
            &AckOutcome::Accepted,
            AckMode::OriginalAlways,
        ))
        .unwrap();
        assert_eq!(ack.code, AckCode::ApplicationAccept);
        assert!(!text(&ack).contains("|NE|NE"));
        assert!(text(&ack).contains("\rMSA|AA|9\r"));
        assert!(build_ack(&request(&inbound, &AckOutcome::Accepted, AckMode::Auto)).is_none());
    }

    #[test]
    fn r40_alarm_message_types() {
        let enhanced = header("MSH|^~\\&|DEV||||||ORU^R40^ORU_R40|5|P|2.6|||AL|NE");
        let ack = build_ack(&request(&enhanced, &AckOutcome::Accepted, AckMode::Auto)).unwrap();
        assert_eq!(ack.message_type, "ACK^R40^ACK");
        assert_eq!(ack.code, AckCode::CommitAccept);
        let ack = build_ack(&request(
            &enhanced,
            &AckOutcome::Accepted,
            AckMode::OriginalAlways,
        ))
        .unwrap();
        assert_eq!(ack.message_type, "ORA^R41^ORA_R41");
        assert!(text(&ack).contains("||ORA^R41^ORA_R41|"));
        let original = header("MSH|^~\\&|DEV||||||ORU^R40^ORU_R40|5|P|2.6");
        let ack = build_ack(&request(&original, &AckOutcome::Accepted, AckMode::Auto)).unwrap();
        assert_eq!(ack.message_type, "ORA^R41^ORA_R41");
        let app_level = header("MSH|^~\\&|DEV||||||ORU^R40^ORU_R40|5|P|2.6|||NE|AL");
        let ack = build_ack(&request(&app_level, &AckOutcome::Accepted, AckMode::Auto)).unwrap();
        assert_eq!(ack.message_type, "ORA^R41^ORA_R41");
    }

    #[test]
    fn odd_or_missing_trigger_events() {
        let inbound = header("MSH|^~\\&|DEV||||||ADT|5|P|2.6");
        let ack = build_ack(&request(&inbound, &rejected(), AckMode::Auto)).unwrap();
        assert_eq!(ack.message_type, "ACK");
        let inbound = header("MSH|^~\\&|DEV||||||ORU^R\\F\\01|5|P|2.6");
        let ack = build_ack(&request(&inbound, &rejected(), AckMode::Auto)).unwrap();
        assert_eq!(ack.message_type, "ACK");
    }

    #[test]
    fn acks_are_never_acknowledged() {
        let inbound = header("MSH|^~\\&|DEV||||||ACK^R01^ACK|5|P|2.6");
        for mode in [AckMode::Auto, AckMode::OriginalAlways] {
            assert!(build_ack(&request(&inbound, &rejected(), mode)).is_none());
        }
    }

    #[test]
    fn pre_v25_uses_err1_and_msa3() {
        let inbound = header("MSH|^~\\&|DEV||||||ORU^R01|5|P|2.3.1");
        assert!(!inbound.uses_v25_err());
        let ack = build_ack(&request(
            &inbound,
            &error(ErrorCode::DataTypeError),
            AckMode::Auto,
        ))
        .unwrap();
        assert!(text(&ack).ends_with(
            "MSA|AE|5|OBX-5 is not a number\rERR|OBX^2^5^102&Data type error&HL70357\r"
        ));
        let ack = build_ack(&request(&inbound, &rejected(), AckMode::Auto)).unwrap();
        assert!(text(&ack).ends_with("ERR|^^^207&Application internal error&HL70357\r"));
        for (v, modern) in [
            ("2.5", true),
            ("2.5.1", true),
            ("2.6", true),
            ("2.4", false),
            ("2", false),
            ("", true),
            ("x", true),
        ] {
            let h = InboundHeader {
                version: v.to_owned(),
                ..InboundHeader::default()
            };
            assert_eq!(h.uses_v25_err(), modern, "version {v:?}");
        }
    }

    #[test]
    fn everything_placed_in_the_ack_is_escaped() {
        let inbound = header("MSH#*!@$#APP*X$Y#FAC#####ORU*R01#C@F@1#P#2.6");
        assert_eq!(inbound.sending_application, "APP^X&Y");
        assert_eq!(inbound.control_id, "C#1");
        let outcome = AckOutcome::Error {
            location: None,
            code: ErrorCode::DataTypeError,
            text: "bad|value^with\rcontrol\x1c chars".to_owned(),
        };
        let req = AckRequest {
            application: "GATE|WAY",
            ..request(&inbound, &outcome, AckMode::Auto)
        };
        let ack = build_ack(&req).unwrap();
        let t = text(&ack);
        assert!(t.starts_with("MSH|^~\\&|GATE\\F\\WAY|EDGE|APP^X&Y|FAC|"));
        assert!(t.contains("\rMSA|AE|C#1\r"));
        assert!(t.ends_with("|E||||bad\\F\\value\\S\\with\\X0D\\control\\X1C\\ chars\r"));
        assert!(!ack.message.iter().any(|&b| b == 0x0b || b == 0x1c));
        // The ACK parses back with the same control id and code.
        let parsed = Message::parse(&ack.message).unwrap();
        assert_eq!(parsed.segment("MSA").unwrap().field(1).value(), "AE");
        assert_eq!(
            parsed.segment("ERR").unwrap().field(8).value(),
            "bad|value^with\rcontrol\x1c chars"
        );
    }

    #[test]
    fn unknown_header_and_defaults() {
        let inbound = InboundHeader::default();
        let outcome = rejected();
        let req = AckRequest {
            application: "",
            facility: "",
            ..request(&inbound, &outcome, AckMode::Auto)
        };
        let ack = build_ack(&req).unwrap();
        assert!(text(&ack)
            .starts_with("MSH|^~\\&|||||20250101120001+0000||ACK|A1|P|2.6\rMSA|AR|\rERR|"));
    }

    #[test]
    fn long_texts_are_cut() {
        let inbound = header(ORIGINAL);
        let outcome = AckOutcome::Rejected {
            code: ErrorCode::ApplicationInternalError,
            text: "é".repeat(2000),
        };
        let ack = build_ack(&request(&inbound, &outcome, AckMode::Auto)).unwrap();
        assert_eq!(text(&ack).matches('é').count(), MAX_TEXT_CHARS);
    }

    #[test]
    fn ack_mode_from_str() {
        assert_eq!("auto".parse::<AckMode>(), Ok(AckMode::Auto));
        assert_eq!(
            "original-always".parse::<AckMode>(),
            Ok(AckMode::OriginalAlways)
        );
        assert!("sometimes".parse::<AckMode>().is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(hl7_timestamp(0), "19700101000000+0000");
        assert_eq!(hl7_timestamp(1_735_732_800), "20250101120000+0000");
        assert_eq!(hl7_timestamp(1_709_251_199), "20240229235959+0000");
        assert_eq!(hl7_timestamp(4_107_542_400), "21000301000000+0000");
    }
}
