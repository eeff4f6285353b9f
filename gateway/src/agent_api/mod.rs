//! The device agent API: HTTPS on the hospital LAN for devices that run a wardgate agent
//! (e.g. a cardiac mapping system). Agents report their state (including the start and
//! end of a procedure), push telemetry and log lines, and read the settings the site
//! allows them. The contract is [`ROUTES`] and the OpenAPI document
//! `gateway/openapi/agent-api.json` (a test keeps the two equal).
//!
//! # Routes
//! | Route | Body | Success |
//! |---|---|---|
//! | `GET /v1/identity` | – | 200 `{"device_id","auth"}`: which device the credential designates |
//! | `POST /v1/devices/{device_id}/state` | [`schema::StateRequest`] | 200 `{"accepted":1}` |
//! | `POST /v1/devices/{device_id}/telemetry` | [`schema::TelemetryRequest`] | 200 `{"accepted":<readings>}` |
//! | `POST /v1/devices/{device_id}/logs` | [`schema::LogsRequest`] | 200 `{"accepted":<lines>}` |
//! | `GET /v1/devices/{device_id}/settings` | – | 200 `{"device_id","settings":{...}}` |
//! | `GET /v1/devices/{device_id}/updates` | – | 200 `{"device_id","offers":[...]}`: what is offered to this device now |
//! | `GET /v1/devices/{device_id}/updates/{assignment_id}/content` | – | 200/206: the update file, resumable (`Range`, `If-Range`, `ETag`) |
//! | `GET /v1/devices/{device_id}/updates/metadata/{file}` | – | 200: verified TUF metadata, e.g. `root.json`, `2.root.json` |
//! | `POST /v1/devices/{device_id}/updates/{assignment_id}/status` | [`updates::StatusRequest`] | 200 `{"accepted":1}` once durable |
//!
//! The update routes (module [`updates`]) answer 404 for anything not offered to the
//! calling device, so a device learns nothing about other groups' updates.
//!
//! A procedure's start is `{"state":"in-procedure"}`, its end `{"state":"online"}`, each with
//! an optional machine-readable `reason` code.
//!
//! # Authentication: a device speaks only for itself
//! Every route, including unknown ones, requires a credential. Either a client certificate
//! issued by the site's device CA whose subject CN, DNS SAN or URI SAN equals the
//! `identity` of exactly one configured `mtls` device, or `Authorization: Bearer <token>`
//! whose SHA-256 equals the digest of a configured `token` device's token (module
//! [`identity`]). The credential designates the device; the `{device_id}` in the path
//! must be that device or the request is refused with 403 before its body is read. A
//! connection that presented a certificate cannot use a token (401): a token device must
//! not borrow another device's TLS session.
//!
//! # Status codes
//! Every error answer is JSON `{"error": "<code>", "detail": "<sentence>"}`:
//! 400 `malformed_json` / `schema_mismatch` (serde's message with the JSON path),
//! 401 `unauthenticated` / `invalid_token` (with `WWW-Authenticate: Bearer`), 403
//! `forbidden` (an unregistered certificate, another device's path), 404, 405, 408
//! `body_timeout`, 413 `body_too_large`, 415 `unsupported_media_type`, 422 `invalid_value`
//! (a field's value refused, named) / `refused` (the backend refused the content), 429
//! `rate_limited` and 503 `unavailable` (each with `Retry-After`, seconds).
//!
//! # Durability: nothing accepted is lost
//! **A 2xx is sent only after [`AgentBackend`] returned `Ok`, i.e. after the data is
//! durable** (the same ACK-after-commit contract as HL7). Every other path answers 4xx/5xx
//! and the agent keeps the data: 503 and 429 mean "retry after `Retry-After`", 4xx other
//! than 408/429 mean "this request will never be accepted as sent". A connection that
//! breaks before the answer leaves the agent unsure, and it retries: delivery is at least
//! once, like everywhere else in wardgate. The backend call is not timed out here, since
//! abandoning a commit in progress would not undo it; the backend bounds its own waits.
//!
//! # Limits
//! Per-device rate limit (governor, keyed by the authenticated device id, checked before
//! the body is read), body size (413, axum's `DefaultBodyLimit`), body read timeout (408),
//! TLS handshake timeout and header/keep-alive idle timeout (slow-loris guards), and a
//! connection cap (over it a connection is closed before the handshake). Update files are
//! streamed under two byte-rate throttles, per device and for all devices
//! (`update_download_bytes_per_sec_*`), so patches never starve clinical traffic.
//!
//! # Logging
//! Device, route, status and error code only. Bodies are never logged, nor are error
//! details (serde's messages can quote a value from the body), tokens or their digests.
//! Free text from agents (log lines, reason codes) is PHI-suspect: the backend scrubs it.
//!
//! # Shutdown
//! When the `shutdown` watch turns `true`: stop accepting, let every request in progress
//! finish (up to `shutdown_grace_secs`), close idle keep-alive connections, return once
//! every connection has ended.

