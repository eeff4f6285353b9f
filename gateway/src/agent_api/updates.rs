//! The update routes of the agent API (issue 5): devices learn what is offered to them,
//! pull the verified file over the LAN (resumable), read the verified TUF metadata to
//! check it themselves, and report progress.
//!
//! Invariants:
//! * **A device sees only its own offers.** The offers route lists what
//!   [`UpdatesBackend::offers`] gives for the authenticated device; the content and
//!   status routes answer 404 for any assignment not offered to it, the same answer as
//!   for an id that does not exist, so other groups' updates cannot be discovered.
//! * **Patient first.** Offers are empty while the device's state does not allow a patch
//!   offer, and the file is not served to a device in procedure (the backend decides,
//!   [`crate::updates::rollout`]).
//! * **Files are streamed, never read into memory**, in chunks of at most
//!   [`MAX_CHUNK`] bytes, each sent only when both download throttles (per device and
//!   for all devices, bytes/s, governor) allow it, so update traffic never starves
//!   clinical traffic. The `ETag` is the quoted hex SHA-256 of the file; `Range`
//!   (one range) answers 206, `If-Range` with another `ETag` answers the whole file,
//!   an unsatisfiable range answers 416 with `Content-Range: bytes */<length>`.
//! * **A status report is answered 200 only after it is durable** (the backend commits
//!   before it returns), like every other 2xx of this API.
//! * Metadata files are served from the directory the backend names, by a single file
//!   name of `[A-Za-z0-9._%-]` ending in `.json` (never a path).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawPathParams, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE,
    RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{info, warn};
use wardgate_device_adapters::REDACTED;
use wardgate_proto::DeviceState;

use super::config::{AgentApiConfig, ConfigProblem, MIN_DOWNLOAD_BYTES_PER_SEC};
use super::http::{accepted, ApiError, AppState, DeviceCaller, JsonBody};
use super::schema::{is_identifier, BodyProblem, MAX_NAME_LEN};
use super::{AgentBackend, BackendError};
use crate::devices::Registry;
use crate::updates::rollout::{DeviceReport, Now, ReportOutcome, ReportRefused};
use crate::updates::store::{DurableRollouts, StoreError};
use crate::updates::StagedTarget;

/// Largest chunk of an update file sent at once (smaller when a throttle is slower).
pub const MAX_CHUNK: u32 = 64 * 1024;
/// The throttles' unit: one governor cell is a KiB.
const KIB: u32 = 1024;
/// The TUF top-level roles whose metadata URLs an offer lists.
pub const METADATA_ROLES: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];
/// Longest metadata file name served.
const MAX_METADATA_FILE_LEN: usize = 128;
/// How long a device is told to wait when the update store cannot answer.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(30);

/// One offer as the backend gives it: the rollout's offer joined with the staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOffer {
    /// The assignment.
    pub assignment_id: String,
    /// The TUF target name.
    pub target: String,
    /// Required or optional.
    pub required: bool,
    /// The file's length in bytes.
    pub length: u64,
    /// The file's SHA-256.
    pub sha256: [u8; 32],
}

/// What became of a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Stored durably (or a repeat of the stored state).
    Recorded,
    /// The assignment is not offered to this device (or does not exist): 404.
    NotOffered,
}

/// The update service behind the routes. Blocking (it commits to SQLite): the routes
/// call it on tokio's blocking pool. `device_id` is always the authenticated device.
pub trait UpdatesBackend: Send + Sync + 'static {
    /// What is offered to the device now; empty when its state does not allow offers.
    /// Admissions to a rollout are durable before this returns.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the store cannot commit.
    fn offers(&self, device_id: &str) -> Result<Vec<DeviceOffer>, BackendError>;

    /// The staged file of `assignment_id` if the device may fetch it now (offered to it,
    /// not cancelled, no patient at stake); records that the download started. `None`: 404.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the store cannot commit.
    fn content(
        &self,
        device_id: &str,
        assignment_id: &str,
    ) -> Result<Option<StagedTarget>, BackendError>;

    /// The directory of the verified TUF metadata files, if any.
    fn metadata_dir(&self) -> Option<PathBuf>;

    /// Records the device's progress; durable when this returns `Ok(Recorded)`.
    ///
    /// # Errors
    /// [`BackendError::Refused`] for a report that does not follow from the device's
    /// progress (422); [`BackendError::Unavailable`] when the store cannot commit (503).
    fn report(
        &self,
        device_id: &str,
        assignment_id: &str,
        report: DeviceReport,
    ) -> Result<StatusOutcome, BackendError>;
}

