//! The trust floor: the lowest metadata versions the gateway will still accept, kept
//! in its own file beside tough's datastore.
//!
//! tough checks rollback against the files in its datastore, but writes them without
//! `fsync` or rename and silently skips the check when a stored file does not parse or
//! does not verify under the current root. The floor is a second, independent check
//! that fails closed: it is written atomically after every accepted refresh, and a
//! floor file that cannot be read stops updates instead of resetting protection.
//!
//! [`check`] is pure. Following TUF 5.3.11 (recovery from a fast-forward attack), a
//! change of the timestamp or snapshot keys in the trusted root resets the timestamp and
//! snapshot floors; the root and targets floors never go down.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TrustError;
use crate::updates::staging::write_atomically;

/// File name of the floor inside the datastore directory.
pub(crate) const FLOOR_FILE: &str = "wardgate-floor.json";

/// Highest versions accepted so far, and the keys they were signed with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustFloor {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    /// Sorted key ids of the timestamp role when `timestamp` was accepted.
    pub timestamp_keys: Vec<String>,
    /// Sorted key ids of the snapshot role when `snapshot` was accepted.
    pub snapshot_keys: Vec<String>,
}

fn rollback(role: &str, offered: u64, trusted: u64) -> TrustError {
    TrustError::Rollback {
        role: role.to_owned(),
        detail: format!(
            "{role} metadata version {offered} is older than version {trusted}, which this gateway already trusted"
        ),
    }
}

/// Checks freshly verified versions (`observed`, with its role keys) against `floor`
/// and returns the new floor.
///
/// # Errors
/// [`TrustError::Rollback`] naming the first role that went back.
pub(crate) fn check(floor: &TrustFloor, observed: &TrustFloor) -> Result<TrustFloor, TrustError> {
    if observed.root < floor.root {
        return Err(rollback("root", observed.root, floor.root));
    }
    let keys_rotated = floor.timestamp_keys != observed.timestamp_keys
        || floor.snapshot_keys != observed.snapshot_keys;
    let (timestamp_floor, snapshot_floor) = if keys_rotated {
        (0, 0)
    } else {
        (floor.timestamp, floor.snapshot)
    };
    if observed.timestamp < timestamp_floor {
        return Err(rollback("timestamp", observed.timestamp, timestamp_floor));
    }
    if observed.snapshot < snapshot_floor {
        return Err(rollback("snapshot", observed.snapshot, snapshot_floor));
    }
    if observed.targets < floor.targets {
        return Err(rollback("targets", observed.targets, floor.targets));
    }
    Ok(observed.clone())
}

/// Reads the floor; a missing file is the empty floor (first start).
///
/// # Errors
/// [`TrustError::Datastore`] when the file exists but cannot be read or parsed.
pub(crate) fn read(dir: &Path) -> Result<TrustFloor, TrustError> {
    let path = dir.join(FLOOR_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustFloor::default()),
        Err(e) => {
            return Err(TrustError::Datastore {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| TrustError::Datastore {
        path: path.display().to_string(),
        reason: format!(
            "unreadable ({e}); updates stay stopped until an operator restores or deliberately removes it"
        ),
    })
}

/// Writes the floor atomically.
///
/// # Errors
/// [`TrustError::Datastore`].
pub(crate) fn write(dir: &Path, floor: &TrustFloor) -> Result<(), TrustError> {
    let path = dir.join(FLOOR_FILE);
    let bytes = serde_json::to_vec_pretty(floor).map_err(|e| TrustError::Datastore {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_atomically(&path, &bytes).map_err(|e| TrustError::Datastore {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn floor(root: u64, ts: u64, snap: u64, targets: u64, keys: &str) -> TrustFloor {
        TrustFloor {
            root,
            timestamp: ts,
            snapshot: snap,
            targets,
            timestamp_keys: vec![keys.to_owned()],
            snapshot_keys: vec![keys.to_owned()],
        }
    }

    fn role_of(e: TrustError) -> String {
        match e {
            TrustError::Rollback { role, .. } => role,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn every_role_is_held_to_its_floor() {
        let f = floor(2, 5, 5, 5, "k");
        assert_eq!(check(&f, &floor(2, 5, 5, 5, "k")).unwrap(), f);
        assert_eq!(
            check(&f, &floor(3, 6, 7, 8, "k")).unwrap(),
            floor(3, 6, 7, 8, "k")
        );
        assert_eq!(
            role_of(check(&f, &floor(1, 9, 9, 9, "k")).unwrap_err()),
            "root"
        );
        assert_eq!(
            role_of(check(&f, &floor(2, 4, 9, 9, "k")).unwrap_err()),
            "timestamp"
        );
        assert_eq!(
            role_of(check(&f, &floor(2, 9, 4, 9, "k")).unwrap_err()),
            "snapshot"
        );
        assert_eq!(
            role_of(check(&f, &floor(2, 9, 9, 4, "k")).unwrap_err()),
            "targets"
        );
    }

    #[test]
    fn rotated_timestamp_or_snapshot_keys_reset_only_those_floors() {
        let f = floor(2, 50, 50, 50, "old");
        assert_eq!(
            check(&f, &floor(3, 1, 1, 50, "new")).unwrap(),
            floor(3, 1, 1, 50, "new")
        );
        assert_eq!(
            role_of(check(&f, &floor(3, 1, 1, 49, "new")).unwrap_err()),
            "targets"
        );
    }

    #[test]
    fn an_unreadable_floor_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), TrustFloor::default());
        write(dir.path(), &floor(1, 2, 3, 4, "k")).unwrap();
        assert_eq!(read(dir.path()).unwrap(), floor(1, 2, 3, 4, "k"));
        std::fs::write(dir.path().join(FLOOR_FILE), b"{\"root\": 1").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(TrustError::Datastore { .. })
        ));
    }
}
