//! Test TUF repositories, signed for real with keys generated per test (ed25519 via
//! rcgen, signed through tough's editor), laid out as a static repository server would
//! serve them: `<dir>/metadata/` and `<dir>/targets/`.
//!
//! Shared by the gateway's TUF unit tests (`wardgate::updates::trust`) and the updates
//! end-to-end tests. This library does not depend on `wardgate`: it hands out plain
//! paths and `file://` URLs, and each user builds its own configuration from them.
//!
//! Invariants: the pinned root ([`Repo::pinned_root`]) is version 1 and never changes
//! after [`Repo::new`]; [`Repo::publish`] signs every target added so far with the
//! current role key and writes `targets.json`, `snapshot.json` and `timestamp.json`
//! (non-consistent snapshots, so the file names do not carry versions); everything
//! lives in a temporary directory removed when the [`Repo`] is dropped. Being test
//! setup, the functions here panic (with a message) when something fails.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use serde_json::json;
use tough::editor::signed::SignedRole;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::sign::Sign;

/// A private key held in memory (PKCS#8 DER), usable by tough's editor.
#[derive(Debug, Clone)]
pub struct TestKey {
    der: Vec<u8>,
}

impl TestKey {
    /// A fresh ed25519 key.
    ///
    /// # Panics
    /// When key generation fails.
    #[must_use]
    pub fn generate() -> Self {
        let pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("generating an ed25519 key");
        Self {
            der: pair.serialize_der(),
        }
    }

    /// The TUF key id (hex SHA-256 of the canonical public key).
    ///
    /// # Panics
    /// When tough cannot read the key.
    pub async fn key_id(&self) -> tough::schema::decoded::Decoded<tough::schema::decoded::Hex> {
        self.sign_key()
            .await
            .tuf_key()
            .key_id()
            .expect("computing a TUF key id")
    }

    /// The public key as TUF root metadata lists it.
    ///
    /// # Panics
    /// When tough cannot read the key.
    pub async fn tuf_key(&self) -> tough::schema::key::Key {
        self.sign_key().await.tuf_key()
    }

    async fn sign_key(&self) -> Box<dyn Sign> {
        self.as_sign().await.expect("tough reads the test key")
    }
}

#[tough::async_trait]
impl KeySource for TestKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(tough::sign::parse_keypair(&self.der)?))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(())
    }
}

fn boxed(keys: &[&TestKey]) -> Vec<Box<dyn KeySource>> {
    keys.iter()
        .map(|k| Box::new((*k).clone()) as Box<dyn KeySource>)
        .collect()
}

fn nz(n: u64) -> NonZeroU64 {
    NonZeroU64::new(n).expect("a TUF version or threshold is at least 1")
}

/// A timestamp `days` from now (negative: in the past), in the type tough uses for
/// expiry dates (anything that deserializes from an RFC 3339 string).
///
/// # Panics
/// When `T` does not deserialize from an RFC 3339 string.
#[must_use]
pub fn days_from_now<T: serde::de::DeserializeOwned>(days: i64) -> T {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    let secs = now + days * 86_400;
    // RFC 3339 via the civil-from-days algorithm (no date crate needed in tests).
    let (days_since, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days_since + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    serde_json::from_value(json!(s)).expect("an RFC 3339 date deserializes")
}

/// Versions and expiry of one publication.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    /// `targets.json` version.
    pub targets: u64,
    /// `snapshot.json` version.
    pub snapshot: u64,
    /// `timestamp.json` version.
    pub timestamp: u64,
    /// Days until the timestamp expires (negative: already expired).
    pub timestamp_days: i64,
}

impl Publish {
    /// Every role at `version`, the timestamp valid for a week.
    #[must_use]
    pub fn all(version: u64) -> Self {
        Self {
            targets: version,
            snapshot: version,
            timestamp: version,
            timestamp_days: 7,
        }
    }
}

/// The exact bytes of one publication's timestamp, snapshot and targets.
#[derive(Debug, Clone)]
pub struct Published {
    /// `timestamp.json`.
    pub timestamp: Vec<u8>,
    /// `snapshot.json`.
    pub snapshot: Vec<u8>,
    /// `targets.json`.
    pub targets: Vec<u8>,
}

