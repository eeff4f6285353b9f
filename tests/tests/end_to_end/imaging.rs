//! Imaging: modalities store CT objects with dcmtk's `storescu` (or a raw association for
//! what storescu will not send) into the real `wardgate run`, which de-identifies them
//! (PS3.15 Annex E) into its outbox and uploads them over QUIC with mutual TLS to a
//! separate `wardgate receive` process. Every object carries a planted identifier in every
//! attribute of Table E.1-1 (`wardgate_tests::dicom_objects`).
//!
//! What is checked: no planted value reaches the receiver or rests anywhere on the
//! gateway's disk (data directory, DICOM temp directory) or in its log, even with an
//! object in flight; mapped UIDs are consistent within a series and across a gateway
//! restart, and references resolve; kill -9 of either end mid-upload loses nothing and the
//! upload resumes where the receiver's durable offset was; bad input (truncated data set,
//! unknown AE title, oversized object, full outbox, burned-in annotation) is answered with
//! the right status and nothing of it is uploaded.
//!
//! dcmtk (`storescu`, `dcmdump`) is needed: without it the tests print `SKIP` and pass,
//! except under `CI=true`, where a missing tool fails them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_ul::pdu::{write_pdu, AssociationRQ, Pdu, PresentationContextProposed, UserVariableItem};
use sha2::{Digest, Sha256};
use wardgate::phi::dicom::{table_e1_1, DeidOptions, DicomRules};
use wardgate::phi::PseudonymKey;
use wardgate_tests::certs::{TestPki, Validity};
use wardgate_tests::dicom_objects::{
    Built, CtImage, CT_IMAGE_STORAGE, EXPLICIT_LE, INSTANCE_A, INSTANCE_B, ISSUER, MRN,
};
use wardgate_tests::gateway::{
    free_port, free_udp_port, GatewayProcess, GatewaySetup, ReceiverProcess, ReceiverSetup,
};

/// The gateway's AE title.
const OUR_AE: &str = "WARDGATE";
/// The CT's calling AE title, declared as device [`DEVICE`].
const CALLER: &str = "CT1";
const DEVICE: &str = "ct-1";
const INSTANCE_C: &str = "1.2.826.0.1.3680043.8.498.1006";
/// The site's pseudonym key, written before the first start so that mapped UIDs and
/// pseudonyms are the same on every run (and can be computed here).
const SITE_KEY: [u8; 32] = [42; 32];
/// How long an upload may take to arrive. Generous: after a kill -9, QUIC's idle timeout
/// (30 s) must pass before the surviving end lets go of the dead connection.
const PATIENCE: Duration = Duration::from_secs(90);
/// The sender's debug events include "bulk upload committed … resumed_from=N".
const GATEWAY_LOG: &str = "info,wardgate::bulk::sender=debug";

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

/// Runs storescu (Nagle off, see the shared notes) with `-d`, so that statuses are shown.
fn storescu(addr: SocketAddr, calling: &str, extra: &[&str], files: &[&Path]) -> Output {
    Command::new("storescu")
        .env("TCP_NODELAY", "1")
        .args(["-d", "-aet", calling, "-aec", OUR_AE])
        .args(extra)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .output()
        .unwrap()
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The statuses of the store responses storescu received, in order.
fn store_statuses(output: &Output) -> Vec<u16> {
    let text = output_text(output);
    let mut statuses = Vec::new();
    let mut in_response = false;
    for line in text.lines() {
        if line.contains("C-STORE RSP") {
            in_response = true;
        }
        if in_response {
            if let Some(rest) = line.split("Status").nth(1) {
                if let Some(hex) = rest.split("0x").nth(1) {
                    let digits: String = hex.chars().take_while(char::is_ascii_hexdigit).collect();
                    statuses.push(u16::from_str_radix(&digits, 16).unwrap());
                    in_response = false;
                }
            }
        }
    }
    statuses
}

/// dcmdump parses `path` without complaint.
fn dcmdump_accepts(path: &Path) {
    if !have("dcmdump") {
        return;
    }
    let out = Command::new("dcmdump")
        .arg("-q")
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dcmdump failed on {}: {stderr}",
        path.display()
    );
    assert!(
        !stderr.contains("E:") && !stderr.contains("W:"),
        "dcmdump complained about {}: {stderr}",
        path.display()
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("(0012,0062) CS [YES]"), "{dump}");
}

// ---------------------------------------------------------------------------------------
// The site: a gateway with [dicom] and [bulk_upload], and a receiver

struct Options {
    max_object_bytes: u64,
    outbox_budget_bytes: u64,
    /// The upload bandwidth cap (all day); 0: none.
    bytes_per_sec: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_object_bytes: 256 * 1024 * 1024,
            outbox_budget_bytes: 1024 * 1024 * 1024,
            bytes_per_sec: 0,
        }
    }
}

