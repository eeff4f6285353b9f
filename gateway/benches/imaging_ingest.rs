//! The imaging path end to end: C-STORE from dcmtk's `storescu` on loopback into the
//! gateway's real DICOM receiver and sink — the SCP (`wardgate_device_adapters::dicom`,
//! objects sealed in encrypted temporary files), de-identification streamed from the
//! sealed file (`pipeline::dicom::DicomIngest`, `phi::dicom`) into the bulk upload outbox
//! (`bulk::outbox`, data, manifest and directory fsynced). `storescu` is told "stored"
//! only after the outbox commit, so its wall time is receive → de-identify → durable.
//!
//! The receiver (SCP, sink, outbox, a spool for alerts) runs in a child process, this
//! bench re-executed with `WARDGATE_BENCH_IMAGING_CHILD=<dir>`, so that its peak resident
//! memory (VmHWM, read by the parent from `/proc/<pid>/status`) is its own and not that
//! of the process generating the objects. The child serves until its stdin closes, then
//! prints its counters. The data directory is on the real disk (the system temp dir, or
//! the target dir if that is tmpfs); every run starts after a `sync`.
//!
//! 1. Throughput: 200 uncompressed CT objects (512×512×16 bit, ~0.52 MB, a realistic
//!    identified header) in one association, five rounds, each into a fresh receiver.
//!    MB/s counts data set bytes as sent. After each round the outbox is reopened and
//!    checked: 200 files, and none holds any of the planted identifiers (patient name and
//!    ID, birth date, accession number, institution, referring physician, the original
//!    UID root); one output is parsed back to check its patient name is the pseudonym.
//! 2. Reference: dcmtk's own `storescp` (writes files, no fsync, no de-identification)
//!    receiving the same files in the same rounds.
//! 3. Memory: one 2 GiB multi-frame object (Enhanced CT, 4096 frames of 512×512×16 bit),
//!    written to disk in 1 MiB pieces (never held in memory), sent by `storescu`; prints
//!    MB/s and the receiver's VmHWM before (listening, idle) and after, and `storescp`'s
//!    rate for the same file. The receiver takes the whole object into its sealed
//!    temporary file before de-identifying it into the outbox (the C-STORE answer waits
//!    for both), so its time is the sum of the two passes over the pixel data.
//! 4. Where the time goes: each stage of the sink timed apart over the CT objects.
//!
//! One association has one object in flight (the answer waits for the outbox commit), so
//! the rate is set by the per-object latency, much of which is fsync; fsync latency on
//! this VM rises when other processes write to the same disk, so the load average is
//! printed with the figures.
//!
//! Target (issue 4): ≥ 150 MB/s; memory bounded while receiving a 2 GB object.
//! Needs dcmtk (`storescu`, `storescp`); without it prints SKIP (fails under `CI=true`).
//! Run with `cargo bench -p wardgate --bench imaging_ingest`.

#![allow(clippy::unwrap_used)] // A benchmark may unwrap.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use tokio::sync::watch;
use wardgate::bulk::outbox::{NewFile, Outbox};
use wardgate::daemon::alerts::Alerts;
use wardgate::devices::{unix_ms, Registry};
use wardgate::phi::dicom::{DeidOptions, DicomRules};
use wardgate::phi::PseudonymKey;
use wardgate::pipeline::dicom::DicomIngest;
use wardgate::spool::{Spool, SpoolConfig};
use wardgate_device_adapters::dicom::{serve, CallerConfig, DicomScpConfig, DicomScpStats};
use wardgate_proto::upload::{FileKind, Metadata};

/// Set (to the receiver's data directory) in the child process that runs the receiver.
const CHILD_ENV: &str = "WARDGATE_BENCH_IMAGING_CHILD";
const OBJECTS: usize = 200;
const ROUNDS: usize = 5;
/// CT slice side: 512 × 512 × 2 bytes = 0.5 MiB of pixel data.
const CT_SIDE: u16 = 512;
/// Frames of the large multi-frame object (512 × 512 × 2 bytes each: 2 GiB in all).
const BIG_FRAMES: u64 = 4096;
/// Room for every object of a run at once (the outbox is never drained here).
const OUTBOX_BUDGET: u64 = 8 << 30;
const OUR_AE: &str = "WARDGATE";
const SCU_AE: &str = "BENCHSCU";

