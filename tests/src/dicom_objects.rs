//! DICOM test objects with planted identifiers, built with dicom-rs's object model: a CT
//! image carrying a planted value in every attribute of PS3.15 Table E.1-1, a three-level
//! nested reference chain, private attributes (safe-listed and not), repeating-group
//! overlay and curve data, and references to another instance of the same series.
//!
//! Used by the de-identification tests of the gateway crate (`gateway/tests/dicom_deid.rs`)
//! and by the end-to-end imaging tests, so both plant exactly the same identifiers.
//!
//! Invariants:
//! * Every value listed in [`Built::planted`] is in the object's bytes and must not survive
//!   de-identification; values of binary VRs that cannot be searched for are planted but
//!   not listed.
//! * No planted value can occur by accident in the pixel data: pixels are 12-bit values
//!   stored in 16 bits, so every other byte is below 0x10 and no run of four printable
//!   ASCII bytes exists there.
//! * The table of attributes is passed in (`table`), not taken from the gateway, so this
//!   crate does not depend on the code it tests; callers pass
//!   `wardgate::phi::dicom::table_e1_1()`'s tags.

use dicom_core::dictionary::DataDictionary;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

/// CT Image Storage.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
/// The planted StudyInstanceUID.
pub const STUDY: &str = "1.2.826.0.1.3680043.8.498.1001";
/// The planted SeriesInstanceUID.
pub const SERIES: &str = "1.2.826.0.1.3680043.8.498.1002";
/// The planted FrameOfReferenceUID.
pub const FRAME_OF_REFERENCE: &str = "1.2.826.0.1.3680043.8.498.1003";
/// A SOP Instance UID of the series.
pub const INSTANCE_A: &str = "1.2.826.0.1.3680043.8.498.1004";
/// Another SOP Instance UID of the series.
pub const INSTANCE_B: &str = "1.2.826.0.1.3680043.8.498.1005";
/// The planted PatientID.
pub const MRN: &str = "MRN-7730021";
/// The planted PatientName.
pub const PATIENT_NAME: &str = "DOE^JANE^Q";
/// The planted IssuerOfPatientID.
pub const ISSUER: &str = "HOSP";
/// The date planted everywhere a date goes: it must never appear in the output.
pub const PLANTED_DATE: &str = "19710203";
/// The time planted everywhere a time goes.
pub const PLANTED_TIME: &str = "043201.987";
/// The source AE title planted in the file meta group.
pub const PLANTED_SOURCE_AE: &str = "SCANNER_AE_PHI";

type El = DataElement<InMemDicomObject>;

