//! Per-device log-file configuration: the typed form of a device's `[logfile]` section.
//!
//! The doc comment of every key is the user documentation. Unknown keys are rejected (a
//! typo must not silently fall back to a default). Parsing only checks types;
//! [`LogFileConfig::validate`] checks everything else and names the offending key, and the
//! driver refuses to start a device whose config does not validate.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::glob::Glob;

/// Smallest accepted `max_line_bytes`.
pub const MIN_LINE_BYTES: usize = 256;
/// Largest accepted `max_line_bytes`. Together with the chunk size cap
/// ([`super::CHUNK_MAX_TEXT_BYTES`]) this keeps every batch far below the spool's record
/// size limit, whatever the content.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest accepted `batch_max_lines`.
pub const MAX_BATCH_LINES: usize = 10_000;

/// Where to start in files that exist when a device is followed for the very first time
/// (no checkpoint stored yet). Files that appear later are always read from their start,
/// and after a restart reading resumes from the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// Ship the files' existing content too.
    Beginning,
    /// Ship only what is written from now on (the first line may then be the tail of a
    /// line that was being written).
    #[default]
    End,
}

/// Follow the log files of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFileConfig {
    /// Directory holding the device's log files, e.g. `"/srv/devices/ct-2/logs"`. Only its
    /// regular files are read: sub-directories and symbolic links are ignored (a link
    /// could point anywhere on the gateway, e.g. at a secret).
    pub directory: PathBuf,
    /// Which files of `directory` to follow, by name: `*` matches any run of characters,
    /// `?` one character, `[abc]` / `[a-z]` / `[!a-z]` one of (or none of) a set. A file
    /// that is rotated to a name the pattern does not match (`app.log` → `app.log.1`) is
    /// still read to its end.
    #[serde(default = "default_glob")]
    pub glob: String,
    /// Longest line kept, in bytes (256–65536). A longer line is cut at this length, ends
    /// with the marker `[TRUNCATED]`, and the rest of it up to the next line break is
    /// skipped; memory per file stays bounded whatever a device writes.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Most lines in one batch (one record; 1–10000). Batches are also cut at about
    /// 1 MiB of text.
    #[serde(default = "default_batch_max_lines")]
    pub batch_max_lines: usize,
    /// Longest time a complete line waits for its batch to fill, in milliseconds.
    #[serde(default = "default_batch_max_delay_ms")]
    pub batch_max_delay_ms: u64,
    /// How often the directory is listed even when no change was notified, in
    /// milliseconds (100–600000). File-change notifications wake the follower at once, but
    /// they can be missed (network file systems, overflowing event queues): this poll is
    /// the safety net.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A last line without its line break is held until the break arrives; after it has
    /// not grown for this many milliseconds it is shipped as it is (its continuation, if
    /// any, becomes the next line). `0` holds it until the break arrives or the file is
    /// rotated away or truncated.
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// Where to start in files that exist when the device is followed for the very first
    /// time: `"end"` (default) or `"beginning"`.
    #[serde(default)]
    pub start_at: StartAt,
}

fn default_glob() -> String {
    "*.log".to_owned()
}
const fn default_max_line_bytes() -> usize {
    16 * 1024
}
const fn default_batch_max_lines() -> usize {
    500
}
const fn default_batch_max_delay_ms() -> u64 {
    1_000
}
const fn default_poll_interval_ms() -> u64 {
    2_000
}
const fn default_idle_flush_ms() -> u64 {
    5_000
}

impl LogFileConfig {
    /// A config with every default and the given directory.
    #[must_use]
    pub fn new(directory: PathBuf) -> Self {
        LogFileConfig {
            directory,
            glob: default_glob(),
            max_line_bytes: default_max_line_bytes(),
            batch_max_lines: default_batch_max_lines(),
            batch_max_delay_ms: default_batch_max_delay_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            idle_flush_ms: default_idle_flush_ms(),
            start_at: StartAt::default(),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    /// A sentence naming the offending key and why it is refused.
    pub fn validate(&self) -> Result<(), String> {
        if self.directory.as_os_str().is_empty() {
            return Err("directory: must not be empty".into());
        }
        if !self.directory.is_absolute() {
            return Err(format!(
                "directory: {} is not an absolute path",
                self.directory.display()
            ));
        }
        Glob::new(&self.glob).map_err(|reason| format!("glob: {reason}"))?;
        if !(MIN_LINE_BYTES..=MAX_LINE_BYTES).contains(&self.max_line_bytes) {
            return Err(format!(
                "max_line_bytes: must be {MIN_LINE_BYTES}–{MAX_LINE_BYTES}, is {}",
                self.max_line_bytes
            ));
        }
        if !(1..=MAX_BATCH_LINES).contains(&self.batch_max_lines) {
            return Err(format!(
                "batch_max_lines: must be 1–{MAX_BATCH_LINES}, is {}",
                self.batch_max_lines
            ));
        }
        if self.batch_max_delay_ms > 600_000 {
            return Err(format!(
                "batch_max_delay_ms: must be at most 600000 (10 minutes), is {}",
                self.batch_max_delay_ms
            ));
        }
        if !(100..=600_000).contains(&self.poll_interval_ms) {
            return Err(format!(
                "poll_interval_ms: must be 100–600000, is {}",
                self.poll_interval_ms
            ));
        }
        if self.idle_flush_ms > 86_400_000 {
            return Err(format!(
                "idle_flush_ms: must be at most 86400000 (one day), is {}",
                self.idle_flush_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c: LogFileConfig = toml::from_str(r#"directory = "/var/log/device""#).unwrap();
        assert_eq!(c, LogFileConfig::new("/var/log/device".into()));
        c.validate().unwrap();
        assert_eq!(c.start_at, StartAt::End);
    }

    #[test]
    fn every_key_parses() {
        let c: LogFileConfig = toml::from_str(
            r#"
            directory = "/d"
            glob = "app*.txt"
            max_line_bytes = 1024
            batch_max_lines = 10
            batch_max_delay_ms = 50
            poll_interval_ms = 100
            idle_flush_ms = 0
            start_at = "beginning"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.start_at, StartAt::Beginning);
        assert_eq!(c.glob, "app*.txt");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<LogFileConfig>("directory = \"/d\"\nglobb = \"x\"").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = LogFileConfig::new("/d".into());
        let cases: Vec<(LogFileConfig, &str)> = vec![
            (LogFileConfig::new("rel/dir".into()), "directory"),
            (
                LogFileConfig {
                    glob: "a/b".into(),
                    ..base.clone()
                },
                "glob",
            ),
            (
                LogFileConfig {
                    glob: "[ab".into(),
                    ..base.clone()
                },
                "glob",
            ),
            (
                LogFileConfig {
                    max_line_bytes: 10,
                    ..base.clone()
                },
                "max_line_bytes",
            ),
            (
                LogFileConfig {
                    batch_max_lines: 0,
                    ..base.clone()
                },
                "batch_max_lines",
            ),
            (
                LogFileConfig {
                    poll_interval_ms: 5,
                    ..base.clone()
                },
                "poll_interval_ms",
            ),
        ];
        for (config, key) in cases {
            let reason = config.validate().unwrap_err();
            assert!(reason.starts_with(key), "{reason}");
        }
    }
}
