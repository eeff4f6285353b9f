//! 500 Modbus TCP devices polled once a second by one gateway process.
//!
//! The devices are tokio-modbus servers in a *child process* (this binary re-executed with
//! `WARDGATE_MODBUS_BENCH_SERVER=1`): 10 ports on 127.0.0.1, 50 unit ids behind each, every
//! device its own TCP connection. Each device has 10 points in two tables (7 holding-register
//! points in one read, 3 input-register points in another), values that move every second
//! (some within their deadband, some beyond it). The gateway side runs [`run_device`] per
//! device on a multi-thread tokio runtime with a sink that only counts.
//!
//! After a 5 s warm-up, for 20 s: polls/s (reads answered by the servers / 2), readings and
//! points sent to the sink per second, this process's CPU time (user + sys from
//! /proc/self/stat, as % of one core) and peak RSS (VmHWM). CPU and RSS are the gateway side
//! only; the servers' cost is in the other process.
//!
//! Run with `cargo bench -p wardgate-device-adapters --bench modbus`.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use wardgate_device_adapters::modbus::{
    run_device, DataType, LinkEvent, ModbusDeviceConfig, ModbusSink, PointConfig, Readings,
    SinkError, Table, WordOrder,
};

const DEVICES: usize = 500;
const PORTS: usize = 10;
const POLL_MS: u64 = 1_000;
const WARMUP: Duration = Duration::from_secs(5);
const MEASURE: Duration = Duration::from_secs(20);
const READS_PER_POLL: u64 = 2;
const SERVER_ENV: &str = "WARDGATE_MODBUS_BENCH_SERVER";

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        serve();
    } else {
        measure();
    }
}

// ------------------------------------------------------------------ device side (child)

/// Register contents that change with time: register `a` of unit `u` at second `t`.
#[derive(Clone)]
struct Simulated {
    started: Instant,
    requests: Arc<AtomicU64>,
}

impl Simulated {
    fn word(&self, unit: u8, address: u16) -> u16 {
        let t = self.started.elapsed().as_secs();
        let base = u64::from(unit) * 100 + u64::from(address) * 7;
        // Even addresses move by 1 per second (within a deadband of 5), odd ones by 10.
        let step = if address % 2 == 0 { 1 } else { 10 };
        ((base + t * step) % 60_000) as u16
    }
}

