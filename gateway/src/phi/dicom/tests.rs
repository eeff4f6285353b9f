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

fn defined_length_sequence_object() -> Vec<u8> {
    let item = Ds::new()
        .text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT)
        .text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.99")
        .text(tags::PATIENT_NAME, VR::PN, "HIDDEN^NAME");
    Ds::new()
        .identity("1.2.3.1")
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &[item])
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .file(EXPLICIT)
}

#[test]
fn defined_length_sequences_are_recursed_and_references_mapped() {
    let input = defined_length_sequence_object();
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

fn unknown_vr_object() -> Vec<u8> {
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
    Ds::new()
        .identity("1.2.3.1")
        .raw(&un_sequence)
        .text(tags::STUDY_DESCRIPTION, VR::UN, "UN DESCRIPTION")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::SLICE_THICKNESS, VR::UN, "1.25")
        .text(tags::CONTENT_LABEL, VR::UN, "UNCS")
        .file(EXPLICIT)
}

#[test]
fn unknown_vr_elements_are_removed_unless_harmless_and_kept_by_the_profile() {
    let input = unknown_vr_object();
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

fn nested_patient_object() -> Vec<u8> {
    let other = Ds::new()
        .text(tags::PATIENT_NAME, VR::PN, "OTHER^PATIENT")
        .text(tags::PATIENT_ID, VR::LO, "MRN-OTHER")
        .text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "OTHERHOSP");
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .defined_seq(tags::SOURCE_PATIENT_GROUP_IDENTIFICATION_SEQUENCE, &[other])
        .file(EXPLICIT)
}

#[test]
fn a_nested_patient_gets_its_own_pseudonym() {
    let input = nested_patient_object();
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

fn issuer_qualifiers_object() -> Vec<u8> {
    let qualifiers = Ds::new().text(tags::UNIVERSAL_ENTITY_ID, VR::UT, "1.2.3.4.HOSP");
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "")
        .defined_seq(
            tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
            &[qualifiers],
        )
        .file(EXPLICIT)
}

#[test]
fn the_issuer_qualifiers_universal_id_is_the_authority_when_the_issuer_is_empty() {
    let input = issuer_qualifiers_object();
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

fn no_patient_id_object(instance: &str, study: &str) -> Vec<u8> {
    Ds::new()
        .identity(instance)
        .text(tags::PATIENT_NAME, VR::PN, "NO^ID")
        .text(tags::STUDY_INSTANCE_UID, VR::UI, study)
        .file(EXPLICIT)
}

#[test]
fn an_object_without_patient_id_gets_a_per_study_pseudonym() {
    let obj = no_patient_id_object;
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

const JPEG: &str = "1.2.840.10008.1.2.4.50";

/// Encapsulated pixel data: an empty basic offset table and `fragments`.
fn encapsulated(fragments: &[&[u8]]) -> Vec<u8> {
    let mut pixels = Vec::new();
    write_header(
        &mut pixels,
        Encoding::ExplicitLe,
        tags::PIXEL_DATA,
        VR::OB,
        UNDEFINED,
    );
    write_item_header(&mut pixels, ITEM, 0); // empty basic offset table
    for fragment in fragments {
        write_item_header(&mut pixels, ITEM, u32::try_from(fragment.len()).unwrap());
        pixels.extend_from_slice(fragment);
    }
    write_item_header(&mut pixels, SEQUENCE_DELIMITER, 0);
    pixels
}

fn encapsulated_object() -> (Vec<u8>, Vec<u8>) {
    let pixels = encapsulated(&[b"\xFF\xD8JPG\xD9"]);
    let input = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .raw(&pixels)
        .file(JPEG);
    (input, pixels)
}

#[test]
fn encapsulated_pixel_data_passes_through_unchanged() {
    let ts = JPEG;
    let (input, pixels) = encapsulated_object();
    let (out, _) = deid(&rules(), &input);
    assert!(out.ends_with(&pixels));
    assert_eq!(parse(&out).meta().transfer_syntax(), ts);
}

fn earlier_deidentification_object() -> Vec<u8> {
    Ds::new()
        .raw(&[0x08, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 99, 0, 0, 0])
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::PATIENT_IDENTITY_REMOVED, VR::CS, "NO")
        .text(tags::DEIDENTIFICATION_METHOD, VR::LO, "SOMEONE ELSE")
        .file(EXPLICIT)
}

#[test]
fn group_lengths_and_earlier_deidentification_attributes_are_replaced() {
    let input = earlier_deidentification_object();
    let (out, _) = deid(&rules(), &input);
    assert!(!contains(&out, b"SOMEONE ELSE"));
    let file = parse(&out);
    assert!(file.element(Tag(0x0008, 0x0000)).is_err());
    assert_eq!(string(&file, tags::PATIENT_IDENTITY_REMOVED), "YES");
}

fn rules_with(options: DeidOptions) -> DicomRules {
    DicomRules::new(PseudonymKey::from_bytes(&[11; 32]), options).unwrap()
}

fn patient_characteristics_rules() -> DicomRules {
    rules_with(DeidOptions {
        retain_patient_characteristics: true,
        ..DeidOptions::default()
    })
}

fn age_object() -> Vec<u8> {
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(tags::PATIENT_AGE, VR::AS, "094Y")
        .text(tags::PATIENT_SEX, VR::CS, "F")
        .file(EXPLICIT)
}

#[test]
fn ages_over_89_are_capped_when_patient_characteristics_are_kept() {
    let r = patient_characteristics_rules();
    let input = age_object();
    let (out, _) = deid(&r, &input);
    let file = parse(&out);
    assert_eq!(string(&file, tags::PATIENT_AGE), "090Y");
    assert_eq!(string(&file, tags::PATIENT_SEX), "F");
}

const REFUSED_SYNTAXES: [(&str, &str); 4] = [
    ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.2"),
    ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99"),
    ("1.3.6.1.4.1.99.1", "1.3.6.1.4.1.99.1"),
    ("SECRET^NAME", "<not a UID>"),
];

fn secret_name_data_set() -> Ds {
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_NAME, VR::PN, "SECRET^NAME")
}

