//! The gateway's lifecycle: start every component in dependency order, stop them in
//! reverse, losing nothing that was acknowledged.
//!
//! Start: data directory → pseudonym key → spool (quarantining a corrupt file) → MQTT
//! uplink → HL7 listener. The listener binds last, so a device is never acknowledged by
//! a gateway that cannot store.
//!
//! Stop (SIGTERM, Ctrl-C): the listener stops accepting and answers AR to new messages
//! while in-flight ones finish their spool commit and get their ACK; then the uplink
//! stops (records in flight stay in the spool and are replayed on the next start); then
//! the spool writer flushes and closes.
//!
//! Supervision (systemd `Type=notify`): the caller reports readiness once
//! [`Gateway::start`] returned, and keeps the service manager's watchdog fed with
//! [`keep_watchdog`] — which pings only while a [`Health`] probe shows the pipeline can
//! still store: the HL7 listener task runs and a request round-trips through the spool
//! writer's queue within a quarter of the watchdog timeout. A hung disk or a stuck writer
//! therefore stops the pings and lets systemd restart the process; an unreachable cloud
//! does not (the spool exists to ride out outages). The decision itself is the sans-IO
//! [`watchdog::Watchdog`].

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wardgate_device_adapters::hl7::{self as hl7_adapter, AckMode, ListenerConfig, ListenerStats};

use crate::audit::AuditLog;
use crate::config::{AckModeSetting, Config};
use crate::devices::{unix_ms, Registry};
use crate::phi::freetext::{FreeTextRules, NameTokens};
use crate::phi::{Hl7Rules, PseudonymKey, Sanitized};
use crate::pipeline::agent::AgentIngest;
use crate::pipeline::device_plane::{DevicePlane, Sinks};
use crate::pipeline::hl7::Hl7Ingest;
use crate::spool::{Spool, SpoolConfig, SpoolStats};
use crate::twin::{DeviceCapabilities, TwinChannels, TwinOptions};
use crate::uplink::mqtt;
use crate::uplink::UplinkStatus;

use self::alerts::Alerts;
use self::imaging::start_imaging;
use self::status_source::GatewayStatus;

/// Spool meta key of the learned patient-name tokens (keyed hashes, no plaintext).
const NAME_TOKENS_KEY: &str = "phi.name_tokens";