impl tokio_modbus::server::Service for Simulated {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let unit = req.slave;
        let words = |start: u16, count: u16| -> Result<Vec<u16>, ExceptionCode> {
            if u32::from(start) + u32::from(count) > 100 {
                return Err(ExceptionCode::IllegalDataAddress);
            }
            Ok((start..start + count).map(|a| self.word(unit, a)).collect())
        };
        std::future::ready(match req.request {
            Request::ReadHoldingRegisters(start, count) => {
                words(start, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(start, count) => {
                words(start, count).map(Response::ReadInputRegisters)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Child process: serve `PORTS` listeners; print their addresses; answer `count` lines on
/// stdin with the number of requests served; exit when stdin closes.
fn serve() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("server runtime");
    let device = Simulated {
        started: Instant::now(),
        requests: Arc::new(AtomicU64::new(0)),
    };
    let requests = device.requests.clone();
    runtime.block_on(async move {
        let mut addrs = Vec::new();
        for _ in 0..PORTS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            let device = device.clone();
            tokio::spawn(async move {
                let server = Server::new(listener);
                let on_connected = |stream, socket_addr| {
                    let device = device.clone();
                    async move {
                        accept_tcp_connection(stream, socket_addr, move |_| {
                            Ok(Some(device.clone()))
                        })
                    }
                };
                let _ = server.serve(&on_connected, |_err| {}).await;
            });
        }
        println!("PORTS {}", addrs.join(","));
        std::io::stdout().flush().expect("stdout");

        // stdin is read on a plain thread; answers go out from there too.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(line) if line.trim() == "count" => {
                        println!("COUNT {}", requests.load(Ordering::Relaxed));
                        let _ = std::io::stdout().flush();
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.await;
    });
}

// ------------------------------------------------------------------ gateway side (parent)

#[derive(Default)]
struct CountingSink {
    reports: AtomicU64,
    points: AtomicU64,
    online: AtomicU64,
    other_link_events: AtomicU64,
}

impl ModbusSink for CountingSink {
    fn readings(
        &self,
        _device_id: &str,
        readings: Readings,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        self.reports.fetch_add(1, Ordering::Relaxed);
        self.points
            .fetch_add(readings.points.len() as u64, Ordering::Relaxed);
        async { Ok(()) }
    }

    fn link(&self, _device_id: &str, event: LinkEvent) -> impl Future<Output = ()> + Send {
        if event == LinkEvent::Online {
            self.online.fetch_add(1, Ordering::Relaxed);
        } else {
            self.other_link_events.fetch_add(1, Ordering::Relaxed);
        }
        async {}
    }
}

fn point(
    name: &str,
    table: Table,
    address: u16,
    data_type: DataType,
    word_order: Option<WordOrder>,
    deadband: Option<f64>,
) -> PointConfig {
    PointConfig {
        name: name.into(),
        table,
        address,
        data_type: Some(data_type),
        word_order,
        scale: 0.1,
        offset: 0.0,
        units: Some("Cel".into()),
        deadband,
    }
}

fn device_config(address: SocketAddr, unit_id: u8) -> ModbusDeviceConfig {
    use DataType::{F32, I16, I32, U16, U32};
    let points = vec![
        point("h0", Table::Holding, 0, U16, None, Some(0.5)),
        point("h1", Table::Holding, 1, I16, None, Some(0.5)),
        point("h2", Table::Holding, 2, U32, Some(WordOrder::Big), None),
        point(
            "h4",
            Table::Holding,
            4,
            I32,
            Some(WordOrder::Little),
            Some(5.0),
        ),
        point("h6", Table::Holding, 6, F32, None, Some(1.0)),
        point("h8", Table::Holding, 8, U16, None, Some(0.5)),
        point("h9", Table::Holding, 9, U16, None, None),
        point("i0", Table::Input, 0, U16, None, Some(0.5)),
        point("i1", Table::Input, 1, F32, Some(WordOrder::Little), None),
        point("i3", Table::Input, 3, I16, None, Some(0.5)),
    ];
    ModbusDeviceConfig {
        address,
        unit_id,
        poll_interval_ms: POLL_MS,
        timeout_ms: 1_000,
        offline_after_failures: 3,
        heartbeat_secs: 60,
        reconnect_initial_ms: 1_000,
        reconnect_max_ms: 30_000,
        max_registers_per_read: 125,
        max_bits_per_read: 2_000,
        max_read_gap: 0,
        points,
    }
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_sec: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100);
    Duration::from_secs_f64(ticks as f64 / per_sec as f64)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024.0
}

fn measure() {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server process");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    from_child.read_line(&mut line).expect("ports line");
    let addrs: Vec<SocketAddr> = line
        .trim()
        .strip_prefix("PORTS ")
        .expect("PORTS line")
        .split(',')
        .map(|a| a.parse().expect("address"))
        .collect();
    assert_eq!(addrs.len(), PORTS);
    let mut served = move || -> u64 {
        writeln!(to_child, "count").expect("ask count");
        to_child.flush().expect("flush");
        let mut line = String::new();
        from_child.read_line(&mut line).expect("count line");
        line.trim()
            .strip_prefix("COUNT ")
            .and_then(|n| n.parse().ok())
            .expect("COUNT line")
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sink = Arc::new(CountingSink::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let tasks: Vec<_> = (0..DEVICES)
        .map(|i| {
            let config = device_config(addrs[i % PORTS], (i / PORTS + 1) as u8);
            runtime.spawn(run_device(
                format!("modbus-{i}"),
                config,
                sink.clone(),
                shutdown_rx.clone(),
            ))
        })
        .collect();

    std::thread::sleep(WARMUP);
    let requests_before = served();
    let reports_before = sink.reports.load(Ordering::Relaxed);
    let points_before = sink.points.load(Ordering::Relaxed);
    let cpu_before = cpu_time();
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    let cpu = cpu_time() - cpu_before;
    let elapsed = start.elapsed();
    let requests = served() - requests_before;
    let reports = sink.reports.load(Ordering::Relaxed) - reports_before;
    let points = sink.points.load(Ordering::Relaxed) - points_before;

    shutdown.send(true).expect("shutdown");
    runtime.block_on(async {
        for task in tasks {
            task.await.expect("device task").expect("device config");
        }
    });
    let rss = peak_rss_mb();
    drop(served);
    let _ = child.wait();

    let secs = elapsed.as_secs_f64();
    println!(
        "modbus: {DEVICES} devices @1s: polls/s={:.0}, cpu={:.1}% of one core, rss={:.1} MB",
        requests as f64 / READS_PER_POLL as f64 / secs,
        cpu.as_secs_f64() / secs * 100.0,
        rss,
    );
    println!(
        "  reads/s={:.0}, reports/s={:.0}, points sent/s={:.0} of {:.0} polled; online events={}, other link events={}",
        requests as f64 / secs,
        reports as f64 / secs,
        points as f64 / secs,
        requests as f64 / READS_PER_POLL as f64 / secs * 10.0,
        sink.online.load(Ordering::Relaxed),
        sink.other_link_events.load(Ordering::Relaxed),
    );
}
