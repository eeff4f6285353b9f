//! The demo's imaging path end to end: a stand-in cloud imaging ingest (the reference
//! bulk upload receiver, [`crate::receive`], in process, mutual TLS with the demo PKI),
//! and the run of the simulated CT scanner ([`super::modality`]) against the gateway,
//! ending with what arrived in the cloud next to what the scanner sent.
//!
//! The path under test is the production one: the scanner's C-STORE reaches the
//! gateway's DICOM receiver (`[dicom]`), the gateway de-identifies the object into its
//! outbox (`[phi.dicom]`) and its bulk uploader sends it over QUIC (`[bulk_upload]`) to
//! the ingest, which verifies and commits `dicom/<id>` and `dicom/<id>.meta.json`.
//!
//! Invariants:
//! - The scanner sends only after the gateway acknowledged an HL7 message of the same
//!   patient, so the cloud already holds that patient's vital signs under a pseudonym the
//!   image's pseudonym can be compared with. A stop before that cancels the scan; a stop
//!   after it does not (the image is part of the run being judged).
//! - Every file the ingest commits is scanned for planted identifiers as it arrives (the
//!   image and its record), and the whole ingest directory again at the end
//!   ([`super::leak::LeakLedger::scan_ingest_dir`]); a planted identifier there is a leak
//!   like any other.
//! - What the scanner sent is shown only in the column marked as staying on the hospital
//!   LAN; the other column shows only bytes read back from the ingest's committed file.
//! - Waiting is bounded: for the C-STORE by socket timeouts ([`STORE_TIMEOUT`]), for the
//!   arrival by [`ARRIVAL_TIMEOUT`], whatever the demo's stop signal says.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wardgate_proto::upload::FileKind;

use super::certs::DemoPki;
use super::dicom_walk::{parse_dataset, parse_part10, Elements, Tag};
use super::leak::LeakLedger;
use super::modality::{self, CtImage, GATEWAY_AE_TITLE, IMAGE_SIZE, MODALITY_AE_TITLE};
use super::patients::{ImagingStudy, SyntheticPatient};
use super::tally::DemoTally;
use super::viewer::{truncate, Console, Style};
use crate::receive::{ReceiveError, Receiver, ReceiverConfig, ReceiverStats};

/// Socket timeout of the scanner's association.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the gateway's success answer the image may take to reach the ingest.
pub const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);
/// The scan happens this long after the patient's first acknowledged HL7 message.
const SCAN_DELAY: Duration = Duration::from_secs(1);
/// How often the ingest's directory is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long the comparison waits for the cloud to have the patient's vital signs.
const LINK_WAIT: Duration = Duration::from_secs(3);
/// Width of the attribute name column.
const LABEL_WIDTH: usize = 24;
/// Width of the "modality sent" column.
const SENT_WIDTH: usize = 42;
/// Indent of the detail lines, as the viewer's log detail lines.
const DETAIL_INDENT: &str = "                  ";
/// Size of the picture of the received pixels, in characters.
const PREVIEW_COLUMNS: usize = 32;
const PREVIEW_ROWS: usize = 16;
/// Window of the picture, Hounsfield units: air to bone.
const PREVIEW_WINDOW: (f64, f64) = (-1000.0, 600.0);
const PREVIEW_RAMP: &[u8] = b" .:-=+*#%@";

const PATIENT_NAME: Tag = (0x0010, 0x0010);
const PATIENT_ID: Tag = (0x0010, 0x0020);
const ISSUER_OF_PATIENT_ID: Tag = (0x0010, 0x0021);
const PATIENT_BIRTH_DATE: Tag = (0x0010, 0x0030);
const PATIENT_ADDRESS: Tag = (0x0010, 0x1040);
const INSTITUTION_NAME: Tag = (0x0008, 0x0080);
const REFERRING_PHYSICIAN_NAME: Tag = (0x0008, 0x0090);
const ACCESSION_NUMBER: Tag = (0x0008, 0x0050);
const STUDY_DATE: Tag = (0x0008, 0x0020);
const OTHER_DATES: [Tag; 3] = [(0x0008, 0x0021), (0x0008, 0x0022), (0x0008, 0x0023)];
const SOP_INSTANCE_UID: Tag = (0x0008, 0x0018);
const STUDY_INSTANCE_UID: Tag = (0x0020, 0x000D);
const OTHER_UIDS: [Tag; 2] = [(0x0020, 0x000E), (0x0020, 0x0052)];
const PATIENT_IDENTITY_REMOVED: Tag = (0x0012, 0x0062);
const DEIDENTIFICATION_METHOD_CODES: Tag = (0x0012, 0x0064);
const CODE_VALUE: Tag = (0x0008, 0x0100);
const CODE_MEANING: Tag = (0x0008, 0x0104);
const ROWS: Tag = (0x0028, 0x0010);
const COLUMNS: Tag = (0x0028, 0x0011);
const BITS_ALLOCATED: Tag = (0x0028, 0x0100);
const RESCALE_INTERCEPT: Tag = (0x0028, 0x1052);
const RESCALE_SLOPE: Tag = (0x0028, 0x1053);
const PIXEL_DATA: Tag = (0x7FE0, 0x0010);
/// DeidentificationMethodCodeSequence code of the basic profile.
const BASIC_PROFILE_CODE: &str = "113100";