/// Identifiers planted in every object; none may reach the outbox.
const PATIENT_NAME: &str = "PLANTEDNAME^ZELDA";
const PATIENT_ID: &str = "PLANTEDMRN4711";
const BIRTH_DATE: &str = "19620417";
const ACCESSION: &str = "PLANTACC0099";
const INSTITUTION: &str = "PLANTED GENERAL HOSPITAL";
const REFERRER: &str = "PLANTEDDOC^ROBERT";
const UID_ROOT: &str = "1.2.826.0.1.3680043.8.498.4711";
const PLANTED: [&str; 7] = [
    "PLANTEDNAME",
    PATIENT_ID,
    BIRTH_DATE,
    ACCESSION,
    INSTITUTION,
    "PLANTEDDOC",
    UID_ROOT,
];

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        receiver_child(&PathBuf::from(dir));
        return;
    }
    if !have("storescu") || !have("storescp") {
        return;
    }
    let root = bench_root();
    println!(
        "imaging_ingest: receiver data on {} (not tmpfs); load average {}",
        root.path().display(),
        load_average()
    );

    let sources = root.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let (files, total) = ct_objects(&sources);
    let mut wardgate = Vec::new();
    let mut reference = Vec::new();
    for round in 0..ROUNDS {
        let dir = root.path().join(format!("round{round}"));
        let receiver = Receiver::start(&dir);
        let elapsed = storescu(receiver.addr, &files);
        let report = receiver.finish();
        assert_eq!(
            (report.scp_stored, report.ingest_stored, report.failed),
            (OBJECTS as u64, OBJECTS as u64, 0),
            "round {round}: every object stored through the real sink"
        );
        verify_outbox(&dir.join("outbox"), OBJECTS, None);
        std::fs::remove_dir_all(&dir).unwrap();
        wardgate.push(mb_per_s(total, elapsed));
        reference.push(mb_per_s(total, storescp_reference(root.path(), &files)));
    }
    let parts = where_the_time_goes(root.path(), &files);
    std::fs::remove_dir_all(&sources).unwrap();
    let runs = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    println!(
        "imaging_ingest: {OBJECTS} × {:.2} MB CT per association, {ROUNDS} rounds (MB/s): wardgate C-STORE → de-identify → durable outbox {:?}; storescp (no fsync) {:?}",
        total as f64 / OBJECTS as f64 / 1e6,
        runs(&wardgate),
        runs(&reference),
    );
    println!(
        "imaging_ingest: outbox checked each round: {OBJECTS} files, none holds a planted identifier ({} checked per file)",
        PLANTED.len()
    );
    let (w_med, w_lo, w_hi) = spread(&wardgate);
    let (r_med, r_lo, r_hi) = spread(&reference);
    println!(
        "imaging_ingest: C-STORE → durable outbox median {w_med:.0} MB/s ({w_lo:.0}–{w_hi:.0}); storescp median {r_med:.0} MB/s ({r_lo:.0}–{r_hi:.0}) (target ≥ 150 MB/s)"
    );

    println!("{parts}");

    big_object_run(root.path());
    println!("imaging_ingest: load average at the end {}", load_average());
}

/// The 1, 5 and 15 minute load averages: fsync latency on a shared disk depends on what
/// else writes to it, so the figures are printed with the machine's state.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// The temp dir, or the target dir if the temp dir is tmpfs (fsync there costs nothing,
/// which would flatter the figure).
fn bench_root() -> tempfile::TempDir {
    let tmp = std::env::temp_dir();
    if is_tmpfs(&tmp) {
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
    } else {
        tempfile::tempdir_in(tmp).unwrap()
    }
}

fn is_tmpfs(path: &Path) -> bool {
    // `stat -f -c %T` names the filesystem type without unsafe code here.
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
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
        println!("imaging_ingest: SKIP ({tool} not installed)");
    }
    found
}

// ---------------------------------------------------------------------------------------
// The receiving side (child process).

/// Runs the gateway's imaging receiver on `dir` as the daemon assembles it
/// (`daemon/imaging.rs`), minus the uploader: the outbox only fills. Prints
/// `listening <port>`, serves until stdin closes, then prints the counters.
fn receiver_child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (spool, _) = Spool::open(SpoolConfig {
            path: dir.join("spool.db"),
            budget_bytes: 64 << 20,
            ttl: [None; 4],
            max_batch: 64,
        })
        .unwrap();
        let alerts = Arc::new(Alerts::new(spool.clone()));
        let (registry, _transitions) = Registry::new(Arc::new(unix_ms));
        let outbox = Arc::new(Outbox::open(dir.join("outbox"), OUTBOX_BUDGET).unwrap());
        let rules =
            DicomRules::new(PseudonymKey::from_bytes(&[7; 32]), DeidOptions::default()).unwrap();
        let sink = Arc::new(DicomIngest::new(rules, None, outbox, registry, alerts));
        let ingest = sink.stats();
        let incoming = dir.join("incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
        let stats = Arc::new(DicomScpStats::new());
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(serve(listener, config, sink, stats.clone(), stop));
        println!("listening {}", addr.port());
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
        })
        .await
        .unwrap();
        shutdown.send(true).unwrap();
        task.await.unwrap().unwrap();
        spool.close().await;
        let scp = stats.snapshot();
        println!(
            "done scp_stored={} failed={} ingest_stored={} quarantined={} refused={}",
            scp.objects_stored,
            scp.objects_failed,
            ingest.stored.load(std::sync::atomic::Ordering::Relaxed),
            ingest
                .quarantined
                .load(std::sync::atomic::Ordering::Relaxed),
            ingest.refused.load(std::sync::atomic::Ordering::Relaxed),
        );
    });
}

