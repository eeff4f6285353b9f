//! The SQLite side of the spool: opening (with integrity checks and quarantine of a
//! damaged file), the schema, and loading the in-memory index.
//!
//! Invariants:
//! - The connection is opened in `locking_mode=EXCLUSIVE` and takes the write lock
//!   before [`open`] returns, so a second process opening the same file fails with
//!   [`SpoolError::Locked`] instead of silently sharing it (two writers with two
//!   in-memory indexes would hand out the same records and reuse sequence numbers).
//!   Exclusive mode also keeps the WAL index in heap memory: no `-shm` file.
//! - A file is quarantined (renamed, never deleted) only when SQLite itself says it is
//!   not a database or is corrupt, when the integrity check fails, or when it is a valid
//!   database that is not a spool. Busy, permission and I/O errors are returned to the
//!   caller unchanged: renaming a healthy spool because of them would hide its records.
//! - `max(records.seq, meta.last_seq)` is the highest sequence number ever committed, so
//!   `next_seq` computed here is never one that was handed out before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use wardgate_proto::Priority;

use super::index::{Entry, Index};
use super::SpoolError;

/// Version of the on-disk schema written by this build.
pub const SCHEMA_VERSION: i64 = 1;

/// Page size of newly created spools. SQLite writes each WAL frame (one page) with its
/// own system calls and copies it again at checkpoint, so per-page costs dominate the
/// writer's kernel time with 4 KiB pages; 16 KiB measured ~15 % less CPU per record and
/// faster group commits for 256-byte records, while 32–64 KiB pages make every commit
/// rewrite a large partly filled last page (see `benches/spool.rs`).
const PAGE_SIZE: u32 = 16 * 1024;

/// After a checkpoint the WAL file is truncated to at most this size, so a burst does
/// not leave a huge WAL behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Page cache per connection (negative = KiB). Inserts touch only the right edge of the
/// B-tree and deletes the left edge, so a small cache suffices.
const CACHE_SIZE_KIB: i64 = 16 * 1024;

pub(super) const META_SCHEMA_VERSION: &str = "spool.schema_version";
pub(super) const META_SPOOL_ID: &str = "spool.id";
pub(super) const META_LAST_SEQ: &str = "spool.last_seq";
pub(super) const META_CREATED_MS: &str = "spool.created_ms";
pub(super) const META_CLEAN_SHUTDOWN: &str = "spool.clean_shutdown";

const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY
);
CREATE TABLE records (
    seq         INTEGER PRIMARY KEY,
    priority    INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),
    accepted_ms INTEGER NOT NULL,
    device      TEXT NOT NULL,
    payload     BLOB NOT NULL
);
";

pub(super) const INSERT_RECORD: &str =
    "INSERT INTO records (seq, priority, accepted_ms, device, payload) VALUES (?1, ?2, ?3, ?4, ?5)";
pub(super) const DELETE_RECORD: &str = "DELETE FROM records WHERE seq = ?1";
pub(super) const SELECT_PAYLOAD: &str = "SELECT payload FROM records WHERE seq = ?1";
pub(super) const UPSERT_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";
pub(super) const SELECT_META: &str = "SELECT value FROM meta WHERE key = ?1";

/// A spool file opened, checked and loaded.
pub(super) struct Opened {
    pub conn: Connection,
    /// The WAL file, for the syncer's fdatasync.
    pub wal: std::fs::File,
    pub spool_id: u64,
    pub next_seq: u64,
    pub index: Index,
}

/// Why opening failed.
enum OpenFailure {
    /// The file is damaged or not a spool: quarantine it and start afresh.
    Corrupt(String),
    /// Anything else: report it, touch nothing.
    Other(SpoolError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                OpenFailure::Corrupt(e.to_string())
            }
            _ => OpenFailure::Other(SpoolError::from(e)),
        }
    }
}

/// Opens the spool at `path`, creating it if needed. A damaged file is moved aside and
/// replaced by a fresh spool; its new name is returned alongside.
pub(super) fn open(path: &Path, now_ms: u64) -> Result<(Opened, Option<PathBuf>), SpoolError> {
    if let Some(dir) = parent_dir(path) {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
    }
    match try_open(path, now_ms) {
        Ok(opened) => Ok((opened, None)),
        Err(OpenFailure::Other(e)) => Err(e),
        Err(OpenFailure::Corrupt(reason)) => {
            let quarantined = quarantine(path, now_ms)?;
            tracing::error!(
                spool = %path.display(),
                quarantined = %quarantined.display(),
                %reason,
                "spool file is damaged: moved aside, starting a fresh spool"
            );
            match try_open(path, now_ms) {
                Ok(opened) => Ok((opened, Some(quarantined))),
                Err(OpenFailure::Other(e)) => Err(e),
                Err(OpenFailure::Corrupt(reason)) => Err(SpoolError::Corrupt(format!(
                    "a freshly created spool at {} failed its checks: {reason}",
                    path.display()
                ))),
            }
        }
    }
}

fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|dir| !dir.as_os_str().is_empty())
}

fn try_open(path: &Path, now_ms: u64) -> Result<Opened, OpenFailure> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // Before anything reads the file: see the module doc. A lock held by another
    // process is reported at once rather than waited for (rusqlite waits 5 s by default).
    conn.busy_timeout(std::time::Duration::ZERO)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // The file may come from anywhere; do not let its schema run functions.
    conn.pragma_update(None, "trusted_schema", false)?;

    // The first read: "file is not a database" surfaces here.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| locked_or(e, path))?;
    if tables == 0 {
        let mut id_bytes = [0u8; 8];
        getrandom::fill(&mut id_bytes).map_err(|e| {
            OpenFailure::Other(SpoolError::Io(Arc::new(std::io::Error::other(format!(
                "getrandom: {e}"
            )))))
        })?;
        create(&conn, u64::from_le_bytes(id_bytes), now_ms).map_err(|e| locked_or(e, path))?;
    } else {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| locked_or(e, path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenFailure::Other(SpoolError::Corrupt(format!(
                "cannot switch {} to WAL mode",
                path.display()
            ))));
        }
    }
    // Commits write the WAL without fsync; the syncer thread fdatasyncs it before anyone
    // is answered (see syncer.rs). Checkpoints still fsync the WAL and the database.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -CACHE_SIZE_KIB)?;
    conn.set_prepared_statement_cache_capacity(16);

    let meta = read_meta(&conn)?;
    if meta.clean_shutdown != Some(1) {
        // After a crash, check the whole file before trusting it. A cleanly closed spool
        // skips this (it costs about as much as the load below); the load still reads
        // every page of the records table and fails on a damaged one.
        quick_check(&conn)?;
    }
    let (index, max_seq) = load_index(&conn)?;

    // Take the write lock now (see the module doc) and mark the spool as open: if we
    // crash, the next open runs the integrity check.
    conn.execute(UPSERT_META, rusqlite::params![META_CLEAN_SHUTDOWN, 0])
        .map_err(|e| locked_or(e, path))?;
    if let Some(dir) = parent_dir(path) {
        // The WAL file may have just been created: make its directory entry durable
        // before any commit relies on it.
        sync_dir(dir).map_err(OpenFailure::Other)?;
    }

    // Exists now (the write above created it) and stays until the connection closes.
    let wal_path = with_suffix(path, "-wal");
    let wal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal_path)
        .map_err(|e| OpenFailure::Other(SpoolError::io(&wal_path, e)))?;

    let next_seq = max_seq.max(meta.last_seq).saturating_add(1);
    Ok(Opened {
        conn,
        wal,
        spool_id: meta.spool_id,
        next_seq,
        index,
    })
}

/// Maps "database is locked" to [`SpoolError::Locked`]; other errors as usual.
fn locked_or(e: rusqlite::Error, path: &Path) -> OpenFailure {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            OpenFailure::Other(SpoolError::Locked(path.to_path_buf()))
        }
        _ => OpenFailure::from(e),
    }
}

fn create(conn: &Connection, spool_id: u64, now_ms: u64) -> Result<(), rusqlite::Error> {
    // Both only take effect before the first table exists.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(SCHEMA)?;
        let mut put = conn.prepare(UPSERT_META)?;
        put.execute(rusqlite::params![META_SCHEMA_VERSION, SCHEMA_VERSION])?;
        put.execute(rusqlite::params![META_SPOOL_ID, u64_to_sql(spool_id)])?;
        put.execute(rusqlite::params![META_LAST_SEQ, 0])?;
        put.execute(rusqlite::params![META_CREATED_MS, u64_to_sql(now_ms)])?;
        put.execute(rusqlite::params![META_CLEAN_SHUTDOWN, 1])?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

struct Meta {
    spool_id: u64,
    last_seq: u64,
    clean_shutdown: Option<i64>,
}

fn read_meta(conn: &Connection) -> Result<Meta, OpenFailure> {
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Err(OpenFailure::Corrupt(
            "the file is an SQLite database but not a wardgate spool".into(),
        ));
    }
    let get = |key: &str| -> Result<Option<i64>, OpenFailure> {
        conn.query_row(SELECT_META, [key], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
            .map_err(|e| match e {
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..) => {
                    OpenFailure::Corrupt(format!("meta {key}: {e}"))
                }
                other => OpenFailure::from(other),
            })
    };
    let version = get(META_SCHEMA_VERSION)?
        .ok_or_else(|| OpenFailure::Corrupt("schema version missing".into()))?;
    if version > SCHEMA_VERSION {
        return Err(OpenFailure::Other(SpoolError::UnsupportedSchema {
            found: version,
            supported: SCHEMA_VERSION,
        }));
    }
    if version < 1 {
        return Err(OpenFailure::Corrupt(format!(
            "invalid schema version {version}"
        )));
    }
    let spool_id =
        get(META_SPOOL_ID)?.ok_or_else(|| OpenFailure::Corrupt("spool id missing".into()))?;
    let last_seq = get(META_LAST_SEQ)?.unwrap_or(0);
    Ok(Meta {
        spool_id: u64_from_sql(spool_id),
        last_seq: u64::try_from(last_seq).unwrap_or(0),
        clean_shutdown: get(META_CLEAN_SHUTDOWN)?,
    })
}

