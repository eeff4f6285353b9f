//! PHI rules for free text (device log lines): a single-pass scrubber that replaces
//! e-mail addresses, phone numbers, SSN-like and MRN-like identifiers, dates, optionally IP
//! addresses, and the names of patients the gateway has seen in HL7 traffic by markers
//! (`[EMAIL]`, `[PHONE]`, `[SSN]`, `[MRN]`, `[DATE]`, `[IP]`, `[NAME]`).
//!
//! Invariant: a log line becomes a record only through [`FreeTextRules::sanitize_log_lines`]
//! / [`FreeTextRules::sanitize_chunk`] (which build [`Sanitized`] via the crate-private
//! `Sanitized::log_lines`), and that path scrubs every line and the file name. Free text
//! cannot be made safe by a pattern list with certainty (a name the gateway never saw in
//! HL7, an address in prose, a date written out in words all pass): this is a best-effort
//! deny-list, which is why log records have the lowest priority and sites can turn the
//! log adapter off entirely.
//!
//! # Scanner
//! One left-to-right pass over the line with bounded look-ahead per position; no regular
//! expressions, no backtracking over the line. Matching starts only at token starts (the
//! byte before is not an ASCII letter or digit), and a token that fails every rule is
//! skipped as a whole, so a rule never fires in the middle of a word or number
//! (`0x7f3a9c12`, `SpO2`, `v2.4.1`, UUIDs). A match must also end at a token boundary (the
//! next byte is not a letter or digit, and not `.`, `-` or `/` followed by a digit): a
//! version `1.2.3.4.5` is not an IP address, `555-0100-7` is not a phone number.
//! - **E-mail**: `local@domain.tld` (local part `[A-Za-z0-9._%+-]`, at least one dot in the
//!   domain, alphabetic TLD). Only scanned for if the line contains `@`.
//! - **Phone**: `(ddd) ddd-dddd`, `ddd-ddd-dddd` / `ddd.ddd.dddd`, `ddd-dddd`, and
//!   international `+<8–15 digits in groups>`.
//! - **SSN**: `ddd-dd-dddd`.
//! - **MRN**: a token of digits only, at least `mrn_min_digits` long (not the integer or
//!   fractional part of a decimal number), and any value that contains a digit after one of
//!   `mrn_prefixes` (`MRN: A-12345` → `MRN: [MRN]`; the prefix is kept for context).
//! - **Dates**: `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYY.MM.DD`, `DD/MM/YYYY`, `MM/DD/YYYY`,
//!   `DD.MM.YYYY`, `DD-MM-YYYY` (one- or two-digit day and month, plausible ranges, year
//!   1800–2199) and compact HL7 `YYYYMMDD[hhmm[ss]]`. Two-digit years are not recognised.
//!   The time after a date (`2025-01-01T10:00`) is kept: without the date it identifies
//!   nobody.
//! - **IP addresses** (only if `ip_addresses = true`): dotted IPv4 (port kept) and IPv6
//!   with `::` or eight groups (validated by the standard library parser). Off by default:
//!   in a hospital network an address names a device, not a patient, and it is often what
//!   makes a device log useful.
//! - **Names**: every word (letters, inner apostrophes; not adjacent to a digit) of at
//!   least two characters whose keyed hash is in the [`NameTokens`] set; for a word with
//!   apostrophes, each part is checked too (`Doe's`).
//!
//! # The line's own timestamp
//! Device log lines start with a timestamp, and the date rule would destroy it. Policy:
//! the *leading* timestamp is kept verbatim, every other date in the line is redacted
//! (the scanner cannot tell a date of birth from an event date, so it does not try).
//! `leading_timestamp_format` gives the exact shape (`YYYY-MM-DD hh:mm:ss.SSS`); without
//! it the shape is recognised: an optional syslog `<PRI>` and RFC 5424 version, an
//! optional `[`, then a date in one of the forms above *followed by a time* (`T`, space or
//! `_`, `hh:mm[:ss][.fraction][Z|±hh[:mm]]`), or a 10- or 13-digit Unix time. A line that
//! starts with a date but no time keeps nothing: a bare date at the start of a line may
//! well be a birth date.
//!
//! # Name tokens without plaintext names
//! [`NameTokens`] remembers *keyed hashes* of name tokens taken from PID-5, PID-6, PID-9
//! and NK1-2 as messages pass the HL7 rules, never the names. The hash is SipHash-1-3
//! keyed with `HMAC-SHA256(site pseudonym key, "wardgate name-token v1")[..16]`, over the
//! case-folded token, 64 bits. Why not an HMAC per token: the scrubber must hash every
//! candidate word of every line (10+ per line at ≥ 200,000 lines/s on one core), and
//! HMAC-SHA256 costs 300–500 ns per call, which alone would eat the budget; SipHash-1-3 is
//! a keyed PRF built for short inputs (~20 ns here). Its key derives from the site key
//! through HMAC, so without the site key (which never leaves the gateway) the set is not
//! open to a dictionary attack — the same property as the HMAC pseudonyms. 64 bits make
//! an accidental collision (a word redacted because its hash equals a name's) negligible
//! at any realistic set size.
//!
//! The set is bounded (`name_token_capacity`); when full, the token learned (or
//! re-learned) longest ago is evicted first — patients currently on the monitors keep
//! being re-learned with every message, so they stay. [`NameTokens::export`] /
//! [`NameTokens::import`] let the gateway keep the set across restarts (in the spool
//! database): the export carries only hashes, plus an 8-byte check value of the key so a
//! set made under another key is refused rather than silently useless.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv6Addr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;
#[cfg(feature = "logfile")]
use wardgate_device_adapters::logfile::{Checkpoint, LogChunk};
use wardgate_proto::{DeviceIdentity, LogBatch, RecordBody};

use super::pseudonym::PseudonymKey;
use super::{PhiError, Sanitized};

/// Marker replacing an e-mail address.
pub const EMAIL: &str = "[EMAIL]";
/// Marker replacing a phone number.
pub const PHONE: &str = "[PHONE]";
/// Marker replacing an SSN-like number.
pub const SSN: &str = "[SSN]";
/// Marker replacing an MRN-like identifier.
pub const MRN: &str = "[MRN]";
/// Marker replacing a date.
pub const DATE: &str = "[DATE]";
/// Marker replacing an IP address.
pub const IP: &str = "[IP]";
/// Marker replacing a known patient name token.
pub const NAME: &str = "[NAME]";

