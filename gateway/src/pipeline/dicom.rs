//! DICOM ingest: the C-STORE receiver's sink. Every received object is de-identified
//! (PS3.15 Annex E, `phi::dicom`) on its way into the bulk upload outbox.
//!
//! # Invariants
//! - **Nothing identified rests on disk.** The receiver keeps the object as it arrives
//!   only in its encrypted temporary file (key in memory); this stage reads it through
//!   the decrypting reader and writes only the de-identified output, straight into an
//!   outbox temporary file. Memory stays bounded whatever the object's size: only the
//!   attributes other than bulk data are held (`phi::dicom`'s streaming path).
//! - **Success only after durability.** [`DicomSink::store`] returns `Ok` only once the
//!   de-identified object is in the outbox (data and manifest fsynced, renamed, directory
//!   fsynced), or, for a quarantined object, in the quarantine. The modality is told
//!   "stored" only then, and otherwise gets a failure status and sends again:
//!   out of budget → 0xA700 (out of resources), unparseable → 0xC000, anything else →
//!   0x0110.
//! - **Quarantine.** Objects the profile must not upload (BurnedInAnnotation or
//!   RecognizableVisualFeatures = YES, or a risky modality, unless the site opted in) are
//!   not put in the outbox. They are kept in a second, separately budgeted directory
//!   (`<data_dir>/dicom-quarantine`, same layout as the outbox, never uploaded) with their
//!   attributes de-identified — only their pixels may still show burned-in text — and
//!   reported as a `dicom.quarantined` alert. With a quarantine budget of 0 nothing is
//!   kept and the object is only reported. A full quarantine answers "out of resources",
//!   so nothing is lost silently.
//! - Logs and alerts name the device, the reason and pseudonymous UIDs only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wardgate_device_adapters::dicom::{DicomSink, ReceivedObject, StoreFailure};
use wardgate_proto::upload::{FileKind, Metadata};

use crate::bulk::outbox::{Outbox, OutboxError, PendingFile};
use crate::daemon::alerts::Alerts;
use crate::devices::{unix_ms, Registry};
use crate::phi::dicom::{DeidOutcome, DeidentifiedObject, DicomError, DicomRules};

/// The quarantine directory's name under `gateway.data_dir`.
pub const QUARANTINE_DIR: &str = "dicom-quarantine";

/// Counters of the DICOM ingest, for the status page and tests.
#[derive(Debug, Default)]
pub struct DicomIngestStats {
    /// Objects de-identified into the outbox.
    pub stored: AtomicU64,
    /// Objects quarantined (kept or only reported).
    pub quarantined: AtomicU64,
    /// Objects refused (the modality got a failure status).
    pub refused: AtomicU64,
}

/// The DICOM receiver's sink (see the module doc).
pub struct DicomIngest {
    inner: Arc<Inner>,
    alerts: Arc<Alerts>,
    stats: Arc<DicomIngestStats>,
}

struct Inner {
    rules: DicomRules,
    /// The same rules with burned-in annotation allowed: what a quarantined object's
    /// kept copy is written with (its attributes de-identified like any other).
    quarantine_rules: Option<DicomRules>,
    outbox: Arc<Outbox>,
    quarantine: Option<Outbox>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for DicomIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomIngest")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What happened to one object.
enum Stored {
    Outbox(DeidentifiedObject),
    Quarantined {
        reason: String,
        kept: Option<DeidentifiedObject>,
    },
}

impl DicomIngest {
    /// A sink that de-identifies with `rules` into `outbox`, quarantines into
    /// `quarantine` (with `quarantine_rules`, the site's rules with burned-in annotation
    /// allowed; both `None`: quarantined objects are only reported), attributes objects to
    /// devices through `registry` and reports through `alerts`.
    #[must_use]
    pub fn new(
        rules: DicomRules,
        quarantine: Option<(DicomRules, Outbox)>,
        outbox: Arc<Outbox>,
        registry: Arc<Registry>,
        alerts: Arc<Alerts>,
    ) -> Self {
        let (quarantine_rules, quarantine) = match quarantine {
            Some((rules, outbox)) => (Some(rules), Some(outbox)),
            None => (None, None),
        };
        DicomIngest {
            inner: Arc::new(Inner {
                rules,
                quarantine_rules,
                outbox,
                quarantine,
                registry,
            }),
            alerts,
            stats: Arc::new(DicomIngestStats::default()),
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Arc<DicomIngestStats> {
        self.stats.clone()
    }
}

impl DicomSink for DicomIngest {
    async fn store(&self, object: ReceivedObject) -> Result<(), StoreFailure> {
        let inner = self.inner.clone();
        let device = inner.device_of(&object.calling_ae_title);
        let task_device = device.clone();
        let result =
            tokio::task::spawn_blocking(move || inner.store_blocking(&object, task_device))
                .await
                .unwrap_or_else(|e| {
                    Err(StoreFailure::ProcessingFailure(format!(
                        "de-identification task failed: {e}"
                    )))
                });
        match result {
            Ok(Stored::Outbox(object)) => {
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%device, bytes = object.bytes, "DICOM object de-identified into the outbox");
                Ok(())
            }
            Ok(Stored::Quarantined { reason, kept }) => {
                self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
                let message = match &kept {
                    Some(object) => format!(
                        "device {device}: a DICOM object was quarantined, not uploaded ({reason}); \
                         kept in {QUARANTINE_DIR} as SOP instance {}",
                        object.sop_instance_uid
                    ),
                    None => format!(
                        "device {device}: a DICOM object was quarantined, not uploaded ({reason}); \
                         not kept (no quarantine space configured)"
                    ),
                };
                self.alerts.raise("dicom.quarantined", message).await;
                Ok(())
            }
            Err(failure) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%device, status = format_args!("{:#06x}", failure.status()), reason = failure.text(), "DICOM object refused");
                Err(failure)
            }
        }
    }
}