fn directory_file() -> Vec<u8> {
    let mut dir = Vec::new();
    write_file_meta(&mut dir, "1.2.840.10008.1.3.10", "1.2.3", EXPLICIT);
    dir
}

fn bad_vr_object() -> Vec<u8> {
    // A bad VR right after a name.
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_NAME, VR::PN, "SECRET^NAME")
        .raw(&[0x10, 0x00, 0x20, 0x00, b'?', b'?', 2, 0, b'A', b'B'])
        .file(EXPLICIT)
}

#[test]
fn unsupported_syntaxes_and_directories_are_refused_without_echoing_values() {
    let ds = secret_name_data_set();
    let r = rules();
    for (ts, shown) in REFUSED_SYNTAXES {
        let e = r.deidentify(&ds.file(ts), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, DicomError::UnsupportedTransferSyntax { .. }),
            "{e}"
        );
        assert!(e.to_string().contains(shown) && !e.to_string().contains("SECRET"));
    }
    let dir = directory_file();
    assert!(matches!(
        r.deidentify(&dir, &mut Vec::new()),
        Err(DicomError::Unsupported(_))
    ));
    // The error names an offset, never the name.
    let bad = bad_vr_object();
    let e = r.deidentify(&bad, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, DicomError::Malformed { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("SECRET"));
}

fn truncation_object() -> Vec<u8> {
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
    Ds::new()
        .identity("1.2.3.1")
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &[item])
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .text(Tag(0x0009, 0x0010), VR::LO, "ACME")
        .raw(&pixels)
        .file(JPEG)
}

#[test]
fn every_truncation_of_an_object_is_an_error_or_a_shorter_object_never_a_panic() {
    let input = truncation_object();
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

fn risky_modality_object() -> Vec<u8> {
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::MODALITY, VR::CS, "XC")
        .file(EXPLICIT)
}

fn recognizable_features_object() -> Vec<u8> {
    Ds::new()
        .identity("1.2.3.1")
        .text(tags::RECOGNIZABLE_VISUAL_FEATURES, VR::CS, "YES")
        .file(EXPLICIT)
}

