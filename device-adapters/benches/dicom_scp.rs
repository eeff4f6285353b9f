//! C-STORE receive throughput and memory of the DICOM SCP, against dcmtk's `storescu`
//! on loopback, with dcmtk's own `storescp` as the baseline in the same run.
//!
//! - Throughput: 200 CT objects of 0.5 MB in one association, into a sink that reads
//!   each object back through `open_dataset` (decrypting the sealed temporary file) into
//!   a file in a directory and fsyncs the file and the directory (a durable store, as a
//!   de-identifying sink does minus the de-identification); a sink that only reads each
//!   object back through `open_dataset` shows the receiver's own cost (receive, encrypt,
//!   write, decrypt); `storescp` writes the same objects without fsync. Five rounds;
//!   every run starts after a `sync`. Prints every run, the medians, and the best runs. On this kind of virtual disk fsync
//!   latency varies a lot from run to run, hence the spread of the fsync figures.
//! - Memory: one 512 MiB multi-frame object, copied by the sink through `open_dataset`;
//!   the process's peak RSS (VmHWM) before and after shows that memory does not grow with
//!   object size, on the receiving side nor on the reading side.
//!
//! Needs dcmtk (`storescu`, `storescp`); without it prints SKIP (fails under `CI=true`).
//! Run with `cargo bench -p wardgate-device-adapters --features dicom --bench dicom_scp`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use tokio::sync::watch;
use wardgate_device_adapters::dicom::{
    serve, CallerConfig, DicomScpConfig, DicomScpStats, DicomSink, ReceivedObject, StoreFailure,
};

const OBJECTS: usize = 200;
const OBJECT_PIXEL_BYTES: usize = 512 * 1024;
const ROUNDS: usize = 5;
const BIG_FRAMES: usize = 256;
const FRAME_SIDE: usize = 1024;
const OUR_AE: &str = "WARDGATE";
const SCU_AE: &str = "BENCHSCU";

/// If `durable`, reads each object through `open_dataset` into a file in `dir` and
/// fsyncs it and the directory; otherwise only reads it through `open_dataset`.
struct DurableSink {
    dir: PathBuf,
    next: AtomicU64,
    durable: bool,
}

impl DicomSink for DurableSink {
    async fn store(&self, object: ReceivedObject) -> Result<(), StoreFailure> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.dir.join(format!("{n}.dataset"));
        let dir = self.dir.clone();
        let durable = self.durable;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut reader = object.open_dataset()?;
            if !durable {
                loop {
                    let chunk = reader.fill_buf()?;
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    let n = chunk.len();
                    reader.consume(n);
                }
            }
            let mut out = std::fs::File::create(&dest)?;
            loop {
                let chunk = reader.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                out.write_all(chunk)?;
                let n = chunk.len();
                reader.consume(n);
            }
            out.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| StoreFailure::ProcessingFailure(e.to_string()))?
        .map_err(|e| StoreFailure::ProcessingFailure(e.to_string()))
    }
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} (dcmtk) is required under CI=true"
        );
        println!("dicom_scp: SKIP ({tool} not installed)");
    }
    found
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn el(tag: dicom_core::Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn us(tag: dicom_core::Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn image_header(sop_class: &str, n: usize, side: u16) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(
            tags::SOP_INSTANCE_UID,
            VR::UI,
            &format!("1.2.826.0.1.3680043.8.498.99.{n}"),
        ),
        el(tags::MODALITY, VR::CS, "CT"),
        el(tags::PATIENT_NAME, VR::PN, "BENCH^PATIENT"),
        el(tags::PATIENT_ID, VR::LO, "BENCH-1"),
        el(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.8.498.99",
        ),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.8.498.98",
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, side),
        us(tags::COLUMNS, side),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 12),
        us(tags::HIGH_BIT, 11),
        us(tags::PIXEL_REPRESENTATION, 0),
    ]
}

/// 200 CT objects of 0.5 MB pixel data; returns their paths and total data set bytes.
fn ct_objects(dir: &Path) -> (Vec<PathBuf>, u64) {
    let side = 512u16; // 512 × 512 × 2 bytes = 0.5 MiB
    let mut paths = Vec::with_capacity(OBJECTS);
    let mut total = 0;
    for n in 0..OBJECTS {
        let pixels: Vec<u16> = (0..OBJECT_PIXEL_BYTES / 2)
            .map(|i| u16::try_from((i * 13 + n) % 4096).unwrap())
            .collect();
        let mut elements = image_header(uids::CT_IMAGE_STORAGE, n, side);
        elements.push(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = InMemDicomObject::from_element_iter(elements)
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let path = dir.join(format!("ct{n}.dcm"));
        file.write_to_file(&path).unwrap();
        let mut dataset = Vec::new();
        file.write_dataset(&mut dataset).unwrap();
        total += dataset.len() as u64;
        paths.push(path);
    }
    (paths, total)
}

/// A 512 MiB multi-frame object, written in 1 MiB pieces so that building it does not
/// raise this process's peak RSS. Returns its data set size.
fn big_object(path: &Path) -> u64 {
    use std::io::Write;
    let mut elements = image_header(
        uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
        1_000_000,
        u16::try_from(FRAME_SIDE).unwrap(),
    );
    elements.push(el(tags::NUMBER_OF_FRAMES, VR::IS, &BIG_FRAMES.to_string()));
    let file = InMemDicomObject::from_element_iter(elements)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    let mut head = Vec::new();
    file.write_all(&mut head).unwrap();
    let mut header_only = Vec::new();
    file.write_dataset(&mut header_only).unwrap();
    let pixel_len = BIG_FRAMES * FRAME_SIDE * FRAME_SIDE * 2;
    // (7FE0,0010) OW, explicit VR little endian: the last element of the data set.
    head.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    head.extend_from_slice(&u32::try_from(pixel_len).unwrap().to_le_bytes());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&head).unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..pixel_len / chunk.len() {
        out.write_all(&chunk).unwrap();
    }
    out.flush().unwrap();
    (header_only.len() + 12 + pixel_len) as u64
}

