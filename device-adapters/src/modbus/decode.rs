//! Registers and bits → engineering values. Pure functions.
//!
//! - Bytes within a register are big-endian (Modbus); the register itself arrives as a
//!   `u16`, so only the order of the two registers of a 32-bit value is configurable
//!   ([`WordOrder`]).
//! - The engineering value is `raw × scale + offset`, computed in `f64` (exact for every
//!   16- and 32-bit integer and every `f32`).
//! - **NaN and infinities are not readings.** An `f32` register pair holding a NaN or an
//!   infinity (devices use them for "sensor absent" or "out of range"), or a scaled value
//!   that is not finite, decodes to `None`: the point is left out of the poll's values, so
//!   it is never sent and never counts as a change.

use crate::modbus::config::{DataType, WordOrder};

/// Decodes `words` (exactly `data_type.registers()` of them, in address order) to the raw
/// value. `None` for a wrong number of words or a non-finite `f32`.
#[must_use]
pub fn raw_from_registers(
    words: &[u16],
    data_type: DataType,
    word_order: WordOrder,
) -> Option<f64> {
    match (data_type, words) {
        (DataType::U16, &[w]) => Some(f64::from(w)),
        (DataType::I16, &[w]) => Some(f64::from(i16::from_be_bytes(w.to_be_bytes()))),
        (DataType::U32 | DataType::I32 | DataType::F32, &[first, second]) => {
            let (high, low) = match word_order {
                WordOrder::Big => (first, second),
                WordOrder::Little => (second, first),
            };
            let bits = (u32::from(high) << 16) | u32::from(low);
            match data_type {
                DataType::U32 => Some(f64::from(bits)),
                DataType::I32 => Some(f64::from(i32::from_be_bytes(bits.to_be_bytes()))),
                _ => {
                    let value = f32::from_bits(bits);
                    value.is_finite().then_some(f64::from(value))
                }
            }
        }
        _ => None,
    }
}

/// The raw value of a coil or discrete input.
#[must_use]
pub fn raw_from_bit(bit: bool) -> f64 {
    if bit {
        1.0
    } else {
        0.0
    }
}

/// `raw × scale + offset`, or `None` if that is not finite.
#[must_use]
pub fn engineering(raw: f64, scale: f64, offset: f64) -> Option<f64> {
    let value = raw * scale + offset;
    value.is_finite().then_some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn words_big(bits: u32) -> [u16; 2] {
        [(bits >> 16) as u16, bits as u16]
    }

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(
            raw_from_registers(&[0], DataType::U16, WordOrder::Big),
            Some(0.0)
        );
        assert_eq!(
            raw_from_registers(&[0xFFFF], DataType::U16, WordOrder::Big),
            Some(65535.0)
        );
        assert_eq!(
            raw_from_registers(&[0xFFFF], DataType::I16, WordOrder::Big),
            Some(-1.0)
        );
        assert_eq!(
            raw_from_registers(&[0x8000], DataType::I16, WordOrder::Big),
            Some(-32768.0)
        );
        assert_eq!(
            raw_from_registers(&[0x7FFF], DataType::I16, WordOrder::Big),
            Some(32767.0)
        );
        // Word order does not matter for one register.
        assert_eq!(
            raw_from_registers(&[0xFFFB], DataType::I16, WordOrder::Little),
            Some(-5.0)
        );
    }

    #[test]
    fn thirty_two_bit_types_in_both_word_orders() {
        let bits: u32 = 0x0001_0002;
        let big = words_big(bits);
        let little = [big[1], big[0]];
        for (words, order) in [(big, WordOrder::Big), (little, WordOrder::Little)] {
            assert_eq!(
                raw_from_registers(&words, DataType::U32, order),
                Some(65538.0)
            );
            assert_eq!(
                raw_from_registers(&words, DataType::I32, order),
                Some(65538.0)
            );
        }
        // The same words read in the wrong order give a different value: the order is used.
        assert_eq!(
            raw_from_registers(&big, DataType::U32, WordOrder::Little),
            Some(f64::from(0x0002_0001_u32))
        );

        let negative = (-100_000_i32) as u32;
        let big = words_big(negative);
        assert_eq!(
            raw_from_registers(&big, DataType::I32, WordOrder::Big),
            Some(-100_000.0)
        );
        assert_eq!(
            raw_from_registers(&[big[1], big[0]], DataType::I32, WordOrder::Little),
            Some(-100_000.0)
        );
        assert_eq!(
            raw_from_registers(&[0xFFFF, 0xFFFF], DataType::U32, WordOrder::Big),
            Some(4_294_967_295.0)
        );
        assert_eq!(
            raw_from_registers(&[0x8000, 0x0000], DataType::I32, WordOrder::Big),
            Some(f64::from(i32::MIN))
        );

        let float = words_big(21.5_f32.to_bits());
        assert_eq!(
            raw_from_registers(&float, DataType::F32, WordOrder::Big),
            Some(21.5)
        );
        assert_eq!(
            raw_from_registers(&[float[1], float[0]], DataType::F32, WordOrder::Little),
            Some(21.5)
        );
        let negative = words_big((-0.125_f32).to_bits());
        assert_eq!(
            raw_from_registers(&negative, DataType::F32, WordOrder::Big),
            Some(-0.125)
        );
    }

    #[test]
    fn non_finite_floats_are_not_readings() {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let words = words_big(value.to_bits());
            assert_eq!(
                raw_from_registers(&words, DataType::F32, WordOrder::Big),
                None
            );
        }
        // A signalling-NaN pattern some devices use for "no sensor".
        assert_eq!(
            raw_from_registers(&[0x7FA0, 0x0000], DataType::F32, WordOrder::Big),
            None
        );
        // The same bits as an integer are a number.
        assert!(raw_from_registers(&[0x7FC0, 0x0000], DataType::U32, WordOrder::Big).is_some());
    }

    #[test]
    fn wrong_word_counts_are_rejected() {
        assert_eq!(raw_from_registers(&[], DataType::U16, WordOrder::Big), None);
        assert_eq!(
            raw_from_registers(&[1, 2], DataType::U16, WordOrder::Big),
            None
        );
        assert_eq!(
            raw_from_registers(&[1], DataType::F32, WordOrder::Big),
            None
        );
        assert_eq!(
            raw_from_registers(&[1, 2, 3], DataType::U32, WordOrder::Big),
            None
        );
    }

    #[test]
    fn scale_and_offset() {
        assert_eq!(engineering(1234.0, 0.1, 0.0), Some(1234.0 * 0.1));
        assert_eq!(engineering(-5.0, 0.5, 10.0), Some(7.5));
        assert_eq!(engineering(100.0, 1.0, -273.15), Some(100.0 - 273.15));
        assert_eq!(engineering(f64::from(f32::MAX), 1e300, 0.0), None);
        assert_eq!(raw_from_bit(true), 1.0);
        assert_eq!(raw_from_bit(false), 0.0);
        assert_eq!(engineering(raw_from_bit(true), 1.0, 0.0), Some(1.0));
    }
}