/// A text element.
#[must_use]
pub fn text(tag: Tag, vr: VR, v: &str) -> El {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

/// A sequence element with `items`.
#[must_use]
pub fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> El {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

/// A data set of `elements`.
#[must_use]
pub fn obj(elements: Vec<El>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A built object and what was planted in it.
#[derive(Debug, Clone)]
pub struct Built {
    /// The whole file: preamble, `DICM`, meta group, data set.
    pub bytes: Vec<u8>,
    /// Values that must not appear anywhere in a de-identified output, with the table
    /// attribute they were planted in (`Tag(0, 0)` for values planted elsewhere).
    pub planted: Vec<(Tag, Vec<u8>)>,
    /// The pixel data as planted (it passes de-identification unchanged).
    pub pixels: Vec<u8>,
}

impl Built {
    /// The data set alone (preamble and file meta group stripped), as a C-STORE carries
    /// it in the file's transfer syntax.
    ///
    /// # Panics
    /// If the bytes are not a file with a meta group (they always are when built here).
    #[must_use]
    pub fn dataset(&self) -> &[u8] {
        // (0002,0000) UL FileMetaInformationGroupLength: value at 140..144.
        let b = &self.bytes;
        let group_len = u32::from_le_bytes([b[140], b[141], b[142], b[143]]) as usize;
        &b[144 + group_len..]
    }
}

/// What to build; [`CtImage::new`] gives the defaults (a 512×512 image of a CT that
/// declares no burned-in annotation).
#[derive(Debug, Clone)]
pub struct CtImage<'a> {
    /// SOPInstanceUID.
    pub instance: &'a str,
    /// The SOPInstanceUID every reference (at every nesting depth) points to.
    pub referenced: &'a str,
    /// StudyDate, also planted in nested items and an unlisted date attribute.
    pub study_date: &'a str,
    /// The file's transfer syntax (uncompressed: explicit or implicit VR little endian).
    pub transfer_syntax: &'a str,
    /// Rows of 16-bit pixels.
    pub rows: u16,
    /// Columns of 16-bit pixels.
    pub columns: u16,
    /// Modality (CS).
    pub modality: &'a str,
    /// BurnedInAnnotation (CS), `"NO"` by default.
    pub burned_in_annotation: &'a str,
}

impl<'a> CtImage<'a> {
    /// A 512×512 CT image of the planted study and series.
    #[must_use]
    pub fn new(instance: &'a str, referenced: &'a str) -> Self {
        CtImage {
            instance,
            referenced,
            study_date: "20240115",
            transfer_syntax: EXPLICIT_LE,
            rows: 512,
            columns: 512,
            modality: "CT",
            burned_in_annotation: "NO",
        }
    }

    /// Builds the object, planting an identifier in every attribute of `table` (the tags
    /// of Table E.1-1).
    ///
    /// # Panics
    /// If a tag of `table` is not in the standard dictionary, or dicom-rs cannot write the
    /// object.
    #[must_use]
    pub fn build(&self, table: &[(u16, u16)]) -> Built {
        build(self, table)
    }
}

/// [`CtImage::new`] with `study_date` and `transfer_syntax`, built: the object the
/// de-identification tests use.
#[must_use]
pub fn ct_image(
    table: &[(u16, u16)],
    instance: &str,
    referenced: &str,
    study_date: &str,
    transfer_syntax: &str,
) -> Built {
    CtImage {
        study_date,
        transfer_syntax,
        ..CtImage::new(instance, referenced)
    }
    .build(table)
}

/// A planted identifier for a table attribute, fitting its dictionary VR; `None` for
/// binary VRs whose planted value cannot be searched for in the output (they are still
/// planted).
fn planted(tag: Tag, vr: VR, index: usize) -> (El, Option<Vec<u8>>) {
    let word = format!("PHI{:04X}{:04X}", tag.0, tag.1);
    let searchable = |v: &str| Some(v.as_bytes().to_vec());
    match vr {
        VR::SQ => {
            let inner = format!("PHISQ{:04X}{:04X}", tag.0, tag.1);
            let item = obj(vec![
                text(tags::PATIENT_NAME, VR::PN, &inner),
                text(tags::PATIENT_COMMENTS, VR::LT, &format!("{inner}C")),
            ]);
            (seq(tag, vec![item]), searchable(&inner))
        }
        VR::UI => {
            let uid = format!("1.2.826.0.1.3680043.8.498.9{:04}{:03}", index, tag.1 % 1000);
            (text(tag, vr, &uid), searchable(&uid))
        }
        VR::DA => (text(tag, vr, PLANTED_DATE), searchable(PLANTED_DATE)),
        VR::DT => (
            text(tag, vr, &format!("{PLANTED_DATE}101112")),
            searchable(PLANTED_DATE),
        ),
        VR::TM => (text(tag, vr, PLANTED_TIME), searchable(PLANTED_TIME)),
        VR::AS => (text(tag, vr, "071Y"), searchable("071Y")),
        VR::DS | VR::IS => {
            let n = format!("{}", 870_000 + index);
            (text(tag, vr, &n), searchable(&n))
        }
        VR::CS => {
            let w = format!("PHI_{:04X}{:04X}", tag.0, tag.1);
            (text(tag, vr, &w), searchable(&w))
        }
        VR::US => (DataElement::new(tag, vr, PrimitiveValue::from(7u16)), None),
        VR::SS => (DataElement::new(tag, vr, PrimitiveValue::from(7i16)), None),
        VR::UL => (DataElement::new(tag, vr, PrimitiveValue::from(7u32)), None),
        VR::SL => (DataElement::new(tag, vr, PrimitiveValue::from(7i32)), None),
        VR::FL => (DataElement::new(tag, vr, PrimitiveValue::from(7f32)), None),
        VR::FD => (DataElement::new(tag, vr, PrimitiveValue::from(7f64)), None),
        VR::AT => (DataElement::new(tag, vr, PrimitiveValue::from(tag)), None),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => {
            let bytes = format!("{word}BIN").into_bytes();
            (
                DataElement::new(tag, vr, PrimitiveValue::from(bytes.clone())),
                Some(bytes),
            )
        }
        _ => (text(tag, vr, &word), searchable(&word)),
    }
}

/// Attributes the object needs with real values (identity of the instance), and the
/// meta/command groups that do not belong in a data set: not planted from the table.
fn not_planted(tag: Tag) -> bool {
    tag.0 <= 0x0002
        || [
            tags::SOP_INSTANCE_UID,
            tags::STUDY_INSTANCE_UID,
            tags::SERIES_INSTANCE_UID,
            tags::FRAME_OF_REFERENCE_UID,
            tags::PATIENT_ID,
            tags::PATIENT_NAME,
            tags::PATIENT_BIRTH_DATE,
            tags::ISSUER_OF_PATIENT_ID,
            // Planted as the cross-instance references below.
            tags::REFERENCED_IMAGE_SEQUENCE,
            tags::SOURCE_IMAGE_SEQUENCE,
            tags::REFERENCED_SOP_INSTANCE_UID,
        ]
        .contains(&tag)
}

fn dictionary_vr(tag: Tag) -> VR {
    StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.vr.relaxed())
        .unwrap_or_else(|| panic!("{tag} is not in the standard dictionary"))
}

/// 12-bit pixels in 16 bits, little endian.
fn pixel_data(rows: u16, columns: u16) -> Vec<u8> {
    let count = u32::from(rows) * u32::from(columns);
    let mut pixels = Vec::with_capacity(count as usize * 2);
    for i in 0..count {
        // Below 4096: the high byte is never printable (see the module invariants).
        let value = (i.wrapping_mul(7) % 4096) as u16;
        pixels.extend_from_slice(&value.to_le_bytes());
    }
    pixels
}

#[allow(clippy::too_many_lines)] // one object, listed attribute by attribute
fn build(spec: &CtImage<'_>, table: &[(u16, u16)]) -> Built {
    let CtImage {
        instance,
        referenced,
        study_date,
        ..
    } = *spec;
    let mut planted_values = Vec::new();
    let mut elements = Vec::new();
    for (index, &(g, e)) in table.iter().enumerate() {
        let tag = Tag(g, e);
        if not_planted(tag) {
            continue;
        }
        let (element, search) = planted(tag, dictionary_vr(tag), index);
        elements.push(element);
        if let Some(s) = search {
            planted_values.push((tag, s));
        }
    }
    // Real identity, overriding planted values where the table lists the attribute.
    let pixels = pixel_data(spec.rows, spec.columns);
    let reference = |extra: Vec<El>| {
        let mut v = vec![
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE),
            text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, referenced),
        ];
        v.extend(extra);
        obj(v)
    };
    // Level 3: inside ReferencedImageSequence inside ReferencedInstanceSequence inside
    // ReferencedSeriesSequence.
    let level3 = reference(vec![
        text(tags::PATIENT_NAME, VR::PN, "NESTED3^PHI"),
        text(tags::OTHER_PATIENT_NAMES, VR::PN, "NESTEDMRN3"),
        text(tags::STUDY_DATE, VR::DA, study_date),
        text(tags::STUDY_INSTANCE_UID, VR::UI, STUDY),
        text(tags::INSTITUTION_NAME, VR::LO, "NESTED3 GENERAL HOSPITAL"),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME SAFE"),
        text(Tag(0x0009, 0x1002), VR::LO, "NESTED3PRIVATE"),
    ]);
    let level2 = obj(vec![
        text(tags::PATIENT_NAME, VR::PN, "NESTED2^PHI"),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, referenced),
        seq(tags::REFERENCED_IMAGE_SEQUENCE, vec![level3]),
    ]);
    let level1 = obj(vec![
        text(tags::PATIENT_NAME, VR::PN, "NESTED1^PHI"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, SERIES),
        seq(tags::REFERENCED_INSTANCE_SEQUENCE, vec![level2]),
    ]);
    elements.extend([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        text(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, instance),
        text(tags::STUDY_DATE, VR::DA, study_date),
        text(tags::MODALITY, VR::CS, spec.modality),
        text(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
        text(tags::PATIENT_ID, VR::LO, MRN),
        text(tags::ISSUER_OF_PATIENT_ID, VR::LO, ISSUER),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19620417"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, STUDY),
        text(tags::SERIES_INSTANCE_UID, VR::UI, SERIES),
        text(tags::FRAME_OF_REFERENCE_UID, VR::UI, FRAME_OF_REFERENCE),
        text(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            spec.burned_in_annotation,
        ),
        // Not in the table: an unlisted date, an unlisted name, a kept attribute.
        text(tags::SECONDARY_REVIEW_DATE, VR::DA, study_date),
        text(tags::SECONDARY_REVIEWER_NAME, VR::PN, "REVIEWER^UNLISTED"),
        text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        seq(tags::REFERENCED_IMAGE_SEQUENCE, vec![reference(vec![])]),
        seq(
            tags::SOURCE_IMAGE_SEQUENCE,
            vec![reference(vec![text(
                tags::PATIENT_NAME,
                VR::PN,
                "SOURCE^PHI",
            )])],
        ),
        seq(tags::REFERENCED_SERIES_SEQUENCE, vec![level1]),
        // Private: one on the safe list, one not, one in another creator's block, and a
        // private sequence on the safe list's element number of another creator.
        text(Tag(0x0009, 0x0010), VR::LO, "ACME SAFE"),
        text(Tag(0x0009, 0x1001), VR::LO, "SAFEVALUE42"),
        text(Tag(0x0009, 0x1002), VR::LO, "PHIPRIVATE1"),
        text(Tag(0x0011, 0x0010), VR::LO, "OTHER VENDOR"),
        text(Tag(0x0011, 0x1001), VR::LO, "PHIPRIVATE2"),
        // Repeating groups: overlay data and comments, curve data.
        DataElement::new(
            Tag(0x6002, 0x3000),
            VR::OW,
            PrimitiveValue::from(b"PHIOVERLAYDATA".to_vec()),
        ),
        text(Tag(0x6002, 0x4000), VR::LT, "PHIOVERLAYCOMMENT"),
        DataElement::new(
            Tag(0x5000, 0x3000),
            VR::OW,
            PrimitiveValue::from(b"PHICURVEDATA".to_vec()),
        ),
    ]);
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    elements.extend([
        us(tags::ROWS, spec.rows),
        us(tags::COLUMNS, spec.columns),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(pixels.clone()),
        ),
    ]);
    for v in [
        MRN,
        PATIENT_NAME,
        "19620417",
        "NESTED1^PHI",
        "NESTED2^PHI",
        "NESTED3^PHI",
        "NESTEDMRN3",
        "NESTED3 GENERAL",
        "NESTED3PRIVATE",
        "SOURCE^PHI",
        "REVIEWER^UNLISTED",
        "PHIPRIVATE1",
        "PHIPRIVATE2",
        "PHIOVERLAYDATA",
        "PHIOVERLAYCOMMENT",
        "PHICURVEDATA",
        STUDY,
        SERIES,
        FRAME_OF_REFERENCE,
        instance,
        referenced,
        PLANTED_SOURCE_AE,
    ] {
        planted_values.push((Tag(0, 0), v.as_bytes().to_vec()));
    }
    let file = obj(elements)
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(spec.transfer_syntax)
                .source_application_entity_title(PLANTED_SOURCE_AE),
        )
        .expect("a complete file meta group");
    let mut bytes = Vec::with_capacity(pixels.len() + 64 * 1024);
    file.write_all(&mut bytes)
        .expect("dicom-rs writes the object");
    Built {
        bytes,
        planted: planted_values,
        pixels,
    }
}
