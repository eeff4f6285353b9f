//! Bearer-token authentication for `/status.json` and `/metrics`, and the per-address
//! limit on failed attempts.
//!
//! Invariants:
//! * The token is read once from its file and kept only as its SHA-256 digest; the
//!   presented token is hashed and the digests compared in constant time (`subtle`), so
//!   neither memory dumps of the verifier nor response timing give the token away.
//! * The token never reaches a log, an error message or a `Debug` output.
//! * A token file readable or writable by other users is refused: anyone on the box
//!   could read the gateway's figures or scrape as Prometheus.
//! * An address that has used up its allowance of failed attempts is refused (429)
//!   without its token being checked, until the allowance refills: otherwise the limit
//!   would only slow down the answers to wrong guesses, not the guessing.
//! * The memory kept per address is bounded ([`MAX_TRACKED_ADDRESSES`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::StatusError;

/// Shortest token accepted (characters): 32 hex characters are 128 bits.
pub const MIN_TOKEN_CHARS: usize = 32;
/// Longest token accepted (characters); keeps the `Authorization` header small.
pub const MAX_TOKEN_CHARS: usize = 512;
/// Addresses remembered by the failed-attempt limit before the oldest state is dropped.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Checks presented bearer tokens against the configured one.
#[derive(Clone)]
pub struct TokenVerifier {
    digest: [u8; 32],
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(<redacted>)")
    }
}

impl TokenVerifier {
    /// Reads the token from `path` (see [`read_token_file`]).
    ///
    /// # Errors
    /// As [`read_token_file`], and when the token is unacceptable (see
    /// [`TokenVerifier::from_token`]). The message never contains the token.
    pub fn from_file(path: &Path) -> Result<TokenVerifier, StatusError> {
        let token = read_token_file(path)?;
        TokenVerifier::from_token(&token).map_err(|reason| StatusError::TokenFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// A verifier for `token`: 32–512 visible ASCII characters (no spaces), as fits an
    /// `Authorization: Bearer` header.
    ///
    /// # Errors
    /// The reason the token is unacceptable (never the token itself).
    pub fn from_token(token: &str) -> Result<TokenVerifier, String> {
        let chars = token.chars().count();
        if !(MIN_TOKEN_CHARS..=MAX_TOKEN_CHARS).contains(&chars) {
            return Err(format!(
                "holds a token of {chars} characters; use {MIN_TOKEN_CHARS}–{MAX_TOKEN_CHARS} \
                 (e.g. `openssl rand -hex 32`)"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "holds characters other than visible ASCII (spaces, control characters or \
                 non-ASCII) in the token"
                    .into(),
            );
        }
        Ok(TokenVerifier {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token.
    #[must_use]
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

/// Reads a token file: one line (a final line feed is ignored), from a regular file of
/// at most 4 KiB that other users can neither read nor write.
///
/// # Errors
/// [`StatusError::TokenFile`] naming the file and the reason, never the token.
pub fn read_token_file(path: &Path) -> Result<String, StatusError> {
    let invalid = |reason: String| StatusError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?;
    if !metadata.is_file() {
        return Err(invalid("is not a file".into()));
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(invalid(format!(
                "is accessible to other users (mode {:04o}); chmod o-rwx it",
                mode & 0o7777
            )));
        }
    }
    // The file is one token; a wrong path (a log, a device node) must not be slurped whole.
    if metadata.len() > 4096 {
        return Err(invalid(format!(
            "is {} bytes; a token file holds one token of at most {MAX_TOKEN_CHARS} characters",
            metadata.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid("is not UTF-8 text".into()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The token in an `Authorization` header value, if it is a Bearer credential. The
/// scheme is case-insensitive (RFC 7235).
#[must_use]
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Limits failed authentication attempts per source address.
pub struct FailedAuthLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// Addresses that used up their allowance, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for FailedAuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAuthLimiter")
            .field("tracked", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl FailedAuthLimiter {
    /// Allows `per_minute` failures per address and minute, all at once at most.
    #[must_use]
    pub fn new(per_minute: NonZeroU32) -> Self {
        FailedAuthLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` is still refused, if it is.
    #[must_use]
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        match blocked.get(&ip) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a failed attempt from `ip`; returns how long it is now refused, if this
    /// attempt used up its allowance.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.limiter.len() > MAX_TRACKED_ADDRESSES {
            self.limiter.retain_recent();
        }
        let not_until = self.limiter.check_key(&ip).err()?;
        let wait = not_until
            .wait_time_from(self.clock.now())
            .max(Duration::from_secs(1));
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.len() >= MAX_TRACKED_ADDRESSES {
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() < MAX_TRACKED_ADDRESSES {
            blocked.insert(ip, now + wait);
        }
        Some(wait)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn verifies_only_the_token() {
        let v = TokenVerifier::from_token(TOKEN).unwrap();
        assert!(v.verify(TOKEN));
        assert!(!v.verify(&TOKEN[1..]));
        assert!(!v.verify(""));
        assert!(!v.verify(&format!("{TOKEN}x")));
    }

    #[test]
    fn debug_does_not_show_the_digest() {
        let v = TokenVerifier::from_token(TOKEN).unwrap();
        let shown = format!("{v:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains(&hex::encode(Sha256::digest(TOKEN))));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_without_echoing_them() {
        let e = TokenVerifier::from_token("short").unwrap_err();
        assert!(!e.contains("short"), "{e}");
        let spaced = format!("{TOKEN} {TOKEN}");
        let e = TokenVerifier::from_token(&spaced).unwrap_err();
        assert!(!e.contains(TOKEN), "{e}");
    }

    #[test]
    fn token_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TokenVerifier::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("other users"), "{e}");
        assert!(!e.contains(TOKEN), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(TokenVerifier::from_file(&path).unwrap().verify(TOKEN));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_others_are_ignored() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn an_address_is_blocked_after_its_allowance_and_others_are_not() {
        let limiter = FailedAuthLimiter::new(NonZeroU32::new(3).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.record_failure(a, now), None);
            assert_eq!(limiter.blocked_for(a, now), None);
        }
        let wait = limiter.record_failure(a, now).unwrap();
        // One of three per minute refills after about 20 s.
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(21));
        assert!(limiter.blocked_for(a, now).is_some());
        assert_eq!(limiter.blocked_for(b, now), None);
        assert_eq!(limiter.blocked_for(a, now + wait), None);
    }
}
