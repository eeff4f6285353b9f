//! Log shipping: the free-text scrubber's throughput and the log-file follower end to end.
//!
//! Run: `cargo bench -p wardgate --features bench-internals --bench logship`
//! (`-- quick` uses a 64 MiB file instead of 1 GiB and fewer scrub lines).
//!
//! Figures:
//! 1. `scrub 1 thread`: [`FreeTextRules::scrub_line`] over realistic device log lines
//!    (pump, monitor, network, UI, logged HL7 segments) with planted PHI — e-mail, phone,
//!    SSN, MRN, dates of birth, IP addresses (rule on) and patient names — every rule on,
//!    10,000 name tokens learned (a large hospital's census). One thread; target
//!    ≥ 200,000 lines/s. Also the full record path (`sanitize_log_lines`: scrub + JSON
//!    encode, 500-line batches). Checks that the planted PHI is gone from the output.
//! 2. `tail 1 GiB`: a generated 1 GiB log file (~117-byte lines) followed from its start
//!    by the real driver (`logfile::follow`, tokio with one worker thread, reads on the
//!    blocking pool) into a sink that counts lines — once counting only, once scrubbing
//!    and encoding each chunk in the sink as the gateway pipeline does. Lines/s, MB/s and
//!    peak RSS (VmHWM from /proc/self/status, reset through /proc/self/clear_refs before
//!    each run). Asserts the line count matches. The file was just written, so it is
//!    read from the page cache: this is the follower's cost, not the disk's.
//!
//! Figures are printed, never asserted (except correctness: counts and PHI removal).

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wardgate::phi::freetext::{FreeTextConfig, FreeTextRules, NameTokens};
use wardgate::phi::PseudonymKey;
use wardgate_device_adapters::logfile::{
    follow, Checkpoint, LogChunk, LogFileConfig, LogSink, SinkError, StartAt,
};
use wardgate_proto::DeviceIdentity;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const TEMPLATES: &[&str] = &[
    "2025-03-04 10:11:12.{ms} INFO  [pump.ctrl] Infusion started rate=5.0 ml/h vol=250 ml drug=heparin channel=B seq={seq}",
    "2025-03-04 10:11:12.{ms} WARN  [alarm] SpO2 low 88% HR 112 for patient {family} {given} MRN: {mrn}, bed ICU-4",
    "2025-03-04 10:11:12.{ms} DEBUG [net] connected to 10.20.0.15:2575 session 0x7f3a9c12 retries=0 rtt=1.25ms",
    "2025-03-04 10:11:12.{ms} INFO  [ui] user nurse.{given}@hospital.example.org logged in from ws-12 (v2.4.1)",
    "2025-03-04 10:11:12.{ms} ERROR [hl7] rejected PID|||{mrn}^^^HOSP^MR||{family}^{given}||19640812|F|||1 Main St||555-123-4567",
    "2025-03-04 10:11:12.{ms} INFO  [nibp] measurement 120/80 (93) mmHg cuff=adult temp 36.8 C spo2 97 pr 72",
    "2025-03-04 10:11:12.{ms} NOTICE [admin] record for {given} {family}, DOB 08/12/1964, SSN 123-45-6789 printed",
    "2025-03-04 10:11:12.{ms} INFO  [fw] firmware 3.2.17 build 7f3a9c12 uptime 86400 s heap 1048576 free",
];

const FAMILIES: &[&str] = &["DOE", "MUSTERMANN", "SMITH", "GARCIA", "NGUYEN", "MÜLLER"];
const GIVEN: &[&str] = &["JANE", "ERIKA", "JOHN", "MARIA", "LINH", "JÜRGEN"];

