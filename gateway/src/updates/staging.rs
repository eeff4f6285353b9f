//! Verified update targets on the gateway's disk, under a byte budget.
//!
//! Layout of the staging directory:
//!
//! | path | what |
//! |---|---|
//! | `targets/<file>` | one file per staged target |
//! | `metadata/<file>` | the verified TUF metadata (exact bytes), for devices that verify themselves |
//! | `index.json` | target name → file, length, SHA-256 |
//! | `.tmp-*` (in any of them) | a write in progress; removed at [`Staging::open`] |
//!
//! Target names come from the network (an assignment, targets metadata) and are untrusted
//! paths: [`validate_target_name`] refuses absolute paths, `.`/`..` components, empty
//! components and anything outside `[A-Za-z0-9._+-]` and `/`. Even a valid name never
//! becomes a path: its file is `<32 hex digits of SHA-256(name)>-<last component>`.
//!
//! **Invariants:**
//! * A file appears under `targets/` (atomic rename) only after every byte was hashed and
//!   its length and SHA-256 equalled what the caller declared (the verified targets
//!   metadata), and after `fsync`. Readers never see a partial target.
//! * `index.json` lists a target only after its file is durable, and is itself replaced
//!   atomically (temp file, `fsync`, rename, directory `fsync`). A crash between the
//!   rename and the index write leaves an unlisted file, deleted at the next open (the
//!   target is downloaded again); a restart otherwise needs no download.
//! * Staged bytes plus reservations of writes in progress never exceed the budget; a
//!   write that would is refused before its first byte ([`StagingError::OverBudget`]).
//! * At open, an index entry whose file is missing or has the wrong size is dropped (and
//!   the file deleted). Contents are not re-hashed at open: the files are written only by
//!   this module after verification, and the directory belongs to the service user.
//! * One write per name at a time ([`StagingError::Busy`]); removal skips names being
//!   written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::StagedTarget;

/// Longest accepted target name, in bytes.
pub const MAX_TARGET_NAME_LEN: usize = 255;
/// Most path components accepted in a target name.
pub const MAX_TARGET_NAME_DEPTH: usize = 16;
/// Longest accepted metadata file name, in bytes.
const MAX_METADATA_NAME_LEN: usize = 128;
/// Last-component characters kept in a target's file name (for people reading the directory).
const FILE_NAME_TAIL: usize = 64;
const TMP_PREFIX: &str = ".tmp-";
const INDEX_FILE: &str = "index.json";
const INDEX_FORMAT: u32 = 1;

/// What went wrong while staging. Each variant names the target or the path.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A file system operation failed.
    #[error("staging: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A target or metadata name that could steer a path, or is otherwise not acceptable.
    #[error("staging: refusing name {name:?}: {reason}")]
    UnsafeName {
        /// The name as given (untrusted).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Staging the target would exceed the staging budget.
    #[error(
        "staging: target {name:?} needs {needed} bytes but only {available} of the \
         {budget}-byte budget are free ({used} staged, {reserved} reserved by writes in \
         progress); remove unneeded targets or raise the budget"
    )]
    OverBudget {
        /// The target.
        name: String,
        /// Its listed length.
        needed: u64,
        /// Free bytes.
        available: u64,
        /// Bytes of staged targets.
        used: u64,
        /// Bytes reserved by writes in progress.
        reserved: u64,
        /// The budget.
        budget: u64,
    },
    /// The target is being written by another task.
    #[error("staging: target {name:?} is already being staged")]
    Busy {
        /// The target.
        name: String,
    },
    /// More bytes arrived than the target's listed length.
    #[error("staging: target {name:?} is longer than its listed {listed} bytes")]
    TooLong {
        /// The target.
        name: String,
        /// The listed length.
        listed: u64,
    },
    /// The byte count at the end differs from the listed length.
    #[error("staging: target {name:?} has {written} bytes, {listed} listed")]
    LengthMismatch {
        /// The target.
        name: String,
        /// The listed length.
        listed: u64,
        /// Bytes received.
        written: u64,
    },
    /// The SHA-256 of the bytes differs from the listed one.
    #[error("staging: target {name:?} does not match its listed SHA-256")]
    HashMismatch {
        /// The target.
        name: String,
    },
    /// The configured budget is unusable.
    #[error("staging: the budget must be more than 0 bytes")]
    ZeroBudget,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StagingError + '_ {
    move |source| StagingError::Io {
        path: path.to_owned(),
        source,
    }
}

