//! The log-file follower: a thin tokio driver around [`Tracker`].
//!
//! One round: list the directory (regular files only; symbolic links and non-UTF-8 names
//! are skipped) → [`Tracker::observe`] → do the reads it asks for → ship due chunks →
//! sleep until the next wake-up. Wake-ups come from `notify` (inotify on Linux; events
//! only wake the loop, their content is not trusted), from the periodic poll
//! (`poll_interval_ms`: notifications can be missed, and a directory that does not exist
//! yet cannot be watched), from the tracker's next deadline (batch delay, idle flush),
//! and from shutdown. A round that read a full budget starts the next one at once.
//!
//! Invariants:
//! - **Ship order and durability**: one chunk is in flight at a time; the next is taken
//!   only after [`LogSink::ship`] returned `Ok` (lines and checkpoint durable together).
//!   A failed ship keeps the same chunk and retries it after a back-off (250 ms doubling
//!   to 30 s): nothing is skipped, nothing reordered. Meanwhile reading stops once a
//!   batch per file is waiting, so memory stays bounded.
//! - **First run**: when the sink has no checkpoint for the device, the first positions
//!   (which with `start_at = "end"` skip existing content) are shipped as a checkpoint-only
//!   chunk, so a restart before the first line does not skip lines written meanwhile.
//! - **Reads check identity**: a file is opened by name and read only if it is still the
//!   `(dev, ino)` the tracker expects (a rename between listing and read is caught).
//! - **Failures are not "gone"**: a directory that cannot be listed changes nothing in
//!   the tracker; the follower retries at the poll interval and logs once per outage.
//! - **Shutdown** (the watch turns `true` or its sender is dropped): complete lines
//!   already read are offered to the sink once each (no retry); whatever is not accepted
//!   is read again after the restart, from the last stored checkpoint.
//! - **Logging**: counts, inode numbers, errors; file names only at debug level (a name
//!   could carry a patient's name); never line content.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::config::LogFileConfig;
use super::tracker::{FileEvent, FileId, ObservedFile, ReadOutcome, ReadRequest, Tracker};
use super::{LogChunk, LogFileError, LogSink};

