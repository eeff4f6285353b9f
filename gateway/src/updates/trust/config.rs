//! The `[updates]` trust settings: where the TUF repository is, which root to start
//! from, how the server is authenticated, and the limits that bound what a hostile
//! server can make the gateway download.
//!
//! Invariants: [`UpdatesTrustConfig::validate`] accepts only `https://` URLs (or
//! `file://`, or `http://` to a loopback address when `allow_loopback_http` is set, for
//! tests), requires `ca_file` for `https://`, both or neither of `client_cert` and
//! `client_key`, and non-zero limits; each refusal names the key.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::TrustError;

/// TUF repository trust settings (embedded by the gateway configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatesTrustConfig {
    /// Base URL of the TUF metadata (`root.json`, `timestamp.json`, ...), e.g.
    /// `https://updates.example.com/metadata/`. `https://`, or `file:///path/` for a
    /// repository synchronised onto this machine by other means.
    pub metadata_url: String,
    /// Base URL of the target files, e.g. `https://updates.example.com/targets/`.
    /// Same schemes as `metadata_url`.
    pub targets_url: String,
    /// The root metadata (`root.json`) pinned at installation, delivered out of band
    /// (in the image). Only the first start uses it; afterwards the gateway continues
    /// from the newest root it verified (kept in its data directory).
    pub trusted_root: PathBuf,
    /// CA certificate(s), PEM, that the update server's certificate must chain to.
    /// Required for `https://` URLs. The system trust store is never consulted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for mutual TLS with the update server. Set together
    /// with `client_key`, or neither.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Largest accepted `N.root.json`, bytes.
    #[serde(default = "default_max_root_bytes")]
    pub max_root_bytes: u64,
    /// Largest accepted `timestamp.json`, bytes (its size is never listed anywhere, so
    /// this bound is what stops an endless-data attack on it).
    #[serde(default = "default_max_timestamp_bytes")]
    pub max_timestamp_bytes: u64,
    /// Largest accepted `snapshot.json` when `timestamp.json` does not list its length.
    #[serde(default = "default_max_snapshot_bytes")]
    pub max_snapshot_bytes: u64,
    /// Largest accepted `targets.json` when `snapshot.json` does not list its length.
    #[serde(default = "default_max_targets_bytes")]
    pub max_targets_bytes: u64,
    /// Most root rotations followed in one refresh.
    #[serde(default = "default_max_root_rotations")]
    pub max_root_rotations: u64,
    /// Largest target the gateway stages, bytes: a target listed larger is refused before
    /// download.
    #[serde(default = "default_max_target_bytes")]
    pub max_target_bytes: u64,
    /// Seconds allowed to open a TCP connection and finish the TLS handshake.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Seconds without a single byte from the server before a download counts as stalled.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Seconds allowed for one metadata refresh, all files together.
    #[serde(default = "default_refresh_timeout_secs")]
    pub refresh_timeout_secs: u64,
    /// Seconds allowed for downloading one target (resumptions included).
    #[serde(default = "default_target_timeout_secs")]
    pub target_timeout_secs: u64,
    /// Times an interrupted download is resumed with an HTTP range request before it
    /// fails (0: never resume).
    #[serde(default = "default_max_resumes")]
    pub max_resumes: u32,
    /// Accept `http://` URLs whose host is a loopback address. For tests only; never in a
    /// site configuration.
    #[serde(default)]
    pub allow_loopback_http: bool,
}

const fn default_max_root_bytes() -> u64 {
    512 * 1024
}
const fn default_max_timestamp_bytes() -> u64 {
    64 * 1024
}
const fn default_max_snapshot_bytes() -> u64 {
    1024 * 1024
}
const fn default_max_targets_bytes() -> u64 {
    8 * 1024 * 1024
}
const fn default_max_root_rotations() -> u64 {
    64
}
const fn default_max_target_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}
const fn default_connect_timeout_secs() -> u64 {
    15
}
const fn default_idle_timeout_secs() -> u64 {
    60
}
const fn default_refresh_timeout_secs() -> u64 {
    300
}
const fn default_target_timeout_secs() -> u64 {
    4 * 3600
}
const fn default_max_resumes() -> u32 {
    5
}