#[test]
fn a_quarantined_object_writes_nothing_and_says_why() {
    let input = risky_modality_object();
    let mut out = Vec::new();
    let outcome = rules().deidentify(&input, &mut out).unwrap();
    assert_eq!(
        outcome,
        DeidOutcome::Quarantine {
            reason: QuarantineReason::RiskyModality("XC".into())
        }
    );
    assert!(out.is_empty());
    let input = recognizable_features_object();
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

// ---------------------------------------------------------------------------------------
// The streaming entry points against the in-memory ones.
// ---------------------------------------------------------------------------------------

const IMPLICIT: &str = "1.2.840.10008.1.2";

/// A reader handing out 1..=`max` bytes per call (sizes from a fixed xorshift sequence),
/// with an `Interrupted` error now and then, as sockets and pipes do.
struct ShortReads<'a> {
    data: &'a [u8],
    state: u64,
    max: usize,
    calls: u64,
}

impl<'a> ShortReads<'a> {
    fn new(data: &'a [u8], seed: u64, max: usize) -> Self {
        ShortReads {
            data,
            state: seed | 1,
            max,
            calls: 0,
        }
    }
}

impl std::io::Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        if self.calls % 11 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let want = 1 + usize::try_from(self.state % self.max as u64).unwrap();
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

type Run = (Result<DeidOutcome, DicomError>, Vec<u8>);

/// Both runs de-identify to the same outcome and bytes, or both fail with the same error
/// (offset included).
fn assert_same(what: &str, expected: &Run, got: &Run) {
    match (&expected.0, &got.0) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "{what}: outcome");
            assert!(expected.1 == got.1, "{what}: output bytes differ");
            if let DeidOutcome::Deidentified(o) = b {
                assert_eq!(o.bytes, got.1.len() as u64, "{what}: byte count");
            } else {
                assert!(
                    got.1.is_empty(),
                    "{what}: a quarantined object writes nothing"
                );
            }
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}: error"),
        (a, b) => panic!("{what}: in memory {a:?}, streamed {b:?}"),
    }
}

/// Read sizes the corpus is streamed with: whole buffers, and short reads of at most
/// 1, 3, 64 and 5000 bytes.
const READ_LIMITS: [Option<usize>; 5] = [None, Some(1), Some(3), Some(64), Some(5000)];

fn stream_file(r: &DicomRules, file: &[u8], reads: Option<usize>, seed: u64) -> Run {
    let mut out = Vec::new();
    let result = match reads {
        None => r.deidentify_stream(&mut &file[..], &mut out),
        Some(max) => r.deidentify_stream(&mut ShortReads::new(file, seed, max), &mut out),
    };
    (result, out)
}

fn stream_dataset(r: &DicomRules, ds: &[u8], ts: &str, reads: Option<usize>, seed: u64) -> Run {
    let mut out = Vec::new();
    let result = match reads {
        None => r.deidentify_dataset_stream(&mut &ds[..], ts, &mut out),
        Some(max) => r.deidentify_dataset_stream(&mut ShortReads::new(ds, seed, max), ts, &mut out),
    };
    (result, out)
}

/// The streaming entry points write exactly what the in-memory ones write, for the file and
/// for its data set without the meta group, read whole or in short reads.
fn assert_stream_matches(name: &str, r: &DicomRules, file: &[u8]) {
    let mut out = Vec::new();
    let expected = (r.deidentify(file, &mut out), out);
    for (i, reads) in READ_LIMITS.into_iter().enumerate() {
        let got = stream_file(r, file, reads, i as u64 + 1);
        assert_same(&format!("{name} (file, reads {reads:?})"), &expected, &got);
    }
    let Ok(meta) = read_file_meta(file) else {
        return;
    };
    let ds = &file[meta.dataset_start..];
    let ts = &meta.transfer_syntax;
    let mut out = Vec::new();
    let expected = (r.deidentify_dataset(ds, ts, &mut out), out);
    for (i, reads) in READ_LIMITS.into_iter().enumerate() {
        let got = stream_dataset(r, ds, ts, reads, i as u64 + 7);
        assert_same(
            &format!("{name} (data set, reads {reads:?})"),
            &expected,
            &got,
        );
    }
}

fn shift_rules() -> DicomRules {
    rules_with(DeidOptions {
        dates: DatePolicy::Shift,
        retain_patient_characteristics: true,
        retain_device_identity: true,
        safe_private: vec![SafePrivateTag {
            creator: "ACME SAFE".into(),
            group: 0x0009,
            element: 0x01,
        }],
        ..DeidOptions::default()
    })
}

