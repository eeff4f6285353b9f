//! The rollout of assignments to devices: sans-IO (no tokio, no clock, no storage). Time
//! comes in as [`Now`]; device states come from the caller (the registry); durability is
//! the caller's ([`super::store`]), which persists a change before it acts on it.
//!
//! # Per device and assignment
//!
//! ```text
//!   pending ──offer──► offered ──fetch──► downloading ──► downloaded ──► installing ──► installed
//!      ▲                  │  └──────────────┴─────────────────┴──────────────┴─────────► failed(reason)
//!      └── retry delay ── deferred(reason) ◄── (device: deferred, before installing)
//! ```
//!
//! The device reports `downloaded`, `installing`, `installed`, `failed{reason}`,
//! `deferred{reason}`; the gateway moves it to `offered` (when it lists the offer) and to
//! `downloading` (when it first serves the file). A report may skip steps forward (a lost
//! answer makes an agent's next report the first one the gateway sees) but never goes
//! back; repeating the current state is accepted and changes nothing (agents retry after
//! lost answers: delivery is at least once). `installed` and `failed` are final. A report
//! for an assignment the device was never offered, or that it deferred, is refused
//! ([`ReportRefused`]).
//!
//! # Waves
//!
//! A device is *admitted* when it is first offered the assignment; `offered` through
//! `installed`/`failed` hold one admission. At most `wave_size × waves_opened` devices are
//! admitted, so the first wave is the first `wave_size` devices to ask while eligible.
//! **The next wave opens when every admitted device has finished** (`installed` or
//! `failed`) and all admissions are used: failures below the threshold do not stall a
//! rollout, and the threshold stops it. A device that defers gives its admission back (it
//! is not a failure) and is offered again after [`DEFER_RETRY_MS`].
//!
//! # Halting
//!
//! When the number of `failed` devices exceeds the policy's `failure_threshold`, the
//! rollout halts ([`Halt`], with the reason): nothing new is admitted, ever; devices
//! already admitted keep their offer and may finish and report. A cancellation from the
//! cloud halts too, and also withdraws the offers and the file: only reports are still
//! taken. Deferrals never count as failures.
//!
//! # Offers are patient-first
//!
//! [`Rollouts::offers_for`] lists nothing while `patient_first::decide(state,
//! PatchOffer)` defers (in procedure, updating, offline, unknown), nothing before
//! `not_before_ms` or outside the maintenance windows, nothing whose target is not staged.
//! A device is offered at most one assignment at a time: while one is in progress
//! (`offered` to `installing`) no other is admitted; assignments are taken in arrival
//! order.

use std::collections::BTreeMap;

use wardgate_proto::DeviceState;

use super::assignment::{Assignment, Cancellation};
use crate::devices::patient_first::{decide, Decision, NonClinicalWork};

/// How long a device that deferred waits before it is offered the assignment again.
pub const DEFER_RETRY_MS: u64 = 15 * 60 * 1000;
/// Longest reason code a device may give with `failed` or `deferred`.
pub const MAX_REPORT_REASON_LEN: usize = 128;

/// The time of a question: Unix ms and the gateway's local minute of the day (for the
/// maintenance windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix milliseconds.
    pub unix_ms: u64,
    /// Minute of the day in the gateway's local time zone (0..1440).
    pub local_minute_of_day: u16,
}

impl Now {
    /// `unix_ms` at the UTC offset `utc_offset_secs` (the local zone's offset at that
    /// instant).
    #[must_use]
    pub fn at(unix_ms: u64, utc_offset_secs: i32) -> Now {
        let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX / 2);
        Now {
            unix_ms,
            local_minute_of_day: crate::bulk::schedule::minute_of_day(secs, utc_offset_secs),
        }
    }
}

/// Where one device stands with one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Selected, not offered yet.
    Pending,
    /// Listed to the device.
    Offered,
    /// The gateway has started serving it the file.
    Downloading,
    /// The device has the file.
    Downloaded,
    /// The device is installing it.
    Installing,
    /// Installed (final).
    Installed,
    /// Failed (final), with the device's reason code.
    Failed {
        /// Machine-readable reason code from the device.
        reason: String,
    },
    /// The device declined for now; offered again after [`DEFER_RETRY_MS`].
    Deferred {
        /// Machine-readable reason code from the device.
        reason: String,
    },
}

impl Stage {
    /// The stage's name as stored and shown (`pending`, `offered`, ...).
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Offered => "offered",
            Stage::Downloading => "downloading",
            Stage::Downloaded => "downloaded",
            Stage::Installing => "installing",
            Stage::Installed => "installed",
            Stage::Failed { .. } => "failed",
            Stage::Deferred { .. } => "deferred",
        }
    }

    /// The reason code of `failed` and `deferred`.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Stage::Failed { reason } | Stage::Deferred { reason } => Some(reason),
            _ => None,
        }
    }

    /// Rebuilds a stage from its name and reason (as stored). `None` for an unknown name
    /// or a missing reason.
    #[must_use]
    pub fn from_parts(name: &str, reason: Option<String>) -> Option<Stage> {
        Some(match name {
            "pending" => Stage::Pending,
            "offered" => Stage::Offered,
            "downloading" => Stage::Downloading,
            "downloaded" => Stage::Downloaded,
            "installing" => Stage::Installing,
            "installed" => Stage::Installed,
            "failed" => Stage::Failed { reason: reason? },
            "deferred" => Stage::Deferred { reason: reason? },
            _ => return None,
        })
    }

    /// Offered and not finished: the device holds an admission and may fetch the file.
    #[must_use]
    pub const fn is_active(&self) -> bool {
        matches!(
            self,
            Stage::Offered | Stage::Downloading | Stage::Downloaded | Stage::Installing
        )
    }

    /// `installed` or `failed`.
    #[must_use]
    pub const fn is_finished(&self) -> bool {
        matches!(self, Stage::Installed | Stage::Failed { .. })
    }

    /// Holds an admission (counts against the open waves).
    #[must_use]
    pub const fn is_admitted(&self) -> bool {
        self.is_active() || self.is_finished()
    }
}