/// How often newly learned name tokens are saved (and once more at shutdown).
const NAME_TOKENS_SAVE_EVERY: Duration = Duration::from_secs(30);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory cannot be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The PHI stage could not start (pseudonym key).
    #[error(transparent)]
    Phi(#[from] crate::phi::PhiError),
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// The HL7 listener could not bind.
    #[error("hl7.listen {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A task of the gateway's own failed (a bug).
    #[error("internal error: {0}")]
    Internal(String),
    /// The uplink's configuration was refused (certificates, URL).
    #[error("uplink: {0}")]
    Uplink(#[from] crate::uplink::UplinkError),
    /// The agent API could not start (certificates, token files, bind).
    #[error("agent_api: {0}")]
    AgentApi(String),
    /// The updates manager could not start (store, staging area).
    #[error("updates: {0}")]
    Updates(String),
    /// The imaging path (outbox, uploader, DICOM receiver) could not start.
    #[error("imaging: {0}")]
    Imaging(String),
    /// The status endpoint could not start (token file, TLS, bind).
    #[error("status: {0}")]
    Status(String),
    /// The free-text PHI rules were refused.
    #[error("phi.free_text: {0}")]
    FreeText(String),
    /// The audit log cannot be opened (damaged chain, permissions).
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

/// A running gateway.
pub struct Gateway {
    hl7_addr: SocketAddr,
    agent_addr: Option<SocketAddr>,
    status_addr: Option<SocketAddr>,
    dicom_addr: Option<SocketAddr>,
    spool: Spool,
    shutdown: watch::Sender<bool>,
    listener_task: JoinHandle<()>,
    uplink_task: JoinHandle<()>,
    uplink_status: watch::Receiver<UplinkStatus>,
    hl7_stats: Arc<ListenerStats>,
    listener_running: Arc<AtomicBool>,
    /// Listeners besides HL7 (agent API, status), stopped with it.
    servers: Vec<(&'static str, JoinHandle<()>)>,
    plane_task: JoinHandle<()>,
    recorder_task: JoinHandle<()>,
    name_tokens_task: JoinHandle<()>,
    configs: mpsc::Sender<Config>,
    running_config: Config,
    status: GatewayStatus,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("hl7_addr", &self.hl7_addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts every component. Returns once the spool is open and the HL7 listener is bound.
    ///
    /// # Errors
    /// The first component that could not start.
    pub async fn start(config: Config) -> Result<Gateway, DaemonError> {
        let data_dir = &config.gateway.data_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| DaemonError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;

        let (key, created) = PseudonymKey::load_or_create(&config.pseudonym_key_path())?;
        if created {
            tracing::warn!(path = %config.pseudonym_key_path().display(), "created a new pseudonym key: back it up");
        }
        let rules = Hl7Rules::new(key.clone(), config.phi.free_text_allowed_codes.clone());

        let spool_config = SpoolConfig {
            path: data_dir.join("spool.db"),
            budget_bytes: config.spool.budget_mib * 1024 * 1024,
            ttl: config.ttls(),
            max_batch: config.spool.max_batch,
        };
        let (spool, report) = {
            let cfg = spool_config;
            tokio::task::spawn_blocking(move || Spool::open(cfg))
                .await
                .map_err(|e| DaemonError::Internal(format!("spool open task: {e}")))??
        };
        tracing::info!(records = report.records, bytes = report.bytes, "spool open");
        let alerts = Arc::new(Alerts::new(spool.clone()));
        if let Some(quarantined) = &report.quarantined {
            alerts
                .raise(
                    "spool.quarantined",
                    format!(
                        "the spool file was unreadable and was moved aside to {}; a new spool was started",
                        quarantined.display()
                    ),
                )
                .await;
        }
        let audit = Arc::new(AuditLog::open(&data_dir.join(crate::audit::FILE_NAME))?);

        // Patient names seen in HL7, as keyed hashes, so log lines can be scrubbed of
        // them; kept across restarts in the spool's meta table.
        let name_tokens = Arc::new(NameTokens::new(
            &key,
            config.phi.free_text.name_token_capacity,
        ));
        match spool.get_meta(NAME_TOKENS_KEY).await {
            Ok(Some(bytes)) => {
                if let Err(e) = name_tokens.import(&bytes) {
                    tracing::error!(error = %e, "stored name tokens unusable (was the pseudonym key replaced?); starting empty");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read stored name tokens; starting empty"),
        }
        let free_text = Arc::new(
            FreeTextRules::new(&config.phi.free_text, name_tokens.clone())
                .map_err(DaemonError::FreeText)?,
        );
        let rules = rules.with_name_tokens(name_tokens.clone());

        let (shutdown, shutdown_rx) = watch::channel(false);

        // Devices: the registry, and the recorder that spools their state changes.
        let (registry, transitions) = Registry::new(Arc::new(unix_ms));
        let recorder_task = tokio::spawn(record_transitions(
            transitions,
            spool.clone(),
            shutdown_rx.clone(),
        ));

        // The uplink, with the twin on the same connection.
        let uplink_config = config.mqtt_uplink();
        let (status_tx, uplink_status) = watch::channel(UplinkStatus::default());
        let (reports_tx, reports_rx) = watch::channel(None);
        let (outcomes_tx, outcomes_rx) = mpsc::channel(16);
        let twin = TwinChannels {
            reports: reports_rx,
            outcomes: outcomes_tx,
            devices: {
                let registry = registry.clone();
                Arc::new(move || {
                    registry
                        .snapshot()
                        .iter()
                        .map(DeviceCapabilities::from_view)
                        .collect()
                })
            },
            options: TwinOptions::default(),
        };
        let uplink_task = {
            let source = Arc::new(spool.clone());
            let shutdown = shutdown_rx.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    mqtt::run_with_twin(uplink_config, source, status_tx, shutdown, Some(twin))
                        .await
                {
                    tracing::error!(error = %e, "MQTT uplink stopped");
                }
            })
        };

        let hl7_stats = Arc::new(ListenerStats::new());
        let mut status = GatewayStatus {
            gateway_id: config.gateway.id.clone(),
            started_at_ms: unix_ms(),
            spool: spool.clone(),
            uplink: uplink_status.clone(),
            hl7: hl7_stats.clone(),
            registry: registry.clone(),
            alerts: alerts.clone(),
            imaging: None,
            updates: None,
        };
        let mut servers = Vec::new();

        // Cybersecurity updates: verified against TUF, staged, offered through the agent API.
        let updates = match &config.updates {
            Some(updates_config) => {
                let runtime = updates::start_updates(
                    updates_config,
                    data_dir,
                    registry.clone(),
                    audit.clone(),
                    alerts.clone(),
                    spool.clone(),
                    shutdown_rx.clone(),
                )
                .await?;
                status.updates = Some(runtime.view.clone());
                Some(runtime)
            }
            None => None,
        };

        // The agent API.
        let mut agent_addr = None;
        let agent = match &config.agent_api {
            Some(api) => {
                let runtime = crate::agent_api::AgentApiRuntime::load(api, &config.agent_devices())
                    .map_err(|e| DaemonError::AgentApi(e.to_string()))?;
                let listener = tokio::net::TcpListener::bind(api.listen)
                    .await
                    .map_err(|e| DaemonError::AgentApi(format!("listen {}: {e}", api.listen)))?;
                agent_addr = listener.local_addr().ok();
                let mut ingest = AgentIngest::new(
                    spool.clone(),
                    registry.clone(),
                    free_text.clone(),
                    plane::device_settings(&config),
                );
                if let Some(updates) = &updates {
                    ingest = ingest.with_updates(updates.backend.clone());
                }
                let backend = Arc::new(ingest);
                let shutdown = shutdown_rx.clone();
                let serving = backend.clone();
                let handle = runtime.clone();
                servers.push((
                    "agent API",
                    tokio::spawn(async move {
                        if let Err(e) =
                            crate::agent_api::serve(listener, runtime, serving, shutdown).await
                        {
                            tracing::error!(error = %e, "agent API stopped");
                        }
                    }),
                ));
                Some((backend, handle))
            }
            None => None,
        };

        // Imaging: the bulk upload outbox and its QUIC sender, and the DICOM receiver
        // that de-identifies into it.
        let imaging = start_imaging(&config, &key, &registry, &alerts, &shutdown_rx).await?;
        let dicom_addr = imaging.dicom_addr;
        servers.extend(imaging.tasks);
        status.imaging = imaging.handles;

        // The device plane: Modbus pollers and log followers, under config reloads and
        // the cloud's allow-listed settings.
        let (configs, configs_rx) = mpsc::channel(4);
        let plane_task = {
            let sinks = Sinks {
                #[cfg(feature = "modbus")]
                modbus: Arc::new(crate::pipeline::modbus::ModbusIngest::new(
                    spool.clone(),
                    registry.clone(),
                    alerts.clone(),
                )),
                #[cfg(feature = "logfile")]
                logs: Arc::new(crate::pipeline::logfile::LogIngest::new(
                    spool.clone(),
                    registry.clone(),
                    free_text.clone(),
                )),
            };
            let plane = DevicePlane::new(registry.clone(), sinks);
            let overrides = plane::load_overrides(&spool).await;
            let control = plane::PlaneLoop {
                plane,
                registry: registry.clone(),
                spool: spool.clone(),
                audit,
                alerts: alerts.clone(),
                agent,
                configs: configs_rx,
                outcomes: outcomes_rx,
                reports: reports_tx,
                updates: updates.as_ref().map(|u| u.instructions.clone()),
                updates_view: updates.as_ref().map(|u| u.view.clone()),
            };
            let devices = config.devices.clone();
            let shutdown = shutdown_rx.clone();
            tokio::spawn(control.run(devices, overrides, shutdown))
        };
        if let Some(updates) = updates {
            servers.push(("updates manager", updates.task));
        }

        let listener = tokio::net::TcpListener::bind(config.hl7.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: config.hl7.listen,
                source,
            })?;
        let hl7_addr = listener.local_addr().map_err(|source| DaemonError::Bind {
            addr: config.hl7.listen,
            source,
        })?;
        let listener_running = Arc::new(AtomicBool::new(true));
        let listener_task = {
            let running = listener_running.clone();
            let sink =
                Arc::new(Hl7Ingest::new(rules, spool.clone()).with_registry(registry.clone()));
            let cfg = listener_config(&config);
            let stats = hl7_stats.clone();
            let shutdown = shutdown_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = hl7_adapter::serve(listener, cfg, sink, stats, shutdown).await {
                    tracing::error!(error = %e, "HL7 listener stopped");
                }
                running.store(false, Ordering::SeqCst);
            })
        };

        // The technician's status endpoint, last: it shows everything above.
        let mut status_addr = None;
        if let Some(status_config) = &config.status {
            let runtime = crate::status::StatusRuntime::load(status_config)
                .map_err(|e| DaemonError::Status(e.to_string()))?;
            let listener = tokio::net::TcpListener::bind(status_config.listen)
                .await
                .map_err(|e| {
                    DaemonError::Status(format!("listen {}: {e}", status_config.listen))
                })?;
            status_addr = listener.local_addr().ok();
            let source = Arc::new(status.clone());
            let shutdown = shutdown_rx.clone();
            servers.push((
                "status endpoint",
                tokio::spawn(async move {
                    if let Err(e) = crate::status::serve(listener, runtime, source, shutdown).await
                    {
                        tracing::error!(error = %e, "status endpoint stopped");
                    }
                }),
            ));
        }

        let name_tokens_task =
            tokio::spawn(save_name_tokens(name_tokens, spool.clone(), shutdown_rx));
        tracing::info!(%hl7_addr, gateway = %config.gateway.id, devices = config.devices.len(), "wardgate serving");

        Ok(Gateway {
            hl7_addr,
            agent_addr,
            status_addr,
            dicom_addr,
            spool,
            shutdown,
            listener_task,
            uplink_task,
            uplink_status,
            hl7_stats,
            listener_running,
            servers,
            plane_task,
            recorder_task,
            name_tokens_task,
            configs,
            running_config: config,
            status,
        })
    }

    /// A handle for liveness probes that outlives neither the spool nor the listener
    /// (it fails once they stop). Cheap; clone it into a watchdog task.
    #[must_use]
    pub fn health(&self) -> Health {
        Health {
            spool: self.spool.clone(),
            listener_running: self.listener_running.clone(),
        }
    }

    /// The address the HL7 listener is bound to (useful when configured with port 0).
    #[must_use]
    pub fn hl7_addr(&self) -> SocketAddr {
        self.hl7_addr
    }

    /// The agent API's address, when it is configured.
    #[must_use]
    pub fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent_addr
    }

    /// The DICOM receiver's address, when it is configured.
    #[must_use]
    pub fn dicom_addr(&self) -> Option<SocketAddr> {
        self.dicom_addr
    }

    /// The status endpoint's address, when it is configured.
    #[must_use]
    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.status_addr
    }

    /// The figures the status endpoint serves.
    #[must_use]
    pub fn status(&self) -> crate::status::snapshot::StatusSnapshot {
        use crate::status::StatusSource;
        self.status.snapshot()
    }

    /// Watches the configuration file and applies valid edits of the `[[device]]` list
    /// while running (see [`reload`]). Stops with the gateway.
    pub fn watch_config(&self, path: std::path::PathBuf) {
        let configs = self.configs.clone();
        let alerts = self.status.alerts.clone();
        let shutdown = self.shutdown.subscribe();
        let running = self.running_config.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::spawn(reload::watch_config(
            path,
            running,
            configs,
            move |reason| {
                let alerts = alerts.clone();
                handle.spawn(async move {
                    alerts
                        .raise(
                            "config.refused",
                            format!(
                                "config change refused, the running configuration stays: {reason}"
                            ),
                        )
                        .await
                });
            },
            shutdown,
        ));
    }

    /// Spool figures.
    #[must_use]
    pub fn spool_stats(&self) -> SpoolStats {
        self.spool.stats()
    }

    /// The uplink's current status.
    #[must_use]
    pub fn uplink_status(&self) -> UplinkStatus {
        self.uplink_status.borrow().clone()
    }

    /// HL7 listener counters.
    #[must_use]
    pub fn hl7_stats(&self) -> &ListenerStats {
        &self.hl7_stats
    }

    /// Stops in reverse order; see the module doc.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.listener_task.await {
            tracing::error!(error = %e, "HL7 listener task failed");
        }
        for (name, task) in self.servers {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "{name} task failed");
            }
        }
        // Device tasks finish the chunk or poll they are in (each bounded), then stop.
        if let Err(e) = self.plane_task.await {
            tracing::error!(error = %e, "device plane task failed");
        }
        for (name, task) in [
            ("state recorder", self.recorder_task),
            ("name-token saver", self.name_tokens_task),
        ] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "{name} task failed");
            }
        }
        // The uplink stops at its next await point; in-flight records stay leased-but-unacked
        // in the spool and are replayed next start. Bound the wait so a hung broker
        // connection cannot hold the shutdown past systemd's TimeoutStopSec.
        if tokio::time::timeout(Duration::from_secs(5), self.uplink_task)
            .await
            .is_err()
        {
            tracing::warn!("uplink did not stop within 5 s; abandoning its in-flight publishes");
        }
        self.spool.close().await;
        tracing::info!("wardgate stopped");
    }
}

