//! The DICOM C-STORE SCP against real DICOM peers: dcmtk's `storescu` and `echoscu`, and
//! raw TCP clients misbehaving on purpose.
//!
//! dcmtk is needed for most cases. Without it they print `SKIP` and pass, except under
//! `CI=true`, where a missing tool fails the test.
//!
//! The sink here checks, for every object, that the temporary file it is handed holds
//! no plaintext of the data set, and stores what it reads through `open_dataset`.
#![cfg(feature = "dicom")]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use dicom_ul::pdu::{write_pdu, AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use wardgate_device_adapters::dicom::{
    sealed::{sealed_len, CHUNK_LEN},
    serve, CallerConfig, DicomScpConfig, DicomScpStats, DicomScpStatsSnapshot, DicomSink,
    ReceivedObject, StoreFailure,
};

const OUR_AE: &str = "WARDGATE";
const SCU_AE: &str = "TESTSCU";
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// dcmtk

/// Whether `tool` can be run. Under `CI=true` a missing tool is a failure.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} (dcmtk) is required under CI=true: apt-get install -y dcmtk"
        );
        eprintln!("SKIP: {tool} (dcmtk) not installed");
    }
    found
}

/// Runs a dcmtk tool (with Nagle off, see the shared notes) without blocking the runtime.
async fn dcmtk(tool: &str, args: Vec<String>) -> Output {
    let tool = tool.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(&tool)
            .env("TCP_NODELAY", "1")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn storescu_args(
    addr: SocketAddr,
    calling: &str,
    extra: &[&str],
    files: &[PathBuf],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["-aet".into(), calling.into(), "-aec".into(), OUR_AE.into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(addr.ip().to_string());
    args.push(addr.port().to_string());
    args.extend(files.iter().map(|p| p.display().to_string()));
    args
}

// ---------------------------------------------------------------------------------------
// Test objects

struct TestFile {
    path: PathBuf,
    instance: String,
    dataset: Vec<u8>,
}

/// Writes a CT image with `pixel_bytes` of pixel data in `ts`, and returns it with the
/// data set bytes a receiver must end up with.
fn ct_file(dir: &Path, n: u32, ts: &str, pixel_bytes: usize) -> TestFile {
    ct_file_of(dir, n, ts, pixel_bytes, ("DOE^JANE", "MRN-1"))
}

/// [`ct_file`] for a given patient (name, ID).
fn ct_file_of(
    dir: &Path,
    n: u32,
    ts: &str,
    pixel_bytes: usize,
    (patient_name, patient_id): (&str, &str),
) -> TestFile {
    let instance = format!("1.2.826.0.1.3680043.8.498.77.{n}");
    let side = u16::try_from(((pixel_bytes / 2) as f64).sqrt() as usize)
        .unwrap()
        .max(1);
    let pixels: Vec<u16> = (0..usize::from(side) * usize::from(side))
        .map(|i| u16::try_from((i * 7 + n as usize) % 4096).unwrap())
        .collect();
    let el = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let obj = InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, &instance),
        el(tags::STUDY_DATE, VR::DA, "20250101"),
        el(tags::MODALITY, VR::CS, "CT"),
        el(tags::PATIENT_NAME, VR::PN, patient_name),
        el(tags::PATIENT_ID, VR::LO, patient_id),
        el(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.8.498.77",
        ),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.8.498.78",
        ),
        el(tags::INSTANCE_NUMBER, VR::IS, &n.to_string()),
        DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(side)),
        DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(side)),
        DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
        DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
        DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
        DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())),
    ]);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let path = dir.join(format!("ct{n}.dcm"));
    file.write_to_file(&path).unwrap();
    TestFile {
        dataset: dataset_of(&std::fs::read(&path).unwrap()),
        path,
        instance,
    }
}

/// The data set of a Part 10 file: everything after the file meta group.
fn dataset_of(file: &[u8]) -> Vec<u8> {
    assert_eq!(&file[128..132], b"DICM");
    // (0002,0000) UL, explicit VR: tag 4 + VR 2 + length 2 + value 4.
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    file[144 + group_len..].to_vec()
}