fn unsafe_name(name: &str, reason: &'static str) -> StagingError {
    StagingError::UnsafeName {
        name: name.to_owned(),
        reason,
    }
}

/// Checks an untrusted target name: a relative path of 1..=[`MAX_TARGET_NAME_DEPTH`]
/// components separated by `/`, each non-empty, not `.` or `..`, of `[A-Za-z0-9._+-]`,
/// [`MAX_TARGET_NAME_LEN`] bytes at most.
///
/// # Errors
/// [`StagingError::UnsafeName`] with the reason.
pub fn validate_target_name(name: &str) -> Result<(), StagingError> {
    if name.is_empty() {
        return Err(unsafe_name(name, "empty"));
    }
    if name.len() > MAX_TARGET_NAME_LEN {
        return Err(unsafe_name(name, "longer than 255 bytes"));
    }
    if name.starts_with('/') {
        return Err(unsafe_name(name, "absolute path"));
    }
    let mut depth = 0;
    for component in name.split('/') {
        depth += 1;
        match component {
            "" => return Err(unsafe_name(name, "empty path component")),
            "." | ".." => return Err(unsafe_name(name, "`.` or `..` path component")),
            _ => {}
        }
        if !component
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        {
            return Err(unsafe_name(
                name,
                "characters outside A-Z a-z 0-9 . _ + - and /",
            ));
        }
    }
    if depth > MAX_TARGET_NAME_DEPTH {
        return Err(unsafe_name(name, "more than 16 path components"));
    }
    Ok(())
}

/// The file name (inside `targets/`) of a valid target name. Distinct names map to
/// distinct files (128 bits of SHA-256); no name can map outside the directory.
fn target_file_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let tail = name.rsplit('/').next().unwrap_or(name);
    let tail: String = tail.chars().take(FILE_NAME_TAIL).collect();
    format!("{}-{tail}", &hex::encode(digest)[..32])
}

/// Checks a metadata file name: one component of `[A-Za-z0-9._%-]` ending in `.json`, not
/// starting with `.`.
fn validate_metadata_name(name: &str) -> Result<(), StagingError> {
    if name.is_empty() || name.len() > MAX_METADATA_NAME_LEN {
        return Err(unsafe_name(name, "empty or longer than 128 bytes"));
    }
    if name.starts_with('.') || !name.ends_with(".json") {
        return Err(unsafe_name(name, "must end in .json and not start with ."));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'-'))
    {
        return Err(unsafe_name(name, "characters outside A-Z a-z 0-9 . _ % -"));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    targets: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    length: u64,
    sha256: String,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    length: u64,
    sha256: [u8; 32],
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    used: u64,
    reserved: u64,
    in_progress: BTreeSet<String>,
}

/// The staging area. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    targets_dir: PathBuf,
    metadata_dir: PathBuf,
    budget: u64,
    state: Mutex<State>,
}