struct Site {
    setup: GatewaySetup,
    receiver: ReceiverSetup,
    dicom_port: u16,
    table: Vec<(u16, u16)>,
    // Dropped last: the certificates and every file of the run.
    _pki: TestPki,
    work: tempfile::TempDir,
}

impl Site {
    fn new(name: &str, options: &Options) -> Site {
        let work = tempfile::Builder::new()
            .prefix(&format!("wardgate-imaging-{name}-"))
            .tempdir()
            .unwrap();
        let pki = TestPki::generate(name).unwrap();
        let gateway_cert = pki.client("gateway", name, Validity::Current).unwrap();
        let receiver = ReceiverSetup {
            dir: work.path().to_path_buf(),
            port: free_udp_port().unwrap(),
            store_dir: work.path().join("received"),
            // Valid for localhost and 127.0.0.1; the gateway checks it for "localhost".
            cert_file: pki.server().cert.clone(),
            key_file: pki.server().key.clone(),
            client_ca_file: pki.ca_file().to_path_buf(),
            // Small checkpoints: a partial file's durable offset moves every MiB.
            checkpoint_bytes: 1024 * 1024,
        };
        let dicom_port = free_port().unwrap();
        let temp_dir = work.path().join("dicom-incoming");
        let extra = format!(
            r#"
[phi.dicom]
quarantine_budget_bytes = 268435456

[dicom]
listen = "127.0.0.1:{dicom_port}"
ae_title = "{OUR_AE}"
temp_dir = "{temp}"
max_object_bytes = {max_object}

[[dicom.callers]]
ae_title = "{CALLER}"

[bulk_upload]
receiver = "{receiver}"
server_name = "localhost"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
outbox_budget_bytes = {budget}
off_hours_bytes_per_sec = {rate}

[[device]]
id = "{DEVICE}"
kind = "ct-scanner"
dicom_ae_title = "{CALLER}"
"#,
            temp = temp_dir.display(),
            max_object = options.max_object_bytes,
            receiver = receiver.address(),
            ca = pki.ca_file().display(),
            cert = gateway_cert.cert.display(),
            key = gateway_cert.key.display(),
            budget = options.outbox_budget_bytes,
            rate = options.bytes_per_sec,
        );
        let setup = GatewaySetup {
            dir: work.path().to_path_buf(),
            id: format!("gw-{name}"),
            // No broker: the uplink retries in the background, irrelevant here.
            mqtt_url: format!("mqtts://127.0.0.1:{}", free_port().unwrap()),
            ca_file: pki.ca_file().to_path_buf(),
            cert_file: gateway_cert.cert.clone(),
            key_file: gateway_cert.key.clone(),
            hl7_port: free_port().unwrap(),
            hl7_extra: String::new(),
            extra_sections: extra,
        };
        // The site key, as the gateway would create it (0700 directory, 0600 file).
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(setup.data_dir())
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(setup.data_dir().join("pseudonym.key"))
            .unwrap()
            .write_all(&SITE_KEY)
            .unwrap();
        std::fs::create_dir(work.path().join("objects")).unwrap();
        Site {
            setup,
            receiver,
            dicom_port,
            table: table_e1_1().into_iter().map(|(tag, _)| tag).collect(),
            _pki: pki,
            work,
        }
    }