/// Flushes all dirty pages (coreutils `sync`), so that one run's writeback (storescp does
/// not fsync) does not slow down the next run's fsyncs.
fn settle() {
    let _ = Command::new("sync").status();
}

fn storescu(addr: SocketAddr, files: &[PathBuf]) -> Duration {
    settle();
    let started = Instant::now();
    let out = Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-aet", SCU_AE, "-aec", OUR_AE, "-xe"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "storescu failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

struct Scp {
    addr: SocketAddr,
    stats: Arc<DicomScpStats>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(rt: &tokio::runtime::Runtime, root: &Path, name: &str, durable: bool) -> Scp {
    let incoming = root.join(format!("{name}-incoming"));
    let stored = root.join(format!("{name}-stored"));
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::create_dir_all(&stored).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let config = DicomScpConfig::new(
        addr,
        OUR_AE,
        vec![CallerConfig {
            ae_title: SCU_AE.into(),
            sources: Vec::new(),
        }],
        incoming,
    );
    let sink = Arc::new(DurableSink {
        dir: stored,
        next: AtomicU64::new(0),
        durable,
    });
    let stats = Arc::new(DicomScpStats::new());
    let (shutdown, rx) = watch::channel(false);
    let task = rt.spawn({
        let stats = Arc::clone(&stats);
        async move {
            serve(listener, config, sink, stats, rx).await.unwrap();
        }
    });
    Scp {
        addr,
        stats,
        shutdown,
        task,
    }
}

fn stop(rt: &tokio::runtime::Runtime, scp: Scp) {
    scp.shutdown.send(true).unwrap();
    rt.block_on(scp.task).unwrap();
}

fn storescp_baseline(root: &Path, files: &[PathBuf]) -> Duration {
    let out_dir = root.join("storescp-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("storescp")
        .env("TCP_NODELAY", "1")
        .args(["-aet", OUR_AE, "-od"])
        .arg(&out_dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "storescp did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = storescu(addr, files);
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&out_dir).unwrap();
    elapsed
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

fn main() {
    if !have("storescu") || !have("storescp") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();

    // Memory first, so that the throughput run's objects do not set the high-water mark.
    let big = root.path().join("big.dcm");
    let big_bytes = big_object(&big);
    let scp = start(&rt, root.path(), "big", true);
    let before = vm_hwm_kib();
    let elapsed = storescu(scp.addr, std::slice::from_ref(&big));
    let after = vm_hwm_kib();
    assert_eq!(scp.stats.snapshot().objects_stored, 1);
    stop(&rt, scp);
    std::fs::remove_file(&big).unwrap();
    std::fs::remove_dir_all(root.path().join("big-stored")).unwrap();
    println!(
        "dicom_scp: one {:.0} MiB object in {:.2} s ({:.0} MB/s); peak RSS (VmHWM) {} MiB before, {} MiB after",
        big_bytes as f64 / f64::from(1 << 20),
        elapsed.as_secs_f64(),
        mb_per_s(big_bytes, elapsed),
        before / 1024,
        after / 1024
    );

    let sources = root.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let (files, total) = ct_objects(&sources);
    let mut durable = Vec::new();
    let mut volatile = Vec::new();
    let mut baseline = Vec::new();
    for round in 0..ROUNDS {
        for (fsync, results) in [(true, &mut durable), (false, &mut volatile)] {
            let name = format!("round{round}-{fsync}");
            let scp = start(&rt, root.path(), &name, fsync);
            results.push(mb_per_s(total, storescu(scp.addr, &files)));
            assert_eq!(scp.stats.snapshot().objects_stored, OBJECTS as u64);
            stop(&rt, scp);
            std::fs::remove_dir_all(root.path().join(format!("{name}-stored"))).unwrap();
        }
        baseline.push(mb_per_s(total, storescp_baseline(root.path(), &files)));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runs = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    println!(
        "dicom_scp: {OBJECTS} × {:.2} MB per association, {ROUNDS} rounds (MB/s): wardgate copy+fsync {:?}, wardgate read back only {:?}, storescp {:?}",
        total as f64 / OBJECTS as f64 / 1e6,
        runs(&durable),
        runs(&volatile),
        runs(&baseline),
    );
    println!(
        "dicom_scp: medians: wardgate {:.0} MB/s (copy+fsync), {:.0} MB/s (read back only), storescp {:.0} MB/s (no fsync)",
        median(&durable),
        median(&volatile),
        median(&baseline)
    );
    println!(
        "dicom_scp: wardgate {:.0} MB/s (copy+fsync), storescp {:.0} MB/s (no fsync)",
        best(&durable),
        best(&baseline)
    );
}
