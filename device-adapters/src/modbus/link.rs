//! Link supervision: failed polls → one offline event, success → one online event,
//! exception responses → one event per change of condition; and the reconnect backoff.
//! Pure.
//!
//! Invariants:
//! - The state starts [`LinkState::Unknown`]. [`LinkEvent::Online`] is emitted on the
//!   first successful poll while not online; [`LinkEvent::Offline`] when the
//!   `offline_after`-th consecutive poll fails while not offline. No other transition
//!   emits anything, so a device that stays down costs one event, however long.
//! - A poll is successful when the device answered every request, be it with data or with
//!   an exception response: an exception means the device is there but refuses a read.
//! - Each request's exception condition (`None` or an exception code) is tracked on its
//!   own: [`LinkEvent::Exception`] when it appears or its code changes,
//!   [`LinkEvent::ExceptionCleared`] when data comes back. Conditions survive the device
//!   going offline: after recovery only real changes are reported.
//! - [`Backoff`] delays grow ×2 per failed attempt up to a cap, with "equal jitter" (a
//!   uniformly random point in the upper half of the current step), so many devices that
//!   lost the network together do not reconnect in lockstep.

use std::fmt;

use crate::modbus::config::PointConfig;
use crate::modbus::plan::{ReadData, ReadPlan, ReadRequest};

/// What the gateway knows about a device's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// No poll has succeeded, and not enough have failed to call it offline.
    Unknown,
    /// The last poll succeeded, or fewer than `offline_after` failed since.
    Online,
    /// At least `offline_after` consecutive polls failed.
    Offline,
}

/// A change of link condition, reported once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The device answers polls (again).
    Online,
    /// The device stopped answering.
    Offline {
        /// Consecutive failed polls when this was decided (= the configured threshold).
        consecutive_failures: u32,
        /// Why the last poll failed, in gateway-made words.
        last_error: String,
    },
    /// The device answered a read with a Modbus exception (e.g. 0x02 illegal data
    /// address: the register map does not match the device). The other reads go on.
    Exception {
        /// The refused read.
        request: ReadRequest,
        /// The exception code.
        code: u8,
        /// Names of the points that read covers, which get no values while it persists.
        points: Vec<String>,
    },
    /// A read that was refused with an exception returns data again.
    ExceptionCleared {
        /// The read.
        request: ReadRequest,
        /// Names of the points it covers.
        points: Vec<String>,
    },
}

impl fmt::Display for LinkEvent {
    /// Gateway-made words for logs and state-change reasons; never values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEvent::Online => f.write_str("polls succeed"),
            LinkEvent::Offline {
                consecutive_failures,
                last_error,
            } => write!(f, "{consecutive_failures} polls failed; last: {last_error}"),
            LinkEvent::Exception {
                request,
                code,
                points,
            } => write!(
                f,
                "{} {}+{} answered exception 0x{code:02X} ({}); no values for {}",
                request.table.name(),
                request.start,
                request.count,
                exception_description(*code),
                points.join(", ")
            ),
            LinkEvent::ExceptionCleared { request, .. } => write!(
                f,
                "{} {}+{} answers again",
                request.table.name(),
                request.start,
                request.count
            ),
        }
    }
}

/// The standard name of a Modbus exception code.
#[must_use]
pub const fn exception_description(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "non-standard exception",
    }
}

/// Failure counting and exception tracking for one device.
#[derive(Debug, Clone)]
pub struct LinkMonitor {
    offline_after: u32,
    consecutive_failures: u32,
    state: LinkState,
    requests: Vec<(ReadRequest, Vec<String>)>,
    exceptions: Vec<Option<u8>>,
}

impl LinkMonitor {
    /// A monitor for these requests (each with the names of the points it covers) that
    /// reports offline after `offline_after` consecutive failed polls (at least 1).
    #[must_use]
    pub fn new(offline_after: u32, requests: Vec<(ReadRequest, Vec<String>)>) -> Self {
        let exceptions = vec![None; requests.len()];
        Self {
            offline_after: offline_after.max(1),
            consecutive_failures: 0,
            state: LinkState::Unknown,
            requests,
            exceptions,
        }
    }

