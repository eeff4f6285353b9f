//! TLS material for the uplink: reads the CA, client certificate and key from PEM files,
//! checks them, and builds a rustls client configuration with the ring provider.
//!
//! Invariants:
//! * The broker is trusted only through the CA file; the system trust store is never
//!   consulted, so a compromised public CA cannot impersonate the cloud.
//! * Files are read afresh for every connection attempt, so a rotated certificate is used
//!   from the next reconnect on, without a restart.
//! * Every problem with a file is an [`UplinkError`] naming the file; nothing here panics.
//!   Problems found here are the operator's to fix; a broken file is never "retried" into
//!   a connection.
//!
//! Certificate validity dates are read with `yasna`, a DER reader already in the build
//! through `rcgen`: rustls-webpki keeps a certificate's validity private, and
//! `x509-parser` would add a parser stack (nom, asn1-rs, der-parser, oid-registry) for two
//! dates.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::uplink::UplinkError;

/// Warn when the client certificate expires within this many seconds (30 days).
pub const EXPIRY_WARNING_SECS: i64 = 30 * 24 * 3600;

/// A ready client configuration and what the uplink reports about it.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The rustls configuration for rumqttc.
    pub client_config: Arc<rustls::ClientConfig>,
    /// Client certificate notBefore, Unix seconds.
    pub not_before: i64,
    /// Client certificate notAfter, Unix seconds.
    pub not_after: i64,
}

/// Validity period of a certificate, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

/// Reads and checks the three files and builds the client configuration, as of
/// `now_unix` (seconds).
///
/// # Errors
/// A missing or unreadable file, a file without the expected PEM items, a key of the
/// wrong type or one that does not match the certificate, a client certificate outside
/// its validity period.
pub fn load(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
    alpn: Option<&[u8]>,
    now_unix: i64,
) -> Result<TlsMaterial, UplinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let roots = load_roots(ca_file, now_unix)?;
    let chain = load_chain(cert_file)?;
    let key = load_key(key_file)?;

    // The chain is non-empty (load_chain checks), so index 0 is the end entity.
    let validity =
        validity(&chain[0]).map_err(|reason| invalid("client certificate", cert_file, reason))?;
    if now_unix < validity.not_before {
        return Err(UplinkError::CertificateNotYetValid {
            path: cert_file.to_owned(),
            not_before: rfc3339(validity.not_before),
        });
    }
    if now_unix > validity.not_after {
        return Err(UplinkError::CertificateExpired {
            path: cert_file.to_owned(),
            not_after: rfc3339(validity.not_after),
        });
    }
    if validity.not_after - now_unix < EXPIRY_WARNING_SECS {
        tracing::warn!(
            cert_file = %cert_file.display(),
            not_after = %rfc3339(validity.not_after),
            days_left = (validity.not_after - now_unix) / 86_400,
            "client certificate expires soon; renew it (it is re-read at every reconnect)"
        );
    }

    check_key_matches(&provider, &chain, &key, cert_file, key_file)?;

    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UplinkError::TlsConfig)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => UplinkError::KeyMismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            },
            other => UplinkError::TlsConfig(other),
        })?;
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(TlsMaterial {
        client_config: Arc::new(config),
        not_before: validity.not_before,
        not_after: validity.not_after,
    })
}

fn read(role: &'static str, path: &Path) -> Result<Vec<u8>, UplinkError> {
    std::fs::read(path).map_err(|source| UplinkError::CredentialFile {
        role,
        path: path.to_owned(),
        source,
    })
}

