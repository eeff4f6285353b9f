//! The HTTP layer: the axum router built from [`super::ROUTES`], the extractors that
//! authenticate, rate-limit and parse, and the JSON error answers.
//!
//! Extractor order is the security order: credential (401/403) → path device equals the
//! credential's device (403) → rate limit (429) → body (415/413/408/400/422). Nothing of
//! the body is read before the caller is known and within its budget.
//!
//! Invariant: a handler answers 2xx only after the backend returned `Ok`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, RawPathParams, Request, State,
};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use governor::clock::Clock;
use governor::DefaultKeyedRateLimiter;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::warn;

use super::config::MAX_DEVICE_ID_LEN;
use super::identity::{AuthMethod, CertificateMatch, DeviceDirectory, DirectoryCell};
use super::schema::{self, BodyProblem, LogsRequest, StateRequest, TelemetryRequest};
use super::updates::{self as update_routes, DownloadLimits};
use super::{AgentBackend, BackendError, Operation, RouteMethod, ROUTES};

/// What the connection established, attached to every request on it.
#[derive(Debug)]
pub(crate) struct ConnectionInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) certificate: CertificateMatch,
}

/// Shared by every request.
pub(crate) struct AppState<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) directory: Arc<DirectoryCell>,
    pub(crate) limiter: DefaultKeyedRateLimiter<Arc<str>>,
    pub(crate) body_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    /// Throttles of update downloads (bytes/s per device and in total).
    pub(crate) downloads: DownloadLimits,
}

/// The error code of an error answer, left in the response's extensions for the
/// connection layer's log line (the detail is never logged).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// An error answer: `{"error": code, "detail": detail}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    retry_after: Option<Duration>,
    www_authenticate: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        let challenge = if code == "invalid_token" {
            r#"Bearer realm="wardgate", error="invalid_token""#
        } else {
            r#"Bearer realm="wardgate""#
        };
        ApiError {
            www_authenticate: Some(challenge),
            ..ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
        }
    }

    fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (0 would invite a busy loop).
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "error": self.code, "detail": self.detail })),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
        }
        if let Some(challenge) = self.www_authenticate {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable {
                reason,
                retry_after,
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("not stored: {reason}; retry later"),
            )
            .retry_after(retry_after),
            BackendError::Refused { reason } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", reason)
            }
        }
    }
}

impl From<BodyProblem> for ApiError {
    fn from(problem: BodyProblem) -> Self {
        match problem {
            BodyProblem::Malformed(m) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {m}"),
            ),
            BodyProblem::Shape(m) => ApiError::new(StatusCode::BAD_REQUEST, "schema_mismatch", m),
            BodyProblem::Value(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", m)
            }
        }
    }
}

/// The authenticated device, within its rate budget.
pub(crate) struct Caller {
    device: Arc<str>,
    method: AuthMethod,
    peer: SocketAddr,
}

fn authenticate(parts: &Parts, directory: &DeviceDirectory) -> Result<Caller, ApiError> {
    let Some(connection) = parts.extensions.get::<Arc<ConnectionInfo>>() else {
        // Only reachable if the router is served without `serve`'s connection layer.
        return Err(ApiError::unauthenticated(
            "unauthenticated",
            "no connection identity",
        ));
    };
    let authorization = parts.headers.get(AUTHORIZATION);
    match &connection.certificate {
        CertificateMatch::Device(device) => match authorization {
            None => Ok(Caller {
                device: Arc::clone(device),
                method: AuthMethod::Mtls,
                peer: connection.peer,
            }),
            Some(_) => Err(ApiError::unauthenticated(
                "conflicting_credentials",
                "this connection authenticated with a client certificate; send no Authorization header",
            )),
        },
        CertificateMatch::Unregistered | CertificateMatch::Unreadable(_) => Err(
            ApiError::forbidden("the client certificate does not designate a configured agent device"),
        ),
        CertificateMatch::Ambiguous(_) => Err(ApiError::forbidden(
            "the client certificate designates several configured devices; ask the site to fix the device identities",
        )),
        CertificateMatch::Absent => {
            let Some(value) = authorization else {
                return Err(ApiError::unauthenticated(
                    "unauthenticated",
                    "present a client certificate or an Authorization: Bearer token",
                ));
            };
            let token = bearer_token(value).ok_or_else(|| {
                ApiError::unauthenticated(
                    "invalid_token",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
            let device = directory.match_token(token).ok_or_else(|| {
                ApiError::unauthenticated("invalid_token", "the token is not valid")
            })?;
            Ok(Caller {
                device,
                method: AuthMethod::Token,
                peer: connection.peer,
            })
        }
    }
}

fn bearer_token(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let scheme = bytes.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = bytes[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn check_rate<B>(state: &AppState<B>, device: &Arc<str>) -> Result<(), ApiError> {
    state.limiter.check_key(device).map_err(|not_until| {
        let wait = not_until.wait_time_from(state.limiter.clock().now());
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this device is over its request rate; retry after the Retry-After seconds",
        )
        .retry_after(wait)
    })
}

impl<B: AgentBackend> FromRequestParts<Arc<AppState<B>>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState<B>>,
    ) -> Result<Self, ApiError> {
        let caller = authenticate(parts, &state.directory.current())?;
        check_rate(state, &caller.device)?;
        Ok(caller)
    }
}

/// The authenticated device, which is the `{device_id}` of the path, within its budget.
pub(crate) struct DeviceCaller(pub(crate) Arc<str>);

impl<B: AgentBackend> FromRequestParts<Arc<AppState<B>>> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState<B>>,
    ) -> Result<Self, ApiError> {
        let caller = authenticate(parts, &state.directory.current())?;
        // By name: update routes carry more parameters than the device id.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))?;
        let device_id = params
            .iter()
            .find_map(|(name, value)| (name == "device_id").then(|| value.to_owned()))
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))?;
        if *device_id != *caller.device {
            warn!(
                peer = %caller.peer,
                device = %caller.device,
                addressed = ?device_id.chars().take(MAX_DEVICE_ID_LEN).collect::<String>(),
                "an agent addressed another device's path; refused (403)"
            );
            return Err(ApiError::forbidden(
                "the credential belongs to another device: a device may only speak for itself (see GET /v1/identity)",
            ));
        }
        check_rate(state, &caller.device)?;
        Ok(DeviceCaller(caller.device))
    }
}

