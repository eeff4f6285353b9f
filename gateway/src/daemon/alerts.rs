//! Gateway alerts: conditions the site's operators must know about (a quarantined spool,
//! a refused config edit, a refused cloud setting, a device answering Modbus
//! exceptions). Each alert is logged, kept in a short in-memory list for the status page,
//! and spooled as a `gateway_alert` record for the cloud.
//!
//! Alert text is gateway-made: codes, device ids, keys, reasons. Never device payloads.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::phi::Sanitized;
use crate::spool::Spool;
use crate::status::snapshot::Alert;

/// Alerts kept for the status page (newest first).
pub const KEPT: usize = 50;

/// The gateway's alert channel.
#[derive(Debug)]
pub struct Alerts {
    spool: Spool,
    recent: Mutex<VecDeque<Alert>>,
}

impl Alerts {
    /// Alerts that go to `spool`.
    #[must_use]
    pub fn new(spool: Spool) -> Self {
        Alerts {
            spool,
            recent: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// Logs, keeps and spools an alert. Failure to spool is logged (the log line and the
    /// status page still carry it).
    pub async fn raise(&self, code: &str, message: String) {
        tracing::warn!(alert = code, "{message}");
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == KEPT {
                recent.pop_back();
            }
            recent.push_front(Alert {
                at_ms: crate::devices::unix_ms(),
                code: code.to_owned(),
                message: message.clone(),
            });
        }
        match Sanitized::gateway_alert(code, &message) {
            Ok(record) => {
                if let Err(e) = self.spool.append(record).await {
                    tracing::error!(alert = code, error = %e, "could not spool the alert");
                }
            }
            Err(e) => tracing::error!(alert = code, error = %e, "could not encode the alert"),
        }
    }

    /// The kept alerts, newest first.
    #[must_use]
    pub fn recent(&self) -> Vec<Alert> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
