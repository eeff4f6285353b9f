//! The outbox: a directory of files waiting for the receiver's commit.
//!
//! # Layout
//! ```text
//! <dir>/<id>.data        the bytes to upload (gzip-compressed if the file asked for it)
//! <dir>/<id>.json        its manifest: id, size, sha256, kind, device, metadata, created_ms
//! <dir>/.tmp-<id>.*      an insertion in progress (removed on open)
//! ```
//! File ids are `<created ms, 13 hex digits>-<16 random hex digits>`, so their order is
//! the order of insertion and the sender uploads oldest first.
//!
//! # Durability
//! * [`Outbox::insert`] writes the data and the manifest under temporary names, fsyncs
//!   both, renames the data into place, then the manifest, and fsyncs the directory. A file
//!   is in the outbox exactly when its manifest is; a crash before the manifest's rename
//!   leaves only debris that [`Outbox::open`] removes.
//! * [`Outbox::remove`] (called only after the receiver's `Committed`) deletes the manifest
//!   first, then the data, and fsyncs the directory. A crash in between leaves a data file
//!   without manifest, which `open` removes.
//! * On open every manifest is read back, so everything not yet committed is re-offered.
//!
//! # Budget
//! The outbox never holds more than its byte budget (data files, counting insertions in
//! progress). An insertion that would exceed it fails with
//! [`OutboxError::BudgetExceeded`] ([`OutboxError::is_out_of_resources`]), which a DICOM
//! receiver turns into an "out of resources" status for the sending modality.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wardgate_proto::upload::{FileId, FileKind, Metadata, Offer, MAX_DEVICE_LEN, MAX_METADATA_LEN};

/// The metadata key the outbox sets on files it compressed (value `gzip`).
pub const CONTENT_ENCODING_KEY: &str = "content_encoding";

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file system operation failed.
    #[error("outbox: {context}: {source}")]
    Io {
        /// What was being done (names the path).
        context: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Taking the file would exceed the outbox's disk budget.
    #[error("outbox is full: {used} of {budget} bytes used, this file needs {needed} more")]
    BudgetExceeded {
        /// The configured budget.
        budget: u64,
        /// Bytes in use (including insertions in progress).
        used: u64,
        /// Bytes this file needed beyond what fit.
        needed: u64,
    },
    /// The file's description is not acceptable (device id or metadata over the limits).
    #[error("outbox: file not accepted: {0}")]
    Invalid(String),
}

impl OutboxError {
    /// Whether the failure is a lack of space (tell the device "out of resources", retry
    /// later) rather than a fault.
    #[must_use]
    pub fn is_out_of_resources(&self) -> bool {
        match self {
            OutboxError::BudgetExceeded { .. } => true,
            OutboxError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            OutboxError::Invalid(_) => false,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> OutboxError {
    let context = context.into();
    move |source| OutboxError::Io { context, source }
}

/// A file in the outbox, as its manifest describes it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The file's id (also its name in the outbox and on the receiver).
    pub id: String,
    /// Size of the stored (possibly compressed) bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes, lower-case hex.
    pub sha256: String,
    /// `dicom` or `log`.
    pub kind: String,
    /// The device the file came from.
    pub device: String,
    /// Pseudonymous metadata (never logged).
    pub metadata: Metadata,
    /// When the file entered the outbox, Unix milliseconds.
    pub created_ms: u64,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("id", &self.id)
            .field("size", &self.size)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .field("metadata", &wardgate_device_adapters::REDACTED)
            .finish_non_exhaustive()
    }
}

impl Manifest {
    /// The protocol offer for this file.
    ///
    /// # Errors
    /// A manifest that does not describe a valid offer (edited by hand, or from a
    /// different version).
    pub fn offer(&self) -> Result<Offer, OutboxError> {
        let invalid = |what: &str| OutboxError::Invalid(format!("manifest {}: {what}", self.id));
        let file_id = FileId::new(self.id.clone()).map_err(|_| invalid("bad id"))?;
        let kind = FileKind::parse(&self.kind).ok_or_else(|| invalid("unknown kind"))?;
        let bytes = hex::decode(&self.sha256).map_err(|_| invalid("sha256 is not hex"))?;
        let sha256: [u8; 32] = bytes
            .try_into()
            .map_err(|_| invalid("sha256 is not 32 bytes"))?;
        Ok(Offer {
            file_id,
            size: self.size,
            sha256,
            kind,
            device: self.device.clone(),
            metadata: self.metadata.clone(),
        })
    }
}

/// What the caller says about a file it puts in the outbox.
#[derive(Clone)]
pub struct NewFile {
    /// DICOM object or log file.
    pub kind: FileKind,
    /// The device it came from.
    pub device: String,
    /// Pseudonymous metadata (at most 16 KiB as JSON).
    pub metadata: Metadata,
    /// Store (and upload) it gzip-compressed; the metadata then says
    /// `"content_encoding": "gzip"`. Worth it for logs, useless for compressed images.
    pub compress: bool,
}

impl std::fmt::Debug for NewFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFile")
            .field("kind", &self.kind)
            .field("device", &self.device)
            .field("compress", &self.compress)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    entries: BTreeMap<String, Manifest>,
    used: u64,
}

