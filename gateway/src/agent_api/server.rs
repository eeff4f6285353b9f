//! The listener: accept TCP, cap connections, TLS handshake (with a deadline), decide the
//! connection's certificate identity once, then serve HTTP/1.1 keep-alive with hyper over
//! the axum router, and wind down gracefully.
//!
//! Invariants:
//! * The listener never stops because of one connection: handshake failures, protocol
//!   errors and timeouts end that connection only. Only persistent accept failures
//!   ([`wardgate_device_adapters::accept::MAX_ACCEPT_FAILURES`] in a row, the shared accept policy) end [`serve`].
//! * A connection holds a permit of the connection cap from accept to close, handshake
//!   included, so stalled handshakes count against the cap and are bounded by the
//!   handshake timeout.
//! * At shutdown a request in progress runs to its answer (up to the grace period): a 2xx
//!   already committed by the backend is delivered, not cut off.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::http::Request;
use axum::response::Response;
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, error, info, warn};

use wardgate_device_adapters::accept::{AcceptFailures, AcceptVerdict};

use super::config::AgentApiConfig;
use super::http::{self, AppState, ConnectionInfo, ErrorCode};
use super::identity::{CertificateMatch, DirectoryCell};
use super::{bump, worth_logging, AgentApiError, AgentApiRuntime, AgentApiStats, AgentBackend};

/// Most request headers; agents send a handful.
const MAX_HEADERS: usize = 32;

/// What every connection task needs.
struct Shared {
    acceptor: TlsAcceptor,
    router: Router,
    directory: Arc<DirectoryCell>,
    config: AgentApiConfig,
    stats: Arc<AgentApiStats>,
}

/// Serves the agent API on `listener` until `shutdown` turns `true` (or its sender is
/// dropped), then stops accepting, lets requests in progress finish (up to
/// `shutdown_grace_secs`), closes idle connections and returns once every connection has
/// ended. Counters go to `runtime`'s [`AgentApiRuntime::stats`].
///
/// # Errors
/// [`AgentApiError::Config`] for an unusable rate limit before serving anything;
/// [`AgentApiError::Accept`] after persistent accept failures (connections are wound down
/// first).
pub async fn serve<B: AgentBackend>(
    listener: TcpListener,
    runtime: AgentApiRuntime,
    backend: Arc<B>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentApiError> {
    let AgentApiRuntime {
        tls,
        directory,
        config,
        stats,
        ..
    } = runtime;
    let nonzero = |key: &'static str, value: u32| {
        NonZeroU32::new(value).ok_or_else(|| super::ConfigProblem {
            key: key.into(),
            reason: "must be at least 1".into(),
        })
    };
    let quota = Quota::per_second(nonzero(
        "rate_per_device_per_sec",
        config.rate_per_device_per_sec,
    )?)
    .allow_burst(nonzero("rate_burst", config.rate_burst)?);
    let state = Arc::new(AppState {
        backend,
        directory: Arc::clone(&directory),
        // Keys are authenticated device ids only, so the map is bounded by the
        // configuration and needs no pruning.
        limiter: DefaultKeyedRateLimiter::keyed(quota),
        body_timeout: config.body_timeout(),
        max_body_bytes: config.max_body_bytes,
        downloads: super::updates::DownloadLimits::from_config(&config)?,
    });
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        router: http::router(state),
        directory,
        stats,
        config,
    });
    let permits = Arc::new(Semaphore::new(shared.config.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut accept_failures = AcceptFailures::default();
    if let Ok(local) = listener.local_addr() {
        info!(%local, "device agent API listening (HTTPS)");
    }

    let result = loop {
        if *shutdown.borrow_and_update() {
            break Ok(());
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    // The owner is gone: nobody can ever ask us to stop, so stop now.
                    break Ok(());
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_failures.accepted();
                    admit(stream, peer, &permits, &shared, &closing_rx, &mut connections);
                }
                Err(e) => match accept_failures.failed(&e) {
                    AcceptVerdict::Ignore => debug!(error = %e, "accept: connection failed early"),
                    AcceptVerdict::GiveUp => {
                        error!(error = %e, "agent API cannot accept connections; stopping");
                        break Err(AgentApiError::Accept(e));
                    }
                    AcceptVerdict::BackOff(backoff) => {
                        warn!(error = %e, ?backoff, "agent API accept failed; backing off");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                },
            },
            Some(ended) = connections.join_next() => log_task_end(ended),
        }
    };

    drop(listener);
    // Connection tasks hold receivers, so this cannot fail.
    let _ = closing_tx.send(true);
    while let Some(ended) = connections.join_next().await {
        log_task_end(ended);
    }
    info!("device agent API stopped");
    result
}

