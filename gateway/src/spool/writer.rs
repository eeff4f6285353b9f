//! The writer thread: the only code that touches the SQLite connection and the index.
//!
//! Group commit with a pipelined fsync. The writer keeps one transaction open and applies
//! requests to it as they arrive (appends, acks, TTL expiry, evictions, meta writes). It
//! commits when the syncer thread is idle — immediately, under light load — or when the
//! transaction reaches [`SpoolConfig::max_batch`] rows, and hands the waiters to the
//! syncer, which fdatasyncs the WAL and answers them (see `syncer.rs`). So while the disk
//! syncs batch *k*, batch *k+1* is already being inserted, and it is committed the moment
//! the disk is free: one fsync per batch, and batches grow by themselves under load.
//!
//! Invariants:
//! - One batch = one transaction: its changes commit together or not at all, and its
//!   waiters learn the outcome only after the commit — and, if it committed, after the
//!   fdatasync. An `Ok` always means "on disk".
//! - The index runs ahead of the database only within the open transaction: every
//!   change to it is recorded in the transaction's undo log, and a failed statement or
//!   commit rolls back both the transaction and the index.
//! - Leases only hand out records at or below the durable watermark, so the uplink never
//!   sees a record a crash could still take back (or one an open transaction might yet
//!   roll back).
//! - An append unit is planned against the index before any of its SQL runs, so a unit
//!   refused with `Full`/`TooLarge` leaves no trace.
//! - Sequence numbers of a rolled-back transaction are reused by the next one: nobody
//!   was ever told about them.
//! - After close the thread keeps draining its queue, refusing every request, until the
//!   last handle is gone; so no request can be stranded in the queue unanswered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;
use wardgate_proto::{Priority, RecordId};

use super::index::{charge, Entry, Index, Removed, Undo};
use super::store::{self, u64_to_sql};
use super::syncer::SyncJob;
use super::{Shared, SpoolConfig, SpoolError, StoredRecord, MAX_RECORD_BYTES};
use crate::phi::Sanitized;

/// Source of wall-clock time (Unix ms); tests substitute a manual clock.
pub(super) type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// A request to the writer.
pub(super) enum Command {
    AppendOne {
        record: Sanitized,
        reply: Reply<RecordId>,
    },
    AppendMany {
        records: Vec<Sanitized>,
        reply: Reply<Vec<RecordId>>,
    },
    /// Records and a meta value in one transaction (e.g. log lines and the file
    /// checkpoint after them): both are durable or neither is.
    AppendWithMeta {
        records: Vec<Sanitized>,
        key: String,
        value: Vec<u8>,
        reply: Reply<Vec<RecordId>>,
    },
    Ack {
        ids: Vec<RecordId>,
        reply: Reply<()>,
    },
    Lease {
        max_records: usize,
        max_bytes: usize,
        reply: Reply<Vec<StoredRecord>>,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
        reply: Reply<()>,
    },
    GetMeta {
        key: String,
        reply: Reply<Option<Vec<u8>>>,
    },
    /// Nothing to do but look around: a lease release, or the syncer became idle.
    Wake,
    Close {
        reply: oneshot::Sender<()>,
    },
    /// Runs due TTL expiry, commits what is open and runs housekeeping.
    #[cfg(test)]
    Barrier {
        reply: Reply<()>,
    },
    #[cfg(test)]
    Dump {
        reply: Reply<Dump>,
    },
    /// Makes the writer thread panic, to test that callers are then refused, not hung.
    #[cfg(test)]
    Panic,
}

