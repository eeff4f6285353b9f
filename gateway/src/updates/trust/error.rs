//! [`TrustError`]: why an update refresh or download was refused, classified by the
//! attack (or fault) it indicates, so the caller can raise an alert and write an audit
//! entry naming it ([`TrustError::attack_class`]).
//!
//! Invariant: tough's errors are mapped by structure (variant, and the error chain of a
//! transport failure), never by matching message text.

use std::error::Error as StdError;

use tough::schema::RoleType;

use super::transport::FetchFailure;
use crate::updates::staging::StagingError;

/// The attack a refusal defends against, in the terms of the TUF specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackClass {
    /// Older metadata than already trusted was offered.
    Rollback,
    /// Expired metadata was offered (an "indefinite freeze").
    Freeze,
    /// Metadata without a threshold of valid signatures (arbitrary software / key
    /// compromise below the threshold).
    ArbitrarySoftware,
    /// Metadata files that do not belong together (version or hash differs from what
    /// the signed parent lists).
    MixAndMatch,
    /// More bytes than allowed (metadata over its limit, a target over its length).
    EndlessData,
    /// Target bytes that do not match their signed hashes.
    TamperedTarget,
    /// The update server failed TLS authentication (not from the configured CA).
    UntrustedServer,
}

impl AttackClass {
    /// Stable identifier for alert records and audit entries.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AttackClass::Rollback => "rollback",
            AttackClass::Freeze => "freeze",
            AttackClass::ArbitrarySoftware => "arbitrary_software",
            AttackClass::MixAndMatch => "mix_and_match",
            AttackClass::EndlessData => "endless_data",
            AttackClass::TamperedTarget => "tampered_target",
            AttackClass::UntrustedServer => "untrusted_server",
        }
    }
}

