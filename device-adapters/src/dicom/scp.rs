//! The C-STORE SCP driver: a thin tokio layer around [`negotiate`] and
//! [`dimse`].
//!
//! Flow per association: read the A-ASSOCIATE-RQ → decide (access control, contexts) →
//! AC or RJ → read PDUs; each P-DATA fragment goes through the [`Assembler`]: a command is
//! answered, a data set is encrypted ([`Sealer`]) and appended to a temporary file as it
//! arrives, and a complete object is handed to [`DicomSink::store`] → C-STORE-RSP. One
//! DIMSE operation is in flight per association (no asynchronous operations window is
//! negotiated), so the next message is read only after the previous response was
//! written.
//!
//! **Invariants: a C-STORE-RSP with status success is written only after `store`
//! returned `Ok(())`; only ciphertext is written to a temporary file, under a key
//! generated for that object and kept in memory only (see [`super::sealed`]).**
//!
//! Decisions:
//! - **Association cap**: over `max_associations`, the association request is still read
//!   (for at most 5 s) and answered with A-ASSOCIATE-RJ "rejected-transient, local limit
//!   exceeded", which modalities treat as "retry later". At most
//!   [`MAX_PENDING_REJECTIONS`] such rejections are in progress at once; connections
//!   beyond that are closed without a byte, so a flood cannot spawn unbounded tasks.
//! - **Access control** is per association, after the request is read: the called AE
//!   title must be ours, the calling AE title listed, and the source address listed for
//!   it (see [`super::negotiate`]). A refused request gets the matching A-ASSOCIATE-RJ.
//! - **Idle timeout**: the request and every later PDU must arrive completely within
//!   `idle_timeout_secs` of the previous one (a PDU is at most `max_pdu_length`, so a
//!   trickling sender is cut off too); the association is then aborted (A-ABORT).
//! - **Protocol errors** (a malformed PDU, fragments out of order, an unexpected PDU
//!   type, a PDU over the limit) abort the association. None of them affects others.
//! - **Temporary files** are named `wardgate-dicom-<seed>-<n>.part` in `temp_dir`, created
//!   exclusively with owner-only permissions, written in sealed chunks of
//!   [`CHUNK_LEN`](super::sealed::CHUNK_LEN) plaintext bytes, and removed by a guard on
//!   every path (after the sink returns, or when the object is not stored, including a
//!   dropped connection or a cancelled task). Leftovers of a crash are ciphertext whose
//!   key is gone; they are removed when [`serve`] starts, to reclaim the space.
//! - **Shutdown** (the `shutdown` watch turns `true`, or its sender is dropped): stop
//!   accepting; an object being handed to the sink is finished and answered; every
//!   association is then aborted (a partly received object is discarded; the modality
//!   sends it again later), and [`serve`] returns once every association task has ended.
//! - **Accept errors**: per-connection errors are ignored; resource errors back off
//!   exponentially from 50 ms to 5 s; after [`MAX_ACCEPT_FAILURES`] consecutive failures
//!   `serve` winds down like a shutdown and returns [`DicomScpError::Accept`].
//! - **Logging**: peers, AE titles, SOP classes, sizes and statuses; never SOP instance
//!   UIDs or object content.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::accept::{AcceptFailures, AcceptVerdict};

use super::dimse::{self, status, Assembler, Command, Disposition, Fragment, Step};
use super::negotiate::{self, Accepted, Decision};
use super::sealed::{DatasetKey, Sealer};
use super::{DicomScpConfig, DicomScpError, DicomSink, ReceivedObject};

/// Consecutive accept failures after which [`serve`] gives up (the shared accept policy).
pub use crate::accept::MAX_ACCEPT_FAILURES;
/// Over-the-cap association requests being answered with A-ASSOCIATE-RJ at once.
pub const MAX_PENDING_REJECTIONS: usize = 8;

const PART_PREFIX: &str = "wardgate-dicom-";
const PART_SUFFIX: &str = ".part";
/// Time an over-the-cap connection has to send its request before it is closed.
const REJECTION_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Association PDUs (request, release, abort) may be larger than a small
/// `max_pdu_length`: a request proposing 128 contexts is ~15 KiB.
const MIN_PDU_LIMIT: usize = 64 * 1024;
const PDU_HEADER_LEN: usize = 6;