/// One device's progress with one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProgress {
    /// Where it stands.
    pub stage: Stage,
    /// Since when (Unix ms).
    pub since_ms: u64,
    /// Still selected by the assignment (a device removed from the configuration keeps its
    /// history but is offered nothing and holds no admission).
    pub member: bool,
}

/// What a device reports about an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceReport {
    /// It has the whole file, verified.
    Downloaded,
    /// It started installing.
    Installing,
    /// Installed and running.
    Installed,
    /// It gave up; final for this assignment.
    Failed {
        /// Machine-readable reason code.
        reason: String,
    },
    /// Not now (the device's own judgement, e.g. in use); offered again later.
    Deferred {
        /// Machine-readable reason code.
        reason: String,
    },
}

impl DeviceReport {
    /// The report's name (`downloaded`, ...).
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            DeviceReport::Downloaded => "downloaded",
            DeviceReport::Installing => "installing",
            DeviceReport::Installed => "installed",
            DeviceReport::Failed { .. } => "failed",
            DeviceReport::Deferred { .. } => "deferred",
        }
    }
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    /// No such assignment on this gateway.
    #[error("no such assignment")]
    UnknownAssignment,
    /// The device was not offered this assignment (never, or it deferred it).
    #[error("this assignment is not offered to this device")]
    NotOffered,
    /// The report does not follow from the device's stage.
    #[error("a `{report}` report is not valid after `{stage}`")]
    InvalidTransition {
        /// The device's stage.
        stage: &'static str,
        /// The report.
        report: &'static str,
    },
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The stage changed.
    Changed {
        /// This report made the failures exceed the threshold: the rollout halted.
        halted: bool,
        /// This report finished the last device of the open waves: another wave opened.
        widened: bool,
    },
    /// A repeat of the current stage: nothing changed (nothing to persist).
    Unchanged,
}

/// Why a rollout halted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// More devices failed than the policy tolerates.
    FailureThreshold {
        /// Failed devices when it halted.
        failed: u32,
        /// The policy's threshold.
        threshold: u32,
    },
    /// The cloud cancelled the assignment.
    Cancelled {
        /// The cloud's reason, if it gave one.
        reason: Option<String>,
    },
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltReason::FailureThreshold { failed, threshold } => write!(
                f,
                "{failed} devices failed, more than the failure threshold of {threshold}"
            ),
            HaltReason::Cancelled { reason: None } => f.write_str("cancelled by the cloud"),
            HaltReason::Cancelled {
                reason: Some(reason),
            } => write!(f, "cancelled by the cloud: {reason}"),
        }
    }
}

/// A halted rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    /// Why.
    pub reason: HaltReason,
    /// When (Unix ms).
    pub at_ms: u64,
}

impl Halt {
    /// A cancellation also withdraws offers and the file.
    #[must_use]
    pub const fn withdraws_offers(&self) -> bool {
        matches!(self.reason, HaltReason::Cancelled { .. })
    }
}

/// What is offered to a device now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The assignment.
    pub assignment_id: String,
    /// The TUF target name.
    pub target: String,
    /// Required or optional.
    pub required: bool,
}

/// The counts of one rollout, for records, the status page and the twin: the wire type
/// of the `update_rollout` record itself.
pub use wardgate_proto::UpdateRolloutReport as Summary;

/// Everything a rollout remembers, for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Arrival order among assignments (offers are made in this order).
    pub seq: u64,
    /// When the assignment arrived (Unix ms).
    pub received_ms: u64,
    /// Waves opened (at least 1).
    pub waves_opened: u32,
    /// Halted, and why.
    pub halt: Option<Halt>,
    /// Every device ever selected, by id.
    pub devices: BTreeMap<String, DeviceProgress>,
}

