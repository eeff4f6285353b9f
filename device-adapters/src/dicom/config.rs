//! The DICOM receiver's configuration: the typed form of the gateway's `[dicom]` section.
//!
//! The doc comment of every key is the user documentation. Unknown keys are rejected (a
//! typo must not silently fall back to a default). Parsing only checks types;
//! [`DicomScpConfig::validate`] checks everything else and names the offending key, and
//! [`serve`](super::serve) refuses to start with a configuration that does not validate.
//!
//! Example:
//! ```toml
//! listen = "0.0.0.0:11112"
//! ae_title = "WARDGATE"
//! temp_dir = "/var/lib/wardgate/dicom-incoming"
//! max_object_bytes = 2147483648
//!
//! [[callers]]
//! ae_title = "CT_SCANNER_1"
//! sources = ["10.20.0.31"]
//!
//! [[callers]]
//! ae_title = "US_CART_3"
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

/// Longest AE title the standard allows, in characters.
pub const MAX_AE_TITLE_LEN: usize = 16;
/// Smallest PDU length we advertise (a smaller one makes every object thousands of PDUs).
pub const MIN_PDU_LENGTH: u32 = 4_096;
/// Largest PDU length we advertise. It bounds the memory one association holds: one PDU
/// is read whole before its fragments go to disk.
pub const MAX_PDU_LENGTH: u32 = 16 * 1024 * 1024;
/// Most associations that may be configured (each holds a file and up to two PDUs).
pub const MAX_ASSOCIATIONS: usize = 1_024;

/// The DICOM C-STORE SCP (storage receiver).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomScpConfig {
    /// Address and port to listen on, e.g. `"0.0.0.0:11112"`. DICOM's registered port is
    /// 104 (privileged); 11112 is the customary unprivileged alternative.
    pub listen: SocketAddr,
    /// Our AE title: the *called* AE title an association must name, exactly (after the
    /// padding spaces), 1–16 characters, printable ASCII without a backslash. Configure the
    /// same string on every modality that sends here.
    pub ae_title: String,
    /// The modalities allowed to store here, by their *calling* AE title, each optionally
    /// tied to source addresses. An association from any other AE title, or from an
    /// address not listed for its AE title, is rejected ("calling AE title not
    /// recognized").
    pub callers: Vec<CallerConfig>,
    /// Most associations served at once. A further association request is rejected as
    /// "temporarily: local limit exceeded", which modalities retry later.
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Largest object (data set, in bytes as sent) accepted. A larger object is received
    /// to its end but discarded, and answered with status 0xA700 (out of resources).
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Directory for objects being received: each object is streamed to a temporary file
    /// here, encrypted under a key held only in memory (PHI never reaches the disk in
    /// the clear), and handed to the gateway when complete. Must exist and be writable;
    /// needs room for `max_associations` objects at once. Leftover `*.part` files from a
    /// crash (unreadable: their keys are gone) are removed at start.
    pub temp_dir: PathBuf,
    /// Largest PDU we accept, in bytes (4096–16777216), announced to the modality as our
    /// maximum length. Larger PDUs mean fewer reads per object; each association holds up
    /// to one PDU in memory.
    #[serde(default = "default_max_pdu_length")]
    pub max_pdu_length: u32,
    /// Seconds an association may stay silent: the association request, and every PDU
    /// after it, must arrive within this time of the previous one, or the association is
    /// aborted (a partly received object is discarded).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

/// One modality allowed to store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// The modality's calling AE title, exactly as it sends it (case matters), 1–16
    /// characters.
    pub ae_title: String,
    /// Source IP addresses the modality may connect from; empty (the default) allows any.
    #[serde(default)]
    pub sources: Vec<IpAddr>,
}

const fn default_max_associations() -> usize {
    16
}
const fn default_max_object_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}
const fn default_max_pdu_length() -> u32 {
    256 * 1024
}
const fn default_idle_timeout_secs() -> u64 {
    60
}

/// Checks an AE title as configured; the error does not name the key (the caller does).
fn check_ae_title(title: &str) -> Result<(), String> {
    if title.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if title != title.trim() {
        return Err(format!("{title:?} has leading or trailing spaces"));
    }
    if title.len() > MAX_AE_TITLE_LEN {
        return Err(format!(
            "{title:?} is longer than {MAX_AE_TITLE_LEN} characters"
        ));
    }
    if title
        .bytes()
        .any(|b| !(0x20..0x7f).contains(&b) || b == b'\\')
    {
        return Err(format!(
            "{title:?} must be printable ASCII without a backslash"
        ));
    }
    Ok(())
}

impl DicomScpConfig {
    /// A configuration with defaults for everything optional.
    #[must_use]
    pub fn new(
        listen: SocketAddr,
        ae_title: impl Into<String>,
        callers: Vec<CallerConfig>,
        temp_dir: impl Into<PathBuf>,
    ) -> Self {
        DicomScpConfig {
            listen,
            ae_title: ae_title.into(),
            callers,
            max_associations: default_max_associations(),
            max_object_bytes: default_max_object_bytes(),
            temp_dir: temp_dir.into(),
            max_pdu_length: default_max_pdu_length(),
            idle_timeout_secs: default_idle_timeout_secs(),
        }
    }

