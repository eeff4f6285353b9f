//! DICOM de-identification: DICOM PS3.15 Annex E Basic Application Level Confidentiality
//! Profile, with the Retain Longitudinal Temporal Information (modified or full dates),
//! Retain Device Identity, Retain Patient Characteristics and Retain Safe Private options.
//!
//! Pure and synchronous: bytes in, bytes out, no clock, no I/O besides the given writer.
//!
//! # What is guaranteed
//! - **Every element at every depth** is decided by tag, VR and private creator
//!   ([`rewrite`]): Table E.1-1 actions ([`profile`]; combinations resolved as its module
//!   doc says), then by VR: every DA/DT/TM per the date policy, every UI the table does not
//!   list is mapped unless it names a kind of thing (SOP class, transfer syntax, coding
//!   scheme), every PN the table does not list is emptied. Private attributes are removed
//!   unless their (creator, group, element) is on the site's safe list and they are not
//!   sequences; elements of unknown VR (UN) are removed unless they are standard attributes
//!   the profile keeps with a numeric or code VR. Sequences the profile keeps are recursed
//!   into at every depth (up to 64 levels; deeper input is refused as hostile).
//! - **UIDs** are mapped by a keyed HMAC to `2.25.<decimal of 128 bits>` ([`values`]): the
//!   same input UID gives the same output UID in every instance, series, association and
//!   after restarts, so references in nested sequences still point at the remapped
//!   instances; UIDs under `1.2.840.10008` are kept. MediaStorageSOPInstanceUID is the
//!   mapped SOPInstanceUID.
//! - **The patient**: PatientID becomes the HL7 path's pseudonym,
//!   `PseudonymKey::pseudonym(PatientID, authority)` where the authority is
//!   IssuerOfPatientID (0010,0021), or, if that is empty, the UniversalEntityID
//!   (0040,0032) of the first IssuerOfPatientIDQualifiersSequence (0010,0024) item, or else
//!   empty — the same as the HL7 path's PID-3.4.1 namespace, so imaging and monitoring data
//!   of a patient link in the cloud. PatientName becomes the same pseudonym (a viewer then
//!   groups a patient's studies, and nothing that looks like a name is left). An object
//!   without a PatientID gets a per-study pseudonym, `pseudonym(StudyInstanceUID,
//!   "DICOM-NO-PATIENT-ID")` (or of the SOP instance UID without a study), so it links to
//!   nothing else. A nested item with its own PatientID gets that patient's pseudonym.
//! - **Recorded in the output**: PatientIdentityRemoved = YES, DeidentificationMethod,
//!   DeidentificationMethodCodeSequence (113100 plus one code per option),
//!   LongitudinalTemporalInformationModified; the file meta is rebuilt with wardgate's
//!   implementation class and version and without the sender's AE titles.
//! - **Burned-in text**: objects declaring BurnedInAnnotation or RecognizableVisualFeatures
//!   = YES, or of a risky modality, are [`DeidOutcome::Quarantine`]d (nothing written)
//!   unless the site opts in.
//! - **Errors** never carry element values, and a failed call's partial output must be
//!   discarded (it contains only de-identified bytes, but an incomplete object).
//!
//! # Streaming
//! [`DicomRules::deidentify_stream`] and [`DicomRules::deidentify_dataset_stream`] read the
//! object from an [`std::io::Read`] and write the same bytes as the in-memory entry points
//! (a test holds them equal over the test corpus), holding at most
//! [`DicomRules::max_header_bytes`] of the object plus fixed buffers, however large its pixel
//! data: see [`stream`] for what is held and what passes through.
//!
//! # What is not done
//! Clean Descriptors (113105) is not implemented: descriptions and comments are removed as
//! the basic profile says, never cleaned and kept. Pixel data is not inspected.
//! Big-endian and deflated transfer syntaxes and DICOMDIR files are refused.

mod codec;
pub mod options;
mod profile;
mod rewrite;
mod stream;
mod values;

use std::io::{Read, Write};

use wardgate_proto::Pseudonym;

use self::codec::{write_text, Encoding, Reader};
pub use self::options::{DatePolicy, DeidOptions, SafePrivateTag};
pub use self::profile::table_e1_1;
use self::profile::Profile;
use self::rewrite::{End, Engine, LevelFacts, LevelState, Sink};
use super::PseudonymKey;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

