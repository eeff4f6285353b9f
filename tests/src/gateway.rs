//! The real `wardgate` binary as a child process: config written by the test, started,
//! stopped with SIGTERM, or killed with SIGKILL to simulate a crash or power cut. Both
//! `wardgate run` ([`GatewayProcess`]) and the bulk upload receiver `wardgate receive`
//! ([`ReceiverProcess`]).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The `wardgate` binary built by `cargo build --workspace --bins` (the test command
/// builds it before running the tests): `target/<profile>/wardgate`, next to the
/// `deps/` folder holding this test executable.
///
/// # Errors
/// When the binary has not been built.
pub fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not under target/<profile>/deps")?;
    let bin = profile_dir.join("wardgate");
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first (tests/run does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `wardgate audit verify <file>`: whether the chain is intact (exit 0), and what it
/// printed (stdout, then stderr).
///
/// # Errors
/// When the binary is missing or cannot be run.
pub fn audit_verify(file: &Path) -> anyhow::Result<(bool, String)> {
    let out = Command::new(binary()?)
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .context("running wardgate audit verify")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    ))
}

/// A free TCP port on loopback (bound then released; the race is acceptable in tests).
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Paths a gateway config needs.
#[derive(Debug, Clone)]
pub struct GatewaySetup {
    /// Directory for the config file and logs.
    pub dir: PathBuf,
    /// `gateway.id`.
    pub id: String,
    /// `cloud.mqtt_url`.
    pub mqtt_url: String,
    /// CA, client certificate and key PEM files.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Client key.
    pub key_file: PathBuf,
    /// The MLLP port.
    pub hl7_port: u16,
    /// Extra TOML appended to the `[hl7]` section.
    pub hl7_extra: String,
    /// Extra TOML sections appended at the end.
    pub extra_sections: String,
}

impl GatewaySetup {
    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The HL7 listener address.
    #[must_use]
    pub fn hl7_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.hl7_port))
    }

    /// Writes the config file and returns its path.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_config(&self) -> anyhow::Result<PathBuf> {
        let text = format!(
            r#"[gateway]
id = "{id}"
data_dir = "{data}"

[cloud]
mqtt_url = "{url}"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
profile = "generic"
backoff_min_ms = 100
backoff_max_secs = 1

[hl7]
listen = "127.0.0.1:{port}"
{hl7_extra}
{extra}
"#,
            id = self.id,
            data = self.data_dir().display(),
            url = self.mqtt_url,
            ca = self.ca_file.display(),
            cert = self.cert_file.display(),
            key = self.key_file.display(),
            port = self.hl7_port,
            hl7_extra = self.hl7_extra,
            extra = self.extra_sections,
        );
        let path = self.dir.join("wardgate.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A running gateway process. Killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Starts `wardgate run --config <file>` and waits until the MLLP port accepts.
    ///
    /// # Errors
    /// When the binary is missing, exits early, or does not listen within 20 s.
    pub fn start(setup: &GatewaySetup) -> anyhow::Result<GatewayProcess> {
        Self::start_with_env(setup, &[])
    }

    /// As [`GatewayProcess::start`], with extra environment variables (e.g. a `RUST_LOG`
    /// that shows one module's debug events; the default is `info`).
    ///
    /// # Errors
    /// As [`GatewayProcess::start`].
    pub fn start_with_env(
        setup: &GatewaySetup,
        env: &[(&str, &str)],
    ) -> anyhow::Result<GatewayProcess> {
        let config = setup.write_config()?;
        let log = setup.dir.join(format!(
            "gateway-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = unique(log);
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(binary()?)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn wardgate")?;
        let mut p = GatewayProcess { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("wardgate exited early with {status}:\n{}", p.log_text());
            }
            if TcpStream::connect_timeout(&setup.hl7_addr(), Duration::from_millis(200)).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "wardgate did not listen on {} within 20 s:\n{}",
                    setup.hl7_addr(),
                    p.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown path runs, as in a crash or power cut (minus the page cache).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns whether it exited 0.
    ///
    /// # Errors
    /// When it does not exit in time (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // The workspace denies unsafe code, so signal through kill(1) rather than libc::kill.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "wardgate did not stop within {timeout:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the gateway logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    ///
    /// # Errors
    /// When the process exits or `timeout` passes first (the error holds the log).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for_log(&mut self.child, &self.log, needle, timeout)
    }
}

fn wait_for_log(
    child: &mut Child,
    log: &Path,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status} before logging {needle:?}:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("{needle:?} not logged within {timeout:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free UDP port on loopback (bound then released; the race is acceptable in tests).
///
/// # Errors
/// When no port can be bound.
pub fn free_udp_port() -> anyhow::Result<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// What `wardgate receive` (the bulk upload receiver) is configured with.
#[derive(Debug, Clone)]
pub struct ReceiverSetup {
    /// Directory for the config file and logs.
    pub dir: PathBuf,
    /// The UDP port on 127.0.0.1.
    pub port: u16,
    /// Where received files go (`dicom/`, `log/`, `.partial/`).
    pub store_dir: PathBuf,
    /// The receiver's certificate (valid for the name the gateway connects with).
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// The CA gateways' client certificates must chain to.
    pub client_ca_file: PathBuf,
    /// Bytes between two durable checkpoints of a partial file.
    pub checkpoint_bytes: u64,
}

impl ReceiverSetup {
    /// The `host:port` a gateway's `[bulk_upload] receiver` names.
    #[must_use]
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Writes the config file and returns its path.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_config(&self) -> anyhow::Result<PathBuf> {
        let text = format!(
            r#"listen = "127.0.0.1:{port}"
dir = "{dir}"
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
checkpoint_bytes = {checkpoint}
"#,
            port = self.port,
            dir = self.store_dir.display(),
            cert = self.cert_file.display(),
            key = self.key_file.display(),
            ca = self.client_ca_file.display(),
            checkpoint = self.checkpoint_bytes,
        );
        let path = self.dir.join("receiver.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A running `wardgate receive`. Killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct ReceiverProcess {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl ReceiverProcess {
    /// Starts `wardgate receive --config <file>` and waits until it logs that it listens.
    ///
    /// # Errors
    /// When the binary is missing, exits early, or does not listen within 20 s.
    pub fn start(setup: &ReceiverSetup) -> anyhow::Result<ReceiverProcess> {
        let config = setup.write_config()?;
        let log = unique(setup.dir.join("receiver.log"));
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(binary()?)
            .arg("receive")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn wardgate receive")?;
        let mut p = ReceiverProcess { child, log };
        wait_for_log(
            &mut p.child,
            &p.log,
            "bulk upload receiver listening",
            Duration::from_secs(20),
        )
        .context("wardgate receive")?;
        Ok(p)
    }

    /// SIGKILL: the receiver dies without checkpointing what it holds.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What the receiver logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ReceiverProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unique(path: PathBuf) -> PathBuf {
    let mut n = 0;
    let mut p = path.clone();
    while p.exists() {
        n += 1;
        p = path.with_extension(format!("{n}.log"));
    }
    p
}
