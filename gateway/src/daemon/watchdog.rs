//! The watchdog decision, sans-IO: given a probe's outcome and when it started and
//! ended (time since an arbitrary origin, passed in), send `WATCHDOG=1` or not.
//!
//! Invariant: a ping is sent only after a probe that *started* at a tick and was
//! answered within [`Watchdog::probe_budget`] (a quarter of the timeout). Ticks are
//! [`Watchdog::period`] (half the timeout) apart, so while the gateway is healthy two
//! pings are at most `period + budget` = ¾ of the timeout apart — systemd never fires
//! on a healthy gateway, even with a probe that is slow but within budget — and after
//! the last successful probe, at most one timeout passes before systemd acts.

use std::time::Duration;

/// What one liveness probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The spool writer answered.
    Answered,
    /// The spool writer answered with an error (closed, a failed fsync, a dead writer).
    SpoolRefused(String),
    /// No answer within the budget: the writer is stuck or hopelessly behind.
    TimedOut,
    /// The HL7 listener task ended: devices can no longer reach the gateway.
    ListenerStopped,
}

/// The decision for one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send `WATCHDOG=1`. `recovered` is set on the first ping after withholding.
    Ping {
        /// Pings had been withheld before this one.
        recovered: bool,
    },
    /// Do not send. `first` is set on the first withheld ping of an incident (log it once).
    Withhold {
        /// Why, for the log.
        reason: String,
        /// This is the first withheld ping since the last one sent.
        first: bool,
    },
}

/// The watchdog state of one process.
#[derive(Debug, Clone)]
pub struct Watchdog {
    timeout: Duration,
    withholding: bool,
}

impl Watchdog {
    /// For a service manager that kills the process after `timeout` without a ping
    /// (`WatchdogSec=`, passed as `$WATCHDOG_USEC`).
    #[must_use]
    pub fn new(timeout: Duration) -> Watchdog {
        Watchdog {
            timeout,
            withholding: false,
        }
    }

    /// How often to probe: half the timeout, as sd_watchdog_enabled(3) recommends.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.timeout / 2
    }

    /// How long a probe may take and still count as progress: a quarter of the timeout.
    #[must_use]
    pub fn probe_budget(&self) -> Duration {
        self.timeout / 4
    }

    /// Judges a probe that started at `started` and returned `outcome` at `finished`.
    pub fn judge(
        &mut self,
        started: Duration,
        finished: Duration,
        outcome: &ProbeOutcome,
    ) -> Verdict {
        let took = finished.saturating_sub(started);
        let reason = match outcome {
            ProbeOutcome::Answered if took <= self.probe_budget() => None,
            ProbeOutcome::Answered => Some(format!(
                "spool writer answered after {} ms, budget {} ms",
                took.as_millis(),
                self.probe_budget().as_millis()
            )),
            ProbeOutcome::SpoolRefused(e) => Some(format!("spool refused the probe: {e}")),
            ProbeOutcome::TimedOut => Some(format!(
                "spool writer did not answer within {} ms",
                self.probe_budget().as_millis()
            )),
            ProbeOutcome::ListenerStopped => Some("the HL7 listener stopped".to_owned()),
        };
        match reason {
            None => Verdict::Ping {
                recovered: std::mem::replace(&mut self.withholding, false),
            },
            Some(reason) => Verdict::Withhold {
                reason,
                first: !std::mem::replace(&mut self.withholding, true),
            },
        }
    }
}

/// The watchdog timeout systemd asks for, from the values of `$WATCHDOG_USEC` and
/// `$WATCHDOG_PID` (see sd_watchdog_enabled(3)). `None` — no pings — when the usec
/// value is missing, not a positive integer, or when a PID is given and is not
/// `own_pid` (the variables were inherited from a parent that is the supervised one).
#[must_use]
pub fn timeout_from_env(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn period_and_budget_keep_healthy_pings_inside_the_timeout() {
        let dog = Watchdog::new(T);
        assert_eq!(dog.period(), Duration::from_secs(15));
        assert_eq!(dog.probe_budget(), ms(7_500));
        assert!(dog.period() + dog.probe_budget() < T);
    }

    #[test]
    fn prompt_answer_pings() {
        let mut dog = Watchdog::new(T);
        assert_eq!(
            dog.judge(ms(15_000), ms(15_003), &ProbeOutcome::Answered),
            Verdict::Ping { recovered: false }
        );
    }

    #[test]
    fn answer_at_the_budget_still_pings_but_later_does_not() {
        let mut dog = Watchdog::new(T);
        assert!(matches!(
            dog.judge(ms(0), ms(7_500), &ProbeOutcome::Answered),
            Verdict::Ping { .. }
        ));
        assert!(matches!(
            dog.judge(ms(15_000), ms(22_501), &ProbeOutcome::Answered),
            Verdict::Withhold { first: true, .. }
        ));
    }

    #[test]
    fn stuck_writer_withholds_every_ping_and_logs_once() {
        let mut dog = Watchdog::new(T);
        assert!(matches!(
            dog.judge(ms(0), ms(1), &ProbeOutcome::Answered),
            Verdict::Ping { .. }
        ));
        let mut firsts = 0;
        for tick in 1..10u64 {
            let start = ms(tick * 15_000);
            match dog.judge(start, start + ms(7_500), &ProbeOutcome::TimedOut) {
                Verdict::Withhold { reason, first } => {
                    assert!(reason.contains("did not answer"), "{reason}");
                    firsts += u32::from(first);
                }
                v @ Verdict::Ping { .. } => panic!("pinged for a stuck writer: {v:?}"),
            }
        }
        assert_eq!(firsts, 1);
        assert_eq!(
            dog.judge(ms(150_000), ms(150_002), &ProbeOutcome::Answered),
            Verdict::Ping { recovered: true }
        );
        assert_eq!(
            dog.judge(ms(165_000), ms(165_002), &ProbeOutcome::Answered),
            Verdict::Ping { recovered: false }
        );
    }

    #[test]
    fn refusing_spool_and_stopped_listener_withhold() {
        let mut dog = Watchdog::new(T);
        match dog.judge(ms(0), ms(1), &ProbeOutcome::SpoolRefused("closed".into())) {
            Verdict::Withhold { reason, first } => {
                assert!(first);
                assert!(reason.contains("closed"), "{reason}");
            }
            v @ Verdict::Ping { .. } => panic!("{v:?}"),
        }
        match dog.judge(ms(15_000), ms(15_000), &ProbeOutcome::ListenerStopped) {
            Verdict::Withhold { reason, first } => {
                assert!(!first);
                assert!(reason.contains("HL7 listener"), "{reason}");
            }
            v @ Verdict::Ping { .. } => panic!("{v:?}"),
        }
    }

    #[test]
    fn timeout_from_env_follows_sd_watchdog_enabled() {
        assert_eq!(
            timeout_from_env(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            timeout_from_env(Some("1000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        // Inherited from a parent that systemd supervises: not ours to feed.
        assert_eq!(timeout_from_env(Some("1000000"), Some("8"), 7), None);
        assert_eq!(timeout_from_env(Some("1000000"), Some("x"), 7), None);
        assert_eq!(timeout_from_env(None, Some("7"), 7), None);
        assert_eq!(timeout_from_env(Some("0"), None, 7), None);
        assert_eq!(timeout_from_env(Some("-5"), None, 7), None);
        assert_eq!(timeout_from_env(Some("soon"), None, 7), None);
    }
}