impl Staging {
    /// Opens (creating if needed) the staging area in `dir` with a budget of
    /// `budget_bytes` for target files: removes leftover temp files, reads the index,
    /// drops entries whose file is missing or has the wrong size and deletes files no
    /// entry lists.
    ///
    /// Staged bytes may exceed a budget lowered since the last run; nothing is deleted
    /// for that, but nothing new is staged until [`Staging::remove_unneeded`] makes room.
    ///
    /// # Errors
    /// [`StagingError::ZeroBudget`]; [`StagingError::Io`] when the directories cannot be
    /// created or read.
    pub fn open(dir: &Path, budget_bytes: u64) -> Result<Self, StagingError> {
        if budget_bytes == 0 {
            return Err(StagingError::ZeroBudget);
        }
        let targets_dir = dir.join("targets");
        let metadata_dir = dir.join("metadata");
        for d in [dir, &targets_dir, &metadata_dir] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        for d in [dir, &targets_dir, &metadata_dir] {
            remove_temp_files(d)?;
        }

        let index_path = dir.join(INDEX_FILE);
        let listed = read_index(&index_path);
        let mut state = State::default();
        let mut dropped = false;
        for (name, entry) in listed {
            let Some(entry) = checked_entry(&name, &entry) else {
                tracing::warn!(target_name = %name, "staging index entry is invalid; dropping it");
                dropped = true;
                continue;
            };
            let path = targets_dir.join(target_file_name(&name));
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() && meta.len() == entry.length => {
                    state.used = state.used.saturating_add(entry.length);
                    state.entries.insert(name, entry);
                }
                _ => {
                    tracing::warn!(
                        target_name = %name,
                        "staged target is missing or has the wrong size; it will be fetched again"
                    );
                    dropped = true;
                }
            }
        }
        let wanted: BTreeSet<String> = state
            .entries
            .keys()
            .map(|name| target_file_name(name))
            .collect();
        for item in fs::read_dir(&targets_dir).map_err(io_err(&targets_dir))? {
            let item = item.map_err(io_err(&targets_dir))?;
            let file_name = item.file_name();
            if !wanted.contains(&*file_name.to_string_lossy()) {
                let path = item.path();
                remove_path(&path)?;
            }
        }
        let staging = Staging {
            dir: dir.to_owned(),
            targets_dir,
            metadata_dir,
            budget: budget_bytes,
            state: Mutex::new(state),
        };
        if dropped {
            let state = staging.lock();
            staging.write_index(&state)?;
        }
        Ok(staging)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state inconsistent: every
        // update is a single insert/remove plus counter arithmetic after the file work.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The staging directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory holding the verified metadata files.
    #[must_use]
    pub fn metadata_dir(&self) -> &Path {
        &self.metadata_dir
    }

    /// The budget for target files, bytes.
    #[must_use]
    pub fn budget_bytes(&self) -> u64 {
        self.budget
    }

