//! DICOM de-identification throughput: uncompressed CT-like (512×512×16 bit, ~0.5 MB) and
//! MR-like (256×256×16 bit, ~128 KB) objects with realistic headers, de-identified from
//! memory to memory. For reference it also times dicom-rs's own full parse + write of the
//! same objects, and, if `gdcmanon` (Debian libgdcm-tools) is installed, GDCM's PS 3.15
//! basic profile (`gdcmanon -e -p <password>`: the certificate-free mode, which encrypts
//! the original attributes with a passphrase) over the same files in one run.
//!
//! Prints `dicom_deid: wardgate N MB/s, gdcmanon M MB/s (R×)`. Target: ≥ 600 MB/s and ≥ 3×
//! gdcmanon.
//!
//! The streaming entry point (`deidentify_stream`) is timed on the same objects, read from
//! memory through `io::Read`. Then, in a child process (so the figure is its own), a
//! synthetic 2 GiB multi-frame object (4096 frames of 512×512×16 bit) is streamed from a
//! generator reader into `io::sink()` — nothing is written to disk — and its peak resident
//! memory (VmHWM of /proc/self/status) is printed before and after: the streaming path's
//! memory must not grow with the pixel data.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use wardgate::phi::dicom::{DatePolicy, DeidOptions, DeidOutcome, DicomRules};
use wardgate::phi::PseudonymKey;

const CT_OBJECTS: usize = 200;
const MR_OBJECTS: usize = 400;
const ROUNDS: usize = 7;
/// Set in the child process that streams the synthetic multi-frame object.
const STREAM_CHILD: &str = "WARDGATE_BENCH_DICOM_STREAM_CHILD";
/// Frames of the synthetic multi-frame object (512×512×16 bit each: 2 GiB in all).
const FRAMES: u32 = 4096;

type El = DataElement<InMemDicomObject>;

