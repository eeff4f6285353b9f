//! End-to-end ingest: devices → MLLP → PHI stage → spool (fsync'd group commit) → ACK,
//! with the MQTT uplink live against a real mosquitto (mutual TLS, QoS 1) and draining the
//! spool while devices send, as in production.
//!
//! ```text
//! cargo build --release -p wardgate                                   # figures 3 and 4
//! cargo bench -p wardgate --features bench-internals --bench ingest
//! cargo bench -p wardgate --features bench-internals --bench ingest -- quick   # shorter
//! ```
//!
//! Figures (targets in brackets):
//! 1. Saturation [≥ 20,000 msgs/s]: 64 device connections, each sending a PCD-01 ORU^R01
//!    (PID with an MRN, PV1, OBR, 6 OBX) and waiting for its ACK (`CA`, sent only after the
//!    spool's fsync'd group commit) before the next; 2 s warm-up, 10 s measured. Throughput,
//!    ACK latency, records per group commit, and CPU time per thread.
//! 2. Paced latency [p99 ≤ 5 ms]: 1,000 msgs/s as 10 connections × 100 msgs/s on a fixed
//!    schedule. Latency runs from the *scheduled* send time to the ACK, so a slow ACK also
//!    charges the sends it delayed (no coordinated omission).
//! 3. Memory [≤ 20 MB]: VmRSS of the real release binary (a child process, so the figure is
//!    the gateway's own) at rest, with 100 silent connections, and after each of them sent
//!    one message.
//! 4. Start with a 1,000,000-record backlog [≤ 1 s]: the release binary started on a spool
//!    pre-filled with 1M observation records of ~320 bytes (one SpO2 value and a patient
//!    pseudonym; a little above the ~256 bytes the target assumes), its broker unreachable
//!    (so the backlog stays); time from spawn until the MLLP port accepts and until the
//!    first message is answered `CA`. Three starts after a clean stop, one after SIGKILL
//!    (whose spool open adds an integrity check).
//!
//! Figures 1 and 2 run the gateway in this process (`Gateway::start`, on its own
//! multi-threaded runtime like `main.rs`), so its spool and listener counters can be read;
//! the device clients run on separate threads of the same machine and compete with the
//! gateway and mosquitto for its CPUs. The per-source rate limiter is set out of the way
//! (every client is 127.0.0.1) and the output says so.
//!
//! Nothing here is a test: figures are printed, never asserted. A figure that could not be
//! measured is printed as `NOT MEASURED` with the reason, never estimated.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wardgate::config::Config;
use wardgate::daemon::Gateway;
use wardgate::phi::{PseudonymKey, Sanitized};
use wardgate::spool::{Spool, SpoolConfig};
use wardgate_proto::{
    CodedValue, DeviceIdentity, Observation, ObservationGroup, ObservationReport, ObservationValue,
    Priority, Pseudonym, RecordBody,
};
use wardgate_tests::certs::{TestPki, Validity};
use wardgate_tests::gateway::{free_port, GatewaySetup};
use wardgate_tests::mllp_client::{ack_code, segment_field, MllpClient};
use wardgate_tests::mosquitto::Mosquitto;

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// MLLP start block, end block, carriage return.
const SB: u8 = 0x0b;
const EB: u8 = 0x1c;
const CR: u8 = 0x0d;

/// Set far above anything the benchmark sends: all clients share 127.0.0.1.
const RATE_LIMIT_OUT_OF_THE_WAY: u32 = 1_000_000;

/// Durations and sizes of one run.
struct Plan {
    warmup: Duration,
    measure: Duration,
    saturation_connections: usize,
    paced_connections: usize,
    paced_rate_per_connection: u32,
    idle_connections: usize,
    backlog_records: usize,
    drain_patience: Duration,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            saturation_connections: 64,
            paced_connections: 10,
            paced_rate_per_connection: 100,
            idle_connections: 100,
            backlog_records: 1_000_000,
            drain_patience: Duration::from_secs(30),
        }
    }

    fn quick() -> Plan {
        Plan {
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(3),
            backlog_records: 100_000,
            drain_patience: Duration::from_secs(10),
            ..Plan::full()
        }
    }
}

/// One line of the closing summary.
struct Figure {
    name: String,
    value: String,
    target: String,
    verdict: &'static str,
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT MET"
    }
}

