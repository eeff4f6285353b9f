//! The MLLP listener: a thin tokio driver around [`MllpFramer`], [`Message`],
//! [`pcd::interpret`] and [`build_ack`].
//!
//! Flow per connection: read → frame → (rate limit) → parse → interpret →
//! [`Hl7Sink::deliver`] → ACK → read the next frame. One message is in flight per
//! connection: the next frame is handled only after the previous ACK was written, so a
//! device that waits for its ACK is never overtaken by itself.
//!
//! **Invariant: a positive ACK (`AA`/`CA`) is written only after `deliver` returned
//! `Ok(())`, i.e. after the message is durable.** A crash at any point before that loses
//! nothing the device believes delivered: it retransmits. Every other path answers
//! `AE`/`CE` (bad message: don't resend unchanged) or `AR`/`CR` (not now / not ever) or,
//! when the sender asked for no ACK in that case, nothing.
//!
//! Decisions:
//! - **Connection cap**: over `max_connections` a connection is accepted and closed at
//!   once (counted in `connections_refused`). Not accepting would leave devices hanging in
//!   the kernel backlog with no signal; a prompt close lets them back off and retry.
//! - **Allow-list**: checked on accept (IPv4-mapped IPv6 peers compare as IPv4); others
//!   are closed without a byte (`connections_denied`).
//! - **Idle timeout = time to complete the next frame.** The deadline is set when the
//!   connection opens and after each answered message; bytes arriving do not extend it.
//!   A silent connection and a byte-per-second slow-loris are both closed when it
//!   expires (`idle_timeouts`). Writing an ACK is bounded by the same duration.
//! - **Rate limit** per source IP (governor, keyed; all connections of one IP share the
//!   budget): over the limit the message is answered `AR` with ERR text
//!   "rate limit exceeded" and not delivered; the connection stays open.
//! - **Oversized frame**: answered `AR` (ERR 207, echoing MSH-10 when the MSH fitted in
//!   the limit) as soon as the limit is crossed; the framer discards the rest of the frame
//!   and the connection continues with the next frame (the idle timeout bounds how long
//!   the discarding may take).
//! - **Garbage** outside frames is skipped, counted, and logged once per connection.
//!   Empty frames are ignored (there is no control id to acknowledge).
//! - **Shutdown** (the `shutdown` watch turns `true`, or its sender is dropped): stop
//!   accepting; a delivery in progress finishes and is acknowledged; any message that is
//!   complete after that (already buffered, in the socket, or arriving within a 100 ms
//!   grace) is answered `AR` "shutting down"; then every connection is closed and [`serve`] returns once every
//!   connection task has ended.
//! - **Accept errors**: per-connection errors (aborted, reset) are ignored; resource errors
//!   (e.g. too many open files) back off exponentially from 50 ms to 5 s; after
//!   [`MAX_ACCEPT_FAILURES`] consecutive failures `serve` winds down like a shutdown and
//!   returns [`Hl7Error::Accept`].
//! - **Logging**: peers, counts, ACK codes and error locations; the control id only at
//!   debug level; never message content. Sink refusal texts must be content-free too.
//! - ACK timestamps (MSH-7) come from the system clock here, not in the pure ACK code; ACK
//!   control ids are a counter seeded from the clock, so they do not repeat across
//!   restarts.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::accept::{AcceptFailures, AcceptVerdict};

use crate::hl7::ack::{
    build_ack, hl7_timestamp, AckMode, AckOutcome, AckRequest, ErrorCode, InboundHeader,
};
use crate::hl7::message::{ErrorLocation, Message};
use crate::hl7::mllp::{self, FrameError, MllpFramer};
use crate::hl7::pcd::{self, PcdMessage};

/// Where messages go: the gateway's PHI stage and spool.
pub trait Hl7Sink: Send + Sync + 'static {
    /// Make the message durable (PHI stage + spool commit). Ok(()) only once it is durably stored.
    fn deliver(
        &self,
        msg: PcdMessage,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;
}

/// Why the sink did not store a message. Texts go into the ACK and the log: they must not
/// contain message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The message is unacceptable as sent (answered AE / CE, with ERR pointing at
    /// `segment`-`field`).
    #[error("invalid message ({segment}-{field}): {text}")]
    Invalid {
        /// Segment id, e.g. `PID`.
        segment: String,
        /// Field number within that segment (0 when the whole segment is meant).
        field: u16,
        /// Reason.
        text: String,
    },
    /// The gateway cannot take the message now: shutting down, spool full (answered AR /
    /// CR; the device should retry later).
    #[error("unavailable: {text}")]
    Unavailable {
        /// Reason.
        text: String,
    },
}

/// Default maximum message size: 1 MiB (a PCD-01 message is a few KiB; waveform-heavy ones
/// a few hundred).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Consecutive accept failures after which [`serve`] gives up (the shared accept policy).
pub use crate::accept::MAX_ACCEPT_FAILURES;

const READ_CHUNK: usize = 16 * 1024;
/// How long a connection keeps reading after shutdown to answer AR to what was in flight
/// on the wire.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);
const LIMITER_PRUNE_PERIOD: Duration = Duration::from_secs(60);

