//! DIMSE messages over P-DATA: the command set codec and the message assembler. Pure code:
//! no I/O, no clock.
//!
//! A DIMSE message is a command set (always Implicit VR Little Endian, group 0000) in one
//! or more *command* fragments, optionally followed by a data set in one or more *data*
//! fragments, all on one presentation context (PS3.7 §6.3.1, PS3.8 §9.3.5.1).
//! [`Assembler`] takes fragments in arrival order and says what the driver must do with
//! each: buffer command bytes (bounded by [`MAX_COMMAND_BYTES`]), answer a command, open
//! an object, append a data fragment to it, or drop it once it exceeds the object limit.
//!
//! Invariants:
//! - Data set bytes are never held here: the assembler only counts them, so memory does
//!   not depend on object size.
//! - Anything out of order (data before a command, a command in the middle of a data set,
//!   fragments of one message on two presentation contexts, an oversized or undecodable
//!   command set) is a [`DimseError`], after which the association must be aborted: the
//!   message boundaries can no longer be trusted. An oversized *object* is not an error of
//!   the association: the rest of it is counted and discarded, and it is answered with a
//!   failure status.
//! - Texts that go on the wire (error comments) come only from this crate or from the
//!   sink, never from received data.

/// Largest command set accepted. Real command sets are a few hundred bytes; the bound
/// keeps a hostile peer from making us buffer an endless "command".
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// DIMSE status codes used in responses (PS3.4 Annex B, PS3.7 Annex C).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: out of resources (storage budget, spool full, object over the size limit).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Failure: processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: unrecognized operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// Command field values (PS3.7 §E.1).
pub mod command_field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-CANCEL-RQ (never answered).
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    /// Set on every response's command field.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

/// CommandDataSetType value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;
const LO_MAX_CHARS: usize = 64;

const TAG_GROUP_LENGTH: u16 = 0x0000;
const TAG_AFFECTED_SOP_CLASS: u16 = 0x0002;
const TAG_COMMAND_FIELD: u16 = 0x0100;
const TAG_MESSAGE_ID: u16 = 0x0110;
const TAG_MESSAGE_ID_RESPONDED_TO: u16 = 0x0120;
const TAG_DATA_SET_TYPE: u16 = 0x0800;
const TAG_STATUS: u16 = 0x0900;
const TAG_ERROR_COMMENT: u16 = 0x0902;
const TAG_AFFECTED_SOP_INSTANCE: u16 = 0x1000;

/// The parts of a received command set this SCP acts on.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// Presentation context the command arrived on.
    pub context_id: u8,
    /// Command field (0000,0100).
    pub field: u16,
    /// Message ID (0000,0110), echoed in the response.
    pub message_id: u16,
    /// Affected SOP class UID (0000,0002), padding removed.
    pub affected_sop_class: Option<String>,
    /// Affected SOP instance UID (0000,1000), padding removed. Identifies a patient's
    /// image: never logged.
    pub affected_sop_instance: Option<String>,
    /// Whether a data set follows (CommandDataSetType other than 0x0101).
    pub has_data_set: bool,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command")
            .field("context_id", &self.context_id)
            .field("field", &format_args!("{:#06x}", self.field))
            .field("message_id", &self.message_id)
            .field("affected_sop_class", &self.affected_sop_class)
            .field("affected_sop_instance", &crate::REDACTED)
            .field("has_data_set", &self.has_data_set)
            .finish()
    }
}

/// A protocol violation: the association must be aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DimseError {
    /// A data fragment arrived without a command announcing it.
    #[error("data fragment without a command announcing a data set")]
    UnexpectedData,
    /// A command fragment arrived while a data set was being received.
    #[error("command fragment in the middle of a data set")]
    UnexpectedCommand,
    /// Fragments of one message arrived on different presentation contexts.
    #[error("message fragments on presentation contexts {expected} and {got}")]
    ContextSwitch {
        /// The context the message started on.
        expected: u8,
        /// The context of the offending fragment.
        got: u8,
    },
    /// The command set is larger than [`MAX_COMMAND_BYTES`].
    #[error("command set larger than {MAX_COMMAND_BYTES} bytes")]
    CommandTooLarge,
    /// A P-DATA-TF PDU's items do not add up.
    #[error("malformed P-DATA-TF PDU")]
    MalformedPData,
    /// The command set cannot be decoded.
    #[error("malformed command set: {0}")]
    MalformedCommand(&'static str),
}