/// The outbox directory (see the module documentation). Blocking file I/O: call it from
/// `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    budget: u64,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` with a budget of `budget_bytes`,
    /// removes debris of interrupted insertions and removals, and loads every manifest.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(dir: impl Into<PathBuf>, budget_bytes: u64) -> Result<Self, OutboxError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut manifests = BTreeMap::new();
        let mut data_files = BTreeMap::new();
        let listing = fs::read_dir(&dir).map_err(io_err(format!("reading {}", dir.display())))?;
        for entry in listing {
            let entry = entry.map_err(io_err(format!("reading {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".tmp-") {
                remove_quietly(&path);
            } else if let Some(id) = name.strip_suffix(".json") {
                manifests.insert(id.to_owned(), path);
            } else if let Some(id) = name.strip_suffix(".data") {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                data_files.insert(id.to_owned(), len);
            }
        }
        let mut state = State {
            entries: BTreeMap::new(),
            used: 0,
        };
        for (id, path) in manifests {
            let Some(&len) = data_files.get(&id) else {
                tracing::warn!(file_id = %id, "outbox manifest without data file; dropping it");
                remove_quietly(&path);
                continue;
            };
            data_files.remove(&id);
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()))
            {
                Ok(manifest)
                    if manifest.id == id && manifest.size == len && manifest.offer().is_ok() =>
                {
                    state.used += len;
                    state.entries.insert(id, manifest);
                }
                Ok(_) => {
                    // Kept on disk for an operator to look at; its bytes still count.
                    tracing::error!(file_id = %id, "outbox manifest does not match its data file; not uploading it");
                    state.used += len;
                }
                Err(reason) => {
                    tracing::error!(file_id = %id, %reason, "unreadable outbox manifest; not uploading it");
                    state.used += len;
                }
            }
        }
        // Data without a manifest: an interrupted insertion or removal.
        for id in data_files.keys() {
            remove_quietly(&dir.join(format!("{id}.data")));
        }
        sync_dir(&dir).map_err(io_err(format!("syncing {}", dir.display())))?;
        Ok(Outbox {
            dir,
            budget: budget_bytes,
            state: Mutex::new(state),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counters (every update is a
        // single statement); keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The byte budget.
    #[must_use]
    pub fn budget_bytes(&self) -> u64 {
        self.budget
    }

    /// Bytes in use, including insertions in progress.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// The data file of entry `id`.
    #[must_use]
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    /// Every file waiting for upload, oldest first.
    #[must_use]
    pub fn entries(&self) -> Vec<Manifest> {
        self.lock().entries.values().cloned().collect()
    }

    /// Number of files waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no file is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a file was inserted since the last call (or now, if one was).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn reserve(&self, n: u64) -> Result<(), OutboxError> {
        let mut state = self.lock();
        if state.used.saturating_add(n) > self.budget {
            return Err(OutboxError::BudgetExceeded {
                budget: self.budget,
                used: state.used,
                needed: n,
            });
        }
        state.used += n;
        Ok(())
    }

    fn release(&self, n: u64) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(n);
    }

    /// Stores `content` durably as a new outbox file and returns its manifest.
    ///
    /// # Errors
    /// Over budget (nothing is kept), an invalid description, or an I/O error (nothing
    /// is kept).
    pub fn insert(
        &self,
        file: NewFile,
        mut content: impl Read,
        now_ms: u64,
    ) -> Result<Manifest, OutboxError> {
        let mut pending = self.begin(file.kind, file.device, file.compress, now_ms)?;
        match io::copy(&mut content, &mut pending) {
            Ok(_) => pending.commit(file.metadata),
            Err(e) => Err(pending.write_error(e)),
        }
    }

    /// Starts a new outbox file that the caller writes (it implements [`Write`]), for
    /// producers that write rather than being read (the DICOM de-identifier). Nothing is
    /// in the outbox until [`PendingFile::commit`] returns; dropping the pending file
    /// removes what was written and frees its share of the budget.
    ///
    /// # Errors
    /// An invalid device id, or the temporary file cannot be created.
    pub fn begin(
        &self,
        kind: FileKind,
        device: String,
        compress: bool,
        now_ms: u64,
    ) -> Result<PendingFile<'_>, OutboxError> {
        if device.len() > MAX_DEVICE_LEN {
            return Err(OutboxError::Invalid(format!(
                "device id longer than {MAX_DEVICE_LEN} bytes"
            )));
        }
        let id = new_id(now_ms)?;
        let tmp_data = self.dir.join(format!(".tmp-{id}.data"));
        let tmp_manifest = self.dir.join(format!(".tmp-{id}.json"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_data)
            .map_err(io_err(format!("creating {}", tmp_data.display())))?;
        let budgeted = BudgetedWriter {
            outbox: self,
            file: io::BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            written: 0,
            over_budget: None,
            kept: false,
        };
        let writer = if compress {
            PendingWriter::Gzip(flate2::write::GzEncoder::new(
                budgeted,
                flate2::Compression::fast(),
            ))
        } else {
            PendingWriter::Plain(budgeted)
        };
        Ok(PendingFile {
            id,
            tmp_data,
            tmp_manifest,
            kind,
            device,
            compress,
            now_ms,
            writer: Some(writer),
        })
    }

    fn publish(
        &self,
        id: &str,
        tmp_data: &Path,
        tmp_manifest: &Path,
        manifest: &Manifest,
    ) -> Result<(), OutboxError> {
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| OutboxError::Invalid(format!("manifest does not serialize: {e}")))?;
        write_synced(tmp_manifest, &json)
            .map_err(io_err(format!("writing {}", tmp_manifest.display())))?;
        let data = self.data_path(id);
        fs::rename(tmp_data, &data).map_err(io_err(format!("renaming to {}", data.display())))?;
        let manifest_path = self.dir.join(format!("{id}.json"));
        if let Err(source) = fs::rename(tmp_manifest, &manifest_path) {
            remove_quietly(&data);
            return Err(OutboxError::Io {
                context: format!("renaming to {}", manifest_path.display()),
                source,
            });
        }
        sync_dir(&self.dir).map_err(io_err(format!("syncing {}", self.dir.display())))
    }

    /// Removes entry `id` after the receiver committed it (manifest first, then data,
    /// then a directory fsync). Removing an id that is not there is not an error.
    ///
    /// # Errors
    /// An I/O error; the entry then stays and is offered again (the receiver answers
    /// `Committed` at once).
    pub fn remove(&self, id: &str) -> Result<(), OutboxError> {
        let manifest = self.dir.join(format!("{id}.json"));
        match fs::remove_file(&manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OutboxError::Io {
                    context: format!("removing {}", manifest.display()),
                    source,
                })
            }
        }
        let removed = self.lock().entries.remove(id);
        let data = self.data_path(id);
        match fs::remove_file(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Without its manifest the data file is removed at the next open.
            Err(e) => {
                tracing::warn!(path = %data.display(), error = %e, "cannot remove outbox data file")
            }
        }
        if let Some(m) = removed {
            self.release(m.size);
        }
        sync_dir(&self.dir).map_err(io_err(format!("syncing {}", self.dir.display())))
    }
}

