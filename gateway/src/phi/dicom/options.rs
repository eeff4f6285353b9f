//! Per-site de-identification options, embedded in the gateway config as `[phi.dicom]`.
//!
//! Invariant: every option that changes what leaves the gateway is recorded in the output
//! object (DeidentificationMethod text and one DeidentificationMethodCodeSequence item per
//! option), so a receiver can tell what was retained.

use serde::{Deserialize, Serialize};

/// How dates and times are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatePolicy {
    /// The basic profile: dates and times are emptied, removed or replaced with dummies per
    /// Table E.1-1; dates the table does not list (found by their DA/DT/TM VR) are emptied.
    /// Recorded as LongitudinalTemporalInformationModified = `REMOVED`.
    Remove,
    /// Retain Longitudinal Temporal Information with Modified Dates (113107): every DA and the
    /// date part of every DT is shifted by a per-patient number of days derived from the site
    /// key and the patient pseudonym (the same shift for all of a patient's studies, on every
    /// gateway of the site); TM values and the time part of DT are kept. Recorded as
    /// `MODIFIED`.
    Shift,
    /// Retain Longitudinal Temporal Information with Full Dates (113106): dates and times are
    /// kept as they are. Recorded as `UNMODIFIED`. Only for sites whose data agreement allows
    /// real dates to leave the hospital.
    Keep,
}

/// A private attribute that may leave the gateway: identified by its private creator and
/// its element within the creator's block (`gggg,xxEE`: `EE`), as vendors document them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SafePrivateTag {
    /// The private creator string (e.g. `"SIEMENS CT VA0  COAD"`), compared after trimming
    /// trailing spaces; case-sensitive, as the standard requires.
    pub creator: String,
    /// The (odd) group, e.g. `0x0019`.
    pub group: u16,
    /// The element's low byte within the creator's block, e.g. `0x23` for `(0019,1023)`
    /// when the creator holds block `0x10`.
    pub element: u8,
}

/// The de-identification options of a site (`[phi.dicom]`). Defaults are the basic
/// profile with nothing retained.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeidOptions {
    /// Date handling: `"remove"` (basic profile, the default), `"shift"` (per-patient day
    /// shift, code 113107) or `"keep"` (full dates, code 113106).
    #[serde(default = "default_dates")]
    pub dates: DatePolicy,
    /// With `dates = "shift"`: the largest shift in days, in either direction (1..=3650).
    /// The shift is never zero. Default 365.
    #[serde(default = "default_max_date_shift_days")]
    pub max_date_shift_days: u16,
    /// Retain Device Identity (113109): keep station names, serial numbers and device
    /// identifiers (needed to tell which scanner produced an image). Default false.
    #[serde(default)]
    pub retain_device_identity: bool,
    /// Retain Patient Characteristics (113108): keep sex, age (capped at 90 years, as HIPAA
    /// requires), size, weight, ethnic group, smoking and pregnancy status. Default false.
    #[serde(default)]
    pub retain_patient_characteristics: bool,
    /// Private attributes that may be kept (Retain Safe Private, 113111). Every other private
    /// attribute is removed, and a kept private attribute must not be a sequence. Default
    /// empty.
    #[serde(default)]
    pub safe_private: Vec<SafePrivateTag>,
    /// Modalities whose images commonly carry burned-in patient text; their objects are
    /// quarantined unless `allow_burned_in_annotation` is set. Default `["US", "XC", "SC"]`.
    #[serde(default = "default_risky_modalities")]
    pub risky_modalities: Vec<String>,
    /// Upload objects that declare BurnedInAnnotation or RecognizableVisualFeatures = YES, or
    /// come from a risky modality, instead of quarantining them. Only for sites that scrub
    /// pixels downstream. Default false.
    #[serde(default)]
    pub allow_burned_in_annotation: bool,
    /// Disk space for quarantined objects, in bytes: they are kept, attributes
    /// de-identified (only their pixels may still show text), in
    /// `<data_dir>/dicom-quarantine`, never uploaded, for the site to review. 0 keeps
    /// none (each is only reported). When full, further such objects are refused "out of
    /// resources" so that none is dropped silently. Default 1 GiB.
    #[serde(default = "default_quarantine_budget_bytes")]
    pub quarantine_budget_bytes: u64,
}

const fn default_quarantine_budget_bytes() -> u64 {
    1024 * 1024 * 1024
}

const fn default_dates() -> DatePolicy {
    DatePolicy::Remove
}

const fn default_max_date_shift_days() -> u16 {
    365
}

fn default_risky_modalities() -> Vec<String> {
    vec!["US".to_owned(), "XC".to_owned(), "SC".to_owned()]
}

impl Default for DeidOptions {
    fn default() -> Self {
        DeidOptions {
            dates: default_dates(),
            max_date_shift_days: default_max_date_shift_days(),
            retain_device_identity: false,
            retain_patient_characteristics: false,
            safe_private: Vec::new(),
            risky_modalities: default_risky_modalities(),
            allow_burned_in_annotation: false,
            quarantine_budget_bytes: default_quarantine_budget_bytes(),
        }
    }
}

impl DeidOptions {
    /// Checks the options; the reason names the offending key.
    ///
    /// # Errors
    /// A human-readable reason.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=3650).contains(&self.max_date_shift_days) {
            return Err(format!(
                "max_date_shift_days = {} must be between 1 and 3650",
                self.max_date_shift_days
            ));
        }
        for (i, entry) in self.safe_private.iter().enumerate() {
            if entry.creator.trim().is_empty() || entry.creator.len() > 64 {
                return Err(format!(
                    "safe_private[{i}].creator must be 1 to 64 characters"
                ));
            }
            if entry.group % 2 == 0 || entry.group <= 0x0008 || entry.group == 0xFFFF {
                return Err(format!(
                    "safe_private[{i}].group = {:#06x} is not a private group (odd, above 0x0008)",
                    entry.group
                ));
            }
        }
        for (i, m) in self.risky_modalities.iter().enumerate() {
            let valid = !m.is_empty()
                && m.len() <= 16
                && m.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(format!(
                    "risky_modalities[{i}] = {m:?} is not a DICOM modality code (upper-case, up to 16 characters)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_site_config_and_refuses_unknown_keys() {
        let o: DeidOptions = toml::from_str(
            r#"
            dates = "shift"
            max_date_shift_days = 30
            retain_device_identity = true
            retain_patient_characteristics = true
            risky_modalities = ["US", "ES"]
            allow_burned_in_annotation = false
            safe_private = [{ creator = "ACME 1.0", group = 0x0029, element = 0x10 }]
            "#,
        )
        .unwrap();
        assert_eq!(o.dates, DatePolicy::Shift);
        assert_eq!(o.safe_private[0].group, 0x29);
        o.validate().unwrap();
        assert!(toml::from_str::<DeidOptions>("retain_uids = true").is_err());
        let d: DeidOptions = toml::from_str("").unwrap();
        assert_eq!(d, DeidOptions::default());
    }

    #[test]
    fn validation_names_the_key() {
        let mut o = DeidOptions {
            max_date_shift_days: 0,
            ..DeidOptions::default()
        };
        assert!(o.validate().unwrap_err().contains("max_date_shift_days"));
        o.max_date_shift_days = 10;
        o.safe_private.push(SafePrivateTag {
            creator: "X".into(),
            group: 0x0010,
            element: 1,
        });
        assert!(o.validate().unwrap_err().contains("safe_private[0].group"));
        o.safe_private.clear();
        o.risky_modalities.push("us".into());
        assert!(o.validate().unwrap_err().contains("risky_modalities[3]"));
    }
}