/// One presentation data value (a fragment), as the driver took it from a P-DATA-TF PDU.
#[derive(Clone, Copy)]
pub struct Fragment<'a> {
    /// Presentation context ID.
    pub context_id: u8,
    /// Command (true) or data set (false) fragment.
    pub is_command: bool,
    /// Last fragment of its command or data set.
    pub is_last: bool,
    /// The fragment's bytes.
    pub bytes: &'a [u8],
}

/// The fragments of a P-DATA-TF PDU body (everything after the 6-byte PDU header), in
/// order, borrowed from `body`. Nothing is allocated, so a PDU of many tiny items costs no
/// memory beyond the PDU itself.
#[must_use]
pub fn pdata_fragments(body: &[u8]) -> PDataFragments<'_> {
    PDataFragments { rest: body }
}

/// Iterator returned by [`pdata_fragments`]. Yields [`DimseError::MalformedPData`] (and
/// then ends) when an item's length runs past the body or cannot hold the item header.
pub struct PDataFragments<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PDataFragments<'a> {
    type Item = Result<Fragment<'a>, DimseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Some(Err(DimseError::MalformedPData));
        };
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if len < 2 || len > after.len() {
            return Some(Err(DimseError::MalformedPData));
        }
        let (item, next) = after.split_at(len);
        self.rest = next;
        let header = item[1];
        Some(Ok(Fragment {
            context_id: item[0],
            is_command: header & 0x01 != 0,
            is_last: header & 0x02 != 0,
            bytes: &item[2..],
        }))
    }
}

/// Encodes a command set as P-DATA-TF PDUs (header included) on `context_id`, split so
/// that no PDU is longer than `peer_max_pdu_length` (0: no limit).
#[must_use]
pub fn encode_command_pdus(context_id: u8, command: &[u8], peer_max_pdu_length: u32) -> Vec<u8> {
    // A PDV item costs 4 (length) + 2 (context, header) bytes inside the PDU body.
    let limit = usize::try_from(peer_max_pdu_length).unwrap_or(usize::MAX);
    let chunk = if limit == 0 {
        usize::MAX
    } else {
        limit.saturating_sub(6).max(1)
    };
    let mut out = Vec::with_capacity(command.len() + 12);
    let mut at = 0usize;
    loop {
        let end = at.saturating_add(chunk).min(command.len());
        let last = end == command.len();
        push_pdv_pdu(
            &mut out,
            context_id,
            0x01 | if last { 0x02 } else { 0 },
            &command[at..end],
        );
        if last {
            return out;
        }
        at = end;
    }
}

fn push_pdv_pdu(out: &mut Vec<u8>, context_id: u8, header: u8, data: &[u8]) {
    let item_len = u32::try_from(data.len() + 2).unwrap_or(u32::MAX);
    let pdu_len = item_len.saturating_add(4);
    out.extend_from_slice(&[0x04, 0x00]);
    out.extend_from_slice(&pdu_len.to_be_bytes());
    out.extend_from_slice(&item_len.to_be_bytes());
    out.extend_from_slice(&[context_id, header]);
    out.extend_from_slice(data);
}

/// What the driver does with one fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A command fragment was buffered; nothing else to do.
    Buffered,
    /// A complete command without a data set: answer it.
    Command(Command),
    /// A complete command whose data set follows: prepare to receive it (see [`dispose`]).
    DataSetStarts(Command),
    /// A data fragment.
    Data {
        /// Append the fragment's bytes to the object being received.
        append: bool,
        /// The object just went over the size limit: discard what was received of it.
        oversized_now: bool,
        /// This was the data set's last fragment.
        complete: Option<Completed>,
    },
}

/// A data set that has been received to its last fragment.
#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    /// The command that announced it.
    pub command: Command,
    /// Data set bytes received (including any discarded ones).
    pub bytes: u64,
    /// Whether it exceeded the object limit (and was therefore discarded).
    pub oversized: bool,
}

enum State {
    Idle,
    Command {
        context_id: u8,
        bytes: Vec<u8>,
    },
    DataSet {
        command: Command,
        received: u64,
        oversized: bool,
    },
}

/// Reassembles DIMSE messages from fragments (see the module documentation).
pub struct Assembler {
    state: State,
    max_object_bytes: u64,
}

