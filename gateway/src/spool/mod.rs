//! Store-and-forward spool: a record a device hands to wardgate is made durable here
//! before the device is acknowledged, and stays here until the cloud acknowledges it.
//!
//! # Storage format
//!
//! One SQLite database at [`SpoolConfig::path`] (WAL mode, `locking_mode=EXCLUSIVE`,
//! `auto_vacuum=INCREMENTAL`, 16 KiB pages; fsync discipline below) with two tables:
//!
//! - `records(seq INTEGER PRIMARY KEY, priority INTEGER, accepted_ms INTEGER,
//!   device TEXT, payload BLOB)` — one row per record. `seq` is the rowid; `priority`
//!   is [`Priority::as_u8`]; `accepted_ms` is the Unix time (ms) at which the writer took
//!   the record; `payload` is the sanitized JSON exactly as [`Sanitized::payload`] gave
//!   it.
//! - `meta(key TEXT PRIMARY KEY, value)` — `spool.schema_version`, `spool.id` (a random
//!   64-bit spool instance id drawn when the file is created), `spool.last_seq` (see
//!   below), `spool.created_ms`, `spool.clean_shutdown`; keys `app.<name>` belong to
//!   other components ([`Spool::put_meta`]).
//!
//! A record's [`RecordId`] is `(spool.id, seq)`. Sequence numbers only grow: every
//! transaction that deletes rows also stores the highest `seq` ever assigned in
//! `spool.last_seq`, so even when every record has been acknowledged a reopened spool
//! continues above it. A spool file that is replaced (quarantine) gets a new `spool.id`,
//! so ids never collide across files either and the cloud can deduplicate on them.
//!
//! # What is durable when
//!
//! - [`Spool::append`] / [`Spool::append_many`] resolve `Ok` only after the SQLite
//!   transaction holding the record(s) has committed *and* an fdatasync of the WAL file
//!   that started after that commit has returned. A device may be acknowledged then and
//!   not before. `append_many` is one unit: all of its records commit or none do.
//! - [`Spool::ack`] and [`Spool::put_meta`] resolve after the same two steps.
//! - [`Spool::lease`] hands out only records that are already durable in that sense, so
//!   nothing reaches the cloud that a crash could still take back.
//! - Leases are memory only. Nothing about delivery progress is written until the ack.
//!
//! Group commit: one writer thread owns the connection and keeps one transaction open.
//! It applies requests to it as they arrive — appends, acks, TTL expiry, evictions, meta
//! writes, with cached prepared statements — and commits as soon as the disk is free (at
//! once under light load) or the transaction holds [`SpoolConfig::max_batch`] rows. N
//! concurrent producers therefore share one commit and one fsync. The fsync is pipelined:
//! SQLite runs with `synchronous=NORMAL` (commit = WAL write, no fsync) and a second
//! thread, the syncer, fdatasyncs the WAL and then answers the batch's waiters, while the
//! writer already fills the next transaction. This is exactly as durable as
//! `synchronous=FULL` — nobody is answered before the fsync — but the fsync latency
//! overlaps the insert work instead of adding to it, and batches grow with the load by
//! themselves (see `writer.rs` and `syncer.rs` for the argument, `benches/spool.rs` for
//! the figures). Checkpoints fsync the WAL and the database themselves.
//!
//! # What a crash can lose and duplicate
//!
//! - **Lose:** nothing whose append returned `Ok` — unless the spool's own policy removed
//!   it first (budget eviction, TTL expiry; both counted in [`SpoolStats`] and logged).
//!   A record whose append was still in flight at the crash may or may not be stored; its
//!   device was not acknowledged and will resend it. This holds against power loss as
//!   far as the disk honours fsync.
//! - **Duplicate:** records leased (handed to the uplink, perhaps delivered) but whose ack
//!   had not committed are pending again after a restart and are delivered again with
//!   the same [`RecordId`]s. Delivery is at least once; the cloud deduplicates on ids.
//!   The same happens after [`Spool::release_leases`].
//!
//! # Order
//!
//! [`Spool::lease`] hands out the highest priority class first and, within a class,
//! records in `seq` (= acceptance) order, so per-device order holds within a class.
//! Across classes it deliberately does not: an alarm overtakes older observations.
//! Leased records in a class are always a prefix of that class (see `index.rs`), so after
//! [`Spool::release_leases`] they are replayed in their original order.
//!
//! # Budget, eviction, expiry
//!
//! Each record is charged `payload + device key + RECORD_OVERHEAD_BYTES` against
//! [`SpoolConfig::budget_bytes`]. When an append would exceed the budget, the spool
//! evicts records of classes strictly *lower* than the incoming record's class, lowest
//! class first and oldest first within it, in the same transaction as the append
//! (leased records too: their later ack is a no-op). If that cannot make room — only
//! records of the same or a higher class are left — the append fails with
//! [`SpoolError::Full`] and nothing is evicted. Records older than their class's TTL are
//! deleted by the writer within about a second of expiring. The SQLite file itself is
//! larger than the budget by page slack (~10–20 %) and the WAL (bounded to 64 MiB after
//! each checkpoint). Freed pages are reused by new records; they are returned to the file
//! system by incremental vacuum, 64 MiB per second, once free pages outnumber live ones
//! four to one (typically when a backlog has drained: vacuuming moves live pages, so it
//! waits until few are left), keeping 16 MiB for reuse.
//!
//! # Damaged files
//!
//! [`Spool::open`] moves a file that is not a database, fails `PRAGMA quick_check` (run
//! whenever the previous run did not close cleanly), or fails while its records are
//! loaded, to `<name>.corrupt-<unix seconds>` (with its `-wal`), starts a fresh spool and
//! reports the quarantined path in [`OpenReport`]: the records in it are not lost but need
//! manual recovery (`sqlite3 <file> .recover`). SQLite does not checksum page contents:
//! a bit flip inside a payload is not detected here (the cloud rejects malformed JSON).
//!
//! # Memory
//!
//! The writer keeps an index of every record (40 bytes each plus queue slack, device keys
//! interned; payloads stay on disk), so a spool holding one million records costs 40–80 MB
//! of RAM, and opening it (rebuilding the index) takes well under a second.

