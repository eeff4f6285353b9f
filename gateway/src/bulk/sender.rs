//! The bulk upload sender: uploads every outbox file to the receiver over one QUIC
//! connection, several files at once, each on its own bidirectional stream driven by a
//! [`SenderSession`].
//!
//! Behaviour:
//! * Files go oldest first, at most `parallel_files` at a time. Before a file starts, the
//!   [`UploadGate`] is asked (patient-first); a deferred file is asked again after
//!   [`DEFERRAL_RECHECK`].
//! * A file leaves the outbox only on `Committed` (see [`super::outbox`]).
//! * A lost connection ends every transfer on it; after a reconnect (exponential backoff
//!   with jitter) each file is offered again and continues from the receiver's offset.
//! * `HashMismatch`: counted in [`SenderStats::hash_mismatches`], logged as an error
//!   (file id and device only, never content), and the file is sent again from zero at
//!   once; after [`MAX_CONSECUTIVE_MISMATCHES`] in a row the file waits for the backoff.
//! * `Refused`: the file waits [`REFUSED_RETRY`] (busy, storage unavailable) or the
//!   backoff ceiling (conflict, bad offer), with a warning or error.
//! * Bandwidth: all streams share one token bucket whose rate follows the time of day
//!   ([`super::schedule`]); the rate is looked up before every chunk.
//! * TLS material is read afresh at every connection attempt (a renewed certificate is
//!   picked up without a restart).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wardgate_proto::upload::{Offer, RefuseCode, SenderOutcome, SenderSession, MAX_CHUNK_LEN};

use super::outbox::{Manifest, Outbox};
use super::schedule::{BandwidthSchedule, LocalClock, LocalTime, Rate};
use super::{quic, BulkError, UploadGate};
use crate::uplink::mqtt::backoff::Backoff;

/// A deferred file is asked about again after this long.
pub const DEFERRAL_RECHECK: Duration = Duration::from_secs(5);
/// A file refused as busy or unavailable is offered again after this long.
pub const REFUSED_RETRY: Duration = Duration::from_secs(10);
/// Hash mismatches in a row after which a file waits for the backoff instead of being
/// re-sent at once.
pub const MAX_CONSECUTIVE_MISMATCHES: u32 = 3;
/// A connection that lasted this long was stable: the reconnect backoff starts over.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Reconnect backoff bounds.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Reconnect backoff ceiling (also the wait of a file refused for good reason).
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

const fn default_parallel_files() -> u32 {
    4
}
const fn default_chunk_bytes() -> u32 {
    256 * 1024
}
const fn default_outbox_budget_bytes() -> u64 {
    20 * 1024 * 1024 * 1024
}
const fn default_compress_logs() -> bool {
    true
}

/// `[bulk_upload]`: where and how the gateway uploads DICOM objects and large log files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkUploadConfig {
    /// The receiver, `host:port` (UDP).
    pub receiver: String,
    /// The name the receiver's certificate must be valid for. Default: the host part of
    /// `receiver`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificate(s) (PEM) the receiver's certificate must chain to.
    pub ca_file: PathBuf,
    /// The gateway's client certificate (PEM), as for the MQTT uplink.
    pub cert_file: PathBuf,
    /// The gateway's private key (PEM).
    pub key_file: PathBuf,
    /// Files uploaded at the same time, each on its own stream (1..=64).
    #[serde(default = "default_parallel_files")]
    pub parallel_files: u32,
    /// Bytes per chunk message (4 KiB..=1 MiB); also the burst of the bandwidth cap.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u32,
    /// Disk space the outbox may use; files beyond it are refused ("out of resources").
    #[serde(default = "default_outbox_budget_bytes")]
    pub outbox_budget_bytes: u64,
    /// Clinical hours in local time, `HH:MM-HH:MM` (may span midnight). Unset: the
    /// off-hours cap applies all day.
    #[serde(default)]
    pub clinical_hours: Option<String>,
    /// Bandwidth cap during clinical hours, bytes per second; 0 = no cap.
    #[serde(default)]
    pub clinical_bytes_per_sec: u64,
    /// Bandwidth cap outside clinical hours, bytes per second; 0 = no cap.
    #[serde(default)]
    pub off_hours_bytes_per_sec: u64,
    /// Gzip log files when they enter the outbox.
    #[serde(default = "default_compress_logs")]
    pub compress_logs: bool,
}

