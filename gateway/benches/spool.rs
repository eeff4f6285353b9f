//! Spool throughput: what group commit buys, and how a large backlog opens and drains.
//!
//! Run: `cargo bench -p wardgate --features bench-internals --bench spool`
//! (`-- quick` runs smaller sizes). Every figure is wall-clock on the machine it runs on,
//! with real fsyncs into a temporary directory under `$TMPDIR`: the naive baseline runs
//! SQLite with `synchronous=FULL`; the spool commits with `synchronous=NORMAL` and answers
//! only after its own fdatasync of the WAL (equally durable; see `spool/syncer.rs`).
//!
//! Scenarios, all with 256-byte payloads:
//! 1. group commit: N tokio tasks each awaiting `append` in a loop (N = 64, 256);
//! 2. group commit: device connections delivering `append_many` batches;
//! 3. the naive design: one transaction (commit + fsync) per record, same schema and
//!    pragmas, straight rusqlite; and the spool itself with a single producer;
//! 4. opening a spool holding 1,000,000 records (after a clean close and after a crash,
//!    which adds the integrity check), and lease+ack drain rate.

use std::path::Path;
use std::time::{Duration, Instant};

use wardgate::phi::Sanitized;
use wardgate::spool::{Spool, SpoolConfig};
use wardgate_proto::Priority;

const PAYLOAD: usize = 256;

fn config(dir: &Path, max_batch: usize) -> SpoolConfig {
    SpoolConfig {
        path: dir.join("spool.db"),
        budget_bytes: 8 << 30,
        ttl: [None; 4],
        max_batch,
    }
}

fn device(i: usize) -> String {
    format!("monitor-{i:016x}")
}

fn record(device: &str, payload: &[u8]) -> Sanitized {
    Sanitized::unchecked_for_bench(device.to_owned(), Priority::Observation, payload.to_vec())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn report(name: &str, records: u64, elapsed: Duration, commits: Option<u64>) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let rate = records as f64 / elapsed.as_secs_f64();
    match commits {
        Some(commits) if commits > 0 => println!(
            "{name:<58} {records:>9} records in {:>7.3} s = {rate:>10.0} records/s ({commits} commits, {:.0} records/commit)",
            elapsed.as_secs_f64(),
            records as f64 / commits as f64
        ),
        _ => println!("{name:<58} {records:>9} records in {:>7.3} s = {rate:>10.0} records/s", elapsed.as_secs_f64()),
    }
    rate
}

/// N producers, each awaiting one `append` at a time (a device connection with one
/// message in flight).
fn producers_append(tasks: usize, per_task: usize, max_batch: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    rt.block_on(async {
        let (spool, _) = Spool::open(config(dir.path(), max_batch)).expect("open");
        let payload = vec![b'x'; PAYLOAD];
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let spool = spool.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    let device = device(t);
                    for _ in 0..per_task {
                        spool
                            .append(record(&device, &payload))
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        let elapsed = start.elapsed();
        let stats = spool.stats();
        spool.close().await;
        report(
            &format!("group commit: {tasks} tasks x append (max_batch {max_batch})"),
            (tasks * per_task) as u64,
            elapsed,
            Some(stats.commits),
        )
    })
}

/// N connections, each delivering `batch` records at a time with `append_many`.
fn producers_append_many(tasks: usize, batch: usize, per_task: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    rt.block_on(async {
        let (spool, _) = Spool::open(config(dir.path(), 4096)).expect("open");
        let payload = vec![b'x'; PAYLOAD];
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let spool = spool.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    let device = device(t);
                    for _ in 0..per_task / batch {
                        let unit = (0..batch).map(|_| record(&device, &payload)).collect();
                        spool.append_many(unit).await.expect("append_many");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        let elapsed = start.elapsed();
        let stats = spool.stats();
        spool.close().await;
        report(
            &format!("group commit: {tasks} tasks x append_many({batch})"),
            (tasks * (per_task / batch) * batch) as u64,
            elapsed,
            Some(stats.commits),
        )
    })
}

/// The naive design: one transaction (and so one fsync) per record.
fn naive_per_record_commit(duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    // Create the spool file (schema, pragmas) the same way the spool does, then write to
    // it directly.
    let path = {
        let rt = runtime();
        let config = config(dir.path(), 1);
        rt.block_on(async {
            let (spool, _) = Spool::open(config.clone()).expect("open");
            spool.close().await;
        });
        config.path
    };
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    )
    .expect("pragmas");
    let payload = vec![b'x'; PAYLOAD];
    let device = device(0);
    let mut insert = conn
        .prepare(
            "INSERT INTO records (priority, accepted_ms, device, payload) VALUES (2, 0, ?1, ?2)",
        )
        .expect("prepare");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        conn.execute_batch("BEGIN").expect("begin");
        insert
            .execute(rusqlite::params![device, payload])
            .expect("insert");
        conn.execute_batch("COMMIT").expect("commit");
        n += 1;
    }
    report(
        "naive: one transaction + fsync per record (rusqlite)",
        n,
        start.elapsed(),
        Some(n),
    )
}

/// One producer through the spool: every append waits for its own commit.
fn single_producer(duration: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    rt.block_on(async {
        let (spool, _) = Spool::open(config(dir.path(), 1024)).expect("open");
        let payload = vec![b'x'; PAYLOAD];
        let device = device(0);
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            spool
                .append(record(&device, &payload))
                .await
                .expect("append");
            n += 1;
        }
        let elapsed = start.elapsed();
        let stats = spool.stats();
        spool.close().await;
        report(
            "spool, 1 producer (one append in flight)",
            n,
            elapsed,
            Some(stats.commits),
        )
    })
}