/// Receiver counters, updated live. Share an `Arc` with [`serve`] and read
/// [`snapshot`](Self::snapshot)s.
#[derive(Debug, Default)]
pub struct DicomScpStats {
    associations_accepted: AtomicU64,
    associations_active: AtomicU64,
    associations_rejected: AtomicU64,
    associations_busy: AtomicU64,
    associations_aborted: AtomicU64,
    idle_timeouts: AtomicU64,
    protocol_errors: AtomicU64,
    echoes: AtomicU64,
    objects_stored: AtomicU64,
    objects_failed: AtomicU64,
    objects_too_large: AtomicU64,
    objects_truncated: AtomicU64,
    bytes_stored: AtomicU64,
}

/// A point-in-time copy of [`DicomScpStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DicomScpStatsSnapshot {
    /// Associations accepted (A-ASSOCIATE-AC sent).
    pub associations_accepted: u64,
    /// Associations currently open.
    pub associations_active: u64,
    /// Association requests rejected by access control or negotiation.
    pub associations_rejected: u64,
    /// Connections refused because `max_associations` were open (answered
    /// A-ASSOCIATE-RJ transient, or closed when too many were waiting for that).
    pub associations_busy: u64,
    /// Associations that ended in an abort (by either side) or a dropped connection
    /// rather than a release.
    pub associations_aborted: u64,
    /// Associations aborted because no PDU arrived in time.
    pub idle_timeouts: u64,
    /// Associations aborted for a protocol violation.
    pub protocol_errors: u64,
    /// C-ECHO requests answered.
    pub echoes: u64,
    /// Objects the sink stored (answered success).
    pub objects_stored: u64,
    /// Objects answered with a failure status (sink refusal, size limit, unsupported).
    pub objects_failed: u64,
    /// Objects over `max_object_bytes` (also counted in `objects_failed`).
    pub objects_too_large: u64,
    /// Objects whose association ended before their last fragment.
    pub objects_truncated: u64,
    /// Data set bytes of stored objects.
    pub bytes_stored: u64,
}

impl DicomScpStats {
    /// Zeroed counters.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads all counters (each is exact; together they are not one atomic view).
    #[must_use]
    pub fn snapshot(&self) -> DicomScpStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DicomScpStatsSnapshot {
            associations_accepted: get(&self.associations_accepted),
            associations_active: get(&self.associations_active),
            associations_rejected: get(&self.associations_rejected),
            associations_busy: get(&self.associations_busy),
            associations_aborted: get(&self.associations_aborted),
            idle_timeouts: get(&self.idle_timeouts),
            protocol_errors: get(&self.protocol_errors),
            echoes: get(&self.echoes),
            objects_stored: get(&self.objects_stored),
            objects_failed: get(&self.objects_failed),
            objects_too_large: get(&self.objects_too_large),
            objects_truncated: get(&self.objects_truncated),
            bytes_stored: get(&self.bytes_stored),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Log damping for events a peer can repeat at will: the 1st, 2nd, 4th, 8th, ... occurrence.
fn worth_logging(previous_count: u64) -> bool {
    (previous_count + 1).is_power_of_two()
}

struct Shared<S> {
    config: DicomScpConfig,
    sink: Arc<S>,
    stats: Arc<DicomScpStats>,
    idle_timeout: Duration,
    pdu_limit: usize,
    part_seed: u64,
    next_part: AtomicU64,
}

/// Serves DICOM associations from `listener` until `shutdown` turns `true` (or its sender
/// is dropped), then winds down as described in the module documentation and returns
/// once every association has ended. `stats` is updated as it goes. The listener is
/// passed in (bound to `config.listen` by the caller) so that tests can bind port 0.
///
/// # Errors
/// [`DicomScpError::Config`] or [`DicomScpError::TempDir`] before serving anything;
/// [`DicomScpError::Accept`] after persistent accept failures (associations are wound
/// down first).
pub async fn serve<S: DicomSink>(
    listener: TcpListener,
    config: DicomScpConfig,
    sink: Arc<S>,
    stats: Arc<DicomScpStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DicomScpError> {
    config.validate().map_err(DicomScpError::Config)?;
    remove_leftover_parts(&config.temp_dir).await?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let shared = Arc::new(Shared {
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        pdu_limit: usize::try_from(config.max_pdu_length)
            .unwrap_or(usize::MAX)
            .max(MIN_PDU_LIMIT),
        config,
        sink,
        stats,
        part_seed: seed ^ u64::from(std::process::id()),
        next_part: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(shared.config.max_associations));
    let rejections = Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut associations = JoinSet::new();
    let mut accept_failures = AcceptFailures::default();
    if let Ok(local) = listener.local_addr() {
        info!(%local, ae_title = %shared.config.ae_title, "DICOM storage SCP started");
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
                    admit(stream, peer, &permits, &rejections, &shared, &closing_rx, &mut associations);
                }
                Err(e) => match accept_failures.failed(&e) {
                    AcceptVerdict::Ignore => debug!(error = %e, "accept: connection failed early"),
                    AcceptVerdict::GiveUp => {
                        error!(error = %e, "DICOM SCP cannot accept connections; stopping");
                        break Err(DicomScpError::Accept(e));
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
            Some(ended) = associations.join_next() => log_task_end(ended),
        }
    };

    drop(listener);
    // Association tasks hold receivers, so this cannot fail.
    let _ = closing_tx.send(true);
    while let Some(ended) = associations.join_next().await {
        log_task_end(ended);
    }
    info!("DICOM storage SCP stopped");
    result
}

/// Removes `*.part` files a previous run left behind (a crash mid-object or mid-store):
/// unreadable ciphertext, but it takes space.
async fn remove_leftover_parts(dir: &Path) -> Result<(), DicomScpError> {
    let fail = |source| DicomScpError::TempDir {
        path: dir.to_owned(),
        source,
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(fail)?;
    let mut removed = 0u64;
    while let Some(entry) = entries.next_entry().await.map_err(fail)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PART_PREFIX) && name.ends_with(PART_SUFFIX) {
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            }
        }
    }
    if removed > 0 {
        info!(removed, dir = %dir.display(), "removed partly received DICOM objects left by a previous run");
    }
    Ok(())
}

fn log_task_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            error!("DICOM association task panicked");
        }
    }
}