/// A JSON body of type `T`, read within the size limit and the body timeout.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<B: AgentBackend, T: DeserializeOwned> FromRequest<Arc<AppState<B>>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState<B>>) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = tokio::time::timeout(state.body_timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "the body did not arrive within {} s",
                        state.body_timeout.as_secs()
                    ),
                )
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "the body is larger than the limit of {} bytes; send smaller batches",
                            state.max_body_bytes
                        ),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "body_unreadable",
                        "the body could not be read",
                    )
                }
            })?;
        Ok(JsonBody(schema::parse(&bytes)?))
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn accepted(count: usize) -> Response {
    (StatusCode::OK, Json(json!({ "accepted": count }))).into_response()
}

async fn identity(caller: Caller) -> Response {
    Json(json!({ "device_id": &*caller.device, "auth": caller.method.name() })).into_response()
}

async fn report_state<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
    JsonBody(request): JsonBody<StateRequest>,
) -> Result<Response, ApiError> {
    let report = request.into_report(now_ms())?;
    app.backend.report_state(&device, report).await?;
    Ok(accepted(1))
}

async fn push_telemetry<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
    JsonBody(request): JsonBody<TelemetryRequest>,
) -> Result<Response, ApiError> {
    let measurements = request.into_measurements(now_ms())?;
    let count = measurements.len();
    app.backend.telemetry(&device, measurements).await?;
    Ok(accepted(count))
}

async fn push_logs<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
    JsonBody(request): JsonBody<LogsRequest>,
) -> Result<Response, ApiError> {
    let (file, lines) = request.into_parts()?;
    let count = lines.len();
    app.backend.logs(&device, file, lines).await?;
    Ok(accepted(count))
}

async fn read_settings<B: AgentBackend>(
    State(app): State<Arc<AppState<B>>>,
    DeviceCaller(device): DeviceCaller,
) -> Result<Response, ApiError> {
    let settings = app.backend.settings(&device).await?;
    Ok(Json(json!({ "device_id": &*device, "settings": settings })).into_response())
}

async fn not_found(_caller: Caller) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed(_caller: Caller) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The router: one entry per [`ROUTES`] row, authenticated fallbacks, the body limit.
pub(crate) fn router<B: AgentBackend>(state: Arc<AppState<B>>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = match route.method {
            RouteMethod::Get => MethodFilter::GET,
            RouteMethod::Post => MethodFilter::POST,
        };
        let handler: MethodRouter<Arc<AppState<B>>> = match route.operation {
            Operation::Identity => on(filter, identity),
            Operation::State => on(filter, report_state::<B>),
            Operation::Telemetry => on(filter, push_telemetry::<B>),
            Operation::Logs => on(filter, push_logs::<B>),
            Operation::Settings => on(filter, read_settings::<B>),
            Operation::UpdateOffers => on(filter, update_routes::offers::<B>),
            Operation::UpdateContent => on(filter, update_routes::content::<B>),
            Operation::UpdateMetadata => on(filter, update_routes::metadata::<B>),
            Operation::UpdateStatus => on(filter, update_routes::status::<B>),
        };
        router = router.route(route.path, handler);
    }
    let limit = state.max_body_bytes;
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer_token(&value("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&value("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&value("Bearer ")), None);
        assert_eq!(bearer_token(&value("Basic YWxhZGRpbjpvcGVu")), None);
        assert_eq!(bearer_token(&value("Bear")), None);
    }

    #[tokio::test]
    async fn error_answers_are_json_with_code_and_detail() {
        let response = ApiError::from(BackendError::Unavailable {
            reason: "spool full".into(),
            retry_after: Duration::from_millis(2500),
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"], "unavailable");
        assert!(value["detail"].as_str().unwrap().contains("spool full"));

        let response = ApiError::unauthenticated("invalid_token", "no").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        assert_eq!(
            response.extensions().get::<ErrorCode>().unwrap().0,
            "invalid_token"
        );
    }
}
