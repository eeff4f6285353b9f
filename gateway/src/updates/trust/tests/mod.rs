//! TUF verification against real, signed repositories generated per test: the good
//! path, and every attack class refused with nothing staged.

mod https;

use std::path::Path;

use sha2::Digest;
use wardgate_tests::tuf_repo::{Publish, Repo};

use super::*;

/// The trust configuration (default limits) of a shared test repository.
trait ConfigOf {
    fn config(&self) -> UpdatesTrustConfig;
}

impl ConfigOf for Repo {
    fn config(&self) -> UpdatesTrustConfig {
        UpdatesTrustConfig::new(
            &self.metadata_url(),
            &self.targets_url(),
            self.pinned_root().to_path_buf(),
        )
    }
}

const IMAGE: &[u8] = b"infusion pump firmware 4.2.1 -- the verified bytes";
const NAME: &str = "infusion/pump-4.2.1.bin";

struct Gateway {
    data: tempfile::TempDir,
    staging: Staging,
}

impl Gateway {
    fn new() -> Self {
        let data = tempfile::tempdir().unwrap();
        let staging = Staging::open(&data.path().join("staging"), 64 << 20).unwrap();
        Self { data, staging }
    }

    fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Refresh, then download and stage `name`.
    async fn update(
        &self,
        config: &UpdatesTrustConfig,
        name: &str,
    ) -> Result<StagedTarget, TrustError> {
        let repo = TrustedRepository::load(config, self.data_dir()).await?;
        repo.fetch_and_stage(name, &self.staging).await
    }

    fn assert_nothing_staged(&self) {
        assert!(self.staging.list().is_empty(), "{:?}", self.staging.list());
        let files = std::fs::read_dir(self.staging.dir().join("targets"))
            .unwrap()
            .count();
        assert_eq!(files, 0, "files left in targets/");
    }
}

async fn repo_with_image() -> Repo {
    let mut repo = Repo::new(1, 1).await;
    repo.add_target(NAME, IMAGE, Some("infusion-pump"));
    repo.add_target("monitor/fw-9.bin", &[7u8; 4096], Some("patient-monitor"));
    repo
}

#[tokio::test]
async fn a_good_update_is_verified_staged_and_served_byte_for_byte() {
    let repo = repo_with_image().await;
    let published = repo.publish(Publish::all(1)).await;
    let gw = Gateway::new();

    let trusted = TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();
    assert_eq!(
        trusted.versions(),
        TrustedVersions {
            root: 1,
            timestamp: 1,
            snapshot: 1,
            targets: 1
        }
    );
    let listed = trusted.targets();
    assert_eq!(listed.len(), 2);
    let pump = trusted.target(NAME).unwrap();
    assert_eq!(pump.length, IMAGE.len() as u64);
    assert_eq!(pump.custom_str("device_kind"), Some("infusion-pump"));
    assert_eq!(pump.sha256, <[u8; 32]>::from(sha2::Sha256::digest(IMAGE)));

    let staged = trusted.fetch_and_stage(NAME, &gw.staging).await.unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), IMAGE);
    assert_eq!(staged.sha256, pump.sha256);
    assert_eq!(gw.staging.get(NAME), Some(staged.clone()));

    // The verified metadata are the repository's exact bytes, staged for devices.
    assert_eq!(
        trusted.metadata().get("timestamp.json").unwrap(),
        published.timestamp
    );
    assert_eq!(
        trusted.metadata().get("targets.json").unwrap(),
        published.targets
    );
    assert_eq!(
        trusted.metadata().get("root.json").unwrap(),
        repo.root_file(1)
    );
    for file in [
        "root.json",
        "timestamp.json",
        "snapshot.json",
        "targets.json",
    ] {
        let path = gw.staging.metadata_path(file).unwrap();
        assert_eq!(
            std::fs::read(path).unwrap(),
            trusted.metadata().get(file).unwrap()
        );
    }

    // Already staged: no download (the served file may even vanish).
    std::fs::remove_file(repo.targets_dir().join(NAME)).unwrap();
    assert_eq!(
        trusted.fetch_and_stage(NAME, &gw.staging).await.unwrap(),
        staged
    );

    // A name the metadata does not list, and an unsafe one.
    assert!(matches!(
        trusted.fetch_and_stage("other.bin", &gw.staging).await,
        Err(TrustError::UnknownTarget { .. })
    ));
    assert!(matches!(
        trusted.fetch_and_stage("../etc/passwd", &gw.staging).await,
        Err(TrustError::Staging(StagingError::UnsafeName { .. }))
    ));
}