    /// Bytes of staged target files.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// The staged target `name`, if any.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<StagedTarget> {
        let state = self.lock();
        state.entries.get(name).map(|e| self.staged(name, *e))
    }

    /// Every staged target, by name.
    #[must_use]
    pub fn list(&self) -> Vec<StagedTarget> {
        let state = self.lock();
        state
            .entries
            .iter()
            .map(|(name, e)| self.staged(name, *e))
            .collect()
    }

    fn staged(&self, name: &str, entry: Entry) -> StagedTarget {
        StagedTarget {
            name: name.to_owned(),
            path: self.targets_dir.join(target_file_name(name)),
            length: entry.length,
            sha256: entry.sha256,
        }
    }

    /// Starts staging `name`, declared (by verified metadata) as `length` bytes with
    /// SHA-256 `sha256`: reserves `length` bytes of the budget and opens a temp file.
    /// Feed it with [`TargetWriter::write`], then [`TargetWriter::commit`]; dropping the
    /// writer discards the bytes and the reservation.
    ///
    /// # Errors
    /// [`StagingError::UnsafeName`], [`StagingError::Busy`],
    /// [`StagingError::OverBudget`], [`StagingError::Io`].
    pub async fn begin(
        &self,
        name: &str,
        length: u64,
        sha256: [u8; 32],
    ) -> Result<TargetWriter<'_>, StagingError> {
        validate_target_name(name)?;
        {
            let mut state = self.lock();
            if state.in_progress.contains(name) {
                return Err(StagingError::Busy {
                    name: name.to_owned(),
                });
            }
            let committed = state.used.saturating_add(state.reserved);
            let available = self.budget.saturating_sub(committed);
            if length > available {
                return Err(StagingError::OverBudget {
                    name: name.to_owned(),
                    needed: length,
                    available,
                    used: state.used,
                    reserved: state.reserved,
                    budget: self.budget,
                });
            }
            state.reserved = state.reserved.saturating_add(length);
            state.in_progress.insert(name.to_owned());
        }
        // From here on the reservation is released by the writer's Drop.
        let mut writer = TargetWriter {
            staging: self,
            name: name.to_owned(),
            length,
            sha256,
            tmp_path: self
                .targets_dir
                .join(format!("{TMP_PREFIX}{}", random_suffix())),
            file: None,
            written: 0,
            hasher: Sha256::new(),
            finished: false,
        };
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&writer.tmp_path)
            .await
            .map_err(io_err(&writer.tmp_path))?;
        writer.file = Some(file);
        Ok(writer)
    }

    /// Removes every staged target whose name is not in `keep` (and not being written),
    /// returning the removed names. The index is updated durably before files are
    /// deleted.
    ///
    /// # Errors
    /// [`StagingError::Io`] when the index cannot be written (nothing is deleted then) or
    /// a file cannot be deleted.
    pub fn remove_unneeded<S: AsRef<str>>(&self, keep: &[S]) -> Result<Vec<String>, StagingError> {
        let keep: BTreeSet<&str> = keep.iter().map(AsRef::as_ref).collect();
        let mut state = self.lock();
        let doomed: Vec<String> = state
            .entries
            .keys()
            .filter(|name| !keep.contains(name.as_str()) && !state.in_progress.contains(*name))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return Ok(doomed);
        }
        let mut next = state.entries.clone();
        for name in &doomed {
            next.remove(name);
        }
        let previous = std::mem::replace(&mut state.entries, next);
        if let Err(e) = self.write_index(&state) {
            state.entries = previous;
            return Err(e);
        }
        for name in &doomed {
            if let Some(entry) = previous.get(name) {
                state.used = state.used.saturating_sub(entry.length);
            }
            remove_path(&self.targets_dir.join(target_file_name(name)))?;
        }
        Ok(doomed)
    }

    /// Saves a verified metadata file (exact bytes) as `metadata/<file_name>`,
    /// atomically, and returns its path.
    ///
    /// # Errors
    /// [`StagingError::UnsafeName`] for a name that is not a plain `*.json` file name;
    /// [`StagingError::Io`].
    pub fn save_metadata(&self, file_name: &str, bytes: &[u8]) -> Result<PathBuf, StagingError> {
        validate_metadata_name(file_name)?;
        let path = self.metadata_dir.join(file_name);
        write_atomically(&path, bytes)?;
        Ok(path)
    }

    /// The path of the staged metadata file `file_name`, if it exists.
    #[must_use]
    pub fn metadata_path(&self, file_name: &str) -> Option<PathBuf> {
        validate_metadata_name(file_name).ok()?;
        let path = self.metadata_dir.join(file_name);
        path.is_file().then_some(path)
    }

    fn write_index(&self, state: &State) -> Result<(), StagingError> {
        let index = IndexFile {
            format: INDEX_FORMAT,
            targets: state
                .entries
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        IndexEntry {
                            length: e.length,
                            sha256: hex::encode(e.sha256),
                        },
                    )
                })
                .collect(),
        };
        let path = self.dir.join(INDEX_FILE);
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| StagingError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomically(&path, &bytes)
    }

    /// Makes a verified, durable temp file the staged target `name`.
    fn install(&self, name: &str, entry: Entry, tmp_path: &Path) -> Result<(), StagingError> {
        let final_path = self.targets_dir.join(target_file_name(name));
        fs::rename(tmp_path, &final_path).map_err(io_err(&final_path))?;
        sync_dir(&self.targets_dir)?;
        let mut state = self.lock();
        let previous = state.entries.insert(name.to_owned(), entry);
        if let Err(e) = self.write_index(&state) {
            // Not listed, so not served; the file goes at the next open at the latest.
            match previous {
                Some(p) => {
                    state.entries.insert(name.to_owned(), p);
                }
                None => {
                    state.entries.remove(name);
                    let _ = fs::remove_file(&final_path);
                }
            }
            return Err(e);
        }
        if let Some(p) = previous {
            state.used = state.used.saturating_sub(p.length);
        }
        state.used = state.used.saturating_add(entry.length);
        Ok(())
    }

    fn release(&self, name: &str, length: u64) {
        let mut state = self.lock();
        state.reserved = state.reserved.saturating_sub(length);
        state.in_progress.remove(name);
    }
}

