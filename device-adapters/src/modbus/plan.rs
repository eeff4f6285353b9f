//! Read planning: which requests to send for a point list, and how to turn the responses
//! back into point values. Pure.
//!
//! Invariants:
//! - Every point of a validated config is covered by exactly one request, and lies wholly
//!   inside it (a 32-bit value is never split across two reads).
//! - Requests never mix tables, never exceed the configured per-read limits (at most 125
//!   registers / 2000 bits, the Modbus maxima), and never span more than `max_read_gap`
//!   unmapped addresses between two points (default 0: only adjacent or overlapping
//!   points share a read, because many devices answer reads of unmapped addresses with
//!   "illegal data address").
//! - Within those rules the number of requests is minimal for each table: points are
//!   taken in address order and each request is extended as far as the limits allow.
//! - Decoding never panics: a short, missing or mismatched response leaves its points out.

use crate::modbus::config::{DataType, ModbusDeviceConfig, PointConfig, Table, WordOrder};
use crate::modbus::decode;

/// Limits on how points are grouped into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most registers per read (function 0x03/0x04).
    pub max_registers: u16,
    /// Most bits per read (function 0x01/0x02).
    pub max_bits: u16,
    /// Largest run of unmapped addresses a read may bridge.
    pub max_gap: u16,
}

impl PlanLimits {
    /// The limits a device config asks for.
    #[must_use]
    pub fn from_config(config: &ModbusDeviceConfig) -> Self {
        Self {
            max_registers: config.max_registers_per_read,
            max_bits: config.max_bits_per_read,
            max_gap: config.max_read_gap,
        }
    }
}

/// One read to send: `count` registers or bits of `table` starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    /// The table read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Number of registers (or bits); at least 1.
    pub count: u16,
}

/// What the device answered to one [`ReadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    /// Register contents, in address order.
    Registers(Vec<u16>),
    /// Bit values, in address order.
    Bits(Vec<bool>),
    /// A Modbus exception response with this exception code.
    Exception(u8),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bit,
    Register(DataType, WordOrder),
}

/// Where one point is found in the responses and how to decode it.
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    point: usize,
    request: usize,
    offset: usize,
    kind: Kind,
    scale: f64,
    value_offset: f64,
}

/// The requests for one device's points, and the decoding of their responses.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    requests: Vec<ReadRequest>,
    /// Sorted by point index, so decoded values come out in configuration order.
    slots: Vec<Slot>,
    points_by_request: Vec<Vec<usize>>,
}

impl ReadPlan {
    /// Plans the reads for `points` within `limits`. A point that cannot be read within
    /// the limits (possible only for an unvalidated config) is left out of the plan.
    #[must_use]
    pub fn new(points: &[PointConfig], limits: PlanLimits) -> Self {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (points[i].table, points[i].address, i));

        let mut requests: Vec<ReadRequest> = Vec::new();
        let mut points_by_request: Vec<Vec<usize>> = Vec::new();
        let mut slots: Vec<Slot> = Vec::with_capacity(points.len());
        // The request being grown: (table, start, exclusive end), all in u32 so that
        // address arithmetic cannot overflow.
        let mut open: Option<(Table, u32, u32)> = None;