/// Which free-text rules are on. The doc comment of every key is the user documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeTextConfig {
    /// Replace e-mail addresses by `[EMAIL]`.
    #[serde(default = "yes")]
    pub emails: bool,
    /// Replace phone numbers by `[PHONE]`.
    #[serde(default = "yes")]
    pub phones: bool,
    /// Replace SSN-like numbers (`ddd-dd-dddd`) by `[SSN]`.
    #[serde(default = "yes")]
    pub ssn: bool,
    /// Replace dates (except the line's leading timestamp) by `[DATE]`.
    #[serde(default = "yes")]
    pub dates: bool,
    /// Replace every number of at least this many digits standing alone (not part of a
    /// word or a decimal number) by `[MRN]`; `0` turns this off. 4–20. Long numbers in logs
    /// are often counters or byte counts: raise it if that costs too much, knowing that a
    /// shorter MRN then only falls to `mrn_prefixes`.
    #[serde(default = "default_mrn_min_digits")]
    pub mrn_min_digits: usize,
    /// Words after which a value containing a digit is an identifier and replaced by
    /// `[MRN]` (case-insensitive; separators `:`, `#`, `=` and blanks may follow), e.g.
    /// `MRN: A-1234` → `MRN: [MRN]`.
    #[serde(default = "default_mrn_prefixes")]
    pub mrn_prefixes: Vec<String>,
    /// Replace IPv4 and IPv6 addresses by `[IP]`. Off by default: addresses on a hospital
    /// network name devices, not patients.
    #[serde(default)]
    pub ip_addresses: bool,
    /// Replace words that match a patient name seen in HL7 traffic by `[NAME]`.
    #[serde(default = "yes")]
    pub names: bool,
    /// Keep the timestamp a line starts with (see `leading_timestamp_format`); every other
    /// date in the line is still redacted.
    #[serde(default = "yes")]
    pub keep_leading_timestamp: bool,
    /// The exact shape of the leading timestamp, e.g. `"YYYY-MM-DD hh:mm:ss.SSS"`: each of
    /// `Y M D h m s S` stands for one digit, every other character for itself. Unset:
    /// common shapes are recognised (ISO 8601 and the date forms above followed by a time,
    /// optionally in `[...]` or after a syslog `<PRI>`; 10- or 13-digit Unix times).
    #[serde(default)]
    pub leading_timestamp_format: Option<String>,
    /// Most name tokens remembered (1–10,000,000). When full, the token learned longest
    /// ago is forgotten first. About 40 bytes each.
    #[serde(default = "default_name_token_capacity")]
    pub name_token_capacity: usize,
}

const fn yes() -> bool {
    true
}
const fn default_mrn_min_digits() -> usize {
    6
}
fn default_mrn_prefixes() -> Vec<String> {
    ["MRN", "patient id", "patient_id", "patientid", "patient-id"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}
const fn default_name_token_capacity() -> usize {
    100_000
}

impl Default for FreeTextConfig {
    fn default() -> Self {
        FreeTextConfig {
            emails: true,
            phones: true,
            ssn: true,
            dates: true,
            mrn_min_digits: default_mrn_min_digits(),
            mrn_prefixes: default_mrn_prefixes(),
            ip_addresses: false,
            names: true,
            keep_leading_timestamp: true,
            leading_timestamp_format: None,
            name_token_capacity: default_name_token_capacity(),
        }
    }
}

impl FreeTextConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// A sentence naming the offending key and why it is refused.
    pub fn validate(&self) -> Result<(), String> {
        if self.mrn_min_digits != 0 && !(4..=20).contains(&self.mrn_min_digits) {
            return Err(format!(
                "mrn_min_digits: must be 0 (off) or 4–20, is {}",
                self.mrn_min_digits
            ));
        }
        for prefix in &self.mrn_prefixes {
            if prefix.is_empty() || prefix.len() > 32 {
                return Err(format!("mrn_prefixes: {prefix:?} must be 1–32 characters"));
            }
            if !prefix.starts_with(|c: char| c.is_ascii_alphabetic())
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.'))
                || prefix.ends_with(' ')
            {
                return Err(format!(
                    "mrn_prefixes: {prefix:?} must start with a letter and use only A-Z a-z 0-9 space _ - ."
                ));
            }
        }
        if let Some(format) = &self.leading_timestamp_format {
            if format.is_empty() || format.len() > 64 || !format.is_ascii() {
                return Err("leading_timestamp_format: must be 1–64 ASCII characters".into());
            }
            if !format.chars().any(is_template_digit) {
                return Err(
                    "leading_timestamp_format: has no digit placeholder (Y M D h m s S)".into(),
                );
            }
        }
        if !(1..=10_000_000).contains(&self.name_token_capacity) {
            return Err(format!(
                "name_token_capacity: must be 1–10000000, is {}",
                self.name_token_capacity
            ));
        }
        Ok(())
    }
}

fn is_template_digit(c: char) -> bool {
    matches!(c, 'Y' | 'M' | 'D' | 'h' | 'm' | 's' | 'S')
}

// ---------------------------------------------------------------------------------------
// Name tokens
// ---------------------------------------------------------------------------------------

/// Errors of [`NameTokens::import`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameTokensError {
    /// The bytes are not an export of this format.
    #[error("not a name-token export: {0}")]
    Format(&'static str),
    /// The export was made under another pseudonym key: its hashes mean nothing here.
    #[error("the name-token export was made with another pseudonym key")]
    OtherKey,
}

const EXPORT_MAGIC: &[u8; 4] = b"WGNT";
const EXPORT_VERSION: u8 = 1;
const EXPORT_HEADER: usize = 4 + 1 + 8 + 4;

/// A `Hasher` for keys that already are keyed hashes: passes the `u64` through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The set proper: hash → stamp of its last learning, and the stamps in learning order.
#[derive(Default)]
struct NameSet {
    stamps: HashMap<u64, u64, BuildHasherDefault<PassThrough>>,
    order: VecDeque<(u64, u64)>,
    next_stamp: u64,
}

impl NameSet {
    fn contains(&self, hash: u64) -> bool {
        self.stamps.contains_key(&hash)
    }

    /// Present and learned recently enough that refreshing it would not change which
    /// tokens get evicted soon (saves taking the write lock for every HL7 message).
    fn is_fresh(&self, hash: u64, capacity: usize) -> bool {
        self.stamps
            .get(&hash)
            .is_some_and(|&stamp| self.next_stamp - stamp <= (capacity as u64 / 2).max(1))
    }

    fn touch(&mut self, hash: u64, capacity: usize) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.stamps.insert(hash, stamp);
        self.order.push_back((hash, stamp));
        while self.stamps.len() > capacity {
            let Some((old, old_stamp)) = self.order.pop_front() else {
                break;
            };
            if self.stamps.get(&old) == Some(&old_stamp) {
                self.stamps.remove(&old);
            }
        }
        // Refreshes leave stale entries in `order`; drop them before they pile up.
        if self.order.len() > 2 * capacity + 64 {
            let stamps = &self.stamps;
            self.order.retain(|(h, s)| stamps.get(h) == Some(s));
        }
    }

    /// Live hashes, learned longest ago first.
    fn in_order(&self) -> impl Iterator<Item = u64> + '_ {
        self.order
            .iter()
            .filter(|(h, s)| self.stamps.get(h) == Some(s))
            .map(|(h, _)| *h)
    }
}

/// Keyed hashes of patient name tokens seen in HL7 traffic. Thread-safe; holds no
/// plaintext. See the module documentation.
pub struct NameTokens {
    hasher: SipHasher13,
    key_check: [u8; 8],
    capacity: usize,
    set: RwLock<NameSet>,
}