fn text(tag: Tag, vr: VR, v: &str) -> El {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn us(tag: Tag, v: u16) -> El {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// A realistic image header (patient, study, series, equipment, a few sequences and
/// private tags) and `side`×`side` 16-bit pixels.
fn image(sop_class: &str, modality: &str, side: u16, patient: usize, index: usize) -> Vec<u8> {
    image_with(sop_class, modality, side, patient, index, true)
}

/// [`image`], with the pixel data element left out if `with_pixels` is false.
fn image_with(
    sop_class: &str,
    modality: &str,
    side: u16,
    patient: usize,
    index: usize,
    with_pixels: bool,
) -> Vec<u8> {
    let study = format!("1.2.826.0.1.3680043.8.498.{}", 10_000 + patient);
    let series = format!("{study}.1");
    let instance = format!("{series}.{index}");
    let pixels: Vec<u8> = if with_pixels {
        (0..u32::from(side) * u32::from(side))
            .flat_map(|i| (((i * 31) ^ (index as u32)) % 4096).to_le_bytes()[..2].to_vec())
            .collect()
    } else {
        Vec::new()
    };
    let reference = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, sop_class),
        text(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            &format!("{series}.{}", index + 1),
        ),
    ]);
    let code = InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, "T-D3000"),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "SRT"),
        text(tags::CODE_MEANING, VR::LO, "Chest"),
    ]);
    let request = InMemDicomObject::from_element_iter([
        text(tags::REQUESTED_PROCEDURE_ID, VR::SH, "RP12345"),
        text(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, "SPS12345"),
        text(tags::REQUESTING_PHYSICIAN, VR::PN, "WHO^REQUESTED"),
    ]);
    let mut obj = InMemDicomObject::from_element_iter([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, "20240115"),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, "101112"),
        text(tags::SOP_CLASS_UID, VR::UI, sop_class),
        text(tags::SOP_INSTANCE_UID, VR::UI, &instance),
        text(tags::STUDY_DATE, VR::DA, "20240115"),
        text(tags::SERIES_DATE, VR::DA, "20240115"),
        text(tags::ACQUISITION_DATE, VR::DA, "20240115"),
        text(tags::CONTENT_DATE, VR::DA, "20240115"),
        text(tags::STUDY_TIME, VR::TM, "101010"),
        text(tags::SERIES_TIME, VR::TM, "101010"),
        text(tags::ACQUISITION_TIME, VR::TM, "101011.5"),
        text(tags::CONTENT_TIME, VR::TM, "101011.5"),
        text(tags::ACCESSION_NUMBER, VR::SH, "ACC0001234"),
        text(tags::MODALITY, VR::CS, modality),
        text(tags::MANUFACTURER, VR::LO, "ACME MEDICAL"),
        text(tags::INSTITUTION_NAME, VR::LO, "GENERAL HOSPITAL"),
        text(
            tags::INSTITUTION_ADDRESS,
            VR::ST,
            "1 MAIN STREET, SPRINGFIELD",
        ),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "REFERRER^ROBERT"),
        text(tags::STATION_NAME, VR::SH, "SCANNER01"),
        text(tags::STUDY_DESCRIPTION, VR::LO, "CHEST W CONTRAST"),
        DataElement::new(
            tags::PROCEDURE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![code.clone()]),
        ),
        text(tags::SERIES_DESCRIPTION, VR::LO, "AXIAL 1.25MM"),
        text(tags::OPERATORS_NAME, VR::PN, "TECH^TERRY"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "MODEL 9000"),
        DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![reference]),
        ),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME 1.0"),
        text(Tag(0x0009, 0x1001), VR::LO, "PRIVATE VALUE"),
        text(Tag(0x0009, 0x1002), VR::LO, "MORE PRIVATE"),
        text(tags::PATIENT_NAME, VR::PN, &format!("PATIENT^{patient}")),
        text(tags::PATIENT_ID, VR::LO, &format!("MRN{patient:07}")),
        text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP"),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, "19620417"),
        text(tags::PATIENT_SEX, VR::CS, "F"),
        text(tags::PATIENT_AGE, VR::AS, "061Y"),
        text(tags::PATIENT_WEIGHT, VR::DS, "71.5"),
        text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        text(tags::SLICE_THICKNESS, VR::DS, "1.25"),
        text(tags::KVP, VR::DS, "120"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-0042"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, "VER 1.2.3"),
        text(tags::PROTOCOL_NAME, VR::LO, "CHEST ROUTINE"),
        text(tags::PATIENT_POSITION, VR::CS, "HFS"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series),
        text(tags::STUDY_ID, VR::SH, "STUDY1"),
        text(tags::SERIES_NUMBER, VR::IS, "3"),
        text(tags::INSTANCE_NUMBER, VR::IS, &index.to_string()),
        text(tags::IMAGE_POSITION_PATIENT, VR::DS, "-250\\-250\\-100.5"),
        text(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
        text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &format!("{study}.9")),
        text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, "SN"),
        text(tags::SLICE_LOCATION, VR::DS, "-100.5"),
        DataElement::new(
            tags::REQUEST_ATTRIBUTES_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![request]),
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, side),
        us(tags::COLUMNS, side),
        text(tags::PIXEL_SPACING, VR::DS, "0.7\\0.7"),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
        text(tags::BURNED_IN_ANNOTATION, VR::CS, "NO"),
        text(tags::WINDOW_CENTER, VR::DS, "40"),
        text(tags::WINDOW_WIDTH, VR::DS, "400"),
        text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        text(tags::RESCALE_SLOPE, VR::DS, "1"),
    ]);
    if with_pixels {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(pixels),
        ));
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .expect("bench object meta");
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).expect("bench object encodes");
    bytes
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn main() {
    if std::env::var_os(STREAM_CHILD).is_some() {
        stream_multi_frame();
        return;
    }
    let ct: Vec<Vec<u8>> = (0..CT_OBJECTS)
        .map(|i| image("1.2.840.10008.5.1.4.1.1.2", "CT", 512, i / 50, i))
        .collect();
    let mr: Vec<Vec<u8>> = (0..MR_OBJECTS)
        .map(|i| image("1.2.840.10008.5.1.4.1.1.4", "MR", 256, 100 + i / 100, i))
        .collect();
    let rules = DicomRules::new(
        PseudonymKey::from_bytes(&[3; 32]),
        DeidOptions {
            dates: DatePolicy::Shift,
            ..DeidOptions::default()
        },
    )
    .expect("bench options");

    let mut figures = Vec::new();
    for (name, set) in [("CT 0.5 MB", &ct), ("MR 128 KB", &mr)] {
        let total: usize = set.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(set[0].len() + 4096);
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for input in set {
                out.clear();
                let outcome = rules.deidentify(input, &mut out).expect("de-identifies");
                assert!(matches!(outcome, DeidOutcome::Deidentified(_)));
            }
            rounds.push(start.elapsed());
        }
        rounds.sort();
        let median = rounds[ROUNDS / 2];
        let rate = mb_per_s(total, median);
        println!(
            "dicom_deid {name}: {} objects, {:.1} MB, median of {ROUNDS} rounds {:.1} ms: {rate:.0} MB/s ({:.0} objects/s)",
            set.len(),
            total as f64 / 1e6,
            median.as_secs_f64() * 1e3,
            set.len() as f64 / median.as_secs_f64()
        );
        figures.push((total, median));
    }
    let all_bytes: usize = figures.iter().map(|(b, _)| b).sum();
    let all_time: Duration = figures.iter().map(|(_, t)| *t).sum();
    let wardgate_rate = mb_per_s(all_bytes, all_time);

    // The streaming entry point over the same objects (read through `io::Read` from memory).
    let mut stream_time = Duration::ZERO;
    for (name, set) in [("CT 0.5 MB", &ct), ("MR 128 KB", &mr)] {
        let total: usize = set.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(set[0].len() + 4096);
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for input in set {
                out.clear();
                let outcome = rules
                    .deidentify_stream(&mut &input[..], &mut out)
                    .expect("de-identifies");
                assert!(matches!(outcome, DeidOutcome::Deidentified(_)));
            }
            rounds.push(start.elapsed());
        }
        rounds.sort();
        let median = rounds[ROUNDS / 2];
        println!(
            "dicom_deid stream {name}: median of {ROUNDS} rounds {:.1} ms: {:.0} MB/s",
            median.as_secs_f64() * 1e3,
            mb_per_s(total, median)
        );
        stream_time += median;
    }
    println!(
        "dicom_deid: streaming path {:.0} MB/s, slice path {wardgate_rate:.0} MB/s (same objects)",
        mb_per_s(all_bytes, stream_time)
    );
    match std::env::current_exe().map(|exe| Command::new(exe).env(STREAM_CHILD, "1").status()) {
        Ok(Ok(status)) if status.success() => {}
        other => println!("dicom_deid stream 2 GiB: child run failed ({other:?})"),
    }

    // Reference: dicom-rs's in-memory object, full parse and write of the same CT set.
    let start = Instant::now();
    let mut out = Vec::new();
    for input in &ct {
        out.clear();
        let obj = dicom_object::from_reader(&input[128..]).expect("dicom-rs parses");
        obj.write_all(&mut out).expect("dicom-rs writes");
    }
    let ct_bytes: usize = ct.iter().map(Vec::len).sum();
    println!(
        "dicom_deid reference: dicom-object parse + write (no de-identification) of the CT set: {:.0} MB/s",
        mb_per_s(ct_bytes, start.elapsed())
    );

    match gdcmanon_rate(&ct, &mr) {
        Some(gdcm) => println!(
            "dicom_deid: wardgate {wardgate_rate:.0} MB/s, gdcmanon {gdcm:.0} MB/s ({:.1}×)",
            wardgate_rate / gdcm
        ),
        None => println!(
            "dicom_deid: wardgate {wardgate_rate:.0} MB/s, gdcmanon not installed (apt-get install libgdcm-tools) — comparison skipped"
        ),
    }
}

