//! The demo's device plane beyond HL7: a simulated cath-lab chiller polled over Modbus TCP
//! ([`super::chiller`], `[device.modbus]`), a mapping system whose free-text log the
//! gateway follows and scrubs ([`super::mapping_log`], `[device.logs]`), and a CT scanner
//! that stores an image with DICOM C-STORE ([`super::modality`], `dicom_ae_title`), which
//! the gateway de-identifies and uploads to a stand-in cloud imaging ingest
//! ([`super::imaging`], `[dicom]`, `[bulk_upload]`). All are declared as `[[device]]`
//! entries (and sections) in the gateway's generated config, exactly as a site would.
//!
//! Invariants:
//! - The simulated devices exist before the gateway starts (its config names the chiller's
//!   address and the log directory) and stop after it: the chiller is never "offline"
//!   because of the demo's own stop order.
//! - The log device has no `hl7_application`: all simulated monitors send the same MSH-3
//!   application (`WGDEMO-MON`), so no one application belongs to the mapping system, and a
//!   shared one would make every monitor's traffic count as the mapping system's.
//! - Each simulated device is compiled only with the adapter that serves it (cargo
//!   features `modbus`, `logfile`, `dicom`); without any the demo is HL7 only.
//! - The imaging ingest, like the chiller, exists before the gateway starts (its config
//!   names the ingest's address) and stops after it, so an upload in flight at the end is
//!   the gateway's to finish or resume, never cut by the demo's stop order.

use std::path::Path;
#[cfg(feature = "logfile")]
use std::path::PathBuf;
#[cfg(any(feature = "logfile", feature = "dicom"))]
use std::sync::Arc;
#[cfg(feature = "logfile")]
use std::time::Duration;

#[cfg(any(feature = "logfile", feature = "dicom"))]
use tokio::sync::watch;

#[cfg(feature = "modbus")]
use super::chiller::{self, ChillerServer};
#[cfg(feature = "dicom")]
use super::imaging::{self, ImageReport, ImagingIngest, ModalityRun, ReportSlot};
#[cfg(feature = "dicom")]
use super::leak::LeakLedger;
#[cfg(feature = "logfile")]
use super::mapping_log::{self, MappingLogSim};
#[cfg(feature = "dicom")]
use super::modality::{GATEWAY_AE_TITLE, MODALITY_AE_TITLE};
#[cfg(any(feature = "logfile", feature = "dicom"))]
use super::patients::SyntheticPatient;
use super::run::DemoError;
#[cfg(any(feature = "logfile", feature = "dicom"))]
use super::tally::DemoTally;
#[cfg(any(feature = "logfile", feature = "dicom"))]
use super::viewer::Console;

/// Device id of the simulated chiller.
pub const CHILLER_ID: &str = "cathlab-chiller";
/// Device id of the simulated mapping system (log only).
pub const MAPPING_SYSTEM_ID: &str = "cathlab-carto";
/// Device id of the simulated CT scanner.
pub const CT_SCANNER_ID: &str = "ct-1";
/// The DICOM receiver's temporary directory, under the gateway's data directory (as in
/// production; the demo's final scan of the data directory then covers it).
pub const DICOM_TEMP_DIR: &str = "dicom-incoming";

/// How often the gateway polls the chiller.
#[cfg(feature = "modbus")]
const CHILLER_POLL_MS: i64 = 500;
/// The chiller's temperatures are reported when they move by more than this (°C).
#[cfg(feature = "modbus")]
const CHILLER_DEADBAND_C: f64 = 0.3;
/// ... and all its values at least this often (seconds).
#[cfg(feature = "modbus")]
const CHILLER_HEARTBEAT_SECS: i64 = 5;
/// How often the mapping system writes a batch of log lines.
#[cfg(feature = "logfile")]
const LOG_EVERY: Duration = Duration::from_millis(1500);
/// How often the gateway lists the log directory even without a change notification, and
/// how long a line waits for its batch (ms): short, so a line shows within a second.
#[cfg(feature = "logfile")]
const LOG_FOLLOW_MS: i64 = 200;

