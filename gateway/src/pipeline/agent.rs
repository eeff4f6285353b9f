//! Agent ingest: what a device's agent posts through the agent API, made durable before
//! the API answers 2xx.
//!
//! - State reports move the device in the registry; the resulting state-change record is
//!   spooled before the answer (if that fails, the registry keeps the new state, the
//!   record goes to the transition recorder, and the agent gets 503 and retries).
//! - Telemetry passes the device-record rules (names and units must be identifier
//!   tokens) and is spooled as one `measurements` record.
//! - Log lines pass the free-text rules and are spooled as one `log_lines` record —
//!   unless the patient-first rule defers log shipping for the device (it is in a
//!   procedure): then 503 with a Retry-After, and the agent keeps its lines.
//! - Settings are the device's `settings` table from the config, as last applied.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use wardgate_proto::{DeviceIdentity, Measurement};

use crate::agent_api::{AgentBackend, BackendError, StateReport};
use crate::devices::{Decision, Evidence, NonClinicalWork, Registry};
use crate::phi::freetext::FreeTextRules;
use crate::phi::Sanitized;
use crate::spool::{Spool, SpoolError};

/// How long an agent is asked to wait when the spool cannot take data now.
const RETRY_STORAGE: Duration = Duration::from_secs(5);
/// How long an agent is asked to wait with its logs while its device is in procedure.
const RETRY_PATIENT_FIRST: Duration = Duration::from_secs(60);

/// Settings each device may read, by device id.
pub type DeviceSettings = HashMap<String, serde_json::Map<String, serde_json::Value>>;

/// The agent API's backend.
pub struct AgentIngest {
    spool: Spool,
    registry: Arc<Registry>,
    free_text: Arc<FreeTextRules>,
    settings: RwLock<DeviceSettings>,
    updates: Option<Arc<dyn crate::agent_api::UpdatesBackend>>,
}

impl std::fmt::Debug for AgentIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIngest")
            .field("updates", &self.updates.is_some())
            .finish_non_exhaustive()
    }
}

impl AgentIngest {
    /// The backend over the gateway's spool, registry and free-text rules.
    #[must_use]
    pub fn new(
        spool: Spool,
        registry: Arc<Registry>,
        free_text: Arc<FreeTextRules>,
        settings: DeviceSettings,
    ) -> Self {
        AgentIngest {
            spool,
            registry,
            free_text,
            settings: RwLock::new(settings),
            updates: None,
        }
    }

    /// Serves device updates through `updates` (the updates manager's backend).
    #[must_use]
    pub fn with_updates(mut self, updates: Arc<dyn crate::agent_api::UpdatesBackend>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Replaces the readable settings (config reload).
    pub fn set_settings(&self, settings: DeviceSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = settings;
    }

    async fn store(&self, record: Sanitized) -> Result<(), BackendError> {
        self.spool
            .append(record)
            .await
            .map(drop)
            .map_err(storage_error)
    }
}

fn storage_error(e: SpoolError) -> BackendError {
    match e {
        SpoolError::TooLarge { .. } => BackendError::Refused {
            reason: e.to_string(),
        },
        SpoolError::Full { .. } => BackendError::Unavailable {
            reason: "gateway storage full".into(),
            retry_after: RETRY_STORAGE,
        },
        SpoolError::Closed => BackendError::Unavailable {
            reason: "gateway shutting down".into(),
            retry_after: RETRY_STORAGE,
        },
        other => {
            tracing::error!(error = %other, "spool append failed");
            BackendError::Unavailable {
                reason: "gateway storage error".into(),
                retry_after: RETRY_STORAGE,
            }
        }
    }
}

impl AgentBackend for AgentIngest {
    fn updates(&self) -> Option<Arc<dyn crate::agent_api::UpdatesBackend>> {
        self.updates.clone()
    }

    async fn report_state(&self, device_id: &str, report: StateReport) -> Result<(), BackendError> {
        if let Some(code) = &report.reason {
            Sanitized::check_reason_code(code).map_err(|e| BackendError::Refused {
                reason: e.to_string(),
            })?;
        }
        let evidence = Evidence::Reported {
            state: report.state,
            reason: report.reason,
        };
        let Some((_, change)) = self.registry.evidence_for_caller(device_id, &evidence) else {
            // The device was removed from the config after the API authenticated it.
            return Err(BackendError::Refused {
                reason: "device is no longer configured".into(),
            });
        };
        self.registry.data_seen(device_id);
        let Some(change) = change else {
            return Ok(());
        };
        let record =
            Sanitized::device_state(change.clone()).map_err(|e| BackendError::Refused {
                reason: e.to_string(),
            })?;
        if let Err(e) = self.store(record).await {
            self.registry.record_later(change);
            return Err(e);
        }
        Ok(())
    }

    async fn telemetry(
        &self,
        device_id: &str,
        measurements: Vec<Measurement>,
    ) -> Result<(), BackendError> {
        let record =
            Sanitized::measurements(device_id, "agent", false, measurements).map_err(|e| {
                BackendError::Refused {
                    reason: e.to_string(),
                }
            })?;
        self.store(record).await?;
        self.registry.data_seen(device_id);
        Ok(())
    }

    async fn logs(
        &self,
        device_id: &str,
        file: String,
        lines: Vec<String>,
    ) -> Result<(), BackendError> {
        if let Decision::Defer(state) = self
            .registry
            .decide(device_id, NonClinicalWork::LogShipping)
        {
            return Err(BackendError::Unavailable {
                reason: format!(
                    "patient-first: the device is {}; send logs when it is not",
                    state.name()
                ),
                retry_after: RETRY_PATIENT_FIRST,
            });
        }
        let device = DeviceIdentity {
            id: device_id.to_owned(),
            application: None,
            eui64: None,
        };
        let record = self
            .free_text
            .sanitize_log_lines(&device, &file, lines)
            .map_err(|e| BackendError::Refused {
                reason: e.to_string(),
            })?;
        self.store(record).await?;
        self.registry.data_seen(device_id);
        Ok(())
    }

    async fn settings(
        &self,
        device_id: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, BackendError> {
        Ok(self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device_id)
            .cloned()
            .unwrap_or_default())
    }
}
