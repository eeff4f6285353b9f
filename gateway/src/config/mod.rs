//! Typed configuration: one TOML file, written by hospital IT.
//!
//! Every key is documented here and in the annotated example `gateway/examples/wardgate.toml`
//! (a test parses it). Only the keys without a default are required: `gateway.id`,
//! `gateway.data_dir`, `cloud.mqtt_url`, `cloud.ca_file`, `cloud.cert_file`,
//! `cloud.key_file`, `cloud.profile` and `hl7.listen`.
//!
//! Loading is two steps: deserialization (unknown keys are errors, so a typo never
//! silently falls back to a default), then [`Config::validate`], which checks values
//! and cross-key rules. Either step fails with a [`ConfigError`] naming the file, the
//! key path (e.g. `hl7.max_message_bytes`) and the reason.
//!
//! Relative paths are resolved against the directory of the config file.
//!
//! # systemd credentials
//!
//! The file keys `cloud.ca_file`, `cloud.cert_file`, `cloud.key_file` and
//! `gateway.pseudonym_key_file` may name a systemd credential instead of a path:
//! `key_file = "credential:gateway.key"` is the file `gateway.key` in
//! `$CREDENTIALS_DIRECTORY`, which systemd fills from the unit's `LoadCredential=` (a
//! private, read-only copy only this service can read; the original stays root-only).
//! It is resolved when the file is loaded: an unset `$CREDENTIALS_DIRECTORY`, a name that
//! is not a plain file name, or a missing credential is a [`ConfigError`] naming the key.
//! A pseudonym key given as a credential must exist already (the credential directory is
//! read-only, so it cannot be created there).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod devices;

pub use devices::DeviceConfig;

use crate::uplink::mqtt::config::BrokerAddress;
use crate::uplink::mqtt::{MqttUplinkConfig, Profile};
use crate::uplink::UplinkError;

/// A configuration error: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The dotted key path, e.g. `hl7.max_message_bytes` (`<file>` when the file as a whole is at fault).
    pub key: String,
    /// Why the value was refused.
    pub reason: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gateway's identity and storage.
    pub gateway: GatewaySection,
    /// The cloud uplink.
    pub cloud: CloudSection,
    /// The HL7 v2 / MLLP listener.
    pub hl7: Hl7Section,
    /// The store-and-forward spool.
    #[serde(default)]
    pub spool: SpoolSection,
    /// PHI rules that a site may adjust.
    #[serde(default)]
    pub phi: PhiSection,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingSection,
    /// The site's devices, one `[[device]]` table each (see [`devices`]). Reloaded while
    /// running.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    /// The device agent API (HTTPS on the LAN). Absent: off.
    #[serde(default)]
    pub agent_api: Option<crate::agent_api::AgentApiConfig>,
    /// The technician's status endpoint (page, `/status.json`, `/metrics`). Absent: off.
    #[serde(default)]
    pub status: Option<crate::status::StatusConfig>,
    /// The DICOM storage receiver (C-STORE SCP) for modalities: `listen`, `ae_title`,
    /// `temp_dir`, `[[dicom.callers]]`, limits (see the DICOM adapter's reference in
    /// README.md). Objects are de-identified per `[phi.dicom]` into the bulk upload outbox,
    /// so it needs `[bulk_upload]`. Absent: off.
    #[serde(default)]
    pub dicom: Option<DicomSection>,
    /// Bulk uploads over QUIC (de-identified DICOM objects): `receiver`, TLS files, outbox
    /// budget, bandwidth caps by time of day (see README.md). Absent: off.
    #[serde(default)]
    pub bulk_upload: Option<crate::bulk::sender::BulkUploadConfig>,
    /// Cybersecurity updates for the devices (`[updates]` with `[updates.repository]`):
    /// the TUF repository, staging budget, refresh interval. Assignments arrive from the
    /// cloud through the twin; devices pull through the agent API, which it therefore
    /// needs. Absent: off, and every assignment is refused (audited).
    #[serde(default)]
    pub updates: Option<crate::updates::config::UpdatesConfig>,
}

/// `[dicom]` in this build.
#[cfg(feature = "dicom")]
pub type DicomSection = wardgate_device_adapters::dicom::DicomScpConfig;
/// `[dicom]` in this build (without the DICOM receiver; refused by validation).
#[cfg(not(feature = "dicom"))]
pub type DicomSection = devices::NotInThisBuildValue;

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway's identity: MQTT client id and the client certificate's CN.
    /// 1–128 characters of `A-Z a-z 0-9 - _ . :` (the intersection of what Azure IoT Hub
    /// and AWS IoT Core accept as device id / thing name).
    pub id: String,
    /// Directory for the spool, the pseudonym key and other state. Created (mode 0700) if absent.
    pub data_dir: PathBuf,
    /// The site's pseudonym key (32+ random bytes). Created with mode 0600 on first start if
    /// absent. Default: `<data_dir>/pseudonym.key`. It never leaves the gateway: losing it
    /// means new pseudonyms for every patient; leaking it lets the holder re-identify them.
    #[serde(default)]
    pub pseudonym_key_file: Option<PathBuf>,
}