#[tokio::test]
async fn rolled_back_timestamp_is_refused_also_after_a_restart() {
    let repo = repo_with_image().await;
    let old = repo.publish(Publish::all(1)).await;
    repo.publish(Publish::all(2)).await;
    let gw = Gateway::new();
    TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();

    // "Restart": a fresh load from the same data directory, against old metadata.
    repo.serve(&old);
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Rollback { role, .. } if role == "timestamp"),
        "{err}"
    );
    assert_eq!(err.attack_class(), Some(AttackClass::Rollback));
    gw.assert_nothing_staged();

    // Even with tough's own datastore files lost (torn writes, wiped), the floor holds.
    let tuf = gw.data_dir().join(DATASTORE_SUBDIR);
    for f in ["timestamp.json", "snapshot.json", "targets.json"] {
        std::fs::remove_file(tuf.join(f)).unwrap();
    }
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::Rollback { .. }), "{err}");
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn rolled_back_snapshot_is_refused() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(2)).await;
    let gw = Gateway::new();
    TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();

    // A fresh, validly signed timestamp that points at an older snapshot.
    repo.publish(Publish {
        targets: 2,
        snapshot: 1,
        timestamp: 3,
        timestamp_days: 7,
    })
    .await;
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::Rollback { .. }), "{err}");
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn rolled_back_targets_are_refused() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(2)).await;
    let gw = Gateway::new();
    TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();

    repo.publish(Publish {
        targets: 1,
        snapshot: 3,
        timestamp: 3,
        timestamp_days: 7,
    })
    .await;
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::Rollback { .. }), "{err}");
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn an_expired_timestamp_is_a_freeze() {
    let repo = repo_with_image().await;
    repo.publish(Publish {
        timestamp_days: -1,
        ..Publish::all(1)
    })
    .await;
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Expired { role } if role == "timestamp"),
        "{err}"
    );
    assert_eq!(err.attack_class(), Some(AttackClass::Freeze));
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn target_bytes_not_matching_their_hash_are_refused() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let mut tampered = IMAGE.to_vec();
    tampered[3] ^= 0x20;
    std::fs::write(repo.targets_dir().join(NAME), &tampered).unwrap();
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::TargetHashMismatch { .. }),
        "{err}"
    );
    assert_eq!(err.attack_class(), Some(AttackClass::TamperedTarget));
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn a_target_longer_than_listed_is_endless_data() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let mut longer = IMAGE.to_vec();
    longer.extend_from_slice(&[0u8; 1 << 20]);
    std::fs::write(repo.targets_dir().join(NAME), &longer).unwrap();
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::TargetLength { .. }), "{err}");
    assert_eq!(err.attack_class(), Some(AttackClass::EndlessData));
    gw.assert_nothing_staged();

    // Shorter than listed is refused too.
    std::fs::write(repo.targets_dir().join(NAME), &IMAGE[..10]).unwrap();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(err.attack_class().is_some(), "{err}");
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn a_target_listed_over_the_size_limit_is_not_downloaded() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let gw = Gateway::new();
    let mut config = repo.config();
    config.max_target_bytes = 16;
    let err = gw.update(&config, NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::TargetLength { .. }), "{err}");
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn metadata_over_the_size_limit_is_refused() {
    let repo = repo_with_image().await;
    let published = repo.publish(Publish::all(1)).await;
    // Still valid, signed JSON: only padded with whitespace beyond the limit.
    let mut padded = published.timestamp.clone();
    padded.extend(std::iter::repeat_n(b' ', 128 * 1024));
    std::fs::write(repo.metadata_dir().join("timestamp.json"), &padded).unwrap();
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::MetadataTooLarge { .. }), "{err}");
    assert_eq!(err.attack_class(), Some(AttackClass::EndlessData));
    gw.assert_nothing_staged();

    // The same file within a raised limit is accepted.
    let mut config = repo.config();
    config.max_timestamp_bytes = 1 << 20;
    gw.update(&config, NAME).await.unwrap();
}