/// The stand-in cloud imaging ingest: the reference receiver on a loopback UDP port.
#[derive(Debug)]
pub struct ImagingIngest {
    addr: SocketAddr,
    dir: PathBuf,
    stats: Arc<ReceiverStats>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ImagingIngest {
    /// Starts the receiver on `127.0.0.1:0` storing into `dir`, with the PKI's ingest
    /// certificate and the demo CA as the only CA gateways' certificates may chain to.
    ///
    /// # Errors
    /// A [`ReceiveError`] if the certificates, the directory or the socket are unusable.
    pub fn start(pki: &DemoPki, dir: PathBuf) -> Result<ImagingIngest, ReceiveError> {
        let config = ReceiverConfig::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dir.clone(),
            pki.ingest.cert_file.clone(),
            pki.ingest.key_file.clone(),
            pki.ca_file.clone(),
        );
        let receiver = Receiver::bind(&config)?;
        let addr = receiver.local_addr()?;
        let stats = receiver.stats();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) = receiver.serve(stop_rx).await {
                tracing::error!(error = %e, "demo imaging ingest stopped");
            }
        });
        Ok(ImagingIngest {
            addr,
            dir,
            stats,
            stop,
            task,
        })
    }

    /// The UDP address gateways upload to.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory it stores into.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Uploads it refused as protocol violations or whose handshake failed (a demo
    /// misconfiguration shows here).
    #[must_use]
    pub fn failures(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.handshake_failures.load(Relaxed) + self.stats.protocol_errors.load(Relaxed)
    }

    /// Closes every connection and waits for transfers to checkpoint.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "demo imaging ingest task failed");
        }
    }
}

/// What the demo found in the image the cloud received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// The ingest's file id.
    pub file_id: String,
    /// Size of the committed file.
    pub bytes: u64,
    /// The pseudonym in PatientID, if one was there.
    pub patient: Option<String>,
    /// Whether the cloud holds vital signs under the same pseudonym (imaging and
    /// monitoring data of the patient link without naming them).
    pub linked_to_vital_signs: bool,
    /// Whether the pixel data arrived byte for byte as sent.
    pub pixels_intact: bool,
    /// Checks that failed (fixed texts, never values); empty if de-identified as expected.
    pub problems: Vec<String>,
    /// Planted identifiers found in the file and its record.
    pub leaked: usize,
    /// From the C-STORE to the commit at the ingest.
    pub after: Duration,
}

impl ImageReport {
    /// De-identified as expected, pixels intact, nothing planted in it.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.pixels_intact && self.leaked == 0
    }
}

/// What the simulated scanner needs for its run.
#[derive(Debug, Clone)]
pub struct ModalityRun {
    /// The gateway's DICOM receiver (`None`: it did not start one, which is a failure).
    pub gateway: Option<SocketAddr>,
    /// The ingest's directory.
    pub ingest_dir: PathBuf,
    /// The device id the gateway knows the scanner by.
    pub device: String,
    /// The patient in the scanner (monitor 0's).
    pub patient: SyntheticPatient,
    /// Their study.
    pub study: ImagingStudy,
    /// Their bed, for the output.
    pub bed: String,
}

/// Shared with the demo's orchestration: the report, once the image arrived.
pub type ReportSlot = Arc<Mutex<Option<ImageReport>>>;