fn main() -> BenchResult<()> {
    let quick = std::env::args().skip(1).any(|a| a == "quick");
    let plan = if quick { Plan::quick() } else { Plan::full() };
    print_machine();

    let pki = TestPki::generate("ingest-bench")?;
    let broker = Mosquitto::start(&pki)?;
    let work = tempfile::Builder::new()
        .prefix("wardgate-ingest-bench-")
        .tempdir()?;
    println!(
        "broker: mosquitto on 127.0.0.1:{} (mutual TLS, QoS 1, no subscriber: it acknowledges and drops)",
        broker.port()
    );
    println!(
        "work directory: {} (spool fsyncs land on this file system)\n",
        work.path().display()
    );

    let mut figures = Vec::new();
    in_process(&plan, &pki, &broker, work.path(), &mut figures)?;

    match release_binary() {
        Ok(binary) => {
            idle_memory(&plan, &binary, &pki, &broker, work.path(), &mut figures)?;
            backlog_start(&plan, Some(&binary), &pki, work.path(), &mut figures)?;
        }
        Err(why) => {
            println!(
                "== 3. gateway memory with {} idle HL7 connections ==",
                plan.idle_connections
            );
            println!("NOT MEASURED: {why}\n");
            figures.push(Figure {
                name: "3. RSS, 100 idle connections".into(),
                value: "NOT MEASURED (no release binary)".into(),
                target: "<= 20 MB".into(),
                verdict: "NOT MEASURED",
            });
            backlog_start(&plan, None, &pki, work.path(), &mut figures)?;
        }
    }

    println!("== summary ==");
    for f in &figures {
        println!(
            "{:<52} {:>30}   target {:<16} {}",
            f.name, f.value, f.target, f.verdict
        );
    }
    if quick {
        println!(
            "(quick run: shorter windows and a {}-record backlog; not the reference figures)",
            plan.backlog_records
        );
    }
    drop(broker);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Machine facts
// ---------------------------------------------------------------------------------------

fn print_machine() {
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_owned();
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        .unwrap_or_default();
    println!("wardgate ingest benchmark");
    println!(
        "machine: nproc = {nproc}, CPU model = {model} ({mhz} MHz), MemTotal = {mem_total} kB"
    );
}

// ---------------------------------------------------------------------------------------
// Device messages and MLLP
// ---------------------------------------------------------------------------------------

/// A simulated patient monitor: its EUI-64 and its patient's MRN.
#[derive(Clone)]
struct Monitor {
    index: usize,
    eui64: String,
    mrn: String,
}

impl Monitor {
    fn new(index: usize) -> Monitor {
        Monitor {
            index,
            eui64: format!("00112233{index:08X}"),
            mrn: format!("MRN{:07}", 4_100_000 + index),
        }
    }

    fn control_id(&self, seq: u64) -> String {
        format!("b{}-{seq}", self.index)
    }

    /// An IHE PCD-01 ORU^R01 (enhanced mode, MSH-15 `AL`: answered `CA` after commit) with
    /// a patient identifier, a PV1, one OBR and six OBX rows (the MDS row and five vitals).
    fn message(&self, seq: u64) -> String {
        let eui = &self.eui64;
        let cid = self.control_id(seq);
        let v = seq % 7;
        [
            format!("MSH|^~\\&|MONITOR^{eui}^EUI-64|ICU-7|||20250101120000||ORU^R01^ORU_R01|{cid}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"),
            format!("PID|||{}^^^HOSP^MR||DOE^JANE||19700101|F", self.mrn),
            format!("PV1||I|ICU^^{}", self.index),
            format!("OBR|1|{cid}^MONITOR^{eui}^EUI-64|{cid}^MONITOR^{eui}^EUI-64|182777000^monitoring of patient^SCT|||20250101120000"),
            format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^EUI-64"),
            format!("OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|{}|262688^MDC_DIM_PERCENT^MDC|||||R|||20250101120000||||{eui}^EUI-64", 93 + v),
            format!("OBX|3|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.3.1.149530|{}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20250101120000||||{eui}^EUI-64", 68 + v),
            format!("OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC|1.2.1.147842|{}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20250101120000||||{eui}^EUI-64", 69 + v),
            format!("OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.4.1.150021|{}|266016^MDC_DIM_MMHG^MDC|||||R|||20250101120000||||{eui}^EUI-64", 118 + v),
            format!("OBX|6|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.4.1.150022|{}|266016^MDC_DIM_MMHG^MDC|||||R|||20250101120000||||{eui}^EUI-64", 76 + v),
        ]
        .join("\r")
    }

    fn frame(&self, seq: u64) -> Vec<u8> {
        let message = self.message(seq);
        let mut frame = Vec::with_capacity(message.len() + 3);
        frame.push(SB);
        frame.extend_from_slice(message.as_bytes());
        frame.extend_from_slice(&[EB, CR]);
        frame
    }
}

/// Reads one MLLP frame (without its envelope) from an async stream.
async fn read_frame(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let mut searched = 0;
    loop {
        if let Some(end) = buf[searched..]
            .windows(2)
            .position(|w| w == [EB, CR])
            .map(|p| p + searched)
        {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let start = frame.iter().position(|b| *b == SB).map_or(0, |p| p + 1);
            return Ok(frame[start..end].to_vec());
        }
        searched = buf.len().saturating_sub(1);
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "gateway closed the connection",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// MSA-1 and MSA-2 of an ACK.
fn msa(ack: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(ack);
    (
        segment_field(&text, "MSA", 1),
        segment_field(&text, "MSA", 2),
    )
}

fn is_positive(code: &str) -> bool {
    code == "AA" || code == "CA"
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

/// The `q` quantile (0..=1) of sorted nanosecond samples, nearest-rank.
fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn latency_line(sorted: &[u64]) -> String {
    format!(
        "p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
        ms(quantile(sorted, 0.50)),
        ms(quantile(sorted, 0.99)),
        ms(quantile(sorted, 0.999)),
        ms(quantile(sorted, 1.0)),
        sorted.len()
    )
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// CPU accounting from /proc (where the CPU goes during a measured window)
// ---------------------------------------------------------------------------------------

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `(comm, utime + stime in ticks)` from a `/proc/.../stat` file.
fn stat_cpu(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the comm: field 3 (state) is rest[0]; utime (14) and stime (15) are rest[11..=12].
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks used so far by this process's threads, grouped by thread name.
fn own_threads_cpu() -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Some((comm, ticks)) = stat_cpu(&task.path().join("stat")) {
                *by_name.entry(comm).or_insert(0) += ticks;
            }
        }
    }
    by_name
}

fn process_cpu(pid: u32) -> Option<u64> {
    stat_cpu(&PathBuf::from(format!("/proc/{pid}/stat"))).map(|(_, t)| t)
}

/// Machine-wide idle ticks (idle + iowait, summed over every CPU), from `/proc/stat`.
///
/// Only idle time is used: on a tickless kernel it is accounted exactly, while user and
/// system time are sampled at ticks and miss short bursts (a lightly loaded gateway's
/// whole workload), so "busy" is derived as wall time minus idle time.
fn machine_idle_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait ...
    Some(values.get(3)? + values.get(4)?)
}

struct CpuSnapshot {
    threads: BTreeMap<String, u64>,
    broker: Option<u64>,
    machine_idle: Option<u64>,
    at: Instant,
}

impl CpuSnapshot {
    fn take(broker_pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            threads: own_threads_cpu(),
            broker: broker_pid.and_then(process_cpu),
            machine_idle: machine_idle_ticks(),
            at: Instant::now(),
        }
    }

    /// Prints each thread group's share of one CPU over the window since `before`.
    fn print_since(&self, before: &CpuSnapshot, nproc: usize) {
        let ticks = clock_ticks_per_sec();
        let wall = self.at.duration_since(before.at).as_secs_f64();
        let mut rows: Vec<(String, f64)> = self
            .threads
            .iter()
            .map(|(name, t)| {
                let used = t.saturating_sub(before.threads.get(name).copied().unwrap_or(0));
                #[allow(clippy::cast_precision_loss)]
                let cores = used as f64 / ticks / wall;
                (describe_thread(name), cores)
            })
            .collect();
        if let (Some(a), Some(b)) = (before.broker, self.broker) {
            #[allow(clippy::cast_precision_loss)]
            rows.push((
                "mosquitto (broker process)".into(),
                b.saturating_sub(a) as f64 / ticks / wall,
            ));
        }
        rows.retain(|(_, c)| *c >= 0.005);
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = rows.iter().map(|(_, c)| c).sum();
        println!("  CPU over the measured window ({nproc} CPUs available; 1.00 = one CPU busy):");
        for (name, cores) in rows {
            println!("    {name:<52} {cores:>5.2}");
        }
        #[allow(clippy::cast_precision_loss)]
        let share = total / nproc.max(1) as f64 * 100.0;
        println!(
            "    {:<52} {total:>5.2}  ({share:.0}% of the machine)",
            "total (this benchmark + mosquitto)"
        );
        if let (Some(idle0), Some(idle1)) = (before.machine_idle, self.machine_idle) {
            #[allow(clippy::cast_precision_loss)]
            let idle_cpus = idle1.saturating_sub(idle0) as f64 / ticks / wall;
            #[allow(clippy::cast_precision_loss)]
            let busy_cpus = (nproc as f64 - idle_cpus).max(0.0);
            let others = (busy_cpus - total).max(0.0);
            println!(
                "    machine-wide busy (wall - idle): {busy_cpus:.2} CPUs; the rest of the machine (other processes, \
                 interrupts, kernel threads): {others:.2}{}",
                if others > 0.3 {
                    "  <- CONTENTION: other work on the machine disturbs these figures"
                } else {
                    ""
                }
            );
        }
    }
}

fn describe_thread(comm: &str) -> String {
    match comm {
        "gateway-rt" => "gateway tokio workers (MLLP, PHI, uplink TLS/MQTT)".into(),
        "spool-writer" => "gateway spool-writer (SQLite inserts/acks)".into(),
        "spool-syncer" => "gateway spool-syncer (fdatasync of the WAL)".into(),
        "spool-replier" => "gateway spool-replier (answers durable appends)".into(),
        "bench-client" => "benchmark device clients (not the gateway)".into(),
        "bench-paced" => "benchmark paced clients (not the gateway)".into(),
        other => format!("other thread `{other}`"),
    }
}

// ---------------------------------------------------------------------------------------
// 1 and 2: the gateway in this process
// ---------------------------------------------------------------------------------------

#[allow(clippy::too_many_lines)]
fn in_process(
    plan: &Plan,
    pki: &TestPki,
    broker: &Mosquitto,
    work: &Path,
    figures: &mut Vec<Figure>,
) -> BenchResult<()> {
    let id = "bench-inproc";
    let cert = pki.client("gw-inproc", id, Validity::Current)?;
    let dir = work.join("inproc");
    std::fs::create_dir_all(&dir)?;
    let setup = GatewaySetup {
        dir: dir.clone(),
        id: id.into(),
        mqtt_url: broker.url(),
        ca_file: pki.ca_file().to_path_buf(),
        cert_file: cert.cert,
        key_file: cert.key,
        hl7_port: 0,
        hl7_extra: format!(
            "rate_per_source_per_sec = {RATE_LIMIT_OUT_OF_THE_WAY}\nrate_burst = {RATE_LIMIT_OUT_OF_THE_WAY}\n"
        ),
        extra_sections: String::new(),
    };
    let config = Config::load(&setup.write_config()?)?;
    println!(
        "gateway (in process): hl7.rate_per_source_per_sec = {}, hl7.rate_burst = {} -- the per-source limiter is \
         set out of the way because every benchmark client is 127.0.0.1; spool.max_batch = {}, cloud.inflight_window = {}",
        config.hl7.rate_per_source_per_sec, config.hl7.rate_burst, config.spool.max_batch, config.cloud.inflight_window
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway-rt")
        .build()?;
    let gateway = runtime.block_on(Gateway::start(config))?;
    let addr = gateway.hl7_addr();
    let connected_by = Instant::now() + Duration::from_secs(15);
    while !gateway.uplink_status().connected && Instant::now() < connected_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gateway.uplink_status().connected {
        println!(
            "WARNING: the uplink did not connect within 15 s: {:?}",
            gateway.uplink_status().last_error
        );
    }
    println!(
        "gateway listening on {addr}, uplink connected: {}\n",
        gateway.uplink_status().connected
    );

    saturation(plan, &gateway, broker, figures)?;

    // Let the uplink empty the spool before the latency run, so figure 2 sees a gateway at
    // rest rather than one still forwarding figure 1's backlog.
    let drain_start = Instant::now();
    let held = |g: &Gateway| g.spool_stats().records.iter().sum::<u64>();
    while held(&gateway) > 0 && drain_start.elapsed() < plan.drain_patience {
        std::thread::sleep(Duration::from_millis(50));
    }
    if held(&gateway) == 0 {
        println!(
            "spool drained to the broker {:.2} s after the saturation run ended\n",
            drain_start.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "spool still holds {} records {:.0} s after the saturation run; figure 2 runs with the uplink still draining\n",
            held(&gateway),
            plan.drain_patience.as_secs_f64()
        );
    }

    paced(plan, &gateway, broker, figures)?;

    let listener = gateway.hl7_stats().snapshot();
    println!(
        "listener totals: accepted {}, rejected {} (rate limited {}), errored {}\n",
        listener.messages_accepted,
        listener.messages_rejected,
        listener.rate_limited,
        listener.messages_errored
    );
    runtime.block_on(gateway.shutdown());
    Ok(())
}

#[derive(Default)]
struct SaturationOutcome {
    /// ACK latency of each message acknowledged inside the window, in ns.
    latencies: Vec<u64>,
    /// Answers by MSA-1, inside the window.
    codes: BTreeMap<String, u64>,
    /// ACKs whose MSA-2 did not echo the message's control id.
    mismatched: u64,
    error: Option<String>,
}

async fn saturating_device(
    addr: SocketAddr,
    monitor: Monitor,
    window: (Instant, Instant),
) -> SaturationOutcome {
    let (measure_from, end) = window;
    let mut out = SaturationOutcome::default();
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut seq = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let frame = monitor.frame(seq);
        if let Err(e) = stream.write_all(&frame).await {
            out.error = Some(format!("write: {e}"));
            break;
        }
        let ack = match read_frame(&mut stream, &mut buf).await {
            Ok(ack) => ack,
            Err(e) => {
                out.error = Some(format!("read: {e}"));
                break;
            }
        };
        let acked = Instant::now();
        if acked >= measure_from && acked < end {
            let (code, echoed) = msa(&ack);
            if echoed != monitor.control_id(seq) {
                out.mismatched += 1;
            }
            if is_positive(&code) {
                out.latencies.push(nanos(acked - sent));
            }
            *out.codes.entry(code).or_insert(0) += 1;
        }
        seq += 1;
    }
    out
}

#[allow(clippy::too_many_lines)]
fn saturation(
    plan: &Plan,
    gateway: &Gateway,
    broker: &Mosquitto,
    figures: &mut Vec<Figure>,
) -> BenchResult<()> {
    let n = plan.saturation_connections;
    println!(
        "== 1. MLLP end to end, ACK after fsync'd commit: {n} connections, one message in flight each, {} s warm-up + {} s measured ==",
        plan.warmup.as_secs(),
        plan.measure.as_secs()
    );
    let sample = Monitor::new(0).message(0);
    println!(
        "  message: PCD-01 ORU^R01, {} bytes, {} segments (MSH, PID with MRN, PV1, OBR, 6 OBX), MSH-15 AL -> answered CA",
        sample.len(),
        sample.split('\r').count()
    );
    let addr = gateway.hl7_addr();
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.measure;
    let client = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let outcomes = runtime.block_on(async {
                let tasks: Vec<_> = (0..n)
                    .map(|i| {
                        tokio::spawn(saturating_device(
                            addr,
                            Monitor::new(i),
                            (measure_from, end),
                        ))
                    })
                    .collect();
                let mut outcomes = Vec::with_capacity(n);
                for task in tasks {
                    outcomes.push(task.await.unwrap_or_else(|e| SaturationOutcome {
                        error: Some(format!("client task: {e}")),
                        ..SaturationOutcome::default()
                    }));
                }
                outcomes
            });
            Ok::<_, std::io::Error>(outcomes)
        })?;

    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let spool_before = gateway.spool_stats();
    let uplink_before = gateway.uplink_status();
    let cpu_before = CpuSnapshot::take(broker.pid());
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu_after = CpuSnapshot::take(broker.pid());
    let spool_after = gateway.spool_stats();
    let uplink_after = gateway.uplink_status();
    let outcomes = client.join().map_err(|_| "client thread panicked")??;

    let mut latencies: Vec<u64> = Vec::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut mismatched = 0;
    let mut errors = Vec::new();
    for (i, o) in outcomes.into_iter().enumerate() {
        latencies.extend(o.latencies);
        for (code, count) in o.codes {
            *codes.entry(code).or_insert(0) += count;
        }
        mismatched += o.mismatched;
        if let Some(e) = o.error {
            errors.push(format!("connection {i}: {e}"));
        }
    }
    latencies.sort_unstable();
    let window = plan.measure.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = latencies.len() as f64 / window;
    println!(
        "  throughput: {rate:.0} msgs/s acknowledged positively ({} in {window:.0} s)",
        latencies.len()
    );
    println!(
        "  ACK latency (send -> ACK read): {}",
        latency_line(&latencies)
    );
    let answers: Vec<String> = codes.iter().map(|(c, n)| format!("{c} x {n}")).collect();
    println!("  answers in the window: {}", answers.join(", "));
    if codes.keys().any(|c| !is_positive(c)) {
        println!(
            "  WARNING: some messages were not acknowledged positively (see the answers above)"
        );
    }
    if mismatched > 0 {
        println!("  WARNING: {mismatched} ACKs did not echo their message's control id (MSA-2)");
    }
    for e in &errors {
        println!("  CLIENT ERROR {e}");
    }

    let appended = spool_after.appended_total - spool_before.appended_total;
    let commits = spool_after.commits - spool_before.commits;
    #[allow(clippy::cast_precision_loss)]
    let per_commit = if commits > 0 {
        appended as f64 / commits as f64
    } else {
        0.0
    };
    #[allow(clippy::cast_precision_loss)]
    let commits_per_sec = commits as f64 / window;
    println!(
        "  spool group commit: {appended} records appended in {commits} write transactions = {per_commit:.1} records/commit, \
         {commits_per_sec:.0} commits/s (transactions also carry the uplink's acks: {} records acked in the window)",
        spool_after.acked_total - spool_before.acked_total
    );
    let published = uplink_after.published_records - uplink_before.published_records;
    #[allow(clippy::cast_precision_loss)]
    let published_rate = published as f64 / window;
    let held_before: u64 = spool_before.records.iter().sum();
    let held_after: u64 = spool_after.records.iter().sum();
    println!(
        "  uplink (concurrent): {published} records published and PUBACKed in the window = {published_rate:.0} records/s \
         in {} publishes; spool backlog {held_before} -> {held_after} records; connected throughout: {}",
        uplink_after.published_batches - uplink_before.published_batches,
        uplink_before.connected && uplink_after.connected && uplink_after.connects == uplink_before.connects
    );
    let nproc = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cpu_after.print_since(&cpu_before, nproc);
    println!();

    figures.push(Figure {
        name: format!("1. MLLP msgs/s, {n} connections, AA/CA after commit"),
        value: format!("{rate:.0} msgs/s"),
        target: ">= 20,000".into(),
        verdict: verdict(rate >= 20_000.0),
    });
    figures.push(Figure {
        name: "1. ACK latency under saturation p50 / p99 / max".into(),
        value: format!(
            "{:.2} / {:.2} / {:.2} ms",
            quantile(&latencies, 0.5).as_secs_f64() * 1e3,
            quantile(&latencies, 0.99).as_secs_f64() * 1e3,
            quantile(&latencies, 1.0).as_secs_f64() * 1e3
        ),
        target: "(reported)".into(),
        verdict: "",
    });
    figures.push(Figure {
        name: "1. records per group commit".into(),
        value: format!("{per_commit:.1}"),
        target: "(reported)".into(),
        verdict: "",
    });
    Ok(())
}

