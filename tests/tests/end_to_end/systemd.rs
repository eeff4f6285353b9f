//! systemd integration of the real binary, with a test standing in for the service
//! manager: `READY=1` comes only once the HL7 port accepts, `WATCHDOG=1` keeps coming
//! every half `$WATCHDOG_USEC` while the gateway is healthy (and never for a watchdog
//! meant for another process), `STOPPING=1` comes on SIGTERM before a clean exit, and the
//! client key is read from `$CREDENTIALS_DIRECTORY` (`key_file = "credential:…"`) — the
//! records reach the cloud over mTLS with it.

use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wardgate_proto::RecordBody;
use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::{binary, GatewaySetup};
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::{records, Scenario, PATIENCE};

/// The service manager's end of `$NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// The next datagram's lines, or `None` after `wait`.
    fn next(&self, wait: Duration) -> Option<Vec<String>> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Waits up to `wait` for a datagram holding `line`; returns every datagram seen.
    fn wait_for(&self, line: &str, wait: Duration) -> (bool, Vec<Vec<String>>) {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = self.next(left.max(Duration::from_millis(1))) else {
                break;
            };
            let found = msg.iter().any(|l| l == line);
            seen.push(msg);
            if found {
                return (true, seen);
            }
        }
        (false, seen)
    }
}

/// Starts `wardgate run` as systemd would: `NOTIFY_SOCKET`, `CREDENTIALS_DIRECTORY` and
/// the watchdog variables in its environment.
fn spawn(
    setup: &GatewaySetup,
    notify: &NotifySocket,
    creds: &Path,
    watchdog: &[(&str, &str)],
) -> (Child, PathBuf) {
    let config = setup.write_config().unwrap();
    let log = setup.dir.join(format!("gateway-{}.log", watchdog.len()));
    let mut cmd = Command::new(binary().unwrap());
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("CREDENTIALS_DIRECTORY", creds)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in watchdog {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), log)
}