/// Looks up a staged TUF target by name (the staging area, or a closure in tests).
pub trait StagedTargets: Send + Sync + 'static {
    /// The staged target `name`, if it is staged.
    fn staged(&self, name: &str) -> Option<StagedTarget>;
}

impl<F> StagedTargets for F
where
    F: Fn(&str) -> Option<StagedTarget> + Send + Sync + 'static,
{
    fn staged(&self, name: &str) -> Option<StagedTarget> {
        self(name)
    }
}

/// Source of [`Now`] (Unix ms and the local minute of the day).
pub type NowSource = Arc<dyn Fn() -> Now + Send + Sync>;

/// The system clock in the gateway's local time zone (`TZ` or `/etc/localtime`, read
/// once here; UTC with a warning when neither can be read).
#[must_use]
pub fn system_now() -> NowSource {
    let zone = match tz::TimeZone::local() {
        Ok(zone) => Some(zone),
        Err(e) => {
            warn!(error = %e, "cannot read the local time zone; maintenance windows are taken as UTC");
            None
        }
    };
    Arc::new(move || {
        let unix_ms = crate::devices::unix_ms();
        let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX / 2);
        let offset = zone
            .as_ref()
            .and_then(|z| z.find_local_time_type(secs).ok())
            .map_or(0, tz::LocalTimeType::ut_offset);
        Now::at(unix_ms, offset)
    })
}

/// The update service over the durable rollouts, the device registry (for patient-first)
/// and the staged targets: what the daemon plugs into [`AgentBackend::updates`].
pub struct RolloutUpdates {
    rollouts: Arc<Mutex<DurableRollouts>>,
    registry: Arc<Registry>,
    staged: Arc<dyn StagedTargets>,
    metadata_dir: Option<PathBuf>,
    now: NowSource,
    reporting: Option<Reporting>,
}

/// Where device reports are audited and announced (see [`RolloutUpdates::with_reporting`]).
struct Reporting {
    audit: Arc<crate::audit::AuditLog>,
    events: tokio::sync::mpsc::UnboundedSender<ReportEvent>,
}

/// Audit entry kind of a device's install report.
pub const AUDIT_REPORT: &str = "updates.report";

/// A device's report that changed its progress, for the updates manager (halts, waves,
/// summary records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportEvent {
    /// The assignment.
    pub assignment_id: String,
    /// The device.
    pub device: String,
    /// The report (`downloaded`, `installing`, `installed`, `failed`, `deferred`).
    pub report: &'static str,
    /// This report halted the rollout (failures over the threshold).
    pub halted: bool,
    /// This report opened another wave.
    pub widened: bool,
}

impl std::fmt::Debug for RolloutUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutUpdates")
            .field("metadata_dir", &self.metadata_dir)
            .finish_non_exhaustive()
    }
}

impl RolloutUpdates {
    /// Builds the service. `rollouts` is shared with whoever adds assignments from the
    /// cloud; `metadata_dir` is where the verified TUF metadata is saved.
    #[must_use]
    pub fn new(
        rollouts: Arc<Mutex<DurableRollouts>>,
        registry: Arc<Registry>,
        staged: Arc<dyn StagedTargets>,
        metadata_dir: Option<PathBuf>,
        now: NowSource,
    ) -> Self {
        RolloutUpdates {
            rollouts,
            registry,
            staged,
            metadata_dir,
            now,
            reporting: None,
        }
    }