pub mod config;
mod http;
pub mod identity;
mod runtime;
pub mod schema;
mod server;
pub mod updates;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use config::{AgentApiConfig, AgentAuth, AgentDevice, ConfigProblem};
pub use runtime::{AgentApiRuntime, ReloadRefused};
pub use schema::StateReport;
pub use server::serve;
pub use updates::{DeviceOffer, StatusOutcome, UpdatesBackend};

/// Where accepted agent data goes: the gateway's PHI stage, spool and device registry.
///
/// Each method returns `Ok` only once what it was given is durable (spool commit); the
/// API answers 2xx only then. `device_id` is always the authenticated device's configured id.
pub trait AgentBackend: Send + Sync + 'static {
    /// Records a state report (a state-change record and the registry's current state).
    fn report_state(
        &self,
        device_id: &str,
        report: StateReport,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Stores named readings.
    fn telemetry(
        &self,
        device_id: &str,
        measurements: Vec<wardgate_proto::Measurement>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Scrubs and stores log lines of one of the device's files, in order.
    fn logs(
        &self,
        device_id: &str,
        file: String,
        lines: Vec<String>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// The settings this device may read (the site's configuration for it).
    fn settings(
        &self,
        device_id: &str,
    ) -> impl Future<Output = Result<serde_json::Map<String, serde_json::Value>, BackendError>> + Send;

    /// The update service (offers, files, progress), if this gateway runs one. `None`
    /// (the default): every update route answers 404 and offers are empty.
    fn updates(&self) -> Option<std::sync::Arc<dyn UpdatesBackend>> {
        None
    }
}

/// Why the backend did not take a request. Reasons are sent to the agent and logged: they
/// must be the gateway's own words, never device content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Cannot store now (spool full, storage failing, shutting down): 503 with
    /// `Retry-After`. The agent keeps the data and retries.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why, for the agent and the log.
        reason: String,
        /// When to retry.
        retry_after: Duration,
    },
    /// The content is refused and will be refused again as sent: 422 `refused`.
    #[error("refused: {reason}")]
    Refused {
        /// Why, for the agent and the log.
        reason: String,
    },
}

