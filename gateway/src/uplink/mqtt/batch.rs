//! Builds publish payloads: a compact JSON [`wardgate_proto::UplinkBatch`] around the
//! records' body bytes, which are copied verbatim (never decoded and re-encoded).
//!
//! Invariants:
//! * Every payload is at most `max_payload_bytes` long and deserializes into
//!   [`wardgate_proto::UplinkBatch`] with `schema` = [`wardgate_proto::SCHEMA_VERSION`].
//! * A batch holds consecutive records of one priority (topics and message properties are
//!   per priority), in the order they were leased.
//! * A record that can never be published — larger than a payload on its own, or a body
//!   that is not a JSON object — is handed back as [`HeldBack`], never silently dropped
//!   and never allowed to block the records behind it.

use std::collections::VecDeque;
use std::io::Write as _;

use wardgate_proto::{Priority, RecordId, SCHEMA_VERSION};

use crate::uplink::OutgoingRecord;

/// Upper bound of records in one publish, whatever their size, so that one PUBACK never
/// acknowledges an unbounded amount of work to the spool.
pub const MAX_RECORDS_PER_PUBLISH: usize = 4096;

/// Closing bytes of the envelope: `]}`.
const ENVELOPE_TAIL: usize = 2;

/// One publish payload and the records it carries.
pub struct EncodedBatch {
    /// Priority of every record in the batch.
    pub priority: Priority,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// The records, in order.
    pub records: Vec<RecordId>,
}

impl std::fmt::Debug for EncodedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedBatch")
            .field("priority", &self.priority)
            .field("payload_bytes", &self.payload.len())
            .field("records", &self.records.len())
            .finish()
    }
}

/// Why a record cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldBack {
    /// Even alone, the record's envelope exceeds the payload limit.
    TooLarge {
        /// The record.
        id: RecordId,
        /// Bytes it would take in a payload on its own.
        encoded_bytes: usize,
        /// The payload limit.
        limit: usize,
    },
    /// The body is not a JSON object, so the batch would not decode at the cloud.
    NotJsonObject {
        /// The record.
        id: RecordId,
    },
}

/// Encodes batches for one gateway under one payload limit.
#[derive(Debug, Clone)]
pub struct BatchEncoder {
    /// `{"schema":1,"gateway":"<id>","records":[`
    header: Vec<u8>,
    max_payload_bytes: usize,
    max_records: usize,
}

impl BatchEncoder {
    /// An encoder for `gateway_id`, producing payloads of at most `max_payload_bytes`
    /// with at most `max_records` records (clamped to 1..=[`MAX_RECORDS_PER_PUBLISH`]).
    #[must_use]
    pub fn new(gateway_id: &str, max_payload_bytes: usize, max_records: usize) -> Self {
        let mut header = Vec::with_capacity(64 + gateway_id.len());
        header.extend_from_slice(b"{\"schema\":");
        header.extend_from_slice(SCHEMA_VERSION.to_string().as_bytes());
        header.extend_from_slice(b",\"gateway\":");
        // Gateway ids are validated to need no escaping, but never build JSON strings by
        // hand when serde can do it.
        match serde_json::to_vec(gateway_id) {
            Ok(quoted) => header.extend_from_slice(&quoted),
            Err(_) => header.extend_from_slice(b"\"\""),
        }
        header.extend_from_slice(b",\"records\":[");
        BatchEncoder {
            header,
            max_payload_bytes,
            max_records: max_records.clamp(1, MAX_RECORDS_PER_PUBLISH),
        }
    }

    /// Most records per publish.
    #[must_use]
    pub fn max_records(&self) -> usize {
        self.max_records
    }

    /// Payload bytes available for records in one publish (a lease budget).
    #[must_use]
    pub fn record_budget(&self) -> usize {
        self.max_payload_bytes
            .saturating_sub(self.header.len() + ENVELOPE_TAIL)
    }