/// GDCM's basic profile over the same objects written to a temp dir, in one run.
fn gdcmanon_rate(ct: &[Vec<u8>], mr: &[Vec<u8>]) -> Option<f64> {
    Command::new("gdcmanon").arg("--version").output().ok()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    std::fs::create_dir_all(&input).expect("in dir");
    std::fs::create_dir_all(&output).expect("out dir");
    let mut total = 0;
    for (i, bytes) in ct.iter().chain(mr).enumerate() {
        std::fs::write(input.join(format!("{i:05}.dcm")), bytes).expect("write input");
        total += bytes.len();
    }
    let start = Instant::now();
    let status = Command::new("gdcmanon")
        .args(["-e", "-p", "wardgate-bench", "--continue", "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .status()
        .ok()?;
    let elapsed = start.elapsed();
    let produced = std::fs::read_dir(&output).ok()?.count();
    if !status.success() || produced != ct.len() + mr.len() {
        println!("gdcmanon failed ({status}, {produced} outputs): comparison skipped");
        return None;
    }
    Some(mb_per_s(total, elapsed))
}

/// Child process: streams a 2 GiB multi-frame object from a generator into `io::sink()`
/// and prints the rate and the peak resident memory before and after.
fn stream_multi_frame() {
    let mut head = image_with("1.2.840.10008.5.1.4.1.1.2.1", "CT", 512, 7, 0, false);
    let frame = 512u64 * 512 * 2;
    let bulk = frame * u64::from(FRAMES);
    // Explicit VR LE: (7FE0,0010) OW, reserved, 32-bit length.
    head.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    head.extend_from_slice(
        &u32::try_from(bulk)
            .expect("fits a DICOM length")
            .to_le_bytes(),
    );
    let rules = DicomRules::new(PseudonymKey::from_bytes(&[3; 32]), DeidOptions::default())
        .expect("bench options");
    let before = vm_hwm_kib();
    let mut input = Generator::new(head, bulk);
    let start = Instant::now();
    let outcome = rules
        .deidentify_stream(&mut input, &mut std::io::sink())
        .expect("de-identifies");
    let elapsed = start.elapsed();
    let DeidOutcome::Deidentified(object) = outcome else {
        panic!("quarantined")
    };
    assert!(object.bytes > bulk);
    let after = vm_hwm_kib();
    println!(
        "dicom_deid stream {:.2} GB multi-frame ({FRAMES} frames) generator → io::sink(): {:.0} MB/s; peak RSS (VmHWM) {} before, {} after ({} for the object; default limit {} MiB)",
        input.total() as f64 / 1e9,
        input.total() as f64 / 1e6 / elapsed.as_secs_f64(),
        kib(before),
        kib(after),
        match (before, after) {
            (Some(b), Some(a)) => format!("+{:.1} MiB", a.saturating_sub(b) as f64 / 1024.0),
            _ => "n/a".to_owned(),
        },
        rules.max_header_bytes() / (1024 * 1024),
    );
}

fn kib(v: Option<u64>) -> String {
    v.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Peak resident set size of this process, in KiB (Linux).
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A reader producing `head`, then `bulk` bytes of a repeating pattern, without holding
/// them.
struct Generator {
    head: Vec<u8>,
    pattern: Vec<u8>,
    bulk: u64,
    at: u64,
}

impl Generator {
    fn new(head: Vec<u8>, bulk: u64) -> Generator {
        let pattern = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        Generator {
            head,
            pattern,
            bulk,
            at: 0,
        }
    }

    fn total(&self) -> u64 {
        self.head.len() as u64 + self.bulk
    }
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let head = self.head.len() as u64;
        if self.at < head {
            let from = &self.head[self.at as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.at += n as u64;
            return Ok(n);
        }
        let left = self.total() - self.at;
        let offset = ((self.at - head) % self.pattern.len() as u64) as usize;
        let n = (buf.len() as u64)
            .min(left)
            .min((self.pattern.len() - offset) as u64) as usize;
        buf[..n].copy_from_slice(&self.pattern[offset..offset + n]);
        self.at += n as u64;
        Ok(n)
    }
}