fn quick_check(conn: &Connection) -> Result<(), OpenFailure> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(OpenFailure::Corrupt(format!(
            "quick_check: {}",
            problems.join("; ")
        )))
    }
}

/// Reads every row's metadata (not the payloads) in `seq` order.
fn load_index(conn: &Connection) -> Result<(Index, u64), OpenFailure> {
    let mut index = Index::default();
    let mut max_seq = 0u64;
    let mut stmt = conn
        .prepare(
            "SELECT seq, priority, accepted_ms, device, length(payload) FROM records ORDER BY seq",
        )
        .map_err(|e| match e.sqlite_error_code() {
            // e.g. "no such table/column": a spool from a foreign schema.
            Some(ErrorCode::Unknown) => OpenFailure::Corrupt(format!("records table: {e}")),
            _ => OpenFailure::from(e),
        })?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let bad = |what: &str| OpenFailure::Corrupt(format!("record row with invalid {what}"));
        let seq =
            u64::try_from(row.get::<_, i64>(0).map_err(|_| bad("seq"))?).map_err(|_| bad("seq"))?;
        let priority = row
            .get::<_, i64>(1)
            .ok()
            .and_then(|p| u8::try_from(p).ok())
            .and_then(Priority::from_u8)
            .ok_or_else(|| bad("priority"))?;
        let accepted_ms =
            u64::try_from(row.get::<_, i64>(2).map_err(|_| bad("accepted_ms"))?).unwrap_or(0);
        let device = row
            .get_ref(3)
            .map_err(|_| bad("device"))?
            .as_str()
            .map_err(|_| bad("device"))?;
        let payload_len = row
            .get::<_, i64>(4)
            .ok()
            .and_then(|l| u32::try_from(l).ok())
            .ok_or_else(|| bad("payload"))?;
        let entry = Entry {
            seq,
            accepted_ms,
            payload_len,
            device: index.intern(device),
        };
        if !index.load(priority, entry) {
            return Err(bad("order"));
        }
        max_seq = seq;
    }
    Ok((index, max_seq))
}

/// Renames `path` and its `-wal`/`-shm` companions to `<path>.corrupt-<unix s>[-n]`,
/// keeping the companions' suffixes so SQLite tools open the quarantined file with
/// its WAL. Returns the new name of the main file.
fn quarantine(path: &Path, now_ms: u64) -> Result<PathBuf, SpoolError> {
    let base = path.as_os_str().to_os_string();
    let stamp = now_ms / 1000;
    let mut target = None;
    for attempt in 0u32..1000 {
        let mut candidate = base.clone();
        if attempt == 0 {
            candidate.push(format!(".corrupt-{stamp}"));
        } else {
            candidate.push(format!(".corrupt-{stamp}-{attempt}"));
        }
        let candidate = PathBuf::from(candidate);
        if !candidate.exists() && !with_suffix(&candidate, "-wal").exists() {
            target = Some(candidate);
            break;
        }
    }
    let target = target.ok_or_else(|| {
        SpoolError::Corrupt(format!("no free quarantine name for {}", path.display()))
    })?;
    for suffix in ["-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        match std::fs::rename(&from, with_suffix(&target, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io(&from, e)),
        }
    }
    std::fs::rename(path, &target).map_err(|e| SpoolError::io(path, e))?;
    if let Some(dir) = parent_dir(path) {
        sync_dir(dir)?;
    }
    Ok(target)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// fsyncs a directory so renames and file creations in it survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(dir, e))
}

/// u64 ids are stored in SQLite's signed 64-bit integers bit for bit.
#[allow(clippy::cast_possible_wrap)]
pub(super) fn u64_to_sql(v: u64) -> i64 {
    v as i64
}

/// Inverse of [`u64_to_sql`].
#[allow(clippy::cast_sign_loss)]
pub(super) fn u64_from_sql(v: i64) -> u64 {
    v as u64
}

/// Marks the spool as cleanly closed (the next open may skip the integrity check) and
/// checkpoints the WAL into the main file.
pub(super) fn mark_clean_shutdown(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.execute(UPSERT_META, rusqlite::params![META_CLEAN_SHUTDOWN, 1])?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Shared helper for the `Arc`-wrapped error variants.
pub(super) fn sqlite_error(e: rusqlite::Error) -> SpoolError {
    SpoolError::Sqlite(Arc::new(e))
}

/// Current Unix time in ms from the system clock (0 before 1970: the clock is broken
/// and records still need a value).
pub(super) fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
