//! Unit tests of the DICOM rewrite over hand-built byte streams: encodings dicom-rs does
//! not produce on its own (defined-length sequences, UN elements, encapsulated pixel
//! data), nested patients, refusals, and robustness against every truncation.

use dicom_core::Tag;
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use super::codec::{
    write_header, write_item_header, write_text, Encoding, ITEM, SEQUENCE_DELIMITER, UNDEFINED,
};
use super::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT: &str = "1.2.840.10008.1.2.1";

fn rules() -> DicomRules {
    DicomRules::new(PseudonymKey::from_bytes(&[11; 32]), DeidOptions::default()).unwrap()
}

/// A data set being built, in explicit VR LE unless said otherwise.
struct Ds(Vec<u8>, Encoding);

impl Ds {
    fn new() -> Ds {
        Ds(Vec::new(), Encoding::ExplicitLe)
    }
    fn text(mut self, tag: Tag, vr: VR, v: &str) -> Ds {
        write_text(&mut self.0, self.1, tag, vr, v.as_bytes());
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Ds {
        self.0.extend_from_slice(bytes);
        self
    }
    fn identity(self, instance: &str) -> Ds {
        self.text(tags::SOP_CLASS_UID, VR::UI, CT)
            .text(tags::SOP_INSTANCE_UID, VR::UI, instance)
    }
    /// A defined-length sequence of defined-length items.
    fn defined_seq(mut self, tag: Tag, items: &[Ds]) -> Ds {
        let body: Vec<u8> = items
            .iter()
            .flat_map(|i| {
                let mut b = Vec::new();
                write_item_header(&mut b, ITEM, u32::try_from(i.0.len()).unwrap());
                b.extend_from_slice(&i.0);
                b
            })
            .collect();
        write_header(
            &mut self.0,
            self.1,
            tag,
            VR::SQ,
            u32::try_from(body.len()).unwrap(),
        );
        self.0.extend_from_slice(&body);
        self
    }
    fn file(&self, ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_file_meta(&mut out, CT, "1.2.3", ts);
        out.extend_from_slice(&self.0);
        out
    }
}

fn deid(r: &DicomRules, input: &[u8]) -> (Vec<u8>, DeidentifiedObject) {
    let mut out = Vec::new();
    match r.deidentify(input, &mut out).unwrap() {
        DeidOutcome::Deidentified(o) => (out, o),
        DeidOutcome::Quarantine { reason } => panic!("{reason}"),
    }
}

fn parse(bytes: &[u8]) -> DefaultDicomObject {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .unwrap()
}

fn string(o: &InMemDicomObject, tag: Tag) -> String {
    o.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn defined_length_sequences_are_recursed_and_references_mapped() {
    let item = Ds::new()
        .text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT)
        .text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.99")
        .text(tags::PATIENT_NAME, VR::PN, "HIDDEN^NAME");
    let input = Ds::new()
        .identity("1.2.3.1")
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &[item])
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .file(EXPLICIT);
    let r = rules();
    let (out, _) = deid(&r, &input);
    assert!(!contains(&out, b"HIDDEN"));
    assert!(!contains(&out, b"1.2.3.99"));
    let file = parse(&out);
    let item = &file
        .element(tags::REFERENCED_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        string(item, tags::REFERENCED_SOP_INSTANCE_UID),
        r.map_uid("1.2.3.99")
    );
    assert_eq!(string(item, tags::REFERENCED_SOP_CLASS_UID), CT);
}

#[test]
fn unknown_vr_elements_are_removed_unless_harmless_and_kept_by_the_profile() {
    let mut un_sequence = Vec::new();
    // (0008,1110) ReferencedStudySequence as UN, undefined length: implicit VR items inside.
    write_header(
        &mut un_sequence,
        Encoding::ExplicitLe,
        tags::REFERENCED_STUDY_SEQUENCE,
        VR::UN,
        UNDEFINED,
    );
    write_item_header(&mut un_sequence, ITEM, UNDEFINED);
    write_text(
        &mut un_sequence,
        Encoding::ImplicitLe,
        tags::PATIENT_NAME,
        VR::PN,
        b"UNSEQ^NAME",
    );
    write_item_header(&mut un_sequence, super::codec::ITEM_DELIMITER, 0);
    write_item_header(&mut un_sequence, SEQUENCE_DELIMITER, 0);
    let input = Ds::new()
        .identity("1.2.3.1")
        .raw(&un_sequence)
        .text(tags::STUDY_DESCRIPTION, VR::UN, "UN DESCRIPTION")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::SLICE_THICKNESS, VR::UN, "1.25")
        .text(tags::CONTENT_LABEL, VR::UN, "UNCS")
        .file(EXPLICIT);
    let (out, _) = deid(&rules(), &input);
    assert!(!contains(&out, b"UNSEQ"));
    assert!(!contains(&out, b"UN DESCRIPTION"));
    assert!(
        contains(&out, b"1.25"),
        "a harmless numeric attribute sent as UN is kept"
    );
    assert!(
        contains(&out, b"UNCS"),
        "a code string the profile keeps is kept"
    );
    parse(&out);
}

