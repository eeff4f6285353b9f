//! HL7 v2 over MLLP: IHE PCD-01 observations and PCD-04 alarms.
//!
//! The flow of one message, one file per step:
//!
//! | step | file | what it does |
//! |---|---|---|
//! | framing | [`mllp`] | `0x0B … 0x1C 0x0D` frames out of a byte stream, size-bounded, sans-IO |
//! | parsing | [`message`] | ER7 segments/fields/components, delimiters from MSH, escapes decoded on access |
//! | interpretation | [`pcd`] | `ORU^R01` / `ORU^R40` into raw types that still carry PHI |
//! | acknowledgement | [`ack`] | the ACK rules (original/enhanced mode, ERR), pure functions |
//! | driver | [`listener`] | tokio accept loop and per-connection task; calls the gateway's [`Hl7Sink`] |
//!
//! Everything but [`listener`] is pure (no tokio, no clock) and unit-tested on its own.
//!
//! **Invariant: a device gets a positive acknowledgement (`AA`/`CA`) only after
//! [`Hl7Sink::deliver`] returned `Ok(())`, which the gateway returns only once the message
//! (after its PHI stage) is durably committed to the spool.** Until then the device still
//! holds the message and retransmits it if anything fails, so nothing it considers
//! delivered can be lost; duplicates are possible (at-least-once) and the cloud
//! de-duplicates by record id.
//!
//! PHI: the raw types ([`PcdMessage`] and friends), [`Message`] and its field views never
//! implement `Serialize` or `Display`, and their `Debug` prints [`crate::REDACTED`]. Error
//! types and logs carry locations and our own texts, never message content.

pub mod ack;
pub mod listener;
pub mod message;
pub mod mllp;
pub mod pcd;

pub use ack::{
    build_ack, choose_ack_code, hl7_timestamp, Ack, AckCode, AckCondition, AckMode, AckOutcome,
    AckRequest, ErrorCode, InboundHeader,
};
pub use listener::{
    serve, Hl7Error, Hl7Sink, ListenerConfig, ListenerStats, ListenerStatsSnapshot, Refusal,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_BYTES,
};
pub use message::{Delimiters, ErrorLocation, Field, Message, ParseError, Segment, TextEncoding};
pub use mllp::{FrameError, MllpFramer};
pub use pcd::{
    interpret, PcdError, PcdMessage, RawAlarmReport, RawHeader, RawObservationGroup,
    RawObservationReport, RawPatient, RawPatientId,
};