/// Counts, hashes and budgets what the outbox writes.
struct BudgetedWriter<'a> {
    outbox: &'a Outbox,
    file: io::BufWriter<File>,
    hasher: Sha256,
    written: u64,
    over_budget: Option<OutboxError>,
    /// Set once the file is in the outbox: its bytes stay counted.
    kept: bool,
}

impl Drop for BudgetedWriter<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.outbox.release(self.written);
        }
    }
}

impl Write for BudgetedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.outbox.reserve(buf.len() as u64) {
            self.over_budget = Some(e);
            return Err(io::Error::other("outbox budget exceeded"));
        }
        let n = match self.file.write(buf) {
            Ok(n) => n,
            Err(e) => {
                self.outbox.release(buf.len() as u64);
                return Err(e);
            }
        };
        self.outbox.release((buf.len() - n) as u64);
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// An outbox file being written (see [`Outbox::begin`]).
pub struct PendingFile<'a> {
    id: String,
    tmp_data: PathBuf,
    tmp_manifest: PathBuf,
    kind: FileKind,
    device: String,
    compress: bool,
    now_ms: u64,
    /// `None` once committed or failed: nothing left to clean up.
    writer: Option<PendingWriter<'a>>,
}

enum PendingWriter<'a> {
    Plain(BudgetedWriter<'a>),
    Gzip(flate2::write::GzEncoder<BudgetedWriter<'a>>),
}

impl std::fmt::Debug for PendingFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFile")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Write for PendingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.writer.as_mut() {
            Some(PendingWriter::Plain(w)) => w.write(buf),
            Some(PendingWriter::Gzip(w)) => w.write(buf),
            None => Err(io::Error::other("outbox file already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.writer.as_mut() {
            Some(PendingWriter::Plain(w)) => w.flush(),
            Some(PendingWriter::Gzip(w)) => w.flush(),
            None => Ok(()),
        }
    }
}

