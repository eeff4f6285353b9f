//! The leak check: looks for every planted identifier in bytes the cloud received (MQTT
//! packets at the broker, files at the imaging ingest) and in the gateway's data
//! directory, and keeps the tally the demo's verdict is made of.
//!
//! Invariants:
//! - Matching is byte for byte on the raw bytes, ignoring ASCII case only (a rule that
//!   upper-cased a name would still leak it). Identifiers marked `whole_token` count
//!   only where no ASCII letter or digit touches them on either side.
//! - Nothing is sampled: every byte handed to [`LeakLedger::scan_cloud`] is scanned
//!   against every identifier.
//! - The ledger records which identifiers were found and where, never the surrounding
//!   bytes: a report of a leak must not become a second leak.
//! - A file the imaging ingest received is counted once: scanned when it arrives
//!   ([`LeakLedger::scan_ingest_file`]), it is skipped by the final scan of the ingest's
//!   directory ([`LeakLedger::scan_ingest_dir`]), which catches everything else there.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use super::patients::{IdentifierKind, PlantedIdentifier};

/// Scans byte strings for planted identifiers.
#[derive(Debug, Clone)]
pub struct LeakScanner {
    identifiers: Vec<PlantedIdentifier>,
    needles: Vec<Vec<u8>>,
}

impl LeakScanner {
    /// A scanner for these identifiers (empty values are ignored).
    #[must_use]
    pub fn new(identifiers: Vec<PlantedIdentifier>) -> Self {
        let identifiers: Vec<_> = identifiers
            .into_iter()
            .filter(|p| !p.value.is_empty())
            .collect();
        let needles = identifiers
            .iter()
            .map(|p| p.value.to_ascii_lowercase().into_bytes())
            .collect();
        LeakScanner {
            identifiers,
            needles,
        }
    }

    /// The identifiers.
    #[must_use]
    pub fn identifiers(&self) -> &[PlantedIdentifier] {
        &self.identifiers
    }

    /// Indices (into [`LeakScanner::identifiers`]) of every identifier found in `haystack`.
    #[must_use]
    pub fn scan(&self, haystack: &[u8]) -> Vec<usize> {
        let lowered = haystack.to_ascii_lowercase();
        self.needles
            .iter()
            .enumerate()
            .filter(|(i, needle)| occurs(&lowered, needle, self.identifiers[*i].whole_token))
            .map(|(i, _)| i)
            .collect()
    }
}

fn occurs(haystack: &[u8], needle: &[u8], whole_token: bool) -> bool {
    let Some(&first) = needle.first() else {
        return false;
    };
    if needle.len() > haystack.len() {
        return false;
    }
    let last_start = haystack.len() - needle.len();
    let mut start = 0;
    while start <= last_start {
        let Some(offset) = haystack[start..=last_start]
            .iter()
            .position(|&b| b == first)
        else {
            return false;
        };
        let at = start + offset;
        if &haystack[at..at + needle.len()] == needle {
            let before_ok = at == 0 || !haystack[at - 1].is_ascii_alphanumeric();
            let after = at + needle.len();
            let after_ok = after == haystack.len() || !haystack[after].is_ascii_alphanumeric();
            if !whole_token || (before_ok && after_ok) {
                return true;
            }
        }
        start = at + 1;
    }
    false
}

/// One identifier found somewhere it must not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakFinding {
    /// Its category.
    pub kind: IdentifierKind,
    /// The planted value (the demo's own invention, so printing it leaks nothing real).
    pub value: String,
    /// Where: `broker ingress from <identity>`, `gateway disk: <file>` or
    /// `cloud imaging ingest: <file>`.
    pub place: String,
    /// How many scanned units (packets or files) contained it.
    pub count: u64,
}

#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    files: u64,
    file_bytes: u64,
    ingest_files: u64,
    ingest_bytes: u64,
    /// Ingest files already scanned, by path relative to the ingest's directory.
    ingest_scanned: HashSet<String>,
    // (identifier index, place) -> units containing it
    findings: BTreeMap<(usize, String), u64>,
}

/// What the leak check scanned and found, shared by the broker tap, the viewer and the
/// final disk scan.
pub struct LeakLedger {
    scanner: LeakScanner,
    tally: Mutex<Tally>,
}

impl std::fmt::Debug for LeakLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakLedger")
            .field("identifiers", &self.scanner.identifiers.len())
            .finish_non_exhaustive()
    }
}

/// Totals of a [`LeakLedger`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// Identifiers checked.
    pub identifiers: usize,
    /// MQTT packets scanned at the broker.
    pub packets_scanned: u64,
    /// Their bytes.
    pub bytes_scanned: u64,
    /// Files of the gateway's data directory scanned.
    pub files_scanned: u64,
    /// Their bytes.
    pub file_bytes_scanned: u64,
    /// Files scanned at the cloud imaging ingest (received images and their records).
    pub ingest_files_scanned: u64,
    /// Their bytes.
    pub ingest_bytes_scanned: u64,
    /// Every identifier found, by place.
    pub findings: Vec<LeakFinding>,
}

