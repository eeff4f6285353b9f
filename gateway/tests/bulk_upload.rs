//! Bulk uploads over real QUIC on 127.0.0.1: the gateway's sender and outbox against the
//! reference receiver, with certificates from a throw-away PKI.

#![allow(clippy::unwrap_used)] // Tests may unwrap (house rule).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wardgate::bulk::outbox::{NewFile, Outbox};
use wardgate::bulk::sender::{BulkUploadConfig, Sender, SenderStats};
use wardgate::bulk::{AlwaysAllow, UploadGate};
use wardgate::receive::{Receiver, ReceiverConfig, ReceiverStats};
use wardgate_proto::upload::{FileKind, Metadata};
use wardgate_tests::certs::{CertFiles, TestPki, Validity};

const MB: usize = 1_000_000;

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn new_file(kind: FileKind, device: &str) -> NewFile {
    let mut metadata = Metadata::new();
    metadata.insert("study".into(), "pseudo-3f9a".into());
    metadata.insert("modality".into(), "CT".into());
    NewFile {
        kind,
        device: device.into(),
        metadata,
        compress: false,
    }
}

struct Site {
    pki: TestPki,
    client: CertFiles,
    root: tempfile::TempDir,
}

impl Site {
    fn new(name: &str) -> Self {
        let pki = TestPki::generate(name).unwrap();
        let client = pki
            .client("gateway", "wardgate-gw-1", Validity::Current)
            .unwrap();
        Site {
            pki,
            client,
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn received(&self) -> PathBuf {
        self.root.path().join("received")
    }

    fn outbox(&self) -> Arc<Outbox> {
        Arc::new(Outbox::open(self.root.path().join("outbox"), 1 << 32).unwrap())
    }

    fn receiver_config(&self, listen: SocketAddr) -> ReceiverConfig {
        let mut config = ReceiverConfig::new(
            listen,
            self.received(),
            self.pki.server().cert.clone(),
            self.pki.server().key.clone(),
            self.pki.ca_file().to_owned(),
        );
        config.checkpoint_bytes = 256 * 1024;
        config
    }

    fn sender_config(&self, receiver: SocketAddr, client: &CertFiles) -> BulkUploadConfig {
        let mut config = BulkUploadConfig::new(
            receiver.to_string(),
            self.pki.ca_file().to_owned(),
            client.cert.clone(),
            client.key.clone(),
        );
        config.server_name = Some("localhost".into());
        config
    }

    fn stored(&self, kind: FileKind, id: &str) -> Vec<u8> {
        std::fs::read(self.received().join(kind.as_str()).join(id)).unwrap()
    }
}

struct Running<S> {
    stats: Arc<S>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<S> Running<S> {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn start_receiver(config: ReceiverConfig) -> (SocketAddr, Running<ReceiverStats>) {
    // Rebinding a port just released can take a moment.
    let mut attempts = 0;
    let receiver = loop {
        match Receiver::bind(&config) {
            Ok(r) => break r,
            Err(e) if attempts < 50 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let addr = receiver.local_addr().unwrap();
    let stats = receiver.stats();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { receiver.serve(rx).await.unwrap() });
    (addr, Running { stats, stop, task })
}

fn start_sender(
    config: BulkUploadConfig,
    outbox: Arc<Outbox>,
    gate: Arc<dyn UploadGate>,
) -> Running<SenderStats> {
    let sender = Sender::new(config, outbox, gate).unwrap();
    let stats = sender.stats();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move { sender.run(rx).await.unwrap() });
    Running { stats, stop, task }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn partial_offset(dir: &Path, id: &str) -> u64 {
    std::fs::read(dir.join(".partial").join(format!("{id}.state.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["durable_offset"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_uploads_and_is_stored_with_its_hash() {
    let site = Site::new("bulk-20mb");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let data = content(20 * MB, 1);
    let manifest = outbox
        .insert(new_file(FileKind::Dicom, "ct-1"), &data[..], 1)
        .unwrap();
    assert_eq!(manifest.sha256, sha_hex(&data));

    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;

    let stored = site.stored(FileKind::Dicom, &manifest.id);
    assert_eq!(sha_hex(&stored), manifest.sha256);
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            site.received()
                .join("dicom")
                .join(format!("{}.meta.json", manifest.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["device"], "ct-1");
    assert_eq!(meta["metadata"]["study"], "pseudo-3f9a");
    assert_eq!(meta["sha256"], manifest.sha256.as_str());
    let s = sender.stats.snapshot();
    assert_eq!(s.files_committed, 1);
    assert_eq!(s.bytes_sent, data.len() as u64);
    assert_eq!(s.hash_mismatches, 0);
    assert_eq!(receiver.stats.files_committed.load(Ordering::Relaxed), 1);
    // Nothing left behind: no partial, no outbox file.
    assert_eq!(
        std::fs::read_dir(site.received().join(".partial"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(outbox.dir()).unwrap().count(),
        0,
        "outbox files remain"
    );
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_resumes_from_the_receivers_offset() {
    let site = Site::new("bulk-resume");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let data = content(20 * MB, 2);
    let size = data.len() as u64;
    let manifest = outbox
        .insert(new_file(FileKind::Dicom, "ct-1"), &data[..], 1)
        .unwrap();

    // Slow enough to be cut in the middle.
    let mut config = site.sender_config(addr, &site.client);
    config.off_hours_bytes_per_sec = 8 * MB as u64;
    let sender = start_sender(config, Arc::clone(&outbox), Arc::new(AlwaysAllow));

    // 1. The receiver goes away mid-file and comes back on the same port.
    let rstats = Arc::clone(&receiver.stats);
    wait_until("5 MB arrived", Duration::from_secs(30), || {
        rstats.bytes_received.load(Ordering::Relaxed) >= 5 * MB as u64
    })
    .await;
    receiver.stop().await;
    let held = partial_offset(&site.received(), &manifest.id);
    assert!(held >= 5 * MB as u64 && held < size, "held {held}");
    let sent_before = sender.stats.bytes_sent.load(Ordering::Relaxed);
    let (_, receiver) = start_receiver(site.receiver_config(addr)).await;

    // 2. The sender dies mid-file; a new one takes over the same outbox.
    let rstats = Arc::clone(&receiver.stats);
    wait_until("another 5 MB arrived", Duration::from_secs(30), || {
        rstats.bytes_received.load(Ordering::Relaxed) >= 5 * MB as u64
    })
    .await;
    sender.task.abort();
    let _ = sender.task.await;
    wait_until("the receiver checkpointed", Duration::from_secs(10), || {
        rstats.active.load(Ordering::Relaxed) == 0
    })
    .await;
    let held_second = partial_offset(&site.received(), &manifest.id);
    assert!(held_second > held, "{held_second} <= {held}");
    let first_sender_total = sender.stats.bytes_sent.load(Ordering::Relaxed);
    assert!(first_sender_total > sent_before);

    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    let s = sender.stats.snapshot();
    assert_eq!(s.bytes_resumed, held_second);
    assert_eq!(s.bytes_sent, size - held_second);
    // Over both senders, the bytes sent more than once are fewer than the file.
    let total = first_sender_total + s.bytes_sent;
    assert!(total - size < size, "re-sent {} of {size}", total - size);
    assert_eq!(
        sha_hex(&site.stored(FileKind::Dicom, &manifest.id)),
        sha_hex(&data)
    );
    assert_eq!(s.hash_mismatches, 0);
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_partial_is_a_mismatch_retried_from_zero() {
    let site = Site::new("bulk-mismatch");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let data = content(20 * MB, 3);
    let manifest = outbox
        .insert(new_file(FileKind::Dicom, "ct-1"), &data[..], 1)
        .unwrap();
    let mut config = site.sender_config(addr, &site.client);
    config.off_hours_bytes_per_sec = 8 * MB as u64;
    let sender = start_sender(config, Arc::clone(&outbox), Arc::new(AlwaysAllow));
    let rstats = Arc::clone(&receiver.stats);
    wait_until("4 MB arrived", Duration::from_secs(30), || {
        rstats.bytes_received.load(Ordering::Relaxed) >= 4 * MB as u64
    })
    .await;
    sender.task.abort();
    let _ = sender.task.await;
    wait_until("the receiver checkpointed", Duration::from_secs(10), || {
        rstats.active.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(partial_offset(&site.received(), &manifest.id) >= 4 * MB as u64);

    // The disk under the receiver flips a bit in what it already holds.
    let partial = site.received().join(".partial").join(&manifest.id);
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[1234] ^= 0x10;
    std::fs::write(&partial, bytes).unwrap();

    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    let s = sender.stats.snapshot();
    assert_eq!(s.hash_mismatches, 1);
    assert_eq!(rstats.hash_mismatches.load(Ordering::Relaxed), 1);
    // The retry started from zero: the whole file went again after the resumed part.
    assert!(s.bytes_sent >= data.len() as u64, "{}", s.bytes_sent);
    assert_eq!(
        sha_hex(&site.stored(FileKind::Dicom, &manifest.id)),
        sha_hex(&data)
    );
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let site = Site::new("bulk-wrong-ca");
    let stranger_pki = TestPki::generate("stranger").unwrap();
    let stranger = stranger_pki
        .client("stranger", "wardgate-gw-1", Validity::Current)
        .unwrap();
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    outbox
        .insert(
            new_file(FileKind::Dicom, "ct-1"),
            &content(100_000, 4)[..],
            1,
        )
        .unwrap();
    let sender = start_sender(
        site.sender_config(addr, &stranger),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    let rstats = Arc::clone(&receiver.stats);
    let sstats = Arc::clone(&sender.stats);
    wait_until(
        "the handshake was refused twice",
        Duration::from_secs(20),
        || {
            rstats.handshake_failures.load(Ordering::Relaxed) >= 2
                && sstats.connection_failures.load(Ordering::Relaxed) >= 2
        },
    )
    .await;
    assert_eq!(rstats.files_committed.load(Ordering::Relaxed), 0);
    assert_eq!(rstats.bytes_received.load(Ordering::Relaxed), 0);
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        std::fs::read_dir(site.received().join("dicom"))
            .unwrap()
            .count(),
        0
    );
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_files_upload_in_parallel_on_one_connection() {
    let site = Site::new("bulk-parallel");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let data = content(3 * MB, 10 + i);
        let kind = if i % 2 == 0 {
            FileKind::Dicom
        } else {
            FileKind::Log
        };
        let m = outbox.insert(new_file(kind, "mr-2"), &data[..], i).unwrap();
        expected.push((kind, m.id, sha_hex(&data)));
    }
    let mut config = site.sender_config(addr, &site.client);
    config.parallel_files = 4;
    // Capped so that transfers overlap for a while.
    config.off_hours_bytes_per_sec = 30 * MB as u64;
    let sender = start_sender(config, Arc::clone(&outbox), Arc::new(AlwaysAllow));
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    for (kind, id, sha) in &expected {
        assert_eq!(&sha_hex(&site.stored(*kind, id)), sha, "{id}");
    }
    assert_eq!(sender.stats.snapshot().files_committed, 6);
    let peak = receiver.stats.peak_active.load(Ordering::Relaxed);
    assert!((2..=4).contains(&peak), "peak parallel transfers {peak}");
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_restart_and_committed_files_are_answered_at_once() {
    let site = Site::new("bulk-restart");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox_dir = site.root.path().join("outbox");
    let a = content(2 * MB, 20);
    let b = content(MB, 21);
    let (ma, mb) = {
        let outbox = site.outbox();
        let ma = outbox
            .insert(new_file(FileKind::Dicom, "ct-1"), &a[..], 1)
            .unwrap();
        let mb = outbox
            .insert(new_file(FileKind::Dicom, "ct-1"), &b[..], 2)
            .unwrap();
        (ma, mb)
    };
    // Keep a copy of A's outbox entry: restoring it later is a crash between the
    // receiver's commit and the outbox removal.
    let saved: Vec<(PathBuf, Vec<u8>)> = [".data", ".json"]
        .iter()
        .map(|ext| {
            let p = outbox_dir.join(format!("{}{ext}", ma.id));
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();

    // A restart: the outbox is opened again from disk and everything is re-offered.
    let outbox = site.outbox();
    assert_eq!(outbox.len(), 2);
    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    sender.stop().await;
    drop(outbox);
    assert_eq!(sha_hex(&site.stored(FileKind::Dicom, &mb.id)), mb.sha256);

    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let outbox = site.outbox();
    assert_eq!(outbox.entries(), vec![ma.clone()]);
    let c = content(MB / 2, 22);
    let mc = outbox
        .insert(new_file(FileKind::Log, "pump-3"), &c[..], 3)
        .unwrap();
    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::new(AlwaysAllow),
    );
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    let s = sender.stats.snapshot();
    assert_eq!(s.files_committed, 2);
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.bytes_resumed, ma.size);
    assert_eq!(s.bytes_sent, mc.size);
    assert_eq!(receiver.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(sha_hex(&site.stored(FileKind::Log, &mc.id)), mc.sha256);
    assert!(!outbox_dir.join(format!("{}.data", ma.id)).exists());
    sender.stop().await;
    receiver.stop().await;
}

struct Switch(AtomicBool);

impl UploadGate for Switch {
    fn may_upload(&self, device: &str) -> bool {
        device != "ct-in-procedure" || self.0.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_treating_a_patient_defers_its_uploads() {
    let site = Site::new("bulk-defer");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let held = outbox
        .insert(
            new_file(FileKind::Dicom, "ct-in-procedure"),
            &content(MB, 30)[..],
            1,
        )
        .unwrap();
    let free = outbox
        .insert(
            new_file(FileKind::Dicom, "ct-idle"),
            &content(MB, 31)[..],
            2,
        )
        .unwrap();
    let gate = Arc::new(Switch(AtomicBool::new(false)));
    let sender = start_sender(
        site.sender_config(addr, &site.client),
        Arc::clone(&outbox),
        Arc::clone(&gate) as Arc<dyn UploadGate>,
    );
    wait_until(
        "the idle device's file is uploaded",
        Duration::from_secs(30),
        || outbox.len() == 1,
    )
    .await;
    assert_eq!(outbox.entries()[0].id, held.id);
    assert!(site.received().join("dicom").join(&free.id).exists());
    assert!(sender.stats.snapshot().deferrals >= 1);
    // The procedure ends: the file goes at the next check.
    gate.0.store(true, Ordering::Relaxed);
    wait_until(
        "the deferred file is uploaded",
        Duration::from_secs(30),
        || outbox.is_empty(),
    )
    .await;
    assert!(site.received().join("dicom").join(&held.id).exists());
    sender.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_crash_resumes_from_its_last_checkpoint() {
    let site = Site::new("bulk-receiver-crash");
    let (addr, receiver) = start_receiver(site.receiver_config(localhost())).await;
    let outbox = site.outbox();
    let data = content(12 * MB, 5);
    let manifest = outbox
        .insert(new_file(FileKind::Dicom, "ct-1"), &data[..], 1)
        .unwrap();
    let mut config = site.sender_config(addr, &site.client);
    config.off_hours_bytes_per_sec = 8 * MB as u64;
    let sender = start_sender(config, Arc::clone(&outbox), Arc::new(AlwaysAllow));
    let rstats = Arc::clone(&receiver.stats);
    wait_until("3 MB arrived", Duration::from_secs(30), || {
        rstats.bytes_received.load(Ordering::Relaxed) >= 3 * MB as u64
    })
    .await;
    // No orderly shutdown: the transfer gets no final checkpoint.
    receiver.task.abort();
    let _ = receiver.task.await;
    let received = rstats.bytes_received.load(Ordering::Relaxed);
    let held = partial_offset(&site.received(), &manifest.id);
    assert!(
        held > 0 && held <= received,
        "held {held}, received {received}"
    );

    let (_, receiver) = start_receiver(site.receiver_config(addr)).await;
    wait_until("the outbox is empty", Duration::from_secs(60), || {
        outbox.is_empty()
    })
    .await;
    let s = sender.stats.snapshot();
    assert_eq!(s.bytes_resumed, held);
    assert!(s.connection_failures >= 1);
    assert_eq!(
        sha_hex(&site.stored(FileKind::Dicom, &manifest.id)),
        sha_hex(&data)
    );
    sender.stop().await;
    receiver.stop().await;
}
