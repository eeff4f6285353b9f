//! The in-memory index of the records a spool holds: pure bookkeeping, no I/O, no clock.
//!
//! Invariants (checked by the unit tests below and by the spool's model test):
//! - Each priority class keeps its entries in ascending `seq` order. New records always
//!   get a `seq` above every existing one, so appends are `push_back`.
//! - Within a class, the leased entries are a *prefix* of the class: a lease always takes
//!   the lowest pending `seq`s, eviction and expiry remove from the front, an ack removes
//!   any entry, and a release clears the whole prefix. None of these can put a pending
//!   entry in front of a leased one, so "leased" is one counter per class.
//! - `bytes` is the sum of [`charge`] over every entry; it is what the byte budget limits.
//! - Every mutation made while a batch is planned is recorded in an undo log, so a batch
//!   whose SQLite transaction fails can be rolled back exactly (the index only ever
//!   describes committed rows once the writer has finished a batch).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use wardgate_proto::Priority;

/// Estimated storage cost of a record beyond its payload and device key: the row's
/// integer columns and header, the B-tree cell pointer and the page fill factor.
/// Part of the budget so that a budget of N bytes bounds the file to roughly N bytes
/// even for tiny records.
pub const RECORD_OVERHEAD_BYTES: u64 = 48;

/// Budget charge of a record with the given payload and device key lengths.
#[must_use]
pub fn charge(payload_len: usize, device_len: usize) -> u64 {
    // usize -> u64 never truncates on supported (32/64-bit) targets.
    payload_len as u64 + device_len as u64 + RECORD_OVERHEAD_BYTES
}

/// What the index knows about one stored record (its payload stays in SQLite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number within the spool (the SQLite rowid).
    pub seq: u64,
    /// When the record was accepted (Unix ms).
    pub accepted_ms: u64,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// Device key, interned: a spool holds many records of few devices.
    pub device: Arc<str>,
}

impl Entry {
    /// This entry's budget charge.
    #[must_use]
    pub fn charge(&self) -> u64 {
        charge(self.payload_len as usize, self.device.len())
    }
}

#[derive(Default)]
struct Class {
    entries: VecDeque<Entry>,
    /// Length of the leased prefix of `entries`.
    leased: usize,
    bytes: u64,
}

/// One step of the undo log.
#[derive(Debug)]
pub enum Undo {
    /// An entry was appended to the class.
    Pushed { class: u8 },
    /// An entry was removed from `position` of the class.
    Removed {
        class: u8,
        position: usize,
        entry: Entry,
        was_leased: bool,
    },
}

/// A record handed out by [`Index::lease`].
#[derive(Debug, Clone)]
pub struct LeasedEntry {
    /// Its class.
    pub priority: Priority,
    /// Its sequence number.
    pub seq: u64,
    /// When it was accepted (Unix ms).
    pub accepted_ms: u64,
    /// Its device key.
    pub device: Arc<str>,
}

/// A removed entry, as reported by the removal methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Its class.
    pub priority: Priority,
    /// Its sequence number.
    pub seq: u64,
}

/// The index. See the module doc for its invariants.
#[derive(Default)]
pub struct Index {
    classes: [Class; 4],
    bytes: u64,
    devices: HashSet<Arc<str>>,
}

fn class_of(priority: Priority) -> usize {
    usize::from(priority.as_u8())
}

fn priority_of(class: usize) -> Priority {
    Priority::ALL[class]
}