impl Assembler {
    /// An assembler that discards data sets larger than `max_object_bytes`.
    #[must_use]
    pub fn new(max_object_bytes: u64) -> Self {
        Assembler {
            state: State::Idle,
            max_object_bytes,
        }
    }

    /// Whether a data set is being received (its command arrived, its last fragment not).
    #[must_use]
    pub fn mid_data_set(&self) -> bool {
        matches!(self.state, State::DataSet { .. })
    }

    /// Feeds one fragment.
    ///
    /// # Errors
    /// [`DimseError`] on a protocol violation; the assembler is then reset, but the
    /// association should be aborted.
    pub fn push(&mut self, fragment: Fragment<'_>) -> Result<Step, DimseError> {
        let result = self.step(fragment);
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    fn step(&mut self, fragment: Fragment<'_>) -> Result<Step, DimseError> {
        match (&mut self.state, fragment.is_command) {
            (State::Idle | State::Command { .. }, false) => Err(DimseError::UnexpectedData),
            (State::DataSet { .. }, true) => Err(DimseError::UnexpectedCommand),
            (State::Idle, true) => {
                self.state = State::Command {
                    context_id: fragment.context_id,
                    bytes: Vec::new(),
                };
                self.step(fragment)
            }
            (State::Command { context_id, bytes }, true) => {
                if *context_id != fragment.context_id {
                    return Err(DimseError::ContextSwitch {
                        expected: *context_id,
                        got: fragment.context_id,
                    });
                }
                if bytes.len() + fragment.bytes.len() > MAX_COMMAND_BYTES {
                    return Err(DimseError::CommandTooLarge);
                }
                bytes.extend_from_slice(fragment.bytes);
                if !fragment.is_last {
                    return Ok(Step::Buffered);
                }
                let command = decode_command(fragment.context_id, bytes)?;
                if command.has_data_set {
                    self.state = State::DataSet {
                        command: command.clone(),
                        received: 0,
                        oversized: false,
                    };
                    Ok(Step::DataSetStarts(command))
                } else {
                    self.state = State::Idle;
                    Ok(Step::Command(command))
                }
            }
            (
                State::DataSet {
                    command,
                    received,
                    oversized,
                },
                false,
            ) => {
                if command.context_id != fragment.context_id {
                    return Err(DimseError::ContextSwitch {
                        expected: command.context_id,
                        got: fragment.context_id,
                    });
                }
                let len = u64::try_from(fragment.bytes.len()).unwrap_or(u64::MAX);
                *received = received.saturating_add(len);
                let was_oversized = *oversized;
                *oversized |= *received > self.max_object_bytes;
                let step_append = !*oversized;
                let oversized_now = *oversized && !was_oversized;
                if !fragment.is_last {
                    return Ok(Step::Data {
                        append: step_append,
                        oversized_now,
                        complete: None,
                    });
                }
                let State::DataSet {
                    command,
                    received,
                    oversized,
                } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return Err(DimseError::UnexpectedData);
                };
                Ok(Step::Data {
                    append: step_append,
                    oversized_now,
                    complete: Some(Completed {
                        command,
                        bytes: received,
                        oversized,
                    }),
                })
            }
        }
    }
}

/// What to do with a complete command, given the abstract syntax of the presentation
/// context it arrived on (`None`: the context was not accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Answer a C-ECHO-RQ with success.
    Echo,
    /// Receive the data set into a temporary file and hand it to the sink.
    Store,
    /// Answer with this failure status (after discarding the data set, if one follows).
    Refuse {
        /// DIMSE status.
        status: u16,
        /// Error comment for the response.
        comment: &'static str,
    },
    /// Do not answer (C-CANCEL-RQ: we never have anything to cancel).
    Ignore,
}

