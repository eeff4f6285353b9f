//! The device registry: every device the site declared, its state, and the
//! patient-first rule every non-clinical job asks.
//!
//! Invariants:
//! - The set of devices is the config's `[[device]]` list; [`Registry::apply`] replaces
//!   it (on start and on every valid config reload). A device kept across a reload keeps
//!   its state; a new one starts `unknown`; a removed one is forgotten.
//! - State changes only through [`state::DeviceStateMachine`]; each change is sent once
//!   on the transition channel, which the daemon turns into `state` records for the
//!   cloud. The channel is bounded: if the spool cannot keep up (it always can, unless
//!   it is failing), surplus transitions are counted and dropped — the latest state is
//!   still in the registry, the status page and the twin.
//! - State lives in memory only: after a restart every device is `unknown` until heard
//!   from again, which is the truth (the gateway does not know what happened while it
//!   was down). A device that was in procedure re-reports it through its agent.

pub mod patient_first;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use wardgate_proto::{DeviceState, DeviceStateChange};

pub use patient_first::{Decision, NonClinicalWork};
pub use state::{DeviceStateMachine, Evidence, Transition};

/// Transitions that may wait for the spool before surplus ones are dropped.
const TRANSITION_QUEUE: usize = 1024;

/// Source of wall-clock time (Unix ms).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock in Unix milliseconds (0 before 1970, which a gateway with a
/// dead RTC can report; records then carry 0 rather than failing).
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The registry's view of a declared device (the adapter settings live elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The device's id, unique on the site.
    pub id: String,
    /// What it is, e.g. `patient-monitor`.
    pub kind: String,
    /// The group updates and settings are assigned to.
    pub group: String,
    /// Adapters serving it (`hl7`, `dicom`, `modbus`, `logs`, `agent`).
    pub adapters: Vec<&'static str>,
    /// The MSH-3 sending application its HL7 messages carry, if it speaks HL7.
    pub hl7_application: Option<String>,
    /// The calling AE title of its DICOM associations, if it stores images here.
    pub dicom_ae_title: Option<String>,
    /// For a device nobody polls (HL7, agent, logs): silence after which it counts as
    /// offline. `None`: never (a polled device's adapter reports reachability itself).
    pub offline_after: Option<std::time::Duration>,
}

/// One device as the status page and the twin show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Group.
    pub group: String,
    /// Adapters, comma-separated.
    pub adapters: String,
    /// Current state.
    pub state: DeviceState,
    /// Since when (Unix ms).
    pub state_since_ms: u64,
    /// Last data seen (Unix ms).
    pub last_data_ms: Option<u64>,
}

struct Entry {
    declaration: Declaration,
    machine: DeviceStateMachine,
}

#[derive(Default)]
struct Devices {
    by_id: BTreeMap<String, Entry>,
    by_hl7_application: HashMap<String, String>,
    by_dicom_ae_title: HashMap<String, String>,
}