fn keep_dates_rules() -> DicomRules {
    rules_with(DeidOptions {
        dates: DatePolicy::Keep,
        allow_burned_in_annotation: true,
        ..DeidOptions::default()
    })
}

/// Native pixel data of `len` bytes (OW, defined length) in `enc`.
fn native_pixels(enc: Encoding, len: usize) -> Vec<u8> {
    let mut pixels = Vec::new();
    write_header(
        &mut pixels,
        enc,
        tags::PIXEL_DATA,
        VR::OW,
        u32::try_from(len).unwrap(),
    );
    pixels.extend((0..len).map(|i| (i * 31 % 251) as u8));
    pixels
}

/// What may follow pixel data at the top level: digital signatures and trailing padding
/// (both removed by the profile).
fn trailer(enc: Encoding) -> Vec<u8> {
    let mut t = Vec::new();
    write_header(
        &mut t,
        enc,
        tags::DIGITAL_SIGNATURES_SEQUENCE,
        VR::SQ,
        UNDEFINED,
    );
    write_item_header(&mut t, ITEM, UNDEFINED);
    write_text(
        &mut t,
        enc,
        tags::DIGITAL_SIGNATURE_UID,
        VR::UI,
        b"1.2.3.777",
    );
    write_item_header(&mut t, super::codec::ITEM_DELIMITER, 0);
    write_item_header(&mut t, SEQUENCE_DELIMITER, 0);
    write_header(&mut t, enc, tags::DATA_SET_TRAILING_PADDING, VR::OB, 4096);
    t.extend(std::iter::repeat_n(0u8, 4096));
    t
}

/// A planted identifier for a Table E.1-1 attribute, fitting its dictionary VR.
fn planted_element(tag: Tag, index: usize) -> dicom_object::mem::InMemElement {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue};
    let vr = super::codec::dictionary_vr(tag);
    let text = |v: String| DataElement::new(tag, vr, PrimitiveValue::from(v));
    match vr {
        VR::SQ => {
            let item = InMemDicomObject::from_element_iter([DataElement::new(
                tags::PATIENT_NAME,
                VR::PN,
                PrimitiveValue::from(format!("PHISQ{index}")),
            )]);
            DataElement::new(tag, vr, DataSetSequence::from(vec![item]))
        }
        VR::UI => text(format!("1.2.826.0.1.3680043.8.498.9{index:04}")),
        VR::DA => text("19710203".into()),
        VR::DT => text("19710203101112".into()),
        VR::TM => text("043201.987".into()),
        VR::AS => text("071Y".into()),
        VR::DS | VR::IS => text(format!("{}", 870_000 + index)),
        VR::US => DataElement::new(tag, vr, PrimitiveValue::from(7u16)),
        VR::SS => DataElement::new(tag, vr, PrimitiveValue::from(7i16)),
        VR::UL => DataElement::new(tag, vr, PrimitiveValue::from(7u32)),
        VR::SL => DataElement::new(tag, vr, PrimitiveValue::from(7i32)),
        VR::FL => DataElement::new(tag, vr, PrimitiveValue::from(7f32)),
        VR::FD => DataElement::new(tag, vr, PrimitiveValue::from(7f64)),
        VR::AT => DataElement::new(tag, vr, PrimitiveValue::from(tag)),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => DataElement::new(
            tag,
            vr,
            PrimitiveValue::from(format!("PHI{index:04}BIN").into_bytes()),
        ),
        _ => text(format!("PHI{:04X}{:04X}", tag.0, tag.1)),
    }
}