/// The transfer syntax UID in a Part 10 file's meta group (as dcmdump would show it).
fn transfer_syntax_of(path: &Path) -> String {
    let file = dicom_object::OpenFileOptions::new()
        .open_file(path)
        .unwrap();
    file.meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// The sink

#[derive(Debug)]
struct Stored {
    /// What the sink read through `open_dataset`, written out and fsynced.
    path: PathBuf,
    /// The temporary file's bytes as the sink found them on disk.
    raw: Vec<u8>,
    dataset_len: u64,
    transfer_syntax: String,
    sop_class: String,
    instance: String,
    calling: String,
}

/// Reads each object through `open_dataset` into a file in `dir` and fsyncs it and the
/// directory (what a de-identifying sink does, minus the de-identification); keeps the
/// raw temporary file's bytes for the tests to inspect; can be told to fail.
struct DirSink {
    dir: PathBuf,
    fail: Mutex<Option<StoreFailure>>,
    stored: Mutex<Vec<Stored>>,
    /// When set, `store` signals `started` and waits for `release` before storing.
    gated: AtomicBool,
    started: Notify,
    release: Notify,
}

impl DirSink {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        DirSink {
            dir,
            fail: Mutex::new(None),
            stored: Mutex::new(Vec::new()),
            gated: AtomicBool::new(false),
            started: Notify::new(),
            release: Notify::new(),
        }
    }

    fn instances(&self) -> Vec<String> {
        self.stored
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.instance.clone())
            .collect()
    }
}

impl DicomSink for DirSink {
    async fn store(&self, object: ReceivedObject) -> Result<(), StoreFailure> {
        if let Some(failure) = self.fail.lock().unwrap().clone() {
            return Err(failure);
        }
        if self.gated.load(Ordering::SeqCst) {
            self.started.notify_one();
            self.release.notified().await;
        }
        let n = self.stored.lock().unwrap().len();
        let target = self.dir.join(format!("{n}.dataset"));
        let (dir, dest) = (self.dir.clone(), target.clone());
        let (object, raw) =
            tokio::task::spawn_blocking(move || -> std::io::Result<(ReceivedObject, Vec<u8>)> {
                let raw = std::fs::read(&object.dataset_path)?;
                copy_dataset(&object, &dest)?;
                std::fs::File::open(&dir)?.sync_all()?;
                Ok((object, raw))
            })
            .await
            .unwrap()
            .map_err(|e| StoreFailure::ProcessingFailure(e.to_string()))?;
        self.stored.lock().unwrap().push(Stored {
            path: target,
            raw,
            dataset_len: object.dataset_len,
            transfer_syntax: object.transfer_syntax_uid,
            sop_class: object.sop_class_uid,
            instance: object.sop_instance_uid,
            calling: object.calling_ae_title,
        });
        Ok(())
    }
}

/// Writes the object's data set, read through `open_dataset`, to `dest` and fsyncs it.
fn copy_dataset(object: &ReceivedObject, dest: &Path) -> std::io::Result<()> {
    let mut reader = object.open_dataset()?;
    let mut out = std::fs::File::create(dest)?;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(chunk)?;
        let n = chunk.len();
        reader.consume(n);
    }
    out.sync_all()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// The server under test

struct Server {
    addr: SocketAddr,
    stats: Arc<DicomScpStats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), wardgate_device_adapters::dicom::DicomScpError>>,
    sink: Arc<DirSink>,
    temp_dir: PathBuf,
    _root: tempfile::TempDir,
}

fn config(temp_dir: &Path) -> DicomScpConfig {
    let mut config = DicomScpConfig::new(
        "127.0.0.1:11112".parse().unwrap(),
        OUR_AE,
        vec![
            CallerConfig {
                ae_title: SCU_AE.into(),
                sources: vec!["127.0.0.1".parse().unwrap()],
            },
            CallerConfig {
                ae_title: "ELSEWHERE".into(),
                sources: vec!["10.9.9.9".parse().unwrap()],
            },
        ],
        temp_dir,
    );
    config.idle_timeout_secs = 10;
    config
}

async fn start(tweak: impl FnOnce(&mut DicomScpConfig)) -> Server {
    start_over(|_| {}, tweak).await
}