/// wardgate's DICOM implementation class UID (a fixed UUID-derived UID under `2.25`).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.298382483390422499611559395438451792244";
/// wardgate's DICOM implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("WARDGATE_", env!("CARGO_PKG_VERSION"));

/// Default of [`DicomRules::max_header_bytes`]: 64 MiB, room for the largest enhanced
/// multi-frame headers (per-frame functional groups of thousands of frames) seen in practice.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024 * 1024;

/// Errors of DICOM de-identification. None carries an element value.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// The input is not a DICOM Part 10 file (no `DICM` marker).
    #[error("not a DICOM file (no DICM marker)")]
    NotDicom,
    /// The input looks like a bare data set without the Part 10 file meta information;
    /// use [`DicomRules::deidentify_dataset`] with the transfer syntax it was sent in.
    #[error("DICOM data set without file meta information; its transfer syntax is unknown")]
    NoFileMeta,
    /// The input ends inside an element.
    #[error("DICOM input truncated at byte {offset}")]
    Truncated {
        /// Offset of the element or value that runs past the end.
        offset: usize,
    },
    /// The input is not valid DICOM encoding.
    #[error("malformed DICOM at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the offending header.
        offset: usize,
        /// What is wrong (fixed text).
        reason: &'static str,
    },
    /// The transfer syntax is one this module does not rewrite.
    #[error("unsupported transfer syntax {uid} (big endian, deflated and private syntaxes are not supported)")]
    UnsupportedTransferSyntax {
        /// The transfer syntax UID (or a marker if it is not a UID).
        uid: String,
    },
    /// A kind of object this module does not rewrite.
    #[error("unsupported DICOM object: {0}")]
    Unsupported(&'static str),
    /// A required attribute is missing.
    #[error("DICOM object has no {0}")]
    Missing(&'static str),
    /// The options are invalid.
    #[error("invalid [phi.dicom] option: {0}")]
    Config(String),
    /// Writing the output failed.
    #[error("cannot write de-identified DICOM: {0}")]
    Write(#[from] std::io::Error),
    /// Reading the input failed (streaming entry points).
    #[error("cannot read DICOM input: {0}")]
    Read(std::io::Error),
    /// Streaming: the part of the object that has to be held in memory (everything but
    /// the bulk data passed through) is larger than [`DicomRules::max_header_bytes`].
    #[error("DICOM object's attributes other than bulk data exceed the {limit}-byte limit of the streaming path")]
    HeaderTooLarge {
        /// The limit in force, in bytes.
        limit: usize,
    },
}

impl DicomError {
    /// The error with its offset moved by `base` (for errors found in a piece of the input
    /// read into its own buffer).
    fn shifted(self, base: usize) -> DicomError {
        match self {
            DicomError::Truncated { offset } => DicomError::Truncated {
                offset: offset.saturating_add(base),
            },
            DicomError::Malformed { offset, reason } => DicomError::Malformed {
                offset: offset.saturating_add(base),
                reason,
            },
            other => other,
        }
    }
}

/// Why an object is not uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuarantineReason {
    /// BurnedInAnnotation (0028,0301) = YES.
    BurnedInAnnotation,
    /// RecognizableVisualFeatures (0028,0302) = YES.
    RecognizableVisualFeatures,
    /// The modality is on the site's risky list.
    RiskyModality(String),
}

impl std::fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuarantineReason::BurnedInAnnotation => f.write_str("BurnedInAnnotation is YES"),
            QuarantineReason::RecognizableVisualFeatures => {
                f.write_str("RecognizableVisualFeatures is YES")
            }
            QuarantineReason::RiskyModality(m) => {
                write!(f, "modality {m} is configured as carrying burned-in text")
            }
        }
    }
}

/// A de-identified object's identity (all UIDs are the mapped ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeidentifiedObject {
    /// SOP Class UID (kept as it was: it names a kind of object).
    pub sop_class_uid: String,
    /// The new SOP Instance UID.
    pub sop_instance_uid: String,
    /// The new Study Instance UID, if the object has one.
    pub study_instance_uid: Option<String>,
    /// The new Series Instance UID, if the object has one.
    pub series_instance_uid: Option<String>,
    /// The patient pseudonym written as PatientID and PatientName.
    pub patient: Pseudonym,
    /// False if the object had no PatientID (the pseudonym is then per study).
    pub patient_identified: bool,
    /// Modality (0008,0060), a code such as `CT`.
    pub modality: Option<String>,
    /// Size of the written Part 10 file in bytes.
    pub bytes: u64,
}

