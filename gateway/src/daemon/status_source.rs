//! The daemon's [`StatusSource`]: figures for the status page, `/metrics`,
//! `wardgate status` and the twin's reported state, read from the running components
//! without blocking (atomics, short locks, watch channels).

use std::sync::Arc;

use tokio::sync::watch;
use wardgate_device_adapters::hl7::ListenerStats;

use super::alerts::Alerts;
use crate::devices::{unix_ms, Registry};
use crate::spool::Spool;
use crate::status::snapshot::{
    DeviceStatus, GatewayInfo, Hl7Figures, SpoolFigures, StatusSnapshot, UplinkFigures,
};
use crate::status::StatusSource;
use crate::uplink::UplinkStatus;

/// Live handles on the gateway's components.
#[derive(Debug, Clone)]
pub struct GatewayStatus {
    /// `gateway.id`.
    pub gateway_id: String,
    /// When this process started (Unix ms).
    pub started_at_ms: u64,
    /// The spool.
    pub spool: Spool,
    /// The uplink's status.
    pub uplink: watch::Receiver<UplinkStatus>,
    /// The HL7 listener's counters.
    pub hl7: Arc<ListenerStats>,
    /// Devices.
    pub registry: Arc<Registry>,
    /// Recent alerts.
    pub alerts: Arc<Alerts>,
}

impl StatusSource for GatewayStatus {
    fn snapshot(&self) -> StatusSnapshot {
        let now = unix_ms();
        StatusSnapshot {
            generated_at_ms: now,
            gateway: GatewayInfo::new(self.gateway_id.clone(), self.started_at_ms, now),
            devices: self
                .registry
                .snapshot()
                .into_iter()
                .map(|d| DeviceStatus {
                    id: d.id,
                    kind: d.kind,
                    adapter: d.adapters,
                    state: d.state,
                    state_since_ms: d.state_since_ms,
                    last_data_ms: d.last_data_ms,
                })
                .collect(),
            spool: SpoolFigures::from_stats(&self.spool.stats(), now),
            uplink: UplinkFigures::from(&*self.uplink.borrow()),
            hl7: Hl7Figures::from(self.hl7.snapshot()),
            // No update staging in this build yet (issue 5): the page says so.
            patches: None,
            alerts: self.alerts.recent(),
        }
    }
}
