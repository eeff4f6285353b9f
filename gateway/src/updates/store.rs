//! Assignments and per-device rollout progress in SQLite (`<data_dir>/updates.db`), so a
//! restart mid-rollout resumes where it was: same waves, same admissions, same halts.
//!
//! # Durability
//! WAL with `synchronous=FULL`: a commit returns after the WAL is `fsync`ed.
//! [`DurableRollouts`] changes its in-memory state **only after** the change committed:
//! an offer is listed, a report answered 200, a halt acted on only once it is on disk. A
//! failed commit leaves memory as it was, and the caller answers 503 (the device retries).
//! A crash between commit and answer makes the device repeat itself; repeats are
//! accepted and change nothing ([`super::rollout`]).
//!
//! # Schema (version [`SCHEMA_VERSION`], in `PRAGMA user_version`)
//! * `assignments`: id, arrival `seq`, the assignment as JSON (re-checked by
//!   [`Assignment::parse`] at load), `received_ms`, `waves_opened`, and the halt (kind,
//!   counts or reason, time).
//! * `progress`: (assignment, device) → stage name, reason code, `since_ms`, member flag.
//!
//! A database with another schema version is refused ([`StoreError::SchemaVersion`]), never
//! rewritten. One process opens it (`locking_mode=EXCLUSIVE`): a second daemon on the same
//! data directory gets [`StoreError::Sqlite`] (database locked) at open.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use wardgate_proto::DeviceState;

use super::assignment::{Assignment, Cancellation};
use super::rollout::{
    AddRefused, Added, DeviceProgress, DeviceReport, Halt, HaltReason, Now, Offer, ReportOutcome,
    ReportRefused, Rollout, RolloutRecord, Rollouts, Stage, Summary,
};