/// `[cloud]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSection {
    /// The broker, `mqtts://host:port` (port defaults to 8883). Plain `mqtt://` is refused:
    /// nothing leaves the box without TLS.
    pub mqtt_url: String,
    /// PEM file of the CA certificate(s) that signed the broker's certificate. The only trust anchors.
    pub ca_file: PathBuf,
    /// PEM file of the gateway's client certificate chain (CN = `gateway.id`).
    pub cert_file: PathBuf,
    /// PEM file of the gateway's private key. Keep it mode 0600, or pass it as a systemd
    /// credential: `credential:<name>` is `<name>` in `$CREDENTIALS_DIRECTORY` (module doc).
    pub key_file: PathBuf,
    /// `generic` (any MQTT broker; topics `wardgate/<gateway.id>/records/<priority>`),
    /// `azure-iot-hub` (IoT Hub's MQTT device endpoint, X.509) or `aws-iot-core` (X.509,
    /// `gateway.id` is the thing name). Topics and limits: `uplink/mqtt/mod.rs`, README.
    pub profile: Profile,
    /// Publishes awaiting their PUBACK at once (1–1000). Default 64.
    #[serde(default = "defaults::inflight_window")]
    pub inflight_window: u16,
    /// Largest MQTT payload, in bytes; several records are batched into one publish up to
    /// this size. Default: the profile's limit (generic 256 KiB, Azure 256 KiB, AWS 128 KiB);
    /// may only be lowered.
    #[serde(default)]
    pub max_payload_bytes: Option<usize>,
    /// Most records in one publish (1–4096). 1 sends one record per MQTT message, for
    /// cloud pipelines that want that; it costs throughput. Default 4096.
    #[serde(default = "defaults::max_records_per_publish")]
    pub max_records_per_publish: usize,
    /// Seconds the oldest publish may wait for its PUBACK before the connection is
    /// considered dead and re-established (1–3600). Default 60.
    #[serde(default = "defaults::ack_timeout_secs")]
    pub ack_timeout_secs: u64,
    /// MQTT keep-alive, in seconds (5–1177). Default 60.
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// First reconnect delay, in milliseconds; doubles on every failed attempt (with full jitter). Default 500.
    #[serde(default = "defaults::backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, in seconds. Default 120.
    #[serde(default = "defaults::backoff_max_secs")]
    pub backoff_max_secs: u64,
}

/// An HL7 acknowledgement style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckModeSetting {
    /// Follow the message: original mode (AA/AE/AR) when MSH-15 and MSH-16 are empty,
    /// enhanced mode (CA/CE/CR per MSH-15) otherwise.
    Auto,
    /// Always answer in original mode (`MSA|AA`), for devices that expect it regardless.
    Original,
}

/// `[hl7]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Section {
    /// Address and port of the MLLP listener, e.g. `0.0.0.0:2575`.
    pub listen: SocketAddr,
    /// Largest accepted HL7 message, in bytes (1 KiB – 64 MiB). Larger frames are answered
    /// with AR and the connection is closed. Default 1 MiB.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Seconds a connection may take to complete a frame before it is closed (guards against
    /// silent and slow-loris connections). Default 120.
    #[serde(default = "defaults::idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Most simultaneous device connections. Default 512.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Messages per second allowed from one source address (sustained). Over the limit a
    /// message is answered AR (the device retries later; nothing is half-stored). Default 1000.
    #[serde(default = "defaults::rate_per_source_per_sec")]
    pub rate_per_source_per_sec: u32,
    /// Burst allowance above the sustained rate, in messages. Default 2000.
    #[serde(default = "defaults::rate_burst")]
    pub rate_burst: u32,
    /// Source addresses allowed to connect. Empty (the default) allows every address.
    #[serde(default)]
    pub allow_sources: Vec<IpAddr>,
    /// Default acknowledgement style: `auto` (default) or `original`.
    #[serde(default = "defaults::ack_mode")]
    pub ack_mode: AckModeSetting,
    /// Per-device overrides of `ack_mode`, keyed by the sending application (MSH-3.1).
    #[serde(default)]
    pub ack_mode_by_application: BTreeMap<String, AckModeSetting>,
    /// Our application name in ACKs (MSH-3). Default `WARDGATE`.
    #[serde(default = "defaults::application")]
    pub application: String,
    /// Our facility in ACKs (MSH-4). Default empty.
    #[serde(default)]
    pub facility: String,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Disk budget for spooled records, in MiB (1 – 1,048,576). When full, the lowest class
    /// (log < state < observation < alarm) is evicted oldest-first; a record is refused only
    /// when nothing of a lower class is left. Default 1024.
    #[serde(default = "defaults::budget_mib")]
    pub budget_mib: u64,
    /// Most records written per group commit. Default 4096.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: usize,
    /// Per-class time to live, in hours; a record older than its class's TTL is dropped and
    /// counted. Keys: `log`, `state`, `observation`, `alarm`. Default: log 168 (7 days),
    /// state 720 (30 days), observations and alarms never expire.
    #[serde(default)]
    pub ttl_hours: TtlHours,
}

/// `[spool.ttl_hours]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlHours {
    /// Device log lines. Default 168.
    #[serde(default = "defaults::ttl_log")]
    pub log: Option<u64>,
    /// Device state changes and gateway alerts. Default 720.
    #[serde(default = "defaults::ttl_state")]
    pub state: Option<u64>,
    /// Observations. Default: never.
    #[serde(default)]
    pub observation: Option<u64>,
    /// Alarms. Default: never.
    #[serde(default)]
    pub alarm: Option<u64>,
}

impl Default for TtlHours {
    fn default() -> Self {
        TtlHours {
            log: defaults::ttl_log(),
            state: defaults::ttl_state(),
            observation: None,
            alarm: None,
        }
    }
}

