//! The log-file follower against real files: growth, rotation by rename + create,
//! copytruncate, a crash (task aborted) while the sink refuses, and a restart from the
//! stored checkpoint. Every line must arrive exactly once, in order.
#![cfg(feature = "logfile")]
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wardgate_device_adapters::logfile::{
    follow, Checkpoint, LogChunk, LogFileConfig, LogSink, SinkError, StartAt,
};

/// Stores lines and checkpoint together, like the spool's one transaction.
#[derive(Default)]
struct RecordingSink {
    state: Mutex<Stored>,
    refuse: AtomicBool,
    refusals: AtomicUsize,
}

#[derive(Default)]
struct Stored {
    lines: Vec<(String, String)>,
    checkpoint: Option<Checkpoint>,
}

impl RecordingSink {
    fn lines(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.lines.iter().map(|(_, l)| l.clone()).collect()
    }
    fn files(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.lines.iter().map(|(f, _)| f.clone()).collect()
    }
}

impl LogSink for RecordingSink {
    async fn load_checkpoint(&self, _device_id: &str) -> Result<Option<Checkpoint>, SinkError> {
        Ok(self.state.lock().unwrap().checkpoint.clone())
    }

    async fn ship(&self, device_id: &str, chunk: LogChunk) -> Result<(), SinkError> {
        assert_eq!(device_id, "dev-1");
        if self.refuse.load(Ordering::SeqCst) {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::Busy("spool full".into()));
        }
        let mut state = self.state.lock().unwrap();
        for line in chunk.lines {
            state.lines.push((chunk.file.clone(), line));
        }
        state.checkpoint = Some(chunk.checkpoint);
        Ok(())
    }
}

fn append(path: &Path, from: usize, to: usize) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut text = String::new();
    for n in from..to {
        text.push_str(&format!("2025-01-01 12:00:00 line {n:05}\n"));
    }
    f.write_all(text.as_bytes()).unwrap();
}

fn expected(to: usize) -> Vec<String> {
    (0..to)
        .map(|n| format!("2025-01-01 12:00:00 line {n:05}"))
        .collect()
}

async fn wait_for_lines(sink: &RecordingSink, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.lines().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out at {} of {count} lines",
            sink.lines().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(dir: &Path) -> LogFileConfig {
    LogFileConfig {
        batch_max_lines: 64,
        batch_max_delay_ms: 10,
        poll_interval_ms: 100,
        idle_flush_ms: 0,
        start_at: StartAt::Beginning,
        ..LogFileConfig::new(dir.to_path_buf())
    }
}

struct Running {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(dir: &Path, sink: &Arc<RecordingSink>) -> Running {
    let (shutdown, rx) = watch::channel(false);
    let sink = Arc::clone(sink);
    let config = config(dir);
    let task = tokio::spawn(async move {
        follow("dev-1".into(), config, sink, rx).await.unwrap();
    });
    Running { shutdown, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_exactly_once_across_rotation_truncation_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = dir.join("app.log");
    let sink = Arc::new(RecordingSink::default());

    // Growth.
    append(&log, 0, 100);
    std::fs::write(dir.join("notes.txt"), "not matched by *.log\n").unwrap();
    let running = start(dir, &sink);
    wait_for_lines(&sink, 100).await;
    append(&log, 100, 200);
    wait_for_lines(&sink, 200).await;

    // Rotation by rename + create, with a late write to the rotated file.
    append(&log, 200, 250);
    std::fs::rename(&log, dir.join("app.log.1")).unwrap();
    append(&dir.join("app.log.1"), 250, 260);
    append(&log, 260, 300);
    wait_for_lines(&sink, 300).await;

    // copytruncate: copy, then truncate in place, then the application writes on.
    std::fs::copy(&log, dir.join("app.log.2")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, 300, 400);
    wait_for_lines(&sink, 400).await;

    // Crash mid-file: the sink refuses (spool full) so lines pile up in memory, then the
    // follower is killed without a shutdown. Its in-memory lines are lost with it.
    sink.refuse.store(true, Ordering::SeqCst);
    append(&log, 400, 450);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.refusals.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no refusal seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.task.abort();
    let _ = running.task.await;
    drop(running.shutdown);
    assert_eq!(sink.lines().len(), 400, "refused lines are not recorded");

    // While down: more lines, a rotation, and half a line in the new file.
    append(&log, 450, 460);
    std::fs::rename(&log, dir.join("app.log.1")).unwrap();
    append(&log, 460, 470);
    {
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"2025-01-01 12:00:00 line 00470").unwrap();
    }

    // Restart from the stored checkpoint: the rotated file is read from the checkpoint on,
    // then the new file from its start; the half line waits for its end.
    sink.refuse.store(false, Ordering::SeqCst);
    let running = start(dir, &sink);
    wait_for_lines(&sink, 470).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.lines().len(), 470, "the half line is held");
    {
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"\n").unwrap();
    }
    append(&log, 471, 500);
    wait_for_lines(&sink, 500).await;

    // Graceful stop.
    running.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .unwrap()
        .unwrap();

    // Give a buggy follower the chance to ship duplicates before checking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.lines(), expected(500));
    assert!(sink.files().iter().all(|f| f == "app.log"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_at_end_stores_a_checkpoint_before_any_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = dir.join("app.log");
    append(&log, 0, 10);
    let sink = Arc::new(RecordingSink::default());
    let (shutdown, rx) = watch::channel(false);
    let config = LogFileConfig {
        start_at: StartAt::End,
        ..config(dir)
    };
    let task = tokio::spawn(follow(
        "dev-1".into(),
        config.clone(),
        Arc::clone(&sink),
        rx,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.state.lock().unwrap().checkpoint.is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert!(sink.lines().is_empty(), "existing content is skipped");

    // Lines written while the gateway is down are not skipped by the second start.
    append(&log, 10, 20);
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(follow("dev-1".into(), config, Arc::clone(&sink), rx));
    wait_for_lines(&sink, 10).await;
    shutdown.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(sink.lines(), expected(20)[10..].to_vec());
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let sink = Arc::new(RecordingSink::default());
    let (_shutdown, rx) = watch::channel(false);
    let config = LogFileConfig {
        glob: "a/b".into(),
        ..LogFileConfig::new("/tmp".into())
    };
    let err = follow("dev-1".into(), config, sink, rx).await.unwrap_err();
    assert!(err.to_string().contains("glob"), "{err}");
}
