//! Spool tests: the durability contract, budget and TTL policy, ordering, quarantine,
//! a kill -9 test in a child process, and a model test of random operation sequences.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use wardgate_proto::{Priority, RecordId};

use super::index::charge;
use super::*;

fn record(device: &str, priority: Priority, payload: &[u8]) -> Sanitized {
    Sanitized::unchecked_for_bench(device.to_owned(), priority, payload.to_vec())
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.join("spool.db"),
        budget_bytes: 1 << 30,
        ttl: [None; 4],
        max_batch: 256,
    }
}

fn open(config: &SpoolConfig) -> (Spool, OpenReport) {
    Spool::open(config.clone()).unwrap()
}

async fn lease_all(spool: &Spool) -> Vec<StoredRecord> {
    spool.lease(usize::MAX, usize::MAX).await.unwrap()
}

fn seqs(records: &[StoredRecord]) -> Vec<u64> {
    records.iter().map(|r| r.id.seq).collect()
}

/// A clock tests move by hand.
#[derive(Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }
    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    fn clock(&self) -> writer::Clock {
        let now = Arc::clone(&self.0);
        Arc::new(move || now.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn append_lease_ack_reopen_keeps_unacked_with_same_ids_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, report) = open(&config);
    assert_eq!(
        report,
        OpenReport {
            quarantined: None,
            records: 0,
            bytes: 0
        }
    );

    let mut ids = Vec::new();
    for i in 0..10u8 {
        let device = if i % 2 == 0 { "monitor-a" } else { "monitor-b" };
        ids.push(
            spool
                .append(record(device, Priority::Observation, &[i; 32]))
                .await
                .unwrap(),
        );
    }
    assert!(ids
        .windows(2)
        .all(|w| w[0].spool == w[1].spool && w[0].seq < w[1].seq));

    let leased = lease_all(&spool).await;
    assert_eq!(leased.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(leased[3].payload, vec![3u8; 32]);
    assert_eq!(leased[3].device, "monitor-b");
    assert_eq!(spool.stats().leased, 10);

    let acked: Vec<RecordId> = ids.iter().copied().step_by(2).collect();
    spool.ack(acked.clone()).await.unwrap();
    let stats = spool.stats();
    assert_eq!(stats.acked_total, 5);
    assert_eq!(stats.records[Priority::Observation.as_u8() as usize], 5);
    assert_eq!(stats.leased, 5);
    spool.close().await;

    let (spool, report) = open(&config);
    assert_eq!(report.records, 5);
    assert_eq!(report.bytes, 5 * charge(32, "monitor-b".len()));
    let replay = lease_all(&spool).await;
    let expected: Vec<RecordId> = ids.iter().copied().skip(1).step_by(2).collect();
    assert_eq!(replay.iter().map(|r| r.id).collect::<Vec<_>>(), expected);
    assert!(replay
        .iter()
        .all(|r| r.device == "monitor-b" && r.payload.len() == 32));
    assert_eq!(replay[0].payload, vec![1u8; 32]);
    spool.close().await;
}

#[tokio::test]
async fn ids_are_never_reused_even_after_everything_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    let first = spool
        .append_many((0..3).map(|_| record("d", Priority::Log, b"x")).collect())
        .await
        .unwrap();
    spool.ack(first.clone()).await.unwrap();
    assert_eq!(spool.stats().records, [0; 4]);
    spool.close().await;

    let (spool, report) = open(&config);
    assert_eq!(report.records, 0);
    let next = spool
        .append(record("d", Priority::Log, b"y"))
        .await
        .unwrap();
    assert_eq!(
        next.spool, first[0].spool,
        "the spool id is stable across restarts"
    );
    assert!(next.seq > first[2].seq);
    spool.close().await;
}

#[tokio::test]
async fn dropping_without_close_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25u8 {
                ids.push(
                    spool
                        .append(record(&format!("dev-{t}"), Priority::Observation, &[t, i]))
                        .await
                        .unwrap(),
                );
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    drop(spool);

    let (spool, report) = open(&config);
    assert_eq!(report.records, 400);
    let mut stored = seqs(&lease_all(&spool).await);
    stored.sort_unstable();
    let mut expected: Vec<u64> = ids.iter().map(|id| id.seq).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);
    spool.close().await;
}

/// What a process crash leaves on disk is the database and WAL files as they are:
/// copying them while the spool is open and opening the copy is a crash, minus the
/// kernel's page cache — which a process crash keeps anyway.
fn snapshot_files(from: &Path, to_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(to_dir).unwrap();
    let to = to_dir.join("spool.db");
    std::fs::copy(from, &to).unwrap();
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.exists() {
        std::fs::copy(&wal, format!("{}-wal", to.display())).unwrap();
    }
    to
}

