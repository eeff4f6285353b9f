//! The device plane's control loop: applies the config's `[[device]]` list (at start
//! and on each valid reload) and the cloud's accepted desired settings, and keeps the
//! twin's reported document current.
//!
//! Invariants:
//! - Desired settings are applied only after they are durable (spool meta
//!   [`OVERRIDES_KEY`]) and audited; a restart applies the same overrides again.
//! - A complete desired document (generic retained document, IoT Hub full twin, AWS
//!   shadow) replaces every override; a patch or delta changes only the keys it names;
//!   a `null` value returns that setting to the site configuration's value.
//! - Overrides of devices that are no longer declared are kept but have no effect (a
//!   device removed and re-added gets them back); the twin refuses new ones for them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::alerts::Alerts;
use crate::audit::AuditLog;
use crate::config::{Config, DeviceConfig};
use crate::devices::Registry;
use crate::pipeline::agent::{AgentIngest, DeviceSettings};
use crate::pipeline::device_plane::{DeviceOverrides, DevicePlane, Overrides};
use crate::spool::Spool;
use crate::twin::{DesiredOutcome, DesiredSetting, DeviceReport, SpoolReport, TwinReport};

/// Spool meta key of the accepted overrides (JSON).
pub const OVERRIDES_KEY: &str = "twin.overrides";

/// How often the reported document is rebuilt (the uplink publishes it only when it
/// changed, and at most every few seconds).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Loads the overrides stored by an earlier run.
pub async fn load_overrides(spool: &Spool) -> Overrides {
    match spool.get_meta(OVERRIDES_KEY).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(error = %e, "stored twin overrides unreadable; using the site configuration");
            Overrides::new()
        }),
        Ok(None) => Overrides::new(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read stored twin overrides; using the site configuration");
            Overrides::new()
        }
    }
}

/// Applies `outcome` to `overrides`; returns whether anything changed.
#[must_use]
pub fn merge(overrides: &mut Overrides, outcome: &DesiredOutcome) -> bool {
    let before = overrides.clone();
    if outcome.complete {
        overrides.clear();
    }
    for setting in &outcome.accepted {
        let entry = overrides.entry(setting.device().to_owned()).or_default();
        match setting {
            DesiredSetting::PollInterval { interval_ms, .. } => {
                entry.poll_interval_ms = *interval_ms
            }
            DesiredSetting::LogShipping { enabled, .. } => entry.log_shipping = *enabled,
        }
    }
    overrides.retain(|_, o| *o != DeviceOverrides::default());
    *overrides != before
}

fn settings_of(devices: &[DeviceConfig]) -> DeviceSettings {
    devices
        .iter()
        .filter(|d| !d.settings.is_empty())
        .map(|d| (d.id.clone(), d.settings.clone()))
        .collect()
}

/// The reported document's content.
fn report(
    registry: &Registry,
    devices: &[DeviceConfig],
    overrides: &Overrides,
    spool: &Spool,
    updates: Option<&super::updates::UpdatesView>,
) -> TwinReport {
    let views = registry.snapshot();
    TwinReport {
        updates: updates.map_or_else(Vec::new, |u| {
            u.rollouts
                .iter()
                .map(|r| crate::twin::RolloutReport {
                    assignment_id: r.assignment_id.clone(),
                    target: r.target.clone(),
                    members: r.members,
                    installed: r.installed,
                    failed: r.failed,
                    deferred: r.deferred,
                    halted: r.halted.clone(),
                })
                .collect()
        }),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        spool: SpoolReport::from_stats(&spool.stats()),
        devices: views
            .iter()
            .map(|view| {
                let config = devices.iter().find(|d| d.id == view.id);
                let o = overrides.get(&view.id);
                #[cfg(feature = "modbus")]
                let poll = config.and_then(|c| c.modbus.as_ref()).map(|m| {
                    o.and_then(|o| o.poll_interval_ms)
                        .unwrap_or(m.poll_interval_ms)
                });
                #[cfg(not(feature = "modbus"))]
                let poll = None;
                let logs = config
                    .and_then(|c| c.logs.as_ref())
                    .map(|_| o.and_then(|o| o.log_shipping).unwrap_or(true));
                let mut device = DeviceReport::from_view(view, poll, logs);
                device.update = updates.and_then(|u| u.devices.get(&view.id).cloned());
                device
            })
            .collect(),
    }
}

/// What the control loop works with.
pub struct PlaneLoop {
    /// The device tasks.
    pub plane: DevicePlane,
    /// The device registry.
    pub registry: Arc<Registry>,
    /// The spool (overrides are stored in its meta table).
    pub spool: Spool,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Alerts.
    pub alerts: Arc<Alerts>,
    /// The agent API's backend, whose readable settings follow the config, and its
    /// runtime, whose device credentials do.
    pub agent: Option<(Arc<AgentIngest>, crate::agent_api::AgentApiRuntime)>,
    /// Valid reloaded configurations.
    pub configs: mpsc::Receiver<Config>,
    /// Outcomes of the cloud's desired documents.
    pub outcomes: mpsc::Receiver<DesiredOutcome>,
    /// Where the reported document goes.
    pub reports: watch::Sender<Option<TwinReport>>,
    /// The updates manager, which takes the cloud's update assignments (absent when
    /// `[updates]` is not configured: assignments are then refused and audited here).
    pub updates: Option<mpsc::Sender<crate::twin::core::UpdateInstruction>>,
    /// The updates manager's view (rollouts), reported in the twin.
    pub updates_view: Option<watch::Receiver<super::updates::UpdatesView>>,
}

