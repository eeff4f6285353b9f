//! The bandwidth cap by time of day: during clinical hours bulk uploads leave the
//! hospital's uplink to clinical traffic; off hours they may use more.
//!
//! Pure: the decision takes the local minute of the day as an argument. Only
//! [`LocalClock`] reads the system clock and time zone (`TZ` or `/etc/localtime`, through
//! `tz-rs`), once per question, so a daylight-saving change is followed without a restart.

use std::num::NonZeroU64;

use super::BulkError;

/// A daily period `HH:MM-HH:MM` in local time; the end is exclusive. A period whose end is
/// before its start spans midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyPeriod {
    start: u16,
    end: u16,
}

impl DailyPeriod {
    /// Parses `HH:MM-HH:MM` (24-hour clock).
    ///
    /// # Errors
    /// A reason naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM"))?;
        let start = parse_hhmm(start.trim())?;
        let end = parse_hhmm(end.trim())?;
        if start == end {
            return Err(format!("`{text}` is empty (start equals end)"));
        }
        Ok(DailyPeriod { start, end })
    }

    /// Whether `minute_of_day` (0..1440) falls in the period.
    #[must_use]
    pub const fn contains(self, minute_of_day: u16) -> bool {
        if self.start < self.end {
            self.start <= minute_of_day && minute_of_day < self.end
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        }
    }
}

fn parse_hhmm(text: &str) -> Result<u16, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not HH:MM"))?;
    let h: u16 = h.parse().map_err(|_| format!("`{text}`: bad hour"))?;
    let m: u16 = m.parse().map_err(|_| format!("`{text}`: bad minute"))?;
    if h > 23 || m > 59 || text.len() != 5 {
        return Err(format!("`{text}` is not a time from 00:00 to 23:59"));
    }
    Ok(h * 60 + m)
}

/// A bandwidth limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// No cap.
    Unlimited,
    /// At most this many bytes per second.
    BytesPerSec(NonZeroU64),
}

impl Rate {
    /// `0` means unlimited.
    #[must_use]
    pub const fn from_config(bytes_per_sec: u64) -> Self {
        match NonZeroU64::new(bytes_per_sec) {
            Some(n) => Rate::BytesPerSec(n),
            None => Rate::Unlimited,
        }
    }
}

/// The cap during clinical hours and off hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthSchedule {
    /// When clinical hours are (`None`: the off-hours rate applies all day).
    pub clinical_hours: Option<DailyPeriod>,
    /// The cap during clinical hours.
    pub clinical: Rate,
    /// The cap outside them.
    pub off_hours: Rate,
}

impl BandwidthSchedule {
    /// No cap at any time.
    pub const UNLIMITED: Self = BandwidthSchedule {
        clinical_hours: None,
        clinical: Rate::Unlimited,
        off_hours: Rate::Unlimited,
    };

    /// Builds a schedule from configuration values (`0` bytes/s = unlimited).
    ///
    /// # Errors
    /// [`BulkError::Config`] naming `clinical_hours` if it does not parse.
    pub fn from_config(
        clinical_hours: Option<&str>,
        clinical_bytes_per_sec: u64,
        off_hours_bytes_per_sec: u64,
    ) -> Result<Self, BulkError> {
        let clinical_hours =
            clinical_hours
                .map(DailyPeriod::parse)
                .transpose()
                .map_err(|reason| BulkError::Config {
                    key: "clinical_hours",
                    reason,
                })?;
        Ok(BandwidthSchedule {
            clinical_hours,
            clinical: Rate::from_config(clinical_bytes_per_sec),
            off_hours: Rate::from_config(off_hours_bytes_per_sec),
        })
    }

    /// The cap in force at `local_minute_of_day` (0..1440).
    #[must_use]
    pub fn rate_at(&self, local_minute_of_day: u16) -> Rate {
        match self.clinical_hours {
            Some(period) if period.contains(local_minute_of_day) => self.clinical,
            _ => self.off_hours,
        }
    }
}

/// The minute of the day for Unix seconds `unix` at UTC offset `offset_secs`.
#[must_use]
pub const fn minute_of_day(unix: i64, offset_secs: i32) -> u16 {
    let local = unix + offset_secs as i64;
    (local.rem_euclid(86_400) / 60) as u16
}

/// Where the local minute of the day comes from (a seam for tests).
pub trait LocalTime: Send + Sync {
    /// The local minute of the day now (0..1440).
    fn minute_of_day(&self) -> u16;
}

/// The system's local time: `TZ` or `/etc/localtime`; UTC (with one warning) when neither
/// can be read.
#[derive(Debug)]
pub struct LocalClock {
    zone: Option<tz::TimeZone>,
}

impl LocalClock {
    /// Reads the system time zone.
    #[must_use]
    pub fn system() -> Self {
        match tz::TimeZone::local() {
            Ok(zone) => LocalClock { zone: Some(zone) },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the local time zone; clinical hours are taken as UTC");
                LocalClock { zone: None }
            }
        }
    }
}

impl LocalTime for LocalClock {
    fn minute_of_day(&self) -> u16 {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        let offset = self
            .zone
            .as_ref()
            .and_then(|z| z.find_local_time_type(unix).ok())
            .map_or(0, tz::LocalTimeType::ut_offset);
        minute_of_day(unix, offset)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_contain_their_minutes() {
        let day = DailyPeriod::parse("07:00-19:00").unwrap();
        assert!(!day.contains(6 * 60 + 59));
        assert!(day.contains(7 * 60));
        assert!(day.contains(18 * 60 + 59));
        assert!(!day.contains(19 * 60));
        let night = DailyPeriod::parse("22:30-06:00").unwrap();
        assert!(night.contains(23 * 60));
        assert!(night.contains(0));
        assert!(night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60));
        assert!(!night.contains(22 * 60 + 29));
        for bad in [
            "",
            "07:00",
            "7:00-19:00",
            "07:00-24:00",
            "07:60-08:00",
            "08:00-08:00",
            "a:b-c:d",
        ] {
            assert!(DailyPeriod::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rate_follows_the_time_of_day() {
        let s = BandwidthSchedule::from_config(Some("07:00-19:00"), 1_000_000, 0).unwrap();
        assert_eq!(
            s.rate_at(12 * 60),
            Rate::BytesPerSec(NonZeroU64::new(1_000_000).unwrap())
        );
        assert_eq!(s.rate_at(3 * 60), Rate::Unlimited);
        assert_eq!(s.rate_at(19 * 60), Rate::Unlimited);
        let all_day = BandwidthSchedule::from_config(None, 5, 7).unwrap();
        assert_eq!(
            all_day.rate_at(12 * 60),
            Rate::BytesPerSec(NonZeroU64::new(7).unwrap())
        );
        assert!(matches!(
            BandwidthSchedule::from_config(Some("nine to five"), 1, 1),
            Err(BulkError::Config {
                key: "clinical_hours",
                ..
            })
        ));
    }

    #[test]
    fn minute_of_day_applies_the_offset() {
        // 2025-01-01T12:00:00Z
        let noon = 1_735_732_800;
        assert_eq!(minute_of_day(noon, 0), 720);
        assert_eq!(minute_of_day(noon, 3600), 780);
        assert_eq!(minute_of_day(noon, -13 * 3600), 23 * 60);
        assert_eq!(minute_of_day(-60, 0), 1439);
    }
}
