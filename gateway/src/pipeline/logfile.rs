//! Log shipping: chunks from the log-file follower pass the free-text PHI rules and are
//! spooled together with the follower's checkpoint, in one transaction
//! ([`Spool::append_with_meta`]) — so after a crash the follower resumes exactly after
//! the last lines stored: none lost, none repeated.
//!
//! Patient-first: before a chunk is stored, log shipping for the device must be allowed
//! ([`Registry::wait_until_allowed`]). While the device is in procedure the follower is
//! held (its file keeps growing on the device's disk, nothing is read ahead); after
//! [`DEFER_WAIT`] the chunk is refused as busy and the follower retries the same chunk
//! after its back-off, so it also notices a shutdown.

use std::sync::Arc;
use std::time::Duration;

use wardgate_device_adapters::logfile::{Checkpoint, LogChunk, LogSink, SinkError};
use wardgate_proto::DeviceIdentity;

use crate::devices::{NonClinicalWork, Registry};
use crate::phi::freetext::FreeTextRules;
use crate::spool::{Spool, SpoolError};

/// Longest wait for patient-first before a chunk is handed back to the follower.
pub const DEFER_WAIT: Duration = Duration::from_secs(10);

/// The spool meta key of a device's log checkpoint.
#[must_use]
pub fn checkpoint_key(device_id: &str) -> String {
    format!("logfile.{device_id}")
}

/// The sink every log follower ships to.
#[derive(Debug)]
pub struct LogIngest {
    spool: Spool,
    registry: Arc<Registry>,
    rules: Arc<FreeTextRules>,
}

impl LogIngest {
    /// Ship through `rules` into `spool`, asking `registry` for patient-first.
    #[must_use]
    pub fn new(spool: Spool, registry: Arc<Registry>, rules: Arc<FreeTextRules>) -> Self {
        LogIngest {
            spool,
            registry,
            rules,
        }
    }
}

fn sink_error(e: &SpoolError) -> SinkError {
    match e {
        SpoolError::Full { .. } | SpoolError::Closed => SinkError::Busy(e.to_string()),
        other => SinkError::Failed(other.to_string()),
    }
}

impl LogSink for LogIngest {
    async fn load_checkpoint(&self, device_id: &str) -> Result<Option<Checkpoint>, SinkError> {
        let stored = self
            .spool
            .get_meta(&checkpoint_key(device_id))
            .await
            .map_err(|e| sink_error(&e))?;
        match stored {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                // Written by us; unreadable means a newer format or damage. Starting over
                // from the configured start position is the documented fallback.
                SinkError::Failed(format!("stored log checkpoint unreadable: {e}"))
            }),
        }
    }

    async fn ship(&self, device_id: &str, chunk: LogChunk) -> Result<(), SinkError> {
        if !chunk.lines.is_empty() {
            let allowed = tokio::time::timeout(
                DEFER_WAIT,
                self.registry
                    .wait_until_allowed(device_id, NonClinicalWork::LogShipping),
            )
            .await;
            if allowed.is_err() {
                return Err(SinkError::Busy(
                    "patient-first: device in procedure, log shipping deferred".into(),
                ));
            }
        }
        let device = DeviceIdentity {
            id: device_id.to_owned(),
            application: None,
            eui64: None,
        };
        let had_lines = !chunk.lines.is_empty();
        let sanitized = self
            .rules
            .sanitize_chunk(&device, chunk)
            .map_err(|e| SinkError::Failed(e.to_string()))?;
        let records: Vec<_> = sanitized.record.into_iter().collect();
        self.spool
            .append_with_meta(records, &checkpoint_key(device_id), sanitized.checkpoint)
            .await
            .map_err(|e| sink_error(&e))?;
        if had_lines {
            self.registry.data_seen(device_id);
        }
        Ok(())
    }
}