/// Probes whether the gateway can still take in and store data. See the module doc.
#[derive(Debug, Clone)]
pub struct Health {
    spool: Spool,
    listener_running: Arc<AtomicBool>,
}

/// Meta key read by the probe. Never written: reading a missing key is an ordinary
/// query the writer thread answers, and it touches nothing on disk that matters.
const PROBE_META_KEY: &str = "watchdog.probe";

impl Health {
    /// One probe: is the HL7 listener task alive, and does a request queued behind
    /// everything already in the spool writer's queue get its answer within `budget`?
    pub async fn check(&self, budget: Duration) -> watchdog::ProbeOutcome {
        use watchdog::ProbeOutcome;
        if !self.listener_running.load(Ordering::SeqCst) {
            return ProbeOutcome::ListenerStopped;
        }
        match tokio::time::timeout(budget, self.spool.get_meta(PROBE_META_KEY)).await {
            Ok(Ok(_)) => ProbeOutcome::Answered,
            Ok(Err(e)) => ProbeOutcome::SpoolRefused(e.to_string()),
            Err(_) => ProbeOutcome::TimedOut,
        }
    }
}

/// Feeds the service manager's watchdog for as long as the future runs (abort the task,
/// or drop the future, when shutdown begins): every [`watchdog::Watchdog::period`] it
/// probes `health` and calls `ping` only if [`watchdog::Watchdog::judge`] says so.
/// `ping` sends `WATCHDOG=1`; its errors are logged, never fatal (the service manager
/// acts on missing pings, not on us).
pub async fn keep_watchdog<F>(health: Health, timeout: Duration, mut ping: F)
where
    F: FnMut() -> std::io::Result<()>,
{
    let mut dog = watchdog::Watchdog::new(timeout);
    let origin = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(dog.period());
    // After a stall, probe once and carry on rather than bursting through missed ticks.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = origin.elapsed();
        let outcome = health.check(dog.probe_budget()).await;
        match dog.judge(started, origin.elapsed(), &outcome) {
            watchdog::Verdict::Ping { recovered } => {
                if recovered {
                    tracing::warn!("gateway healthy again; watchdog pings resumed");
                }
                if let Err(e) = ping() {
                    tracing::warn!(error = %e, "cannot send WATCHDOG=1 to the service manager");
                }
            }
            watchdog::Verdict::Withhold { reason, first } => {
                if first {
                    tracing::error!(
                        alert = "watchdog.withheld",
                        %reason,
                        "gateway not making progress; withholding watchdog pings so the service manager restarts it"
                    );
                }
            }
        }
    }
}

