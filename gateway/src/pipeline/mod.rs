//! The glue between adapters, the PHI stage, the spool and the uplinks.
//!
//! Invariant: an adapter is told "stored" (and so answers the device AA/CA) only after
//! the spool's group commit that holds the record has reached disk; the uplink deletes
//! a record only after the broker acknowledged the publish that carried it.

pub mod agent;
pub mod device_plane;
#[cfg(feature = "dicom")]
pub mod dicom;
pub mod hl7;
#[cfg(feature = "logfile")]
pub mod logfile;
#[cfg(feature = "modbus")]
pub mod modbus;
pub mod spool_source;