/// The result of [`DicomRules::deidentify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeidOutcome {
    /// The object was de-identified and written.
    Deidentified(DeidentifiedObject),
    /// The object must not be uploaded; nothing was written.
    Quarantine {
        /// Why.
        reason: QuarantineReason,
    },
}

/// The DICOM de-identification rules of a site: its key and options. `Debug` shows the
/// options only.
pub struct DicomRules {
    key: PseudonymKey,
    options: DeidOptions,
    profile: Profile,
    max_header_bytes: usize,
}

/// What the top level's facts decided before anything is written.
struct Plan {
    sop_class: String,
    /// The mapped SOP Instance UID.
    sop_instance: String,
    patient: Pseudonym,
    patient_identified: bool,
    shift_days: Option<i64>,
    modality: Option<String>,
}

impl Plan {
    fn outcome(self, engine: Engine<'_>, bytes: u64) -> DeidOutcome {
        DeidOutcome::Deidentified(DeidentifiedObject {
            sop_class_uid: self.sop_class,
            sop_instance_uid: self.sop_instance,
            study_instance_uid: engine.study_uid,
            series_instance_uid: engine.series_uid,
            patient: self.patient,
            patient_identified: self.patient_identified,
            modality: self.modality,
            bytes,
        })
    }
}

impl DicomRules {
    /// Rules from the site key (the one the HL7 path uses) and the site's options.
    ///
    /// # Errors
    /// [`DicomError::Config`] if the options do not validate.
    pub fn new(key: PseudonymKey, options: DeidOptions) -> Result<DicomRules, DicomError> {
        options.validate().map_err(DicomError::Config)?;
        let profile = Profile::new(
            options.retain_device_identity,
            options.retain_patient_characteristics,
        );
        Ok(DicomRules {
            key,
            options,
            profile,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        })
    }

    /// The same rules with another limit on what the streaming entry points hold in
    /// memory (see [`DicomRules::max_header_bytes`]).
    #[must_use]
    pub fn with_max_header_bytes(mut self, bytes: usize) -> DicomRules {
        self.max_header_bytes = bytes;
        self
    }

    /// The most bytes of an object the streaming entry points hold in memory at once:
    /// the top level up to the end of the attributes the quarantine decision reads, and
    /// then any single element that is rewritten rather than copied or dropped whole (a
    /// kept sequence, a UID, a shifted date). Larger objects are refused with
    /// [`DicomError::HeaderTooLarge`]. Default [`DEFAULT_MAX_HEADER_BYTES`].
    #[must_use]
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &DeidOptions {
        &self.options
    }

    /// The UID `uid` is replaced with (what every reference to it becomes).
    #[must_use]
    pub fn map_uid(&self, uid: &str) -> String {
        values::map_uid(&self.key, uid.trim_end_matches(['\0', ' ']))
    }

    /// The day shift applied to the dates of the patient with this pseudonym (with
    /// `dates = "shift"`).
    #[must_use]
    pub fn date_shift_days(&self, patient: &Pseudonym) -> i64 {
        values::date_shift_days(&self.key, &patient.0, self.options.max_date_shift_days)
    }

    /// De-identifies a DICOM Part 10 file (preamble optional) held in memory and writes
    /// the de-identified Part 10 file to `output`, in the same transfer syntax.
    ///
    /// # Errors
    /// [`DicomError`]: not DICOM, truncated or malformed input, an unsupported transfer
    /// syntax, or a write error. On error, discard whatever was written.
    pub fn deidentify(
        &self,
        input: &[u8],
        output: &mut impl Write,
    ) -> Result<DeidOutcome, DicomError> {
        let meta = read_file_meta(input)?;
        self.rewrite(
            &input[meta.dataset_start..],
            &meta.transfer_syntax,
            meta.sop_class.as_deref(),
            output,
        )
    }