/// Errors of the agent API as a whole (one request's problems are answers, not errors).
#[derive(Debug, thiserror::Error)]
pub enum AgentApiError {
    /// A configuration value is refused.
    #[error("agent API configuration: {0}")]
    Config(#[from] ConfigProblem),
    /// A file named in the configuration cannot be read.
    #[error("cannot read the {role} {}: {source}", path.display())]
    CredentialFile {
        /// What the file is for, e.g. `server certificate`.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file was read but its contents are unusable.
    #[error("the {role} {} is unusable: {reason}", path.display())]
    InvalidCredential {
        /// What the file is for.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never the file's contents).
        reason: String,
    },
    /// rustls refused the assembled server configuration.
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    /// The device CA cannot be used to verify client certificates.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The listener kept failing to accept connections.
    #[error("cannot accept connections: {0}")]
    Accept(#[source] std::io::Error),
}

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMethod {
    /// GET.
    Get,
    /// POST.
    Post,
}

impl RouteMethod {
    /// Lower-case name, as in OpenAPI path items.
    #[must_use]
    pub const fn openapi_name(self) -> &'static str {
        match self {
            RouteMethod::Get => "get",
            RouteMethod::Post => "post",
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/identity`.
    Identity,
    /// Report state.
    State,
    /// Push telemetry.
    Telemetry,
    /// Push log lines.
    Logs,
    /// Read settings.
    Settings,
    /// List the updates offered to the device.
    UpdateOffers,
    /// Download an offered update file.
    UpdateContent,
    /// Read verified TUF metadata.
    UpdateMetadata,
    /// Report progress with an offered update.
    UpdateStatus,
}

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The method.
    pub method: RouteMethod,
    /// The path, with `{device_id}` as in OpenAPI and axum 0.8.
    pub path: &'static str,
    /// The handler.
    pub operation: Operation,
}

/// Every route: the router is built from this table, and a test compares it with the
/// OpenAPI document.
pub const ROUTES: &[Route] = &[
    Route {
        method: RouteMethod::Get,
        path: "/v1/identity",
        operation: Operation::Identity,
    },
    Route {
        method: RouteMethod::Post,
        path: "/v1/devices/{device_id}/state",
        operation: Operation::State,
    },
    Route {
        method: RouteMethod::Post,
        path: "/v1/devices/{device_id}/telemetry",
        operation: Operation::Telemetry,
    },
    Route {
        method: RouteMethod::Post,
        path: "/v1/devices/{device_id}/logs",
        operation: Operation::Logs,
    },
    Route {
        method: RouteMethod::Get,
        path: "/v1/devices/{device_id}/settings",
        operation: Operation::Settings,
    },
    Route {
        method: RouteMethod::Get,
        path: "/v1/devices/{device_id}/updates",
        operation: Operation::UpdateOffers,
    },
    Route {
        method: RouteMethod::Get,
        path: "/v1/devices/{device_id}/updates/{assignment_id}/content",
        operation: Operation::UpdateContent,
    },
    Route {
        method: RouteMethod::Get,
        path: "/v1/devices/{device_id}/updates/metadata/{file}",
        operation: Operation::UpdateMetadata,
    },
    Route {
        method: RouteMethod::Post,
        path: "/v1/devices/{device_id}/updates/{assignment_id}/status",
        operation: Operation::UpdateStatus,
    },
];

/// Counters for the status endpoint and tests. Monotonic except `connections_active`.
#[derive(Debug, Default)]
pub struct AgentApiStats {
    /// TCP connections admitted (under the cap).
    pub connections_accepted: AtomicU64,
    /// TCP connections closed at once because the cap was reached.
    pub connections_refused: AtomicU64,
    /// Connections open now.
    pub connections_active: AtomicU64,
    /// TLS handshakes that failed or timed out (wrong CA, no certificate when one is
    /// required, not TLS, too slow).
    pub handshakes_failed: AtomicU64,
    /// Connections whose verified client certificate designates no configured device, or
    /// several, or cannot be read.
    pub certificates_unregistered: AtomicU64,
    /// Requests answered 2xx (for the POST routes: the data is durable).
    pub requests_accepted: AtomicU64,
    /// Requests answered 401 or 403.
    pub requests_unauthorized: AtomicU64,
    /// Requests answered 429.
    pub requests_rate_limited: AtomicU64,
    /// Requests answered with another 4xx (schema, size, timeouts, refused content).
    pub requests_invalid: AtomicU64,
    /// Requests answered 503 (backend unavailable).
    pub requests_unavailable: AtomicU64,
}

impl AgentApiStats {
    /// Reads a counter.
    #[must_use]
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed)
}

/// Log damping for events a peer can repeat at will: the 1st, 2nd, 4th, 8th, ... occurrence.
pub(crate) fn worth_logging(previous_count: u64) -> bool {
    (previous_count + 1).is_power_of_two()
}