#[tokio::test]
async fn a_crash_snapshot_holds_every_acknowledged_record_and_no_leases() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    let ids = spool
        .append_many(
            (0..50u8)
                .map(|i| record("d", Priority::Alarm, &[i; 100]))
                .collect(),
        )
        .await
        .unwrap();
    let leased = spool.lease(20, usize::MAX).await.unwrap();
    spool
        .ack(leased[..10].iter().map(|r| r.id).collect())
        .await
        .unwrap();

    let crashed = SpoolConfig {
        path: snapshot_files(&config.path, &dir.path().join("crash")),
        ..config.clone()
    };
    let (copy, report) = open(&crashed);
    assert_eq!(report.quarantined, None);
    assert_eq!(report.records, 40);
    // Leased but unacked records come back first, in order: they are duplicates at most.
    assert_eq!(
        seqs(&lease_all(&copy).await),
        ids[10..].iter().map(|id| id.seq).collect::<Vec<_>>()
    );
    copy.close().await;
    spool.close().await;
}

const CRASH_CHILD_ENV: &str = "WARDGATE_SPOOL_CRASH_CHILD_DIR";

/// Not a test on its own: the child process of `kill_9_loses_nothing_acknowledged`.
/// Appends until killed, printing each id once its append has returned `Ok`.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (spool, _) = open(&config(Path::new(&dir)));
        let mut tasks = Vec::new();
        for t in 0..32u32 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u32.. {
                    let payload = format!("{t}:{i}");
                    let id = spool
                        .append(record("dev", Priority::Observation, payload.as_bytes()))
                        .await
                        .unwrap();
                    println!("acked {} {payload}", id.seq);
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let test_name = format!(
        "{}::crash_child_process",
        module_path!().split_once("::").unwrap().1
    );
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = BTreeMap::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (seq, payload) = rest.split_once(' ').unwrap();
            acknowledged.insert(seq.parse::<u64>().unwrap(), payload.to_owned());
            if acknowledged.len() == 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no close, no checkpoint.
    child.wait().unwrap();
    assert_eq!(
        acknowledged.len(),
        3000,
        "the child stopped before acknowledging enough records"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (spool, report) = open(&config(dir.path()));
        assert_eq!(report.quarantined, None);
        let stored: BTreeMap<u64, String> = lease_all(&spool)
            .await
            .into_iter()
            .map(|r| (r.id.seq, String::from_utf8(r.payload).unwrap()))
            .collect();
        for (seq, payload) in &acknowledged {
            assert_eq!(
                stored.get(seq),
                Some(payload),
                "acknowledged record {seq} lost"
            );
        }
        spool.close().await;
    });
}

#[tokio::test]
async fn lease_serves_highest_class_first_and_release_replays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    use Priority::*;
    let order = [Log, Observation, Alarm, State, Observation, Alarm, Log];
    let mut ids = Vec::new();
    for (i, p) in order.iter().enumerate() {
        ids.push(
            spool
                .append(record("d", *p, &[u8::try_from(i).unwrap()]))
                .await
                .unwrap()
                .seq,
        );
    }
    let expected = [ids[2], ids[5], ids[1], ids[4], ids[3], ids[0], ids[6]];
    let mut got = seqs(&spool.lease(3, usize::MAX).await.unwrap());
    got.extend(seqs(&spool.lease(3, usize::MAX).await.unwrap()));
    assert_eq!(got, expected[..6]);
    // A new alarm arriving while others are leased is served before older low classes.
    let late = spool.append(record("d", Alarm, b"late")).await.unwrap().seq;
    assert_eq!(seqs(&lease_all(&spool).await), vec![late, ids[6]]);
    assert!(lease_all(&spool).await.is_empty());

    spool.release_leases();
    let mut replay_expected = vec![ids[2], ids[5], late];
    replay_expected.extend(&expected[2..]);
    assert_eq!(seqs(&lease_all(&spool).await), replay_expected);
    assert_eq!(spool.stats().leased, 8);
    spool.close().await;
}

#[tokio::test]
async fn lease_byte_limit_counts_payloads_and_always_makes_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    for _ in 0..4 {
        spool
            .append(record("d", Priority::Log, &[0; 100]))
            .await
            .unwrap();
    }
    assert_eq!(spool.lease(10, 250).await.unwrap().len(), 2);
    assert_eq!(spool.lease(10, 10).await.unwrap().len(), 1);
    assert_eq!(spool.lease(0, 1000).await.unwrap().len(), 0);
    spool.close().await;
}