/// [`start`], with `prepare` run on the (empty) temp dir before the server starts.
async fn start_over(
    prepare: impl FnOnce(&Path),
    tweak: impl FnOnce(&mut DicomScpConfig),
) -> Server {
    let root = tempfile::tempdir().unwrap();
    let temp_dir = root.path().join("incoming");
    std::fs::create_dir(&temp_dir).unwrap();
    prepare(&temp_dir);
    let sink = Arc::new(DirSink::new(root.path().join("stored")));
    let mut config = config(&temp_dir);
    tweak(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(DicomScpStats::new());
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        listener,
        config,
        Arc::clone(&sink),
        Arc::clone(&stats),
        rx,
    ));
    Server {
        addr,
        stats,
        shutdown,
        task,
        sink,
        temp_dir,
        _root: root,
    }
}

impl Server {
    fn parts(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.temp_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    async fn stop(self) -> DicomScpStatsSnapshot {
        // Fails only if serve already returned (a test shut it down itself).
        let _ = self.shutdown.send(true);
        let Server {
            task,
            stats,
            temp_dir,
            ..
        } = self;
        tokio::time::timeout(WAIT, task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
        let left: Vec<_> = std::fs::read_dir(&temp_dir).unwrap().collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        stats.snapshot()
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn echo(server: &Server, calling: &str) -> Output {
    dcmtk("echoscu", storescu_args(server.addr, calling, &[], &[])).await
}

// ---------------------------------------------------------------------------------------
// A raw association, for what dcmtk will not do

struct Raw {
    stream: TcpStream,
}

impl Raw {
    /// Connects and negotiates CT storage (explicit VR LE) on context 1.
    async fn associate(addr: SocketAddr) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: SCU_AE.into(),
            called_ae_title: OUR_AE.into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![PresentationContextProposed {
                id: 1,
                abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
                transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
            }],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, &rq).unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut header = [0u8; 6];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x02, "expected A-ASSOCIATE-AC");
        let len = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        Raw { stream }
    }

    /// Sends a P-DATA-TF with one fragment.
    async fn fragment(&mut self, is_command: bool, is_last: bool, bytes: &[u8]) {
        let header = u8::from(is_command) | (u8::from(is_last) << 1);
        let item_len = u32::try_from(bytes.len() + 2).unwrap();
        let mut pdu = vec![0x04, 0];
        pdu.extend_from_slice(&(item_len + 4).to_be_bytes());
        pdu.extend_from_slice(&item_len.to_be_bytes());
        pdu.extend_from_slice(&[1, header]);
        pdu.extend_from_slice(bytes);
        self.stream.write_all(&pdu).await.unwrap();
    }

    /// Reads one P-DATA-TF holding a whole response command set and returns its status.
    async fn response_status(&mut self) -> u16 {
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x04, "expected P-DATA-TF");
        let len = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.unwrap();
        assert_eq!(body[5] & 0x03, 0x03, "one last command fragment");
        let command = &body[6..];
        let mut at = 0;
        while at + 8 <= command.len() {
            let element = u16::from_le_bytes([command[at + 2], command[at + 3]]);
            let value_len =
                u32::from_le_bytes(command[at + 4..at + 8].try_into().unwrap()) as usize;
            if element == 0x0900 {
                return u16::from_le_bytes([command[at + 8], command[at + 9]]);
            }
            at += 8 + value_len;
        }
        panic!("no status in the response");
    }

    /// Whether the server closed the connection (after at most an A-ABORT).
    async fn closed_by_server(&mut self) -> bool {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, self.stream.read_to_end(&mut buf)).await;
        matches!(read, Ok(Ok(_)) | Ok(Err(_))) && (buf.is_empty() || buf[0] == 0x07)
    }
}

/// A C-STORE-RQ command set (implicit VR LE) for a CT instance.
fn store_command(instance: &str) -> Vec<u8> {
    store_command_for(uids::CT_IMAGE_STORAGE, instance)
}

