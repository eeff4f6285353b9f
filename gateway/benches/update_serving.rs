//! Serving one update file to many devices at once over the agent API (issue 5): "a 1 GB
//! target to 50 devices concurrently on loopback: aggregate throughput and gateway RSS
//! (the file is streamed, never held in memory)".
//!
//! Setup (parent process): a 1 GiB file of pseudo-random bytes is written in 1 MiB pieces
//! into a temporary directory while its SHA-256 is computed (never held in memory), and
//! fsynced so no writeback runs during the measurement; it stays in the page cache, so the
//! figures are of serving, not of the disk. A generated PKI gives the server certificate.
//!
//! The server runs in a **child process** (this binary re-executed), so its memory figures
//! are the gateway side's alone: the real agent API ([`wardgate::agent_api::serve`]) with
//! the real update service ([`RolloutUpdates`] over [`DurableRollouts`] in a SQLite file,
//! a device [`Registry`] and the staged file as a [`StagedTarget`]), 50 token devices, all
//! online, in one group, and one assignment for the group with `wave_size` 50. The child
//! prints its address and serves until its stdin closes.
//!
//! The parent runs 50 HTTPS clients (hyper's HTTP/1.1 client over tokio-rustls, as the
//! agent API tests do), one connection and one device each: `GET /v1/devices/{id}/updates`
//! (which admits the device to the wave, durably), then, all together, `GET` the offer's
//! `content_url` for the whole file. Every client checks the length; one (or all, with
//! `WARDGATE_BENCH_UPDATE_VERIFY_ALL=1`) hashes what it received, compares it with the
//! staged SHA-256 and reports `downloaded`. Meanwhile the parent samples the child's
//! `VmRSS` from `/proc/<pid>/status` every 50 ms, and reads `VmHWM` and its CPU time at
//! the end.
//!
//! Runs:
//! 1. **Throttles at their maximum**: the largest values the configuration accepts
//!    (1 GiB/s per device, 4 GiB/s − 1 in total). governor keeps time in whole
//!    nanoseconds per cell (at least 1) and the throttles count one cell per byte, so
//!    any throttle set above 1e9 bytes/s acts as exactly 1.0 GB/s once its burst (one
//!    configured second, 4.3 GB for the total) is spent: the run prints the rate over
//!    the middle half of the transfer as well as the average, and if the former sits at
//!    1,000 MB/s the throttle, not the serving path, is the limit.
//! 2. **Default throttles** (1 MiB/s per device, 4 MiB/s in total): 50 GiB would take
//!    3.6 hours, so the run counts the bytes of a short window after a warm-up (which
//!    excludes governor's one-second burst): 50 devices must share ≈ 4 MiB/s, and then
//!    3 devices alone (3 MiB/s < the total) must each get ≈ 1 MiB/s.
//! 3. **Reference**, if `nginx` is installed: the same file from nginx (its own worker
//!    processes, `sendfile on`) to the same 50 clients, once over TLS with the same server
//!    certificate (like for like: no kernel TLS, so nginx encrypts in user space too) and
//!    once over plain HTTP (sendfile: the loopback ceiling).
//!
//! Caveat: the clients run on the same two cores as the server, and they decrypt
//! everything the server encrypts, so every figure is a lower bound on what the server
//! alone sustains; compare the servers' ratios within one run.
//!
//! `--quick` (or `WARDGATE_BENCH_UPDATE_QUICK=1`): a 64 MiB file and shorter windows, for a
//! fast sanity run. Prints lines starting `update_serving:`.

#![allow(clippy::unwrap_used)] // Benchmarks may unwrap, like tests.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Barrier};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use wardgate::agent_api::updates::{system_now, RolloutUpdates, UpdatesBackend};
use wardgate::agent_api::{
    serve, AgentApiConfig, AgentApiRuntime, AgentAuth, AgentBackend, AgentDevice, BackendError,
    StateReport,
};
use wardgate::devices::{Declaration, Evidence, Registry};
use wardgate::updates::assignment::Assignment;
use wardgate::updates::store::{DurableRollouts, FILE_NAME};
use wardgate::updates::StagedTarget;
use wardgate_proto::Measurement;
use wardgate_tests::certs::TestPki;