impl Command {
    /// Answers the request with `error`.
    fn refuse(self, error: &SpoolError) {
        match self {
            Command::AppendOne { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::AppendMany { reply, .. } | Command::AppendWithMeta { reply, .. } => {
                drop(reply.send(Err(error.clone())))
            }
            Command::Ack { reply, .. } | Command::PutMeta { reply, .. } => {
                drop(reply.send(Err(error.clone())))
            }
            Command::Lease { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::GetMeta { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Close { reply } => drop(reply.send(())),
            Command::Wake => {}
            #[cfg(test)]
            Command::Barrier { reply } => drop(reply.send(Err(error.clone()))),
            #[cfg(test)]
            Command::Dump { reply } => drop(reply.send(Err(error.clone()))),
            #[cfg(test)]
            Command::Panic => {}
        }
    }
}

/// The index and the table, side by side (tests check they agree).
#[cfg(test)]
#[derive(Debug)]
pub(super) struct Dump {
    /// The spool instance id.
    pub spool_id: u64,
    /// `(seq, priority, leased)` from the index.
    pub index: Vec<(u64, Priority, bool)>,
    /// `(seq, priority, device, payload)` from SQLite.
    pub rows: Vec<(u64, Priority, String, Vec<u8>)>,
}

/// Outcome of planning one append unit.
pub(super) enum Planned {
    Ok { first_seq: u64, count: usize },
    Refused(SpoolError),
}

/// A record row planned into the open transaction, not yet written to SQLite.
struct Row {
    seq: u64,
    priority: Priority,
    accepted_ms: u64,
    device: String,
    payload: Vec<u8>,
}

/// The open transaction and what must happen when it commits or fails.
struct Txn {
    /// `next_seq` when it began (restored on rollback).
    first_seq: u64,
    undo: Vec<Undo>,
    replies: Vec<PendingReply>,
    /// Rows to insert and seqs to delete, written by [`Writer::flush`] in bulk (one
    /// prepared-statement lookup per slice instead of per request). Inserts go first: an
    /// eviction may hit a row of the same slice.
    inserts: Vec<Row>,
    deletes: Vec<u64>,
    /// Rows written so far (the batch limit).
    rows: usize,
    /// Whether any record row was deleted (the `last_seq` high-water mark must be kept).
    deleted: bool,
    appended: u64,
    acked: u64,
    evicted: [u64; 4],
    expired: [u64; 4],
}

/// Counts that warrant a warning, logged at most every [`POLICY_LOG_INTERVAL`].
#[derive(Default)]
struct PolicyLog {
    evicted: [u64; 4],
    expired: [u64; 4],
    refused: u64,
    last: Option<Instant>,
}

const POLICY_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl PolicyLog {
    fn flush(&mut self, now: Instant, force: bool) {
        let any = self.evicted.iter().chain(&self.expired).any(|&n| n > 0) || self.refused > 0;
        if !any
            || (!force
                && self
                    .last
                    .is_some_and(|last| now.duration_since(last) < POLICY_LOG_INTERVAL))
        {
            return;
        }
        if self.evicted.iter().any(|&n| n > 0) || self.refused > 0 {
            tracing::warn!(
                evicted_log = self.evicted[0],
                evicted_state = self.evicted[1],
                evicted_observation = self.evicted[2],
                evicted_alarm = self.evicted[3],
                refused_full = self.refused,
                "spool budget exhausted: records evicted or refused"
            );
        }
        if self.expired.iter().any(|&n| n > 0) {
            tracing::info!(
                expired_log = self.expired[0],
                expired_state = self.expired[1],
                expired_observation = self.expired[2],
                expired_alarm = self.expired[3],
                "spool records expired (TTL)"
            );
        }
        *self = PolicyLog {
            last: Some(now),
            ..PolicyLog::default()
        };
    }
}

/// Totals since open, published through [`super::SpoolStats`].
#[derive(Default)]
struct Totals {
    evicted: [u64; 4],
    expired: [u64; 4],
    refused_full: u64,
    appended: u64,
    acked: u64,
    commits: u64,
}

/// Most rows one TTL sweep deletes, so a mass expiry does not stall appends; the rest
/// goes in the following rounds.
const EXPIRE_PER_ROUND: usize = 50_000;
/// Longest the writer sleeps when idle (housekeeping cadence).
const IDLE_WAKEUP: Duration = Duration::from_secs(30);
/// Shortest wait for a TTL sweep, so records expiring one by one are swept in groups.
const MIN_SWEEP_WAIT: Duration = Duration::from_secs(1);
/// Incremental vacuum returns free pages to the file system only once they outnumber the
/// live pages this many times: vacuuming moves live pages from the end of the file into
/// the holes, and in a FIFO spool the live records sit at the end. Waiting until they are
/// few bounds that copying to a quarter of the space released (typically: the backlog
/// after an outage has drained).
const VACUUM_FREE_TO_LIVE: i64 = 4;
/// Free space always kept for reuse by new records.
const VACUUM_KEEP_FREE_BYTES: i64 = if cfg!(test) {
    64 * 1024
} else {
    16 * 1024 * 1024
};
/// Most space one vacuum step releases, bounding the latency it adds (tens of ms).
const VACUUM_BYTES_PER_STEP: i64 = 64 * 1024 * 1024;
/// Least time between vacuum steps (zero in tests, so they need not wait).
const VACUUM_INTERVAL: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(1)
};

pub(super) struct Writer {
    conn: Connection,
    index: Index,
    spool_id: u64,
    next_seq: u64,
    budget: u64,
    ttl_ms: [Option<u64>; 4],
    max_batch: usize,
    shared: Arc<Shared>,
    clock: Clock,
    rx: flume::Receiver<Command>,
    txn: Option<Txn>,
    /// Committed batches go here to be made durable and answered.
    sync_tx: Option<std::sync::mpsc::SyncSender<SyncJob>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Batches handed to the syncer and not yet fsynced.
    syncs_in_flight: Arc<AtomicUsize>,
    totals: Totals,
    policy_log: PolicyLog,
    /// Unix ms at which the oldest record with a TTL expires.
    next_expiry_ms: u64,
    deleted_since_vacuum: bool,
    last_vacuum: Instant,
    last_housekeeping: Instant,
    /// Scratch buffer for removals reported by the index.
    removed: Vec<Removed>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        opened: store::Opened,
        config: &SpoolConfig,
        shared: Arc<Shared>,
        clock: Clock,
        rx: flume::Receiver<Command>,
        sync_tx: std::sync::mpsc::SyncSender<SyncJob>,
        syncer: std::thread::JoinHandle<()>,
        syncs_in_flight: Arc<AtomicUsize>,
    ) -> Self {
        let ttl_ms = config
            .ttl
            .map(|ttl| ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
        let mut writer = Writer {
            conn: opened.conn,
            index: opened.index,
            spool_id: opened.spool_id,
            next_seq: opened.next_seq,
            budget: config.budget_bytes,
            ttl_ms,
            max_batch: config.max_batch.max(1),
            shared,
            clock,
            rx,
            txn: None,
            sync_tx: Some(sync_tx),
            syncer: Some(syncer),
            syncs_in_flight,
            totals: Totals::default(),
            policy_log: PolicyLog::default(),
            next_expiry_ms: u64::MAX,
            deleted_since_vacuum: true,
            last_vacuum: Instant::now(),
            last_housekeeping: Instant::now(),
            removed: Vec::new(),
        };
        writer.update_next_expiry();
        writer.publish();
        writer
    }

    /// The thread body.
    pub(super) fn run(mut self) {
        let _exit = WriterExit(Arc::clone(&self.shared));
        let mut closers = Vec::new();
        'serve: loop {
            if self.txn.is_some() && self.syncs_in_flight.load(Ordering::SeqCst) == 0 {
                self.commit();
            }
            let wait = if self.txn.is_some() {
                // The syncer sends a Wake when it is done; the timeout is only a backstop.
                MIN_SWEEP_WAIT
            } else {
                self.housekeeping();
                self.wait_time()
            };
            let first = match self.rx.recv_timeout(wait) {
                Ok(command) => {
                    super::fault::stall_while_requested();
                    Some(command)
                }
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            self.apply_release();
            self.expire_if_due();
            // Requests are taken in slices of what was queued when the slice began; after
            // each slice the transaction is committed if the disk (the syncer) is free.
            // So a steady stream of requests cannot keep an idle disk waiting.
            let mut slice = 1 + self.rx.len();
            let mut next = first;
            while let Some(command) = next {
                if let Command::Close { reply } = command {
                    closers.push(reply);
                    break 'serve;
                }
                self.handle(command);
                slice = slice.saturating_sub(1);
                if self
                    .txn
                    .as_ref()
                    .is_some_and(|txn| txn.rows >= self.max_batch)
                {
                    // Full: commit even though the syncer is busy; it takes the next one.
                    self.commit();
                } else if slice == 0 {
                    if self.syncs_in_flight.load(Ordering::SeqCst) == 0 {
                        self.commit();
                    } else {
                        // Do the insert work now, while the disk syncs the previous batch.
                        let _ = self.flush();
                    }
                }
                // A slice that ended (also by a full batch) starts the next one; without
                // this a full batch on the slice's last request left it at zero, to wrap.
                if slice == 0 {
                    slice = 1 + self.rx.len();
                }
                next = self.rx.try_recv().ok();
            }
        }
        self.commit();
        let rx = self.rx.clone();
        self.finish();
        for reply in closers {
            let _ = reply.send(());
        }
        // Refuse whatever still arrives until the last handle is dropped: a request left
        // in the queue would otherwise wait forever for its reply.
        while let Ok(command) = rx.recv() {
            if let Command::Close { reply } = command {
                let _ = reply.send(());
            }
        }
    }

    /// Lets the syncer answer what it holds, marks the spool cleanly closed and closes
    /// the file.
    fn finish(mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.pending_changed.notify_waiters();
        self.policy_log.flush(Instant::now(), true);
        drop(self.sync_tx.take());
        if let Some(syncer) = self.syncer.take() {
            if syncer.join().is_err() {
                tracing::error!("spool syncer thread panicked");
            }
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            // Do not mark a spool whose writes may have been lost as cleanly closed.
            tracing::error!(
                "spool closed after a failed fdatasync; the next open runs an integrity check"
            );
        } else if let Err(e) = store::mark_clean_shutdown(&self.conn) {
            tracing::error!(error = %e, "spool: recording the clean shutdown failed; the next open runs an integrity check");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::error!(error = %e, "spool: closing the database failed");
        }
    }

    fn wait_time(&self) -> Duration {
        if self.shared.release_requested.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        // Space freed by acks is returned to the file system even when the spool is idle.
        let idle = if self.deleted_since_vacuum {
            VACUUM_INTERVAL.max(MIN_SWEEP_WAIT)
        } else {
            IDLE_WAKEUP
        };
        if self.next_expiry_ms == u64::MAX {
            return idle;
        }
        let now = (self.clock)();
        if self.next_expiry_ms <= now {
            return Duration::ZERO;
        }
        Duration::from_millis(self.next_expiry_ms - now).clamp(MIN_SWEEP_WAIT, idle)
    }

    /// Applies one request.
    fn handle(&mut self, command: Command) {
        if self.shared.failed.load(Ordering::SeqCst) {
            let error = SpoolError::Io(Arc::new(std::io::Error::other(
                "the spool's storage failed an fdatasync; restart the gateway",
            )));
            command.refuse(&error);
            return;
        }
        // Before anything that follows the release_leases() call which set it.
        self.apply_release();
        match command {
            Command::AppendOne { record, reply } => {
                let planned = self.append_unit(std::iter::once(record), 1);
                self.settle(PendingReply::One(reply, planned));
            }
            Command::AppendMany { records, reply } => {
                let count = records.len();
                let planned = self.append_unit(records, count);
                self.settle(PendingReply::Many(reply, planned));
            }
            Command::AppendWithMeta {
                records,
                key,
                value,
                reply,
            } => {
                let count = records.len();
                let planned = self.append_unit(records, count);
                if matches!(planned, Planned::Ok { .. }) {
                    // Same open transaction as the records: one commit carries both. On
                    // error the transaction is aborted and its waiters refused, this one
                    // included (its reply is filed below, before any commit).
                    if let Err(error) = self.put_meta(&key, &value) {
                        let _ = reply.send(Err(error));
                        return;
                    }
                }
                self.settle(PendingReply::Many(reply, planned));
            }
            Command::Ack { ids, reply } => {
                let result = self.ack(&ids);
                self.settle_done(reply, result);
            }
            Command::PutMeta { key, value, reply } => {
                let result = self.put_meta(&key, &value);
                self.settle_done(reply, result);
            }
            Command::Lease {
                max_records,
                max_bytes,
                reply,
            } => {
                let result = self.lease(max_records, max_bytes);
                self.publish();
                let _ = reply.send(result);
            }
            Command::GetMeta { key, reply } => {
                let result = self
                    .conn
                    .query_row(store::SELECT_META, [&key], |r| {
                        r.get::<_, Option<Vec<u8>>>(0)
                    })
                    .optional()
                    .map(Option::flatten)
                    .map_err(SpoolError::from);
                let _ = reply.send(result);
            }
            Command::Wake | Command::Close { .. } => {}
            #[cfg(test)]
            Command::Barrier { reply } => {
                self.expire_if_due();
                self.commit();
                self.housekeeping();
                let _ = reply.send(Ok(()));
            }
            #[cfg(test)]
            Command::Dump { reply } => {
                let _ = self.flush();
                let _ = reply.send(self.dump());
            }
            #[cfg(test)]
            Command::Panic => panic!("spool writer panic requested by a test"),
        }
    }

    /// Files a reply with the open transaction (answered once it is durable), or answers
    /// it now if it does not depend on the transaction: a refusal is final at once.
    fn settle(&mut self, reply: PendingReply) {
        let refused = matches!(
            reply,
            PendingReply::One(_, Planned::Refused(_)) | PendingReply::Many(_, Planned::Refused(_))
        );
        match &mut self.txn {
            Some(txn) if !refused => txn.replies.push(reply),
            _ => reply.send_ok(self.spool_id),
        }
    }

    fn settle_done(&mut self, reply: Reply<()>, result: Result<(), SpoolError>) {
        match result {
            Ok(()) => self.settle(PendingReply::Done(reply)),
            Err(e) => drop(reply.send(Err(e))),
        }
    }

    /// Opens the transaction if none is open.
    fn begin(&mut self) -> Result<(), SpoolError> {
        if self.txn.is_none() {
            self.conn.prepare_cached("BEGIN")?.execute([])?;
            self.txn = Some(Txn {
                first_seq: self.next_seq,
                undo: Vec::new(),
                replies: Vec::new(),
                inserts: Vec::new(),
                deletes: Vec::new(),
                rows: 0,
                deleted: false,
                appended: 0,
                acked: 0,
                evicted: [0; 4],
                expired: [0; 4],
            });
        }
        Ok(())
    }

    /// Plans one append unit against the index and queues its rows in the open
    /// transaction.
    fn append_unit(
        &mut self,
        records: impl IntoIterator<Item = Sanitized>,
        unit_len: usize,
    ) -> Planned {
        let now_ms = (self.clock)();
        if let Err(e) = self.begin() {
            return Planned::Refused(e);
        }
        let Some(txn) = &mut self.txn else {
            return Planned::Refused(SpoolError::Closed);
        };
        let undo_mark = txn.undo.len();
        let inserts_mark = txn.inserts.len();
        let deletes_mark = txn.deletes.len();
        let first_seq = self.next_seq;
        let mut evicted = [0u64; 4];
        let mut refusal = None;
        for record in records {
            let (device, priority, payload) = record.into_parts();
            let needed = charge(payload.len(), device.len());
            let bytes = payload.len().saturating_add(device.len());
            let payload_len = match u32::try_from(payload.len()) {
                Ok(len) if bytes <= MAX_RECORD_BYTES && needed <= self.budget => len,
                _ => {
                    refusal = Some(if bytes > MAX_RECORD_BYTES {
                        SpoolError::TooLarge {
                            bytes: bytes as u64,
                            max: MAX_RECORD_BYTES as u64,
                        }
                    } else {
                        SpoolError::TooLarge {
                            bytes: needed,
                            max: self.budget,
                        }
                    });
                    break;
                }
            };
            self.removed.clear();
            if !self.index.make_room(
                priority,
                needed,
                self.budget,
                &mut txn.undo,
                &mut self.removed,
            ) {
                refusal = Some(SpoolError::Full {
                    priority,
                    needed,
                    budget: self.budget,
                });
                break;
            }
            for removed in &self.removed {
                evicted[usize::from(removed.priority.as_u8())] += 1;
                txn.deletes.push(removed.seq);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let entry = Entry {
                seq,
                accepted_ms: now_ms,
                payload_len,
                device: self.index.intern(&device),
            };
            self.index.push(priority, entry, &mut txn.undo);
            txn.inserts.push(Row {
                seq,
                priority,
                accepted_ms: now_ms,
                device,
                payload,
            });
        }
        if let Some(refusal) = refusal {
            self.index.rollback(&mut txn.undo, undo_mark);
            txn.inserts.truncate(inserts_mark);
            txn.deletes.truncate(deletes_mark);
            self.next_seq = first_seq;
            if matches!(refusal, SpoolError::Full { .. }) {
                // Counted now: the refusal is answered now, not at the commit.
                self.totals.refused_full += unit_len as u64;
                self.policy_log.refused += unit_len as u64;
                self.publish();
            }
            return Planned::Refused(refusal);
        }
        #[allow(clippy::cast_possible_truncation)] // one unit's records fit in memory
        let count = (self.next_seq - first_seq) as usize;
        let deleted = txn.deletes.len() - deletes_mark;
        txn.rows += count + deleted;
        txn.appended += count as u64;
        txn.deleted |= deleted > 0;
        for (total, n) in txn.evicted.iter_mut().zip(evicted) {
            *total += n;
        }
        Planned::Ok { first_seq, count }
    }

    /// Writes the rows queued in the open transaction. On failure the transaction is
    /// rolled back and its waiters refused.
    fn flush(&mut self) -> Result<(), SpoolError> {
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        if txn.inserts.is_empty() && txn.deletes.is_empty() {
            return Ok(());
        }
        let written = (|| -> Result<(), rusqlite::Error> {
            if !txn.inserts.is_empty() {
                let mut insert = self.conn.prepare_cached(store::INSERT_RECORD)?;
                for row in txn.inserts.drain(..) {
                    insert.raw_bind_parameter(1, u64_to_sql(row.seq))?;
                    insert.raw_bind_parameter(2, i64::from(row.priority.as_u8()))?;
                    insert.raw_bind_parameter(3, u64_to_sql(row.accepted_ms))?;
                    insert.raw_bind_parameter(4, row.device.as_str())?;
                    insert.raw_bind_parameter(5, row.payload.as_slice())?;
                    insert.raw_execute()?;
                }
            }
            if !txn.deletes.is_empty() {
                let mut delete = self.conn.prepare_cached(store::DELETE_RECORD)?;
                for seq in txn.deletes.drain(..) {
                    delete.raw_bind_parameter(1, u64_to_sql(seq))?;
                    delete.raw_execute()?;
                }
            }
            Ok(())
        })();
        written.map_err(|e| {
            let error = SpoolError::from(e);
            self.abort(&error);
            error
        })
    }

    /// Deletes acknowledged records in the open transaction.
    fn ack(&mut self, ids: &[RecordId]) -> Result<(), SpoolError> {
        self.begin()?;
        let Some(txn) = &mut self.txn else {
            return Err(SpoolError::Closed);
        };
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids.iter().filter(|id| id.spool == self.spool_id) {
            if let Some(removed) = self.index.remove(id.seq, &mut txn.undo) {
                seqs.push(removed.seq);
            }
        }
        txn.acked += seqs.len() as u64;
        txn.rows += seqs.len().max(1);
        txn.deleted |= !seqs.is_empty();
        txn.deletes.extend(seqs);
        Ok(())
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<(), SpoolError> {
        self.begin()?;
        let Some(txn) = &mut self.txn else {
            return Err(SpoolError::Closed);
        };
        txn.rows += 1;
        let written = self
            .conn
            .prepare_cached(store::UPSERT_META)
            .and_then(|mut put| put.execute(rusqlite::params![key, value]));
        written.map(drop).map_err(|e| {
            let error = SpoolError::from(e);
            self.abort(&error);
            error
        })
    }

    /// Deletes expired records (in the open transaction) when the oldest one is due.
    fn expire_if_due(&mut self) {
        let now_ms = (self.clock)();
        if now_ms < self.next_expiry_ms {
            return;
        }
        if self.begin().is_err() {
            return;
        }
        let Some(txn) = &mut self.txn else { return };
        let mut seqs = Vec::new();
        let mut remaining = EXPIRE_PER_ROUND;
        for priority in Priority::ALL {
            let Some(ttl) = self.ttl_ms[usize::from(priority.as_u8())] else {
                continue;
            };
            let Some(cutoff) = now_ms.checked_sub(ttl) else {
                continue;
            };
            self.removed.clear();
            self.index.expire(
                priority,
                cutoff,
                remaining,
                &mut txn.undo,
                &mut self.removed,
            );
            remaining -= self.removed.len();
            txn.expired[usize::from(priority.as_u8())] += self.removed.len() as u64;
            seqs.extend(self.removed.iter().map(|r| r.seq));
        }
        txn.rows += seqs.len();
        txn.deleted |= !seqs.is_empty();
        txn.deletes.extend(seqs);
        // A capped sweep leaves the front due, so the next round continues it.
        self.update_next_expiry();
    }

    fn update_next_expiry(&mut self) {
        self.next_expiry_ms = Priority::ALL
            .iter()
            .filter_map(|&p| {
                let ttl = self.ttl_ms[usize::from(p.as_u8())]?;
                Some(self.index.oldest_in(p)?.saturating_add(ttl))
            })
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Commits the open transaction, if any, and hands its waiters to the syncer.
    fn commit(&mut self) {
        if self.flush().is_err() {
            return;
        }
        let Some(txn) = &self.txn else { return };
        let deleted = txn.deleted;
        let nothing_to_sync = txn.rows == 0 && txn.replies.is_empty();
        let committed = (|| -> Result<(), rusqlite::Error> {
            if deleted {
                // Keep the high-water mark: the rows holding the top seqs may be gone.
                let mut put = self.conn.prepare_cached(store::UPSERT_META)?;
                put.execute(rusqlite::params![
                    store::META_LAST_SEQ,
                    u64_to_sql(self.next_seq.saturating_sub(1))
                ])?;
            }
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        if let Err(e) = committed {
            self.abort(&SpoolError::from(e));
            return;
        }
        let Some(txn) = self.txn.take() else { return };
        self.totals.commits += u64::from(!nothing_to_sync);
        self.totals.appended += txn.appended;
        self.totals.acked += txn.acked;
        for class in 0..4 {
            self.totals.evicted[class] += txn.evicted[class];
            self.totals.expired[class] += txn.expired[class];
            self.policy_log.evicted[class] += txn.evicted[class];
            self.policy_log.expired[class] += txn.expired[class];
        }
        self.policy_log.flush(Instant::now(), false);
        if deleted {
            self.deleted_since_vacuum = true;
        }
        self.update_next_expiry();
        // Before the hand-over: the syncer's "durable" signal must find the new records.
        self.publish();
        if !nothing_to_sync {
            self.hand_to_syncer(txn.replies);
        }
    }

    /// Rolls back the open transaction and the index, and fails its waiters.
    fn abort(&mut self, error: &SpoolError) {
        tracing::error!(error = %error, "spool transaction failed; its appends and acks are refused");
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            // "no transaction is active": SQLite already rolled it back.
            tracing::debug!(error = %e, "spool rollback");
        }
        let Some(mut txn) = self.txn.take() else {
            return;
        };
        self.index.rollback(&mut txn.undo, 0);
        self.next_seq = txn.first_seq;
        self.update_next_expiry();
        self.publish();
        for reply in txn.replies {
            reply.send_err(error);
        }
    }

    /// Passes a committed batch's waiters to the syncer. Blocks when the syncer is a few
    /// batches behind: that bounds the commits awaiting an fsync.
    fn hand_to_syncer(&mut self, replies: Vec<PendingReply>) {
        let job = SyncJob {
            replies,
            high_seq: self.next_seq.saturating_sub(1),
        };
        let Some(sync_tx) = &self.sync_tx else { return };
        self.syncs_in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(std::sync::mpsc::SendError(job)) = sync_tx.send(job) {
            // The syncer is gone (it panicked): nobody can vouch for durability.
            self.syncs_in_flight.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("spool syncer is gone; refusing the batch");
            self.shared.failed.store(true, Ordering::SeqCst);
            let error = SpoolError::Io(Arc::new(std::io::Error::other(
                "spool syncer thread is gone",
            )));
            for reply in job.replies {
                reply.send_err(&error);
            }
        }
    }

    /// Applies a pending [`super::Spool::release_leases`].
    fn apply_release(&mut self) {
        if self.shared.release_requested.load(Ordering::SeqCst)
            && self.shared.release_requested.swap(false, Ordering::SeqCst)
        {
            self.index.release_all();
            self.publish();
            self.shared.pending_changed.notify_waiters();
        }
    }

    fn lease(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, SpoolError> {
        let durable = self.shared.durable_seq.load(Ordering::SeqCst);
        let leased = self.index.lease(max_records, max_bytes, durable);
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(leased.len());
        let mut missing = Vec::new();
        let read = (|| -> Result<(), rusqlite::Error> {
            let mut select = self.conn.prepare_cached(store::SELECT_PAYLOAD)?;
            for entry in &leased {
                select.raw_bind_parameter(1, u64_to_sql(entry.seq))?;
                let mut rows = select.raw_query();
                match rows.next()? {
                    Some(row) => out.push(StoredRecord {
                        id: RecordId {
                            spool: self.spool_id,
                            seq: entry.seq,
                        },
                        device: entry.device.to_string(),
                        priority: entry.priority,
                        accepted_ms: entry.accepted_ms,
                        payload: row.get(0)?,
                    }),
                    None => missing.push(entry.seq),
                }
            }
            Ok(())
        })();
        if let Err(e) = read {
            self.index.unlease(&leased);
            return Err(SpoolError::from(e));
        }
        if !missing.is_empty() {
            // Only this thread deletes rows, so this means the file changed underneath us.
            tracing::error!(
                count = missing.len(),
                "spool index lists records missing from the database; dropping them"
            );
            let mut undo = Vec::new();
            for seq in missing {
                self.index.remove(seq, &mut undo);
            }
        }
        Ok(out)
    }

    /// Publishes stats and the lease frontier for the handles.
    fn publish(&self) {
        self.shared
            .min_unleased_seq
            .store(self.index.min_unleased_seq(), Ordering::SeqCst);
        let mut stats = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stats.records = self.index.counts();
        stats.bytes = self.index.bytes();
        stats.budget_bytes = self.budget;
        stats.oldest_accepted_ms = self.index.oldest_accepted_ms();
        stats.evicted = self.totals.evicted;
        stats.expired = self.totals.expired;
        stats.refused_full = self.totals.refused_full;
        stats.leased = self.index.leased();
        stats.appended_total = self.totals.appended;
        stats.acked_total = self.totals.acked;
        stats.commits = self.totals.commits;
    }

    /// Returns freed pages to the file system now and then, and prunes the device
    /// interner. Only between transactions.
    fn housekeeping(&mut self) {
        if self.txn.is_some() {
            return;
        }
        let now = Instant::now();
        if self.deleted_since_vacuum && now.duration_since(self.last_vacuum) >= VACUUM_INTERVAL {
            self.last_vacuum = now;
            match self.vacuum_step() {
                Ok(more) => self.deleted_since_vacuum = more,
                Err(e) => tracing::warn!(error = %e, "spool incremental vacuum failed"),
            }
        }
        if now.duration_since(self.last_housekeeping) >= IDLE_WAKEUP {
            self.last_housekeeping = now;
            self.index.forget_unused_devices();
        }
    }

    /// One bounded incremental-vacuum step. Returns whether more remains to release.
    /// Not fsynced by us: losing it in a crash loses no record, only the shrink.
    fn vacuum_step(&mut self) -> Result<bool, rusqlite::Error> {
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let keep = VACUUM_KEEP_FREE_BYTES / page_size.max(512);
        let live = pages - free;
        if free <= keep.max(VACUUM_FREE_TO_LIVE.saturating_mul(live)) {
            return Ok(false);
        }
        let step = (free - keep).min(VACUUM_BYTES_PER_STEP / page_size.max(512));
        // The pragma frees one page per step of the statement: run it to completion.
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA incremental_vacuum({step})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(free - keep > step)
    }

    #[cfg(test)]
    fn dump(&self) -> Result<Dump, SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, priority, device, payload FROM records ORDER BY seq")?;
        let rows = stmt
            .query_map([], |r| {
                let seq: i64 = r.get(0)?;
                let priority: u8 = r.get(1)?;
                Ok((
                    store::u64_from_sql(seq),
                    Priority::from_u8(priority).unwrap_or(Priority::Log),
                    r.get(2)?,
                    r.get(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Dump {
            spool_id: self.spool_id,
            index: self.index.dump(),
            rows,
        })
    }
}

/// A waiter to answer once its transaction's fate is known.
pub(super) enum PendingReply {
    One(Reply<RecordId>, Planned),
    Many(Reply<Vec<RecordId>>, Planned),
    Done(Reply<()>),
}

impl PendingReply {
    pub(super) fn send_ok(self, spool: u64) {
        match self {
            PendingReply::One(reply, planned) => {
                let _ = reply.send(match planned {
                    Planned::Ok { first_seq, .. } => Ok(RecordId {
                        spool,
                        seq: first_seq,
                    }),
                    Planned::Refused(e) => Err(e),
                });
            }
            PendingReply::Many(reply, planned) => {
                let _ = reply.send(match planned {
                    Planned::Ok { first_seq, count } => Ok((0..count as u64)
                        .map(|i| RecordId {
                            spool,
                            seq: first_seq + i,
                        })
                        .collect()),
                    Planned::Refused(e) => Err(e),
                });
            }
            PendingReply::Done(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    pub(super) fn send_err(self, error: &SpoolError) {
        match self {
            PendingReply::One(reply, planned) => {
                let _ = reply.send(Err(match planned {
                    Planned::Refused(e) => e,
                    Planned::Ok { .. } => error.clone(),
                }));
            }
            PendingReply::Many(reply, planned) => {
                let _ = reply.send(Err(match planned {
                    Planned::Refused(e) => e,
                    Planned::Ok { .. } => error.clone(),
                }));
            }
            PendingReply::Done(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Tells waiting callers that the writer thread ended. Dropped when `run` returns or
/// unwinds: a panic in the writer must turn into errors for its callers (devices get AR
/// and retry), never into requests that wait forever for an answer.
struct WriterExit(Arc<Shared>);

impl Drop for WriterExit {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "spool writer panicked; refusing every request until the gateway restarts"
            );
            self.0.failed.store(true, Ordering::SeqCst);
        }
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.writer_exited.store(true, Ordering::SeqCst);
        self.0.writer_gone.notify_waiters();
        self.0.pending_changed.notify_waiters();
    }
}