fn log_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            error!("agent API connection task panicked");
        }
    }
}

fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    permits: &Arc<Semaphore>,
    shared: &Arc<Shared>,
    closing: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    let stats = &shared.stats;
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        let before = bump(&stats.connections_refused);
        if worth_logging(before) {
            warn!(
                %peer,
                max = shared.config.max_connections,
                refused = before + 1,
                "agent API connection limit reached; connection closed"
            );
        }
        return;
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
    bump(&stats.connections_accepted);
    let shared = Arc::clone(shared);
    let closing = closing.clone();
    connections.spawn(async move {
        let _permit: OwnedSemaphorePermit = permit;
        bump(&shared.stats.connections_active);
        serve_connection(stream, peer, &shared, closing).await;
        shared
            .stats
            .connections_active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    });
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut closing: watch::Receiver<bool>,
) {
    let handshake = tokio::time::timeout(
        shared.config.handshake_timeout(),
        shared.acceptor.accept(stream),
    );
    let tls = tokio::select! {
        outcome = handshake => match outcome {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                handshake_failed(shared, peer, &e.to_string());
                return;
            }
            Err(_) => {
                handshake_failed(shared, peer, "timed out");
                return;
            }
        },
        _ = closing.changed() => return,
    };

    let certificate = match tls.get_ref().1.peer_certificates().and_then(<[_]>::first) {
        None => CertificateMatch::Absent,
        Some(der) => {
            let (matched, names) = shared.directory.current().match_certificate(der);
            if let CertificateMatch::Device(device) = &matched {
                debug!(%peer, %device, "agent connected with a client certificate");
            } else {
                let before = bump(&shared.stats.certificates_unregistered);
                if worth_logging(before) {
                    let problem = match &matched {
                        CertificateMatch::Ambiguous(_) => {
                            "designates several configured agent devices".to_owned()
                        }
                        CertificateMatch::Unreadable(reason) => {
                            format!("cannot be read ({reason})")
                        }
                        _ => "designates no configured agent device".to_owned(),
                    };
                    warn!(
                        %peer,
                        names = ?names.all(),
                        %problem,
                        count = before + 1,
                        "a client certificate from the device CA is not usable; its requests are refused (403)"
                    );
                }
            }
            matched
        }
    };

    let info = Arc::new(ConnectionInfo { peer, certificate });
    let stats = Arc::clone(&shared.stats);
    let service = shared
        .router
        .clone()
        .map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(Arc::clone(&info));
            request
        })
        .map_response(move |response: Response| {
            record_outcome(&stats, peer, &response);
            response
        });

    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(shared.config.idle_timeout())
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    tokio::pin!(connection);

    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        _ = closing.changed() => {
            // Finish the request in progress (if any), then close; idle connections close now.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(shared.config.shutdown_grace(), connection.as_mut()).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    warn!(%peer, "agent API request still in progress after the shutdown grace period; connection closed");
                    return;
                }
            }
        }
    };
    match outcome {
        Ok(()) => debug!(%peer, "agent connection closed"),
        Err(e) if e.is_timeout() => debug!(%peer, "agent connection idle timeout"),
        Err(e) => debug!(%peer, error = %e, "agent connection ended with an error"),
    }
}

fn handshake_failed(shared: &Shared, peer: SocketAddr, reason: &str) {
    let before = bump(&shared.stats.handshakes_failed);
    if worth_logging(before) {
        info!(%peer, %reason, failed = before + 1, "agent API TLS handshake failed");
    } else {
        debug!(%peer, %reason, "agent API TLS handshake failed");
    }
}

fn record_outcome(stats: &AgentApiStats, peer: SocketAddr, response: &Response) {
    let status = response.status();
    let counter = match status.as_u16() {
        200..=299 => &stats.requests_accepted,
        401 | 403 => &stats.requests_unauthorized,
        429 => &stats.requests_rate_limited,
        503 => &stats.requests_unavailable,
        _ => &stats.requests_invalid,
    };
    bump(counter);
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        debug!(%peer, status = status.as_u16(), code, "agent request refused");
    }
}