pub mod alerts;
mod imaging;
pub mod plane;
pub mod reload;
pub mod status_source;
pub mod updates;
pub mod watchdog;

/// Spools device state changes until shutdown, then those still queued.
async fn record_transitions(
    mut transitions: mpsc::Receiver<wardgate_proto::DeviceStateChange>,
    spool: Spool,
    mut shutdown: watch::Receiver<bool>,
) {
    let store = |change| {
        let spool = spool.clone();
        async move {
            match Sanitized::device_state(change) {
                Ok(record) => {
                    if let Err(e) = spool.append(record).await {
                        tracing::error!(error = %e, "could not spool a device state change");
                    }
                }
                Err(e) => tracing::error!(error = %e, "could not encode a device state change"),
            }
        }
    };
    loop {
        tokio::select! {
            change = transitions.recv() => match change {
                Some(change) => store(change).await,
                None => return,
            },
            _ = shutdown.changed() => break,
        }
    }
    while let Ok(change) = transitions.try_recv() {
        store(change).await;
    }
}

/// Saves newly learned name tokens every [`NAME_TOKENS_SAVE_EVERY`] and at shutdown.
async fn save_name_tokens(
    tokens: Arc<NameTokens>,
    spool: Spool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut saved = tokens.len();
    let mut tick = tokio::time::interval(NAME_TOKENS_SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let now = tokens.len();
        if now != saved {
            match spool.put_meta(NAME_TOKENS_KEY, tokens.export()).await {
                Ok(()) => saved = now,
                Err(e) => tracing::error!(error = %e, "could not save name tokens"),
            }
        }
        if stopping {
            return;
        }
    }
}

