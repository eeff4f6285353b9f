//! Everything [`super::serve`] needs, read from the files the configuration names: the
//! rustls server configuration (ring provider) and the device directory.
//!
//! Invariants:
//! * Client certificates are trusted only through `device_ca`; the system trust store is
//!   never consulted. With no mTLS device no certificate is requested; with only mTLS
//!   devices one is required at the handshake; with both kinds it is optional at the
//!   handshake and the request must then carry a token.
//! * Token files are read once here; only their SHA-256 digests are kept. Their contents
//!   never appear in an error or a log line.
//! * The server certificate is checked for its dates but an expired one is not refused
//!   here (agents will refuse it; the rest of the gateway keeps working): it is logged as
//!   an error so the operator renews it.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{error, warn};

use super::config::{validate_devices, AgentApiConfig, AgentAuth, AgentDevice};
use super::identity::{parse_token_file, DeviceDirectory, DirectoryCell, TokenDigest};
use super::{AgentApiError, AgentApiStats};
use crate::uplink::mqtt::tls::{rfc3339, validity, EXPIRY_WARNING_SECS};

/// The agent API ready to serve: TLS configuration, devices, limits and counters.
#[derive(Clone)]
pub struct AgentApiRuntime {
    pub(crate) tls: Arc<rustls::ServerConfig>,
    pub(crate) directory: Arc<DirectoryCell>,
    pub(crate) config: AgentApiConfig,
    pub(crate) stats: Arc<AgentApiStats>,
    /// Whether the TLS layer asks for client certificates (some device used mTLS at load).
    mtls_enabled: bool,
    /// Whether a connection may come without a certificate (some device used a token).
    tokens_allowed: bool,
}

/// Why [`AgentApiRuntime::reload_devices`] did not apply a device list.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRefused {
    /// The new list is invalid (a key named) or a file could not be read.
    #[error(transparent)]
    Invalid(#[from] AgentApiError),
    /// The new list needs a different TLS client-certificate policy than the running
    /// listener has (the first mTLS device, or the first token device beside mTLS-only
    /// ones): it takes effect after a restart.
    #[error("{0}; this takes effect after a restart")]
    NeedsRestart(&'static str),
}

impl std::fmt::Debug for AgentApiRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentApiRuntime")
            .field("config", &self.config)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl AgentApiRuntime {
    /// Validates `config` and `devices`, reads the server certificate and key, the device
    /// CA (when a device uses mTLS) and every token file, and builds the TLS configuration.
    ///
    /// # Errors
    /// A refused configuration value, an unreadable or unusable file (named), two devices
    /// with one token, or rustls refusing the material.
    pub fn load(config: &AgentApiConfig, devices: &[AgentDevice]) -> Result<Self, AgentApiError> {
        config.validate()?;
        validate_devices(config, devices)?;

        let mut digests = Vec::new();
        for device in devices {
            if let AgentAuth::Token { token_file } = &device.auth {
                digests.push((device.id.clone(), read_token(token_file)?));
            }
        }
        let directory = DeviceDirectory::new(devices, &digests)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("server certificate", &config.server_cert)?;
        warn_about_dates(&chain[0], &config.server_cert);
        let key = read_key(&config.server_key)?;

        let verifier = match (&config.device_ca, directory.has_mtls_devices()) {
            (Some(ca_file), true) => {
                let mut roots = rustls::RootCertStore::empty();
                for (index, cert) in read_certs("device CA", ca_file)?.into_iter().enumerate() {
                    roots
                        .add(cert)
                        .map_err(|e| AgentApiError::InvalidCredential {
                            role: "device CA",
                            path: ca_file.clone(),
                            reason: format!(
                                "certificate #{index} is not a usable trust anchor: {e}"
                            ),
                        })?;
                }
                let builder =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if directory.has_token_devices() {
                    builder.allow_unauthenticated().build()?
                } else {
                    builder.build()?
                }
            }
            // validate_devices refuses mTLS devices without a CA, so this is token-only.
            _ => WebPkiClientVerifier::no_client_auth(),
        };

        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => AgentApiError::InvalidCredential {
                    role: "server key",
                    path: config.server_key.clone(),
                    reason: format!(
                        "does not belong to the certificate in {}",
                        config.server_cert.display()
                    ),
                },
                other => AgentApiError::Tls(other),
            })?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        let mtls_enabled = config.device_ca.is_some() && directory.has_mtls_devices();
        let tokens_allowed = !mtls_enabled || directory.has_token_devices();
        Ok(AgentApiRuntime {
            tls: Arc::new(tls),
            directory: Arc::new(DirectoryCell::new(directory)),
            config: config.clone(),
            stats: Arc::new(AgentApiStats::default()),
            mtls_enabled,
            tokens_allowed,
        })
    }

    /// Replaces the agent devices while serving (config reload): validates the list,
    /// reads every token file, and puts the new directory in use for the next request.
    /// A list that needs another TLS client-certificate policy is refused (restart).
    ///
    /// # Errors
    /// [`ReloadRefused`]; the running directory stays.
    pub fn reload_devices(&self, devices: &[AgentDevice]) -> Result<(), ReloadRefused> {
        validate_devices(&self.config, devices).map_err(AgentApiError::from)?;
        let mut digests = Vec::new();
        for device in devices {
            if let AgentAuth::Token { token_file } = &device.auth {
                digests.push((device.id.clone(), read_token(token_file)?));
            }
        }
        let directory = DeviceDirectory::new(devices, &digests).map_err(AgentApiError::from)?;
        if directory.has_mtls_devices() && !self.mtls_enabled {
            return Err(ReloadRefused::NeedsRestart(
                "the first mTLS agent device needs the listener to ask for client certificates",
            ));
        }
        if directory.has_token_devices() && !self.tokens_allowed {
            return Err(ReloadRefused::NeedsRestart(
                "the first token agent device needs the listener to accept connections without a certificate",
            ));
        }
        self.directory.replace(directory);
        Ok(())
    }

    /// The counters [`super::serve`] updates.
    #[must_use]
    pub fn stats(&self) -> Arc<AgentApiStats> {
        Arc::clone(&self.stats)
    }

    /// The configuration this runtime was built from.
    #[must_use]
    pub fn config(&self) -> &AgentApiConfig {
        &self.config
    }
}