/// Set in the child process that runs the agent API.
const SERVER_CHILD: &str = "WARDGATE_BENCH_UPDATE_SERVER";
const DEVICES: usize = 50;
const GROUP: &str = "pumps";
const TARGET_NAME: &str = "pumps/pump-fw.bin";
/// The staged file's name on disk (also nginx's URL path).
const FILE: &str = "pump-fw.bin";
const ASSIGNMENT_ID: &str = "pump-fw-bench";
/// The largest throttles the configuration accepts (`AgentApiConfig::validate`).
const UNTHROTTLED_PER_DEVICE: u32 = 1024 * 1024 * 1024;
const UNTHROTTLED_TOTAL: u32 = u32::MAX;
/// The configuration's defaults.
const DEFAULT_PER_DEVICE: u32 = 1024 * 1024;
const DEFAULT_TOTAL: u32 = 4 * 1024 * 1024;
/// Devices in the per-device throttle check (together below the total cap).
const PER_DEVICE_CHECK: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;

fn device_id(index: usize) -> String {
    format!("pump-{index:02}")
}

/// The device's bearer token (what its token file holds).
fn token(device: &str) -> String {
    hex::encode(Sha256::digest(format!("update-bench:{device}").as_bytes()))
}

struct Scale {
    file_bytes: u64,
    warmup: Duration,
    window: Duration,
}