/// A target being staged: bytes go to a temp file, counted and hashed. Dropping it
/// without [`TargetWriter::commit`] deletes the temp file.
#[derive(Debug)]
pub struct TargetWriter<'a> {
    staging: &'a Staging,
    name: String,
    length: u64,
    sha256: [u8; 32],
    tmp_path: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    hasher: Sha256,
    finished: bool,
}

impl TargetWriter<'_> {
    /// Appends `chunk`.
    ///
    /// # Errors
    /// [`StagingError::TooLong`] when the bytes would pass the listed length (nothing of
    /// the chunk is written); [`StagingError::Io`].
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StagingError> {
        let chunk_len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        if self.written.saturating_add(chunk_len) > self.length {
            return Err(StagingError::TooLong {
                name: self.name.clone(),
                listed: self.length,
            });
        }
        let Some(file) = self.file.as_mut() else {
            return Err(StagingError::Io {
                path: self.tmp_path.clone(),
                source: io::Error::other("write after a failed write"),
            });
        };
        if let Err(e) = file.write_all(chunk).await {
            self.file = None;
            return Err(StagingError::Io {
                path: self.tmp_path.clone(),
                source: e,
            });
        }
        self.hasher.update(chunk);
        self.written += chunk_len;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks length and SHA-256 against the declared ones, makes the file durable and
    /// visible, and records it in the index.
    ///
    /// # Errors
    /// [`StagingError::LengthMismatch`], [`StagingError::HashMismatch`] (the bytes are
    /// discarded), [`StagingError::Io`].
    pub async fn commit(mut self) -> Result<StagedTarget, StagingError> {
        if self.written != self.length {
            return Err(StagingError::LengthMismatch {
                name: self.name.clone(),
                listed: self.length,
                written: self.written,
            });
        }
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if digest != self.sha256 {
            return Err(StagingError::HashMismatch {
                name: self.name.clone(),
            });
        }
        let Some(mut file) = self.file.take() else {
            return Err(StagingError::Io {
                path: self.tmp_path.clone(),
                source: io::Error::other("commit after a failed write"),
            });
        };
        file.flush().await.map_err(io_err(&self.tmp_path))?;
        file.sync_all().await.map_err(io_err(&self.tmp_path))?;
        drop(file);
        let entry = Entry {
            length: self.length,
            sha256: self.sha256,
        };
        self.staging.install(&self.name, entry, &self.tmp_path)?;
        self.finished = true;
        Ok(self.staging.staged(&self.name, entry))
    }
}

impl Drop for TargetWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.file = None;
            let _ = fs::remove_file(&self.tmp_path);
        }
        self.staging.release(&self.name, self.length);
    }
}

fn checked_entry(name: &str, entry: &IndexEntry) -> Option<Entry> {
    validate_target_name(name).ok()?;
    let bytes = hex::decode(&entry.sha256).ok()?;
    let sha256: [u8; 32] = bytes.try_into().ok()?;
    Some(Entry {
        length: entry.length,
        sha256,
    })
}

fn read_index(path: &Path) -> BTreeMap<String, IndexEntry> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the staging index; starting empty");
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<IndexFile>(&bytes) {
        Ok(index) if index.format == INDEX_FORMAT => index.targets,
        Ok(index) => {
            tracing::warn!(path = %path.display(), format = index.format, "unknown staging index format; starting empty");
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "staging index is not valid; starting empty");
            BTreeMap::new()
        }
    }
}

