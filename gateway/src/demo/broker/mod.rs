//! The demo's stand-in cloud: a small in-process MQTT 3.1.1 broker over TLS 1.2/1.3 that
//! requires a client certificate issued by the demo CA — the same mutual TLS the gateway
//! uses against a production broker.
//!
//! Why not `rumqttd`: it was evaluated (see the demo's report): it cannot bind port 0
//! and report the address, has no shutdown, runs its own threads and runtimes with
//! `unwrap()`s, re-reads certificate files for every connection, and adds ~120 crates
//! (a second rustls, two hyper versions, axum) and ~4 MB to the binary. This broker
//! reuses the MQTT codec of `rumqttc`, which the gateway already links, and rustls.
//!
//! Invariants:
//! - Only TLS connections with a client certificate that chains to the demo CA get past
//!   the handshake; the identity is that certificate's CN (see [`core`] for what an
//!   identity may do).
//! - Every complete MQTT packet a client sends is shown, decrypted and byte for byte, to
//!   the [`IngressTap`] before it is decoded; nothing reaches subscribers without passing
//!   the tap first. The demo's leak check relies on this.
//! - Memory is bounded: at most [`MAX_CONNECTIONS`] connections, packets of at most
//!   [`MAX_PACKET_BYTES`], bounded outbound queues (a subscriber that falls behind is
//!   disconnected), and the limits in [`core::Limits`].
//! - [`Broker::shutdown`] stops accepting, closes every connection and waits for every
//!   task it started.

pub mod core;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::{self, check};
use rumqttc::tokio_rustls::TlsAcceptor;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use self::core::{AccessPolicy, BrokerCore, CloseReason, ConnId, CoreStats, Effect, Limits};
use super::certs::subject_common_name;

/// Largest MQTT packet accepted or sent (the generic cloud profile's payloads are at most 256 KiB).
pub const MAX_PACKET_BYTES: usize = 1024 * 1024;
/// Most simultaneous client connections.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must finish the TLS handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ... and send CONNECT within this time after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets queued for one connection's writer.
const OUTBOUND_QUEUE: usize = 1024;
/// How long shutdown waits for connection tasks.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Sees every complete inbound MQTT packet (decrypted) with the sender's identity.
pub type IngressTap = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The TLS configuration was refused (bad certificate or key).
    #[error("broker TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client CA could not be used as a trust anchor.
    #[error("broker client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The listener could not bind.
    #[error("broker listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the broker needs to start.
pub struct BrokerConfig {
    /// Where to listen (port 0 picks a free port; see [`Broker::local_addr`]).
    pub listen: SocketAddr,
    /// The server certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server key.
    pub key: PrivateKeyDer<'static>,
    /// The only CA client certificates may chain to.
    pub client_ca: CertificateDer<'static>,
    /// Topic authorisation.
    pub policy: AccessPolicy,
    /// Sees every inbound packet.
    pub tap: Option<IngressTap>,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("listen", &self.listen)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Broker counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Protocol counters.
    pub core: CoreStats,
    /// TLS handshakes that failed (e.g. no or untrusted client certificate).
    pub handshakes_failed: u64,
    /// Connections closed by the broker for a protocol or policy reason.
    pub connections_refused: u64,
}

struct State {
    core: BrokerCore,
    writers: HashMap<ConnId, mpsc::Sender<Outbound>>,
}

struct Shared {
    state: Mutex<State>,
    handshakes_failed: AtomicU64,
    connections_refused: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the core; keep serving what we can.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands effects to the connections' writers. Never blocks: a writer whose queue is
    /// full loses its sender, which ends its connection (slow consumer).
    fn dispatch(&self, state: &mut State, effects: Vec<Effect>) {
        for effect in effects {
            let (conn, message) = match effect {
                Effect::Send(conn, packet) => (conn, Outbound::Packet(packet)),
                Effect::Close(conn, reason) => {
                    if !matches!(
                        reason,
                        CloseReason::ClientDisconnected | CloseReason::TakenOver
                    ) {
                        self.connections_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%reason, conn, "demo broker closes a connection");
                    }
                    (conn, Outbound::Close)
                }
            };
            let overflowed = match state.writers.get(&conn) {
                Some(writer) => writer.try_send(message).is_err(),
                None => false,
            };
            if overflowed {
                state.writers.remove(&conn);
            }
        }
    }
}

enum Outbound {
    Packet(Packet),
    Close,
}