fn read(role: &'static str, path: &Path) -> Result<Vec<u8>, AgentApiError> {
    std::fs::read(path).map_err(|source| AgentApiError::CredentialFile {
        role,
        path: path.to_owned(),
        source,
    })
}

fn invalid(role: &'static str, path: &Path, reason: impl Into<String>) -> AgentApiError {
    AgentApiError::InvalidCredential {
        role,
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn read_certs(
    role: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AgentApiError> {
    let pem = read(role, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(role, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(role, path, "contains no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, AgentApiError> {
    const ROLE: &str = "server key";
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

fn read_token(path: &Path) -> Result<TokenDigest, AgentApiError> {
    const ROLE: &str = "device token file";
    let contents = read(ROLE, path)?;
    let token = parse_token_file(&contents).map_err(|reason| invalid(ROLE, path, reason))?;
    warn_if_readable_by_others(path);
    Ok(TokenDigest::of(token))
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(
                token_file = %path.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "device token file is readable by group or others; make it mode 0600"
            );
        }
    }
}

fn warn_about_dates(cert: &CertificateDer<'_>, path: &Path) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    match validity(cert) {
        Ok(v) if now > v.not_after => error!(
            server_cert = %path.display(),
            not_after = %rfc3339(v.not_after),
            "the agent API's server certificate has expired: agents will refuse to connect"
        ),
        Ok(v) if now < v.not_before => error!(
            server_cert = %path.display(),
            not_before = %rfc3339(v.not_before),
            "the agent API's server certificate is not valid yet (check the clock)"
        ),
        Ok(v) if v.not_after - now < EXPIRY_WARNING_SECS => warn!(
            server_cert = %path.display(),
            not_after = %rfc3339(v.not_after),
            days_left = (v.not_after - now) / 86_400,
            "the agent API's server certificate expires soon; renew it"
        ),
        Ok(_) => {}
        Err(reason) => {
            warn!(server_cert = %path.display(), %reason, "cannot read the server certificate's dates")
        }
    }
}
