//! Device log files: follow the files of a directory as they grow, across rotation
//! (rename + create), truncation (copytruncate) and renames, and hand their lines to a
//! [`LogSink`] in batches, each with the [`Checkpoint`] to resume from.
//!
//! Layout (sans-IO core, thin driver):
//! - [`config`]: the typed per-device `[logfile]` section;
//! - [`lines`]: bytes → lines (line length cap, CRLF, lossy UTF-8), pure;
//! - [`tracker`]: which file to read from where, rotation/truncation/rename detection,
//!   batching and checkpoints, pure;
//! - [`driver`]: lists and reads the directory (tokio, `notify` wake-ups plus a periodic
//!   poll) and ships chunks.
//!
//! **Durability contract:** [`LogSink::ship`] returns `Ok` only after the chunk's lines
//! *and* its checkpoint are durable together. The driver hands out the next chunk only
//! after that, and resumes after a restart from [`LogSink::load_checkpoint`]. So in the
//! normal case (files rotated by rename or truncation, gateway stopped or crashed) no
//! line is lost and none is shipped twice. A refused or failed ship is retried, after a
//! back-off, with the same chunk: nothing is skipped. Lines can be lost only when the
//! device deletes or truncates a file before the follower read it (while the gateway is
//! down for longer than the device's rotation keeps files, for instance).
//!
//! The adapter knows nothing of PHI: lines are device data and may name patients. The
//! sink must pass them through the gateway's free-text PHI rules before they are stored.
//! [`LogChunk`], [`Checkpoint`] and every type holding a file name or a line print a
//! redaction marker or omit the name in `Debug`.

pub mod config;
pub mod driver;
pub mod glob;
pub mod lines;
pub mod tracker;

use std::future::Future;

pub use config::{LogFileConfig, StartAt};
pub use driver::follow;
pub use lines::{Position, TRUNCATION_MARKER};
pub use tracker::{Checkpoint, FileCheckpoint, FileId};

use crate::REDACTED;

/// Most text (sum of the decoded lines' lengths) in one chunk. With
/// [`config::MAX_LINE_BYTES`] and the escaping JSON may add, a chunk's record stays well
/// below the spool's 4 MiB record limit.
pub const CHUNK_MAX_TEXT_BYTES: usize = 1024 * 1024;

/// Lines of one file (stream) and the checkpoint to store with them.
#[derive(Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The stream the lines belong to: the name of the file when it was first followed
    /// (a rotated `app.log.1` is still `app.log`). Empty for a checkpoint-only chunk. May be
    /// device data.
    pub file: String,
    /// The lines, in file order, without line breaks. Device data: may carry PHI. Empty
    /// for a checkpoint-only chunk (the first positions of a device followed for the first
    /// time): the sink stores only the checkpoint then.
    pub lines: Vec<String>,
    /// Where to resume once these lines are durable.
    pub checkpoint: Checkpoint,
}

impl std::fmt::Debug for LogChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogChunk({} lines, {REDACTED})", self.lines.len())
    }
}

/// Why a sink did not take a chunk. Texts must not quote lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The sink cannot take lines now (spool full, shutting down): retried later.
    #[error("sink busy: {0}")]
    Busy(String),
    /// The sink failed (storage error): retried later.
    #[error("sink failed: {0}")]
    Failed(String),
}

/// Where log lines go: the gateway's PHI stage and spool.
pub trait LogSink: Send + Sync + 'static {
    /// The checkpoint stored with the last accepted chunk for this device, if any.
    fn load_checkpoint(
        &self,
        device_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, SinkError>> + Send;

    /// Ship lines; returns after the lines AND the checkpoint are durable together (one
    /// transaction), so a crash never loses or repeats lines in the normal case. A chunk
    /// without lines carries only a checkpoint to store.
    fn ship(
        &self,
        device_id: &str,
        chunk: LogChunk,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Errors that stop a follower.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFileError {
    /// The device's config does not validate.
    #[error("invalid logfile config: {0}")]
    Config(String),
}
