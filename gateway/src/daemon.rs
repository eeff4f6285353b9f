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

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wardgate_device_adapters::hl7::{self as hl7_adapter, AckMode, ListenerConfig, ListenerStats};

use crate::config::{AckModeSetting, Config};
use crate::phi::{Hl7Rules, PseudonymKey, Sanitized};
use crate::pipeline::hl7::Hl7Ingest;
use crate::spool::{Spool, SpoolConfig, SpoolStats};
use crate::uplink::mqtt;
use crate::uplink::UplinkStatus;

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
}

/// A running gateway.
pub struct Gateway {
    hl7_addr: SocketAddr,
    spool: Spool,
    shutdown: watch::Sender<bool>,
    listener_task: JoinHandle<()>,
    uplink_task: JoinHandle<()>,
    uplink_status: watch::Receiver<UplinkStatus>,
    hl7_stats: Arc<ListenerStats>,
    listener_running: Arc<AtomicBool>,
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
        let rules = Hl7Rules::new(key, config.phi.free_text_allowed_codes.clone());

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
        if let Some(quarantined) = &report.quarantined {
            let message = format!(
                "the spool file was unreadable and was moved aside to {}; a new spool was started",
                quarantined.display()
            );
            tracing::error!(alert = "spool.quarantined", "{message}");
            // Tell the cloud too; if even this fails, the log line above stands.
            if let Ok(alert) = Sanitized::gateway_alert("spool.quarantined", &message) {
                if let Err(e) = spool.append(alert).await {
                    tracing::error!(error = %e, "could not spool the quarantine alert");
                }
            }
        }

        let (shutdown, shutdown_rx) = watch::channel(false);

        let uplink_config = config.mqtt_uplink();
        let (status_tx, uplink_status) = watch::channel(UplinkStatus::default());
        let uplink_task = {
            let source = Arc::new(spool.clone());
            let shutdown = shutdown_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = mqtt::run(uplink_config, source, status_tx, shutdown).await {
                    tracing::error!(error = %e, "MQTT uplink stopped");
                }
            })
        };

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
        let hl7_stats = Arc::new(ListenerStats::new());
        let listener_running = Arc::new(AtomicBool::new(true));
        let listener_task = {
            let running = listener_running.clone();
            let sink = Arc::new(Hl7Ingest::new(rules, spool.clone()));
            let cfg = listener_config(&config);
            let stats = hl7_stats.clone();
            let shutdown = shutdown_rx;
            tokio::spawn(async move {
                if let Err(e) = hl7_adapter::serve(listener, cfg, sink, stats, shutdown).await {
                    tracing::error!(error = %e, "HL7 listener stopped");
                }
                running.store(false, Ordering::SeqCst);
            })
        };
        tracing::info!(%hl7_addr, gateway = %config.gateway.id, "wardgate serving");

        Ok(Gateway {
            hl7_addr,
            spool,
            shutdown,
            listener_task,
            uplink_task,
            uplink_status,
            hl7_stats,
            listener_running,
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

pub mod watchdog;

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
