//! The demo's throwaway PKI: one CA, server certificates for the stand-in broker and the
//! stand-in cloud imaging ingest, and client certificates for the gateway and the viewer.
//! The gateway's one client certificate serves both its MQTT uplink and its bulk uploads,
//! as in production.
//!
//! Invariants:
//! - Every key is generated fresh in this process (ECDSA P-256) and never reused: the
//!   files live in the demo's temporary directory and die with it.
//! - Every file is created new (never overwriting) with mode 0600 before any byte is
//!   written, so a key is never readable by other users, not even briefly.
//! - The gateway's client certificate carries `CN = gateway.id`: the broker derives the
//!   client's identity from the verified certificate, as a production broker does, and
//!   authorises topics from it.
//! - Certificates are valid from one hour ago (clock skew) for [`VALIDITY`].

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long the demo's certificates are valid (long enough for `--duration 0` runs).
pub const VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Allowance for a clock that is slightly behind the one that issued the certificates.
const BACKDATE: Duration = Duration::from_secs(3600);

/// 9999-12-31T23:59:59Z, the last instant X.509 (and rcgen's date type) can express.
const LAST_X509_SECOND: u64 = 253_402_300_799;

/// Why the demo PKI could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Key generation or signing failed.
    #[error("generating {what}: {source}")]
    Generate {
        /// Which certificate or key.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The clock is before 1970 or too far in the future for X.509 dates.
    #[error("the system clock is not usable for certificate validity")]
    Clock,
}

/// A certificate and its private key, in memory (DER) and on disk (PEM, 0600).
pub struct IssuedIdentity {
    /// The subject common name.
    pub common_name: String,
    /// PEM certificate file.
    pub cert_file: PathBuf,
    /// PEM private key file (PKCS#8).
    pub key_file: PathBuf,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl IssuedIdentity {
    /// The certificate (DER).
    #[must_use]
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The private key (PKCS#8 DER), for building an in-process TLS config.
    #[must_use]
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl std::fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("IssuedIdentity")
            .field("common_name", &self.common_name)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// The demo PKI.
#[derive(Debug)]
pub struct DemoPki {
    /// PEM file of the CA certificate (the trust anchor of broker and clients).
    pub ca_file: PathBuf,
    ca_der: CertificateDer<'static>,
    /// The broker's server certificate, valid for `127.0.0.1`, `::1` and `localhost`.
    pub broker: IssuedIdentity,
    /// The cloud imaging ingest's server certificate (bulk uploads over QUIC), valid for
    /// the same names.
    pub ingest: IssuedIdentity,
    /// The gateway's client certificate (`CN = gateway id`).
    pub gateway: IssuedIdentity,
    /// The viewer's client certificate.
    pub viewer: IssuedIdentity,
}

impl DemoPki {
    /// Generates the CA and the four leaf certificates and writes them as PEM files
    /// (mode 0600) into `dir`, which must exist. `now` is the issuing time.
    ///
    /// # Errors
    /// A [`CertError`] if generation fails or a file cannot be created (it must not exist yet).
    pub fn generate(
        dir: &Path,
        gateway_id: &str,
        viewer_cn: &str,
        now: SystemTime,
    ) -> Result<DemoPki, CertError> {
        let since_epoch = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CertError::Clock)?;
        let not_before_epoch = since_epoch.checked_sub(BACKDATE).ok_or(CertError::Clock)?;
        let not_after_epoch = since_epoch.checked_add(VALIDITY).ok_or(CertError::Clock)?;
        if not_after_epoch.as_secs() > LAST_X509_SECOND {
            return Err(CertError::Clock);
        }
        // Below year 10000 adding a std Duration to an OffsetDateTime cannot overflow.
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let not_before = epoch + not_before_epoch;
        let not_after = epoch + not_after_epoch;

        let ca_key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: "CA key",
            source,
        })?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = common_name("wardgate demo CA (throwaway)");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.not_before = not_before;
        ca_params.not_after = not_after;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|source| CertError::Generate {
                what: "CA certificate",
                source,
            })?;
        let issuer = Issuer::new(ca_params, ca_key);

        let ca_file = dir.join("ca.pem");
        write_private(&ca_file, ca_cert.pem().as_bytes())?;

