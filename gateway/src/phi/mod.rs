//! The PHI stage: the only way from what a device sent to something that may be
//! stored, published or logged.
//!
//! Invariant: a [`Sanitized`] record can only be constructed inside this module (its
//! fields are private and it has no public constructor outside benchmarks), and the
//! spool only accepts [`Sanitized`]. So every byte the spool writes went through a
//! rule in this module.

pub mod device;
pub mod dicom;
pub mod freetext;
pub mod hl7;
pub mod pseudonym;

use std::path::PathBuf;

use wardgate_proto::{Priority, RecordBody};

pub use hl7::Hl7Rules;
pub use pseudonym::PseudonymKey;

/// Errors of the PHI stage.
#[derive(Debug, thiserror::Error)]
pub enum PhiError {
    /// The pseudonym key file is unusable.
    #[error("pseudonym key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// A sanitized record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A record that passed the PHI rules: its payload is the JSON of a
/// [`wardgate_proto::RecordBody`] and carries no patient identifier.
pub struct Sanitized {
    device: String,
    priority: Priority,
    payload: Vec<u8>,
}

impl Sanitized {
    /// Encodes a body that was built field by field by a rule of this module.
    fn from_body(body: &RecordBody) -> Result<Self, PhiError> {
        Ok(Sanitized {
            device: body.device_id().to_owned(),
            priority: body.priority(),
            payload: serde_json::to_vec(body)?,
        })
    }

    /// A gateway alert: gateway-made text, never device data, so no rule applies.
    ///
    /// # Errors
    /// [`PhiError::Encode`] if the record cannot be serialized (not expected).
    pub fn gateway_alert(code: &str, message: &str) -> Result<Self, PhiError> {
        Sanitized::from_body(&RecordBody::GatewayAlert(wardgate_proto::GatewayAlert {
            code: code.to_owned(),
            message: message.to_owned(),
        }))
    }

    /// An update rollout's progress: gateway-made counts and ids (assignment, TUF
    /// target), never device data, so no rule applies.
    ///
    /// # Errors
    /// [`PhiError::Encode`] if the record cannot be serialized (not expected).
    pub fn update_rollout(report: wardgate_proto::UpdateRolloutReport) -> Result<Self, PhiError> {
        Sanitized::from_body(&RecordBody::UpdateRollout(report))
    }

    /// The device key the record is ordered under (per-device FIFO).
    #[must_use]
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The record's delivery and eviction class.
    #[must_use]
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The payload bytes (JSON of a `RecordBody`).
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Consumes the record into its parts.
    #[must_use]
    pub fn into_parts(self) -> (String, Priority, Vec<u8>) {
        (self.device, self.priority, self.payload)
    }

    /// Builds a record without running any rule. Benchmarks and unit tests only:
    /// the `bench-internals` feature is never enabled in a shipped build.
    #[cfg(any(test, feature = "bench-internals"))]
    #[must_use]
    pub fn unchecked_for_bench(device: String, priority: Priority, payload: Vec<u8>) -> Self {
        Sanitized {
            device,
            priority,
            payload,
        }
    }
}

impl std::fmt::Debug for Sanitized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Logs never carry payloads, sanitized or not.
        f.debug_struct("Sanitized")
            .field("device", &self.device)
            .field("priority", &self.priority)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}
