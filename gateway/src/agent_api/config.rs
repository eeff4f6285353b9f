//! Configuration of the device agent API: the `[agent_api]` section and each agent
//! device's credential (`AgentAuth`), as written by hospital IT.
//!
//! Deserialization refuses unknown keys (a typo never falls back to a default silently);
//! [`AgentApiConfig::validate`] and [`validate_devices`] then check values and cross-key
//! rules and name the offending key in a [`ConfigProblem`]. Keys are reported relative to
//! the section (`max_body_bytes`, `<device id>.identity`): the embedding configuration
//! prefixes its own path.
//!
//! Paths are taken as given: resolving relative paths and `credential:<name>` (systemd
//! credentials) is the embedding configuration's job, done before
//! [`super::AgentApiRuntime::load`] reads the files.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[agent_api]`: the HTTPS listener agents talk to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentApiConfig {
    /// Address and port of the HTTPS listener, e.g. `0.0.0.0:8443`. Put it on the device
    /// LAN only: agents are the only clients.
    pub listen: SocketAddr,
    /// PEM file of the gateway's server certificate chain (end entity first), presented to
    /// agents. Agents must trust its issuer and reach the gateway under a name it carries.
    pub server_cert: PathBuf,
    /// PEM file of the server certificate's private key (PKCS#8, SEC1 or PKCS#1). Keep it
    /// mode 0600 or pass it as a systemd credential (`credential:<name>`).
    pub server_key: PathBuf,
    /// PEM file of the site's device CA: the only trust anchor for agents' client
    /// certificates. Required when any agent device uses `auth = "mtls"`. When every agent
    /// uses mTLS, a client certificate is required at the TLS handshake; when some use
    /// tokens, a connection may come without one and must then carry a bearer token.
    #[serde(default)]
    pub device_ca: Option<PathBuf>,
    /// Largest request body, in bytes (1 KiB – 16 MiB). Larger bodies are answered 413 and
    /// not stored. Default 1 MiB.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests per second allowed from one device, sustained (1 – 100,000). Over the limit
    /// a request is answered 429 with `Retry-After` and not stored. Default 50.
    #[serde(default = "defaults::rate_per_device_per_sec")]
    pub rate_per_device_per_sec: u32,
    /// Requests one device may send at once above the sustained rate (1 – 1,000,000).
    /// Default 200.
    #[serde(default = "defaults::rate_burst")]
    pub rate_burst: u32,
    /// Most simultaneous TLS connections (1 – 65,536). Over the cap a connection is closed
    /// at once, before the TLS handshake. Default 256.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take to complete the TLS handshake (1 – 300). Guards against
    /// connections that open and stall. Default 10.
    #[serde(default = "defaults::handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may take to send the headers of its next request, counted from
    /// the TLS handshake or the previous response (1 – 3600). This is the keep-alive idle
    /// timeout and the slow-header guard. Default 120.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Seconds a client may take to send a request body once its headers are in (1 – 600).
    /// Default 30.
    #[serde(default = "defaults::body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Seconds that requests in progress at shutdown may take to finish (0 – 600); after
    /// that their connections are closed without an answer (the agent retries; nothing it
    /// was told is stored is lost). Default 30.
    #[serde(default = "defaults::shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Bytes per second one device may download update files at (16 KiB – 1 GiB), so a
    /// patch never starves the device's own clinical traffic. Default 1 MiB (8 Mbit/s).
    #[serde(default = "defaults::update_download_bytes_per_sec_per_device")]
    pub update_download_bytes_per_sec_per_device: u32,
    /// Bytes per second all devices together may download update files at (16 KiB –
    /// 4 GiB - 1), so patches never starve the LAN's clinical traffic. Default 4 MiB
    /// (32 Mbit/s).
    #[serde(default = "defaults::update_download_bytes_per_sec_total")]
    pub update_download_bytes_per_sec_total: u32,
}