/// How the repository is reached, as decided by [`UpdatesTrustConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryScheme {
    /// `https://` (or loopback `http://` in tests).
    Http,
    /// `file://`.
    File,
}

fn config_err(key: &'static str, reason: impl Into<String>) -> TrustError {
    TrustError::Config {
        key,
        reason: reason.into(),
    }
}

impl UpdatesTrustConfig {
    /// A configuration with default limits for the given repository and pinned root.
    #[must_use]
    pub fn new(metadata_url: &str, targets_url: &str, trusted_root: PathBuf) -> Self {
        Self {
            metadata_url: metadata_url.to_owned(),
            targets_url: targets_url.to_owned(),
            trusted_root,
            ca_file: None,
            client_cert: None,
            client_key: None,
            max_root_bytes: default_max_root_bytes(),
            max_timestamp_bytes: default_max_timestamp_bytes(),
            max_snapshot_bytes: default_max_snapshot_bytes(),
            max_targets_bytes: default_max_targets_bytes(),
            max_root_rotations: default_max_root_rotations(),
            max_target_bytes: default_max_target_bytes(),
            connect_timeout_secs: default_connect_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            refresh_timeout_secs: default_refresh_timeout_secs(),
            target_timeout_secs: default_target_timeout_secs(),
            max_resumes: default_max_resumes(),
            allow_loopback_http: false,
        }
    }

    /// Checks the settings (not the files' contents, which are read at load).
    ///
    /// # Errors
    /// [`TrustError::Config`] naming the key and the reason.
    pub fn validate(&self) -> Result<RepositoryScheme, TrustError> {
        let metadata = self.url("metadata_url", &self.metadata_url)?;
        let targets = self.url("targets_url", &self.targets_url)?;
        let scheme = |u: &Url| {
            if u.scheme() == "file" {
                RepositoryScheme::File
            } else {
                RepositoryScheme::Http
            }
        };
        let kind = scheme(&metadata);
        if scheme(&targets) != kind {
            return Err(config_err(
                "targets_url",
                "must use the same kind of scheme as metadata_url (both file:// or both https://)",
            ));
        }
        if kind == RepositoryScheme::Http && self.ca_file.is_none() {
            return Err(config_err(
                "ca_file",
                "is required for an https:// repository (the system trust store is not used)",
            ));
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => {
                return Err(config_err("client_key", "is required with client_cert"))
            }
            (None, Some(_)) => {
                return Err(config_err("client_cert", "is required with client_key"))
            }
            _ => {}
        }
        for (key, value) in [
            ("max_root_bytes", self.max_root_bytes),
            ("max_timestamp_bytes", self.max_timestamp_bytes),
            ("max_snapshot_bytes", self.max_snapshot_bytes),
            ("max_targets_bytes", self.max_targets_bytes),
            ("max_root_rotations", self.max_root_rotations),
            ("max_target_bytes", self.max_target_bytes),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("refresh_timeout_secs", self.refresh_timeout_secs),
            ("target_timeout_secs", self.target_timeout_secs),
        ] {
            if value == 0 {
                return Err(config_err(key, "must be more than 0"));
            }
        }
        Ok(kind)
    }

    /// Parses a base URL, with the trailing `/` tough needs to join file names.
    fn url(&self, key: &'static str, raw: &str) -> Result<Url, TrustError> {
        let with_slash = if raw.ends_with('/') {
            raw.to_owned()
        } else {
            format!("{raw}/")
        };
        let url =
            Url::parse(&with_slash).map_err(|e| config_err(key, format!("is not a URL: {e}")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config_err(key, "must not have a query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_err(
                key,
                "must not carry credentials (use client_cert/client_key)",
            ));
        }
        match url.scheme() {
            "https" => Ok(url),
            "file" => Ok(url),
            "http" if self.allow_loopback_http && is_loopback(&url) => Ok(url),
            "http" => Err(config_err(
                key,
                "must be https:// (plain http:// would let anyone on the path withhold or delay updates unnoticed)",
            )),
            other => Err(config_err(key, format!("has unsupported scheme {other}://"))),
        }
    }