/// One assignment's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    assignment: Assignment,
    record: RolloutRecord,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Rollout {
    /// A new rollout of `assignment` to `members` (device ids the assignment selects).
    #[must_use]
    pub fn new(
        assignment: Assignment,
        seq: u64,
        members: impl IntoIterator<Item = String>,
        now_ms: u64,
    ) -> Rollout {
        let devices = members
            .into_iter()
            .map(|id| {
                (
                    id,
                    DeviceProgress {
                        stage: Stage::Pending,
                        since_ms: now_ms,
                        member: true,
                    },
                )
            })
            .collect();
        Rollout {
            assignment,
            record: RolloutRecord {
                seq,
                received_ms: now_ms,
                waves_opened: 1,
                halt: None,
                devices,
            },
        }
    }

    /// A rollout as the store kept it. Re-derives what follows from the record (a wave
    /// or a halt a crash may have missed).
    #[must_use]
    pub fn from_record(assignment: Assignment, mut record: RolloutRecord, now_ms: u64) -> Rollout {
        record.waves_opened = record.waves_opened.max(1);
        let mut rollout = Rollout { assignment, record };
        rollout.check_halt(now_ms);
        rollout.widen();
        rollout
    }

    /// The assignment.
    #[must_use]
    pub const fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// What it remembers (for the store).
    #[must_use]
    pub const fn record(&self) -> &RolloutRecord {
        &self.record
    }

    /// The halt, if halted.
    #[must_use]
    pub const fn halt(&self) -> Option<&Halt> {
        self.record.halt.as_ref()
    }

    /// One device's progress.
    #[must_use]
    pub fn progress(&self, device: &str) -> Option<&DeviceProgress> {
        self.record.devices.get(device)
    }

    /// Replaces the selected devices (after a configuration reload). New ones start
    /// `pending`; removed ones that were never offered are forgotten, the others keep
    /// their history but leave the waves. Returns whether anything changed.
    pub fn set_members(&mut self, members: &[String], now_ms: u64) -> bool {
        let mut changed = false;
        let wanted: std::collections::BTreeSet<&str> = members.iter().map(String::as_str).collect();
        self.record.devices.retain(|id, progress| {
            if wanted.contains(id.as_str()) {
                return true;
            }
            changed = true;
            if progress.stage == Stage::Pending {
                return false;
            }
            progress.member = false;
            true
        });
        for id in members {
            match self.record.devices.get_mut(id) {
                Some(progress) if progress.member => {}
                Some(progress) => {
                    progress.member = true;
                    changed = true;
                }
                None => {
                    self.record.devices.insert(
                        id.clone(),
                        DeviceProgress {
                            stage: Stage::Pending,
                            since_ms: now_ms,
                            member: true,
                        },
                    );
                    changed = true;
                }
            }
        }
        self.widen();
        changed
    }

    fn admitted(&self) -> usize {
        self.record
            .devices
            .values()
            .filter(|p| p.member && p.stage.is_admitted())
            .count()
    }

    fn capacity(&self) -> u64 {
        u64::from(self.assignment.policy.wave_size.get()) * u64::from(self.record.waves_opened)
    }

    fn failed(&self) -> u32 {
        count(
            self.record
                .devices
                .values()
                .filter(|p| matches!(p.stage, Stage::Failed { .. }))
                .count(),
        )
    }

    /// Whether `device` is in progress (offered to installing) with this assignment.
    #[must_use]
    pub fn is_active_for(&self, device: &str) -> bool {
        self.record
            .devices
            .get(device)
            .is_some_and(|p| p.member && p.stage.is_active())
    }

    /// Whether this assignment is listed to `device` now, and whether listing it admits
    /// the device (`Some(true)`: the caller must persist the admission). `busy`: the
    /// device is in progress with another assignment.
    fn plan_offer(
        &self,
        device: &str,
        state: DeviceState,
        now: Now,
        staged: bool,
        busy: bool,
    ) -> Option<bool> {
        if decide(state, NonClinicalWork::PatchOffer) != Decision::Proceed {
            return None;
        }
        let progress = self.record.devices.get(device).filter(|p| p.member)?;
        if self.halt().is_some_and(Halt::withdraws_offers) {
            return None;
        }
        if !staged
            || !self
                .assignment
                .policy
                .open_at(now.unix_ms, now.local_minute_of_day)
        {
            return None;
        }
        match &progress.stage {
            stage if stage.is_active() => Some(false),
            Stage::Pending => self.may_admit(busy).then_some(true),
            Stage::Deferred { .. } => {
                let due = now.unix_ms >= progress.since_ms.saturating_add(DEFER_RETRY_MS);
                (due && self.may_admit(busy)).then_some(true)
            }
            _ => None,
        }
    }

    fn may_admit(&self, busy: bool) -> bool {
        !busy && self.halt().is_none() && (count(self.admitted()) as u64) < self.capacity()
    }

    fn admit(&mut self, device: &str, now_ms: u64) {
        if let Some(progress) = self.record.devices.get_mut(device) {
            progress.stage = Stage::Offered;
            progress.since_ms = now_ms;
        }
    }

    fn offer(&self) -> Offer {
        Offer {
            assignment_id: self.assignment.id.clone(),
            target: self.assignment.target.clone(),
            required: self.assignment.policy.required,
        }
    }

    /// Whether `device` may fetch the file now: it is in progress with the assignment,
    /// the assignment is not cancelled, and the device is not treating a patient (a
    /// device that reports `updating` may still fetch: it may be this very update).
    #[must_use]
    pub fn may_fetch(&self, device: &str, state: DeviceState) -> bool {
        let allowed = decide(state, NonClinicalWork::PatchOffer) == Decision::Proceed
            || state == DeviceState::Updating;
        allowed && self.is_active_for(device) && !self.halt().is_some_and(Halt::withdraws_offers)
    }

    /// Records that the gateway started serving the file to `device` (`offered` →
    /// `downloading`). Returns whether the stage changed (the caller persists it).
    pub fn download_started(&mut self, device: &str, now_ms: u64) -> bool {
        match self.record.devices.get_mut(device) {
            Some(progress) if progress.stage == Stage::Offered => {
                progress.stage = Stage::Downloading;
                progress.since_ms = now_ms;
                true
            }
            _ => false,
        }
    }

    /// Checks a report against the device's stage: the stage it leads to, or `None` for
    /// a repeat of the current one.
    ///
    /// # Errors
    /// [`ReportRefused`] when the device was not offered the assignment or the report
    /// does not follow from its stage.
    pub fn check_report(
        &self,
        device: &str,
        report: &DeviceReport,
    ) -> Result<Option<Stage>, ReportRefused> {
        let Some(progress) = self.record.devices.get(device) else {
            return Err(ReportRefused::NotOffered);
        };
        let stage = &progress.stage;
        let invalid = || ReportRefused::InvalidTransition {
            stage: stage.name(),
            report: report.name(),
        };
        let repeat = matches!(
            (stage, report),
            (Stage::Downloaded, DeviceReport::Downloaded)
                | (Stage::Installing, DeviceReport::Installing)
                | (Stage::Installed, DeviceReport::Installed)
                | (Stage::Failed { .. }, DeviceReport::Failed { .. })
                | (Stage::Deferred { .. }, DeviceReport::Deferred { .. })
        );
        if repeat {
            return Ok(None);
        }
        match stage {
            Stage::Pending | Stage::Deferred { .. } => return Err(ReportRefused::NotOffered),
            Stage::Installed | Stage::Failed { .. } => return Err(invalid()),
            _ => {}
        }
        let next = match report {
            DeviceReport::Downloaded => {
                if !matches!(stage, Stage::Offered | Stage::Downloading) {
                    return Err(invalid());
                }
                Stage::Downloaded
            }
            DeviceReport::Installing => Stage::Installing,
            DeviceReport::Installed => Stage::Installed,
            DeviceReport::Failed { reason } => Stage::Failed {
                reason: reason.clone(),
            },
            DeviceReport::Deferred { reason } => {
                if *stage == Stage::Installing {
                    return Err(invalid());
                }
                Stage::Deferred {
                    reason: reason.clone(),
                }
            }
        };
        Ok(Some(next))
    }

    /// Applies a device's report (see the module doc).
    ///
    /// # Errors
    /// As [`Rollout::check_report`]; nothing changes then.
    pub fn report(
        &mut self,
        device: &str,
        report: &DeviceReport,
        now_ms: u64,
    ) -> Result<ReportOutcome, ReportRefused> {
        let Some(next) = self.check_report(device, report)? else {
            return Ok(ReportOutcome::Unchanged);
        };
        if let Some(progress) = self.record.devices.get_mut(device) {
            progress.stage = next;
            progress.since_ms = now_ms;
        }
        let halted = self.check_halt(now_ms);
        let widened = self.widen();
        Ok(ReportOutcome::Changed { halted, widened })
    }

    /// Halts when the failures exceed the threshold. Returns whether it halted now.
    fn check_halt(&mut self, now_ms: u64) -> bool {
        if self.record.halt.is_some() {
            return false;
        }
        let failed = self.failed();
        let threshold = self.assignment.policy.failure_threshold;
        if failed <= threshold {
            return false;
        }
        self.record.halt = Some(Halt {
            reason: HaltReason::FailureThreshold { failed, threshold },
            at_ms: now_ms,
        });
        true
    }

    /// Opens the next wave when every admission is used and every admitted device has
    /// finished, and some device still waits. Returns whether it opened one.
    fn widen(&mut self) -> bool {
        if self.record.halt.is_some() {
            return false;
        }
        let members = || self.record.devices.values().filter(|p| p.member);
        let admitted = members().filter(|p| p.stage.is_admitted()).count() as u64;
        let all_finished = members().all(|p| !p.stage.is_active());
        let waiting = members().any(|p| !p.stage.is_admitted());
        if admitted >= self.capacity() && all_finished && waiting {
            self.record.waves_opened = self.record.waves_opened.saturating_add(1);
            return true;
        }
        false
    }

    /// Cancels: halts (if not already halted for failures, the cancellation replaces that
    /// reason, since it also withdraws the offers). Returns whether anything changed.
    pub fn cancel(&mut self, cancellation: &Cancellation, now_ms: u64) -> bool {
        if self.halt().is_some_and(Halt::withdraws_offers) {
            return false;
        }
        self.record.halt = Some(Halt {
            reason: HaltReason::Cancelled {
                reason: cancellation.reason.clone(),
            },
            at_ms: now_ms,
        });
        true
    }

    /// The counts.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            assignment_id: self.assignment.id.clone(),
            target: self.assignment.target.clone(),
            members: 0,
            pending: 0,
            offered: 0,
            downloading: 0,
            downloaded: 0,
            installing: 0,
            installed: 0,
            failed: 0,
            deferred: 0,
            waves_opened: self.record.waves_opened,
            halted: self.halt().map(|h| h.reason.to_string()),
            halted_at_ms: self.halt().map(|h| h.at_ms),
        };
        for progress in self.record.devices.values() {
            if progress.member {
                s.members += 1;
            }
            let counter = match progress.stage {
                Stage::Pending => &mut s.pending,
                Stage::Offered => &mut s.offered,
                Stage::Downloading => &mut s.downloading,
                Stage::Downloaded => &mut s.downloaded,
                Stage::Installing => &mut s.installing,
                Stage::Installed => &mut s.installed,
                Stage::Failed { .. } => &mut s.failed,
                Stage::Deferred { .. } => &mut s.deferred,
            };
            *counter += 1;
        }
        s
    }
}