/// The running simulated devices (none if the demo runs without them).
#[derive(Debug, Default)]
pub struct DemoDevices {
    #[cfg(feature = "modbus")]
    chiller: Option<ChillerServer>,
    #[cfg(feature = "logfile")]
    log_dir: Option<PathBuf>,
    #[cfg(feature = "dicom")]
    imaging: Option<DemoImaging>,
}

/// The CT scanner's side of the demo: the cloud imaging ingest it ends up at, the
/// address the gateway's DICOM receiver will listen on, and the outcome.
#[cfg(feature = "dicom")]
#[derive(Debug)]
struct DemoImaging {
    ingest: ImagingIngest,
    dicom_listen: std::net::SocketAddr,
    ca_file: std::path::PathBuf,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    report: ReportSlot,
}

impl DemoDevices {
    /// Starts the devices this build can serve (if `enabled`): the chiller on a free
    /// loopback port, the mapping system's (empty) log directory under `work`, and the
    /// CT scanner's cloud imaging ingest (certificates from `pki`, storage under `work`).
    ///
    /// # Errors
    /// [`DemoError::Devices`] if the chiller cannot listen or no port is free for the
    /// DICOM receiver, [`DemoError::WorkDir`] if the log directory cannot be made,
    /// [`DemoError::Ingest`] if the ingest cannot start.
    #[cfg_attr(
        not(all(feature = "modbus", feature = "logfile", feature = "dicom")),
        allow(unused_variables, unused_mut, clippy::unused_async)
    )]
    pub async fn start(
        enabled: bool,
        work: &Path,
        seed: u64,
        pki: &super::certs::DemoPki,
    ) -> Result<DemoDevices, DemoError> {
        let mut devices = DemoDevices::default();
        if !enabled {
            return Ok(devices);
        }
        #[cfg(feature = "logfile")]
        {
            let dir = work.join("mapping-system-logs");
            super::run::make_private_dir(&dir)?;
            devices.log_dir = Some(dir);
        }
        #[cfg(feature = "modbus")]
        {
            devices.chiller = Some(
                ChillerServer::start(seed)
                    .await
                    .map_err(DemoError::Devices)?,
            );
        }
        #[cfg(feature = "dicom")]
        {
            // `[dicom] listen` must name a port (0 is refused), so the kernel picks a free
            // one and it is released for the gateway to bind. Should another process take
            // it in between, the gateway's start fails with a bind error naming it.
            let dicom_listen = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .map_err(DemoError::Devices)?;
            let ingest = match ImagingIngest::start(pki, work.join("imaging-ingest")) {
                Ok(ingest) => ingest,
                Err(e) => {
                    devices.shutdown().await;
                    return Err(e.into());
                }
            };
            devices.imaging = Some(DemoImaging {
                ingest,
                dicom_listen,
                ca_file: pki.ca_file.clone(),
                cert_file: pki.gateway.cert_file.clone(),
                key_file: pki.gateway.key_file.clone(),
                report: ReportSlot::default(),
            });
        }
        Ok(devices)
    }

    /// Whether any simulated device runs.
    #[must_use]
    pub fn any(&self) -> bool {
        #[allow(unused_mut)]
        let mut any = false;
        #[cfg(feature = "modbus")]
        {
            any |= self.chiller.is_some();
        }
        #[cfg(feature = "logfile")]
        {
            any |= self.log_dir.is_some();
        }
        any |= self.imaging();
        any
    }

    /// Whether the simulated CT scanner and the cloud imaging ingest run.
    #[must_use]
    pub fn imaging(&self) -> bool {
        #[cfg(feature = "dicom")]
        {
            self.imaging.is_some()
        }
        #[cfg(not(feature = "dicom"))]
        {
            false
        }
    }

    /// Where the planted identifiers are besides the HL7 messages, for the header.
    #[must_use]
    pub fn planted_in(&self) -> Vec<&'static str> {
        #[allow(unused_mut)]
        let mut places = Vec::new();
        #[cfg(feature = "logfile")]
        if self.log_dir.is_some() {
            places.push("the device log");
        }
        if self.imaging() {
            places.push("the CT image's header");
        }
        places
    }

    /// The `[[device]]` tables declaring the running devices.
    ///
    /// # Errors
    /// [`DemoError::WorkDir`] if the log directory's path is not UTF-8.
    pub fn config(&self) -> Result<Vec<toml::Value>, DemoError> {
        #[allow(unused_mut)]
        let mut tables: Vec<toml::Value> = Vec::new();
        #[cfg(feature = "modbus")]
        if let Some(chiller) = &self.chiller {
            tables.push(chiller_config(chiller.addr()).into());
        }
        #[cfg(feature = "logfile")]
        if let Some(dir) = &self.log_dir {
            tables.push(mapping_system_config(dir)?.into());
        }
        #[cfg(feature = "dicom")]
        if self.imaging.is_some() {
            tables.push(ct_scanner_config().into());
        }
        Ok(tables)
    }

    /// The top-level config sections the running devices need besides their
    /// `[[device]]` tables: `[dicom]` (its temporary directory under `data_dir`),
    /// `[bulk_upload]` and `[phi.dicom]` for the CT scanner.
    ///
    /// # Errors
    /// [`DemoError::WorkDir`] if a path is not UTF-8.
    #[cfg_attr(not(feature = "dicom"), allow(unused_variables))]
    pub fn sections(&self, data_dir: &Path) -> Result<toml::Table, DemoError> {
        #[allow(unused_mut)]
        let mut sections = toml::Table::new();
        #[cfg(feature = "dicom")]
        if let Some(imaging) = &self.imaging {
            imaging_sections(imaging, data_dir, &mut sections)?;
        }
        Ok(sections)
    }

    /// Lines for the demo's header, one per device (`  <what>  <description>`).
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        #[allow(unused_mut)]
        let mut lines = Vec::new();
        #[cfg(feature = "modbus")]
        if let Some(chiller) = &self.chiller {
            lines.push(format!(
                "  chiller   {CHILLER_ID}: simulated Modbus TCP chiller on {}, polled every \
                 {CHILLER_POLL_MS} ms (supply/return temperature, deadband {CHILLER_DEADBAND_C} °C; \
                 pump coil), all values every {CHILLER_HEARTBEAT_SECS} s",
                chiller.addr()
            ));
        }
        #[cfg(feature = "logfile")]
        if let Some(dir) = &self.log_dir {
            lines.push(format!(
                "  logs      {MAPPING_SYSTEM_ID}: a mapping system's log in {}, naming Bed 01's \
                 patient (name, e-mail, phone, MRN) every {:.1} s once the gateway has seen that \
                 patient in HL7; the gateway follows the file and scrubs every line before storing it",
                dir.display(),
                LOG_EVERY.as_secs_f64()
            ));
        }
        #[cfg(feature = "dicom")]
        if let Some(imaging) = &self.imaging {
            lines.push(format!(
                "  imaging   {CT_SCANNER_ID}: a simulated CT scanner ({MODALITY_AE_TITLE}) stores one \
                 image of Bed 01's patient with DICOM C-STORE to the gateway ({GATEWAY_AE_TITLE}@{}) \
                 once the gateway has seen that patient in HL7; the gateway de-identifies it \
                 (PS3.15 basic profile) and uploads it over QUIC with mutual TLS to a stand-in \
                 cloud imaging ingest on udp://{}",
                imaging.dicom_listen,
                imaging.ingest.addr()
            ));
        }
        lines
    }

    /// Spawns the mapping system's log writer into `tasks` (if it runs): it names
    /// `patient` (monitor 0's), starts once `patient_known` completes, and stops with
    /// `stop`.
    #[cfg(feature = "logfile")]
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_log_writer(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        patient: &SyntheticPatient,
        seed: u64,
        patient_known: impl std::future::Future<Output = ()> + Send + 'static,
        tally: Arc<DemoTally>,
        console: Arc<Console>,
        stop: watch::Receiver<bool>,
    ) {
        let Some(dir) = &self.log_dir else { return };
        tasks.spawn(mapping_log::run_mapping_log(
            MappingLogSim::new(patient, seed),
            dir.join(mapping_log::LOG_FILE),
            LOG_EVERY,
            patient_known,
            tally,
            console,
            stop,
        ));
    }

    /// Spawns the CT scanner's run into `tasks` (if it runs): it scans `patient` (in
    /// `bed`) once `patient_known` completes, stores the image to the gateway's DICOM
    /// receiver at `gateway_dicom`, and checks what reaches the ingest. A stop before the
    /// scan cancels it; after the C-STORE the task waits (bounded) for the arrival.
    #[cfg(feature = "dicom")]
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_modality(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        (patient, bed): (&SyntheticPatient, &str),
        today: i64,
        gateway_dicom: Option<std::net::SocketAddr>,
        patient_known: impl std::future::Future<Output = ()> + Send + 'static,
        tally: Arc<DemoTally>,
        console: Arc<Console>,
        ledger: Arc<LeakLedger>,
        stop: watch::Receiver<bool>,
    ) {
        let Some(imaging) = &self.imaging else { return };
        let run = ModalityRun {
            gateway: gateway_dicom,
            ingest_dir: imaging.ingest.dir().to_path_buf(),
            device: CT_SCANNER_ID.to_owned(),
            patient: patient.clone(),
            study: super::patients::ImagingStudy::new(0, today),
            bed: bed.to_owned(),
        };
        tasks.spawn(imaging::run_modality(
            run,
            patient_known,
            tally,
            console,
            ledger,
            imaging.report.clone(),
            stop,
        ));
    }

    /// What the demo found in the image the ingest received, once it has.
    #[cfg(feature = "dicom")]
    #[must_use]
    pub fn image_report(&self) -> Option<ImageReport> {
        let imaging = self.imaging.as_ref()?;
        imaging
            .report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The cloud imaging ingest's storage directory (scan it after [`DemoDevices::shutdown`]).
    #[must_use]
    pub fn ingest_dir(&self) -> Option<std::path::PathBuf> {
        #[cfg(feature = "dicom")]
        {
            self.imaging
                .as_ref()
                .map(|imaging| imaging.ingest.dir().to_path_buf())
        }
        #[cfg(not(feature = "dicom"))]
        {
            None
        }
    }

    /// Stops the chiller (call after the gateway stopped polling it) and the imaging
    /// ingest (after the gateway stopped uploading).
    pub async fn shutdown(self) {
        #[cfg(feature = "modbus")]
        if let Some(chiller) = self.chiller {
            chiller.shutdown().await;
        }
        #[cfg(feature = "dicom")]
        if let Some(imaging) = self.imaging {
            if imaging.ingest.failures() > 0 {
                tracing::warn!(
                    failures = imaging.ingest.failures(),
                    "demo imaging ingest refused connections or streams"
                );
            }
            imaging.ingest.shutdown().await;
        }
    }
}

