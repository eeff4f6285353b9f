//! Which files of a device's log directory to read, from where, and in which order. Pure:
//! the driver lists the directory and reads bytes; this core decides. No I/O, no clock
//! (time comes in as `now_ms`, milliseconds on any monotonic scale).
//!
//! # Identity
//! A file is its `(dev, ino)` pair, not its name: names move under rotation, inodes do not.
//! - **New**: an identity not seen before whose name matches the glob is followed: from its
//!   start, or — only on the very first run of a device, when there is no checkpoint at
//!   all — from its end if `start_at = "end"`.
//! - **Rename**: the same identity under another name (rotation by rename,
//!   `app.log` → `app.log.1`) keeps being read where it was, even if the new name does not
//!   match the glob: a rotated file is read to its end, including lines the application
//!   writes to it before it reopens its log.
//! - **Truncation** (copytruncate): size below the read position, or the bytes just
//!   before the read position changed (a truncate that was followed by regrowth past the
//!   old position before we looked; checked with the last
//!   [`TAIL_BYTES`](super::lines::TAIL_BYTES) bytes read, in
//!   memory only): a held partial line is shipped as it is, then reading restarts at 0.
//! - **Gone**: an identity missing from a listing: a held partial line is shipped as it
//!   is, lines already read are still shipped, then the identity is forgotten. A failed
//!   listing is never taken as "all gone" (the driver does not call [`Tracker::observe`]).
//!
//! # Order
//! Each followed file belongs to a *stream* named after the name under which it was first
//! followed; a file rotated away keeps its stream name (so `app.log.1` is reported as
//! `app.log`). Within a stream, files are read and shipped oldest first: a newer file of
//! the stream is not read while an older one has unread bytes, and its lines are not
//! shipped while an older one has lines waiting. So a rotation never reorders lines.
//!
//! # Checkpoint
//! The [`Checkpoint`] handed out with each chunk holds, per identity, the [`Position`]
//! after the last line handed out (taken into a chunk) — or, for a file with nothing
//! waiting, after everything read except a held partial line. The driver hands out the
//! next chunk only after the previous one was accepted, so the checkpoint of an accepted
//! chunk is exactly "everything before this is durable". Resuming from it re-reads
//! nothing that was accepted and skips nothing that was not. File names in a checkpoint
//! may be device data: `Debug` never prints them.
//!
//! Known limits:
//! - On a file system without birth times (some network file systems), an inode number
//!   reused by a new file between two listings (delete and recreate within one poll
//!   interval, or while the gateway was down) is taken for the old file; if the new file
//!   is already longer than the old read position, its beginning is skipped. Where birth
//!   times exist (ext4, xfs, btrfs, tmpfs) the identity includes it and this cannot happen.
//! - A partial last line of a rotated file that the application completes only after the
//!   newer file of the stream was read ships after the newer file's lines.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::config::{LogFileConfig, StartAt};
use super::glob::Glob;
use super::lines::{LineSplitter, Position, SplitLine};
use super::{LogChunk, CHUNK_MAX_TEXT_BYTES};

/// The identity of a file: device, inode number and, where the file system records it,
/// birth time (which tells a new file apart from a deleted one whose inode number it
/// reuses — ext4 reuses freed inode numbers at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `stx_btime` in nanoseconds since the Unix epoch, if the file system has it.
    pub created_ns: Option<u64>,
}

/// One regular file as listed by the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct ObservedFile {
    /// File name within the directory.
    pub name: String,
    /// Its identity.
    pub id: FileId,
    /// Its size in bytes at listing time.
    pub size: u64,
}

impl std::fmt::Debug for ObservedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedFile")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where to resume in every file of one device.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// One entry per followed file identity.
    pub files: Vec<FileCheckpoint>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.files).finish()
    }
}

/// Where to resume in one file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
    /// Birth time of the file (nanoseconds since the Unix epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ns: Option<u64>,
    /// The stream (file name first followed) its lines are reported under. Device data:
    /// a sink must treat it like the lines.
    pub name: String,
    /// The position after the last line shipped.
    #[serde(flatten)]
    pub position: Position,
}