/// Runs the scanner: waits for `patient_known` (or `stop`), stores the image, waits
/// for it at the ingest, checks and shows it, and records the outcome in `tally` and
/// `report`.
#[allow(clippy::too_many_arguments)]
pub async fn run_modality(
    run: ModalityRun,
    patient_known: impl Future<Output = ()> + Send,
    tally: Arc<DemoTally>,
    console: Arc<Console>,
    ledger: Arc<LeakLedger>,
    report: ReportSlot,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        () = patient_known => {}
        _ = stop.wait_for(|&s| s) => return,
    }
    // The patient is known: a stop now only shortens the wait, the scan still happens.
    tokio::select! {
        () = tokio::time::sleep(SCAN_DELAY) => {}
        _ = stop.wait_for(|&s| s) => {}
    }
    let device = run.device.as_str();
    let prefix = |label: &str| {
        format!(
            "{}  {}  {}",
            console.paint(Style::Dim, &console.elapsed()),
            console.paint(Style::Bold, label),
            console.paint(Style::Cyan, device)
        )
    };
    tally.image_sent();
    let Some(gateway) = run.gateway else {
        tally.image_answered(false);
        console.line(&console.paint(
            Style::Red,
            "image: the gateway runs no DICOM receiver; the CT scanner has nowhere to store",
        ));
        return;
    };
    let image = Arc::new(modality::ct_image(&run.patient, &run.study));
    let started = Instant::now();
    match modality::store(gateway, image.clone(), STORE_TIMEOUT).await {
        Ok(response) if response.stored() => {
            tally.image_answered(true);
            console.line(&format!(
                "{}  CT scanner stored an image of {}'s patient ({IMAGE_SIZE}×{IMAGE_SIZE}, 16 bit, \
                 {} bytes) with C-STORE {MODALITY_AE_TITLE} → {GATEWAY_AE_TITLE}@{gateway}: status \
                 {:#06x} {}",
                prefix("image"),
                run.bed,
                image.dataset.len(),
                response.status,
                console.paint(Style::Green, "success")
            ));
        }
        Ok(response) => {
            tally.image_answered(false);
            console.line(&console.paint(
                Style::Red,
                &format!(
                    "{}  C-STORE refused by the gateway: status {:#06x}",
                    prefix("image"),
                    response.status
                ),
            ));
            return;
        }
        Err(e) => {
            tally.image_answered(false);
            console.line(&console.paint(
                Style::Red,
                &format!("{}  C-STORE failed: {e}", prefix("image")),
            ));
            return;
        }
    }

    let Some(file_id) =
        wait_for_arrival(&run.ingest_dir, started + ARRIVAL_TIMEOUT, &stop, &console).await
    else {
        console.line(&console.paint(
            Style::Red,
            &format!(
                "{}  the image did not reach the cloud imaging ingest within {} s",
                prefix("image"),
                ARRIVAL_TIMEOUT.as_secs()
            ),
        ));
        return;
    };
    let after = started.elapsed();
    let kind = FileKind::Dicom.as_str();
    let data_path = run.ingest_dir.join(kind).join(&file_id);
    let meta_path = run
        .ingest_dir
        .join(kind)
        .join(format!("{file_id}.meta.json"));
    let (bytes, meta) = match (
        tokio::fs::read(&data_path).await,
        tokio::fs::read(&meta_path).await,
    ) {
        (Ok(bytes), Ok(meta)) => (bytes, meta),
        (Err(e), _) | (_, Err(e)) => {
            tally.image_received(false);
            console.line(&console.paint(
                Style::Red,
                &format!("{}  cannot read the received image: {e}", prefix("image")),
            ));
            return;
        }
    };
    let leaked = ledger.scan_ingest_file(&format!("{kind}/{file_id}"), &bytes)
        + ledger.scan_ingest_file(&format!("{kind}/{file_id}.meta.json"), &meta);
    let mut exam = examine(&image, &bytes, &meta, device);
    let linked = match &exam.pseudonym {
        Some(pseudonym) => wait_for_link(&tally, pseudonym).await,
        None => false,
    };
    exam.linked = linked;
    let outcome = ImageReport {
        file_id,
        bytes: bytes.len() as u64,
        patient: exam.pseudonym.clone(),
        linked_to_vital_signs: linked,
        pixels_intact: exam.pixels_intact,
        problems: exam.problems.clone(),
        leaked,
        after,
    };
    for line in render_arrival(&console, &prefix("image"), &outcome, &exam, &run.bed) {
        console.line(&line);
    }
    tally.image_received(outcome.passed());
    *report.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
}