impl Inner {
    /// The device an association's objects belong to: the declared device with this
    /// calling AE title, else the AE title itself (made safe as an id).
    fn device_of(&self, calling_ae_title: &str) -> String {
        if let Some(id) = self.registry.dicom_device(calling_ae_title) {
            self.registry.data_seen(&id);
            return id;
        }
        let id: String = calling_ae_title
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("dicom-ae-{id}")
    }

    fn store_blocking(
        &self,
        object: &ReceivedObject,
        device: String,
    ) -> Result<Stored, StoreFailure> {
        let now_ms = unix_ms();
        let pending = self
            .outbox
            .begin(FileKind::Dicom, device.clone(), false, now_ms)
            .map_err(outbox_failure)?;
        match deidentify_into(&self.rules, object, pending)? {
            Written::Committed(deidentified) => Ok(Stored::Outbox(deidentified)),
            Written::Quarantine(reason) => {
                let kept = match (&self.quarantine_rules, &self.quarantine) {
                    (Some(rules), Some(quarantine)) => {
                        let pending = quarantine
                            .begin(FileKind::Dicom, device, false, now_ms)
                            .map_err(outbox_failure)?;
                        match deidentify_into(rules, object, pending)? {
                            Written::Committed(deidentified) => Some(deidentified),
                            // Burned-in annotation is allowed in these rules.
                            Written::Quarantine(_) => None,
                        }
                    }
                    _ => None,
                };
                Ok(Stored::Quarantined { reason, kept })
            }
        }
    }
}

enum Written {
    Committed(DeidentifiedObject),
    Quarantine(String),
}

/// De-identifies the received object into `pending` and commits it, or drops it (and
/// with it every byte written) if the object is to be quarantined or fails.
fn deidentify_into(
    rules: &DicomRules,
    object: &ReceivedObject,
    mut pending: PendingFile<'_>,
) -> Result<Written, StoreFailure> {
    let mut input = object.open_dataset().map_err(|e| {
        StoreFailure::ProcessingFailure(format!("cannot read the received object: {e}"))
    })?;
    match rules.deidentify_dataset_stream(&mut input, &object.transfer_syntax_uid, &mut pending) {
        Ok(DeidOutcome::Deidentified(deidentified)) => {
            pending
                .commit(metadata_of(&deidentified))
                .map_err(outbox_failure)?;
            Ok(Written::Committed(deidentified))
        }
        Ok(DeidOutcome::Quarantine { reason }) => Ok(Written::Quarantine(reason.to_string())),
        Err(DicomError::Write(e)) => Err(outbox_failure(pending.write_error(e))),
        Err(DicomError::Read(e)) => Err(StoreFailure::ProcessingFailure(format!(
            "cannot read the received object: {e}"
        ))),
        Err(e @ (DicomError::UnsupportedTransferSyntax { .. } | DicomError::Unsupported(_))) => {
            Err(StoreFailure::CannotUnderstand(e.to_string()))
        }
        Err(e @ DicomError::Missing(_)) => Err(StoreFailure::DataSetMismatch(e.to_string())),
        // Malformed, truncated, too large a header: the message names an offset or a
        // limit, never a value.
        Err(e) => Err(StoreFailure::CannotUnderstand(e.to_string())),
    }
}

/// What the receiver learns about an object besides its bytes: pseudonymous identifiers
/// only (every UID is a mapped one).
fn metadata_of(object: &DeidentifiedObject) -> Metadata {
    let mut metadata = Metadata::new();
    let mut put = |key: &str, value: &str| {
        metadata.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
    };
    put("sop_class_uid", &object.sop_class_uid);
    put("sop_instance_uid", &object.sop_instance_uid);
    if let Some(study) = &object.study_instance_uid {
        put("study_instance_uid", study);
    }
    if let Some(series) = &object.series_instance_uid {
        put("series_instance_uid", series);
    }
    if let Some(modality) = &object.modality {
        put("modality", modality);
    }
    put("patient", &object.patient.0);
    metadata
}

fn outbox_failure(e: OutboxError) -> StoreFailure {
    if e.is_out_of_resources() {
        StoreFailure::OutOfResources(e.to_string())
    } else {
        StoreFailure::ProcessingFailure(e.to_string())
    }
}
