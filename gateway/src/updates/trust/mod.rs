//! TUF client for the update repository (tough), and verified download into staging.
//!
//! [`TrustedRepository::load`] runs the TUF client workflow with tough: start from the
//! newest root this gateway verified (the pinned `trusted_root` on first start), follow
//! `N+1.root.json` rotations, then timestamp → snapshot → targets, refusing rollback,
//! freeze (expiry), signatures below threshold, mix-and-match and oversized metadata.
//! [`TrustedRepository::fetch_and_stage`] streams one target through tough's length and
//! hash checks into [`Staging`], which checks both again before the file becomes visible.
//!
//! Files under `<data_dir>/updates/tuf/` (the datastore; it must persist, or rollback
//! protection resets):
//!
//! | file | written by | what |
//! |---|---|---|
//! | `root.json`, `timestamp.json`, `snapshot.json`, `targets.json`, `latest_known_time.json` | tough | its rollback and clock checks |
//! | `wardgate-root.json` | here, atomically | exact bytes of the newest verified root: the next start's trusted root |
//! | `wardgate-floor.json` | here, atomically | the trust floor (`floor.rs`): lowest acceptable versions, an independent rollback check |
//!
//! **Invariants:**
//! * Nothing is staged unless the whole refresh succeeded and the target's length and
//!   SHA-256 match the verified targets metadata; on any error nothing new is staged
//!   and the previously staged files are untouched.
//! * Root, floor and tough's files are made durable (`fsync`) before `load` returns, so
//!   what was accepted before a power cut is still the floor after it.
//! * One refresh at a time per process (a global lock): tough's datastore is not safe
//!   for concurrent loads.
//! * The verified metadata kept for devices ([`VerifiedMetadata`]) are the exact bytes
//!   tough parsed and verified in this refresh, cross-checked against the verified
//!   objects (version and signatures).
//! * Every refusal is a [`TrustError`]; [`TrustError::attack_class`] names the attack.

mod config;
mod error;
mod floor;
mod transport;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tough::schema::{Role, RoleType, Root, Signed, Snapshot, Targets, Timestamp};
use tough::{ExpirationEnforcement, Limits, Repository, RepositoryLoader, TargetName};

pub use config::{RepositoryScheme, UpdatesTrustConfig};
pub use error::{AttackClass, TrustError};
pub use transport::{HttpsTransport, RepositoryTransport};

use transport::RecordingTransport;

use error::{classify, Phase};
use floor::TrustFloor;

use super::staging::{validate_target_name, Staging, StagingError};
use super::StagedTarget;

/// Sub-directory of the gateway's data directory holding the TUF datastore.
pub const DATASTORE_SUBDIR: &str = "updates/tuf";
/// The newest verified root (exact bytes), inside the datastore.
const ROOT_FILE: &str = "wardgate-root.json";

/// Serialises refreshes: tough's datastore is not safe for concurrent loads.
static REFRESH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A target listed in verified targets metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    /// The target name (a relative path; passed [`validate_target_name`]).
    pub name: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// The target's `custom` metadata (e.g. `{"device_kind": "infusion-pump"}`), as
    /// signed by the targets role.
    pub custom: BTreeMap<String, Value>,
}

impl TargetInfo {
    /// A string value of the custom metadata, e.g. `custom_str("device_kind")`.
    #[must_use]
    pub fn custom_str(&self, key: &str) -> Option<&str> {
        self.custom.get(key).and_then(Value::as_str)
    }
}

/// The versions of the top-level metadata accepted in a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedVersions {
    /// Root version.
    pub root: u64,
    /// Timestamp version.
    pub timestamp: u64,
    /// Snapshot version.
    pub snapshot: u64,
    /// Targets version.
    pub targets: u64,
}

/// One verified metadata file, exact bytes as accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct MetadataFile {
    /// The file name devices ask for (`root.json`, `3.root.json`, `timestamp.json`,
    /// `snapshot.json`, `targets.json`).
    pub file_name: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for MetadataFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataFile")
            .field("file_name", &self.file_name)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The verified metadata of a refresh, for devices that verify updates themselves:
/// every root of the rotation chain fetched in this refresh as `N.root.json`, the newest
/// also as `root.json`, and `timestamp.json`, `snapshot.json`, `targets.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifiedMetadata {
    /// The files, in the order above.
    pub files: Vec<MetadataFile>,
}

impl VerifiedMetadata {
    /// The file named `file_name`, if present.
    #[must_use]
    pub fn get(&self, file_name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.file_name == file_name)
            .map(|f| f.bytes.as_slice())
    }
}

/// A verified view of the update repository, as of one refresh. Refresh by loading
/// again (the datastore carries trust over).
#[derive(Debug)]
pub struct TrustedRepository {
    repo: Repository,
    versions: TrustedVersions,
    metadata: VerifiedMetadata,
    max_target_bytes: u64,
    target_timeout: Duration,
}

