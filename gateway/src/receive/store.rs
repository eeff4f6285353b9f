//! The receiver's storage: partial files being received, and committed files.
//!
//! # Layout
//! ```text
//! <dir>/.partial/<id>              bytes received so far
//! <dir>/.partial/<id>.state.json   the offer and `durable_offset`
//! <dir>/<kind>/<id>                a committed, verified file (kind: dicom | log)
//! <dir>/<kind>/<id>.meta.json      its offer (size, sha256, device, metadata) and commit time
//! ```
//! File ids ending in `.json` are refused, so no id can name another file's record.
//!
//! # What "the offset it already holds" means
//! `durable_offset` in the state record counts only bytes that were fsynced *before* the
//! record was written (data `fdatasync`, then the record via temp file and rename). The
//! record is rewritten every `checkpoint_bytes` and when a transfer ends for any reason
//! other than a crash (stream reset, connection loss, shutdown). After a crash the record
//! may be older than the data file, never newer; on the next offer the data file is
//! truncated to `durable_offset` and that prefix is read back to seed the SHA-256, so the
//! offset answered is always bytes that survived. The record itself is not fsynced: a
//! crash can only leave the previous record (a smaller, still true offset) or an unreadable
//! one (the transfer then starts from zero), never an offset past the durable data.
//!
//! A prefix damaged on disk is not detected on resume but at the end: the whole-file hash
//! then mismatches, the partial is discarded and the sender starts from zero.
//!
//! # Commit
//! data fsync → hash check → metadata record written (temp, fsync, rename) → data renamed
//! to `<kind>/<id>` → `<kind>` fsynced → state record removed → `.partial` fsynced. Only
//! then is `Committed` sent. A committed file is recognised by its data file under
//! `<kind>/`; a crash before that rename leaves a complete partial, which the next offer
//! verifies and commits again.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wardgate_proto::upload::{FileKind, Held, Metadata, Offer};

use super::ReceiverStats;
use crate::bulk::outbox::{sync_dir, write_synced};

/// Where the receiver keeps files (see the module documentation).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    partial_dir: PathBuf,
    checkpoint_bytes: u64,
    active: Mutex<HashSet<String>>,
    stats: Arc<ReceiverStats>,
}

/// The persistent description of a partial file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialState {
    size: u64,
    sha256: String,
    kind: String,
    device: String,
    metadata: Metadata,
    durable_offset: u64,
}

/// The metadata record stored next to a committed file.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommittedRecord {
    /// The file id.
    pub file_id: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// `dicom` or `log`.
    pub kind: String,
    /// The device it came from.
    pub device: String,
    /// Pseudonymous metadata from the sender.
    pub metadata: Metadata,
    /// When the receiver committed it, Unix milliseconds.
    pub committed_ms: u64,
}

/// What the store holds for an offer.
#[derive(Debug)]
pub enum Lookup {
    /// The same file is committed.
    Committed,
    /// Another file was committed under this id.
    Conflict,
    /// A partial file, opened for appending (possibly empty).
    Partial(Box<PartialFile>),
}

