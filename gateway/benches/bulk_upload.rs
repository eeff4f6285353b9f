//! Bulk upload throughput over QUIC on loopback: the real sender (outbox files, mTLS,
//! parallel streams, chunk reads) against the real receiver (writes, checkpoint fsyncs,
//! SHA-256, commit). Both ends share this machine's cores, so the figure is a lower bound
//! for a gateway talking to a separate receiver.
//!
//! `WARDGATE_BENCH_BULK_MB` (default 1024) sets the total size, `WARDGATE_BENCH_BULK_FILES`
//! (default 4) how many files it is split into; each file gets its own stream;
//! `WARDGATE_BENCH_BULK_CHECKPOINT_MIB` the receiver's checkpoint interval (default 8).
//! Target: ≥ 300 MB/s.
//!
//! Two runs: the receiver storing on disk next to the outbox (end to end, durable: bounded
//! by this disk's fsynced write rate, which `dd conv=fdatasync` puts near 300 MB/s here),
//! and, when `/dev/shm` exists, the receiver storing on tmpfs, where fsync is free: the
//! ceiling of the transport, protocol and hashing on this machine.

#![allow(clippy::unwrap_used)] // A benchmark may unwrap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wardgate::bulk::outbox::{NewFile, Outbox};
use wardgate::bulk::sender::{BulkUploadConfig, Sender};
use wardgate::bulk::AlwaysAllow;
use wardgate::receive::{Receiver, ReceiverConfig};
use wardgate_proto::upload::{FileKind, Metadata, MAX_CHUNK_LEN};
use wardgate_tests::certs::{TestPki, Validity};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let total_mb = env_or("WARDGATE_BENCH_BULK_MB", 1024);
    let files = env_or("WARDGATE_BENCH_BULK_FILES", 4).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let disk = tempfile::tempdir().unwrap();
    runtime.block_on(run(
        total_mb,
        files,
        disk.path(),
        "receiver on disk, durable",
    ));
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        let tmpfs = tempfile::tempdir_in(shm).unwrap();
        runtime.block_on(run(
            total_mb,
            files,
            tmpfs.path(),
            "receiver on tmpfs: transport ceiling",
        ));
    }
}

async fn run(total_mb: usize, files: usize, receiver_root: &std::path::Path, label: &str) {
    let pki = TestPki::generate("bench-bulk").unwrap();
    let client = pki.client("gw", "wardgate-gw", Validity::Current).unwrap();
    let root = tempfile::tempdir().unwrap();
    let file_len = total_mb * 1024 * 1024 / files;

    let outbox = Arc::new(Outbox::open(root.path().join("outbox"), u64::MAX).unwrap());
    let mut expected = Vec::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut data = vec![0u8; file_len];
    for i in 0..files {
        rng.fill(&mut data);
        let m = outbox
            .insert(
                NewFile {
                    kind: FileKind::Dicom,
                    device: "ct-bench".into(),
                    metadata: Metadata::new(),
                    compress: false,
                },
                &data[..],
                i as u64,
            )
            .unwrap();
        expected.push(m);
    }
    drop(data);

    let receiver_dir = receiver_root.join("received");
    let mut receiver_config = ReceiverConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        receiver_dir.clone(),
        pki.server().cert.clone(),
        pki.server().key.clone(),
        pki.ca_file().to_owned(),
    );
    if let Some(mib) = std::env::var("WARDGATE_BENCH_BULK_CHECKPOINT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        receiver_config.checkpoint_bytes = mib << 20;
    }
    let receiver = Receiver::bind(&receiver_config).unwrap();
    let addr = receiver.local_addr().unwrap();
    let (stop_receiver, rx) = watch::channel(false);
    let receiver_task = tokio::spawn(receiver.serve(rx));

    let mut config = BulkUploadConfig::new(
        addr.to_string(),
        pki.ca_file().to_owned(),
        client.cert.clone(),
        client.key.clone(),
    );
    config.server_name = Some("localhost".into());
    config.parallel_files = u32::try_from(files.min(64)).unwrap();
    config.chunk_bytes = MAX_CHUNK_LEN as u32;
    let sender = Sender::new(config, Arc::clone(&outbox), Arc::new(AlwaysAllow)).unwrap();
    let stats = sender.stats();
    let (stop_sender, rx) = watch::channel(false);

    let started = Instant::now();
    let sender_task = tokio::spawn(sender.run(rx));
    while !outbox.is_empty() {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "upload did not finish"
        );
    }
    let elapsed = started.elapsed();

    let _ = stop_sender.send(true);
    sender_task.await.unwrap().unwrap();
    let _ = stop_receiver.send(true);
    receiver_task.await.unwrap().unwrap();

    let s = stats.snapshot();
    assert_eq!(s.files_committed, files as u64);
    assert_eq!(s.hash_mismatches, 0);
    for m in &expected {
        let stored = std::fs::read(receiver_dir.join("dicom").join(&m.id)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&stored)), m.sha256);
    }
    let bytes = (file_len * files) as f64;
    let mbps = bytes / 1e6 / elapsed.as_secs_f64();
    println!(
        "bulk_upload: {mbps:.0} MB/s over QUIC loopback ({files} files, {files} streams; {label}; {:.1} MB in {:.2} s)",
        bytes / 1e6,
        elapsed.as_secs_f64()
    );
    std::fs::remove_dir_all(&receiver_dir).unwrap();
}