#[tokio::test]
async fn a_full_budget_evicts_lower_classes_oldest_first_and_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let per = charge(100, 1);
    let config = SpoolConfig {
        budget_bytes: per * 10,
        ..config(dir.path())
    };
    let (spool, _) = open(&config);
    let mut logs = Vec::new();
    for i in 0..10u8 {
        logs.push(
            spool
                .append(record("d", Priority::Log, &[i; 100]))
                .await
                .unwrap(),
        );
    }
    // Same class never evicts: a log is refused.
    assert!(matches!(
        spool.append(record("d", Priority::Log, &[0; 100])).await,
        Err(SpoolError::Full {
            priority: Priority::Log,
            ..
        })
    ));
    // Leased logs can go too; their ack later is a no-op.
    let leased = spool.lease(2, usize::MAX).await.unwrap();
    assert_eq!(seqs(&leased), vec![logs[0].seq, logs[1].seq]);

    let mut alarms = Vec::new();
    for i in 0..6u8 {
        alarms.push(
            spool
                .append(record("d", Priority::Alarm, &[i; 100]))
                .await
                .unwrap(),
        );
    }
    let stats = spool.stats();
    assert_eq!(stats.evicted, [6, 0, 0, 0]);
    assert_eq!(stats.records, [4, 0, 0, 6]);
    assert_eq!(
        stats.leased, 0,
        "the leased logs were the oldest and went first"
    );
    assert_eq!(stats.refused_full, 1);
    assert!(stats.bytes <= config.budget_bytes);
    spool
        .ack(leased.iter().map(|r| r.id).collect())
        .await
        .unwrap();
    assert_eq!(spool.stats().acked_total, 0);

    // A unit that cannot fit as a whole is refused as a whole, evicting nothing.
    let unit = (0..5)
        .map(|_| record("d", Priority::Alarm, &[9; 100]))
        .collect();
    assert!(matches!(
        spool.append_many(unit).await,
        Err(SpoolError::Full { .. })
    ));
    assert_eq!(spool.stats().records, [4, 0, 0, 6]);

    for i in 6..10u8 {
        alarms.push(
            spool
                .append(record("d", Priority::Alarm, &[i; 100]))
                .await
                .unwrap(),
        );
    }
    assert_eq!(spool.stats().evicted, [10, 0, 0, 0]);
    assert!(matches!(
        spool.append(record("d", Priority::Alarm, &[0; 100])).await,
        Err(SpoolError::Full {
            priority: Priority::Alarm,
            ..
        })
    ));
    let stats = spool.stats();
    assert_eq!(stats.records, [0, 0, 0, 10]);
    assert_eq!(stats.refused_full, 7);
    assert_eq!(
        seqs(&lease_all(&spool).await),
        alarms.iter().map(|id| id.seq).collect::<Vec<_>>()
    );
    spool.close().await;
}