impl std::fmt::Debug for NameTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameTokens")
            .field("tokens", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl NameTokens {
    /// An empty set keyed from the site's pseudonym key, holding at most `capacity`
    /// tokens (at least 1).
    #[must_use]
    pub fn new(key: &PseudonymKey, capacity: usize) -> Self {
        let derived = key.mac(&[b"wardgate name-token v1"]);
        let mut sip_key = [0u8; 16];
        sip_key.copy_from_slice(&derived[..16]);
        let check = key.mac(&[b"wardgate name-token check v1"]);
        let mut key_check = [0u8; 8];
        key_check.copy_from_slice(&check[..8]);
        NameTokens {
            hasher: SipHasher13::new_with_key(&sip_key),
            key_check,
            capacity: capacity.max(1),
            set: RwLock::new(NameSet::default()),
        }
    }

    /// Remembers the words of `names` (whole names like `DOE^JANE` or `Smith-Jones`, or
    /// single tokens): split like the scrubber splits a line, words shorter than two
    /// characters and words touching a digit skipped; for a word with apostrophes the parts
    /// are learned too.
    pub fn learn<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut hashes = Vec::new();
        for name in names {
            let name = name.as_ref();
            for_each_word(name, |word| {
                self.push_word_hashes(word, &mut hashes);
            });
        }
        if hashes.is_empty() {
            return;
        }
        {
            let set = self.read();
            if hashes.iter().all(|h| set.is_fresh(*h, self.capacity)) {
                return;
            }
        }
        let mut set = self.write();
        for h in hashes {
            set.touch(h, self.capacity);
        }
    }

    fn push_word_hashes(&self, word: &str, out: &mut Vec<u64>) {
        out.extend(self.token_hash(word));
        if word.contains(is_apostrophe) {
            for part in word.split(is_apostrophe) {
                out.extend(self.token_hash(part));
            }
        }
    }

    /// Number of tokens held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().stamps.len()
    }

    /// Whether no token is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `word` (one token) is a learned name token.
    #[must_use]
    pub fn contains(&self, word: &str) -> bool {
        self.token_hash(word)
            .is_some_and(|h| self.read().contains(h))
    }

    /// The set as bytes, for the gateway to store: a header (magic, version, key check,
    /// count) and the 64-bit hashes, learned longest ago first. No plaintext.
    #[must_use]
    pub fn export(&self) -> Vec<u8> {
        let set = self.read();
        let hashes: Vec<u64> = set.in_order().collect();
        let mut out = Vec::with_capacity(EXPORT_HEADER + 8 * hashes.len());
        out.extend_from_slice(EXPORT_MAGIC);
        out.push(EXPORT_VERSION);
        out.extend_from_slice(&self.key_check);
        out.extend_from_slice(
            &u32::try_from(hashes.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for h in hashes.iter().take(u32::MAX as usize) {
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// Adds the tokens of an [`Self::export`] (in their order, as if learned now, oldest
    /// first). Returns how many were read.
    ///
    /// # Errors
    /// [`NameTokensError::Format`] for bytes that are not an export,
    /// [`NameTokensError::OtherKey`] for an export made under another pseudonym key.
    pub fn import(&self, bytes: &[u8]) -> Result<usize, NameTokensError> {
        if bytes.len() < EXPORT_HEADER || &bytes[..4] != EXPORT_MAGIC {
            return Err(NameTokensError::Format("bad header"));
        }
        if bytes[4] != EXPORT_VERSION {
            return Err(NameTokensError::Format("unknown version"));
        }
        if bytes[5..13] != self.key_check {
            return Err(NameTokensError::OtherKey);
        }
        let mut count = [0u8; 4];
        count.copy_from_slice(&bytes[13..17]);
        let count = u32::from_le_bytes(count) as usize;
        let body = &bytes[EXPORT_HEADER..];
        if body.len() != count.saturating_mul(8) {
            return Err(NameTokensError::Format("length does not match the count"));
        }
        let mut set = self.write();
        for chunk in body.chunks_exact(8) {
            let mut h = [0u8; 8];
            h.copy_from_slice(chunk);
            set.touch(u64::from_le_bytes(h), self.capacity);
        }
        Ok(count)
    }

    /// The keyed hash of one case-folded token, `None` if shorter than two characters.
    fn token_hash(&self, token: &str) -> Option<u64> {
        if token.is_ascii() {
            if token.len() < 2 {
                return None;
            }
            let mut buf = [0u8; 64];
            if let Some(dst) = buf.get_mut(..token.len()) {
                for (d, s) in dst.iter_mut().zip(token.bytes()) {
                    *d = s.to_ascii_lowercase();
                }
                return Some(self.hasher.hash(dst));
            }
            return Some(self.hasher.hash(token.to_ascii_lowercase().as_bytes()));
        }
        if token.chars().count() < 2 {
            return None;
        }
        // Upper then lower case folds `ß`/`SS` and similar pairs the same way on both
        // sides (HL7 names arrive upper-cased, logs in any case).
        let folded: String = token
            .to_uppercase()
            .to_lowercase()
            .chars()
            .map(|c| if c == '\u{2019}' { '\'' } else { c })
            .collect();
        Some(self.hasher.hash(folded.as_bytes()))
    }

    fn read(&self) -> RwLockReadGuard<'_, NameSet> {
        // A panic elsewhere while holding the lock leaves a consistent set: go on with it.
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, NameSet> {
        self.set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------------
// Rules and scanner
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Leading {
    Off,
    Auto,
    /// `None` = a digit, `Some(b)` = that byte.
    Template(Vec<Option<u8>>),
}

/// The free-text rules of one site.
#[derive(Debug, Clone)]
pub struct FreeTextRules {
    emails: bool,
    phones: bool,
    ssn: bool,
    dates: bool,
    mrn_min_digits: usize,
    /// Lower-cased ASCII prefixes.
    mrn_prefixes: Vec<Vec<u8>>,
    ip: bool,
    names_on: bool,
    leading: Leading,
    names: Arc<NameTokens>,
}

/// A sanitized log chunk: the record to store (none for a checkpoint-only chunk) and the
/// checkpoint to store with it in the same transaction, as JSON, file names scrubbed.
#[derive(Debug)]
pub struct SanitizedLogChunk {
    /// The log record, if the chunk had lines.
    pub record: Option<Sanitized>,
    /// JSON of the chunk's [`Checkpoint`], its file names passed through the rules.
    pub checkpoint: Vec<u8>,
}

impl FreeTextRules {
    /// Rules from a config (validated here) and the site's name-token set (shared with the
    /// HL7 rules, which fill it).
    ///
    /// # Errors
    /// The config's validation reason.
    pub fn new(config: &FreeTextConfig, names: Arc<NameTokens>) -> Result<Self, String> {
        config.validate()?;
        let leading = match (
            &config.leading_timestamp_format,
            config.keep_leading_timestamp,
        ) {
            (_, false) => Leading::Off,
            (None, true) => Leading::Auto,
            (Some(f), true) => Leading::Template(
                f.bytes()
                    .map(|b| (!is_template_digit(char::from(b))).then_some(b))
                    .collect(),
            ),
        };
        Ok(FreeTextRules {
            emails: config.emails,
            phones: config.phones,
            ssn: config.ssn,
            dates: config.dates,
            mrn_min_digits: config.mrn_min_digits,
            mrn_prefixes: config
                .mrn_prefixes
                .iter()
                .map(|p| p.to_ascii_lowercase().into_bytes())
                .collect(),
            ip: config.ip_addresses,
            names_on: config.names,
            leading,
            names,
        })
    }

    /// The name-token set these rules consult.
    #[must_use]
    pub fn name_tokens(&self) -> &Arc<NameTokens> {
        &self.names
    }

    /// Appends `line` with every rule applied to `out`.
    pub fn scrub_line(&self, line: &str, out: &mut String) {
        let guard = self.names_guard();
        self.scrub_with(live_set(guard.as_deref()), line, out);
    }

    /// Scrubs `lines` and `file` and builds the log record.
    ///
    /// # Errors
    /// [`PhiError::Encode`] if the record cannot be serialized (not expected).
    pub fn sanitize_log_lines(
        &self,
        device: &DeviceIdentity,
        file: &str,
        lines: Vec<String>,
    ) -> Result<Sanitized, PhiError> {
        Sanitized::log_lines(self, device, file, lines)
    }

    /// Turns a chunk from the log-file adapter into what the spool stores in one
    /// transaction: the record (if the chunk has lines) and the checkpoint JSON. File
    /// names in the checkpoint are scrubbed like the lines (a file may be named after a
    /// patient); resuming matches files by identity, not by name, so nothing is lost.
    ///
    /// # Errors
    /// [`PhiError::Encode`] if the record or checkpoint cannot be serialized.
    #[cfg(feature = "logfile")]
    pub fn sanitize_chunk(
        &self,
        device: &DeviceIdentity,
        chunk: LogChunk,
    ) -> Result<SanitizedLogChunk, PhiError> {
        let LogChunk {
            file,
            lines,
            checkpoint,
        } = chunk;
        let record = if lines.is_empty() {
            None
        } else {
            Some(Sanitized::log_lines(self, device, &file, lines)?)
        };
        let checkpoint = self.scrub_checkpoint(checkpoint);
        Ok(SanitizedLogChunk {
            record,
            checkpoint: serde_json::to_vec(&checkpoint)?,
        })
    }

    #[cfg(feature = "logfile")]
    fn scrub_checkpoint(&self, mut checkpoint: Checkpoint) -> Checkpoint {
        let guard = self.names_guard();
        let names = live_set(guard.as_deref());
        for entry in &mut checkpoint.files {
            let mut name = String::with_capacity(entry.name.len());
            self.scrub_with(names, &entry.name, &mut name);
            entry.name = name;
        }
        checkpoint
    }

    fn names_guard(&self) -> Option<RwLockReadGuard<'_, NameSet>> {
        self.names_on.then(|| self.names.read())
    }

    /// The scanner. `names` is `None` when the name rule is off or the set is empty.
    fn scrub_with(&self, names: Option<&NameSet>, line: &str, out: &mut String) {
        let b = line.as_bytes();
        let len = b.len();
        let mut i = self.leading_len(b);
        let mut copied = 0usize;
        let has_at = self.emails && b.contains(&b'@');
        let has_colon = self.ip && b.contains(&b':');
        let mut email_checked_until = 0usize;

        macro_rules! replace {
            ($start:expr, $end:expr, $marker:expr) => {{
                out.push_str(line.get(copied..$start).unwrap_or(""));
                out.push_str($marker);
                i = $end;
                copied = i;
                continue;
            }};
        }

        while i < len {
            let c = b[i];
            let token_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();

            if has_at
                && i >= email_checked_until
                && is_local_char(c)
                && (i == 0 || !is_local_char(b[i - 1]))
            {
                match match_email(b, i) {
                    Ok(end) => replace!(i, end, EMAIL),
                    Err(local_end) => email_checked_until = local_end,
                }
            }

            if c.is_ascii_digit() || c == b'(' || c == b'+' || c == b':' {
                if token_start {
                    // Right after `1.`, `1-`, `1/` or `1:` we are inside a dotted or dashed
                    // number (a version, an address, a time): only the digit-run rule.
                    let inside_number = i >= 2
                        && matches!(b[i - 1], b'.' | b'-' | b'/' | b':')
                        && b[i - 2].is_ascii_digit();
                    if let Some((end, marker)) =
                        self.match_numeric(line, i, has_colon, inside_number)
                    {
                        replace!(i, end, marker);
                    }
                }
                i = if c.is_ascii_digit() {
                    skip_alnum(b, i)
                } else {
                    i + 1
                };
                continue;
            }

            if c.is_ascii_alphabetic() || c >= 0x80 {
                if token_start && c.is_ascii_alphabetic() {
                    if let Some((value_start, value_end)) = self.match_mrn_prefix(b, i) {
                        out.push_str(line.get(copied..value_start).unwrap_or(""));
                        out.push_str(MRN);
                        i = value_end;
                        copied = i;
                        continue;
                    }
                    if has_colon && c.is_ascii_hexdigit() {
                        if let Some(end) = match_ipv6(line, i) {
                            replace!(i, end, IP);
                        }
                    }
                }
                let end = word_end(line, i);
                if end == i {
                    // A non-letter character (symbol, emoji): step over it whole.
                    i += line
                        .get(i..)
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    continue;
                }
                let touches_digit =
                    (i > 0 && b[i - 1].is_ascii_digit()) || (end < len && b[end].is_ascii_digit());
                if touches_digit {
                    i = skip_alnum(b, end);
                    continue;
                }
                if let Some(set) = names {
                    if let Some(word) = line.get(i..end) {
                        if self.is_name(set, word) {
                            replace!(i, end, NAME);
                        }
                    }
                }
                i = end;
                continue;
            }
            i += 1;
        }
        out.push_str(line.get(copied..).unwrap_or(""));
    }

    fn is_name(&self, set: &NameSet, word: &str) -> bool {
        if self.names.token_hash(word).is_some_and(|h| set.contains(h)) {
            return true;
        }
        word.contains(is_apostrophe)
            && word
                .split(is_apostrophe)
                .any(|part| self.names.token_hash(part).is_some_and(|h| set.contains(h)))
    }

    /// Rules that start with a digit, `(`, `+` or `:` at a token start. With
    /// `inside_number` only the digit-run rule applies.
    fn match_numeric(
        &self,
        line: &str,
        i: usize,
        has_colon: bool,
        inside_number: bool,
    ) -> Option<(usize, &'static str)> {
        let b = line.as_bytes();
        let c = b[i];
        if inside_number {
            return if c.is_ascii_digit() {
                self.match_digit_run(b, i)
            } else {
                None
            };
        }
        if c == b'(' || c == b'+' {
            return if self.phones {
                match_phone(b, i).map(|e| (e, PHONE))
            } else {
                None
            };
        }
        if c == b':' {
            return if has_colon {
                match_ipv6(line, i).map(|e| (e, IP))
            } else {
                None
            };
        }
        if self.dates {
            if let Some(end) = match_date(b, i) {
                return Some((end, DATE));
            }
        }
        if self.ssn {
            if let Some(end) = match_ssn(b, i) {
                return Some((end, SSN));
            }
        }
        if self.ip {
            if let Some(end) = match_ipv4(b, i) {
                return Some((end, IP));
            }
            if has_colon {
                if let Some(end) = match_ipv6(line, i) {
                    return Some((end, IP));
                }
            }
        }
        if self.phones {
            if let Some(end) = match_phone(b, i) {
                return Some((end, PHONE));
            }
        }
        self.match_digit_run(b, i)
    }

    /// A number standing alone: a compact date or an MRN-like digit run.
    fn match_digit_run(&self, b: &[u8], i: usize) -> Option<(usize, &'static str)> {
        let run = digit_run(b, i);
        let end = i + run;
        if end < b.len() && b[end].is_ascii_alphabetic() {
            return None;
        }
        let fraction = i >= 2 && b[i - 1] == b'.' && b[i - 2].is_ascii_digit();
        let integer_part = end + 1 < b.len() && b[end] == b'.' && b[end + 1].is_ascii_digit();
        if fraction || integer_part {
            return None;
        }
        if self.dates && matches!(run, 8 | 12 | 14) && compact_date(&b[i..end]) {
            return Some((end, DATE));
        }
        if self.mrn_min_digits > 0 && run >= self.mrn_min_digits {
            return Some((end, MRN));
        }
        None
    }

    /// `prefix [sep]{0,3} value-with-a-digit`: returns the value's range.
    fn match_mrn_prefix(&self, b: &[u8], i: usize) -> Option<(usize, usize)> {
        for prefix in &self.mrn_prefixes {
            let Some(candidate) = b.get(i..i + prefix.len()) else {
                continue;
            };
            if !candidate.eq_ignore_ascii_case(prefix) {
                continue;
            }
            let mut j = i + prefix.len();
            let mut seps = 0;
            while j < b.len() && seps < 3 && matches!(b[j], b':' | b'#' | b'=' | b' ' | b'\t') {
                j += 1;
                seps += 1;
            }
            if seps == 0 && j < b.len() && !b[j].is_ascii_digit() {
                continue; // "MRNs", "patient identity": a longer word
            }
            let start = j;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'-' | b'_' | b'/' | b'.'))
            {
                j += 1;
            }
            while j > start && matches!(b[j - 1], b'-' | b'_' | b'/' | b'.') {
                j -= 1;
            }
            if j > start && b[start..j].iter().any(u8::is_ascii_digit) {
                return Some((start, j));
            }
        }
        None
    }

    /// Length of the leading timestamp to keep (0 if none).
    fn leading_len(&self, b: &[u8]) -> usize {
        match &self.leading {
            Leading::Off => 0,
            Leading::Auto => auto_timestamp_len(b),
            Leading::Template(items) => {
                let matches = b.len() >= items.len()
                    && items.iter().zip(b).all(|(item, &byte)| match item {
                        None => byte.is_ascii_digit(),
                        Some(lit) => *lit == byte,
                    });
                if matches {
                    items.len()
                } else {
                    0
                }
            }
        }
    }
}

/// Hands out the set only when there is something in it (an empty set needs no hashing).
fn live_set(set: Option<&NameSet>) -> Option<&NameSet> {
    set.filter(|s| !s.stamps.is_empty())
}

impl Sanitized {
    /// The only constructor of a log record: scrubs the file name and every line with
    /// `rules` first.
    pub(crate) fn log_lines(
        rules: &FreeTextRules,
        device: &DeviceIdentity,
        file: &str,
        lines: Vec<String>,
    ) -> Result<Sanitized, PhiError> {
        let guard = rules.names_guard();
        let names = live_set(guard.as_deref());
        let mut scrubbed = Vec::with_capacity(lines.len());
        for line in &lines {
            let mut out = String::with_capacity(line.len() + 8);
            rules.scrub_with(names, line, &mut out);
            scrubbed.push(out);
        }
        let mut file_name = String::with_capacity(file.len());
        rules.scrub_with(names, file, &mut file_name);
        drop(guard);
        Sanitized::from_body(&RecordBody::LogLines(LogBatch {
            device: device.clone(),
            file: file_name,
            lines: scrubbed,
        }))
    }
}

// ----- character classes and small matchers (all bounded look-ahead) -----

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// A byte of an e-mail local part. Bytes of non-ASCII characters count (internationalised
/// addresses, RFC 6531): a run of them always ends on a character boundary.
fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-') || c >= 0x80
}

fn skip_alnum(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_alphanumeric() {
        i += 1;
    }
    i
}

fn digit_run(b: &[u8], i: usize) -> usize {
    b[i..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Exactly `n` digits at `i` (not followed by another digit): their value and the end.
fn digits_exact(b: &[u8], i: usize, n: usize) -> Option<(u32, usize)> {
    let digits = b.get(i..i + n)?;
    if !digits.iter().all(u8::is_ascii_digit) || b.get(i + n).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    Some((
        digits
            .iter()
            .fold(0u32, |v, d| v * 10 + u32::from(d - b'0')),
        i + n,
    ))
}

/// One or two digits at `i` (not followed by a third).
fn digits_1_2(b: &[u8], i: usize) -> Option<(u32, usize)> {
    digits_exact(b, i, 2).or_else(|| digits_exact(b, i, 1))
}

/// A match may end at `j`: not followed by a letter or digit, nor by `.`/`-`/`/` and a
/// digit (part of a longer numeric structure).
fn ends_token(b: &[u8], j: usize) -> bool {
    match b.get(j) {
        None => true,
        Some(c) if c.is_ascii_alphanumeric() => false,
        Some(b'.' | b'-' | b'/') => !b.get(j + 1).is_some_and(u8::is_ascii_digit),
        Some(_) => true,
    }
}

fn plausible_year(y: u32) -> bool {
    (1800..=2199).contains(&y)
}

/// The date forms of the module documentation; a date may also be followed by `T` and a
/// digit (ISO 8601 date-time).
fn match_date(b: &[u8], i: usize) -> Option<usize> {
    let date_end_ok = |j: usize| {
        ends_token(b, j)
            || (b.get(j) == Some(&b'T') && b.get(j + 1).is_some_and(u8::is_ascii_digit))
    };
    // Year first.
    if let Some((y, j)) = digits_exact(b, i, 4) {
        let sep = *b.get(j)?;
        if matches!(sep, b'-' | b'/' | b'.') {
            let (m, j2) = digits_1_2(b, j + 1)?;
            if b.get(j2) == Some(&sep) {
                let (d, j3) = digits_1_2(b, j2 + 1)?;
                if plausible_year(y)
                    && (1..=12).contains(&m)
                    && (1..=31).contains(&d)
                    && date_end_ok(j3)
                {
                    return Some(j3);
                }
            }
        }
        return None;
    }
    // Day or month first.
    let (a, j) = digits_1_2(b, i)?;
    let sep = *b.get(j)?;
    if !matches!(sep, b'-' | b'/' | b'.') {
        return None;
    }
    let (m, j2) = digits_1_2(b, j + 1)?;
    if b.get(j2) != Some(&sep) {
        return None;
    }
    let (y, j3) = digits_exact(b, j2 + 1, 4)?;
    let day_month = (1..=31).contains(&a) && (1..=12).contains(&m);
    let month_day = (1..=12).contains(&a) && (1..=31).contains(&m);
    (plausible_year(y) && (day_month || month_day) && date_end_ok(j3)).then_some(j3)
}

/// `YYYYMMDD`, `YYYYMMDDhhmm` or `YYYYMMDDhhmmss` with plausible values.
fn compact_date(digits: &[u8]) -> bool {
    let num = |r: std::ops::Range<usize>| {
        digits
            .get(r)
            .map(|d| d.iter().fold(0u32, |v, c| v * 10 + u32::from(c - b'0')))
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(4..6), num(6..8)) else {
        return false;
    };
    if !(plausible_year(y) && (1..=12).contains(&m) && (1..=31).contains(&d)) {
        return false;
    }
    match digits.len() {
        8 => true,
        12 | 14 => {
            num(8..10).is_some_and(|h| h <= 23)
                && num(10..12).is_some_and(|mi| mi <= 59)
                && (digits.len() == 12 || num(12..14).is_some_and(|s| s <= 60))
        }
        _ => false,
    }
}

fn match_ssn(b: &[u8], i: usize) -> Option<usize> {
    let (_, j) = digits_exact(b, i, 3)?;
    if b.get(j) != Some(&b'-') {
        return None;
    }
    let (_, j) = digits_exact(b, j + 1, 2)?;
    if b.get(j) != Some(&b'-') {
        return None;
    }
    let (_, j) = digits_exact(b, j + 1, 4)?;
    ends_token(b, j).then_some(j)
}

fn match_ipv4(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for octet in 0..4 {
        if octet > 0 {
            if b.get(j) != Some(&b'.') {
                return None;
            }
            j += 1;
        }
        let run = b
            .get(j..)
            .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count());
        if !(1..=3).contains(&run) {
            return None;
        }
        let value = b[j..j + run]
            .iter()
            .fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
        if value > 255 {
            return None;
        }
        j += run;
    }
    ends_token(b, j).then_some(j)
}

/// IPv6 with `::` or eight groups, validated by the standard parser. `i` is at a char
/// boundary of `line`.
fn match_ipv6(line: &str, i: usize) -> Option<usize> {
    let b = line.as_bytes();
    if i > 0 && b[i - 1] == b':' {
        return None;
    }
    let run = b[i..]
        .iter()
        .take(46)
        .take_while(|c| c.is_ascii_hexdigit() || **c == b':' || **c == b'.')
        .count();
    let mut end = i + run;
    while end > i && matches!(b[end - 1], b'.' | b':') && !line[i..end].ends_with("::") {
        end -= 1;
    }
    let candidate = line.get(i..end)?;
    let colons = candidate.bytes().filter(|c| *c == b':').count();
    if !(candidate.contains("::") || colons == 7) || !candidate.bytes().any(|c| c.is_ascii_digit())
    {
        return None;
    }
    if b.get(end).is_some_and(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    candidate.parse::<Ipv6Addr>().ok().map(|_| end)
}

/// The phone forms of the module documentation, at `i` (a digit, `(` or `+`).
fn match_phone(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        b'(' => {
            let (_, j) = digits_exact(b, i + 1, 3)?;
            if b.get(j) != Some(&b')') {
                return None;
            }
            let mut j = j + 1;
            if b.get(j) == Some(&b' ') {
                j += 1;
            }
            let (_, j) = digits_exact(b, j, 3)?;
            if !matches!(b.get(j), Some(b'-' | b'.' | b' ')) {
                return None;
            }
            let (_, j) = digits_exact(b, j + 1, 4)?;
            ends_token(b, j).then_some(j)
        }
        b'+' => {
            let mut j = i + 1;
            let mut total = 0usize;
            let mut groups = 0usize;
            let mut end = None;
            loop {
                let mut k = j;
                let paren = b.get(k) == Some(&b'(');
                if paren {
                    k += 1;
                }
                let run = b
                    .get(k..)
                    .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count());
                if run == 0 || run > 8 {
                    break;
                }
                k += run;
                if paren {
                    if b.get(k) != Some(&b')') {
                        break;
                    }
                    k += 1;
                }
                total += run;
                groups += 1;
                end = Some(k);
                if total > 15 || groups > 6 {
                    return None;
                }
                match (b.get(k), b.get(k + 1)) {
                    (Some(b' ' | b'-' | b'.'), Some(n)) if n.is_ascii_digit() || *n == b'(' => {
                        j = k + 1;
                    }
                    (Some(b'('), _) => j = k,
                    _ => break,
                }
            }
            let end = end?;
            ((8..=15).contains(&total) && ends_token(b, end)).then_some(end)
        }
        _ => {
            let (_, j) = digits_exact(b, i, 3)?;
            let sep = *b.get(j)?;
            if !matches!(sep, b'-' | b'.') {
                return None;
            }
            // ddd-dddd
            if sep == b'-' {
                if let Some((_, k)) = digits_exact(b, j + 1, 4) {
                    if ends_token(b, k) {
                        return Some(k);
                    }
                }
            }
            // ddd-ddd-dddd
            let (_, j2) = digits_exact(b, j + 1, 3)?;
            if b.get(j2) != Some(&sep) {
                return None;
            }
            let (_, j3) = digits_exact(b, j2 + 1, 4)?;
            ends_token(b, j3).then_some(j3)
        }
    }
}

/// `local@domain.tld` starting at `i`: `Ok(end)`, or `Err(end of the local-part run)` so
/// the caller does not scan the same run again.
fn match_email(b: &[u8], i: usize) -> Result<usize, usize> {
    let local_end = i + b[i..].iter().take_while(|c| is_local_char(**c)).count();
    if local_end == i || b.get(local_end) != Some(&b'@') || b[i] == b'.' {
        return Err(local_end.max(i + 1));
    }
    let start = local_end + 1;
    let mut j = start;
    while j < b.len()
        && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'-' | b'.') || b[j] >= 0x80)
    {
        j += 1;
    }
    while j > start && matches!(b[j - 1], b'.' | b'-') {
        j -= 1;
    }
    let domain = &b[start..j];
    let Some(last_dot) = domain.iter().rposition(|c| *c == b'.') else {
        return Err(local_end.max(i + 1));
    };
    let tld = &domain[last_dot + 1..];
    if last_dot == 0 || tld.len() < 2 || !tld.iter().all(|c| c.is_ascii_alphabetic() || *c >= 0x80)
    {
        return Err(local_end.max(i + 1));
    }
    Ok(j)
}

