//! A simulated electro-anatomical mapping system's log: the kind of free-text device log
//! that names the patient on the table, which the gateway follows (`[device.logs]`) and
//! scrubs before anything is stored.
//!
//! [`MappingLogSim`] is sans-IO: it makes the lines (time passed in). [`run_mapping_log`]
//! is the thin driver that appends them to a file.
//!
//! Invariants:
//! - Every batch begins with one line naming the patient of monitor 0 by an identifier
//!   kind the free-text rules handle — family and given name (learned from PID-5), the
//!   e-mail address, the phone number in its `ddd-ddd-dddd` form, the MRN — and every
//!   such value is one of that patient's planted identifiers, so the leak check sees any
//!   one the scrubber misses. The other lines carry no identifier.
//! - No line names the patient before the gateway has learned the names: the driver
//!   writes nothing until a message of monitor 0 was acknowledged (an ACK is sent only
//!   after the HL7 PHI stage ran, and that stage learns the names).
//! - Each batch is written with one `write_all` and flushed before it is counted, so a
//!   counted line is in the file; lines are complete (newline-terminated) and short, so
//!   the log adapter ships each as exactly one line.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::patients::{Date, SyntheticPatient};
use super::tally::DemoTally;
use super::viewer::Console;

/// Name of the log file in the device's log directory.
pub const LOG_FILE: &str = "mapping-system.log";

/// Makes the mapping system's log lines.
#[derive(Debug, Clone)]
pub struct MappingLogSim {
    patient: LogPatient,
    rng: fastrand::Rng,
    batches: u64,
    point: u32,
}

/// What the log knows of the patient (all planted identifiers of monitor 0's patient).
#[derive(Clone)]
struct LogPatient {
    family: String,
    given: String,
    email: String,
    phone: String,
    mrn: String,
}

impl std::fmt::Debug for LogPatient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(wardgate_device_adapters::REDACTED)
    }
}

/// Number of distinct patient-naming lines ([`MappingLogSim::patient_line`]).
const PATIENT_LINES: u64 = 5;

impl MappingLogSim {
    /// The log of a mapping system treating `patient`; `seed` drives the clinical values.
    #[must_use]
    pub fn new(patient: &SyntheticPatient, seed: u64) -> Self {
        let phone = &patient.home_phone;
        MappingLogSim {
            patient: LogPatient {
                family: patient.family.clone(),
                given: patient.given.clone(),
                email: patient.email.clone(),
                phone: format!("{}-{}-{}", phone.area, &phone.local[..3], &phone.local[3..]),
                mrn: patient.mrn.clone(),
            },
            rng: fastrand::Rng::with_seed(seed ^ 0xCA27_0106),
            batches: 0,
            point: 0,
        }
    }

    /// The next batch of lines written at `now`: one naming the patient, then one or
    /// two about the procedure. Lines have no line break.
    pub fn next_batch(&mut self, now: SystemTime) -> Vec<String> {
        let stamp = timestamp(now);
        let mut lines = vec![format!("{stamp} {}", self.patient_line(self.batches))];
        for _ in 0..self.rng.usize(1..=2) {
            let line = self.procedure_line();
            lines.push(format!("{stamp} {line}"));
        }
        self.batches += 1;
        lines
    }

    /// The `n`-th patient-naming message (cycling), without timestamp.
    fn patient_line(&self, n: u64) -> String {
        let p = &self.patient;
        match n % PATIENT_LINES {
            0 => format!(
                "INFO  [Study]    Study opened for patient {}, {} (MRN {})",
                p.family, p.given, p.mrn
            ),
            1 => format!(
                "INFO  [Report]   Procedure summary for {} {} e-mailed to {}",
                p.given, p.family, p.email
            ),
            2 => format!(
                "WARN  [Contact]  Callback requested by {} {}, phone {}",
                p.given, p.family, p.phone
            ),
            3 => format!(
                "INFO  [Export]   Case archive {} ({}) queued for PACS",
                p.mrn, p.family
            ),
            _ => format!(
                "INFO  [Notes]    Operator note: {} tolerating sedation well, contact {}",
                p.family, p.phone
            ),
        }
    }

    fn procedure_line(&mut self) -> String {
        match self.rng.u8(0..3) {
            0 => {
                self.point += 1 + self.rng.u32(0..4);
                format!(
                    "INFO  [Mapping]  Point {} acquired: LAT {} ms, bipolar {:.2} mV, contact force {} g",
                    self.point,
                    self.rng.i32(-60..40),
                    0.05 + self.rng.f64() * 2.5,
                    self.rng.u32(5..30)
                )
            }
            1 => format!(
                "INFO  [Ablation] RF on: {} W, impedance {} ohm, tip {:.1} C",
                [30, 35, 40, 50][self.rng.usize(0..4)],
                self.rng.u32(95..140),
                37.0 + self.rng.f64() * 6.0
            ),
            _ => format!(
                "DEBUG [Location] Magnetic field quality {} %, reference patch OK",
                self.rng.u32(88..100)
            ),
        }
    }
}