/// A running broker.
pub struct Broker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Binds and starts serving.
    ///
    /// # Errors
    /// A [`BrokerError`] if the TLS material is unusable or the address cannot be bound.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(config.client_ca)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(config.cert_chain, config.key)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core: BrokerCore::new(config.policy, Limits::default()),
                writers: HashMap::new(),
            }),
            handshakes_failed: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            config.tap,
            shutdown_rx,
        ));
        Ok(Broker {
            addr,
            shared,
            shutdown,
            accept_task,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> BrokerStats {
        let core = self.shared.lock().core.stats();
        BrokerStats {
            core,
            handshakes_failed: self.shared.handshakes_failed.load(Ordering::Relaxed),
            connections_refused: self.shared.connections_refused.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every connection and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.accept_task.await {
            tracing::error!(error = %e, "demo broker accept task failed");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    tap: Option<IngressTap>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    let mut next_conn: ConnId = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "demo broker accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream); // Over the connection limit.
            continue;
        };
        next_conn += 1;
        let conn = next_conn;
        let (acceptor, shared, tap, shutdown) = (
            acceptor.clone(),
            shared.clone(),
            tap.clone(),
            shutdown.clone(),
        );
        connections.spawn(async move {
            serve_connection(stream, acceptor, &shared, conn, tap, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: &Shared,
    conn: ConnId,
    tap: Option<IngressTap>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "demo broker: TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| subject_common_name(leaf));
    let Some(identity) = identity else {
        shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("demo broker: client certificate has no usable common name");
        return;
    };

    let (writer_tx, mut outbound) = mpsc::channel(OUTBOUND_QUEUE);
    {
        let mut state = shared.lock();
        state.core.open(conn, identity.clone());
        state.writers.insert(conn, writer_tx);
    }

    let (mut reader, mut writer) = tokio::io::split(tls);
    let mut inbound = BytesMut::with_capacity(16 * 1024);
    let mut encoded = BytesMut::with_capacity(16 * 1024);
    // MQTT-3.1.2-24: the client must send something within one and a half keep-alive
    // periods; only inbound traffic counts.
    let mut last_inbound = tokio::time::Instant::now();
    'connection: loop {
        let idle_limit = match shared.lock().core.keep_alive_secs(conn) {
            None => Some(CONNECT_TIMEOUT),
            Some(0) => None,
            Some(secs) => Some(Duration::from_millis(u64::from(secs) * 1500)),
        };
        let deadline = idle_limit.map(|limit| last_inbound + limit);
        let idle = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = reader.read_buf(&mut inbound) => {
                match read {
                    Ok(0) | Err(_) => break 'connection,
                    Ok(_) => {
                        last_inbound = tokio::time::Instant::now();
                        if !process_inbound(&mut inbound, shared, conn, &identity, tap.as_ref()) {
                            break 'connection;
                        }
                    }
                }
            }
            message = outbound.recv() => {
                match message {
                    Some(Outbound::Packet(packet)) => {
                        encoded.clear();
                        if packet.write(&mut encoded, MAX_PACKET_BYTES).is_err()
                            || writer.write_all(&encoded).await.is_err()
                        {
                            break 'connection;
                        }
                    }
                    Some(Outbound::Close) | None => break 'connection,
                }
            }
            () = idle => break 'connection,
            _ = shutdown.changed() => break 'connection,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
    let mut state = shared.lock();
    state.writers.remove(&conn);
    let effects = state.core.closed(conn);
    shared.dispatch(&mut state, effects);
}

/// Decodes and handles every complete packet in `inbound`. Returns `false` when the
/// connection must close (malformed or oversized input).
fn process_inbound(
    inbound: &mut BytesMut,
    shared: &Shared,
    conn: ConnId,
    identity: &str,
    tap: Option<&IngressTap>,
) -> bool {
    loop {
        let header = match check(inbound.iter(), MAX_PACKET_BYTES) {
            Ok(header) => header,
            Err(mqttbytes::Error::InsufficientBytes(_)) => return true,
            Err(e) => {
                tracing::warn!(error = %e, conn, "demo broker: malformed packet");
                return false;
            }
        };
        let mut frame = inbound.split_to(header.frame_length());
        if let Some(tap) = tap {
            tap(identity, &frame);
        }
        let packet = match Packet::read(&mut frame, MAX_PACKET_BYTES) {
            Ok(packet) => packet,
            Err(e) => {
                tracing::warn!(error = %e, conn, "demo broker: undecodable packet");
                return false;
            }
        };
        let mut state = shared.lock();
        let effects = state.core.handle(conn, packet);
        shared.dispatch(&mut state, effects);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use crate::demo::certs::DemoPki;
    use rumqttc::{AsyncClient, Event, MqttOptions, QoS, TlsConfiguration, Transport};
    use std::sync::atomic::AtomicUsize;
    use std::time::SystemTime;

    async fn broker(pki: &DemoPki, tap: Option<IngressTap>) -> Broker {
        Broker::start(BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert_chain: vec![pki.broker.cert_der()],
            key: pki.broker.key_der(),
            client_ca: pki.ca_der(),
            policy: AccessPolicy::new("wardgate", "viewer"),
            tap,
        })
        .await
        .unwrap()
    }

    fn client(
        addr: SocketAddr,
        ca: CertificateDer<'static>,
        auth: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
        id: &str,
    ) -> (AsyncClient, rumqttc::EventLoop) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let tls = match auth {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        AsyncClient::new(options, 10)
    }

    /// Polls until `done` says so or the event loop fails; returns the failure.
    async fn poll_until(
        events: &mut rumqttc::EventLoop,
        mut done: impl FnMut(&Event) -> bool,
    ) -> Result<(), rumqttc::ConnectionError> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = events.poll().await?;
                if done(&event) {
                    return Ok(());
                }
            }
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn mutual_tls_publish_reaches_subscriber_through_the_tap() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let tapped = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
        let tap: IngressTap = {
            let tapped = tapped.clone();
            Arc::new(move |identity: &str, packet: &[u8]| {
                tapped
                    .lock()
                    .unwrap()
                    .push((identity.to_owned(), packet.len()))
            })
        };
        let broker = broker(&pki, Some(tap)).await;
        let addr = broker.local_addr();

        let (viewer, mut viewer_events) = client(
            addr,
            pki.ca_der(),
            Some((pki.viewer.cert_der(), pki.viewer.key_der())),
            "viewer",
        );
        viewer
            .subscribe("wardgate/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        poll_until(&mut viewer_events, |e| {
            matches!(e, Event::Incoming(Packet::SubAck(_)))
        })
        .await
        .unwrap();

        let (gateway, mut gateway_events) = client(
            addr,
            pki.ca_der(),
            Some((pki.gateway.cert_der(), pki.gateway.key_der())),
            "gw",
        );
        gateway
            .publish(
                "wardgate/gw/records/observation",
                QoS::AtLeastOnce,
                false,
                b"{\"x\":1}".to_vec(),
            )
            .await
            .unwrap();
        poll_until(&mut gateway_events, |e| {
            matches!(e, Event::Incoming(Packet::PubAck(_)))
        })
        .await
        .unwrap();

        let mut payload = None;
        poll_until(&mut viewer_events, |e| match e {
            Event::Incoming(Packet::Publish(p)) => {
                payload = Some(p.payload.to_vec());
                true
            }
            _ => false,
        })
        .await
        .unwrap();
        assert_eq!(payload.as_deref(), Some(&b"{\"x\":1}"[..]));

        let tapped = tapped.lock().unwrap().clone();
        assert!(tapped.iter().any(|(who, _)| who == "gw"), "{tapped:?}");
        assert!(tapped.iter().any(|(who, _)| who == "viewer"), "{tapped:?}");
        let stats = broker.stats();
        assert_eq!(stats.core.publishes_in, 1);
        assert_eq!(stats.handshakes_failed, 0);
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn clients_without_a_certificate_from_the_demo_ca_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = DemoPki::generate(other_dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let tapped = Arc::new(AtomicUsize::new(0));
        let tap: IngressTap = {
            let tapped = tapped.clone();
            Arc::new(move |_: &str, _: &[u8]| {
                tapped.fetch_add(1, Ordering::Relaxed);
            })
        };
        let broker = broker(&pki, Some(tap)).await;
        let addr = broker.local_addr();

        let (_anonymous, mut events) = client(addr, pki.ca_der(), None, "anonymous");
        assert!(poll_until(&mut events, |_| false).await.is_err());
        let (_stranger, mut events) = client(
            addr,
            pki.ca_der(),
            Some((other.gateway.cert_der(), other.gateway.key_der())),
            "stranger",
        );
        assert!(poll_until(&mut events, |_| false).await.is_err());

        // The failures are counted by the connection tasks; give them a moment.
        for _ in 0..100 {
            if broker.stats().handshakes_failed >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(broker.stats().handshakes_failed, 2);
        assert_eq!(
            tapped.load(Ordering::Relaxed),
            0,
            "nothing may pass the tap without a valid certificate"
        );
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn publishing_outside_its_prefix_disconnects_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DemoPki::generate(dir.path(), "gw", "viewer", SystemTime::now()).unwrap();
        let broker = broker(&pki, None).await;
        let (gateway, mut events) = client(
            broker.local_addr(),
            pki.ca_der(),
            Some((pki.gateway.cert_der(), pki.gateway.key_der())),
            "gw",
        );
        gateway
            .publish(
                "wardgate/someone-else/records/alarm",
                QoS::AtLeastOnce,
                false,
                b"x".to_vec(),
            )
            .await
            .unwrap();
        assert!(poll_until(&mut events, |e| matches!(
            e,
            Event::Incoming(Packet::PubAck(_))
        ))
        .await
        .is_err());
        assert_eq!(broker.stats().core.publishes_denied, 1);
        broker.shutdown().await;
    }
}