fn main() {
    if std::env::var_os(SERVER_CHILD).is_some() {
        serve_child();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var_os("WARDGATE_BENCH_UPDATE_QUICK").is_some();
    let verify_all = std::env::var_os("WARDGATE_BENCH_UPDATE_VERIFY_ALL").is_some();
    let scale = if quick {
        Scale {
            file_bytes: 64 << 20,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(3),
        }
    } else {
        Scale {
            file_bytes: 1 << 30,
            warmup: Duration::from_secs(2),
            window: Duration::from_secs(10),
        }
    };

    let work = tempfile::Builder::new()
        .prefix("wardgate-update-bench")
        .tempdir()
        .unwrap();
    let files = work.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let file = files.join(FILE);
    let started = Instant::now();
    let sha256 = write_pseudo_random(&file, scale.file_bytes);
    println!(
        "update_serving: staged {:.1} MiB of pseudo-random bytes in {:.1} s (written, hashed, fsynced; page-cached while served)",
        scale.file_bytes as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    let pki = TestPki::generate("update-bench").unwrap();
    let tls = client_tls(&pki);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = Expected {
        length: scale.file_bytes,
        sha256,
    };

    // 1. Throttles at the largest values the configuration accepts.
    let ceiling = |rate: u32| 1e9 / ((1e9 / f64::from(rate)).floor().max(1.0)) / 1e6;
    println!(
        "update_serving: throttles set to {:.0} MB/s per device and {:.0} MB/s in total (the configuration's maxima); governor counts one cell per byte at a whole number of ns per cell (at least 1), so they act as {:.0} and {:.0} MB/s after a burst of one configured second",
        f64::from(UNTHROTTLED_PER_DEVICE) / 1e6,
        f64::from(UNTHROTTLED_TOTAL) / 1e6,
        ceiling(UNTHROTTLED_PER_DEVICE),
        ceiling(UNTHROTTLED_TOTAL)
    );
    let server = WardgateChild::spawn(
        &pki,
        &file,
        &sha256,
        &work.path().join("fast"),
        UNTHROTTLED_PER_DEVICE,
        UNTHROTTLED_TOTAL,
    );
    let endpoint = Endpoint {
        addr: server.addr,
        tls: Some(Arc::clone(&tls)),
        wardgate: true,
    };
    let idle_kib = rss_kib(&[server.pid()]);
    let run = runtime.block_on(download_all(&endpoint, &[server.pid()], target, verify_all));
    let cpu = cpu_seconds(&[server.pid()]);
    let hwm = status_kib(server.pid(), "VmHWM:");
    let stats = server.stop();
    println!(
        "update_serving: wardgate ({}), {DEVICES} devices × {:.0} MiB, throttles at their maximum: {:.0} MB/s aggregate ({:.0} MB/s over the middle half), {:.1} GB in {:.2} s",
        run.cipher,
        scale.file_bytes as f64 / MIB,
        run.aggregate_mb_s(),
        run.steady_mb_s(),
        run.total_bytes() as f64 / 1e9,
        run.wall.as_secs_f64()
    );
    run.print_per_device("wardgate");
    println!(
        "update_serving: wardgate server RSS: {} idle before, {} max during the transfer (mean {}; up to {} threads), VmHWM {} at the end; server CPU {:.1} s ({:.2} s per GB served)",
        mib(idle_kib),
        mib(Some(run.rss.max_kib)),
        mib(Some(run.rss.mean_kib())),
        run.rss.max_threads,
        mib(hwm),
        cpu.unwrap_or(f64::NAN),
        cpu.unwrap_or(f64::NAN) / (run.total_bytes() as f64 / 1e9)
    );
    println!(
        "update_serving: {} of {DEVICES} downloads hashed and matched the staged SHA-256 and reported `downloaded`; offers (admissions committed) answered within {:.0} ms; server: {stats}",
        run.verified,
        run.offers.as_secs_f64() * 1e3
    );

    // 2. Default throttles.
    let total_at_default = DEVICES as f64 * scale.file_bytes as f64 / f64::from(DEFAULT_TOTAL);
    println!(
        "update_serving: at the default total cap ({} MiB/s) the same {:.1} GiB would take {:.0} s ({:.1} h); each device would get {:.0} KiB/s",
        DEFAULT_TOTAL >> 20,
        DEVICES as f64 * scale.file_bytes as f64 / (MIB * 1024.0),
        total_at_default,
        total_at_default / 3600.0,
        f64::from(DEFAULT_TOTAL) / DEVICES as f64 / 1024.0
    );
    let server = WardgateChild::spawn(
        &pki,
        &file,
        &sha256,
        &work.path().join("throttled"),
        DEFAULT_PER_DEVICE,
        DEFAULT_TOTAL,
    );
    let endpoint = Endpoint {
        addr: server.addr,
        tls: Some(Arc::clone(&tls)),
        wardgate: true,
    };
    let all = runtime.block_on(download_window(&endpoint, DEVICES, &scale));
    std::thread::sleep(Duration::from_secs(1));
    let few = runtime.block_on(download_window(&endpoint, PER_DEVICE_CHECK, &scale));
    let hwm = status_kib(server.pid(), "VmHWM:");
    server.stop();
    println!(
        "update_serving: default throttles, {DEVICES} devices, {} s after {} s warm-up: {:.2} MiB/s aggregate (cap {} MiB/s); per device {}",
        scale.window.as_secs(),
        scale.warmup.as_secs(),
        all.aggregate / MIB,
        DEFAULT_TOTAL >> 20,
        all.spread()
    );
    println!(
        "update_serving: default throttles, {PER_DEVICE_CHECK} devices: {:.2} MiB/s aggregate (per-device cap {} KiB/s); per device {}; server VmHWM {}",
        few.aggregate / MIB,
        DEFAULT_PER_DEVICE >> 10,
        few.spread(),
        mib(hwm)
    );

    // 3. nginx on the same file, if installed.
    match NginxChild::spawn(&pki, &files, &work.path().join("nginx")) {
        Err(reason) => println!("update_serving: nginx reference skipped ({reason})"),
        Ok(nginx) => {
            for (label, addr, tls) in [
                ("TLS", nginx.tls_addr, Some(Arc::clone(&tls))),
                ("plain HTTP, sendfile", nginx.plain_addr, None),
            ] {
                let endpoint = Endpoint {
                    addr,
                    tls,
                    wardgate: false,
                };
                let pids = nginx.pids();
                let cpu_before = cpu_seconds(&pids).unwrap_or(0.0);
                let run = runtime.block_on(download_all(&endpoint, &pids, target, false));
                let cpu = cpu_seconds(&pids).map(|c| c - cpu_before);
                println!(
                    "update_serving: nginx {} ({label}{}), same clients: {:.0} MB/s aggregate ({:.0} MB/s over the middle half), {:.1} GB in {:.2} s; RSS of master + {} workers (summed) max {} during; server CPU {:.1} s ({:.2} s per GB)",
                    nginx.version,
                    if run.cipher.is_empty() { String::new() } else { format!(", {}", run.cipher) },
                    run.aggregate_mb_s(),
                    run.steady_mb_s(),
                    run.total_bytes() as f64 / 1e9,
                    run.wall.as_secs_f64(),
                    pids.len() - 1,
                    mib(Some(run.rss.max_kib)),
                    cpu.unwrap_or(f64::NAN),
                    cpu.unwrap_or(f64::NAN) / (run.total_bytes() as f64 / 1e9)
                );
                run.print_per_device("nginx");
            }
            nginx.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The staged file.

/// Writes `length` pseudo-random bytes to `path` in 1 MiB pieces, fsyncs, and returns
/// their SHA-256.
fn write_pseudo_random(path: &Path, length: u64) -> [u8; 32] {
    let mut file = std::fs::File::create(path).unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed_f00d);
    let mut piece = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut left = length;
    while left > 0 {
        let n = usize::try_from(left.min(piece.len() as u64)).unwrap();
        rng.fill(&mut piece[..n]);
        hasher.update(&piece[..n]);
        file.write_all(&piece[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hasher.finalize().into()
}

// ---------------------------------------------------------------------------------------
// The server child.

/// The agent API's backend: the real update service, clinical routes unused.
struct UpdateOnlyBackend {
    updates: Arc<RolloutUpdates>,
}

impl AgentBackend for UpdateOnlyBackend {
    async fn report_state(&self, _: &str, _: StateReport) -> Result<(), BackendError> {
        Ok(())
    }
    async fn telemetry(&self, _: &str, _: Vec<Measurement>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn logs(&self, _: &str, _: String, _: Vec<String>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn settings(&self, _: &str) -> Result<serde_json::Map<String, Value>, BackendError> {
        Ok(serde_json::Map::new())
    }
    fn updates(&self) -> Option<Arc<dyn UpdatesBackend>> {
        Some(Arc::clone(&self.updates) as Arc<dyn UpdatesBackend>)
    }
}

/// The child: `<cert> <key> <file> <sha256 hex> <work dir> <per device> <total>`.
fn serve_child() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, file, sha256, work, per_device, total]: [String; 7] = args.try_into().unwrap();
    let work = PathBuf::from(work);
    std::fs::create_dir_all(&work).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let staged = StagedTarget {
            name: TARGET_NAME.into(),
            length: std::fs::metadata(&file).unwrap().len(),
            path: PathBuf::from(file),
            sha256: hex::decode(sha256).unwrap().try_into().unwrap(),
        };
        let ids: Vec<String> = (0..DEVICES).map(device_id).collect();
        let mut devices = Vec::new();
        for id in &ids {
            let token_file = work.join(format!("{id}.token"));
            std::fs::write(&token_file, token(id)).unwrap();
            devices.push(AgentDevice {
                id: id.clone(),
                auth: AgentAuth::Token { token_file },
            });
        }
        let config = AgentApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            server_cert: cert.into(),
            server_key: key.into(),
            device_ca: None,
            max_body_bytes: 4096,
            rate_per_device_per_sec: 1000,
            rate_burst: 1000,
            max_connections: 256,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_timeout_secs: 30,
            shutdown_grace_secs: 10,
            update_download_bytes_per_sec_per_device: per_device.parse().unwrap(),
            update_download_bytes_per_sec_total: total.parse().unwrap(),
        };
        let api = AgentApiRuntime::load(&config, &devices).unwrap();
        let stats = api.stats();

        let (registry, _transitions) = Registry::new(Arc::new(wardgate::devices::unix_ms));
        registry.apply(
            ids.iter()
                .map(|id| Declaration {
                    id: id.clone(),
                    kind: "pump".into(),
                    group: GROUP.into(),
                    adapters: vec!["agent"],
                    hl7_application: None,
                    dicom_ae_title: None,
                    offline_after: None,
                })
                .collect(),
        );
        for id in &ids {
            registry.evidence(id, &Evidence::Reachable);
        }
        let assignment = Assignment::parse(
            serde_json::json!({
                "id": ASSIGNMENT_ID,
                "target": TARGET_NAME,
                "devices": {"group": GROUP},
                "policy": {"required": true, "wave_size": DEVICES, "failure_threshold": 5}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let now_ms = wardgate::devices::unix_ms();
        let mut rollouts = DurableRollouts::open(&work.join(FILE_NAME), now_ms).unwrap();
        rollouts.add(assignment, ids.clone(), now_ms).unwrap();
        let updates = Arc::new(RolloutUpdates::new(
            Arc::new(Mutex::new(rollouts)),
            registry,
            Arc::new(move |name: &str| (name == TARGET_NAME).then(|| staged.clone())),
            None,
            system_now(),
        ));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            api,
            Arc::new(UpdateOnlyBackend { updates }),
            shutdown_rx,
        ));
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .unwrap()
            .unwrap();
        shutdown.send(true).unwrap();
        server.await.unwrap().unwrap();
        println!(
            "connections accepted {}, requests accepted {}, rate-limited {}, unavailable {}",
            stats.connections_accepted.load(Ordering::Relaxed),
            stats.requests_accepted.load(Ordering::Relaxed),
            stats.requests_rate_limited.load(Ordering::Relaxed),
            stats.requests_unavailable.load(Ordering::Relaxed)
        );
    });
}

/// The agent API running in a child process.
struct WardgateChild {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    addr: SocketAddr,
}

impl WardgateChild {
    fn spawn(
        pki: &TestPki,
        file: &Path,
        sha256: &[u8; 32],
        work: &Path,
        per_device: u32,
        total: u32,
    ) -> WardgateChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_CHILD, "1")
            .arg(&pki.server().cert)
            .arg(&pki.server().key)
            .arg(file)
            .arg(hex::encode(sha256))
            .arg(work)
            .arg(per_device.to_string())
            .arg(total.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("the server child said {line:?}"))
            .parse()
            .unwrap();
        WardgateChild {
            child,
            stdout,
            addr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes the child's stdin (it shuts down gracefully) and returns its last line.
    fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        let mut last = String::new();
        self.stdout.read_line(&mut last).unwrap();
        assert!(self.child.wait().unwrap().success());
        last.trim().to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// nginx as the reference server.

struct NginxChild {
    child: Child,
    version: String,
    tls_addr: SocketAddr,
    plain_addr: SocketAddr,
}

/// A port free now on 127.0.0.1 (for nginx's configuration).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl NginxChild {
    fn spawn(pki: &TestPki, root: &Path, dir: &Path) -> Result<NginxChild, String> {
        let version = Command::new("nginx")
            .arg("-v")
            .output()
            .map_err(|e| format!("nginx: {e}"))?;
        let version = String::from_utf8_lossy(&version.stderr)
            .trim()
            .trim_start_matches("nginx version: ")
            .to_owned();
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let (tls_addr, plain_addr) = (free_port(), free_port());
        let d = dir.display();
        // `user root` only matters when run as root: the temporary directory is 0700.
        let conf = format!(
            "user root;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 120s;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  types {{ }}\n  default_type application/octet-stream;\n\
               server {{ listen {tls_addr} ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate {}; ssl_certificate_key {}; root {}; }}\n\
               server {{ listen {plain_addr}; root {}; }}\n}}\n",
            pki.server().cert.display(),
            pki.server().key.display(),
            root.display(),
            root.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off;")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nginx: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(tls_addr).is_err()
            || std::net::TcpStream::connect(plain_addr).is_err()
        {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(format!("did not start: {}", log.trim()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let nginx = NginxChild {
            child,
            version,
            tls_addr,
            plain_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while nginx.pids().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    fn stop(mut self) {
        // SIGQUIT: graceful stop of the master and its workers (through kill(1): the
        // workspace denies unsafe code).
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

fn client_tls(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Where the clients download from.
struct Endpoint {
    addr: SocketAddr,
    /// `None`: plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The agent API (bearer token, offers first) rather than a plain file server.
    wardgate: bool,
}

#[derive(Clone, Copy)]
struct Expected {
    length: u64,
    sha256: [u8; 32],
}

/// One keep-alive connection of one device.
struct Connection {
    sender: SendRequest<Body>,
    driver: JoinHandle<()>,
    device: String,
    cipher: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn handshake<S>(io: S) -> (SendRequest<Body>, JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

impl Connection {
    async fn open(endpoint: &Endpoint, device: String) -> Connection {
        let tcp = TcpStream::connect(endpoint.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, driver, cipher) = match &endpoint.tls {
            Some(tls) => {
                let stream = TlsConnector::from(Arc::clone(tls))
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                let session = stream.get_ref().1;
                let cipher = match (
                    session.protocol_version(),
                    session.negotiated_cipher_suite(),
                ) {
                    (Some(version), Some(suite)) => format!("{version:?}, {:?}", suite.suite()),
                    _ => "TLS".to_owned(),
                };
                let (sender, driver) = handshake(stream).await;
                (sender, driver, cipher)
            }
            None => {
                let (sender, driver) = handshake(tcp).await;
                (sender, driver, String::new())
            }
        };
        Connection {
            sender,
            driver,
            device,
            cipher,
        }
    }

    fn request(&self, method: Method, path: &str, body: Option<Value>) -> Request<Body> {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("authorization", format!("Bearer {}", token(&self.device)));
        match body {
            Some(v) => builder
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    async fn send(&mut self, request: Request<Body>) -> hyper::Response<hyper::body::Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(request).await.unwrap()
    }

    /// Asks the agent API for the device's offers (admitting it to the wave) and returns
    /// the content URL, after checking the offer describes the staged file.
    async fn offer(&mut self, expected: Expected) -> String {
        let path = format!("/v1/devices/{}/updates", self.device);
        let response = self.send(self.request(Method::GET, &path, None)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 16)
            .await
            .unwrap();
        let offers: Value = serde_json::from_slice(&body).unwrap();
        let offer = &offers["offers"][0];
        assert_eq!(offer["assignment_id"], ASSIGNMENT_ID, "{offers}");
        assert_eq!(offer["length"].as_u64(), Some(expected.length));
        assert_eq!(offer["sha256"], hex::encode(expected.sha256));
        offer["content_url"].as_str().unwrap().to_owned()
    }

    /// Reports `downloaded` for the assignment (answered once durable).
    async fn report_downloaded(&mut self) {
        let path = format!("/v1/devices/{}/updates/{ASSIGNMENT_ID}/status", self.device);
        let request = self.request(
            Method::POST,
            &path,
            Some(serde_json::json!({"state": "downloaded"})),
        );
        assert_eq!(self.send(request).await.status(), StatusCode::OK);
    }
}

/// One device's whole download.
struct Download {
    bytes: u64,
    started: Instant,
    /// When the response head arrived.
    answered: Instant,
    finished: Instant,
    verified: bool,
}

/// Samples of the servers' summed `VmRSS`.
#[derive(Default)]
struct RssSamples {
    /// `(when, bytes received by all clients so far)`, every 50 ms.
    progress: Vec<(Instant, u64)>,
    max_kib: u64,
    /// Most threads seen (tokio's workers and its blocking pool, which file reads use).
    max_threads: u64,
    sum_kib: u64,
    count: u64,
}

impl RssSamples {
    fn mean_kib(&self) -> u64 {
        self.sum_kib / self.count.max(1)
    }
}

/// Samples the summed `VmRSS` of `pids` every 50 ms until told to stop.
fn sample_rss(
    pids: Vec<u32>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<RssSamples> {
    std::thread::spawn(move || {
        let mut samples = RssSamples::default();
        while !stop.load(Ordering::Relaxed) {
            samples
                .progress
                .push((Instant::now(), received.load(Ordering::Relaxed)));
            if let Some(kib) = rss_kib(&pids) {
                samples.max_kib = samples.max_kib.max(kib);
                samples.sum_kib += kib;
                samples.count += 1;
            }
            let threads: Option<u64> = pids.iter().map(|&pid| status_kib(pid, "Threads:")).sum();
            samples.max_threads = samples.max_threads.max(threads.unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        samples
    })
}

struct FullRun {
    downloads: Vec<Download>,
    wall: Duration,
    /// The slowest answer to `GET .../updates` (which admits the device durably).
    offers: Duration,
    verified: usize,
    cipher: String,
    rss: RssSamples,
}

impl FullRun {
    fn total_bytes(&self) -> u64 {
        self.downloads.iter().map(|d| d.bytes).sum()
    }

    fn aggregate_mb_s(&self) -> f64 {
        self.total_bytes() as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// MB/s over the middle half of the run (after any initial burst, before the tail).
    fn steady_mb_s(&self) -> f64 {
        let first = self.downloads.iter().map(|d| d.started).min().unwrap();
        let at = |fraction: f64| {
            let when = first + self.wall.mul_f64(fraction);
            *self
                .rss
                .progress
                .iter()
                .find(|(t, _)| *t >= when)
                .unwrap_or(self.rss.progress.last().unwrap())
        };
        let ((t0, b0), (t1, b1)) = (at(0.25), at(0.75));
        (b1 - b0) as f64 / 1e6 / (t1 - t0).as_secs_f64()
    }

    fn print_per_device(&self, server: &str) {
        let mut rates: Vec<f64> = self
            .downloads
            .iter()
            .map(|d| d.bytes as f64 / 1e6 / (d.finished - d.started).as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let mut heads: Vec<f64> = self
            .downloads
            .iter()
            .map(|d| (d.answered - d.started).as_secs_f64() * 1e3)
            .collect();
        heads.sort_by(f64::total_cmp);
        let n = rates.len();
        println!(
            "update_serving: {server} per device: min {:.1}, median {:.1}, max {:.1} MB/s; response head after min {:.1}, median {:.1}, max {:.1} ms",
            rates[0],
            rates[n / 2],
            rates[n - 1],
            heads[0],
            heads[n / 2],
            heads[n - 1]
        );
    }
}

/// Every device downloads the whole file at once; `pids` are the server's processes.
async fn download_all(
    endpoint: &Endpoint,
    pids: &[u32],
    expected: Expected,
    verify_all: bool,
) -> FullRun {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sampler = sample_rss(pids.to_vec(), Arc::clone(&received), Arc::clone(&stop));
    let ready = Arc::new(Barrier::new(DEVICES + 1));
    let mut tasks = Vec::new();
    for index in 0..DEVICES {
        let mut connection = Connection::open(endpoint, device_id(index)).await;
        let wardgate = endpoint.wardgate;
        let ready = Arc::clone(&ready);
        let verify = verify_all || index == 0;
        let received = Arc::clone(&received);
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            let path = if wardgate {
                connection.offer(expected).await
            } else {
                format!("/{FILE}")
            };
            let offer = asked.elapsed();
            ready.wait().await;
            let started = Instant::now();
            let response = connection
                .send(connection.request(Method::GET, &path, None))
                .await;
            let answered = Instant::now();
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = Body::new(response.into_body()).into_data_stream();
            let mut hasher = verify.then(Sha256::new);
            let mut bytes = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap();
                bytes += chunk.len() as u64;
                received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
            }
            let finished = Instant::now();
            assert_eq!(bytes, expected.length, "{}", connection.device);
            let verified = match hasher {
                Some(h) => {
                    assert_eq!(<[u8; 32]>::from(h.finalize()), expected.sha256);
                    if wardgate {
                        connection.report_downloaded().await;
                    }
                    true
                }
                None => false,
            };
            (
                Download {
                    bytes,
                    started,
                    answered,
                    finished,
                    verified,
                },
                connection.cipher.clone(),
                offer,
            )
        }));
    }
    ready.wait().await;
    let mut downloads = Vec::new();
    let mut cipher = String::new();
    let mut offers = Duration::ZERO;
    for task in tasks {
        let (download, suite, offer) = task.await.unwrap();
        downloads.push(download);
        cipher = suite;
        offers = offers.max(offer);
    }
    stop.store(true, Ordering::Relaxed);
    let rss = sampler.join().unwrap();
    let first = downloads.iter().map(|d| d.started).min().unwrap();
    let last = downloads.iter().map(|d| d.finished).max().unwrap();
    FullRun {
        verified: downloads.iter().filter(|d| d.verified).count(),
        wall: last - first,
        downloads,
        offers,
        cipher,
        rss,
    }
}

/// Bytes per second received in a window, in all and per device.
struct WindowRun {
    aggregate: f64,
    /// Per device, ascending.
    per_device: Vec<f64>,
}

impl WindowRun {
    /// `min–max (median m) KiB/s`, and how many devices received nothing.
    fn spread(&self) -> String {
        let kib = |i: usize| self.per_device[i] / 1024.0;
        let n = self.per_device.len();
        let starved = self.per_device.iter().filter(|r| **r == 0.0).count();
        format!(
            "{:.0}–{:.0} KiB/s (median {:.0}); {starved} of {n} received nothing in the window",
            kib(0),
            kib(n - 1),
            kib(n / 2)
        )
    }
}

/// The first `devices` devices download at once; counts what arrives in
/// `scale.window` after `scale.warmup`, then hangs up.
async fn download_window(endpoint: &Endpoint, devices: usize, scale: &Scale) -> WindowRun {
    let ready = Arc::new(Barrier::new(devices));
    let (warmup, window) = (scale.warmup, scale.window);
    let mut tasks = Vec::new();
    for index in 0..devices {
        let mut connection = Connection::open(endpoint, device_id(index)).await;
        let ready = Arc::clone(&ready);
        tasks.push(tokio::spawn(async move {
            let path = format!(
                "/v1/devices/{}/updates/{ASSIGNMENT_ID}/content",
                connection.device
            );
            // Admits the device (the content route serves admitted devices only).
            let listed = connection
                .send(connection.request(
                    Method::GET,
                    &format!("/v1/devices/{}/updates", connection.device),
                    None,
                ))
                .await;
            assert_eq!(listed.status(), StatusCode::OK);
            axum::body::to_bytes(Body::new(listed.into_body()), 1 << 16)
                .await
                .unwrap();
            ready.wait().await;
            let start = tokio::time::Instant::now();
            let (from, until) = (start + warmup, start + warmup + window);
            let response = connection
                .send(connection.request(Method::GET, &path, None))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = Body::new(response.into_body()).into_data_stream();
            let mut counted = 0u64;
            while let Ok(Some(chunk)) = tokio::time::timeout_at(until, body.next()).await {
                if tokio::time::Instant::now() >= from {
                    counted += chunk.unwrap().len() as u64;
                }
            }
            // Hangs up mid-file, like a device that goes away (the connection drops).
            drop(body);
            drop(connection);
            counted
        }));
    }
    let mut per_device = Vec::new();
    for task in tasks {
        per_device.push(task.await.unwrap() as f64 / window.as_secs_f64());
    }
    per_device.sort_by(f64::total_cmp);
    WindowRun {
        aggregate: per_device.iter().sum(),
        per_device,
    }
}

// ---------------------------------------------------------------------------------------
// /proc.

/// A `<field> <n> kB` line of `/proc/<pid>/status`, in KiB (or a `<field> <n>` count).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The summed `VmRSS` of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| status_kib(pid, "VmRSS:")).sum()
}

/// The summed user + system CPU time of `pids`, in seconds.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0);
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3,
        // utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks;
    }
    Some(total)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}
