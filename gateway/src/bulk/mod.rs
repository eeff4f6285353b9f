//! Bulk uploads: de-identified DICOM objects and large device log files, sent to a
//! receiver over QUIC with mutual TLS, resumable and verified end to end.
//!
//! * [`outbox`]: where files wait, durably, until the receiver has committed them.
//! * [`sender`]: the QUIC driver of [`wardgate_proto::upload::SenderSession`]: one
//!   connection, several files in parallel on their own streams, a bandwidth cap that
//!   depends on the time of day ([`schedule`]), patient-first deferral ([`UploadGate`]).
//! * [`quic`]: the transport settings and TLS plumbing the sender and the reference
//!   receiver ([`crate::receive`]) share.
//!
//! Durability contract: a file is in the outbox once [`outbox::Outbox::insert`] returns
//! (data and manifest fsynced, renamed into place, directory fsynced); it leaves only after
//! the receiver answered `Committed` for it, i.e. after the receiver verified its SHA-256
//! and made it durable. A crash anywhere in between re-offers the file after the restart;
//! the receiver answers with the bytes it already holds, or with `Committed` for a file it
//! committed before the crash, so nothing is lost and nothing is stored twice.

pub mod outbox;
pub mod quic;
pub mod schedule;
pub mod sender;

use std::path::PathBuf;

use wardgate_proto::upload::ProtocolError;

use crate::devices::{Decision, NonClinicalWork, Registry};

/// Asked before a file of `device` starts uploading (patient-first deferral).
pub trait UploadGate: Send + Sync {
    /// Whether a bulk upload for `device` may start now. A `false` defers the file; it is
    /// asked again a few seconds later.
    fn may_upload(&self, device: &str) -> bool;
}

/// Lets every upload proceed (for sites without declared devices, tests and benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysAllow;

impl UploadGate for AlwaysAllow {
    fn may_upload(&self, _device: &str) -> bool {
        true
    }
}

impl UploadGate for Registry {
    fn may_upload(&self, device: &str) -> bool {
        matches!(
            self.decide(device, NonClinicalWork::BulkUpload),
            Decision::Proceed
        )
    }
}

/// Errors of the bulk upload sender and its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// A configuration value is out of range or malformed.
    #[error("invalid bulk upload configuration `{key}`: {reason}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// Why the value is not accepted.
        reason: String,
    },
    /// TLS material could not be loaded (names the file and what is wrong with it).
    #[error("bulk upload TLS material: {0}")]
    Tls(#[source] crate::uplink::UplinkError),
    /// rustls refused the configuration for QUIC (e.g. no TLS 1.3 cipher suite).
    #[error("TLS configuration not usable for QUIC: {0}")]
    QuicTls(String),
    /// The receiver's address could not be resolved.
    #[error("cannot resolve receiver address {address}: {reason}")]
    Resolve {
        /// The configured address.
        address: String,
        /// What failed.
        reason: String,
    },
    /// A local socket could not be bound.
    #[error("cannot bind a UDP socket: {0}")]
    Bind(#[source] std::io::Error),
    /// Connecting or the connection failed (retried with backoff).
    #[error("connection to the receiver: {0}")]
    Connection(String),
    /// The receiver broke the upload protocol.
    #[error("upload protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading an outbox file failed.
    #[error("reading outbox file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    /// The receiver's hash of a file differed from the outbox's several times in a row:
    /// the outbox copy may be damaged.
    #[error("file {file_id}: hash mismatch {attempts} times in a row")]
    RepeatedMismatch {
        /// The file.
        file_id: String,
        /// Consecutive mismatches.
        attempts: u32,
    },
}