/// An object with an identifier planted in every Table E.1-1 attribute (written by
/// dicom-rs in `ts`), then `pixels` and `trailer` appended as they are.
fn planted_object(ts: &str, pixels: &[u8], trailer: &[u8]) -> Vec<u8> {
    use dicom_core::{DataElement, PrimitiveValue};
    use dicom_object::meta::FileMetaTableBuilder;
    let identity = [
        tags::SOP_CLASS_UID,
        tags::SOP_INSTANCE_UID,
        tags::PATIENT_ID,
        tags::PATIENT_NAME,
        tags::ISSUER_OF_PATIENT_ID,
    ];
    let mut obj = InMemDicomObject::from_element_iter(
        table_e1_1()
            .into_iter()
            .enumerate()
            .map(|(i, ((g, e), _))| (i, Tag(g, e)))
            // Meta groups are not in a data set; what sorts after pixel data is appended.
            .filter(|(_, tag)| tag.0 > 0x0002 && tag.0 < 0x7FE0 && !identity.contains(tag))
            .map(|(i, tag)| planted_element(tag, i)),
    );
    let text = |tag: Tag, vr: VR, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    for element in [
        text(tags::SOP_CLASS_UID, VR::UI, CT),
        text(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.8.498.1004",
        ),
        text(tags::PATIENT_ID, VR::LO, "MRN-7730021"),
        text(tags::PATIENT_NAME, VR::PN, "DOE^JANE"),
        text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP"),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME SAFE"),
        text(Tag(0x0009, 0x1001), VR::LO, "SAFEVALUE42"),
        text(Tag(0x0009, 0x1002), VR::LO, "PHIPRIVATE1"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(64u16)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(64u16)),
    ] {
        obj.put(element);
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();
    bytes.extend_from_slice(pixels);
    bytes.extend_from_slice(trailer);
    bytes
}

/// Elements after pixel data that the rules must see whole (a kept sequence, UIDs, a
/// date, an age, private creators and a safe private attribute whose creator came before
/// the pixel data), and some they drop or replace unseen: the top level's state (private
/// creators, insertions, the study UID of the outcome) carries across the pixel data.
fn elements_after_pixel_data(enc: Encoding) -> Vec<u8> {
    let item = Ds(Vec::new(), enc)
        .text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, "1.2.3.99")
        .text(tags::PATIENT_NAME, VR::PN, "HIDDEN^AFTER");
    let mut after = Ds(Vec::new(), enc)
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &[item])
        .text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.50")
        .text(tags::CONTENT_DATE, VR::DA, "20240115")
        .text(tags::PATIENT_AGE, VR::AS, "094Y")
        .text(tags::PATIENT_NAME, VR::PN, "AFTER^PIXELS")
        .text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES")
        .text(Tag(0x0009, 0x1001), VR::LO, "SAFEAFTER")
        .text(Tag(0x0009, 0x1002), VR::LO, "PHIAFTER")
        .text(Tag(0x7FE1, 0x0010), VR::LO, "ACME SAFE")
        .text(Tag(0x7FE1, 0x1001), VR::LO, "PHI7FE1")
        .text(tags::STATION_NAME, VR::SH, "STATIONAFTER")
        .text(tags::SLICE_THICKNESS, VR::UN, "1.25");
    write_header(&mut after.0, enc, Tag(0x0029, 0x1010), VR::OB, 70_000);
    after.0.extend(std::iter::repeat_n(b'P', 70_000));
    after.0
}

