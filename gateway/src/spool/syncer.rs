//! The syncer thread: makes committed batches durable and only then answers their
//! waiters.
//!
//! SQLite runs with `synchronous=NORMAL`: a commit writes its WAL frames (with the commit
//! marker) to the file but does not fsync. The writer then hands the batch's waiters to
//! this thread, which fdatasyncs the WAL file and answers them. While it waits for the
//! disk, the writer is already inserting the next batch, so the fsync latency and the
//! insert work overlap instead of adding up; one fdatasync covers every batch committed
//! before it started.
//!
//! Why this is as durable as `synchronous=FULL`:
//! - Nobody is told "stored" before an fdatasync of the WAL that started after the batch's
//!   commit returned: the batch's frames and commit marker are on disk by then.
//! - SQLite never overwrites WAL frames that are not yet checkpointed, and a checkpoint
//!   fsyncs the WAL before copying it and the database after (it does so in NORMAL mode
//!   too); so frames we are about to sync cannot be replaced underneath us.
//! - A crash before the fdatasync can lose the batch (or leave a torn tail, which WAL
//!   recovery discards by checksum), but no waiter has been answered for it. Readers of
//!   the spool (leases) see a record only once the durable watermark covers it, so the
//!   uplink never forwards a record that a crash could still take back.
//!
//! An fdatasync error is sticky: after one, Linux may have dropped the dirty pages, so
//! the spool refuses everything until it is reopened (the PostgreSQL lesson).

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvError};
use std::sync::Arc;

use super::writer::{Command, PendingReply};
use super::{Shared, SpoolError};

/// One committed batch waiting for durability.
pub(super) struct SyncJob {
    /// Its waiters.
    pub replies: Vec<PendingReply>,
    /// Highest sequence number assigned so far (durable once this job is).
    pub high_seq: u64,
}

/// What the syncer needs besides its jobs.
pub(super) struct Syncer {
    /// The WAL file (the writer's connection keeps it open, so it is never replaced).
    pub wal: File,
    pub spool_id: u64,
    pub shared: Arc<Shared>,
    /// Jobs handed over and not yet synced; the writer commits when this is zero.
    pub in_flight: Arc<AtomicUsize>,
    /// To wake the writer when the disk is free. Weak, so it does not keep the request
    /// queue open once every handle is gone.
    pub writer: flume::WeakSender<Command>,
}

/// Outcome of one fdatasync for the jobs it covered.
struct Answer {
    jobs: Vec<SyncJob>,
    error: Option<SpoolError>,
}

impl Answer {
    fn deliver(self, spool_id: u64) {
        for job in self.jobs {
            for reply in job.replies {
                match &self.error {
                    None => reply.send_ok(spool_id),
                    Some(error) => reply.send_err(error),
                }
            }
        }
    }
}

/// The thread body: runs until the writer drops its sender, answering every job.
///
/// Answering a batch (one oneshot send and task wake-up per waiter) takes about as long
/// as an fsync, so a helper thread does it: the syncer goes straight back to the disk
/// with the batch the writer committed meanwhile.
pub(super) fn run(syncer: Syncer, jobs: Receiver<SyncJob>) {
    let Syncer {
        wal,
        spool_id,
        shared,
        in_flight,
        writer,
    } = syncer;
    std::thread::scope(|scope| {
        let (answer_tx, answer_rx) = std::sync::mpsc::channel::<Answer>();
        let replier = std::thread::Builder::new()
            .name("spool-replier".into())
            .spawn_scoped(scope, move || {
                for answer in answer_rx {
                    answer.deliver(spool_id);
                }
            });
        // Without the helper thread, answer inline.
        let answer_tx = replier.is_ok().then_some(answer_tx);
        let answer = |answer: Answer| match &answer_tx {
            Some(tx) => {
                if let Err(std::sync::mpsc::SendError(answer)) = tx.send(answer) {
                    answer.deliver(spool_id);
                }
            }
            None => answer.deliver(spool_id),
        };
        loop {
            let mut batch = match jobs.recv() {
                Ok(job) => vec![job],
                Err(RecvError) => break,
            };
            batch.extend(jobs.try_iter());
            let result = if shared.failed.load(Ordering::SeqCst) {
                Err(std::io::Error::other(
                    "an earlier fdatasync of the spool WAL failed",
                ))
            } else {
                wal.sync_data()
            };
            let error = match result {
                Ok(()) => {
                    let high_seq = batch.iter().map(|job| job.high_seq).max().unwrap_or(0);
                    shared.durable_seq.fetch_max(high_seq, Ordering::SeqCst);
                    None
                }
                Err(e) => {
                    if !shared.failed.swap(true, Ordering::SeqCst) {
                        tracing::error!(error = %e, "spool: fdatasync of the WAL failed; refusing all requests until restart");
                    }
                    Some(SpoolError::Io(Arc::new(e)))
                }
            };
            // The disk is free: let the writer commit what it gathered meanwhile. A full
            // queue means the writer is busy and will look by itself.
            in_flight.fetch_sub(batch.len(), Ordering::SeqCst);
            if let Some(writer) = writer.upgrade() {
                let _ = writer.try_send(Command::Wake);
            }
            if error.is_none() {
                // New records may be leasable now.
                shared.pending_changed.notify_waiters();
            }
            answer(Answer { jobs: batch, error });
        }
        // Dropping the sender ends the replier once it has answered everything; the
        // scope waits for it.
        drop(answer_tx);
    });
}
