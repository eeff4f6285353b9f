//! Device protocol adapters.
//!
//! Each adapter has a sans-IO protocol core (framing, parsing, ACK rules: pure code,
//! no tokio, no clock) and a thin tokio driver. Adapters hand what a device sent to
//! the gateway as *raw* values that still carry PHI: raw types never implement
//! `Serialize` or `Display`, and their `Debug` prints a redaction marker, so they can
//! neither be stored nor logged before the gateway's PHI stage turns them into
//! `wardgate_proto` records.

pub mod accept;
#[cfg(feature = "dicom")]
pub mod dicom;
#[cfg(feature = "hl7")]
pub mod hl7;
#[cfg(feature = "logfile")]
pub mod logfile;
#[cfg(feature = "modbus")]
pub mod modbus;

/// Marker printed by `Debug` of anything that carries patient data.
pub const REDACTED: &str = "<redacted: may contain PHI>";