fn datastore_err(path: &Path, reason: impl std::fmt::Display) -> TrustError {
    TrustError::Datastore {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl TrustedRepository {
    /// Refreshes the repository's metadata and verifies it, with the datastore under
    /// `data_dir` (see the module documentation).
    ///
    /// # Errors
    /// A [`TrustError`] classifying the refusal; nothing is trusted or recorded then.
    pub async fn load(config: &UpdatesTrustConfig, data_dir: &Path) -> Result<Self, TrustError> {
        let scheme = config.validate()?;
        let metadata_base = config.metadata_base()?;
        let targets_base = config.targets_base()?;
        let pinned = std::fs::read(&config.trusted_root).map_err(|e| TrustError::Config {
            key: "trusted_root",
            reason: format!("{}: {e}", config.trusted_root.display()),
        })?;
        let datastore = data_dir.join(DATASTORE_SUBDIR);
        std::fs::create_dir_all(&datastore).map_err(|e| datastore_err(&datastore, e))?;

        let inner = match scheme {
            RepositoryScheme::File => RepositoryTransport::File(tough::FilesystemTransport),
            RepositoryScheme::Http => {
                RepositoryTransport::Https(HttpsTransport::new(config, unix_now())?)
            }
        };
        let cap = [
            config.max_root_bytes,
            config.max_timestamp_bytes,
            config.max_snapshot_bytes,
            config.max_targets_bytes,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let recorder = RecordingTransport::new(inner, metadata_base.clone(), cap);
        let limits = Limits {
            max_root_size: config.max_root_bytes,
            max_targets_size: config.max_targets_bytes,
            max_timestamp_size: config.max_timestamp_bytes,
            max_snapshot_size: config.max_snapshot_bytes,
            max_root_updates: config.max_root_rotations,
        };

        let _refresh = REFRESH.lock().await;
        let start_root = start_root(&pinned, &datastore)?;
        let floor = floor::read(&datastore)?;
        let loader = RepositoryLoader::new(&start_root, metadata_base, targets_base)
            .transport(recorder.clone())
            .limits(limits)
            .datastore(datastore.clone())
            .expiration_enforcement(ExpirationEnforcement::Safe);
        let timeout = Duration::from_secs(config.refresh_timeout_secs);
        let repo = tokio::time::timeout(timeout, loader.load())
            .await
            .map_err(|_| TrustError::Transport {
                url: config.metadata_url.clone(),
                reason: format!("refresh not finished within {} s", timeout.as_secs()),
            })?
            .map_err(|e| classify(&e, Phase::Metadata))?;

        let observed = observed_floor(&repo);
        let next_floor = floor::check(&floor, &observed)?;
        let versions = TrustedVersions {
            root: observed.root,
            timestamp: observed.timestamp,
            snapshot: observed.snapshot,
            targets: observed.targets,
        };
        let metadata = verified_metadata(&repo, recorder.take_recorded(), &start_root)?;
        let root_bytes = metadata.get("root.json").ok_or_else(|| TrustError::Other {
            detail: "the verified root's bytes were not captured".into(),
        })?;
        sync_datastore(&datastore)?;
        super::staging::write_atomically(&datastore.join(ROOT_FILE), root_bytes)
            .map_err(|e| datastore_err(&datastore.join(ROOT_FILE), e))?;
        floor::write(&datastore, &next_floor)?;

        Ok(Self {
            repo,
            versions,
            metadata,
            max_target_bytes: config.max_target_bytes,
            target_timeout: Duration::from_secs(config.target_timeout_secs),
        })
    }

    /// The versions accepted in this refresh.
    #[must_use]
    pub fn versions(&self) -> TrustedVersions {
        self.versions
    }

    /// The verified metadata files of this refresh.
    #[must_use]
    pub fn metadata(&self) -> &VerifiedMetadata {
        &self.metadata
    }

    /// Every target in the verified targets metadata (delegations included) whose name
    /// is acceptable as a staging name and whose SHA-256 is well-formed; others are
    /// skipped with a warning.
    #[must_use]
    pub fn targets(&self) -> Vec<TargetInfo> {
        let mut out: Vec<TargetInfo> = self
            .repo
            .all_targets()
            .filter_map(|(name, target)| {
                let info = target_info(name, target);
                if info.is_none() {
                    tracing::warn!(target_name = %name.raw(), "skipping a target whose name or hash is not acceptable");
                }
                info
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The target `name`, as found by TUF's target search (delegations respected).
    #[must_use]
    pub fn target(&self, name: &str) -> Option<TargetInfo> {
        validate_target_name(name).ok()?;
        let target_name = TargetName::new(name).ok()?;
        if target_name.resolved() != name {
            return None;
        }
        let target = self.repo.targets().signed.find_target(&target_name).ok()?;
        target_info(&target_name, target)
    }

    /// Saves this refresh's verified metadata files into `staging` (`metadata/`).
    ///
    /// # Errors
    /// [`TrustError::Staging`].
    pub fn stage_metadata(&self, staging: &Staging) -> Result<(), TrustError> {
        for file in &self.metadata.files {
            staging
                .save_metadata(&file.file_name, &file.bytes)
                .map_err(TrustError::Staging)?;
        }
        Ok(())
    }

    /// Downloads target `name` through tough's length and hash checks, streaming it into
    /// `staging` (never whole in memory), and returns it once staged. A target already
    /// staged with the listed length and SHA-256 is not downloaded again. The verified
    /// metadata are staged too.
    ///
    /// # Errors
    /// [`TrustError::UnknownTarget`], [`TrustError::TargetHashMismatch`],
    /// [`TrustError::TargetLength`] (longer, shorter, or over `max_target_bytes`),
    /// [`TrustError::Expired`] (metadata expired since the refresh), transport errors,
    /// [`TrustError::Staging`] (unsafe name, budget, disk). Nothing is staged then.
    pub async fn fetch_and_stage(
        &self,
        name: &str,
        staging: &Staging,
    ) -> Result<StagedTarget, TrustError> {
        validate_target_name(name).map_err(TrustError::Staging)?;
        let info = self.target(name).ok_or_else(|| TrustError::UnknownTarget {
            name: name.to_owned(),
        })?;
        if info.length > self.max_target_bytes {
            return Err(TrustError::TargetLength {
                name: name.to_owned(),
                detail: format!(
                    "listed as {} bytes, more than max_target_bytes ({})",
                    info.length, self.max_target_bytes
                ),
            });
        }
        if let Some(staged) = staging.get(name) {
            if staged.length == info.length && staged.sha256 == info.sha256 {
                self.stage_metadata(staging)?;
                return Ok(staged);
            }
        }
        let target_name = TargetName::new(name).map_err(|e| classify(&e, Phase::Target(name)))?;
        let mut writer = staging
            .begin(name, info.length, info.sha256)
            .await
            .map_err(|e| staging_error(name, e))?;
        let download = async {
            let stream = self
                .repo
                .read_target(&target_name)
                .await
                .map_err(|e| classify(&e, Phase::Target(name)))?
                .ok_or_else(|| TrustError::UnknownTarget {
                    name: name.to_owned(),
                })?;
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| classify(&e, Phase::Target(name)))?;
                writer
                    .write(&chunk)
                    .await
                    .map_err(|e| staging_error(name, e))?;
            }
            Ok::<(), TrustError>(())
        };
        tokio::time::timeout(self.target_timeout, download)
            .await
            .map_err(|_| TrustError::Transport {
                url: name.to_owned(),
                reason: format!(
                    "download not finished within {} s",
                    self.target_timeout.as_secs()
                ),
            })??;
        let staged = writer.commit().await.map_err(|e| staging_error(name, e))?;
        self.stage_metadata(staging)?;
        Ok(staged)
    }
}

/// Maps staging's own length/hash checks to the attack classes; the rest is staging.
fn staging_error(name: &str, e: StagingError) -> TrustError {
    match e {
        StagingError::TooLong { listed, .. } => TrustError::TargetLength {
            name: name.to_owned(),
            detail: format!("longer than its signed length {listed}"),
        },
        StagingError::LengthMismatch {
            listed, written, ..
        } => TrustError::TargetLength {
            name: name.to_owned(),
            detail: format!("{written} bytes received, {listed} signed"),
        },
        StagingError::HashMismatch { .. } => TrustError::TargetHashMismatch {
            name: name.to_owned(),
        },
        other => TrustError::Staging(other),
    }
}

fn target_info(name: &TargetName, target: &tough::schema::Target) -> Option<TargetInfo> {
    let raw = name.raw();
    validate_target_name(raw).ok()?;
    if name.resolved() != raw {
        return None;
    }
    let sha256: [u8; 32] = target.hashes.sha256.as_ref().try_into().ok()?;
    Some(TargetInfo {
        name: raw.to_owned(),
        length: target.length,
        sha256,
        custom: target
            .custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The root to start from: the newest verified one in the datastore, unless the pinned
/// root (a newer image) is newer.
fn start_root(pinned: &[u8], datastore: &Path) -> Result<Vec<u8>, TrustError> {
    let pinned_root: Signed<Root> =
        serde_json::from_slice(pinned).map_err(|e| TrustError::Config {
            key: "trusted_root",
            reason: format!("is not root metadata: {e}"),
        })?;
    let path = datastore.join(ROOT_FILE);
    let saved = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pinned.to_vec()),
        Err(e) => return Err(datastore_err(&path, e)),
    };
    let saved_root: Signed<Root> = serde_json::from_slice(&saved)
        .map_err(|e| datastore_err(&path, format!("not root metadata ({e}); updates stay stopped until an operator restores or removes it")))?;
    saved_root
        .signed
        .verify_role(&saved_root)
        .map_err(|e| datastore_err(&path, format!("does not verify ({e}); updates stay stopped until an operator restores or removes it")))?;
    if saved_root.signed.version >= pinned_root.signed.version {
        Ok(saved)
    } else {
        Ok(pinned.to_vec())
    }
}

fn sorted_key_ids(root: &Root, role: RoleType) -> Vec<String> {
    let mut ids: Vec<String> = root
        .roles
        .get(&role)
        .map(|keys| keys.keyids.iter().map(hex::encode).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

fn observed_floor(repo: &Repository) -> TrustFloor {
    let root = &repo.root().signed;
    TrustFloor {
        root: root.version.get(),
        timestamp: repo.timestamp().signed.version.get(),
        snapshot: repo.snapshot().signed.version.get(),
        targets: repo.targets().signed.version.get(),
        timestamp_keys: sorted_key_ids(root, RoleType::Timestamp),
        snapshot_keys: sorted_key_ids(root, RoleType::Snapshot),
    }
}

/// Whether `bytes` parse to the same signed object (version and signatures) as the
/// one tough verified. Signatures cover the canonical form of `signed`, so equal
/// signatures mean equal content.
fn same_signed<T: Role + DeserializeOwned>(bytes: &[u8], verified: &Signed<T>) -> bool {
    serde_json::from_slice::<Signed<T>>(bytes).is_ok_and(|parsed| {
        parsed.signed.version() == verified.signed.version()
            && parsed.signatures == verified.signatures
    })
}

fn verified_metadata(
    repo: &Repository,
    mut recorded: BTreeMap<String, Vec<u8>>,
    start_root: &[u8],
) -> Result<VerifiedMetadata, TrustError> {
    let missing = |file: &str| TrustError::Other {
        detail: format!("the verified bytes of {file} were not captured"),
    };
    let consistent = repo.root().signed.consistent_snapshot;
    let mut files = Vec::new();

    // The rotation chain fetched in this refresh.
    let root_version = repo.root().signed.version.get();
    let mut chain: Vec<(u64, Vec<u8>)> = recorded
        .iter()
        .filter_map(|(file, bytes)| {
            let n: u64 = file.strip_suffix(".root.json")?.parse().ok()?;
            (n <= root_version).then(|| (n, bytes.clone()))
        })
        .collect();
    chain.sort_by_key(|(n, _)| *n);
    let newest_root = match chain.last() {
        Some((n, bytes)) if *n == root_version => bytes.clone(),
        _ => start_root.to_vec(),
    };
    if !same_signed(&newest_root, repo.root()) {
        return Err(missing("root.json"));
    }
    for (n, bytes) in chain {
        files.push(MetadataFile {
            file_name: format!("{n}.root.json"),
            bytes,
        });
    }
    files.push(MetadataFile {
        file_name: "root.json".into(),
        bytes: newest_root,
    });

    let timestamp = recorded
        .remove("timestamp.json")
        .filter(|b| same_signed::<Timestamp>(b, repo.timestamp()))
        .ok_or_else(|| missing("timestamp.json"))?;
    let snapshot_file = if consistent {
        format!("{}.snapshot.json", repo.snapshot().signed.version)
    } else {
        "snapshot.json".to_owned()
    };
    let snapshot = recorded
        .remove(&snapshot_file)
        .filter(|b| same_signed::<Snapshot>(b, repo.snapshot()))
        .ok_or_else(|| missing(&snapshot_file))?;
    let targets_file = if consistent {
        format!("{}.targets.json", repo.targets().signed.version)
    } else {
        "targets.json".to_owned()
    };
    let targets = recorded
        .remove(&targets_file)
        .filter(|b| same_signed::<Targets>(b, repo.targets()))
        .ok_or_else(|| missing(&targets_file))?;
    for (file_name, bytes) in [
        ("timestamp.json", timestamp),
        ("snapshot.json", snapshot),
        ("targets.json", targets),
    ] {
        files.push(MetadataFile {
            file_name: file_name.to_owned(),
            bytes,
        });
    }
    Ok(VerifiedMetadata { files })
}

/// `fsync`s tough's datastore files and the directory: tough writes them without.
fn sync_datastore(dir: &Path) -> Result<(), TrustError> {
    let entries = std::fs::read_dir(dir).map_err(|e| datastore_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| datastore_err(dir, e))?;
        let path: PathBuf = entry.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| datastore_err(&path, e))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| datastore_err(dir, e))
}