pub mod fault;
mod index;
mod store;
mod syncer;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use wardgate_proto::{Priority, RecordId};

use crate::phi::Sanitized;

pub use index::RECORD_OVERHEAD_BYTES;

/// Largest payload plus device key the spool stores; larger records are refused with
/// [`SpoolError::TooLarge`]. HL7 v2 results, even with waveform samples, stay far below.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Bound on the writer's request queue (requests, not records). Producers beyond it wait,
/// which is the back-pressure that reaches devices as a slower ACK.
const QUEUE_CAPACITY: usize = 4096;

/// Committed batches that may wait for the syncer's fdatasync before the writer blocks.
const SYNC_QUEUE_CAPACITY: usize = 4;

/// How the spool is set up.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The SQLite file, e.g. `<data_dir>/spool.db`. Its directory is created if missing.
    pub path: PathBuf,
    /// Hard budget for stored records, in bytes (payload plus device key plus
    /// [`RECORD_OVERHEAD_BYTES`] each).
    pub budget_bytes: u64,
    /// Time to live per class, indexed by [`Priority::as_u8`]; `None` keeps records until
    /// they are acknowledged or evicted.
    pub ttl: [Option<Duration>; 4],
    /// Most rows (records written or deleted) per group commit; values below 1 count as 1.
    /// Commits normally happen whenever the disk is free; this caps a transaction that
    /// grows while the disk is slow, bounding the latency of its first waiter.
    pub max_batch: usize,
}

/// A record read back from the spool for delivery.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its stable id.
    pub id: RecordId,
    /// The device key it is ordered under.
    pub device: String,
    /// Its class.
    pub priority: Priority,
    /// When the spool took it (Unix ms).
    pub accepted_ms: u64,
    /// The sanitized payload (JSON of a `RecordBody`).
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRecord")
            .field("id", &self.id)
            .field("device", &self.device)
            .field("priority", &self.priority)
            .field("accepted_ms", &self.accepted_ms)
            .field("payload", &wardgate_device_adapters::REDACTED)
            .finish()
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Where a damaged spool file was moved, if it was: the gateway should raise an alert.
    pub quarantined: Option<PathBuf>,
    /// Records in the spool after opening (waiting for delivery).
    pub records: u64,
    /// Their budget charge in bytes.
    pub bytes: u64,
}

/// Counters and levels for metrics. Counters count since this process opened the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records held per class (index = [`Priority::as_u8`]), leased or not.
    pub records: [u64; 4],
    /// Budget charge of all held records.
    pub bytes: u64,
    /// The configured budget.
    pub budget_bytes: u64,
    /// Acceptance time of the oldest held record.
    pub oldest_accepted_ms: Option<u64>,
    /// Records evicted to make room, per class.
    pub evicted: [u64; 4],
    /// Records deleted because their class's TTL passed, per class.
    pub expired: [u64; 4],
    /// Records refused with [`SpoolError::Full`].
    pub refused_full: u64,
    /// Records currently leased (handed out, not acknowledged).
    pub leased: u64,
    /// Records accepted (their append returned `Ok`).
    pub appended_total: u64,
    /// Records deleted by acknowledgement.
    pub acked_total: u64,
    /// Write transactions committed (group commits); `appended_total / commits` is the
    /// average batch.
    pub commits: u64,
}