/// Why an assignment was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddRefused {
    /// The id is taken by a different assignment: ids are never reused.
    #[error("assignment id `{0}` is already used by a different assignment; ids cannot be reused")]
    IdReused(String),
}

/// What adding an assignment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new rollout.
    New,
    /// The same assignment again (a redelivery): nothing changed.
    AlreadyKnown,
}

/// The offers listed to a device and the admissions that listing makes. The caller
/// persists the admissions, then commits them ([`Rollouts::commit`]), then answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferPlan {
    /// The device.
    pub device: String,
    /// What it is offered now, in assignment arrival order.
    pub offers: Vec<Offer>,
    /// Assignments this listing admits the device to (`pending`/`deferred` → `offered`).
    pub admissions: Vec<String>,
}

/// Every rollout on the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollouts {
    by_id: BTreeMap<String, Rollout>,
}

impl Rollouts {
    /// No rollouts.
    #[must_use]
    pub fn new() -> Rollouts {
        Rollouts::default()
    }

    /// Rollouts as the store kept them.
    #[must_use]
    pub fn from_rollouts(rollouts: impl IntoIterator<Item = Rollout>) -> Rollouts {
        Rollouts {
            by_id: rollouts
                .into_iter()
                .map(|r| (r.assignment.id.clone(), r))
                .collect(),
        }
    }

