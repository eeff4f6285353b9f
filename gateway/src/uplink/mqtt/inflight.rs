//! In-flight bookkeeping for QoS 1 publishes: which spool records ride in which packet,
//! and which records may be acknowledged to the spool. Sans-IO: no tokio, no clock (the
//! caller passes `now_ms`), no MQTT client types.
//!
//! # Life of a publish
//!
//! 1. [`InFlight::enqueue`]: the driver handed a batch to the MQTT client. The client
//!    assigns the packet id itself, so the batch waits in a FIFO.
//! 2. [`InFlight::on_publish_sent`]: the client reports that it wrote a PUBLISH with
//!    packet id `pkid`. The client writes publishes in the order they were handed over,
//!    so the oldest waiting batch is the one that got `pkid`.
//! 3. [`InFlight::on_puback`]: the broker acknowledged `pkid`. The batch is marked acked;
//!    the records of the longest fully acknowledged *prefix* (in publish order) are
//!    returned for acknowledgement to the spool.
//! 4. [`InFlight::abandon`]: the connection is gone; everything is forgotten and the
//!    spool's leases are released, so the records are published again from the spool.
//!
//! # Invariants
//!
//! * Packet ids are 16-bit and reused: the map from packet id to batch holds only
//!   publishes that are live (sent, not acknowledged). An id acknowledged once may be
//!   reused at once for a later publish, even while an earlier publish still waits.
//! * Records are released to the spool strictly in publish order, even if a broker
//!   acknowledges out of order (a compliant broker does not, but we do not rely on it).
//!   So after a disconnect the records to replay are always a suffix of what was sent,
//!   and per-device order survives reconnects.
//! * The window counts every batch that is queued, live, or acknowledged but held back
//!   behind an older unacknowledged one; no more than `window` exist at once, which also
//!   bounds memory.

use std::collections::{HashMap, VecDeque};

use wardgate_proto::RecordId;

/// Bookkeeping errors: the MQTT client or the broker did something the protocol rules
/// out. The driver drops the connection and replays from the spool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InFlightError {
    /// A batch was offered while the window was full.
    #[error("in-flight window of {window} publishes is full")]
    WindowFull {
        /// The configured window.
        window: u16,
    },
    /// The client reported a publish we did not hand it.
    #[error("publish with packet id {pkid} was sent but no batch was waiting for one")]
    UnexpectedPublish {
        /// The packet id.
        pkid: u16,
    },
    /// The client reported packet id 0, which QoS 1 forbids.
    #[error("publish sent with packet id 0")]
    ZeroPacketId,
    /// A packet id was reused while its earlier publish was still unacknowledged.
    #[error("packet id {pkid} reused while still awaiting its PUBACK")]
    PacketIdInUse {
        /// The packet id.
        pkid: u16,
    },
    /// A PUBACK for a packet id that is not in flight.
    #[error("unsolicited PUBACK for packet id {pkid}")]
    UnsolicitedPuback {
        /// The packet id.
        pkid: u16,
    },
}

/// A publish that has left (or is about to leave) through the MQTT client.
#[derive(Debug)]
struct Sent {
    records: Vec<RecordId>,
    sent_at_ms: u64,
    acked: bool,
}

/// What [`InFlight::abandon`] dropped, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Abandoned {
    /// Publishes (queued, live or held back) that were forgotten.
    pub publishes: usize,
    /// Records they carried.
    pub records: usize,
}

/// In-flight bookkeeping for one MQTT session; see the module documentation.
#[derive(Debug)]
pub struct InFlight {
    window: u16,
    /// Handed to the client, packet id not known yet; oldest first.
    queued: VecDeque<Vec<RecordId>>,
    /// Sent publishes in publish order; `sent[i]` has sequence number `sent_base + i`.
    sent: VecDeque<Sent>,
    sent_base: u64,
    /// Live packet ids (sent, not yet acknowledged) to their publish sequence number.
    live: HashMap<u16, u64>,
    records: usize,
}

impl InFlight {
    /// Bookkeeping for a window of `window` publishes (a window of 0 is treated as 1).
    #[must_use]
    pub fn new(window: u16) -> Self {
        let window = window.max(1);
        InFlight {
            window,
            queued: VecDeque::new(),
            sent: VecDeque::new(),
            sent_base: 0,
            live: HashMap::with_capacity(usize::from(window)),
            records: 0,
        }
    }