/// `[phi]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiSection {
    /// Observation codes (OBX-3 identifier or reference id, e.g. `MDC_ATTR_ALERT_SOURCE` or
    /// `184326`) whose free-text values (OBX-2 `ST`, `TX`, `FT`) may leave the gateway. Every
    /// other free-text value is replaced by "withheld": free text can name a patient.
    /// Default: the IHE PCD-04 alarm attributes whose values are enumerations, not prose
    /// (`MDC_ATTR_EVENT_PHASE`, `MDC_ATTR_ALARM_STATE`, `MDC_ATTR_ALARM_INACTIVATION_STATE`,
    /// `MDC_ATTR_ALARM_PRIORITY`, `MDC_ATTR_ALERT_TYPE`). Setting the key replaces the default.
    #[serde(default = "defaults::free_text_allowed_codes")]
    pub free_text_allowed_codes: BTreeSet<String>,
    /// Rules for free text that must leave (device log lines): `[phi.free_text]`, see
    /// `phi/freetext.rs` for each pattern. Default: every rule on.
    #[serde(default)]
    pub free_text: crate::phi::freetext::FreeTextConfig,
    /// DICOM de-identification options (PS3.15 Annex E): `[phi.dicom]` with `dates`,
    /// `max_date_shift_days`, `retain_device_identity`, `retain_patient_characteristics`,
    /// `safe_private`, `risky_modalities`, `allow_burned_in_annotation` (see
    /// `phi/dicom/options.rs`). Default: the basic profile with nothing retained.
    #[serde(default)]
    pub dicom: crate::phi::dicom::DeidOptions,
}

impl Default for PhiSection {
    fn default() -> Self {
        PhiSection {
            free_text_allowed_codes: defaults::free_text_allowed_codes(),
            free_text: crate::phi::freetext::FreeTextConfig::default(),
            dicom: crate::phi::dicom::DeidOptions::default(),
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// A `tracing` filter, e.g. `info` or `wardgate=debug,info`. Overridden by `RUST_LOG`. Default `info`.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            level: defaults::log_level(),
        }
    }
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            budget_mib: defaults::budget_mib(),
            max_batch: defaults::max_batch(),
            ttl_hours: TtlHours::default(),
        }
    }
}

