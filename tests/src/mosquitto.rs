//! A real mosquitto broker for tests: mutual TLS on a free loopback port, persistence off
//! unless asked for,
//! clients identified by their certificate's common name.
//!
//! Invariants: the broker process is killed when the [`Mosquitto`] is dropped; restarts
//! reuse the same port and configuration (outage tests reconnect to the same URL);
//! [`Mosquitto::start`] and [`Mosquitto::restart`] return only once the listener completes
//! TLS handshakes. A missing binary is an error explaining how to install it — tests that
//! need a broker fail rather than skip, with or without `CI=true`.

use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::certs::{TestPki, Validity};
use crate::{io_context, HarnessError};

/// How long a broker may take to accept TLS after being started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the mosquitto binary: `$MOSQUITTO`, then `$PATH`, then the Debian location
/// `/usr/sbin/mosquitto` (not on a normal user's `$PATH`).
///
/// # Errors
/// [`HarnessError::MosquittoMissing`] with installation instructions.
pub fn binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::MosquittoMissing)
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin/mosquitto"),
            PathBuf::from("/usr/local/sbin/mosquitto"),
        ])
        .find(|candidate| candidate.is_file())
        .ok_or(HarnessError::MosquittoMissing)
}

/// A running (or deliberately stopped) mosquitto; see the module documentation.
pub struct Mosquitto {
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    probe_tls: Arc<rustls::ClientConfig>,
    child: Option<Child>,
}

impl std::fmt::Debug for Mosquitto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mosquitto")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl Mosquitto {
    /// Starts mosquitto with certificates from `pki` on a free port of 127.0.0.1. Its
    /// configuration and log live in `pki`'s directory.
    ///
    /// # Errors
    /// mosquitto is missing, could not be started, or did not accept TLS in time.
    pub fn start(pki: &TestPki) -> Result<Self, HarnessError> {
        Mosquitto::start_with(pki, false)
    }

    /// Like [`Mosquitto::start`], with `persistence` on: sessions, subscriptions and
    /// queued QoS 1 messages of persistent (clean-session = false) clients survive a
    /// [`Mosquitto::stop`] and [`Mosquitto::restart`], as a production broker's do.
    ///
    /// # Errors
    /// As [`Mosquitto::start`].
    pub fn start_with(pki: &TestPki, persistence: bool) -> Result<Self, HarnessError> {
        let binary = binary()?;
        let port = free_port()?;
        let dir = pki.dir();
        let config_path = dir.join(format!("mosquitto-{port}.conf"));
        let log_path = dir.join(format!("mosquitto-{port}.log"));
        let mut text = config(pki, port);
        if persistence {
            let store = dir.join(format!("mosquitto-{port}-store"));
            std::fs::create_dir_all(&store).map_err(io_context("creating the mosquitto store"))?;
            text = text.replace(
                "persistence false\n",
                &format!(
                    "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                    store.display()
                ),
            );
        }
        std::fs::write(&config_path, text).map_err(io_context("writing mosquitto.conf"))?;
        let probe = pki.client("readiness-probe", "readiness-probe", Validity::Current)?;
        let probe_tls = pki.client_tls(&probe)?;
        let mut broker = Mosquitto {
            binary,
            config_path,
            log_path,
            port,
            probe_tls,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// The broker's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtts://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL (no goodbye to clients, no state saved) and reaps it.
    ///
    /// # Errors
    /// The signal could not be delivered.
    pub fn kill(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped (frozen) process.
            child.kill().map_err(io_context("killing mosquitto"))?;
            child.wait().map_err(io_context("reaping mosquitto"))?;
        }
        Ok(())
    }

    /// Stops the broker with SIGTERM (it closes connections cleanly) and reaps it.
    ///
    /// # Errors
    /// The signal could not be delivered.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            self.signal(libc::SIGCONT)?;
            self.signal(libc::SIGTERM)?;
            if let Some(mut child) = self.child.take() {
                child.wait().map_err(io_context("reaping mosquitto"))?;
            }
        }
        Ok(())
    }

    /// Freezes the broker with SIGSTOP: connections stay open but nothing is read,
    /// written or acknowledged — a hung broker.
    ///
    /// # Errors
    /// The signal could not be delivered.
    pub fn freeze(&self) -> Result<(), HarnessError> {
        self.signal(libc::SIGSTOP)
    }

    /// Resumes a frozen broker with SIGCONT.
    ///
    /// # Errors
    /// The signal could not be delivered.
    pub fn thaw(&self) -> Result<(), HarnessError> {
        self.signal(libc::SIGCONT)
    }

    /// Starts the broker again on the same port with the same configuration (killing it
    /// first if it still runs).
    ///
    /// # Errors
    /// It could not be started or did not accept TLS in time.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill()?;
        self.spawn()
    }

    fn signal(&self, signal: libc::c_int) -> Result<(), HarnessError> {
        let Some(pid) = self.pid() else { return Ok(()) };
        let pid = libc::pid_t::try_from(pid).map_err(|_| HarnessError::Io {
            context: "signalling mosquitto".into(),
            source: std::io::Error::other("pid out of range"),
        })?;
        let rc = send_signal(pid, signal);
        if rc == 0 {
            Ok(())
        } else {
            Err(HarnessError::Io {
                context: format!("sending signal {signal} to mosquitto"),
                source: std::io::Error::last_os_error(),
            })
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_context(format!("opening {}", self.log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_context("duplicating the log file handle"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_context(format!("starting {}", self.binary.display())))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(exit)) = child.try_wait() {
                    self.child = None;
                    return Err(self.failure(format!("exited during start-up ({exit})")));
                }
            }
            if tls_handshake(self.port, &self.probe_tls).is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = self.kill();
                return Err(self.failure(format!(
                    "did not accept TLS on port {} within {READY_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn failure(&self, what: String) -> HarnessError {
        HarnessError::Mosquitto {
            what,
            log_path: self.log_path.clone(),
            log: tail(&read_log(&self.log_path), 40),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `kill(2)` through libc; kept in one place because the workspace denies `unsafe_code`
/// elsewhere and this is the only syscall the harness needs that std lacks (std can only
/// send SIGKILL).
#[allow(unsafe_code)]
fn send_signal(pid: libc::pid_t, signal: libc::c_int) -> libc::c_int {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
    unsafe { libc::kill(pid, signal) }
}

fn config(pki: &TestPki, port: u16) -> String {
    format!(
        "# Generated by wardgate-tests.\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         persistence false\n\
         # The harness runs as root in containers; stay root so the 0600 key in the temp\n\
         # directory stays readable (mosquitto would otherwise switch to user mosquitto).\n\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type information\n\
         connection_messages true\n\
         log_timestamp_format %H:%M:%S\n\
         # Deliver everything, however fast tests publish: no per-client caps.\n\
         max_inflight_messages 0\n\
         max_queued_messages 0\n\
         listener {port} 127.0.0.1\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        ca = pki.ca_file().display(),
        cert = pki.server().cert.display(),
        key = pki.server().key.display(),
    )
}

fn free_port() -> Result<u16, HarnessError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_context("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_context("finding a free port"))?
        .port();
    Ok(port)
}

/// One complete TLS handshake with the broker, as the readiness probe.
fn tls_handshake(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), Box<dyn std::error::Error>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut socket = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.set_write_timeout(Some(Duration::from_secs(2)))?;
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = rustls::ClientConnection::new(tls.clone(), name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut socket)?;
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut socket);
    Ok(())
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