/// `[[device]]` for the CT scanner: known by its calling AE title. A modality only talks
/// when it has images, so silence does not make it offline.
#[cfg(feature = "dicom")]
fn ct_scanner_config() -> toml::Table {
    let mut device = toml::Table::new();
    device.insert("id".into(), CT_SCANNER_ID.into());
    device.insert("kind".into(), "ct-scanner".into());
    device.insert("dicom_ae_title".into(), MODALITY_AE_TITLE.into());
    device.insert("offline_after_secs".into(), 0.into());
    device
}

/// `[dicom]`, `[bulk_upload]` and `[phi.dicom]` for the CT scanner and the ingest.
#[cfg(feature = "dicom")]
fn imaging_sections(
    imaging: &DemoImaging,
    data_dir: &Path,
    sections: &mut toml::Table,
) -> Result<(), DemoError> {
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| DemoError::WorkDir {
                path: p.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "path is not UTF-8"),
            })
    };
    let mut caller = toml::Table::new();
    caller.insert("ae_title".into(), MODALITY_AE_TITLE.into());
    caller.insert(
        "sources".into(),
        toml::Value::Array(vec![std::net::Ipv4Addr::LOCALHOST.to_string().into()]),
    );
    let mut dicom = toml::Table::new();
    dicom.insert("listen".into(), imaging.dicom_listen.to_string().into());
    dicom.insert("ae_title".into(), GATEWAY_AE_TITLE.into());
    dicom.insert(
        "temp_dir".into(),
        path(&data_dir.join(DICOM_TEMP_DIR))?.into(),
    );
    dicom.insert("callers".into(), toml::Value::Array(vec![caller.into()]));
    let mut bulk = toml::Table::new();
    bulk.insert("receiver".into(), imaging.ingest.addr().to_string().into());
    bulk.insert("ca_file".into(), path(&imaging.ca_file)?.into());
    bulk.insert("cert_file".into(), path(&imaging.cert_file)?.into());
    bulk.insert("key_file".into(), path(&imaging.key_file)?.into());
    // Spelled out although it is the default: the demo shows the basic profile.
    let mut deid = toml::Table::new();
    deid.insert("dates".into(), "remove".into());
    let mut phi = toml::Table::new();
    phi.insert("dicom".into(), deid.into());
    sections.insert("dicom".into(), dicom.into());
    sections.insert("bulk_upload".into(), bulk.into());
    sections.insert("phi".into(), phi.into());
    Ok(())
}