/// Builds a spool holding `records` records, closes it, then measures opening it (clean
/// and after a crash) and draining it with lease + ack.
fn backlog(records: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 4096);
    let rt = runtime();
    rt.block_on(async {
        let (spool, _) = Spool::open(config.clone()).expect("open");
        let payload = vec![b'x'; PAYLOAD];
        let devices: Vec<String> = (0..64).map(device).collect();
        let start = Instant::now();
        let mut written = 0;
        while written < records {
            let n = (records - written).min(4096);
            let unit = (0..n)
                .map(|i| record(&devices[(written + i) % devices.len()], &payload))
                .collect();
            spool.append_many(unit).await.expect("append_many");
            written += n;
        }
        report(
            "backlog build: append_many(4096), one producer",
            records as u64,
            start.elapsed(),
            None,
        );
        spool.close().await;
    });
    println!("backlog file: {:.1} MiB", file_mib(&config.path));

    // Clean open: index rebuild only. Drop caches are not ours to touch: the file is
    // warm in the page cache, as it is right after a gateway restart.
    let start = Instant::now();
    let (spool, report_open) = Spool::open(config.clone()).expect("open");
    let clean = start.elapsed();
    assert_eq!(report_open.records, records as u64);
    println!(
        "open {records} records after a clean close: {:>7.3} s (index rebuild)",
        clean.as_secs_f64()
    );
    // Crash: dropping the handle closes cleanly, so mark the spool as not cleanly closed
    // behind its back to measure the crash path (integrity check + rebuild).
    drop(spool);
    {
        let conn = rusqlite::Connection::open(&config.path).expect("open");
        conn.execute(
            "UPDATE meta SET value = 0 WHERE key = 'spool.clean_shutdown'",
            [],
        )
        .expect("mark");
    }
    let start = Instant::now();
    let (spool, _) = Spool::open(config.clone()).expect("open");
    let crashed = start.elapsed();
    println!(
        "open {records} records after a crash:        {:>7.3} s (quick_check + index rebuild)",
        crashed.as_secs_f64()
    );

    rt.block_on(async {
        for lease_size in [1000usize] {
            let start = Instant::now();
            let mut drained = 0u64;
            loop {
                let leased = spool.lease(lease_size, usize::MAX).await.expect("lease");
                if leased.is_empty() {
                    break;
                }
                drained += leased.len() as u64;
                spool
                    .ack(leased.into_iter().map(|r| r.id).collect())
                    .await
                    .expect("ack");
            }
            let stats = spool.stats();
            report(
                &format!("drain: lease({lease_size}) + ack, sequential"),
                drained,
                start.elapsed(),
                Some(stats.commits),
            );
        }
        // Freed space goes back to the file system in the background (incremental
        // vacuum, then a checkpoint truncates the file): watch it happen.
        let start = Instant::now();
        let mut last = file_mib(&config.path);
        while start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = file_mib(&config.path);
            if now < 64.0 && (now - last).abs() < 0.01 {
                break;
            }
            last = now;
        }
        println!(
            "file {:.1} MiB {:.1} s after the drain (spool idle)",
            last,
            start.elapsed().as_secs_f64()
        );
        spool.close().await;
    });
    println!("file after close: {:.1} MiB", file_mib(&config.path));
}

fn file_mib(path: &Path) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64;
    bytes / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let quick = args.iter().any(|a| a == "quick");
    // Optional scenario filter: any of naive, append, many, backlog.
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "quick")
        .collect();
    let run = |name: &str| only.is_empty() || only.contains(&name);
    let scale = if quick { 10 } else { 1 };
    println!(
        "spool benchmark: {PAYLOAD}-byte payloads, WAL; every figure acknowledges only after fsync (naive: synchronous=FULL; spool: commit + its own WAL fdatasync), {} CPUs",
        num_cpus()
    );

    let mut naive = None;
    if run("naive") {
        naive = Some(naive_per_record_commit(Duration::from_secs(2)));
        single_producer(Duration::from_secs(2));
    }
    let mut best = 0f64;
    // The machine may be shared: each throughput scenario runs `repeat` times and the
    // summary line gives the median and the best.
    let repeat = if quick { 1 } else { 3 };
    if run("append") {
        for (tasks, max_batch) in [(64, 1024), (256, 1024), (1024, 4096)] {
            let rates: Vec<f64> = (0..repeat)
                .map(|_| producers_append(tasks, 400_000 / scale / tasks, max_batch))
                .collect();
            best = best.max(summary(&format!("{tasks} tasks x append"), rates));
        }
    }
    if run("many") {
        for (tasks, batch) in [(64, 16), (16, 256)] {
            let rates: Vec<f64> = (0..repeat)
                .map(|_| producers_append_many(tasks, batch, 1_000_000 / scale / tasks))
                .collect();
            best = best.max(summary(
                &format!("{tasks} tasks x append_many({batch})"),
                rates,
            ));
        }
    }
    if let Some(naive) = naive.filter(|_| best > 0.0) {
        println!("group commit (best median) / naive: {:.0}x", best / naive);
    }
    if run("backlog") {
        backlog(1_000_000 / scale);
    }
}

/// Prints median and best of the runs; returns the median.
fn summary(name: &str, mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let best = rates[rates.len() - 1];
    println!(
        "  => {name}: median {median:.0} records/s, best {best:.0} records/s over {} runs",
        rates.len()
    );
    median
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
