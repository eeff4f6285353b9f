//! Report by exception with a deadband, plus a heartbeat. Pure; time is an argument.
//!
//! Rules, per poll (given the poll's finite values):
//! - **Snapshot** (a report with `heartbeat = true` holding every value of the poll) when
//!   none was delivered yet, when one was requested ([`ReportPolicy::request_snapshot`],
//!   used after the device came back online), or when `heartbeat` has passed since the
//!   last delivered snapshot.
//! - Otherwise a **change report** holding only the points whose value differs from the
//!   last *delivered* value by more than the point's deadband (strictly more: a change of
//!   exactly the deadband is not reported; without a deadband any change is), or that
//!   were never delivered.
//! - Nothing to send → no report.
//!
//! State advances only in [`ReportPolicy::delivered`], called once the sink accepted a
//! report. A refused report leaves the state as it was, so the next poll reports the
//! same changes again (if they still hold) and a due heartbeat stays due. Comparing with
//! the last delivered value, not the last polled one, means a slow drift is reported once
//! it adds up to more than the deadband.
//!
//! `now_ms` must be monotonic (the driver passes milliseconds since it started), so wall
//! clock steps neither suppress nor force heartbeats.

use crate::modbus::config::ModbusDeviceConfig;

/// What to send after a poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// True for a full snapshot (see the module documentation).
    pub heartbeat: bool,
    /// `(point index, value)` in configuration order.
    pub points: Vec<(usize, f64)>,
}

/// Deadband and heartbeat state of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportPolicy {
    deadbands: Vec<f64>,
    heartbeat_ms: u64,
    last_delivered: Vec<Option<f64>>,
    last_snapshot_ms: Option<u64>,
    snapshot_requested: bool,
}

impl ReportPolicy {
    /// A policy for points with these deadbands (`None`: report any change), sending a
    /// snapshot at least every `heartbeat_ms`.
    #[must_use]
    pub fn new(deadbands: Vec<Option<f64>>, heartbeat_ms: u64) -> Self {
        let last_delivered = vec![None; deadbands.len()];
        Self {
            deadbands: deadbands
                .into_iter()
                .map(|d| d.filter(|d| d.is_finite() && *d > 0.0).unwrap_or(0.0))
                .collect(),
            heartbeat_ms,
            last_delivered,
            last_snapshot_ms: None,
            snapshot_requested: true,
        }
    }

    /// The policy a device config asks for.
    #[must_use]
    pub fn from_config(config: &ModbusDeviceConfig) -> Self {
        Self::new(
            config.points.iter().map(|p| p.deadband).collect(),
            config.heartbeat_secs.saturating_mul(1_000),
        )
    }