fn corpus() -> Vec<(String, DicomRules, Vec<u8>)> {
    let mut c: Vec<(String, DicomRules, Vec<u8>)> = vec![
        (
            "defined-length sequences".into(),
            rules(),
            defined_length_sequence_object(),
        ),
        ("unknown VR".into(), rules(), unknown_vr_object()),
        ("nested patient".into(), rules(), nested_patient_object()),
        (
            "issuer qualifiers".into(),
            rules(),
            issuer_qualifiers_object(),
        ),
        (
            "no patient id".into(),
            rules(),
            no_patient_id_object("1.2.3.1", "1.2.3.50"),
        ),
        ("encapsulated".into(), rules(), encapsulated_object().0),
        (
            "earlier de-identification".into(),
            rules(),
            earlier_deidentification_object(),
        ),
        ("age".into(), patient_characteristics_rules(), age_object()),
        ("directory".into(), rules(), directory_file()),
        ("bad VR".into(), rules(), bad_vr_object()),
        ("truncation".into(), rules(), truncation_object()),
        ("risky modality".into(), rules(), risky_modality_object()),
        (
            "recognizable features".into(),
            rules(),
            recognizable_features_object(),
        ),
        ("not DICOM".into(), rules(), b"MSH|^~\\&|not dicom".to_vec()),
        ("empty".into(), rules(), Vec::new()),
        (
            "bare data set".into(),
            rules(),
            Ds::new().identity("1.2.3.1").0,
        ),
        (
            "burned in, allowed".into(),
            keep_dates_rules(),
            recognizable_features_object(),
        ),
    ];
    for (ts, _) in REFUSED_SYNTAXES {
        c.push((
            format!("syntax {ts}"),
            rules(),
            secret_name_data_set().file(ts),
        ));
    }
    let big_fragment: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    for (ts, enc) in [
        (EXPLICIT, Encoding::ExplicitLe),
        (IMPLICIT, Encoding::ImplicitLe),
    ] {
        let native = native_pixels(enc, 64 * 64 * 2);
        let large = native_pixels(enc, 600_000);
        for (options, make) in [
            ("basic", rules as fn() -> DicomRules),
            ("shift", shift_rules),
            ("keep", keep_dates_rules),
        ] {
            c.push((
                format!("planted {ts} {options}"),
                make(),
                planted_object(ts, &native, &trailer(enc)),
            ));
            c.push((
                format!("planted, elements after pixel data, {ts} {options}"),
                make(),
                planted_object(
                    ts,
                    &[native.clone(), elements_after_pixel_data(enc)].concat(),
                    &trailer(enc),
                ),
            ));
        }
        c.push((
            format!("large pixel data {ts}"),
            shift_rules(),
            planted_object(ts, &large, &[]),
        ));
    }
    let fragments = encapsulated(&[b"\xFF\xD8first\xFF\xD9", &big_fragment, b"", b"xy"]);
    for (options, make) in [
        ("basic", rules as fn() -> DicomRules),
        ("shift", shift_rules),
    ] {
        c.push((
            format!("planted encapsulated {options}"),
            make(),
            planted_object(JPEG, &fragments, &trailer(Encoding::ExplicitLe)),
        ));
    }
    // Hostile: an undefined-length item among the fragments (the in-memory path skips it
    // as a data set; the streaming path must agree).
    let mut odd = Vec::new();
    write_header(
        &mut odd,
        Encoding::ExplicitLe,
        tags::PIXEL_DATA,
        VR::OB,
        UNDEFINED,
    );
    write_item_header(&mut odd, ITEM, UNDEFINED);
    write_text(
        &mut odd,
        Encoding::ExplicitLe,
        tags::PATIENT_NAME,
        VR::PN,
        b"IN^PIXELS",
    );
    write_item_header(&mut odd, super::codec::ITEM_DELIMITER, 0);
    write_item_header(&mut odd, SEQUENCE_DELIMITER, 0);
    c.push((
        "undefined item in pixel data".into(),
        rules(),
        planted_object(JPEG, &odd, &[]),
    ));
    // Hostile: a top-level item tag right after the pixel data.
    let mut stray = fragments.clone();
    write_item_header(&mut stray, ITEM, 0);
    c.push((
        "stray item".into(),
        rules(),
        planted_object(JPEG, &stray, &[]),
    ));
    c
}

#[test]
fn streaming_writes_the_same_bytes_as_in_memory_across_the_corpus() {
    let corpus = corpus();
    let mut deidentified = 0;
    for (name, r, file) in &corpus {
        assert_stream_matches(name, r, file);
        if matches!(
            r.deidentify(file, &mut Vec::new()),
            Ok(DeidOutcome::Deidentified(_))
        ) {
            deidentified += 1;
        }
    }
    // The comparison is only worth something if most of the corpus de-identifies.
    assert!(deidentified >= 20, "{deidentified} of {}", corpus.len());
}

#[test]
fn the_planted_object_leaks_nothing_through_the_streaming_path() {
    let enc = Encoding::ExplicitLe;
    let input = planted_object(
        EXPLICIT,
        &[native_pixels(enc, 8192), elements_after_pixel_data(enc)].concat(),
        &trailer(enc),
    );
    let r = shift_rules();
    let mut out = Vec::new();
    let DeidOutcome::Deidentified(o) = r
        .deidentify_stream(&mut ShortReads::new(&input, 5, 100), &mut out)
        .unwrap()
    else {
        panic!("quarantined")
    };
    for planted in [
        &b"MRN-7730021"[..],
        b"DOE^JANE",
        b"PHISQ",
        b"19710203",
        b"PHIPRIVATE1",
        b"HIDDEN^AFTER",
        b"AFTER^PIXELS",
        b"PHIAFTER",
        b"PHI7FE1",
        b"1.2.3.777",
        b"PPPPPPPP",
    ] {
        assert!(
            !contains(&out, planted),
            "{}",
            String::from_utf8_lossy(planted)
        );
    }
    assert!(contains(&out, b"SAFEVALUE42") && contains(&out, b"SAFEAFTER"));
    assert!(
        contains(&out, b"STATIONAFTER"),
        "device identity is retained"
    );
    // The study UID after the pixel data is the object's study.
    assert_eq!(o.study_instance_uid, Some(r.map_uid("1.2.3.50")));
    let file = parse(&out);
    assert_eq!(string(&file, tags::PATIENT_ID), o.patient.0);
    assert!(
        contains(&out, b"090Y"),
        "the age after the pixel data is capped"
    );
    assert!(file.element(tags::DATA_SET_TRAILING_PADDING).is_err());
}

