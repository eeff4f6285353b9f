//! A throw-away PKI for tests, generated with rcgen and written as PEM files into a
//! temporary directory that is deleted when the [`TestPki`] is dropped.
//!
//! Invariants: the CA signs everything this PKI issues; the broker certificate is valid
//! for `localhost` and `127.0.0.1`; client certificates carry the requested common name
//! (mosquitto's `use_identity_as_username` turns it into the MQTT username). Keys are
//! ECDSA P-256.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::{io_context, HarnessError};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// The private key (PKCS#8).
    pub key: PathBuf,
}

/// The validity period of an issued certificate, relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from yesterday for a year.
    Current,
    /// Valid in 2020 only.
    Expired,
    /// Valid from next year on.
    NotYetValid,
    /// Valid from yesterday until this long from now.
    ExpiresIn(Duration),
}

impl Validity {
    fn range(self) -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        match self {
            Validity::Current => (now - day, now + time::Duration::days(365)),
            Validity::Expired => (
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2021, 1, 1),
            ),
            Validity::NotYetValid => (
                now + time::Duration::days(365),
                now + time::Duration::days(730),
            ),
            Validity::ExpiresIn(d) => {
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
                (now - day, now + time::Duration::seconds(secs))
            }
        }
    }
}

/// A CA and the certificates it issued, in a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    name: String,
    ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    server: CertFiles,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl TestPki {
    /// A new CA named `name` and a broker certificate for `localhost`/`127.0.0.1`.
    ///
    /// # Errors
    /// Certificate generation or file writing failed.
    pub fn generate(name: &str) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("wardgate-pki-")
            .tempdir()
            .map_err(io_context(
                "creating a temporary directory for test certificates",
            ))?;

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wardgate tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate()?;
        let ca = params.self_signed(&key)?;
        let ca_file = dir.path().join("ca.pem");
        write(&ca_file, ca.pem().as_bytes())?;
        let issuer = Issuer::new(params, key);

        let mut pki = TestPki {
            dir,
            name: name.to_owned(),
            ca_file,
            issuer,
            server: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
        };
        pki.server = pki.issue("broker", "localhost", Validity::Current, true)?;
        Ok(pki)
    }

    /// The directory holding every file of this PKI.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM).
    #[must_use]
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The broker's certificate and key.
    #[must_use]
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// Issues a client certificate with common name `common_name`, written as
    /// `<file_stem>.pem` and `<file_stem>.key`.
    ///
    /// # Errors
    /// Certificate generation or file writing failed.
    pub fn client(
        &self,
        file_stem: &str,
        common_name: &str,
        validity: Validity,
    ) -> Result<CertFiles, HarnessError> {
        self.issue(file_stem, common_name, validity, false)
    }

    /// Writes arbitrary bytes into the PKI directory (for malformed-file tests).
    ///
    /// # Errors
    /// Writing failed.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf, HarnessError> {
        let path = self.dir.path().join(name);
        write(&path, contents)?;
        Ok(path)
    }

    /// A rustls client configuration (ring provider) trusting only this CA and
    /// presenting `client`.
    ///
    /// # Errors
    /// The files could not be read or rustls refused them.
    pub fn client_tls(
        &self,
        client: &CertFiles,
    ) -> Result<Arc<rustls::ClientConfig>, HarnessError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca_file)? {
            roots.add(cert)?;
        }
        let chain = read_certs(&client.cert)?;
        let key = PrivateKeyDer::from_pem_file(&client.key).map_err(|e| HarnessError::Io {
            context: format!("reading {}", client.key.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Arc::new(config))
    }

    fn issue(
        &self,
        file_stem: &str,
        common_name: &str,
        validity: Validity,
        server: bool,
    ) -> Result<CertFiles, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wardgate tests");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if server {
            params.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let (not_before, not_after) = validity.range();
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{file_stem}.pem")),
            key: self.dir.path().join(format!("{file_stem}.key")),
        };
        write(&files.cert, cert.pem().as_bytes())?;
        write(&files.key, key.serialize_pem().as_bytes())?;
        Ok(files)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, HarnessError> {
    let bytes = std::fs::read(path).map_err(io_context(format!("reading {}", path.display())))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::Io {
            context: format!("parsing {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        })
}

fn write(path: &Path, contents: &[u8]) -> Result<(), HarnessError> {
    std::fs::write(path, contents).map_err(io_context(format!("writing {}", path.display())))
}
