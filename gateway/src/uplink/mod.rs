//! Uplinks to the cloud: how spooled records leave the gateway.
//!
//! An uplink pulls records from a [`RecordSource`] (in production the spool), publishes
//! them and tells the source which ones the cloud acknowledged.
//!
//! # Delivery contract
//!
//! * At least once: a record is acknowledged to the source (and so deleted from the
//!   spool) only after the cloud acknowledged the message that carried it. Until then it
//!   is *leased*: handed to the uplink, but still durable in the source.
//! * In order per device: the source hands records out highest class first and by id
//!   within a class; the uplink publishes them in exactly that order and, after any
//!   disconnect, asks the source to put every lease back ([`RecordSource::release_leases`])
//!   and replays from the oldest unacknowledged record. The cloud therefore sees, per
//!   device and class, an ordered stream that may repeat a suffix after a reconnect;
//!   [`wardgate_proto::RecordId`] lets it drop the repeats.
//! * Payloads are never logged: errors and traces name record ids and sizes only.

pub mod memory;
pub mod mqtt;

use std::future::Future;

use wardgate_proto::{Priority, RecordId};

/// One record as the uplink receives it from a [`RecordSource`].
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// Stable id; the cloud deduplicates on it.
    pub id: RecordId,
    /// The device key the record is ordered under (per-device FIFO).
    pub device: String,
    /// Delivery class; it also selects the topic or message property.
    pub priority: Priority,
    /// When the gateway durably accepted the record (Unix milliseconds).
    pub accepted_ms: u64,
    /// The JSON of a [`wardgate_proto::RecordBody`], exactly as the PHI stage produced
    /// it. The uplink embeds these bytes without re-encoding them.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for OutgoingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the payload: it is patient data even after the PHI stage.
        f.debug_struct("OutgoingRecord")
            .field("id", &self.id)
            .field("device", &self.device)
            .field("priority", &self.priority)
            .field("accepted_ms", &self.accepted_ms)
            .field(
                "payload",
                &format_args!("{}", wardgate_device_adapters::REDACTED),
            )
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

/// Where an uplink gets its records from and where it reports deliveries.
///
/// Implementations must keep the leased/pending distinction durable enough that a crash
/// never loses a record that was not acknowledged: a lease is a promise the uplink is
/// working on a record, not a deletion.
pub trait RecordSource: Send + Sync + 'static {
    /// Leases the next pending records, highest class first and by id within a class,
    /// and marks them leased so the next call does not return them again.
    ///
    /// Returns at most `max_records` records whose payload sizes add up to at most
    /// `max_bytes`, except that the first record is returned even when it alone is larger
    /// (so an oversized record surfaces instead of silently blocking everything behind it).
    /// Returns an empty vector only when nothing is pending.
    fn lease(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<OutgoingRecord>, UplinkError>> + Send;

    /// The cloud acknowledged these records: delete them for good. Ids that are unknown
    /// (already acknowledged) are ignored.
    fn ack(&self, ids: Vec<RecordId>) -> impl Future<Output = Result<(), UplinkError>> + Send;

    /// Puts every leased record back to pending so the next leases replay them in their
    /// original order. Called after a disconnect, when nothing is in flight any more.
    fn release_leases(&self);

    /// Resolves once at least one record is pending, immediately if one already is.
    /// Must be cancel-safe (the uplink drops it when something else happens first);
    /// spurious wake-ups are allowed.
    fn wait_for_pending(&self) -> impl Future<Output = ()> + Send;
}

/// Errors of the uplink area: configuration and credentials (the operator's to fix), the
/// broker and network (retried with backoff), and the record source (internal).
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// A configuration value is out of range or malformed.
    #[error("invalid uplink configuration `{key}`: {reason}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// Why the value is not accepted.
        reason: String,
    },
    /// A credential file could not be read.
    #[error("cannot read {role} file {path}: {source}")]
    CredentialFile {
        /// What the file is for (CA, client certificate, client key).
        role: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A credential file is not what it should be (not PEM, no certificate, no key,
    /// a certificate that cannot be parsed, a key type rustls cannot use).
    #[error("{role} file {path}: {reason}")]
    InvalidCredential {
        /// What the file is for.
        role: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key does not belong to the client certificate.
    #[error("private key {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
    },
    /// The client certificate has expired: the broker would refuse it.
    #[error("client certificate {path} expired at {not_after}; install a renewed certificate")]
    CertificateExpired {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Its notAfter (RFC 3339, UTC).
        not_after: String,
    },
    /// The client certificate is not valid yet (or the gateway's clock is wrong).
    #[error("client certificate {path} is not valid before {not_before}; check the system clock")]
    CertificateNotYetValid {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Its notBefore (RFC 3339, UTC).
        not_before: String,
    },
    /// rustls refused to build a client configuration from otherwise readable material.
    #[error("TLS configuration: {0}")]
    TlsConfig(#[source] rustls::Error),
    /// The TLS handshake with the broker failed (certificate checks on either side).
    #[error("TLS handshake with {broker} failed: {reason}")]
    TlsHandshake {
        /// `host:port`.
        broker: String,
        /// What went wrong, in operator terms.
        reason: String,
    },
    /// The broker answered CONNECT with a refusal.
    #[error("broker {broker} refused the connection: {reason}")]
    ConnectionRefused {
        /// `host:port`.
        broker: String,
        /// The CONNACK return code.
        reason: String,
    },
    /// Network or MQTT-level failure of an established or starting connection.
    #[error("connection to {broker}: {reason}")]
    Connection {
        /// `host:port`.
        broker: String,
        /// The cause chain, flattened.
        reason: String,
    },
    /// The broker stopped acknowledging publishes.
    #[error("no PUBACK from {broker} within {timeout:?}; reconnecting")]
    AckTimeout {
        /// `host:port`.
        broker: String,
        /// The configured acknowledgement timeout.
        timeout: std::time::Duration,
    },
    /// The broker or the MQTT client broke the in-flight bookkeeping's expectations.
    #[error("MQTT protocol: {0}")]
    Protocol(#[from] mqtt::inflight::InFlightError),
    /// The record source (spool) failed; the text carries the source's own error chain.
    #[error("record source: {0}")]
    Source(String),
}

/// What an uplink reports about itself, for the status page, metrics and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Whether a broker session is established right now.
    pub connected: bool,
    /// Unix milliseconds when `connected` last changed (0: never connected).
    pub since_ms: u64,
    /// Records acknowledged by the broker since start (and acknowledged to the source).
    pub published_records: u64,
    /// Publishes acknowledged by the broker since start.
    pub published_batches: u64,
    /// Records published and not yet acknowledged, or leased and waiting for the window.
    pub in_flight_records: u64,
    /// Successful connections since start.
    pub connects: u64,
    /// Connection attempts or sessions that ended in an error since start.
    pub connection_failures: u64,
    /// Records left in the source because they can never be published (larger than the
    /// payload limit, or not a JSON object). Counted each time one is met, so a record
    /// held back across reconnects counts once per session.
    pub held_back_records: u64,
    /// Unix seconds when the client certificate expires, once it has been loaded.
    pub client_cert_not_after: Option<i64>,
    /// The most recent error, kept after recovery so an operator can see what happened.
    pub last_error: Option<String>,
}