fn remove_temp_files(dir: &Path) -> Result<(), StagingError> {
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        if item.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            remove_path(&item.path())?;
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> Result<(), StagingError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StagingError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn random_suffix() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content:
/// temp file in the same directory, `fsync`, rename, directory `fsync`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StagingError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", random_suffix()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), StagingError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    async fn stage(
        staging: &Staging,
        name: &str,
        bytes: &[u8],
    ) -> Result<StagedTarget, StagingError> {
        let mut w = staging.begin(name, bytes.len() as u64, sha(bytes)).await?;
        for chunk in bytes.chunks(7) {
            w.write(chunk).await?;
        }
        w.commit().await
    }

    fn entries_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn names_that_could_steer_a_path_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a b",
            "a\0b",
            "ümlaut",
            "a:b",
            &"x".repeat(256),
            &format!("{}z", "a/".repeat(16)),
        ] {
            assert!(
                matches!(
                    validate_target_name(bad),
                    Err(StagingError::UnsafeName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        for good in [
            "pump.bin",
            "infusion/pump-4.2.1+b7.bin",
            ".hidden",
            "a/b/c_d",
        ] {
            validate_target_name(good).unwrap();
        }
        // The file name is derived, never the name itself.
        let f = target_file_name("infusion/pump-4.2.1.bin");
        assert!(f.ends_with("-pump-4.2.1.bin") && !f.contains('/'));
        assert_ne!(target_file_name("a/b"), target_file_name("a_b"));
    }

    #[tokio::test]
    async fn a_staged_target_survives_a_restart_without_download() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = b"firmware image bytes".repeat(100);
        {
            let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
            let staged = stage(&staging, "vendor/fw.bin", &bytes).await.unwrap();
            assert_eq!(fs::read(&staged.path).unwrap(), bytes);
            assert_eq!(staged.sha256, sha(&bytes));
            assert_eq!(staging.used_bytes(), bytes.len() as u64);
        }
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        let staged = staging.get("vendor/fw.bin").unwrap();
        assert_eq!(staged.length, bytes.len() as u64);
        assert_eq!(fs::read(&staged.path).unwrap(), bytes);
        assert_eq!(staging.used_bytes(), bytes.len() as u64);
    }

    #[tokio::test]
    async fn the_budget_is_enforced_before_the_first_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path(), 100).unwrap();
        stage(&staging, "a.bin", &[1; 60]).await.unwrap();
        let err = staging.begin("b.bin", 41, [0; 32]).await.unwrap_err();
        assert!(
            matches!(
                err,
                StagingError::OverBudget {
                    needed: 41,
                    available: 40,
                    ..
                }
            ),
            "{err}"
        );
        // A reservation counts too.
        let w = staging.begin("b.bin", 40, [0; 32]).await.unwrap();
        assert!(matches!(
            staging.begin("c.bin", 1, [0; 32]).await.unwrap_err(),
            StagingError::OverBudget { reserved: 40, .. }
        ));
        assert!(matches!(
            staging.begin("b.bin", 1, [0; 32]).await.unwrap_err(),
            StagingError::Busy { .. }
        ));
        drop(w);
        assert_eq!(entries_in(&tmp.path().join("targets")).len(), 1);
        staging.begin("c.bin", 40, [0; 32]).await.unwrap();
    }

    #[tokio::test]
    async fn wrong_bytes_never_become_visible() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        // Longer than listed: refused at the write.
        let mut w = staging.begin("x.bin", 4, sha(b"abcd")).await.unwrap();
        w.write(b"abc").await.unwrap();
        assert!(matches!(
            w.write(b"de").await.unwrap_err(),
            StagingError::TooLong { listed: 4, .. }
        ));
        drop(w);
        // Shorter than listed.
        let mut w = staging.begin("x.bin", 4, sha(b"abcd")).await.unwrap();
        w.write(b"abc").await.unwrap();
        assert!(matches!(
            w.commit().await.unwrap_err(),
            StagingError::LengthMismatch { written: 3, .. }
        ));
        // Right length, wrong bytes.
        let mut w = staging.begin("x.bin", 4, sha(b"abcd")).await.unwrap();
        w.write(b"abce").await.unwrap();
        assert!(matches!(
            w.commit().await.unwrap_err(),
            StagingError::HashMismatch { .. }
        ));
        assert!(staging.get("x.bin").is_none());
        assert!(entries_in(&tmp.path().join("targets")).is_empty());
        assert_eq!(staging.used_bytes(), 0);
    }

    #[tokio::test]
    async fn open_cleans_temp_files_orphans_and_broken_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let (kept, broken) = {
            let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
            let kept = stage(&staging, "kept.bin", b"keep me").await.unwrap();
            let broken = stage(&staging, "broken.bin", b"truncate me").await.unwrap();
            (kept, broken)
        };
        let targets = tmp.path().join("targets");
        fs::write(targets.join(".tmp-crashed"), b"partial").unwrap();
        fs::write(tmp.path().join(".tmp-index"), b"partial").unwrap();
        fs::write(targets.join("unlisted"), b"orphan").unwrap();
        fs::write(&broken.path, b"trunc").unwrap();

        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        assert!(staging.get("broken.bin").is_none());
        assert_eq!(staging.get("kept.bin").unwrap(), kept);
        assert_eq!(
            entries_in(&targets),
            vec![kept
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()]
        );
        assert!(!tmp.path().join(".tmp-index").exists());
        // The dropped entry is gone from the index too.
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(staging.list(), vec![kept]);
    }

    #[tokio::test]
    async fn a_corrupt_index_means_download_again_not_trust() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
            stage(&staging, "a.bin", b"aaaa").await.unwrap();
        }
        fs::write(tmp.path().join(INDEX_FILE), b"{ not json").unwrap();
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        assert!(staging.list().is_empty());
        assert!(entries_in(&tmp.path().join("targets")).is_empty());
    }

    #[tokio::test]
    async fn remove_unneeded_keeps_what_assignments_name() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        let a = stage(&staging, "a.bin", b"aaaa").await.unwrap();
        let b = stage(&staging, "dir/b.bin", b"bbbbbb").await.unwrap();
        let busy = staging.begin("c.bin", 3, sha(b"ccc")).await.unwrap();
        let removed = staging.remove_unneeded(&["dir/b.bin"]).unwrap();
        assert_eq!(removed, vec!["a.bin".to_owned()]);
        assert!(!a.path.exists());
        assert!(b.path.exists());
        assert_eq!(staging.used_bytes(), 6);
        drop(busy);
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(staging.list(), vec![b]);
    }

    #[tokio::test]
    async fn restaging_a_name_replaces_it_and_its_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path(), 1 << 20).unwrap();
        stage(&staging, "fw.bin", b"version one").await.unwrap();
        let two = stage(&staging, "fw.bin", b"v2").await.unwrap();
        assert_eq!(staging.used_bytes(), 2);
        assert_eq!(fs::read(&two.path).unwrap(), b"v2");
        assert_eq!(staging.list().len(), 1);
    }

    #[test]
    fn metadata_names_are_plain_json_file_names() {
        let tmp = tempfile::tempdir().unwrap();
        let staging = Staging::open(tmp.path(), 1).unwrap();
        let p = staging.save_metadata("3.root.json", b"{}").unwrap();
        assert_eq!(fs::read(p).unwrap(), b"{}");
        assert!(staging.metadata_path("3.root.json").is_some());
        for bad in ["../x.json", "a/b.json", "x.txt", ".json", ""] {
            assert!(staging.save_metadata(bad, b"{}").is_err(), "{bad}");
        }
        assert!(matches!(
            Staging::open(tmp.path(), 0),
            Err(StagingError::ZeroBudget)
        ));
    }
}