    /// Writes every report that changes a device's progress to `audit` (after it is
    /// durable in the update store, before the device is answered) and announces it on
    /// `events`.
    #[must_use]
    pub fn with_reporting(
        mut self,
        audit: Arc<crate::audit::AuditLog>,
        events: tokio::sync::mpsc::UnboundedSender<ReportEvent>,
    ) -> Self {
        self.reporting = Some(Reporting { audit, events });
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DurableRollouts> {
        // A panic mid-change leaves memory as it was before the change (changes are
        // applied to memory only after the commit), so the state is usable.
        self.rollouts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self, device_id: &str) -> DeviceState {
        // Undeclared devices are selected by no assignment anyway.
        self.registry
            .state(device_id)
            .unwrap_or(DeviceState::Unknown)
    }
}

fn store_unavailable(e: &StoreError) -> BackendError {
    warn!(error = %e, "update store failed");
    BackendError::Unavailable {
        reason: "the update store cannot record this now".into(),
        retry_after: STORE_RETRY_AFTER,
    }
}

impl UpdatesBackend for RolloutUpdates {
    fn offers(&self, device_id: &str) -> Result<Vec<DeviceOffer>, BackendError> {
        let state = self.state(device_id);
        let now = (self.now)();
        let mut found = BTreeMap::new();
        let offers = self
            .lock()
            .offers_for(device_id, state, now, |name| {
                match self.staged.staged(name) {
                    Some(target) => {
                        found.insert(name.to_owned(), target);
                        true
                    }
                    None => false,
                }
            })
            .map_err(|e| store_unavailable(&e))?;
        Ok(offers
            .into_iter()
            .filter_map(|offer| {
                let staged = found
                    .get(&offer.target)
                    .cloned()
                    .or_else(|| self.staged.staged(&offer.target))?;
                Some(DeviceOffer {
                    assignment_id: offer.assignment_id,
                    target: offer.target,
                    required: offer.required,
                    length: staged.length,
                    sha256: staged.sha256,
                })
            })
            .collect())
    }

    fn content(
        &self,
        device_id: &str,
        assignment_id: &str,
    ) -> Result<Option<StagedTarget>, BackendError> {
        let state = self.state(device_id);
        let now_ms = (self.now)().unix_ms;
        let mut rollouts = self.lock();
        let Some(target) = rollouts.rollouts().get(assignment_id).and_then(|r| {
            r.may_fetch(device_id, state)
                .then(|| r.assignment().target.clone())
        }) else {
            return Ok(None);
        };
        let Some(staged) = self.staged.staged(&target) else {
            return Ok(None);
        };
        rollouts
            .start_fetch(assignment_id, device_id, state, now_ms)
            .map_err(|e| store_unavailable(&e))?;
        Ok(Some(staged))
    }

    fn metadata_dir(&self) -> Option<PathBuf> {
        self.metadata_dir.clone()
    }