    /// De-identifies a bare data set (as received in a C-STORE, or a file without meta
    /// information) encoded in `transfer_syntax_uid`, and writes a Part 10 file.
    ///
    /// # Errors
    /// As [`DicomRules::deidentify`].
    pub fn deidentify_dataset(
        &self,
        dataset: &[u8],
        transfer_syntax_uid: &str,
        output: &mut impl Write,
    ) -> Result<DeidOutcome, DicomError> {
        self.rewrite(
            dataset,
            transfer_syntax_uid.trim_end_matches(['\0', ' ']),
            None,
            output,
        )
    }

    /// De-identifies a DICOM Part 10 file (preamble optional) read from `input`, like
    /// [`DicomRules::deidentify`] and with the same output, holding at most
    /// [`DicomRules::max_header_bytes`] of it in memory: pixel data and other large values
    /// the rules copy or drop whole pass through in fixed-size chunks. The input is read to
    /// its end, except for a quarantined object, whose reading stops once that is decided.
    ///
    /// # Errors
    /// As [`DicomRules::deidentify`], and [`DicomError::Read`] if reading fails,
    /// [`DicomError::HeaderTooLarge`] if the object needs more memory than allowed. On
    /// error, discard whatever was written.
    pub fn deidentify_stream(
        &self,
        input: &mut impl Read,
        output: &mut impl Write,
    ) -> Result<DeidOutcome, DicomError> {
        stream::deidentify_file(self, input, output)
    }

    /// De-identifies a bare data set encoded in `transfer_syntax_uid` read from `input`,
    /// like [`DicomRules::deidentify_dataset`] and with the same output, with the memory
    /// bound and the reading of [`DicomRules::deidentify_stream`] (to the end of the input,
    /// which is the end of the data set, unless the object is quarantined).
    ///
    /// # Errors
    /// As [`DicomRules::deidentify_stream`].
    pub fn deidentify_dataset_stream(
        &self,
        input: &mut impl Read,
        transfer_syntax_uid: &str,
        output: &mut impl Write,
    ) -> Result<DeidOutcome, DicomError> {
        stream::deidentify_dataset(
            self,
            input,
            transfer_syntax_uid.trim_end_matches(['\0', ' ']),
            output,
        )
    }

    fn rewrite(
        &self,
        dataset: &[u8],
        transfer_syntax: &str,
        meta_sop_class: Option<&str>,
        output: &mut impl Write,
    ) -> Result<DeidOutcome, DicomError> {
        let enc = encoding_of(transfer_syntax)?;
        let facts = rewrite::scan_level(
            &mut Reader::new(dataset, 0),
            enc,
            End::Slice,
            tags::RECOGNIZABLE_VISUAL_FEATURES,
        )?;
        let plan = match self.plan(&facts, meta_sop_class)? {
            Ok(plan) => plan,
            Err(reason) => return Ok(DeidOutcome::Quarantine { reason }),
        };
        let mut sink = Sink::new(output);
        let (mut engine, mut top) = self.begin(&plan, enc, transfer_syntax, &mut sink);
        engine.level(
            &mut Reader::new(dataset, 0),
            enc,
            End::Slice,
            &mut top,
            &mut sink,
        )?;
        top.finish(&mut sink);
        sink.flush()?;
        let bytes = sink.written();
        Ok(plan.outcome(engine, bytes))
    }

