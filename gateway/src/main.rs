//! `wardgate`: the command line. Thin: parse arguments, set up logging, call the library.
//!
//! Under systemd (`Type=notify`, `systemd/wardgate.service`) `run` tells the service
//! manager `READY=1` once the gateway is serving, `STOPPING=1` when a stop signal
//! arrives, and feeds its watchdog through [`wardgate::daemon::keep_watchdog`]. Without
//! `$NOTIFY_SOCKET` every notification is a no-op.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sd_notify::NotifyState;
use wardgate::config::Config;
use wardgate::daemon::{keep_watchdog, watchdog, Gateway};

/// wardgate: the edge gateway between a hospital's medical devices and the cloud.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0, or name the file, the key and the reason.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Show the running gateway's status (devices, spool, uplink, alerts) from its
    /// `[status]` endpoint, as text for a person or `--json` for scripts.
    Status {
        /// The configuration file (for the endpoint's address and token file).
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
        /// The bearer token's file, when the configuration names it as a systemd
        /// credential (`credential:<name>`) that only the service can read.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print the status as served at /status.json.
        #[arg(long)]
        json: bool,
    },
    /// Run the reference receiver of bulk uploads (the cloud end of the QUIC upload
    /// protocol): verifies every file's SHA-256 and stores it in a directory.
    Receive {
        /// The receiver's configuration (listen address, directory, certificates).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the tamper-evident audit log's hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the gateway with simulated patient monitors and an embedded cloud stand-in,
    /// and show what reached the cloud (no names, MRNs or birth dates).
    #[cfg(feature = "demo")]
    Demo {
        /// How long to run, in seconds; 0 runs until Ctrl-C.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// How many simulated monitors.
        #[arg(long, default_value_t = wardgate::demo::DEFAULT_MONITORS)]
        monitors: usize,
        /// Leave out the simulated Modbus chiller, mapping-system log and CT scanner (imaging).
        #[arg(long)]
        no_devices: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the audit log and report the first entry whose hash chain is broken.
    Verify {
        /// The audit log (default: `audit.log` in the configured data directory).
        file: Option<PathBuf>,
        /// The configuration file (for the data directory).
        #[arg(long, short, default_value = "/etc/wardgate/wardgate.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The whole cause chain, one line, so a technician sees file, key and reason.
            eprintln!("wardgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let path = config;
            let config = Config::load(&path)?;
            init_logging(&config.logging.level);
            runtime()?.block_on(serve(config, path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            token_file,
            json,
        } => {
            let config = Config::load(&config)?;
            let Some(status) = config.status.as_ref() else {
                anyhow::bail!(
                    "there is no [status] section in the configuration: the status endpoint is off"
                );
            };
            let mut target = status.client_target();
            if let Some(token_file) = token_file {
                target.token_file = token_file;
            }
            let text = runtime()?.block_on(wardgate::status::cli::run(&target, json))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Receive { config } => {
            let config = wardgate::receive::ReceiverConfig::from_file(&config)?;
            init_logging("info");
            runtime()?.block_on(async {
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let mut receiver = tokio::spawn(wardgate::receive::run(config, stopped));
                // A receiver that cannot start (certificates, address) ends at once.
                tokio::select! {
                    ended = &mut receiver => return ended.context("receiver task")?.map_err(anyhow::Error::from),
                    signal = wait_for_stop_signal() => signal?,
                }
                let _ = stop.send(true);
                receiver.await.context("receiver task")??;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { file, config },
        } => {
            let path = match file {
                Some(file) => file,
                None => Config::load(&config)?
                    .gateway
                    .data_dir
                    .join(wardgate::audit::FILE_NAME),
            };
            let (report, intact) = wardgate::audit::verify_command(&path);
            print!("{report}");
            Ok(if intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            duration,
            monitors,
            no_devices,
        } => {
            // The demo creates a fresh pseudonym key every run; its "back it up" warning is noise here.
            init_logging("warn,wardgate::daemon=error");
            let options = wardgate::demo::DemoOptions {
                duration: (duration > 0).then(|| Duration::from_secs(duration)),
                monitors,
                devices: !no_devices,
                ..wardgate::demo::DemoOptions::default()
            };
            let summary = runtime()?
                .block_on(wardgate::demo::run(options))
                .context("demo")?;
            Ok(if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let gateway = Gateway::start(config).await?;
    // Device edits apply while running; anything else is named as needing a restart.
    gateway.watch_config(path);
    // Spool open, listener bound: devices may connect now.
    let status = format!("serving HL7 on {}", gateway.hl7_addr());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let watchdog_task = watchdog_timeout().map(|timeout| {
        tracing::info!(
            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "systemd watchdog enabled"
        );
        tokio::spawn(keep_watchdog(gateway.health(), timeout, || {
            sd_notify::notify(&[NotifyState::Watchdog])
        }))
    });
    let stop = wait_for_stop_signal().await;
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    // systemd does not watch a service that is stopping; TimeoutStopSec bounds the drain.
    // Wait for the abort to land, so no probe runs against components being stopped.
    if let Some(task) = watchdog_task {
        task.abort();
        let _ = task.await;
    }
    tracing::info!("stopping");
    gateway.shutdown().await;
    stop
}

/// The watchdog timeout systemd set for this process, if any.
fn watchdog_timeout() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog::timeout_from_env(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Tells the service manager about a state change. A failure to do so is logged, not
/// fatal: the gateway's job does not depend on it, and systemd acts on what it misses.
fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot handle SIGINT")?,
    }
    Ok(())
}

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