/// One target added for the next publication.
#[derive(Debug, Clone)]
struct PendingTarget {
    name: String,
    bytes: Vec<u8>,
    device_kind: Option<String>,
}

/// A repository directory (`metadata/`, `targets/`) and the keys behind it.
pub struct Repo {
    dir: tempfile::TempDir,
    /// The root pinned at "installation" (version 1).
    pinned_root: PathBuf,
    /// The newest root file (what the editor signs against).
    current_root: PathBuf,
    root: Root,
    root_keys: Vec<TestKey>,
    role_key: TestKey,
    targets: Vec<PendingTarget>,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("dir", &self.dir.path())
            .field("root_version", &self.root.version)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl Repo {
    /// Version-1 root with `root_keys` root keys (threshold `threshold`) and one key for
    /// the other roles. Nothing is published yet (see [`Repo::publish`]).
    ///
    /// # Panics
    /// When the temporary directory or the signature cannot be made.
    pub async fn new(root_keys: usize, threshold: u64) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("metadata")).expect("creating metadata/");
        std::fs::create_dir_all(dir.path().join("targets")).expect("creating targets/");
        let root_keys: Vec<TestKey> = (0..root_keys).map(|_| TestKey::generate()).collect();
        let role_key = TestKey::generate();
        let root = build_root(1, &root_keys, threshold, &role_key).await;
        let repo = Self {
            pinned_root: dir.path().join("pinned-root.json"),
            current_root: dir.path().join("metadata/1.root.json"),
            dir,
            root: root.clone(),
            root_keys,
            role_key,
            targets: Vec::new(),
        };
        let signers: Vec<&TestKey> = repo.root_keys.iter().collect();
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root),
            &boxed(&signers),
            &rand(),
        )
        .await
        .expect("signing root v1");
        write(&repo.current_root, signed.buffer());
        write(&repo.pinned_root, signed.buffer());
        write(&repo.metadata_dir().join("root.json"), signed.buffer());
        repo
    }

    /// The repository's directory (holding `metadata/` and `targets/`).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the metadata files are (`root.json`, `N.root.json`, `timestamp.json`, ...).
    #[must_use]
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.path().join("metadata")
    }

    /// Where the target files are.
    #[must_use]
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.path().join("targets")
    }

    /// The version-1 root file, as pinned in a gateway's image (`trusted_root`).
    #[must_use]
    pub fn pinned_root(&self) -> &Path {
        &self.pinned_root
    }

    /// `file://` URL of [`Repo::metadata_dir`], with the trailing `/`.
    #[must_use]
    pub fn metadata_url(&self) -> String {
        file_url(&self.metadata_dir())
    }

    /// `file://` URL of [`Repo::targets_dir`], with the trailing `/`.
    #[must_use]
    pub fn targets_url(&self) -> String {
        file_url(&self.targets_dir())
    }

    /// Adds a target (written to `targets/`) for the next publication; `device_kind`
    /// goes into the target's signed custom metadata.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn add_target(&mut self, name: &str, bytes: &[u8], device_kind: Option<&str>) {
        let path = self.targets_dir().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a target's directory");
        }
        write(&path, bytes);
        self.targets.push(PendingTarget {
            name: name.to_owned(),
            bytes: bytes.to_vec(),
            device_kind: device_kind.map(str::to_owned),
        });
    }

    /// Replaces the served bytes of target `name` without signing anything: what an
    /// attacker controlling the file server (or the path to it) does.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn tamper_target(&self, name: &str, bytes: &[u8]) {
        write(&self.targets_dir().join(name), bytes);
    }

    /// Signs and writes targets/snapshot/timestamp with the given versions; returns
    /// their bytes.
    ///
    /// # Panics
    /// When tough refuses to sign or the files cannot be written.
    pub async fn publish(&self, p: Publish) -> Published {
        let mut editor = RepositoryEditor::new(&self.current_root)
            .await
            .expect("tough's editor reads the current root");
        for target in &self.targets {
            let file = self.dir.path().join("target-source");
            write(&file, &target.bytes);
            let mut signed_target = Target::from_path(&file).await.expect("hashing a target");
            if let Some(kind) = &target.device_kind {
                signed_target
                    .custom
                    .insert("device_kind".into(), json!(kind));
            }
            editor
                .add_target(target.name.as_str(), signed_target)
                .expect("adding a target");
        }
        editor
            .targets_version(nz(p.targets))
            .expect("setting the targets version")
            .targets_expires(days_from_now(30))
            .expect("setting the targets expiry")
            .snapshot_version(nz(p.snapshot))
            .snapshot_expires(days_from_now(30))
            .timestamp_version(nz(p.timestamp))
            .timestamp_expires(days_from_now(p.timestamp_days));
        let keys = boxed(&[&self.role_key]);
        let signed = editor.sign(&keys).await.expect("signing the repository");
        signed
            .write(self.metadata_dir())
            .await
            .expect("writing the signed metadata");
        let read = |f: &str| std::fs::read(self.metadata_dir().join(f)).expect("reading metadata");
        Published {
            timestamp: read("timestamp.json"),
            snapshot: read("snapshot.json"),
            targets: read("targets.json"),
        }
    }

    /// Serves a previous publication's files again (what a rollback attacker does).
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn serve(&self, p: &Published) {
        write(&self.metadata_dir().join("timestamp.json"), &p.timestamp);
        write(&self.metadata_dir().join("snapshot.json"), &p.snapshot);
        write(&self.metadata_dir().join("targets.json"), &p.targets);
    }

    /// Rotates to root `version`: new root keys (threshold 1) and a new role key, signed
    /// by the new root key and by `old_signers` (indices) of the current root keys.
    ///
    /// # Panics
    /// When signing or writing fails, or an index is out of range.
    pub async fn rotate_root(&mut self, version: u64, old_signers: &[usize]) {
        let new_root_key = TestKey::generate();
        let new_role_key = TestKey::generate();
        let root = build_root(
            version,
            std::slice::from_ref(&new_root_key),
            1,
            &new_role_key,
        )
        .await;
        let old: Vec<&TestKey> = old_signers.iter().map(|i| &self.root_keys[*i]).collect();
        let by_old = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(self.root.clone()),
            &boxed(&old),
            &rand(),
        )
        .await
        .expect("signing the new root with the old keys");
        let signed = SignedRole::new(
            root.clone(),
            &KeyHolder::Root(root.clone()),
            &boxed(&[&new_root_key]),
            &rand(),
        )
        .await
        .expect("signing the new root with its own key")
        .add_old_signatures(by_old.signed().signatures.clone())
        .expect("combining the signatures");
        let path = self.metadata_dir().join(format!("{version}.root.json"));
        write(&path, signed.buffer());
        write(&self.metadata_dir().join("root.json"), signed.buffer());
        self.current_root = path;
        self.root = root;
        self.root_keys = vec![new_root_key];
        self.role_key = new_role_key;
    }

    /// The bytes of `N.root.json` for `version`.
    ///
    /// # Panics
    /// When that root was never written.
    #[must_use]
    pub fn root_file(&self, version: u64) -> Vec<u8> {
        std::fs::read(self.metadata_dir().join(format!("{version}.root.json")))
            .expect("reading a root file")
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn file_url(dir: &Path) -> String {
    let mut url = url::Url::from_directory_path(dir)
        .unwrap_or_else(|()| panic!("{} is not an absolute path", dir.display()))
        .to_string();
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

fn rand() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

async fn build_root(
    version: u64,
    root_keys: &[TestKey],
    threshold: u64,
    role_key: &TestKey,
) -> Root {
    let mut keys = HashMap::new();
    let mut root_ids = Vec::new();
    for k in root_keys {
        let id = k.key_id().await;
        keys.insert(id.clone(), k.tuf_key().await);
        root_ids.push(id);
    }
    let role_id = role_key.key_id().await;
    keys.insert(role_id.clone(), role_key.tuf_key().await);
    let role = |ids: Vec<_>, threshold: u64| RoleKeys {
        keyids: ids,
        threshold: nz(threshold),
        _extra: HashMap::new(),
    };
    Root {
        spec_version: "1.0.0".into(),
        consistent_snapshot: false,
        version: nz(version),
        expires: days_from_now(365),
        keys,
        roles: HashMap::from([
            (RoleType::Root, role(root_ids, threshold)),
            (RoleType::Targets, role(vec![role_id.clone()], 1)),
            (RoleType::Snapshot, role(vec![role_id.clone()], 1)),
            (RoleType::Timestamp, role(vec![role_id], 1)),
        ]),
        _extra: HashMap::new(),
    }
}