impl LeakReport {
    /// Total (identifier, packet or file) hits.
    #[must_use]
    pub fn leaks(&self) -> u64 {
        self.findings.iter().map(|f| f.count).sum()
    }
}

impl LeakLedger {
    /// A ledger for these identifiers.
    #[must_use]
    pub fn new(scanner: LeakScanner) -> Self {
        LeakLedger {
            scanner,
            tally: Mutex::new(Tally::default()),
        }
    }

    /// The scanner (for per-payload checks that should not count twice).
    #[must_use]
    pub fn scanner(&self) -> &LeakScanner {
        &self.scanner
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Scans one packet the broker received from `identity`; returns how many
    /// identifiers it contained.
    pub fn scan_cloud(&self, identity: &str, packet: &[u8]) -> usize {
        let found = self.scanner.scan(packet);
        let mut tally = self.tally();
        tally.packets += 1;
        tally.bytes += packet.len() as u64;
        for &i in &found {
            *tally
                .findings
                .entry((i, format!("broker ingress from {identity}")))
                .or_default() += 1;
        }
        found.len()
    }

    /// Scans every regular file under the gateway's `dir` (recursively). Unreadable
    /// entries are reported as errors rather than skipped silently.
    ///
    /// # Errors
    /// The first I/O error.
    pub fn scan_dir(&self, dir: &Path) -> std::io::Result<()> {
        walk_files(dir, &mut |name, bytes| {
            let found = self.scanner.scan(bytes);
            let mut tally = self.tally();
            tally.files += 1;
            tally.file_bytes += bytes.len() as u64;
            for i in found {
                *tally
                    .findings
                    .entry((i, format!("gateway disk: {name}")))
                    .or_default() += 1;
            }
        })
    }

    /// Scans one file the cloud imaging ingest received, named by its path relative to
    /// the ingest's directory (e.g. `dicom/<id>`); returns how many identifiers it
    /// contained. A name scanned before is not counted again.
    pub fn scan_ingest_file(&self, name: &str, bytes: &[u8]) -> usize {
        let found = self.scanner.scan(bytes);
        let mut tally = self.tally();
        if !tally.ingest_scanned.insert(name.to_owned()) {
            return found.len();
        }
        tally.ingest_files += 1;
        tally.ingest_bytes += bytes.len() as u64;
        for &i in &found {
            *tally
                .findings
                .entry((i, format!("cloud imaging ingest: {name}")))
                .or_default() += 1;
        }
        found.len()
    }

    /// Scans every regular file under the imaging ingest's `dir` (recursively) that
    /// [`LeakLedger::scan_ingest_file`] has not scanned yet: partial uploads, records,
    /// anything else it keeps.
    ///
    /// # Errors
    /// The first I/O error.
    pub fn scan_ingest_dir(&self, dir: &Path) -> std::io::Result<()> {
        walk_files(dir, &mut |name, bytes| {
            self.scan_ingest_file(name, bytes);
        })
    }

    /// The totals so far.
    #[must_use]
    pub fn report(&self) -> LeakReport {
        let tally = self.tally();
        LeakReport {
            identifiers: self.scanner.identifiers.len(),
            packets_scanned: tally.packets,
            bytes_scanned: tally.bytes,
            files_scanned: tally.files,
            file_bytes_scanned: tally.file_bytes,
            ingest_files_scanned: tally.ingest_files,
            ingest_bytes_scanned: tally.ingest_bytes,
            findings: tally
                .findings
                .iter()
                .map(|((i, place), count)| {
                    let id = &self.scanner.identifiers[*i];
                    LeakFinding {
                        kind: id.kind,
                        value: id.value.clone(),
                        place: place.clone(),
                        count: *count,
                    }
                })
                .collect(),
        }
    }
}

/// Calls `each` with the path (relative to `dir`) and bytes of every regular file under
/// `dir`, recursively.
fn walk_files(dir: &Path, each: &mut dyn FnMut(&str, &[u8])) -> std::io::Result<()> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path())?;
                let name = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap_or(&entry.path())
                    .display()
                    .to_string();
                each(&name, &bytes);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::super::patients::{ImagingStudy, SyntheticPatient};
    use super::*;

    fn id(value: &str, whole_token: bool) -> PlantedIdentifier {
        PlantedIdentifier {
            kind: IdentifierKind::Name,
            value: value.into(),
            whole_token,
            variant: false,
        }
    }

    #[test]
    fn finds_identifiers_ignoring_ascii_case() {
        let s = LeakScanner::new(vec![id("Quennell", false), id("123-45-6789", false)]);
        assert_eq!(s.scan(b"{\"n\":\"QUENNELL\"}"), vec![0]);
        assert_eq!(s.scan(b"x123-45-6789x and quennell"), vec![0, 1]);
        assert!(s.scan(b"Quennel 123-45-678").is_empty());
        assert!(s.scan(b"").is_empty());
    }

    #[test]
    fn whole_token_identifiers_need_boundaries() {
        let s = LeakScanner::new(vec![id("5550143", true)]);
        assert!(s.scan(b"9955501430").is_empty());
        assert!(s.scan(b"a5550143").is_empty());
        assert_eq!(s.scan(b"x55501435550143\""), Vec::<usize>::new());
        assert_eq!(s.scan(b"\"5550143\""), vec![0]);
        assert_eq!(s.scan(b"15550143 5550143"), vec![0]);
        assert_eq!(s.scan(b"5550143"), vec![0]);
    }

    /// A realistic cloud payload must not trip the check: otherwise a clean run would
    /// report leaks and the verdict would mean nothing.
    #[test]
    fn clean_cloud_payload_has_no_false_positives() {
        let today = 20_259;
        let scanner = LeakScanner::new(
            (0..64)
                .flat_map(|i| {
                    let mut ids = SyntheticPatient::new(i, today).planted_identifiers();
                    ids.extend(ImagingStudy::new(i, today).planted_identifiers());
                    ids
                })
                .collect(),
        );
        let mut payload = String::from(r#"{"schema":1,"gateway":"wardgate-demo","records":["#);
        for i in 0..64 {
            payload.push_str(&format!(
                r#"{{"id":"9f86d081884c7d65-{i}","priority":"observation","accepted_ms":1750420800123,"body":{{"kind":"observations","device":{{"id":"0050C2FFFE0A10{i:02X}","application":"WGDEMO-MON","eui64":"0050C2FFFE0A10{i:02X}"}},"patient":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","message_time":"20250620120000+0000","control_id":"M{i:02}-000042","groups":[{{"service":{{"code":"182777000","text":"monitoring of patient","system":"SCT"}},"observed_at":"20250620120000+0000","observations":[{{"code":{{"code":"150456","text":"MDC_PULS_OXIM_SAT_O2","system":"MDC"}},"value":{{"type":"numeric","v":"97"}},"units":{{"code":"262688","text":"MDC_DIM_PERCENT","system":"MDC"}},"containment":"1.1.1.150456","status":"R","observed_at":"20250620120000+0000"}},{{"code":{{"code":"150344","text":"MDC_TEMP","system":"MDC"}},"value":{{"type":"numeric","v":"36.8"}},"units":{{"code":"Cel","text":"degree Celsius","system":"UCUM"}}}},{{"code":{{"code":"68481","text":"MDC_ATTR_EVENT_PHASE","system":"MDC"}},"value":{{"type":"text","v":"start"}}}},{{"code":{{"code":"196674","text":"MDC_EVT_LO_VAL_LT_LIM","system":"MDC"}},"value":{{"type":"withheld"}}}}]}}]}}}},"#
            ));
        }
        let found = scanner.scan(payload.as_bytes());
        let names: Vec<_> = found
            .iter()
            .map(|&i| &scanner.identifiers()[i].value)
            .collect();
        assert!(found.is_empty(), "false positives: {names:?}");
    }

    #[test]
    fn ledger_counts_packets_and_places() {
        let ledger = LeakLedger::new(LeakScanner::new(vec![id("Quennell", false)]));
        assert_eq!(ledger.scan_cloud("gw", b"clean"), 0);
        assert_eq!(ledger.scan_cloud("gw", b"Quennell"), 1);
        assert_eq!(ledger.scan_cloud("gw", b"quennell"), 1);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/spool.db-wal"), b"..QUENNELL..").unwrap();
        std::fs::write(dir.path().join("clean"), b"nothing").unwrap();
        ledger.scan_dir(dir.path()).unwrap();
        let report = ledger.report();
        assert_eq!(report.packets_scanned, 3);
        assert_eq!(report.files_scanned, 2);
        assert_eq!(report.leaks(), 3);
        assert_eq!(report.findings.len(), 2);
        assert!(report
            .findings
            .iter()
            .any(|f| f.place == "gateway disk: sub/spool.db-wal" && f.count == 1));
    }

    #[test]
    fn ingest_files_scanned_on_arrival_are_not_counted_again() {
        let ledger = LeakLedger::new(LeakScanner::new(vec![id("Quennell", false)]));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dicom")).unwrap();
        std::fs::create_dir(dir.path().join(".partial")).unwrap();
        let image = b"DICM..Quennell^Ottoline..";
        std::fs::write(dir.path().join("dicom/f1"), image).unwrap();
        std::fs::write(dir.path().join("dicom/f1.meta.json"), b"{}").unwrap();
        std::fs::write(dir.path().join(".partial/f2"), b"QUENNELL").unwrap();
        assert_eq!(ledger.scan_ingest_file("dicom/f1", image), 1);
        ledger.scan_ingest_dir(dir.path()).unwrap();
        let report = ledger.report();
        assert_eq!(report.ingest_files_scanned, 3, "{report:?}");
        assert_eq!(report.files_scanned, 0);
        assert_eq!(report.leaks(), 2, "{report:?}");
        let places: Vec<&str> = report.findings.iter().map(|f| f.place.as_str()).collect();
        assert_eq!(
            places,
            [
                "cloud imaging ingest: .partial/f2",
                "cloud imaging ingest: dicom/f1"
            ]
        );
    }
}