#[test]
fn a_nested_patient_gets_its_own_pseudonym() {
    let other = Ds::new()
        .text(tags::PATIENT_NAME, VR::PN, "OTHER^PATIENT")
        .text(tags::PATIENT_ID, VR::LO, "MRN-OTHER")
        .text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "OTHERHOSP");
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .defined_seq(tags::SOURCE_PATIENT_GROUP_IDENTIFICATION_SEQUENCE, &[other])
        .file(EXPLICIT);
    let (out, o) = deid(&rules(), &input);
    let key = PseudonymKey::from_bytes(&[11; 32]);
    assert_eq!(o.patient, key.pseudonym("MRN1", ""));
    let file = parse(&out);
    let item = &file
        .element(tags::SOURCE_PATIENT_GROUP_IDENTIFICATION_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    let nested = key.pseudonym("MRN-OTHER", "OTHERHOSP").0;
    assert_eq!(string(item, tags::PATIENT_ID), nested);
    assert_eq!(string(item, tags::PATIENT_NAME), nested);
    assert!(item.element(tags::ISSUER_OF_PATIENT_ID).is_err());
    assert!(!contains(&out, b"MRN-OTHER") && !contains(&out, b"OTHER^PATIENT"));
}

#[test]
fn the_issuer_qualifiers_universal_id_is_the_authority_when_the_issuer_is_empty() {
    let qualifiers = Ds::new().text(tags::UNIVERSAL_ENTITY_ID, VR::UT, "1.2.3.4.HOSP");
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "")
        .defined_seq(
            tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
            &[qualifiers],
        )
        .file(EXPLICIT);
    let (out, o) = deid(&rules(), &input);
    assert_eq!(
        o.patient,
        PseudonymKey::from_bytes(&[11; 32]).pseudonym("MRN1", "1.2.3.4.HOSP")
    );
    assert!(
        !contains(&out, b"1.2.3.4.HOSP"),
        "the qualifiers are removed"
    );
}

#[test]
fn an_object_without_patient_id_gets_a_per_study_pseudonym() {
    let obj = |instance: &str, study: &str| {
        Ds::new()
            .identity(instance)
            .text(tags::PATIENT_NAME, VR::PN, "NO^ID")
            .text(tags::STUDY_INSTANCE_UID, VR::UI, study)
            .file(EXPLICIT)
    };
    let r = rules();
    let (out, a) = deid(&r, &obj("1.2.3.1", "1.2.3.50"));
    let (_, b) = deid(&r, &obj("1.2.3.2", "1.2.3.50"));
    let (_, c) = deid(&r, &obj("1.2.3.3", "1.2.3.51"));
    assert!(!a.patient_identified);
    assert_eq!(a.patient, b.patient);
    assert_ne!(a.patient, c.patient);
    assert_eq!(string(&parse(&out), tags::PATIENT_ID), a.patient.0);
    assert!(!contains(&out, b"NO^ID"));
}

#[test]
fn encapsulated_pixel_data_passes_through_unchanged() {
    let mut pixels = Vec::new();
    write_header(
        &mut pixels,
        Encoding::ExplicitLe,
        tags::PIXEL_DATA,
        VR::OB,
        UNDEFINED,
    );
    write_item_header(&mut pixels, ITEM, 0); // empty basic offset table
    write_item_header(&mut pixels, ITEM, 6);
    pixels.extend_from_slice(b"\xFF\xD8JPG\xD9");
    write_item_header(&mut pixels, SEQUENCE_DELIMITER, 0);
    let ts = "1.2.840.10008.1.2.4.50";
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .raw(&pixels)
        .file(ts);
    let (out, _) = deid(&rules(), &input);
    assert!(out.ends_with(&pixels));
    assert_eq!(parse(&out).meta().transfer_syntax(), ts);
}