impl std::fmt::Debug for FileCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCheckpoint")
            .field("dev", &self.dev)
            .field("ino", &self.ino)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// What [`Tracker::observe`] noticed, for the driver's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    /// A new file is followed, from this offset.
    New(FileId, u64),
    /// A followed file has a new name.
    Renamed(FileId),
    /// A followed file was truncated or its content replaced: read again from 0.
    Truncated(FileId),
    /// A followed file left the directory.
    Gone(FileId),
}

/// One read the driver should do: open `name`, check it is still `id`, read from `offset`
/// up to `expect.len() + max_bytes` bytes and hand them to [`Tracker::on_read`].
#[derive(Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The identity expected under `name`.
    pub id: FileId,
    /// Current file name within the directory.
    pub name: String,
    /// Where the read starts.
    pub offset: u64,
    /// Bytes the file must still hold at `offset` (the tail of what was read before);
    /// new data starts right after them.
    pub expect: Vec<u8>,
    /// Most new bytes to read.
    pub max_bytes: usize,
}

impl std::fmt::Debug for ReadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRequest")
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("expect_len", &self.expect.len())
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

/// Result of feeding read bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many new bytes were consumed.
    Consumed(usize),
    /// The file no longer holds what was read before: it restarts at 0 (like a truncation).
    Replaced,
    /// The request no longer matches the tracker's state (a listing changed it): ignored.
    Stale,
}

/// Most new bytes asked for in one read.
pub const READ_BUDGET_BYTES: usize = 256 * 1024;

#[derive(Debug)]
struct TrackedFile {
    id: FileId,
    /// Order of discovery: older files are read and shipped first within a stream.
    seq: u64,
    stream: String,
    /// `None` once the file left the directory.
    current_name: Option<String>,
    observed_size: u64,
    splitter: LineSplitter,
    pending: VecDeque<SplitLine>,
    pending_bytes: usize,
    /// When the oldest waiting line became complete.
    oldest_pending_ms: Option<u64>,
    /// When bytes were last fed (for the idle flush of a partial line).
    last_fed_ms: u64,
    /// Position after the last line handed out in a chunk.
    shipped: Position,
}

impl TrackedFile {
    fn push_line(&mut self, line: SplitLine, now_ms: u64) {
        self.pending_bytes += line.text.len();
        self.pending.push_back(line);
        self.oldest_pending_ms.get_or_insert(now_ms);
    }

    /// Content replaced: ship the held partial line, then start over at 0. Lines waiting
    /// resume at 0 too once shipped: what followed them in the old content is gone.
    fn restart_from_zero(&mut self, now_ms: u64) {
        if let Some(line) = self.splitter.flush_partial() {
            self.push_line(line, now_ms);
        }
        for line in &mut self.pending {
            line.end = Position::default();
        }
        self.shipped = Position::default();
        self.splitter.reset();
    }

    fn checkpoint_position(&self) -> Position {
        if self.pending.is_empty() {
            self.splitter.resume_position()
        } else {
            self.shipped
        }
    }
}

/// The settings the tracker needs, taken from a [`LogFileConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settings {
    max_line_bytes: usize,
    batch_max_lines: usize,
    batch_max_delay_ms: u64,
    idle_flush_ms: u64,
    start_at: StartAt,
}

/// The follower's decision core for one device directory. See the module documentation.
#[derive(Debug)]
pub struct Tracker {
    glob: Glob,
    settings: Settings,
    files: Vec<TrackedFile>,
    next_seq: u64,
    /// True until the first listing when the device has no checkpoint (`start_at` applies).
    first_run: bool,
}