/// End of the word (letters, inner apostrophes) starting at `i`; `i` if none starts there.
fn word_end(line: &str, i: usize) -> usize {
    let b = line.as_bytes();
    let letter_at = |j: usize| -> Option<usize> {
        let c = *b.get(j)?;
        if c.is_ascii_alphabetic() {
            return Some(1);
        }
        if c < 0x80 {
            return None;
        }
        let ch = line.get(j..)?.chars().next()?;
        ch.is_alphabetic().then(|| ch.len_utf8())
    };
    let mut j = i;
    loop {
        if let Some(n) = letter_at(j) {
            j += n;
            continue;
        }
        if j > i {
            let apostrophe = if b.get(j) == Some(&b'\'') {
                1
            } else if line.get(j..).is_some_and(|s| s.starts_with('\u{2019}')) {
                3
            } else {
                0
            };
            if apostrophe > 0 && letter_at(j + apostrophe).is_some() {
                j += apostrophe;
                continue;
            }
        }
        return j;
    }
}

/// Calls `f` for every word of `text` as the scanner sees words: letter runs with inner
/// apostrophes, not touching a digit.
fn for_each_word(text: &str, mut f: impl FnMut(&str)) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let end = word_end(text, i);
        if end == i {
            i += text
                .get(i..)
                .and_then(|s| s.chars().next())
                .map_or(1, char::len_utf8);
            continue;
        }
        let touches_digit =
            (i > 0 && b[i - 1].is_ascii_digit()) || b.get(end).is_some_and(u8::is_ascii_digit);
        if !touches_digit {
            if let Some(word) = text.get(i..end) {
                f(word);
            }
        }
        i = end;
    }
}

