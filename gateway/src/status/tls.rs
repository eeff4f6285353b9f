//! TLS for the status endpoint: the server configuration, and the client configuration
//! `wardgate status` uses to talk to it.
//!
//! Invariants:
//! * Both sides use rustls with the ring provider and its safe default protocol versions
//!   (TLS 1.2 and 1.3), ALPN `http/1.1`.
//! * The server's certificate and key are read once, when the endpoint starts; a renewed
//!   certificate takes effect at the next restart.
//! * `wardgate status` trusts exactly the certificate in `status.tls_cert_file` (it runs
//!   on the same box and reads the same file): the server must present that end-entity
//!   certificate and prove it holds its key. No CA, no host name: a site certificate for
//!   the management name need not list 127.0.0.1.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::StatusError;

const ALPN_HTTP1: &[u8] = b"http/1.1";

fn tls_error(path: &Path, reason: impl Into<String>) -> StatusError {
    StatusError::TlsFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, StatusError> {
    let pem = std::fs::read(path).map_err(|e| tls_error(path, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(tls_error(path, "contains no PEM CERTIFICATE block"));
    }
    Ok(chain)
}

/// The server configuration from a PEM certificate chain and a PEM private key.
///
/// # Errors
/// [`StatusError::TlsFile`] naming the file at fault (unreadable, not PEM, no
/// certificate or key, key not matching the certificate).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, StatusError> {
    let chain = read_chain(cert_file)?;
    let key_pem = std::fs::read(key_file).map_err(|e| tls_error(key_file, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| tls_error(key_file, format!("no usable PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert_file, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            tls_error(
                key_file,
                format!("does not fit {}: {e}", cert_file.display()),
            )
        })?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration for `wardgate status`: trusts exactly the end-entity
/// certificate in `cert_file`.
///
/// # Errors
/// [`StatusError::TlsFile`] when the file cannot be read or holds no certificate.
pub fn pinned_client_config(cert_file: &Path) -> Result<Arc<rustls::ClientConfig>, StatusError> {
    let chain = read_chain(cert_file)?;
    let provider = provider();
    let verifier = PinnedCertificate {
        // read_chain returns at least one certificate; the first is the end entity.
        pinned: chain.into_iter().next().map(CertificateDer::into_owned),
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert_file, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly one certificate; handshake signatures are still verified with it, so
/// only the holder of its key passes.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if pinned.as_ref() == end_entity.as_ref() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