impl Tracker {
    /// A tracker for `config`, resuming from `checkpoint` (`None`: the device was never
    /// followed before).
    ///
    /// # Errors
    /// The glob's reason if it does not compile (a validated config always does).
    pub fn new(config: &LogFileConfig, checkpoint: Option<Checkpoint>) -> Result<Self, String> {
        let glob = Glob::new(&config.glob)?;
        let settings = Settings {
            max_line_bytes: config.max_line_bytes,
            batch_max_lines: config.batch_max_lines.max(1),
            batch_max_delay_ms: config.batch_max_delay_ms,
            idle_flush_ms: config.idle_flush_ms,
            start_at: config.start_at,
        };
        let first_run = checkpoint.is_none();
        let mut tracker = Tracker {
            glob,
            settings,
            files: Vec::new(),
            next_seq: 0,
            first_run,
        };
        for entry in checkpoint.map(|c| c.files).unwrap_or_default() {
            let id = FileId {
                dev: entry.dev,
                ino: entry.ino,
                created_ns: entry.created_ns,
            };
            if tracker.find(id).is_some() {
                continue;
            }
            let file = tracker.track(id, entry.name, None, entry.position);
            tracker.files.push(file);
        }
        Ok(tracker)
    }

    fn track(
        &mut self,
        id: FileId,
        stream: String,
        current_name: Option<String>,
        start: Position,
    ) -> TrackedFile {
        let seq = self.next_seq;
        self.next_seq += 1;
        TrackedFile {
            id,
            seq,
            stream,
            current_name,
            observed_size: start.offset,
            splitter: LineSplitter::new(self.settings.max_line_bytes, start),
            pending: VecDeque::new(),
            pending_bytes: 0,
            oldest_pending_ms: None,
            last_fed_ms: 0,
            shipped: start,
        }
    }

    fn find(&self, id: FileId) -> Option<usize> {
        self.files.iter().position(|f| f.id == id)
    }

    /// Takes a complete listing of the directory's regular files.
    pub fn observe(&mut self, listing: &[ObservedFile], now_ms: u64) -> Vec<FileEvent> {
        let mut events = Vec::new();
        let chosen = self.choose_names(listing);

        for file in &mut self.files {
            if file.current_name.is_some() && !chosen.iter().any(|(id, _, _)| *id == file.id) {
                file.current_name = None;
                if let Some(line) = file.splitter.flush_partial() {
                    file.push_line(line, now_ms);
                }
                events.push(FileEvent::Gone(file.id));
            }
        }
        // A checkpoint entry that is not in the first listing is gone too (silently: it
        // was never seen by this process).
        for (id, name, size) in chosen {
            match self.find(id) {
                Some(i) => {
                    let file = &mut self.files[i];
                    if file.current_name.as_deref() != Some(name) {
                        if file.current_name.is_some() {
                            events.push(FileEvent::Renamed(id));
                        }
                        file.current_name = Some(name.to_owned());
                    }
                    if size < file.splitter.read_pos() {
                        file.restart_from_zero(now_ms);
                        events.push(FileEvent::Truncated(id));
                    }
                    file.observed_size = size;
                }
                None if self.glob.matches(name) => {
                    let offset = if self.first_run && self.settings.start_at == StartAt::End {
                        size
                    } else {
                        0
                    };
                    let mut file = self.track(
                        id,
                        name.to_owned(),
                        Some(name.to_owned()),
                        Position {
                            offset,
                            discarding: false,
                        },
                    );
                    file.observed_size = size;
                    self.files.push(file);
                    events.push(FileEvent::New(id, offset));
                }
                None => {}
            }
        }
        self.first_run = false;
        self.prune();
        events
    }

