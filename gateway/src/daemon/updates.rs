//! The updates manager: the daemon's side of cybersecurity updates (`[updates]`).
//!
//! It owns the verified view of the TUF repository and the staging area, takes the
//! cloud's update instructions (from the twin's desired `updates.assignments`), and keeps
//! the durable rollouts ([`crate::updates::store`]) in step with the device registry.
//! Devices pull through the agent API ([`RolloutUpdates`], built here).
//!
//! # Invariants
//! - **Every instruction is audited** before it takes effect: accepted assignments,
//!   refusals (schema, a target the verified TUF metadata does not list, no device it
//!   could address), cancellations. Every verification result (a refresh or a target
//!   staged, or the attack a refusal defends against) is audited, and a failed one is a
//!   `updates.verification_failed` alert; nothing is staged then.
//! - An assignment is accepted only against **verified, unexpired** metadata: the
//!   repository is refreshed first if the last refresh is older than the refresh interval.
//! - A target is staged only through [`TrustedRepository::fetch_and_stage`] (length and
//!   hashes checked); targets no active assignment needs are removed at each refresh.
//! - An assignment that arrives while no verified metadata can be had waits (audited as
//!   deferred) and is taken up after the next successful refresh; a twin patch is
//!   delivered once, so refusing it would lose it.
//! - Rollout changes (devices reporting, waves, halts) are spooled as `update_rollout`
//!   records; a halt is also an alert.
//! - Membership follows the registry: after a configuration reload, each assignment's
//!   devices are recomputed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::alerts::Alerts;
use super::DaemonError;
use crate::agent_api::updates::{system_now, ReportEvent, RolloutUpdates, StagedTargets};
use crate::audit::AuditLog;
use crate::devices::{unix_ms, Registry};
use crate::phi::Sanitized;
use crate::spool::Spool;
use crate::twin::core::UpdateInstruction;
use crate::updates::assignment::{Assignment, Cancellation};
use crate::updates::config::UpdatesConfig;
use crate::updates::rollout::{Halt, Stage, Summary};
use crate::updates::staging::Staging;
use crate::updates::store::{DurableRollouts, StoreError};
use crate::updates::trust::{TrustError, TrustedRepository};
use crate::updates::StagedTarget;

/// Where updates live under `gateway.data_dir`.
pub const UPDATES_DIR: &str = "updates";

/// Audit entry kinds.
pub mod audit_kind {
    /// An assignment was accepted.
    pub const ACCEPTED: &str = "updates.assignment.accepted";
    /// An assignment or cancellation was refused.
    pub const REFUSED: &str = "updates.assignment.refused";
    /// An assignment was cancelled.
    pub const CANCELLED: &str = "updates.assignment.cancelled";
    /// Metadata or a target passed verification.
    pub const VERIFIED: &str = "updates.verification.ok";
    /// Metadata or a target failed verification.
    pub const VERIFICATION_FAILED: &str = "updates.verification.failed";
    /// A rollout halted.
    pub const HALTED: &str = "updates.halted";
    /// An assignment waits for verifiable metadata.
    pub const DEFERRED: &str = "updates.assignment.deferred";
    /// The repository could not be reached (not a verification failure).
    pub const UNAVAILABLE: &str = "updates.repository.unavailable";
}

/// What the rest of the daemon holds of the updates manager.
pub(super) struct UpdatesRuntime {
    /// The agent API's update backend.
    pub backend: Arc<RolloutUpdates>,
    /// Where the twin's update instructions go.
    pub instructions: mpsc::Sender<UpdateInstruction>,
    /// The rollouts' summaries and the staged targets, for the twin and the status page.
    pub view: watch::Receiver<UpdatesView>,
    /// The manager task.
    pub task: JoinHandle<()>,
}

/// The state of updates, as the twin and the status page show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdatesView {
    /// Every rollout, in arrival order.
    pub rollouts: Vec<Summary>,
    /// Every staged target.
    pub staged: Vec<StagedTarget>,
    /// When the metadata was last verified (Unix ms), if ever since start.
    pub verified_at_ms: Option<u64>,
    /// Each device's place in its most recent rollout (not `pending`).
    pub devices: std::collections::BTreeMap<String, crate::twin::DeviceUpdateReport>,
}

/// The staging area as the agent API sees it.
struct StagingTargets(Arc<Staging>);