/// Shortest time between two rounds woken by file notifications (a busy log would
/// otherwise list the directory once per write).
const MIN_NOTIFY_ROUND: Duration = Duration::from_millis(50);
/// First back-off after a failed ship or checkpoint load.
const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the log files of device `device_id` as `config` says and ships their lines to
/// `sink`, until `shutdown` turns `true` (or its sender is dropped).
///
/// # Errors
/// [`LogFileError::Config`] if `config` does not validate. Every runtime failure (missing
/// directory, unreadable file, refusing sink) is logged and retried instead.
pub async fn follow<S: LogSink>(
    device_id: String,
    config: LogFileConfig,
    sink: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LogFileError> {
    config.validate().map_err(LogFileError::Config)?;
    let clock = Instant::now();
    let now_ms = move || u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let poll = Duration::from_millis(config.poll_interval_ms);
    let dir = config.directory.clone();

    let mut backoff = BACKOFF_INITIAL;
    let checkpoint = loop {
        match sink.load_checkpoint(&device_id).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(device = %device_id, error = %e, "cannot load log checkpoint; retrying");
                if sleep_or_shutdown(&mut shutdown, backoff).await {
                    return Ok(());
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    let mut need_initial_checkpoint = checkpoint.is_none();
    let mut tracker = Tracker::new(&config, checkpoint).map_err(LogFileError::Config)?;
    info!(device = %device_id, "following log files");

    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let mut watcher: Option<RecommendedWatcher> = None;
    let mut watch_error_logged = false;
    let mut list_error_logged = false;
    let mut in_flight: Option<LogChunk> = None;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = BACKOFF_INITIAL;

    loop {
        if *shutdown.borrow() {
            break;
        }
        if watcher.is_none() {
            match start_watcher(&dir, wake_tx.clone()) {
                Ok(w) => {
                    watcher = Some(w);
                    watch_error_logged = false;
                }
                Err(e) if !watch_error_logged => {
                    watch_error_logged = true;
                    warn!(device = %device_id, error = %e, "cannot watch the log directory; polling only");
                }
                Err(_) => {}
            }
        }

        let last_round = Instant::now();
        let mut more_to_read = false;
        match list_dir(dir.clone()).await {
            Ok(listing) => {
                if list_error_logged {
                    info!(device = %device_id, "log directory readable again");
                    list_error_logged = false;
                }
                let now = now_ms();
                for event in tracker.observe(&listing, now) {
                    log_event(&device_id, event);
                }
                more_to_read = do_reads(&device_id, &dir, &mut tracker, now_ms).await;
                if need_initial_checkpoint {
                    need_initial_checkpoint = false;
                    if in_flight.is_none() {
                        in_flight = Some(LogChunk {
                            file: String::new(),
                            lines: Vec::new(),
                            checkpoint: tracker.checkpoint(),
                        });
                    }
                }
            }
            Err(e) => {
                if !list_error_logged {
                    list_error_logged = true;
                    warn!(device = %device_id, error = %e, "cannot list the log directory; retrying");
                }
                // The directory may come back as a new inode: watch it afresh then.
                watcher = None;
            }
        }
        tracker.on_idle(now_ms());

        // Ship what is due, one chunk at a time.
        while retry_at.is_none_or(|t| Instant::now() >= t) {
            let chunk = match in_flight.take() {
                Some(c) => c,
                None => match tracker.take_chunk(now_ms(), false) {
                    Some(c) => c,
                    None => break,
                },
            };
            match sink.ship(&device_id, chunk.clone()).await {
                Ok(()) => {
                    retry_at = None;
                    backoff = BACKOFF_INITIAL;
                }
                Err(e) => {
                    warn!(device = %device_id, error = %e, lines = chunk.lines.len(),
                          retry_in_ms = backoff.as_millis() as u64, "log lines not accepted; will retry");
                    in_flight = Some(chunk);
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }

        if more_to_read && (in_flight.is_none() || tracker.pending_lines() == 0) {
            tokio::task::yield_now().await;
            continue;
        }
        let now = now_ms();
        let mut wait = poll;
        if let Some(deadline) = tracker.next_deadline() {
            wait = wait.min(Duration::from_millis(deadline.saturating_sub(now)));
        }
        if let Some(t) = retry_at {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            woken = wake_rx.recv() => {
                if woken.is_some() {
                    // Coalesce a burst of notifications into one round.
                    let earliest = last_round + MIN_NOTIFY_ROUND;
                    tokio::time::sleep_until(earliest).await;
                    while wake_rx.try_recv().is_ok() {}
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }

    // Shutdown: offer complete lines once; what is refused is re-read after a restart.
    let mut offered = 0usize;
    while let Some(chunk) = in_flight
        .take()
        .or_else(|| tracker.take_chunk(now_ms(), true))
    {
        offered += chunk.lines.len();
        if let Err(e) = sink.ship(&device_id, chunk).await {
            debug!(device = %device_id, error = %e, "lines left for the next start");
            break;
        }
    }
    drop(watcher);
    info!(device = %device_id, offered_at_shutdown = offered, "stopped following log files");
    Ok(())
}

/// Does the reads the tracker asks for. Returns true if a read filled its budget (more
/// data is probably waiting).
async fn do_reads(
    device_id: &str,
    dir: &Path,
    tracker: &mut Tracker,
    now_ms: impl Fn() -> u64,
) -> bool {
    let mut more = false;
    for request in tracker.next_reads() {
        let path = dir.join(&request.name);
        let req = request.clone();
        let read = tokio::task::spawn_blocking(move || read_at(&path, &req)).await;
        match read {
            Ok(Ok(Some(data))) => match tracker.on_read(&request, &data, now_ms()) {
                ReadOutcome::Consumed(n) => more |= n >= request.max_bytes,
                ReadOutcome::Replaced => {
                    info!(device = %device_id, ino = request.id.ino, "log file content replaced; reading it again from its start");
                    more = true;
                }
                ReadOutcome::Stale => {}
            },
            // Another file under that name now: the next listing sorts it out.
            Ok(Ok(None)) => more = true,
            Ok(Err(e)) => {
                debug!(device = %device_id, ino = request.id.ino, error = %e, "log file read failed");
            }
            Err(e) => warn!(device = %device_id, error = %e, "log file read task failed"),
        }
    }
    more
}

/// Reads `request` from `path`: `None` if the file there is not the expected identity.
fn read_at(path: &Path, request: &ReadRequest) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let id = file_id(&meta);
    if id != request.id {
        return Ok(None);
    }
    let want = request.expect.len() + request.max_bytes;
    let available = meta.len().saturating_sub(request.offset);
    // Read what the size says is there (plus a little for growth since the stat), never
    // more than asked.
    let len = want.min(
        usize::try_from(available)
            .unwrap_or(usize::MAX)
            .saturating_add(4096),
    );
    let mut buf = vec![0u8; len];
    let mut filled = 0usize;
    while filled < len {
        match file.read_at(&mut buf[filled..], request.offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Some(buf))
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
        // statx birth time; `None` where the file system does not record it.
        created_ns: meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok()),
    }
}

/// Lists the directory's regular files (not following symbolic links).
async fn list_dir(dir: PathBuf) -> std::io::Result<Vec<ObservedFile>> {
    tokio::task::spawn_blocking(move || {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let Ok(entry) = entry else { continue };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if !file_type.is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // DirEntry::metadata does not follow symbolic links; a file that vanished
            // since read_dir is simply not listed.
            let Ok(meta) = entry.metadata() else { continue };
            files.push(ObservedFile {
                name,
                id: file_id(&meta),
                size: meta.len(),
            });
        }
        Ok(files)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn start_watcher(dir: &Path, wake: mpsc::Sender<()>) -> Result<RecommendedWatcher, notify::Error> {
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // Full channel: a wake-up is already pending, which is all an event means here.
        let _ = wake.try_send(());
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

fn log_event(device_id: &str, event: FileEvent) {
    match event {
        FileEvent::New(id, offset) => {
            debug!(device = %device_id, ino = id.ino, offset, "following a new log file");
        }
        FileEvent::Renamed(id) => debug!(device = %device_id, ino = id.ino, "log file renamed"),
        FileEvent::Truncated(id) => {
            info!(device = %device_id, ino = id.ino, "log file truncated; reading it from its start");
        }
        FileEvent::Gone(id) => {
            debug!(device = %device_id, ino = id.ino, "log file left the directory")
        }
    }
}

/// Sleeps for `duration`; true if shutdown was signalled meanwhile.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::select! {
        changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
        () = tokio::time::sleep(duration) => *shutdown.borrow(),
    }
}