fn ack_mode(setting: AckModeSetting) -> AckMode {
    match setting {
        AckModeSetting::Auto => AckMode::Auto,
        AckModeSetting::Original => AckMode::OriginalAlways,
    }
}

fn listener_config(config: &Config) -> ListenerConfig {
    let hl7 = &config.hl7;
    ListenerConfig {
        max_message_bytes: hl7.max_message_bytes,
        idle_timeout: Duration::from_secs(hl7.idle_timeout_secs),
        max_connections: hl7.max_connections,
        rate_per_source_per_sec: NonZeroU32::new(hl7.rate_per_source_per_sec)
            .unwrap_or(NonZeroU32::MIN),
        rate_burst: NonZeroU32::new(hl7.rate_burst).unwrap_or(NonZeroU32::MIN),
        allow_sources: hl7.allow_sources.clone(),
        ack_mode: ack_mode(hl7.ack_mode),
        ack_mode_by_application: hl7
            .ack_mode_by_application
            .iter()
            .map(|(k, v)| (k.clone(), ack_mode(*v)))
            .collect(),
        application: hl7.application.clone(),
        facility: hl7.facility.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open_spool(dir: &std::path::Path) -> Spool {
        let (spool, _) = Spool::open(SpoolConfig {
            path: dir.join("spool.db"),
            budget_bytes: 1024 * 1024,
            ttl: [None; 4],
            max_batch: 16,
        })
        .unwrap();
        spool
    }

    #[tokio::test]
    async fn health_probe_round_trips_through_the_spool_writer() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health {
            spool: open_spool(dir.path()),
            listener_running: Arc::new(AtomicBool::new(true)),
        };
        let budget = Duration::from_secs(10);
        assert_eq!(health.check(budget).await, watchdog::ProbeOutcome::Answered);

        health.listener_running.store(false, Ordering::SeqCst);
        assert_eq!(
            health.check(budget).await,
            watchdog::ProbeOutcome::ListenerStopped
        );

        health.listener_running.store(true, Ordering::SeqCst);
        health.spool.close().await;
        assert!(matches!(
            health.check(budget).await,
            watchdog::ProbeOutcome::SpoolRefused(_)
        ));
    }

    /// Counts the pings `keep_watchdog` sends in `run` with a 200 ms watchdog timeout.
    async fn pings_within(health: Health, run: Duration) -> usize {
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pings.clone();
        let dog = keep_watchdog(health, Duration::from_millis(200), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let _ = tokio::time::timeout(run, dog).await;
        pings.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn watchdog_driver_pings_only_while_the_spool_answers() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health {
            spool: open_spool(dir.path()),
            listener_running: Arc::new(AtomicBool::new(true)),
        };
        // Ticks every 100 ms, the first at once: a healthy gateway pings on each.
        let healthy = pings_within(health.clone(), Duration::from_millis(550)).await;
        assert!(healthy >= 3, "only {healthy} pings from a healthy gateway");

        // A writer that refuses (here: closed) must starve systemd's watchdog.
        health.spool.close().await;
        assert_eq!(pings_within(health, Duration::from_millis(550)).await, 0);
    }
}