#[tokio::test]
async fn a_unit_may_evict_its_own_lower_class_records() {
    let dir = tempfile::tempdir().unwrap();
    let per = charge(10, 1);
    let (spool, _) = open(&SpoolConfig {
        budget_bytes: per,
        ..config(dir.path())
    });
    let ids = spool
        .append_many(vec![
            record("d", Priority::Log, &[1; 10]),
            record("d", Priority::Alarm, &[2; 10]),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let stats = spool.stats();
    assert_eq!(stats.evicted, [1, 0, 0, 0]);
    assert_eq!(stats.appended_total, 2);
    let dump = spool.dump().await.unwrap();
    assert_eq!(
        dump.rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![ids[1].seq]
    );
    assert_eq!(dump.index.len(), 1);
    spool.close().await;
    // The evicted record's seq is not handed out again.
    let (spool, _) = open(&SpoolConfig {
        budget_bytes: per * 2,
        ..config(dir.path())
    });
    assert!(
        spool
            .append(record("d", Priority::Alarm, &[3; 10]))
            .await
            .unwrap()
            .seq
            > ids[1].seq
    );
    spool.close().await;
}

#[tokio::test]
async fn eviction_takes_the_lowest_class_first() {
    let dir = tempfile::tempdir().unwrap();
    let per = charge(10, 1);
    let (spool, _) = open(&SpoolConfig {
        budget_bytes: per * 4,
        ..config(dir.path())
    });
    let state = spool
        .append(record("d", Priority::State, &[0; 10]))
        .await
        .unwrap();
    let log = spool
        .append(record("d", Priority::Log, &[0; 10]))
        .await
        .unwrap();
    let obs = spool
        .append(record("d", Priority::Observation, &[0; 10]))
        .await
        .unwrap();
    spool
        .append(record("d", Priority::State, &[0; 10]))
        .await
        .unwrap();
    // An observation evicts the (younger) log before the older state record.
    spool
        .append(record("d", Priority::Observation, &[1; 10]))
        .await
        .unwrap();
    assert_eq!(spool.stats().evicted, [1, 0, 0, 0]);
    spool
        .append(record("d", Priority::Observation, &[2; 10]))
        .await
        .unwrap();
    assert_eq!(spool.stats().evicted, [1, 1, 0, 0]);
    let left = seqs(&lease_all(&spool).await);
    assert!(!left.contains(&log.seq) && !left.contains(&state.seq) && left.contains(&obs.seq));
    spool.close().await;
}

#[tokio::test]
async fn records_expire_per_class_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = config(dir.path());
    config.ttl[Priority::Log.as_u8() as usize] = Some(Duration::from_secs(60));
    config.ttl[Priority::Observation.as_u8() as usize] = Some(Duration::from_secs(600));
    let (spool, _) = Spool::open_with_clock(config.clone(), clock.clock()).unwrap();
    let old_log = spool
        .append(record("d", Priority::Log, b"old"))
        .await
        .unwrap();
    let obs = spool
        .append(record("d", Priority::Observation, b"obs"))
        .await
        .unwrap();
    let alarm = spool
        .append(record("d", Priority::Alarm, b"alarm"))
        .await
        .unwrap();
    clock.set(1_030_000);
    let young_log = spool
        .append(record("d", Priority::Log, b"young"))
        .await
        .unwrap();
    assert_eq!(spool.stats().oldest_accepted_ms, Some(1_000_000));

    clock.set(1_060_000);
    spool.barrier().await.unwrap();
    let stats = spool.stats();
    assert_eq!(stats.expired, [1, 0, 0, 0]);
    assert_eq!(stats.oldest_accepted_ms, Some(1_000_000));

    clock.set(10_000_000);
    spool.barrier().await.unwrap();
    assert_eq!(spool.stats().expired, [2, 0, 1, 0]);
    assert_eq!(seqs(&lease_all(&spool).await), vec![alarm.seq]);
    spool.close().await;

    // Expiry is durable.
    let (spool, report) = Spool::open_with_clock(config, clock.clock()).unwrap();
    assert_eq!(report.records, 1);
    assert!(![old_log.seq, obs.seq, young_log.seq].contains(&lease_all(&spool).await[0].id.seq));
    spool.close().await;
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&SpoolConfig {
        budget_bytes: 10_000,
        ..config(dir.path())
    });
    let huge = vec![0u8; MAX_RECORD_BYTES + 1];
    assert!(matches!(
        spool.append(record("d", Priority::Alarm, &huge)).await,
        Err(SpoolError::TooLarge { .. })
    ));
    // Larger than the whole budget: could never fit, so it is not "full" but too large.
    assert!(matches!(
        spool
            .append(record("d", Priority::Alarm, &[0; 10_000]))
            .await,
        Err(SpoolError::TooLarge { .. })
    ));
    let batch = vec![
        record("d", Priority::Log, b"ok"),
        record("d", Priority::Log, &[0; 20_000]),
    ];
    assert!(matches!(
        spool.append_many(batch).await,
        Err(SpoolError::TooLarge { .. })
    ));
    assert_eq!(spool.stats().records, [0; 4]);
    spool.close().await;
}

#[tokio::test]
async fn unknown_and_foreign_ids_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    let id = spool
        .append(record("d", Priority::Log, b"x"))
        .await
        .unwrap();
    let foreign = RecordId {
        spool: id.spool ^ 1,
        seq: id.seq,
    };
    spool
        .ack(vec![
            foreign,
            RecordId {
                spool: id.spool,
                seq: 999,
            },
        ])
        .await
        .unwrap();
    assert_eq!(spool.stats().records, [1, 0, 0, 0]);
    spool.ack(vec![id, id]).await.unwrap();
    assert_eq!(spool.stats().records, [0; 4]);
    assert_eq!(spool.stats().acked_total, 1);
    spool.close().await;
}