fn invalid(role: &'static str, path: &Path, reason: impl Into<String>) -> UplinkError {
    UplinkError::InvalidCredential {
        role,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn pem_certs(role: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let pem = read(role, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(role, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(role, path, "contains no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn load_roots(path: &Path, now_unix: i64) -> Result<rustls::RootCertStore, UplinkError> {
    const ROLE: &str = "CA certificate";
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in pem_certs(ROLE, path)?.into_iter().enumerate() {
        match validity(&cert) {
            Ok(v) if now_unix > v.not_after => tracing::warn!(
                ca_file = %path.display(),
                index,
                not_after = %rfc3339(v.not_after),
                "a CA certificate has expired; brokers it signed will be refused"
            ),
            Ok(_) => {}
            Err(reason) => {
                return Err(invalid(
                    ROLE,
                    path,
                    format!("certificate #{index}: {reason}"),
                ))
            }
        }
        roots.add(cert).map_err(|e| {
            invalid(
                ROLE,
                path,
                format!("certificate #{index} is not a usable trust anchor: {e}"),
            )
        })?;
    }
    Ok(roots)
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    pem_certs("client certificate", path)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, UplinkError> {
    const ROLE: &str = "client key";
    let pem = read(ROLE, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => invalid(
            ROLE,
            path,
            "contains no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ),
        other => invalid(ROLE, path, format!("not valid PEM: {other}")),
    })
}

fn check_key_matches(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<(), UplinkError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| invalid("client key", key_file, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain.to_vec(), signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        // The provider cannot derive the public key for this key type; rustls checks
        // again during the handshake.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(UplinkError::KeyMismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
        }),
        Err(other) => Err(invalid(
            "client certificate",
            cert_file,
            format!("cannot be parsed: {other}"),
        )),
    }
}

/// Reads notBefore/notAfter from a DER X.509 certificate.
///
/// ```text
/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
/// TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
///                               validity SEQUENCE { notBefore Time, notAfter Time }, ... }
/// ```
///
/// # Errors
/// A description of what is malformed.
pub fn validity(cert: &CertificateDer<'_>) -> Result<Validity, String> {
    use yasna::{ASN1Error, BERReader, Tag};

    fn read_time(reader: BERReader<'_, '_>) -> Result<i64, ASN1Error> {
        match reader.lookahead_tag()? {
            Tag {
                tag_class: yasna::TagClass::Universal,
                tag_number: 23,
            } => Ok(reader.read_utctime()?.datetime().unix_timestamp()),
            _ => Ok(reader.read_generalized_time()?.datetime().unix_timestamp()),
        }
    }

    yasna::parse_der(cert.as_ref(), |reader| {
        reader.read_sequence(|certificate| {
            let validity = certificate.next().read_sequence(|tbs| {
                tbs.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                tbs.next().read_der()?; // serialNumber
                tbs.next().read_der()?; // signature algorithm
                tbs.next().read_der()?; // issuer
                let validity = tbs.next().read_sequence(|v| {
                    let not_before = read_time(v.next())?;
                    let not_after = read_time(v.next())?;
                    Ok(Validity {
                        not_before,
                        not_after,
                    })
                })?;
                // subject, subjectPublicKeyInfo, optional ids and extensions
                while tbs.read_optional(|r| r.read_der())?.is_some() {}
                Ok(validity)
            })?;
            certificate.next().read_der()?; // signatureAlgorithm
            certificate.next().read_der()?; // signatureValue
            Ok(validity)
        })
    })
    .map_err(|e| format!("not a DER X.509 certificate ({e})"))
}

/// `2025-01-31T12:00:00Z` for Unix seconds (proleptic Gregorian, UTC).
#[must_use]
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Finds the rustls error in a connection error's cause chain. rumqttc wraps it in
/// `std::io::Error`, whose `source()` skips the wrapped error itself, so look inside.
#[must_use]
pub fn find_rustls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = find_rustls_error(inner) {
                    return Some(found);
                }
            }
        }
        current = e.source();
    }
    None
}