/// The receiver child, seen from the parent.
struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

/// The child's counters once it stopped.
#[derive(Debug)]
struct Report {
    scp_stored: u64,
    failed: u64,
    ingest_stored: u64,
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("receiver child did not start: {line:?}"))
            .parse()
            .unwrap();
        Receiver {
            child,
            stdin,
            stdout,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// The child's peak resident set size so far, in KiB.
    fn vm_hwm_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Stops the child (closes its stdin) and returns its counters.
    fn finish(mut self) -> Report {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "receiver child failed"
        );
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("receiver child's report lacks {name}: {line:?}"))
                .parse()
                .unwrap()
        };
        assert_eq!(field("quarantined"), 0, "nothing here is to be quarantined");
        assert_eq!(field("refused"), 0, "no object refused");
        Report {
            scp_stored: field("scp_stored"),
            failed: field("failed"),
            ingest_stored: field("ingest_stored"),
        }
    }
}

/// Reopens the outbox in `dir` and checks it holds `expected` DICOM files without any
/// planted identifier (in their first `prefix` bytes, or all of them if `None`); parses
/// one back to check its patient name is a pseudonym. Returns the stored bytes.
fn verify_outbox(dir: &Path, expected: usize, prefix: Option<usize>) -> u64 {
    let outbox = Outbox::open(dir, OUTBOX_BUDGET).unwrap();
    let entries = outbox.entries();
    assert_eq!(entries.len(), expected, "objects in the outbox");
    let mut bytes = 0;
    for entry in &entries {
        assert_eq!(entry.kind, "dicom");
        let path = outbox.data_path(&entry.id);
        let data = match prefix {
            None => std::fs::read(&path).unwrap(),
            Some(n) => {
                let mut head = Vec::with_capacity(n);
                std::fs::File::open(&path)
                    .unwrap()
                    .take(n as u64)
                    .read_to_end(&mut head)
                    .unwrap();
                head
            }
        };
        for needle in PLANTED {
            assert!(
                !contains(&data, needle.as_bytes()),
                "planted identifier {needle:?} found in outbox file {}",
                entry.id
            );
        }
        bytes += entry.size;
    }
    let first = outbox.data_path(&entries[0].id);
    let parsed = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&first)
        .unwrap();
    let name = parsed
        .element(tags::PATIENT_NAME)
        .unwrap()
        .to_str()
        .unwrap()
        .into_owned();
    assert!(!name.is_empty() && name != PATIENT_NAME, "pseudonymised");
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|b| b == first) {
        let start = at + i;
        if haystack[start + 1..].starts_with(rest) {
            return true;
        }
        at = start + 1;
    }
    false
}

// ---------------------------------------------------------------------------------------
// The sending side.

/// Flushes all dirty pages, so that one run's writeback (storescp does not fsync, the
/// source files were just written) does not slow the next run's fsyncs.
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

/// dcmtk's `storescp` receiving `files` (written to disk, no fsync): the reference.
fn storescp_reference(root: &Path, files: &[PathBuf]) -> Duration {
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
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
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
    let received = std::fs::read_dir(&out_dir).unwrap().count();
    assert_eq!(received, files.len(), "storescp received every object");
    std::fs::remove_dir_all(&out_dir).unwrap();
    elapsed
}