    fn report(
        &self,
        device_id: &str,
        assignment_id: &str,
        report: DeviceReport,
    ) -> Result<StatusOutcome, BackendError> {
        let now_ms = (self.now)().unix_ms;
        let name = report.name();
        match self
            .lock()
            .report(assignment_id, device_id, &report, now_ms)
        {
            Ok(outcome) => {
                info!(device = %device_id, assignment = %assignment_id, report = name, ?outcome, "update progress recorded");
                if let (Some(reporting), ReportOutcome::Changed { halted, widened }) =
                    (&self.reporting, outcome)
                {
                    let detail = match &report {
                        DeviceReport::Failed { reason } | DeviceReport::Deferred { reason } => {
                            format!("{name} ({reason})")
                        }
                        _ => name.to_owned(),
                    };
                    let subject = format!("{assignment_id}/{device_id}");
                    if let Err(e) = reporting.audit.append(AUDIT_REPORT, &subject, &detail) {
                        // The progress is durable; the device is told to retry, and its
                        // repeat is answered without a second change.
                        warn!(error = %e, "cannot audit an update report");
                        return Err(BackendError::Unavailable {
                            reason: "the audit log cannot record this now".into(),
                            retry_after: STORE_RETRY_AFTER,
                        });
                    }
                    let _ = reporting.events.send(ReportEvent {
                        assignment_id: assignment_id.to_owned(),
                        device: device_id.to_owned(),
                        report: name,
                        halted,
                        widened,
                    });
                }
                Ok(StatusOutcome::Recorded)
            }
            Err(StoreError::Report(
                ReportRefused::NotOffered | ReportRefused::UnknownAssignment,
            )) => Ok(StatusOutcome::NotOffered),
            Err(StoreError::Report(refused)) => Err(BackendError::Refused {
                reason: refused.to_string(),
            }),
            Err(e) => Err(store_unavailable(&e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Download throttles.

/// The byte-rate throttles of update downloads.
pub(crate) struct DownloadLimits {
    per_device: DefaultKeyedRateLimiter<Arc<str>>,
    total: DefaultDirectRateLimiter,
    chunk: NonZeroU32,
}

impl DownloadLimits {
    /// From the `update_download_*` keys; a second's worth of bytes may go at once.
    pub(crate) fn from_config(config: &AgentApiConfig) -> Result<Self, ConfigProblem> {
        let rate = |key: &'static str, value: u32| {
            NonZeroU32::new(value)
                .filter(|v| u64::from(v.get()) >= MIN_DOWNLOAD_BYTES_PER_SEC)
                .ok_or_else(|| ConfigProblem {
                    key: key.into(),
                    reason: format!("must be at least {MIN_DOWNLOAD_BYTES_PER_SEC}"),
                })
        };
        let per_device = rate(
            "update_download_bytes_per_sec_per_device",
            config.update_download_bytes_per_sec_per_device,
        )?;
        let total = rate(
            "update_download_bytes_per_sec_total",
            config.update_download_bytes_per_sec_total,
        )?;
        // Every rate is at least 16 KiB/s, so the chunk is at least that and fits the burst.
        // Whole KiB, so a chunk never needs more cells than a quota's burst.
        let whole_kib = |rate: NonZeroU32| rate.get() / KIB * KIB;
        let chunk = NonZeroU32::new(MAX_CHUNK.min(whole_kib(per_device)).min(whole_kib(total)))
            .unwrap_or(NonZeroU32::MIN);
        // governor keeps a cell's interval in whole nanoseconds: counted in bytes, every
        // rate above 1 GB/s would be 1 GB/s and every rate near it rounded up. Counted in
        // KiB the error is negligible up to 1 TB/s. Rates are at least 16 KiB/s, so each
        // quota is at least 16 cells.
        let kib = |rate: NonZeroU32| NonZeroU32::new(rate.get() / KIB).unwrap_or(NonZeroU32::MIN);
        Ok(DownloadLimits {
            // Keys are authenticated device ids only: bounded by the configuration.
            per_device: RateLimiter::keyed(Quota::per_second(kib(per_device))),
            total: RateLimiter::direct(Quota::per_second(kib(total))),
            chunk,
        })
    }

    async fn wait(&self, device: &Arc<str>, bytes: NonZeroU32) {
        // `bytes` never exceeds the chunk, which fits both bursts; were it not to, the
        // chunk would go unthrottled rather than never. A partial KiB counts as a whole.
        let cells = NonZeroU32::new(bytes.get().div_ceil(KIB)).unwrap_or(NonZeroU32::MIN);
        let _ = self.per_device.until_key_n_ready(device, cells).await;
        let _ = self.total.until_n_ready(cells).await;
    }
}

// ---------------------------------------------------------------------------------------
// Request and response bodies.

/// The progress states a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportedUpdateState {
    /// It has the whole file and verified it.
    Downloaded,
    /// It started installing.
    Installing,
    /// Installed and running.
    Installed,
    /// It gave up (needs `reason`).
    Failed,
    /// Not now (needs `reason`); it is offered again later.
    Deferred,
}

/// `POST /v1/devices/{device_id}/updates/{assignment_id}/status`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// Where the device stands.
    pub state: ReportedUpdateState,
    /// A machine-readable reason code; required with `failed` and `deferred`, refused
    /// otherwise.
    #[serde(default)]
    pub reason: Option<String>,
}

impl std::fmt::Debug for StatusRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusRequest")
            .field("state", &self.state)
            .field("reason", &self.reason.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl StatusRequest {
    /// Checks the values.
    ///
    /// # Errors
    /// [`BodyProblem::Value`] naming `reason`.
    pub fn into_report(self) -> Result<DeviceReport, BodyProblem> {
        let needs_reason = matches!(
            self.state,
            ReportedUpdateState::Failed | ReportedUpdateState::Deferred
        );
        let reason = match (self.reason, needs_reason) {
            (Some(reason), true) => {
                if !is_identifier(&reason, MAX_NAME_LEN) {
                    return Err(BodyProblem::Value(format!(
                        "reason: must be a code of 1–{MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . : (no free text)"
                    )));
                }
                reason
            }
            (None, true) => {
                return Err(BodyProblem::Value(
                    "reason: required with `failed` and `deferred`".into(),
                ))
            }
            (Some(_), false) => {
                return Err(BodyProblem::Value(
                    "reason: only `failed` and `deferred` take a reason".into(),
                ))
            }
            (None, false) => String::new(),
        };
        Ok(match self.state {
            ReportedUpdateState::Downloaded => DeviceReport::Downloaded,
            ReportedUpdateState::Installing => DeviceReport::Installing,
            ReportedUpdateState::Installed => DeviceReport::Installed,
            ReportedUpdateState::Failed => DeviceReport::Failed { reason },
            ReportedUpdateState::Deferred => DeviceReport::Deferred { reason },
        })
    }
}

/// One offer as sent to the device.
#[derive(Debug, Serialize)]
struct OfferBody {
    assignment_id: String,
    target: String,
    length: u64,
    sha256: String,
    required: bool,
    content_url: String,
    metadata_urls: BTreeMap<&'static str, String>,
}

// ---------------------------------------------------------------------------------------
// Handlers.

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such update for this device",
    )
}

fn path_param<'a>(params: &'a RawPathParams, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// An assignment id as [`crate::updates::assignment`] accepts them; anything else is
/// answered 404 without asking the backend.
fn assignment_param(params: &RawPathParams) -> Result<String, ApiError> {
    path_param(params, "assignment_id")
        .filter(|id| {
            !id.is_empty()
                && id.len() <= crate::updates::assignment::MAX_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .ok_or_else(not_found)
}

/// Runs a blocking backend call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(ApiError::from(BackendError::Unavailable {
            reason: "the update service failed".into(),
            retry_after: STORE_RETRY_AFTER,
        })),
    }
}