impl Index {
    /// Returns the shared copy of a device key, creating it on first use.
    pub fn intern(&mut self, device: &str) -> Arc<str> {
        if let Some(existing) = self.devices.get(device) {
            return Arc::clone(existing);
        }
        let shared: Arc<str> = Arc::from(device);
        self.devices.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets device keys no entry refers to any more (devices that were
    /// decommissioned or renamed), so the interner does not grow without bound.
    pub fn forget_unused_devices(&mut self) {
        self.devices.retain(|device| Arc::strong_count(device) > 1);
    }

    /// Appends an entry. Its `seq` must exceed every `seq` in the index.
    pub fn push(&mut self, priority: Priority, entry: Entry, undo: &mut Vec<Undo>) {
        let class = &mut self.classes[class_of(priority)];
        debug_assert!(class.entries.back().is_none_or(|last| last.seq < entry.seq));
        let charge = entry.charge();
        class.bytes += charge;
        self.bytes += charge;
        class.entries.push_back(entry);
        undo.push(Undo::Pushed {
            class: priority.as_u8(),
        });
    }

    /// Appends an entry while loading the index from disk, where rows arrive in
    /// ascending `seq` order. Returns false (and stores nothing) if that order is broken.
    pub fn load(&mut self, priority: Priority, entry: Entry) -> bool {
        let class = &mut self.classes[class_of(priority)];
        if class
            .entries
            .back()
            .is_some_and(|last| last.seq >= entry.seq)
        {
            return false;
        }
        let charge = entry.charge();
        class.bytes += charge;
        self.bytes += charge;
        class.entries.push_back(entry);
        true
    }

    fn remove_at(
        &mut self,
        class_index: usize,
        position: usize,
        undo: &mut Vec<Undo>,
    ) -> Option<Removed> {
        let class = &mut self.classes[class_index];
        let entry = class.entries.remove(position)?;
        let was_leased = position < class.leased;
        if was_leased {
            class.leased -= 1;
        }
        let charge = entry.charge();
        class.bytes -= charge;
        self.bytes -= charge;
        let removed = Removed {
            priority: priority_of(class_index),
            seq: entry.seq,
        };
        #[allow(clippy::cast_possible_truncation)] // class_index < 4
        undo.push(Undo::Removed {
            class: class_index as u8,
            position,
            entry,
            was_leased,
        });
        Some(removed)
    }

    /// Removes the entry with this `seq`, wherever it is. `None` if there is none.
    pub fn remove(&mut self, seq: u64, undo: &mut Vec<Undo>) -> Option<Removed> {
        for class_index in 0..self.classes.len() {
            let entries = &self.classes[class_index].entries;
            // Acks mostly hit the front (the oldest leased records): check it first.
            let position = if entries.front().is_some_and(|e| e.seq == seq) {
                Some(0)
            } else {
                entries.binary_search_by_key(&seq, |e| e.seq).ok()
            };
            if let Some(position) = position {
                return self.remove_at(class_index, position, undo);
            }
        }
        None
    }

    /// Total budget charge of the classes strictly below `priority`.
    #[must_use]
    pub fn bytes_below(&self, priority: Priority) -> u64 {
        self.classes[..class_of(priority)]
            .iter()
            .map(|c| c.bytes)
            .sum()
    }

    /// Makes room for `needed` more bytes under `budget` by evicting the oldest entries
    /// of the lowest classes strictly below `incoming`. Evicts nothing and returns false
    /// when that cannot free enough.
    pub fn make_room(
        &mut self,
        incoming: Priority,
        needed: u64,
        budget: u64,
        undo: &mut Vec<Undo>,
        evicted: &mut Vec<Removed>,
    ) -> bool {
        let target = match budget.checked_sub(needed) {
            Some(target) => target,
            None => return false,
        };
        if self.bytes <= target {
            return true;
        }
        if self.bytes - self.bytes_below(incoming) > target {
            return false;
        }
        for class_index in 0..class_of(incoming) {
            while self.bytes > target && !self.classes[class_index].entries.is_empty() {
                if let Some(removed) = self.remove_at(class_index, 0, undo) {
                    evicted.push(removed);
                }
            }
        }
        debug_assert!(self.bytes <= target);
        true
    }

    /// Removes, from the front of `priority`'s class, up to `limit` entries accepted at
    /// or before `cutoff_ms`. Entries are in acceptance order unless the wall clock
    /// stepped back; an entry behind a younger one then expires a little late.
    pub fn expire(
        &mut self,
        priority: Priority,
        cutoff_ms: u64,
        limit: usize,
        undo: &mut Vec<Undo>,
        expired: &mut Vec<Removed>,
    ) {
        let class_index = class_of(priority);
        let mut removed = 0;
        while removed < limit
            && self.classes[class_index]
                .entries
                .front()
                .is_some_and(|e| e.accepted_ms <= cutoff_ms)
        {
            if let Some(r) = self.remove_at(class_index, 0, undo) {
                expired.push(r);
            }
            removed += 1;
        }
    }

    /// Reverts the mutations recorded in `undo` after position `keep`, newest first.
    pub fn rollback(&mut self, undo: &mut Vec<Undo>, keep: usize) {
        while undo.len() > keep {
            let Some(step) = undo.pop() else { break };
            match step {
                Undo::Pushed { class } => {
                    let class = &mut self.classes[usize::from(class)];
                    if let Some(entry) = class.entries.pop_back() {
                        let charge = entry.charge();
                        class.bytes -= charge;
                        self.bytes -= charge;
                    }
                }
                Undo::Removed {
                    class,
                    position,
                    entry,
                    was_leased,
                } => {
                    let class = &mut self.classes[usize::from(class)];
                    let charge = entry.charge();
                    class.bytes += charge;
                    self.bytes += charge;
                    class.entries.insert(position, entry);
                    if was_leased {
                        class.leased += 1;
                    }
                }
            }
        }
    }

    /// Leases the next pending entries with `seq <= max_seq` (the durable ones): highest
    /// class first, by `seq` within a class. Stops at `max_records`, or before the payloads
    /// would exceed `max_bytes` — but always returns at least one entry when one is
    /// pending, so a record larger than `max_bytes` cannot block the spool.
    pub fn lease(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        max_seq: u64,
    ) -> Vec<LeasedEntry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'classes: for class_index in (0..self.classes.len()).rev() {
            let class = &mut self.classes[class_index];
            while class.leased < class.entries.len() {
                if out.len() >= max_records {
                    break 'classes;
                }
                let entry = &class.entries[class.leased];
                if entry.seq > max_seq {
                    // Later entries of the class are younger still.
                    continue 'classes;
                }
                let len = entry.payload_len as usize;
                if !out.is_empty() && bytes.saturating_add(len) > max_bytes {
                    break 'classes;
                }
                bytes = bytes.saturating_add(len);
                out.push(LeasedEntry {
                    priority: priority_of(class_index),
                    seq: entry.seq,
                    accepted_ms: entry.accepted_ms,
                    device: Arc::clone(&entry.device),
                });
                class.leased += 1;
            }
        }
        out
    }