fn capitalise(s: &str) -> String {
    let lower = s.to_lowercase();
    let mut chars = lower.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn make_line(n: usize) -> String {
    let t = TEMPLATES[n % TEMPLATES.len()];
    let family = FAMILIES[n % FAMILIES.len()];
    let given = GIVEN[(n / 7) % GIVEN.len()];
    let (family, given) = if n % 2 == 0 {
        (capitalise(family), capitalise(given))
    } else {
        (family.to_owned(), given.to_owned())
    };
    t.replace("{ms}", &format!("{:03}", n % 1000))
        .replace("{seq}", &n.to_string())
        .replace("{family}", &family)
        .replace("{given}", &given.to_lowercase())
        .replace("{mrn}", &format!("{:08}", 10_000_000 + n % 9_000_000))
}

fn rules() -> BenchResult<FreeTextRules> {
    let key = PseudonymKey::from_bytes(&[42; 32]);
    let names = Arc::new(NameTokens::new(&key, 100_000));
    // A large census: 10,000 tokens, the planted names among them.
    for i in 0..5_000 {
        names.learn([
            format!("FAMILY{}", letters(i)),
            format!("GIVEN{}", letters(i)),
        ]);
    }
    names.learn(FAMILIES.iter().chain(GIVEN));
    let config = FreeTextConfig {
        ip_addresses: true,
        ..FreeTextConfig::default()
    };
    Ok(FreeTextRules::new(&config, names)?)
}

/// A digit-free suffix so every learned token is a word.
fn letters(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.push(char::from(b'A' + (i % 26) as u8));
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

fn device() -> DeviceIdentity {
    DeviceIdentity {
        id: "pump-7".into(),
        application: None,
        eui64: None,
    }
}

fn bench_scrub(quick: bool) -> BenchResult<()> {
    let rules = rules()?;
    let lines: Vec<String> = (0..10_000).map(make_line).collect();
    let input_bytes: usize = lines.iter().map(String::len).sum();
    let rounds = if quick { 40 } else { 200 };

    // Correctness of what is measured.
    let mut out = String::new();
    for line in &lines {
        out.clear();
        rules.scrub_line(line, &mut out);
        for planted in [
            "Doe",
            "DOE",
            "jane",
            "Mustermann",
            "erika",
            "Müller",
            "müller",
            "jürgen",
            "19640812",
            "08/12/1964",
            "123-45-6789",
            "555-123-4567",
            "hospital.example.org",
            "10.20.0.15",
        ] {
            if out.contains(planted) {
                return Err(format!("{planted:?} survived in {out:?}").into());
            }
        }
        if !out.starts_with("2025-03-04 10:11:12.") {
            return Err(format!("leading timestamp lost: {out:?}").into());
        }
    }
    println!("logship: sample scrubbed lines:");
    for line in lines.iter().take(TEMPLATES.len()) {
        out.clear();
        rules.scrub_line(line, &mut out);
        println!("logship:   {out}");
    }

    let start = Instant::now();
    let mut out_bytes = 0usize;
    for _ in 0..rounds {
        for line in &lines {
            out.clear();
            rules.scrub_line(line, &mut out);
            out_bytes += out.len();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = (rounds * lines.len()) as f64;
    println!(
        "logship: scrub 1 thread: {:.0} lines/s ({:.1} MB/s in, {:.0} ns/line, {} lines, avg {} bytes/line, out {} bytes)",
        n / elapsed,
        (rounds * input_bytes) as f64 / elapsed / 1e6,
        elapsed / n * 1e9,
        n,
        input_bytes / lines.len(),
        out_bytes,
    );

    let device = device();
    let start = Instant::now();
    let mut payload = 0usize;
    for _ in 0..rounds / 4 {
        for batch in lines.chunks(500) {
            let record = rules.sanitize_log_lines(&device, "system.log", batch.to_vec())?;
            payload += record.payload().len();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = (rounds / 4 * lines.len()) as f64;
    println!(
        "logship: scrub+encode records 1 thread: {:.0} lines/s (500-line records, {:.0} bytes JSON per line)",
        n / elapsed,
        payload as f64 / n
    );
    Ok(())
}

/// Counts lines; optionally runs them through the PHI stage like the pipeline does.
struct CountingSink {
    lines: AtomicU64,
    rules: Option<FreeTextRules>,
    device: DeviceIdentity,
}

impl LogSink for CountingSink {
    async fn load_checkpoint(&self, _device_id: &str) -> Result<Option<Checkpoint>, SinkError> {
        Ok(None)
    }

    async fn ship(&self, _device_id: &str, chunk: LogChunk) -> Result<(), SinkError> {
        let n = chunk.lines.len() as u64;
        if let Some(rules) = &self.rules {
            let out = rules
                .sanitize_chunk(&self.device, chunk)
                .map_err(|e| SinkError::Failed(e.to_string()))?;
            std::hint::black_box(out);
        }
        self.lines.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }
}

fn write_file(path: &Path, target_bytes: u64) -> BenchResult<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut n = 0usize;
    while bytes < target_bytes {
        let mut line = make_line(n);
        line.push('\n');
        w.write_all(line.as_bytes())?;
        bytes += line.len() as u64;
        lines += 1;
        n += 1;
    }
    w.flush()?;
    Ok((bytes, lines))
}

fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bench_tail(quick: bool) -> BenchResult<()> {
    let target: u64 = if quick { 64 << 20 } else { 1 << 30 };
    let label = if quick { "64 MiB" } else { "1 GiB" };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("device.log");
    let t = Instant::now();
    let (bytes, lines) = write_file(&path, target)?;
    println!(
        "logship: generated {label}: {bytes} bytes, {lines} lines in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    for scrub in [false, true] {
        let sink = Arc::new(CountingSink {
            lines: AtomicU64::new(0),
            rules: if scrub { Some(rules()?) } else { None },
            device: device(),
        });
        let config = LogFileConfig {
            start_at: StartAt::Beginning,
            batch_max_lines: 1000,
            batch_max_delay_ms: 100,
            poll_interval_ms: 1000,
            ..LogFileConfig::new(dir.path().to_path_buf())
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let reset = reset_peak_rss();
        let (shutdown, rx) = watch::channel(false);
        let start = Instant::now();
        let task = runtime.spawn(follow("bench".into(), config, Arc::clone(&sink), rx));
        let deadline = Instant::now() + Duration::from_secs(1200);
        while sink.lines.load(Ordering::Relaxed) < lines && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let elapsed = start.elapsed().as_secs_f64();
        shutdown.send(true)?;
        runtime.block_on(task)??;
        let got = sink.lines.load(Ordering::Relaxed);
        if got != lines {
            return Err(format!("line count mismatch: shipped {got}, file has {lines}").into());
        }
        let rss = peak_rss_kib().map_or_else(
            || "NOT MEASURED (no /proc/self/status)".to_owned(),
            |k| {
                format!(
                    "{:.1} MiB{}",
                    k as f64 / 1024.0,
                    if reset {
                        ""
                    } else {
                        " (process peak: clear_refs refused)"
                    }
                )
            },
        );
        println!(
            "logship: tail {label}{}: {:.0} lines/s, {:.0} MB/s, {:.1} s, {lines} lines (count matches), peak RSS {rss}",
            if scrub { " + scrub/encode in sink" } else { " (count only)" },
            lines as f64 / elapsed,
            bytes as f64 / elapsed / 1e6,
            elapsed,
        );
        drop(runtime);
    }
    Ok(())
}

fn main() -> BenchResult<()> {
    let quick = std::env::args().any(|a| a == "quick");
    bench_scrub(quick)?;
    bench_tail(quick)?;
    Ok(())
}