/// `GET /v1/devices/{device_id}/updates`.
pub(crate) async fn offers<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
) -> Result<Response, ApiError> {
    let offers = match app.backend.updates() {
        None => Vec::new(),
        Some(updates) => {
            let id = Arc::clone(&device);
            blocking(move || updates.offers(&id)).await?
        }
    };
    let base = format!("/v1/devices/{device}/updates");
    let body: Vec<OfferBody> = offers
        .into_iter()
        .map(|offer| OfferBody {
            content_url: format!("{base}/{}/content", offer.assignment_id),
            metadata_urls: METADATA_ROLES
                .iter()
                .map(|role| (*role, format!("{base}/metadata/{role}.json")))
                .collect(),
            assignment_id: offer.assignment_id,
            target: offer.target,
            length: offer.length,
            sha256: hex::encode(offer.sha256),
            required: offer.required,
        })
        .collect();
    let mut response = Json(json!({ "device_id": &*device, "offers": body })).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /v1/devices/{device_id}/updates/{assignment_id}/status`.
pub(crate) async fn status<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
    params: RawPathParams,
    JsonBody(request): JsonBody<StatusRequest>,
) -> Result<Response, ApiError> {
    let assignment = assignment_param(&params)?;
    let report = request.into_report()?;
    let updates = app.backend.updates().ok_or_else(not_found)?;
    let outcome = blocking(move || updates.report(&device, &assignment, report)).await?;
    match outcome {
        StatusOutcome::Recorded => Ok(accepted(1)),
        StatusOutcome::NotOffered => Err(not_found()),
    }
}

/// `GET /v1/devices/{device_id}/updates/metadata/{file}`.
pub(crate) async fn metadata<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(_device): DeviceCaller,
    params: RawPathParams,
) -> Result<Response, ApiError> {
    let file = path_param(&params, "file")
        .filter(|name| is_metadata_file_name(name))
        .ok_or_else(not_found)?;
    let dir = app
        .backend
        .updates()
        .and_then(|u| u.metadata_dir())
        .ok_or_else(not_found)?;
    let path = dir.join(file);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read TUF metadata");
            return Err(ApiError::from(BackendError::Unavailable {
                reason: "the metadata cannot be read now".into(),
                retry_after: STORE_RETRY_AFTER,
            }));
        }
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// A TUF metadata file name: one component of `[A-Za-z0-9._%-]` ending in `.json`, not
/// starting with `.` (e.g. `root.json`, `3.root.json`, `timestamp.json`).
fn is_metadata_file_name(name: &str) -> bool {
    name.len() <= MAX_METADATA_FILE_LEN
        && name.len() > ".json".len()
        && name.ends_with(".json")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'-'))
}

/// `GET /v1/devices/{device_id}/updates/{assignment_id}/content`.
pub(crate) async fn content<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
    params: RawPathParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let assignment = assignment_param(&params)?;
    let updates = app.backend.updates().ok_or_else(not_found)?;
    let id = Arc::clone(&device);
    let staged = blocking(move || updates.content(&id, &assignment))
        .await?
        .ok_or_else(not_found)?;

    let unavailable = |what: &str| {
        ApiError::from(BackendError::Unavailable {
            reason: format!("the update file cannot be {what} now"),
            retry_after: STORE_RETRY_AFTER,
        })
    };
    let mut file = tokio::fs::File::open(&staged.path).await.map_err(|e| {
        warn!(target_name = %staged.name, error = %e, "cannot open a staged update file");
        unavailable("read")
    })?;
    // The staging area replaces files by rename: the open file is the one the length
    // below describes, unless it was replaced between the lookup and the open.
    let on_disk = file
        .metadata()
        .await
        .map(|m| m.len())
        .map_err(|_| unavailable("read"))?;
    if on_disk != staged.length {
        warn!(target_name = %staged.name, "a staged update file changed while being opened");
        return Err(unavailable("read"));
    }

    let etag = format!("\"{}\"", hex::encode(staged.sha256));
    let range_header = headers.get(RANGE).and_then(|v| v.to_str().ok());
    let if_range_matches = headers
        .get(IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = if if_range_matches {
        byte_range(range_header, staged.length)
    } else {
        ByteRange::Full
    };

    let length = staged.length;
    let (status, start, count) = match range {
        ByteRange::Full => (StatusCode::OK, 0, length),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {length} bytes"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                response.headers_mut().insert(CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|_| unavailable("read"))?;
    }

    let transfer = Transfer {
        file,
        remaining: count,
        device,
        app: Arc::clone(&app),
    };
    let mut response = Response::new(Body::from_stream(transfer.into_stream()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, value);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let last = start + count - 1;
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{last}/{length}")) {
            h.insert(CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// The rest of a file to send, throttled.
struct Transfer<B> {
    file: tokio::fs::File,
    remaining: u64,
    device: Arc<str>,
    app: Arc<AppState<B>>,
}

impl<B: AgentBackend> Transfer<B> {
    fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut t| async move {
            let chunk = u64::from(t.app.downloads.chunk.get());
            let n = NonZeroU32::new(u32::try_from(t.remaining.min(chunk)).ok()?)?;
            t.app.downloads.wait(&t.device, n).await;
            let mut buffer = vec![0u8; n.get() as usize];
            match t.file.read_exact(&mut buffer).await {
                Ok(_) => {
                    t.remaining -= u64::from(n.get());
                    Some((Ok(Bytes::from(buffer)), t))
                }
                Err(e) => {
                    // The client sees a short body and resumes with a Range request.
                    warn!(device = %t.device, error = %e, "reading an update file failed mid-transfer");
                    t.remaining = 0;
                    Some((Err(e), t))
                }
            }
        })
    }
}

/// What a `Range` header asks for, for a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// The whole file (no `Range`, one the server ignores: malformed, several ranges,
    /// another unit).
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A syntactically valid range that selects nothing: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 §14.2): one `bytes` range `a-b`, `a-` or
/// `-suffix`; the end is clamped to the file. Anything the server may ignore is [`ByteRange::Full`].
pub(crate) fn byte_range(header: Option<&str>, length: u64) -> ByteRange {
    let Some(header) = header else {
        return ByteRange::Full;
    };
    let header = header.trim();
    let Some(spec) = header
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| header.get(6..))
    else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if length == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Partial {
                start: length - n.min(length),
                end: length - 1,
            },
        },
        (first, "") => match number(first) {
            None => ByteRange::Full,
            Some(start) if start >= length => ByteRange::Unsatisfiable,
            Some(start) => ByteRange::Partial {
                start,
                end: length - 1,
            },
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= length {
                    ByteRange::Unsatisfiable
                } else {
                    ByteRange::Partial {
                        start,
                        end: end.min(length - 1),
                    }
                }
            }
            _ => ByteRange::Full,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests;