    /// The metadata base URL (validated form, trailing `/`).
    ///
    /// # Errors
    /// As [`UpdatesTrustConfig::validate`].
    pub fn metadata_base(&self) -> Result<Url, TrustError> {
        self.url("metadata_url", &self.metadata_url)
    }

    /// The targets base URL (validated form, trailing `/`).
    ///
    /// # Errors
    /// As [`UpdatesTrustConfig::validate`].
    pub fn targets_base(&self) -> Result<Url, TrustError> {
        self.url("targets_url", &self.targets_url)
    }
}

/// Whether the URL's host is a loopback address (`localhost` counts).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<UpdatesTrustConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    fn key_of(e: TrustError) -> &'static str {
        match e {
            TrustError::Config { key, .. } => key,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn a_full_https_config_parses_and_validates() {
        let c = parse(
            r#"
            metadata_url = "https://updates.example.com/metadata"
            targets_url = "https://updates.example.com/targets/"
            trusted_root = "/usr/share/wardgate/root.json"
            ca_file = "/etc/wardgate/updates-ca.pem"
            client_cert = "/etc/wardgate/gw.pem"
            client_key = "/etc/wardgate/gw.key"
            max_timestamp_bytes = 16384
            "#,
        )
        .unwrap();
        assert_eq!(c.validate().unwrap(), RepositoryScheme::Http);
        assert_eq!(c.max_timestamp_bytes, 16384);
        assert_eq!(c.max_root_bytes, default_max_root_bytes());
        assert!(c.metadata_base().unwrap().as_str().ends_with("/metadata/"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse(
            r#"
            metadata_url = "file:///r/metadata"
            targets_url = "file:///r/targets"
            trusted_root = "/r/root.json"
            verify_signatures = false
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("verify_signatures"), "{err}");
    }

    #[test]
    fn each_refusal_names_its_key() {
        let base = UpdatesTrustConfig::new(
            "https://u.example/metadata",
            "https://u.example/targets",
            "/r/root.json".into(),
        );
        assert_eq!(key_of(base.validate().unwrap_err()), "ca_file");

        let mut c = base.clone();
        c.ca_file = Some("/ca.pem".into());
        c.validate().unwrap();

        let mut plain = c.clone();
        plain.metadata_url = "http://u.example/metadata".into();
        assert_eq!(key_of(plain.validate().unwrap_err()), "metadata_url");
        plain.allow_loopback_http = true;
        assert_eq!(key_of(plain.validate().unwrap_err()), "metadata_url");
        plain.metadata_url = "http://127.0.0.1:8080/metadata".into();
        plain.targets_url = "http://[::1]:8080/targets".into();
        plain.validate().unwrap();

        let mut mixed = c.clone();
        mixed.targets_url = "file:///r/targets".into();
        assert_eq!(key_of(mixed.validate().unwrap_err()), "targets_url");

        let mut half = c.clone();
        half.client_cert = Some("/c.pem".into());
        assert_eq!(key_of(half.validate().unwrap_err()), "client_key");

        let mut creds = c.clone();
        creds.targets_url = "https://user:pw@u.example/targets".into();
        assert_eq!(key_of(creds.validate().unwrap_err()), "targets_url");

        let mut zero = c.clone();
        zero.max_timestamp_bytes = 0;
        assert_eq!(key_of(zero.validate().unwrap_err()), "max_timestamp_bytes");

        let mut ftp = c;
        ftp.metadata_url = "ftp://u.example/m".into();
        assert_eq!(key_of(ftp.validate().unwrap_err()), "metadata_url");

        let file = UpdatesTrustConfig::new(
            "file:///r/metadata",
            "file:///r/targets",
            "/r/root.json".into(),
        );
        assert_eq!(file.validate().unwrap(), RepositoryScheme::File);
    }
}