    /// The configured window.
    #[must_use]
    pub fn window(&self) -> u16 {
        self.window
    }

    /// Whether another batch may be handed to the client.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.len() < usize::from(self.window)
    }

    /// Publishes counted against the window.
    #[must_use]
    pub fn len(&self) -> usize {
        self.queued.len() + self.sent.len()
    }

    /// Whether nothing is queued, live or held back.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records carried by publishes counted against the window.
    #[must_use]
    pub fn records(&self) -> usize {
        self.records
    }

    /// A batch carrying `records` was handed to the MQTT client.
    ///
    /// # Errors
    /// [`InFlightError::WindowFull`] if [`InFlight::has_room`] is false.
    pub fn enqueue(&mut self, records: Vec<RecordId>) -> Result<(), InFlightError> {
        if !self.has_room() {
            return Err(InFlightError::WindowFull {
                window: self.window,
            });
        }
        self.records += records.len();
        self.queued.push_back(records);
        Ok(())
    }

    /// The client wrote a QoS 1 PUBLISH with packet id `pkid` at `now_ms`.
    ///
    /// # Errors
    /// If no batch was waiting, `pkid` is 0, or `pkid` is still live.
    pub fn on_publish_sent(&mut self, pkid: u16, now_ms: u64) -> Result<(), InFlightError> {
        if pkid == 0 {
            return Err(InFlightError::ZeroPacketId);
        }
        if self.live.contains_key(&pkid) {
            return Err(InFlightError::PacketIdInUse { pkid });
        }
        let records = self
            .queued
            .pop_front()
            .ok_or(InFlightError::UnexpectedPublish { pkid })?;
        let seq = self.sent_base + self.sent.len() as u64;
        self.sent.push_back(Sent {
            records,
            sent_at_ms: now_ms,
            acked: false,
        });
        self.live.insert(pkid, seq);
        Ok(())
    }

    /// The broker acknowledged `pkid`. Returns the records that may now be acknowledged
    /// to the spool (possibly none, if an older publish is still waiting), in publish
    /// order, together with the number of publishes they came in.
    ///
    /// # Errors
    /// [`InFlightError::UnsolicitedPuback`] if `pkid` is not live.
    pub fn on_puback(&mut self, pkid: u16) -> Result<Released, InFlightError> {
        let seq = self
            .live
            .remove(&pkid)
            .ok_or(InFlightError::UnsolicitedPuback { pkid })?;
        // `live` only holds sequence numbers of entries still in `sent`.
        let index = usize::try_from(seq - self.sent_base)
            .map_err(|_| InFlightError::UnsolicitedPuback { pkid })?;
        let entry = self
            .sent
            .get_mut(index)
            .ok_or(InFlightError::UnsolicitedPuback { pkid })?;
        entry.acked = true;

        let mut released = Released::default();
        while self.sent.front().is_some_and(|front| front.acked) {
            if let Some(front) = self.sent.pop_front() {
                self.sent_base += 1;
                self.records -= front.records.len();
                released.publishes += 1;
                released.records.extend(front.records);
            }
        }
        Ok(released)
    }

    /// When the oldest unacknowledged publish times out, given the acknowledgement
    /// timeout in milliseconds; `None` when nothing is awaiting a PUBACK.
    #[must_use]
    pub fn ack_deadline_ms(&self, timeout_ms: u64) -> Option<u64> {
        // The front of `sent` is never acknowledged (acknowledged fronts are popped), so
        // it is the oldest publish still waiting.
        self.sent
            .front()
            .map(|front| front.sent_at_ms.saturating_add(timeout_ms))
    }

    /// The connection is gone: forget everything. The caller must release the spool's
    /// leases so the records are published again.
    pub fn abandon(&mut self) -> Abandoned {
        let abandoned = Abandoned {
            publishes: self.len(),
            records: self.records,
        };
        self.queued.clear();
        self.sent.clear();
        self.live.clear();
        self.records = 0;
        abandoned
    }
}