/// Listener configuration.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Largest accepted message (frame content), in bytes.
    pub max_message_bytes: usize,
    /// Time a connection has to complete its next frame (see the module documentation).
    pub idle_timeout: Duration,
    /// Most connections served at once; more are accepted and closed.
    pub max_connections: usize,
    /// Messages per second per source IP (sustained).
    pub rate_per_source_per_sec: NonZeroU32,
    /// Messages per source IP that may arrive at once above the sustained rate.
    pub rate_burst: NonZeroU32,
    /// Source addresses allowed to connect; empty = all.
    pub allow_sources: Vec<IpAddr>,
    /// ACK mode for devices without an override.
    pub ack_mode: AckMode,
    /// ACK mode overrides, keyed by the device's MSH-3.1 (sending application).
    pub ack_mode_by_application: HashMap<String, AckMode>,
    /// Our MSH-3 (sending application) in ACKs.
    pub application: String,
    /// Our MSH-4 (sending facility) in ACKs.
    pub facility: String,
}

impl ListenerConfig {
    /// A configuration with defaults for everything but our own application and facility
    /// names.
    #[must_use]
    pub fn new(application: impl Into<String>, facility: impl Into<String>) -> Self {
        ListenerConfig {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            rate_per_source_per_sec: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            rate_burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
            allow_sources: Vec::new(),
            ack_mode: AckMode::Auto,
            ack_mode_by_application: HashMap::new(),
            application: application.into(),
            facility: facility.into(),
        }
    }

    /// Checks the values [`serve`] cannot work with.
    ///
    /// # Errors
    /// [`Hl7Error::Config`] naming the offending key.
    pub fn validate(&self) -> Result<(), Hl7Error> {
        if self.max_message_bytes == 0 {
            return Err(Hl7Error::Config(
                "max_message_bytes must be at least 1".into(),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(Hl7Error::Config(
                "idle_timeout must be longer than zero".into(),
            ));
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(Hl7Error::Config(format!(
                "max_connections must be between 1 and {}",
                Semaphore::MAX_PERMITS
            )));
        }
        Ok(())
    }

    fn ack_mode_for(&self, application: &str) -> AckMode {
        self.ack_mode_by_application
            .get(application)
            .copied()
            .unwrap_or(self.ack_mode)
    }
}

/// Errors that end [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum Hl7Error {
    /// The configuration is unusable.
    #[error("invalid HL7 listener configuration: {0}")]
    Config(String),
    /// Accepting connections kept failing.
    #[error("accepting HL7 connections failed {MAX_ACCEPT_FAILURES} times in a row")]
    Accept(#[source] std::io::Error),
}

/// Listener counters, updated live. Share an `Arc` with [`serve`] and read
/// [`snapshot`](Self::snapshot)s.
#[derive(Debug, Default)]
pub struct ListenerStats {
    connections_accepted: AtomicU64,
    connections_active: AtomicU64,
    connections_refused: AtomicU64,
    connections_denied: AtomicU64,
    idle_timeouts: AtomicU64,
    messages_accepted: AtomicU64,
    messages_errored: AtomicU64,
    messages_rejected: AtomicU64,
    frames_too_large: AtomicU64,
    garbage_bytes: AtomicU64,
    rate_limited: AtomicU64,
}

/// A point-in-time copy of [`ListenerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStatsSnapshot {
    /// Connections admitted (past the allow-list and the cap).
    pub connections_accepted: u64,
    /// Connections currently open.
    pub connections_active: u64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections closed at once because the source is not allow-listed.
    pub connections_denied: u64,
    /// Connections closed because no frame completed within the idle timeout.
    pub idle_timeouts: u64,
    /// Messages durably delivered (answered AA/CA or, if so asked, not at all).
    pub messages_accepted: u64,
    /// Messages with errors (AE/CE).
    pub messages_errored: u64,
    /// Messages rejected (AR/CR), including the rate-limited, oversized and those arriving
    /// during shutdown.
    pub messages_rejected: u64,
    /// Frames larger than `max_message_bytes`.
    pub frames_too_large: u64,
    /// Bytes skipped outside MLLP frames.
    pub garbage_bytes: u64,
    /// Messages refused by the per-source rate limit.
    pub rate_limited: u64,
}

impl ListenerStats {
    /// Zeroed counters.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads all counters (each is exact; together they are not one atomic view).
    #[must_use]
    pub fn snapshot(&self) -> ListenerStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerStatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_active: get(&self.connections_active),
            connections_refused: get(&self.connections_refused),
            connections_denied: get(&self.connections_denied),
            idle_timeouts: get(&self.idle_timeouts),
            messages_accepted: get(&self.messages_accepted),
            messages_errored: get(&self.messages_errored),
            messages_rejected: get(&self.messages_rejected),
            frames_too_large: get(&self.frames_too_large),
            garbage_bytes: get(&self.garbage_bytes),
            rate_limited: get(&self.rate_limited),
        }
    }
}