/// Decides how to treat a complete command (pure policy; see [`Disposition`]).
#[must_use]
pub fn dispose(command: &Command, context_abstract_syntax: Option<&str>) -> Disposition {
    use command_field::{C_CANCEL_RQ, C_ECHO_RQ, C_STORE_RQ};
    let Some(abstract_syntax) = context_abstract_syntax else {
        return Disposition::Refuse {
            status: status::SOP_CLASS_NOT_SUPPORTED,
            comment: "presentation context not accepted",
        };
    };
    match command.field {
        C_ECHO_RQ if !command.has_data_set => Disposition::Echo,
        C_STORE_RQ => {
            if !command.has_data_set {
                return Disposition::Refuse {
                    status: status::CANNOT_UNDERSTAND,
                    comment: "C-STORE without a data set",
                };
            }
            if command.affected_sop_class.as_deref() != Some(abstract_syntax)
                || !super::sop::is_storage_sop_class(abstract_syntax)
            {
                return Disposition::Refuse {
                    status: status::SOP_CLASS_NOT_SUPPORTED,
                    comment: "SOP class does not match the presentation context",
                };
            }
            if command
                .affected_sop_instance
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Disposition::Refuse {
                    status: status::CANNOT_UNDERSTAND,
                    comment: "missing Affected SOP Instance UID",
                };
            }
            Disposition::Store
        }
        C_CANCEL_RQ => Disposition::Ignore,
        _ => Disposition::Refuse {
            status: status::UNRECOGNIZED_OPERATION,
            comment: "only C-STORE and C-ECHO are supported",
        },
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn uid_value(value: &[u8]) -> Result<String, DimseError> {
    let text =
        std::str::from_utf8(value).map_err(|_| DimseError::MalformedCommand("UID not ASCII"))?;
    Ok(super::sop::trim_uid(text).trim_start().to_owned())
}

fn us_value(value: &[u8]) -> Result<u16, DimseError> {
    match value {
        [a, b] => Ok(u16::from_le_bytes([*a, *b])),
        _ => Err(DimseError::MalformedCommand("US element of wrong length")),
    }
}

/// Decodes a command set (Implicit VR Little Endian, group 0000 only).
///
/// # Errors
/// [`DimseError::MalformedCommand`] for truncated elements, elements outside group 0000,
/// undefined lengths, or a missing command field or message ID.
pub fn decode_command(context_id: u8, bytes: &[u8]) -> Result<Command, DimseError> {
    let mut field = None;
    let mut message_id = None;
    let mut data_set_type = None;
    let mut affected_sop_class = None;
    let mut affected_sop_instance = None;
    let mut at = 0usize;
    while at < bytes.len() {
        let (Some(group), Some(element), Some(len)) = (
            read_u16(bytes, at),
            read_u16(bytes, at + 2),
            read_u32(bytes, at + 4),
        ) else {
            return Err(DimseError::MalformedCommand("truncated element header"));
        };
        if group != 0x0000 {
            return Err(DimseError::MalformedCommand("element outside group 0000"));
        }
        let start = at + 8;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or(DimseError::MalformedCommand(
                "element value runs past the end",
            ))?;
        let value = &bytes[start..end];
        match element {
            TAG_COMMAND_FIELD => field = Some(us_value(value)?),
            TAG_MESSAGE_ID => message_id = Some(us_value(value)?),
            TAG_DATA_SET_TYPE => data_set_type = Some(us_value(value)?),
            TAG_AFFECTED_SOP_CLASS => affected_sop_class = Some(uid_value(value)?),
            TAG_AFFECTED_SOP_INSTANCE => affected_sop_instance = Some(uid_value(value)?),
            _ => {}
        }
        at = end;
    }
    let field = field.ok_or(DimseError::MalformedCommand("no command field"))?;
    // C-CANCEL-RQ carries MessageIDBeingRespondedTo instead of a message ID.
    let message_id = match message_id {
        Some(id) => id,
        None if field == command_field::C_CANCEL_RQ => 0,
        None => return Err(DimseError::MalformedCommand("no message ID")),
    };
    let data_set_type =
        data_set_type.ok_or(DimseError::MalformedCommand("no command data set type"))?;
    Ok(Command {
        context_id,
        field,
        message_id,
        affected_sop_class,
        affected_sop_instance,
        has_data_set: data_set_type != NO_DATA_SET,
    })
}

fn put_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
}

fn put_text(out: &mut Vec<u8>, element: u16, text: &str, pad: u8) {
    let mut value = text.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(pad);
    }
    put_element(out, element, &value);
}

/// Makes a text safe for an LO value: printable ASCII without backslashes, at most 64
/// characters.
fn error_comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(LO_MAX_CHARS)
        .collect()
}