/// Everything that can go wrong with the spool. Cloneable: one failed group commit is
/// reported to every waiter in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// The budget is exhausted and nothing of a lower class is left to evict. Maps to an
    /// HL7 `AR` (reject, retry later).
    #[error(
        "spool full: a {} record needs {needed} bytes, the {budget}-byte budget is taken by records of its class or higher",
        .priority.name()
    )]
    Full {
        /// Class of the refused record.
        priority: Priority,
        /// Its budget charge.
        needed: u64,
        /// The configured budget.
        budget: u64,
    },
    /// The spool was closed.
    #[error("spool is closed")]
    Closed,
    /// The record (payload plus device key) exceeds [`MAX_RECORD_BYTES`], or its budget
    /// charge exceeds the whole budget, so it could never be stored. Maps to HL7 `AE`.
    #[error("record of {bytes} bytes exceeds the spool's limit of {max} bytes")]
    TooLarge {
        /// The record's size (or budget charge, when the budget is the limit).
        bytes: u64,
        /// The limit it exceeds.
        max: u64,
    },
    /// Another process holds the spool file open.
    #[error("spool {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// The spool was written by a newer wardgate.
    #[error("spool schema version {found} is newer than the {supported} this build supports")]
    UnsupportedSchema {
        /// Version found in the file.
        found: i64,
        /// Version this build writes.
        supported: i64,
    },
    /// SQLite reported an error (disk full, I/O error, ...).
    #[error("spool database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// A file operation failed.
    #[error("spool file error: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The spool file is damaged. At open this is handled by quarantine; at run time it
    /// means the file broke underneath us and needs the same treatment on restart.
    #[error("spool is corrupt: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                SpoolError::Corrupt(e.to_string())
            }
            _ => store::sqlite_error(e),
        }
    }
}

impl SpoolError {
    fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        SpoolError::Io(Arc::new(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )))
    }
}

/// State shared between the handles and the writer thread.
struct Shared {
    stats: Mutex<SpoolStats>,
    /// Set by [`Spool::release_leases`]; the writer applies it before its next batch.
    release_requested: AtomicBool,
    /// Smallest sequence number not leased (`u64::MAX`: none), published by the writer.
    min_unleased_seq: AtomicU64,
    /// Every record up to this sequence number is durable, published by the syncer.
    /// Leasable records exist iff `min_unleased_seq <= durable_seq`.
    durable_seq: AtomicU64,
    /// Signalled when leasable records may have appeared: on durability, release, close.
    pending_changed: Notify,
    /// Set (and `writer_gone` notified) when the writer thread ends, normally or by a
    /// panic: requests still queued then are refused by their callers.
    writer_exited: AtomicBool,
    writer_gone: Notify,
    closed: AtomicBool,
    /// An fdatasync failed: nothing written since can be vouched for (sticky).
    failed: AtomicBool,
}

impl Shared {
    fn new(budget_bytes: u64, durable_seq: u64) -> Self {
        Shared {
            stats: Mutex::new(SpoolStats {
                budget_bytes,
                ..SpoolStats::default()
            }),
            release_requested: AtomicBool::new(false),
            min_unleased_seq: AtomicU64::new(u64::MAX),
            durable_seq: AtomicU64::new(durable_seq),
            pending_changed: Notify::new(),
            writer_exited: AtomicBool::new(false),
            writer_gone: Notify::new(),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        }
    }
}

/// Joins the writer thread when the last handle goes away. Declared after the sender in
/// [`Inner`] so the channel is already disconnected (and the writer finishing) when this
/// runs.
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // The writer commits what it holds and closes the file; waiting for it means
            // the file lock is released when the last handle is gone.
            if handle.join().is_err() {
                tracing::error!("spool writer thread panicked");
            }
        }
    }
}

struct Inner {
    tx: flume::Sender<writer::Command>,
    shared: Arc<Shared>,
    _writer: WriterThread,
}