/// Part 3: one 2 GiB multi-frame object; the receiver's VmHWM before and after.
fn big_object_run(root: &Path) {
    let big = root.join("big.dcm");
    let big_bytes = big_object(&big);
    let dir = root.join("big");
    let receiver = Receiver::start(&dir);
    let before = receiver.vm_hwm_kib();
    let elapsed = storescu(receiver.addr, std::slice::from_ref(&big));
    let after = receiver.vm_hwm_kib();
    let report = receiver.finish();
    assert_eq!((report.ingest_stored, report.failed), (1, 0));
    let reference = storescp_reference(root, std::slice::from_ref(&big));
    std::fs::remove_file(&big).unwrap();
    let stored = verify_outbox(&dir.join("outbox"), 1, Some(4 << 20));
    assert!(stored > BIG_FRAMES * 512 * 512 * 2, "pixel data kept whole");
    let leftovers = std::fs::read_dir(dir.join("incoming")).unwrap().count();
    assert_eq!(leftovers, 0, "the sealed temporary file is gone");
    std::fs::remove_dir_all(&dir).unwrap();
    println!(
        "imaging_ingest: one {:.2} GiB multi-frame object ({BIG_FRAMES} frames) C-STORE → de-identify → durable outbox in {:.1} s ({:.0} MB/s); receiver peak RSS (VmHWM) {:.1} MiB before, {:.1} MiB after (+{:.1} MiB); storescp (no fsync) {:.0} MB/s",
        big_bytes as f64 / f64::from(1 << 30),
        elapsed.as_secs_f64(),
        mb_per_s(big_bytes, elapsed),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0,
        mb_per_s(big_bytes, reference),
    );
}

/// The per-object cost of each stage of the sink, timed apart in this process over the
/// same objects on the same disk (one object at a time, as one association sends them):
/// de-identification memory → memory, then three ways of making its output durable — a
/// file write + fsync, the same + directory fsync (the `dicom_scp` bench's test sink), and
/// the outbox's insert (data fsync, manifest write + fsync, two renames, directory fsync).
fn where_the_time_goes(root: &Path, files: &[PathBuf]) -> String {
    let inputs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let rules =
        DicomRules::new(PseudonymKey::from_bytes(&[7; 32]), DeidOptions::default()).unwrap();
    let started = Instant::now();
    let outputs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|input| {
            let mut out = Vec::with_capacity(input.len() + 4096);
            rules.deidentify_stream(&mut &input[..], &mut out).unwrap();
            out
        })
        .collect();
    let deid = started.elapsed();
    drop(inputs);

    let plain = root.join("parts-plain");
    std::fs::create_dir_all(&plain).unwrap();
    let write_fsync = |sync_dir: bool| {
        settle();
        let started = Instant::now();
        for (n, bytes) in outputs.iter().enumerate() {
            let path = plain.join(format!("{sync_dir}-{n}.dcm"));
            let mut file = std::fs::File::create(&path).unwrap();
            file.write_all(bytes).unwrap();
            file.sync_all().unwrap();
            if sync_dir {
                std::fs::File::open(&plain).unwrap().sync_all().unwrap();
            }
        }
        started.elapsed()
    };
    let file_only = write_fsync(false);
    let with_dir = write_fsync(true);
    std::fs::remove_dir_all(&plain).unwrap();

    let dir = root.join("parts-outbox");
    let outbox = Outbox::open(&dir, OUTBOX_BUDGET).unwrap();
    settle();
    let started = Instant::now();
    for bytes in &outputs {
        let file = NewFile {
            kind: FileKind::Dicom,
            device: "dicom-ae-BENCHSCU".into(),
            metadata: Metadata::new(),
            compress: false,
        };
        outbox.insert(file, &bytes[..], unix_ms()).unwrap();
    }
    let insert = started.elapsed();
    drop(outbox);
    std::fs::remove_dir_all(&dir).unwrap();

    let per = |d: Duration| d.as_secs_f64() * 1e3 / outputs.len() as f64;
    format!(
        "imaging_ingest: per object, stages timed apart: de-identify (memory → memory) {:.2} ms; \
         durable write of its output: file + fsync {:.2} ms, + directory fsync {:.2} ms, \
         outbox insert (data, manifest and directory fsyncs) {:.2} ms",
        per(deid),
        per(file_only),
        per(with_dir),
        per(insert),
    )
}

// ---------------------------------------------------------------------------------------
// Objects.

type El = DataElement<InMemDicomObject>;