/// Log damping for events a peer can repeat at will: the 1st, 2nd, 4th, 8th, ... occurrence.
fn worth_logging(previous_count: u64) -> bool {
    (previous_count + 1).is_power_of_two()
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared<S> {
    config: ListenerConfig,
    sink: Arc<S>,
    stats: Arc<ListenerStats>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    next_ack_id: AtomicU64,
}

/// Serves MLLP connections from `listener` until `shutdown` turns `true` (or its sender is
/// dropped), then winds down as described in the module documentation and returns once
/// every connection has ended. `stats` is updated as it goes.
///
/// # Errors
/// [`Hl7Error::Config`] before serving anything; [`Hl7Error::Accept`] after persistent
/// accept failures (connections are wound down first).
pub async fn serve<S: Hl7Sink>(
    listener: TcpListener,
    config: ListenerConfig,
    sink: Arc<S>,
    stats: Arc<ListenerStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Hl7Error> {
    config.validate()?;
    let quota = Quota::per_second(config.rate_per_source_per_sec).allow_burst(config.rate_burst);
    let allow: Vec<IpAddr> = config
        .allow_sources
        .iter()
        .map(IpAddr::to_canonical)
        .collect();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let shared = Arc::new(Shared {
        config,
        sink,
        stats,
        limiter: DefaultKeyedRateLimiter::keyed(quota),
        next_ack_id: AtomicU64::new(u64::try_from(seed).unwrap_or(0)),
    });
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut prune = tokio::time::interval(LIMITER_PRUNE_PERIOD);
    let mut accept_failures = AcceptFailures::default();
    if let Ok(local) = listener.local_addr() {
        info!(%local, "HL7 MLLP listener started");
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
                    admit(stream, peer, &allow, &permits, &shared, &closing_rx, &mut connections);
                }
                Err(e) => match accept_failures.failed(&e) {
                    AcceptVerdict::Ignore => debug!(error = %e, "accept: connection failed early"),
                    AcceptVerdict::GiveUp => {
                        error!(error = %e, "HL7 listener cannot accept connections; stopping");
                        break Err(Hl7Error::Accept(e));
                    }
                    AcceptVerdict::BackOff(backoff) => {
                        warn!(error = %e, ?backoff, "accept failed; backing off");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                },
            },
            Some(ended) = connections.join_next() => log_task_end(ended),
            _ = prune.tick() => {
                shared.limiter.retain_recent();
                shared.limiter.shrink_to_fit();
            }
        }
    };

    drop(listener);
    // Connection tasks hold receivers, so this cannot fail.
    let _ = closing_tx.send(true);
    while let Some(ended) = connections.join_next().await {
        log_task_end(ended);
    }
    info!("HL7 MLLP listener stopped");
    result
}

fn log_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            error!("HL7 connection task panicked");
        }
    }
}

fn admit<S: Hl7Sink>(
    stream: TcpStream,
    peer: SocketAddr,
    allow: &[IpAddr],
    permits: &Arc<Semaphore>,
    shared: &Arc<Shared<S>>,
    closing: &watch::Receiver<bool>,
    connections: &mut JoinSet<()>,
) {
    let stats = &shared.stats;
    if !allow.is_empty() && !allow.contains(&peer.ip().to_canonical()) {
        let before = stats.connections_denied.fetch_add(1, Ordering::Relaxed);
        if worth_logging(before) {
            info!(%peer, denied = before + 1, "HL7 connection from a source not on the allow-list closed");
        }
        return;
    }
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        let before = stats.connections_refused.fetch_add(1, Ordering::Relaxed);
        if worth_logging(before) {
            warn!(
                %peer,
                max = shared.config.max_connections,
                refused = before + 1,
                "HL7 connection limit reached; connection closed"
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
        let _active = ActiveGuard::new(&shared.stats);
        debug!(%peer, "HL7 connection opened");
        serve_connection(stream, peer, &shared, closing).await;
        debug!(%peer, "HL7 connection closed");
    });
}

struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(stats: &'a ListenerStats) -> Self {
        bump(&stats.connections_active);
        ActiveGuard(&stats.connections_active)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection state the frame handler needs.
struct Connection<'a, S> {
    stream: TcpStream,
    peer: SocketAddr,
    shared: &'a Shared<S>,
    framer: MllpFramer,
    garbage_logged: bool,
}