    /// Decides what to send for one poll's `values` (`(point index, value)`; non-finite
    /// values and unknown indexes are ignored). Does not change the state: call
    /// [`Self::delivered`] once the report was accepted.
    #[must_use]
    pub fn on_poll(&self, now_ms: u64, values: &[(usize, f64)]) -> Option<Report> {
        let valid = values
            .iter()
            .copied()
            .filter(|&(i, v)| i < self.deadbands.len() && v.is_finite());
        let snapshot = self.snapshot_requested
            || self
                .last_snapshot_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= self.heartbeat_ms);
        let points: Vec<(usize, f64)> = if snapshot {
            valid.collect()
        } else {
            valid
                .filter(|&(i, v)| match self.last_delivered[i] {
                    None => true,
                    Some(last) => (v - last).abs() > self.deadbands[i],
                })
                .collect()
        };
        (!points.is_empty()).then_some(Report {
            heartbeat: snapshot,
            points,
        })
    }

    /// Records that `report` (from [`Self::on_poll`] at `now_ms`) was accepted by the sink.
    pub fn delivered(&mut self, now_ms: u64, report: &Report) {
        for &(i, v) in &report.points {
            if let Some(slot) = self.last_delivered.get_mut(i) {
                *slot = Some(v);
            }
        }
        if report.heartbeat {
            self.last_snapshot_ms = Some(now_ms);
            self.snapshot_requested = false;
        }
    }

    /// Makes the next report a full snapshot (e.g. after the device was offline, so the
    /// receiver learns that the values it holds are current again).
    pub fn request_snapshot(&mut self) {
        self.snapshot_requested = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    const HEARTBEAT: u64 = 60_000;

    /// A policy that has delivered its first snapshot of `values` at time 0.
    fn settled(deadbands: Vec<Option<f64>>, values: &[(usize, f64)]) -> ReportPolicy {
        let mut policy = ReportPolicy::new(deadbands, HEARTBEAT);
        let first = policy.on_poll(0, values).unwrap();
        assert!(first.heartbeat);
        assert_eq!(first.points, values);
        policy.delivered(0, &first);
        policy
    }

    #[test]
    fn deadband_edges() {
        let policy = settled(vec![Some(0.5), None], &[(0, 10.0), (1, 3.0)]);
        // Unchanged: nothing.
        assert_eq!(policy.on_poll(1_000, &[(0, 10.0), (1, 3.0)]), None);
        // Exactly the deadband: not more than it, so suppressed.
        assert_eq!(policy.on_poll(1_000, &[(0, 10.5), (1, 3.0)]), None);
        assert_eq!(policy.on_poll(1_000, &[(0, 9.5), (1, 3.0)]), None);
        // Just over it, either direction; only the moved point is sent.
        let up = policy
            .on_poll(1_000, &[(0, 10.5 + 1e-9), (1, 3.0)])
            .unwrap();
        assert!(!up.heartbeat);
        assert_eq!(up.points, vec![(0, 10.5 + 1e-9)]);
        let down = policy.on_poll(1_000, &[(0, 9.25), (1, 3.0)]).unwrap();
        assert_eq!(down.points, vec![(0, 9.25)]);
        // No deadband: the smallest change counts.
        let tiny = policy
            .on_poll(1_000, &[(0, 10.0), (1, 3.0 + 1e-12)])
            .unwrap();
        assert_eq!(tiny.points, vec![(1, 3.0 + 1e-12)]);
        // A zero deadband behaves like none.
        let mut zero = settled(vec![Some(0.0)], &[(0, 1.0)]);
        assert!(zero.on_poll(1, &[(0, 1.0)]).is_none());
        let moved = zero.on_poll(1, &[(0, 1.0 + 1e-12)]).unwrap();
        zero.delivered(1, &moved);
        assert!(zero.on_poll(2, &[(0, 1.0 + 1e-12)]).is_none());
    }

    #[test]
    fn drift_is_measured_from_the_last_delivered_value() {
        let mut policy = settled(vec![Some(1.0)], &[(0, 20.0)]);
        for (t, v) in [(1, 20.25), (2, 20.5), (3, 20.75), (4, 21.0)] {
            assert_eq!(policy.on_poll(t, &[(0, v)]), None, "at {v}");
        }
        let report = policy.on_poll(5, &[(0, 21.25)]).unwrap();
        assert_eq!(report.points, vec![(0, 21.25)]);
        policy.delivered(5, &report);
        // Now measured from 21.25.
        assert_eq!(policy.on_poll(6, &[(0, 20.5)]), None);
        assert!(policy.on_poll(7, &[(0, 20.0)]).is_some());
    }

    #[test]
    fn refused_reports_are_sent_again() {
        let policy = settled(vec![Some(1.0)], &[(0, 0.0)]);
        let first = policy.on_poll(1_000, &[(0, 5.0)]).unwrap();
        // Not delivered: the next poll reports the change again.
        assert_eq!(policy.on_poll(2_000, &[(0, 5.0)]), Some(first));

        // A refused first snapshot stays due.
        let fresh = ReportPolicy::new(vec![None], HEARTBEAT);
        assert!(fresh.on_poll(0, &[(0, 1.0)]).unwrap().heartbeat);
        assert!(fresh.on_poll(1, &[(0, 1.0)]).unwrap().heartbeat);
    }

    #[test]
    fn heartbeat_timing() {
        let mut policy = settled(vec![Some(100.0), Some(100.0)], &[(0, 1.0), (1, 2.0)]);
        assert_eq!(policy.on_poll(HEARTBEAT - 1, &[(0, 1.0), (1, 2.0)]), None);
        let beat = policy.on_poll(HEARTBEAT, &[(0, 1.0), (1, 2.0)]).unwrap();
        assert!(beat.heartbeat);
        assert_eq!(beat.points, vec![(0, 1.0), (1, 2.0)]);
        // Not delivered yet: still due a little later.
        assert!(
            policy
                .on_poll(HEARTBEAT + 500, &[(0, 1.0), (1, 2.0)])
                .unwrap()
                .heartbeat
        );
        policy.delivered(HEARTBEAT + 500, &beat);
        // The next one is a full interval after the delivered one.
        assert_eq!(policy.on_poll(2 * HEARTBEAT, &[(0, 1.0), (1, 2.0)]), None);
        assert!(
            policy
                .on_poll(2 * HEARTBEAT + 500, &[(0, 1.0), (1, 2.0)])
                .unwrap()
                .heartbeat
        );
        // A change report does not reset the heartbeat timer.
        let mut policy = settled(vec![None], &[(0, 1.0)]);
        let change = policy.on_poll(HEARTBEAT / 2, &[(0, 2.0)]).unwrap();
        assert!(!change.heartbeat);
        policy.delivered(HEARTBEAT / 2, &change);
        assert!(policy.on_poll(HEARTBEAT, &[(0, 2.0)]).unwrap().heartbeat);
        // A time before the last snapshot delays the heartbeat, never panics.
        let mut late = ReportPolicy::new(vec![None], 10);
        let first = late.on_poll(1_000, &[(0, 1.0)]).unwrap();
        late.delivered(1_000, &first);
        assert_eq!(late.on_poll(0, &[(0, 1.0)]), None);
        assert!(late.on_poll(1_010, &[(0, 1.0)]).unwrap().heartbeat);
    }

    #[test]
    fn snapshots_only_hold_readable_points_and_can_be_requested() {
        let mut policy = settled(vec![None, None], &[(0, 1.0), (1, 2.0)]);
        // Point 1 unreadable (exception or NaN): left out, and not a change.
        assert_eq!(policy.on_poll(10, &[(0, 1.0)]), None);
        assert_eq!(policy.on_poll(10, &[(0, 1.0), (1, f64::NAN)]), None);
        // Back with the old value: not a change either.
        assert_eq!(policy.on_poll(10, &[(0, 1.0), (1, 2.0)]), None);
        policy.request_snapshot();
        let snap = policy.on_poll(20, &[(0, 1.0), (1, f64::INFINITY)]).unwrap();
        assert!(snap.heartbeat);
        assert_eq!(snap.points, vec![(0, 1.0)]);
        policy.delivered(20, &snap);
        assert_eq!(policy.on_poll(30, &[(0, 1.0)]), None);
        // A snapshot with nothing readable is no report, and stays due.
        let fresh = ReportPolicy::new(vec![None], HEARTBEAT);
        assert_eq!(fresh.on_poll(0, &[(0, f64::NAN), (7, 1.0)]), None);
    }

    #[test]
    fn a_point_never_delivered_is_sent_on_first_sight() {
        // Point 1 was unreadable during the first snapshot.
        let mut policy = ReportPolicy::new(vec![Some(5.0), Some(5.0)], HEARTBEAT);
        let first = policy.on_poll(0, &[(0, 1.0)]).unwrap();
        policy.delivered(0, &first);
        let later = policy.on_poll(1_000, &[(0, 1.0), (1, 7.0)]).unwrap();
        assert!(!later.heartbeat);
        assert_eq!(later.points, vec![(1, 7.0)]);
    }
}