impl BulkUploadConfig {
    /// A configuration with defaults for everything optional.
    #[must_use]
    pub fn new(receiver: String, ca_file: PathBuf, cert_file: PathBuf, key_file: PathBuf) -> Self {
        BulkUploadConfig {
            receiver,
            server_name: None,
            ca_file,
            cert_file,
            key_file,
            parallel_files: default_parallel_files(),
            chunk_bytes: default_chunk_bytes(),
            outbox_budget_bytes: default_outbox_budget_bytes(),
            clinical_hours: None,
            clinical_bytes_per_sec: 0,
            off_hours_bytes_per_sec: 0,
            compress_logs: default_compress_logs(),
        }
    }

    /// Checks every value.
    ///
    /// # Errors
    /// A reason naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map(|_| ()).map_err(|e| e.to_string())
    }

    fn check(&self) -> Result<BandwidthSchedule, BulkError> {
        let config = |key, reason: &str| BulkError::Config {
            key,
            reason: reason.to_owned(),
        };
        if split_host_port(&self.receiver).is_none() {
            return Err(config("receiver", "must be host:port"));
        }
        if !(1..=64).contains(&self.parallel_files) {
            return Err(config("parallel_files", "must be 1..=64"));
        }
        if !(4096..=MAX_CHUNK_LEN as u32).contains(&self.chunk_bytes) {
            return Err(config("chunk_bytes", "must be 4096..=1048576"));
        }
        if self.outbox_budget_bytes == 0 {
            return Err(config("outbox_budget_bytes", "must be positive"));
        }
        BandwidthSchedule::from_config(
            self.clinical_hours.as_deref(),
            self.clinical_bytes_per_sec,
            self.off_hours_bytes_per_sec,
        )
    }

    fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            split_host_port(&self.receiver)
                .map(|(host, _)| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                })
                .unwrap_or_default()
        })
    }
}

fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// Counters of the sender, for the status page and tests.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Files the receiver committed (including duplicates).
    pub files_committed: AtomicU64,
    /// Files the receiver already held completely when offered (committed earlier,
    /// e.g. before a crash that kept them in the outbox).
    pub duplicates: AtomicU64,
    /// Payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Bytes not sent because the receiver already held them (resumed offsets).
    pub bytes_resumed: AtomicU64,
    /// Whole-file hash mismatches reported by the receiver.
    pub hash_mismatches: AtomicU64,
    /// Offers the receiver refused.
    pub refusals: AtomicU64,
    /// Times a file was held back by the patient-first rule.
    pub deferrals: AtomicU64,
    /// Failed connection attempts and lost connections.
    pub connection_failures: AtomicU64,
}

/// A copy of [`SenderStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SenderCounters {
    /// See [`SenderStats::files_committed`].
    pub files_committed: u64,
    /// See [`SenderStats::duplicates`].
    pub duplicates: u64,
    /// See [`SenderStats::bytes_sent`].
    pub bytes_sent: u64,
    /// See [`SenderStats::bytes_resumed`].
    pub bytes_resumed: u64,
    /// See [`SenderStats::hash_mismatches`].
    pub hash_mismatches: u64,
    /// See [`SenderStats::refusals`].
    pub refusals: u64,
    /// See [`SenderStats::deferrals`].
    pub deferrals: u64,
    /// See [`SenderStats::connection_failures`].
    pub connection_failures: u64,
}

