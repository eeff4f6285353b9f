//! The audit log: an append-only, hash-chained file of security-relevant events (twin
//! settings accepted or refused, updates), `<data_dir>/audit.log`, mode 0600.
//!
//! # Format
//!
//! One JSON object per line (`\n`-terminated, UTF-8), fields in this order:
//!
//! ```json
//! {"seq":1,"at_ms":1700000000000,"kind":"twin.refused","subject":"devices.x.reboot","detail":"not an allowed setting","prev":"000…000","hash":"9f…"}
//! ```
//!
//! * `seq` counts from 1 without gaps; `at_ms` is wall-clock Unix milliseconds.
//! * `kind` is 1–64 characters of `a-z 0-9 . _ -`; `subject` (at most
//!   [`MAX_SUBJECT_CHARS`]) and `detail` (at most [`MAX_DETAIL_CHARS`]) are free text,
//!   cut with `…` when longer.
//! * `prev` is the previous entry's `hash`; the first entry's is 64 zeros ([`GENESIS`]).
//! * `hash` is lowercase hex SHA-256 of the entry's *canonical bytes*: the compact JSON
//!   `{"seq":…,"at_ms":…,"kind":…,"subject":…,"detail":…,"prev":…}` exactly as
//!   `serde_json` writes it (fields in that order, no whitespace, serde_json's string
//!   escaping). A line must be byte-for-byte the canonical bytes with `,"hash":"…"`
//!   inserted before the final `}`; any other spelling counts as tampering.
//!
//! # What it proves, and what not
//!
//! Changing, inserting, reordering or deleting any entry breaks the chain at that
//! entry ([`verify`] names the line). Cutting entries off the *end* cannot be detected
//! from the file alone: compare the head hash ([`VerifyReport::head`]) with a copy kept
//! elsewhere (the gateway logs it at start and can report it to the cloud).
//!
//! # Durability
//!
//! [`AuditLog::append`] returns only after the line is written and `fdatasync`ed. A crash
//! in the middle of a write leaves an incomplete last line (no `\n`) that was never
//! acknowledged to anyone: [`AuditLog::open`] removes it (and logs that it did). Any
//! other damage makes `open` refuse with [`AuditError::Broken`]: the daemon must not
//! continue a chain it cannot vouch for; an operator moves the file aside (keeping it as
//! evidence) and a new chain starts. A failed write is cut off again; if even that fails
//! the log refuses further appends until reopened.
//!
//! # Concurrency
//!
//! One process writes the file (the daemon). Appends are serialized by a `std` mutex and
//! block for one small write and an fsync (about a quarter millisecond on the target
//! disk); async callers use [`AuditLog::append_async`], which runs it on tokio's
//! blocking pool. Entries must never contain patient data: callers pass setting keys,
//! reasons, versions and device ids only.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest `subject` kept.
pub const MAX_SUBJECT_CHARS: usize = 512;
/// Longest `detail` kept.
pub const MAX_DETAIL_CHARS: usize = 2048;
/// Longest `kind`.
pub const MAX_KIND_CHARS: usize = 64;
/// The file name under the data directory.
pub const FILE_NAME: &str = "audit.log";

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading, writing or syncing the file failed.
    #[error("audit log {path}: {context}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken somewhere other than a torn last line.
    #[error("audit log {path} is broken at {problem}; move it aside (keep it as evidence) to start a new chain")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first problem.
        problem: Problem,
    },
    /// An earlier write failed and could not be undone: appending now would break the
    /// chain.
    #[error("audit log {path}: an earlier write failed and could not be undone; reopen the log")]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// The entry kind is empty, too long or has characters outside `a-z 0-9 . _ -`.
    #[error("invalid audit entry kind {0:?}")]
    InvalidKind(String),
    /// The blocking task of [`AuditLog::append_async`] did not finish.
    #[error("audit append task failed: {0}")]
    Task(String),
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened, e.g. `twin.refused`.
    pub kind: String,
    /// What it concerns, e.g. a setting key.
    pub subject: String,
    /// Details (a reason, a value).
    pub detail: String,
    /// The previous entry's hash.
    pub prev: String,
    /// SHA-256 of the canonical bytes, lowercase hex.
    pub hash: String,
}

/// The hashed part of an entry, in canonical field order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    at_ms: u64,
    kind: &'a str,
    subject: &'a str,
    detail: &'a str,
    prev: &'a str,
}