#[tokio::test]
async fn wait_for_pending_wakes_on_append_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    let waiter = tokio::spawn({
        let spool = spool.clone();
        async move { spool.wait_for_pending().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    spool
        .append(record("d", Priority::Log, b"x"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    // Pending now: returns at once.
    spool.wait_for_pending().await;

    assert_eq!(lease_all(&spool).await.len(), 1);
    let waiter = tokio::spawn({
        let spool = spool.clone();
        async move { spool.wait_for_pending().await }
    });
    tokio::task::yield_now().await;
    spool.release_leases();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease_all(&spool).await.len(), 1);
    spool.close().await;
}

#[tokio::test]
async fn close_flushes_and_refuses_later_calls() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    let appends: Vec<_> = (0..100u8)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append(record("d", Priority::Log, &[i])).await })
        })
        .collect();
    tokio::task::yield_now().await;
    spool.close().await;
    let mut ok = 0;
    for append in appends {
        match append.await.unwrap() {
            Ok(_) => ok += 1,
            Err(SpoolError::Closed) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(matches!(
        spool.append(record("d", Priority::Log, b"late")).await,
        Err(SpoolError::Closed)
    ));
    assert!(matches!(spool.lease(1, 1).await, Err(SpoolError::Closed)));
    spool.wait_for_pending().await;
    spool.close().await;
    drop(spool);
    let (spool, report) = open(&config);
    assert_eq!(report.records, ok);
    spool.close().await;
}

#[tokio::test]
async fn meta_values_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    assert_eq!(spool.get_meta("upload.checkpoint").await.unwrap(), None);
    spool
        .put_meta("upload.checkpoint", b"42".to_vec())
        .await
        .unwrap();
    spool.close().await;
    let (spool, _) = open(&config);
    assert_eq!(
        spool.get_meta("upload.checkpoint").await.unwrap(),
        Some(b"42".to_vec())
    );
    spool.close().await;
}

#[tokio::test]
async fn records_and_their_checkpoint_commit_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let per = charge(100, 1);
    let config = SpoolConfig {
        budget_bytes: per * 2,
        ..config(dir.path())
    };
    let (spool, _) = open(&config);
    let ids = spool
        .append_with_meta(
            vec![
                record("d", Priority::Log, &[1; 100]),
                record("d", Priority::Log, &[2; 100]),
            ],
            "log.d",
            b"offset=200".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // The budget is full of the same class: the unit is refused, the checkpoint stays.
    let refused = spool
        .append_with_meta(
            vec![record("d", Priority::Log, &[3; 100])],
            "log.d",
            b"offset=300".to_vec(),
        )
        .await;
    assert!(
        matches!(refused, Err(SpoolError::Full { .. })),
        "{refused:?}"
    );
    // A checkpoint alone (no records) is a unit too.
    let none = spool
        .append_with_meta(Vec::new(), "log.e", b"offset=0".to_vec())
        .await
        .unwrap();
    assert!(none.is_empty());
    spool.close().await;
    let (spool, report) = open(&config);
    assert_eq!(report.records, 2);
    assert_eq!(
        spool.get_meta("log.d").await.unwrap(),
        Some(b"offset=200".to_vec())
    );
    assert_eq!(
        spool.get_meta("log.e").await.unwrap(),
        Some(b"offset=0".to_vec())
    );
    spool.close().await;
}

#[tokio::test]
async fn a_second_opener_is_refused_without_touching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    spool
        .append(record("d", Priority::Log, b"x"))
        .await
        .unwrap();
    assert!(matches!(
        Spool::open(config.clone()),
        Err(SpoolError::Locked(_))
    ));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "only spool.db and its WAL"
    );
    spool.close().await;
    let (spool, report) = open(&config);
    assert_eq!(report.records, 1);
    spool.close().await;
}

fn quarantined_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_file_of_random_bytes_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..100_000).map(|_| rng.u8(..)).collect();
    std::fs::write(&config.path, &garbage).unwrap();

    let (spool, report) = open(&config);
    let quarantined = report.quarantined.expect("quarantined");
    assert_eq!(
        std::fs::read(&quarantined).unwrap(),
        garbage,
        "quarantine keeps the bytes"
    );
    assert_eq!(quarantined_files(dir.path()).len(), 1);
    assert_eq!(report.records, 0);
    spool
        .append(record("d", Priority::Log, b"fresh"))
        .await
        .unwrap();
    spool.close().await;
}

/// Builds a closed spool holding `n` records of 256 bytes.
async fn spool_with_records(config: &SpoolConfig, n: usize) {
    let (spool, _) = open(config);
    for chunk in 0..n / 100 {
        let unit = (0..100)
            .map(|i| {
                record(
                    "d",
                    Priority::Observation,
                    &[u8::try_from((chunk + i) % 251).unwrap(); 256],
                )
            })
            .collect();
        spool.append_many(unit).await.unwrap();
    }
    spool.close().await;
}

