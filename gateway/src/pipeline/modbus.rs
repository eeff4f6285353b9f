//! Modbus ingest: readings become `measurements` records (spooled before the poller
//! moves on), link events move the device's state in the registry, and exception
//! responses become gateway alerts (once per change, as the adapter reports them).

use std::sync::Arc;

use wardgate_device_adapters::modbus::{LinkEvent, ModbusSink, Readings, SinkError};
use wardgate_proto::Measurement;

use crate::daemon::alerts::Alerts;
use crate::devices::{Evidence, Registry};
use crate::phi::Sanitized;
use crate::spool::Spool;

/// The sink every Modbus poller delivers to.
#[derive(Debug, Clone)]
pub struct ModbusIngest {
    spool: Spool,
    registry: Arc<Registry>,
    alerts: Arc<Alerts>,
}

impl ModbusIngest {
    /// Ingest into `spool`, reporting reachability to `registry` and exceptions to `alerts`.
    #[must_use]
    pub fn new(spool: Spool, registry: Arc<Registry>, alerts: Arc<Alerts>) -> Self {
        ModbusIngest {
            spool,
            registry,
            alerts,
        }
    }
}

impl ModbusSink for ModbusIngest {
    async fn readings(&self, device_id: &str, readings: Readings) -> Result<(), SinkError> {
        let measurements = readings
            .points
            .into_iter()
            .map(|p| Measurement {
                name: p.name,
                value: p.value,
                units: p.units,
                at_ms: p.at_ms,
            })
            .collect();
        let record = Sanitized::measurements(device_id, "modbus", readings.heartbeat, measurements)
            .map_err(|e| SinkError(e.to_string()))?;
        self.spool
            .append(record)
            .await
            .map_err(|e| SinkError(e.to_string()))?;
        self.registry.data_seen(device_id);
        Ok(())
    }

    async fn link(&self, device_id: &str, event: LinkEvent) {
        match &event {
            LinkEvent::Online => {
                self.registry.evidence(device_id, &Evidence::Reachable);
            }
            LinkEvent::Offline { .. } => {
                self.registry.evidence(
                    device_id,
                    &Evidence::Unreachable {
                        reason: event.to_string(),
                    },
                );
            }
            LinkEvent::Exception { .. } | LinkEvent::ExceptionCleared { .. } => {
                let code = if matches!(event, LinkEvent::Exception { .. }) {
                    "modbus.exception"
                } else {
                    "modbus.exception_cleared"
                };
                self.alerts
                    .raise(code, format!("device {device_id}: {event}"))
                    .await;
            }
        }
    }
}