    /// Decides, from the facts of the top level, whether the object is quarantined (the
    /// inner `Err`), and otherwise its identity, pseudonym and date shift.
    fn plan(
        &self,
        facts: &LevelFacts<'_>,
        meta_sop_class: Option<&str>,
    ) -> Result<Result<Plan, QuarantineReason>, DicomError> {
        if let Some(reason) = self.quarantine_reason(facts) {
            return Ok(Err(reason));
        }
        let text = |v: Option<&[u8]>| {
            v.map(values::trim_padding)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let sop_class = text(facts.sop_class)
            .or_else(|| meta_sop_class.map(str::to_owned))
            .ok_or(DicomError::Missing("SOP Class UID"))?;
        let sop_instance =
            text(facts.sop_instance).ok_or(DicomError::Missing("SOP Instance UID"))?;
        let new_instance = values::map_uid(&self.key, &sop_instance);
        let (patient, patient_identified) = match facts.patient_id() {
            Some(id) => (self.key.pseudonym(&id, &facts.authority()), true),
            None => {
                let anchor = text(facts.study_instance).unwrap_or_else(|| sop_instance.clone());
                (self.key.pseudonym(&anchor, "DICOM-NO-PATIENT-ID"), false)
            }
        };
        let shift_days = (self.options.dates == DatePolicy::Shift).then(|| {
            values::date_shift_days(&self.key, &patient.0, self.options.max_date_shift_days)
        });
        Ok(Ok(Plan {
            sop_class,
            sop_instance: new_instance,
            patient,
            patient_identified,
            shift_days,
            modality: text(facts.modality),
        }))
    }

    /// Writes the file meta to `sink` and returns the engine and top-level state that
    /// rewrite the data set.
    fn begin<W: Write>(
        &self,
        plan: &Plan,
        enc: Encoding,
        transfer_syntax: &str,
        sink: &mut Sink<'_, W>,
    ) -> (Engine<'_>, LevelState) {
        write_file_meta(
            &mut sink.buf,
            &plan.sop_class,
            &plan.sop_instance,
            transfer_syntax,
        );
        let top = LevelState::top(rewrite::insertions(self, enc, &plan.patient.0));
        let engine = Engine {
            rules: self,
            shift_days: plan.shift_days,
            study_uid: None,
            series_uid: None,
        };
        (engine, top)
    }

    fn quarantine_reason(&self, facts: &rewrite::LevelFacts<'_>) -> Option<QuarantineReason> {
        if self.options.allow_burned_in_annotation {
            return None;
        }
        let yes = |v: Option<&[u8]>| {
            v.is_some_and(|v| values::trim_padding(v).eq_ignore_ascii_case(b"YES"))
        };
        if yes(facts.burned_in_annotation) {
            return Some(QuarantineReason::BurnedInAnnotation);
        }
        if yes(facts.recognizable_visual_features) {
            return Some(QuarantineReason::RecognizableVisualFeatures);
        }
        let modality = facts.modality.map(values::trim_padding)?;
        self.options
            .risky_modalities
            .iter()
            .find(|m| m.as_bytes().eq_ignore_ascii_case(modality))
            .map(|m| QuarantineReason::RiskyModality(m.clone()))
    }

    /// The DeidentificationMethodCodeSequence codes (CID 7050): the profile, then one per
    /// option applied.
    fn method_codes(&self) -> Vec<(&'static str, &'static str)> {
        let mut codes = vec![("113100", "Basic Application Confidentiality Profile")];
        match self.options.dates {
            DatePolicy::Remove => {}
            DatePolicy::Shift => codes.push((
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            )),
            DatePolicy::Keep => codes.push((
                "113106",
                "Retain Longitudinal Temporal Information Full Dates Option",
            )),
        }
        if self.options.retain_patient_characteristics {
            codes.push(("113108", "Retain Patient Characteristics Option"));
        }
        if self.options.retain_device_identity {
            codes.push(("113109", "Retain Device Identity Option"));
        }
        if !self.options.safe_private.is_empty() {
            codes.push(("113111", "Retain Safe Private Option"));
        }
        codes
    }

    /// DeidentificationMethod: one LO value per line of what was done.
    fn method_text(&self) -> String {
        let mut parts = vec!["wardgate PS3.15 E.1 Basic Profile".to_owned()];
        match self.options.dates {
            DatePolicy::Remove => {}
            DatePolicy::Shift => parts.push(format!(
                "dates shifted per patient, max {} days",
                self.options.max_date_shift_days
            )),
            DatePolicy::Keep => parts.push("full dates retained".to_owned()),
        }
        if self.options.retain_patient_characteristics {
            parts.push("patient characteristics retained".to_owned());
        }
        if self.options.retain_device_identity {
            parts.push("device identity retained".to_owned());
        }
        if !self.options.safe_private.is_empty() {
            parts.push("safe private attributes retained".to_owned());
        }
        parts.join("\\")
    }
}

impl std::fmt::Debug for DicomRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomRules")
            .field("key", &self.key)
            .field("options", &self.options)
            .field("max_header_bytes", &self.max_header_bytes)
            .finish_non_exhaustive()
    }
}

/// What the file meta information says.
struct FileMeta {
    dataset_start: usize,
    transfer_syntax: String,
    sop_class: Option<String>,
}

