//! Config reload while running: watch the config file, and apply a valid edit of the
//! `[[device]]` list without a restart.
//!
//! - The file's *directory* is watched (notify), not the file: editors and config
//!   management replace files by rename, which a watch on the old inode would miss.
//!   Events are debounced ([`SETTLE`]) so a half-written file is not read mid-write; a
//!   periodic check of the file's modification time backs notify up (inotify can
//!   overflow, and some file systems do not report events at all).
//! - A change is parsed and validated exactly like a start (`Config::load`). An invalid
//!   file is refused with a log line naming file, key and reason and a `config.refused`
//!   alert; the running configuration stays. A valid one replaces the device list.
//! - Only devices are applied live. Any other section that differs is named in a log
//!   line saying it takes effect after a restart (listeners, certificates and the spool
//!   are not swapped under running connections).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use notify::Watcher;
use tokio::sync::{mpsc, watch};

use crate::config::Config;

/// Quiet time after the last file event before the file is read.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Fallback check of the file's modification time.
pub const POLL: Duration = Duration::from_secs(5);

/// What to do with an edited configuration.
#[derive(Debug, Clone)]
pub enum Reload {
    /// The edit changes nothing that runs.
    Unchanged,
    /// Apply the new device list; `restart_needed` lists other sections that changed.
    Apply {
        /// The new configuration.
        config: Box<Config>,
        /// Top-level sections that differ and need a restart to take effect.
        restart_needed: Vec<&'static str>,
    },
}

/// Compares a freshly loaded config with the running one.
#[must_use]
pub fn plan(running: &Config, edited: Config) -> Reload {
    let mut restart_needed = Vec::new();
    // Debug output is a faithful structural comparison for plain config data (no
    // floats that are NaN, no maps with random order: BTreeMap and Vec only).
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    for (name, changed) in [
        ("gateway", !same(&running.gateway, &edited.gateway)),
        ("cloud", !same(&running.cloud, &edited.cloud)),
        ("hl7", !same(&running.hl7, &edited.hl7)),
        ("spool", !same(&running.spool, &edited.spool)),
        ("phi", !same(&running.phi, &edited.phi)),
        ("logging", !same(&running.logging, &edited.logging)),
        ("agent_api", !same(&running.agent_api, &edited.agent_api)),
        ("status", !same(&running.status, &edited.status)),
    ] {
        if changed {
            restart_needed.push(name);
        }
    }
    if running.devices == edited.devices && restart_needed.is_empty() {
        return Reload::Unchanged;
    }
    Reload::Apply {
        config: Box::new(edited),
        restart_needed,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches `path` until `shutdown`, sending each valid, changed configuration on
/// `apply`. `on_refused` is called with the reason of each refused edit (the daemon turns
/// it into an alert record).
pub async fn watch_config(
    path: PathBuf,
    mut running: Config,
    apply: mpsc::Sender<Config>,
    on_refused: impl Fn(String) + Send,
    mut shutdown: watch::Receiver<bool>,
) {
    let (wake_tx, mut wake) = mpsc::channel::<()>(1);
    let file_name = path.file_name().map(std::ffi::OsStr::to_owned);
    let watcher = {
        let file_name = file_name.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == file_name.as_deref()),
                // An overflow or error: look at the file anyway.
                Err(_) => true,
            };
            if relevant {
                let _ = wake_tx.try_send(());
            }
        })
    };
    let directory = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(directory, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(directory = %directory.display(), error = %e, "cannot watch the config directory; checking every 5 s instead");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; checking the config every 5 s instead");
            None
        }
    };
    let mut last_seen = modified(&path);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = wake.recv() => {
                // Let the writer finish: wait until events stop for SETTLE.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(SETTLE) => break,
                        Some(()) = wake.recv() => {}
                    }
                }
            }
            _ = poll.tick() => {
                if modified(&path) == last_seen {
                    continue;
                }
            }
        }
        last_seen = modified(&path);
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Config::load(&path)).await
        };
        let edited = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(e)) => {
                tracing::error!(file = %e.file.display(), key = %e.key, reason = %e.reason, "config change refused; the running configuration stays");
                on_refused(e.to_string());
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload task failed");
                continue;
            }
        };
        match plan(&running, edited) {
            Reload::Unchanged => {}
            Reload::Apply {
                config,
                restart_needed,
            } => {
                if !restart_needed.is_empty() {
                    tracing::warn!(sections = ?restart_needed, "config changed outside [[device]]; those changes take effect after a restart");
                }
                running = *config;
                if apply.send(running.clone()).await.is_err() {
                    return;
                }
            }
        }
    }
}
