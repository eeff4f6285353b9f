//! The status endpoint's HTTP server: axum routes over hyper HTTP/1.1, plain on
//! loopback or TLS (tokio-rustls), with a connection cap and a graceful shutdown.
//!
//! Invariants:
//! * `/status.json` and `/metrics` run the source's `snapshot` only after the bearer
//!   token checked out; `/` serves the data-free page to anyone.
//! * An address over its failed-attempt allowance gets 429 with `Retry-After`, whatever
//!   it sends, until the allowance refills ([`super::auth::FailedAuthLimiter`]).
//! * Every response carries `Cache-Control: no-store`, `X-Content-Type-Options: nosniff`,
//!   `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and a
//!   Content-Security-Policy (the page's own, or one that allows nothing).
//! * At most `max_connections` connections are served at once; further ones wait in the
//!   kernel's backlog. A connection that does not finish its request headers within
//!   [`HEADER_READ_TIMEOUT`] (including an idle keep-alive connection) or its TLS handshake
//!   within [`HANDSHAKE_TIMEOUT`] is closed.
//! * On shutdown the listener closes at once, connections finish the request they are
//!   serving, and whatever is still open after [`SHUTDOWN_GRACE`] is dropped.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, RETRY_AFTER, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::auth::{bearer_token, FailedAuthLimiter, TokenVerifier};
use super::config::StatusConfig;
use super::page::{page, CSP_NONE};
use super::snapshot::StatusSource;
use super::{metrics, tls, StatusError};

/// How long a client may take to send a request's headers (also: how long an idle
/// keep-alive connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Largest request head accepted (bytes); the endpoint takes GET requests only.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;

/// What [`serve`] needs, resolved from a [`StatusConfig`]: the token's digest and the TLS
/// configuration, read from their files.
#[derive(Debug, Clone)]
pub struct StatusRuntime {
    /// Checks bearer tokens.
    pub token: TokenVerifier,
    /// TLS for the listener; `None` serves plain HTTP (loopback only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Failed authentication attempts allowed per source address and minute.
    pub failed_auth_per_minute: NonZeroU32,
    /// Most simultaneous connections (at least 1).
    pub max_connections: usize,
}

impl StatusRuntime {
    /// Reads the token and the TLS files named in `config`.
    ///
    /// # Errors
    /// [`StatusError::Config`], [`StatusError::TokenFile`] or [`StatusError::TlsFile`].
    pub fn load(config: &StatusConfig) -> Result<StatusRuntime, StatusError> {
        config.validate()?;
        let token = TokenVerifier::from_file(&config.token_file)?;
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        Ok(StatusRuntime {
            token,
            tls,
            failed_auth_per_minute: NonZeroU32::new(config.failed_auth_per_minute)
                .unwrap_or(NonZeroU32::MIN),
            max_connections: config.max_connections.max(1),
        })
    }
}

/// The source address of a request, put in its extensions by the connection task.
#[derive(Debug, Clone, Copy)]
struct Peer(IpAddr);

struct App<S> {
    source: Arc<S>,
    token: TokenVerifier,
    limiter: FailedAuthLimiter,
}

/// Serves the status endpoint on `listener` until `shutdown` becomes `true` (or its
/// sender is dropped).
///
/// # Errors
/// [`StatusError::TlsRequired`] when `listener` is not on loopback and `runtime` has no
/// TLS; [`StatusError::Io`] when the listener's address cannot be read. Errors of single
/// connections are logged, never returned.
pub async fn serve<S: StatusSource>(
    listener: TcpListener,
    runtime: StatusRuntime,
    source: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StatusError> {
    let local = listener.local_addr().map_err(|source| StatusError::Io {
        context: "reading the listener's address",
        source,
    })?;
    if runtime.tls.is_none() && !local.ip().is_loopback() {
        return Err(StatusError::TlsRequired { addr: local });
    }
    let router = router(Arc::new(App {
        source,
        token: runtime.token,
        limiter: FailedAuthLimiter::new(runtime.failed_auth_per_minute),
    }));
    let acceptor = runtime.tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(runtime.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tracing::info!(addr = %local, tls = acceptor.is_some(), "status endpoint listening");

    let mut accept_failures: u32 = 0;
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // closed: never, the semaphore lives here
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => {
                    accept_failures = 0;
                    connection
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, as mini-redis does,
                    // instead of spinning on an error that persists.
                    accept_failures = accept_failures.saturating_add(1);
                    let delay = Duration::from_millis(10 << accept_failures.min(7));
                    tracing::warn!(error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "status endpoint: accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = stopped(&mut shutdown) => break,
                    }
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        connections.spawn(connection(
            stream,
            peer,
            acceptor.clone(),
            router.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            open = connections.len(),
            "status endpoint: dropping connections still open after the grace period"
        );
        connections.shutdown().await;
    }
    tracing::info!("status endpoint stopped");
    Ok(())
}

/// Resolves once shutdown is asked for, or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        return serve_http(stream, peer, router, shutdown).await;
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        result = handshake => result,
        () = stopped(&mut shutdown) => return,
    };
    match tls {
        Ok(Ok(tls)) => serve_http(tls, peer, router, shutdown).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "status endpoint: TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "status endpoint: TLS handshake timed out"),
    }
}

async fn serve_http<I>(io: I, peer: SocketAddr, router: Router, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = peer.ip();
    let service = router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(Peer(ip));
        request
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "status endpoint: connection ended with an error");
    }
}

fn router<S: StatusSource>(app: Arc<App<S>>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status.json", get(status_json::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .fallback(not_found)
        .with_state(app)
        .layer(axum::middleware::map_response(security_headers))
}

async fn index() -> Response {
    let page = page();
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_str(&page.csp)
                    .unwrap_or_else(|_| HeaderValue::from_static(CSP_NONE)),
            ),
        ],
        page.html.clone(),
    )
        .into_response()
}

async fn status_json<S: StatusSource>(
    State(app): State<Arc<App<S>>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refusal(&app, peer.0, &headers) {
        return refusal;
    }
    Json(app.source.snapshot()).into_response()
}

async fn metrics_text<S: StatusSource>(
    State(app): State<Arc<App<S>>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refusal(&app, peer.0, &headers) {
        return refusal;
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        metrics::render(&app.source.snapshot()),
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// `None` when the request carries the token; otherwise the response to send instead.
fn refusal<S>(app: &App<S>, peer: IpAddr, headers: &HeaderMap) -> Option<Response> {
    let now = Instant::now();
    if let Some(wait) = app.limiter.blocked_for(peer, now) {
        return Some(too_many_attempts(wait));
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(presented) = presented else {
        // No credential is not a guess: not counted, so a misconfigured scraper cannot
        // lock the technician out.
        return Some(unauthorized(false));
    };
    if app.token.verify(presented) {
        return None;
    }
    if let Some(wait) = app.limiter.record_failure(peer, now) {
        tracing::warn!(
            %peer,
            refused_for_secs = wait.as_secs(),
            "status endpoint: too many failed authentication attempts; refusing the address"
        );
        return Some(too_many_attempts(wait));
    }
    tracing::info!(%peer, "status endpoint: wrong token");
    Some(unauthorized(true))
}

fn unauthorized(invalid_token: bool) -> Response {
    let challenge = if invalid_token {
        "Bearer realm=\"wardgate status\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"wardgate status\""
    };
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))],
        "a valid bearer token is required\n",
    )
        .into_response()
}

fn too_many_attempts(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, HeaderValue::from(secs))],
        "too many failed authentication attempts from this address\n",
    )
        .into_response()
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(CONTENT_SECURITY_POLICY) {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_NONE));
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}