impl PendingFile<'_> {
    /// The id the file will have in the outbox.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes stored so far (after compression), counted against the budget.
    #[must_use]
    pub fn stored_bytes(&self) -> u64 {
        match &self.writer {
            Some(PendingWriter::Plain(w)) => w.written,
            Some(PendingWriter::Gzip(w)) => w.get_ref().written,
            None => 0,
        }
    }

    /// Turns an error the writer returned into the outbox error it stands for (a full
    /// budget is [`OutboxError::BudgetExceeded`], so the caller can answer "out of
    /// resources"), and discards the file.
    pub fn write_error(mut self, error: io::Error) -> OutboxError {
        let over_budget = match self.writer.as_mut() {
            Some(PendingWriter::Plain(w)) => w.over_budget.take(),
            Some(PendingWriter::Gzip(w)) => w.get_mut().over_budget.take(),
            None => None,
        };
        over_budget.unwrap_or_else(|| OutboxError::Io {
            context: format!("writing {}", self.tmp_data.display()),
            source: error,
        })
        // Dropping `self` removes the temporary file; the writer frees the budget.
    }

    /// Makes the file durable and visible in the outbox with `metadata` (pseudonymous, at
    /// most 16 KiB as JSON): data fsynced, manifest written and fsynced, both renamed into
    /// place, directory fsynced. Returns its manifest.
    ///
    /// # Errors
    /// Metadata over the limit, the budget, or an I/O error; nothing is kept.
    pub fn commit(mut self, mut metadata: Metadata) -> Result<Manifest, OutboxError> {
        if self.compress {
            metadata.insert(CONTENT_ENCODING_KEY.into(), "gzip".into());
        }
        let metadata_len = serde_json::to_vec(&metadata).map_or(usize::MAX, |v| v.len());
        if metadata_len > MAX_METADATA_LEN {
            return Err(OutboxError::Invalid(format!(
                "metadata longer than {MAX_METADATA_LEN} bytes as JSON"
            )));
        }
        let finished = match self.writer.take() {
            Some(PendingWriter::Plain(w)) => Ok(w),
            Some(PendingWriter::Gzip(w)) => w.finish(),
            None => return Err(OutboxError::Invalid("outbox file already finished".into())),
        };
        let mut sink = match finished {
            Ok(sink) => sink,
            Err(e) => {
                // The encoder is gone with its writer, and with it the reservation; the
                // budget error, if that was it, cannot be told apart any more.
                return Err(OutboxError::Io {
                    context: format!("writing {}", self.tmp_data.display()),
                    source: e,
                });
            }
        };
        let outbox = sink.outbox;
        let result = sink
            .file
            .flush()
            .and_then(|()| sink.file.get_ref().sync_all())
            .map_err(|source| OutboxError::Io {
                context: format!("writing {}", self.tmp_data.display()),
                source,
            })
            .and_then(|()| {
                let manifest = Manifest {
                    id: self.id.clone(),
                    size: sink.written,
                    sha256: hex::encode(sink.hasher.finalize_reset()),
                    kind: self.kind.as_str().to_owned(),
                    device: std::mem::take(&mut self.device),
                    metadata,
                    created_ms: self.now_ms,
                };
                outbox
                    .publish(&self.id, &self.tmp_data, &self.tmp_manifest, &manifest)
                    .map(|()| manifest)
            });
        match result {
            Ok(manifest) => {
                sink.kept = true;
                outbox
                    .lock()
                    .entries
                    .insert(self.id.clone(), manifest.clone());
                outbox.changed.notify_one();
                Ok(manifest)
            }
            Err(e) => {
                // `sink` drops here and frees the budget.
                remove_quietly(&self.tmp_data);
                remove_quietly(&self.tmp_manifest);
                Err(e)
            }
        }
    }
}