impl StagedTargets for StagingTargets {
    fn staged(&self, name: &str) -> Option<StagedTarget> {
        self.0.get(name)
    }
}

/// Opens the update store and staging area and starts the manager.
pub(super) async fn start_updates(
    config: &UpdatesConfig,
    data_dir: &Path,
    registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    alerts: Arc<Alerts>,
    spool: Spool,
    shutdown: watch::Receiver<bool>,
) -> Result<UpdatesRuntime, DaemonError> {
    let dir = data_dir.join(UPDATES_DIR);
    let budget = config.staging_budget_bytes;
    let (staging, rollouts) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let fail = |what: &str, e: &dyn std::fmt::Display| {
                DaemonError::Updates(format!("{what} in {}: {e}", dir.display()))
            };
            std::fs::create_dir_all(&dir).map_err(|e| fail("creating the directory", &e))?;
            let staging = Staging::open(&dir.join("staged"), budget)
                .map_err(|e| fail("opening the staging area", &e))?;
            let rollouts = DurableRollouts::open(&dir.join("updates.db"), unix_ms())
                .map_err(|e| fail("opening the update store", &e))?;
            Ok::<_, DaemonError>((staging, rollouts))
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("updates open task: {e}")))??
    };
    let staging = Arc::new(staging);
    let rollouts = Arc::new(Mutex::new(rollouts));
    let (events_tx, events) = mpsc::unbounded_channel();
    let backend = Arc::new(
        RolloutUpdates::new(
            rollouts.clone(),
            registry.clone(),
            Arc::new(StagingTargets(staging.clone())),
            Some(staging.metadata_dir().to_path_buf()),
            system_now(),
        )
        .with_reporting(audit.clone(), events_tx),
    );
    let (instructions, instructions_rx) = mpsc::channel(64);
    let (view_tx, view) = watch::channel(UpdatesView::default());
    let manager = Manager {
        config: config.clone(),
        data_dir: data_dir.to_path_buf(),
        staging,
        rollouts,
        registry,
        audit,
        alerts,
        spool,
        repository: None,
        verified_at: None,
        verified_at_ms: None,
        view: view_tx,
        pending: Vec::new(),
        refused: std::collections::HashSet::new(),
        current: None,
    };
    let task = tokio::spawn(manager.run(instructions_rx, events, shutdown));
    Ok(UpdatesRuntime {
        backend,
        instructions,
        view,
        task,
    })
}

struct Manager {
    config: UpdatesConfig,
    data_dir: std::path::PathBuf,
    staging: Arc<Staging>,
    rollouts: Arc<Mutex<DurableRollouts>>,
    registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    alerts: Arc<Alerts>,
    spool: Spool,
    repository: Option<TrustedRepository>,
    verified_at: Option<Instant>,
    verified_at_ms: Option<u64>,
    view: watch::Sender<UpdatesView>,
    /// Assignments received while no verified metadata was available.
    pending: Vec<Assignment>,
    /// Instructions refused in this run (fingerprints), not re-audited on redelivery.
    refused: std::collections::HashSet<u64>,
    /// The fingerprint of the instruction being handled.
    current: Option<u64>,
}