    /// The next arrival number.
    fn next_seq(&self) -> u64 {
        self.by_id
            .values()
            .map(|r| r.record.seq)
            .max()
            .map_or(1, |s| s.saturating_add(1))
    }

    /// Builds the rollout `add` would insert, without inserting it (so the caller can
    /// persist first). `Ok(None)`: the same assignment is already known.
    ///
    /// # Errors
    /// [`AddRefused::IdReused`] when the id names a different assignment.
    pub fn prepare_add(
        &self,
        assignment: Assignment,
        members: impl IntoIterator<Item = String>,
        now_ms: u64,
    ) -> Result<Option<Rollout>, AddRefused> {
        if let Some(existing) = self.by_id.get(&assignment.id) {
            if existing.assignment == assignment {
                return Ok(None);
            }
            return Err(AddRefused::IdReused(assignment.id));
        }
        let seq = self.next_seq();
        Ok(Some(Rollout::new(assignment, seq, members, now_ms)))
    }

    /// Adds an assignment with the devices it selects now.
    ///
    /// # Errors
    /// [`AddRefused::IdReused`] when the id names a different assignment.
    pub fn add(
        &mut self,
        assignment: Assignment,
        members: impl IntoIterator<Item = String>,
        now_ms: u64,
    ) -> Result<Added, AddRefused> {
        match self.prepare_add(assignment, members, now_ms)? {
            None => Ok(Added::AlreadyKnown),
            Some(rollout) => {
                self.insert(rollout);
                Ok(Added::New)
            }
        }
    }

    /// Inserts (or replaces) a rollout.
    pub fn insert(&mut self, rollout: Rollout) {
        self.by_id.insert(rollout.assignment.id.clone(), rollout);
    }

    /// One rollout.
    #[must_use]
    pub fn get(&self, assignment_id: &str) -> Option<&Rollout> {
        self.by_id.get(assignment_id)
    }

    /// One rollout, to change.
    pub fn get_mut(&mut self, assignment_id: &str) -> Option<&mut Rollout> {
        self.by_id.get_mut(assignment_id)
    }