/// The file name under the data directory.
pub const FILE_NAME: &str = "updates.db";
/// The schema this code writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE assignments (
    id              TEXT PRIMARY KEY NOT NULL,
    seq             INTEGER NOT NULL UNIQUE,
    document        BLOB NOT NULL,
    received_ms     INTEGER NOT NULL,
    waves_opened    INTEGER NOT NULL,
    halt_kind       TEXT,
    halt_failed     INTEGER,
    halt_threshold  INTEGER,
    halt_reason     TEXT,
    halt_at_ms      INTEGER
) STRICT;
CREATE TABLE progress (
    assignment_id   TEXT NOT NULL REFERENCES assignments(id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    stage           TEXT NOT NULL,
    reason          TEXT,
    since_ms        INTEGER NOT NULL,
    member          INTEGER NOT NULL,
    PRIMARY KEY (assignment_id, device_id)
) STRICT, WITHOUT ROWID;
";

const HALT_THRESHOLD: &str = "failure_threshold";
const HALT_CANCELLED: &str = "cancelled";

/// Errors of the update store and of the durable rollouts.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (I/O, full disk, locked by another process).
    #[error("update store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database has a schema this version does not know.
    #[error("update store {path} has schema version {found}, this gateway uses {SCHEMA_VERSION}; move it aside to start afresh")]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// A stored row does not make sense (named).
    #[error("update store {path}: {problem}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A device's report was refused (nothing stored).
    #[error(transparent)]
    Report(#[from] ReportRefused),
    /// An assignment was refused (nothing stored).
    #[error(transparent)]
    Add(#[from] AddRefused),
    /// No assignment with this id.
    #[error("no assignment `{0}`")]
    UnknownAssignment(String),
}

fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The SQLite file. Blocking: async callers run it on the blocking pool.
#[derive(Debug)]
pub struct UpdateStore {
    conn: Connection,
    path: PathBuf,
}

/// One row change: a rollout's header and either one device's row or all of them.
enum Rows<'a> {
    All,
    Device(&'a str),
}

impl UpdateStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`] (unreadable, locked by another process),
    /// [`StoreError::SchemaVersion`].
    pub fn open(path: &Path) -> Result<UpdateStore, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
        let setup = || -> Result<i64, rusqlite::Error> {
            conn.busy_timeout(std::time::Duration::ZERO)?;
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
            conn.pragma_update(None, "trusted_schema", false)?;
            let _mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.pragma_update(None, "foreign_keys", true)?;
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        };
        let version = setup().map_err(sqlite)?;
        match version {
            0 => {
                let create = || -> Result<(), rusqlite::Error> {
                    conn.execute_batch("BEGIN IMMEDIATE")?;
                    let result = conn
                        .execute_batch(SCHEMA)
                        .and_then(|()| conn.pragma_update(None, "user_version", SCHEMA_VERSION));
                    match result {
                        Ok(()) => conn.execute_batch("COMMIT"),
                        Err(e) => {
                            let _ = conn.execute_batch("ROLLBACK");
                            Err(e)
                        }
                    }
                };
                create().map_err(sqlite)?;
            }
            SCHEMA_VERSION => {}
            found => {
                return Err(StoreError::SchemaVersion {
                    path: path.to_owned(),
                    found,
                })
            }
        }
        Ok(UpdateStore {
            conn,
            path: path.to_owned(),
        })
    }

    fn sqlite(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, problem: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            problem,
        }
    }

    /// Reads every rollout. An assignment whose stored document no longer parses is
    /// skipped with a warning (it cannot be offered) and left in the file.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`]; [`StoreError::Corrupt`] for a row that makes no sense.
    pub fn load(&self, now_ms: u64) -> Result<Rollouts, StoreError> {
        type Header = (
            String,
            i64,
            Vec<u8>,
            i64,
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let headers: Vec<Header> = (|| -> rusqlite::Result<Vec<Header>> {
            let mut stmt = self.conn.prepare(
                "SELECT id, seq, document, received_ms, waves_opened, halt_kind, halt_failed, \
                 halt_threshold, halt_reason, halt_at_ms FROM assignments ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })?;
            rows.collect()
        })()
        .map_err(|e| self.sqlite(e))?;

        let mut rollouts = Vec::with_capacity(headers.len());
        for (id, seq, document, received_ms, waves, halt_kind, failed, threshold, reason, at_ms) in
            headers
        {
            let assignment = match Assignment::parse(&document) {
                Ok(a) if a.id == id => a,
                Ok(_) => {
                    return Err(self.corrupt(format!("assignment `{id}`: document has another id")))
                }
                Err(refusal) => {
                    tracing::warn!(assignment = %id, %refusal, "a stored assignment is no longer accepted; it is not rolled out");
                    continue;
                }
            };
            let halt = match halt_kind.as_deref() {
                None => None,
                Some(kind) => {
                    let at_ms = from_sql(at_ms.unwrap_or(0));
                    let reason = match kind {
                        HALT_THRESHOLD => HaltReason::FailureThreshold {
                            failed: u32::try_from(failed.unwrap_or(0)).unwrap_or(0),
                            threshold: u32::try_from(threshold.unwrap_or(0)).unwrap_or(0),
                        },
                        HALT_CANCELLED => HaltReason::Cancelled { reason },
                        other => {
                            return Err(
                                self.corrupt(format!("assignment `{id}`: unknown halt `{other}`"))
                            )
                        }
                    };
                    Some(Halt { reason, at_ms })
                }
            };
            let devices = self.load_progress(&id)?;
            let record = RolloutRecord {
                seq: from_sql(seq),
                received_ms: from_sql(received_ms),
                waves_opened: u32::try_from(waves).unwrap_or(1),
                halt,
                devices,
            };
            rollouts.push(Rollout::from_record(assignment, record, now_ms));
        }
        Ok(Rollouts::from_rollouts(rollouts))
    }

    fn load_progress(
        &self,
        assignment_id: &str,
    ) -> Result<std::collections::BTreeMap<String, DeviceProgress>, StoreError> {
        type Row = (String, String, Option<String>, i64, i64);
        let rows: Vec<Row> = (|| -> rusqlite::Result<Vec<Row>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT device_id, stage, reason, since_ms, member FROM progress WHERE assignment_id = ?1",
            )?;
            let rows = stmt.query_map([assignment_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect()
        })()
        .map_err(|e| self.sqlite(e))?;
        let mut devices = std::collections::BTreeMap::new();
        for (device, stage, reason, since_ms, member) in rows {
            let stage = Stage::from_parts(&stage, reason).ok_or_else(|| {
                self.corrupt(format!(
                    "assignment `{assignment_id}`, device `{device}`: unknown stage `{stage}`"
                ))
            })?;
            devices.insert(
                device,
                DeviceProgress {
                    stage,
                    since_ms: from_sql(since_ms),
                    member: member != 0,
                },
            );
        }
        Ok(devices)
    }

    /// Saves whole rollouts (header and every device row), in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`]; nothing is saved then.
    pub fn save_rollouts(&mut self, rollouts: &[&Rollout]) -> Result<(), StoreError> {
        let changes: Vec<(&Rollout, Rows<'_>)> = rollouts.iter().map(|r| (*r, Rows::All)).collect();
        self.save(&changes)
    }

    /// Saves rollouts' headers and one device's row in each, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`]; nothing is saved then.
    pub fn save_device(&mut self, rollouts: &[&Rollout], device: &str) -> Result<(), StoreError> {
        let changes: Vec<(&Rollout, Rows<'_>)> = rollouts
            .iter()
            .map(|r| (*r, Rows::Device(device)))
            .collect();
        self.save(&changes)
    }

    fn save(&mut self, changes: &[(&Rollout, Rows<'_>)]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let run = |conn: &mut Connection| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            for (rollout, rows) in changes {
                save_header(&tx, rollout)?;
                let id = &rollout.assignment().id;
                match rows {
                    Rows::All => {
                        tx.execute("DELETE FROM progress WHERE assignment_id = ?1", [id])?;
                        for (device, progress) in &rollout.record().devices {
                            save_progress(&tx, id, device, progress)?;
                        }
                    }
                    Rows::Device(device) => match rollout.progress(device) {
                        Some(progress) => save_progress(&tx, id, device, progress)?,
                        None => {
                            tx.execute(
                                "DELETE FROM progress WHERE assignment_id = ?1 AND device_id = ?2",
                                params![id, device],
                            )?;
                        }
                    },
                }
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|source| StoreError::Sqlite { path, source })
    }

    /// The stored assignment ids (for tests and the status page).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn assignment_ids(&self) -> Result<Vec<String>, StoreError> {
        (|| -> rusqlite::Result<Vec<String>> {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM assignments ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })()
        .map_err(|e| self.sqlite(e))
    }

    /// Whether an assignment id is stored.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row("SELECT 1 FROM assignments WHERE id = ?1", [id], |_| Ok(()))
            .optional()
            .map(|row| row.is_some())
            .map_err(|e| self.sqlite(e))
    }
}

fn save_header(tx: &Transaction<'_>, rollout: &Rollout) -> Result<(), rusqlite::Error> {
    let record = rollout.record();
    let assignment = rollout.assignment();
    let (kind, failed, threshold, reason, at_ms) = match &record.halt {
        None => (None, None, None, None, None),
        Some(Halt { reason, at_ms }) => match reason {
            HaltReason::FailureThreshold { failed, threshold } => (
                Some(HALT_THRESHOLD),
                Some(i64::from(*failed)),
                Some(i64::from(*threshold)),
                None,
                Some(to_sql(*at_ms)),
            ),
            HaltReason::Cancelled { reason } => (
                Some(HALT_CANCELLED),
                None,
                None,
                reason.clone(),
                Some(to_sql(*at_ms)),
            ),
        },
    };
    tx.prepare_cached(
        "INSERT INTO assignments (id, seq, document, received_ms, waves_opened, halt_kind, \
         halt_failed, halt_threshold, halt_reason, halt_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT (id) DO UPDATE SET waves_opened = excluded.waves_opened, \
         halt_kind = excluded.halt_kind, halt_failed = excluded.halt_failed, \
         halt_threshold = excluded.halt_threshold, halt_reason = excluded.halt_reason, \
         halt_at_ms = excluded.halt_at_ms",
    )?
    .execute(params![
        assignment.id,
        to_sql(record.seq),
        assignment.to_json(),
        to_sql(record.received_ms),
        i64::from(record.waves_opened),
        kind,
        failed,
        threshold,
        reason,
        at_ms,
    ])?;
    Ok(())
}

fn save_progress(
    tx: &Transaction<'_>,
    assignment_id: &str,
    device: &str,
    progress: &DeviceProgress,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO progress (assignment_id, device_id, stage, reason, since_ms, member) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (assignment_id, device_id) DO UPDATE SET stage = excluded.stage, \
         reason = excluded.reason, since_ms = excluded.since_ms, member = excluded.member",
    )?
    .execute(params![
        assignment_id,
        device,
        progress.stage.name(),
        progress.stage.reason(),
        to_sql(progress.since_ms),
        i64::from(progress.member),
    ])?;
    Ok(())
}

/// The rollouts with their store: every change is committed before memory changes (see
/// the module doc). Not shared by itself: wrap it in a mutex and call it from the
/// blocking pool.
#[derive(Debug)]
pub struct DurableRollouts {
    rollouts: Rollouts,
    store: UpdateStore,
}

impl DurableRollouts {
    /// Opens the store at `path` and loads every rollout.
    ///
    /// # Errors
    /// As [`UpdateStore::open`] and [`UpdateStore::load`].
    pub fn open(path: &Path, now_ms: u64) -> Result<DurableRollouts, StoreError> {
        let store = UpdateStore::open(path)?;
        let rollouts = store.load(now_ms)?;
        Ok(DurableRollouts { rollouts, store })
    }

    /// The rollouts as they are (committed).
    #[must_use]
    pub const fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// Every rollout's counts, in arrival order.
    #[must_use]
    pub fn summaries(&self) -> Vec<Summary> {
        self.rollouts.summaries()
    }

    /// Adds an assignment with the devices it selects now (see [`Rollouts::add`]).
    ///
    /// # Errors
    /// [`StoreError::Add`] for a reused id; [`StoreError::Sqlite`].
    pub fn add(
        &mut self,
        assignment: Assignment,
        members: impl IntoIterator<Item = String>,
        now_ms: u64,
    ) -> Result<Added, StoreError> {
        let Some(rollout) = self.rollouts.prepare_add(assignment, members, now_ms)? else {
            return Ok(Added::AlreadyKnown);
        };
        self.store.save_rollouts(&[&rollout])?;
        self.rollouts.insert(rollout);
        Ok(Added::New)
    }

    /// Cancels an assignment. Returns whether anything changed (a repeated cancellation
    /// changes nothing).
    ///
    /// # Errors
    /// [`StoreError::UnknownAssignment`]; [`StoreError::Sqlite`].
    pub fn cancel(&mut self, cancellation: &Cancellation, now_ms: u64) -> Result<bool, StoreError> {
        let mut rollout = self
            .rollouts
            .get(&cancellation.id)
            .ok_or_else(|| StoreError::UnknownAssignment(cancellation.id.clone()))?
            .clone();
        if !rollout.cancel(cancellation, now_ms) {
            return Ok(false);
        }
        self.store.save_rollouts(&[&rollout])?;
        self.rollouts.insert(rollout);
        Ok(true)
    }

    /// Replaces the devices an assignment selects (after a configuration reload).
    ///
    /// # Errors
    /// [`StoreError::UnknownAssignment`]; [`StoreError::Sqlite`].
    pub fn set_members(
        &mut self,
        assignment_id: &str,
        members: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut rollout = self
            .rollouts
            .get(assignment_id)
            .ok_or_else(|| StoreError::UnknownAssignment(assignment_id.to_owned()))?
            .clone();
        if rollout.set_members(members, now_ms) {
            self.store.save_rollouts(&[&rollout])?;
            self.rollouts.insert(rollout);
        }
        Ok(())
    }

    /// What `device` is offered now; admissions are committed before they are returned.
    ///
    /// # Errors
    /// [`StoreError::Sqlite`]: nothing is offered then (the device asks again).
    pub fn offers_for(
        &mut self,
        device: &str,
        state: DeviceState,
        now: Now,
        staged: impl FnMut(&str) -> bool,
    ) -> Result<Vec<Offer>, StoreError> {
        let plan = self.rollouts.plan_offers(device, state, now, staged);
        if !plan.admissions.is_empty() {
            let mut scratch = Rollouts::from_rollouts(
                plan.admissions
                    .iter()
                    .filter_map(|id| self.rollouts.get(id).cloned()),
            );
            scratch.commit(&plan, now.unix_ms);
            let changed: Vec<&Rollout> = scratch.iter().collect();
            self.store.save_device(&changed, device)?;
            self.rollouts.commit(&plan, now.unix_ms);
        }
        Ok(plan.offers)
    }

    /// Whether `device` may fetch the file of `assignment_id` now
    /// ([`Rollout::may_fetch`]); if so, returns the target name and records the start
    /// of the download (`offered` → `downloading`).
    ///
    /// # Errors
    /// [`StoreError::Sqlite`].
    pub fn start_fetch(
        &mut self,
        assignment_id: &str,
        device: &str,
        state: DeviceState,
        now_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        let Some(current) = self.rollouts.get(assignment_id) else {
            return Ok(None);
        };
        if !current.may_fetch(device, state) {
            return Ok(None);
        }
        let target = current.assignment().target.clone();
        let mut rollout = current.clone();
        if rollout.download_started(device, now_ms) {
            self.store.save_device(&[&rollout], device)?;
            self.rollouts.insert(rollout);
        }
        Ok(Some(target))
    }

    /// Applies a device's report; it is durable when this returns `Ok`.
    ///
    /// # Errors
    /// [`StoreError::Report`] (refused, nothing stored); [`StoreError::Sqlite`].
    pub fn report(
        &mut self,
        assignment_id: &str,
        device: &str,
        report: &DeviceReport,
        now_ms: u64,
    ) -> Result<ReportOutcome, StoreError> {
        let mut rollout = self
            .rollouts
            .get(assignment_id)
            .ok_or(ReportRefused::UnknownAssignment)?
            .clone();
        let outcome = rollout.report(device, report, now_ms)?;
        if outcome != ReportOutcome::Unchanged {
            self.store.save_device(&[&rollout], device)?;
            self.rollouts.insert(rollout);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn assignment(id: &str, wave: u32) -> Assignment {
        Assignment::parse(
            format!(
                r#"{{"id":"{id}","target":"{id}.bin","devices":{{"group":"pumps"}},
                "policy":{{"required":true,"wave_size":{wave},"failure_threshold":0,
                "maintenance_windows":["22:00-06:00"]}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pump-{i}")).collect()
    }

    const NIGHT: Now = Now {
        unix_ms: 5_000,
        local_minute_of_day: 23 * 60,
    };

    #[test]
    fn a_restart_mid_rollout_resumes_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let before = {
            let mut d = DurableRollouts::open(&path, 0).unwrap();
            assert_eq!(
                d.add(assignment("a", 2), members(5), 1).unwrap(),
                Added::New
            );
            assert_eq!(
                d.add(assignment("a", 2), members(5), 1).unwrap(),
                Added::AlreadyKnown
            );
            d.add(assignment("b", 1), ["pump-2".to_owned()], 2).unwrap();
            let yes = |_: &str| true;
            for device in ["pump-0", "pump-1", "pump-2"] {
                d.offers_for(device, DeviceState::Online, NIGHT, yes)
                    .unwrap();
            }
            assert_eq!(
                d.start_fetch("a", "pump-0", DeviceState::Online, 6)
                    .unwrap()
                    .as_deref(),
                Some("a.bin")
            );
            d.report("a", "pump-0", &DeviceReport::Installed, 7)
                .unwrap();
            d.report(
                "a",
                "pump-1",
                &DeviceReport::Deferred {
                    reason: "in-use".into(),
                },
                8,
            )
            .unwrap();
            d.report(
                "b",
                "pump-2",
                &DeviceReport::Failed {
                    reason: "E42".into(),
                },
                9,
            )
            .unwrap();
            d.cancel(
                &Cancellation {
                    id: "a".into(),
                    reason: Some("recalled".into()),
                },
                10,
            )
            .unwrap();
            let summaries = d.summaries();
            assert_eq!(
                summaries[1].halted.as_deref(),
                Some("1 devices failed, more than the failure threshold of 0")
            );
            assert!(summaries[0].halted.as_deref().unwrap().contains("recalled"));
            d.rollouts().clone()
        };
        let after = DurableRollouts::open(&path, 11).unwrap();
        assert_eq!(after.rollouts(), &before);
        assert_eq!(
            after
                .rollouts()
                .get("a")
                .unwrap()
                .progress("pump-1")
                .unwrap()
                .stage,
            Stage::Deferred {
                reason: "in-use".into()
            }
        );
    }

    #[test]
    fn admissions_are_durable_before_the_offer_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let mut d = DurableRollouts::open(&path, 0).unwrap();
            d.add(assignment("a", 1), members(2), 1).unwrap();
            let offers = d
                .offers_for("pump-1", DeviceState::Online, NIGHT, |_| true)
                .unwrap();
            assert_eq!(offers.len(), 1);
        }
        let mut d = DurableRollouts::open(&path, 0).unwrap();
        // The wave of one is taken by pump-1 across the restart, and pump-1 may report.
        assert!(d
            .offers_for("pump-0", DeviceState::Online, NIGHT, |_| true)
            .unwrap()
            .is_empty());
        d.report("a", "pump-1", &DeviceReport::Downloaded, 2)
            .unwrap();
        assert!(matches!(
            d.report("a", "pump-0", &DeviceReport::Downloaded, 2),
            Err(StoreError::Report(ReportRefused::NotOffered))
        ));
    }

    #[test]
    fn membership_changes_persist_and_unknown_ids_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let mut d = DurableRollouts::open(&path, 0).unwrap();
            d.add(assignment("a", 1), members(3), 1).unwrap();
            d.set_members("a", &members(1), 2).unwrap();
            assert!(matches!(
                d.set_members("zz", &members(1), 2),
                Err(StoreError::UnknownAssignment(_))
            ));
        }
        let d = DurableRollouts::open(&path, 0).unwrap();
        assert_eq!(d.summaries()[0].members, 1);
        assert_eq!(d.store.assignment_ids().unwrap(), ["a"]);
        assert!(d.store.contains("a").unwrap());
    }

    #[test]
    fn another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 7).unwrap();
        }
        assert!(matches!(
            UpdateStore::open(&path),
            Err(StoreError::SchemaVersion { found: 7, .. })
        ));
    }

    #[test]
    fn a_second_process_cannot_open_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut first = DurableRollouts::open(&path, 0).unwrap();
        first.add(assignment("a", 1), members(1), 1).unwrap();
        assert!(matches!(
            UpdateStore::open(&path),
            Err(StoreError::Sqlite { .. })
        ));
    }
}