fn sigterm_and_wait(child: &mut Child, log: &Path) -> std::process::ExitStatus {
    // The workspace denies unsafe code, so signal through kill(1) rather than libc::kill.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no exit within 20 s of SIGTERM:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(seen: &[Vec<String>], line: &str) -> usize {
    seen.iter().filter(|m| m.iter().any(|l| l == line)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_watchdog_stop_and_credentials_under_a_stand_in_service_manager() {
    let mut s = Scenario::start("systemd").await.unwrap();
    // The client key comes in as a systemd credential, not as a path.
    let creds = s.work.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(&s.setup.key_file, creds.join("gateway.key")).unwrap();
    s.setup.key_file = PathBuf::from("credential:gateway.key");
    let notify = NotifySocket::bind(s.work.path());

    // 1 s watchdog: pings every 500 ms while healthy.
    let (mut child, log) = spawn(&s.setup, &notify, &creds, &[("WATCHDOG_USEC", "1000000")]);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let (ready, before) = notify.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready,
        "no READY=1 within 20 s; got {before:?}\n{}",
        log_text()
    );
    // READY=1 means serving: the port accepts at once, no retry needed.
    TcpStream::connect_timeout(&s.setup.hl7_addr(), Duration::from_secs(1))
        .expect("READY=1 was sent before the HL7 port accepted connections");
    assert_eq!(
        count(&before, "WATCHDOG=1"),
        0,
        "pinged before READY=1: {before:?}"
    );
    let ready_msg = before.last().unwrap();
    assert!(
        ready_msg
            .iter()
            .any(|l| l.starts_with("STATUS=serving HL7 on")),
        "{ready_msg:?}"
    );

    // Devices are served while the watchdog is fed, and the uplink reaches the cloud
    // with the key read from the credential.
    let acked = tokio::task::spawn_blocking({
        let addr = s.setup.hl7_addr();
        move || {
            run_device(addr, 5, Duration::from_secs(30), |seq| {
                let id = format!("sd-{seq}");
                (id.clone(), pcd01_plain("00AA00AA00AA00AB", &id, 96))
            })
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(acked.len(), 5);
    s.cloud
        .wait_until(PATIENCE, "5 observation records over mTLS", |m| {
            records(m)
                .iter()
                .filter(|r| matches!(r.body, RecordBody::Observations(_)))
                .count()
                >= 5
        })
        .await
        .unwrap();

    // Over 3 s, about six pings; at least four, however loaded the machine.
    let window_start = Instant::now();
    let mut window = Vec::new();
    while let Some(left) = Duration::from_secs(3).checked_sub(window_start.elapsed()) {
        match notify.next(left.max(Duration::from_millis(1))) {
            Some(msg) => window.push(msg),
            None => break,
        }
    }
    let pings = count(&window, "WATCHDOG=1");
    assert!(
        pings >= 4,
        "{pings} WATCHDOG=1 in 3 s with a 1 s watchdog: {window:?}"
    );
    assert!(
        pings <= 8,
        "{pings} WATCHDOG=1 in 3 s: pinging faster than every 500 ms"
    );

    let status = sigterm_and_wait(&mut child, &log);
    let (stopping, _) = notify.wait_for("STOPPING=1", Duration::from_secs(1));
    assert!(stopping, "no STOPPING=1 after SIGTERM\n{}", log_text());
    assert!(
        status.success(),
        "exit {status} after SIGTERM\n{}",
        log_text()
    );
    assert!(
        log_text().contains("systemd watchdog enabled"),
        "{}",
        log_text()
    );
}

/// A gateway set up with placeholder credentials and no broker: the uplink retries in
/// the background, which is irrelevant to what these tests watch.
fn without_broker(id: &str) -> (tempfile::TempDir, PathBuf, GatewaySetup) {
    let work = tempfile::tempdir().unwrap();
    let creds = work.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    for f in ["ca.pem", "gw.pem", "gateway.key"] {
        std::fs::write(creds.join(f), "x").unwrap();
    }
    let setup = GatewaySetup {
        dir: work.path().to_path_buf(),
        id: id.to_owned(),
        mqtt_url: format!(
            "mqtts://127.0.0.1:{}",
            wardgate_tests::gateway::free_port().unwrap()
        ),
        ca_file: creds.join("ca.pem"),
        cert_file: creds.join("gw.pem"),
        key_file: PathBuf::from("credential:gateway.key"),
        hl7_port: wardgate_tests::gateway::free_port().unwrap(),
        hl7_extra: String::new(),
        extra_sections: String::new(),
    };
    (work, creds, setup)
}

#[test]
fn watchdog_meant_for_another_process_is_not_fed() {
    let (work, creds, setup) = without_broker("gw-sd");
    let notify = NotifySocket::bind(work.path());
    // WATCHDOG_PID names another process (pid 1): the variables were inherited.
    let (mut child, log) = spawn(
        &setup,
        &notify,
        &creds,
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let (ready, seen) = notify.wait_for("READY=1", Duration::from_secs(20));
    assert!(
        ready,
        "no READY=1: {seen:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Ten of its would-be periods.
    let (pinged, seen) = notify.wait_for("WATCHDOG=1", Duration::from_secs(1));
    assert!(!pinged, "fed a watchdog that is not ours: {seen:?}");
    let status = sigterm_and_wait(&mut child, &log);
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("systemd watchdog enabled"), "{log}");
}

/// Collects datagrams for `window`.
fn collect(notify: &NotifySocket, window: Duration) -> Vec<Vec<String>> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while let Some(left) = window.checked_sub(start.elapsed()) {
        match notify.next(left.max(Duration::from_millis(1))) {
            Some(msg) => seen.push(msg),
            None => break,
        }
    }
    seen
}

#[test]
fn a_stuck_spool_writer_starves_the_watchdog_and_recovery_resumes_it() {
    let (work, creds, setup) = without_broker("gw-stuck");
    let notify = NotifySocket::bind(work.path());
    // The debug build's fault switch (gateway/src/spool/fault.rs): while this file
    // exists, the spool writer hangs before its next request, as on a dead disk.
    let trigger = work.path().join("stall-spool");
    let trigger_var = trigger.to_str().unwrap().to_owned();
    let (mut child, log) = spawn(
        &setup,
        &notify,
        &creds,
        &[
            ("WATCHDOG_USEC", "1000000"),
            ("WARDGATE_TEST_FAULT_STALL_SPOOL", &trigger_var),
        ],
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let (ready, seen) = notify.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready, "no READY=1: {seen:?}\n{}", log_text());

    let healthy = count(&collect(&notify, Duration::from_secs(2)), "WATCHDOG=1");
    assert!(
        healthy >= 2,
        "{healthy} pings in 2 s while healthy\n{}",
        log_text()
    );

    std::fs::write(&trigger, b"").unwrap();
    // A probe already past the writer may still ping once; after that, silence — for
    // three watchdog periods, so systemd would have restarted the service.
    let _settling = collect(&notify, Duration::from_millis(800));
    let stuck = collect(&notify, Duration::from_secs(3));
    assert_eq!(
        count(&stuck, "WATCHDOG=1"),
        0,
        "the watchdog was fed while the spool writer hung: {stuck:?}\n{}",
        log_text()
    );
    assert!(log_text().contains("watchdog.withheld"), "{}", log_text());

    // The disk comes back: pings resume without a restart.
    std::fs::remove_file(&trigger).unwrap();
    let (resumed, seen) = notify.wait_for("WATCHDOG=1", Duration::from_secs(5));
    assert!(resumed, "no ping after recovery: {seen:?}\n{}", log_text());

    let status = sigterm_and_wait(&mut child, &log);
    assert!(status.success(), "{status}\n{}", log_text());
}