fn admit<S: DicomSink>(
    stream: TcpStream,
    peer: SocketAddr,
    permits: &Arc<Semaphore>,
    rejections: &Arc<Semaphore>,
    shared: &Arc<Shared<S>>,
    closing: &watch::Receiver<bool>,
    associations: &mut JoinSet<()>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "could not set TCP_NODELAY");
    }
    let stats = &shared.stats;
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        let before = stats.associations_busy.fetch_add(1, Ordering::Relaxed);
        if worth_logging(before) {
            warn!(%peer, max = shared.config.max_associations, busy = before + 1,
                "DICOM association limit reached; rejecting");
        }
        if let Ok(slot) = Arc::clone(rejections).try_acquire_owned() {
            let mut closing = closing.clone();
            associations.spawn(async move {
                let _slot: OwnedSemaphorePermit = slot;
                tokio::select! {
                    () = reject_busy(stream) => {}
                    () = wait_closing(&mut closing) => {}
                }
            });
        }
        return;
    };
    let shared = Arc::clone(shared);
    let closing = closing.clone();
    associations.spawn(async move {
        let _permit: OwnedSemaphorePermit = permit;
        let _active = ActiveGuard::new(&shared.stats);
        let mut conn = Connection {
            stream,
            peer,
            shared: &shared,
            buf: Vec::new(),
            closing,
        };
        conn.run().await;
    });
}

/// Reads the request of an association over the cap and answers it with a transient
/// rejection. The request may be at most [`MIN_PDU_LIMIT`] long (ample for one), so that
/// pending rejections hold little memory whatever `max_pdu_length` is.
async fn reject_busy(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        REJECTION_READ_TIMEOUT,
        read_pdu(&mut stream, &mut buf, MIN_PDU_LIMIT),
    )
    .await;
    if let Ok(Ok(negotiate::PDU_ASSOCIATE_RQ)) = read {
        let _ = stream.write_all(&negotiate::encode_busy_rejection()).await;
        let _ = stream.shutdown().await;
    }
}

struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(stats: &'a DicomScpStats) -> Self {
        bump(&stats.associations_active);
        ActiveGuard(&stats.associations_active)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why reading a PDU failed.
#[derive(Debug)]
enum ReadFailure {
    /// The peer closed the connection between PDUs.
    Closed,
    /// The peer closed the connection inside a PDU.
    Truncated,
    /// The PDU is longer than we accept.
    TooLong(u64),
    /// The socket failed.
    Io(std::io::Error),
}

/// Reads one whole PDU (header included) into `buf` and returns its type.
async fn read_pdu(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<u8, ReadFailure> {
    let mut header = [0u8; PDU_HEADER_LEN];
    let mut have = 0;
    while have < PDU_HEADER_LEN {
        match stream.read(&mut header[have..]).await {
            Ok(0) if have == 0 => return Err(ReadFailure::Closed),
            Ok(0) => return Err(ReadFailure::Truncated),
            Ok(n) => have += n,
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    let body_len = usize::try_from(len).unwrap_or(usize::MAX);
    if body_len > limit {
        return Err(ReadFailure::TooLong(u64::from(len)));
    }
    // Resizing zero-fills only beyond the previous PDU's length: full-sized data PDUs
    // in a row cost no fill.
    buf.resize(PDU_HEADER_LEN + body_len, 0);
    buf[..PDU_HEADER_LEN].copy_from_slice(&header);
    match stream.read_exact(&mut buf[PDU_HEADER_LEN..]).await {
        Ok(_) => Ok(header[0]),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(ReadFailure::Truncated),
        Err(e) => Err(ReadFailure::Io(e)),
    }
}

/// A temporary file that is removed when dropped (whatever the sink left at its path).
struct PartFile {
    path: PathBuf,
}

impl Drop for PartFile {
    fn drop(&mut self) {
        // A synchronous unlink: cheap, and it must also happen when the task is cancelled.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != ErrorKind::NotFound {
                warn!(path = %self.path.display(), error = %e, "could not remove a temporary DICOM file");
            }
        }
    }
}

/// A temporary file being written: plaintext in, sealed chunks out to the file.
struct PartWriter {
    file: tokio::fs::File,
    sealer: Sealer,
    key: DatasetKey,
}

impl PartWriter {
    /// Encrypts and appends `data`. A sealed chunk is written out as soon as it is
    /// complete; the sealer's buffer is reused, so nothing is allocated here.
    async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if let Some(sealed) = self.sealer.push(&mut data)? {
                self.file.write_all(sealed).await?;
            }
        }
        Ok(())
    }

    /// Seals and writes the last chunk and waits for every write to reach the file.
    /// Returns the key and the plaintext length.
    async fn finish(self) -> std::io::Result<(DatasetKey, u64)> {
        let PartWriter {
            mut file,
            sealer,
            key,
        } = self;
        let (tail, len) = sealer.finish()?;
        file.write_all(&tail).await?;
        file.flush().await?;
        Ok((key, len))
    }
}

/// The object whose data set is being received.
struct Incoming {
    command: Command,
    transfer_syntax: String,
    /// The open file and its removal guard; `None` when the data set is being discarded.
    file: Option<(PartWriter, PartFile)>,
    /// How the object will be answered if it is not stored.
    refusal: Option<(u16, String)>,
}

/// Why an association cannot go on.
enum Fault {
    /// The peer broke the protocol: abort.
    Protocol(String),
    /// The connection failed (a write did not go through): just close.
    Connection(std::io::Error),
}

/// How an association ended (for the log and the counters).
enum End {
    Released,
    Aborted,
}

struct Connection<'a, S> {
    stream: TcpStream,
    peer: SocketAddr,
    shared: &'a Shared<S>,
    buf: Vec<u8>,
    closing: watch::Receiver<bool>,
}

/// Outcome of waiting for the next PDU.
enum Next {
    Pdu(u8),
    Stop,
}