#[test]
fn every_truncation_streams_to_the_same_result_as_in_memory() {
    let enc = Encoding::ExplicitLe;
    let objects = [
        (rules(), truncation_object()),
        (
            shift_rules(),
            Ds::new()
                .identity("1.2.3.1")
                .text(Tag(0x0009, 0x0010), VR::LO, "ACME SAFE")
                .text(tags::PATIENT_ID, VR::LO, "MRN1")
                .raw(&native_pixels(enc, 40))
                .raw(&elements_after_pixel_data(enc)[..300])
                .raw(&trailer(enc)[..60])
                .file(EXPLICIT),
        ),
    ];
    for (r, input) in &objects {
        let meta = read_file_meta(input).unwrap();
        for cut in 0..input.len() {
            let cut_input = &input[..cut];
            let mut out = Vec::new();
            let expected = (r.deidentify(cut_input, &mut out), out);
            for reads in [None, Some(2)] {
                let got = stream_file(r, cut_input, reads, cut as u64);
                assert_same(&format!("file cut at {cut}"), &expected, &got);
            }
            let Some(ds) = cut_input.get(meta.dataset_start..) else {
                continue;
            };
            let mut out = Vec::new();
            let expected = (r.deidentify_dataset(ds, EXPLICIT, &mut out), out);
            let got = stream_dataset(r, ds, EXPLICIT, Some(3), cut as u64);
            assert_same(&format!("data set cut at {cut}"), &expected, &got);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 64,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Any split of the input into reads gives the same output.
    #[test]
    fn any_read_sizes_give_the_same_output(
        sizes in proptest::collection::vec(1usize..2000, 1..64),
        which in 0usize..3,
    ) {
        let enc = Encoding::ExplicitLe;
        let input = match which {
            0 => planted_object(
                EXPLICIT,
                &[native_pixels(enc, 3000), elements_after_pixel_data(enc)].concat(),
                &trailer(enc),
            ),
            1 => encapsulated_object().0,
            _ => planted_object(JPEG, &encapsulated(&[&[7u8; 5000], b"ab"]), &trailer(enc)),
        };
        let r = shift_rules();
        let mut expected = Vec::new();
        r.deidentify(&input, &mut expected).unwrap();
        let mut reader = SizedReads { data: &input, sizes: &sizes, next: 0 };
        let mut out = Vec::new();
        r.deidentify_stream(&mut reader, &mut out).unwrap();
        proptest::prop_assert!(out == expected);
    }
}

/// A reader handing out reads of the given sizes, cycling through them.
struct SizedReads<'a> {
    data: &'a [u8],
    sizes: &'a [usize],
    next: usize,
}

impl std::io::Read for SizedReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// An endless or long reader: `head`, then `bulk` bytes of a pattern, then `tail`; counts
/// what was read.
struct Generated {
    head: Vec<u8>,
    bulk: u64,
    tail: Vec<u8>,
    at: u64,
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let head = self.head.len() as u64;
        let end = head + self.bulk + self.tail.len() as u64;
        let n = (buf.len() as u64).min(end - self.at) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.at + i as u64;
            *b = if at < head {
                self.head[at as usize]
            } else if at < head + self.bulk {
                (at % 251) as u8
            } else {
                self.tail[(at - head - self.bulk) as usize]
            };
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// A byte-counting writer that keeps nothing.
#[derive(Default)]
struct Count(u64);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The part of an object before its native pixel data value, whose header claims `len`
/// bytes.
fn head_with_pixel_header(extra: &Ds, len: u32) -> Vec<u8> {
    let mut head = Ds::new()
        .identity("1.2.3.1")
        .text(tags::PATIENT_ID, VR::LO, "MRN1")
        .raw(&extra.0)
        .file(EXPLICIT);
    write_header(
        &mut head,
        Encoding::ExplicitLe,
        tags::PIXEL_DATA,
        VR::OW,
        len,
    );
    head
}

#[test]
fn pixel_data_passes_through_without_being_held() {
    // 32 MiB of pixel data under a 64 KiB limit: only possible if none of it is held.
    let bulk = 32 * 1024 * 1024;
    let r = rules().with_max_header_bytes(64 * 1024);
    let mut input = Generated {
        head: head_with_pixel_header(&Ds::new(), bulk),
        bulk: u64::from(bulk),
        tail: trailer(Encoding::ExplicitLe),
        at: 0,
    };
    let mut out = Count::default();
    let DeidOutcome::Deidentified(o) = r.deidentify_stream(&mut input, &mut out).unwrap() else {
        panic!("quarantined")
    };
    assert_eq!(o.bytes, out.0);
    assert!(out.0 > u64::from(bulk));
    assert_eq!(
        input.at,
        (input.head.len() + input.tail.len()) as u64 + u64::from(bulk)
    );
}

#[test]
fn a_head_or_element_above_the_limit_is_refused_and_the_input_not_read_further() {
    let r = rules().with_max_header_bytes(4096);
    // A private blob before the quarantine attributes: part of the head.
    let mut blob = Ds::new();
    write_header(
        &mut blob.0,
        Encoding::ExplicitLe,
        Tag(0x0009, 0x1010),
        VR::OB,
        8000,
    );
    blob.0.extend(std::iter::repeat_n(1u8, 8000));
    let mut input = Generated {
        head: head_with_pixel_header(&blob, 1 << 30),
        bulk: 1 << 30,
        tail: Vec::new(),
        at: 0,
    };
    let e = r
        .deidentify_stream(&mut input, &mut Count::default())
        .unwrap_err();
    assert!(
        matches!(e, DicomError::HeaderTooLarge { limit: 4096 }),
        "{e}"
    );
    assert!(
        input.at <= READ_LIMIT_OF_ONE_READ,
        "read {} bytes",
        input.at
    );
    // A kept sequence after the pixel data, larger than the limit.
    let items: Vec<Ds> = (0..200)
        .map(|i| {
            Ds::new().text(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &format!("1.2.3.{i}"),
            )
        })
        .collect();
    let input = Ds::new()
        .identity("1.2.3.1")
        .raw(&native_pixels(Encoding::ExplicitLe, 10))
        .defined_seq(tags::REFERENCED_IMAGE_SEQUENCE, &items)
        .file(EXPLICIT);
    let e = r
        .deidentify_stream(&mut &input[..], &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, DicomError::HeaderTooLarge { .. }), "{e}");
    // The in-memory path has no such limit.
    assert!(r.deidentify(&input, &mut Vec::new()).is_ok());
    assert_eq!(rules().max_header_bytes(), DEFAULT_MAX_HEADER_BYTES);
}

#[test]
fn a_quarantined_object_is_not_read_past_its_head() {
    let head = Ds::new().text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    let mut input = Generated {
        head: head_with_pixel_header(&head, 1 << 31),
        bulk: 1 << 31,
        tail: Vec::new(),
        at: 0,
    };
    let mut out = Vec::new();
    let outcome = rules().deidentify_stream(&mut input, &mut out).unwrap();
    assert_eq!(
        outcome,
        DeidOutcome::Quarantine {
            reason: QuarantineReason::BurnedInAnnotation
        }
    );
    assert!(out.is_empty());
    assert!(
        input.at <= READ_LIMIT_OF_ONE_READ,
        "read {} bytes",
        input.at
    );
}

/// The streaming path reads ahead at most one buffer.
const READ_LIMIT_OF_ONE_READ: u64 = super::stream::READ_CHUNK as u64;

#[test]
fn a_failing_reader_is_a_read_error() {
    struct Failing<'a>(&'a [u8]);
    impl std::io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("link down"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let input = truncation_object();
    let e = rules()
        .deidentify_stream(&mut Failing(&input[..input.len() - 5]), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, DicomError::Read(_)), "{e}");
    assert!(e.to_string().contains("link down"));
}