impl PlaneLoop {
    /// Runs until `shutdown`, then stops every device task.
    pub async fn run(
        mut self,
        mut devices: Vec<DeviceConfig>,
        mut overrides: Overrides,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.plane.apply(&devices, &overrides).await;
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(config) = self.configs.recv() => {
                    devices = config.devices;
                    if let Some((agent, runtime)) = &self.agent {
                        agent.set_settings(settings_of(&devices));
                        if let Err(e) = runtime.reload_devices(&crate::config::devices::agent_devices(&devices)) {
                            self.alerts.raise("config.refused", format!("agent device credentials not reloaded, the running ones stay: {e}")).await;
                        }
                    }
                    self.plane.apply(&devices, &overrides).await;
                    tracing::info!(devices = devices.len(), "device configuration reloaded");
                }
                Some(outcome) = self.outcomes.recv() => {
                    if let Err(e) = crate::twin::audit_outcome(&self.audit, &outcome).await {
                        // Not applied unless audited.
                        self.alerts.raise("audit.failed", format!("cannot write the audit log; desired settings from the cloud not applied: {e}")).await;
                        continue;
                    }
                    for refusal in &outcome.refused {
                        self.alerts.raise("twin.refused", format!("desired setting {} refused: {}", refusal.key, refusal.reason)).await;
                    }
                    self.forward_update_instructions(&outcome).await;
                    let mut next = overrides.clone();
                    if !merge(&mut next, &outcome) {
                        continue;
                    }
                    let stored = match serde_json::to_vec(&next) {
                        Ok(bytes) => self.spool.put_meta(OVERRIDES_KEY, bytes).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = stored {
                        self.alerts.raise("twin.not_applied", format!("desired settings not applied: cannot store them: {e}")).await;
                        continue;
                    }
                    overrides = next;
                    for setting in &outcome.accepted {
                        tracing::info!(key = %setting.key(), value = %setting.value_text(), "desired setting applied");
                    }
                    self.plane.apply(&devices, &overrides).await;
                }
                _ = tick.tick() => self.registry.sweep_silent(),
                Ok(()) = updates_changed(&mut self.updates_view) => {}
            }
            let updates = self.updates_view.as_ref().map(|v| v.borrow().clone());
            let _ = self.reports.send(Some(report(
                &self.registry,
                &devices,
                &overrides,
                &self.spool,
                updates.as_ref(),
            )));
        }
        self.plane.shutdown().await;
    }
}

impl PlaneLoop {
    /// Hands the outcome's update instructions to the updates manager, which validates
    /// and audits each; without one, each is refused and audited here.
    async fn forward_update_instructions(&self, outcome: &DesiredOutcome) {
        for instruction in &outcome.update_instructions {
            match &self.updates {
                Some(updates) => {
                    if updates.send(instruction.clone()).await.is_err() {
                        tracing::error!(assignment = %instruction.id, "updates manager stopped; instruction dropped");
                    }
                }
                None => {
                    let key = format!(
                        "{}.assignments.{}",
                        crate::twin::core::UPDATES,
                        instruction.id
                    );
                    let detail = "refused: this gateway has no [updates] section";
                    if let Err(e) = self
                        .audit
                        .append_async(crate::twin::AUDIT_REFUSED, &key, detail)
                        .await
                    {
                        tracing::error!(error = %e, "cannot audit a refused update instruction");
                    }
                    self.alerts
                        .raise(
                            "updates.refused",
                            format!(
                                "update assignment {} refused: no [updates] section",
                                instruction.id
                            ),
                        )
                        .await;
                }
            }
        }
    }
}

/// Resolves when the updates manager's view changed; never without one.
async fn updates_changed(
    view: &mut Option<watch::Receiver<super::updates::UpdatesView>>,
) -> Result<(), watch::error::RecvError> {
    match view {
        Some(view) => view.changed().await,
        None => std::future::pending().await,
    }
}

/// The readable settings of each device, from the config.
#[must_use]
pub fn device_settings(config: &Config) -> DeviceSettings {
    settings_of(&config.devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::DesiredSource;

    fn outcome(complete: bool, accepted: Vec<DesiredSetting>) -> DesiredOutcome {
        DesiredOutcome {
            source: if complete {
                DesiredSource::GenericDocument
            } else {
                DesiredSource::AzurePatch
            },
            complete,
            version: None,
            accepted,
            refused: Vec::new(),
            update_instructions: Vec::new(),
        }
    }

    fn poll(device: &str, ms: Option<u64>) -> DesiredSetting {
        DesiredSetting::PollInterval {
            device: device.into(),
            interval_ms: ms,
        }
    }

    #[test]
    fn patches_merge_and_complete_documents_replace() {
        let mut o = Overrides::new();
        assert!(merge(&mut o, &outcome(false, vec![poll("a", Some(5000))])));
        assert!(merge(
            &mut o,
            &outcome(
                false,
                vec![DesiredSetting::LogShipping {
                    device: "b".into(),
                    enabled: Some(false)
                }]
            )
        ));
        assert_eq!(o.len(), 2);
        assert!(
            !merge(&mut o, &outcome(false, vec![poll("a", Some(5000))])),
            "no change"
        );
        // null: back to the config's value, and the empty entry disappears.
        assert!(merge(&mut o, &outcome(false, vec![poll("a", None)])));
        assert!(!o.contains_key("a"));
        // A complete document names everything that is desired: b's override goes.
        assert!(merge(&mut o, &outcome(true, vec![poll("c", Some(2000))])));
        assert_eq!(o.keys().collect::<Vec<_>>(), vec!["c"]);
    }
}