        let leaf = |cn: &str,
                    usage: ExtendedKeyUsagePurpose,
                    sans: Vec<SanType>,
                    stem: &str,
                    what: &'static str| {
            let key = KeyPair::generate().map_err(|source| CertError::Generate { what, source })?;
            let mut params = CertificateParams::default();
            params.distinguished_name = common_name(cn);
            params.subject_alt_names = sans;
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            params.not_before = not_before;
            params.not_after = not_after;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|source| CertError::Generate { what, source })?;
            let cert_file = dir.join(format!("{stem}.pem"));
            let key_file = dir.join(format!("{stem}.key"));
            write_private(&key_file, key.serialize_pem().as_bytes())?;
            write_private(&cert_file, cert.pem().as_bytes())?;
            Ok::<_, CertError>(IssuedIdentity {
                common_name: cn.to_owned(),
                cert_file,
                key_file,
                cert_der: cert.der().clone(),
                key_der: key.serialize_der(),
            })
        };

        let localhost_sans = vec![
            SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(|source| CertError::Generate {
                        what: "broker name",
                        source,
                    })?,
            ),
        ];
        let broker = leaf(
            "wardgate demo broker",
            ExtendedKeyUsagePurpose::ServerAuth,
            localhost_sans.clone(),
            "broker",
            "broker certificate",
        )?;
        let ingest = leaf(
            "wardgate demo imaging ingest",
            ExtendedKeyUsagePurpose::ServerAuth,
            localhost_sans,
            "imaging-ingest",
            "imaging ingest certificate",
        )?;
        let gateway = leaf(
            gateway_id,
            ExtendedKeyUsagePurpose::ClientAuth,
            Vec::new(),
            "gateway",
            "gateway certificate",
        )?;
        let viewer = leaf(
            viewer_cn,
            ExtendedKeyUsagePurpose::ClientAuth,
            Vec::new(),
            "viewer",
            "viewer certificate",
        )?;

        Ok(DemoPki {
            ca_file,
            ca_der: ca_cert.der().clone(),
            broker,
            ingest,
            gateway,
            viewer,
        })
    }

    /// The CA certificate (DER): the only trust anchor of the demo.
    #[must_use]
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Creates `path` (which must not exist) with mode 0600 and writes `bytes` to it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CertError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The subject common name of a DER certificate, if it has exactly one readable
/// (UTF8String, PrintableString or IA5String) CN. The certificate is expected to have
/// been verified already; this only reads it, and returns `None` on any malformation.
#[must_use]
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity, subject, ... }, ... }
    let (cert, _) = der::expect(cert_der, der::SEQUENCE)?;
    let (tbs, _) = der::expect(cert, der::SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = der::next(rest)?;
    if tag == der::CONTEXT_0 {
        rest = after;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        let (_, _, after) = der::next(rest)?;
        rest = after;
    }
    let (subject, _) = der::expect(rest, der::SEQUENCE)?;

    let mut found = None;
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (set, after) = der::expect(rdns, der::SET)?;
        rdns = after;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (attribute, after) = der::expect(attributes, der::SEQUENCE)?;
            attributes = after;
            let (oid, value) = der::expect(attribute, der::OID)?;
            if oid != der::OID_COMMON_NAME {
                continue;
            }
            let (tag, text, _) = der::next(value)?;
            if !matches!(
                tag,
                der::UTF8_STRING | der::PRINTABLE_STRING | der::IA5_STRING
            ) {
                return None;
            }
            if found.is_some() {
                return None; // Two CNs: ambiguous identity.
            }
            found = Some(std::str::from_utf8(text).ok()?.to_owned());
        }
    }
    found
}

/// Just enough DER to walk to a certificate's subject.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const OID: u8 = 0x06;
    pub const CONTEXT_0: u8 = 0xa0;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const IA5_STRING: u8 = 0x16;
    /// 2.5.4.3 (id-at-commonName), encoded.
    pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// Splits the first TLV off `input`: (tag, value, rest).
    pub fn next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // High tag numbers do not occur on the path we walk.
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, after) = (rest.get(..count)?, rest.get(count..)?);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let value = rest.get(..len)?;
        Some((tag, value, rest.get(len..)?))
    }

    /// Like [`next`], but requires `tag`: (value, rest).
    pub fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, value, rest) = next(input)?;
        (t == tag).then_some((value, rest))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_files_0600_and_client_cn_is_the_gateway_id() {
        let dir = tempfile::tempdir().unwrap();
        let pki =
            DemoPki::generate(dir.path(), "ward-7.gw:01", "viewer", SystemTime::now()).unwrap();
        for path in [
            &pki.ca_file,
            &pki.broker.cert_file,
            &pki.broker.key_file,
            &pki.ingest.cert_file,
            &pki.ingest.key_file,
            &pki.gateway.cert_file,
            &pki.gateway.key_file,
            &pki.viewer.cert_file,
            &pki.viewer.key_file,
        ] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert_eq!(
            subject_common_name(&pki.gateway.cert_der()).as_deref(),
            Some("ward-7.gw:01")
        );
        assert_eq!(
            subject_common_name(&pki.viewer.cert_der()).as_deref(),
            Some("viewer")
        );
        assert!(std::fs::read_to_string(&pki.gateway.key_file)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        // Generating into the same directory again must not overwrite anything.
        assert!(matches!(
            DemoPki::generate(dir.path(), "x", "y", SystemTime::now()),
            Err(CertError::Write { .. })
        ));
    }

    #[test]
    fn leaf_certificates_verify_against_the_ca_only() {
        use rustls::pki_types::UnixTime;
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = DemoPki::generate(other_dir.path(), "gw", "viewer", SystemTime::now()).unwrap();

        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let now = UnixTime::now();
        assert!(verifier
            .verify_client_cert(&pki.gateway.cert_der(), &[], now)
            .is_ok());
        assert!(verifier
            .verify_client_cert(&other.gateway.cert_der(), &[], now)
            .is_err());
    }

    #[test]
    fn common_name_parser_rejects_garbage_without_panicking() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_common_name(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let der = pki.gateway.cert_der().to_vec();
        for cut in 0..der.len() {
            let _ = subject_common_name(&der[..cut]);
        }
    }
}
