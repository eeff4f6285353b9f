//! Start-up of the imaging path: the bulk upload outbox and its QUIC sender
//! (`[bulk_upload]`), and the DICOM receiver (`[dicom]`) whose objects are de-identified
//! into that outbox (`pipeline::dicom`).
//!
//! Order matters for durability: the outbox is open (its leftovers cleaned, every waiting
//! file re-offered) before the receiver accepts an association, so an object acknowledged
//! to a modality always has an outbox to be in.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::alerts::Alerts;
use super::status_source::ImagingHandles;
use super::DaemonError;
use crate::bulk::outbox::Outbox;
use crate::bulk::sender::Sender;
use crate::bulk::UploadGate;
use crate::config::Config;
use crate::devices::Registry;
use crate::phi::PseudonymKey;

/// The outbox directory's name under `gateway.data_dir`.
pub const OUTBOX_DIR: &str = "outbox";

/// What [`start_imaging`] started.
pub(super) struct Imaging {
    /// The DICOM receiver's bound address, if it runs.
    pub dicom_addr: Option<SocketAddr>,
    /// The tasks, stopped with the gateway's shutdown signal.
    pub tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// What the status endpoint reads.
    pub handles: Option<ImagingHandles>,
}

/// Starts the outbox and sender if `[bulk_upload]` is configured, then the DICOM
/// receiver if `[dicom]` is (validation guarantees the latter implies the former).
pub(super) async fn start_imaging(
    config: &Config,
    key: &PseudonymKey,
    registry: &Arc<Registry>,
    alerts: &Arc<Alerts>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Imaging, DaemonError> {
    let mut imaging = Imaging {
        dicom_addr: None,
        tasks: Vec::new(),
        handles: None,
    };
    let Some(upload) = &config.bulk_upload else {
        return Ok(imaging);
    };
    let data_dir = &config.gateway.data_dir;
    let outbox =
        Arc::new(open_outbox(&data_dir.join(OUTBOX_DIR), upload.outbox_budget_bytes).await?);
    tracing::info!(
        files = outbox.len(),
        bytes = outbox.used_bytes(),
        "bulk upload outbox open"
    );
    let gate: Arc<dyn UploadGate> = registry.clone();
    let sender = Sender::new(upload.clone(), outbox.clone(), gate)
        .map_err(|e| DaemonError::Imaging(e.to_string()))?;
    #[cfg_attr(not(feature = "dicom"), allow(unused_mut))]
    let mut handles = ImagingHandles {
        outbox: outbox.clone(),
        sender: sender.stats(),
        #[cfg(feature = "dicom")]
        dicom: None,
    };
    let stop = shutdown.clone();
    imaging.tasks.push((
        "bulk uploader",
        tokio::spawn(async move {
            if let Err(e) = sender.run(stop).await {
                tracing::error!(error = %e, "bulk uploader stopped");
            }
        }),
    ));

    #[cfg(feature = "dicom")]
    if let Some(dicom) = &config.dicom {
        let (addr, task, stats) =
            start_dicom(config, dicom, key, outbox, registry, alerts, shutdown).await?;
        imaging.dicom_addr = Some(addr);
        imaging.tasks.push(("DICOM receiver", task));
        handles.dicom = Some(stats);
    }
    #[cfg(not(feature = "dicom"))]
    let _ = (key, alerts);
    imaging.handles = Some(handles);
    Ok(imaging)
}

async fn open_outbox(dir: &Path, budget: u64) -> Result<Outbox, DaemonError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        create_private_dir(&dir)?;
        Outbox::open(&dir, budget).map_err(|e| DaemonError::Imaging(e.to_string()))
    })
    .await
    .map_err(|e| DaemonError::Internal(format!("outbox open task: {e}")))?
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DaemonError::Imaging(format!("creating {}: {e}", dir.display())))
}

#[cfg(feature = "dicom")]
async fn start_dicom(
    config: &Config,
    dicom: &wardgate_device_adapters::dicom::DicomScpConfig,
    key: &PseudonymKey,
    outbox: Arc<Outbox>,
    registry: &Arc<Registry>,
    alerts: &Arc<Alerts>,
    shutdown: &watch::Receiver<bool>,
) -> Result<
    (
        SocketAddr,
        JoinHandle<()>,
        Arc<crate::pipeline::dicom::DicomIngestStats>,
    ),
    DaemonError,
> {
    use crate::phi::dicom::DicomRules;
    use crate::pipeline::dicom::{DicomIngest, QUARANTINE_DIR};
    use wardgate_device_adapters::dicom::DicomScpStats;

    let imaging = |e: &dyn std::fmt::Display| DaemonError::Imaging(e.to_string());
    let options = config.phi.dicom.clone();
    let rules = DicomRules::new(key.clone(), options.clone()).map_err(|e| imaging(&e))?;
    let quarantine = if options.quarantine_budget_bytes > 0 {
        let kept_rules = DicomRules::new(
            key.clone(),
            crate::phi::dicom::DeidOptions {
                allow_burned_in_annotation: true,
                ..options.clone()
            },
        )
        .map_err(|e| imaging(&e))?;
        let dir = config.gateway.data_dir.join(QUARANTINE_DIR);
        let quarantine = open_outbox(&dir, options.quarantine_budget_bytes).await?;
        if !quarantine.is_empty() {
            tracing::warn!(
                objects = quarantine.len(),
                dir = %dir.display(),
                "quarantined DICOM objects are waiting for review"
            );
        }
        Some((kept_rules, quarantine))
    } else {
        None
    };
    {
        let dir = dicom.temp_dir.clone();
        tokio::task::spawn_blocking(move || create_private_dir(&dir))
            .await
            .map_err(|e| DaemonError::Internal(format!("temp dir task: {e}")))??;
    }
    let sink = Arc::new(DicomIngest::new(
        rules,
        quarantine,
        outbox,
        registry.clone(),
        alerts.clone(),
    ));
    let ingest_stats = sink.stats();
    let listener = tokio::net::TcpListener::bind(dicom.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: dicom.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: dicom.listen,
        source,
    })?;
    tracing::info!(%addr, ae_title = %dicom.ae_title, "DICOM receiver listening");
    let scp_config = dicom.clone();
    let stats = Arc::new(DicomScpStats::default());
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) =
            wardgate_device_adapters::dicom::serve(listener, scp_config, sink, stats, stop).await
        {
            tracing::error!(error = %e, "DICOM receiver stopped");
        }
    });
    Ok((addr, task, ingest_stats))
}