async fn serve_connection<S: Hl7Sink>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared<S>,
    mut closing: watch::Receiver<bool>,
) {
    let idle = shared.config.idle_timeout;
    let mut conn = Connection {
        stream,
        peer,
        shared,
        framer: MllpFramer::new(shared.config.max_message_bytes),
        garbage_logged: false,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut deadline = Instant::now() + idle;
    let mut shutting_down = false;
    let mut drained = false;

    loop {
        while let Some(event) = conn.framer.next_frame() {
            shutting_down |= *closing.borrow();
            match conn.answer(event, shutting_down).await {
                Answer::Answered => deadline = Instant::now() + idle,
                Answer::Ignored => {}
                Answer::Close => return,
            }
        }
        if shutting_down {
            if drained {
                break;
            }
            // Pick up what the device already sent (or sends within a short grace), to
            // answer it AR rather than drop it silently.
            drained = true;
            let grace_end = Instant::now() + SHUTDOWN_GRACE;
            while let Ok(Ok(n @ 1..)) =
                tokio::time::timeout_at(grace_end, conn.stream.read(&mut buf)).await
            {
                conn.push(&buf[..n]);
                if !conn.framer.is_mid_frame() {
                    break;
                }
            }
            continue;
        }
        tokio::select! {
            changed = closing.changed() => {
                // An error means the listener is gone: wind down as for a shutdown.
                shutting_down = changed.is_err() || *closing.borrow();
            }
            () = tokio::time::sleep_until(deadline) => {
                bump(&shared.stats.idle_timeouts);
                debug!(%peer, mid_frame = conn.framer.is_mid_frame(), "HL7 connection idle timeout");
                return;
            }
            read = conn.stream.read(&mut buf) => match read {
                Ok(0) => {
                    if conn.framer.is_mid_frame() {
                        debug!(%peer, "HL7 peer closed the connection mid-frame");
                    }
                    return;
                }
                Ok(n) => conn.push(&buf[..n]),
                Err(e) => {
                    debug!(%peer, error = %e, "HL7 connection read failed");
                    return;
                }
            },
        }
    }
    let _ = conn.stream.shutdown().await;
}

enum Answer {
    /// A message was answered (or deliberately not, per MSH-15/16).
    Answered,
    /// Nothing to answer (empty frame).
    Ignored,
    /// The connection is unusable.
    Close,
}

impl<S: Hl7Sink> Connection<'_, S> {
    fn push(&mut self, bytes: &[u8]) {
        self.framer.push(bytes);
        let garbage = self.framer.take_garbage();
        if garbage > 0 {
            self.shared
                .stats
                .garbage_bytes
                .fetch_add(garbage, Ordering::Relaxed);
            if !self.garbage_logged {
                self.garbage_logged = true;
                warn!(peer = %self.peer, bytes = garbage, "skipping bytes outside MLLP frames (logged once per connection)");
            }
        }
    }

    async fn answer(&mut self, event: Result<Vec<u8>, FrameError>, shutting_down: bool) -> Answer {
        let stats = &self.shared.stats;
        let (inbound, outcome) = match event {
            Ok(frame) if frame.iter().all(u8::is_ascii_whitespace) => {
                debug!(peer = %self.peer, "empty MLLP frame ignored");
                return Answer::Ignored;
            }
            Ok(frame) => self.handle_message(&frame, shutting_down).await,
            Err(FrameError::TooLarge { limit, header }) => {
                bump(&stats.frames_too_large);
                warn!(peer = %self.peer, limit, "HL7 message larger than the limit rejected");
                let inbound = header.as_deref().map(header_of).unwrap_or_default();
                let text = format!("message larger than the {limit} bytes this receiver accepts");
                (
                    inbound,
                    AckOutcome::Rejected {
                        code: ErrorCode::ApplicationInternalError,
                        text,
                    },
                )
            }
        };
        match &outcome {
            AckOutcome::Accepted => bump(&stats.messages_accepted),
            AckOutcome::Error {
                location,
                code,
                text,
            } => {
                bump(&stats.messages_errored);
                info!(
                    peer = %self.peer,
                    code = code.code(),
                    location = %location.as_ref().map(ToString::to_string).unwrap_or_default(),
                    reason = %text,
                    "HL7 message has errors"
                );
            }
            AckOutcome::Rejected { code, text } => {
                bump(&stats.messages_rejected);
                debug!(peer = %self.peer, code = code.code(), reason = %text, "HL7 message rejected");
            }
        }
        self.write_ack(&inbound, &outcome).await
    }

    /// Decides the outcome of one complete message; delivers it when everything allows.
    async fn handle_message(
        &self,
        frame: &[u8],
        shutting_down: bool,
    ) -> (InboundHeader, AckOutcome) {
        let reject = |text: &str| AckOutcome::Rejected {
            code: ErrorCode::ApplicationInternalError,
            text: text.to_owned(),
        };
        if shutting_down {
            return (header_of(frame), reject("shutting down"));
        }
        if self
            .shared
            .limiter
            .check_key(&self.peer.ip().to_canonical())
            .is_err()
        {
            bump(&self.shared.stats.rate_limited);
            return (header_of(frame), reject("rate limit exceeded"));
        }
        let message = match Message::parse(frame) {
            Ok(message) => message,
            Err(e) => {
                let outcome = AckOutcome::Error {
                    location: e.location(),
                    code: e.code(),
                    text: e.to_string(),
                };
                return (header_of(frame), outcome);
            }
        };
        let inbound = InboundHeader::from_message(&message);
        let pcd = match pcd::interpret(&message) {
            Ok(pcd) => pcd,
            Err(e) => return (inbound, e.outcome()),
        };
        let outcome = match self.shared.sink.deliver(pcd, self.peer).await {
            Ok(()) => AckOutcome::Accepted,
            Err(Refusal::Invalid {
                segment,
                field,
                text,
            }) => AckOutcome::Error {
                location: Some(locate(&message, &segment, field)),
                code: ErrorCode::ApplicationInternalError,
                text,
            },
            Err(Refusal::Unavailable { text }) => reject(&text),
        };
        (inbound, outcome)
    }

    async fn write_ack(&mut self, inbound: &InboundHeader, outcome: &AckOutcome) -> Answer {
        let config = &self.shared.config;
        let control_id = self
            .shared
            .next_ack_id
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let timestamp = hl7_timestamp(now);
        let request = AckRequest {
            inbound,
            outcome,
            mode: config.ack_mode_for(&inbound.application_namespace),
            application: &config.application,
            facility: &config.facility,
            timestamp: &timestamp,
            control_id: &control_id,
        };
        let Some(ack) = build_ack(&request) else {
            debug!(peer = %self.peer, control_id = %inbound.control_id, "no ACK requested");
            return Answer::Answered;
        };
        debug!(peer = %self.peer, control_id = %inbound.control_id, code = %ack.code, "HL7 ACK");
        let framed = mllp::encode(&ack.message);
        match tokio::time::timeout(config.idle_timeout, self.stream.write_all(&framed)).await {
            Ok(Ok(())) => Answer::Answered,
            Ok(Err(e)) => {
                debug!(peer = %self.peer, error = %e, "writing the HL7 ACK failed");
                Answer::Close
            }
            Err(_) => {
                debug!(peer = %self.peer, "writing the HL7 ACK timed out");
                Answer::Close
            }
        }
    }
}

