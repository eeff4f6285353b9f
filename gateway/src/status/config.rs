//! `[status]`: the technician's status endpoint (page, `/status.json`, `/metrics`).
//!
//! Invariants:
//! * The endpoint listens on loopback unless configured otherwise; any other address
//!   requires `tls_cert_file` and `tls_key_file` ([`StatusConfig::validate`] refuses the
//!   config, and `serve` refuses a non-loopback listener without TLS as well).
//! * The bearer token lives only in `token_file`; the config never holds the token.
//! * File keys are resolved by the gateway's config loader like every other file key
//!   (relative to the config file, or `credential:<name>`); [`StatusConfig::file_keys_mut`]
//!   lists them with their key paths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::StatusError;

/// `[status]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Address and port of the status endpoint. Default `127.0.0.1:9808` (this machine
    /// only). Any address other than loopback, e.g. the management network's
    /// `10.1.2.3:9808`, requires `tls_cert_file` and `tls_key_file`.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token that `/status.json` and `/metrics` require (one line,
    /// 32–512 visible ASCII characters, e.g. from `openssl rand -hex 32`). Must not be
    /// readable by other users (mode 0600 or 0640); best passed as a systemd credential:
    /// `credential:status.token`. Prometheus reads the same token from its
    /// `authorization.credentials_file`.
    pub token_file: PathBuf,
    /// PEM file of the endpoint's certificate chain (required when `listen` is not
    /// loopback). `wardgate status` trusts exactly this certificate when it connects.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the endpoint's private key (required with `tls_cert_file`).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Failed authentication attempts allowed per source address and minute (1–1000);
    /// beyond it the address is answered 429 until the allowance refills, whatever token
    /// it sends. Default 10.
    #[serde(default = "defaults::failed_auth_per_minute")]
    pub failed_auth_per_minute: u32,
    /// Most simultaneous connections (1–1024); more wait for a free slot. Default 32.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
}

mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};

    pub const fn listen() -> SocketAddr {
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9808)
    }
    pub const fn failed_auth_per_minute() -> u32 {
        10
    }
    pub const fn max_connections() -> usize {
        32
    }
}

/// Where `wardgate status` finds the endpoint, and what it needs to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTarget {
    /// The address to connect to (an unspecified listen address becomes loopback).
    pub addr: SocketAddr,
    /// The endpoint's certificate, pinned, when it serves TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// The bearer token's file.
    pub token_file: PathBuf,
}

impl ClientTarget {
    /// The base URL, e.g. `http://127.0.0.1:9808` (for messages; the client connects to
    /// `addr`).
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }
}

impl StatusConfig {
    /// Checks values and cross-key rules; file existence too, like the other file keys.
    ///
    /// # Errors
    /// [`StatusError::Config`] naming the key (`status.<key>`) and the reason.
    pub fn validate(&self) -> Result<(), StatusError> {
        let err = |key: &str, reason: String| {
            Err(StatusError::Config {
                key: format!("status.{key}"),
                reason,
            })
        };
        if !(1..=1000).contains(&self.failed_auth_per_minute) {
            return err(
                "failed_auth_per_minute",
                format!("must be 1–1000, is {}", self.failed_auth_per_minute),
            );
        }
        if !(1..=1024).contains(&self.max_connections) {
            return err(
                "max_connections",
                format!("must be 1–1024, is {}", self.max_connections),
            );
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return err("tls_key_file", "is required with tls_cert_file".into());
            }
            (None, Some(_)) => {
                return err("tls_cert_file", "is required with tls_key_file".into());
            }
            (None, None) if !self.listen.ip().is_loopback() => {
                return err(
                    "listen",
                    format!(
                        "{} is not a loopback address: serving it needs TLS, so set \
                         status.tls_cert_file and status.tls_key_file (or listen on 127.0.0.1)",
                        self.listen
                    ),
                );
            }
            _ => {}
        }
        for (key, path) in self.file_keys() {
            let key = key.trim_start_matches("status.");
            if path.as_os_str().is_empty() {
                return err(key, "must not be empty".into());
            }
            if let Err(e) = std::fs::metadata(path) {
                return err(key, format!("cannot read {}: {e}", path.display()));
            }
        }
        Ok(())
    }

    /// The file keys (`status.token_file`, and the TLS files when set) with their key
    /// paths, for resolving relative paths and `credential:` names.
    #[must_use]
    pub fn file_keys_mut(&mut self) -> Vec<(&'static str, &mut PathBuf)> {
        let mut keys = vec![("status.token_file", &mut self.token_file)];
        if let Some(p) = self.tls_cert_file.as_mut() {
            keys.push(("status.tls_cert_file", p));
        }
        if let Some(p) = self.tls_key_file.as_mut() {
            keys.push(("status.tls_key_file", p));
        }
        keys
    }

    fn file_keys(&self) -> Vec<(&'static str, &Path)> {
        let mut keys = vec![("status.token_file", self.token_file.as_path())];
        if let Some(p) = &self.tls_cert_file {
            keys.push(("status.tls_cert_file", p.as_path()));
        }
        if let Some(p) = &self.tls_key_file {
            keys.push(("status.tls_key_file", p.as_path()));
        }
        keys
    }

    /// Where `wardgate status` connects and what it reads.
    #[must_use]
    pub fn client_target(&self) -> ClientTarget {
        let ip = match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        ClientTarget {
            addr: SocketAddr::new(ip, self.listen.port()),
            tls_cert_file: self.tls_cert_file.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StatusConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn key_of(e: StatusError) -> String {
        match e {
            StatusError::Config { key, .. } => key,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t");
        std::fs::write(&token, "x").unwrap();
        let c = parse(&format!("token_file = {:?}", token.display().to_string())).unwrap();
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.failed_auth_per_minute, 10);
        c.validate().unwrap();
        let t = c.client_target();
        assert_eq!(t.url(), "http://127.0.0.1:9808");
        assert_eq!(t.token_file, token);
    }

    #[test]
    fn unknown_keys_and_missing_token_file_are_refused() {
        assert!(parse("token_file = \"t\"\nlisten_on = \"x\"").is_err());
        assert!(parse("listen = \"127.0.0.1:1\"").is_err());
    }

    #[test]
    fn a_non_loopback_address_needs_tls() {
        let c = parse("token_file = \"t\"\nlisten = \"0.0.0.0:9808\"").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert_eq!(key_of(e), "status.listen");
        // The CLI connects to loopback when the endpoint listens on every address.
        assert_eq!(c.client_target().addr.to_string(), "127.0.0.1:9808");
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let c = parse("token_file = \"t\"\ntls_cert_file = \"c\"").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "status.tls_key_file");
        let mut c =
            parse("token_file = \"t\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"").unwrap();
        let keys: Vec<&str> = c.file_keys_mut().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "status.token_file",
                "status.tls_cert_file",
                "status.tls_key_file"
            ]
        );
        assert!(c.client_target().url().starts_with("https://"));
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let c = parse("token_file = \"t\"\nfailed_auth_per_minute = 0").unwrap();
        assert_eq!(
            key_of(c.validate().unwrap_err()),
            "status.failed_auth_per_minute"
        );
        let c = parse("token_file = \"/nonexistent/token\"").unwrap();
        assert_eq!(key_of(c.validate().unwrap_err()), "status.token_file");
    }
}