impl Manager {
    async fn run(
        mut self,
        mut instructions: mpsc::Receiver<UpdateInstruction>,
        mut events: mpsc::UnboundedReceiver<ReportEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut registry_changes = self.registry.subscribe_changes();
        let mut refresh =
            tokio::time::interval(Duration::from_secs(self.config.refresh_interval_secs));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish_view();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(instruction) = instructions.recv() => self.instruction(instruction).await,
                Some(event) = events.recv() => self.report_event(event).await,
                Ok(()) = registry_changes.changed() => self.sync_members().await,
                _ = refresh.tick() => {
                    if self.refresh().await {
                        for assignment in std::mem::take(&mut self.pending) {
                            self.assign(assignment).await;
                        }
                    }
                    self.sync_members().await;
                    self.stage_needed().await;
                    self.remove_unneeded().await;
                }
            }
            self.publish_view();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DurableRollouts> {
        // Memory changes only after the store's commit, so a poisoned state is consistent.
        self.rollouts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_view(&self) {
        let (rollouts, devices) = {
            let durable = self.lock();
            let mut devices = std::collections::BTreeMap::new();
            let mut since = std::collections::BTreeMap::new();
            for rollout in durable.rollouts().iter() {
                for (device, progress) in &rollout.record().devices {
                    if !progress.member || progress.stage == Stage::Pending {
                        continue;
                    }
                    if since.get(device).is_some_and(|&t| t > progress.since_ms) {
                        continue;
                    }
                    since.insert(device.clone(), progress.since_ms);
                    devices.insert(
                        device.clone(),
                        crate::twin::DeviceUpdateReport {
                            assignment: rollout.assignment().id.clone(),
                            stage: progress.stage.name().to_owned(),
                            reason: progress.stage.reason().map(str::to_owned),
                        },
                    );
                }
            }
            (durable.summaries(), devices)
        };
        let view = UpdatesView {
            rollouts,
            staged: self.staging.list(),
            verified_at_ms: self.verified_at_ms,
            devices,
        };
        self.view.send_if_modified(|current| {
            let changed = *current != view;
            *current = view;
            changed
        });
    }

    async fn audit(&self, kind: &str, subject: &str, detail: &str) -> bool {
        match self.audit.append_async(kind, subject, detail).await {
            Ok(_) => true,
            Err(e) => {
                self.alerts
                    .raise(
                        "audit.failed",
                        format!("cannot write the audit log; update instruction not applied: {e}"),
                    )
                    .await;
                false
            }
        }
    }

    /// Refreshes and verifies the TUF metadata; keeps the previous verified view if it
    /// fails (nothing new is staged from unverified metadata).
    async fn refresh(&mut self) -> bool {
        match TrustedRepository::load(&self.config.repository, &self.data_dir).await {
            Ok(repository) => {
                let v = repository.versions();
                let detail = format!(
                    "metadata verified: root v{}, timestamp v{}, snapshot v{}, targets v{}; {} targets",
                    v.root,
                    v.timestamp,
                    v.snapshot,
                    v.targets,
                    repository.targets().len()
                );
                let changed = self
                    .repository
                    .as_ref()
                    .is_none_or(|old| old.versions() != v);
                if changed {
                    self.audit(audit_kind::VERIFIED, "metadata", &detail).await;
                    tracing::info!("{detail}");
                }
                if let Err(e) = repository.stage_metadata(&self.staging) {
                    tracing::warn!(error = %e, "cannot stage the verified metadata for devices");
                }
                self.repository = Some(repository);
                self.verified_at = Some(Instant::now());
                self.verified_at_ms = Some(unix_ms());
                true
            }
            Err(e) => {
                self.verification_failed("metadata", &e).await;
                false
            }
        }
    }

    async fn verification_failed(&self, subject: &str, e: &TrustError) {
        let Some(class) = e.attack_class() else {
            // Unreachable server, disk, configuration: nothing was verified either way.
            let detail = format!("{e}");
            self.audit(audit_kind::UNAVAILABLE, subject, &detail).await;
            self.alerts
                .raise(
                    "updates.unavailable",
                    format!(
                        "update {subject} not verified now: {detail}; retried at the next refresh"
                    ),
                )
                .await;
            return;
        };
        let detail = format!("{e} (attack class: {})", class.as_str());
        self.audit(audit_kind::VERIFICATION_FAILED, subject, &detail)
            .await;
        self.alerts
            .raise(
                "updates.verification_failed",
                format!("update {subject} refused: {detail}; nothing was staged"),
            )
            .await;
    }

    /// The verified repository, refreshed first if the last verification is older than
    /// the refresh interval.
    async fn fresh_repository(&mut self) -> Option<&TrustedRepository> {
        let stale = self.verified_at.is_none_or(|at| {
            at.elapsed() >= Duration::from_secs(self.config.refresh_interval_secs)
        });
        if stale {
            self.refresh().await;
        }
        self.repository.as_ref()
    }

    async fn instruction(&mut self, instruction: UpdateInstruction) {
        // The twin redelivers the whole desired state on every connect: an instruction
        // refused already in this run is not audited and alerted again.
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            instruction.id.hash(&mut hasher);
            instruction.document.hash(&mut hasher);
            hasher.finish()
        };
        if self.refused.contains(&fingerprint) {
            return;
        }
        self.current = Some(fingerprint);
        self.handle(instruction).await;
        self.current = None;
    }