/// How one agent device proves who it is. Written in the device's entry, e.g.
/// `auth = "mtls"` with `identity = "carto-3.cathlab.example"`, or `auth = "token"` with
/// `token_file = "/etc/wardgate/tokens/carto-3"`. A device has exactly one method: an mTLS
/// device cannot use a token and a token device cannot use a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "auth", rename_all = "lowercase", deny_unknown_fields)]
pub enum AgentAuth {
    /// A client certificate issued by `agent_api.device_ca`.
    Mtls {
        /// The certificate identity that designates this device: the certificate's subject
        /// common name (CN), or one of its subjectAltName `dNSName` or
        /// `uniformResourceIdentifier` entries. Matched exactly (DNS names ignoring ASCII
        /// case). A certificate that matches several devices is refused.
        identity: String,
    },
    /// A bearer token, for devices that cannot do mTLS: `Authorization: Bearer <token>`.
    Token {
        /// File holding the token (32 – 512 visible ASCII characters; a trailing newline is
        /// ignored). Generate it with e.g. `openssl rand -hex 32`. Only its SHA-256 is kept in
        /// memory; it is never logged. Keep the file mode 0600.
        token_file: PathBuf,
    },
}

impl AgentAuth {
    /// `mtls` or `token`, as configured.
    #[must_use]
    pub const fn method(&self) -> &'static str {
        match self {
            AgentAuth::Mtls { .. } => "mtls",
            AgentAuth::Token { .. } => "token",
        }
    }
}

/// An agent device as the API needs it: its configured id and its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDevice {
    /// The device's configured id (the records' device key, and the `{device_id}` in the
    /// API's paths).
    pub id: String,
    /// How it authenticates.
    pub auth: AgentAuth,
}

/// A refused configuration value: the key (relative to `[agent_api]`, or
/// `<device id>.<key>` for a device's credential) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigProblem {
    /// The key, e.g. `max_body_bytes` or `carto-3.identity`.
    pub key: String,
    /// Why the value was refused.
    pub reason: String,
}

impl ConfigProblem {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigProblem {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Longest device id, identity or token accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;
/// Longest certificate identity accepted in the configuration.
pub const MAX_IDENTITY_LEN: usize = 255;

impl AgentApiConfig {
    /// The TLS handshake timeout.
    #[must_use]
    pub const fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// The keep-alive idle / header timeout.
    #[must_use]
    pub const fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The request body timeout.
    #[must_use]
    pub const fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    /// The shutdown grace period.
    #[must_use]
    pub const fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Checks every value's range.
    ///
    /// # Errors
    /// The first key whose value is out of range.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        check_range(
            "max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            16 * 1024 * 1024,
        )?;
        check_range(
            "rate_per_device_per_sec",
            u64::from(self.rate_per_device_per_sec),
            1,
            100_000,
        )?;
        check_range("rate_burst", u64::from(self.rate_burst), 1, 1_000_000)?;
        check_range("max_connections", self.max_connections as u64, 1, 65_536)?;
        check_range(
            "handshake_timeout_secs",
            self.handshake_timeout_secs,
            1,
            300,
        )?;
        check_range("idle_timeout_secs", self.idle_timeout_secs, 1, 3600)?;
        check_range("body_timeout_secs", self.body_timeout_secs, 1, 600)?;
        check_range("shutdown_grace_secs", self.shutdown_grace_secs, 0, 600)?;
        check_range(
            "update_download_bytes_per_sec_per_device",
            u64::from(self.update_download_bytes_per_sec_per_device),
            MIN_DOWNLOAD_BYTES_PER_SEC,
            1024 * 1024 * 1024,
        )?;
        check_range(
            "update_download_bytes_per_sec_total",
            u64::from(self.update_download_bytes_per_sec_total),
            MIN_DOWNLOAD_BYTES_PER_SEC,
            u64::from(u32::MAX),
        )?;
        Ok(())
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigProblem> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigProblem::new(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ))
    }
}

/// Slowest update download rate accepted (bytes/s): also the largest chunk the download
/// throttle sends at once, so one chunk always fits in a second's budget.
pub const MIN_DOWNLOAD_BYTES_PER_SEC: u64 = 16 * 1024;