    /// Returns the most recently leased entries (the tails of the leased prefixes) to
    /// pending, undoing a lease whose payloads could not be read.
    pub fn unlease(&mut self, leased: &[LeasedEntry]) {
        for entry in leased {
            let class = &mut self.classes[class_of(entry.priority)];
            class.leased = class.leased.saturating_sub(1);
        }
    }

    /// Returns every leased entry to pending.
    pub fn release_all(&mut self) {
        for class in &mut self.classes {
            class.leased = 0;
        }
    }

    /// Entries per class.
    #[must_use]
    pub fn counts(&self) -> [u64; 4] {
        self.classes.each_ref().map(|c| c.entries.len() as u64)
    }

    /// Sum of the entries' budget charges.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of leased entries.
    #[must_use]
    pub fn leased(&self) -> u64 {
        self.classes.iter().map(|c| c.leased as u64).sum()
    }

    /// Smallest `seq` not leased (`u64::MAX` if every entry is leased): records up to
    /// the durable watermark can be leased iff this is at or below it.
    #[must_use]
    pub fn min_unleased_seq(&self) -> u64 {
        self.classes
            .iter()
            .filter_map(|c| c.entries.get(c.leased).map(|e| e.seq))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Acceptance time of the oldest entry (the minimum over the class fronts).
    #[must_use]
    pub fn oldest_accepted_ms(&self) -> Option<u64> {
        self.classes
            .iter()
            .filter_map(|c| c.entries.front().map(|e| e.accepted_ms))
            .min()
    }

    /// Acceptance time of the oldest entry of a class.
    #[must_use]
    pub fn oldest_in(&self, priority: Priority) -> Option<u64> {
        self.classes[class_of(priority)]
            .entries
            .front()
            .map(|e| e.accepted_ms)
    }

    /// Every entry with its class and lease state, in `seq` order (tests and checks).
    #[cfg(test)]
    #[must_use]
    pub fn dump(&self) -> Vec<(u64, Priority, bool)> {
        let mut all: Vec<(u64, Priority, bool)> = self
            .classes
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.entries
                    .iter()
                    .enumerate()
                    .map(move |(pos, e)| (e.seq, priority_of(i), pos < c.leased))
            })
            .collect();
        all.sort_unstable_by_key(|(seq, _, _)| *seq);
        all
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn entry(index: &mut Index, seq: u64, payload_len: u32) -> Entry {
        Entry {
            seq,
            accepted_ms: seq * 10,
            payload_len,
            device: index.intern("dev"),
        }
    }

    fn filled(spec: &[(u64, Priority)]) -> Index {
        let mut index = Index::default();
        let mut undo = Vec::new();
        for &(seq, p) in spec {
            let e = entry(&mut index, seq, 100);
            index.push(p, e, &mut undo);
        }
        index
    }