/// The registry. Shared as `Arc<Registry>`.
pub struct Registry {
    devices: Mutex<Devices>,
    clock: Clock,
    transitions: mpsc::Sender<DeviceStateChange>,
    dropped_transitions: AtomicU64,
    /// Bumped on every state change or reload, for jobs waiting on patient-first.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.lock().by_id.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry and the receiving end of its transitions.
    #[must_use]
    pub fn new(clock: Clock) -> (Arc<Registry>, mpsc::Receiver<DeviceStateChange>) {
        let (tx, rx) = mpsc::channel(TRANSITION_QUEUE);
        let (generation, _) = watch::channel(0);
        let registry = Registry {
            devices: Mutex::new(Devices::default()),
            clock,
            transitions: tx,
            dropped_transitions: AtomicU64::new(0),
            generation,
        };
        (Arc::new(registry), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the set of declared devices (see the module doc). Returns the ids added
    /// and removed.
    pub fn apply(&self, declarations: Vec<Declaration>) -> (Vec<String>, Vec<String>) {
        let now = (self.clock)();
        let mut devices = self.lock();
        let mut old = std::mem::take(&mut devices.by_id);
        let mut added = Vec::new();
        devices.by_hl7_application.clear();
        devices.by_dicom_ae_title.clear();
        for declaration in declarations {
            if let Some(title) = &declaration.dicom_ae_title {
                devices
                    .by_dicom_ae_title
                    .insert(title.clone(), declaration.id.clone());
            }
            if let Some(app) = &declaration.hl7_application {
                devices
                    .by_hl7_application
                    .insert(app.clone(), declaration.id.clone());
            }
            let machine = match old.remove(&declaration.id) {
                Some(entry) => entry.machine,
                None => {
                    added.push(declaration.id.clone());
                    DeviceStateMachine::new(now)
                }
            };
            devices.by_id.insert(
                declaration.id.clone(),
                Entry {
                    declaration,
                    machine,
                },
            );
        }
        drop(devices);
        let removed: Vec<String> = old.into_keys().collect();
        self.generation.send_modify(|g| *g += 1);
        (added, removed)
    }

    /// The declared device whose HL7 messages carry this MSH-3 application.
    #[must_use]
    pub fn hl7_device(&self, application: &str) -> Option<String> {
        self.lock().by_hl7_application.get(application).cloned()
    }

    /// Changes whenever the declared devices or a device's state change.
    #[must_use]
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The declared device whose DICOM associations carry this calling AE title.
    #[must_use]
    pub fn dicom_device(&self, calling_ae_title: &str) -> Option<String> {
        self.lock().by_dicom_ae_title.get(calling_ae_title).cloned()
    }

    /// Whether `id` is declared.
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.lock().by_id.contains_key(id)
    }

    /// Data arrived from the device (ignored for undeclared ids).
    pub fn data_seen(&self, id: &str) {
        let now = (self.clock)();
        if let Some((_, Some(change))) = self.change(id, |m| m.data_seen(now)) {
            self.record_later(change);
        }
    }

    /// Evidence about the device's state (ignored for undeclared ids). Returns the
    /// device's state afterwards. The transition, if any, goes to the transition channel.
    pub fn evidence(&self, id: &str, evidence: &Evidence) -> Option<DeviceState> {
        let now = (self.clock)();
        let (state, change) = self.change(id, |m| m.apply(evidence, now))?;
        if let Some(change) = change {
            self.record_later(change);
        }
        Some(state)
    }

    /// Like [`Registry::evidence`], but hands the transition to the caller, which stores
    /// it itself before answering someone (the agent API's ACK-after-commit); if that
    /// fails, the caller gives it back with [`Registry::record_later`].
    pub fn evidence_for_caller(
        &self,
        id: &str,
        evidence: &Evidence,
    ) -> Option<(DeviceState, Option<DeviceStateChange>)> {
        let now = (self.clock)();
        self.change(id, |m| m.apply(evidence, now))
    }

    /// Queues a transition for the recorder (the daemon's task that spools them).
    pub fn record_later(&self, change: DeviceStateChange) {
        if self.transitions.try_send(change).is_err() {
            self.dropped_transitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn change(
        &self,
        id: &str,
        step: impl FnOnce(&mut DeviceStateMachine) -> Option<Transition>,
    ) -> Option<(DeviceState, Option<DeviceStateChange>)> {
        let mut devices = self.lock();
        let entry = devices.by_id.get_mut(id)?;
        let transition = step(&mut entry.machine);
        let state = entry.machine.state();
        drop(devices);
        let change = transition.map(|t| {
            tracing::info!(device = id, from = t.from.name(), to = t.to.name(), reason = %t.reason, "device state");
            self.generation.send_modify(|g| *g += 1);
            DeviceStateChange {
                device: id.to_owned(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                at_ms: t.at_ms,
            }
        });
        Some((state, change))
    }

    /// The device's state, if declared.
    #[must_use]
    pub fn state(&self, id: &str) -> Option<DeviceState> {
        self.lock().by_id.get(id).map(|e| e.machine.state())
    }

    /// The patient-first rule for `work` on device `id` now.
    #[must_use]
    pub fn decide(&self, id: &str, work: NonClinicalWork) -> Decision {
        match self.state(id) {
            Some(state) => patient_first::decide(state, work),
            None => Decision::Proceed,
        }
    }

    /// Waits until the patient-first rule lets `work` on `id` proceed. Logs once when it
    /// starts waiting and once when it may go on.
    pub async fn wait_until_allowed(&self, id: &str, work: NonClinicalWork) {
        let mut changes = self.generation.subscribe();
        let mut deferred = false;
        loop {
            changes.borrow_and_update();
            match self.decide(id, work) {
                Decision::Proceed => {
                    if deferred {
                        tracing::info!(device = id, work = work.name(), "patient-first: resuming");
                    }
                    return;
                }
                Decision::Defer(state) => {
                    if !deferred {
                        tracing::info!(
                            device = id,
                            work = work.name(),
                            state = state.name(),
                            "patient-first: deferred"
                        );
                        deferred = true;
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every declared device, by id.
    #[must_use]
    pub fn snapshot(&self) -> Vec<DeviceView> {
        self.lock()
            .by_id
            .values()
            .map(|e| DeviceView {
                id: e.declaration.id.clone(),
                kind: e.declaration.kind.clone(),
                group: e.declaration.group.clone(),
                adapters: e.declaration.adapters.join(","),
                state: e.machine.state(),
                state_since_ms: e.machine.since_ms(),
                last_data_ms: e.machine.last_data_ms(),
            })
            .collect()
    }

    /// Marks offline every `online` device whose silence exceeded its `offline_after` (see
    /// [`Declaration::offline_after`]), once per silence. Called periodically. A device
    /// `in-procedure` or `updating` keeps its state however quiet it is.
    pub fn sweep_silent(&self) {
        let now = (self.clock)();
        let silent: Vec<(String, std::time::Duration)> = self
            .lock()
            .by_id
            .values()
            .filter_map(|e| {
                let after = e.declaration.offline_after?;
                let last = e.machine.last_data_ms().unwrap_or(e.machine.since_ms());
                let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                // Only `online` decays: silence does not end a procedure or an update
                // (a long ablation may post nothing for an hour), and patient-first must
                // not be released by a quiet agent.
                (e.machine.state() == DeviceState::Online && now.saturating_sub(last) > after_ms)
                    .then(|| (e.declaration.id.clone(), after))
            })
            .collect();
        for (id, after) in silent {
            self.evidence(
                &id,
                &Evidence::Unreachable {
                    reason: format!("nothing heard for {} s", after.as_secs()),
                },
            );
        }
    }

    /// Transitions dropped because the queue to the spool was full.
    #[must_use]
    pub fn dropped_transitions(&self) -> u64 {
        self.dropped_transitions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn decl(id: &str) -> Declaration {
        Declaration {
            id: id.into(),
            kind: "mapping-system".into(),
            group: "ep-lab".into(),
            adapters: vec!["agent", "logs"],
            hl7_application: Some(format!("APP_{id}")),
            dicom_ae_title: None,
            offline_after: Some(Duration::from_secs(60)),
        }
    }

    fn registry() -> (
        Arc<Registry>,
        mpsc::Receiver<DeviceStateChange>,
        Arc<AtomicU64>,
    ) {
        let now = Arc::new(AtomicU64::new(1000));
        let clock = now.clone();
        let (r, rx) = Registry::new(Arc::new(move || clock.load(Ordering::SeqCst)));
        (r, rx, now)
    }

    #[test]
    fn reload_keeps_state_of_kept_devices_and_forgets_removed_ones() {
        let (r, mut rx, _) = registry();
        assert_eq!(r.apply(vec![decl("a"), decl("b")]).0, vec!["a", "b"]);
        r.data_seen("a");
        let change = rx.try_recv().unwrap();
        assert_eq!(
            (change.device.as_str(), change.to),
            ("a", DeviceState::Online)
        );
        let (added, removed) = r.apply(vec![decl("a"), decl("c")]);
        assert_eq!(
            (added, removed),
            (vec!["c".to_owned()], vec!["b".to_owned()])
        );
        assert_eq!(r.state("a"), Some(DeviceState::Online));
        assert_eq!(r.state("c"), Some(DeviceState::Unknown));
        assert_eq!(r.state("b"), None);
        assert_eq!(r.hl7_device("APP_c").as_deref(), Some("c"));
        assert_eq!(r.hl7_device("APP_b"), None);
    }

    #[test]
    fn undeclared_devices_are_ignored_and_never_held_back() {
        let (r, mut rx, _) = registry();
        r.data_seen("ghost");
        assert!(rx.try_recv().is_err());
        assert_eq!(
            r.decide("ghost", NonClinicalWork::LogShipping),
            Decision::Proceed
        );
    }

    #[test]
    fn a_silent_device_goes_offline_once_and_back_online_when_heard() {
        let (r, mut rx, now) = registry();
        r.apply(vec![decl("a")]);
        r.sweep_silent();
        assert_eq!(
            r.state("a"),
            Some(DeviceState::Unknown),
            "never heard: stays unknown"
        );
        r.data_seen("a");
        assert_eq!(rx.try_recv().unwrap().to, DeviceState::Online);
        now.fetch_add(59_000, Ordering::SeqCst);
        r.sweep_silent();
        assert_eq!(r.state("a"), Some(DeviceState::Online));
        now.fetch_add(2_000, Ordering::SeqCst);
        r.sweep_silent();
        r.sweep_silent();
        let change = rx.try_recv().unwrap();
        assert_eq!(
            (change.to, change.reason.as_str()),
            (DeviceState::Offline, "nothing heard for 60 s")
        );
        assert!(rx.try_recv().is_err(), "one transition per silence");
        r.data_seen("a");
        assert_eq!(rx.try_recv().unwrap().to, DeviceState::Online);
        r.evidence(
            "a",
            &Evidence::Reported {
                state: DeviceState::InProcedure,
                reason: None,
            },
        );
        now.fetch_add(3_600_000, Ordering::SeqCst);
        r.sweep_silent();
        assert_eq!(
            r.state("a"),
            Some(DeviceState::InProcedure),
            "a quiet procedure is still a procedure"
        );
    }

    #[tokio::test]
    async fn deferred_work_resumes_when_the_procedure_ends() {
        let (r, _rx, _) = registry();
        r.apply(vec![decl("a")]);
        r.evidence(
            "a",
            &Evidence::Reported {
                state: DeviceState::InProcedure,
                reason: None,
            },
        );
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move {
                r.wait_until_allowed("a", NonClinicalWork::LogShipping)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "log shipping must wait for the procedure"
        );
        r.data_seen("a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "traffic does not end a procedure");
        r.evidence(
            "a",
            &Evidence::Reported {
                state: DeviceState::Online,
                reason: Some("procedure-end".into()),
            },
        );
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