/// Whether `id` may be an agent device id: 1–128 characters of `A-Z a-z 0-9 - _ . :`, so
/// it can stand in a URL path segment unescaped.
#[must_use]
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Checks the agent devices against each other and against `config`: ids are valid and
/// unique, certificate identities are well-formed and designate one device each, token
/// devices name a token file, and mTLS devices have a `device_ca` to be verified against.
/// Token files are read (and duplicate tokens refused) by [`super::AgentApiRuntime::load`].
///
/// # Errors
/// The first problem found, naming the key.
pub fn validate_devices(
    config: &AgentApiConfig,
    devices: &[AgentDevice],
) -> Result<(), ConfigProblem> {
    let mut ids = BTreeSet::new();
    let mut identities: BTreeMap<String, &str> = BTreeMap::new();
    for device in devices {
        if !is_valid_device_id(&device.id) {
            return Err(ConfigProblem::new(
                format!("{}.id", device.id),
                format!(
                    "an agent device id must be 1–{MAX_DEVICE_ID_LEN} characters of A-Z a-z 0-9 - _ . :"
                ),
            ));
        }
        if !ids.insert(device.id.as_str()) {
            return Err(ConfigProblem::new(
                format!("{}.id", device.id),
                "device id used twice",
            ));
        }
        match &device.auth {
            AgentAuth::Mtls { identity } => {
                let key = format!("{}.identity", device.id);
                if identity.is_empty()
                    || identity.len() > MAX_IDENTITY_LEN
                    || identity.chars().any(char::is_control)
                {
                    return Err(ConfigProblem::new(
                        key,
                        format!(
                            "must be 1–{MAX_IDENTITY_LEN} bytes without control characters (the certificate's CN, DNS or URI name)"
                        ),
                    ));
                }
                if config.device_ca.is_none() {
                    return Err(ConfigProblem::new(
                        key,
                        "auth = \"mtls\" needs agent_api.device_ca, the CA that issues device certificates",
                    ));
                }
                // DNS names compare case-insensitively, so two identities that differ only
                // in case could both match one certificate.
                if let Some(other) = identities.insert(identity.to_ascii_lowercase(), &device.id) {
                    return Err(ConfigProblem::new(
                        key,
                        format!(
                            "identity also designates device `{other}` (identities must differ beyond ASCII case)"
                        ),
                    ));
                }
            }
            AgentAuth::Token { token_file } => {
                if token_file.as_os_str().is_empty() {
                    return Err(ConfigProblem::new(
                        format!("{}.token_file", device.id),
                        "must name the file holding the device's token",
                    ));
                }
            }
        }
    }
    Ok(())
}