/// The guard of a file id in transfer; only one stream may receive a file at a time.
#[derive(Debug)]
pub struct Claim {
    store: Arc<Store>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut active = self
            .store
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        active.remove(&self.id);
        self.store.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Store {
    /// Opens (creating) the storage directories and removes leftover temporary files.
    ///
    /// # Errors
    /// A directory cannot be created or read.
    pub fn open(dir: &Path, checkpoint_bytes: u64, stats: Arc<ReceiverStats>) -> io::Result<Self> {
        let partial_dir = dir.join(".partial");
        for d in [
            dir.to_owned(),
            partial_dir.clone(),
            dir.join(FileKind::Dicom.as_str()),
            dir.join(FileKind::Log.as_str()),
        ] {
            fs::create_dir_all(&d)?;
            for entry in fs::read_dir(&d)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Store {
            dir: dir.to_owned(),
            partial_dir,
            checkpoint_bytes: checkpoint_bytes.max(1),
            active: Mutex::new(HashSet::new()),
            stats,
        })
    }

    /// Claims `id` for one stream; `None` if another stream has it.
    #[must_use]
    pub fn claim(self: &Arc<Self>, id: &str) -> Option<Claim> {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !active.insert(id.to_owned()) {
            return None;
        }
        let now = self.stats.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.peak_active.fetch_max(now, Ordering::Relaxed);
        Some(Claim {
            store: Arc::clone(self),
            id: id.to_owned(),
        })
    }

    /// The committed data file of `id` of `kind`.
    #[must_use]
    pub fn committed_path(&self, kind: FileKind, id: &str) -> PathBuf {
        self.dir.join(kind.as_str()).join(id)
    }

    /// The partial data file of `id`.
    #[must_use]
    pub fn partial_path(&self, id: &str) -> PathBuf {
        self.partial_dir.join(id)
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.partial_dir.join(format!("{id}.state.json"))
    }

    /// Finds what is held for `offer` (see the module documentation); prepares a partial
    /// file when nothing committed matches. Call with the id claimed.
    ///
    /// # Errors
    /// File system errors.
    pub fn lookup(&self, offer: &Offer) -> io::Result<Lookup> {
        let id = offer.file_id.as_str();
        let sha_hex = hex::encode(offer.sha256);
        let committed = self.committed_path(offer.kind, id);
        if committed.exists() {
            let meta_path = meta_path(&committed);
            let same = fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<CommittedRecord>(&b).ok())
                .is_some_and(|r| r.size == offer.size && r.sha256 == sha_hex);
            if same {
                // A crash after the commit's rename may have left the state record.
                let _ = fs::remove_file(self.state_path(id));
                return Ok(Lookup::Committed);
            }
            return Ok(Lookup::Conflict);
        }

        let data_path = self.partial_path(id);
        let state_path = self.state_path(id);
        let resumable = fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<PartialState>(&b).ok())
            .filter(|s| {
                s.size == offer.size
                    && s.sha256 == sha_hex
                    && s.kind == offer.kind.as_str()
                    && s.durable_offset <= s.size
            })
            .map(|s| s.durable_offset)
            .filter(|&durable| fs::metadata(&data_path).is_ok_and(|m| m.len() >= durable));
        if let Some(durable) = resumable {
            let mut file = OpenOptions::new().read(true).write(true).open(&data_path)?;
            file.set_len(durable)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut left = durable;
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                file.read_exact(&mut buf[..want])?;
                hasher.update(&buf[..want]);
                left -= want as u64;
            }
            return Ok(Lookup::Partial(Box::new(PartialFile {
                offer: offer.clone(),
                file,
                data_path,
                state_path,
                hasher,
                written: durable,
                durable,
                checkpoint_bytes: self.checkpoint_bytes,
            })));
        }

        let _ = fs::remove_file(&state_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&data_path)?;
        let partial = PartialFile {
            offer: offer.clone(),
            file,
            data_path,
            state_path,
            hasher: Sha256::new(),
            written: 0,
            durable: 0,
            checkpoint_bytes: self.checkpoint_bytes,
        };
        partial.write_state(0)?;
        sync_dir(&self.partial_dir)?;
        Ok(Lookup::Partial(Box::new(partial)))
    }

    /// Makes a verified partial file a committed one (see the module documentation).
    ///
    /// # Errors
    /// File system errors; the partial then stays and the next offer commits it.
    pub fn commit(&self, partial: PartialFile, now_ms: u64) -> io::Result<PathBuf> {
        let offer = &partial.offer;
        let id = offer.file_id.as_str();
        let kind_dir = self.dir.join(offer.kind.as_str());
        let committed = kind_dir.join(id);
        let record = CommittedRecord {
            file_id: id.to_owned(),
            size: offer.size,
            sha256: hex::encode(offer.sha256),
            kind: offer.kind.as_str().to_owned(),
            device: offer.device.clone(),
            metadata: offer.metadata.clone(),
            committed_ms: now_ms,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(io::Error::other)?;
        let tmp = kind_dir.join(format!(".tmp-{id}.meta.json"));
        write_synced(&tmp, &json)?;
        fs::rename(&tmp, meta_path(&committed))?;
        fs::rename(&partial.data_path, &committed)?;
        sync_dir(&kind_dir)?;
        fs::remove_file(&partial.state_path)?;
        sync_dir(&self.partial_dir)?;
        Ok(committed)
    }

    /// Deletes a partial file and its state (after a hash mismatch).
    ///
    /// # Errors
    /// File system errors.
    pub fn discard(&self, partial: PartialFile) -> io::Result<()> {
        for path in [&partial.state_path, &partial.data_path] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.partial_dir)
    }
}

fn meta_path(committed: &Path) -> PathBuf {
    let mut name = committed.as_os_str().to_owned();
    name.push(".meta.json");
    PathBuf::from(name)
}

/// A file being received: appends, hashes as it goes, and checkpoints its durable offset.
pub struct PartialFile {
    offer: Offer,
    file: File,
    data_path: PathBuf,
    state_path: PathBuf,
    hasher: Sha256,
    written: u64,
    durable: u64,
    checkpoint_bytes: u64,
}

impl std::fmt::Debug for PartialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialFile")
            .field("file_id", &self.offer.file_id)
            .field("written", &self.written)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

impl PartialFile {
    /// What the protocol should answer: the durable offset (`Nothing` for an empty one).
    #[must_use]
    pub fn held(&self) -> Held {
        if self.durable == 0 {
            Held::Nothing
        } else {
            Held::Partial(self.durable)
        }
    }