impl Drop for PendingFile<'_> {
    fn drop(&mut self) {
        // Committed or failed already: nothing to clean up.
        if self.writer.take().is_some() {
            // The writer's drop freed its share of the budget.
            remove_quietly(&self.tmp_data);
            remove_quietly(&self.tmp_manifest);
        }
    }
}

fn new_id(now_ms: u64) -> Result<String, OutboxError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| OutboxError::Io {
        context: "drawing a random file id".into(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(format!("{now_ms:013x}-{}", hex::encode(random)))
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale file");
        }
    }
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn new_file(compress: bool) -> NewFile {
        let mut metadata = Metadata::new();
        metadata.insert("study".into(), "pseudo-9".into());
        NewFile {
            kind: FileKind::Log,
            device: "pump-3".into(),
            metadata,
            compress,
        }
    }

    #[test]
    fn inserted_files_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let a = outbox.insert(new_file(false), &b"first"[..], 1000).unwrap();
        let b = outbox
            .insert(new_file(false), &b"second!"[..], 2000)
            .unwrap();
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"first")));
        assert_eq!(outbox.used_bytes(), 12);
        drop(outbox);

        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.entries(), vec![a.clone(), b.clone()]);
        assert_eq!(outbox.used_bytes(), 12);
        assert_eq!(fs::read(outbox.data_path(&b.id)).unwrap(), b"second!");
        outbox.remove(&a.id).unwrap();
        outbox.remove(&a.id).unwrap();
        assert_eq!(outbox.used_bytes(), 7);
        drop(outbox);
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.entries(), vec![b]);
    }

    #[test]
    fn debris_of_interrupted_operations_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let kept = outbox.insert(new_file(false), &b"kept"[..], 1).unwrap();
        drop(outbox);
        // An insertion cut before the manifest's rename, a removal cut after it.
        fs::write(dir.path().join(".tmp-x.data"), b"half").unwrap();
        fs::write(dir.path().join("0000000000002-00.data"), b"orphan").unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(outbox.entries(), vec![kept]);
        assert_eq!(outbox.used_bytes(), 4);
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_budget_refuses_files_that_do_not_fit_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        outbox.insert(new_file(false), &[1u8; 60][..], 1).unwrap();
        let err = outbox
            .insert(new_file(false), &[2u8; 50][..], 2)
            .unwrap_err();
        assert!(err.is_out_of_resources(), "{err}");
        assert!(err.to_string().contains("outbox is full"), "{err}");
        assert_eq!(outbox.used_bytes(), 60);
        assert_eq!(outbox.len(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        // What still fits is taken.
        outbox.insert(new_file(false), &[3u8; 40][..], 3).unwrap();
        assert_eq!(outbox.used_bytes(), 100);
    }

    #[test]
    fn compressed_logs_are_gzip_and_say_so() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let log = "2025-01-01 12:00:00 pump-3 INFO rate 5 ml/h\n".repeat(2000);
        let m = outbox.insert(new_file(true), log.as_bytes(), 1).unwrap();
        assert!(m.size < log.len() as u64 / 10, "{} bytes", m.size);
        assert_eq!(m.metadata[CONTENT_ENCODING_KEY], "gzip");
        let stored = fs::read(outbox.data_path(&m.id)).unwrap();
        assert_eq!(m.sha256, hex::encode(Sha256::digest(&stored)));
        let mut text = String::new();
        flate2::read::GzDecoder::new(&stored[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, log);
        assert!(m.offer().is_ok());
    }

    #[test]
    fn oversized_descriptions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let mut f = new_file(false);
        f.metadata
            .insert("big".into(), "x".repeat(MAX_METADATA_LEN).into());
        assert!(matches!(
            outbox.insert(f, &b"x"[..], 1),
            Err(OutboxError::Invalid(_))
        ));
        let mut f = new_file(false);
        f.device = "d".repeat(MAX_DEVICE_LEN + 1);
        assert!(outbox.insert(f, &b"x"[..], 1).is_err());
        assert!(outbox.is_empty());
    }

    #[test]
    fn manifest_debug_hides_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 1 << 20).unwrap();
        let m = outbox.insert(new_file(false), &b"x"[..], 1).unwrap();
        assert!(!format!("{m:?}").contains("pseudo-9"));
    }
}