impl Entry {
    fn canonical(&self) -> Canonical<'_> {
        Canonical {
            seq: self.seq,
            at_ms: self.at_ms,
            kind: &self.kind,
            subject: &self.subject,
            detail: &self.detail,
            prev: &self.prev,
        }
    }

    /// SHA-256 (hex) of the entry's canonical bytes, as `hash` should be.
    #[must_use]
    pub fn compute_hash(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        let bytes = serde_json::to_vec(&self.canonical()).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// The line as written, without the `\n`.
    fn line(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// Not a JSON entry with exactly the expected fields.
    BadJson,
    /// `hash` does not match the entry's content: the entry was altered.
    HashMismatch,
    /// The line is not in canonical form (whitespace, escaping or field order changed).
    NotCanonical,
    /// `prev` is not the previous entry's hash: an entry before it was removed, altered
    /// or reordered.
    PrevMismatch,
    /// `seq` is not the previous plus one.
    SeqGap {
        /// The sequence number expected.
        expected: u64,
    },
    /// The last line has no newline: a write interrupted by a crash.
    TornTail,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProblemKind::BadJson => f.write_str("not a valid audit entry (bad JSON or fields)"),
            ProblemKind::HashMismatch => {
                f.write_str("hash mismatch: the entry was altered after it was written")
            }
            ProblemKind::NotCanonical => {
                f.write_str("not in canonical form: the line was rewritten after it was written")
            }
            ProblemKind::PrevMismatch => f.write_str(
                "prev does not match the previous entry's hash: entries were removed, altered or reordered",
            ),
            ProblemKind::SeqGap { expected } => {
                write!(f, "sequence gap: expected seq {expected}: entries were removed or reordered")
            }
            ProblemKind::TornTail => f.write_str(
                "incomplete last line: a write interrupted by a crash (never acknowledged)",
            ),
        }
    }
}

/// The first broken line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: u64,
    /// The entry's `seq`, if the line parsed.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries that verify, from the start of the file up to the first problem.
    pub entries: u64,
    /// `seq` of the last entry that verifies.
    pub last_seq: Option<u64>,
    /// Hash of the last entry that verifies ([`GENESIS`] if none).
    pub head: String,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// Bytes of the file up to the end of the last entry that verifies.
    pub good_bytes: u64,
}

impl VerifyReport {
    /// Whether the whole file verifies.
    #[must_use]
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Walks `bytes` as an audit log; stops at the first problem.
#[must_use]
pub fn verify_bytes(bytes: &[u8]) -> VerifyReport {
    let mut report = VerifyReport {
        entries: 0,
        last_seq: None,
        head: GENESIS.to_owned(),
        problem: None,
        good_bytes: 0,
    };
    let mut offset = 0usize;
    let mut line_no = 0u64;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            report.problem = Some(Problem {
                line: line_no,
                seq: None,
                kind: ProblemKind::TornTail,
            });
            break;
        };
        let line = &rest[..end];
        let problem = |seq, kind| Problem {
            line: line_no,
            seq,
            kind,
        };
        let entry = match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => entry,
            Err(_) => {
                report.problem = Some(problem(None, ProblemKind::BadJson));
                break;
            }
        };
        let seq = Some(entry.seq);
        let expected_seq = report.last_seq.map_or(1, |s| s.saturating_add(1));
        let kind = if entry.compute_hash() != entry.hash {
            Some(ProblemKind::HashMismatch)
        } else if entry.line() != line {
            Some(ProblemKind::NotCanonical)
        } else if entry.seq != expected_seq {
            Some(ProblemKind::SeqGap {
                expected: expected_seq,
            })
        } else if entry.prev != report.head {
            Some(ProblemKind::PrevMismatch)
        } else {
            None
        };
        if let Some(kind) = kind {
            report.problem = Some(problem(seq, kind));
            break;
        }
        report.entries += 1;
        report.last_seq = seq;
        report.head = entry.hash;
        offset += end + 1;
        report.good_bytes = offset as u64;
    }
    report
}

/// Verifies the audit log at `path`.
///
/// # Errors
/// [`AuditError::Io`] if it cannot be read; a broken chain is not an error but
/// [`VerifyReport::problem`].
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path, "reading"))?;
    Ok(verify_bytes(&bytes))
}

