//! The reference receiver of bulk uploads: the cloud end (or a site's own ingest) that
//! accepts files from gateways over QUIC, verifies them and stores them in a directory.
//!
//! * Mutual TLS, TLS 1.3, ALPN [`wardgate_proto::upload::ALPN`]: a gateway must present a
//!   client certificate chaining to `client_ca_file`; anything else fails the handshake.
//! * Each bidirectional stream carries one file's conversation, driven by a
//!   [`ReceiverSession`]; storage is [`store`] (partial files, durable offsets, commits:
//!   its module documentation states what is durable when).
//! * Only one stream at a time may receive a given file id; a second offer is refused as
//!   busy and retried by the sender.
//! * A gateway has one connection: a new connection presenting the same client
//!   certificate supersedes (closes) the older one, whose transfers checkpoint and free
//!   their file ids. A gateway that crashed and restarted thus resumes at once instead of
//!   finding its files "busy" until the dead connection's idle timeout.
//! * A protocol error resets the stream; the bytes already written stay and count once
//!   durable. Shutdown closes every connection; each transfer checkpoints what it holds.
//!
//! Run it as `wardgate receive --config receiver.toml` (see [`ReceiverConfig`]).

pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use wardgate_proto::upload::{ReceiverAction, ReceiverSession, RefuseCode, ALPN};

use crate::bulk::quic::{transport_config, unix_now_ms};
use store::{Claim, Lookup, PartialFile, Store};

/// How long an offer waits for another stream to release its file id before "busy".
const CLAIM_WAIT: Duration = Duration::from_secs(3);

const fn default_checkpoint_bytes() -> u64 {
    8 * 1024 * 1024
}
const fn default_max_streams() -> u32 {
    16
}

/// The receiver's configuration (`wardgate receive --config <file>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// UDP address to listen on, e.g. `0.0.0.0:4433`.
    pub listen: SocketAddr,
    /// Directory for received files (`dicom/`, `log/`, `.partial/` are created in it).
    pub dir: PathBuf,
    /// The receiver's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The receiver's private key (PEM).
    pub key_file: PathBuf,
    /// CA certificate(s) (PEM) that gateways' client certificates must chain to.
    pub client_ca_file: PathBuf,
    /// Bytes received between two fsyncs of a partial file; after a receiver crash at
    /// most this much per file is received again.
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: u64,
    /// Files one gateway connection may transfer at once (1..=1024).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: u32,
}

impl ReceiverConfig {
    /// A configuration with defaults for everything optional.
    #[must_use]
    pub fn new(
        listen: SocketAddr,
        dir: PathBuf,
        cert_file: PathBuf,
        key_file: PathBuf,
        client_ca_file: PathBuf,
    ) -> Self {
        ReceiverConfig {
            listen,
            dir,
            cert_file,
            key_file,
            client_ca_file,
            checkpoint_bytes: default_checkpoint_bytes(),
            max_streams_per_connection: default_max_streams(),
        }
    }

    /// Reads a TOML file.
    ///
    /// # Errors
    /// The file cannot be read or parsed (the message names the key).
    pub fn from_file(path: &Path) -> Result<Self, ReceiveError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReceiveError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let config: ReceiverConfig = toml::from_str(&text)
            .map_err(|e| ReceiveError::Config(format!("{}: {e}", path.display())))?;
        config.validate().map_err(ReceiveError::Config)?;
        Ok(config)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// A reason naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.checkpoint_bytes < 64 * 1024 {
            return Err("`checkpoint_bytes` must be at least 65536".into());
        }
        if !(1..=1024).contains(&self.max_streams_per_connection) {
            return Err("`max_streams_per_connection` must be 1..=1024".into());
        }
        Ok(())
    }
}