    async fn handle(&mut self, instruction: UpdateInstruction) {
        let subject = instruction.id.clone();
        match instruction.document {
            None => {
                let cancellation = Cancellation {
                    id: instruction.id,
                    reason: Some("deleted from the desired state".into()),
                };
                self.cancel(cancellation).await;
            }
            Some(document) => match Assignment::parse(&document) {
                Ok(assignment) => self.assign(assignment).await,
                Err(refusal) => {
                    self.refuse(&subject, &refusal.to_string()).await;
                }
            },
        }
    }

    async fn refuse(&mut self, subject: &str, reason: &str) {
        if let Some(fingerprint) = self.current {
            self.refused.insert(fingerprint);
        }
        self.audit(audit_kind::REFUSED, subject, reason).await;
        self.alerts
            .raise(
                "updates.refused",
                format!("update assignment {subject} refused: {reason}"),
            )
            .await;
    }

    async fn assign(&mut self, assignment: Assignment) {
        let id = assignment.id.clone();
        let known = self
            .lock()
            .rollouts()
            .get(&id)
            .map(|r| r.assignment() == &assignment);
        match known {
            // A redelivery (the twin sends the whole desired state on every connect).
            Some(true) => return,
            Some(false) => {
                self.refuse(
                    &id,
                    "an assignment with this id exists with other content; ids are never reused",
                )
                .await;
                return;
            }
            None => {}
        }
        if self.pending.iter().any(|p| p.id == id) {
            return;
        }
        let Some(repository) = self.fresh_repository().await else {
            // Taken up again after the next successful refresh: a twin patch is not
            // delivered twice, so refusing here would lose it.
            self.audit(
                audit_kind::DEFERRED,
                &id,
                "waiting: the update repository's metadata could not be verified yet",
            )
            .await;
            self.pending.push(assignment);
            return;
        };
        let Some(target) = repository.target(&assignment.target) else {
            self.refuse(
                &id,
                "its target is not listed in the verified TUF targets metadata",
            )
            .await;
            return;
        };
        let required_kind = target.custom_str("device_kind").map(str::to_owned);
        let members = self.members_of(&assignment, required_kind.as_deref());
        let detail = format!(
            "target {} ({} bytes, sha256 {}), {} device(s) now, wave size {}, failure threshold {}, {}",
            assignment.target,
            target.length,
            hex::encode(target.sha256),
            members.len(),
            assignment.policy.wave_size,
            assignment.policy.failure_threshold,
            if assignment.policy.required { "required" } else { "optional" },
        );
        if !self.audit(audit_kind::ACCEPTED, &id, &detail).await {
            return;
        }
        let added = {
            let rollouts = self.rollouts.clone();
            let assignment = assignment.clone();
            tokio::task::spawn_blocking(move || {
                rollouts.lock().unwrap_or_else(PoisonError::into_inner).add(
                    assignment,
                    members,
                    unix_ms(),
                )
            })
            .await
        };
        match added {
            Ok(Ok(_)) => {
                tracing::info!(assignment = %id, "update assignment accepted: {detail}");
                self.stage(&assignment.target).await;
                self.spool_summary(&id).await;
            }
            Ok(Err(e)) => self.store_failed(&id, &e).await,
            Err(e) => tracing::error!(error = %e, "update store task failed"),
        }
    }

    async fn store_failed(&self, id: &str, e: &StoreError) {
        self.alerts
            .raise(
                "updates.store_failed",
                format!("update assignment {id} could not be stored: {e}"),
            )
            .await;
    }

    async fn cancel(&mut self, cancellation: Cancellation) {
        let id = cancellation.id.clone();
        let already_cancelled = self
            .lock()
            .rollouts()
            .get(&id)
            .map(|r| r.halt().is_some_and(Halt::withdraws_offers));
        match already_cancelled {
            None => {
                self.refuse(
                    &id,
                    "cancellation of an assignment this gateway does not have",
                )
                .await;
                return;
            }
            // A redelivery (the twin sends the whole desired state on every connect):
            // audited and applied when it first arrived.
            Some(true) => return,
            Some(false) => {}
        }
        if !self
            .audit(audit_kind::CANCELLED, &id, "deleted from the desired state")
            .await
        {
            return;
        }
        let rollouts = self.rollouts.clone();
        let done = tokio::task::spawn_blocking(move || {
            rollouts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .cancel(&cancellation, unix_ms())
        })
        .await;
        match done {
            Ok(Ok(_)) => {
                self.spool_summary(&id).await;
                self.remove_unneeded().await;
            }
            Ok(Err(e)) => self.store_failed(&id, &e).await,
            Err(e) => tracing::error!(error = %e, "update store task failed"),
        }
    }

