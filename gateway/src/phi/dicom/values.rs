//! Value transformations: keyed UID mapping, the per-patient date shift, dummy values.
//!
//! Invariants:
//! - A mapped UID is a pure function of the site key and the original UID (trimmed of its
//!   padding): `2.25.` followed by the decimal of the first 128 bits of
//!   `HMAC-SHA256(key, "dicom-uid" ‖ 0x1F ‖ uid)`. So it is the same across instances,
//!   series, associations, restarts and gateways of a site, at most 44 characters, and
//!   cannot be reversed or guessed without the key. UIDs under `1.2.840.10008` (standard
//!   SOP classes, transfer syntaxes, ...) are never mapped.
//! - The date shift of a patient is a pure function of the key and the pseudonym, never
//!   zero, and within ±max days.
//! - Nothing here keeps a value it could not parse: an unparseable date becomes empty.

use super::super::PseudonymKey;

/// Root of the standard's own UIDs, which identify no patient and are kept.
const STANDARD_UID_ROOT: &str = "1.2.840.10008";

/// Maps one UID (without padding). Empty stays empty; standard UIDs stay as they are.
pub(crate) fn map_uid(key: &PseudonymKey, uid: &str) -> String {
    if uid.is_empty() || is_standard_uid(uid) {
        return uid.to_owned();
    }
    let mac = key.mac(&[b"dicom-uid", uid.as_bytes()]);
    let mut first = [0u8; 16];
    first.copy_from_slice(&mac[..16]);
    format!("2.25.{}", u128::from_be_bytes(first))
}

