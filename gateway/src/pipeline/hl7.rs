//! HL7 ingest: PHI rules, then a durable spool append, then (in the listener) the ACK.

use std::net::SocketAddr;
use std::sync::Arc;

use wardgate_device_adapters::hl7::{Hl7Sink, PcdMessage, Refusal};

use crate::devices::Registry;
use crate::phi::Hl7Rules;
use crate::spool::{Spool, SpoolError};

/// The sink the MLLP listener delivers parsed PCD messages to.
#[derive(Debug)]
pub struct Hl7Ingest {
    rules: Hl7Rules,
    spool: Spool,
    registry: Option<Arc<Registry>>,
}

impl Hl7Ingest {
    /// Ingest through `rules` into `spool`.
    #[must_use]
    pub fn new(rules: Hl7Rules, spool: Spool) -> Self {
        Hl7Ingest {
            rules,
            spool,
            registry: None,
        }
    }

    /// Also tell `registry` when a declared device (matched by its MSH-3 application)
    /// sent data, so its state and "last data seen" follow HL7 traffic.
    #[must_use]
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }
}

impl Hl7Sink for Hl7Ingest {
    async fn deliver(&self, message: PcdMessage, peer: SocketAddr) -> Result<(), Refusal> {
        let declared = match (&self.registry, &message.header().application) {
            (Some(registry), Some(app)) => registry.hl7_device(app.trim()),
            _ => None,
        };
        let record = self.rules.sanitize(message, peer).map_err(|e| {
            tracing::error!(error = %e, "PHI stage failed");
            Refusal::Unavailable {
                text: "internal error".into(),
            }
        })?;
        match self.spool.append(record).await {
            Ok(_) => {
                if let (Some(registry), Some(device)) = (&self.registry, declared) {
                    registry.data_seen(&device);
                }
                Ok(())
            }
            Err(e) => Err(refusal_for(&e)),
        }
    }
}

/// What a device is told when its record could not be stored. Every case is AR (the
/// device keeps the message and retries), never AE: the message itself was fine.
fn refusal_for(e: &SpoolError) -> Refusal {
    let text = match e {
        SpoolError::Full { .. } => "gateway storage full",
        SpoolError::Closed => "gateway shutting down",
        SpoolError::TooLarge { .. } => "record too large",
        _ => {
            tracing::error!(error = %e, "spool append failed");
            "gateway storage error"
        }
    };
    Refusal::Unavailable { text: text.into() }
}