#[derive(Default)]
struct PacedOutcome {
    /// Scheduled send → ACK read, ns.
    from_schedule: Vec<u64>,
    /// Actual send → ACK read, ns.
    service: Vec<u64>,
    /// Actual send − scheduled send (the client's own lateness), ns.
    send_lag: Vec<u64>,
    not_positive: u64,
    error: Option<String>,
}

fn paced_device(
    addr: SocketAddr,
    monitor: &Monitor,
    first: Instant,
    period: Duration,
    window: (Instant, Instant),
) -> PacedOutcome {
    let (measure_from, end) = window;
    let mut out = PacedOutcome::default();
    let mut client = match MllpClient::connect(addr) {
        Ok(c) => c,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let mut seq = 0u64;
    loop {
        let scheduled = first + period * u32::try_from(seq).unwrap_or(u32::MAX);
        if scheduled >= end {
            break;
        }
        let message = monitor.message(seq);
        // Sleep to the schedule; when behind (a slow ACK), send at once: the lateness is
        // then part of the next message's latency, as a real device would experience it.
        std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
        let sent = Instant::now();
        let reply = match client.exchange(&message) {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(format!("exchange: {e}"));
                break;
            }
        };
        let acked = Instant::now();
        if scheduled >= measure_from {
            if is_positive(&ack_code(&reply))
                && segment_field(&reply, "MSA", 2) == monitor.control_id(seq)
            {
                out.from_schedule
                    .push(nanos(acked.saturating_duration_since(scheduled)));
                out.service.push(nanos(acked - sent));
                out.send_lag
                    .push(nanos(sent.saturating_duration_since(scheduled)));
            } else {
                out.not_positive += 1;
            }
        }
        seq += 1;
    }
    out
}