/// Records released by a PUBACK, in publish order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Publishes whose records are released.
    pub publishes: u64,
    /// The records to acknowledge to the spool.
    pub records: Vec<RecordId>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u64>) -> Vec<RecordId> {
        range.map(|seq| RecordId { spool: 1, seq }).collect()
    }

    fn seqs(released: &Released) -> Vec<u64> {
        released.records.iter().map(|id| id.seq).collect()
    }

    /// rumqttc's packet id allocator: 1..=max cycling (state.rs `next_pkid`).
    struct PkidAllocator {
        last: u16,
        max: u16,
    }

    impl PkidAllocator {
        fn next(&mut self) -> u16 {
            let next = self.last + 1;
            if next == self.max {
                self.last = 0;
                return next;
            }
            self.last = next;
            next
        }
    }

    #[test]
    fn in_order_acks_release_each_batch() {
        let mut inflight = InFlight::new(4);
        inflight.enqueue(ids(1..3)).unwrap();
        inflight.enqueue(ids(3..4)).unwrap();
        assert_eq!(inflight.records(), 3);
        inflight.on_publish_sent(1, 10).unwrap();
        inflight.on_publish_sent(2, 11).unwrap();
        assert_eq!(inflight.ack_deadline_ms(100), Some(110));
        assert_eq!(seqs(&inflight.on_puback(1).unwrap()), vec![1, 2]);
        assert_eq!(inflight.ack_deadline_ms(100), Some(111));
        let released = inflight.on_puback(2).unwrap();
        assert_eq!(seqs(&released), vec![3]);
        assert_eq!(released.publishes, 1);
        assert!(inflight.is_empty());
        assert_eq!(inflight.records(), 0);
        assert_eq!(inflight.ack_deadline_ms(100), None);
    }

    #[test]
    fn out_of_order_acks_are_held_until_the_prefix_is_acked() {
        let mut inflight = InFlight::new(3);
        for (batch, pkid) in [(1..2, 1), (2..3, 2), (3..4, 3)] {
            inflight.enqueue(ids(batch)).unwrap();
            inflight.on_publish_sent(pkid, 0).unwrap();
        }
        assert!(seqs(&inflight.on_puback(3).unwrap()).is_empty());
        assert!(seqs(&inflight.on_puback(2).unwrap()).is_empty());
        // Held-back publishes still occupy the window.
        assert!(!inflight.has_room());
        assert_eq!(
            inflight.enqueue(ids(4..5)),
            Err(InFlightError::WindowFull { window: 3 })
        );
        let released = inflight.on_puback(1).unwrap();
        assert_eq!(seqs(&released), vec![1, 2, 3]);
        assert_eq!(released.publishes, 3);
        assert!(inflight.has_room());
    }

    #[test]
    fn acked_packet_id_may_be_reused_while_an_older_publish_waits() {
        let mut inflight = InFlight::new(4);
        inflight.enqueue(ids(1..2)).unwrap();
        inflight.on_publish_sent(1, 0).unwrap();
        inflight.enqueue(ids(2..3)).unwrap();
        inflight.on_publish_sent(2, 0).unwrap();
        assert!(inflight.on_puback(2).unwrap().records.is_empty());
        // pkid 2 comes round again for a new batch while pkid 1 is still unacknowledged.
        inflight.enqueue(ids(3..4)).unwrap();
        inflight.on_publish_sent(2, 0).unwrap();
        assert_eq!(seqs(&inflight.on_puback(1).unwrap()), vec![1, 2]);
        assert_eq!(seqs(&inflight.on_puback(2).unwrap()), vec![3]);
        assert!(inflight.is_empty());
    }

    #[test]
    fn protocol_violations_are_errors_not_panics() {
        let mut inflight = InFlight::new(2);
        assert_eq!(
            inflight.on_publish_sent(1, 0),
            Err(InFlightError::UnexpectedPublish { pkid: 1 })
        );
        assert_eq!(
            inflight.on_puback(9),
            Err(InFlightError::UnsolicitedPuback { pkid: 9 })
        );
        inflight.enqueue(ids(1..2)).unwrap();
        assert_eq!(
            inflight.on_publish_sent(0, 0),
            Err(InFlightError::ZeroPacketId)
        );
        inflight.on_publish_sent(5, 0).unwrap();
        inflight.enqueue(ids(2..3)).unwrap();
        assert_eq!(
            inflight.on_publish_sent(5, 0),
            Err(InFlightError::PacketIdInUse { pkid: 5 })
        );
        inflight.on_puback(5).unwrap();
        assert_eq!(
            inflight.on_puback(5),
            Err(InFlightError::UnsolicitedPuback { pkid: 5 })
        );
    }

    #[test]
    fn abandon_forgets_everything() {
        let mut inflight = InFlight::new(8);
        inflight.enqueue(ids(1..4)).unwrap();
        inflight.on_publish_sent(1, 0).unwrap();
        inflight.enqueue(ids(4..6)).unwrap();
        inflight.on_publish_sent(2, 0).unwrap();
        inflight.on_puback(2).unwrap();
        inflight.enqueue(ids(6..7)).unwrap();
        assert_eq!(
            inflight.abandon(),
            Abandoned {
                publishes: 3,
                records: 6
            }
        );
        assert!(inflight.is_empty());
        assert_eq!(inflight.records(), 0);
        assert_eq!(
            inflight.on_puback(1),
            Err(InFlightError::UnsolicitedPuback { pkid: 1 })
        );
        // A new session starts from scratch, packet ids included.
        inflight.enqueue(ids(1..2)).unwrap();
        inflight.on_publish_sent(1, 0).unwrap();
        assert_eq!(seqs(&inflight.on_puback(1).unwrap()), vec![1]);
    }

    /// 200,000 publishes through the full 16-bit packet id space (window 65,535), three
    /// times round. The "broker" acknowledges a random subset in random order, and now and
    /// then sits on one publish until the window is full of held-back acknowledgements.
    #[test]
    fn wraps_past_65535_with_shuffled_acks() {
        let window = u16::MAX;
        let mut inflight = InFlight::new(window);
        let mut alloc = PkidAllocator {
            last: 0,
            max: window,
        };
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let total: u64 = 200_000;
        let mut next_record = 0u64;
        let mut live: Vec<u16> = Vec::new();
        let mut slow: Vec<u16> = Vec::new();
        let mut acked: Vec<u64> = Vec::new();
        let mut max_pkid_seen = 0u16;
        let mut window_filled = 0;
        while acked.len() < total as usize {
            for _ in 0..rng.usize(1..=4096) {
                if !inflight.has_room() || next_record == total {
                    break;
                }
                inflight
                    .enqueue(vec![RecordId {
                        spool: 1,
                        seq: next_record,
                    }])
                    .unwrap();
                next_record += 1;
                let pkid = alloc.next();
                max_pkid_seen = max_pkid_seen.max(pkid);
                // The window spans from the oldest unreleased publish, so the cyclic
                // allocator can never come round to an id that is still live: rumqttc's
                // collision path is unreachable.
                inflight.on_publish_sent(pkid, 0).unwrap();
                if rng.usize(0..5000) == 0 {
                    slow.push(pkid);
                } else {
                    live.push(pkid);
                }
            }
            rng.shuffle(&mut live);
            let n = rng.usize(0..=live.len());
            for pkid in live.drain(..n) {
                acked.extend(seqs(&inflight.on_puback(pkid).unwrap()));
            }
            if !inflight.has_room() || next_record == total {
                window_filled += usize::from(!inflight.has_room());
                for pkid in slow.drain(..) {
                    acked.extend(seqs(&inflight.on_puback(pkid).unwrap()));
                }
            }
        }
        assert_eq!(max_pkid_seen, u16::MAX);
        assert!(
            window_filled > 0,
            "the test should fill the window with held-back acknowledgements"
        );
        // Every record released exactly once, and in publish order.
        assert_eq!(acked, (0..total).collect::<Vec<_>>());
        assert!(inflight.is_empty());
    }

    /// A small window wraps its packet ids thousands of times; acks arrive in order
    /// from a "compliant broker" with varying lag.
    #[test]
    fn small_window_wraps_many_times() {
        let window = 7;
        let mut inflight = InFlight::new(window);
        let mut alloc = PkidAllocator {
            last: 0,
            max: window,
        };
        let mut live: VecDeque<u16> = VecDeque::new();
        let mut acked = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let total = 70_000u64;
        let mut next = 0;
        while (acked.len() as u64) < total {
            while inflight.has_room() && next < total {
                let size = rng.u64(1..4);
                let end = (next + size).min(total);
                inflight.enqueue(ids(next..end)).unwrap();
                next = end;
                let pkid = alloc.next();
                inflight.on_publish_sent(pkid, next).unwrap();
                live.push_back(pkid);
            }
            for _ in 0..rng.usize(1..=live.len().max(1)) {
                if let Some(pkid) = live.pop_front() {
                    acked.extend(seqs(&inflight.on_puback(pkid).unwrap()));
                }
            }
        }
        assert_eq!(acked, (0..total).collect::<Vec<_>>());
    }
}