#[tokio::test]
async fn a_truncated_spool_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    spool_with_records(&config, 2000).await;
    let len = std::fs::metadata(&config.path).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&config.path)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let (spool, report) = open(&config);
    assert!(report.quarantined.is_some());
    assert_eq!(report.records, 0);
    spool.close().await;
}

#[tokio::test]
async fn a_spool_with_a_damaged_page_is_quarantined_even_after_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    spool_with_records(&config, 2000).await;
    // Overwrite one page in the middle of the records table.
    let mut bytes = std::fs::read(&config.path).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let page = page_size * (bytes.len() / page_size / 2);
    let mut rng = fastrand::Rng::with_seed(11);
    for b in &mut bytes[page..page + page_size] {
        *b = rng.u8(..);
    }
    std::fs::write(&config.path, &bytes).unwrap();

    let (spool, report) = open(&config);
    assert!(report.quarantined.is_some());
    spool.close().await;
}

#[tokio::test]
async fn a_foreign_database_is_quarantined_but_a_newer_spool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    {
        let conn = rusqlite::Connection::open(&config.path).unwrap();
        conn.execute_batch("CREATE TABLE unrelated (x); INSERT INTO unrelated VALUES (1);")
            .unwrap();
    }
    let (spool, report) = open(&config);
    assert!(report.quarantined.is_some());
    spool.close().await;

    {
        let conn = rusqlite::Connection::open(&config.path).unwrap();
        conn.execute(
            "UPDATE meta SET value = 99 WHERE key = 'spool.schema_version'",
            [],
        )
        .unwrap();
    }
    assert!(matches!(
        Spool::open(config.clone()),
        Err(SpoolError::UnsupportedSchema { found: 99, .. })
    ));
    assert_eq!(
        quarantined_files(dir.path()).len(),
        1,
        "a newer spool is not quarantined"
    );
}