fn paced(
    plan: &Plan,
    gateway: &Gateway,
    broker: &Mosquitto,
    figures: &mut Vec<Figure>,
) -> BenchResult<()> {
    let n = plan.paced_connections;
    let per_conn = plan.paced_rate_per_connection;
    let total_rate = n as u64 * u64::from(per_conn);
    println!(
        "== 2. ACK latency at a paced {total_rate} msgs/s: {n} connections x {per_conn} msgs/s on a fixed schedule, {} s warm-up + {} s measured ==",
        plan.warmup.as_secs(),
        plan.measure.as_secs()
    );
    let addr = gateway.hl7_addr();
    let period = Duration::from_secs(1) / per_conn;
    // Connections are spread evenly over one period so the offered load is smooth.
    let spread = period / u32::try_from(n.max(1)).unwrap_or(1);
    let base = Instant::now() + Duration::from_millis(200);
    let measure_from = base + plan.warmup;
    let end = measure_from + plan.measure;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let first = base + spread * u32::try_from(i).unwrap_or(0);
            std::thread::Builder::new()
                .name("bench-paced".into())
                .spawn(move || {
                    paced_device(
                        addr,
                        &Monitor::new(1000 + i),
                        first,
                        period,
                        (measure_from, end),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let cpu_before = CpuSnapshot::take(broker.pid());
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let cpu_after = CpuSnapshot::take(broker.pid());

    let mut all = PacedOutcome::default();
    for (i, t) in threads.into_iter().enumerate() {
        let o = t.join().map_err(|_| "paced client thread panicked")?;
        all.from_schedule.extend(o.from_schedule);
        all.service.extend(o.service);
        all.send_lag.extend(o.send_lag);
        all.not_positive += o.not_positive;
        if let Some(e) = o.error {
            println!("  CLIENT ERROR connection {i}: {e}");
        }
    }
    for v in [&mut all.from_schedule, &mut all.service, &mut all.send_lag] {
        v.sort_unstable();
    }
    #[allow(clippy::cast_precision_loss)]
    let achieved = all.from_schedule.len() as f64 / plan.measure.as_secs_f64();
    println!(
        "  acknowledged positively: {} ({achieved:.0} msgs/s)",
        all.from_schedule.len()
    );
    println!(
        "  latency from scheduled send to ACK: {}",
        latency_line(&all.from_schedule)
    );
    println!(
        "  latency from actual send to ACK:    {}",
        latency_line(&all.service)
    );
    println!(
        "  client send lateness (timer accuracy, included above): p99 {}, max {}",
        ms(quantile(&all.send_lag, 0.99)),
        ms(quantile(&all.send_lag, 1.0))
    );
    if all.not_positive > 0 {
        println!(
            "  WARNING: {} messages were not acknowledged positively or echoed a wrong control id",
            all.not_positive
        );
    }
    let nproc = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cpu_after.print_since(&cpu_before, nproc);
    println!();

    let p99 = quantile(&all.from_schedule, 0.99);
    figures.push(Figure {
        name: format!("2. p99 ACK latency at {total_rate} msgs/s (from schedule)"),
        value: ms(p99),
        target: "<= 5 ms".into(),
        verdict: verdict(!all.from_schedule.is_empty() && p99 <= Duration::from_millis(5)),
    });
    figures.push(Figure {
        name: "2. p50 / p99.9 / max at that rate".into(),
        value: format!(
            "{:.2} / {:.2} / {:.2} ms",
            quantile(&all.from_schedule, 0.5).as_secs_f64() * 1e3,
            quantile(&all.from_schedule, 0.999).as_secs_f64() * 1e3,
            quantile(&all.from_schedule, 1.0).as_secs_f64() * 1e3
        ),
        target: "(reported)".into(),
        verdict: "",
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3 and 4: the release binary as a child process
// ---------------------------------------------------------------------------------------

/// `target/release/wardgate` (or under `$CARGO_TARGET_DIR`), with a warning when it is
/// older than the sources it is built from.
fn release_binary() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| manifest.join("../target"), PathBuf::from);
    let binary = target.join("release/wardgate");
    let Ok(meta) = std::fs::metadata(&binary) else {
        return Err(format!(
            "{} does not exist; run `cargo build --release -p wardgate` first, then this benchmark again",
            binary.display()
        ));
    };
    let built = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let workspace = manifest.join("..");
    let newest_source = ["gateway/src", "device-adapters/src", "proto/src"]
        .iter()
        .filter_map(|d| newest_mtime(&workspace.join(d)))
        .max();
    match newest_source {
        Some(source) if source > built => println!(
            "WARNING: {} is older than the newest source file: figures 3 and 4 measure that older build; \
             run `cargo build --release -p wardgate` to refresh it\n",
            binary.display()
        ),
        _ => println!("release binary: {} (newer than every source file)\n", binary.display()),
    }
    Ok(binary)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// A `wardgate run` child process; SIGKILLed on drop if still running.
struct GatewayChild {
    child: Child,
    log: PathBuf,
    spawned_at: Instant,
}

impl GatewayChild {
    fn spawn(binary: &Path, config: &Path, log: PathBuf) -> BenchResult<GatewayChild> {
        let stderr = std::fs::File::create(&log)?;
        let spawned_at = Instant::now();
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()?;
        Ok(GatewayChild {
            child,
            log,
            spawned_at,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `addr` until it accepts (every millisecond); returns the connection and the
    /// time since spawn.
    fn wait_listening(
        &mut self,
        addr: SocketAddr,
        patience: Duration,
    ) -> BenchResult<(StdTcpStream, Duration)> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!(
                    "wardgate exited with {status} before listening:\n{}",
                    self.log_text()
                )
                .into());
            }
            if let Ok(stream) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                return Ok((stream, self.spawned_at.elapsed()));
            }
            if self.spawned_at.elapsed() > patience {
                return Err(format!(
                    "wardgate did not listen on {addr} within {patience:?}:\n{}",
                    self.log_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_for_log(&self, needle: &str, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM (clean shutdown: the spool is closed and marked clean) and wait.
    fn terminate(&mut self, patience: Duration) -> BenchResult<()> {
        // The workspace denies unsafe code, so signal through kill(1) rather than libc::kill.
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    println!("  WARNING: wardgate exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "wardgate did not stop within {patience:?} of SIGTERM:\n{}",
                    self.log_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: a crash; the spool is not marked clean.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Memory figures of a process, in kB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

impl Memory {
    fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find(|l| l.starts_with(name))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        Some(Memory {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }

    fn mb(kb: u64) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let mb = kb as f64 / 1000.0;
        mb
    }

    fn line(&self) -> String {
        format!(
            "VmRSS {:.1} MB (anon {:.1} MB, file-backed {:.1} MB), VmHWM {:.1} MB",
            Memory::mb(self.rss),
            Memory::mb(self.anon),
            Memory::mb(self.file),
            Memory::mb(self.hwm)
        )
    }
}

fn idle_memory(
    plan: &Plan,
    binary: &Path,
    pki: &TestPki,
    broker: &Mosquitto,
    work: &Path,
    figures: &mut Vec<Figure>,
) -> BenchResult<()> {
    let n = plan.idle_connections;
    println!(
        "== 3. gateway memory (release binary, child process) with {n} idle HL7 connections =="
    );
    let id = "bench-rss";
    let cert = pki.client("gw-rss", id, Validity::Current)?;
    let dir = work.join("rss");
    std::fs::create_dir_all(&dir)?;
    let setup = GatewaySetup {
        dir: dir.clone(),
        id: id.into(),
        mqtt_url: broker.url(),
        ca_file: pki.ca_file().to_path_buf(),
        cert_file: cert.cert,
        key_file: cert.key,
        hl7_port: free_port()?,
        hl7_extra: String::new(),
        extra_sections: String::new(),
    };
    let config = setup.write_config()?;
    let mut child = GatewayChild::spawn(binary, &config, dir.join("gateway.log"))?;
    let (probe, _) = child.wait_listening(setup.hl7_addr(), Duration::from_secs(20))?;
    drop(probe);
    let uplink = child.wait_for_log("uplink connected", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.pid();
    let at_rest = Memory::of(pid).ok_or("cannot read /proc/<pid>/status of the gateway")?;
    println!("  pid {pid}, uplink connected to mosquitto: {uplink}");
    println!(
        "  0 connections, 1 s after serving:                {}",
        at_rest.line()
    );

    let mut clients = (0..n)
        .map(|_| MllpClient::connect(setup.hl7_addr()))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(Duration::from_secs(2));
    let silent = Memory::of(pid).ok_or("gateway exited")?;
    println!(
        "  {n} connections open, silent, 2 s later:        {}",
        silent.line()
    );

    let mut positive = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        let monitor = Monitor::new(2000 + i);
        if is_positive(&ack_code(&c.exchange(&monitor.message(0))?)) {
            positive += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after_one = Memory::of(pid).ok_or("gateway exited")?;
    println!(
        "  {n} connections, each sent 1 message ({positive} CA), idle 2 s: {}",
        after_one.line()
    );
    drop(clients);
    child.terminate(Duration::from_secs(15))?;
    println!();

    let limit_kb = 20_000;
    figures.push(Figure {
        name: format!("3. RSS, {n} idle connections (silent)"),
        value: format!("{:.1} MB", Memory::mb(silent.rss)),
        target: "<= 20 MB".into(),
        verdict: verdict(silent.rss <= limit_kb),
    });
    figures.push(Figure {
        name: format!("3. RSS, {n} idle connections (after 1 msg each)"),
        value: format!("{:.1} MB", Memory::mb(after_one.rss)),
        target: "<= 20 MB".into(),
        verdict: verdict(after_one.rss <= limit_kb),
    });
    figures.push(Figure {
        name: "3. RSS at rest, 0 connections".into(),
        value: format!("{:.1} MB", Memory::mb(at_rest.rss)),
        target: "(reported)".into(),
        verdict: "",
    });
    Ok(())
}

/// A ~320-byte observation record body, shaped as the PHI stage produces it.
fn backlog_payload(device: &str, n: u64) -> Vec<u8> {
    let body = RecordBody::Observations(ObservationReport {
        device: DeviceIdentity {
            id: device.into(),
            application: None,
            eui64: None,
        },
        patient: Some(Pseudonym(format!(
            "p-{:032x}",
            u128::from(n % 5000).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ))),
        message_time: String::new(),
        control_id: format!("b-{n}"),
        groups: vec![ObservationGroup {
            service: CodedValue {
                code: "182777000".into(),
                text: String::new(),
                system: "SCT".into(),
            },
            observed_at: String::new(),
            observations: vec![Observation {
                code: CodedValue {
                    code: "150456".into(),
                    text: "MDC_PULS_OXIM_SAT_O2".into(),
                    system: "MDC".into(),
                },
                value: ObservationValue::Numeric((90 + n % 10).to_string()),
                units: None,
                containment: String::new(),
                status: "R".into(),
                observed_at: String::new(),
                equipment: String::new(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Writes `records` records into the spool the gateway will open, through the spool's own
/// API (so the file is exactly what a gateway that lost its uplink would have).
fn prefill_spool(config: &Config, records: usize) -> BenchResult<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.gateway.data_dir)?;
    // The key exists on a gateway that has been running; create it now so start-up does
    // not pay for it.
    PseudonymKey::load_or_create(&config.pseudonym_key_path())?;
    let spool_config = SpoolConfig {
        // The path `daemon.rs` opens.
        path: config.gateway.data_dir.join("spool.db"),
        budget_bytes: config.spool.budget_mib * 1024 * 1024,
        ttl: config.ttls(),
        max_batch: config.spool.max_batch,
    };
    let devices: Vec<String> = (0..64)
        .map(|i| format!("00112233{:08X}", 5000 + i))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(async {
        let (spool, _) = Spool::open(spool_config.clone())?;
        let mut written = 0;
        while written < records {
            let chunk = (records - written).min(4096);
            let unit = (written..written + chunk)
                .map(|i| {
                    let device = &devices[i % devices.len()];
                    Sanitized::unchecked_for_bench(
                        device.clone(),
                        Priority::Observation,
                        backlog_payload(device, i as u64),
                    )
                })
                .collect();
            spool.append_many(unit).await?;
            written += chunk;
        }
        let held: u64 = spool.stats().records.iter().sum();
        spool.close().await;
        if held != records as u64 {
            return Err(
                format!("the pre-filled spool holds {held} records, expected {records}").into(),
            );
        }
        Ok::<_, Box<dyn Error>>(())
    })?;
    #[allow(clippy::cast_precision_loss)]
    let file_mb = std::fs::metadata(&spool_config.path).map_or(0, |m| m.len()) as f64 / 1e6;
    println!(
        "  pre-filled {records} records of {} bytes (observation JSON, 64 devices) in {:.1} s; spool file {file_mb:.0} MB \
         (closed cleanly; warm in the page cache, as after a service restart)",
        backlog_payload(&devices[0], 0).len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One start: spawn, wait for the port, answer one message. Returns (accepting, first
/// positive ACK, memory then).
fn timed_start(
    binary: &Path,
    config_path: &Path,
    addr: SocketAddr,
    log: PathBuf,
    control_seq: u64,
) -> BenchResult<(GatewayChild, Duration, Duration, Option<Memory>)> {
    let mut child = GatewayChild::spawn(binary, config_path, log)?;
    let (stream, accepting) = child.wait_listening(addr, Duration::from_secs(60))?;
    let mut stream = stream;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let monitor = Monitor::new(9000);
    stream.write_all(&monitor.frame(control_seq))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let ack = loop {
        if let Some(end) = buf.windows(2).position(|w| w == [EB, CR]) {
            break buf[..end].to_vec();
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(format!(
                "gateway closed the connection before answering:\n{}",
                child.log_text()
            )
            .into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let answered = child.spawned_at.elapsed();
    let (code, echoed) = msa(&ack);
    if !is_positive(&code) || echoed != monitor.control_id(control_seq) {
        return Err(format!(
            "first message answered {code:?} (control id {echoed:?}):\n{}",
            child.log_text()
        )
        .into());
    }
    let memory = Memory::of(child.pid());
    Ok((child, accepting, answered, memory))
}

/// The gateway's own account of what it loaded (its `spool open` log line).
fn spool_open_line(log: &str) -> String {
    log.lines().find(|l| l.contains("spool open")).map_or_else(
        || "(no `spool open` line in the log)".into(),
        |l| {
            l.split_once("spool open")
                .map_or(l, |(_, r)| r)
                .trim()
                .to_owned()
        },
    )
}

#[allow(clippy::too_many_lines)]
fn backlog_start(
    plan: &Plan,
    binary: Option<&Path>,
    pki: &TestPki,
    work: &Path,
    figures: &mut Vec<Figure>,
) -> BenchResult<()> {
    let records = plan.backlog_records;
    println!("== 4. start to serving with a {records}-record backlog (broker unreachable, so the backlog stays) ==");
    let id = "bench-backlog";
    let cert = pki.client("gw-backlog", id, Validity::Current)?;
    let dir = work.join("backlog");
    std::fs::create_dir_all(&dir)?;
    // Nothing listens on this port: the uplink's connects are refused and it backs off.
    let unreachable = free_port()?;
    let setup = GatewaySetup {
        dir: dir.clone(),
        id: id.into(),
        mqtt_url: format!("mqtts://127.0.0.1:{unreachable}"),
        ca_file: pki.ca_file().to_path_buf(),
        cert_file: cert.cert,
        key_file: cert.key,
        hl7_port: free_port()?,
        hl7_extra: String::new(),
        extra_sections: String::new(),
    };
    let config_path = setup.write_config()?;
    let config = Config::load(&config_path)?;
    prefill_spool(&config, records)?;

    let Some(binary) = binary else {
        println!("  release binary missing: measuring in-process `Gateway::start` instead (NOT the binary's start-up)");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let started = Instant::now();
        let gateway = runtime.block_on(Gateway::start(config))?;
        let listening = started.elapsed();
        let mut client = MllpClient::connect(gateway.hl7_addr())?;
        let reply = client.exchange(&Monitor::new(9000).message(0))?;
        let answered = started.elapsed();
        println!(
            "  IN-PROCESS Gateway::start: listening after {}, first message answered {} after {}",
            ms(listening),
            ack_code(&reply),
            ms(answered)
        );
        runtime.block_on(gateway.shutdown());
        figures.push(Figure {
            name: format!("4. start -> first CA, {records} backlog (IN-PROCESS)"),
            value: ms(answered),
            target: "<= 1 s".into(),
            verdict: verdict(answered <= Duration::from_secs(1) && is_positive(&ack_code(&reply))),
        });
        println!();
        return Ok(());
    };

    // Three starts after a clean stop (SIGTERM), then one after a crash (SIGKILL), whose
    // spool open adds an integrity check.
    let mut clean_answered = Vec::new();
    for run in 1..=4u64 {
        let after_crash = run == 4;
        let log = dir.join(format!("gateway-{run}.log"));
        let (mut child, accepting, answered, memory) =
            timed_start(binary, &config_path, setup.hl7_addr(), log, run)?;
        let label = if after_crash {
            "after a crash (SIGKILL)"
        } else {
            "after a clean stop"
        };
        println!(
            "  start {run} ({label}): port accepting {}, first message answered CA {} after spawn; RSS then {}",
            ms(accepting),
            ms(answered),
            memory.map_or_else(|| "unknown".into(), |m| m.line())
        );
        let log_text = child.log_text();
        println!(
            "    gateway log `spool open`: {}",
            spool_open_line(&log_text)
        );
        if log_text.contains("quarantined") {
            println!("    WARNING: the gateway quarantined the spool: the backlog was NOT loaded");
        }
        if after_crash {
            figures.push(Figure {
                name: format!("4. start -> first CA, {records} backlog, after crash"),
                value: ms(answered),
                target: "(reported)".into(),
                verdict: "",
            });
            child.terminate(Duration::from_secs(30))?;
        } else {
            clean_answered.push(answered);
            if run == 3 {
                child.kill9();
            } else {
                child.terminate(Duration::from_secs(30))?;
            }
        }
    }
    clean_answered.sort_unstable();
    let worst = clean_answered.last().copied().unwrap_or(Duration::MAX);
    let median = clean_answered
        .get(clean_answered.len() / 2)
        .copied()
        .unwrap_or(Duration::MAX);
    println!(
        "  release binary, clean restarts: spawn -> first CA median {}, worst {} (port accepting included)\n",
        ms(median),
        ms(worst)
    );
    figures.push(Figure {
        name: format!("4. spawn -> first CA, {records} backlog (binary, worst of 3)"),
        value: ms(worst),
        target: "<= 1 s".into(),
        verdict: verdict(worst <= Duration::from_secs(1)),
    });
    Ok(())
}