    fn dicom_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.dicom_port))
    }

    fn data_dir(&self) -> PathBuf {
        self.setup.data_dir()
    }

    fn temp_dir(&self) -> PathBuf {
        self.work.path().join("dicom-incoming")
    }

    /// Starts the gateway and waits until its DICOM receiver listens.
    fn start_gateway(&self) -> GatewayProcess {
        let mut gateway =
            GatewayProcess::start_with_env(&self.setup, &[("RUST_LOG", GATEWAY_LOG)]).unwrap();
        gateway
            .wait_for_log("DICOM receiver listening", Duration::from_secs(20))
            .unwrap();
        gateway
    }

    fn start_receiver(&self) -> ReceiverProcess {
        ReceiverProcess::start(&self.receiver).unwrap()
    }

    /// Builds `spec` with identifiers planted from Table E.1-1 and writes it as a file.
    fn object(&self, name: &str, spec: &CtImage<'_>) -> (PathBuf, Built) {
        let built = spec.build(&self.table);
        let path = self.work.path().join("objects").join(format!("{name}.dcm"));
        std::fs::write(&path, &built.bytes).unwrap();
        (path, built)
    }

    /// What the receiver committed, by file id.
    fn received(&self) -> BTreeMap<String, Received> {
        let dir = self.receiver.store_dir.join("dicom");
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".json") {
                continue;
            }
            // The record is written before the data is renamed into place.
            let record = std::fs::read(dir.join(format!("{name}.meta.json"))).unwrap();
            out.insert(
                name.clone(),
                Received {
                    path: dir.join(&name),
                    record: serde_json::from_slice(&record).unwrap(),
                    record_bytes: record,
                },
            );
        }
        out
    }

    /// Waits until the receiver committed `n` files.
    fn wait_received(&self, n: usize, logs: &dyn Fn() -> String) -> BTreeMap<String, Received> {
        wait_for(
            &format!("{n} files at the receiver"),
            PATIENCE,
            logs,
            || {
                let received = self.received();
                (received.len() >= n).then_some(received)
            },
        )
    }

    /// The partial uploads the receiver holds: (file id, durable offset, size).
    fn partials(&self) -> Vec<(String, u64, u64)> {
        let dir = self.receiver.store_dir.join(".partial");
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return out;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".state.json") else {
                continue;
            };
            if name.starts_with(".tmp-") {
                continue;
            }
            let Ok(bytes) = std::fs::read(dir.join(&name)) else {
                continue; // replaced between listing and reading
            };
            let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            out.push((
                id.to_owned(),
                state["durable_offset"].as_u64().unwrap(),
                state["size"].as_u64().unwrap(),
            ));
        }
        out
    }

    /// The data files in the gateway's outbox (or quarantine).
    fn queued(&self, dir: &str) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join(dir)) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "data"))
            .collect()
    }

    /// Every file under the gateway's data and temp directories, and its logs.
    fn gateway_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in [self.data_dir(), self.temp_dir()] {
            walk(&dir, &mut files);
        }
        for entry in std::fs::read_dir(self.work.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("gateway") && name.ends_with(".log") {
                files.push(path);
            }
        }
        files
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// A file the receiver committed.
struct Received {
    path: PathBuf,
    /// `<id>.meta.json`: size, sha256, device, metadata.
    record: serde_json::Value,
    record_bytes: Vec<u8>,
}