/// Why verification, download or staging of an update was refused. Nothing is staged
/// when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A setting or a local file it names is unusable (the operator's to fix).
    #[error("updates configuration: `{key}` {reason}")]
    Config {
        /// The configuration key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Metadata older than the trusted version (rollback attack).
    #[error("rollback refused: {detail}")]
    Rollback {
        /// The role (`root`, `timestamp`, `snapshot`, `targets` or a delegated role).
        role: String,
        /// Versions involved.
        detail: String,
    },
    /// Expired metadata (freeze attack, or the repository stopped re-signing).
    #[error("freeze refused: {role} metadata has expired")]
    Expired {
        /// The role.
        role: String,
    },
    /// Metadata not signed by a threshold of the role's keys.
    #[error("{role} metadata is not signed by a threshold of its keys: {detail}")]
    SignatureThreshold {
        /// The role.
        role: String,
        /// tough's account.
        detail: String,
    },
    /// A metadata file does not match what its signed parent lists (mix-and-match).
    #[error("mix-and-match refused: {detail}")]
    MixAndMatch {
        /// What did not match.
        detail: String,
    },
    /// A metadata file is larger than its configured limit (endless data).
    #[error("metadata larger than allowed: {detail}")]
    MetadataTooLarge {
        /// Which limit.
        detail: String,
    },
    /// A target's bytes do not match its signed hashes.
    #[error("target {name:?} does not match its signed hashes")]
    TargetHashMismatch {
        /// The target.
        name: String,
    },
    /// A target is longer (endless data) or shorter than its signed length, or listed
    /// larger than `max_target_bytes`.
    #[error("target {name:?}: {detail}")]
    TargetLength {
        /// The target.
        name: String,
        /// What was wrong with the length.
        detail: String,
    },
    /// The update server's certificate is not from the configured CA (or TLS failed).
    #[error("update server {url} not trusted: {reason}")]
    UntrustedServer {
        /// The URL being fetched.
        url: String,
        /// The TLS error.
        reason: String,
    },
    /// The server could not be reached, answered with an error, or stalled.
    #[error("fetching {url}: {reason}")]
    Transport {
        /// The URL being fetched.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The clock is earlier than one already seen; expiry cannot be judged until it is
    /// right again.
    #[error("the system clock stepped backward: {detail}")]
    ClockSteppedBack {
        /// tough's account.
        detail: String,
    },
    /// The target is not listed in the verified targets metadata.
    #[error("target {name:?} is not listed in the verified targets metadata")]
    UnknownTarget {
        /// The name asked for.
        name: String,
    },
    /// Metadata that parses but violates the specification, or does not parse.
    #[error("malformed metadata: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// Staging the verified target failed (budget, disk).
    #[error(transparent)]
    Staging(StagingError),
    /// The TUF datastore (trusted versions, root) could not be read or written.
    #[error("update trust store {path}: {reason}")]
    Datastore {
        /// The file or directory.
        path: String,
        /// What happened.
        reason: String,
    },
    /// An error tough reports that none of the classes above covers.
    #[error("update verification failed: {detail}")]
    Other {
        /// tough's account.
        detail: String,
    },
}

impl TrustError {
    /// The attack class this refusal defends against, if it is one (configuration,
    /// transport and disk problems are not).
    #[must_use]
    pub fn attack_class(&self) -> Option<AttackClass> {
        match self {
            TrustError::Rollback { .. } => Some(AttackClass::Rollback),
            TrustError::Expired { .. } => Some(AttackClass::Freeze),
            TrustError::SignatureThreshold { .. } => Some(AttackClass::ArbitrarySoftware),
            TrustError::MixAndMatch { .. } => Some(AttackClass::MixAndMatch),
            TrustError::MetadataTooLarge { .. } | TrustError::TargetLength { .. } => {
                Some(AttackClass::EndlessData)
            }
            TrustError::TargetHashMismatch { .. } => Some(AttackClass::TamperedTarget),
            TrustError::UntrustedServer { .. } => Some(AttackClass::UntrustedServer),
            TrustError::Config { .. }
            | TrustError::Transport { .. }
            | TrustError::ClockSteppedBack { .. }
            | TrustError::UnknownTarget { .. }
            | TrustError::Malformed { .. }
            | TrustError::Staging(_)
            | TrustError::Datastore { .. }
            | TrustError::Other { .. } => None,
        }
    }
}

/// What was being fetched when tough failed: the same tough error means different
/// things for metadata and for a target.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase<'a> {
    /// Loading metadata.
    Metadata,
    /// Downloading the named target.
    Target(&'a str),
}

fn role_name(role: RoleType) -> String {
    role.to_string()
}

/// Maps a tough error to a [`TrustError`].
pub(crate) fn classify(err: &tough::error::Error, phase: Phase<'_>) -> TrustError {
    use tough::error::Error as E;
    let detail = err.to_string();
    match err {
        E::OlderMetadata { role, .. } => TrustError::Rollback {
            role: role_name(*role),
            detail,
        },
        E::ExpiredMetadata { role, .. } => TrustError::Expired {
            role: role_name(*role),
        },
        E::VerifyMetadata { role, .. } => TrustError::SignatureThreshold {
            role: role_name(*role),
            detail,
        },
        E::VerifyRoleMetadata { role, .. } => TrustError::SignatureThreshold {
            role: role.clone(),
            detail,
        },
        E::VerifyTrustedMetadata { .. } | E::ParseTrustedMetadata { .. } => TrustError::Config {
            key: "trusted_root",
            reason: format!("is not a self-consistent signed root: {detail}"),
        },
        E::VersionMismatch { .. } => TrustError::MixAndMatch { detail },
        E::SystemTimeSteppedBackward { .. } => TrustError::ClockSteppedBack { detail },
        E::MaxUpdatesExceeded { .. } => TrustError::MetadataTooLarge { detail },
        E::ParseMetadata { .. }
        | E::MetaMissing { .. }
        | E::InvalidPath { .. }
        | E::DelegatedRolesNotConsistent { .. } => TrustError::Malformed { detail },
        E::DatastoreCreate { path, .. }
        | E::DatastoreOpen { path, .. }
        | E::DatastoreRemove { path, .. }
        | E::DatastoreSerialize { path, .. } => TrustError::Datastore {
            path: path.display().to_string(),
            reason: detail,
        },
        E::HashMismatch { .. } => hash_mismatch(phase, detail),
        E::MaxSizeExceeded { specifier, .. } => too_large(phase, specifier, detail),
        E::Transport { url, source, .. } => classify_transport(url.as_str(), source, phase),
        _ => TrustError::Other { detail },
    }
}

fn hash_mismatch(phase: Phase<'_>, detail: String) -> TrustError {
    match phase {
        // A metadata file whose hash differs from what the signed parent lists.
        Phase::Metadata => TrustError::MixAndMatch { detail },
        Phase::Target(name) => TrustError::TargetHashMismatch {
            name: name.to_owned(),
        },
    }
}

fn too_large(phase: Phase<'_>, specifier: &str, detail: String) -> TrustError {
    match phase {
        Phase::Target(name) => TrustError::TargetLength {
            name: name.to_owned(),
            detail: format!("longer than its signed length ({detail})"),
        },
        // Our configured limit ("max_… argument"/"parameter") versus a length listed in
        // signed metadata ("timestamp.json", "snapshot.json"): the latter means the file
        // served is not the one listed.
        Phase::Metadata if specifier.ends_with(".json") => TrustError::MixAndMatch {
            detail: format!("longer than listed: {detail}"),
        },
        Phase::Metadata => TrustError::MetadataTooLarge { detail },
    }
}

fn classify_transport(url: &str, source: &tough::TransportError, phase: Phase<'_>) -> TrustError {
    // tough reports its own size and digest checks as the source of a transport error.
    let mut cause: Option<&(dyn StdError + 'static)> = source.source();
    while let Some(c) = cause {
        if let Some(inner) = c.downcast_ref::<tough::error::Error>() {
            return classify(inner, phase);
        }
        if let Some(failure) = c.downcast_ref::<FetchFailure>() {
            return failure.to_trust_error(url);
        }
        cause = c.source();
    }
    TrustError::Transport {
        url: url.to_owned(),
        reason: source.to_string(),
    }
}