/// A C-STORE-RQ command set (implicit VR LE) naming `sop_class`.
fn store_command_for(sop_class: &str, instance: &str) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, element: u16, value: &[u8]) {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap().to_le_bytes());
        out.extend_from_slice(value);
    }
    fn uid(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        b
    }
    let mut body = Vec::new();
    put(&mut body, 0x0002, &uid(sop_class));
    put(&mut body, 0x0100, &1u16.to_le_bytes());
    put(&mut body, 0x0110, &9u16.to_le_bytes());
    put(&mut body, 0x0700, &0u16.to_le_bytes());
    put(&mut body, 0x0800, &0u16.to_le_bytes());
    put(&mut body, 0x1000, &uid(instance));
    let mut out = Vec::new();
    put(
        &mut out,
        0x0000,
        &u32::try_from(body.len()).unwrap().to_le_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------
// Cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoscu_succeeds() {
    if !have("echoscu") {
        return;
    }
    let server = start(|_| {}).await;
    let out = echo(&server, SCU_AE).await;
    assert!(out.status.success(), "echoscu failed:\n{}", text(&out));
    let stats = server.stop().await;
    assert_eq!((stats.echoes, stats.associations_accepted), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_objects_arrive_intact_in_explicit_and_implicit_vr() {
    if !have("storescu") {
        return;
    }
    let server = start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let explicit: Vec<TestFile> = (0..3)
        .map(|n| {
            ct_file(
                src.path(),
                n,
                uids::EXPLICIT_VR_LITTLE_ENDIAN,
                40_000 + 5_000 * n as usize,
            )
        })
        .collect();
    let implicit: Vec<TestFile> = (3..5)
        .map(|n| ct_file(src.path(), n, uids::IMPLICIT_VR_LITTLE_ENDIAN, 30_000))
        .collect();
    // Propose only the files' own syntax, so storescu sends them without conversion.
    for (files, ts_option, ts) in [
        (&explicit, "-xe", uids::EXPLICIT_VR_LITTLE_ENDIAN),
        (&implicit, "-xi", uids::IMPLICIT_VR_LITTLE_ENDIAN),
    ] {
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let out = dcmtk(
            "storescu",
            storescu_args(server.addr, SCU_AE, &[ts_option], &paths),
        )
        .await;
        assert!(out.status.success(), "storescu failed:\n{}", text(&out));
        let stored = server.sink.stored.lock().unwrap();
        for file in files.iter() {
            let got = stored
                .iter()
                .find(|s| s.instance == file.instance)
                .unwrap_or_else(|| panic!("{} not stored", file.instance));
            assert_eq!(got.transfer_syntax, ts);
            assert_eq!(got.sop_class, uids::CT_IMAGE_STORAGE);
            assert_eq!(got.calling, SCU_AE);
            let bytes = std::fs::read(&got.path).unwrap();
            assert!(
                bytes == file.dataset,
                "data set of {} differs",
                file.instance
            );
            assert_eq!(got.dataset_len, file.dataset.len() as u64);
            assert_eq!(got.raw.len() as u64, sealed_len(got.dataset_len));
            assert!(!contains(&got.raw, b"DOE^JANE") && !contains(&got.raw, b"MRN-1"));
        }
    }
    assert_eq!(server.sink.instances().len(), 5);
    let stats = server.stop().await;
    assert_eq!((stats.objects_stored, stats.objects_failed), (5, 0));
    assert_eq!(stats.associations_accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_calling_ae_title_is_rejected_and_the_listener_keeps_serving() {
    if !have("storescu") || !have("echoscu") {
        return;
    }
    let server = start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let file = ct_file(src.path(), 1, uids::EXPLICIT_VR_LITTLE_ENDIAN, 10_000);
    let out = dcmtk(
        "storescu",
        storescu_args(
            server.addr,
            "INTRUDER",
            &[],
            std::slice::from_ref(&file.path),
        ),
    )
    .await;
    assert!(
        !out.status.success(),
        "storescu should fail:\n{}",
        text(&out)
    );
    let msg = text(&out).to_lowercase();
    assert!(msg.contains("rejected"), "no rejection in:\n{msg}");
    assert!(
        msg.contains("calling ae title not recognized"),
        "wrong reason in:\n{msg}"
    );
    // A configured title from an address not listed for it: the same answer.
    let out = echo(&server, "ELSEWHERE").await;
    assert!(!out.status.success());
    // Our called AE title is required too.
    let mut args = storescu_args(server.addr, SCU_AE, &[], &[]);
    args[3] = "NOTUS".into();
    let out = dcmtk("echoscu", args).await;
    assert!(!out.status.success());
    assert!(
        text(&out)
            .to_lowercase()
            .contains("called ae title not recognized"),
        "{}",
        text(&out)
    );
    // The listener is still there.
    let out = echo(&server, SCU_AE).await;
    assert!(out.status.success(), "echoscu failed:\n{}", text(&out));
    assert!(server.sink.instances().is_empty());
    let stats = server.stop().await;
    assert_eq!(
        (stats.associations_rejected, stats.associations_accepted),
        (3, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_over_the_size_limit_gets_a_failure_status_and_nothing_is_stored() {
    if !have("storescu") {
        return;
    }
    let server = start(|c| c.max_object_bytes = 100_000).await;
    let src = tempfile::tempdir().unwrap();
    let big = ct_file(src.path(), 1, uids::EXPLICIT_VR_LITTLE_ENDIAN, 300_000);
    let small = ct_file(src.path(), 2, uids::EXPLICIT_VR_LITTLE_ENDIAN, 20_000);
    let out = dcmtk(
        "storescu",
        storescu_args(
            server.addr,
            SCU_AE,
            &["-xe", "-nh", "-d"],
            &[big.path.clone(), small.path.clone()],
        ),
    )
    .await;
    let msg = text(&out).to_lowercase();
    assert!(
        msg.contains("0xa700"),
        "no 0xA700 status in storescu's output:\n{msg}"
    );
    // The association carried on: the small object after it was stored.
    assert_eq!(server.sink.instances(), vec![small.instance.clone()]);
    let stats = server.stop().await;
    assert_eq!(
        (
            stats.objects_too_large,
            stats.objects_failed,
            stats.objects_stored
        ),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failure_is_reported_as_a700_and_the_temp_file_removed() {
    if !have("storescu") {
        return;
    }
    let server = start(|_| {}).await;
    *server.sink.fail.lock().unwrap() = Some(StoreFailure::OutOfResources("spool full".into()));
    let src = tempfile::tempdir().unwrap();
    let file = ct_file(src.path(), 1, uids::EXPLICIT_VR_LITTLE_ENDIAN, 50_000);
    let out = dcmtk(
        "storescu",
        storescu_args(
            server.addr,
            SCU_AE,
            &["-xe", "-d"],
            std::slice::from_ref(&file.path),
        ),
    )
    .await;
    let msg = text(&out).to_lowercase();
    assert!(
        msg.contains("0xa700"),
        "no 0xA700 status in storescu's output:\n{msg}"
    );
    assert!(server.sink.instances().is_empty());
    assert!(
        server.parts().is_empty(),
        "temporary file left: {:?}",
        server.parts()
    );
    // Once the sink recovers, the same object goes through.
    *server.sink.fail.lock().unwrap() = None;
    let out = dcmtk(
        "storescu",
        storescu_args(
            server.addr,
            SCU_AE,
            &["-xe"],
            std::slice::from_ref(&file.path),
        ),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.sink.instances(), vec![file.instance.clone()]);
    let stats = server.stop().await;
    assert_eq!((stats.objects_failed, stats.objects_stored), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_transfer_syntaxes_are_stored_untouched() {
    if !have("storescu") {
        return;
    }
    let server = start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let plain = ct_file(src.path(), 1, uids::EXPLICIT_VR_LITTLE_ENDIAN, 60_000);
    // storescu proposes a compressed syntax only when told to (-xs: JPEG lossless SV1,
    // -xr: RLE); it then lists it first, and the file travels as it is.
    let mut sent = Vec::new();
    for (tool, name, option, ts) in [
        (
            "dcmcjpeg",
            "jpeg-lossless.dcm",
            "-xs",
            uids::JPEG_LOSSLESS_SV1,
        ),
        ("dcmcrle", "rle.dcm", "-xr", uids::RLE_LOSSLESS),
    ] {
        if !have(tool) {
            continue;
        }
        let path = src.path().join(name);
        let out = Command::new(tool)
            .arg(&plain.path)
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} failed:\n{}", text(&out));
        assert_eq!(transfer_syntax_of(&path), ts);
        let out = dcmtk(
            "storescu",
            storescu_args(
                server.addr,
                SCU_AE,
                &["-R", option],
                std::slice::from_ref(&path),
            ),
        )
        .await;
        assert!(out.status.success(), "storescu failed:\n{}", text(&out));
        sent.push((path, ts));
    }
    {
        let stored = server.sink.stored.lock().unwrap();
        assert_eq!(stored.len(), sent.len());
        for ((path, ts), got) in sent.iter().zip(stored.iter()) {
            assert_eq!(got.transfer_syntax, *ts);
            let bytes = std::fs::read(&got.path).unwrap();
            assert!(
                bytes == dataset_of(&std::fs::read(path).unwrap()),
                "{} was altered",
                path.display()
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_object_leaves_nothing_behind() {
    let server = start(|_| {}).await;
    let mut raw = Raw::associate(server.addr).await;
    raw.fragment(true, true, &store_command("1.2.3.4.5.6"))
        .await;
    raw.fragment(false, false, &vec![0x55; 8000]).await;
    wait_until("the temporary file", || !server.parts().is_empty()).await;
    drop(raw);
    wait_until("the temporary file to be removed", || {
        server.parts().is_empty()
    })
    .await;
    wait_until("the association to end", || {
        server.stats.snapshot().associations_active == 0
    })
    .await;
    assert_eq!(server.stats.snapshot().objects_truncated, 1);

    // Garbage instead of an association request, and a PDU claiming 4 GiB: both are
    // dropped without harming the listener.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut buf))
        .await
        .unwrap();
    let mut huge = Raw::associate(server.addr).await;
    huge.stream
        .write_all(&[0x04, 0, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(huge.closed_by_server().await);
    // A data fragment without a command is a protocol error: aborted.
    let mut confused = Raw::associate(server.addr).await;
    confused.fragment(false, true, b"data first").await;
    assert!(confused.closed_by_server().await);

    // And a good association still works.
    let mut good = Raw::associate(server.addr).await;
    let dataset = vec![0x11u8; 3000];
    good.fragment(true, true, &store_command("1.2.3.4.5.7"))
        .await;
    good.fragment(false, false, &dataset[..1000]).await;
    good.fragment(false, true, &dataset[1000..]).await;
    let mut header = [0u8; 6];
    good.stream.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 0x04, "expected the C-STORE-RSP");
    assert_eq!(server.sink.instances(), vec!["1.2.3.4.5.7".to_owned()]);
    let stored = std::fs::read(&server.sink.stored.lock().unwrap()[0].path).unwrap();
    assert_eq!(stored, dataset);
    drop(good);
    let stats = server.stop().await;
    assert_eq!(stats.protocol_errors, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_association_is_aborted_after_the_idle_timeout() {
    let server = start(|c| c.idle_timeout_secs = 1).await;
    let mut raw = Raw::associate(server.addr).await;
    assert!(raw.closed_by_server().await);
    let stats = server.stop().await;
    assert_eq!(stats.idle_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_over_the_cap_are_rejected_transiently() {
    if !have("echoscu") {
        return;
    }
    let server = start(|c| c.max_associations = 1).await;
    let holder = Raw::associate(server.addr).await;
    let out = echo(&server, SCU_AE).await;
    assert!(!out.status.success());
    let msg = text(&out).to_lowercase();
    assert!(msg.contains("local limit exceeded"), "{msg}");
    drop(holder);
    wait_until("the slot to free", || {
        server.stats.snapshot().associations_active == 0
    })
    .await;
    let out = echo(&server, SCU_AE).await;
    assert!(out.status.success(), "{}", text(&out));
    let stats = server.stop().await;
    assert_eq!(stats.associations_busy, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_open_associations_and_returns() {
    let server = start(|_| {}).await;
    let mut raw = Raw::associate(server.addr).await;
    raw.fragment(true, true, &store_command("1.2.3.9")).await;
    raw.fragment(false, false, &[1, 2, 3, 4]).await;
    wait_until("the temporary file", || !server.parts().is_empty()).await;
    let addr = server.addr;
    let stats = server.stop().await;
    assert!(raw.closed_by_server().await);
    assert_eq!(stats.objects_truncated, 1);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn invalid_config_and_missing_temp_dir_are_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(false);
    let mut bad = config(Path::new("/nonexistent/wardgate-dicom"));
    let result = serve(
        listener,
        bad.clone(),
        Arc::new(DirSink::new(tempfile::tempdir().unwrap().path().join("s"))),
        Arc::new(DicomScpStats::new()),
        rx.clone(),
    )
    .await;
    assert!(matches!(
        result,
        Err(wardgate_device_adapters::dicom::DicomScpError::TempDir { .. })
    ));
    bad.callers.clear();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = serve(
        listener,
        bad,
        Arc::new(DirSink::new(tempfile::tempdir().unwrap().path().join("s"))),
        Arc::new(DicomScpStats::new()),
        rx,
    )
    .await;
    assert!(matches!(
        result,
        Err(wardgate_device_adapters::dicom::DicomScpError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_on_a_context_of_another_sop_class_is_refused_and_discarded() {
    let server = start(|_| {}).await;
    let mut raw = Raw::associate(server.addr).await;
    // Context 1 was negotiated for CT; the command claims MR.
    raw.fragment(
        true,
        true,
        &store_command_for(uids::MR_IMAGE_STORAGE, "1.2.3.8"),
    )
    .await;
    raw.fragment(false, false, &[7; 500]).await;
    raw.fragment(false, true, &[7; 500]).await;
    assert_eq!(raw.response_status().await, 0x0122);
    assert!(server.parts().is_empty());
    // The association goes on.
    raw.fragment(true, true, &store_command("1.2.3.9")).await;
    raw.fragment(false, true, &[8; 100]).await;
    assert_eq!(raw.response_status().await, 0x0000);
    assert_eq!(server.sink.instances(), vec!["1.2.3.9".to_owned()]);
    drop(raw);
    let stats = server.stop().await;
    assert_eq!((stats.objects_failed, stats.objects_stored), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_object_being_stored_before_aborting() {
    let server = start(|_| {}).await;
    server.sink.gated.store(true, Ordering::SeqCst);
    let mut raw = Raw::associate(server.addr).await;
    raw.fragment(true, true, &store_command("1.2.3.10")).await;
    raw.fragment(false, true, &[9; 2000]).await;
    server.sink.started.notified().await;
    server.shutdown.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.sink.release.notify_one();
    assert_eq!(
        raw.response_status().await,
        0x0000,
        "the stored object is acknowledged"
    );
    assert!(raw.closed_by_server().await);
    assert_eq!(server.sink.instances(), vec!["1.2.3.10".to_owned()]);
    let stats = server.stop().await;
    assert_eq!(stats.objects_stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_that_never_requests_an_association_is_closed() {
    let server = start(|c| c.idle_timeout_secs = 1).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, silent.read_to_end(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap();
    let stats = server.stop().await;
    assert_eq!((stats.idle_timeouts, stats.associations_accepted), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_identifiers_sent_by_storescu_never_reach_the_disk_in_the_clear() {
    if !have("storescu") {
        return;
    }
    let server = start(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    // Large enough to span several sealing chunks.
    let file = ct_file_of(
        src.path(),
        1,
        uids::EXPLICIT_VR_LITTLE_ENDIAN,
        300_000,
        ("DOE^PLANTED", "MRN-PLANTED-42"),
    );
    assert!(contains(&file.dataset, b"DOE^PLANTED") && contains(&file.dataset, b"MRN-PLANTED-42"));
    let out = dcmtk(
        "storescu",
        storescu_args(
            server.addr,
            SCU_AE,
            &["-xe"],
            std::slice::from_ref(&file.path),
        ),
    )
    .await;
    assert!(out.status.success(), "storescu failed:\n{}", text(&out));
    {
        let stored = server.sink.stored.lock().unwrap();
        assert_eq!(stored.len(), 1);
        let got = &stored[0];
        // On disk, while the sink held the object: ciphertext only.
        assert_eq!(got.raw.len() as u64, sealed_len(file.dataset.len() as u64));
        assert!(!contains(&got.raw, b"DOE^PLANTED"), "patient name on disk");
        assert!(!contains(&got.raw, b"PLANTED"), "part of the name on disk");
        assert!(!contains(&got.raw, b"MRN-PLANTED-42"), "patient ID on disk");
        assert!(
            !contains(&got.raw, &file.dataset[..64]),
            "data set start on disk"
        );
        // Through open_dataset: exactly what was sent.
        let read = std::fs::read(&got.path).unwrap();
        assert!(contains(&read, b"DOE^PLANTED"));
        assert!(read == file.dataset, "open_dataset did not round-trip");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_identifier_in_raw_fragments_never_reaches_the_disk_in_the_clear() {
    let server = start(|_| {}).await;
    // The marker sits at the start, across chunk boundaries and at the very end; fragments of odd sizes cut through it.
    let marker = b"DOE^PLANTED";
    let mut dataset: Vec<u8> = (0..600_000u32).map(|i| (i % 241) as u8).collect();
    let boundary = CHUNK_LEN - 5;
    let end = dataset.len() - marker.len();
    for at in [0, boundary, 300_000, CHUNK_LEN * 2 - 3, end] {
        dataset[at..at + marker.len()].copy_from_slice(marker);
    }
    let mut raw = Raw::associate(server.addr).await;
    raw.fragment(true, true, &store_command("1.2.3.77")).await;
    let pieces: Vec<&[u8]> = dataset.chunks(16_377).collect();
    for (i, piece) in pieces.iter().enumerate() {
        raw.fragment(false, i + 1 == pieces.len(), piece).await;
    }
    assert_eq!(raw.response_status().await, 0x0000);
    {
        let stored = server.sink.stored.lock().unwrap();
        let got = &stored[0];
        assert_eq!(got.dataset_len, dataset.len() as u64);
        assert!(!contains(&got.raw, marker), "planted name on disk");
        assert!(std::fs::read(&got.path).unwrap() == dataset);
    }
    drop(raw);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_previous_run_are_removed_at_start() {
    let leftover = "wardgate-dicom-00000000deadbeef-3.part";
    let server = start_over(
        |dir| {
            std::fs::write(dir.join(leftover), [0xAB; 4096]).unwrap();
            std::fs::write(dir.join("not-ours.txt"), b"keep").unwrap();
        },
        |_| {},
    )
    .await;
    // Once an association is served, start-up is over.
    let raw = Raw::associate(server.addr).await;
    drop(raw);
    let names: Vec<String> = server
        .parts()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["not-ours.txt".to_owned()]);
    std::fs::remove_file(server.temp_dir.join("not-ours.txt")).unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_temp_file_fails_to_read_back() {
    // The sink corrupts one byte of the ciphertext before reading, as a medium error or
    // an intruder would: the reader refuses, and the sink answers a failure.
    struct Corrupting;
    impl DicomSink for Corrupting {
        async fn store(&self, object: ReceivedObject) -> Result<(), StoreFailure> {
            tokio::task::spawn_blocking(move || {
                let mut bytes = std::fs::read(&object.dataset_path).unwrap();
                bytes[100] ^= 0x01;
                std::fs::write(&object.dataset_path, &bytes).unwrap();
                let mut out = Vec::new();
                let read = object
                    .open_dataset()
                    .and_then(|mut r| std::io::Read::read_to_end(&mut r, &mut out));
                match read {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
                        assert!(out.is_empty(), "plaintext of a bad chunk released");
                        Err(StoreFailure::ProcessingFailure(
                            "data set unreadable".into(),
                        ))
                    }
                }
            })
            .await
            .unwrap()
        }
    }
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let stats = Arc::new(DicomScpStats::new());
    let task = tokio::spawn(serve(
        listener,
        config(root.path()),
        Arc::new(Corrupting),
        Arc::clone(&stats),
        rx,
    ));
    let mut raw = Raw::associate(addr).await;
    raw.fragment(true, true, &store_command("1.2.3.78")).await;
    raw.fragment(false, true, &[0x42; 5000]).await;
    assert_eq!(raw.response_status().await, 0x0110);
    drop(raw);
    shutdown.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(stats.snapshot().objects_failed, 1);
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
}