mod defaults {
    use super::AckModeSetting;
    pub const fn inflight_window() -> u16 {
        64
    }
    pub const fn max_records_per_publish() -> usize {
        4096
    }
    pub const fn ack_timeout_secs() -> u64 {
        60
    }
    pub const fn keep_alive_secs() -> u64 {
        60
    }
    pub const fn backoff_min_ms() -> u64 {
        500
    }
    pub const fn backoff_max_secs() -> u64 {
        120
    }
    pub const fn max_message_bytes() -> usize {
        1024 * 1024
    }
    pub const fn idle_timeout_secs() -> u64 {
        120
    }
    pub const fn max_connections() -> usize {
        512
    }
    pub const fn rate_per_source_per_sec() -> u32 {
        1000
    }
    pub const fn rate_burst() -> u32 {
        2000
    }
    pub const fn ack_mode() -> AckModeSetting {
        AckModeSetting::Auto
    }
    pub fn application() -> String {
        "WARDGATE".to_owned()
    }
    pub const fn budget_mib() -> u64 {
        1024
    }
    pub const fn max_batch() -> usize {
        4096
    }
    #[allow(clippy::unnecessary_wraps)] // serde default for an Option field
    pub const fn ttl_log() -> Option<u64> {
        Some(168)
    }
    #[allow(clippy::unnecessary_wraps)]
    pub const fn ttl_state() -> Option<u64> {
        Some(720)
    }
    pub fn free_text_allowed_codes() -> std::collections::BTreeSet<String> {
        [
            "MDC_ATTR_EVENT_PHASE",
            "MDC_ATTR_ALARM_STATE",
            "MDC_ATTR_ALARM_INACTIVATION_STATE",
            "MDC_ATTR_ALARM_PRIORITY",
            "MDC_ATTR_ALERT_TYPE",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the key and the reason.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "<file>", format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `origin` names the file in errors and anchors
    /// relative paths.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the key and the reason.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_DIRECTORY_VAR).map(PathBuf::from);
        Config::parse_with_credentials(text, origin, credentials.as_deref())
    }

    /// [`Config::parse`] with the credentials directory given explicitly instead of read
    /// from `$CREDENTIALS_DIRECTORY` (`None`: not running with credentials).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, the key and the reason.
    pub fn parse_with_credentials(
        text: &str,
        origin: &Path,
        credentials_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            ConfigError::new(
                origin,
                "<file>",
                format!("not valid TOML: {}", one_line(&e.to_string())),
            )
        })?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_owned();
            let key = key_of(&path, &message);
            let position = inner.span().map(|s| line_of(text, s.start));
            let reason = match position {
                Some(line) => format!("{message} (line {line})"),
                None => message,
            };
            ConfigError::new(origin, key, reason)
        })?;
        config.resolve_credentials(origin, credentials_dir)?;
        let base = origin.parent().unwrap_or_else(|| Path::new("."));
        config.resolve_paths(base);
        config.validate(origin)?;
        Ok(config)
    }

    /// Replaces every `credential:<name>` file key by the credential's path.
    fn resolve_credentials(
        &mut self,
        origin: &Path,
        credentials_dir: Option<&Path>,
    ) -> Result<(), ConfigError> {
        for (key, path) in self.file_keys_mut() {
            if let Some(resolved) = credential_path(path, credentials_dir)
                .map_err(|reason| ConfigError::new(origin, key, reason))?
            {
                *path = resolved;
            }
        }
        Ok(())
    }

    /// Every key that names a file (may be `credential:<name>`), with its value.
    fn file_keys_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let mut keys: Vec<(String, &mut PathBuf)> = vec![
            ("cloud.ca_file".into(), &mut self.cloud.ca_file),
            ("cloud.cert_file".into(), &mut self.cloud.cert_file),
            ("cloud.key_file".into(), &mut self.cloud.key_file),
        ];
        if let Some(p) = self.gateway.pseudonym_key_file.as_mut() {
            keys.push(("gateway.pseudonym_key_file".into(), p));
        }
        if let Some(status) = self.status.as_mut() {
            keys.extend(
                status
                    .file_keys_mut()
                    .into_iter()
                    .map(|(k, p)| (k.to_owned(), p)),
            );
        }
        if let Some(api) = self.agent_api.as_mut() {
            keys.push(("agent_api.server_cert".into(), &mut api.server_cert));
            keys.push(("agent_api.server_key".into(), &mut api.server_key));
            if let Some(ca) = api.device_ca.as_mut() {
                keys.push(("agent_api.device_ca".into(), ca));
            }
        }
        if let Some(bulk) = self.bulk_upload.as_mut() {
            keys.push(("bulk_upload.ca_file".into(), &mut bulk.ca_file));
            keys.push(("bulk_upload.cert_file".into(), &mut bulk.cert_file));
            keys.push(("bulk_upload.key_file".into(), &mut bulk.key_file));
        }
        if let Some(updates) = self.updates.as_mut() {
            let repository = &mut updates.repository;
            keys.push((
                "updates.repository.trusted_root".into(),
                &mut repository.trusted_root,
            ));
            if let Some(ca) = repository.ca_file.as_mut() {
                keys.push(("updates.repository.ca_file".into(), ca));
            }
            if let Some(cert) = repository.client_cert.as_mut() {
                keys.push(("updates.repository.client_cert".into(), cert));
            }
            if let Some(key) = repository.client_key.as_mut() {
                keys.push(("updates.repository.client_key".into(), key));
            }
        }
        for (i, device) in self.devices.iter_mut().enumerate() {
            if let Some(crate::agent_api::AgentAuth::Token { token_file }) = device.agent.as_mut() {
                keys.push((format!("device[{i}].agent.token_file"), token_file));
            }
        }
        keys
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.gateway.data_dir);
        #[cfg(feature = "dicom")]
        if let Some(dicom) = self.dicom.as_mut() {
            resolve(&mut dicom.temp_dir);
        }
        for (_, path) in self.file_keys_mut() {
            resolve(path);
        }
    }

    /// Checks values and cross-key rules that types alone cannot express.
    ///
    /// # Errors
    /// The first rule broken, as a [`ConfigError`].
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, reason: String| Err(ConfigError::new(file, key, reason));

        let id = &self.gateway.id;
        if id.is_empty() || id.len() > 128 {
            return err(
                "gateway.id",
                format!("must be 1–128 characters, is {}", id.len()),
            );
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return err(
                "gateway.id",
                format!("character {c:?} is not allowed (use A-Z a-z 0-9 - _ . :)"),
            );
        }
        if self.gateway.data_dir.as_os_str().is_empty() {
            return err("gateway.data_dir", "must not be empty".into());
        }

        if let Err(e) = BrokerAddress::parse(&self.cloud.mqtt_url) {
            return err("cloud.mqtt_url", uplink_reason(e));
        }
        for (key, path) in [
            ("cloud.ca_file", &self.cloud.ca_file),
            ("cloud.cert_file", &self.cloud.cert_file),
            ("cloud.key_file", &self.cloud.key_file),
        ] {
            if let Err(e) = std::fs::metadata(path) {
                return err(key, format!("cannot read {}: {e}", path.display()));
            }
        }
        if !(1..=1000).contains(&self.cloud.inflight_window) {
            return err(
                "cloud.inflight_window",
                format!("must be 1–1000, is {}", self.cloud.inflight_window),
            );
        }
        if let Some(max) = self.cloud.max_payload_bytes {
            let limit = self.cloud.profile.max_payload_bytes();
            if !(1024..=limit).contains(&max) {
                return err(
                    "cloud.max_payload_bytes",
                    format!("must be 1024–{limit} for this profile, is {max}"),
                );
            }
        }
        if !(1..=4096).contains(&self.cloud.max_records_per_publish) {
            return err(
                "cloud.max_records_per_publish",
                format!("must be 1–4096, is {}", self.cloud.max_records_per_publish),
            );
        }
        if !(1..=3600).contains(&self.cloud.ack_timeout_secs) {
            return err(
                "cloud.ack_timeout_secs",
                format!("must be 1–3600, is {}", self.cloud.ack_timeout_secs),
            );
        }
        if !(5..=1177).contains(&self.cloud.keep_alive_secs) {
            return err(
                "cloud.keep_alive_secs",
                format!("must be 5–1177, is {}", self.cloud.keep_alive_secs),
            );
        }
        if self.cloud.backoff_min_ms == 0 || self.cloud.backoff_min_ms > 60_000 {
            return err(
                "cloud.backoff_min_ms",
                format!("must be 1–60000, is {}", self.cloud.backoff_min_ms),
            );
        }
        if self.cloud.backoff_max_secs == 0
            || self.cloud.backoff_max_secs > 3600
            || self.cloud.backoff_max_secs * 1000 < self.cloud.backoff_min_ms
        {
            return err(
                "cloud.backoff_max_secs",
                format!(
                    "must be 1–3600 and not below cloud.backoff_min_ms, is {}",
                    self.cloud.backoff_max_secs
                ),
            );
        }

        let hl7 = &self.hl7;
        if !(1024..=64 * 1024 * 1024).contains(&hl7.max_message_bytes) {
            return err(
                "hl7.max_message_bytes",
                format!("must be 1024–67108864, is {}", hl7.max_message_bytes),
            );
        }
        if !(1..=86_400).contains(&hl7.idle_timeout_secs) {
            return err(
                "hl7.idle_timeout_secs",
                format!("must be 1–86400, is {}", hl7.idle_timeout_secs),
            );
        }
        if !(1..=65_536).contains(&hl7.max_connections) {
            return err(
                "hl7.max_connections",
                format!("must be 1–65536, is {}", hl7.max_connections),
            );
        }
        if hl7.rate_per_source_per_sec == 0 {
            return err("hl7.rate_per_source_per_sec", "must be at least 1".into());
        }
        if hl7.rate_burst == 0 {
            return err("hl7.rate_burst", "must be at least 1".into());
        }
        for (key, value) in [
            ("hl7.application", &hl7.application),
            ("hl7.facility", &hl7.facility),
        ] {
            if value.len() > 64
                || value
                    .chars()
                    .any(|c| c.is_control() || "|^~\\&".contains(c))
            {
                return err(
                    key,
                    "must be at most 64 characters without control or HL7 delimiter characters"
                        .into(),
                );
            }
        }

        if !(1..=1_048_576).contains(&self.spool.budget_mib) {
            return err(
                "spool.budget_mib",
                format!("must be 1–1048576, is {}", self.spool.budget_mib),
            );
        }
        if !(1..=65_536).contains(&self.spool.max_batch) {
            return err(
                "spool.max_batch",
                format!("must be 1–65536, is {}", self.spool.max_batch),
            );
        }
        let ttl = &self.spool.ttl_hours;
        for (key, value) in [
            ("spool.ttl_hours.log", ttl.log),
            ("spool.ttl_hours.state", ttl.state),
            ("spool.ttl_hours.observation", ttl.observation),
            ("spool.ttl_hours.alarm", ttl.alarm),
        ] {
            if value == Some(0) || value.is_some_and(|h| h > 24 * 365 * 10) {
                return err(
                    key,
                    "must be 1–87600 hours, or left out for no expiry".into(),
                );
            }
        }

        devices::validate(&self.devices, file)?;
        if let Err(reason) = self.phi.free_text.validate() {
            return Err(devices::adapter_error(file, "phi.free_text", &reason));
        }
        if let Err(reason) = self.phi.dicom.validate() {
            return Err(devices::adapter_error(file, "phi.dicom", &reason));
        }
        self.validate_imaging(file)?;
        if let Some(updates) = &self.updates {
            updates.validate().map_err(|(key, reason)| {
                ConfigError::new(file, format!("updates.{key}"), reason)
            })?;
            if self.agent_api.is_none() {
                return err(
                    "updates",
                    "needs an [agent_api] section: devices fetch their updates through it".into(),
                );
            }
        }
        if let Some(status) = &self.status {
            status.validate().map_err(|e| match e {
                crate::status::StatusError::Config { key, reason } => {
                    ConfigError::new(file, key, reason)
                }
                other => ConfigError::new(file, "status", other.to_string()),
            })?;
        }
        let agents = self.agent_devices();
        match &self.agent_api {
            Some(api) => {
                api.validate()
                    .and_then(|()| crate::agent_api::config::validate_devices(api, &agents))
                    .map_err(|p| {
                        ConfigError::new(file, format!("agent_api.{}", p.key), p.reason)
                    })?;
            }
            None => {
                if let Some(first) = agents.first() {
                    return err(
                        "agent_api",
                        format!("device {:?} has an agent credential, but there is no [agent_api] section", first.id),
                    );
                }
            }
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            return err("logging.level", format!("not a valid filter: {e}"));
        }
        // The uplink's own rules (profile limits on ids and keep-alive, values rumqttc
        // would panic on) are checked by the code that applies them, not restated here.
        if let Err(e) = self.mqtt_uplink().plan() {
            let key = match &e {
                UplinkError::Config { key, .. } => config_key_of_uplink_field(key),
                _ => "cloud".to_owned(),
            };
            return err(&key, uplink_reason(e));
        }
        Ok(())
    }

    /// `[dicom]`, `[bulk_upload]` and the devices' `dicom_ae_title`.
    fn validate_imaging(&self, file: &Path) -> Result<(), ConfigError> {
        if let Some(bulk) = &self.bulk_upload {
            bulk.validate()
                .map_err(|reason| bulk_error(file, &reason))?;
        }
        #[cfg(not(feature = "dicom"))]
        if self.dicom.is_some() {
            return Err(ConfigError::new(
                file,
                "dicom",
                "this build has no DICOM receiver (cargo feature `dicom`)",
            ));
        }
        #[cfg(feature = "dicom")]
        if let Some(dicom) = &self.dicom {
            dicom
                .validate()
                .map_err(|reason| devices::adapter_error(file, "dicom", &reason))?;
            if self.bulk_upload.is_none() {
                return Err(ConfigError::new(
                    file,
                    "dicom",
                    "needs a [bulk_upload] section: de-identified objects are uploaded from its outbox",
                ));
            }
            for (i, device) in self.devices.iter().enumerate() {
                if let Some(title) = &device.dicom_ae_title {
                    if !dicom.callers.iter().any(|c| &c.ae_title == title) {
                        return Err(ConfigError::new(
                            file,
                            format!("device[{i}].dicom_ae_title"),
                            format!("{title:?} is not among dicom.callers, so its associations would be refused"),
                        ));
                    }
                }
            }
        }
        if self.dicom.is_none() {
            if let Some(i) = self.devices.iter().position(|d| d.dicom_ae_title.is_some()) {
                return Err(ConfigError::new(
                    file,
                    format!("device[{i}].dicom_ae_title"),
                    "there is no [dicom] section",
                ));
            }
        }
        Ok(())
    }

    /// The MQTT uplink's configuration.
    #[must_use]
    pub fn mqtt_uplink(&self) -> MqttUplinkConfig {
        let cloud = &self.cloud;
        MqttUplinkConfig {
            url: cloud.mqtt_url.clone(),
            ca_file: cloud.ca_file.clone(),
            cert_file: cloud.cert_file.clone(),
            key_file: cloud.key_file.clone(),
            gateway_id: self.gateway.id.clone(),
            profile: cloud.profile,
            inflight_window: cloud.inflight_window,
            max_payload_bytes: self.max_payload_bytes(),
            max_records_per_publish: cloud.max_records_per_publish,
            keep_alive: Duration::from_secs(cloud.keep_alive_secs),
            backoff_min: Duration::from_millis(cloud.backoff_min_ms),
            backoff_max: Duration::from_secs(cloud.backoff_max_secs),
            ack_timeout: Duration::from_secs(cloud.ack_timeout_secs),
        }
    }

    /// The devices that use the agent API, with their credentials.
    #[must_use]
    pub fn agent_devices(&self) -> Vec<crate::agent_api::AgentDevice> {
        devices::agent_devices(&self.devices)
    }

    /// Where the pseudonym key lives.
    #[must_use]
    pub fn pseudonym_key_path(&self) -> PathBuf {
        self.gateway
            .pseudonym_key_file
            .clone()
            .unwrap_or_else(|| self.gateway.data_dir.join("pseudonym.key"))
    }

    /// The largest MQTT payload to publish.
    #[must_use]
    pub fn max_payload_bytes(&self) -> usize {
        self.cloud
            .max_payload_bytes
            .unwrap_or_else(|| self.cloud.profile.max_payload_bytes())
    }

    /// Per-class TTLs, indexed by `Priority::as_u8()`.
    #[must_use]
    pub fn ttls(&self) -> [Option<Duration>; 4] {
        let h = |v: Option<u64>| v.map(|h| Duration::from_secs(h * 3600));
        let t = &self.spool.ttl_hours;
        [h(t.log), h(t.state), h(t.observation), h(t.alarm)]
    }
}