impl SenderStats {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> SenderCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SenderCounters {
            files_committed: get(&self.files_committed),
            duplicates: get(&self.duplicates),
            bytes_sent: get(&self.bytes_sent),
            bytes_resumed: get(&self.bytes_resumed),
            hash_mismatches: get(&self.hash_mismatches),
            refusals: get(&self.refusals),
            deferrals: get(&self.deferrals),
            connection_failures: get(&self.connection_failures),
        }
    }
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The shared bandwidth cap: a token bucket of 1 KiB cells, rebuilt when the rate in
/// force changes.
struct Throttle {
    schedule: BandwidthSchedule,
    clock: Arc<dyn LocalTime>,
    burst_kib: NonZeroU32,
    current: Mutex<(Rate, Option<Arc<DefaultDirectRateLimiter>>)>,
}

impl Throttle {
    fn new(schedule: BandwidthSchedule, clock: Arc<dyn LocalTime>, chunk_bytes: usize) -> Self {
        let burst = u32::try_from(chunk_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        Throttle {
            schedule,
            clock,
            burst_kib: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
            current: Mutex::new((Rate::Unlimited, None)),
        }
    }

    fn limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        let rate = self.schedule.rate_at(self.clock.minute_of_day());
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != rate || (current.1.is_none() && rate != Rate::Unlimited) {
            let limiter = match rate {
                Rate::Unlimited => None,
                Rate::BytesPerSec(bps) => {
                    let kib = u32::try_from(bps.get() / 1024).unwrap_or(u32::MAX);
                    let per_sec = NonZeroU32::new(kib).unwrap_or(NonZeroU32::MIN);
                    Some(Arc::new(governor::RateLimiter::direct(
                        Quota::per_second(per_sec).allow_burst(self.burst_kib),
                    )))
                }
            };
            *current = (rate, limiter);
        }
        current.1.clone()
    }

    async fn acquire(&self, bytes: usize) {
        let Some(limiter) = self.limiter() else {
            return;
        };
        let cells = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let cells = NonZeroU32::new(cells.min(self.burst_kib.get())).unwrap_or(NonZeroU32::MIN);
        // `cells` never exceeds the burst, so capacity is always sufficient.
        let _ = limiter.until_n_ready(cells).await;
    }
}

/// The bulk upload sender (see the module documentation).
pub struct Sender {
    config: BulkUploadConfig,
    outbox: Arc<Outbox>,
    gate: Arc<dyn UploadGate>,
    throttle: Arc<Throttle>,
    stats: Arc<SenderStats>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("receiver", &self.config.receiver)
            .field("outbox", &self.outbox.dir())
            .finish_non_exhaustive()
    }
}

enum FileDone {
    Committed { resumed_from: u64 },
    Refused { code: RefuseCode, reason: String },
}

impl Sender {
    /// A sender for `outbox` with the system's local time for clinical hours.
    ///
    /// # Errors
    /// An invalid configuration value ([`BulkError::Config`]).
    pub fn new(
        config: BulkUploadConfig,
        outbox: Arc<Outbox>,
        gate: Arc<dyn UploadGate>,
    ) -> Result<Self, BulkError> {
        Self::with_local_time(config, outbox, gate, Arc::new(LocalClock::system()))
    }

    /// As [`Sender::new`], with the local time from `clock`.
    ///
    /// # Errors
    /// An invalid configuration value ([`BulkError::Config`]).
    pub fn with_local_time(
        config: BulkUploadConfig,
        outbox: Arc<Outbox>,
        gate: Arc<dyn UploadGate>,
        clock: Arc<dyn LocalTime>,
    ) -> Result<Self, BulkError> {
        let schedule = config.check()?;
        let throttle = Arc::new(Throttle::new(schedule, clock, config.chunk_bytes as usize));
        Ok(Sender {
            config,
            outbox,
            gate,
            throttle,
            stats: Arc::new(SenderStats::default()),
        })
    }