    /// One name per identity (hard links list it twice): the name it is followed under
    /// if still present, else the first name the glob matches, else the first name.
    fn choose_names<'a>(&self, listing: &'a [ObservedFile]) -> Vec<(FileId, &'a str, u64)> {
        let mut sorted: Vec<&ObservedFile> = listing.iter().collect();
        sorted.sort_by(|a, b| (a.id, &a.name).cmp(&(b.id, &b.name)));
        let mut chosen: Vec<(FileId, &'a str, u64)> = Vec::new();
        for group in sorted.chunk_by(|a, b| a.id == b.id) {
            let id = group[0].id;
            let current = self
                .find(id)
                .and_then(|i| self.files[i].current_name.as_deref());
            let pick = group
                .iter()
                .find(|f| Some(f.name.as_str()) == current)
                .or_else(|| group.iter().find(|f| self.glob.matches(&f.name)))
                .unwrap_or(&group[0]);
            chosen.push((id, pick.name.as_str(), pick.size));
        }
        chosen
    }

    /// Forgets files that left the directory and have nothing left to ship.
    fn prune(&mut self) {
        self.files
            .retain(|f| f.current_name.is_some() || !f.pending.is_empty());
    }

    /// The reads to do now, in order. Per stream only the oldest file with unread bytes is
    /// read; a file whose waiting lines already fill a batch is not read (back-pressure:
    /// memory stays bounded while the sink refuses).
    #[must_use]
    pub fn next_reads(&self) -> Vec<ReadRequest> {
        let mut order: Vec<&TrackedFile> = self.files.iter().collect();
        order.sort_by(|a, b| (&a.stream, a.seq).cmp(&(&b.stream, b.seq)));
        let mut reads = Vec::new();
        for stream in order.chunk_by(|a, b| a.stream == b.stream) {
            for file in stream {
                let Some(name) = &file.current_name else {
                    continue;
                };
                if file.observed_size <= file.splitter.read_pos() {
                    continue;
                }
                if file.pending.len() < self.settings.batch_max_lines {
                    let expect = file.splitter.tail().to_vec();
                    reads.push(ReadRequest {
                        id: file.id,
                        name: name.clone(),
                        offset: file.splitter.read_pos() - expect.len() as u64,
                        expect,
                        max_bytes: READ_BUDGET_BYTES,
                    });
                }
                break;
            }
        }
        reads
    }

    /// Feeds the bytes read for `request` (starting at `request.offset`; fewer than asked
    /// at the end of the file).
    pub fn on_read(&mut self, request: &ReadRequest, data: &[u8], now_ms: u64) -> ReadOutcome {
        let Some(i) = self.find(request.id) else {
            return ReadOutcome::Stale;
        };
        let file = &mut self.files[i];
        let expected_pos = request.offset + request.expect.len() as u64;
        if file.splitter.read_pos() != expected_pos || file.splitter.tail() != request.expect {
            return ReadOutcome::Stale;
        }
        if data.len() < request.expect.len() || data[..request.expect.len()] != request.expect[..] {
            file.restart_from_zero(now_ms);
            return ReadOutcome::Replaced;
        }
        let new = &data[request.expect.len()..];
        if new.is_empty() {
            return ReadOutcome::Consumed(0);
        }
        let mut lines = Vec::new();
        file.splitter.push(new, &mut |l| lines.push(l));
        for line in lines {
            file.push_line(line, now_ms);
        }
        file.last_fed_ms = now_ms;
        file.observed_size = file.observed_size.max(file.splitter.read_pos());
        ReadOutcome::Consumed(new.len())
    }

    /// Ships partial lines that have not grown for `idle_flush_ms` (if configured).
    pub fn on_idle(&mut self, now_ms: u64) {
        let idle = self.settings.idle_flush_ms;
        if idle == 0 {
            return;
        }
        for file in &mut self.files {
            if file.splitter.has_partial() && now_ms.saturating_sub(file.last_fed_ms) >= idle {
                if let Some(line) = file.splitter.flush_partial() {
                    file.push_line(line, now_ms);
                }
            }
        }
    }

    /// The next chunk to ship, if one is due: a full batch, or lines that waited
    /// `batch_max_delay_ms`, or anything waiting when `force` is set (shutdown). The lines
    /// are handed out: call again only after the previous chunk was accepted.
    pub fn take_chunk(&mut self, now_ms: u64, force: bool) -> Option<LogChunk> {
        let due_streams: Vec<&str> = self
            .files
            .iter()
            .filter(|f| !f.pending.is_empty() && (force || self.is_due(f, now_ms)))
            .map(|f| f.stream.as_str())
            .collect();
        let index = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.pending.is_empty() && due_streams.contains(&f.stream.as_str()))
            .min_by_key(|(_, f)| f.seq)
            .map(|(i, _)| i)?;

        let max_lines = self.settings.batch_max_lines;
        let file = &mut self.files[index];
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        while let Some(line) = file.pending.front() {
            if !lines.is_empty()
                && (lines.len() >= max_lines || bytes + line.text.len() > CHUNK_MAX_TEXT_BYTES)
            {
                break;
            }
            let Some(line) = file.pending.pop_front() else {
                break;
            };
            bytes += line.text.len();
            file.shipped = line.end;
            lines.push(line.text);
        }
        file.pending_bytes -= bytes;
        if file.pending.is_empty() {
            file.oldest_pending_ms = None;
        }
        let stream = file.stream.clone();
        self.prune();
        Some(LogChunk {
            file: stream,
            lines,
            checkpoint: self.checkpoint(),
        })
    }

    fn is_due(&self, file: &TrackedFile, now_ms: u64) -> bool {
        file.pending.len() >= self.settings.batch_max_lines
            || file.pending_bytes >= CHUNK_MAX_TEXT_BYTES
            || file
                .oldest_pending_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.settings.batch_max_delay_ms)
    }

    /// The checkpoint as of the lines handed out so far.
    #[must_use]
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            files: self
                .files
                .iter()
                .map(|f| FileCheckpoint {
                    dev: f.id.dev,
                    ino: f.id.ino,
                    created_ns: f.id.created_ns,
                    name: f.stream.clone(),
                    position: f.checkpoint_position(),
                })
                .collect(),
        }
    }

    /// The earliest time something becomes due without new input: a waiting batch's
    /// delay or a partial line's idle flush.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        let idle = self.settings.idle_flush_ms;
        self.files
            .iter()
            .flat_map(|f| {
                let batch = f
                    .oldest_pending_ms
                    .map(|t| t.saturating_add(self.settings.batch_max_delay_ms));
                let flush = (idle > 0 && f.splitter.has_partial())
                    .then(|| f.last_fed_ms.saturating_add(idle));
                [batch, flush]
            })
            .flatten()
            .min()
    }

    /// Complete lines read and not yet handed out.
    #[must_use]
    pub fn pending_lines(&self) -> usize {
        self.files.iter().map(|f| f.pending.len()).sum()
    }

    /// Number of file identities followed (including rotated files still being read).
    #[must_use]
    pub fn followed_files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An in-memory directory: name → (id, content).
    #[derive(Default)]
    struct Dir {
        files: Vec<(String, FileId, Vec<u8>)>,
        next_ino: u64,
    }

    impl Dir {
        fn create(&mut self, name: &str) -> FileId {
            self.next_ino += 1;
            let id = FileId {
                dev: 1,
                ino: self.next_ino,
                created_ns: Some(self.next_ino * 1000),
            };
            self.files.retain(|(n, _, _)| n != name);
            self.files.push((name.to_owned(), id, Vec::new()));
            id
        }
        fn append(&mut self, name: &str, data: &str) {
            let f = self.files.iter_mut().find(|(n, _, _)| n == name).unwrap();
            f.2.extend_from_slice(data.as_bytes());
        }
        fn truncate(&mut self, name: &str) {
            let f = self.files.iter_mut().find(|(n, _, _)| n == name).unwrap();
            f.2.clear();
        }
        fn rename(&mut self, from: &str, to: &str) {
            self.files.retain(|(n, _, _)| n != to);
            let f = self.files.iter_mut().find(|(n, _, _)| n == from).unwrap();
            f.0 = to.to_owned();
        }
        fn remove(&mut self, name: &str) {
            self.files.retain(|(n, _, _)| n != name);
        }
        fn listing(&self) -> Vec<ObservedFile> {
            self.files
                .iter()
                .map(|(name, id, data)| ObservedFile {
                    name: name.clone(),
                    id: *id,
                    size: data.len() as u64,
                })
                .collect()
        }
        /// Plays the driver: list, read everything readable, repeat until quiet.
        fn pump(&self, t: &mut Tracker, now: u64) -> Vec<FileEvent> {
            let mut events = t.observe(&self.listing(), now);
            loop {
                let reads = t.next_reads();
                if reads.is_empty() {
                    break;
                }
                for r in reads {
                    let Some((_, id, data)) = self.files.iter().find(|(n, _, _)| *n == r.name)
                    else {
                        continue;
                    };
                    assert_eq!(*id, r.id);
                    let start = (r.offset as usize).min(data.len());
                    let end = (start + r.expect.len() + r.max_bytes).min(data.len());
                    t.on_read(&r, &data[start..end], now);
                }
                events.extend(t.observe(&self.listing(), now));
            }
            events
        }
    }

    fn config(start_at: StartAt) -> LogFileConfig {
        LogFileConfig {
            start_at,
            batch_max_lines: 100,
            batch_max_delay_ms: 0,
            idle_flush_ms: 0,
            ..LogFileConfig::new("/logs".into())
        }
    }

    /// Every due chunk, as (stream, lines).
    fn drain(t: &mut Tracker) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        while let Some(c) = t.take_chunk(1_000_000, true) {
            out.push((c.file, c.lines));
        }
        out
    }

    fn all_lines(t: &mut Tracker) -> Vec<String> {
        drain(t).into_iter().flat_map(|(_, l)| l).collect()
    }

    #[test]
    fn first_run_start_at_end_skips_existing_content_only() {
        let mut dir = Dir::default();
        dir.create("app.log");
        dir.append("app.log", "old 1\nold 2\n");
        let mut t = Tracker::new(&config(StartAt::End), None).unwrap();
        dir.pump(&mut t, 0);
        assert!(all_lines(&mut t).is_empty());
        dir.append("app.log", "new 1\n");
        dir.create("other.log");
        dir.append("other.log", "born after start\n");
        dir.create("ignored.txt");
        dir.append("ignored.txt", "not matched\n");
        dir.pump(&mut t, 1);
        assert_eq!(all_lines(&mut t), ["new 1", "born after start"]);
    }

    #[test]
    fn first_run_start_at_beginning_reads_everything() {
        let mut dir = Dir::default();
        dir.create("app.log");
        dir.append("app.log", "old 1\nold 2\n");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.pump(&mut t, 0);
        assert_eq!(all_lines(&mut t), ["old 1", "old 2"]);
    }

    #[test]
    fn rotation_by_rename_and_create_drains_old_file_first() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "a1\na2\n");
        dir.pump(&mut t, 0);
        assert_eq!(all_lines(&mut t), ["a1", "a2"]);

        // Rotate while lines are unread in the old file, plus a late write to it.
        dir.append("app.log", "a3\n");
        dir.rename("app.log", "app.log.1");
        dir.append("app.log.1", "a4 late\n");
        let new_id = dir.create("app.log");
        dir.append("app.log", "b1\nb2\n");
        let events = dir.pump(&mut t, 1);
        assert!(events.iter().any(|e| matches!(e, FileEvent::Renamed(_))));
        assert!(events.contains(&FileEvent::New(new_id, 0)));
        let chunks = drain(&mut t);
        assert_eq!(
            chunks,
            [
                (
                    "app.log".to_owned(),
                    vec!["a3".to_owned(), "a4 late".to_owned()]
                ),
                ("app.log".to_owned(), vec!["b1".to_owned(), "b2".to_owned()]),
            ],
            "the rotated file keeps its stream name and goes first"
        );
    }

    #[test]
    fn newer_file_is_not_read_while_older_has_unread_bytes() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.pump(&mut t, 0);
        dir.append("app.log", "x\n");
        dir.rename("app.log", "app.log.1");
        dir.create("app.log");
        dir.append("app.log", "y\n");
        t.observe(&dir.listing(), 1);
        let reads = t.next_reads();
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0].name, "app.log.1");
    }

    #[test]
    fn copytruncate_restarts_at_zero_and_ships_held_partial() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "l1\nl2\npartial");
        dir.pump(&mut t, 0);
        assert_eq!(all_lines(&mut t), ["l1", "l2"]);
        dir.truncate("app.log");
        dir.append("app.log", "n1\n");
        let events = dir.pump(&mut t, 1);
        assert!(matches!(events[..], [FileEvent::Truncated(_)]));
        assert_eq!(all_lines(&mut t), ["partial", "n1"]);
        let cp = t.checkpoint();
        assert_eq!(cp.files[0].position.offset, 3);
    }

    #[test]
    fn truncate_then_regrow_past_old_position_is_detected_by_content() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "first line\n");
        dir.pump(&mut t, 0);
        assert_eq!(all_lines(&mut t), ["first line"]);
        // Truncated and rewritten to beyond the old size before the next listing.
        dir.truncate("app.log");
        dir.append("app.log", "replacement content\nmore\n");
        dir.pump(&mut t, 1);
        assert_eq!(all_lines(&mut t), ["replacement content", "more"]);
    }

    #[test]
    fn rename_to_another_matching_name_keeps_position() {
        let mut dir = Dir::default();
        dir.create("a.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("a.log", "1\n");
        dir.pump(&mut t, 0);
        all_lines(&mut t);
        dir.rename("a.log", "b.log");
        dir.append("b.log", "2\n");
        dir.pump(&mut t, 1);
        assert_eq!(drain(&mut t), [("a.log".to_owned(), vec!["2".to_owned()])]);
    }

    #[test]
    fn deleted_file_ships_what_was_read_then_is_forgotten() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "kept\nlast words");
        dir.pump(&mut t, 0);
        dir.remove("app.log");
        let events = dir.pump(&mut t, 1);
        assert!(matches!(events[..], [FileEvent::Gone(_)]));
        assert_eq!(t.followed_files(), 1, "still has lines to ship");
        assert_eq!(all_lines(&mut t), ["kept", "last words"]);
        assert_eq!(t.followed_files(), 0);
        assert!(t.checkpoint().files.is_empty());
    }

    #[test]
    fn restart_from_checkpoint_into_a_rotated_file() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "1\n2\n");
        dir.pump(&mut t, 0);
        let chunk = t.take_chunk(0, true).unwrap();
        assert_eq!(chunk.lines, ["1", "2"]);
        let stored = chunk.checkpoint;
        drop(t); // crash

        // While down: more lines, a rotation, a new file.
        dir.append("app.log", "3\npart");
        dir.rename("app.log", "app.log.1");
        dir.append("app.log.1", "ial\n");
        dir.create("app.log");
        dir.append("app.log", "4\n");

        let json = serde_json::to_string(&stored).unwrap();
        let restored: Checkpoint = serde_json::from_str(&json).unwrap();
        let mut t = Tracker::new(&config(StartAt::End), Some(restored)).unwrap();
        dir.pump(&mut t, 10);
        assert_eq!(
            drain(&mut t),
            [
                (
                    "app.log".to_owned(),
                    vec!["3".to_owned(), "partial".to_owned()]
                ),
                ("app.log".to_owned(), vec!["4".to_owned()]),
            ],
            "start_at does not apply after a restart; the rotated file keeps its stream"
        );
    }

    #[test]
    fn checkpoint_of_a_chunk_covers_exactly_its_lines() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let cfg = LogFileConfig {
            batch_max_lines: 2,
            ..config(StartAt::Beginning)
        };
        let mut t = Tracker::new(&cfg, None).unwrap();
        dir.append("app.log", "aa\nbb\ncc\ndd\nee\nhalf");
        dir.pump(&mut t, 0);
        let c1 = t.take_chunk(0, false).unwrap();
        assert_eq!(c1.lines, ["aa", "bb"]);
        assert_eq!(c1.checkpoint.files[0].position.offset, 6);
        // Resuming from c1's checkpoint yields exactly the rest.
        let mut t2 = Tracker::new(&cfg, Some(c1.checkpoint)).unwrap();
        dir.pump(&mut t2, 0);
        assert_eq!(all_lines(&mut t2), ["cc", "dd", "ee"]);
        assert_eq!(
            t2.checkpoint().files[0].position.offset,
            15,
            "the held partial line is not counted as read"
        );
    }

    #[test]
    fn batching_waits_for_size_or_delay() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let cfg = LogFileConfig {
            batch_max_lines: 3,
            batch_max_delay_ms: 100,
            ..config(StartAt::Beginning)
        };
        let mut t = Tracker::new(&cfg, None).unwrap();
        dir.append("app.log", "1\n2\n");
        dir.pump(&mut t, 1000);
        assert!(t.take_chunk(1050, false).is_none());
        assert_eq!(t.next_deadline(), Some(1100));
        assert_eq!(t.take_chunk(1100, false).unwrap().lines, ["1", "2"]);
        dir.append("app.log", "3\n4\n5\n6\n");
        dir.pump(&mut t, 2000);
        assert_eq!(t.take_chunk(2000, false).unwrap().lines, ["3", "4", "5"]);
    }

    #[test]
    fn idle_partial_line_is_flushed_after_its_timeout() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let cfg = LogFileConfig {
            idle_flush_ms: 500,
            ..config(StartAt::Beginning)
        };
        let mut t = Tracker::new(&cfg, None).unwrap();
        dir.append("app.log", "prompt> ");
        dir.pump(&mut t, 1000);
        t.on_idle(1499);
        assert_eq!(t.pending_lines(), 0);
        assert_eq!(t.next_deadline(), Some(1500));
        t.on_idle(1500);
        assert_eq!(all_lines(&mut t), ["prompt> "]);
        dir.append("app.log", "answer\n");
        dir.pump(&mut t, 1600);
        assert_eq!(all_lines(&mut t), ["answer"]);
    }

    #[test]
    fn reading_stops_while_a_full_batch_waits() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let cfg = LogFileConfig {
            batch_max_lines: 2,
            ..config(StartAt::Beginning)
        };
        let mut t = Tracker::new(&cfg, None).unwrap();
        dir.append("app.log", &"x\n".repeat(10));
        dir.pump(&mut t, 0);
        // The whole file was read in one budget, but no further read is planned.
        dir.append("app.log", "more\n");
        t.observe(&dir.listing(), 0);
        assert!(t.next_reads().is_empty());
        assert_eq!(t.pending_lines(), 10);
    }

    #[test]
    fn stale_read_results_are_ignored() {
        let mut dir = Dir::default();
        dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "abc\n");
        t.observe(&dir.listing(), 0);
        let r = t.next_reads().pop().unwrap();
        assert_eq!(t.on_read(&r, b"abc\n", 0), ReadOutcome::Consumed(4));
        assert_eq!(t.on_read(&r, b"abc\n", 0), ReadOutcome::Stale);
        assert_eq!(all_lines(&mut t), ["abc"]);
    }

    #[test]
    fn hard_links_are_followed_once() {
        let mut dir = Dir::default();
        let id = dir.create("app.log");
        dir.append("app.log", "once\n");
        dir.files
            .push(("backup.log".into(), id, b"once\n".to_vec()));
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.pump(&mut t, 0);
        assert_eq!(all_lines(&mut t), ["once"]);
        assert_eq!(t.followed_files(), 1);
    }

    #[test]
    fn reused_inode_number_with_new_birth_time_is_a_new_file() {
        let mut dir = Dir::default();
        let old = dir.create("app.log");
        let mut t = Tracker::new(&config(StartAt::Beginning), None).unwrap();
        dir.append("app.log", "a long first line of the old file\n");
        dir.pump(&mut t, 0);
        all_lines(&mut t);
        let cp = t.checkpoint();
        drop(t);
        // While down: deleted and recreated under the same inode number, already longer
        // than the old read position.
        dir.remove("app.log");
        dir.create("app.log");
        let reused = FileId {
            created_ns: Some(99_999),
            ..old
        };
        dir.files[0].1 = reused;
        dir.append(
            "app.log",
            "the new file's first line, which must not be skipped\n",
        );
        let mut t = Tracker::new(&config(StartAt::Beginning), Some(cp)).unwrap();
        dir.pump(&mut t, 1);
        assert_eq!(
            all_lines(&mut t),
            ["the new file's first line, which must not be skipped"]
        );
    }

    #[test]
    fn debug_of_checkpoint_hides_names() {
        let cp = Checkpoint {
            files: vec![FileCheckpoint {
                dev: 1,
                ino: 2,
                created_ns: None,
                name: "DOE_JANE.log".into(),
                position: Position::default(),
            }],
        };
        assert!(!format!("{cp:?}").contains("DOE"));
    }
}