/// The bulk upload config's reason is `invalid bulk upload configuration `<key>`: <why>`.
fn bulk_error(file: &Path, reason: &str) -> ConfigError {
    let parsed = reason
        .strip_prefix("invalid bulk upload configuration `")
        .and_then(|rest| rest.split_once("`: "));
    match parsed {
        Some((key, why)) => ConfigError::new(file, format!("bulk_upload.{key}"), why),
        None => ConfigError::new(file, "bulk_upload", reason),
    }
}

/// The environment variable systemd sets to the service's credentials directory.
pub const CREDENTIALS_DIRECTORY_VAR: &str = "CREDENTIALS_DIRECTORY";

/// The prefix that makes a file key name a systemd credential.
pub const CREDENTIAL_PREFIX: &str = "credential:";

/// `Ok(None)` for an ordinary path; `Ok(Some(path))` for `credential:<name>` present in
/// `credentials_dir`; `Err(reason)` otherwise.
fn credential_path(
    value: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Option<PathBuf>, String> {
    let Some(name) = value
        .to_str()
        .and_then(|v| v.strip_prefix(CREDENTIAL_PREFIX))
    else {
        return Ok(None);
    };
    // systemd credential names are plain file names; anything else could escape the directory.
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "{name:?} is not a credential name (a plain file name as in LoadCredential=<name>:<path>)"
        ));
    }
    let Some(dir) = credentials_dir else {
        return Err(format!(
            "names the systemd credential {name:?}, but ${CREDENTIALS_DIRECTORY_VAR} is not set \
             (run under systemd with LoadCredential={name}:<path>, or give a file path)"
        ));
    };
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(path)),
        Ok(_) => Err(format!("credential {name:?} ({}) is not a file", path.display())),
        Err(e) => Err(format!(
            "credential {name:?} not found in {} ({e}); is LoadCredential={name}:<path> in the unit?",
            dir.display()
        )),
    }
}