/// An operator-level explanation of a TLS failure.
#[must_use]
pub fn explain_tls_error(err: &rustls::Error, ca_file: &Path) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match err {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => format!(
            "the broker's certificate is not signed by a CA in {} (wrong CA file, or the broker changed its certificate)",
            ca_file.display()
        ),
        rustls::Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the broker's certificate is not valid for the host name in the URL".to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the broker's certificate has expired (or the gateway's clock is wrong)".to_owned()
        }
        rustls::Error::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet (check the gateway's clock)".to_owned()
        }
        rustls::Error::AlertReceived(alert @ (Alert::CertificateExpired | Alert::CertificateRevoked)) => {
            format!("the broker rejected our client certificate ({alert:?})")
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::UnsupportedCertificate
            | Alert::CertificateUnknown
            | Alert::CertificateRequired
            | Alert::AccessDenied),
        ) => format!("the broker rejected our client certificate ({alert:?}): is it signed by a CA the broker trusts?"),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_732_800), "2025-01-01T12:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    use std::time::Duration;
    use wardgate_tests::certs::{TestPki, Validity as Period};

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn load_files(pki: &TestPki, cert: &Path, key: &Path) -> Result<TlsMaterial, UplinkError> {
        load(pki.ca_file(), cert, key, None, now())
    }

    #[test]
    fn valid_material_loads_and_reports_its_validity() {
        let pki = TestPki::generate("tls-ok").unwrap();
        let client = pki
            .client("gw", "wardgate-test-gw", Period::Current)
            .unwrap();
        let material = load_files(&pki, &client.cert, &client.key).unwrap();
        let year = 365 * 86_400;
        assert!(
            (material.not_after - now() - year).abs() < 3 * 86_400,
            "{}",
            rfc3339(material.not_after)
        );
        assert!(material.not_before < now());
        // The validity the DER walk finds matches what was issued.
        let soon = pki
            .client(
                "soon",
                "wardgate-test-gw",
                Period::ExpiresIn(Duration::from_secs(10 * 86_400)),
            )
            .unwrap();
        let material = load_files(&pki, &soon.cert, &soon.key).unwrap();
        assert!((material.not_after - now() - 10 * 86_400).abs() < 120);
    }

    #[test]
    fn expired_and_not_yet_valid_certificates_are_refused_by_name() {
        let pki = TestPki::generate("tls-dates").unwrap();
        let expired = pki.client("expired", "gw", Period::Expired).unwrap();
        match load_files(&pki, &expired.cert, &expired.key) {
            Err(UplinkError::CertificateExpired { path, not_after }) => {
                assert_eq!(path, expired.cert);
                assert_eq!(not_after, "2021-01-01T00:00:00Z");
            }
            other => panic!("expected CertificateExpired, got {other:?}"),
        }
        let future = pki.client("future", "gw", Period::NotYetValid).unwrap();
        assert!(matches!(
            load_files(&pki, &future.cert, &future.key),
            Err(UplinkError::CertificateNotYetValid { path, .. }) if path == future.cert
        ));
    }

    #[test]
    fn missing_garbage_and_mismatched_files_are_clear_errors() {
        let pki = TestPki::generate("tls-files").unwrap();
        let client = pki.client("gw", "gw", Period::Current).unwrap();
        let other = pki.client("other", "other", Period::Current).unwrap();
        let missing = pki.dir().join("does-not-exist.pem");
        let garbage = pki
            .write_file("garbage.pem", b"this is not PEM at all\n")
            .unwrap();
        let broken = pki
            .write_file("broken.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n")
            .unwrap();
        let not_der = pki
            .write_file(
                "notder.pem",
                b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
            )
            .unwrap();

        let err = load(&missing, &client.cert, &client.key, None, now()).unwrap_err();
        assert!(
            matches!(&err, UplinkError::CredentialFile { role: "CA certificate", path, .. } if *path == missing),
            "{err}"
        );
        assert!(err.to_string().contains("does-not-exist.pem"), "{err}");

        let err = load_files(&pki, &missing, &client.key).unwrap_err();
        assert!(
            matches!(
                &err,
                UplinkError::CredentialFile {
                    role: "client certificate",
                    ..
                }
            ),
            "{err}"
        );
        let err = load_files(&pki, &client.cert, &missing).unwrap_err();
        assert!(
            matches!(
                &err,
                UplinkError::CredentialFile {
                    role: "client key",
                    ..
                }
            ),
            "{err}"
        );

        let err = load_files(&pki, &garbage, &client.key).unwrap_err();
        assert!(
            matches!(&err, UplinkError::InvalidCredential { path, reason, .. } if *path == garbage && reason.contains("no PEM CERTIFICATE")),
            "{err}"
        );
        let err = load_files(&pki, &broken, &client.key).unwrap_err();
        assert!(
            matches!(&err, UplinkError::InvalidCredential { reason, .. } if reason.contains("not valid PEM")),
            "{err}"
        );
        let err = load_files(&pki, &not_der, &client.key).unwrap_err();
        assert!(
            matches!(&err, UplinkError::InvalidCredential { reason, .. } if reason.contains("X.509")),
            "{err}"
        );
        let err = load(&garbage, &client.cert, &client.key, None, now()).unwrap_err();
        assert!(
            matches!(
                &err,
                UplinkError::InvalidCredential {
                    role: "CA certificate",
                    ..
                }
            ),
            "{err}"
        );

        // A certificate where the key should be.
        let err = load_files(&pki, &client.cert, &client.cert).unwrap_err();
        assert!(
            matches!(&err, UplinkError::InvalidCredential { role: "client key", reason, .. } if reason.contains("no PEM private key")),
            "{err}"
        );

        let err = load_files(&pki, &client.cert, &other.key).unwrap_err();
        assert!(
            matches!(&err, UplinkError::KeyMismatch { cert, key } if *cert == client.cert && *key == other.key),
            "{err}"
        );
    }

    #[test]
    fn alpn_is_offered_when_asked() {
        let pki = TestPki::generate("tls-alpn").unwrap();
        let client = pki.client("gw", "gw", Period::Current).unwrap();
        let material = load(
            pki.ca_file(),
            &client.cert,
            &client.key,
            Some(b"x-amzn-mqtt-ca"),
            now(),
        )
        .unwrap();
        assert_eq!(
            material.client_config.alpn_protocols,
            vec![b"x-amzn-mqtt-ca".to_vec()]
        );
    }

    #[test]
    fn validity_of_garbage_is_an_error() {
        assert!(validity(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])).is_err());
        assert!(validity(&CertificateDer::from(Vec::new())).is_err());
        assert!(validity(&CertificateDer::from(vec![0xff; 64])).is_err());
    }
}