impl Received {
    fn meta(&self, key: &str) -> &str {
        self.record["metadata"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no metadata {key} in {}", self.record))
    }

    fn parse(&self) -> DefaultDicomObject {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .open_file(&self.path)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", self.path.display()))
    }
}

fn string(o: &InMemDicomObject, tag: Tag) -> String {
    o.element(tag)
        .unwrap_or_else(|e| panic!("{tag}: {e}"))
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn first_item(o: &InMemDicomObject, tag: Tag) -> &InMemDicomObject {
    &o.element(tag).unwrap().items().unwrap()[0]
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    logs: &dyn Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The rules the gateway runs with (the site key, default options): what mapped UIDs and
/// pseudonyms must be.
fn site_rules() -> DicomRules {
    DicomRules::new(PseudonymKey::from_bytes(&SITE_KEY), DeidOptions::default()).unwrap()
}

/// Planted values of `objects`, searchable in one pass.
struct Planted {
    values: Vec<Vec<u8>>,
    searcher: AhoCorasick,
}

impl Planted {
    fn of(objects: &[&Built]) -> Planted {
        let values: Vec<Vec<u8>> = objects
            .iter()
            .flat_map(|b| b.planted.iter().map(|(_, v)| v.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(
            values.len() > 400,
            "only {} distinct values planted",
            values.len()
        );
        let searcher = AhoCorasick::new(&values).unwrap();
        Planted { values, searcher }
    }

    /// The first planted value found in `bytes`.
    fn find_in(&self, bytes: &[u8]) -> Option<String> {
        self.searcher
            .find(bytes)
            .map(|m| String::from_utf8_lossy(&self.values[m.pattern().as_usize()]).into_owned())
    }

    fn assert_absent(&self, what: &str, bytes: &[u8]) {
        if let Some(value) = self.find_in(bytes) {
            panic!("planted value {value:?} found in {what}");
        }
    }

    /// No planted value in any of `files`; returns how many bytes were searched.
    fn assert_absent_from_files(&self, files: &[PathBuf]) -> u64 {
        let mut searched = 0;
        for path in files {
            // A file may be removed between listing and reading (a commit, a rename).
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            searched += bytes.len() as u64;
            self.assert_absent(&path.display().to_string(), &bytes);
        }
        searched
    }
}

/// The de-identification markers and mapped identity every received object must have.
fn assert_deidentified(received: &Received, original_instance: &str) {
    let rules = site_rules();
    let file = received.parse();
    dcmdump_accepts(&received.path);
    assert_eq!(string(&file, tags::PATIENT_IDENTITY_REMOVED), "YES");
    let codes: Vec<String> = file
        .element(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|item| string(item, tags::CODE_VALUE))
        .collect();
    assert!(codes.iter().any(|c| c == "113100"), "{codes:?}");
    let sop = string(&file, tags::SOP_INSTANCE_UID);
    let study = string(&file, tags::STUDY_INSTANCE_UID);
    let series = string(&file, tags::SERIES_INSTANCE_UID);
    for uid in [&sop, &study, &series] {
        assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
    }
    assert_eq!(sop, rules.map_uid(original_instance));
    assert_eq!(file.meta().media_storage_sop_instance_uid(), sop);
    assert_eq!(string(&file, tags::SOP_CLASS_UID), CT_IMAGE_STORAGE);
    // The receiver's record agrees with the object, and names the declared device.
    assert_eq!(received.meta("sop_instance_uid"), sop);
    assert_eq!(received.meta("sop_class_uid"), CT_IMAGE_STORAGE);
    assert_eq!(received.meta("study_instance_uid"), study);
    assert_eq!(received.meta("series_instance_uid"), series);
    assert_eq!(received.meta("modality"), "CT");
    let patient = PseudonymKey::from_bytes(&SITE_KEY).pseudonym(MRN, ISSUER).0;
    assert_eq!(received.meta("patient"), patient);
    assert_eq!(string(&file, tags::PATIENT_ID), patient);
    assert_eq!(received.record["device"], DEVICE);
    assert_eq!(received.record["kind"], "dicom");
    // The stored bytes are the ones the gateway offered.
    let bytes = std::fs::read(&received.path).unwrap();
    assert_eq!(
        received.record["size"].as_u64().unwrap(),
        bytes.len() as u64
    );
    assert_eq!(
        received.record["sha256"].as_str().unwrap(),
        format!("{:x}", Sha256::digest(&bytes))
    );
}

fn by_sop(received: &BTreeMap<String, Received>) -> BTreeMap<String, &Received> {
    received
        .values()
        .map(|r| (r.meta("sop_instance_uid").to_owned(), r))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// A series of three CT instances, referencing each other, nested three levels deep, with
/// private attributes: what arrives carries no planted value, parses, is marked
/// de-identified, shares one mapped study and series, and its references resolve; and no
/// planted value rests anywhere on the gateway.
#[test]
fn planted_identifiers_never_leave_the_gateway_and_references_resolve() {
    if !have("storescu") {
        return;
    }
    let site = Site::new("series", &Options::default());
    let _receiver = site.start_receiver();
    let mut gateway = site.start_gateway();
    let (a_path, a) = site.object("a", &CtImage::new(INSTANCE_A, INSTANCE_B));
    let (b_path, b) = site.object("b", &CtImage::new(INSTANCE_B, INSTANCE_A));
    let (c_path, c) = site.object("c", &CtImage::new(INSTANCE_C, INSTANCE_A));
    let planted = Planted::of(&[&a, &b, &c]);

    let out = storescu(site.dicom_addr(), CALLER, &[], &[&a_path, &b_path, &c_path]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(store_statuses(&out), [0, 0, 0], "{}", output_text(&out));

    let received = site.wait_received(3, &|| gateway.log_text());
    assert_eq!(received.len(), 3);
    for r in received.values() {
        planted.assert_absent(
            &r.path.display().to_string(),
            &std::fs::read(&r.path).unwrap(),
        );
        planted.assert_absent("a receiver record", &r.record_bytes);
    }
    let rules = site_rules();
    let by_sop = by_sop(&received);
    let [ra, rb, rc] = [INSTANCE_A, INSTANCE_B, INSTANCE_C].map(|i| {
        *by_sop
            .get(&rules.map_uid(i))
            .unwrap_or_else(|| panic!("{i} not received as {}", rules.map_uid(i)))
    });
    for (r, original) in [(ra, INSTANCE_A), (rb, INSTANCE_B), (rc, INSTANCE_C)] {
        assert_deidentified(r, original);
    }
    let [fa, fb, fc] = [ra, rb, rc].map(Received::parse);
    // One study, one series, as the modality sent them.
    for f in [&fb, &fc] {
        assert_eq!(
            string(f, tags::STUDY_INSTANCE_UID),
            string(&fa, tags::STUDY_INSTANCE_UID)
        );
        assert_eq!(
            string(f, tags::SERIES_INSTANCE_UID),
            string(&fa, tags::SERIES_INSTANCE_UID)
        );
    }
    // References resolve to the received instances, at the top and three levels down.
    let referenced = |f: &DefaultDicomObject| {
        string(
            first_item(f, tags::REFERENCED_IMAGE_SEQUENCE),
            tags::REFERENCED_SOP_INSTANCE_UID,
        )
    };
    assert_eq!(referenced(&fa), rb.meta("sop_instance_uid"));
    assert_eq!(referenced(&fb), ra.meta("sop_instance_uid"));
    assert_eq!(referenced(&fc), ra.meta("sop_instance_uid"));
    let deep = first_item(
        first_item(
            first_item(&fb, tags::REFERENCED_SERIES_SEQUENCE),
            tags::REFERENCED_INSTANCE_SEQUENCE,
        ),
        tags::REFERENCED_IMAGE_SEQUENCE,
    );
    assert_eq!(
        string(deep, tags::REFERENCED_SOP_INSTANCE_UID),
        ra.meta("sop_instance_uid")
    );
    assert_eq!(
        string(deep, tags::STUDY_INSTANCE_UID),
        string(&fa, tags::STUDY_INSTANCE_UID)
    );
    // Private attributes are gone (no safe list configured).
    assert!(fa.element(Tag(0x0009, 0x1001)).is_err());
    // Pixels pass through unchanged.
    let pixels = fa.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(&pixels[..], &a.pixels[..]);

    // Nothing identified rests on the gateway: spool, outbox, temp files, logs.
    let searched = planted.assert_absent_from_files(&site.gateway_files());
    assert!(searched > 0);
    assert!(
        site.queued("outbox").is_empty(),
        "committed files leave the outbox"
    );
    let clean = gateway.terminate(Duration::from_secs(20)).unwrap();
    assert!(clean, "{}", gateway.log_text());
}

/// Mapped UIDs survive a gateway restart: instance B of the same study, sent after a
/// restart, lands in the same mapped study and its reference resolves to A.
#[test]
fn uids_stay_consistent_across_a_gateway_restart() {
    if !have("storescu") {
        return;
    }
    let site = Site::new("restart", &Options::default());
    let _receiver = site.start_receiver();
    let (a_path, _) = site.object("a", &CtImage::new(INSTANCE_A, INSTANCE_B));
    let (b_path, _) = site.object("b", &CtImage::new(INSTANCE_B, INSTANCE_A));

    let mut gateway = site.start_gateway();
    let out = storescu(site.dicom_addr(), CALLER, &[], &[&a_path]);
    assert_eq!(store_statuses(&out), [0], "{}", output_text(&out));
    site.wait_received(1, &|| gateway.log_text());
    let clean = gateway.terminate(Duration::from_secs(20)).unwrap();
    assert!(clean, "SIGTERM must end in exit 0:\n{}", gateway.log_text());

    let gateway = site.start_gateway();
    let out = storescu(site.dicom_addr(), CALLER, &[], &[&b_path]);
    assert_eq!(store_statuses(&out), [0], "{}", output_text(&out));
    let received = site.wait_received(2, &|| gateway.log_text());
    let rules = site_rules();
    let by_sop = by_sop(&received);
    let ra = by_sop[&rules.map_uid(INSTANCE_A)];
    let rb = by_sop[&rules.map_uid(INSTANCE_B)];
    assert_deidentified(ra, INSTANCE_A);
    assert_deidentified(rb, INSTANCE_B);
    let (fa, fb) = (ra.parse(), rb.parse());
    assert_eq!(
        string(&fa, tags::STUDY_INSTANCE_UID),
        string(&fb, tags::STUDY_INSTANCE_UID)
    );
    assert_eq!(
        string(&fa, tags::SERIES_INSTANCE_UID),
        string(&fb, tags::SERIES_INSTANCE_UID)
    );
    assert_eq!(
        string(
            first_item(&fb, tags::REFERENCED_IMAGE_SEQUENCE),
            tags::REFERENCED_SOP_INSTANCE_UID
        ),
        string(&fa, tags::SOP_INSTANCE_UID)
    );
}

/// A CT volume's worth of pixels (64 MiB), with the uplink capped so that its upload takes
/// a few seconds.
const LARGE_ROWS: u16 = 4096;
const LARGE_COLUMNS: u16 = 8192;
const LARGE_RATE: u64 = 16 * 1024 * 1024;
/// The receiver's durable offset at which the kill comes.
const KILL_AT: u64 = 6 * 1024 * 1024;

fn large(instance: &str) -> CtImage<'_> {
    CtImage {
        rows: LARGE_ROWS,
        columns: LARGE_COLUMNS,
        ..CtImage::new(instance, INSTANCE_B)
    }
}

/// The offset the sender resumed the committed upload from (its debug event).
fn resumed_from(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("bulk upload committed"))
        .find_map(|l| l.split("resumed_from=").nth(1))
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
}

/// Waits until the receiver holds a partial of the one upload with a durable offset of
/// at least [`KILL_AT`]; returns (durable offset, size).
fn wait_mid_upload(site: &Site, logs: &dyn Fn() -> String) -> (u64, u64) {
    wait_for(
        "a partial upload past its first checkpoints",
        PATIENCE,
        logs,
        || {
            site.partials()
                .into_iter()
                .find(|&(_, durable, size)| durable >= KILL_AT && durable < size)
                .map(|(_, durable, size)| (durable, size))
        },
    )
}

fn assert_large_arrived(site: &Site, received: &BTreeMap<String, Received>, planted: &Planted) {
    assert_eq!(received.len(), 1);
    let r = received.values().next().unwrap();
    assert_deidentified(r, INSTANCE_A);
    let bytes = std::fs::read(&r.path).unwrap();
    planted.assert_absent("the received large object", &bytes);
    let file = r.parse();
    let pixels = file.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(
        pixels.len(),
        usize::from(LARGE_ROWS) * usize::from(LARGE_COLUMNS) * 2
    );
    assert!(site.partials().is_empty(), "{:?}", site.partials());
}

/// kill -9 of the gateway while the receiver holds part of a large object: the object
/// was acknowledged to the modality only once durable in the outbox, nothing identified is
/// on the gateway's disk while it is in flight, and after a restart the upload completes
/// from the receiver's durable offset, not from zero.
#[test]
fn gateway_killed_mid_upload_resumes_after_restart() {
    if !have("storescu") {
        return;
    }
    let site = Site::new(
        "kill-gw",
        &Options {
            bytes_per_sec: LARGE_RATE,
            ..Options::default()
        },
    );
    let _receiver = site.start_receiver();
    let mut gateway = site.start_gateway();
    let (path, built) = site.object("large", &large(INSTANCE_A));
    let planted = Planted::of(&[&built]);
    let out = storescu(site.dicom_addr(), CALLER, &[], &[&path]);
    assert_eq!(store_statuses(&out), [0], "{}", output_text(&out));

    let (durable, size) = wait_mid_upload(&site, &|| gateway.log_text());
    gateway.kill9();
    // In flight: the de-identified object waits in the outbox, nothing else identified is
    // anywhere (temp files, spool, logs).
    let outbox = site.queued("outbox");
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(std::fs::metadata(&outbox[0]).unwrap().len(), size);
    let searched = planted.assert_absent_from_files(&site.gateway_files());
    assert!(searched >= size);
    let stopped_log = gateway.log_text();

    let gateway = site.start_gateway();
    let logs = || format!("{stopped_log}\n--- restarted ---\n{}", gateway.log_text());
    let received = site.wait_received(1, &logs);
    assert_large_arrived(&site, &received, &planted);
    let resumed = wait_for(
        "the sender's commit event",
        Duration::from_secs(10),
        &logs,
        || resumed_from(&gateway.log_text()),
    );
    assert!(
        resumed >= durable,
        "resumed from {resumed}, but the receiver held {durable} durable bytes before the kill\n{}",
        logs()
    );
    wait_for(
        "the outbox to empty",
        Duration::from_secs(10),
        &logs,
        || site.queued("outbox").is_empty().then_some(()),
    );
}

/// kill -9 of the receiver mid-file: once it is back, the upload resumes from the offset
/// its last checkpoint made durable and completes intact.
#[test]
fn receiver_killed_mid_upload_resumes_after_restart() {
    if !have("storescu") {
        return;
    }
    let site = Site::new(
        "kill-rx",
        &Options {
            bytes_per_sec: LARGE_RATE,
            ..Options::default()
        },
    );
    let mut receiver = site.start_receiver();
    let gateway = site.start_gateway();
    let (path, built) = site.object("large", &large(INSTANCE_A));
    let planted = Planted::of(&[&built]);
    let out = storescu(site.dicom_addr(), CALLER, &[], &[&path]);
    assert_eq!(store_statuses(&out), [0], "{}", output_text(&out));

    wait_mid_upload(&site, &|| gateway.log_text());
    receiver.kill9();
    // What the restarted receiver will answer: the offset of its last durable checkpoint.
    let partials = site.partials();
    assert_eq!(partials.len(), 1, "{partials:?}");
    let (_, durable, _) = partials[0];
    assert!(durable >= KILL_AT);
    let _receiver = site.start_receiver();

    let received = site.wait_received(1, &|| gateway.log_text());
    assert_large_arrived(&site, &received, &planted);
    let resumed = wait_for(
        "the sender's commit event",
        Duration::from_secs(10),
        &|| gateway.log_text(),
        || resumed_from(&gateway.log_text()),
    );
    assert_eq!(resumed, durable, "{}", gateway.log_text());
}

// ---------------------------------------------------------------------------------------
// Bad input

/// A raw association, for what storescu will not send (a truncated data set).
struct RawAssociation {
    stream: TcpStream,
}

impl RawAssociation {
    /// Associates as `calling` proposing CT storage in explicit VR little endian.
    fn open(addr: SocketAddr, calling: &str) -> RawAssociation {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let rq = Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: OUR_AE.into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![PresentationContextProposed {
                id: 1,
                abstract_syntax: CT_IMAGE_STORAGE.into(),
                transfer_syntaxes: vec![EXPLICIT_LE.into()],
            }],
            user_variables: vec![UserVariableItem::MaxLength(16384)],
        });
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, &rq).unwrap();
        stream.write_all(&bytes).unwrap();
        let (kind, _) = read_pdu(&mut stream);
        assert_eq!(kind, 0x02, "expected A-ASSOCIATE-AC");
        RawAssociation { stream }
    }

    /// Sends a C-STORE of `dataset` (fragments of 16 KiB) and returns the response status.
    fn store(&mut self, instance: &str, dataset: &[u8]) -> u16 {
        self.fragment(true, true, &store_command(instance));
        let chunks: Vec<&[u8]> = dataset.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.fragment(false, i + 1 == chunks.len(), chunk);
        }
        let (kind, body) = read_pdu(&mut self.stream);
        assert_eq!(kind, 0x04, "expected P-DATA-TF");
        assert_eq!(body[5] & 0x03, 0x03, "one last command fragment");
        let command = &body[6..];
        let mut at = 0;
        while at + 8 <= command.len() {
            let element = u16::from_le_bytes([command[at + 2], command[at + 3]]);
            let len = u32::from_le_bytes(command[at + 4..at + 8].try_into().unwrap()) as usize;
            if element == 0x0900 {
                return u16::from_le_bytes([command[at + 8], command[at + 9]]);
            }
            at += 8 + len;
        }
        panic!("no status in the C-STORE response");
    }

    fn fragment(&mut self, is_command: bool, is_last: bool, bytes: &[u8]) {
        let header = u8::from(is_command) | (u8::from(is_last) << 1);
        let item_len = u32::try_from(bytes.len() + 2).unwrap();
        let mut pdu = vec![0x04, 0];
        pdu.extend_from_slice(&(item_len + 4).to_be_bytes());
        pdu.extend_from_slice(&item_len.to_be_bytes());
        pdu.extend_from_slice(&[1, header]);
        pdu.extend_from_slice(bytes);
        self.stream.write_all(&pdu).unwrap();
    }

    /// A-RELEASE-RQ, and its A-RELEASE-RP.
    fn release(mut self) {
        self.stream
            .write_all(&[0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])
            .unwrap();
        let (kind, _) = read_pdu(&mut self.stream);
        assert_eq!(kind, 0x06, "expected A-RELEASE-RP");
    }
}

fn read_pdu(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 6];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes(header[2..6].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (header[0], body)
}

/// A C-STORE-RQ command set (implicit VR LE) for a CT instance.
fn store_command(instance: &str) -> Vec<u8> {
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
    put(&mut body, 0x0002, &uid(CT_IMAGE_STORAGE));
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

/// A failure status (PS3.7 C.4.2.1.4: 0xA7xx, 0xA9xx, 0xCxxx, 0x01xx), not success or
/// warning.
fn is_failure(status: u16) -> bool {
    matches!(status >> 12, 0xA | 0xC) || (0x0100..0x0200).contains(&status)
}

/// Truncated data set, unknown AE title, oversized object and burned-in annotation, one
/// after another against one gateway: each gets its answer, none of them is uploaded, and
/// the gateway keeps serving good objects in between.
#[test]
fn bad_input_is_refused_or_quarantined_and_nothing_of_it_is_uploaded() {
    if !have("storescu") {
        return;
    }
    let site = Site::new(
        "bad",
        &Options {
            max_object_bytes: 4 * 1024 * 1024,
            ..Options::default()
        },
    );
    let _receiver = site.start_receiver();
    let gateway = site.start_gateway();
    let logs = || gateway.log_text();
    let good1 = "1.2.826.0.1.3680043.8.498.2001";
    let good2 = "1.2.826.0.1.3680043.8.498.2002";
    let truncated = "1.2.826.0.1.3680043.8.498.2003";
    let oversized = "1.2.826.0.1.3680043.8.498.2004";
    let burned = "1.2.826.0.1.3680043.8.498.2005";
    let ultrasound = "1.2.826.0.1.3680043.8.498.2006";
    let mut all = Vec::new();

    // Truncated in the pixel data: a failure status, and the association carries on.
    let (_, t) = site.object("truncated", &CtImage::new(truncated, good1));
    let (_, g1) = site.object("good1", &CtImage::new(good1, truncated));
    let mut raw = RawAssociation::open(site.dicom_addr(), CALLER);
    let cut = &t.dataset()[..t.dataset().len() - 1000];
    let status = raw.store(truncated, cut);
    assert!(
        is_failure(status),
        "truncated data set answered {status:#06x}"
    );
    assert_eq!(raw.store(good1, g1.dataset()), 0x0000, "{}", logs());
    raw.release();
    all.extend([t, g1]);

    // An AE title not in dicom.callers: the association is rejected.
    let (g2_path, g2) = site.object("good2", &CtImage::new(good2, good1));
    let out = storescu(site.dicom_addr(), "STRANGER", &[], &[&g2_path]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("Association Rejected"), "{text}");
    assert!(store_statuses(&out).is_empty(), "{text}");

    // Over max_object_bytes: 0xA700, then the next object on the association is stored.
    let (big_path, big) = site.object(
        "oversized",
        &CtImage {
            rows: 2048,
            columns: 1536,
            ..CtImage::new(oversized, good1)
        },
    );
    let out = storescu(site.dicom_addr(), CALLER, &["-nh"], &[&big_path, &g2_path]);
    assert_eq!(
        store_statuses(&out),
        [0xA700, 0x0000],
        "{}",
        output_text(&out)
    );
    all.extend([big, g2]);

    // Burned-in annotation, and a modality that commonly burns text in: stored (the
    // modality must not resend them) but quarantined, not uploaded.
    let (burned_path, b) = site.object(
        "burned",
        &CtImage {
            burned_in_annotation: "YES",
            ..CtImage::new(burned, good1)
        },
    );
    let (us_path, u) = site.object(
        "ultrasound",
        &CtImage {
            modality: "US",
            ..CtImage::new(ultrasound, good1)
        },
    );
    let out = storescu(site.dicom_addr(), CALLER, &[], &[&burned_path, &us_path]);
    assert_eq!(store_statuses(&out), [0, 0], "{}", output_text(&out));
    all.extend([b, u]);

    // Exactly the two good objects arrive, once the outbox is empty.
    site.wait_received(2, &logs);
    wait_for("the outbox to empty", PATIENCE, &logs, || {
        site.queued("outbox").is_empty().then_some(())
    });
    // Everything uploaded is in now: anything beyond the two good objects shows here.
    let received = site.received();
    let rules = site_rules();
    let sops: BTreeSet<String> = by_sop(&received).into_keys().collect();
    assert_eq!(
        sops,
        BTreeSet::from([rules.map_uid(good1), rules.map_uid(good2)]),
        "only the good objects may be uploaded"
    );
    for r in received.values() {
        let original = if r.meta("sop_instance_uid") == rules.map_uid(good1) {
            good1
        } else {
            good2
        };
        assert_deidentified(r, original);
    }
    // The quarantine holds both, de-identified; each raised an alert naming the device.
    let quarantined = site.queued("dicom-quarantine");
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let log = logs();
    let alerts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dicom.quarantined"))
        .collect();
    assert_eq!(alerts.len(), 2, "{log}");
    assert!(alerts.iter().all(|l| l.contains(DEVICE)), "{alerts:?}");
    // Nothing identified rests on the gateway, refused objects included.
    let planted = Planted::of(&all.iter().collect::<Vec<_>>());
    planted.assert_absent_from_files(&site.gateway_files());
    for r in received.values() {
        planted.assert_absent("a received object", &std::fs::read(&r.path).unwrap());
    }
    let leftovers: Vec<PathBuf> = {
        let mut files = Vec::new();
        walk(&site.temp_dir(), &mut files);
        files
    };
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// A full outbox (the receiver is down and the budget small) answers "out of resources",
/// so the modality keeps the object and sends it again later.
#[test]
fn full_outbox_answers_out_of_resources() {
    if !have("storescu") {
        return;
    }
    // One 512×512 object (~0.5 MiB de-identified) fits; a second does not.
    let site = Site::new(
        "full",
        &Options {
            outbox_budget_bytes: 800 * 1024,
            ..Options::default()
        },
    );
    let gateway = site.start_gateway();
    let (a_path, a) = site.object("a", &CtImage::new(INSTANCE_A, INSTANCE_B));
    let (b_path, b) = site.object("b", &CtImage::new(INSTANCE_B, INSTANCE_A));
    let out = storescu(site.dicom_addr(), CALLER, &["-nh"], &[&a_path, &b_path]);
    assert_eq!(
        store_statuses(&out),
        [0x0000, 0xA700],
        "{}\n{}",
        output_text(&out),
        gateway.log_text()
    );
    assert_eq!(site.queued("outbox").len(), 1);
    // The refused object left nothing behind: no partial outbox file, no temp file.
    let mut files = Vec::new();
    walk(&site.temp_dir(), &mut files);
    assert!(files.is_empty(), "{files:?}");
    Planted::of(&[&a, &b]).assert_absent_from_files(&site.gateway_files());
}