#[tokio::test]
async fn acknowledged_space_is_returned_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let (spool, _) = open(&config);
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.extend(
            spool
                .append_many(
                    (0..100)
                        .map(|_| record("d", Priority::Log, &[7; 2000]))
                        .collect(),
                )
                .await
                .unwrap(),
        );
    }
    spool.close().await;
    let full = std::fs::metadata(&config.path).unwrap().len();
    assert!(full > 8_000_000);

    let (spool, _) = open(&config);
    spool.ack(ids).await.unwrap();
    for _ in 0..10 {
        spool.barrier().await.unwrap();
    }
    spool.close().await;
    let drained = std::fs::metadata(&config.path).unwrap().len();
    assert!(
        drained < full / 4,
        "file did not shrink: {full} -> {drained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_share_commits_and_every_record_lands() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    let mut tasks = Vec::new();
    for t in 0..64u8 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..20u8 {
                let id = spool
                    .append(record(&format!("dev-{t}"), Priority::Observation, &[t, i]))
                    .await
                    .unwrap();
                assert!(id.seq > last, "per-producer order is kept");
                last = id.seq;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let dump = spool.dump().await.unwrap();
    assert_eq!(dump.rows.len(), 64 * 20);
    assert_eq!(dump.index.len(), dump.rows.len());
    spool.close().await;
}

// ---------------------------------------------------------------------------------
// Model test: random operation sequences against a simple in-memory model.

#[derive(Debug, Clone)]
enum Op {
    Append {
        device: u8,
        priority: u8,
        len: u16,
    },
    AppendMany(Vec<(u8, u8, u16)>),
    Lease {
        max_records: u8,
        max_bytes: u16,
    },
    /// Ack the records at these positions of the model's seq-ordered list (leased or not).
    Ack(Vec<prop::sample::Index>),
    AckUnknown,
    Release,
    Reopen,
    CrashReopen,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let record = (0u8..3, 0u8..4, 1u16..300);
    prop_oneof![
        8 => record.clone().prop_map(|(device, priority, len)| Op::Append { device, priority, len }),
        3 => prop::collection::vec(record, 1..6).prop_map(Op::AppendMany),
        4 => (0u8..8, 0u16..1200).prop_map(|(max_records, max_bytes)| Op::Lease { max_records, max_bytes }),
        3 => prop::collection::vec(any::<prop::sample::Index>(), 1..5).prop_map(Op::Ack),
        1 => Just(Op::AckUnknown),
        1 => Just(Op::Release),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashReopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct ModelRecord {
    priority: Priority,
    device: String,
    payload: Vec<u8>,
    leased: bool,
}

/// The spool's contract, written as plainly as possible.
#[derive(Default)]
struct Model {
    records: BTreeMap<u64, ModelRecord>,
    budget: u64,
    evicted: [u64; 4],
    refused: u64,
    highest_seq: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.records
            .values()
            .map(|r| charge(r.payload.len(), r.device.len()))
            .sum()
    }

    /// Applies an append unit as the spool must; `None` if it must be refused.
    fn append(
        &mut self,
        unit: &[(Priority, String, Vec<u8>)],
        ids: Option<&[RecordId]>,
    ) -> Option<()> {
        let before = (self.records.clone(), self.evicted);
        let mut bytes = self.bytes();
        for (i, (priority, device, payload)) in unit.iter().enumerate() {
            let needed = charge(payload.len(), device.len());
            while bytes + needed > self.budget {
                let victim = self
                    .records
                    .iter()
                    .filter(|(_, r)| r.priority < *priority)
                    .min_by_key(|(seq, r)| (r.priority, **seq))
                    .map(|(seq, _)| *seq);
                let Some(victim) = victim else {
                    (self.records, self.evicted) = before;
                    return None;
                };
                let r = self.records.remove(&victim).unwrap();
                bytes -= charge(r.payload.len(), r.device.len());
                self.evicted[r.priority.as_u8() as usize] += 1;
            }
            bytes += needed;
            // Refused units get the seqs the spool would have assigned: ascending, so
            // "oldest first" picks the same victim.
            let seq = ids.map_or(self.highest_seq + 1 + i as u64, |ids| ids[i].seq);
            self.records.insert(
                seq,
                ModelRecord {
                    priority: *priority,
                    device: device.clone(),
                    payload: payload.clone(),
                    leased: false,
                },
            );
        }
        Some(())
    }

    fn lease(&mut self, max_records: usize, max_bytes: usize) -> Vec<u64> {
        let mut pending: Vec<(u64, Priority, usize)> = self
            .records
            .iter()
            .filter(|(_, r)| !r.leased)
            .map(|(s, r)| (*s, r.priority, r.payload.len()))
            .collect();
        pending.sort_by_key(|(seq, p, _)| (std::cmp::Reverse(*p), *seq));
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, _, len) in pending {
            if out.len() >= max_records || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(seq);
        }
        for seq in &out {
            self.records.get_mut(seq).unwrap().leased = true;
        }
        out
    }
}

async fn check(spool: &Spool, model: &Model) {
    let dump = spool.dump().await.unwrap();
    let rows: Vec<(u64, Priority, String, Vec<u8>)> = model
        .records
        .iter()
        .map(|(s, r)| (*s, r.priority, r.device.clone(), r.payload.clone()))
        .collect();
    assert_eq!(dump.rows, rows, "table contents");
    let index: Vec<(u64, Priority, bool)> = model
        .records
        .iter()
        .map(|(s, r)| (*s, r.priority, r.leased))
        .collect();
    assert_eq!(dump.index, index, "index contents and leases");
    let stats = spool.stats();
    assert_eq!(stats.bytes, model.bytes());
    assert!(stats.bytes <= model.budget);
    assert_eq!(
        stats.leased,
        model.records.values().filter(|r| r.leased).count() as u64
    );
}

async fn run_model(ops: Vec<Op>) {
    // Many short cases: on tmpfs (where fsync is free) when there is one, so the run
    // time does not depend on a shared disk. Durability itself is the crash tests' job.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    // A tiny max_batch makes units larger than a batch and commits mid-stream.
    let mut config = SpoolConfig {
        budget_bytes: 1500,
        max_batch: 3,
        ..config(dir.path())
    };
    let mut model = Model {
        budget: config.budget_bytes,
        ..Model::default()
    };
    let (mut spool, _) = open(&config);
    let mut counter = 0u32;
    let mut crashes = 0;
    let mut make = |device: u8, priority: u8, len: u16| {
        counter += 1;
        let mut payload = counter.to_le_bytes().to_vec();
        payload.resize(usize::from(len).max(4), b'p');
        (
            Priority::from_u8(priority).unwrap(),
            format!("dev-{device}"),
            payload,
        )
    };
    // Counters reset on reopen; the model keeps totals since the last open.
    let mut evicted_at_open = [0u64; 4];
    let mut refused_at_open = 0;
    for op in ops {
        match op {
            Op::Append { .. } | Op::AppendMany(_) => {
                let unit: Vec<(Priority, String, Vec<u8>)> = match op {
                    Op::Append {
                        device,
                        priority,
                        len,
                    } => vec![make(device, priority, len)],
                    Op::AppendMany(records) => {
                        records.into_iter().map(|(d, p, l)| make(d, p, l)).collect()
                    }
                    _ => unreachable!(),
                };
                let sanitized: Vec<Sanitized> = unit
                    .iter()
                    .map(|(p, d, payload)| record(d, *p, payload))
                    .collect();
                let too_large = unit
                    .iter()
                    .any(|(_, d, payload)| charge(payload.len(), d.len()) > model.budget);
                let result = if unit.len() == 1 {
                    spool
                        .append(sanitized.into_iter().next().unwrap())
                        .await
                        .map(|id| vec![id])
                } else {
                    spool.append_many(sanitized).await
                };
                match result {
                    Ok(ids) => {
                        assert!(!too_large);
                        assert_eq!(ids.len(), unit.len());
                        assert!(
                            ids.iter().all(|id| id.seq > model.highest_seq),
                            "seqs only grow"
                        );
                        assert!(ids.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
                        model.highest_seq = ids.last().unwrap().seq;
                        assert!(
                            model.append(&unit, Some(&ids)).is_some(),
                            "model refuses what the spool took"
                        );
                    }
                    Err(SpoolError::TooLarge { .. }) => assert!(too_large),
                    Err(SpoolError::Full { .. }) => {
                        assert!(!too_large);
                        assert!(
                            model.append(&unit, None).is_none(),
                            "spool refused what the model takes"
                        );
                        model.refused += unit.len() as u64;
                    }
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            Op::Lease {
                max_records,
                max_bytes,
            } => {
                let got = spool
                    .lease(usize::from(max_records), usize::from(max_bytes))
                    .await
                    .unwrap();
                let expected = model.lease(usize::from(max_records), usize::from(max_bytes));
                assert_eq!(seqs(&got), expected, "lease order");
                for r in &got {
                    let m = &model.records[&r.id.seq];
                    assert_eq!(
                        (&r.payload, &r.device, r.priority),
                        (&m.payload, &m.device, m.priority)
                    );
                }
            }
            Op::Ack(picks) => {
                let all: Vec<u64> = model.records.keys().copied().collect();
                if all.is_empty() {
                    continue;
                }
                let chosen: Vec<u64> = picks.iter().map(|i| all[i.index(all.len())]).collect();
                let spool_id = spool.dump().await.unwrap().spool_id;
                spool
                    .ack(
                        chosen
                            .iter()
                            .map(|&seq| RecordId {
                                spool: spool_id,
                                seq,
                            })
                            .collect(),
                    )
                    .await
                    .unwrap();
                for seq in chosen {
                    model.records.remove(&seq);
                }
            }
            Op::AckUnknown => {
                spool
                    .ack(vec![
                        RecordId { spool: 1, seq: 1 },
                        RecordId {
                            spool: 0,
                            seq: u64::MAX,
                        },
                    ])
                    .await
                    .unwrap();
            }
            Op::Release => {
                spool.release_leases();
                model.records.values_mut().for_each(|r| r.leased = false);
            }
            Op::Reopen | Op::CrashReopen => {
                if matches!(op, Op::Reopen) {
                    spool.close().await;
                    drop(spool);
                } else {
                    crashes += 1;
                    let copy =
                        snapshot_files(&config.path, &dir.path().join(format!("crash-{crashes}")));
                    drop(spool);
                    config.path = copy;
                }
                let (reopened, report) = open(&config);
                assert_eq!(report.quarantined, None);
                assert_eq!(report.records, model.records.len() as u64);
                assert_eq!(report.bytes, model.bytes());
                spool = reopened;
                model.records.values_mut().for_each(|r| r.leased = false);
                evicted_at_open = model.evicted;
                refused_at_open = model.refused;
            }
        }
        check(&spool, &model).await;
        let stats = spool.stats();
        let evicted_since_open: Vec<u64> = model
            .evicted
            .iter()
            .zip(evicted_at_open)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(stats.evicted.to_vec(), evicted_since_open);
        assert_eq!(stats.refused_full, model.refused - refused_at_open);
    }
    spool.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_the_model(ops in prop::collection::vec(op_strategy(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_model(ops));
    }
}

#[tokio::test]
async fn a_dead_writer_refuses_callers_instead_of_hanging_them() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(&config(dir.path()));
    spool
        .append(record("dev", Priority::Observation, b"{}"))
        .await
        .unwrap();
    spool.crash_writer_for_test().await;
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        spool.append(record("dev", Priority::Observation, b"{}")),
    )
    .await;
    assert!(
        matches!(outcome, Ok(Err(_))),
        "a caller must get an error, not wait forever: {outcome:?}"
    );
    let lease =
        tokio::time::timeout(std::time::Duration::from_secs(10), spool.lease(10, 1 << 20)).await;
    assert!(matches!(lease, Ok(Err(_))), "{lease:?}");
}