mod defaults {
    pub const fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub const fn rate_per_device_per_sec() -> u32 {
        50
    }
    pub const fn rate_burst() -> u32 {
        200
    }
    pub const fn max_connections() -> usize {
        256
    }
    pub const fn handshake_timeout_secs() -> u64 {
        10
    }
    pub const fn idle_timeout_secs() -> u64 {
        120
    }
    pub const fn body_timeout_secs() -> u64 {
        30
    }
    pub const fn shutdown_grace_secs() -> u64 {
        30
    }
    pub const fn update_download_bytes_per_sec_per_device() -> u32 {
        1024 * 1024
    }
    pub const fn update_download_bytes_per_sec_total() -> u32 {
        4 * 1024 * 1024
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn minimal() -> AgentApiConfig {
        toml::from_str(
            r#"
            listen = "127.0.0.1:8443"
            server_cert = "/etc/wardgate/agent-api.pem"
            server_key = "credential:agent-api.key"
            device_ca = "/etc/wardgate/device-ca.pem"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_apply_and_validate() {
        let config = minimal();
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.rate_per_device_per_sec, 50);
        assert_eq!(config.rate_burst, 200);
        assert_eq!(config.max_connections, 256);
        assert_eq!(config.handshake_timeout(), Duration::from_secs(10));
        assert_eq!(config.idle_timeout(), Duration::from_secs(120));
        assert_eq!(config.server_key, PathBuf::from("credential:agent-api.key"));
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<AgentApiConfig>(
            r#"
            listen = "127.0.0.1:8443"
            server_cert = "a"
            server_key = "b"
            max_body_byte = 10
            "#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let mut config = minimal();
        config.max_body_bytes = 10;
        let problem = config.validate().unwrap_err();
        assert_eq!(problem.key, "max_body_bytes");
        assert!(problem.reason.contains("got 10"), "{problem}");

        let mut config = minimal();
        config.rate_per_device_per_sec = 0;
        assert_eq!(
            config.validate().unwrap_err().key,
            "rate_per_device_per_sec"
        );

        let mut config = minimal();
        config.idle_timeout_secs = 0;
        assert_eq!(config.validate().unwrap_err().key, "idle_timeout_secs");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DeviceEntry {
        #[allow(dead_code)] // Read by serde; present to show how a device entry embeds auth.
        id: String,
        agent: AgentAuth,
    }

    #[test]
    fn auth_methods_parse_and_do_not_mix() {
        let mtls: DeviceEntry = toml::from_str(
            "id = \"carto-1\"\n[agent]\nauth = \"mtls\"\nidentity = \"carto-1.cathlab\"\n",
        )
        .unwrap();
        assert_eq!(
            mtls.agent,
            AgentAuth::Mtls {
                identity: "carto-1.cathlab".into()
            }
        );
        let token: DeviceEntry =
            toml::from_str("id = \"pump\"\n[agent]\nauth = \"token\"\ntoken_file = \"/run/t\"\n")
                .unwrap();
        assert_eq!(token.agent.method(), "token");

        // A device cannot have both a certificate identity and a token.
        let err = toml::from_str::<DeviceEntry>(
            "id = \"x\"\n[agent]\nauth = \"mtls\"\nidentity = \"x\"\ntoken_file = \"/t\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_file"), "{err}");
        let err = toml::from_str::<DeviceEntry>(
            "id = \"x\"\n[agent]\nauth = \"password\"\npassword = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
    }

    fn device(id: &str, auth: AgentAuth) -> AgentDevice {
        AgentDevice {
            id: id.into(),
            auth,
        }
    }

    fn mtls(identity: &str) -> AgentAuth {
        AgentAuth::Mtls {
            identity: identity.into(),
        }
    }

    #[test]
    fn device_cross_checks() {
        let config = minimal();
        validate_devices(
            &config,
            &[
                device("a", mtls("a.example")),
                device(
                    "b",
                    AgentAuth::Token {
                        token_file: "/t".into(),
                    },
                ),
            ],
        )
        .unwrap();

        let dup = validate_devices(&config, &[device("a", mtls("x")), device("a", mtls("y"))])
            .unwrap_err();
        assert_eq!(dup.key, "a.id");

        let same_identity = validate_devices(
            &config,
            &[
                device("a", mtls("Host.example")),
                device("b", mtls("host.EXAMPLE")),
            ],
        )
        .unwrap_err();
        assert_eq!(same_identity.key, "b.identity");
        assert!(same_identity.reason.contains("`a`"), "{same_identity}");

        let bad_id = validate_devices(&config, &[device("a/b", mtls("x"))]).unwrap_err();
        assert_eq!(bad_id.key, "a/b.id");

        let empty = validate_devices(&config, &[device("a", mtls(""))]).unwrap_err();
        assert_eq!(empty.key, "a.identity");

        let mut no_ca = minimal();
        no_ca.device_ca = None;
        let err = validate_devices(&no_ca, &[device("a", mtls("a"))]).unwrap_err();
        assert!(err.reason.contains("device_ca"), "{err}");
        // Token-only sites need no device CA.
        validate_devices(
            &no_ca,
            &[device(
                "b",
                AgentAuth::Token {
                    token_file: "/t".into(),
                },
            )],
        )
        .unwrap();
    }
}
