//! The spool as the uplink's record source.

use wardgate_proto::RecordId;

use crate::spool::{Spool, StoredRecord};
use crate::uplink::{OutgoingRecord, RecordSource, UplinkError};

impl RecordSource for Spool {
    async fn lease(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutgoingRecord>, UplinkError> {
        let records = Spool::lease(self, max_records, max_bytes)
            .await
            .map_err(|e| UplinkError::Source(e.to_string()))?;
        Ok(records.into_iter().map(outgoing).collect())
    }

    async fn ack(&self, ids: Vec<RecordId>) -> Result<(), UplinkError> {
        Spool::ack(self, ids)
            .await
            .map_err(|e| UplinkError::Source(e.to_string()))
    }

    fn release_leases(&self) {
        Spool::release_leases(self);
    }

    async fn wait_for_pending(&self) {
        Spool::wait_for_pending(self).await;
    }
}

fn outgoing(r: StoredRecord) -> OutgoingRecord {
    OutgoingRecord {
        id: r.id,
        device: r.device,
        priority: r.priority,
        accepted_ms: r.accepted_ms,
        payload: r.payload,
    }
}