    /// Bytes written so far (durable or not).
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `data`, which must start at [`PartialFile::written`] (the session
    /// guarantees it); checkpoints every `checkpoint_bytes`.
    ///
    /// # Errors
    /// A write or sync failed; the durable offset is unchanged.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset != self.written {
            return Err(io::Error::other(format!(
                "write at {offset}, file ends at {}",
                self.written
            )));
        }
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        if self.written - self.durable >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes everything written durable and records the offset.
    ///
    /// # Errors
    /// A sync or the record's write failed; the recorded offset stays the older one.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        if self.written == self.durable {
            return Ok(());
        }
        self.file.sync_data()?;
        self.write_state(self.written)?;
        self.durable = self.written;
        Ok(())
    }

    fn write_state(&self, durable_offset: u64) -> io::Result<()> {
        let state = PartialState {
            size: self.offer.size,
            sha256: hex::encode(self.offer.sha256),
            kind: self.offer.kind.as_str().to_owned(),
            device: self.offer.device.clone(),
            metadata: self.offer.metadata.clone(),
            durable_offset,
        };
        let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
        let dir = self.state_path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".tmp-{}.state.json", self.offer.file_id));
        // Not fsynced: the data it describes already is. After a crash the record is this
        // one, an older one, or unreadable (then the transfer restarts from zero); each
        // is safe, and a checkpoint costs one fsync instead of two.
        fs::write(&tmp, &json)?;
        fs::rename(&tmp, &self.state_path)
    }

    /// Syncs the data and checks the whole file's SHA-256 against the offer.
    ///
    /// # Errors
    /// The sync failed.
    pub fn verify(&mut self) -> io::Result<bool> {
        self.file.sync_all()?;
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        Ok(self.written == self.offer.size && digest == self.offer.sha256)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use wardgate_proto::upload::FileId;

    fn offer(data: &[u8]) -> Offer {
        Offer {
            file_id: FileId::new("0001-aa").unwrap(),
            size: data.len() as u64,
            sha256: Sha256::digest(data).into(),
            kind: FileKind::Dicom,
            device: "ct-1".into(),
            metadata: Metadata::new(),
        }
    }

    fn partial(store: &Store, offer: &Offer) -> PartialFile {
        match store.lookup(offer).unwrap() {
            Lookup::Partial(p) => *p,
            other => panic!("expected a partial, got {other:?}"),
        }
    }

    #[test]
    fn only_checkpointed_bytes_count_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100, Arc::default()).unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let o = offer(&data);
        let mut p = partial(&store, &o);
        assert_eq!(p.held(), Held::Nothing);
        p.append(0, &data[..250]).unwrap(); // checkpoint at 250
        p.append(250, &data[250..290]).unwrap(); // written, not durable
        drop(p); // a crash: no final checkpoint
        let p = partial(&store, &o);
        assert_eq!(p.held(), Held::Partial(250));
        assert_eq!(
            fs::metadata(store.partial_path("0001-aa")).unwrap().len(),
            250
        );
        drop(p);

        // A clean end records everything written.
        let mut p = partial(&store, &o);
        p.append(250, &data[250..990]).unwrap();
        p.append(990, &data[990..]).unwrap();
        p.checkpoint().unwrap();
        drop(p);
        let mut p = partial(&store, &o);
        assert_eq!(p.held(), Held::Partial(1000));
        // The prefix was re-read, so the hash covers the whole file.
        assert!(p.verify().unwrap());
        let path = store.commit(p, 42).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!store.partial_path("0001-aa").exists());
        assert!(matches!(store.lookup(&o).unwrap(), Lookup::Committed));
        let mut other = o.clone();
        other.sha256[0] ^= 1;
        assert!(matches!(store.lookup(&other).unwrap(), Lookup::Conflict));
    }

    #[test]
    fn a_prefix_damaged_on_disk_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Arc::default()).unwrap();
        let data = vec![7u8; 500];
        let o = offer(&data);
        let mut p = partial(&store, &o);
        p.append(0, &data[..300]).unwrap();
        p.checkpoint().unwrap();
        drop(p);
        let path = store.partial_path("0001-aa");
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let mut p = partial(&store, &o);
        p.append(300, &data[300..]).unwrap();
        assert!(!p.verify().unwrap());
        store.discard(p).unwrap();
        assert!(!path.exists());
        assert_eq!(partial(&store, &o).held(), Held::Nothing);
    }

    #[test]
    fn a_different_offer_for_the_same_id_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10, Arc::default()).unwrap();
        let mut p = partial(&store, &offer(&[1; 100]));
        p.append(0, &[1; 50]).unwrap();
        drop(p);
        assert_eq!(partial(&store, &offer(&[2; 100])).held(), Held::Nothing);
    }

    #[test]
    fn one_stream_per_file_id() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(ReceiverStats::default());
        let store = Arc::new(Store::open(dir.path(), 10, Arc::clone(&stats)).unwrap());
        let first = store.claim("x").unwrap();
        assert!(store.claim("x").is_none());
        assert_eq!(stats.active.load(Ordering::Relaxed), 1);
        drop(first);
        assert!(store.claim("x").is_some());
        assert_eq!(stats.peak_active.load(Ordering::Relaxed), 1);
    }
}