fn text(tag: Tag, vr: VR, v: &str) -> El {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn us(tag: Tag, v: u16) -> El {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// A realistic identified CT header (patient, study, series, equipment, a sequence,
/// private tags), without pixel data. The planted identifiers are in it.
fn ct_header(sop_class: &str, index: usize) -> InMemDicomObject {
    let study = format!("{UID_ROOT}.1");
    let series = format!("{study}.2");
    let request = InMemDicomObject::from_element_iter([
        text(tags::REQUESTED_PROCEDURE_ID, VR::SH, "RP12345"),
        text(tags::REQUESTING_PHYSICIAN, VR::PN, REFERRER),
    ]);
    InMemDicomObject::from_element_iter([
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        text(tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL"),
        text(tags::SOP_CLASS_UID, VR::UI, sop_class),
        text(tags::SOP_INSTANCE_UID, VR::UI, &format!("{series}.{index}")),
        text(tags::STUDY_DATE, VR::DA, "20240115"),
        text(tags::SERIES_DATE, VR::DA, "20240115"),
        text(tags::CONTENT_DATE, VR::DA, "20240115"),
        text(tags::STUDY_TIME, VR::TM, "101010"),
        text(tags::CONTENT_TIME, VR::TM, "101011.5"),
        text(tags::ACCESSION_NUMBER, VR::SH, ACCESSION),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::MANUFACTURER, VR::LO, "ACME MEDICAL"),
        text(tags::INSTITUTION_NAME, VR::LO, INSTITUTION),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, REFERRER),
        text(tags::STATION_NAME, VR::SH, "SCANNER01"),
        text(tags::STUDY_DESCRIPTION, VR::LO, "CHEST W CONTRAST"),
        text(tags::SERIES_DESCRIPTION, VR::LO, "AXIAL 1.25MM"),
        text(tags::OPERATORS_NAME, VR::PN, "TECH^TERRY"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "MODEL 9000"),
        text(Tag(0x0009, 0x0010), VR::LO, "ACME 1.0"),
        text(Tag(0x0009, 0x1001), VR::LO, PATIENT_ID),
        text(tags::PATIENT_NAME, VR::PN, PATIENT_NAME),
        text(tags::PATIENT_ID, VR::LO, PATIENT_ID),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, BIRTH_DATE),
        text(tags::PATIENT_SEX, VR::CS, "F"),
        text(tags::PATIENT_AGE, VR::AS, "061Y"),
        text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
        text(tags::SLICE_THICKNESS, VR::DS, "1.25"),
        text(tags::KVP, VR::DS, "120"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "SN-0042"),
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
        DataElement::new(
            tags::REQUEST_ATTRIBUTES_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![request]),
        ),
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, CT_SIDE),
        us(tags::COLUMNS, CT_SIDE),
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
    ])
}

/// 200 CT objects as Part 10 files in `dir`; returns their paths and total data set bytes
/// (what goes over the wire).
fn ct_objects(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut paths = Vec::with_capacity(OBJECTS);
    let mut total = 0;
    for index in 0..OBJECTS {
        // 12-bit values: every other byte is below 0x10, so the pixel data cannot spell
        // a planted identifier by chance.
        let pixels: Vec<u16> = (0..u32::from(CT_SIDE) * u32::from(CT_SIDE))
            .map(|i| u16::try_from(((i * 31) ^ index as u32) % 4096).unwrap())
            .collect();
        let mut object = ct_header(uids::CT_IMAGE_STORAGE, index);
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        ));
        let file = object
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let path = dir.join(format!("ct{index:03}.dcm"));
        file.write_to_file(&path).unwrap();
        let mut dataset = Vec::new();
        file.write_dataset(&mut dataset).unwrap();
        total += dataset.len() as u64;
        paths.push(path);
    }
    (paths, total)
}

/// The 2 GiB Enhanced CT object, written in 1 MiB pieces. Returns its data set size.
fn big_object(path: &Path) -> u64 {
    let mut object = ct_header(uids::ENHANCED_CT_IMAGE_STORAGE, 1_000_000);
    object.put(text(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        &BIG_FRAMES.to_string(),
    ));
    let file = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap();
    let mut head = Vec::new();
    file.write_all(&mut head).unwrap();
    let mut header_only = Vec::new();
    file.write_dataset(&mut header_only).unwrap();
    let pixel_len = BIG_FRAMES * u64::from(CT_SIDE) * u64::from(CT_SIDE) * 2;
    // (7FE0,0010) OW, explicit VR little endian, 32-bit length: the last element.
    head.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    head.extend_from_slice(&u32::try_from(pixel_len).unwrap().to_le_bytes());
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&head).unwrap();
    // 12-bit little-endian values, as in the CT objects.
    let chunk: Vec<u8> = (0..1u32 << 19)
        .flat_map(|i| u16::try_from(i * 7 % 4096).unwrap().to_le_bytes())
        .collect();
    for _ in 0..pixel_len / chunk.len() as u64 {
        out.write_all(&chunk).unwrap();
    }
    out.flush().unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    header_only.len() as u64 + 12 + pixel_len
}

// ---------------------------------------------------------------------------------------
// Figures.

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Median, lowest and highest.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