/// The inbound header for an ACK when the full message is not available; an empty header
/// (ACK with empty MSA-2) when not even the MSH is readable.
fn header_of(frame: &[u8]) -> InboundHeader {
    Message::parse_header(frame)
        .map(|m| InboundHeader::from_message(&m))
        .unwrap_or_default()
}

/// ERR-2 for a sink refusal: the segment's sequence is given when the message has exactly
/// one segment with that id (a [`Refusal`] does not say which occurrence it means).
fn locate(message: &Message, segment: &str, field: u16) -> ErrorLocation {
    let sequence = (message.segments(segment).count() == 1).then_some(1);
    ErrorLocation::new(segment, sequence, (field > 0).then_some(field))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    const SYNTHETIC: &str = include_str!("testdata/pcd01_synthetic.hl7");
    const MULTI_OBR: &str = include_str!("testdata/pcd01_multi_obr.hl7");
    const ALARM: &str = include_str!("testdata/pcd04_alarm.hl7");
    const WAIT: Duration = Duration::from_secs(10);

    #[derive(Default)]
    struct RecordingSink {
        delivered: Mutex<Vec<(String, SocketAddr)>>,
    }

    impl RecordingSink {
        fn control_ids(&self) -> Vec<String> {
            self.delivered
                .lock()
                .unwrap()
                .iter()
                .map(|(c, _)| c.clone())
                .collect()
        }
    }

    impl Hl7Sink for RecordingSink {
        async fn deliver(&self, msg: PcdMessage, peer: SocketAddr) -> Result<(), Refusal> {
            self.delivered
                .lock()
                .unwrap()
                .push((msg.header().control_id.clone(), peer));
            Ok(())
        }
    }

    struct RefusingSink(Refusal);

    impl Hl7Sink for RefusingSink {
        async fn deliver(&self, _msg: PcdMessage, _peer: SocketAddr) -> Result<(), Refusal> {
            Err(self.0.clone())
        }
    }

    /// Holds every delivery until released; records started and completed deliveries.
    #[derive(Default)]
    struct GatedSink {
        started: Notify,
        release: Notify,
        completed: Mutex<Vec<String>>,
    }

    impl Hl7Sink for GatedSink {
        async fn deliver(&self, msg: PcdMessage, _peer: SocketAddr) -> Result<(), Refusal> {
            self.started.notify_one();
            self.release.notified().await;
            self.completed
                .lock()
                .unwrap()
                .push(msg.header().control_id.clone());
            Ok(())
        }
    }

    struct Server {
        addr: SocketAddr,
        stats: Arc<ListenerStats>,
        shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), Hl7Error>>,
    }

    fn config() -> ListenerConfig {
        ListenerConfig::new("WARDGATE", "EDGE")
    }

    async fn start<S: Hl7Sink>(config: ListenerConfig, sink: Arc<S>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::new());
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, config, sink, Arc::clone(&stats), rx));
        Server {
            addr,
            stats,
            shutdown,
            task,
        }
    }

    fn cr(text: &str) -> String {
        text.replace('\n', "\r")
    }

    fn message(msh_tail: &str, control_id: &str) -> String {
        format!(
            "MSH|^~\\&|MONITOR^0011223344556677^EUI-64||||20250101120000||ORU^R01^ORU_R01|{control_id}|P|2.6{msh_tail}\r\
             OBR|1|||182777000^monitoring of patient^SCT|||20250101120000\r\
             OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R\r"
        )
    }

    /// Original-mode message (MSH-15/16 empty).
    fn original(control_id: &str) -> String {
        message("", control_id)
    }

    struct Ack {
        code: String,
        acked_control_id: String,
        message_type: String,
        err: Option<(String, String)>,
        text: String,
    }

    /// A device: one connection with its own MLLP framer for the ACKs.
    struct Client {
        stream: TcpStream,
        framer: MllpFramer,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> Client {
            Client {
                stream: TcpStream::connect(addr).await.unwrap(),
                framer: MllpFramer::new(1 << 20),
            }
        }

        async fn send(&mut self, msg: &str) {
            self.stream
                .write_all(&mllp::encode(msg.as_bytes()))
                .await
                .unwrap();
        }

        async fn read_ack(&mut self) -> Ack {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(frame) = self.framer.next_frame() {
                    let frame = frame.unwrap();
                    let msg = Message::parse(&frame).unwrap();
                    let msa = msg.segment("MSA").unwrap();
                    let err = msg.segment("ERR").map(|e| {
                        (
                            e.field(2).raw().to_owned(),
                            e.field(3).component(1, 1).into_owned(),
                        )
                    });
                    return Ack {
                        code: msa.field(1).value().into_owned(),
                        acked_control_id: msa.field(2).value().into_owned(),
                        message_type: msg.msh().field(9).raw().to_owned(),
                        err,
                        text: String::from_utf8(frame).unwrap(),
                    };
                }
                let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
                    .await
                    .expect("ACK in time")
                    .unwrap();
                assert!(n > 0, "connection closed before an ACK arrived");
                self.framer.push(&buf[..n]);
            }
        }

        /// Waits until the server closes the connection (EOF or reset), failing on data.
        async fn expect_closed(&mut self) {
            assert!(
                self.framer.next_frame().is_none(),
                "unread ACK before the close"
            );
            let mut buf = [0u8; 64];
            match tokio::time::timeout(WAIT, self.stream.read(&mut buf))
                .await
                .expect("close in time")
            {
                Ok(0) | Err(_) => {}
                Ok(n) => panic!("expected the connection to close, got {n} bytes"),
            }
        }
    }

    async fn wait_until(condition: impl Fn() -> bool) {
        let give_up = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < give_up, "condition not reached in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(server: Server) -> ListenerStatsSnapshot {
        server.shutdown.send(true).unwrap();
        tokio::time::timeout(WAIT, server.task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
        server.stats.snapshot()
    }

    #[tokio::test]
    async fn accepts_and_acknowledges_after_delivery() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;

        client.send(&original("CTRL-1")).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AA", "CTRL-1")
        );
        assert_eq!(ack.message_type, "ACK^R01^ACK");
        assert!(ack
            .text
            .starts_with("MSH|^~\\&|WARDGATE|EDGE|MONITOR^0011223344556677^EUI-64|"));
        assert_eq!(sink.control_ids(), vec!["CTRL-1".to_owned()]);

        // The PCD fixtures use AL/NE: enhanced mode, commit ACK.
        client.send(&cr(SYNTHETIC)).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("CA", "1")
        );
        client.send(&cr(MULTI_OBR)).await;
        assert_eq!(client.read_ack().await.code, "CA");
        client.send(&cr(ALARM)).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.message_type.as_str()),
            ("CA", "ACK^R40^ACK")
        );
        assert_eq!(
            sink.control_ids(),
            ["CTRL-1", "1", "BM-000481516", "BM-AL-000007"]
                .map(String::from)
                .to_vec()
        );
        assert_eq!(
            sink.delivered.lock().unwrap()[0].1.ip(),
            client.stream.local_addr().unwrap().ip()
        );

        drop(client);
        let stats = stop(server).await;
        assert_eq!(stats.messages_accepted, 4);
        assert_eq!(stats.connections_accepted, 1);
        assert_eq!(stats.connections_active, 0);
    }

    #[tokio::test]
    async fn positive_ack_only_after_deliver_returned() {
        let sink = Arc::new(GatedSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client.send(&original("G1")).await;
        sink.started.notified().await;
        assert!(sink.completed.lock().unwrap().is_empty());
        sink.release.notify_one();
        let ack = client.read_ack().await;
        assert_eq!(ack.code, "AA");
        // The ACK exists, so delivery had completed before it was written.
        assert_eq!(*sink.completed.lock().unwrap(), vec!["G1".to_owned()]);
        drop(client);
        stop(server).await;
    }

    #[tokio::test]
    async fn malformed_messages_get_ae_with_location() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;

        let bad_number = original("BAD1").replace("|97|", "|ninety|");
        client.send(&bad_number).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AE", "BAD1")
        );
        assert_eq!(ack.err, Some(("OBX^1^5".to_owned(), "102".to_owned())));
        assert!(!ack.text.contains("ninety"), "the ACK never quotes content");

        // A raw line break inside a value: unparseable body, but MSH-10 is still echoed.
        let broken = format!("{}NTE|1||first line\rsecond line\r", original("BAD2"));
        client.send(&broken).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AE", "BAD2")
        );
        assert_eq!(ack.err.unwrap().1, "100");

        // Not even an MSH: AE with an empty MSA-2.
        client.send("hello").await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AE", "")
        );

        // Enhanced mode turns AE into CE.
        client.send(&cr(SYNTHETIC).replace("|97|", "|x|")).await;
        assert_eq!(client.read_ack().await.code, "CE");

        assert!(sink.control_ids().is_empty());
        drop(client);
        let stats = stop(server).await;
        assert_eq!(stats.messages_errored, 4);
    }

    #[tokio::test]
    async fn unsupported_types_get_ar_200() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client
            .send(&original("ADT1").replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"))
            .await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AR", "ADT1")
        );
        assert_eq!(ack.message_type, "ACK^A01^ACK");
        assert_eq!(ack.err.unwrap().1, "200");
        assert!(sink.control_ids().is_empty());
        drop(client);
        assert_eq!(stop(server).await.messages_rejected, 1);
    }

    #[tokio::test]
    async fn sink_refusals_map_to_ae_and_ar() {
        let invalid = Refusal::Invalid {
            segment: "PID".into(),
            field: 3,
            text: "no usable patient identifier".into(),
        };
        let server = start(config(), Arc::new(RefusingSink(invalid))).await;
        let mut client = Client::connect(server.addr).await;
        client.send(&cr(SYNTHETIC)).await;
        let ack = client.read_ack().await;
        assert_eq!(ack.code, "CE");
        assert_eq!(ack.err, Some(("PID^1^3".to_owned(), "207".to_owned())));
        assert!(ack.text.contains("no usable patient identifier"));
        drop(client);
        stop(server).await;

        let unavailable = Refusal::Unavailable {
            text: "spool full".into(),
        };
        let server = start(config(), Arc::new(RefusingSink(unavailable))).await;
        let mut client = Client::connect(server.addr).await;
        client.send(&original("U1")).await;
        let ack = client.read_ack().await;
        assert_eq!(ack.code, "AR");
        assert!(ack.text.contains("spool full"));
        drop(client);
        stop(server).await;
    }

    #[tokio::test]
    async fn oversized_frame_gets_ar_and_the_connection_resyncs() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(
            ListenerConfig {
                max_message_bytes: 400,
                ..config()
            },
            Arc::clone(&sink),
        )
        .await;
        let mut client = Client::connect(server.addr).await;
        let big = format!("{}NTE|1||{}\r", original("BIG1"), "x".repeat(5000));
        client.send(&big).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AR", "BIG1")
        );
        assert!(ack.text.contains("larger than the 400 bytes"));
        client.send(&original("SMALL1")).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AA", "SMALL1")
        );
        assert_eq!(sink.control_ids(), vec!["SMALL1".to_owned()]);
        drop(client);
        let stats = stop(server).await;
        assert_eq!((stats.frames_too_large, stats.messages_rejected), (1, 1));
    }

    #[tokio::test]
    async fn garbage_is_skipped_and_counted() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client
            .stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        client.send(&original("AFTER-GARBAGE")).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("AA", "AFTER-GARBAGE")
        );
        // An empty frame is ignored; the next message is answered normally.
        client.stream.write_all(&mllp::encode(b"")).await.unwrap();
        client.send(&original("AFTER-EMPTY")).await;
        assert_eq!(client.read_ack().await.acked_control_id, "AFTER-EMPTY");
        drop(client);
        let stats = stop(server).await;
        assert_eq!(stats.garbage_bytes, 18);
        assert_eq!(stats.messages_accepted, 2);
    }

    #[tokio::test]
    async fn no_ack_when_the_sender_asks_for_none_and_per_device_override() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client.send(&message("|||NE|NE", "SILENT")).await;
        client.send(&message("|||AL|NE", "LOUD")).await;
        let ack = client.read_ack().await;
        assert_eq!(
            (ack.code.as_str(), ack.acked_control_id.as_str()),
            ("CA", "LOUD")
        );
        assert_eq!(
            sink.control_ids(),
            vec!["SILENT".to_owned(), "LOUD".to_owned()]
        );
        drop(client);
        stop(server).await;

        let mut overrides = HashMap::new();
        overrides.insert("MONITOR".to_owned(), AckMode::OriginalAlways);
        let server = start(
            ListenerConfig {
                ack_mode_by_application: overrides,
                ..config()
            },
            Arc::clone(&sink),
        )
        .await;
        let mut client = Client::connect(server.addr).await;
        client.send(&message("|||AL|NE", "FORCED")).await;
        assert_eq!(client.read_ack().await.code, "AA");
        client.send(&cr(MULTI_OBR)).await;
        assert_eq!(
            client.read_ack().await.code,
            "CA",
            "other devices keep Auto"
        );
        drop(client);
        stop(server).await;
    }

    #[tokio::test]
    async fn rate_limit_answers_ar_and_keeps_the_connection() {
        let sink = Arc::new(RecordingSink::default());
        let config = ListenerConfig {
            rate_per_source_per_sec: NonZeroU32::new(1).unwrap(),
            rate_burst: NonZeroU32::new(2).unwrap(),
            ..config()
        };
        let server = start(config, Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        let mut codes = Vec::new();
        for i in 0..3 {
            client.send(&original(&format!("R{i}"))).await;
            let ack = client.read_ack().await;
            if ack.code == "AR" {
                assert!(ack.text.contains("rate limit exceeded"));
                assert_eq!(ack.acked_control_id, format!("R{i}"));
            }
            codes.push(ack.code);
        }
        assert_eq!(codes, ["AA", "AA", "AR"]);
        // The budget is per source: a second connection from the same IP is limited too.
        let mut second = Client::connect(server.addr).await;
        second.send(&original("R3")).await;
        assert_eq!(second.read_ack().await.code, "AR");
        assert_eq!(sink.control_ids().len(), 2);
        drop((client, second));
        let stats = stop(server).await;
        assert_eq!(stats.rate_limited, 2);
    }

    #[tokio::test]
    async fn slow_loris_is_closed_while_others_are_served() {
        let sink = Arc::new(RecordingSink::default());
        let idle = Duration::from_millis(400);
        let server = start(
            ListenerConfig {
                idle_timeout: idle,
                ..config()
            },
            Arc::clone(&sink),
        )
        .await;

        // The loris sends one byte every 100 ms: it would need about 20 s to complete its
        // frame, far beyond WAIT. Its bytes keep arriving, yet it must be cut off after the
        // idle timeout, while a busy client on another connection keeps being served.
        let (mut loris_rd, mut loris_wr) =
            TcpStream::connect(server.addr).await.unwrap().into_split();
        let framed = mllp::encode(original("LORIS").as_bytes());
        let trickle = tokio::spawn(async move {
            for byte in framed {
                if loris_wr.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let closed = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            matches!(loris_rd.read(&mut buf).await, Ok(0) | Err(_))
        });

        let mut busy = Client::connect(server.addr).await;
        let give_up = Instant::now() + WAIT;
        let mut served_after_close = 0;
        let mut i = 0;
        while served_after_close < 3 {
            assert!(
                Instant::now() < give_up,
                "the slow-loris connection was not closed"
            );
            let loris_gone = closed.is_finished();
            busy.send(&original(&format!("BUSY{i}"))).await;
            assert_eq!(busy.read_ack().await.code, "AA");
            if loris_gone {
                served_after_close += 1;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            closed.await.unwrap(),
            "the loris got data instead of a close"
        );
        trickle.abort();
        assert!(!sink.control_ids().contains(&"LORIS".to_owned()));
        drop(busy);
        let stats = stop(server).await;
        assert_eq!(stats.idle_timeouts, 1);
    }

    #[tokio::test]
    async fn silent_connection_is_closed_after_idle_timeout() {
        let server = start(
            ListenerConfig {
                idle_timeout: Duration::from_millis(200),
                ..config()
            },
            Arc::new(RecordingSink::default()),
        )
        .await;
        let mut silent = Client::connect(server.addr).await;
        silent.expect_closed().await;
        assert_eq!(stop(server).await.idle_timeouts, 1);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed() {
        let sink = Arc::new(RecordingSink::default());
        let server = start(
            ListenerConfig {
                max_connections: 1,
                ..config()
            },
            Arc::clone(&sink),
        )
        .await;
        let mut first = Client::connect(server.addr).await;
        first.send(&original("FIRST")).await;
        assert_eq!(
            first.read_ack().await.code,
            "AA",
            "the first connection holds the only slot"
        );
        let mut second = Client::connect(server.addr).await;
        second.expect_closed().await;
        first.send(&original("FIRST-AGAIN")).await;
        assert_eq!(first.read_ack().await.code, "AA");
        drop(first);
        // Once the slot is free again, a new connection is served.
        wait_until(|| server.stats.snapshot().connections_active == 0).await;
        let mut third = Client::connect(server.addr).await;
        third.send(&original("THIRD")).await;
        assert_eq!(third.read_ack().await.acked_control_id, "THIRD");
        drop(third);
        let stats = stop(server).await;
        assert_eq!(stats.connections_refused, 1);
        assert_eq!(
            sink.control_ids(),
            ["FIRST", "FIRST-AGAIN", "THIRD"].map(String::from).to_vec()
        );
    }

    #[tokio::test]
    async fn allow_list_is_enforced_on_accept() {
        let sink = Arc::new(RecordingSink::default());
        let denied = ListenerConfig {
            allow_sources: vec!["10.1.2.3".parse().unwrap()],
            ..config()
        };
        let server = start(denied, Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client.expect_closed().await;
        let stats = stop(server).await;
        assert_eq!(
            (stats.connections_denied, stats.connections_accepted),
            (1, 0)
        );

        let allowed = ListenerConfig {
            allow_sources: vec!["::ffff:127.0.0.1".parse().unwrap()],
            ..config()
        };
        let server = start(allowed, Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        client.send(&original("ALLOWED")).await;
        assert_eq!(client.read_ack().await.code, "AA");
        drop(client);
        stop(server).await;
    }

    #[tokio::test]
    async fn shutdown_finishes_in_flight_rejects_the_rest_and_exits() {
        let sink = Arc::new(GatedSink::default());
        let server = start(config(), Arc::clone(&sink)).await;
        let mut client = Client::connect(server.addr).await;
        let mut idle = Client::connect(server.addr).await;
        // Two messages back to back: the first is delivering when shutdown begins.
        client.send(&original("IN-FLIGHT")).await;
        sink.started.notified().await;
        client.send(&original("TOO-LATE")).await;
        server.shutdown.send(true).unwrap();
        sink.release.notify_one();

        let first = client.read_ack().await;
        assert_eq!(
            (first.code.as_str(), first.acked_control_id.as_str()),
            ("AA", "IN-FLIGHT")
        );
        let second = client.read_ack().await;
        assert_eq!(
            (second.code.as_str(), second.acked_control_id.as_str()),
            ("AR", "TOO-LATE")
        );
        assert!(second.text.contains("shutting down"));
        client.expect_closed().await;
        idle.expect_closed().await;
        tokio::time::timeout(WAIT, server.task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
        assert_eq!(
            *sink.completed.lock().unwrap(),
            vec!["IN-FLIGHT".to_owned()]
        );
        let stats = server.stats.snapshot();
        assert_eq!(
            (
                stats.messages_accepted,
                stats.messages_rejected,
                stats.connections_active
            ),
            (1, 1, 0)
        );
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "the listener socket is closed"
        );
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_tx, rx) = watch::channel(false);
        let result = serve(
            listener,
            ListenerConfig {
                max_connections: 0,
                ..config()
            },
            Arc::new(RecordingSink::default()),
            Arc::new(ListenerStats::new()),
            rx,
        )
        .await;
        assert!(matches!(result, Err(Hl7Error::Config(_))));
    }

    #[test]
    fn refusal_location_sequence_only_when_unambiguous() {
        let msg = Message::parse(cr(MULTI_OBR).as_bytes()).unwrap();
        assert_eq!(
            locate(&msg, "PID", 3),
            ErrorLocation::new("PID", Some(1), Some(3))
        );
        assert_eq!(
            locate(&msg, "OBX", 5),
            ErrorLocation::new("OBX", None, Some(5))
        );
        assert_eq!(
            locate(&msg, "PID", 0),
            ErrorLocation::new("PID", Some(1), None)
        );
    }
}
