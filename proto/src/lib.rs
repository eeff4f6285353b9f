//! Records and wire formats shared between wardgate and the cloud side.
//!
//! Everything in this crate is already free of protected health information (PHI):
//! values reach these types only through the gateway's PHI stage. The cloud side may
//! depend on this crate to decode what wardgate publishes.
//!
//! Versioning: every payload published to the cloud is an [`UplinkBatch`] whose
//! `schema` field is [`SCHEMA_VERSION`]. Fields are only ever added (with
//! `#[serde(default)]`); a change that removes or re-types a field bumps the version.
//!
//! [`upload`] is the bulk upload protocol (files over QUIC: offer, resume offset, chunks,
//! verdict) with its sans-IO sender and receiver sessions; it has its own version byte.

pub mod record;
pub mod upload;

pub use record::*;

/// The version of the uplink payload schema defined in this crate.
pub const SCHEMA_VERSION: u32 = 1;