    /// The sender's counters (shared; they keep counting while it runs).
    #[must_use]
    pub fn stats(&self) -> Arc<SenderStats> {
        Arc::clone(&self.stats)
    }

    /// Uploads until `shutdown` turns true. Transfers in progress are abandoned at
    /// shutdown; the receiver keeps what it made durable and the next run resumes there.
    ///
    /// # Errors
    /// Only if no UDP socket can be bound; everything else is retried.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), BulkError> {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut endpoint: Option<(bool, quinn::Endpoint)> = None;
        let mut retry_after: HashMap<String, Instant> = HashMap::new();
        while !stopping(&shutdown) {
            // A handshake with an unreachable receiver takes up to the idle timeout.
            let connected = tokio::select! {
                connected = self.connect(&mut endpoint) => connected,
                _ = shutdown.changed() => continue,
            };
            match connected {
                Ok(connection) => {
                    tracing::info!(receiver = %self.config.receiver, "bulk upload connection established");
                    let since = Instant::now();
                    let productive = self
                        .serve_connection(&connection, &mut retry_after, &mut shutdown)
                        .await;
                    if productive || since.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                    if stopping(&shutdown) {
                        connection.close(0u32.into(), b"shutting down");
                        break;
                    }
                    bump(&self.stats.connection_failures, 1);
                    tracing::warn!(
                        receiver = %self.config.receiver,
                        reason = %connection.close_reason().map_or_else(|| "closed".to_owned(), |r| r.to_string()),
                        "bulk upload connection lost; transfers resume after reconnecting"
                    );
                }
                Err(BulkError::Bind(e)) => return Err(BulkError::Bind(e)),
                Err(e) => {
                    bump(&self.stats.connection_failures, 1);
                    tracing::warn!(receiver = %self.config.receiver, error = %e, "bulk upload cannot connect");
                }
            }
            let delay = backoff.next_delay(fastrand::f64());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some((_, endpoint)) = endpoint {
            endpoint.close(0u32.into(), b"shutting down");
            // Lets the close frames go out; bounded so shutdown never hangs on a dead path.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        Ok(())
    }

    async fn connect(
        &self,
        endpoint: &mut Option<(bool, quinn::Endpoint)>,
    ) -> Result<quinn::Connection, BulkError> {
        let address = tokio::net::lookup_host(self.config.receiver.as_str())
            .await
            .map_err(|e| BulkError::Resolve {
                address: self.config.receiver.clone(),
                reason: e.to_string(),
            })?
            .next()
            .ok_or_else(|| BulkError::Resolve {
                address: self.config.receiver.clone(),
                reason: "no address".into(),
            })?;
        let ipv6 = address.is_ipv6();
        if endpoint.as_ref().is_none_or(|(v6, _)| *v6 != ipv6) {
            let bind: SocketAddr = if ipv6 {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            *endpoint = Some((
                ipv6,
                quinn::Endpoint::client(bind).map_err(BulkError::Bind)?,
            ));
        }
        let Some((_, endpoint)) = endpoint.as_ref() else {
            return Err(BulkError::Connection("no endpoint".into()));
        };
        let tls = quic::client_config(
            &self.config.ca_file,
            &self.config.cert_file,
            &self.config.key_file,
            quic::unix_now(),
        )?;
        let connecting = endpoint
            .connect_with(tls, address, &self.config.server_name())
            .map_err(|e| BulkError::Connection(e.to_string()))?;
        connecting
            .await
            .map_err(|e| BulkError::Connection(e.to_string()))
    }

    /// Runs transfers on `connection` until it is lost or shutdown. Returns whether any
    /// file was committed on it (a stable connection resets the backoff).
    async fn serve_connection(
        &self,
        connection: &quinn::Connection,
        retry_after: &mut HashMap<String, Instant>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, Result<FileDone, BulkError>)> = JoinSet::new();
        let mut productive = false;
        let mut lost = false;
        loop {
            if !lost {
                self.start_transfers(connection, &mut in_flight, &mut tasks, retry_after);
            }
            if lost && tasks.is_empty() {
                return productive;
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    if stopping(shutdown) {
                        tasks.abort_all();
                        return productive;
                    }
                }
                Some(joined) = tasks.join_next() => {
                    let Ok((id, result)) = joined else { continue };
                    in_flight.remove(&id);
                    productive |= self.finish_transfer(&id, result, retry_after, connection).await;
                }
                () = self.outbox.changed(), if !lost => {}
                () = tokio::time::sleep(DEFERRAL_RECHECK), if !lost => {}
                _ = connection.closed(), if !lost => {
                    // Let the transfers notice the loss and end; their files are re-offered.
                    lost = true;
                }
            }
        }
    }

