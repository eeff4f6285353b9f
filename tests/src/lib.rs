//! Support for end-to-end tests: real peers, real TLS, nothing mocked.
//!
//! * [`certs`]: a throw-away PKI (CA, broker certificate for 127.0.0.1/localhost, client
//!   certificates, including expired and not-yet-valid ones) written as PEM files.
//! * [`mosquitto`]: a real mosquitto broker on a free loopback port with mutual TLS, that
//!   can be frozen, killed and restarted on the same port.
//! * [`subscriber`]: an mTLS QoS 1 subscriber to `#` that collects every message.
//! * [`fixtures`], [`gateway`], [`mllp_client`], [`scenario`]: synthetic HL7 messages, the
//!   real `wardgate` binary as a child process, an MLLP device client, and a complete
//!   end-to-end setting built from the above.
//! * [`dicom_objects`]: DICOM objects with planted identifiers in every attribute the
//!   de-identification profile lists, shared by the gateway's de-identification tests and
//!   the imaging end-to-end tests.
//! * [`tuf_repo`]: TUF repositories signed for real with per-test keys, shared by the
//!   gateway's TUF tests and the updates end-to-end tests.
//!
//! Invariants: every process and temporary file a helper creates is removed when the
//! helper is dropped; servers bind to 127.0.0.1 only; a missing external tool is an error
//! with installation instructions, never a silent skip.

pub mod agent_client;
pub mod certs;
pub mod dicom_objects;
pub mod fixtures;
pub mod gateway;
pub mod mllp_client;
pub mod modbus_server;
pub mod mosquitto;
pub mod scenario;
pub mod subscriber;
pub mod tuf_repo;

use std::path::PathBuf;

/// Errors of the test harness. Tests usually `unwrap()` them; the messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A rustls configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The mosquitto binary is not installed.
    #[error(
        "mosquitto is not installed (looked at $MOSQUITTO, $PATH, /usr/sbin/mosquitto, /usr/local/sbin/mosquitto); \
         install it with `sudo apt-get install mosquitto` (Debian/Ubuntu) or set MOSQUITTO=/path/to/mosquitto. \
         This test needs a real broker and does not skip itself{ci}",
        ci = if std::env::var("CI").is_ok_and(|v| v == "true") { " (CI=true)" } else { "" }
    )]
    MosquittoMissing,
    /// mosquitto did not come up, or exited.
    #[error("mosquitto {what}; its log ({log_path}):\n{log}")]
    Mosquitto {
        /// What went wrong.
        what: String,
        /// The log file.
        log_path: PathBuf,
        /// The log's last lines.
        log: String,
    },
    /// Waiting for a condition timed out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long was waited.
        after: std::time::Duration,
    },
}

pub(crate) fn io_context(
    context: impl Into<String>,
) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}