/// Length of a recognised leading timestamp (see the module documentation), else 0.
fn auto_timestamp_len(b: &[u8]) -> usize {
    let mut j = 0;
    // Syslog <PRI> and RFC 5424 version.
    if b.first() == Some(&b'<') {
        let digits = digit_run(b, 1);
        if (1..=3).contains(&digits) && b.get(1 + digits) == Some(&b'>') {
            j = 2 + digits;
            if b.get(j) == Some(&b'1') && b.get(j + 1) == Some(&b' ') {
                j += 2;
            }
        }
    }
    let bracket = b.get(j) == Some(&b'[');
    if bracket {
        j += 1;
    }
    let close = |k: usize| {
        if bracket && b.get(k) == Some(&b']') {
            k + 1
        } else {
            k
        }
    };
    // Unix time.
    let run = b
        .get(j..)
        .map_or(0, |s| s.iter().take_while(|c| c.is_ascii_digit()).count());
    if run == 10 || run == 13 {
        let mut k = j + run;
        if b.get(k) == Some(&b'.') && b.get(k + 1).is_some_and(u8::is_ascii_digit) {
            k += 1 + digit_run(b, k + 1);
        }
        return if b.get(k).is_some_and(u8::is_ascii_alphanumeric) {
            0
        } else {
            close(k)
        };
    }
    // Date and time.
    let Some(mut k) = match_date(b, j) else {
        return 0;
    };
    if !matches!(b.get(k), Some(b'T' | b' ' | b'_')) {
        return 0;
    }
    k += 1;
    let two = |k: usize| digits_exact(b, k, 2).map(|(_, e)| e);
    let Some(e) = two(k) else { return 0 };
    if b.get(e) != Some(&b':') {
        return 0;
    }
    let Some(e) = two(e + 1) else { return 0 };
    k = e;
    if b.get(k) == Some(&b':') {
        if let Some(e) = two(k + 1) {
            k = e;
        }
    }
    if matches!(b.get(k), Some(b'.' | b',')) && b.get(k + 1).is_some_and(u8::is_ascii_digit) {
        k += 1 + digit_run(b, k + 1);
    }
    match b.get(k) {
        Some(b'Z') => k += 1,
        Some(b'+' | b'-') => {
            if let Some(e) = two(k + 1) {
                k = e;
                if b.get(k) == Some(&b':') {
                    if let Some(e) = two(k + 1) {
                        k = e;
                    }
                } else if let Some(e) = two(k) {
                    k = e;
                }
            }
        }
        _ => {}
    }
    close(k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key() -> PseudonymKey {
        PseudonymKey::from_bytes(&[7; 32])
    }

    fn rules_with(config: FreeTextConfig) -> FreeTextRules {
        FreeTextRules::new(&config, Arc::new(NameTokens::new(&key(), 1000))).unwrap()
    }

    fn rules() -> FreeTextRules {
        rules_with(FreeTextConfig::default())
    }

    fn scrub(r: &FreeTextRules, line: &str) -> String {
        let mut out = String::new();
        r.scrub_line(line, &mut out);
        out
    }

    #[track_caller]
    fn check(r: &FreeTextRules, input: &str, expected: &str) {
        assert_eq!(scrub(r, input), expected, "input: {input:?}");
    }

    #[test]
    fn emails() {
        let r = rules();
        check(
            &r,
            "mail jane.doe+x@mail.example.org now",
            "mail [EMAIL] now",
        );
        check(&r, "<a_b@x.co>", "<[EMAIL]>");
        check(&r, "user=j@h.io.", "user=[EMAIL].");
        check(
            &r,
            "nurse.jürgen@klinik.example.de, ärztin@bücher.de",
            "[EMAIL], [EMAIL]",
        );
        check(
            &r,
            "not an address: a@b, x@localhost, @home",
            "not an address: a@b, x@localhost, @home",
        );
    }

    #[test]
    fn phones() {
        let r = rules();
        check(
            &r,
            "call (555) 123-4567 or 555-123-4567",
            "call [PHONE] or [PHONE]",
        );
        check(
            &r,
            "ext 555.123.4567; local 555-0100.",
            "ext [PHONE]; local [PHONE].",
        );
        check(
            &r,
            "intl +1 555 123 4567, +49 30 1234567, +44 (20) 7946 0958",
            "intl [PHONE], [PHONE], [PHONE]",
        );
        check(
            &r,
            "not phones: 555-0100-7 +12 12:30 120/80",
            "not phones: 555-0100-7 +12 12:30 120/80",
        );
    }

    #[test]
    fn ssn() {
        let r = rules();
        check(&r, "ssn 123-45-6789.", "ssn [SSN].");
        check(
            &r,
            "not 123-45-67890 or 1234-56-7890",
            "not 123-45-67890 or 1234-56-7890",
        );
    }

    #[test]
    fn mrn_digit_runs_and_prefixes() {
        let r = rules();
        check(&r, "record 1234567 opened", "record [MRN] opened");
        check(&r, "short 12345 kept", "short 12345 kept");
        check(
            &r,
            "MRN: A-12345, mrn#778 MRN12",
            "MRN: [MRN], mrn#[MRN] MRN[MRN]",
        );
        check(&r, "Patient ID = XZ99 ok", "Patient ID = [MRN] ok");
        check(&r, "MRN missing; MRNs unknown", "MRN missing; MRNs unknown");
        check(
            &r,
            "value 3.14159265 and 1234567.5 kept",
            "value 3.14159265 and 1234567.5 kept",
        );
        let off = rules_with(FreeTextConfig {
            mrn_min_digits: 0,
            ..FreeTextConfig::default()
        });
        check(&off, "record 1234567 opened", "record 1234567 opened");
    }

    #[test]
    fn dates_are_redacted_but_the_leading_timestamp_is_kept() {
        let r = rules();
        check(
            &r,
            "2025-03-04 10:11:12.345 INFO dob 1970-01-31, admitted 03/04/2025, born 31.01.1970",
            "2025-03-04 10:11:12.345 INFO dob [DATE], admitted [DATE], born [DATE]",
        );
        check(
            &r,
            "[2025-03-04T10:11:12Z] event at 2025-03-04T09:00:00Z",
            "[2025-03-04T10:11:12Z] event at [DATE]T09:00:00Z",
        );
        check(
            &r,
            "<34>1 2025-03-04T10:11:12.1+01:00 host app: dob 1/2/1970",
            "<34>1 2025-03-04T10:11:12.1+01:00 host app: dob [DATE]",
        );
        check(
            &r,
            "1735732800.123 boot, HL7 dob 19700131",
            "1735732800.123 boot, HL7 dob [DATE]",
        );
        check(
            &r,
            "31/12/1970 starts with a bare date",
            "[DATE] starts with a bare date",
        );
        check(
            &r,
            "no dates: 2.4.1 v1.2.2 13/13/2020 2025-13-01 12:30:45",
            "no dates: 2.4.1 v1.2.2 13/13/2020 2025-13-01 12:30:45",
        );
        let template = rules_with(FreeTextConfig {
            leading_timestamp_format: Some("DD.MM.YYYY hh:mm".into()),
            ..FreeTextConfig::default()
        });
        check(
            &template,
            "04.03.2025 10:11 dob 31.01.1970",
            "04.03.2025 10:11 dob [DATE]",
        );
        check(
            &template,
            "2025-03-04 10:11 other shape",
            "[DATE] 10:11 other shape",
        );
        let no_keep = rules_with(FreeTextConfig {
            keep_leading_timestamp: false,
            ..FreeTextConfig::default()
        });
        check(&no_keep, "2025-03-04 10:11:12 x", "[DATE] 10:11:12 x");
    }

    #[test]
    fn ip_addresses_only_when_configured() {
        let off = rules();
        check(&off, "from 10.1.2.3:2575", "from 10.1.2.3:2575");
        let on = rules_with(FreeTextConfig {
            ip_addresses: true,
            ..FreeTextConfig::default()
        });
        check(
            &on,
            "from 10.1.2.3:2575 and fe80::1 and ::1.",
            "from [IP]:2575 and [IP] and [IP].",
        );
        check(&on, "2001:db8:0:0:0:0:2:1 up", "[IP] up");
        check(
            &on,
            "not: 1.2.3.4.5 300.1.1.1 12:30:45 00:11:22:33:44:55 std::io",
            "not: 1.2.3.4.5 300.1.1.1 12:30:45 00:11:22:33:44:55 std::io",
        );
    }

    #[test]
    fn false_positive_guards() {
        let r = rules_with(FreeTextConfig {
            ip_addresses: true,
            ..FreeTextConfig::default()
        });
        for line in [
            "firmware 2.4.1 build 0x7f3a9c12 id deadbeef12345678",
            "SpO2 97 HR 72 NIBP 120/80 (93) Temp 36.8",
            "uuid 3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "MDC_PULS_OXIM_SAT_O2 15045^MDC_PULS_OXIM_SAT_O2",
            "v1.2.3.4.5 1.2.3.4.5 300.1.1.1",
            "alarm ack by user at bed 12 after 30 s",
        ] {
            check(&r, line, line);
        }
    }

    #[test]
    fn learned_names_are_redacted_case_insensitively() {
        let r = rules();
        r.name_tokens()
            .learn(["DOE", "JANE", "O'BRIEN", "SMITH-JONES", "MÜLLER", "X"]);
        check(
            &r,
            "2025-03-04 10:11:12 patient Jane DOE (doe's chart), o'brien, Smith-Jones, müller",
            "2025-03-04 10:11:12 patient [NAME] [NAME] ([NAME] chart), [NAME], [NAME]-[NAME], [NAME]",
        );
        check(
            &r,
            "Janet Doerr and x are not names",
            "Janet Doerr and x are not names",
        );
        check(
            &r,
            "DOE2 and 2doe are tokens with digits",
            "DOE2 and 2doe are tokens with digits",
        );
        let off = rules_with(FreeTextConfig {
            names: false,
            ..FreeTextConfig::default()
        });
        off.name_tokens().learn(["DOE"]);
        check(&off, "Doe", "Doe");
    }

    #[test]
    fn name_set_holds_no_plaintext_and_round_trips() {
        let names = NameTokens::new(&key(), 1000);
        names.learn(["DOE^JANE", "Mustermann"]);
        assert_eq!(names.len(), 3);
        assert!(names.contains("jane") && names.contains("MUSTERMANN"));
        assert!(!names.contains("john"));
        let bytes = names.export();
        for plain in ["DOE", "doe", "JANE", "jane", "Mustermann", "mustermann"] {
            assert!(
                !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
                "{plain} in export"
            );
        }
        assert!(!format!("{names:?}").contains("JANE"));

        let restored = NameTokens::new(&key(), 1000);
        assert_eq!(restored.import(&bytes).unwrap(), 3);
        assert!(restored.contains("Doe"));
        let other_key = NameTokens::new(&PseudonymKey::from_bytes(&[8; 32]), 1000);
        assert_eq!(other_key.import(&bytes), Err(NameTokensError::OtherKey));
        assert!(!other_key.contains("Doe"), "hashes are keyed");
        assert!(matches!(
            restored.import(b"junk"),
            Err(NameTokensError::Format(_))
        ));
        let mut truncated = bytes.clone();
        truncated.pop();
        assert!(matches!(
            restored.import(&truncated),
            Err(NameTokensError::Format(_))
        ));
    }

    #[test]
    fn name_set_evicts_the_token_learned_longest_ago() {
        let names = NameTokens::new(&key(), 4);
        names.learn(["aa", "bb", "cc", "dd"]);
        names.learn(["dd"]); // learned just now: no refresh (no write lock) needed
        names.learn(["ee"]);
        assert_eq!(names.len(), 4);
        assert!(!names.contains("aa"));
        assert!(names.contains("bb") && names.contains("ee"));
        // A token that is about to go is refreshed by re-learning it.
        names.learn(["bb"]);
        names.learn(["ff"]);
        assert!(names.contains("bb"));
        assert!(!names.contains("cc"));
        for i in 0..1000 {
            names.learn([format!("tok{}", char::from(b'a' + (i % 26) as u8)).repeat(2)]);
        }
        assert!(names.len() <= 4);
    }

    #[test]
    fn log_record_is_scrubbed_including_the_file_name() {
        let r = rules();
        r.name_tokens().learn(["DOE"]);
        let device = DeviceIdentity {
            id: "ct-2".into(),
            application: None,
            eui64: None,
        };
        let s = r
            .sanitize_log_lines(
                &device,
                "doe.log",
                vec!["2025-01-01 10:00:00 Doe called 555-123-4567".into()],
            )
            .unwrap();
        assert_eq!(s.priority(), wardgate_proto::Priority::Log);
        assert_eq!(s.device(), "ct-2");
        let body: RecordBody = serde_json::from_slice(s.payload()).unwrap();
        let RecordBody::LogLines(batch) = body else {
            panic!("kind")
        };
        assert_eq!(batch.file, "[NAME].log");
        assert_eq!(batch.lines, ["2025-01-01 10:00:00 [NAME] called [PHONE]"]);
    }

    #[cfg(feature = "logfile")]
    #[test]
    fn chunk_becomes_record_and_scrubbed_checkpoint() {
        use wardgate_device_adapters::logfile::{FileCheckpoint, Position};
        let r = rules();
        r.name_tokens().learn(["DOE"]);
        let device = DeviceIdentity {
            id: "ct-2".into(),
            application: None,
            eui64: None,
        };
        let checkpoint = Checkpoint {
            files: vec![FileCheckpoint {
                dev: 1,
                ino: 2,
                created_ns: None,
                name: "DOE_1970-01-01.log".into(),
                position: Position {
                    offset: 10,
                    discarding: false,
                },
            }],
        };
        let out = r
            .sanitize_chunk(
                &device,
                LogChunk {
                    file: "DOE_1970-01-01.log".into(),
                    lines: vec!["x".into()],
                    checkpoint: checkpoint.clone(),
                },
            )
            .unwrap();
        let text = String::from_utf8(out.checkpoint).unwrap();
        assert!(!text.contains("DOE") && !text.contains("1970"), "{text}");
        let restored: Checkpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(restored.files[0].position.offset, 10);
        let record = out.record.unwrap();
        assert!(!String::from_utf8_lossy(record.payload()).contains("DOE"));

        let only = r
            .sanitize_chunk(
                &device,
                LogChunk {
                    file: String::new(),
                    lines: vec![],
                    checkpoint,
                },
            )
            .unwrap();
        assert!(only.record.is_none());
    }

    #[test]
    fn hostile_input_never_panics() {
        let r = rules_with(FreeTextConfig {
            ip_addresses: true,
            ..FreeTextConfig::default()
        });
        r.name_tokens().learn(["DOE"]);
        let samples = [
            "",
            "@",
            "@@@",
            "a@",
            "+",
            "(",
            "((((",
            "::",
            ":::::::",
            "1-",
            "12/",
            "2024-",
            "2024-01-",
            "é",
            "ü@ü.ü",
            "ß'",
            "'a",
            "a'",
            "MRN",
            "MRN:",
            "MRN: ",
            "+(1)",
            "\u{2019}x",
            "x\u{2019}",
            "𝔡𝔬𝔢 😀 doe😀doe",
            "٣٤٥٦٧٨٩ digits",
            "a.b.c.d@e.f.gg",
            "[",
            "<1>",
            "<999>1 x",
        ];
        for s in samples {
            let out = scrub(&r, s);
            assert!(out.len() <= s.len() * 8 + 8);
        }
        let long = "1".repeat(10_000) + &"a@".repeat(5_000) + &"+1 ".repeat(3000);
        let _ = scrub(&r, &long);
    }

    #[test]
    fn config_parses_and_validates() {
        let c: FreeTextConfig = toml::from_str("").unwrap();
        assert_eq!(c, FreeTextConfig::default());
        c.validate().unwrap();
        let c: FreeTextConfig = toml::from_str(
            "ip_addresses = true\nmrn_min_digits = 8\nmrn_prefixes = [\"MRN\", \"Fall-Nr\"]\nleading_timestamp_format = \"YYYY-MM-DD hh:mm:ss\"",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<FreeTextConfig>("ips = true").is_err());
        for (bad, key) in [
            (
                FreeTextConfig {
                    mrn_min_digits: 2,
                    ..FreeTextConfig::default()
                },
                "mrn_min_digits",
            ),
            (
                FreeTextConfig {
                    mrn_prefixes: vec!["".into()],
                    ..FreeTextConfig::default()
                },
                "mrn_prefixes",
            ),
            (
                FreeTextConfig {
                    leading_timestamp_format: Some("abc".into()),
                    ..FreeTextConfig::default()
                },
                "leading_timestamp_format",
            ),
            (
                FreeTextConfig {
                    name_token_capacity: 0,
                    ..FreeTextConfig::default()
                },
                "name_token_capacity",
            ),
        ] {
            assert!(bad.validate().unwrap_err().starts_with(key));
        }
    }
}