    /// Checks everything the types do not; the error names the key, e.g.
    /// `callers[2].ae_title: "CT 1 " has leading or trailing spaces`. The temporary
    /// directory's existence is checked when serving starts, not here.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.port() == 0 {
            return Err("listen: port 0 is not a listening port".into());
        }
        check_ae_title(&self.ae_title).map_err(|e| format!("ae_title: {e}"))?;
        if self.callers.is_empty() {
            return Err("callers: at least one calling AE title is required".into());
        }
        for (i, caller) in self.callers.iter().enumerate() {
            check_ae_title(&caller.ae_title).map_err(|e| format!("callers[{i}].ae_title: {e}"))?;
            if let Some(first) = self.callers[..i]
                .iter()
                .position(|c| c.ae_title == caller.ae_title)
            {
                return Err(format!(
                    "callers[{i}].ae_title: {:?} is already listed as callers[{first}]; merge their sources",
                    caller.ae_title
                ));
            }
            if let Some(ip) = caller.sources.iter().find(|ip| ip.is_unspecified()) {
                return Err(format!(
                    "callers[{i}].sources: {ip} is the unspecified address; leave sources empty to allow any"
                ));
            }
        }
        if !(1..=MAX_ASSOCIATIONS).contains(&self.max_associations) {
            return Err(format!(
                "max_associations: {} is outside 1..={MAX_ASSOCIATIONS}",
                self.max_associations
            ));
        }
        if self.max_object_bytes == 0 {
            return Err("max_object_bytes: must be at least 1".into());
        }
        if self.temp_dir.as_os_str().is_empty() {
            return Err("temp_dir: must not be empty".into());
        }
        if !(MIN_PDU_LENGTH..=MAX_PDU_LENGTH).contains(&self.max_pdu_length) {
            return Err(format!(
                "max_pdu_length: {} is outside {MIN_PDU_LENGTH}..={MAX_PDU_LENGTH}",
                self.max_pdu_length
            ));
        }
        if self.idle_timeout_secs == 0 {
            return Err("idle_timeout_secs: must be at least 1".into());
        }
        Ok(())
    }

    /// Whether `calling_ae_title` may associate from `source`. `calling_ae_title` has its
    /// padding already trimmed; IPv4-mapped IPv6 sources compare as IPv4.
    #[must_use]
    pub fn caller_allowed(&self, calling_ae_title: &str, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.callers.iter().any(|caller| {
            caller.ae_title == calling_ae_title
                && (caller.sources.is_empty()
                    || caller.sources.iter().any(|ip| ip.to_canonical() == source))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = r#"
listen = "0.0.0.0:11112"
ae_title = "WARDGATE"
temp_dir = "/var/lib/wardgate/dicom-incoming"
max_object_bytes = 2147483648

[[callers]]
ae_title = "CT_SCANNER_1"
sources = ["10.20.0.31"]

[[callers]]
ae_title = "US_CART_3"
"#;

    fn example() -> DicomScpConfig {
        toml::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let config = example();
        config.validate().unwrap();
        assert_eq!(config.max_object_bytes, 2 << 30);
        assert_eq!(config.max_associations, 16);
        assert_eq!(config.max_pdu_length, 256 * 1024);
        assert_eq!(config.idle_timeout_secs, 60);
        assert_eq!(
            config.callers[0].sources,
            vec!["10.20.0.31".parse::<IpAddr>().unwrap()]
        );
        assert!(config.callers[1].sources.is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let typo = EXAMPLE.replace("max_object_bytes", "max_objects_bytes");
        assert!(toml::from_str::<DicomScpConfig>(&typo).is_err());
        let typo = EXAMPLE.replace("sources =", "source =");
        assert!(toml::from_str::<DicomScpConfig>(&typo).is_err());
    }

    #[test]
    fn validate_names_the_key() {
        type Breaker = fn(&mut DicomScpConfig);
        let cases: Vec<(Breaker, &str)> = vec![
            (|c| c.ae_title = String::new(), "ae_title:"),
            (
                |c| c.ae_title = "A_TITLE_THAT_IS_TOO_LONG".into(),
                "ae_title:",
            ),
            (|c| c.ae_title = "BACK\\SLASH".into(), "ae_title:"),
            (|c| c.callers.clear(), "callers:"),
            (
                |c| c.callers[1].ae_title = " US_CART_3".into(),
                "callers[1].ae_title:",
            ),
            (
                |c| c.callers[1].ae_title = "CT_SCANNER_1".into(),
                "callers[1].ae_title:",
            ),
            (
                |c| c.callers[0].sources = vec!["0.0.0.0".parse().unwrap()],
                "callers[0].sources:",
            ),
            (|c| c.max_associations = 0, "max_associations:"),
            (|c| c.max_object_bytes = 0, "max_object_bytes:"),
            (|c| c.max_pdu_length = 1024, "max_pdu_length:"),
            (|c| c.idle_timeout_secs = 0, "idle_timeout_secs:"),
            (|c| c.listen.set_port(0), "listen:"),
            (|c| c.temp_dir = PathBuf::new(), "temp_dir:"),
        ];
        for (break_it, key) in cases {
            let mut config = example();
            break_it(&mut config);
            let err = config.validate().unwrap_err();
            assert!(err.starts_with(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn callers_are_matched_by_title_and_source() {
        let config = example();
        let ct_ip: IpAddr = "10.20.0.31".parse().unwrap();
        let other: IpAddr = "10.20.0.99".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.20.0.31".parse().unwrap();
        assert!(config.caller_allowed("CT_SCANNER_1", ct_ip));
        assert!(config.caller_allowed("CT_SCANNER_1", mapped));
        assert!(!config.caller_allowed("CT_SCANNER_1", other));
        assert!(config.caller_allowed("US_CART_3", other));
        assert!(
            !config.caller_allowed("ct_scanner_1", ct_ip),
            "AE titles are case sensitive"
        );
        assert!(!config.caller_allowed("UNKNOWN", ct_ip));
    }
}