/// Whether `uid` is one of the standard's (under `1.2.840.10008`).
pub(crate) fn is_standard_uid(uid: &str) -> bool {
    uid == STANDARD_UID_ROOT
        || uid
            .strip_prefix(STANDARD_UID_ROOT)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Maps every value of a multi-valued UI element (`\`-separated), returning the text
/// without padding.
pub(crate) fn map_uid_list(key: &PseudonymKey, value: &[u8]) -> String {
    let text = trim_padding(value);
    let mut out = String::with_capacity(text.len() + 8);
    for (i, part) in text.split(|&b| b == b'\\').enumerate() {
        if i > 0 {
            out.push('\\');
        }
        // A UID is ASCII digits and dots; anything else is not a UID and is replaced by
        // the mapping of its bytes, which is still consistent.
        let part = String::from_utf8_lossy(trim_padding(part));
        out.push_str(&map_uid(key, &part));
    }
    out
}

/// A value without its trailing padding (NUL or space) and leading spaces.
pub(crate) fn trim_padding(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let start = value[..end].iter().position(|&b| b != b' ').unwrap_or(end);
    &value[start..end]
}

/// The day shift of a patient: `HMAC(key, "date-shift" ‖ pseudonym)` mapped into
/// `±[1, max_days]`.
pub(crate) fn date_shift_days(key: &PseudonymKey, pseudonym: &str, max_days: u16) -> i64 {
    let mac = key.mac(&[b"date-shift", pseudonym.as_bytes()]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&mac[..8]);
    let v = u64::from_be_bytes(first);
    let max = u64::from(max_days.max(1));
    // The modulo bias is below 2^-50 for any max <= 3650: irrelevant.
    let magnitude = i64::try_from(1 + (v >> 1) % max).unwrap_or(1);
    if v & 1 == 1 {
        magnitude
    } else {
        -magnitude
    }
}

/// Shifts every date of a DA value (multi-valued with `\`, or a query range with `-`).
/// Returns `None` if any part is not a full `YYYYMMDD` date (the caller then empties it).
pub(crate) fn shift_da(value: &[u8], days: i64) -> Option<String> {
    let text = trim_padding(value);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split(|&b| b == b'\\').enumerate() {
        if i > 0 {
            out.push('\\');
        }
        for (j, date) in part.split(|&b| b == b'-').enumerate() {
            if j > 0 {
                out.push('-');
            }
            if date.is_empty() && part.len() > 1 {
                continue; // an open range end: "-20200101" or "20200101-"
            }
            out.push_str(&shift_date(date, days)?);
        }
    }
    Some(out)
}

/// Shifts the date part of every DT value; the time and UTC offset are kept. `None` if a
/// value has less than a full date (a year alone cannot be shifted by days).
pub(crate) fn shift_dt(value: &[u8], days: i64) -> Option<String> {
    let text = trim_padding(value);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split(|&b| b == b'\\').enumerate() {
        if i > 0 {
            out.push('\\');
        }
        let (date, rest) = part.split_at_checked(8)?;
        out.push_str(&shift_date(date, days)?);
        if !rest
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b' '))
        {
            return None;
        }
        out.push_str(std::str::from_utf8(rest).ok()?);
    }
    Some(out)
}

/// Shifts one `YYYYMMDD` date; `None` if it is not a valid date or leaves years 1..=9999.
fn shift_date(date: &[u8], days: i64) -> Option<String> {
    if date.len() != 8 || !date.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> i64 {
        date[r]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let (y2, m2, d2) = civil_from_days(days_from_civil(y, m, d) + days);
    if !(1..=9999).contains(&y2) {
        return None;
    }
    Some(format!("{y2:04}{m2:02}{d2:02}"))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// An AS (age string) capped at 90 years: HIPAA treats ages over 89 as identifying.
/// `None` if the value is not a valid age string.
pub(crate) fn cap_age(value: &[u8]) -> Option<String> {
    let text = trim_padding(value);
    let (digits, unit) = text.split_at_checked(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || unit.len() != 1 {
        return None;
    }
    let n: u32 = digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
    let years = match unit[0] {
        b'Y' => n,
        b'M' => n / 12,
        b'W' => n / 52,
        b'D' => n / 365,
        _ => return None,
    };
    if years > 89 {
        Some("090Y".to_owned())
    } else {
        std::str::from_utf8(text).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PseudonymKey {
        PseudonymKey::from_bytes(&[5; 32])
    }

    #[test]
    fn uids_are_keyed_valid_and_stable() {
        let a = map_uid(&key(), "1.2.3.4.5");
        assert_eq!(a, map_uid(&key(), "1.2.3.4.5"));
        assert_ne!(a, map_uid(&key(), "1.2.3.4.6"));
        assert_ne!(a, map_uid(&PseudonymKey::from_bytes(&[6; 32]), "1.2.3.4.5"));
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        assert!(a[5..].bytes().all(|b| b.is_ascii_digit()));
        assert!(!a[5..].starts_with('0') || a.len() == 6);
        assert_eq!(
            map_uid(&key(), "1.2.840.10008.1.2.1"),
            "1.2.840.10008.1.2.1"
        );
        assert_ne!(map_uid(&key(), "1.2.840.100081"), "1.2.840.100081");
        assert_eq!(
            map_uid_list(&key(), b"1.2.3.4.5\\1.2.840.10008.5.1.4.1.1.2\0"),
            format!("{a}\\1.2.840.10008.5.1.4.1.1.2")
        );
    }

    #[test]
    fn date_shift_is_deterministic_bounded_and_nonzero() {
        let mut seen_pos = false;
        let mut seen_neg = false;
        for i in 0..200 {
            let p = format!("p-{i}");
            let s = date_shift_days(&key(), &p, 30);
            assert_eq!(s, date_shift_days(&key(), &p, 30));
            assert!(s != 0 && s.abs() <= 30, "{s}");
            seen_pos |= s > 0;
            seen_neg |= s < 0;
        }
        assert!(seen_pos && seen_neg);
    }

    #[test]
    fn dates_shift_across_month_year_and_leap_day() {
        assert_eq!(shift_da(b"20240228", 1).as_deref(), Some("20240229"));
        assert_eq!(shift_da(b"20231231", 1).as_deref(), Some("20240101"));
        assert_eq!(shift_da(b"20240301", -1).as_deref(), Some("20240229"));
        assert_eq!(shift_da(b"19700101", -365).as_deref(), Some("19690101"));
        assert_eq!(
            shift_da(b"20200101\\20200201 ", 10).as_deref(),
            Some("20200111\\20200211")
        );
        assert_eq!(
            shift_da(b"20200101-20200201", 1).as_deref(),
            Some("20200102-20200202")
        );
        assert_eq!(shift_da(b"-20200201", 1).as_deref(), Some("-20200202"));
        assert_eq!(shift_da(b"2020.01.01", 1), None);
        assert_eq!(shift_da(b"20200230", 1), None);
        assert_eq!(shift_da(b"JOHN DOE", 1), None);
        assert_eq!(
            shift_dt(b"20200101235959.123+0100", 2).as_deref(),
            Some("20200103235959.123+0100")
        );
        assert_eq!(shift_dt(b"2020", 2), None);
        for d in -800..800 {
            let (y, m, dd) = civil_from_days(days_from_civil(2000, 2, 29) + d);
            assert_eq!(days_from_civil(y, m, dd), days_from_civil(2000, 2, 29) + d);
        }
    }

    #[test]
    fn ages_over_89_are_capped() {
        assert_eq!(cap_age(b"045Y").as_deref(), Some("045Y"));
        assert_eq!(cap_age(b"093Y").as_deref(), Some("090Y"));
        assert_eq!(cap_age(b"1200M").as_deref(), None);
        assert_eq!(cap_age(b"999M").as_deref(), Some("999M"));
        assert_eq!(cap_age(b"abc"), None);
    }
}
