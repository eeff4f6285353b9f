//! What a listener does when `accept` fails — one policy for every TCP listener of the
//! gateway (HL7, DICOM, the agent API). Pure: the driver supplies the errors and does the
//! sleeping.
//!
//! - Errors that concern one connection only (the peer reset or aborted before we took
//!   it, an interrupted call) are ignored: the next accept goes on.
//! - Anything else (out of file descriptors, memory) backs off exponentially from
//!   [`BACKOFF_START`] to [`BACKOFF_MAX`], so a resource shortage does not spin a core.
//! - After [`MAX_ACCEPT_FAILURES`] such failures in a row the listener gives up (and winds
//!   down like a shutdown); one successful accept resets the count.

use std::io::ErrorKind;
use std::time::Duration;

/// Consecutive accept failures after which a listener gives up.
pub const MAX_ACCEPT_FAILURES: u32 = 20;
/// First back-off after a failed accept.
pub const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest back-off between failed accepts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What to do about one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptVerdict {
    /// A failure of one connection: accept the next.
    Ignore,
    /// Wait this long (or until shutdown) before accepting again.
    BackOff(Duration),
    /// Too many failures in a row: stop listening.
    GiveUp,
}

/// Consecutive accept failures of one listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptFailures {
    consecutive: u32,
}

impl AcceptFailures {
    /// A connection was accepted.
    pub fn accepted(&mut self) {
        self.consecutive = 0;
    }

    /// `accept` failed with `error`.
    pub fn failed(&mut self, error: &std::io::Error) -> AcceptVerdict {
        if matches!(
            error.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
                | ErrorKind::Interrupted
                | ErrorKind::WouldBlock
        ) {
            return AcceptVerdict::Ignore;
        }
        self.consecutive += 1;
        if self.consecutive >= MAX_ACCEPT_FAILURES {
            return AcceptVerdict::GiveUp;
        }
        AcceptVerdict::BackOff(
            BACKOFF_START
                .saturating_mul(1 << self.consecutive.min(16))
                .min(BACKOFF_MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    #[test]
    fn per_connection_errors_are_ignored_and_do_not_count() {
        let mut f = AcceptFailures::default();
        for _ in 0..100 {
            assert_eq!(
                f.failed(&err(ErrorKind::ConnectionReset)),
                AcceptVerdict::Ignore
            );
        }
        assert_eq!(f, AcceptFailures::default());
    }

    #[test]
    fn resource_errors_back_off_growing_capped_then_give_up() {
        let mut f = AcceptFailures::default();
        let mut last = Duration::ZERO;
        for i in 1..MAX_ACCEPT_FAILURES {
            match f.failed(&err(ErrorKind::OutOfMemory)) {
                AcceptVerdict::BackOff(d) => {
                    assert!(d >= last && d <= BACKOFF_MAX, "failure {i}: {d:?}");
                    last = d;
                }
                other => panic!("failure {i}: {other:?}"),
            }
        }
        assert_eq!(last, BACKOFF_MAX);
        assert_eq!(
            f.failed(&err(ErrorKind::OutOfMemory)),
            AcceptVerdict::GiveUp
        );
    }

    #[test]
    fn a_successful_accept_resets_the_count() {
        let mut f = AcceptFailures::default();
        for _ in 0..(MAX_ACCEPT_FAILURES - 1) {
            f.failed(&err(ErrorKind::OutOfMemory));
        }
        f.accepted();
        assert_eq!(
            f.failed(&err(ErrorKind::OutOfMemory)),
            AcceptVerdict::BackOff(BACKOFF_START * 2)
        );
    }
}
