//! `[[device]]`: the devices the site declares. Every device wardgate polls, follows or
//! lets speak through the agent API is listed here; HL7 devices may be listed too (to
//! see their state), but unlisted HL7 senders are still accepted.
//!
//! This section may change while the gateway runs: a valid edit is applied without a
//! restart (devices added, changed, removed); an invalid one is refused and logged, and
//! the running set stays.

use std::collections::BTreeSet;

use serde::Deserialize;
#[cfg(feature = "logfile")]
pub use wardgate_device_adapters::logfile::LogFileConfig;
#[cfg(feature = "modbus")]
pub use wardgate_device_adapters::modbus::ModbusDeviceConfig;

impl<'de> Deserialize<'de> for NotInThisBuildValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| NotInThisBuildValue)
    }
}

/// Stands in for an adapter's settings in a build without that adapter: any value
/// parses, and validation refuses it naming the missing cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotInThisBuildValue;

/// `[device.modbus]` in this build.
#[cfg(not(feature = "modbus"))]
pub type ModbusDeviceConfig = NotInThisBuildValue;
/// `[device.logs]` in this build.
#[cfg(not(feature = "logfile"))]
pub type LogFileConfig = NotInThisBuildValue;

use crate::agent_api::AgentAuth;

use super::ConfigError;

/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// One `[[device]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device's id on this site, used in records, topics, the twin and the status
    /// page: 1–64 characters of `A-Z a-z 0-9 - _ .`, unique. Not a serial number a
    /// patient could be traced by — a bed or asset label is usual (`icu-4-monitor`).
    pub id: String,
    /// What the device is, e.g. `patient-monitor`, `infusion-pump`, `mapping-system`.
    pub kind: String,
    /// The group update assignments and settings address. Default: the kind.
    #[serde(default)]
    pub group: Option<String>,
    /// The MSH-3 sending application of the device's HL7 messages, so HL7 traffic counts
    /// as the device being online. Optional.
    #[serde(default)]
    pub hl7_application: Option<String>,
    /// The calling AE title the device (a modality) uses when it stores images through
    /// `[dicom]`: its objects are attributed to this device, and their upload waits while
    /// it is in a procedure. Must be one of `dicom.callers`. Optional.
    #[serde(default)]
    pub dicom_ae_title: Option<String>,
    /// Poll the device over Modbus TCP (`[device.modbus]`, see the Modbus adapter's
    /// reference in README.md).
    #[serde(default)]
    pub modbus: Option<ModbusDeviceConfig>,
    /// Follow and ship the device's log files (`[device.logs]`: directory, glob, ...).
    /// Lines pass the free-text PHI rules before they are stored.
    #[serde(default)]
    pub logs: Option<LogFileConfig>,
    /// The device runs a wardgate agent and authenticates to the agent API
    /// (`[device.agent]`: `auth = "mtls"` with `identity`, or `auth = "token"` with
    /// `token_file`). Needs an `[agent_api]` section.
    #[serde(default)]
    pub agent: Option<AgentAuth>,
    /// For a device that is not polled (HL7, agent, logs only): seconds without any data
    /// after which it counts as `offline` (one state record). `0` never. Default 300.
    /// Ignored for Modbus devices, whose polls say whether they are reachable.
    #[serde(default = "default_offline_after_secs")]
    pub offline_after_secs: u64,
    /// Settings the device's agent may read through the agent API (`GET /v1/settings`),
    /// e.g. `{ upload_window = "22:00-06:00" }`. Plain values only; never secrets.
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl DeviceConfig {
    /// The group, defaulting to the kind.
    #[must_use]
    pub fn group(&self) -> &str {
        self.group.as_deref().unwrap_or(&self.kind)
    }

    /// Names of the adapters serving this device.
    #[must_use]
    pub fn adapters(&self) -> Vec<&'static str> {
        let mut adapters = Vec::new();
        if self.hl7_application.is_some() {
            adapters.push("hl7");
        }
        if self.dicom_ae_title.is_some() {
            adapters.push("dicom");
        }
        if self.modbus.is_some() {
            adapters.push("modbus");
        }
        if self.logs.is_some() {
            adapters.push("logs");
        }
        if self.agent.is_some() {
            adapters.push("agent");
        }
        adapters
    }

    /// The registry's view of it.
    #[must_use]
    pub fn declaration(&self) -> crate::devices::Declaration {
        crate::devices::Declaration {
            id: self.id.clone(),
            kind: self.kind.clone(),
            group: self.group().to_owned(),
            adapters: self.adapters(),
            hl7_application: self.hl7_application.clone(),
            dicom_ae_title: self.dicom_ae_title.clone(),
            offline_after: (self.modbus.is_none() && self.offline_after_secs > 0)
                .then(|| std::time::Duration::from_secs(self.offline_after_secs)),
        }
    }
}