    fn start_transfers(
        &self,
        connection: &quinn::Connection,
        in_flight: &mut HashSet<String>,
        tasks: &mut JoinSet<(String, Result<FileDone, BulkError>)>,
        retry_after: &mut HashMap<String, Instant>,
    ) {
        let now = Instant::now();
        retry_after.retain(|_, at| *at > now);
        for manifest in self.outbox.entries() {
            if in_flight.len() >= self.config.parallel_files as usize {
                break;
            }
            if in_flight.contains(&manifest.id) || retry_after.contains_key(&manifest.id) {
                continue;
            }
            if !self.gate.may_upload(&manifest.device) {
                bump(&self.stats.deferrals, 1);
                tracing::debug!(file_id = %manifest.id, device = %manifest.device, "bulk upload deferred: device is treating a patient");
                retry_after.insert(manifest.id.clone(), now + DEFERRAL_RECHECK);
                continue;
            }
            in_flight.insert(manifest.id.clone());
            let transfer = Transfer {
                connection: connection.clone(),
                path: self.outbox.data_path(&manifest.id),
                throttle: Arc::clone(&self.throttle),
                stats: Arc::clone(&self.stats),
                chunk_len: self.config.chunk_bytes as usize,
            };
            tasks.spawn(async move {
                let result = transfer.upload(&manifest).await;
                (manifest.id, result)
            });
        }
    }

    async fn finish_transfer(
        &self,
        id: &str,
        result: Result<FileDone, BulkError>,
        retry_after: &mut HashMap<String, Instant>,
        connection: &quinn::Connection,
    ) -> bool {
        match result {
            Ok(FileDone::Committed { resumed_from }) => {
                bump(&self.stats.files_committed, 1);
                let outbox = Arc::clone(&self.outbox);
                let owned = id.to_owned();
                let removed = tokio::task::spawn_blocking(move || outbox.remove(&owned)).await;
                match removed {
                    Ok(Ok(())) => {
                        tracing::debug!(file_id = %id, resumed_from, "bulk upload committed");
                    }
                    Ok(Err(e)) => {
                        tracing::error!(file_id = %id, error = %e, "committed file could not be removed from the outbox; it will be offered again");
                    }
                    Err(e) => {
                        tracing::error!(file_id = %id, error = %e, "outbox removal task failed");
                    }
                }
                true
            }
            Ok(FileDone::Refused { code, reason }) => {
                bump(&self.stats.refusals, 1);
                let wait = match code {
                    RefuseCode::Busy | RefuseCode::Unavailable => {
                        tracing::warn!(file_id = %id, ?code, %reason, "receiver refused the file for now");
                        REFUSED_RETRY
                    }
                    RefuseCode::Conflict | RefuseCode::BadOffer | RefuseCode::Other(_) => {
                        tracing::error!(file_id = %id, ?code, %reason, "receiver refused the file");
                        BACKOFF_MAX
                    }
                };
                retry_after.insert(id.to_owned(), Instant::now() + wait);
                false
            }
            Err(e) => {
                if connection.close_reason().is_none() {
                    // Not the connection's fault: this file waits, the others go on.
                    tracing::warn!(file_id = %id, error = %e, "bulk upload of a file failed; retrying later");
                    retry_after.insert(
                        id.to_owned(),
                        Instant::now() + BACKOFF_MAX.min(REFUSED_RETRY * 3),
                    );
                }
                false
            }
        }
    }
}