/// The config key of an uplink field named in an [`UplinkError::Config`].
fn config_key_of_uplink_field(field: &str) -> String {
    let key = match field {
        "gateway_id" => return "gateway.id".to_owned(),
        "url" => "mqtt_url",
        "keep_alive" => "keep_alive_secs",
        "backoff_min" => "backoff_min_ms",
        "backoff_max" => "backoff_max_secs",
        "ack_timeout" => "ack_timeout_secs",
        other => other,
    };
    format!("cloud.{key}")
}

/// The reason part of an uplink error, without its own key prefix.
fn uplink_reason(e: UplinkError) -> String {
    match e {
        UplinkError::Config { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Builds the key path for an error: serde reports a missing field at its parent, so the
/// field name is appended from the message (an unknown field's path already ends in it).
fn key_of(path: &str, message: &str) -> String {
    let field = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, field) {
        (".", Some(f)) | ("", Some(f)) => f.to_owned(),
        (".", None) | ("", None) => "<file>".to_owned(),
        (p, Some(f)) if p == f || p.ends_with(&format!(".{f}")) => p.to_owned(),
        (p, Some(f)) => format!("{p}.{f}"),
        (p, None) => p.to_owned(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_files(extra: &str) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let text = format!(
            r#"
[gateway]
id = "gw-1"
data_dir = "state"

[cloud]
mqtt_url = "mqtts://broker.example:8883"
ca_file = "ca.pem"
cert_file = "cert.pem"
key_file = "key.pem"
profile = "generic"

[hl7]
listen = "127.0.0.1:2575"
{extra}
"#
        );
        let path = dir.path().join("wardgate.toml");
        (dir, path, text)
    }

    #[test]
    fn minimal_config_runs_on_defaults() {
        let (dir, path, text) = with_files("");
        let c = Config::parse(&text, &path).unwrap();
        assert_eq!(c.gateway.data_dir, dir.path().join("state"));
        assert_eq!(c.hl7.max_message_bytes, 1024 * 1024);
        assert_eq!(
            c.pseudonym_key_path(),
            dir.path().join("state/pseudonym.key")
        );
        let plan = c.mqtt_uplink().plan().unwrap();
        assert_eq!(
            plan.topic(wardgate_proto::Priority::Alarm),
            "wardgate/gw-1/records/alarm"
        );
        assert_eq!(c.ttls()[0], Some(Duration::from_secs(168 * 3600)));
        assert_eq!(c.ttls()[3], None);
    }

    #[test]
    fn shipped_example_parses() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wardgate.toml");
        let text = std::fs::read_to_string(&example).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The example points at /etc/wardgate/*.pem; parse it with those files present here.
        let text = text.replace("/etc/wardgate/", &format!("{}/", dir.path().display()));
        for f in ["ca.pem", "gateway.pem", "gateway.key", "status.token"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        // The key comes in as a systemd credential, as the shipped unit passes it.
        let c = Config::parse_with_credentials(&text, &example, Some(dir.path())).unwrap();
        assert_eq!(c.cloud.profile, Profile::Generic);
        assert_eq!(c.cloud.key_file, dir.path().join("gateway.key"));
    }

    /// Every commented-out setting of the example, switched on, still parses: the
    /// documentation of optional sections (devices, agent API, free text) is valid config.
    #[test]
    fn shipped_example_with_every_option_switched_on_parses() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/wardgate.toml");
        let text = std::fs::read_to_string(&example).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = text.replace("/etc/wardgate/", &format!("{}/", dir.path().display()));
        let mut switched_on = String::new();
        for line in text.lines() {
            let setting = line.strip_prefix("# ").filter(|rest| {
                let key = rest.split(" =").next().unwrap_or("");
                rest.starts_with('[')
                    || (rest.contains(" = ")
                        && !key.is_empty()
                        && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        && key != "free_text_allowed_codes")
            });
            switched_on.push_str(setting.unwrap_or(line));
            switched_on.push('\n');
        }
        for f in [
            "ca.pem",
            "gateway.pem",
            "gateway.key",
            "status.token",
            "status.pem",
            "status.key",
            "agent-api.pem",
            "agent-api.key",
            "device-ca.pem",
            "cathlab-1-carto.token",
            "tuf-root.json",
            "updates-ca.pem",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let c = Config::parse_with_credentials(&switched_on, &example, Some(dir.path()))
            .unwrap_or_else(|e| panic!("{e}\n{switched_on}"));
        assert_eq!(c.devices.len(), 3);
        assert!(c.devices[0].modbus.is_some() && c.devices[2].logs.is_some());
        assert_eq!(c.devices[1].dicom_ae_title.as_deref(), Some("CT_SCANNER_1"));
        assert!(c.agent_api.is_some() && c.status.is_some());
        assert!(c.dicom.is_some() && c.bulk_upload.is_some());
        assert_eq!(c.phi.dicom.quarantine_budget_bytes, 1 << 30);
        let updates = c.updates.unwrap();
        assert_eq!(
            updates.repository.trusted_root,
            dir.path().join("tuf-root.json")
        );
    }

    const IMAGING: &str = r#"
[dicom]
listen = "127.0.0.1:11112"
ae_title = "WARDGATE"
temp_dir = "incoming"

[[dicom.callers]]
ae_title = "CT1"

[bulk_upload]
receiver = "ingest.example:4433"
ca_file = "ca.pem"
cert_file = "cert.pem"
key_file = "key.pem"

[[device]]
id = "ct-1"
kind = "ct-scanner"
dicom_ae_title = "CT1"
"#;

    #[cfg(feature = "dicom")]
    #[test]
    fn imaging_sections_parse_with_paths_resolved() {
        let (dir, path, text) = with_files(IMAGING);
        let c = Config::parse(&text, &path).unwrap();
        let dicom = c.dicom.unwrap();
        assert_eq!(dicom.temp_dir, dir.path().join("incoming"));
        assert_eq!(c.bulk_upload.unwrap().ca_file, dir.path().join("ca.pem"));
        assert_eq!(
            c.devices[0].declaration().dicom_ae_title.as_deref(),
            Some("CT1")
        );
    }

    #[cfg(feature = "dicom")]
    #[test]
    fn imaging_rules_across_sections_name_the_key() {
        let cases: [(&str, &str, &str); 4] = [
            (
                "[bulk_upload]",
                "[unused_bulk_upload]",
                "unused_bulk_upload",
            ),
            (
                "dicom_ae_title = \"CT1\"",
                "dicom_ae_title = \"CT9\"",
                "device[0].dicom_ae_title",
            ),
            (
                "receiver = \"ingest.example:4433\"",
                "receiver = \"ingest.example\"",
                "bulk_upload.receiver",
            ),
            (
                "ae_title = \"WARDGATE\"",
                "ae_title = \"WAY_TOO_LONG_AE_TITLE\"",
                "dicom.ae_title",
            ),
        ];
        for (from, to, key) in cases {
            let (_d, path, text) = with_files(&IMAGING.replace(from, to));
            let e = Config::parse(&text, &path).unwrap_err();
            assert_eq!(e.key, key, "{from} -> {to}: {e}");
        }
        // [dicom] without [bulk_upload]: objects would have nowhere to go.
        let without_upload = IMAGING.split("[bulk_upload]").next().unwrap().to_owned();
        let (_d, path, text) = with_files(&without_upload);
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "dicom");
        assert!(e.reason.contains("[bulk_upload]"), "{e}");
        // A device naming an AE title without any [dicom] section.
        let (_d, path, text) =
            with_files("[[device]]\nid = \"ct-1\"\nkind = \"ct\"\ndicom_ae_title = \"CT1\"\n");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "device[0].dicom_ae_title");
    }

    #[test]
    fn updates_section_needs_the_agent_api_and_names_repository_keys() {
        let updates = r#"
[updates]
refresh_interval_secs = 300

[updates.repository]
metadata_url = "https://updates.example/metadata/"
targets_url = "https://updates.example/targets/"
trusted_root = "root.json"
ca_file = "ca.pem"
"#;
        let (_d, path, text) = with_files(updates);
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "updates");
        assert!(e.reason.contains("[agent_api]"), "{e}");
        for (from, to, key) in [
            (
                "refresh_interval_secs = 300",
                "refresh_interval_secs = 5",
                "updates.refresh_interval_secs",
            ),
            (
                "https://updates.example/metadata/",
                "http://updates.example/metadata/",
                "updates.repository.metadata_url",
            ),
            ("ca_file = \"ca.pem\"", "", "updates.repository.ca_file"),
        ] {
            let (_d, path, text) = with_files(&updates.replace(from, to));
            let e = Config::parse(&text, &path).unwrap_err();
            // The agent API rule comes after the section's own checks.
            assert_eq!(e.key, key, "{from} -> {to}: {e}");
        }
    }

    #[cfg(not(feature = "dicom"))]
    #[test]
    fn dicom_section_is_refused_in_a_build_without_it() {
        let (_d, path, text) = with_files(IMAGING);
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "dicom");
        assert!(e.reason.contains("cargo feature `dicom`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let (_d, path, text) = with_files("max_mesage_bytes = 5");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "hl7.max_mesage_bytes");
        assert!(e.reason.contains("unknown field"), "{e}");
        assert!(e.to_string().starts_with(&path.display().to_string()));
    }

    #[test]
    fn missing_required_key_is_named() {
        let (_d, path, text) = with_files("");
        let text = text.replace("listen = \"127.0.0.1:2575\"", "");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "hl7.listen");
        assert!(e.reason.contains("missing field"), "{e}");
    }

    #[test]
    fn out_of_range_value_names_key_and_reason() {
        let (_d, path, text) = with_files("max_message_bytes = 10");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "hl7.max_message_bytes");
        assert!(e.reason.contains("1024"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let (_d, path, text) = with_files("max_connections = \"many\"");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "hl7.max_connections");
        assert!(e.reason.contains("line"), "{e}");
    }

    #[test]
    fn plain_mqtt_is_refused() {
        let (_d, path, text) = with_files("");
        let text = text.replace("mqtts://", "mqtt://");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "cloud.mqtt_url");
        assert!(e.reason.contains("TLS"), "{e}");
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let (d, path, text) = with_files("");
        std::fs::remove_file(d.path().join("key.pem")).unwrap();
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "cloud.key_file");
    }

    #[test]
    fn bad_gateway_id_is_refused() {
        let (_d, path, text) = with_files("");
        let text = text.replace("id = \"gw-1\"", "id = \"gw/1\"");
        assert_eq!(Config::parse(&text, &path).unwrap_err().key, "gateway.id");
    }

    #[test]
    fn invalid_toml_names_the_file() {
        let (_d, path, _) = with_files("");
        let e = Config::parse("[gateway\nid=", &path).unwrap_err();
        assert_eq!(e.key, "<file>");
        assert!(e.reason.contains("TOML"));
    }

    #[test]
    fn credential_names_resolve_in_the_credentials_directory() {
        let (_d, path, text) = with_files("");
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("gateway.key"), "k").unwrap();
        std::fs::write(creds.path().join("pseudonym.key"), [7u8; 32]).unwrap();
        let text = text
            .replace(
                "key_file = \"key.pem\"",
                "key_file = \"credential:gateway.key\"",
            )
            .replace(
                "data_dir = \"state\"",
                "data_dir = \"state\"\npseudonym_key_file = \"credential:pseudonym.key\"",
            );
        let c = Config::parse_with_credentials(&text, &path, Some(creds.path())).unwrap();
        assert_eq!(c.cloud.key_file, creds.path().join("gateway.key"));
        assert_eq!(c.mqtt_uplink().key_file, creds.path().join("gateway.key"));
        assert_eq!(c.pseudonym_key_path(), creds.path().join("pseudonym.key"));
        // Ordinary paths are untouched by a credentials directory.
        assert_eq!(c.cloud.cert_file, path.parent().unwrap().join("cert.pem"));
    }

    #[test]
    fn credential_without_credentials_directory_names_the_key() {
        let (_d, path, text) = with_files("");
        let text = text.replace(
            "cert_file = \"cert.pem\"",
            "cert_file = \"credential:gw.pem\"",
        );
        let e = Config::parse_with_credentials(&text, &path, None).unwrap_err();
        assert_eq!(e.key, "cloud.cert_file");
        assert!(e.reason.contains("CREDENTIALS_DIRECTORY"), "{e}");
        assert!(e.reason.contains("gw.pem"), "{e}");
    }

    #[test]
    fn missing_credential_names_the_key_and_the_credential() {
        let (_d, path, text) = with_files("");
        let creds = tempfile::tempdir().unwrap();
        let text = text.replace(
            "key_file = \"key.pem\"",
            "key_file = \"credential:gateway.key\"",
        );
        let e = Config::parse_with_credentials(&text, &path, Some(creds.path())).unwrap_err();
        assert_eq!(e.key, "cloud.key_file");
        assert!(e.reason.contains("\"gateway.key\" not found"), "{e}");
    }

    #[test]
    fn credential_names_cannot_leave_the_directory() {
        let (d, path, text) = with_files("");
        let creds = tempfile::tempdir().unwrap();
        for bad in ["../key.pem", "", "..", "a/b"] {
            let text = text.replace(
                "ca_file = \"ca.pem\"",
                &format!("ca_file = \"credential:{bad}\""),
            );
            let e = Config::parse_with_credentials(&text, &path, Some(creds.path())).unwrap_err();
            assert_eq!(e.key, "cloud.ca_file", "{bad}");
            assert!(e.reason.contains("not a credential name"), "{bad}: {e}");
        }
        assert!(d.path().join("key.pem").exists());
    }

    #[test]
    fn profile_rules_are_reported_under_cloud_keys() {
        // AWS thing names may not contain '.', which gateway.id otherwise allows.
        let (_d, path, text) = with_files("");
        let text = text
            .replace("id = \"gw-1\"", "id = \"gw.1\"")
            .replace("\"generic\"", "\"aws-iot-core\"");
        let e = Config::parse(&text, &path).unwrap_err();
        assert_eq!(e.key, "gateway.id", "{e}");
    }
}