const fn default_offline_after_secs() -> u64 {
    300
}

fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks the `[[device]]` list: ids, names and each adapter's own rules.
///
/// # Errors
/// The first problem, naming the key as `device[<index>].<key>`.
pub fn validate(devices: &[DeviceConfig], file: &std::path::Path) -> Result<(), ConfigError> {
    let mut ids = BTreeSet::new();
    let mut applications = BTreeSet::new();
    let mut ae_titles = BTreeSet::new();
    for (i, device) in devices.iter().enumerate() {
        let key = |k: &str| format!("device[{i}].{k}");
        let err = |k: &str, reason: String| Err(ConfigError::new(file, key(k), reason));
        if !is_token(&device.id, MAX_DEVICE_ID_LEN) {
            return err(
                "id",
                format!(
                    "{:?}: must be 1–{MAX_DEVICE_ID_LEN} characters of A-Z a-z 0-9 - _ .",
                    device.id
                ),
            );
        }
        if !ids.insert(device.id.as_str()) {
            return err("id", format!("{:?} is declared twice", device.id));
        }
        if !is_token(&device.kind, 64) {
            return err(
                "kind",
                "must be 1–64 characters of A-Z a-z 0-9 - _ .".into(),
            );
        }
        if let Some(group) = &device.group {
            if !is_token(group, 64) {
                return err(
                    "group",
                    "must be 1–64 characters of A-Z a-z 0-9 - _ .".into(),
                );
            }
        }
        if let Some(app) = &device.hl7_application {
            if app.is_empty() || app.len() > 64 || app.chars().any(|c| c.is_control()) {
                return err(
                    "hl7_application",
                    "must be 1–64 printable characters".into(),
                );
            }
            if !applications.insert(app.as_str()) {
                return err(
                    "hl7_application",
                    format!("{app:?} is already another device's application"),
                );
            }
        }
        if let Some(title) = &device.dicom_ae_title {
            if title.trim().is_empty()
                || title.len() > 16
                || title != title.trim()
                || title
                    .bytes()
                    .any(|b| !(0x20..0x7f).contains(&b) || b == b'\\')
            {
                return err(
                    "dicom_ae_title",
                    "must be 1–16 printable ASCII characters without a backslash or outer spaces"
                        .into(),
                );
            }
            if !ae_titles.insert(title.as_str()) {
                return err(
                    "dicom_ae_title",
                    format!("{title:?} is already another device's AE title"),
                );
            }
        }
        #[cfg(feature = "modbus")]
        if let Some(modbus) = &device.modbus {
            if let Err(reason) = modbus.validate() {
                return Err(adapter_error(file, &key("modbus"), &reason));
            }
        }
        #[cfg(not(feature = "modbus"))]
        if device.modbus.is_some() {
            return err(
                "modbus",
                "this build has no Modbus adapter (cargo feature `modbus`)".into(),
            );
        }
        #[cfg(feature = "logfile")]
        if let Some(logs) = &device.logs {
            if let Err(reason) = logs.validate() {
                return Err(adapter_error(file, &key("logs"), &reason));
            }
        }
        #[cfg(not(feature = "logfile"))]
        if device.logs.is_some() {
            return err(
                "logs",
                "this build has no log-file adapter (cargo feature `logfile`)".into(),
            );
        }
        for (name, value) in &device.settings {
            if value.is_object() || value.is_array() {
                return err(
                    &format!("settings.{name}"),
                    "must be a string, number or boolean".into(),
                );
            }
        }
    }
    Ok(())
}

/// An adapter's reason `"<sub.key>: <why>"` becomes key `<prefix>.<sub.key>`, reason `<why>`.
pub(super) fn adapter_error(file: &std::path::Path, prefix: &str, reason: &str) -> ConfigError {
    match reason.split_once(": ") {
        Some((sub, why)) if !sub.is_empty() && !sub.contains(' ') => {
            ConfigError::new(file, format!("{prefix}.{sub}"), why.to_owned())
        }
        _ => ConfigError::new(file, prefix.to_owned(), reason.to_owned()),
    }
}

/// The devices that use the agent API, with their credentials.
#[must_use]
pub fn agent_devices(devices: &[DeviceConfig]) -> Vec<crate::agent_api::AgentDevice> {
    devices
        .iter()
        .filter_map(|d| {
            d.agent.clone().map(|auth| crate::agent_api::AgentDevice {
                id: d.id.clone(),
                auth,
            })
        })
        .collect()
}