#[tokio::test]
async fn mix_and_match_is_refused() {
    let mut repo = repo_with_image().await;
    let v1 = repo.publish(Publish::all(1)).await;
    repo.add_target("extra.bin", b"extra", None);
    repo.publish(Publish::all(2)).await;
    // Snapshot v2 lists targets v2, but the server hands out targets v1.
    std::fs::write(repo.metadata_dir().join("targets.json"), &v1.targets).unwrap();
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(matches!(&err, TrustError::MixAndMatch { .. }), "{err}");
    assert_eq!(err.attack_class(), Some(AttackClass::MixAndMatch));
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn a_properly_signed_root_rotation_is_followed_and_kept() {
    let mut repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let gw = Gateway::new();
    TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();

    repo.rotate_root(2, &[0]).await;
    repo.publish(Publish::all(2)).await;
    let trusted = TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();
    assert_eq!(trusted.versions().root, 2);
    assert_eq!(
        trusted.metadata().get("2.root.json").unwrap(),
        repo.root_file(2)
    );
    assert_eq!(
        trusted.metadata().get("root.json").unwrap(),
        repo.root_file(2)
    );
    let staged = trusted.fetch_and_stage(NAME, &gw.staging).await.unwrap();
    assert_eq!(std::fs::read(staged.path).unwrap(), IMAGE);
    assert!(gw.staging.metadata_path("2.root.json").is_some());

    // After a restart the gateway starts from root 2, not the pinned root 1: hiding
    // 2.root.json does not take it back to the old keys.
    std::fs::remove_file(repo.metadata_dir().join("2.root.json")).unwrap();
    let trusted = TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();
    assert_eq!(trusted.versions().root, 2);
}

#[tokio::test]
async fn a_root_rotation_signed_by_too_few_old_keys_is_refused() {
    let mut repo = Repo::new(2, 2).await;
    repo.add_target(NAME, IMAGE, None);
    repo.publish(Publish::all(1)).await;
    let gw = Gateway::new();
    TrustedRepository::load(&repo.config(), gw.data_dir())
        .await
        .unwrap();

    // Only one of the two old root keys signs version 2 (threshold 2).
    repo.rotate_root(2, &[1]).await;
    repo.publish(Publish::all(2)).await;
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::SignatureThreshold { role, .. } if role == "root"),
        "{err}"
    );
    assert_eq!(err.attack_class(), Some(AttackClass::ArbitrarySoftware));
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn timestamp_signed_by_a_key_the_root_does_not_list_is_refused() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    // A mirror replaces the signature with one by its own key.
    let path = repo.metadata_dir().join("timestamp.json");
    let mut ts: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    ts["signatures"] = serde_json::json!([{ "keyid": "ab".repeat(32), "sig": "cd".repeat(64) }]);
    std::fs::write(&path, serde_json::to_vec(&ts).unwrap()).unwrap();
    let gw = Gateway::new();
    let err = gw.update(&repo.config(), NAME).await.unwrap_err();
    assert!(
        matches!(&err, TrustError::SignatureThreshold { role, .. } if role == "timestamp"),
        "{err}"
    );
    assert_eq!(err.attack_class(), Some(AttackClass::ArbitrarySoftware));
    gw.assert_nothing_staged();
}

#[tokio::test]
async fn a_wrong_pinned_root_is_a_configuration_error() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let gw = Gateway::new();
    let mut config = repo.config();
    config.trusted_root = gw.data_dir().join("missing-root.json");
    let err = gw.update(&config, NAME).await.unwrap_err();
    assert!(
        matches!(
            &err,
            TrustError::Config {
                key: "trusted_root",
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(&config.trusted_root, b"{}").unwrap();
    let err = gw.update(&config, NAME).await.unwrap_err();
    assert!(
        matches!(
            &err,
            TrustError::Config {
                key: "trusted_root",
                ..
            }
        ),
        "{err}"
    );
    gw.assert_nothing_staged();
}
