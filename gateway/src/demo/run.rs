//! The demo's orchestration: start order, the run, stop order, the summary (see the
//! invariants in the parent module).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::broker::core::AccessPolicy;
use super::broker::{self, Broker, BrokerConfig, IngressTap};
use super::certs::{self, DemoPki};
use super::devices::DemoDevices;
use super::leak::{LeakLedger, LeakReport, LeakScanner};
use super::monitors::{days_since_epoch, run_monitor, MonitorSim};
use super::tally::{DemoTally, TallySnapshot};
use super::viewer::{self, Console, Style, Viewer, ViewerConfig};
use crate::config::Config;
use crate::daemon::Gateway;

/// The demo gateway's id (and its certificate's CN).
pub const GATEWAY_ID: &str = "wardgate-demo-gw";
/// The viewer's certificate CN: the broker lets it read everything and publish nothing.
pub const VIEWER_CN: &str = "wardgate-demo-viewer";
/// Topic root of the generic cloud profile.
pub const TOPIC_ROOT: &str = "wardgate";
/// Default run time.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(20);
/// Default number of monitors.
pub const DEFAULT_MONITORS: usize = 4;
/// Most monitors (each is a TCP connection and a synthetic patient).
pub const MAX_MONITORS: usize = 64;
/// How long to wait at the end for acknowledged records to reach the cloud.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval of the status line.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the monitors send; `None` runs until Ctrl-C (`--duration 0`).
    pub duration: Option<Duration>,
    /// Number of simulated monitors (1–[`MAX_MONITORS`]).
    pub monitors: usize,
    /// Each monitor sends a report every `period` (at least 100 ms).
    pub period: Duration,
    /// Seed of the simulated vital signs; random if `None`.
    pub seed: Option<u64>,
    /// Also run the simulated non-HL7 devices this build has adapters for: a chiller
    /// polled over Modbus TCP, a mapping system whose log the gateway follows, and a CT
    /// scanner storing an image over DICOM, which the gateway de-identifies and uploads
    /// to a stand-in cloud imaging ingest.
    pub devices: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Some(DEFAULT_DURATION),
            monitors: DEFAULT_MONITORS,
            period: Duration::from_secs(1),
            seed: None,
            devices: true,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// How long the monitors ran.
    pub ran_for: Duration,
    /// Monitors simulated.
    pub monitors: usize,
    /// Whether simulated non-HL7 devices ran.
    pub devices: bool,
    /// Whether the imaging path ran (CT scanner, DICOM receiver, upload, cloud ingest).
    pub imaging: bool,
    /// Message, record and image counts.
    pub counts: TallySnapshot,
    /// What the demo found in the image the cloud received, if one arrived.
    #[cfg(feature = "dicom")]
    pub image: Option<super::imaging::ImageReport>,
    /// What the leak check scanned and found.
    pub leak_report: LeakReport,
    /// Whether Ctrl-C ended the run.
    pub interrupted: bool,
}

impl DemoSummary {
    /// HL7 messages sent.
    #[must_use]
    pub fn sent(&self) -> u64 {
        self.counts.sent
    }

    /// Messages the gateway acknowledged (AA/CA).
    #[must_use]
    pub fn acked(&self) -> u64 {
        self.counts.acked
    }