    /// The declared devices an assignment selects, restricted to the target's
    /// `device_kind` when its signed metadata names one.
    fn members_of(&self, assignment: &Assignment, required_kind: Option<&str>) -> Vec<String> {
        self.registry
            .snapshot()
            .into_iter()
            .filter(|d| assignment.devices.matches(&d.kind, &d.group))
            .filter(|d| required_kind.is_none_or(|kind| kind == d.kind))
            .map(|d| d.id)
            .collect()
    }

    async fn sync_members(&mut self) {
        let plans: Vec<(String, Vec<String>)> = {
            let rollouts = self.lock();
            rollouts
                .rollouts()
                .iter()
                .map(|r| {
                    let assignment = r.assignment();
                    let kind = self
                        .repository
                        .as_ref()
                        .and_then(|repo| repo.target(&assignment.target))
                        .and_then(|t| t.custom_str("device_kind").map(str::to_owned));
                    (
                        assignment.id.clone(),
                        self.members_of(assignment, kind.as_deref()),
                    )
                })
                .collect()
        };
        let rollouts = self.rollouts.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut rollouts = rollouts.lock().unwrap_or_else(PoisonError::into_inner);
            let now = unix_ms();
            for (id, members) in plans {
                rollouts.set_members(&id, &members, now)?;
            }
            Ok::<_, StoreError>(())
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::error!("cannot update the devices of the update assignments");
        }
    }

    /// The targets of assignments that still offer something.
    fn needed_targets(&self) -> BTreeSet<String> {
        self.lock()
            .rollouts()
            .iter()
            .filter(|r| !r.halt().is_some_and(|h| h.withdraws_offers()))
            .map(|r| r.assignment().target.clone())
            .collect()
    }

    async fn stage_needed(&mut self) {
        for target in self.needed_targets() {
            if self.staging.get(&target).is_none() {
                self.stage(&target).await;
            }
        }
    }

    async fn stage(&mut self, target: &str) {
        let staging = self.staging.clone();
        let Some(repository) = self.fresh_repository().await else {
            return;
        };
        let staged = repository.fetch_and_stage(target, &staging).await;
        match staged {
            Ok(staged) => {
                let detail = format!(
                    "staged: {} bytes, sha256 {} (length and hashes match the verified targets metadata)",
                    staged.length,
                    hex::encode(staged.sha256)
                );
                self.audit(audit_kind::VERIFIED, target, &detail).await;
                tracing::info!(%target, "update target verified and staged");
            }
            Err(e) => self.verification_failed(target, &e).await,
        }
    }

    async fn remove_unneeded(&self) {
        let keep: Vec<String> = self.needed_targets().into_iter().collect();
        let staging = self.staging.clone();
        match tokio::task::spawn_blocking(move || staging.remove_unneeded(&keep)).await {
            Ok(Ok(removed)) => {
                for name in removed {
                    tracing::info!(target = %name, "staged update no assignment needs any more removed");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove unneeded staged updates"),
            Err(e) => tracing::error!(error = %e, "staging task failed"),
        }
    }

    async fn report_event(&mut self, event: ReportEvent) {
        if event.halted {
            let reason = self
                .lock()
                .rollouts()
                .get(&event.assignment_id)
                .and_then(|r| r.halt().map(|h| h.reason.to_string()))
                .unwrap_or_else(|| "halted".into());
            self.audit(audit_kind::HALTED, &event.assignment_id, &reason)
                .await;
            self.alerts
                .raise(
                    "updates.halted",
                    format!(
                        "update rollout {} halted: {reason}; no further devices are offered it",
                        event.assignment_id
                    ),
                )
                .await;
        }
        if event.widened {
            tracing::info!(assignment = %event.assignment_id, "update rollout opened its next wave");
        }
        self.spool_summary(&event.assignment_id).await;
    }

    async fn spool_summary(&self, assignment_id: &str) {
        let summary = self
            .lock()
            .summaries()
            .into_iter()
            .find(|s| s.assignment_id == assignment_id);
        let Some(report) = summary else {
            return;
        };
        match Sanitized::update_rollout(report) {
            Ok(record) => {
                if let Err(e) = self.spool.append(record).await {
                    tracing::warn!(error = %e, "cannot spool an update rollout record");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an update rollout record"),
        }
    }
}