    /// A monitor for a device's plan; `points` is the config's point list.
    #[must_use]
    pub fn from_plan(offline_after: u32, plan: &ReadPlan, points: &[PointConfig]) -> Self {
        let requests = plan
            .requests()
            .iter()
            .enumerate()
            .map(|(i, request)| {
                let names = plan
                    .points_of(i)
                    .iter()
                    .filter_map(|&p| points.get(p).map(|p| p.name.clone()))
                    .collect();
                (*request, names)
            })
            .collect();
        Self::new(offline_after, requests)
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> LinkState {
        self.state
    }

    /// Consecutive failed polls so far (0 after a success).
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// A poll in which the device answered every request; `responses[i]` answers request
    /// `i`. Returns the events to report, `Online` first.
    pub fn on_success(&mut self, responses: &[ReadData]) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        self.consecutive_failures = 0;
        if self.state != LinkState::Online {
            self.state = LinkState::Online;
            events.push(LinkEvent::Online);
        }
        for (i, ((request, points), condition)) in self
            .requests
            .iter()
            .zip(self.exceptions.iter_mut())
            .enumerate()
        {
            let now = match responses.get(i) {
                Some(ReadData::Exception(code)) => Some(*code),
                Some(_) => None,
                // Not answered (a caller bug): no evidence either way, keep the condition.
                None => continue,
            };
            if now == *condition {
                continue;
            }
            let before = std::mem::replace(condition, now);
            events.push(match now {
                Some(code) => LinkEvent::Exception {
                    request: *request,
                    code,
                    points: points.clone(),
                },
                None => {
                    debug_assert!(before.is_some());
                    LinkEvent::ExceptionCleared {
                        request: *request,
                        points: points.clone(),
                    }
                }
            });
        }
        events
    }

    /// A poll that failed (no connection, timeout, transport or protocol error, gateway
    /// target unreachable). Returns `Offline` when this failure crosses the threshold.
    pub fn on_failure(&mut self, error: &str) -> Option<LinkEvent> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures >= self.offline_after && self.state != LinkState::Offline {
            self.state = LinkState::Offline;
            return Some(LinkEvent::Offline {
                consecutive_failures: self.consecutive_failures,
                last_error: error.to_owned(),
            });
        }
        None
    }
}