/// Errors of the receiver.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The configuration is invalid.
    #[error("invalid receiver configuration: {0}")]
    Config(String),
    /// A TLS file is missing or unusable.
    #[error("receiver TLS: {role} {path}: {reason}")]
    Tls {
        /// Which file.
        role: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file system or socket operation failed.
    #[error("receiver: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Counters of the receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Files verified and committed.
    pub files_committed: AtomicU64,
    /// Offers answered as already committed.
    pub duplicates: AtomicU64,
    /// Files whose whole-file hash did not match (discarded).
    pub hash_mismatches: AtomicU64,
    /// Payload bytes written.
    pub bytes_received: AtomicU64,
    /// Offers refused.
    pub refusals: AtomicU64,
    /// Connections that failed the handshake (e.g. an untrusted client certificate).
    pub handshake_failures: AtomicU64,
    /// Streams reset for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Transfers in progress.
    pub active: AtomicU64,
    /// Most transfers in progress at once.
    pub peak_active: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn tls_err(role: &'static str, path: &Path, reason: impl ToString) -> ReceiveError {
    ReceiveError::Tls {
        role,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_certs(
    role: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ReceiveError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(role, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(role, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(role, path, "contains no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// The QUIC server configuration: TLS 1.3, client certificates required from
/// `client_ca_file`, ALPN, the shared transport settings.
///
/// # Errors
/// A TLS file is missing or unusable.
pub fn server_config(config: &ReceiverConfig) -> Result<quinn::ServerConfig, ReceiveError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("client CA", &config.client_ca_file)? {
        roots
            .add(cert)
            .map_err(|e| tls_err("client CA", &config.client_ca_file, e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| tls_err("client CA", &config.client_ca_file, e))?;
    let chain = read_certs("certificate", &config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| tls_err("key", &config.key_file, e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("certificate", &config.cert_file, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err("key", &config.key_file, e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| tls_err("certificate", &config.cert_file, e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(
        config.max_streams_per_connection,
    )));
    Ok(server)
}

/// A bound receiver.
#[derive(Debug)]
pub struct Receiver {
    endpoint: quinn::Endpoint,
    store: Arc<Store>,
    stats: Arc<ReceiverStats>,
}

impl Receiver {
    /// Loads the TLS files, opens the storage directory and binds the UDP socket.
    ///
    /// # Errors
    /// Invalid configuration, TLS files, directory or address.
    pub fn bind(config: &ReceiverConfig) -> Result<Self, ReceiveError> {
        config.validate().map_err(ReceiveError::Config)?;
        let server = server_config(config)?;
        let stats = Arc::new(ReceiverStats::default());
        let store = Store::open(&config.dir, config.checkpoint_bytes, Arc::clone(&stats)).map_err(
            |source| ReceiveError::Io {
                context: format!("opening {}", config.dir.display()),
                source,
            },
        )?;
        let endpoint =
            quinn::Endpoint::server(server, config.listen).map_err(|source| ReceiveError::Io {
                context: format!("binding UDP {}", config.listen),
                source,
            })?;
        Ok(Receiver {
            endpoint,
            store: Arc::new(store),
            stats,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> Result<SocketAddr, ReceiveError> {
        self.endpoint
            .local_addr()
            .map_err(|source| ReceiveError::Io {
                context: "reading the bound address".into(),
                source,
            })
    }

    /// The receiver's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<ReceiverStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts gateways until `shutdown` turns true (or its sender is dropped), then
    /// closes every connection and waits for transfers to checkpoint.
    ///
    /// # Errors
    /// None at present; the `Result` leaves room for fatal conditions.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ReceiveError> {
        let mut connections = JoinSet::new();
        let gateways: Gateways = Arc::default();
        tracing::info!(listen = ?self.endpoint.local_addr().ok(), "bulk upload receiver listening");
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let store = Arc::clone(&self.store);
                    let stats = Arc::clone(&self.stats);
                    connections.spawn(handle_connection(incoming, store, stats, Arc::clone(&gateways)));
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = connections.join_next() => {}
            }
        }
        self.endpoint.close(0u32.into(), b"receiver shutting down");
        while connections.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` (the `wardgate receive` command).
///
/// # Errors
/// See [`Receiver::bind`].
pub async fn run(
    config: ReceiverConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ReceiveError> {
    Receiver::bind(&config)?.serve(shutdown).await
}

/// The live connection of each gateway, by the DER of its client certificate.
type Gateways = Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, quinn::Connection>>>;

/// The DER of the peer's end-entity certificate (the handshake required one).
fn peer_certificate(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .first()
        .map(|c| c.as_ref().to_vec())
}

async fn handle_connection(
    incoming: quinn::Incoming,
    store: Arc<Store>,
    stats: Arc<ReceiverStats>,
    gateways: Gateways,
) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            bump(&stats.handshake_failures, 1);
            tracing::warn!(%remote, error = %e, "bulk upload handshake failed");
            return;
        }
    };
    tracing::debug!(%remote, "gateway connected");
    let identity = peer_certificate(&connection);
    if let Some(identity) = &identity {
        let older = gateways
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(identity.clone(), connection.clone());
        if let Some(older) = older {
            tracing::info!(%remote, "a gateway reconnected; closing its previous connection");
            older.close(
                0u32.into(),
                b"superseded by a new connection from this gateway",
            );
        }
    }
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            stream = connection.accept_bi() => match stream {
                Ok((send, recv)) => {
                    streams.spawn(handle_stream(send, recv, Arc::clone(&store), Arc::clone(&stats)));
                }
                Err(e) => {
                    tracing::debug!(%remote, reason = %e, "gateway connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next() => {}
        }
    }
    while streams.join_next().await.is_some() {}
    if let Some(identity) = identity {
        let mut live = gateways
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live
            .get(&identity)
            .is_some_and(|c| c.stable_id() == connection.stable_id())
        {
            live.remove(&identity);
        }
    }
}

/// One file's conversation. What it holds when the stream ends without a verdict is
/// checkpointed, so the sender's next offer resumes there.
async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    store: Arc<Store>,
    stats: Arc<ReceiverStats>,
) {
    let mut transfer = StreamTransfer {
        session: ReceiverSession::new(),
        partial: None,
        _claim: None,
        store,
        stats,
    };
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => {
                if let Err(e) = transfer.session.handle_input(&buf[..n]) {
                    bump(&transfer.stats.protocol_errors, 1);
                    tracing::warn!(error = %e, "bulk upload protocol error; resetting the stream");
                    let _ = send.reset(1u32.into());
                    let _ = recv.stop(1u32.into());
                    break;
                }
            }
            Ok(None) => {
                if let Err(e) = transfer.session.handle_end_of_stream() {
                    tracing::debug!(reason = %e, "sender ended the stream early");
                }
                break;
            }
            Err(e) => {
                tracing::debug!(reason = %e, "bulk upload stream lost");
                break;
            }
        }
        transfer.run_actions().await;
        let out = transfer.session.take_transmit();
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            break;
        }
        if transfer.session.is_done() {
            // quinn keeps delivering a finished stream's data after the handle is dropped.
            let _ = send.finish();
            break;
        }
    }
    if let Some(mut partial) = transfer.partial.take() {
        let checkpointed = tokio::task::spawn_blocking(move || partial.checkpoint()).await;
        if !matches!(checkpointed, Ok(Ok(()))) {
            tracing::error!(
                "cannot checkpoint a partial upload; it resumes from its last checkpoint"
            );
        }
    }
}

struct StreamTransfer {
    session: ReceiverSession,
    partial: Option<PartialFile>,
    /// Held for its `Drop`: frees the file id for other streams when the transfer ends.
    _claim: Option<Claim>,
    store: Arc<Store>,
    stats: Arc<ReceiverStats>,
}

impl StreamTransfer {
    async fn run_actions(&mut self) {
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        while let Some(action) = self.session.poll_action() {
            if let ReceiverAction::Write { offset, data } = action {
                writes.push((offset, data));
                continue;
            }
            self.flush(&mut writes).await;
            match action {
                ReceiverAction::Lookup(offer) => self.lookup(offer).await,
                ReceiverAction::Verify => self.verify().await,
                ReceiverAction::Discard => {
                    if let Some(partial) = self.partial.take() {
                        let store = Arc::clone(&self.store);
                        let discarded =
                            tokio::task::spawn_blocking(move || store.discard(partial)).await;
                        if !matches!(discarded, Ok(Ok(()))) {
                            tracing::error!("cannot discard a mismatched partial upload");
                        }
                    }
                }
                ReceiverAction::Write { .. } => {}
            }
        }
        self.flush(&mut writes).await;
    }

    async fn lookup(&mut self, offer: wardgate_proto::upload::Offer) {
        let id = offer.file_id.as_str().to_owned();
        if id.ends_with(".json") {
            bump(&self.stats.refusals, 1);
            self.session.refuse(
                RefuseCode::BadOffer,
                "file ids ending in .json are reserved",
            );
            return;
        }
        // A superseded connection's stream may still be checkpointing this file: give it
        // a moment to let go before answering "busy".
        let mut claim = self.store.claim(&id);
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        while claim.is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            claim = self.store.claim(&id);
        }
        let Some(claim) = claim else {
            bump(&self.stats.refusals, 1);
            self.session.refuse(
                RefuseCode::Busy,
                "this file is being received on another stream",
            );
            return;
        };
        self._claim = Some(claim);
        let store = Arc::clone(&self.store);
        let looked = tokio::task::spawn_blocking(move || {
            let result = store.lookup(&offer);
            (offer, result)
        })
        .await;
        let answer = match looked {
            Ok((_, Ok(Lookup::Committed))) => {
                bump(&self.stats.duplicates, 1);
                self.session
                    .lookup_done(wardgate_proto::upload::Held::Committed)
            }
            Ok((_, Ok(Lookup::Conflict))) => {
                bump(&self.stats.refusals, 1);
                tracing::error!(file_id = %id, "offer conflicts with a different file committed under the same id");
                self.session.refuse(
                    RefuseCode::Conflict,
                    "a different file was committed under this id",
                );
                Ok(())
            }
            Ok((_, Ok(Lookup::Partial(partial)))) => {
                let held = partial.held();
                self.partial = Some(*partial);
                self.session.lookup_done(held)
            }
            Ok((_, Err(e))) => {
                bump(&self.stats.refusals, 1);
                tracing::error!(file_id = %id, error = %e, "cannot prepare storage for an upload");
                self.session
                    .refuse(RefuseCode::Unavailable, "storage error");
                Ok(())
            }
            Err(_) => {
                self.session
                    .refuse(RefuseCode::Unavailable, "internal error");
                Ok(())
            }
        };
        if let Err(e) = answer {
            tracing::error!(error = %e, "receiver session refused its own lookup answer");
            self.session
                .refuse(RefuseCode::Unavailable, "internal error");
        }
    }

    async fn flush(&mut self, writes: &mut Vec<(u64, Vec<u8>)>) {
        if writes.is_empty() {
            return;
        }
        let batch = std::mem::take(writes);
        let Some(mut partial) = self.partial.take() else {
            self.session
                .refuse(RefuseCode::Unavailable, "internal error");
            return;
        };
        let bytes: u64 = batch.iter().map(|(_, d)| d.len() as u64).sum();
        let written = tokio::task::spawn_blocking(move || {
            let result = batch
                .iter()
                .try_for_each(|(offset, data)| partial.append(*offset, data));
            (partial, result)
        })
        .await;
        match written {
            Ok((partial, Ok(()))) => {
                bump(&self.stats.bytes_received, bytes);
                self.partial = Some(partial);
            }
            Ok((partial, Err(e))) => {
                tracing::error!(error = %e, "cannot write an upload to storage");
                self.partial = Some(partial);
                bump(&self.stats.refusals, 1);
                self.session
                    .refuse(RefuseCode::Unavailable, "storage error");
            }
            Err(_) => self
                .session
                .refuse(RefuseCode::Unavailable, "internal error"),
        }
    }

    async fn verify(&mut self) {
        let Some(mut partial) = self.partial.take() else {
            self.session
                .refuse(RefuseCode::Unavailable, "internal error");
            return;
        };
        let store = Arc::clone(&self.store);
        let verified = tokio::task::spawn_blocking(move || match partial.verify() {
            Ok(true) => match store.commit(partial, unix_now_ms()) {
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            },
            Ok(false) => Ok(Some(partial)),
            Err(e) => Err(e),
        })
        .await;
        let result = match verified {
            Ok(Ok(None)) => {
                bump(&self.stats.files_committed, 1);
                self.session.verified(true)
            }
            Ok(Ok(Some(mismatched))) => {
                bump(&self.stats.hash_mismatches, 1);
                tracing::error!("uploaded file's SHA-256 does not match its offer; discarding it");
                self.partial = Some(mismatched);
                self.session.verified(false)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot commit a verified upload; it is committed at the next offer");
                self.session
                    .refuse(RefuseCode::Unavailable, "storage error");
                Ok(())
            }
            Err(_) => {
                self.session
                    .refuse(RefuseCode::Unavailable, "internal error");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "receiver session refused its own verdict");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("receiver.toml");
        std::fs::write(
            &path,
            r#"
            listen = "0.0.0.0:4433"
            dir = "/var/lib/wardgate-receiver"
            cert_file = "/etc/wardgate-receiver/server.pem"
            key_file = "/etc/wardgate-receiver/server.key"
            client_ca_file = "/etc/wardgate-receiver/gateways-ca.pem"
            "#,
        )
        .unwrap();
        let config = ReceiverConfig::from_file(&path).unwrap();
        assert_eq!(config.checkpoint_bytes, 8 * 1024 * 1024);
        assert_eq!(config.max_streams_per_connection, 16);

        std::fs::write(&path, "listen = \"0.0.0.0:4433\"\nbogus = 1\n").unwrap();
        assert!(matches!(
            ReceiverConfig::from_file(&path),
            Err(ReceiveError::Config(_))
        ));
        let mut small = config.clone();
        small.checkpoint_bytes = 1;
        assert!(small.validate().unwrap_err().contains("`checkpoint_bytes`"));
    }

    #[test]
    fn missing_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = ReceiverConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("store"),
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
            dir.path().join("ca.pem"),
        );
        let err = Receiver::bind(&config).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