    /// Distinct records the cloud received.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.counts.records
    }

    /// Planted identifiers found (packet or file hits).
    #[must_use]
    pub fn leaks(&self) -> u64 {
        self.leak_report.leaks()
    }

    /// Distinct images the cloud imaging ingest received.
    #[must_use]
    pub fn images_received(&self) -> u64 {
        self.counts.images_received
    }

    /// No leak, something acknowledged, every acknowledged message and every device log
    /// line written delivered, every message answered with AA/CA, and every cloud payload
    /// decodable; with the imaging path, an image arrived, every image stored at the
    /// gateway arrived, and every one that arrived was de-identified with its pixels
    /// intact.
    #[must_use]
    pub fn passed(&self) -> bool {
        let c = &self.counts;
        let imaging_ok = !self.imaging
            || (c.images_received > 0
                && c.images_failed == 0
                && c.images_bad == 0
                && c.images_undelivered() == 0);
        self.leaks() == 0
            && c.acked > 0
            && c.undelivered == 0
            && c.log_lines_undelivered() == 0
            && c.errors == 0
            && c.rejected == 0
            && c.failed == 0
            && c.undecodable == 0
            && imaging_ok
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The options are out of range.
    #[error("invalid demo options: {0}")]
    Options(String),
    /// The temporary directory could not be prepared.
    #[error("demo work directory {path}: {source}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulated device could not start.
    #[error("simulated device: {0}")]
    Devices(std::io::Error),
    /// The throwaway PKI could not be created.
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    /// The stand-in broker could not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The stand-in cloud imaging ingest could not start.
    #[error("cloud imaging ingest: {0}")]
    Ingest(#[from] crate::receive::ReceiveError),
    /// The viewer could not subscribe.
    #[error(transparent)]
    Viewer(#[from] viewer::ViewerError),
    /// The generated gateway config was refused (a bug in the demo or the config code).
    #[error("demo gateway config: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The gateway could not start.
    #[error("gateway: {0}")]
    Gateway(#[from] crate::daemon::DaemonError),
    /// The data directory could not be scanned for leaks.
    #[error("scanning the gateway's data directory or the imaging ingest: {0}")]
    Scan(std::io::Error),
}

/// Runs the demo with output on stdout (coloured on a terminal unless `NO_COLOR` is
/// set), until the duration ends or Ctrl-C. Ctrl-C is caught from the start, so even
/// during start-up it leads to a clean stop (bounded: at most the drain timeout plus the
/// gateway's own shutdown bound) and the temporary directory is removed.
///
/// # Errors
/// A [`DemoError`] if a component cannot start. A run that starts but finds a leak or
/// loses a message returns `Ok` with [`DemoSummary::passed`] false.
pub async fn run(options: DemoOptions) -> Result<DemoSummary, DemoError> {
    let terminal = std::io::stdout().is_terminal();
    let colour = terminal && std::env::var_os("NO_COLOR").is_none();
    let width = if terminal { terminal_width() } else { None };
    let (interrupted_tx, mut interrupted) = watch::channel(false);
    let listener = tokio::spawn(async move {
        match tokio::signal::ctrl_c().await {
            Ok(()) => {
                let _ = interrupted_tx.send(true);
            }
            Err(e) => {
                // Without a handler Ctrl-C kills the process; the duration still ends the demo.
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    });
    let interrupt = async move {
        let _ = interrupted.wait_for(|&yes| yes).await;
    };
    let console = Console::new(Box::new(std::io::stdout()), colour).with_width(width);
    let outcome = run_on(options, console, interrupt).await;
    listener.abort();
    outcome
}

/// Columns of the terminal on stdout: `COLUMNS` if set, else what `stty size` says about
/// the terminal on stdin, else unknown (lines are then not cut).
fn terminal_width() -> Option<usize> {
    let usable = |n: usize| (n >= 40).then_some(n);
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
    {
        return usable(columns);
    }
    let output = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .and_then(usable)
}

/// Runs the demo, writing to `out`; `interrupt` completing ends it early (as Ctrl-C).
///
/// # Errors
/// As [`run`].
pub async fn run_with_output(
    options: DemoOptions,
    out: Box<dyn Write + Send>,
    colour: bool,
    interrupt: impl Future<Output = ()>,
) -> Result<DemoSummary, DemoError> {
    run_on(options, Console::new(out, colour), interrupt).await
}

async fn run_on(
    options: DemoOptions,
    console: Console,
    interrupt: impl Future<Output = ()>,
) -> Result<DemoSummary, DemoError> {
    if !(1..=MAX_MONITORS).contains(&options.monitors) {
        return Err(DemoError::Options(format!(
            "monitors must be 1–{MAX_MONITORS}, is {}",
            options.monitors
        )));
    }
    if options.period < Duration::from_millis(100) {
        return Err(DemoError::Options(format!(
            "period must be at least 100 ms, is {:?}",
            options.period
        )));
    }
    if options.duration == Some(Duration::ZERO) {
        return Err(DemoError::Options(
            "duration must be positive (None runs until Ctrl-C)".into(),
        ));
    }
    let console = Arc::new(console);
    let work = WorkDir::create()?;
    let outcome = run_in(&options, &console, work.path(), interrupt).await;
    if let Err(e) = &outcome {
        console.line(&console.paint(Style::Red, &format!("demo failed: {e}")));
    }
    drop(work);
    outcome
}

async fn run_in(
    options: &DemoOptions,
    console: &Arc<Console>,
    work: &Path,
    interrupt: impl Future<Output = ()>,
) -> Result<DemoSummary, DemoError> {
    let now = SystemTime::now();
    let pki_dir = work.join("pki");
    make_private_dir(&pki_dir)?;
    let pki = DemoPki::generate(&pki_dir, GATEWAY_ID, VIEWER_CN, now)?;

    let today = days_since_epoch(now);
    let seed = options.seed.unwrap_or_else(|| fastrand::u64(..));
    let sims: Vec<MonitorSim> = (0..options.monitors)
        .map(|i| MonitorSim::new(i, today, seed))
        .collect();
    // The mapping system's log names monitor 0's patient, whose identifiers are among
    // those checked below.
    #[cfg(feature = "logfile")]
    let logged_patient = sims[0].patient().clone();
    // The CT scanner images monitor 0's patient; its study's identifiers are checked too.
    #[cfg(feature = "dicom")]
    let imaged_patient = (sims[0].patient().clone(), sims[0].bed().to_owned());
    #[allow(unused_mut)]
    let mut identifiers: Vec<_> = sims
        .iter()
        .flat_map(|s| s.patient().planted_identifiers())
        .collect();
    #[cfg(feature = "dicom")]
    if options.devices {
        identifiers.extend(super::patients::ImagingStudy::new(0, today).planted_identifiers());
    }
    let ledger = Arc::new(LeakLedger::new(LeakScanner::new(identifiers)));
    let tally = Arc::new(DemoTally::default());

    let tap: IngressTap = {
        let (ledger, console) = (ledger.clone(), console.clone());
        Arc::new(move |identity: &str, packet: &[u8]| {
            let found = ledger.scan_cloud(identity, packet);
            if found > 0 {
                console.line(&console.paint(
                    Style::Red,
                    &format!(
                        "LEAK: the broker received {found} planted identifier(s) from {identity}"
                    ),
                ));
            }
        })
    };
    let broker = Broker::start(BrokerConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        cert_chain: vec![pki.broker.cert_der()],
        key: pki.broker.key_der(),
        client_ca: pki.ca_der(),
        policy: AccessPolicy::new(TOPIC_ROOT, VIEWER_CN),
        tap: Some(tap),
    })
    .await?;

    let viewer = Viewer::start(
        ViewerConfig {
            broker: broker.local_addr(),
            ca: pki.ca_der(),
            cert: pki.viewer.cert_der(),
            key: pki.viewer.key_der(),
            client_id: VIEWER_CN.to_owned(),
            filter: format!("{TOPIC_ROOT}/#"),
        },
        console.clone(),
        tally.clone(),
        ledger.clone(),
    )
    .await;
    let viewer = match viewer {
        Ok(viewer) => viewer,
        Err(e) => {
            broker.shutdown().await;
            return Err(e.into());
        }
    };

    let devices = match DemoDevices::start(options.devices, work, seed, &pki).await {
        Ok(devices) => devices,
        Err(e) => {
            viewer.stop().await;
            broker.shutdown().await;
            return Err(e);
        }
    };

    let data_dir = work.join("data");
    let gateway = match start_gateway(work, &data_dir, broker.local_addr(), &pki, &devices).await {
        Ok(gateway) => gateway,
        Err(e) => {
            devices.shutdown().await;
            viewer.stop().await;
            broker.shutdown().await;
            return Err(e);
        }
    };

    print_header(
        console,
        options,
        &broker,
        &gateway,
        &pki,
        &devices,
        ledger.scanner().identifiers().len(),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut monitor_tasks = tokio::task::JoinSet::new();
    let count = u32::try_from(options.monitors).unwrap_or(1);
    for (i, sim) in sims.into_iter().enumerate() {
        // Spread the monitors over the period so the stream is steady, not bursty.
        let offset = options.period / count * u32::try_from(i).unwrap_or(0);
        monitor_tasks.spawn(run_monitor(
            sim,
            gateway.hl7_addr(),
            options.period,
            offset,
            tally.clone(),
            console.clone(),
            stop_rx.clone(),
        ));
    }
    // Only after monitor 0's first ACK has the HL7 PHI stage learned its patient's names;
    // a log line naming the patient before that would (rightly) not be redacted.
    #[cfg(feature = "logfile")]
    devices.spawn_log_writer(
        &mut monitor_tasks,
        &logged_patient,
        seed,
        tally.monitor_acked(0),
        tally.clone(),
        console.clone(),
        stop_rx.clone(),
    );
    // Likewise the CT scanner images the patient only once the cloud can hold their vital
    // signs, so the image's pseudonym can be compared with theirs.
    #[cfg(feature = "dicom")]
    devices.spawn_modality(
        &mut monitor_tasks,
        (&imaged_patient.0, &imaged_patient.1),
        today,
        gateway.dicom_addr(),
        tally.monitor_acked(0),
        tally.clone(),
        console.clone(),
        ledger.clone(),
        stop_rx.clone(),
    );

    let started = Instant::now();
    let interrupted = wait_for_end(console, options.duration, &tally, interrupt).await;
    let ran_for = started.elapsed();

    let stopping = if devices.any() {
        "stopping the monitors and the simulated devices…"
    } else {
        "stopping the monitors…"
    };
    console.line(&console.paint(Style::Bold, stopping));
    let _ = stop_tx.send(true);
    while monitor_tasks.join_next().await.is_some() {}

    drain(console, &tally).await;

    gateway.shutdown().await;
    let devices_ran = devices.any();
    let imaging_ran = devices.imaging();
    let ingest_dir = devices.ingest_dir();
    #[cfg(feature = "dicom")]
    let image = devices.image_report();
    devices.shutdown().await;
    viewer.stop().await;
    broker.shutdown().await;

    // The spool is closed now: whatever the gateway wrote is on disk, WAL included. The
    // ingest has checkpointed whatever it holds.
    ledger.scan_dir(&data_dir).map_err(DemoError::Scan)?;
    if let Some(dir) = &ingest_dir {
        ledger.scan_ingest_dir(dir).map_err(DemoError::Scan)?;
    }

    let summary = DemoSummary {
        ran_for,
        monitors: options.monitors,
        devices: devices_ran,
        imaging: imaging_ran,
        counts: tally.snapshot(),
        #[cfg(feature = "dicom")]
        image,
        leak_report: ledger.report(),
        interrupted,
    };
    print_summary(console, &summary);
    Ok(summary)
}

async fn start_gateway(
    work: &Path,
    data_dir: &Path,
    broker: SocketAddr,
    pki: &DemoPki,
    devices: &DemoDevices,
) -> Result<Gateway, DemoError> {
    let config_path = work.join("wardgate.toml");
    let text = gateway_config(
        data_dir,
        broker,
        pki,
        devices.config()?,
        devices.sections(data_dir)?,
    )?;
    std::fs::write(&config_path, &text).map_err(|source| DemoError::WorkDir {
        path: config_path.clone(),
        source,
    })?;
    let config = Config::parse(&text, &config_path)?;
    Ok(Gateway::start(config).await?)
}

/// The gateway's config: only the required keys, everything else at its default, plus
/// the `[[device]]` tables of the simulated devices and the sections they need
/// (`sections`, e.g. `[dicom]` and `[bulk_upload]`).
fn gateway_config(
    data_dir: &Path,
    broker: SocketAddr,
    pki: &DemoPki,
    devices: Vec<toml::Value>,
    sections: toml::Table,
) -> Result<String, DemoError> {
    let path = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| DemoError::WorkDir {
                path: p.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "path is not UTF-8"),
            })
    };
    let mut gateway = toml::Table::new();
    gateway.insert("id".into(), GATEWAY_ID.into());
    gateway.insert("data_dir".into(), path(data_dir)?.into());
    let mut cloud = toml::Table::new();
    cloud.insert("mqtt_url".into(), format!("mqtts://{broker}").into());
    cloud.insert("ca_file".into(), path(&pki.ca_file)?.into());
    cloud.insert("cert_file".into(), path(&pki.gateway.cert_file)?.into());
    cloud.insert("key_file".into(), path(&pki.gateway.key_file)?.into());
    cloud.insert("profile".into(), "generic".into());
    let mut hl7 = toml::Table::new();
    hl7.insert(
        "listen".into(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
            .to_string()
            .into(),
    );
    let mut root = toml::Table::new();
    root.insert("gateway".into(), gateway.into());
    root.insert("cloud".into(), cloud.into());
    root.insert("hl7".into(), hl7.into());
    root.extend(sections);
    if !devices.is_empty() {
        root.insert("device".into(), toml::Value::Array(devices));
    }
    Ok(format!(
        "# Generated by `wardgate demo`; deleted when it ends.\n{root}"
    ))
}

/// Waits for the duration or the interrupt, printing a status line now and then.
/// Returns whether it was interrupted.
async fn wait_for_end(
    console: &Console,
    duration: Option<Duration>,
    tally: &DemoTally,
    interrupt: impl Future<Output = ()>,
) -> bool {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let mut status =
        tokio::time::interval_at(tokio::time::Instant::now() + STATUS_EVERY, STATUS_EVERY);
    tokio::pin!(deadline, interrupt);
    loop {
        tokio::select! {
            () = &mut deadline => return false,
            () = &mut interrupt => return true,
            _ = status.tick() => print_status(console, tally),
        }
    }
}

fn print_status(console: &Console, tally: &DemoTally) {
    let s = tally.snapshot();
    console.line(&console.paint(
        Style::Dim,
        &format!(
            "{}  — sent {}  acked {}  received by cloud {}  (alarms {}, measurements {}, logs {})",
            console.elapsed(),
            s.sent,
            s.acked,
            s.records,
            s.alarm_records,
            s.measurement_records,
            s.log_records
        ),
    ));
}

/// Gives the cloud time to receive every acknowledged record and every log line written.
async fn drain(console: &Console, tally: &DemoTally) {
    let pending = |s: TallySnapshot| (s.undelivered, s.log_lines_undelivered());
    let (records, lines) = pending(tally.snapshot());
    if (records, lines) == (0, 0) {
        return;
    }
    let mut waiting = Vec::new();
    if records > 0 {
        waiting.push(format!("{records} acknowledged record(s)"));
    }
    if lines > 0 {
        waiting.push(format!("{lines} device log line(s)"));
    }
    console.line(&format!(
        "waiting for the cloud to receive the last {}…",
        waiting.join(" and ")
    ));
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while pending(tally.snapshot()) != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_header(
    console: &Console,
    options: &DemoOptions,
    broker: &Broker,
    gateway: &Gateway,
    pki: &DemoPki,
    devices: &DemoDevices,
    identifiers: usize,
) {
    let bold = |s: &str| console.paint(Style::Bold, s);
    console.line(&bold("wardgate demo"));
    console.line(&format!(
        "  cloud     stand-in MQTT broker on mqtts://{} (mutual TLS, throwaway CA)",
        broker.local_addr()
    ));
    console.line(&format!(
        "  gateway   {GATEWAY_ID}: HL7/MLLP on {} → PHI rules → SQLite spool → MQTT uplink",
        gateway.hl7_addr()
    ));
    console.line(&format!(
        "  certs     {}",
        pki.ca_file
            .parent()
            .map_or_else(String::new, |p| p.display().to_string())
    ));
    let how_long = match options.duration {
        Some(d) => format!("for {} s", d.as_secs_f64()),
        None => "until Ctrl-C".to_owned(),
    };
    console.line(&format!(
        "  monitors  {} simulated IHE PCD-01 monitors, one report per {:?} each, {how_long}",
        options.monitors, options.period
    ));
    for line in devices.describe() {
        console.line(&line);
    }
    let mut places = vec!["PID/NTE/NK1/PV1"];
    places.extend(devices.planted_in());
    let planted_in = match places.split_last() {
        Some((last, [single])) => format!("{single} and {last}"),
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => places.join(""),
    };
    let imaging_kinds = if devices.imaging() {
        ", hospital, accession number, study date, UID root"
    } else {
        ""
    };
    console.line(&format!(
        "  PHI       {identifiers} synthetic identifiers (names, MRNs, birth dates, addresses, phones, SSNs, notes{imaging_kinds}) \
         planted in {planted_in}; every byte the cloud receives is checked for each of them"
    ));
    console.line("");
    console.line(&console.paint(Style::Bold, "what the cloud receives:"));
}

fn print_summary(console: &Console, summary: &DemoSummary) {
    let c = &summary.counts;
    let r = &summary.leak_report;
    let bold = |s: &str| console.paint(Style::Bold, s);
    console.line("");
    console.line(&bold("summary"));
    let ended = if summary.interrupted {
        " (interrupted)"
    } else {
        ""
    };
    console.line(&format!(
        "  ran for           {:.1} s{ended}, {} monitors",
        summary.ran_for.as_secs_f64(),
        summary.monitors
    ));
    console.line(&format!(
        "  HL7 sent          {} ({} PCD-04 alarms)",
        c.sent, c.alarms_sent
    ));
    console.line(&format!(
        "  acknowledged      {} AA/CA, {} AE/CE, {} AR/CR, {} without ACK",
        c.acked, c.errors, c.rejected, c.failed
    ));
    console.line(&format!(
        "  cloud received    {} records ({} alarms), {} repeats, {} acknowledged but missing",
        c.records, c.alarm_records, c.duplicates, c.undelivered
    ));
    if summary.devices {
        console.line(&format!(
            "  devices           {} measurement reports, {} state changes; {} log records \
             ({} of {} lines written, {} missing)",
            c.measurement_records,
            c.state_records,
            c.log_records,
            c.log_lines_received,
            c.log_lines_written,
            c.log_lines_undelivered()
        ));
    }
    if summary.imaging {
        let good = c.images_received.saturating_sub(c.images_bad);
        console.line(&format!(
            "  imaging           {} image(s) sent, {} stored by the gateway (C-STORE success), {} received \
             by the cloud imaging ingest ({good} de-identified with pixels intact), {} stored but missing",
            c.images_sent,
            c.images_stored,
            c.images_received,
            c.images_undelivered()
        ));
    }
    let ingest = if summary.imaging {
        format!(
            ", {} files ({} bytes) at the imaging ingest",
            r.ingest_files_scanned, r.ingest_bytes_scanned
        )
    } else {
        String::new()
    };
    console.line(&format!(
        "  leak check        {} identifiers × {} packets ({} bytes) at the broker, {} files ({} bytes) in the gateway's data directory{ingest}",
        r.identifiers, r.packets_scanned, r.bytes_scanned, r.files_scanned, r.file_bytes_scanned
    ));
    if r.findings.is_empty() {
        console.line(&console.paint(
            Style::Green,
            "  verdict           none of the planted identifiers appeared in anything the cloud received or the gateway stored",
        ));
    } else {
        console.line(&console.paint(
            Style::Red,
            &format!("  verdict           {} LEAK(S):", r.leaks()),
        ));
        for f in &r.findings {
            console.line(&console.paint(
                Style::Red,
                &format!(
                    "    {} {:?} in {} ({}×)",
                    f.kind.label(),
                    f.value,
                    f.place,
                    f.count
                ),
            ));
        }
    }
    let result = if summary.passed() {
        console.paint(Style::Green, "PASS")
    } else {
        console.paint(Style::Red, "FAIL")
    };
    console.line(&format!("  result            {result}"));
}

pub(super) fn make_private_dir(path: &Path) -> Result<(), DemoError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| DemoError::WorkDir {
            path: path.to_path_buf(),
            source,
        })
}

/// A private (0700) temporary directory, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> Result<WorkDir, DemoError> {
        let base = std::env::temp_dir();
        let mut last_error = None;
        for _ in 0..8 {
            let path = base.join(format!(
                "wardgate-demo-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            match make_private_dir(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| DemoError::WorkDir {
            path: base,
            source: std::io::Error::other("could not create a unique directory"),
        }))
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the demo's temporary directory");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::super::patients::SyntheticPatient;
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

    #[test]
    fn generated_config_is_accepted_by_the_gateway_parser() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), GATEWAY_ID, VIEWER_CN, SystemTime::now()).unwrap();
        let broker: SocketAddr = "127.0.0.1:18883".parse().unwrap();
        let text = gateway_config(
            &dir.path().join("data"),
            broker,
            &pki,
            Vec::new(),
            toml::Table::new(),
        )
        .unwrap();
        let config = Config::parse(&text, &dir.path().join("wardgate.toml")).unwrap();
        assert_eq!(config.gateway.id, GATEWAY_ID);
        assert_eq!(config.cloud.mqtt_url, "mqtts://127.0.0.1:18883");
        assert_eq!(config.hl7.listen.port(), 0);
        assert!(config.devices.is_empty());
        assert!(config.dicom.is_none() && config.bulk_upload.is_none());
    }

    /// The simulated devices are declared as a site would declare them, and the gateway
    /// accepts the declarations (every adapter's own validation included).
    #[cfg(all(feature = "modbus", feature = "logfile"))]
    #[tokio::test]
    async fn generated_device_declarations_are_accepted_by_the_gateway_parser() {
        use super::super::devices::{CHILLER_ID, MAPPING_SYSTEM_ID};
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), GATEWAY_ID, VIEWER_CN, SystemTime::now()).unwrap();
        let devices = DemoDevices::start(true, dir.path(), 1, &pki).await.unwrap();
        let broker: SocketAddr = "127.0.0.1:18883".parse().unwrap();
        let data_dir = dir.path().join("data");
        let text = gateway_config(
            &data_dir,
            broker,
            &pki,
            devices.config().unwrap(),
            devices.sections(&data_dir).unwrap(),
        )
        .unwrap();
        let config = Config::parse(&text, &dir.path().join("wardgate.toml")).unwrap();
        let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
        #[cfg(not(feature = "dicom"))]
        assert_eq!(ids, [CHILLER_ID, MAPPING_SYSTEM_ID]);
        // The CT scanner: known by its AE title, allowed as a caller from loopback only,
        // its objects uploaded to the ingest with the gateway's own client certificate.
        #[cfg(feature = "dicom")]
        {
            use super::super::devices::{CT_SCANNER_ID, DICOM_TEMP_DIR};
            use super::super::modality::{GATEWAY_AE_TITLE, MODALITY_AE_TITLE};
            assert_eq!(ids, [CHILLER_ID, MAPPING_SYSTEM_ID, CT_SCANNER_ID]);
            assert_eq!(
                config.devices[2].dicom_ae_title.as_deref(),
                Some(MODALITY_AE_TITLE)
            );
            let dicom = config.dicom.as_ref().unwrap();
            assert_eq!(dicom.ae_title, GATEWAY_AE_TITLE);
            assert!(dicom.listen.ip().is_loopback() && dicom.listen.port() != 0);
            assert_eq!(dicom.temp_dir, data_dir.join(DICOM_TEMP_DIR));
            assert!(dicom.caller_allowed(MODALITY_AE_TITLE, "127.0.0.1".parse().unwrap()));
            assert!(!dicom.caller_allowed(MODALITY_AE_TITLE, "10.0.0.9".parse().unwrap()));
            let bulk = config.bulk_upload.as_ref().unwrap();
            assert_eq!(bulk.cert_file, pki.gateway.cert_file);
            assert_eq!(bulk.ca_file, pki.ca_file);
            assert_eq!(
                config.phi.dicom.dates,
                crate::phi::dicom::DatePolicy::Remove
            );
        }
        let chiller = config.devices[0].modbus.as_ref().unwrap();
        assert_eq!(chiller.poll_interval_ms, 500);
        assert_eq!(chiller.points.len(), 3);
        assert_eq!(chiller.points[0].deadband, Some(0.3));
        assert_eq!(config.devices[0].adapters(), ["modbus"]);
        let logs = config.devices[1].logs.as_ref().unwrap();
        assert!(logs.directory.is_dir());
        assert_eq!(
            logs.start_at,
            wardgate_device_adapters::logfile::StartAt::Beginning
        );
        assert_eq!(config.devices[1].hl7_application, None);
        devices.shutdown().await;
    }

    #[test]
    fn options_are_validated() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for options in [
            DemoOptions {
                monitors: 0,
                ..DemoOptions::default()
            },
            DemoOptions {
                monitors: MAX_MONITORS + 1,
                ..DemoOptions::default()
            },
            DemoOptions {
                period: Duration::from_millis(10),
                ..DemoOptions::default()
            },
            DemoOptions {
                duration: Some(Duration::ZERO),
                ..DemoOptions::default()
            },
        ] {
            let result = rt.block_on(run_with_output(
                options,
                Box::new(std::io::sink()),
                false,
                std::future::pending(),
            ));
            assert!(matches!(result, Err(DemoError::Options(_))));
        }
    }

    /// A shared buffer the test can read after the demo wrote to it.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The whole demo, end to end: real gateway, real TLS, real MLLP.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_delivers_records_without_leaking_planted_identifiers() {
        let captured = Captured::default();
        let options = DemoOptions {
            duration: Some(Duration::from_secs(6)),
            monitors: 2,
            period: Duration::from_millis(500),
            seed: Some(7),
            devices: true,
        };
        let summary = run_with_output(
            options,
            Box::new(captured.clone()),
            false,
            std::future::pending(),
        )
        .await
        .unwrap();
        let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();

        assert!(summary.acked() >= 10, "{summary:?}\n{output}");
        assert!(
            summary.received() >= summary.acked(),
            "{summary:?}\n{output}"
        );
        assert!(
            summary.counts.alarm_records >= 1,
            "monitor 0 desaturates early: {summary:?}\n{output}"
        );
        assert_eq!(summary.leaks(), 0, "{output}");
        assert!(
            summary.leak_report.packets_scanned > 0 && summary.leak_report.files_scanned > 0,
            "{summary:?}"
        );
        assert!(summary.passed(), "{summary:?}\n{output}");
        assert!(
            output.contains("SpO2 ") && output.contains("✓ no PHI"),
            "{output}"
        );
        assert!(
            output.contains("none of the planted identifiers appeared"),
            "{output}"
        );
        // The device plane: the chiller is polled and online, the mapping system's log
        // arrives scrubbed, every line of it, and nothing planted in it leaked (above).
        #[cfg(feature = "modbus")]
        {
            assert!(
                summary.counts.measurement_records >= 1,
                "{summary:?}\n{output}"
            );
            assert!(
                output.contains("meas   cathlab-chiller  supply_temperature="),
                "{output}"
            );
            assert!(
                output.contains("state  cathlab-chiller  unknown → online"),
                "{output}"
            );
        }
        #[cfg(feature = "logfile")]
        {
            let c = &summary.counts;
            assert!(c.log_records >= 1, "{summary:?}\n{output}");
            assert!(
                c.log_lines_written >= 2 && c.log_lines_received == c.log_lines_written,
                "{summary:?}\n{output}"
            );
            assert!(output.contains("log    cathlab-carto"), "{output}");
            assert!(output.contains("[NAME]"), "{output}");
        }
        // The imaging path: one CT image stored at the gateway, received by the cloud
        // imaging ingest de-identified (pseudonym linking it to Bed 01's vital signs, UIDs
        // replaced, dates emptied), pixels intact, and nothing planted in it (above).
        #[cfg(feature = "dicom")]
        {
            let c = &summary.counts;
            assert!(summary.imaging, "{summary:?}");
            assert_eq!(
                (
                    c.images_sent,
                    c.images_stored,
                    c.images_received,
                    c.images_bad
                ),
                (1, 1, 1, 0),
                "{summary:?}\n{output}"
            );
            assert_eq!(summary.images_received(), 1);
            let image = summary.image.as_ref().unwrap();
            assert!(image.passed(), "{image:?}\n{output}");
            assert!(
                image.pixels_intact && image.linked_to_vital_signs,
                "{image:?}\n{output}"
            );
            assert!(
                summary.leak_report.ingest_files_scanned >= 2,
                "{:?}",
                summary.leak_report
            );
            for shown in [
                "arrived at the cloud imaging ingest",
                "PatientIdentityRemoved",
                "113100 Basic Application Confidentiality Profile",
                "as Bed 01's vital signs",
                "✓ de-identified",
            ] {
                assert!(output.contains(shown), "{shown}: {output}");
            }
        }
        // The planted identifiers are in what the monitors send (and the devices write),
        // not in what the cloud shows: only the image table's column of what the scanner
        // sent (left of its arrow, marked as staying on the LAN) may show them.
        let today = days_since_epoch(SystemTime::now());
        let patient = SyntheticPatient::new(0, today);
        let study = super::super::patients::ImagingStudy::new(0, today);
        let planted = [
            patient.family.clone(),
            patient.given.clone(),
            patient.mrn.clone(),
            patient.email.clone(),
            study.institution.clone(),
            study.accession.clone(),
            super::super::patients::DEMO_UID_ROOT.to_owned(),
        ];
        for line in output.lines() {
            let cloud_side = if line.contains('│') {
                line.split_once('→').map_or(line, |(_, right)| right)
            } else {
                line
            };
            for value in &planted {
                assert!(!cloud_side.contains(value.as_str()), "{value}: {line}");
            }
        }
    }

    /// The verdict needs the image: one that never arrived, failed a check, or carried a
    /// planted identifier fails the demo however well everything else went.
    #[test]
    fn imaging_failures_fail_the_demo() {
        let good = DemoSummary {
            ran_for: Duration::from_secs(6),
            monitors: 1,
            devices: true,
            imaging: true,
            counts: TallySnapshot {
                sent: 10,
                acked: 10,
                records: 10,
                images_sent: 1,
                images_stored: 1,
                images_received: 1,
                ..TallySnapshot::default()
            },
            #[cfg(feature = "dicom")]
            image: None,
            leak_report: LeakReport::default(),
            interrupted: false,
        };
        assert!(good.passed());
        let with = |change: fn(&mut DemoSummary)| {
            let mut summary = good.clone();
            change(&mut summary);
            summary.passed()
        };
        assert!(!with(|s| s.counts.images_received = 0), "never arrived");
        assert!(!with(|s| {
            s.counts.images_received = 0;
            s.counts.images_stored = 0;
            s.counts.images_failed = 1;
        }));
        assert!(!with(|s| s.counts.images_bad = 1), "failed a check");
        assert!(!with(|s| {
            s.leak_report
                .findings
                .push(super::super::leak::LeakFinding {
                    kind: super::super::patients::IdentifierKind::Institution,
                    value: "Hollowmere General Hospital".into(),
                    place: "cloud imaging ingest: dicom/f1".into(),
                    count: 1,
                });
        }));
        // Without the imaging path nothing about images is required.
        assert!(with(|s| {
            s.imaging = false;
            s.counts.images_sent = 0;
            s.counts.images_stored = 0;
            s.counts.images_received = 0;
        }));
    }

    /// The verdict is not vacuous: an identifier that does reach the broker is found,
    /// even in another letter case, and named in the report.
    #[tokio::test]
    async fn leak_check_catches_an_identifier_published_to_the_cloud() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), GATEWAY_ID, VIEWER_CN, SystemTime::now()).unwrap();
        let patient = SyntheticPatient::new(0, days_since_epoch(SystemTime::now()));
        let ledger = Arc::new(LeakLedger::new(LeakScanner::new(
            patient.planted_identifiers(),
        )));
        let tap: IngressTap = {
            let ledger = ledger.clone();
            Arc::new(move |identity: &str, packet: &[u8]| {
                ledger.scan_cloud(identity, packet);
            })
        };
        let broker = Broker::start(BrokerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cert_chain: vec![pki.broker.cert_der()],
            key: pki.broker.key_der(),
            client_ca: pki.ca_der(),
            policy: AccessPolicy::new(TOPIC_ROOT, VIEWER_CN),
            tap: Some(tap),
        })
        .await
        .unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![pki.gateway.cert_der()], pki.gateway.key_der())
            .unwrap();
        let addr = broker.local_addr();
        let mut options = MqttOptions::new(GATEWAY_ID, addr.ip().to_string(), addr.port());
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, mut events) = AsyncClient::new(options, 10);
        let leaky = format!(
            "{{\"note\":\"{}\"}}",
            patient.mrn.to_ascii_lowercase() + " " + &patient.family.to_ascii_uppercase()
        );
        client
            .publish(
                format!("{TOPIC_ROOT}/{GATEWAY_ID}/records/observation"),
                QoS::AtLeastOnce,
                false,
                leaky,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !matches!(
                events.poll().await.unwrap(),
                Event::Incoming(Packet::PubAck(_))
            ) {}
        })
        .await
        .unwrap();
        broker.shutdown().await;

        let report = ledger.report();
        assert_eq!(report.leaks(), 2, "{report:?}");
        let values: Vec<&str> = report.findings.iter().map(|f| f.value.as_str()).collect();
        assert!(
            values.contains(&patient.mrn.as_str()) && values.contains(&patient.family.as_str()),
            "{values:?}"
        );
        assert!(report
            .findings
            .iter()
            .all(|f| f.place == format!("broker ingress from {GATEWAY_ID}")));
    }
}