/// One file's transfer on one connection.
struct Transfer {
    connection: quinn::Connection,
    path: PathBuf,
    throttle: Arc<Throttle>,
    stats: Arc<SenderStats>,
    chunk_len: usize,
}

impl Transfer {
    async fn upload(&self, manifest: &Manifest) -> Result<FileDone, BulkError> {
        let offer = manifest.offer()?;
        let mut mismatches = 0u32;
        loop {
            match self.attempt(&offer).await? {
                SenderOutcome::Committed { resumed_from } => {
                    if offer.size > 0 && resumed_from == offer.size {
                        bump(&self.stats.duplicates, 1);
                    }
                    return Ok(FileDone::Committed { resumed_from });
                }
                SenderOutcome::Refused { code, reason } => {
                    return Ok(FileDone::Refused { code, reason })
                }
                SenderOutcome::HashMismatch => {
                    mismatches += 1;
                    bump(&self.stats.hash_mismatches, 1);
                    tracing::error!(
                        file_id = %offer.file_id,
                        device = %offer.device,
                        attempt = mismatches,
                        "receiver's SHA-256 of the uploaded file does not match the offer; it discarded its copy, sending again from zero"
                    );
                    if mismatches >= MAX_CONSECUTIVE_MISMATCHES {
                        return Err(BulkError::RepeatedMismatch {
                            file_id: offer.file_id.to_string(),
                            attempts: mismatches,
                        });
                    }
                }
            }
        }
    }

    async fn attempt(&self, offer: &Offer) -> Result<SenderOutcome, BulkError> {
        let lost = |e: &dyn std::fmt::Display| BulkError::Connection(e.to_string());
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(|e| lost(&e))?;
        let (mut session, offer_bytes) = SenderSession::new(offer, self.chunk_len)?;
        let mut buf = vec![0u8; 4096];
        let result = async {
            send.write_all(&offer_bytes).await.map_err(|e| lost(&e))?;
            while session.resumed_from().is_none() && session.outcome().is_none() {
                read_some(&mut recv, &mut session, &mut buf).await?;
            }
            let resumed = session.resumed_from().unwrap_or(0);
            bump(&self.stats.bytes_resumed, resumed);
            if let Some(first) = session.next_chunk() {
                let file_err = |source| BulkError::File {
                    path: self.path.clone(),
                    source,
                };
                let mut file = ChunkReader::open(&self.path, first.offset)
                    .await
                    .map_err(file_err)?;
                while let Some(plan) = session.next_chunk() {
                    self.throttle.acquire(plan.len).await;
                    let data = file.read(plan.len).await.map_err(file_err)?;
                    let header = session.start_chunk(plan)?;
                    let written = async {
                        send.write_all(&header).await?;
                        send.write_chunk(data).await
                    }
                    .await;
                    if let Err(e) = written {
                        // The receiver may have stopped the stream with a refusal.
                        return match read_outcome(&mut recv, &mut session, &mut buf).await {
                            Some(outcome) => Ok(outcome),
                            None => Err(lost(&e)),
                        };
                    }
                    bump(&self.stats.bytes_sent, plan.len as u64);
                }
            }
            // The stream is already done if the receiver answered; a failed finish is harmless.
            let _ = send.finish();
            while session.outcome().is_none() {
                read_some(&mut recv, &mut session, &mut buf).await?;
            }
            session
                .outcome()
                .cloned()
                .ok_or_else(|| BulkError::Connection("no verdict".into()))
        }
        .await;
        if result.is_err() {
            let _ = send.reset(1u32.into());
        }
        result
    }
}

/// Shutdown was requested, or whoever could request it is gone.
fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Reads an outbox file chunk by chunk on the blocking pool, into buffers handed to quinn
/// without another copy.
struct ChunkReader {
    file: Option<std::fs::File>,
}