/// `[[device]]` for the chiller, in the shape the Modbus adapter documents.
#[cfg(feature = "modbus")]
fn chiller_config(addr: std::net::SocketAddr) -> toml::Table {
    let temperature = |name: &str, address: u16| {
        let mut point = toml::Table::new();
        point.insert("name".into(), name.into());
        point.insert("table".into(), "holding".into());
        point.insert("address".into(), i64::from(address).into());
        point.insert("data_type".into(), "i16".into());
        point.insert("scale".into(), 0.1.into());
        point.insert("units".into(), "Cel".into());
        point.insert("deadband".into(), CHILLER_DEADBAND_C.into());
        toml::Value::from(point)
    };
    let mut pump = toml::Table::new();
    pump.insert("name".into(), "pump_running".into());
    pump.insert("table".into(), "coil".into());
    pump.insert(
        "address".into(),
        i64::from(chiller::PUMP_RUNNING_COIL).into(),
    );
    let mut modbus = toml::Table::new();
    modbus.insert("address".into(), addr.to_string().into());
    modbus.insert("unit_id".into(), 1.into());
    modbus.insert("poll_interval_ms".into(), CHILLER_POLL_MS.into());
    modbus.insert("timeout_ms".into(), 1000.into());
    modbus.insert("heartbeat_secs".into(), CHILLER_HEARTBEAT_SECS.into());
    modbus.insert(
        "points".into(),
        toml::Value::Array(vec![
            temperature("supply_temperature", chiller::SUPPLY_TEMPERATURE_REGISTER),
            temperature("return_temperature", chiller::RETURN_TEMPERATURE_REGISTER),
            pump.into(),
        ]),
    );
    let mut device = toml::Table::new();
    device.insert("id".into(), CHILLER_ID.into());
    device.insert("kind".into(), "chiller".into());
    device.insert("modbus".into(), modbus.into());
    device
}

/// `[[device]]` for the mapping system: log files only.
#[cfg(feature = "logfile")]
fn mapping_system_config(dir: &Path) -> Result<toml::Table, DemoError> {
    let directory = dir.to_str().ok_or_else(|| DemoError::WorkDir {
        path: dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "path is not UTF-8"),
    })?;
    let mut logs = toml::Table::new();
    logs.insert("directory".into(), directory.into());
    logs.insert("glob".into(), "*.log".into());
    // The demo's log exists only from this run: ship it whole.
    logs.insert("start_at".into(), "beginning".into());
    logs.insert("poll_interval_ms".into(), LOG_FOLLOW_MS.into());
    logs.insert("batch_max_delay_ms".into(), LOG_FOLLOW_MS.into());
    let mut device = toml::Table::new();
    device.insert("id".into(), MAPPING_SYSTEM_ID.into());
    device.insert("kind".into(), "mapping-system".into());
    device.insert("logs".into(), logs.into());
    Ok(device)
}
