//! Cybersecurity updates for the devices on the LAN (issue 5): wardgate acts as an
//! Uptane-style *primary*. It verifies updates against a TUF repository, keeps verified
//! targets on its disk, and offers them to the devices an assignment names, which pull
//! them over the agent API when no patient is at stake.
//!
//! | part | folder / file | what it does |
//! |---|---|---|
//! | trust | [`trust`] | TUF client (tough): pinned root, rotation, rollback/freeze/mix-and-match/endless-data refused, verified fetch |
//! | staging | [`staging`] | verified targets on disk under a budget; unneeded ones removed |
//! | configuration | [`config`] | the `[updates]` section |
//! | assignments | [`assignment`] | the cloud's only update instruction: schema and validation |
//! | rollout | [`rollout`] | sans-IO: waves, failure threshold, per-device progress, patient-first offers |
//! | persistence | [`store`] | assignments and per-device progress in SQLite, across restarts |
//!
//! **Invariants:** a file is served to a device only if it is staged, and it is staged
//! only after its length and hashes matched verified TUF targets metadata; a failed
//! verification stages nothing. No offer is made to a device whose state does not allow
//! a patch offer (`devices::patient_first`).

pub mod assignment;
pub mod config;
pub mod rollout;
pub mod staging;
pub mod store;
pub mod trust;

use std::path::PathBuf;

/// A target verified against TUF metadata and staged on the gateway's disk, ready to be
/// served to devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedTarget {
    /// The TUF target name (a relative path in the repository, e.g. `infusion/pump-4.2.1.bin`).
    pub name: String,
    /// Where the verified bytes are on disk.
    pub path: PathBuf,
    /// Length in bytes (as listed in, and checked against, the targets metadata).
    pub length: u64,
    /// SHA-256 of the bytes (checked against the targets metadata); its hex form is the
    /// HTTP `ETag` devices resume against.
    pub sha256: [u8; 32],
}