/// `YYYY-MM-DD hh:mm:ss.SSS` (UTC), the shape the scrubber keeps at the start of a line.
#[must_use]
pub fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let date = Date::from_days_since_epoch(days).unwrap_or(Date {
        year: 1970,
        month: 1,
        day: 1,
    });
    let of_day = secs % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}.{:03}",
        date.iso(),
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Appends a batch to `file` every `period` once `start` completes, until `stop` turns
/// true; counts the lines written in `tally`. A write error ends the writer with a warning
/// (the demo goes on without the log).
pub async fn run_mapping_log(
    mut sim: MappingLogSim,
    file: PathBuf,
    period: Duration,
    start: impl Future<Output = ()>,
    tally: Arc<DemoTally>,
    console: Arc<Console>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        () = start => {}
        _ = stop.wait_for(|&stopped| stopped) => return,
    }
    let mut out = match tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .await
    {
        Ok(out) => out,
        Err(e) => {
            console.warn(&format!("mapping-system log {}: {e}", file.display()));
            return;
        }
    };
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let lines = sim.next_batch(SystemTime::now());
        let mut text = lines.join("\n");
        text.push('\n');
        let written = async {
            out.write_all(text.as_bytes()).await?;
            out.flush().await
        };
        if let Err(e) = written.await {
            console.warn(&format!("mapping-system log {}: {e}", file.display()));
            return;
        }
        tally.log_lines_written(lines.len() as u64);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use std::collections::BTreeSet;

    use super::super::leak::LeakScanner;
    use super::super::monitors::MonitorSim;
    use super::*;
    use crate::phi::freetext::{FreeTextConfig, FreeTextRules, NameTokens};
    use crate::phi::pseudonym::PseudonymKey;
    use crate::phi::Hl7Rules;
    use wardgate_device_adapters::hl7::{interpret, Message};

    /// 2025-06-20.
    const TODAY: i64 = 20_259;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_750_425_791_482);
        assert_eq!(timestamp(t), "2025-06-20 13:23:11.482");
    }

    #[test]
    fn every_batch_names_the_patient_first_with_planted_identifiers() {
        let patient = SyntheticPatient::new(0, TODAY);
        let scanner = LeakScanner::new(patient.planted_identifiers());
        let mut sim = MappingLogSim::new(&patient, 1);
        let mut found = BTreeSet::new();
        for i in 0..PATIENT_LINES * 2 {
            let batch = sim.next_batch(UNIX_EPOCH + Duration::from_secs(1_750_425_791 + i));
            assert!((2..=3).contains(&batch.len()), "{}", batch.len());
            assert!(!scanner.scan(batch[0].as_bytes()).is_empty(), "{i}");
            for line in &batch[1..] {
                assert!(
                    scanner.scan(line.as_bytes()).is_empty(),
                    "procedure lines carry no identifier"
                );
            }
            for index in scanner.scan(batch[0].as_bytes()) {
                found.insert(scanner.identifiers()[index].value.clone());
            }
        }
        let phone = &patient.home_phone;
        for value in [
            &patient.family,
            &patient.given,
            &patient.email,
            &patient.mrn,
            &format!("{}-{}-{}", phone.area, &phone.local[..3], &phone.local[3..]),
        ] {
            assert!(found.contains(value), "{value} never written: {found:?}");
        }
    }

    /// The lines as the gateway scrubs them once monitor 0's message passed the HL7
    /// rules: nothing planted is left, and every kind of marker shows.
    #[test]
    fn the_scrubber_removes_every_identifier_once_the_names_are_learned() {
        let monitor = MonitorSim::new(0, TODAY, 5);
        let patient = monitor.patient().clone();
        let names = Arc::new(NameTokens::new(&PseudonymKey::from_bytes(&[7; 32]), 1000));
        let hl7 = Hl7Rules::new(PseudonymKey::from_bytes(&[7; 32]), BTreeSet::new())
            .with_name_tokens(names.clone());
        let mut monitor = monitor;
        let message = monitor
            .tick(UNIX_EPOCH + Duration::from_secs(1_750_425_791))
            .pop()
            .unwrap();
        let parsed = interpret(&Message::parse(message.hl7.as_bytes()).unwrap()).unwrap();
        hl7.sanitize(parsed, "127.0.0.1:2575".parse().unwrap())
            .unwrap();

        let rules = FreeTextRules::new(&FreeTextConfig::default(), names).unwrap();
        let scanner = LeakScanner::new(patient.planted_identifiers());
        let mut sim = MappingLogSim::new(&patient, 2);
        let mut scrubbed = String::new();
        for i in 0..PATIENT_LINES {
            let now = UNIX_EPOCH + Duration::from_secs(1_750_425_791 + i);
            for line in sim.next_batch(now) {
                let mut out = String::new();
                rules.scrub_line(&line, &mut out);
                assert!(
                    out.starts_with(&timestamp(now)),
                    "the leading timestamp is kept: {out}"
                );
                assert!(scanner.scan(out.as_bytes()).is_empty(), "{out}");
                scrubbed.push_str(&out);
                scrubbed.push('\n');
            }
        }
        for marker in ["[NAME]", "[EMAIL]", "[PHONE]", "[MRN]"] {
            assert!(scrubbed.contains(marker), "{marker} missing:\n{scrubbed}");
        }
        // Without the names learned, they pass: the ordering in the driver matters.
        let unlearned = FreeTextRules::new(
            &FreeTextConfig::default(),
            Arc::new(NameTokens::new(&PseudonymKey::from_bytes(&[7; 32]), 1000)),
        )
        .unwrap();
        let mut out = String::new();
        unlearned.scrub_line(
            &MappingLogSim::new(&patient, 2).next_batch(UNIX_EPOCH)[0],
            &mut out,
        );
        assert!(out.contains(&patient.family), "{out}");
    }
}