    #[test]
    fn lease_takes_highest_class_first_then_by_seq() {
        use Priority::*;
        let mut index = filled(&[(1, Log), (2, Alarm), (3, Observation), (4, Alarm), (5, Log)]);
        let seqs: Vec<u64> = index
            .lease(10, usize::MAX, u64::MAX)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2, 4, 3, 1, 5]);
        assert_eq!(index.min_unleased_seq(), u64::MAX);
        assert!(index.lease(10, usize::MAX, u64::MAX).is_empty());
        index.release_all();
        assert_eq!(index.min_unleased_seq(), 1);
    }

    #[test]
    fn lease_stops_at_the_durable_watermark_per_class() {
        use Priority::*;
        let mut index = filled(&[(1, Log), (2, Alarm), (3, Alarm), (4, Log)]);
        assert_eq!(index.min_unleased_seq(), 1);
        let seqs: Vec<u64> = index
            .lease(10, usize::MAX, 2)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2, 1]);
        assert_eq!(index.min_unleased_seq(), 3);
        let seqs: Vec<u64> = index
            .lease(10, usize::MAX, 4)
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![3, 4]);
        assert_eq!(index.min_unleased_seq(), u64::MAX);
    }

    #[test]
    fn lease_respects_limits_but_always_returns_one() {
        let mut index = filled(&[(1, Priority::Log), (2, Priority::Log), (3, Priority::Log)]);
        assert_eq!(index.lease(2, usize::MAX, u64::MAX).len(), 2);
        index.release_all();
        // 100-byte payloads: 250 bytes fit two.
        assert_eq!(index.lease(10, 250, u64::MAX).len(), 2);
        // A limit below one payload still makes progress.
        let one = index.lease(10, 1, u64::MAX);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].seq, 3);
        assert!(index.lease(0, usize::MAX, u64::MAX).is_empty());
    }

    #[test]
    fn make_room_evicts_only_strictly_lower_classes_oldest_first() {
        use Priority::*;
        let mut index = filled(&[(1, Log), (2, State), (3, Log), (4, Alarm)]);
        let per = charge(100, 3);
        let budget = per * 4;
        let mut undo = Vec::new();
        let mut evicted = Vec::new();
        assert!(index.make_room(Alarm, per * 2, budget, &mut undo, &mut evicted));
        assert_eq!(
            evicted.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // Only the State and Alarm records remain; an observation may evict the State one,
        // but not the alarm.
        evicted.clear();
        assert!(!index.make_room(Observation, per * 4, budget, &mut undo, &mut evicted));
        assert!(evicted.is_empty());
        assert!(index.make_room(Observation, per * 2, budget, &mut undo, &mut evicted));
        assert!(evicted.is_empty(), "there is room already");
        assert!(index.make_room(Observation, per * 3, budget, &mut undo, &mut evicted));
        assert_eq!(evicted.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
        // A record larger than the whole budget never fits.
        assert!(!index.make_room(Alarm, budget + 1, budget, &mut undo, &mut evicted));
    }

    #[test]
    fn removal_keeps_the_leased_prefix_and_rollback_restores_everything() {
        use Priority::*;
        let mut index = filled(&[(1, Log), (2, Log), (3, Log), (4, Alarm)]);
        let leased = index.lease(2, usize::MAX, u64::MAX);
        assert_eq!(leased.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 1]);
        let before = index.dump();
        let bytes = index.bytes();
        let mut undo = Vec::new();
        assert_eq!(
            index.remove(1, &mut undo),
            Some(Removed {
                priority: Log,
                seq: 1
            })
        );
        assert_eq!(
            index.remove(3, &mut undo),
            Some(Removed {
                priority: Log,
                seq: 3
            })
        );
        assert_eq!(index.remove(99, &mut undo), None);
        let e = entry(&mut index, 5, 7);
        index.push(State, e, &mut undo);
        let mut expired = Vec::new();
        index.expire(Alarm, 40, 10, &mut undo, &mut expired);
        assert_eq!(
            expired,
            vec![Removed {
                priority: Alarm,
                seq: 4
            }]
        );
        assert_eq!(index.leased(), 0);
        index.rollback(&mut undo, 0);
        assert_eq!(index.dump(), before);
        assert_eq!(index.bytes(), bytes);
        assert_eq!(index.leased(), 2);
        // The next lease continues after the restored prefix.
        assert_eq!(index.lease(1, usize::MAX, u64::MAX)[0].seq, 2);
    }

    #[test]
    fn expire_stops_at_the_first_young_entry_and_at_the_limit() {
        let mut index = filled(&[(1, Priority::Log), (2, Priority::Log), (3, Priority::Log)]);
        let mut undo = Vec::new();
        let mut expired = Vec::new();
        index.expire(Priority::Log, 25, 1, &mut undo, &mut expired);
        assert_eq!(expired.len(), 1);
        index.expire(Priority::Log, 25, 10, &mut undo, &mut expired);
        assert_eq!(
            expired.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(index.oldest_accepted_ms(), Some(30));
    }

    #[test]
    fn unused_devices_are_forgotten() {
        let mut index = Index::default();
        let mut undo = Vec::new();
        let a = Entry {
            seq: 1,
            accepted_ms: 0,
            payload_len: 1,
            device: index.intern("a"),
        };
        index.push(Priority::Log, a, &mut undo);
        drop(index.intern("b"));
        undo.clear();
        index.forget_unused_devices();
        assert_eq!(index.devices.len(), 1);
        assert!(index.remove(1, &mut undo).is_some());
        undo.clear();
        index.forget_unused_devices();
        assert!(index.devices.is_empty());
    }
}