#[test]
fn group_lengths_and_earlier_deidentification_attributes_are_replaced() {
    let input = Ds::new()
        .raw(&[0x08, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 99, 0, 0, 0])
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "NO")
        .text(tags::DEIDENTIFICATION_METHOD, VR::LO, "SOMEONE ELSE")
        .file(EXPLICIT);
    let (out, _) = deid(&rules(), &input);
    assert!(!contains(&out, b"SOMEONE ELSE"));
    let file = parse(&out);
    assert!(file.element(Tag(0x0008, 0x0000)).is_err());
    assert_eq!(string(&file, tags::PATIENT_IDENTITY_REMOVED), "YES");
}

#[test]
fn ages_over_89_are_capped_when_patient_characteristics_are_kept() {
    let r = DicomRules::new(
        PseudonymKey::from_bytes(&[11; 32]),
        DeidOptions {
            retain_patient_characteristics: true,
            ..DeidOptions::default()
        },
    )
    .unwrap();
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::PATIENT_AGE, VR::AS, "094Y")
        .text(tags::PATIENT_SEX, VR::CS, "F")
        .file(EXPLICIT);
    let (out, _) = deid(&r, &input);
    let file = parse(&out);
    assert_eq!(string(&file, tags::PATIENT_AGE), "090Y");
    assert_eq!(string(&file, tags::PATIENT_SEX), "F");
}

#[test]
fn unsupported_syntaxes_and_directories_are_refused_without_echoing_values() {
    let ds = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_NAME, VR::PN, "SECRET^NAME");
    let r = rules();
    for (ts, shown) in [
        ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.2"),
        ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99"),
        ("1.3.6.1.4.1.99.1", "1.3.6.1.4.1.99.1"),
        ("SECRET^NAME", "<not a UID>"),
    ] {
        let e = r.deidentify(&ds.file(ts), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, DicomError::UnsupportedTransferSyntax { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(shown) && !e.to_string().contains("SECRET"));
    }
    let mut dir = Vec::new();
    write_file_meta(&mut dir, "1.2.840.10008.1.3.10", "1.2.3", EXPLICIT);
    assert!(matches!(
        r.deidentify(&dir, &mut Vec::new()),
        Err(DicomError::Unsupported(_))
    ));
    // A bad VR right after a name: the error names an offset, never the name.
    let bad = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_NAME, VR::PN, "SECRET^NAME")
        .raw(&[0x10, 0x00, 0x20, 0x00, b'?', b'?', 2, 0, b'A', b'B'])
        .file(EXPLICIT);
    let e = r.deidentify(&bad, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, DicomError::Malformed { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("SECRET"));
}

#[test]
fn every_truncation_of_an_object_is_an_error_or_a_shorter_object_never_a_panic() {
    let item = Ds::new()
        .text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.99")
        .text(tags::PATIENT_NAME, VR::PN, "HIDDEN^NAME");
    let mut pixels = Vec::new();
    write_header(
        &mut pixels,
        Encoding::ExplicitLe,
        tags::PIXEL_DATA,
        VR::OB,
        UNDEFINED,
    );
    write_item_header(&mut pixels, ITEM, 4);
    pixels.extend_from_slice(b"\x01\x02\x03\x04");
    write_item_header(&mut pixels, SEQUENCE_DELIMITER, 0);
    let input = Ds::new()
        .identity("1.2.3.1")
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &[item])
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(Tag(0x0009, 0x0010), VR::LO, "ACME")
        .raw(&pixels)
        .file("1.2.840.10008.1.2.4.50");
    let r = rules();
    let mut errors = 0;
    for cut in 0..input.len() {
        let mut out = Vec::new();
        match r.deidentify(&input[..cut], &mut out) {
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                assert!(!e.to_string().contains("HIDDEN"));
            }
        }
    }
    assert!(errors > input.len() / 2, "most cuts fall inside an element");
}

#[test]
fn a_quarantined_object_writes_nothing_and_says_why() {
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::MODALITY, VR::CS, "XC")
        .file(EXPLICIT);
    let mut out = Vec::new();
    let outcome = rules().deidentify(&input, &mut out).unwrap();
    assert_eq!(
        outcome,
        DeidOutcome::Quarantine {
            reason: QuarantineReason::RiskyModality("XC".into())
        }
    );
    assert!(out.is_empty());
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "YES")
        .file(EXPLICIT);
    assert!(matches!(
        rules().deidentify(&input, &mut out).unwrap(),
        DeidOutcome::Quarantine {
            reason: QuarantineReason::RecognizableVisualFeatures
        }
    ));
}

#[test]
fn invalid_options_are_refused() {
    let e = DicomRules::new(
        PseudonymKey::from_bytes(&[1; 32]),
        DeidOptions {
            max_date_shift_days: 0,
            ..DeidOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("max_date_shift_days"));
}
