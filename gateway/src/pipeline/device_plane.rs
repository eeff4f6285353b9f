//! The device plane's supervisor: one task per device and adapter (a Modbus poller, a
//! log follower), started, restarted and stopped as the `[[device]]` list and the
//! cloud's allow-listed settings change.
//!
//! Invariants:
//! - A task runs with its device's *effective* settings: the config, overridden by the
//!   twin's accepted desired values ([`Overrides`]). A task whose effective settings are
//!   unchanged by an apply keeps running untouched (no poll gap, no re-read of a log).
//! - Stopping a task is cooperative (its shutdown channel) and bounded
//!   ([`STOP_GRACE`]); a log follower stops between chunks, so its checkpoint always
//!   matches what it shipped.
//! - The registry is updated before tasks start, so a new task's first event finds its
//!   device declared.

// A build without the Modbus and log-file adapters has no device tasks at all: the task
// machinery below is then compiled but never reached.
#![cfg_attr(
    not(any(feature = "modbus", feature = "logfile")),
    allow(dead_code, unused_variables, unused_mut, unreachable_code)
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
#[cfg(feature = "logfile")]
use wardgate_device_adapters::logfile::{self, LogFileConfig};
#[cfg(feature = "modbus")]
use wardgate_device_adapters::modbus::{self, ModbusDeviceConfig};

#[cfg(feature = "logfile")]
use super::logfile::LogIngest;
#[cfg(feature = "modbus")]
use super::modbus::ModbusIngest;
use crate::config::DeviceConfig;
use crate::devices::Registry;

/// How long a stopping task may take before it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings the cloud may change (twin desired state, allow-listed), per device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceOverrides {
    /// Overrides `[device.modbus] poll_interval_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// Turns log shipping off (`false`) or back on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_shipping: Option<bool>,
}

/// Accepted overrides by device id.
pub type Overrides = BTreeMap<String, DeviceOverrides>;

#[derive(Debug, Clone, PartialEq)]
enum TaskConfig {
    #[cfg(feature = "modbus")]
    Modbus(ModbusDeviceConfig),
    #[cfg(feature = "logfile")]
    Logs(LogFileConfig),
}

impl TaskConfig {
    const fn adapter(&self) -> &'static str {
        match *self {
            #[cfg(feature = "modbus")]
            TaskConfig::Modbus(_) => "modbus",
            #[cfg(feature = "logfile")]
            TaskConfig::Logs(_) => "logs",
        }
    }
}

struct Running {
    config: TaskConfig,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The effective task set of `devices` under `overrides`.
fn effective(
    devices: &[DeviceConfig],
    overrides: &Overrides,
) -> HashMap<(String, &'static str), TaskConfig> {
    let mut tasks = HashMap::new();
    for device in devices {
        let o = overrides.get(&device.id);
        #[cfg(feature = "modbus")]
        if let Some(modbus) = &device.modbus {
            let mut modbus = modbus.clone();
            if let Some(ms) = o.and_then(|o| o.poll_interval_ms) {
                modbus.poll_interval_ms = ms;
            }
            let task = TaskConfig::Modbus(modbus);
            tasks.insert((device.id.clone(), task.adapter()), task);
        }
        #[cfg(feature = "logfile")]
        if let Some(logs) = &device.logs {
            if o.and_then(|o| o.log_shipping) != Some(false) {
                let task = TaskConfig::Logs(logs.clone());
                tasks.insert((device.id.clone(), task.adapter()), task);
            }
        }
    }
    tasks
}

/// The effective settings of each running task, for the twin's reported state.
impl DevicePlane {
    /// Ids of devices whose logs are being followed now.
    #[must_use]
    pub fn following_logs(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .running
            .keys()
            .filter(|(_, adapter)| *adapter == "logs")
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// Runs the device plane's tasks.
pub struct DevicePlane {
    registry: Arc<Registry>,
    sinks: Sinks,
    running: HashMap<(String, &'static str), Running>,
}

/// Where the device tasks deliver, one sink per adapter in this build.
#[derive(Debug, Clone)]
pub struct Sinks {
    /// Modbus readings and link events.
    #[cfg(feature = "modbus")]
    pub modbus: Arc<ModbusIngest>,
    /// Log chunks.
    #[cfg(feature = "logfile")]
    pub logs: Arc<LogIngest>,
}

impl std::fmt::Debug for DevicePlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePlane")
            .field("tasks", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl DevicePlane {
    /// A plane with no tasks yet.
    #[must_use]
    pub fn new(registry: Arc<Registry>, sinks: Sinks) -> Self {
        DevicePlane {
            registry,
            sinks,
            running: HashMap::new(),
        }
    }

    /// Makes the running tasks match `devices` under `overrides` (see the module doc).
    pub async fn apply(&mut self, devices: &[DeviceConfig], overrides: &Overrides) {
        let (added, removed) = self
            .registry
            .apply(devices.iter().map(DeviceConfig::declaration).collect());
        for id in &added {
            tracing::info!(device = %id, "device added");
        }
        for id in &removed {
            tracing::info!(device = %id, "device removed");
        }
        let mut wanted = effective(devices, overrides);
        let stale: Vec<_> = self
            .running
            .iter()
            .filter(|(key, running)| wanted.get(*key) != Some(&running.config))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                stop(&key, running).await;
            }
        }
        wanted.retain(|key, _| !self.running.contains_key(key));
        for (key, config) in wanted {
            let task = self.start(&key.0, config.clone());
            tracing::info!(device = %key.0, adapter = key.1, "device task started");
            self.running.insert(key, task);
        }
    }

    fn start(&self, device_id: &str, config: TaskConfig) -> Running {
        let (stop, stopped) = watch::channel(false);
        let device_id = device_id.to_owned();
        let task = match config.clone() {
            #[cfg(feature = "modbus")]
            TaskConfig::Modbus(modbus_config) => {
                let sink = self.sinks.modbus.clone();
                tokio::spawn(async move {
                    let id = device_id.clone();
                    if let Err(e) =
                        modbus::run_device(device_id, modbus_config, sink, stopped).await
                    {
                        // Validated with the config, so not expected; the device stays
                        // unpolled and says so.
                        tracing::error!(device = %id, error = %e, "Modbus poller stopped");
                    }
                })
            }
            #[cfg(feature = "logfile")]
            TaskConfig::Logs(log_config) => {
                let sink = self.sinks.logs.clone();
                tokio::spawn(async move {
                    let id = device_id.clone();
                    if let Err(e) = logfile::follow(device_id, log_config, sink, stopped).await {
                        tracing::error!(device = %id, error = %e, "log follower stopped");
                    }
                })
            }
        };
        Running { config, stop, task }
    }

    /// Stops every task: all are told at once, then each gets what is left of one
    /// shared [`STOP_GRACE`].
    pub async fn shutdown(mut self) {
        let all: Vec<_> = self.running.drain().collect();
        for (_, running) in &all {
            let _ = running.stop.send(true);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for (key, running) in all {
            let mut task = running.task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(device = %key.0, adapter = key.1, "device task did not stop in time; aborted");
                task.abort();
            }
        }
    }
}

async fn stop(key: &(String, &'static str), running: Running) {
    let _ = running.stop.send(true);
    let mut task = running.task;
    if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
        tracing::warn!(device = %key.0, adapter = key.1, "device task did not stop in time; aborted");
        task.abort();
    }
}