    /// Every rollout, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Rollout> {
        self.by_id.values()
    }

    fn in_arrival_order(&self) -> Vec<&Rollout> {
        let mut rollouts: Vec<&Rollout> = self.by_id.values().collect();
        rollouts.sort_by_key(|r| r.record.seq);
        rollouts
    }

    /// What `device` (in `state`) is offered now, and which admissions that makes,
    /// without changing anything. `staged`: whether a TUF target is staged and can be
    /// served.
    #[must_use]
    pub fn plan_offers(
        &self,
        device: &str,
        state: DeviceState,
        now: Now,
        mut staged: impl FnMut(&str) -> bool,
    ) -> OfferPlan {
        let mut busy = self.by_id.values().any(|r| r.is_active_for(device));
        let mut plan = OfferPlan {
            device: device.to_owned(),
            offers: Vec::new(),
            admissions: Vec::new(),
        };
        for rollout in self.in_arrival_order() {
            let is_staged = staged(&rollout.assignment.target);
            if let Some(admits) = rollout.plan_offer(device, state, now, is_staged, busy) {
                if admits {
                    plan.admissions.push(rollout.assignment.id.clone());
                    busy = true;
                }
                plan.offers.push(rollout.offer());
            }
        }
        plan
    }

    /// Applies a plan's admissions (after the caller persisted them).
    pub fn commit(&mut self, plan: &OfferPlan, now_ms: u64) {
        for id in &plan.admissions {
            if let Some(rollout) = self.by_id.get_mut(id) {
                rollout.admit(&plan.device, now_ms);
            }
        }
    }

    /// What is offered to `device` right now (plan and commit at once, for callers
    /// without a store).
    pub fn offers_for(
        &mut self,
        device: &str,
        state: DeviceState,
        now: Now,
        staged: impl FnMut(&str) -> bool,
    ) -> Vec<Offer> {
        let plan = self.plan_offers(device, state, now, staged);
        self.commit(&plan, now.unix_ms);
        plan.offers
    }

    /// Applies a report from `device` about `assignment_id`.
    ///
    /// # Errors
    /// [`ReportRefused`]; nothing changes then.
    pub fn report(
        &mut self,
        assignment_id: &str,
        device: &str,
        report: &DeviceReport,
        now_ms: u64,
    ) -> Result<ReportOutcome, ReportRefused> {
        self.by_id
            .get_mut(assignment_id)
            .ok_or(ReportRefused::UnknownAssignment)?
            .report(device, report, now_ms)
    }

    /// Every rollout's counts, in arrival order.
    #[must_use]
    pub fn summaries(&self) -> Vec<Summary> {
        self.in_arrival_order()
            .into_iter()
            .map(Rollout::summary)
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn assignment(id: &str, wave_size: u32, threshold: u32) -> Assignment {
        Assignment::parse(
            &serde_json::to_vec(&json!({
                "id": id,
                "target": format!("{id}.bin"),
                "devices": {"group": "pumps"},
                "policy": {"required": true, "wave_size": wave_size, "failure_threshold": threshold}
            }))
            .unwrap(),
        )
        .unwrap()
    }

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i:02}")).collect()
    }

    const NOW: Now = Now {
        unix_ms: 1_000_000,
        local_minute_of_day: 600,
    };

    fn all_staged(_: &str) -> bool {
        true
    }

    fn offered(r: &mut Rollouts, device: &str) -> Vec<String> {
        r.offers_for(device, DeviceState::Online, NOW, all_staged)
            .into_iter()
            .map(|o| o.assignment_id)
            .collect()
    }

    fn rollouts(n: usize, wave: u32, threshold: u32) -> Rollouts {
        let mut r = Rollouts::new();
        r.add(assignment("a", wave, threshold), devices(n), 0)
            .unwrap();
        r
    }

    fn install(r: &mut Rollouts, device: &str) {
        for report in [
            DeviceReport::Downloaded,
            DeviceReport::Installing,
            DeviceReport::Installed,
        ] {
            r.report("a", device, &report, 1).unwrap();
        }
    }

    #[test]
    fn the_first_wave_is_wave_size_devices_and_widens_when_they_finish() {
        let mut r = rollouts(5, 2, 10);
        assert_eq!(offered(&mut r, "d00"), ["a"]);
        assert_eq!(offered(&mut r, "d01"), ["a"]);
        assert!(offered(&mut r, "d02").is_empty(), "wave 1 is full");
        install(&mut r, "d00");
        assert!(offered(&mut r, "d02").is_empty(), "d01 still in progress");
        r.report(
            "a",
            "d01",
            &DeviceReport::Failed {
                reason: "E1".into(),
            },
            2,
        )
        .unwrap();
        assert_eq!(r.get("a").unwrap().summary().waves_opened, 2);
        assert_eq!(offered(&mut r, "d03"), ["a"]);
        assert_eq!(offered(&mut r, "d02"), ["a"]);
        assert!(offered(&mut r, "d04").is_empty(), "wave 2 is full");
        let s = r.get("a").unwrap().summary();
        assert_eq!((s.offered, s.installed, s.failed, s.pending), (2, 1, 1, 1));
    }

    #[test]
    fn failures_over_the_threshold_halt_and_stop_new_offers_only() {
        let mut r = rollouts(6, 3, 1);
        for d in ["d00", "d01", "d02"] {
            assert_eq!(offered(&mut r, d), ["a"]);
        }
        let failed = DeviceReport::Failed {
            reason: "hash".into(),
        };
        assert_eq!(
            r.report("a", "d00", &failed, 5).unwrap(),
            ReportOutcome::Changed {
                halted: false,
                widened: false
            }
        );
        assert_eq!(
            r.report("a", "d01", &failed, 6).unwrap(),
            ReportOutcome::Changed {
                halted: true,
                widened: false
            }
        );
        let halt = r.get("a").unwrap().halt().unwrap().clone();
        assert_eq!(
            halt.reason,
            HaltReason::FailureThreshold {
                failed: 2,
                threshold: 1
            }
        );
        assert_eq!(halt.at_ms, 6);
        // The device already offered may finish; nobody new is admitted, even after it does.
        assert_eq!(offered(&mut r, "d02"), ["a"]);
        install(&mut r, "d02");
        for d in ["d03", "d04", "d05"] {
            assert!(offered(&mut r, d).is_empty());
        }
        let s = r.get("a").unwrap().summary();
        assert!(s.halted.unwrap().contains("failure threshold of 1"));
        assert_eq!(s.waves_opened, 1);
    }

    #[test]
    fn deferral_is_not_a_failure_and_gives_the_admission_back() {
        let mut r = rollouts(3, 1, 0);
        assert_eq!(offered(&mut r, "d00"), ["a"]);
        let deferred = DeviceReport::Deferred {
            reason: "in-use".into(),
        };
        r.report("a", "d00", &deferred, NOW.unix_ms).unwrap();
        assert!(
            r.get("a").unwrap().halt().is_none(),
            "threshold 0 is not crossed"
        );
        assert!(offered(&mut r, "d00").is_empty(), "retry delay");
        assert_eq!(
            offered(&mut r, "d01"),
            ["a"],
            "the admission went to the next device"
        );
        install(&mut r, "d01");
        let later = Now {
            unix_ms: NOW.unix_ms + DEFER_RETRY_MS,
            ..NOW
        };
        let again = r.offers_for("d00", DeviceState::Online, later, all_staged);
        assert_eq!(again.len(), 1, "offered again after the delay");
        assert_eq!(r.get("a").unwrap().summary().failed, 0);
    }

    #[test]
    fn a_device_in_procedure_is_offered_nothing_until_it_leaves() {
        let mut r = rollouts(2, 2, 0);
        for state in [
            DeviceState::InProcedure,
            DeviceState::Updating,
            DeviceState::Offline,
            DeviceState::Unknown,
        ] {
            assert!(r.offers_for("d00", state, NOW, all_staged).is_empty());
        }
        assert_eq!(r.get("a").unwrap().summary().pending, 2, "no admission");
        assert_eq!(offered(&mut r, "d00"), ["a"]);
        // Mid-rollout a procedure starts: the offer disappears, the file is not served.
        assert!(r
            .offers_for("d00", DeviceState::InProcedure, NOW, all_staged)
            .is_empty());
        assert!(!r
            .get("a")
            .unwrap()
            .may_fetch("d00", DeviceState::InProcedure));
        assert!(r.get("a").unwrap().may_fetch("d00", DeviceState::Online));
        assert!(r.get("a").unwrap().may_fetch("d00", DeviceState::Updating));
        assert_eq!(offered(&mut r, "d00"), ["a"]);
    }

    #[test]
    fn schedule_and_staging_gate_offers() {
        let mut r = Rollouts::new();
        let a = Assignment::parse(
            br#"{"id":"w","target":"w.bin","devices":{"kind":"pump"},"policy":{"required":false,
                "not_before_ms":2000000,"maintenance_windows":["22:00-02:00"],"wave_size":5,"failure_threshold":0}}"#,
        )
        .unwrap();
        r.add(a, devices(1), 0).unwrap();
        let at = |unix_ms, minute| Now {
            unix_ms,
            local_minute_of_day: minute,
        };
        assert!(r
            .offers_for(
                "d00",
                DeviceState::Online,
                at(1_999_999, 23 * 60),
                all_staged
            )
            .is_empty());
        assert!(r
            .offers_for(
                "d00",
                DeviceState::Online,
                at(2_000_000, 12 * 60),
                all_staged
            )
            .is_empty());
        assert!(r
            .offers_for("d00", DeviceState::Online, at(2_000_000, 60), |_| false)
            .is_empty());
        let offers = r.offers_for("d00", DeviceState::Online, at(2_000_000, 60), all_staged);
        assert_eq!(
            offers,
            [Offer {
                assignment_id: "w".into(),
                target: "w.bin".into(),
                required: false
            }]
        );
    }

    #[test]
    fn reports_for_assignments_not_offered_are_refused() {
        let mut r = rollouts(2, 1, 0);
        assert_eq!(
            r.report("a", "d00", &DeviceReport::Installed, 1),
            Err(ReportRefused::NotOffered)
        );
        assert_eq!(
            r.report("a", "stranger", &DeviceReport::Downloaded, 1),
            Err(ReportRefused::NotOffered)
        );
        assert_eq!(
            r.report("zz", "d00", &DeviceReport::Downloaded, 1),
            Err(ReportRefused::UnknownAssignment)
        );
        assert_eq!(r.get("a").unwrap().summary().pending, 2);
    }

    #[test]
    fn invalid_transitions_are_refused_and_repeats_change_nothing() {
        let mut r = rollouts(1, 1, 5);
        offered(&mut r, "d00");
        r.report("a", "d00", &DeviceReport::Installing, 1).unwrap();
        assert_eq!(
            r.report("a", "d00", &DeviceReport::Downloaded, 2),
            Err(ReportRefused::InvalidTransition {
                stage: "installing",
                report: "downloaded"
            })
        );
        assert!(matches!(
            r.report(
                "a",
                "d00",
                &DeviceReport::Deferred { reason: "x".into() },
                2
            ),
            Err(ReportRefused::InvalidTransition { .. })
        ));
        assert_eq!(
            r.report("a", "d00", &DeviceReport::Installing, 3),
            Ok(ReportOutcome::Unchanged)
        );
        r.report("a", "d00", &DeviceReport::Installed, 4).unwrap();
        assert_eq!(
            r.report("a", "d00", &DeviceReport::Installed, 5),
            Ok(ReportOutcome::Unchanged)
        );
        assert!(matches!(
            r.report("a", "d00", &DeviceReport::Failed { reason: "x".into() }, 6),
            Err(ReportRefused::InvalidTransition {
                stage: "installed",
                report: "failed"
            })
        ));
        assert_eq!(r.get("a").unwrap().progress("d00").unwrap().since_ms, 4);
    }

    #[test]
    fn one_assignment_at_a_time_in_arrival_order() {
        let mut r = Rollouts::new();
        r.add(assignment("second", 5, 0), devices(1), 0).unwrap();
        r.add(assignment("first", 5, 0), devices(1), 0).unwrap();
        // Arrival order, not id order.
        assert_eq!(offered(&mut r, "d00"), ["second"]);
        assert_eq!(offered(&mut r, "d00"), ["second"]);
        for report in [DeviceReport::Installing, DeviceReport::Installed] {
            r.report("second", "d00", &report, 1).unwrap();
        }
        assert_eq!(offered(&mut r, "d00"), ["first"]);
    }

    #[test]
    fn cancellation_withdraws_offers_and_files_but_takes_reports() {
        let mut r = rollouts(2, 2, 0);
        offered(&mut r, "d00");
        let cancel = Cancellation {
            id: "a".into(),
            reason: Some("recalled".into()),
        };
        assert!(r.get_mut("a").unwrap().cancel(&cancel, 9));
        assert!(!r.get_mut("a").unwrap().cancel(&cancel, 10), "idempotent");
        assert!(offered(&mut r, "d00").is_empty());
        assert!(offered(&mut r, "d01").is_empty());
        assert!(!r.get("a").unwrap().may_fetch("d00", DeviceState::Online));
        r.report(
            "a",
            "d00",
            &DeviceReport::Failed {
                reason: "aborted".into(),
            },
            11,
        )
        .unwrap();
        let s = r.get("a").unwrap().summary();
        assert_eq!(
            s.halted.as_deref(),
            Some("cancelled by the cloud: recalled")
        );
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn redelivered_assignments_are_known_and_reused_ids_refused() {
        let mut r = rollouts(1, 1, 0);
        assert_eq!(
            r.add(assignment("a", 1, 0), devices(1), 5),
            Ok(Added::AlreadyKnown)
        );
        assert_eq!(
            r.add(assignment("a", 2, 0), devices(1), 5),
            Err(AddRefused::IdReused("a".into()))
        );
    }

    #[test]
    fn removed_devices_leave_the_waves() {
        let mut r = rollouts(3, 1, 0);
        offered(&mut r, "d00");
        assert!(offered(&mut r, "d01").is_empty());
        let keep = vec!["d01".to_owned(), "d02".to_owned()];
        assert!(r.get_mut("a").unwrap().set_members(&keep, 3));
        assert!(offered(&mut r, "d00").is_empty(), "no longer a member");
        assert_eq!(offered(&mut r, "d01"), ["a"], "its admission was freed");
        let s = r.get("a").unwrap().summary();
        assert_eq!((s.members, s.offered), (2, 2), "history kept");
    }

    #[derive(Debug, Clone)]
    enum Action {
        Ask(usize, bool),
        Report(usize, u8),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0usize..8, any::<bool>()).prop_map(|(d, p)| Action::Ask(d, p)),
            (0usize..8, 0u8..5).prop_map(|(d, r)| Action::Report(d, r)),
        ]
    }

    proptest! {
        /// Whatever devices ask and report: admissions never exceed the open waves, a wave
        /// opens only when the admitted devices finished, deferrals never halt, a halt
        /// happens exactly when failures exceed the threshold, no device in procedure is
        /// admitted, and after a halt nobody new is admitted.
        #[test]
        fn rollout_invariants(
            wave in 1u32..4,
            threshold in 0u32..3,
            actions in proptest::collection::vec(action(), 1..200),
        ) {
            let mut r = rollouts(8, wave, threshold);
            let ids = devices(8);
            for (step, action) in actions.into_iter().enumerate() {
                let now = Now { unix_ms: NOW.unix_ms + step as u64 * DEFER_RETRY_MS / 4, ..NOW };
                let before = r.get("a").unwrap().clone();
                match action {
                    Action::Ask(d, in_procedure) => {
                        let state = if in_procedure { DeviceState::InProcedure } else { DeviceState::Online };
                        let offers = r.offers_for(&ids[d], state, now, all_staged);
                        if in_procedure {
                            prop_assert!(offers.is_empty());
                            prop_assert_eq!(r.get("a").unwrap(), &before);
                        }
                        let after = r.get("a").unwrap();
                        let newly = !before.progress(&ids[d]).unwrap().stage.is_active()
                            && after.progress(&ids[d]).unwrap().stage.is_active();
                        if newly {
                            prop_assert!(before.halt().is_none());
                        }
                    }
                    Action::Report(d, kind) => {
                        let report = match kind {
                            0 => DeviceReport::Downloaded,
                            1 => DeviceReport::Installing,
                            2 => DeviceReport::Installed,
                            3 => DeviceReport::Failed { reason: "e".into() },
                            _ => DeviceReport::Deferred { reason: "busy".into() },
                        };
                        let result = r.report("a", &ids[d], &report, now.unix_ms);
                        if result.is_err() || result == Ok(ReportOutcome::Unchanged) {
                            prop_assert_eq!(r.get("a").unwrap(), &before);
                        }
                        if matches!(report, DeviceReport::Deferred { .. }) {
                            prop_assert_eq!(r.get("a").unwrap().halt().is_some(), before.halt().is_some());
                        }
                    }
                }
                let rollout = r.get("a").unwrap();
                let s = rollout.summary();
                let admitted = s.offered + s.downloading + s.downloaded + s.installing + s.installed + s.failed;
                prop_assert!(u64::from(admitted) <= u64::from(wave) * u64::from(s.waves_opened));
                if s.waves_opened > before.summary().waves_opened {
                    prop_assert_eq!(s.offered + s.downloading + s.downloaded + s.installing, 0);
                }
                prop_assert_eq!(s.halted.is_some(), s.failed > threshold);
                prop_assert_eq!(s.pending + admitted + s.deferred, 8);
            }
        }
    }
}