/// Waits until the ingest has committed a DICOM file (its data file exists only after
/// its record was written), or `deadline`. Says once that it waits if the demo is
/// stopping meanwhile.
async fn wait_for_arrival(
    ingest_dir: &Path,
    deadline: Instant,
    stop: &watch::Receiver<bool>,
    console: &Console,
) -> Option<String> {
    let dir = ingest_dir.join(FileKind::Dicom.as_str());
    let mut announced = false;
    loop {
        if let Some(id) = committed_file(&dir).await {
            return Some(id);
        }
        if Instant::now() >= deadline {
            return None;
        }
        if *stop.borrow() && !announced {
            console.line("waiting for the CT image to reach the cloud imaging ingest…");
            announced = true;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The id of a committed file in the ingest's `dicom/` directory, if there is one.
async fn committed_file(dir: &Path) -> Option<String> {
    let mut entries = tokio::fs::read_dir(dir).await.ok()?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") || name.starts_with(".tmp-") {
            continue;
        }
        if entry.file_type().await.is_ok_and(|t| t.is_file()) {
            return Some(name);
        }
    }
    None
}

/// Whether the cloud has (or within [`LINK_WAIT`] gets) vital signs under `pseudonym`.
async fn wait_for_link(tally: &DemoTally, pseudonym: &str) -> bool {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        if tally.patient_seen(pseudonym) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One attribute shown: its name, the value sent, the value received, and whether the
/// received one is as the profile requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Attribute name.
    pub label: &'static str,
    /// What the scanner sent (stays on the LAN).
    pub sent: String,
    /// What the cloud received.
    pub received: String,
    /// Whether the received value is as expected.
    pub good: bool,
}

/// The comparison of what was sent with what arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Examination {
    /// The attributes shown.
    pub rows: Vec<Row>,
    /// Failed checks (fixed texts).
    pub problems: Vec<String>,
    /// PatientID as received, if any.
    pub pseudonym: Option<String>,
    /// Pixel data byte for byte as sent.
    pub pixels_intact: bool,
    /// The ingest's record, summarised.
    pub record: Option<String>,
    /// A picture of the received pixels, one string per line.
    pub preview: Vec<String>,
    /// Whether the pseudonym links to vital signs in the cloud (filled in by the caller).
    pub linked: bool,
}

/// How an attribute shows: `(removed)`, `(emptied)` or its value.
fn shown(value: Option<String>) -> String {
    match value {
        None => "(removed)".to_owned(),
        Some(v) if v.is_empty() => "(emptied)".to_owned(),
        Some(v) => v,
    }
}

/// Records `text` as a problem unless `ok`.
fn check(exam: &mut Examination, ok: bool, text: &str) {
    if !ok {
        exam.problems.push(text.to_owned());
    }
}

/// The profile removes, empties or replaces with a dummy: anything but the value sent.
/// (Whether a dummy is harmless is the leak check's to say.)
fn gone_or_replaced(value: Option<&String>, sent: Option<&String>) -> bool {
    value.is_none_or(|v| v.is_empty() || Some(v) != sent)
}

fn us(set: &Elements<'_>, tag: Tag) -> Option<u16> {
    match set.bytes(tag)? {
        [a, b] => Some(u16::from_le_bytes([*a, *b])),
        _ => None,
    }
}

fn ds(set: &Elements<'_>, tag: Tag) -> Option<f64> {
    set.text(tag)?.split('\\').next()?.trim().parse().ok()
}

fn sha_label(bytes: usize, digest: &[u8]) -> String {
    format!("{bytes} bytes, sha256 {}…", &hex::encode(digest)[..12])
}