    /// The largest body a record may have and still be publishable on its own, for
    /// checks at intake.
    #[must_use]
    pub fn max_body_bytes(&self) -> usize {
        let worst = record_envelope_len(
            RecordId {
                spool: u64::MAX,
                seq: u64::MAX,
            },
            Priority::Observation,
            u64::MAX,
            0,
        );
        self.record_budget().saturating_sub(worst)
    }

    /// Takes the longest prefix of `pending` that shares the first record's priority and
    /// fits one payload, and encodes it. Records that can never be published are removed
    /// from the front of `pending` into `held_back`. Returns `None` when `pending` is
    /// empty (after removing held-back records).
    pub fn encode(
        &self,
        pending: &mut VecDeque<OutgoingRecord>,
        held_back: &mut Vec<HeldBack>,
    ) -> Option<EncodedBatch> {
        let budget = self.record_budget();
        // Drop unpublishable records at the front so the batch starts with a good one.
        let priority = loop {
            let front = pending.front()?;
            match self.check(front, budget) {
                Ok(()) => break front.priority,
                Err(reason) => {
                    held_back.push(reason);
                    pending.pop_front();
                }
            }
        };

        let mut payload = Vec::with_capacity(
            self.max_payload_bytes
                .min(budget.saturating_add(self.header.len() + ENVELOPE_TAIL)),
        );
        payload.extend_from_slice(&self.header);
        let mut records = Vec::new();
        let mut used = 0usize;
        while records.len() < self.max_records {
            let Some(record) = pending.front() else { break };
            if record.priority != priority {
                break;
            }
            let separator = usize::from(!records.is_empty());
            let len = record_envelope_len(
                record.id,
                record.priority,
                record.accepted_ms,
                record.payload.len(),
            );
            if used + separator + len > budget {
                break;
            }
            if let Err(reason) = self.check(record, budget) {
                // Only reachable for a malformed body after the first record: hold it back
                // and keep filling.
                held_back.push(reason);
                pending.pop_front();
                continue;
            }
            if separator == 1 {
                payload.push(b',');
            }
            write_record(&mut payload, record);
            used += separator + len;
            records.push(record.id);
            pending.pop_front();
        }
        payload.extend_from_slice(b"]}");
        Some(EncodedBatch {
            priority,
            payload,
            records,
        })
    }

    fn check(&self, record: &OutgoingRecord, budget: usize) -> Result<(), HeldBack> {
        let len = record_envelope_len(
            record.id,
            record.priority,
            record.accepted_ms,
            record.payload.len(),
        );
        if len > budget {
            return Err(HeldBack::TooLarge {
                id: record.id,
                encoded_bytes: len + self.header.len() + ENVELOPE_TAIL,
                limit: self.max_payload_bytes,
            });
        }
        if !is_json_object(&record.payload) {
            return Err(HeldBack::NotJsonObject { id: record.id });
        }
        Ok(())
    }
}

