//! Keyed pseudonyms: `HMAC-SHA256(site key, identifier ‖ 0x1F ‖ assigning authority)`.
//!
//! The site key is 32 random bytes in a file (mode 0600) that never leaves the gateway.
//! A bare hash of an MRN would fall to a dictionary attack (MRNs are short and
//! sequential); a keyed HMAC does not without the key. The same identifier from the same
//! authority always gives the same pseudonym, across restarts and across adapters (HL7
//! now, DICOM later), so the cloud can link a patient's data over time.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wardgate_proto::Pseudonym;

use super::PhiError;

/// Length of a freshly generated key, in bytes.
const KEY_LEN: usize = 32;
/// Pseudonyms carry 128 bits of the HMAC: collision-free for any realistic site, and short.
const PSEUDONYM_BYTES: usize = 16;

/// The site's pseudonym key. `Debug` never prints it.
#[derive(Clone)]
pub struct PseudonymKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(<secret>)")
    }
}

impl PseudonymKey {
    /// Loads the key from `path`, creating it (32 random bytes, mode 0600) if it does not
    /// exist. Refuses a key file that group or others can read, or one shorter than 32 bytes.
    ///
    /// # Errors
    /// [`PhiError::Key`] naming the file and the reason.
    pub fn load_or_create(path: &Path) -> Result<(PseudonymKey, bool), PhiError> {
        let key_err = |reason: String| PhiError::Key {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(key_err(format!(
                        "mode {:o} lets other users read the key; run chmod 600 on it",
                        mode & 0o777
                    )));
                }
                let key = std::fs::read(path).map_err(|e| key_err(format!("cannot read: {e}")))?;
                if key.len() < KEY_LEN {
                    return Err(key_err(format!(
                        "is {} bytes, need at least {KEY_LEN}",
                        key.len()
                    )));
                }
                Ok((PseudonymKey { key }, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; KEY_LEN];
                getrandom::fill(&mut key).map_err(|e| key_err(format!("no randomness: {e}")))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| key_err(format!("cannot create: {e}")))?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| key_err(format!("cannot write: {e}")))?;
                if let Some(dir) = path.parent() {
                    // Make the new directory entry durable too, or a power cut could lose the key
                    // after pseudonyms made with it were already sent.
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok((PseudonymKey { key }, true))
            }
            Err(e) => Err(key_err(format!("cannot stat: {e}"))),
        }
    }

    /// A key from bytes (tests and tools).
    #[must_use]
    pub fn from_bytes(key: &[u8]) -> PseudonymKey {
        PseudonymKey { key: key.to_vec() }
    }

    /// The pseudonym of `identifier` as issued by `authority`. Both are trimmed and the
    /// authority upper-cased, so `mrn1^^^hosp` and `MRN1^^^HOSP ` from two devices of the
    /// same site agree on the authority; identifiers stay case-sensitive.
    #[must_use]
    pub fn pseudonym(&self, identifier: &str, authority: &str) -> Pseudonym {
        let mac = self.mac(&[
            identifier.trim().as_bytes(),
            authority.trim().to_ascii_uppercase().as_bytes(),
        ]);
        Pseudonym(format!("p-{}", hex::encode(&mac[..PSEUDONYM_BYTES])))
    }

    /// Raw keyed HMAC over `parts` joined by 0x1F (unit separator, which cannot occur in
    /// HL7 field content). For other keyed hashes derived from the site key (UID mapping,
    /// name-token redaction in later adapters).
    #[must_use]
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // new_from_slice accepts any key length for HMAC; the error arm is unreachable
        // but handled rather than unwrapped.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return [0u8; 32];
        };
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(&[0x1f]);
            }
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pseudonym.key");
        let (k1, created) = PseudonymKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = PseudonymKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.pseudonym("MRN1", "HOSP"), k2.pseudonym("MRN1", "HOSP"));
    }

    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PseudonymKey::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, [7u8; 8]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(PseudonymKey::load_or_create(&path).is_err());
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let a = PseudonymKey::from_bytes(&[1; 32]);
        let b = PseudonymKey::from_bytes(&[2; 32]);
        let p = a.pseudonym("MRN1", "HOSP");
        assert_eq!(p, a.pseudonym(" MRN1", "hosp"));
        assert_ne!(
            p,
            b.pseudonym("MRN1", "HOSP"),
            "a different site key must give a different pseudonym"
        );
        assert_ne!(
            p,
            a.pseudonym("MRN1", "OTHER"),
            "the authority is part of the identity"
        );
        assert_ne!(p, a.pseudonym("MRN2", "HOSP"));
        assert!(p.0.starts_with("p-") && p.0.len() == 2 + 32);
        assert!(!p.0.contains("MRN1"));
        // Joining with a separator: ("AB","C") and ("A","BC") must differ.
        assert_ne!(a.pseudonym("AB", "C"), a.pseudonym("A", "BC"));
    }

    #[test]
    fn debug_hides_the_key() {
        let k = PseudonymKey::from_bytes(b"super secret key material 123456");
        assert!(!format!("{k:?}").contains("secret key"));
    }
}