        for i in order {
            let point = &points[i];
            let max = u32::from(if point.table.is_bits() {
                limits.max_bits
            } else {
                limits.max_registers
            });
            let start = u32::from(point.address);
            let end = start + u32::from(point.width());
            if end - start > max || end > u32::from(u16::MAX) + 1 {
                continue;
            }
            let extends = open.is_some_and(|(table, open_start, open_end)| {
                table == point.table
                    && start <= open_end + u32::from(limits.max_gap)
                    && end.max(open_end) - open_start <= max
            });
            match (&mut open, extends) {
                (Some((_, _, open_end)), true) => *open_end = end.max(*open_end),
                _ => {
                    if let Some(done) = open.take() {
                        requests.push(to_request(done));
                    }
                    open = Some((point.table, start, end));
                    points_by_request.push(Vec::new());
                }
            }
            let request = points_by_request.len() - 1;
            let Some((_, open_start, _)) = open else {
                continue;
            };
            points_by_request[request].push(i);
            slots.push(Slot {
                point: i,
                request,
                offset: (start - open_start) as usize,
                kind: if point.table.is_bits() {
                    Kind::Bit
                } else {
                    Kind::Register(
                        point.data_type.unwrap_or_default(),
                        point.word_order.unwrap_or_default(),
                    )
                },
                scale: point.scale,
                value_offset: point.offset,
            });
        }
        if let Some(done) = open {
            requests.push(to_request(done));
        }
        slots.sort_by_key(|slot| slot.point);
        for members in &mut points_by_request {
            members.sort_unstable();
        }
        Self {
            requests,
            slots,
            points_by_request,
        }
    }

    /// Plans the reads for a device config.
    #[must_use]
    pub fn from_config(config: &ModbusDeviceConfig) -> Self {
        Self::new(&config.points, PlanLimits::from_config(config))
    }

    /// The requests to send each poll, grouped by table, in address order.
    #[must_use]
    pub fn requests(&self) -> &[ReadRequest] {
        &self.requests
    }

    /// Indexes (into the config's point list) of the points read by request `request`.
    #[must_use]
    pub fn points_of(&self, request: usize) -> &[usize] {
        self.points_by_request
            .get(request)
            .map_or(&[], Vec::as_slice)
    }

    /// Decodes one poll's responses (`responses[i]` answers `requests()[i]`) into
    /// `(point index, value)` pairs in configuration order. Points whose request got an
    /// exception, a short or mismatched answer, or no answer are left out, as are
    /// non-finite values.
    #[must_use]
    pub fn decode(&self, responses: &[ReadData]) -> Vec<(usize, f64)> {
        let mut values = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let raw = match (slot.kind, responses.get(slot.request)) {
                (Kind::Bit, Some(ReadData::Bits(bits))) => {
                    bits.get(slot.offset).copied().map(decode::raw_from_bit)
                }
                (Kind::Register(data_type, word_order), Some(ReadData::Registers(words))) => {
                    let width = usize::from(data_type.registers());
                    words
                        .get(slot.offset..slot.offset + width)
                        .and_then(|w| decode::raw_from_registers(w, data_type, word_order))
                }
                _ => None,
            };
            if let Some(value) =
                raw.and_then(|raw| decode::engineering(raw, slot.scale, slot.value_offset))
            {
                values.push((slot.point, value));
            }
        }
        values
    }
}