impl ChunkReader {
    async fn open(path: &std::path::Path, offset: u64) -> std::io::Result<Self> {
        let path = path.to_owned();
        let file = tokio::task::spawn_blocking(move || {
            use std::io::Seek as _;
            let mut file = std::fs::File::open(path)?;
            file.seek(std::io::SeekFrom::Start(offset))?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(ChunkReader { file: Some(file) })
    }

    async fn read(&mut self, len: usize) -> std::io::Result<bytes::Bytes> {
        let Some(mut file) = self.file.take() else {
            return Err(std::io::Error::other("an earlier read failed"));
        };
        let (file, data) = tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let mut data = Vec::with_capacity(len);
            let read = (&mut file).take(len as u64).read_to_end(&mut data);
            (file, read.map(|_| data))
        })
        .await
        .map_err(std::io::Error::other)?;
        let data = data?;
        if data.len() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "outbox file is shorter than its manifest",
            ));
        }
        self.file = Some(file);
        Ok(bytes::Bytes::from(data))
    }
}

async fn read_some(
    recv: &mut quinn::RecvStream,
    session: &mut SenderSession,
    buf: &mut [u8],
) -> Result<(), BulkError> {
    match recv.read(buf).await {
        Ok(Some(n)) => Ok(session.handle_input(&buf[..n])?),
        Ok(None) => Ok(session.handle_end_of_stream()?),
        Err(e) => Err(BulkError::Connection(e.to_string())),
    }
}

async fn read_outcome(
    recv: &mut quinn::RecvStream,
    session: &mut SenderSession,
    buf: &mut [u8],
) -> Option<SenderOutcome> {
    while session.outcome().is_none() {
        let read =
            tokio::time::timeout(Duration::from_secs(5), read_some(recv, session, buf)).await;
        if !matches!(read, Ok(Ok(()))) {
            return None;
        }
    }
    session.outcome().cloned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_validates_by_key() {
        let config: BulkUploadConfig = toml::from_str(
            r#"
            receiver = "ingest.example.org:4433"
            ca_file = "/etc/wardgate/ca.pem"
            cert_file = "/etc/wardgate/gw.pem"
            key_file = "/etc/wardgate/gw.key"
            clinical_hours = "07:00-19:00"
            clinical_bytes_per_sec = 2000000
            "#,
        )
        .unwrap();
        assert_eq!(config.parallel_files, 4);
        assert_eq!(config.off_hours_bytes_per_sec, 0);
        assert!(config.validate().is_ok());
        assert_eq!(config.server_name(), "ingest.example.org");

        let mut bad = config.clone();
        bad.receiver = "no-port".into();
        assert!(bad.validate().unwrap_err().contains("`receiver`"));
        let mut bad = config.clone();
        bad.chunk_bytes = 10;
        assert!(bad.validate().unwrap_err().contains("`chunk_bytes`"));
        let mut bad = config.clone();
        bad.clinical_hours = Some("7-19".into());
        assert!(bad.validate().unwrap_err().contains("`clinical_hours`"));
        assert!(toml::from_str::<BulkUploadConfig>("receiver = \"a:1\"\nbogus = 1").is_err());
    }

    struct FixedTime(u16);
    impl LocalTime for FixedTime {
        fn minute_of_day(&self) -> u16 {
            self.0
        }
    }

    #[test]
    fn the_throttle_follows_the_schedule() {
        let schedule = BandwidthSchedule::from_config(Some("07:00-19:00"), 100 * 1024, 0).unwrap();
        let day = Throttle::new(schedule, Arc::new(FixedTime(12 * 60)), 64 * 1024);
        assert!(day.limiter().is_some());
        let night = Throttle::new(schedule, Arc::new(FixedTime(2 * 60)), 64 * 1024);
        assert!(night.limiter().is_none());
    }
}