/// Handle to the spool. Cheap to clone; all clones share one writer thread. Dropping the
/// last handle without [`Spool::close`] still commits everything in flight and closes
/// the file (blocking the dropping thread briefly).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Spool {
    /// Opens (or creates) the spool, quarantining a damaged file, loads its index and
    /// starts the writer thread. Blocking: call it before serving, or via
    /// `spawn_blocking`.
    pub fn open(config: SpoolConfig) -> Result<(Spool, OpenReport), SpoolError> {
        Self::open_with_clock(config, Arc::new(store::system_now_ms))
    }

    fn open_with_clock(
        config: SpoolConfig,
        clock: writer::Clock,
    ) -> Result<(Spool, OpenReport), SpoolError> {
        let (opened, quarantined) = store::open(&config.path, clock())?;
        let records: u64 = opened.index.counts().iter().sum();
        let bytes = opened.index.bytes();
        if bytes > config.budget_bytes {
            tracing::warn!(
                bytes,
                budget_bytes = config.budget_bytes,
                "spool holds more than its budget (was the budget lowered?); appends will evict lower classes or be refused"
            );
        }
        // Everything loaded from disk is durable.
        let shared = Arc::new(Shared::new(
            config.budget_bytes,
            opened.next_seq.saturating_sub(1),
        ));
        let (tx, rx) = flume::bounded(QUEUE_CAPACITY);
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE_CAPACITY);
        let syncs_in_flight = Arc::new(AtomicUsize::new(0));
        let syncer = syncer::Syncer {
            wal: opened
                .wal
                .try_clone()
                .map_err(|e| SpoolError::io(&config.path, e))?,
            spool_id: opened.spool_id,
            shared: Arc::clone(&shared),
            in_flight: Arc::clone(&syncs_in_flight),
            writer: tx.downgrade(),
        };
        let syncer = std::thread::Builder::new()
            .name("spool-syncer".into())
            .spawn(move || syncer::run(syncer, sync_rx))
            .map_err(|e| SpoolError::io(&config.path, e))?;
        let writer = writer::Writer::new(
            opened,
            &config,
            Arc::clone(&shared),
            clock,
            rx,
            sync_tx,
            syncer,
            syncs_in_flight,
        );
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::io(&config.path, e))?;
        let spool = Spool {
            inner: Arc::new(Inner {
                tx,
                shared,
                _writer: WriterThread(Some(handle)),
            }),
        };
        Ok((
            spool,
            OpenReport {
                quarantined,
                records,
                bytes,
            },
        ))
    }

    /// Stores one record. Resolves once the record is durable (its transaction committed
    /// and the WAL fdatasync'ed). `Err(Full)` only when nothing of a lower class can be
    /// evicted.
    /// Dropping the future after the request reached the writer does not withdraw it:
    /// the record may still be stored (and delivered).
    pub async fn append(&self, record: Sanitized) -> Result<RecordId, SpoolError> {
        check_size(&record)?;
        let (reply, rx) = oneshot::channel();
        self.request(writer::Command::AppendOne { record, reply }, rx)
            .await
    }

    /// Stores several records as one durable unit: all commit or none (`Full` and
    /// `TooLarge` refuse the whole unit). Ids are returned in input order.
    pub async fn append_many(&self, records: Vec<Sanitized>) -> Result<Vec<RecordId>, SpoolError> {
        if records.is_empty() {
            return self.ensure_open().map(|()| Vec::new());
        }
        for record in &records {
            check_size(record)?;
        }
        let (reply, rx) = oneshot::channel();
        self.request(writer::Command::AppendMany { records, reply }, rx)
            .await
    }

    /// Stores records and a meta value (see [`Spool::put_meta`]) as one durable unit:
    /// both commit or neither does. For a source that must remember how far it got
    /// together with what it stored (a log file's offset with its lines), so a crash
    /// neither loses nor repeats.
    pub async fn append_with_meta(
        &self,
        records: Vec<Sanitized>,
        key: &str,
        value: Vec<u8>,
    ) -> Result<Vec<RecordId>, SpoolError> {
        for record in &records {
            check_size(record)?;
        }
        let (reply, rx) = oneshot::channel();
        self.request(
            writer::Command::AppendWithMeta {
                records,
                key: format!("app.{key}"),
                value,
                reply,
            },
            rx,
        )
        .await
    }

    /// Leases the next pending records: highest priority class first, within a class by
    /// id (so per-device order within a class holds). At most `max_records`, and no more
    /// payload bytes than `max_bytes` — except that one record is always returned if any
    /// is pending, however large. Leases live in memory only.
    pub async fn lease(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            writer::Command::Lease {
                max_records,
                max_bytes,
                reply,
            },
            rx,
        )
        .await
    }

    /// Deletes acknowledged records (one transaction for the batch). Unknown ids —
    /// already acknowledged, evicted, expired, or from another spool file — are ignored.
    pub async fn ack(&self, ids: Vec<RecordId>) -> Result<(), SpoolError> {
        if ids.is_empty() {
            return self.ensure_open();
        }
        let (reply, rx) = oneshot::channel();
        self.request(writer::Command::Ack { ids, reply }, rx).await
    }

    /// Returns all leased records to pending, so the next [`Spool::lease`] replays them in
    /// order (call it when the uplink reconnects). Takes effect before any lease requested
    /// after this call returns.
    pub fn release_leases(&self) {
        let shared = &self.inner.shared;
        shared.release_requested.store(true, Ordering::SeqCst);
        shared.pending_changed.notify_waiters();
        // Let an idle writer apply it now, so `stats().leased` drops promptly. A full
        // queue means the writer is busy and will see the flag before its next batch.
        let _ = self.inner.tx.try_send(writer::Command::Wake);
    }

    /// Completes when there may be leasable records (appended records became durable,
    /// leases were released, or the spool closed). For the uplink to wait on instead of
    /// polling. Returns at once if records are leasable now.
    pub async fn wait_for_pending(&self) {
        let shared = &self.inner.shared;
        let notified = shared.pending_changed.notified();
        tokio::pin!(notified);
        // Register before checking, so a signal between the check and the await is kept.
        notified.as_mut().enable();
        if shared.min_unleased_seq.load(Ordering::SeqCst)
            <= shared.durable_seq.load(Ordering::SeqCst)
            || shared.release_requested.load(Ordering::SeqCst)
            || shared.closed.load(Ordering::SeqCst)
        {
            return;
        }
        notified.await;
    }

    /// A snapshot of counters and levels.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.inner
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Durably stores a small value under `key` for another component (e.g. an upload
    /// checkpoint), in the spool's next group commit.
    pub async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            writer::Command::PutMeta {
                key: format!("app.{key}"),
                value,
                reply,
            },
            rx,
        )
        .await
    }

    /// Reads a value stored with [`Spool::put_meta`].
    pub async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            writer::Command::GetMeta {
                key: format!("app.{key}"),
                reply,
            },
            rx,
        )
        .await
    }

    /// Commits what is in flight, checkpoints and closes the file, and stops the writer.
    /// Later calls return [`SpoolError::Closed`]. Idempotent.
    pub async fn close(&self) {
        self.inner.shared.closed.store(true, Ordering::SeqCst);
        self.inner.shared.pending_changed.notify_waiters();
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send_async(writer::Command::Close { reply })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    fn ensure_open(&self) -> Result<(), SpoolError> {
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            Err(SpoolError::Closed)
        } else {
            Ok(())
        }
    }

    async fn request<T>(
        &self,
        command: writer::Command,
        rx: oneshot::Receiver<Result<T, SpoolError>>,
    ) -> Result<T, SpoolError> {
        self.ensure_open()?;
        let shared = &self.inner.shared;
        // Registered before sending, so an exit of the writer after this point is seen.
        let writer_gone = shared.writer_gone.notified();
        tokio::pin!(writer_gone);
        writer_gone.as_mut().enable();
        self.inner
            .tx
            .send_async(command)
            .await
            .map_err(|_| SpoolError::Closed)?;
        tokio::pin!(rx);
        if !shared.writer_exited.load(Ordering::SeqCst) {
            tokio::select! {
                biased;
                reply = &mut rx => return reply.unwrap_or(Err(SpoolError::Closed)),
                () = &mut writer_gone => {}
            }
        }
        // The writer is gone (it ended or panicked). A request it answered before that
        // still gets its answer; one left in its queue never will, so it is refused here
        // rather than left waiting forever.
        rx.try_recv().unwrap_or(Err(SpoolError::Closed))
    }

    #[cfg(test)]
    async fn barrier(&self) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.request(writer::Command::Barrier { reply }, rx).await
    }

    #[cfg(test)]
    async fn crash_writer_for_test(&self) {
        let _ = self.inner.tx.send_async(writer::Command::Panic).await;
    }

    #[cfg(test)]
    async fn dump(&self) -> Result<writer::Dump, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.request(writer::Command::Dump { reply }, rx).await
    }
}

fn check_size(record: &Sanitized) -> Result<(), SpoolError> {
    let bytes = record.payload().len().saturating_add(record.device().len());
    if bytes > MAX_RECORD_BYTES {
        Err(SpoolError::TooLarge {
            bytes: bytes as u64,
            max: MAX_RECORD_BYTES as u64,
        })
    } else {
        Ok(())
    }
}