fn to_request((table, start, end): (Table, u32, u32)) -> ReadRequest {
    // Both fit: start is a u16 and end - start is at most a per-read limit (a u16).
    ReadRequest {
        table,
        start: u16::try_from(start).unwrap_or(u16::MAX),
        count: u16::try_from(end - start).unwrap_or(u16::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::modbus::config::tests::{device, point, typed};

    const LIMITS: PlanLimits = PlanLimits {
        max_registers: 125,
        max_bits: 2000,
        max_gap: 0,
    };

    fn req(table: Table, start: u16, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start,
            count,
        }
    }

    #[test]
    fn contiguous_points_share_a_read_and_tables_never_mix() {
        let points = vec![
            typed("f", 2, DataType::F32),
            point("a", Table::Holding, 0),
            point("b", Table::Holding, 1),
            point("in", Table::Input, 1),
            point("c1", Table::Coil, 7),
            point("c0", Table::Coil, 0),
            point("d", Table::Discrete, 0),
            point("far", Table::Holding, 10),
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(
            plan.requests(),
            &[
                req(Table::Holding, 0, 4),
                req(Table::Holding, 10, 1),
                req(Table::Input, 1, 1),
                req(Table::Coil, 0, 1),
                req(Table::Coil, 7, 1),
                req(Table::Discrete, 0, 1),
            ]
        );
        assert_eq!(plan.points_of(0), &[0, 1, 2]);
        assert_eq!(plan.points_of(1), &[7]);
        assert_eq!(plan.points_of(99), &[] as &[usize]);
    }

    #[test]
    fn gaps_are_bridged_only_when_allowed() {
        let points = vec![point("a", Table::Holding, 0), point("b", Table::Holding, 3)];
        let strict = ReadPlan::new(&points, LIMITS);
        assert_eq!(strict.requests().len(), 2);
        let bridged = ReadPlan::new(
            &points,
            PlanLimits {
                max_gap: 2,
                ..LIMITS
            },
        );
        assert_eq!(bridged.requests(), &[req(Table::Holding, 0, 4)]);
        let too_short = ReadPlan::new(
            &points,
            PlanLimits {
                max_gap: 1,
                ..LIMITS
            },
        );
        assert_eq!(too_short.requests().len(), 2);
    }

    #[test]
    fn limits_split_reads_without_splitting_points() {
        // 200 consecutive u16 registers: 125 + 75.
        let points: Vec<_> = (0..200)
            .map(|a| point(&format!("r{a}"), Table::Holding, a))
            .collect();
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(
            plan.requests(),
            &[req(Table::Holding, 0, 125), req(Table::Holding, 125, 75)]
        );

        // 32-bit values at 0, 2, 4: with at most 3 registers per read, the second value
        // must start a new read rather than be split.
        let points: Vec<_> = (0..3)
            .map(|i| typed(&format!("f{i}"), i * 2, DataType::F32))
            .collect();
        let plan = ReadPlan::new(
            &points,
            PlanLimits {
                max_registers: 3,
                ..LIMITS
            },
        );
        assert_eq!(
            plan.requests(),
            &[
                req(Table::Holding, 0, 2),
                req(Table::Holding, 2, 2),
                req(Table::Holding, 4, 2)
            ]
        );

        // 2500 coils: 2000 + 500.
        let points: Vec<_> = (0..2500)
            .map(|a| point(&format!("c{a}"), Table::Coil, a))
            .collect();
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(
            plan.requests(),
            &[req(Table::Coil, 0, 2000), req(Table::Coil, 2000, 500)]
        );
    }

    #[test]
    fn overlapping_points_and_the_top_of_the_address_space() {
        // The same registers decoded two ways, and a u16 inside a u32.
        let points = vec![
            typed("whole", 65534, DataType::U32),
            typed("low", 65535, DataType::U16),
            typed("high", 65534, DataType::U16),
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(plan.requests(), &[req(Table::Holding, 65534, 2)]);
        let values = plan.decode(&[ReadData::Registers(vec![1, 2])]);
        assert_eq!(values, vec![(0, 65538.0), (1, 2.0), (2, 1.0)]);

        // Invalid (runs past 65535, or wider than a read): left out, no panic.
        let points = vec![
            typed("past", 65535, DataType::F32),
            point("ok", Table::Input, 0),
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(plan.requests(), &[req(Table::Input, 0, 1)]);
        let plan = ReadPlan::new(
            &[typed("wide", 0, DataType::F32)],
            PlanLimits {
                max_registers: 1,
                ..LIMITS
            },
        );
        assert!(plan.requests().is_empty());
        assert!(plan.decode(&[]).is_empty());
    }

    #[test]
    fn decode_applies_type_order_scale_and_skips_what_is_missing() {
        let mut scaled = point("scaled", Table::Holding, 0);
        scaled.scale = 0.5;
        scaled.offset = -10.0;
        let mut little = typed("little", 1, DataType::I32);
        little.word_order = Some(WordOrder::Little);
        let points = vec![
            scaled,
            little,
            typed("nan", 3, DataType::F32),
            point("coil", Table::Coil, 5),
            point("input", Table::Input, 0),
        ];
        let config = device(points);
        config.validate().unwrap();
        let plan = ReadPlan::from_config(&config);
        assert_eq!(
            plan.requests(),
            &[
                req(Table::Holding, 0, 5),
                req(Table::Input, 0, 1),
                req(Table::Coil, 5, 1),
            ]
        );
        let minus_two = (-2_i32) as u32;
        let nan = f32::NAN.to_bits();
        let responses = [
            ReadData::Registers(vec![
                30,
                minus_two as u16,
                (minus_two >> 16) as u16,
                (nan >> 16) as u16,
                nan as u16,
            ]),
            ReadData::Exception(2),
            // Bit responses come padded to whole bytes; only the first bit counts.
            ReadData::Bits(vec![true, false, false, false, false, false, false, false]),
        ];
        assert_eq!(plan.decode(&responses), vec![(0, 5.0), (1, -2.0), (3, 1.0)]);

        // Short, mismatched and missing answers leave their points out.
        let responses = [ReadData::Registers(vec![30, 1]), ReadData::Bits(vec![true])];
        assert_eq!(plan.decode(&responses), vec![(0, 5.0)]);
    }
}