/// The output of `wardgate audit verify <path>` and whether the log is intact (the exit
/// status).
#[must_use]
pub fn verify_command(path: &Path) -> (String, bool) {
    let shown = path.display();
    match verify(path) {
        Err(e) => (format!("cannot verify: {e}"), false),
        Ok(report) => match &report.problem {
            None if report.entries == 0 => {
                (format!("audit log {shown}: empty, nothing to verify"), true)
            }
            None => (
                format!(
                    "audit log {shown}: {} entries, chain intact\nlast seq {}, head hash {}",
                    report.entries,
                    report.last_seq.unwrap_or(0),
                    report.head
                ),
                true,
            ),
            Some(problem) if problem.kind == ProblemKind::TornTail => (
                format!(
                    "audit log {shown}: {} entries intact (head hash {}), then an incomplete last line \
                     (line {}): a write interrupted by a crash, never acknowledged; the gateway removes \
                     it when it next starts",
                    report.entries, report.head, problem.line
                ),
                false,
            ),
            Some(problem) => (
                format!(
                    "audit log {shown}: BROKEN at {problem}\n{} entries before it verify (head hash {}); \
                     nothing from line {} on can be trusted",
                    report.entries, report.head, problem.line
                ),
                false,
            ),
        },
    }
}

struct Inner {
    file: File,
    next_seq: u64,
    prev: String,
    len: u64,
    poisoned: bool,
}