impl<S: DicomSink> Connection<'_, S> {
    async fn run(&mut self) {
        let shared = self.shared;
        let stats = &shared.stats;
        let first = match self.next_pdu().await {
            Next::Pdu(kind) => kind,
            Next::Stop => return,
        };
        if first != negotiate::PDU_ASSOCIATE_RQ {
            self.protocol_error("the first PDU is not an A-ASSOCIATE-RQ")
                .await;
            return;
        }
        let decision = match negotiate::decode_request(&self.buf) {
            Ok(rq) => negotiate::decide(&rq, &self.shared.config, self.peer.ip()),
            Err(e) => {
                self.protocol_error(&e.to_string()).await;
                return;
            }
        };
        let accepted = match decision {
            Decision::Reject { pdu, reason } => {
                let before = stats.associations_rejected.fetch_add(1, Ordering::Relaxed);
                if worth_logging(before) {
                    warn!(peer = %self.peer, %reason, rejected = before + 1, "DICOM association rejected");
                }
                let _ = self.write(&pdu).await;
                let _ = self.stream.shutdown().await;
                return;
            }
            Decision::Accept(accepted) => accepted,
        };
        if self.write(&accepted.pdu).await.is_err() {
            return;
        }
        bump(&stats.associations_accepted);
        info!(
            peer = %self.peer,
            calling = %accepted.calling_ae_title,
            contexts = accepted.contexts.len(),
            "DICOM association accepted"
        );
        let end = self.serve_association(&accepted).await;
        match end {
            End::Released => debug!(peer = %self.peer, "DICOM association released"),
            End::Aborted => {
                bump(&stats.associations_aborted);
                debug!(peer = %self.peer, "DICOM association aborted");
            }
        }
    }

    /// Waits for the next PDU within the idle timeout, or for shutdown. On anything but a
    /// PDU, the association has been dealt with (aborted or closed) and counted.
    async fn next_pdu(&mut self) -> Next {
        let deadline = Instant::now() + self.shared.idle_timeout;
        let limit = self.shared.pdu_limit;
        let read = tokio::select! {
            biased;
            () = wait_closing(&mut self.closing) => None,
            read = tokio::time::timeout_at(deadline, read_pdu(&mut self.stream, &mut self.buf, limit)) => Some(read),
        };
        let Some(read) = read else {
            debug!(peer = %self.peer, "shutting down: aborting DICOM association");
            let _ = self.write(&negotiate::encode_abort()).await;
            return Next::Stop;
        };
        match read {
            Ok(Ok(kind)) => Next::Pdu(kind),
            Err(_elapsed) => {
                bump(&self.shared.stats.idle_timeouts);
                debug!(peer = %self.peer, "DICOM association idle timeout");
                let _ = self.write(&negotiate::encode_abort()).await;
                Next::Stop
            }
            Ok(Err(ReadFailure::Closed)) => {
                debug!(peer = %self.peer, "DICOM peer closed the connection");
                Next::Stop
            }
            Ok(Err(ReadFailure::Truncated)) => {
                debug!(peer = %self.peer, "DICOM peer closed the connection inside a PDU");
                Next::Stop
            }
            Ok(Err(ReadFailure::TooLong(len))) => {
                self.protocol_error(&format!("PDU of {len} bytes over the limit"))
                    .await;
                Next::Stop
            }
            Ok(Err(ReadFailure::Io(e))) => {
                debug!(peer = %self.peer, error = %e, "DICOM connection read failed");
                Next::Stop
            }
        }
    }

    async fn protocol_error(&mut self, what: &str) {
        let before = self
            .shared
            .stats
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        if worth_logging(before) {
            warn!(peer = %self.peer, error = %what, errors = before + 1, "DICOM protocol error; aborting the association");
        }
        let _ = self.write(&negotiate::encode_abort()).await;
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let written =
            tokio::time::timeout(self.shared.idle_timeout, self.stream.write_all(bytes)).await;
        match written {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(ErrorKind::TimedOut, "write timed out")),
        }
    }

    async fn serve_association(&mut self, accepted: &Accepted) -> End {
        let shared = self.shared;
        let stats = &shared.stats;
        let mut assembler = Assembler::new(self.shared.config.max_object_bytes);
        let mut incoming: Option<Incoming> = None;
        loop {
            let kind = match self.next_pdu().await {
                Next::Pdu(kind) => kind,
                Next::Stop => {
                    if incoming.take().is_some() {
                        bump(&stats.objects_truncated);
                    }
                    return End::Aborted;
                }
            };
            match kind {
                negotiate::PDU_P_DATA => {
                    // The buffer is reused for the next PDU: take it out while its
                    // fragments are handled.
                    let pdu = std::mem::take(&mut self.buf);
                    let handled = self
                        .handle_pdata(
                            &pdu[PDU_HEADER_LEN..],
                            accepted,
                            &mut assembler,
                            &mut incoming,
                        )
                        .await;
                    self.buf = pdu;
                    if let Err(fault) = handled {
                        if incoming.take().is_some() {
                            bump(&stats.objects_truncated);
                        }
                        match fault {
                            Fault::Protocol(what) => self.protocol_error(&what).await,
                            Fault::Connection(e) => {
                                debug!(peer = %self.peer, error = %e, "DICOM connection write failed");
                            }
                        }
                        return End::Aborted;
                    }
                }
                negotiate::PDU_RELEASE_RQ => {
                    if incoming.take().is_some() {
                        bump(&stats.objects_truncated);
                        debug!(peer = %self.peer, "association released in the middle of an object");
                    }
                    let _ = self.write(&negotiate::encode_release_response()).await;
                    let _ = self.stream.shutdown().await;
                    return End::Released;
                }
                negotiate::PDU_ABORT => {
                    if incoming.take().is_some() {
                        bump(&stats.objects_truncated);
                    }
                    return End::Aborted;
                }
                other => {
                    if incoming.take().is_some() {
                        bump(&stats.objects_truncated);
                    }
                    self.protocol_error(&format!("unexpected PDU type {other:#04x}"))
                        .await;
                    return End::Aborted;
                }
            }
        }
    }

    /// Handles every fragment of one P-DATA-TF PDU. `Err` is a protocol violation.
    async fn handle_pdata(
        &mut self,
        body: &[u8],
        accepted: &Accepted,
        assembler: &mut Assembler,
        incoming: &mut Option<Incoming>,
    ) -> Result<(), Fault> {
        for fragment in dimse::pdata_fragments(body) {
            let fragment = fragment.map_err(|e| Fault::Protocol(e.to_string()))?;
            let step = assembler
                .push(fragment)
                .map_err(|e| Fault::Protocol(e.to_string()))?;
            self.handle_step(step, fragment, accepted, incoming).await?;
        }
        Ok(())
    }

    async fn handle_step(
        &mut self,
        step: Step,
        fragment: Fragment<'_>,
        accepted: &Accepted,
        incoming: &mut Option<Incoming>,
    ) -> Result<(), Fault> {
        match step {
            Step::Buffered => Ok(()),
            Step::Command(command) => {
                let context = accepted.context(command.context_id);
                match dimse::dispose(&command, context.map(|c| c.abstract_syntax.as_str())) {
                    Disposition::Echo => {
                        bump(&self.shared.stats.echoes);
                        self.respond(&command, status::SUCCESS, None, accepted)
                            .await
                    }
                    Disposition::Refuse { status, comment } => {
                        self.respond(&command, status, Some(comment), accepted)
                            .await
                    }
                    // A store without a data set is refused by `dispose`.
                    Disposition::Store | Disposition::Ignore => Ok(()),
                }
            }
            Step::DataSetStarts(command) => {
                let context = accepted.context(command.context_id);
                let disposition =
                    dimse::dispose(&command, context.map(|c| c.abstract_syntax.as_str()));
                let transfer_syntax = context
                    .map(|c| c.transfer_syntax.clone())
                    .unwrap_or_default();
                let (file, refusal) = match disposition {
                    Disposition::Store => match self.create_part().await {
                        Ok(file) => (Some(file), None),
                        Err(e) => {
                            error!(error = %e, dir = %self.shared.config.temp_dir.display(), "cannot create a temporary DICOM file");
                            (None, Some(io_refusal(&e)))
                        }
                    },
                    Disposition::Refuse { status, comment } => {
                        (None, Some((status, comment.to_owned())))
                    }
                    Disposition::Echo | Disposition::Ignore => (
                        None,
                        Some((
                            status::UNRECOGNIZED_OPERATION,
                            "unexpected data set".to_owned(),
                        )),
                    ),
                };
                *incoming = Some(Incoming {
                    command,
                    transfer_syntax,
                    file,
                    refusal,
                });
                Ok(())
            }
            Step::Data {
                append,
                oversized_now,
                complete,
            } => {
                let Some(object) = incoming.as_mut() else {
                    return Err(Fault::Protocol("data without an object".to_owned()));
                };
                if oversized_now {
                    // Closing the file and removing it now frees the disk at once.
                    object.file = None;
                }
                if append {
                    if let Some((part, _)) = object.file.as_mut() {
                        if let Err(e) = part.write(fragment.bytes).await {
                            error!(error = %e, "writing a temporary DICOM file failed");
                            object.refusal = Some(io_refusal(&e));
                            object.file = None;
                        }
                    }
                }
                if let Some(done) = complete {
                    if let Some(object) = incoming.take() {
                        self.finish(object, done, accepted).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn create_part(&self) -> std::io::Result<(PartWriter, PartFile)> {
        let key = DatasetKey::generate()?;
        let sealer = Sealer::new(&key)?;
        loop {
            let n = self.shared.next_part.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "{PART_PREFIX}{:016x}-{n}{PART_SUFFIX}",
                self.shared.part_seed
            );
            let path = self.shared.config.temp_dir.join(name);
            let mut options = tokio::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            options.mode(0o600);
            match options.open(&path).await {
                Ok(file) => {
                    return Ok((PartWriter { file, sealer, key }, PartFile { path }));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers a complete object: stores it through the sink, or refuses it.
    async fn finish(
        &mut self,
        object: Incoming,
        done: dimse::Completed,
        accepted: &Accepted,
    ) -> Result<(), Fault> {
        let shared = self.shared;
        let stats = &shared.stats;
        let Incoming {
            command,
            transfer_syntax,
            file,
            refusal,
        } = object;
        if done.oversized {
            bump(&stats.objects_too_large);
            bump(&stats.objects_failed);
            let limit = self.shared.config.max_object_bytes;
            info!(peer = %self.peer, bytes = done.bytes, limit, "DICOM object over the size limit refused");
            let comment = format!("object larger than {limit} bytes");
            return self
                .respond(&command, status::OUT_OF_RESOURCES, Some(&comment), accepted)
                .await;
        }
        let (writer, part) = match (file, refusal) {
            (Some(file), None) => file,
            (_, Some((status, comment))) => {
                bump(&stats.objects_failed);
                return self
                    .respond(&command, status, Some(&comment), accepted)
                    .await;
            }
            (None, None) => {
                bump(&stats.objects_failed);
                return self
                    .respond(
                        &command,
                        status::PROCESSING_FAILURE,
                        Some("object not received"),
                        accepted,
                    )
                    .await;
            }
        };
        // Wait for the last write to reach the file (not the disk: the sink stores a
        // de-identified copy durably, and this file is deleted either way).
        let (dataset_key, dataset_len) = match writer.finish().await {
            Ok(sealed) => sealed,
            Err(e) => {
                error!(error = %e, "writing a temporary DICOM file failed");
                bump(&stats.objects_failed);
                let (status, comment) = io_refusal(&e);
                return self
                    .respond(&command, status, Some(&comment), accepted)
                    .await;
            }
        };
        let sop_class = command.affected_sop_class.clone().unwrap_or_default();
        let object = ReceivedObject {
            dataset_path: part.path.clone(),
            dataset_len,
            dataset_key,
            transfer_syntax_uid: transfer_syntax,
            sop_class_uid: sop_class.clone(),
            sop_instance_uid: command.affected_sop_instance.clone().unwrap_or_default(),
            calling_ae_title: accepted.calling_ae_title.clone(),
            peer: self.peer,
        };
        let stored = self.shared.sink.store(object).await;
        // The file goes now, before the modality hears anything (the key went with the
        // object).
        drop(part);
        match stored {
            Ok(()) => {
                bump(&stats.objects_stored);
                stats.bytes_stored.fetch_add(done.bytes, Ordering::Relaxed);
                debug!(peer = %self.peer, sop_class = %sop_class, bytes = done.bytes, "DICOM object stored");
                self.respond(&command, status::SUCCESS, None, accepted)
                    .await
            }
            Err(failure) => {
                bump(&stats.objects_failed);
                warn!(peer = %self.peer, sop_class = %sop_class, status = format_args!("{:#06x}", failure.status()), reason = %failure, "DICOM object not stored");
                self.respond(&command, failure.status(), Some(failure.text()), accepted)
                    .await
            }
        }
    }

    async fn respond(
        &mut self,
        request: &Command,
        status: u16,
        comment: Option<&str>,
        accepted: &Accepted,
    ) -> Result<(), Fault> {
        let command = dimse::encode_response(request, status, comment);
        let pdus =
            dimse::encode_command_pdus(request.context_id, &command, accepted.peer_max_pdu_length);
        self.write(&pdus).await.map_err(Fault::Connection)
    }
}

/// The status for a failed temporary-file operation: a full disk is "out of resources".
fn io_refusal(e: &std::io::Error) -> (u16, String) {
    if e.kind() == ErrorKind::StorageFull {
        (status::OUT_OF_RESOURCES, "receiver disk full".to_owned())
    } else {
        (
            status::PROCESSING_FAILURE,
            "receiver cannot write the object".to_owned(),
        )
    }
}

/// Resolves when the listener winds down (or is gone).
async fn wait_closing(closing: &mut watch::Receiver<bool>) {
    while !*closing.borrow_and_update() {
        if closing.changed().await.is_err() {
            return;
        }
    }
}