/// Syntax check of a body: one JSON object and nothing else. A scan, not a decode: serde
/// skips the value without building anything.
fn is_json_object(body: &[u8]) -> bool {
    let starts_with_brace = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    starts_with_brace && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// `{"id":"<16 hex>-<seq>","priority":"<name>","accepted_ms":<ms>,"body":<body>}`
fn record_envelope_len(
    id: RecordId,
    priority: Priority,
    accepted_ms: u64,
    body_len: usize,
) -> usize {
    const FIXED: usize = r#"{"id":"-","priority":"","accepted_ms":,"body":}"#.len();
    FIXED + 16 + decimal_len(id.seq) + priority.name().len() + decimal_len(accepted_ms) + body_len
}

fn write_record(out: &mut Vec<u8>, record: &OutgoingRecord) {
    // Writing into a Vec cannot fail; the Display of RecordId is the wire form the
    // proto crate parses back.
    let _ = write!(
        out,
        r#"{{"id":"{}","priority":"{}","accepted_ms":{},"body":"#,
        record.id,
        record.priority.name(),
        record.accepted_ms
    );
    out.extend_from_slice(&record.payload);
    out.push(b'}');
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use wardgate_proto::{
        CodedValue, DeviceIdentity, Observation, ObservationGroup, ObservationReport,
        ObservationValue, RecordBody, UplinkBatch,
    };

    fn body(device: &str, value: &str) -> RecordBody {
        RecordBody::Observations(ObservationReport {
            device: DeviceIdentity {
                id: device.into(),
                application: Some("MONITOR".into()),
                eui64: None,
            },
            patient: None,
            message_time: "20250101120000".into(),
            control_id: "1".into(),
            groups: vec![ObservationGroup {
                service: CodedValue {
                    code: "182777000".into(),
                    text: "monitoring of patient".into(),
                    system: "SCT".into(),
                },
                observed_at: String::new(),
                observations: vec![Observation {
                    code: CodedValue {
                        code: "150456".into(),
                        text: "MDC_PULS_OXIM_SAT_O2".into(),
                        system: "MDC".into(),
                    },
                    value: ObservationValue::Numeric(value.into()),
                    units: None,
                    containment: "1.3.1.150456".into(),
                    status: "R".into(),
                    observed_at: String::new(),
                    equipment: String::new(),
                }],
            }],
        })
    }

    fn record(seq: u64, priority: Priority, body: &RecordBody) -> OutgoingRecord {
        OutgoingRecord {
            id: RecordId {
                spool: 0xabcdef,
                seq,
            },
            device: body.device_id().to_owned(),
            priority,
            accepted_ms: 1_700_000_000_000 + seq,
            payload: serde_json::to_vec(body).unwrap(),
        }
    }

    #[test]
    fn payload_decodes_into_uplink_batch_with_bodies_intact() {
        let bodies: Vec<RecordBody> = (0..5)
            .map(|i| body(&format!("dev-{}", i % 2), &format!("9{i}")))
            .collect();
        let mut pending: VecDeque<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| record(i as u64 + 1, Priority::Observation, b))
            .collect();
        let encoder = BatchEncoder::new("wardgate-icu-1", 256 * 1024, 4096);
        let mut held = Vec::new();
        let batch = encoder.encode(&mut pending, &mut held).unwrap();
        assert!(pending.is_empty() && held.is_empty());
        let decoded: UplinkBatch = serde_json::from_slice(&batch.payload).unwrap();
        assert_eq!(decoded.schema, SCHEMA_VERSION);
        assert_eq!(decoded.gateway, "wardgate-icu-1");
        assert_eq!(decoded.records.len(), 5);
        for (i, rec) in decoded.records.iter().enumerate() {
            assert_eq!(
                rec.id,
                RecordId {
                    spool: 0xabcdef,
                    seq: i as u64 + 1
                }
            );
            assert_eq!(rec.priority, Priority::Observation);
            assert_eq!(rec.accepted_ms, 1_700_000_000_000 + i as u64 + 1);
            assert_eq!(rec.body, bodies[i]);
        }
        assert_eq!(
            batch.records,
            decoded.records.iter().map(|r| r.id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn envelope_length_is_exact() {
        let b = body("d", "1");
        for seq in [0, 9, 10, 12345, u64::MAX] {
            let mut r = record(0, Priority::Alarm, &b);
            r.id.seq = seq;
            r.accepted_ms = seq;
            let mut out = Vec::new();
            write_record(&mut out, &r);
            assert_eq!(
                out.len(),
                record_envelope_len(r.id, r.priority, r.accepted_ms, r.payload.len()),
                "seq {seq}"
            );
        }
    }

    #[test]
    fn batches_fill_up_to_the_limit_and_never_exceed_it() {
        let b = body("dev", "97");
        let limit = 4096;
        let encoder = BatchEncoder::new("gw", limit, 4096);
        let mut pending: VecDeque<_> = (1..=200)
            .map(|seq| record(seq, Priority::Observation, &b))
            .collect();
        let mut held = Vec::new();
        let mut seen = Vec::new();
        let one = {
            let mut out = Vec::new();
            write_record(&mut out, &pending[0]);
            out.len() + 1
        };
        while let Some(batch) = encoder.encode(&mut pending, &mut held) {
            assert!(
                batch.payload.len() <= limit,
                "{} > {limit}",
                batch.payload.len()
            );
            if !pending.is_empty() {
                // Full: one more record would not have fitted.
                assert!(batch.payload.len() + one > limit);
            }
            let decoded: UplinkBatch = serde_json::from_slice(&batch.payload).unwrap();
            seen.extend(decoded.records.iter().map(|r| r.id.seq));
        }
        assert_eq!(seen, (1..=200).collect::<Vec<_>>());
        assert!(held.is_empty());
    }

    #[test]
    fn batches_split_on_priority_and_record_cap() {
        let b = body("dev", "1");
        let encoder = BatchEncoder::new("gw", 1 << 20, 2);
        let mut pending: VecDeque<_> = [
            Priority::Alarm,
            Priority::Alarm,
            Priority::Alarm,
            Priority::Observation,
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| record(i as u64, *p, &b))
        .collect();
        let mut held = Vec::new();
        let sizes: Vec<(Priority, usize)> =
            std::iter::from_fn(|| encoder.encode(&mut pending, &mut held))
                .map(|batch| (batch.priority, batch.records.len()))
                .collect();
        assert_eq!(
            sizes,
            vec![
                (Priority::Alarm, 2),
                (Priority::Alarm, 1),
                (Priority::Observation, 1)
            ]
        );
    }

    #[test]
    fn unpublishable_records_are_held_back_without_blocking_others() {
        let b = body("dev", "1");
        let encoder = BatchEncoder::new("gw", 1024, 4096);
        let mut big = record(1, Priority::Observation, &b);
        big.payload = format!("{{\"x\":\"{}\"}}", "a".repeat(2000)).into_bytes();
        let mut not_object = record(3, Priority::Observation, &b);
        not_object.payload = b"[1,2]".to_vec();
        let mut truncated = record(4, Priority::Observation, &b);
        truncated.payload = b"{\"kind\":".to_vec();
        let mut pending: VecDeque<_> = vec![
            big,
            record(2, Priority::Observation, &b),
            not_object,
            truncated,
            record(5, Priority::Observation, &b),
        ]
        .into();
        let mut held = Vec::new();
        let mut published = Vec::new();
        while let Some(batch) = encoder.encode(&mut pending, &mut held) {
            let decoded: UplinkBatch = serde_json::from_slice(&batch.payload).unwrap();
            published.extend(decoded.records.iter().map(|r| r.id.seq));
        }
        assert_eq!(published, vec![2, 5]);
        assert!(
            matches!(held[0], HeldBack::TooLarge { id, limit: 1024, encoded_bytes } if id.seq == 1 && encoded_bytes > 2000)
        );
        assert_eq!(
            held[1],
            HeldBack::NotJsonObject {
                id: RecordId {
                    spool: 0xabcdef,
                    seq: 3
                }
            }
        );
        assert_eq!(
            held[2],
            HeldBack::NotJsonObject {
                id: RecordId {
                    spool: 0xabcdef,
                    seq: 4
                }
            }
        );
    }

    #[test]
    fn max_body_bytes_is_publishable() {
        let encoder = BatchEncoder::new("gw", 2048, 4096);
        let max = encoder.max_body_bytes();
        let body = format!("{{\"x\":\"{}\"}}", "a".repeat(max - 8));
        assert_eq!(body.len(), max);
        let r = OutgoingRecord {
            id: RecordId {
                spool: u64::MAX,
                seq: u64::MAX,
            },
            device: "d".into(),
            priority: Priority::Observation,
            accepted_ms: u64::MAX,
            payload: body.into_bytes(),
        };
        let mut held = Vec::new();
        let batch = encoder
            .encode(&mut VecDeque::from(vec![r]), &mut held)
            .unwrap();
        assert!(held.is_empty());
        assert!(batch.payload.len() <= 2048);
    }
}