/// Capped exponential backoff with jitter, for reconnecting.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays start at `initial_ms`, double per attempt and stop growing at `max_ms`;
    /// `seed` makes the jitter differ between devices (and reproducible in tests).
    #[must_use]
    pub fn new(initial_ms: u64, max_ms: u64, seed: u64) -> Self {
        let initial_ms = initial_ms.max(1);
        Self {
            initial_ms,
            max_ms: max_ms.max(initial_ms),
            attempt: 0,
            rng: seed,
        }
    }

    /// The delay before the next attempt, in `[step / 2, step]` where `step` is
    /// `min(initial × 2^attempts, max)`.
    pub fn next_delay_ms(&mut self) -> u64 {
        let step = self
            .initial_ms
            .checked_shl(self.attempt)
            .filter(|s| *s >> self.attempt == self.initial_ms)
            .map_or(self.max_ms, |s| s.min(self.max_ms));
        self.attempt = self.attempt.saturating_add(1).min(63);
        let half = step / 2;
        half + self.next_random() % (step - half + 1)
    }

    /// Back to the initial delay (after a successful poll).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// splitmix64: tiny, good enough for jitter, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::modbus::config::Table;

    fn req(start: u16) -> ReadRequest {
        ReadRequest {
            table: Table::Holding,
            start,
            count: 1,
        }
    }

    fn monitor(offline_after: u32) -> LinkMonitor {
        LinkMonitor::new(
            offline_after,
            vec![
                (req(0), vec!["a".into()]),
                (req(9), vec!["b".into(), "c".into()]),
            ],
        )
    }

    fn data() -> ReadData {
        ReadData::Registers(vec![1])
    }

    #[test]
    fn n_failures_make_one_offline_event_and_recovery_one_online() {
        let mut link = monitor(3);
        assert_eq!(link.state(), LinkState::Unknown);
        assert_eq!(link.on_success(&[data(), data()]), vec![LinkEvent::Online]);
        assert!(link.on_success(&[data(), data()]).is_empty());
        assert_eq!(link.on_failure("timeout"), None);
        assert_eq!(link.on_failure("timeout"), None);
        assert_eq!(link.state(), LinkState::Online);
        assert_eq!(
            link.on_failure("connection refused"),
            Some(LinkEvent::Offline {
                consecutive_failures: 3,
                last_error: "connection refused".into()
            })
        );
        for _ in 0..1_000 {
            assert_eq!(link.on_failure("connection refused"), None);
        }
        assert_eq!(link.state(), LinkState::Offline);
        assert_eq!(link.consecutive_failures(), 1_003);
        assert_eq!(link.on_success(&[data(), data()]), vec![LinkEvent::Online]);
        assert_eq!(link.consecutive_failures(), 0);
        // A success in between resets the count.
        link.on_failure("x");
        link.on_failure("x");
        link.on_success(&[data(), data()]);
        assert_eq!(link.on_failure("x"), None);
        assert_eq!(link.on_failure("x"), None);
        assert!(link.on_failure("x").is_some());
    }

    #[test]
    fn a_device_never_reached_goes_offline_from_unknown() {
        let mut link = monitor(1);
        assert!(matches!(
            link.on_failure("refused"),
            Some(LinkEvent::Offline {
                consecutive_failures: 1,
                ..
            })
        ));
        assert_eq!(link.on_failure("refused"), None);
    }

    #[test]
    fn exceptions_are_reported_once_per_change() {
        let mut link = monitor(3);
        let events = link.on_success(&[data(), ReadData::Exception(2)]);
        assert_eq!(
            events,
            vec![
                LinkEvent::Online,
                LinkEvent::Exception {
                    request: req(9),
                    code: 2,
                    points: vec!["b".into(), "c".into()]
                }
            ]
        );
        for _ in 0..10 {
            assert!(link
                .on_success(&[data(), ReadData::Exception(2)])
                .is_empty());
        }
        // Different code: a change.
        assert!(matches!(
            link.on_success(&[data(), ReadData::Exception(4)])
                .as_slice(),
            [LinkEvent::Exception { code: 4, .. }]
        ));
        // Offline and back with the same exception: only Online.
        for _ in 0..3 {
            link.on_failure("down");
        }
        assert_eq!(
            link.on_success(&[data(), ReadData::Exception(4)]),
            vec![LinkEvent::Online]
        );
        // Cleared once.
        assert_eq!(
            link.on_success(&[data(), data()]),
            vec![LinkEvent::ExceptionCleared {
                request: req(9),
                points: vec!["b".into(), "c".into()]
            }]
        );
        assert!(link.on_success(&[data(), data()]).is_empty());
        // Missing responses change nothing.
        link.on_success(&[data(), ReadData::Exception(2)]);
        assert!(link.on_success(&[data()]).is_empty());
    }

    #[test]
    fn events_read_as_gateway_words() {
        let event = LinkEvent::Exception {
            request: req(9),
            code: 2,
            points: vec!["b".into()],
        };
        assert_eq!(
            event.to_string(),
            "holding 9+1 answered exception 0x02 (illegal data address); no values for b"
        );
        assert_eq!(
            exception_description(0x0B),
            "gateway target device failed to respond"
        );
        assert_eq!(exception_description(0x42), "non-standard exception");
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let mut backoff = Backoff::new(100, 1_000, 7);
        let steps = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for step in steps {
            let delay = backoff.next_delay_ms();
            assert!((step / 2..=step).contains(&delay), "{delay} not in {step}");
        }
        for _ in 0..100 {
            assert!(backoff.next_delay_ms() <= 1_000);
        }
        backoff.reset();
        assert!(backoff.next_delay_ms() <= 100);

        // Jitter: two devices with different seeds do not march in lockstep.
        let mut a = Backoff::new(10_000, 60_000, 1);
        let mut b = Backoff::new(10_000, 60_000, 2);
        let da: Vec<u64> = (0..5).map(|_| a.next_delay_ms()).collect();
        let db: Vec<u64> = (0..5).map(|_| b.next_delay_ms()).collect();
        assert_ne!(da, db);

        // Huge values neither overflow nor panic.
        let mut huge = Backoff::new(u64::MAX / 2, u64::MAX, 3);
        for _ in 0..70 {
            huge.next_delay_ms();
        }
    }
}