/// An open audit log; see the module documentation. Share it as `Arc<AuditLog>`.
pub struct AuditLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path`, verifies the whole chain and
    /// continues it. A torn last line is cut off; any other damage is refused.
    ///
    /// # Errors
    /// [`AuditError::Io`], or [`AuditError::Broken`] naming the first broken line.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(path, "opening"))?;
        // A file created by hand (or restored from a backup) may be wider than 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(path, "setting mode 0600 on"))?;
        if !existed {
            sync_parent(path)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_error(path, "reading"))?;
        let report = verify_bytes(&bytes);
        match report.problem {
            None => {}
            Some(Problem {
                kind: ProblemKind::TornTail,
                line,
                ..
            }) => {
                tracing::warn!(
                    path = %path.display(),
                    line,
                    bytes = bytes.len() as u64 - report.good_bytes,
                    "audit log ends in an incomplete line (interrupted write); removing it"
                );
                file.set_len(report.good_bytes)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(path, "cutting the incomplete last line of"))?;
            }
            Some(problem) => {
                return Err(AuditError::Broken {
                    path: path.to_owned(),
                    problem,
                })
            }
        }
        tracing::info!(
            path = %path.display(),
            entries = report.entries,
            head = %report.head,
            "audit log verified"
        );
        Ok(AuditLog {
            path: path.to_owned(),
            inner: Mutex::new(Inner {
                file,
                next_seq: report.last_seq.map_or(1, |s| s.saturating_add(1)),
                prev: report.head,
                len: report.good_bytes,
                poisoned: false,
            }),
        })
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of the last entry ([`GENESIS`] if none).
    #[must_use]
    pub fn head(&self) -> String {
        self.lock().prev.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an entry stamped with the current wall-clock time; returns once it is on
    /// disk. Blocks for a write and an fsync (see the module documentation).
    ///
    /// # Errors
    /// [`AuditError::InvalidKind`], [`AuditError::Io`], [`AuditError::Poisoned`].
    pub fn append(&self, kind: &str, subject: &str, detail: &str) -> Result<Entry, AuditError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.append_at(now_ms, kind, subject, detail)
    }

    /// [`AuditLog::append`] with an explicit time (Unix ms).
    ///
    /// # Errors
    /// As [`AuditLog::append`].
    pub fn append_at(
        &self,
        at_ms: u64,
        kind: &str,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        validate_kind(kind)?;
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(AuditError::Poisoned {
                path: self.path.clone(),
            });
        }
        let mut entry = Entry {
            seq: inner.next_seq,
            at_ms,
            kind: kind.to_owned(),
            subject: cut(subject, MAX_SUBJECT_CHARS),
            detail: cut(detail, MAX_DETAIL_CHARS),
            prev: inner.prev.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut line = entry.line();
        line.push(b'\n');
        let written = inner
            .file
            .write_all(&line)
            .and_then(|()| inner.file.sync_data());
        if let Err(source) = written {
            // Cut back whatever part of the line made it, so the chain stays whole.
            let len = inner.len;
            let undone = inner
                .file
                .set_len(len)
                .and_then(|()| inner.file.sync_data());
            if undone.is_err() {
                inner.poisoned = true;
            }
            return Err(AuditError::Io {
                path: self.path.clone(),
                context: "appending to",
                source,
            });
        }
        inner.len += line.len() as u64;
        inner.next_seq += 1;
        inner.prev.clone_from(&entry.hash);
        Ok(entry)
    }

    /// [`AuditLog::append`] on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`AuditLog::append`], and [`AuditError::Task`].
    pub async fn append_async(
        self: &Arc<Self>,
        kind: &str,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        let log = Arc::clone(self);
        let (kind, subject, detail) = (kind.to_owned(), subject.to_owned(), detail.to_owned());
        tokio::task::spawn_blocking(move || log.append(&kind, &subject, &detail))
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
    }
}

fn validate_kind(kind: &str) -> Result<(), AuditError> {
    let valid = !kind.is_empty()
        && kind.len() <= MAX_KIND_CHARS
        && kind.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(AuditError::InvalidKind(cut(kind, MAX_KIND_CHARS)))
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((end, _)) => {
            let mut out = text[..end].to_owned();
            out.push('…');
            out
        }
    }
}

fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(path, "syncing the directory of"))
}

fn io_error(path: &Path, context: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io {
        path,
        context,
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn chain(n: u64) -> (tempfile::TempDir, PathBuf, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let log = AuditLog::open(&path).unwrap();
        let entries = (1..=n)
            .map(|i| {
                log.append_at(
                    1_700_000_000_000 + i,
                    "twin.refused",
                    &format!("devices.pump-{i}.reboot"),
                    "not an allowed setting",
                )
                .unwrap()
            })
            .collect();
        (dir, path, entries)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_chain_of_entries_verifies_and_continues_after_reopen() {
        let (_dir, path, entries) = chain(20);
        assert_eq!(entries[0].prev, GENESIS);
        assert_eq!(entries[0].seq, 1);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev, pair[0].hash);
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
        let report = verify(&path).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.entries, 20);
        assert_eq!(report.last_seq, Some(20));
        assert_eq!(report.head, entries[19].hash);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), entries[19].hash);
        let next = log
            .append_at(5, "update.applied", "pump-1", "1.2.3")
            .unwrap();
        assert_eq!(
            (next.seq, next.prev.as_str()),
            (21, entries[19].hash.as_str())
        );
        assert_eq!(verify(&path).unwrap().entries, 21);
        let (text, ok) = verify_command(&path);
        assert!(ok, "{text}");
        assert!(text.contains("21 entries, chain intact"), "{text}");
    }

    #[test]
    fn the_hash_covers_the_canonical_bytes() {
        let (_dir, path, entries) = chain(1);
        let canonical = format!(
            r#"{{"seq":1,"at_ms":1700000000001,"kind":"twin.refused","subject":"devices.pump-1.reboot","detail":"not an allowed setting","prev":"{GENESIS}"}}"#
        );
        let expected = hex::encode(Sha256::digest(canonical.as_bytes()));
        assert_eq!(entries[0].hash, expected);
        assert_eq!(
            lines(&path)[0],
            format!(
                "{},\"hash\":\"{expected}\"}}",
                &canonical[..canonical.len() - 1]
            )
        );
    }

    #[test]
    fn editing_any_byte_of_entry_k_is_reported_at_entry_k() {
        let (_dir, path, _) = chain(8);
        let original = lines(&path);
        let k = 5; // 1-based line
        for position in 0..original[k - 1].len() {
            let mut edited = original.clone();
            let mut bytes = edited[k - 1].clone().into_bytes();
            // Flip to a different printable ASCII byte, keeping the line one line.
            bytes[position] = if bytes[position] == b'7' { b'8' } else { b'7' };
            edited[k - 1] = String::from_utf8(bytes).unwrap();
            write_lines(&path, &edited);
            let report = verify(&path).unwrap();
            let problem = report.problem.expect("edit not detected");
            assert_eq!(problem.line, k as u64, "byte {position}: {problem}");
            assert_eq!(report.entries, k as u64 - 1);
            assert_ne!(problem.kind, ProblemKind::TornTail);
            let (text, ok) = verify_command(&path);
            assert!(!ok);
            assert!(text.contains("BROKEN at line 5"), "{text}");
            assert!(matches!(
                AuditLog::open(&path),
                Err(AuditError::Broken { problem, .. }) if problem.line == 5
            ));
        }
    }

    #[test]
    fn a_consistent_forgery_is_caught_by_the_next_entry() {
        // Rewrite entry 3 and recompute its own hash: entry 4's prev no longer matches.
        let (_dir, path, mut entries) = chain(5);
        entries[2].detail = "accepted".into();
        entries[2].hash = entries[2].compute_hash();
        let mut text = lines(&path);
        text[2] = String::from_utf8(entries[2].line()).unwrap();
        write_lines(&path, &text);
        let problem = verify(&path).unwrap().problem.unwrap();
        assert_eq!((problem.line, problem.kind), (4, ProblemKind::PrevMismatch));
    }

    #[test]
    fn deleting_or_reordering_lines_is_reported() {
        let (_dir, path, _) = chain(6);
        let original = lines(&path);
        let mut deleted = original.clone();
        deleted.remove(2);
        write_lines(&path, &deleted);
        let problem = verify(&path).unwrap().problem.unwrap();
        assert_eq!(
            (problem.line, problem.seq, problem.kind),
            (3, Some(4), ProblemKind::SeqGap { expected: 3 })
        );

        let mut swapped = original.clone();
        swapped.swap(1, 2);
        write_lines(&path, &swapped);
        assert_eq!(verify(&path).unwrap().problem.unwrap().line, 2);

        // The first line removed: entry 2 is now first.
        write_lines(&path, &original[1..]);
        assert_eq!(verify(&path).unwrap().problem.unwrap().line, 1);

        // Whitespace added: same content, not canonical.
        let mut spaced = original;
        spaced[3] = spaced[3].replacen(',', ", ", 1);
        write_lines(&path, &spaced);
        let problem = verify(&path).unwrap().problem.unwrap();
        assert_eq!((problem.line, problem.kind), (4, ProblemKind::NotCanonical));
    }

    #[test]
    fn a_torn_tail_is_reported_and_cut_off_by_open() {
        let (_dir, path, entries) = chain(4);
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.extend_from_slice(br#"{"seq":5,"at_ms":17000"#);
        std::fs::write(&path, &bytes).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(
            report.problem,
            Some(Problem {
                line: 5,
                seq: None,
                kind: ProblemKind::TornTail
            })
        );
        let (text, ok) = verify_command(&path);
        assert!(!ok);
        assert!(text.contains("incomplete last line"), "{text}");

        let log = AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full as u64);
        let next = log.append_at(1, "twin.accepted", "x", "y").unwrap();
        assert_eq!((next.seq, next.prev), (5, entries[3].hash.clone()));
        assert!(verify(&path).unwrap().is_intact());
    }

    #[test]
    fn garbage_and_unknown_fields_are_bad_json() {
        let (_dir, path, _) = chain(2);
        let mut text = lines(&path);
        text.push(r#"{"seq":3}"#.into());
        write_lines(&path, &text);
        let problem = verify(&path).unwrap().problem.unwrap();
        assert_eq!((problem.line, problem.kind), (3, ProblemKind::BadJson));
        text.pop();
        let extra = text[1].replacen('{', r#"{"extra":1,"#, 1);
        text[1] = extra;
        write_lines(&path, &text);
        assert_eq!(verify(&path).unwrap().problem.unwrap().line, 2);
        std::fs::write(&path, b"\n").unwrap();
        assert_eq!(
            verify(&path).unwrap().problem.unwrap().kind,
            ProblemKind::BadJson
        );
    }

    #[test]
    fn kinds_are_checked_and_long_fields_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let log = AuditLog::open(&path).unwrap();
        for bad in ["", "Twin", "twin refused", &"k".repeat(65)] {
            assert!(matches!(
                log.append_at(0, bad, "s", "d"),
                Err(AuditError::InvalidKind(_))
            ));
        }
        let entry = log
            .append_at(0, "twin.refused", &"é".repeat(600), "line\nbreak")
            .unwrap();
        assert_eq!(entry.subject.chars().count(), MAX_SUBJECT_CHARS + 1);
        assert!(entry.subject.ends_with('…'));
        // The newline is escaped by JSON: still one entry per line.
        assert_eq!(lines(&path).len(), 1);
        assert!(verify(&path).unwrap().is_intact());
        let (text, ok) = verify_command(&dir.path().join("missing.log"));
        assert!(!ok && text.contains("cannot verify"), "{text}");
    }

    #[test]
    fn an_empty_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head(), GENESIS);
        let (text, ok) = verify_command(&path);
        assert!(ok && text.contains("empty"), "{text}");
    }

    #[tokio::test]
    async fn append_async_runs_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(&dir.path().join(FILE_NAME)).unwrap());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append_async("twin.accepted", &format!("k{i}"), "v")
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let report = verify(log.path()).unwrap();
        assert!(report.is_intact());
        assert_eq!(report.entries, 16);
    }
}
