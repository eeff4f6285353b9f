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
    DeviceStatus, GatewayInfo, Hl7Figures, ImagingFigures, SpoolFigures, StatusSnapshot,
    UplinkFigures,
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
    /// The imaging path, when `[bulk_upload]` is configured.
    pub imaging: Option<ImagingHandles>,
    /// The updates manager's view, when `[updates]` is configured.
    pub updates: Option<watch::Receiver<super::updates::UpdatesView>>,
}

/// Live handles on the imaging path.
#[derive(Debug, Clone)]
pub struct ImagingHandles {
    /// The bulk upload outbox.
    pub outbox: Arc<crate::bulk::outbox::Outbox>,
    /// The uploader's counters.
    pub sender: Arc<crate::bulk::sender::SenderStats>,
    /// The DICOM ingest's counters, when `[dicom]` is configured.
    #[cfg(feature = "dicom")]
    pub dicom: Option<Arc<crate::pipeline::dicom::DicomIngestStats>>,
}

impl ImagingHandles {
    fn figures(&self, now_ms: u64) -> ImagingFigures {
        let sent = self.sender.snapshot();
        let entries = self.outbox.entries();
        #[cfg(feature = "dicom")]
        let (stored, quarantined, refused) = self.dicom.as_ref().map_or((0, 0, 0), |d| {
            let get =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            (get(&d.stored), get(&d.quarantined), get(&d.refused))
        });
        #[cfg(not(feature = "dicom"))]
        let (stored, quarantined, refused) = (0, 0, 0);
        ImagingFigures {
            outbox_files: u64::try_from(entries.len()).unwrap_or(u64::MAX),
            outbox_bytes: self.outbox.used_bytes(),
            outbox_budget_bytes: self.outbox.budget_bytes(),
            oldest_file_age_secs: entries
                .iter()
                .map(|m| m.created_ms)
                .min()
                .map(|oldest| now_ms.saturating_sub(oldest) / 1000),
            files_uploaded: sent.files_committed,
            bytes_sent: sent.bytes_sent,
            hash_mismatches: sent.hash_mismatches,
            deferrals: sent.deferrals,
            connection_failures: sent.connection_failures,
            dicom_stored: stored,
            dicom_quarantined: quarantined,
            dicom_refused: refused,
        }
    }
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
            imaging: self.imaging.as_ref().map(|i| i.figures(now)),
            // No update staging in this build yet (issue 5): the page says so.
            patches: self
                .updates
                .as_ref()
                .map(|view| staged_patches(&view.borrow())),
            alerts: self.alerts.recent(),
        }
    }
}

/// The staged targets with the rollouts that offer them, for the status page.
fn staged_patches(view: &super::updates::UpdatesView) -> Vec<crate::status::snapshot::StagedPatch> {
    view.staged
        .iter()
        .map(|staged| crate::status::snapshot::StagedPatch {
            target: staged.name.clone(),
            bytes: staged.length,
            sha256: hex::encode(staged.sha256),
            rollouts: view
                .rollouts
                .iter()
                .filter(|r| r.target == staged.name)
                .map(|r| {
                    let halted = r
                        .halted
                        .as_ref()
                        .map(|h| format!(", halted: {h}"))
                        .unwrap_or_default();
                    format!(
                        "{}: {}/{} installed, {} failed, {} deferred{halted}",
                        r.assignment_id, r.installed, r.members, r.failed, r.deferred
                    )
                })
                .collect(),
        })
        .collect()
}