/// Reads the preamble (optional), `DICM` and the file meta group.
fn read_file_meta(input: &[u8]) -> Result<FileMeta, DicomError> {
    let start = if input.get(128..132) == Some(b"DICM") {
        132
    } else if input.starts_with(b"DICM") {
        4
    } else if looks_like_bare_dataset(input) {
        return Err(DicomError::NoFileMeta);
    } else {
        return Err(DicomError::NotDicom);
    };
    let mut r = Reader::new(input, start);
    let mut transfer_syntax = None;
    let mut sop_class = None;
    loop {
        if r.at_end() {
            break;
        }
        let at = r.pos();
        // The data set after the meta group may be implicit VR: look at the group first.
        if input.get(at..at + 2) != Some(&[0x02, 0x00]) {
            break;
        }
        let mut peek = Reader::new(input, at);
        let h = peek.header(Encoding::ExplicitLe)?;
        let v = peek.value(&h)?;
        let text = || String::from_utf8_lossy(values::trim_padding(v)).into_owned();
        match h.tag {
            tags::TRANSFER_SYNTAX_UID => transfer_syntax = Some(text()),
            tags::MEDIA_STORAGE_SOP_CLASS_UID => sop_class = Some(text()),
            _ => {}
        }
        r.seek(peek.pos());
    }
    if sop_class.as_deref() == Some("1.2.840.10008.1.3.10") {
        return Err(DicomError::Unsupported("DICOMDIR media directory"));
    }
    Ok(FileMeta {
        dataset_start: r.pos(),
        transfer_syntax: transfer_syntax.ok_or(DicomError::Missing("Transfer Syntax UID"))?,
        sop_class,
    })
}

/// Whether `input` starts like a data set without meta: an element of group 0004 or 0008
/// (the first groups of a stored data set) in either little-endian encoding.
fn looks_like_bare_dataset(input: &[u8]) -> bool {
    input.len() >= 8 && matches!(input[0..2], [0x04, 0x00] | [0x08, 0x00])
}

/// The encoding of a transfer syntax's data set.
fn encoding_of(ts: &str) -> Result<Encoding, DicomError> {
    match ts {
        "1.2.840.10008.1.2" => Ok(Encoding::ImplicitLe),
        "1.2.840.10008.1.2.2" | "1.2.840.10008.1.2.1.99" => {
            Err(DicomError::UnsupportedTransferSyntax { uid: safe_uid(ts) })
        }
        // Explicit VR little endian and every encapsulated (compressed) syntax.
        _ if ts.starts_with("1.2.840.10008.1.2.") => Ok(Encoding::ExplicitLe),
        _ => Err(DicomError::UnsupportedTransferSyntax { uid: safe_uid(ts) }),
    }
}

/// A transfer syntax UID for an error message, if it is one (else a marker).
fn safe_uid(ts: &str) -> String {
    if ts.len() <= 64 && ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        ts.to_owned()
    } else {
        "<not a UID>".to_owned()
    }
}

/// Appends preamble, `DICM` and the rebuilt file meta group (always explicit VR LE).
fn write_file_meta(out: &mut Vec<u8>, sop_class: &str, sop_instance: &str, ts: &str) {
    let enc = Encoding::ExplicitLe;
    let mut group = Vec::with_capacity(256);
    codec::write_header(
        &mut group,
        enc,
        tags::FILE_META_INFORMATION_VERSION,
        VR::OB,
        2,
    );
    group.extend_from_slice(&[0x00, 0x01]);
    write_text(
        &mut group,
        enc,
        tags::MEDIA_STORAGE_SOP_CLASS_UID,
        VR::UI,
        sop_class.as_bytes(),
    );
    write_text(
        &mut group,
        enc,
        tags::MEDIA_STORAGE_SOP_INSTANCE_UID,
        VR::UI,
        sop_instance.as_bytes(),
    );
    write_text(
        &mut group,
        enc,
        tags::TRANSFER_SYNTAX_UID,
        VR::UI,
        ts.as_bytes(),
    );
    write_text(
        &mut group,
        enc,
        tags::IMPLEMENTATION_CLASS_UID,
        VR::UI,
        IMPLEMENTATION_CLASS_UID.as_bytes(),
    );
    write_text(
        &mut group,
        enc,
        tags::IMPLEMENTATION_VERSION_NAME,
        VR::SH,
        IMPLEMENTATION_VERSION_NAME.as_bytes(),
    );
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    codec::write_header(out, enc, Tag(0x0002, 0x0000), VR::UL, 4);
    out.extend_from_slice(&u32::try_from(group.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&group);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
