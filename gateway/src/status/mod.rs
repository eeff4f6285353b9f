//! The technician's status endpoint and `wardgate status`.
//!
//! One small HTTP server ([`serve`]) with three resources:
//! * `/`: a self-contained status page (no data in it; it polls `status.json`),
//! * `/status.json`: a [`StatusSnapshot`] as JSON,
//! * `/metrics`: the same figures in the Prometheus text format.
//!
//! `wardgate status` ([`cli::run`]) asks the running gateway over the same endpoint and
//! prints the snapshot for a person, or the JSON for scripts.
//!
//! Invariants (each enforced where named):
//! * Data only with the bearer token: `/status.json` and `/metrics` answer 401 without it
//!   ([`server`], [`auth`]). The token is kept as a SHA-256 digest, compared in constant
//!   time and never logged.
//! * Plain HTTP only on loopback: a non-loopback listener without TLS is refused by
//!   [`StatusConfig::validate`] and again by [`serve`].
//! * The page loads nothing from anywhere else, and its Content-Security-Policy allows
//!   only its own inline script and style and connections to its own origin ([`page`]).
//! * A snapshot holds no patient data: figures, states, configured names and
//!   gateway-made messages only ([`snapshot`]).
//! * Every connection is bounded: a slot out of `max_connections`, a header read timeout,
//!   a TLS handshake timeout; shutdown finishes in-flight requests for a short grace
//!   period, then drops the rest.

pub mod auth;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod page;
pub mod server;
pub mod snapshot;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{ClientTarget, StatusConfig};
pub use server::{serve, StatusRuntime};
pub use snapshot::{
    Alert, DeviceStatus, GatewayInfo, Hl7Figures, PerClass, SpoolFigures, StagedPatch,
    StatusSnapshot, StatusSource, UplinkFigures,
};

/// Everything that can go wrong with the status endpoint or `wardgate status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A `[status]` key has a value that cannot work.
    #[error("{key}: {reason}")]
    Config {
        /// The key path, e.g. `status.listen`.
        key: String,
        /// Why.
        reason: String,
    },
    /// The token file cannot be used (the message never holds the token).
    #[error("status token file {}: {reason}", .path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A TLS certificate or key file cannot be used.
    #[error("status endpoint TLS: {}: {reason}", .path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Asked to serve plain HTTP on an address other machines can reach.
    #[error(
        "the status endpoint would listen on {addr} without TLS; plain HTTP is allowed on loopback only"
    )]
    TlsRequired {
        /// The listener's address.
        addr: SocketAddr,
    },
    /// The listener's socket failed.
    #[error("status endpoint: {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `wardgate status` was asked for, but the configuration has no `[status]` section.
    #[error("the status endpoint is not enabled: add a [status] section to the configuration")]
    NotConfigured,
    /// `wardgate status` could not talk to the endpoint.
    #[error("cannot get the status from {url}: {reason} (is wardgate running, with [status] configured?)")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// The endpoint refused the token.
    #[error("{url} refused the token in {}", .token_file.display())]
    TokenRefused {
        /// The endpoint.
        url: String,
        /// Where the token came from.
        token_file: PathBuf,
    },
    /// The endpoint refuses this address for a while after too many failed attempts.
    #[error(
        "{url} refuses this address after too many failed attempts; retry in {retry_after_secs} s"
    )]
    RateLimited {
        /// The endpoint.
        url: String,
        /// Seconds until it accepts attempts again.
        retry_after_secs: u64,
    },
    /// The endpoint answered, but not with a status.
    #[error("{url} answered {reason}")]
    BadResponse {
        /// The endpoint.
        url: String,
        /// What was wrong.
        reason: String,
    },
}
