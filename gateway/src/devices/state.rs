//! The device state machine: pure, no clock (time comes in as `now_ms`), no I/O.
//!
//! ```text
//!            reachable                 agent: in-procedure
//!  unknown ───────────► online ◄──────────────────────────► in-procedure
//!     │                 ▲   │  ◄──── agent: online ───────►  updating / error
//!     │   unreachable   │   │ unreachable (N failed polls, agent silent)
//!     └──────────────►  offline ◄─────────────── (from any state)
//! ```
//!
//! Two kinds of evidence move a device:
//! - **Reachability** from an adapter (a poll answered or failed, an HL7 message, an
//!   agent request). It only moves a device between `unknown`, `online` and `offline`:
//!   traffic from a device in procedure keeps it in procedure — a monitor keeps sending
//!   observations while it treats a patient.
//! - **Self-reports** from a device's agent (`online`, `in-procedure`, `updating`,
//!   `error`), which are authoritative for the device's own activity.
//!
//! Every change is a [`Transition`], which the registry turns into a `state` record.
//! Repeated evidence for the current state yields nothing, so a device failing every
//! poll produces one `offline` record, not a flood.

use wardgate_proto::DeviceState;

/// Evidence about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// The device answered or sent something.
    Reachable,
    /// The device stopped answering; `reason` is gateway-made (e.g. `3 polls failed`).
    Unreachable {
        /// Why the adapter gave up on it.
        reason: String,
    },
    /// The device's agent reported its own state.
    Reported {
        /// The state it reported (`unknown` and `offline` are not reportable).
        state: DeviceState,
        /// The agent's reason code, already checked to be a short token.
        reason: Option<String>,
    },
}

/// A change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: DeviceState,
    /// After.
    pub to: DeviceState,
    /// Why, in gateway-made words.
    pub reason: String,
    /// When.
    pub at_ms: u64,
}

/// One device's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStateMachine {
    state: DeviceState,
    since_ms: u64,
    last_data_ms: Option<u64>,
}

impl DeviceStateMachine {
    /// A device not heard from yet.
    #[must_use]
    pub const fn new(now_ms: u64) -> Self {
        DeviceStateMachine {
            state: DeviceState::Unknown,
            since_ms: now_ms,
            last_data_ms: None,
        }
    }

    /// The current state.
    #[must_use]
    pub const fn state(&self) -> DeviceState {
        self.state
    }

    /// Since when (Unix ms).
    #[must_use]
    pub const fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// When data last arrived from the device (Unix ms).
    #[must_use]
    pub const fn last_data_ms(&self) -> Option<u64> {
        self.last_data_ms
    }

    /// Records that data arrived (it also proves the device reachable).
    pub fn data_seen(&mut self, now_ms: u64) -> Option<Transition> {
        self.last_data_ms = Some(now_ms);
        self.apply(&Evidence::Reachable, now_ms)
    }

    /// Applies evidence; returns the transition if the state changed.
    pub fn apply(&mut self, evidence: &Evidence, now_ms: u64) -> Option<Transition> {
        let (to, reason) = match evidence {
            Evidence::Reachable => match self.state {
                DeviceState::Unknown | DeviceState::Offline => {
                    (DeviceState::Online, "device reachable".to_owned())
                }
                // Traffic does not end a procedure, an update or a reported fault.
                _ => return None,
            },
            Evidence::Unreachable { reason } => (DeviceState::Offline, reason.clone()),
            Evidence::Reported { state, reason } => {
                if matches!(state, DeviceState::Unknown | DeviceState::Offline) {
                    return None;
                }
                let reason = match reason {
                    Some(code) => format!("reported by the device agent: {code}"),
                    None => "reported by the device agent".to_owned(),
                };
                (*state, reason)
            }
        };
        if to == self.state {
            return None;
        }
        let from = self.state;
        self.state = to;
        self.since_ms = now_ms;
        Some(Transition {
            from,
            to,
            reason,
            at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(state: DeviceState) -> Evidence {
        Evidence::Reported {
            state,
            reason: None,
        }
    }

    #[test]
    fn first_traffic_brings_a_device_online_once() {
        let mut m = DeviceStateMachine::new(0);
        let t = m.data_seen(10).expect("transition");
        assert_eq!(
            (t.from, t.to, t.at_ms),
            (DeviceState::Unknown, DeviceState::Online, 10)
        );
        assert_eq!(m.data_seen(20), None);
        assert_eq!(m.last_data_ms(), Some(20));
        assert_eq!(m.since_ms(), 10);
    }

    #[test]
    fn repeated_failures_give_one_offline_transition() {
        let mut m = DeviceStateMachine::new(0);
        m.data_seen(1);
        let down = Evidence::Unreachable {
            reason: "3 polls failed".into(),
        };
        let t = m.apply(&down, 5).expect("transition");
        assert_eq!(t.to, DeviceState::Offline);
        assert_eq!(t.reason, "3 polls failed");
        assert_eq!(m.apply(&down, 6), None);
        assert_eq!(m.apply(&down, 7), None);
        assert_eq!(m.data_seen(8).map(|t| t.to), Some(DeviceState::Online));
    }

    #[test]
    fn traffic_does_not_end_a_procedure_but_the_agent_does() {
        let mut m = DeviceStateMachine::new(0);
        m.data_seen(1);
        let t = m.apply(&reported(DeviceState::InProcedure), 2).expect("t");
        assert_eq!(t.to, DeviceState::InProcedure);
        assert_eq!(
            m.data_seen(3),
            None,
            "observations keep flowing in procedure"
        );
        assert_eq!(m.state(), DeviceState::InProcedure);
        assert_eq!(m.apply(&reported(DeviceState::InProcedure), 4), None);
        let t = m.apply(&reported(DeviceState::Online), 5).expect("t");
        assert_eq!(
            (t.from, t.to),
            (DeviceState::InProcedure, DeviceState::Online)
        );
    }

    #[test]
    fn agents_cannot_report_unknown_or_offline() {
        let mut m = DeviceStateMachine::new(0);
        m.data_seen(1);
        assert_eq!(m.apply(&reported(DeviceState::Offline), 2), None);
        assert_eq!(m.apply(&reported(DeviceState::Unknown), 2), None);
        assert_eq!(m.state(), DeviceState::Online);
    }

    #[test]
    fn an_unreachable_device_in_procedure_goes_offline() {
        let mut m = DeviceStateMachine::new(0);
        m.apply(&reported(DeviceState::InProcedure), 1);
        let t = m
            .apply(
                &Evidence::Unreachable {
                    reason: "agent silent".into(),
                },
                2,
            )
            .expect("t");
        assert_eq!(
            (t.from, t.to),
            (DeviceState::InProcedure, DeviceState::Offline)
        );
        assert_eq!(m.data_seen(3).map(|t| t.to), Some(DeviceState::Online));
    }
}
