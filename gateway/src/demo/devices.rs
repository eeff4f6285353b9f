//! The demo's device plane beyond HL7: a simulated cath-lab chiller polled over Modbus TCP
//! ([`super::chiller`], `[device.modbus]`) and a mapping system whose free-text log the
//! gateway follows and scrubs ([`super::mapping_log`], `[device.logs]`). Both are declared
//! as `[[device]]` entries in the gateway's generated config, exactly as a site would.
//!
//! Invariants:
//! - The simulated devices exist before the gateway starts (its config names the chiller's
//!   address and the log directory) and stop after it: the chiller is never "offline"
//!   because of the demo's own stop order.
//! - The log device has no `hl7_application`: all simulated monitors send the same MSH-3
//!   application (`WGDEMO-MON`), so no one application belongs to the mapping system, and a
//!   shared one would make every monitor's traffic count as the mapping system's.
//! - Each simulated device is compiled only with the adapter that serves it (cargo
//!   features `modbus`, `logfile`); without either the demo is HL7 only.

use std::path::Path;
#[cfg(feature = "logfile")]
use std::path::PathBuf;
#[cfg(feature = "logfile")]
use std::sync::Arc;
#[cfg(feature = "logfile")]
use std::time::Duration;

#[cfg(feature = "logfile")]
use tokio::sync::watch;

#[cfg(feature = "modbus")]
use super::chiller::{self, ChillerServer};
#[cfg(feature = "logfile")]
use super::mapping_log::{self, MappingLogSim};
#[cfg(feature = "logfile")]
use super::patients::SyntheticPatient;
use super::run::DemoError;
#[cfg(feature = "logfile")]
use super::tally::DemoTally;
#[cfg(feature = "logfile")]
use super::viewer::Console;

/// Device id of the simulated chiller.
pub const CHILLER_ID: &str = "cathlab-chiller";
/// Device id of the simulated mapping system (log only).
pub const MAPPING_SYSTEM_ID: &str = "cathlab-carto";

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
}

impl DemoDevices {
    /// Starts the devices this build can serve (if `enabled`): the chiller on a free
    /// loopback port, and the mapping system's (empty) log directory under `work`.
    ///
    /// # Errors
    /// [`DemoError::Devices`] if the chiller cannot listen, [`DemoError::WorkDir`] if the
    /// log directory cannot be made.
    #[cfg_attr(
        not(all(feature = "modbus", feature = "logfile")),
        allow(unused_variables, unused_mut, clippy::unused_async)
    )]
    pub async fn start(enabled: bool, work: &Path, seed: u64) -> Result<DemoDevices, DemoError> {
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
        any
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
        Ok(tables)
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

    /// Stops the chiller (call after the gateway stopped polling it).
    pub async fn shutdown(self) {
        #[cfg(feature = "modbus")]
        if let Some(chiller) = self.chiller {
            chiller.shutdown().await;
        }
    }
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