/// Compares `image` (as sent) with the Part 10 file the ingest committed (`received`)
/// and its record (`record`, JSON), for `device`.
#[must_use]
pub fn examine(image: &CtImage, received: &[u8], record: &[u8], device: &str) -> Examination {
    let mut exam = Examination::default();
    let sent = match parse_dataset(&image.dataset) {
        Ok(set) => set,
        Err(e) => {
            exam.problems
                .push(format!("the demo's own image is unreadable: {e}"));
            return exam;
        }
    };
    let file = match parse_part10(received) {
        Ok(file) => file,
        Err(e) => {
            exam.problems
                .push(format!("the received file is not readable DICOM: {e}"));
            return exam;
        }
    };
    let got = &file.dataset;

    // The patient: both name and ID become the pseudonym.
    let pseudonym = got.text(PATIENT_ID).filter(|p| !p.is_empty());
    let sent_id = sent.text(PATIENT_ID);
    let replaced = pseudonym.is_some() && pseudonym != sent_id;
    check(
        &mut exam,
        replaced,
        "PatientID was not replaced by a pseudonym",
    );
    let name_is_pseudonym = got.text(PATIENT_NAME).is_some() && got.text(PATIENT_NAME) == pseudonym;
    check(
        &mut exam,
        name_is_pseudonym,
        "PatientName is not the pseudonym",
    );
    let short = |p: &str| format!("{}… (pseudonym)", p.chars().take(16).collect::<String>());
    exam.rows.push(Row {
        label: "PatientName",
        sent: shown(sent.text(PATIENT_NAME)),
        received: got
            .text(PATIENT_NAME)
            .filter(|_| name_is_pseudonym)
            .map_or_else(|| shown(got.text(PATIENT_NAME)), |p| short(&p)),
        good: name_is_pseudonym,
    });
    exam.rows.push(Row {
        label: "PatientID",
        sent: shown(sent_id),
        received: pseudonym
            .as_deref()
            .filter(|_| replaced)
            .map_or_else(|| shown(got.text(PATIENT_ID)), short),
        good: replaced,
    });

    // Identifying attributes the profile removes or empties.
    for (label, tag) in [
        ("IssuerOfPatientID", ISSUER_OF_PATIENT_ID),
        ("PatientBirthDate", PATIENT_BIRTH_DATE),
        ("PatientAddress", PATIENT_ADDRESS),
        ("InstitutionName", INSTITUTION_NAME),
        ("ReferringPhysicianName", REFERRING_PHYSICIAN_NAME),
        ("AccessionNumber", ACCESSION_NUMBER),
        ("StudyDate", STUDY_DATE),
    ] {
        let (value, sent_value) = (got.text(tag), sent.text(tag));
        let good = gone_or_replaced(value.as_ref(), sent_value.as_ref());
        if !good {
            exam.problems.push(format!("{label} was kept"));
        }
        let received = match value {
            Some(v) if !v.is_empty() && good => format!("{v} (dummy)"),
            other => shown(other),
        };
        exam.rows.push(Row {
            label,
            sent: shown(sent_value),
            received,
            good,
        });
    }
    let other_dates_gone = OTHER_DATES
        .iter()
        .all(|&tag| gone_or_replaced(got.text(tag).as_ref(), sent.text(tag).as_ref()));
    check(
        &mut exam,
        other_dates_gone,
        "a series, acquisition or content date was kept",
    );

    // UIDs: replaced by 2.25 UIDs (the standard's own UIDs are not in these attributes).
    let remapped = |tag: Tag| {
        got.text(tag)
            .is_some_and(|uid| uid.starts_with("2.25.") && Some(&uid) != sent.text(tag).as_ref())
    };
    let study_uid_ok = remapped(STUDY_INSTANCE_UID);
    exam.rows.push(Row {
        label: "StudyInstanceUID",
        sent: shown(sent.text(STUDY_INSTANCE_UID)),
        received: shown(got.text(STUDY_INSTANCE_UID)),
        good: study_uid_ok,
    });
    let uids_ok =
        study_uid_ok && remapped(SOP_INSTANCE_UID) && OTHER_UIDS.iter().all(|&tag| remapped(tag));
    check(&mut exam, uids_ok, "a UID was not replaced by a 2.25 UID");

    // What the gateway records about what it did.
    let removed = got.text(PATIENT_IDENTITY_REMOVED);
    let removed_ok = removed.as_deref() == Some("YES");
    check(&mut exam, removed_ok, "PatientIdentityRemoved is not YES");
    exam.rows.push(Row {
        label: "PatientIdentityRemoved",
        sent: shown(sent.text(PATIENT_IDENTITY_REMOVED)),
        received: shown(removed),
        good: removed_ok,
    });
    let codes: Vec<(String, String)> = got
        .items(DEIDENTIFICATION_METHOD_CODES)
        .iter()
        .map(|item| {
            (
                item.text(CODE_VALUE).unwrap_or_default(),
                item.text(CODE_MEANING).unwrap_or_default(),
            )
        })
        .collect();
    let basic = codes.iter().any(|(code, _)| code == BASIC_PROFILE_CODE);
    check(
        &mut exam,
        basic,
        "DeidentificationMethodCodeSequence lacks 113100 (basic profile)",
    );
    exam.rows.push(Row {
        label: "De-identification codes",
        sent: "(none)".to_owned(),
        received: if codes.is_empty() {
            "(none)".to_owned()
        } else {
            codes
                .iter()
                .map(|(code, meaning)| format!("{code} {meaning}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
        good: basic,
    });

    // The pixels: byte for byte.
    let pixels = got.bytes(PIXEL_DATA);
    let received_digest = pixels.map(|p| <[u8; 32]>::from(Sha256::digest(p)));
    let intact = received_digest == Some(image.pixel_sha256);
    exam.pixels_intact = intact;
    check(
        &mut exam,
        intact,
        "the pixel data differs from what was sent",
    );
    exam.rows.push(Row {
        label: "PixelData",
        sent: sha_label(image.pixel_bytes, &image.pixel_sha256),
        received: match (pixels, received_digest) {
            (Some(p), Some(digest)) if intact => {
                format!("{}, identical", sha_label(p.len(), &digest))
            }
            (Some(p), Some(digest)) => sha_label(p.len(), &digest),
            _ => "(removed)".to_owned(),
        },
        good: exam.pixels_intact,
    });
    if let Some(pixels) = pixels {
        exam.preview = preview(got, pixels);
    }

    // The ingest's record: pseudonymous metadata only, consistent with the file.
    match serde_json::from_slice::<serde_json::Value>(record) {
        Ok(json) => {
            let field = |pointer: &str| {
                json.pointer(pointer)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (patient, instance) = (
                field("/metadata/patient"),
                field("/metadata/sop_instance_uid"),
            );
            let consistent = field("/device") == device
                && Some(&patient) == pseudonym.as_ref()
                && Some(&instance) == got.text(SOP_INSTANCE_UID).as_ref();
            check(
                &mut exam,
                consistent,
                "the ingest's record does not match the file (device, patient or SOP instance)",
            );
            exam.record = Some(format!(
                "device {} · modality {} · patient {}… · SOP instance {}",
                field("/device"),
                field("/metadata/modality"),
                patient.chars().take(16).collect::<String>(),
                instance
            ));
        }
        Err(_) => {
            exam.problems
                .push("the ingest's record is not JSON".to_owned());
        }
    }
    exam.pseudonym = pseudonym;
    exam
}

/// A picture of 16-bit unsigned monochrome pixels, [`PREVIEW_COLUMNS`]×[`PREVIEW_ROWS`]
/// characters, each the mean of its block in the window [`PREVIEW_WINDOW`]. Empty if the
/// header does not describe such pixels.
fn preview(set: &Elements<'_>, pixels: &[u8]) -> Vec<String> {
    let (Some(rows), Some(columns), Some(16)) =
        (us(set, ROWS), us(set, COLUMNS), us(set, BITS_ALLOCATED))
    else {
        return Vec::new();
    };
    let (rows, columns) = (usize::from(rows), usize::from(columns));
    if rows == 0 || columns == 0 || pixels.len() < rows * columns * 2 {
        return Vec::new();
    }
    let intercept = ds(set, RESCALE_INTERCEPT).unwrap_or(0.0);
    let slope = ds(set, RESCALE_SLOPE).unwrap_or(1.0);
    let value = |x: usize, y: usize| {
        let at = (y * columns + x) * 2;
        f64::from(u16::from_le_bytes([pixels[at], pixels[at + 1]])) * slope + intercept
    };
    let span = |cell: usize, cells: usize, size: usize| {
        let start = cell * size / cells;
        (start, ((cell + 1) * size / cells).max(start + 1).min(size))
    };
    let (low, high) = PREVIEW_WINDOW;
    (0..PREVIEW_ROWS)
        .map(|cy| {
            let (y0, y1) = span(cy, PREVIEW_ROWS, rows);
            (0..PREVIEW_COLUMNS)
                .map(|cx| {
                    let (x0, x1) = span(cx, PREVIEW_COLUMNS, columns);
                    let (mut sum, mut n) = (0.0, 0.0);
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum += value(x, y);
                            n += 1.0;
                        }
                    }
                    let level = ((sum / n - low) / (high - low)).clamp(0.0, 1.0);
                    let steps = (PREVIEW_RAMP.len() - 1) as f64;
                    // `level` is within 0..=1, so the index is within the ramp.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let index = (level * steps).round() as usize;
                    char::from(PREVIEW_RAMP[index.min(PREVIEW_RAMP.len() - 1)])
                })
                .collect()
        })
        .collect()
}

/// The lines showing an arrival: a summary line, the sent/received table (the sent
/// column marked as staying on the LAN, the two columns separated by `→`), the ingest's
/// record, the picture, and the verdict.
#[must_use]
pub fn render_arrival(
    console: &Console,
    prefix: &str,
    report: &ImageReport,
    exam: &Examination,
    bed: &str,
) -> Vec<String> {
    let leak = if report.leaked == 0 {
        console.paint(Style::Green, "✓ no PHI")
    } else {
        console.paint(
            Style::Red,
            &format!("✗ {} PLANTED IDENTIFIER(S) IN THE FILE", report.leaked),
        )
    };
    let short_id: String = report.file_id.chars().take(12).collect();
    let mut lines = vec![format!(
        "{prefix}  arrived at the cloud imaging ingest over QUIC (mutual TLS): {}/{short_id}…, {} bytes  {leak}  {}",
        FileKind::Dicom.as_str(),
        report.bytes,
        console.paint(
            Style::Dim,
            &format!("{:.1} s after the C-STORE", report.after.as_secs_f64())
        )
    )];
    let detail = |text: &str| format!("{DETAIL_INDENT}│ {text}");
    lines.push(detail(&console.paint(
        Style::Dim,
        &format!(
            "{:<LABEL_WIDTH$} {:<SENT_WIDTH$}   {}",
            "", "modality sent (stays on the hospital LAN)", "cloud received"
        ),
    )));
    for row in &exam.rows {
        let sent = truncate(&row.sent, SENT_WIDTH);
        let mut received = row.received.clone();
        if row.label == "PatientID" && exam.linked {
            received.push_str(&format!(", as {bed}'s vital signs"));
        }
        let received = if row.good {
            console.paint(Style::Green, &received)
        } else {
            console.paint(Style::Red, &format!("{received}  ✗"))
        };
        lines.push(detail(&format!(
            "{} {} → {received}",
            console.paint(Style::Dim, &format!("{:<LABEL_WIDTH$}", row.label)),
            console.paint(Style::Yellow, &format!("{sent:<SENT_WIDTH$}")),
        )));
    }
    if let Some(record) = &exam.record {
        lines.push(detail(&format!(
            "{} {record}",
            console.paint(Style::Dim, &format!("{:<LABEL_WIDTH$}", "ingest record"))
        )));
    }
    if !exam.preview.is_empty() {
        lines.push(detail(
            &console.paint(Style::Dim, "the image as the cloud received it:"),
        ));
        // Rows of air above and below the patient say nothing.
        let blank = |row: &&String| row.trim().is_empty();
        let first = exam.preview.iter().position(|r| !blank(&r)).unwrap_or(0);
        let last = exam
            .preview
            .iter()
            .rposition(|r| !blank(&r))
            .map_or(0, |i| i + 1);
        for row in exam.preview.get(first..last).unwrap_or_default() {
            lines.push(detail(&format!("    {}", row.trim_end())));
        }
    }
    let verdict = if report.passed() {
        console.paint(
            Style::Green,
            "✓ de-identified as the basic profile requires: identifiers removed, emptied or \
             replaced by dummies, UIDs replaced, dates gone, pixels intact",
        )
    } else {
        let mut problems = report.problems.clone();
        if report.leaked > 0 {
            problems.push(format!(
                "{} planted identifier(s) in the file or its record",
                report.leaked
            ));
        }
        console.paint(Style::Red, &format!("✗ {}", problems.join("; ")))
    };
    lines.push(detail(&verdict));
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::super::leak::LeakScanner;
    use super::*;
    use crate::phi::dicom::{DeidOptions, DeidOutcome, DicomRules};
    use crate::phi::PseudonymKey;

    const TODAY: i64 = 20_259;

    fn fixture() -> (SyntheticPatient, ImagingStudy, CtImage) {
        let patient = SyntheticPatient::new(0, TODAY);
        let study = ImagingStudy::new(0, TODAY);
        let image = modality::ct_image(&patient, &study);
        (patient, study, image)
    }

    /// The received file as the gateway writes it: its own de-identification rules.
    fn deidentified(image: &CtImage) -> Vec<u8> {
        let rules =
            DicomRules::new(PseudonymKey::from_bytes(&[7; 32]), DeidOptions::default()).unwrap();
        let mut out = Vec::new();
        let outcome = rules
            .deidentify_dataset(
                &image.dataset,
                super::super::dicom_walk::EXPLICIT_VR_LITTLE_ENDIAN,
                &mut out,
            )
            .unwrap();
        assert!(matches!(outcome, DeidOutcome::Deidentified(_)));
        out
    }

    fn record(pseudonym: &str, instance: &str) -> Vec<u8> {
        serde_json::json!({
            "file_id": "f1",
            "device": "ct-1",
            "metadata": {"patient": pseudonym, "sop_instance_uid": instance, "modality": "CT"},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn the_gateways_output_passes_every_check_and_carries_no_planted_identifier() {
        let (patient, study, image) = fixture();
        let file = deidentified(&image);
        let parsed = parse_part10(&file).unwrap();
        let pseudonym = parsed.dataset.text(PATIENT_ID).unwrap();
        let instance = parsed.dataset.text(SOP_INSTANCE_UID).unwrap();
        let exam = examine(&image, &file, &record(&pseudonym, &instance), "ct-1");
        assert!(exam.problems.is_empty(), "{:?}", exam.problems);
        assert!(exam.pixels_intact);
        assert_eq!(exam.pseudonym.as_deref(), Some(pseudonym.as_str()));
        assert!(exam.rows.iter().all(|r| r.good), "{:?}", exam.rows);
        assert_eq!(exam.preview.len(), PREVIEW_ROWS);
        assert!(exam.preview.iter().all(|r| r.len() == PREVIEW_COLUMNS));
        assert!(exam.preview.iter().any(|r| r.contains('@')), "bone shows");
        assert!(exam.preview[0].trim().is_empty(), "air above the patient");

        let scanner = LeakScanner::new(
            patient
                .planted_identifiers()
                .into_iter()
                .chain(study.planted_identifiers())
                .collect(),
        );
        assert!(scanner.scan(&file).is_empty());

        // The rendering keeps planted values left of the arrow.
        let console = Console::new(Box::new(std::io::sink()), false);
        let report = ImageReport {
            file_id: "f1".into(),
            bytes: file.len() as u64,
            patient: exam.pseudonym.clone(),
            linked_to_vital_signs: true,
            pixels_intact: true,
            problems: Vec::new(),
            leaked: 0,
            after: Duration::from_millis(700),
        };
        let mut exam = exam;
        exam.linked = true;
        let lines = render_arrival(&console, "t+ 1.0s  image  ct-1", &report, &exam, "Bed 01");
        let text = lines.join("\n");
        assert!(text.contains("✓ de-identified"), "{text}");
        assert!(text.contains("as Bed 01's vital signs"), "{text}");
        assert!(
            scanner.scan(text.as_bytes()).len() >= 5,
            "the LAN side shows what was sent"
        );
        for line in &lines {
            let cloud_side = line
                .split_once('→')
                .map_or(line.as_str(), |(_, right)| right);
            assert!(
                scanner.scan(cloud_side.as_bytes()).is_empty(),
                "planted identifier outside the LAN column: {line}"
            );
        }
    }

    #[test]
    fn an_image_sent_through_unchanged_fails_the_checks() {
        let (_, _, image) = fixture();
        // A "de-identification" that forgot everything: the sent data set as a Part 10 file.
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        file.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        file.extend_from_slice(&u16::try_from(ts.len()).unwrap().to_le_bytes());
        file.extend_from_slice(ts);
        file.extend_from_slice(&image.dataset);
        let exam = examine(&image, &file, b"not json", "ct-1");
        assert!(exam.pixels_intact);
        for expected in [
            "PatientID was not replaced by a pseudonym",
            "InstitutionName was kept",
            "a UID was not replaced by a 2.25 UID",
            "PatientIdentityRemoved is not YES",
            "the ingest's record is not JSON",
        ] {
            assert!(
                exam.problems.iter().any(|p| p == expected),
                "{expected}: {:?}",
                exam.problems
            );
        }
        let garbage = examine(&image, b"garbage", b"{}", "ct-1");
        assert!(!garbage.pixels_intact && !garbage.problems.is_empty());
    }
}