/// Encodes the response to `request` (command field with the response bit set, the
/// request's message ID, affected SOP class and instance echoed, no data set), with
/// `status` and, for failures, an error comment.
#[must_use]
pub fn encode_response(request: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    if let Some(class) = &request.affected_sop_class {
        put_text(&mut body, TAG_AFFECTED_SOP_CLASS, class, 0);
    }
    let field = request.field | command_field::RESPONSE_BIT;
    put_element(&mut body, TAG_COMMAND_FIELD, &field.to_le_bytes());
    put_element(
        &mut body,
        TAG_MESSAGE_ID_RESPONDED_TO,
        &request.message_id.to_le_bytes(),
    );
    put_element(&mut body, TAG_DATA_SET_TYPE, &NO_DATA_SET.to_le_bytes());
    put_element(&mut body, TAG_STATUS, &status.to_le_bytes());
    if let Some(comment) = comment.filter(|_| status != status::SUCCESS) {
        put_text(&mut body, TAG_ERROR_COMMENT, &error_comment(comment), b' ');
    }
    if let Some(instance) = &request.affected_sop_instance {
        put_text(&mut body, TAG_AFFECTED_SOP_INSTANCE, instance, 0);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    let group_length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    put_element(&mut out, TAG_GROUP_LENGTH, &group_length.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const INSTANCE: &str = "1.2.3.4.5";

    fn store_rq(message_id: u16) -> Vec<u8> {
        let mut body = Vec::new();
        put_text(&mut body, TAG_AFFECTED_SOP_CLASS, CT, 0);
        put_element(&mut body, TAG_COMMAND_FIELD, &1u16.to_le_bytes());
        put_element(&mut body, TAG_MESSAGE_ID, &message_id.to_le_bytes());
        put_element(&mut body, 0x0700, &0u16.to_le_bytes());
        put_element(&mut body, TAG_DATA_SET_TYPE, &0x0000u16.to_le_bytes());
        put_text(&mut body, TAG_AFFECTED_SOP_INSTANCE, INSTANCE, 0);
        let mut out = Vec::new();
        put_element(
            &mut out,
            0,
            &u32::try_from(body.len()).unwrap().to_le_bytes(),
        );
        out.extend_from_slice(&body);
        out
    }

    fn frag(context_id: u8, is_command: bool, is_last: bool, bytes: &[u8]) -> Fragment<'_> {
        Fragment {
            context_id,
            is_command,
            is_last,
            bytes,
        }
    }

    #[test]
    fn command_in_two_fragments_then_data_set() {
        let rq = store_rq(7);
        let mut asm = Assembler::new(10);
        assert_eq!(
            asm.push(frag(1, true, false, &rq[..10])).unwrap(),
            Step::Buffered
        );
        let Step::DataSetStarts(cmd) = asm.push(frag(1, true, true, &rq[10..])).unwrap() else {
            panic!("expected a data set to start");
        };
        assert_eq!(
            (cmd.field, cmd.message_id, cmd.affected_sop_class.as_deref()),
            (1, 7, Some(CT))
        );
        assert_eq!(cmd.affected_sop_instance.as_deref(), Some(INSTANCE));
        assert_eq!(dispose(&cmd, Some(CT)), Disposition::Store);
        assert!(asm.mid_data_set());
        assert_eq!(
            asm.push(frag(1, false, false, b"1234")).unwrap(),
            Step::Data {
                append: true,
                oversized_now: false,
                complete: None
            }
        );
        let Step::Data {
            append: true,
            oversized_now: false,
            complete: Some(done),
        } = asm.push(frag(1, false, true, b"567890")).unwrap()
        else {
            panic!("expected completion");
        };
        assert_eq!((done.bytes, done.oversized), (10, false));
        assert!(!asm.mid_data_set());
    }

    #[test]
    fn oversized_object_is_counted_and_discarded_to_its_end() {
        let rq = store_rq(1);
        let mut asm = Assembler::new(5);
        asm.push(frag(3, true, true, &rq)).unwrap();
        assert_eq!(
            asm.push(frag(3, false, false, b"1234")).unwrap(),
            Step::Data {
                append: true,
                oversized_now: false,
                complete: None
            }
        );
        assert_eq!(
            asm.push(frag(3, false, false, b"56")).unwrap(),
            Step::Data {
                append: false,
                oversized_now: true,
                complete: None
            }
        );
        let Step::Data {
            append: false,
            oversized_now: false,
            complete: Some(done),
        } = asm.push(frag(3, false, true, b"789")).unwrap()
        else {
            panic!("expected completion");
        };
        assert_eq!((done.bytes, done.oversized), (9, true));
        // The association goes on with the next message.
        assert!(matches!(
            asm.push(frag(3, true, true, &rq)).unwrap(),
            Step::DataSetStarts(_)
        ));
    }

    #[test]
    fn out_of_order_fragments_are_protocol_errors() {
        let rq = store_rq(1);
        let mut asm = Assembler::new(100);
        assert_eq!(
            asm.push(frag(1, false, true, b"x")),
            Err(DimseError::UnexpectedData)
        );
        asm.push(frag(1, true, true, &rq)).unwrap();
        assert_eq!(
            asm.push(frag(1, true, true, &rq)),
            Err(DimseError::UnexpectedCommand)
        );
        asm.push(frag(1, true, true, &rq)).unwrap();
        assert_eq!(
            asm.push(frag(3, false, true, b"x")),
            Err(DimseError::ContextSwitch {
                expected: 1,
                got: 3
            })
        );
        asm.push(frag(1, true, false, &rq[..4])).unwrap();
        assert_eq!(
            asm.push(frag(5, true, true, &rq[4..])),
            Err(DimseError::ContextSwitch {
                expected: 1,
                got: 5
            })
        );
        let huge = vec![0u8; MAX_COMMAND_BYTES];
        asm.push(frag(1, true, false, &huge)).unwrap();
        assert_eq!(
            asm.push(frag(1, true, false, b"x")),
            Err(DimseError::CommandTooLarge)
        );
    }

    #[test]
    fn malformed_commands_are_rejected_not_panicked_on() {
        let rq = store_rq(1);
        for cut in 1..rq.len() {
            // Every truncation either fails to decode or (at an element boundary) lacks
            // a required element; none panics.
            let _ = decode_command(1, &rq[..cut]);
        }
        assert!(decode_command(1, &rq[..rq.len() - 3]).is_err());
        let mut wrong_group = rq.clone();
        wrong_group[0] = 0x08;
        assert!(decode_command(1, &wrong_group).is_err());
        let mut huge_len = rq.clone();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_command(1, &huge_len).is_err());
    }

    #[test]
    fn dispositions() {
        let mut cmd = decode_command(1, &store_rq(1)).unwrap();
        assert_eq!(dispose(&cmd, Some(CT)), Disposition::Store);
        assert!(matches!(
            dispose(&cmd, Some("1.2.840.10008.5.1.4.1.1.4")),
            Disposition::Refuse { status: 0x0122, .. }
        ));
        assert!(matches!(
            dispose(&cmd, None),
            Disposition::Refuse { status: 0x0122, .. }
        ));
        cmd.affected_sop_instance = None;
        assert!(matches!(
            dispose(&cmd, Some(CT)),
            Disposition::Refuse { status: 0xC000, .. }
        ));
        let echo = Command {
            context_id: 1,
            field: command_field::C_ECHO_RQ,
            message_id: 2,
            affected_sop_class: Some("1.2.840.10008.1.1".into()),
            affected_sop_instance: None,
            has_data_set: false,
        };
        assert_eq!(dispose(&echo, Some("1.2.840.10008.1.1")), Disposition::Echo);
        let find = Command {
            field: 0x0020,
            ..echo.clone()
        };
        assert!(matches!(
            dispose(&find, Some("1.2.840.10008.1.1")),
            Disposition::Refuse { status: 0x0211, .. }
        ));
        let cancel = Command {
            field: command_field::C_CANCEL_RQ,
            ..echo
        };
        assert_eq!(
            dispose(&cancel, Some("1.2.840.10008.1.1")),
            Disposition::Ignore
        );
    }

    #[test]
    fn response_round_trips_and_pads_to_even_lengths() {
        let request = decode_command(1, &store_rq(42)).unwrap();
        let rsp = encode_response(&request, status::OUT_OF_RESOURCES, Some("disk\\full\u{7}"));
        let group_length = read_u32(&rsp, 8).unwrap() as usize;
        assert_eq!(group_length + 12, rsp.len());
        // Every element has an even length.
        let mut at = 0;
        let mut seen = Vec::new();
        while at < rsp.len() {
            let element = read_u16(&rsp, at + 2).unwrap();
            let len = read_u32(&rsp, at + 4).unwrap() as usize;
            assert_eq!(len % 2, 0, "element {element:#06x}");
            seen.push((element, rsp[at + 8..at + 8 + len].to_vec()));
            at += 8 + len;
        }
        let get = |e: u16| {
            seen.iter()
                .find(|(t, _)| *t == e)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(TAG_COMMAND_FIELD), 0x8001u16.to_le_bytes());
        assert_eq!(get(TAG_MESSAGE_ID_RESPONDED_TO), 42u16.to_le_bytes());
        assert_eq!(get(TAG_STATUS), 0xA700u16.to_le_bytes());
        assert_eq!(get(TAG_ERROR_COMMENT), b"disk?full?");
        let odd = encode_response(&request, status::CANNOT_UNDERSTAND, Some("odd"));
        assert!(odd.windows(4).any(|w| w == b"odd "));
        assert_eq!(get(TAG_AFFECTED_SOP_INSTANCE), b"1.2.3.4.5\0");
        let ok = encode_response(&request, status::SUCCESS, Some("ignored"));
        assert!(!ok.windows(7).any(|w| w == b"ignored"));
    }

    fn split_pdata(body: &[u8]) -> Result<Vec<Fragment<'_>>, DimseError> {
        pdata_fragments(body).collect()
    }

    #[test]
    fn pdata_split_and_encode_round_trip() {
        let command: Vec<u8> = (0..=255u8).collect();
        let pdus = encode_command_pdus(7, &command, 106);
        // 100 bytes of command per PDU: 3 PDUs.
        let mut at = 0;
        let mut joined = Vec::new();
        let mut lasts = Vec::new();
        while at < pdus.len() {
            assert_eq!(pdus[at], 0x04);
            let len = u32::from_be_bytes(pdus[at + 2..at + 6].try_into().unwrap()) as usize;
            assert!(len <= 106);
            for f in split_pdata(&pdus[at + 6..at + 6 + len]).unwrap() {
                assert!(f.is_command);
                assert_eq!(f.context_id, 7);
                joined.extend_from_slice(f.bytes);
                lasts.push(f.is_last);
            }
            at += 6 + len;
        }
        assert_eq!(joined, command);
        assert_eq!(lasts, [false, false, true]);
        assert_eq!(encode_command_pdus(1, &command, 0).len(), 256 + 12);
        assert_eq!(
            split_pdata(&[0, 0, 0, 5, 1, 2]).err(),
            Some(DimseError::MalformedPData)
        );
        assert_eq!(
            split_pdata(&[0, 0, 0, 1, 1]).err(),
            Some(DimseError::MalformedPData)
        );
        assert_eq!(split_pdata(&[0, 0]).err(), Some(DimseError::MalformedPData));
        let two = [0, 0, 0, 3, 1, 0x00, 9, 0, 0, 0, 2, 1, 0x02];
        let f = split_pdata(&two).unwrap();
        assert_eq!(
            (f.len(), f[0].bytes, f[1].is_last, f[1].is_command),
            (2, &[9u8][..], true, false)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_command(1, &bytes);
            let mut asm = Assembler::new(100);
            for fragment in pdata_fragments(&bytes) {
                let Ok(fragment) = fragment else { break };
                let _ = asm.push(fragment);
            }
        }

        /// A data set cut into any fragments is counted exactly, appended exactly up to
        /// the limit, and completes once.
        #[test]
        fn data_set_accounting(
            sizes in proptest::collection::vec(0usize..50, 1..20),
            limit in 0u64..600,
        ) {
            let rq = store_rq(1);
            let mut asm = Assembler::new(limit);
            let started = matches!(asm.push(frag(1, true, true, &rq)), Ok(Step::DataSetStarts(_)));
            proptest::prop_assert!(started);
            let data = [0u8; 50];
            let total: usize = sizes.iter().sum();
            let mut appended = 0usize;
            let mut oversized_events = 0;
            let mut completions = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let last = i + 1 == sizes.len();
                let Ok(Step::Data { append, oversized_now, complete }) =
                    asm.push(frag(1, false, last, &data[..*size]))
                else {
                    return Err(proptest::test_runner::TestCaseError::fail("not a data step"));
                };
                if append {
                    appended += size;
                }
                oversized_events += usize::from(oversized_now);
                completions.extend(complete);
            }
            proptest::prop_assert_eq!(completions.len(), 1);
            let done = &completions[0];
            proptest::prop_assert_eq!(done.bytes, total as u64);
            let over = total as u64 > limit;
            proptest::prop_assert_eq!(done.oversized, over);
            proptest::prop_assert_eq!(oversized_events, usize::from(over));
            if !over {
                proptest::prop_assert_eq!(appended, total);
            }
            proptest::prop_assert!(!asm.mid_data_set());
        }
    }
}
