//! The tokio driver of the MQTT uplink: a thin loop around rumqttc's `EventLoop`, the
//! sans-IO [`InFlight`] bookkeeping, the [`BatchEncoder`] and the [`Backoff`].
//!
//! How packet ids are learnt: rumqttc assigns them itself. Requests go from the
//! `AsyncClient` to the event loop through a FIFO channel and the event loop turns them
//! into PUBLISH packets one at a time, in that order, reporting each as
//! `Event::Outgoing(Outgoing::Publish(pkid))`. So the n-th `Outgoing::Publish` with a
//! non-zero id belongs to the n-th batch handed over; the [`InFlight`] FIFO pairs them.
//! The only other publishes on the client are the twin's ([`crate::twin`]), always at
//! QoS 0: rumqttc gives a QoS 0 publish no packet id and reports it as
//! `Outgoing::Publish(0)` (rumqttc 0.25 `MqttState::outgoing_publish` assigns ids only
//! when `qos != AtMostOnce`), while QoS 1 ids are never 0, so id 0 is the twin's and
//! never paired. rumqttc allocates ids cyclically in `1..=inflight_window`, and
//! [`InFlight`] never lets more than `inflight_window` publishes exist counting from the
//! oldest unacknowledged one, so the allocator never comes round to a live id and
//! rumqttc's packet-id collision path (`AwaitAck`) is not reached; should a broker make it
//! happen anyway, the pairing still holds (rumqttc reports `Publish` for the held request
//! once its id is free, before reading further requests). The twin's SUBSCRIBE also takes
//! an id from that allocator, but it is the first request of every connection, handed
//! over before any batch, so every `inflight_window` consecutive batches still get
//! distinct ids.
//!
//! Invariants:
//! * The event loop's `poll` future is never dropped mid-flight while the session lives:
//!   waiting for new records or for a timer happens *beside* it (the future is pinned and
//!   resumed), because dropping it in the middle of a write could lose part of a packet.
//! * One rumqttc client and event loop per connection attempt, clean session: after a
//!   disconnect nothing of rumqttc's in-flight state is replayed; the spool is.
//! * A record source error ends [`run`] (the spool is local; if it fails, retrying the
//!   network does not help). Network, broker and later credential errors are retried.
//! * The twin never holds records back for long: its requests are QoS 0 publishes and
//!   one subscription per connection, at most [`TWIN_REQUEST_SLOTS`] waiting in the
//!   client's channel at once (which is sized for them on top of the window), and a
//!   desired outcome waits at most [`crate::twin::OUTCOME_SEND_TIMEOUT`] for the daemon.
//!   A desired message too large for the client ends the session like any protocol
//!   error; the twin then stops subscribing to desired state until restart, so a
//!   retained oversized document cannot stall the records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, StateError, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};

use super::backoff::Backoff;
use super::batch::{BatchEncoder, HeldBack};
use super::config::{MqttUplinkConfig, SessionPlan};
use super::inflight::InFlight;
use super::tls::{self, TlsMaterial};
use crate::twin::session::{ReportStep, TwinRequest};
use crate::twin::{
    DesiredOutcome, DeviceCatalog, TwinChannels, TwinReport, TwinSession, OUTCOME_SEND_TIMEOUT,
};
use crate::uplink::{OutgoingRecord, RecordSource, UplinkError, UplinkStatus};

/// A connection that stayed up this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// On shutdown, how long to wait for outstanding PUBACKs (fewer duplicates next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// TCP connect plus TLS handshake plus CONNACK must finish within this time.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Headroom above the payload for the PUBLISH fixed header, topic and packet id.
const PACKET_OVERHEAD: usize = 4 * 1024;
/// Without the twin, incoming packets are only CONNACK, PUBACK and PINGRESP; anything
/// larger is hostile.
const MAX_INCOMING_PACKET: usize = 16 * 1024;
/// With the twin, desired documents arrive too. Those above
/// [`crate::twin::core::MAX_DESIRED_PAYLOAD`] are still read, so they can be refused and
/// audited; only beyond this does the client drop the connection.
const TWIN_MAX_INCOMING_PACKET: usize = 256 * 1024;
/// Twin requests (subscription, GET, reported document) that may wait in the client's
/// request channel at once. The channel has this many slots beyond the records' window;
/// a reported document is handed over only while fewer than two twin requests wait, and
/// the subscription and the GET come once per connection, so at most three ever wait.
pub const TWIN_REQUEST_SLOTS: usize = 4;
/// A reported document is handed over only while fewer twin requests than this wait.
const TWIN_REPORT_QUEUE: usize = 2;

/// Runs the uplink until `shutdown` becomes `true` (or its sender is dropped).
///
/// # Errors
/// At start: invalid configuration or credentials ([`UplinkError::Config`],
/// [`UplinkError::CredentialFile`], [`UplinkError::InvalidCredential`],
/// [`UplinkError::KeyMismatch`], [`UplinkError::CertificateExpired`], ...). At any time:
/// [`UplinkError::Source`] if the record source fails. Broker and network failures are
/// never returned: they are retried and reported through `status`.
pub async fn run<S: RecordSource>(
    config: MqttUplinkConfig,
    source: Arc<S>,
    status: watch::Sender<UplinkStatus>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    run_with_twin(config, source, status, shutdown, None).await
}

/// [`run`], with the device/gateway twin ([`crate::twin`]) on the same connection when
/// `twin` is given: reported documents from [`TwinChannels::reports`] are published
/// through the profile's twin mechanism, and desired documents are checked against the
/// allow-list and sent to [`TwinChannels::outcomes`]. Records are delivered exactly as
/// by [`run`].
///
/// # Errors
/// As [`run`].
pub async fn run_with_twin<S: RecordSource>(
    config: MqttUplinkConfig,
    source: Arc<S>,
    status: watch::Sender<UplinkStatus>,
    mut shutdown: watch::Receiver<bool>,
    twin: Option<TwinChannels>,
) -> Result<(), UplinkError> {
    let plan = config.plan()?;
    let mut twin = twin.map(|channels| TwinDriver::new(channels, &config));
    let mut material = Some(load_tls(&config, &plan)?);
    let encoder = BatchEncoder::new(
        &plan.client_id,
        plan.max_payload_bytes,
        plan.max_records_per_publish,
    );
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    let clock = Instant::now();

    loop {
        if shutdown_now(&shutdown) {
            return Ok(());
        }
        // Credentials are re-read for every attempt after the first, which used the ones
        // checked at start.
        let loaded = match material.take() {
            Some(m) => Ok(m),
            None => load_tls(&config, &plan),
        };
        let end = match loaded {
            Ok(material) => {
                status.send_modify(|s| s.client_cert_not_after = Some(material.not_after));
                let mut session = Session::new(
                    &config,
                    &plan,
                    &encoder,
                    source.as_ref(),
                    &status,
                    clock,
                    twin.as_mut(),
                );
                let end = session.run(material, &mut shutdown).await;
                session.abandon();
                end
            }
            Err(error) => SessionEnd::Failed {
                error,
                connected_for: None,
            },
        };
        // Whatever was leased and not acknowledged is replayed by the next session.
        source.release_leases();
        status.send_modify(|s| {
            if s.connected {
                s.connected = false;
                s.since_ms = unix_ms();
            }
            s.in_flight_records = 0;
        });

        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Fatal(error) => {
                tracing::error!(error = %error, "uplink stopped");
                status.send_modify(|s| s.last_error = Some(error.to_string()));
                return Err(error);
            }
            SessionEnd::Failed {
                error,
                connected_for,
            } => {
                if connected_for.is_some_and(|d| d >= STABLE_CONNECTION) {
                    backoff.reset();
                }
                let delay = backoff.next_delay(fastrand::f64());
                tracing::warn!(
                    error = %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    attempt = backoff.attempt(),
                    "uplink connection failed"
                );
                status.send_modify(|s| {
                    s.connection_failures += 1;
                    s.last_error = Some(error.to_string());
                });
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown_requested(&mut shutdown) => return Ok(()),
                }
            }
        }
    }
}

/// Connects once with the configured credentials and disconnects again: for a
/// `check-config`-style command and for tests. Does not publish anything.
///
/// # Errors
/// Configuration and credential errors as [`run`]; and the classified connection
/// failure ([`UplinkError::TlsHandshake`], [`UplinkError::ConnectionRefused`],
/// [`UplinkError::Connection`]).
pub async fn check_connection(config: &MqttUplinkConfig) -> Result<(), UplinkError> {
    let plan = config.plan()?;
    let material = load_tls(config, &plan)?;
    let (client, mut eventloop) = new_client(&plan, material, false);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(classify(&e, config, &plan)),
        }
    }
    disconnect(&client, &mut eventloop).await;
    Ok(())
}

fn load_tls(config: &MqttUplinkConfig, plan: &SessionPlan) -> Result<TlsMaterial, UplinkError> {
    tls::load(
        &config.ca_file,
        &config.cert_file,
        &config.key_file,
        plan.alpn.as_deref(),
        unix_secs(),
    )
}

fn new_client(plan: &SessionPlan, material: TlsMaterial, twin: bool) -> (AsyncClient, EventLoop) {
    // Every value below was validated by `MqttUplinkConfig::plan`, so rumqttc's
    // asserting setters cannot panic.
    let mut options = MqttOptions::new(
        plan.client_id.clone(),
        plan.broker.host.clone(),
        plan.broker.port,
    );
    options
        .set_keep_alive(plan.keep_alive)
        .set_clean_session(true)
        .set_inflight(plan.inflight_window)
        .set_max_packet_size(
            if twin {
                TWIN_MAX_INCOMING_PACKET
            } else {
                MAX_INCOMING_PACKET
            },
            // Reported documents are cut to the payload limit too (`TwinSession::new`).
            plan.max_payload_bytes + PACKET_OVERHEAD,
        )
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            material.client_config,
        )));
    if let Some(username) = &plan.username {
        // X.509 authentication: a username for the profile, never a password (rumqttc
        // omits an empty one from CONNECT).
        options.set_credentials(username.clone(), String::new());
    }
    // The channel never fills: the driver hands over at most `inflight_window` batches
    // before their packet ids are known, and at most `TWIN_REQUEST_SLOTS` twin requests.
    let (client, mut eventloop) = AsyncClient::new(
        options,
        usize::from(plan.inflight_window) + 1 + TWIN_REQUEST_SLOTS,
    );
    let mut network = NetworkOptions::new();
    // Publishes are flushed one by one; Nagle would hold small ones back for a delayed ACK.
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Sends DISCONNECT and waits briefly for it to be written.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    // Not written in time: the broker notices the closed socket instead.
    let _ = written.await;
}

/// How a session ended.
enum SessionEnd {
    /// Shutdown requested.
    Shutdown,
    /// The session failed; retry after backoff.
    Failed {
        error: UplinkError,
        connected_for: Option<Duration>,
    },
    /// Stop the uplink.
    Fatal(UplinkError),
}

/// What the inner select produced.
enum Step {
    Event(Result<Event, ConnectionError>),
    End(SessionEnd),
}

/// One connection attempt and, if it succeeds, the session on it.
struct Session<'a, S> {
    config: &'a MqttUplinkConfig,
    plan: &'a SessionPlan,
    encoder: &'a BatchEncoder,
    source: &'a S,
    status: &'a watch::Sender<UplinkStatus>,
    clock: Instant,
    inflight: InFlight,
    /// Leased records not yet in a publish, in lease order.
    pending: VecDeque<OutgoingRecord>,
    pending_bytes: usize,
    /// False once a lease came back empty; true again when the source signals.
    source_may_have_more: bool,
    connected_at: Option<Instant>,
    draining_until: Option<tokio::time::Instant>,
    /// The twin, if enabled; it outlives sessions (debounce, removed devices).
    twin: Option<&'a mut TwinDriver>,
}

impl<'a, S: RecordSource> Session<'a, S> {
    fn new(
        config: &'a MqttUplinkConfig,
        plan: &'a SessionPlan,
        encoder: &'a BatchEncoder,
        source: &'a S,
        status: &'a watch::Sender<UplinkStatus>,
        clock: Instant,
        mut twin: Option<&'a mut TwinDriver>,
    ) -> Self {
        if let Some(twin) = twin.as_deref_mut() {
            // A new client: nothing of the previous one's channel is waiting.
            twin.queued = 0;
            twin.report_due_ms = None;
        }
        Session {
            config,
            plan,
            encoder,
            source,
            status,
            clock,
            inflight: InFlight::new(plan.inflight_window),
            pending: VecDeque::new(),
            pending_bytes: 0,
            source_may_have_more: true,
            connected_at: None,
            draining_until: None,
            twin,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn failed(&self, error: UplinkError) -> SessionEnd {
        SessionEnd::Failed {
            error,
            connected_for: self.connected_at.map(|t| t.elapsed()),
        }
    }

    fn abandon(&mut self) {
        let abandoned = self.inflight.abandon();
        if abandoned.publishes > 0 || !self.pending.is_empty() {
            tracing::info!(
                publishes = abandoned.publishes,
                records = abandoned.records + self.pending.len(),
                "unacknowledged records will be replayed from the spool"
            );
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    async fn run(
        &mut self,
        material: TlsMaterial,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (client, mut eventloop) = new_client(self.plan, material, self.twin.is_some());
        let ack_timeout_ms = u64::try_from(self.config.ack_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let step = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    let connected = self.connected_at.is_some();
                    let draining = self.draining_until.is_some();
                    if connected && !draining {
                        if let Err(end) = self.top_up(&client).await {
                            break Step::End(end);
                        }
                        self.twin_report(&client);
                    }
                    // While twin requests wait in the client's channel (the window may be
                    // full), a change is picked up once they are written: listening now
                    // would spin on a change `twin_report` cannot act on yet.
                    let twin_listening = connected
                        && !draining
                        && self
                            .twin
                            .as_ref()
                            .is_some_and(|t| t.reports_open && t.queued < TWIN_REPORT_QUEUE);
                    let report_due = self
                        .twin
                        .as_ref()
                        .and_then(|t| t.report_due_ms)
                        .filter(|_| connected && !draining)
                        .map(|ms| {
                            tokio::time::Instant::from_std(self.clock + Duration::from_millis(ms))
                        });
                    let want_records = connected
                        && !draining
                        && self.inflight.has_room()
                        && !self.source_may_have_more;
                    let ack_deadline = self.inflight.ack_deadline_ms(ack_timeout_ms).map(|ms| {
                        tokio::time::Instant::from_std(self.clock + Duration::from_millis(ms))
                    });
                    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
                    tokio::select! {
                        biased;
                        () = shutdown_requested(shutdown), if !draining => {
                            if !connected || self.inflight.is_empty() {
                                break Step::End(SessionEnd::Shutdown);
                            }
                            tracing::info!(publishes = self.inflight.len(), "shutting down; waiting briefly for outstanding PUBACKs");
                            self.draining_until = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                        }
                        event = &mut poll => break Step::Event(event),
                        () = self.source.wait_for_pending(), if want_records => {
                            self.source_may_have_more = true;
                        }
                        () = tokio::time::sleep_until(ack_deadline.unwrap_or(far)), if ack_deadline.is_some() => {
                            let broker = self.plan.broker.to_string();
                            break Step::End(self.failed(UplinkError::AckTimeout { broker, timeout: self.config.ack_timeout }));
                        }
                        () = tokio::time::sleep_until(self.draining_until.unwrap_or(far)), if draining => {
                            break Step::End(SessionEnd::Shutdown);
                        }
                        changed = report_changed(self.twin.as_deref_mut()), if twin_listening => {
                            if let Some(twin) = self.twin.as_deref_mut() {
                                if changed {
                                    twin.session.mark_dirty();
                                } else {
                                    // The daemon dropped its sender: no more reports.
                                    twin.reports_open = false;
                                }
                            }
                        }
                        () = tokio::time::sleep_until(report_due.unwrap_or(far)), if report_due.is_some() => {
                            if let Some(twin) = self.twin.as_deref_mut() {
                                twin.report_due_ms = None;
                                twin.session.mark_dirty();
                            }
                        }
                    }
                }
            };
            let event = match step {
                Step::Event(event) => event,
                Step::End(SessionEnd::Shutdown) => {
                    if self.connected_at.is_some() {
                        disconnect(&client, &mut eventloop).await;
                    }
                    return SessionEnd::Shutdown;
                }
                Step::End(end) => return end,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    self.on_connected();
                    if let Some(twin) = self.twin.as_deref_mut() {
                        // First request of the connection: see the module documentation.
                        if let Some(request) = twin.session.on_connected() {
                            twin.hand(&client, request);
                        }
                    }
                }
                // QoS 0: a twin publish, never paired with a batch.
                Ok(Event::Outgoing(Outgoing::Publish(0))) if self.twin.is_some() => {
                    if let Some(twin) = self.twin.as_deref_mut() {
                        twin.queued = twin.queued.saturating_sub(1);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Err(e) = self.inflight.on_publish_sent(pkid, self.now_ms()) {
                        return self.failed(e.into());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(_))) => {
                    if let Some(twin) = self.twin.as_deref_mut() {
                        twin.queued = twin.queued.saturating_sub(1);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if let Some(twin) = self.twin.as_deref_mut() {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                        if let Some(request) = twin.session.on_suback(granted) {
                            twin.hand(&client, request);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(twin) = self.twin.as_deref_mut() {
                        twin.on_incoming(&publish.topic, &publish.payload).await;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Err(end) = self.on_puback(ack.pkid).await {
                        return end;
                    }
                    if self.draining_until.is_some() && self.inflight.is_empty() {
                        disconnect(&client, &mut eventloop).await;
                        return SessionEnd::Shutdown;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(twin) = self.twin.as_deref_mut() {
                        twin.on_connection_error(&e);
                    }
                    return self.failed(classify(&e, self.config, self.plan));
                }
            }
        }
    }

    /// Publishes the reported document if it is due and the client's channel has room.
    fn twin_report(&mut self, client: &AsyncClient) {
        let now_ms = self.now_ms();
        let Some(twin) = self.twin.as_deref_mut() else {
            return;
        };
        if twin.queued >= TWIN_REPORT_QUEUE {
            // Sent when the waiting requests are written (the event marks nothing dirty,
            // so the document stays dirty until then).
            return;
        }
        // `borrow_and_update` below marks the value seen, so a change that arrived since
        // the select last looked would otherwise never wake it: take it into account here.
        if twin.reports.has_changed().unwrap_or(false) {
            twin.session.mark_dirty();
        }
        let uplink = self.status.borrow().clone();
        let step = {
            let report = twin.reports.borrow_and_update();
            twin.session.poll_report(now_ms, report.as_ref(), &uplink)
        };
        match step {
            ReportStep::Idle => twin.report_due_ms = None,
            ReportStep::WaitUntil(at) => twin.report_due_ms = Some(at),
            ReportStep::Publish(request) => {
                twin.report_due_ms = None;
                twin.hand(client, request);
            }
        }
    }

    fn on_connected(&mut self) {
        self.connected_at = Some(Instant::now());
        self.source_may_have_more = true;
        tracing::info!(broker = %self.plan.broker, client_id = %self.plan.client_id, "uplink connected");
        self.status.send_modify(|s| {
            s.connected = true;
            s.since_ms = unix_ms();
            s.connects += 1;
        });
    }

    async fn on_puback(&mut self, pkid: u16) -> Result<(), SessionEnd> {
        let released = self
            .inflight
            .on_puback(pkid)
            .map_err(|e| self.failed(e.into()))?;
        if released.records.is_empty() {
            return Ok(());
        }
        let count = released.records.len() as u64;
        self.source
            .ack(released.records)
            .await
            .map_err(SessionEnd::Fatal)?;
        let in_flight = (self.inflight.records() + self.pending.len()) as u64;
        self.status.send_modify(|s| {
            s.published_records += count;
            s.published_batches += released.publishes;
            s.in_flight_records = in_flight;
        });
        Ok(())
    }

    /// Leases and publishes while the window has room and the source has records.
    async fn top_up(&mut self, client: &AsyncClient) -> Result<(), SessionEnd> {
        let budget = self.encoder.record_budget();
        let max_records = self.encoder.max_records();
        let mut held_back = Vec::new();
        let mut published = false;
        while self.inflight.has_room() {
            if self.source_may_have_more
                && self.pending_bytes < budget
                && self.pending.len() < max_records
            {
                let leased = self
                    .source
                    .lease(
                        max_records - self.pending.len(),
                        budget - self.pending_bytes,
                    )
                    .await
                    .map_err(SessionEnd::Fatal)?;
                if leased.is_empty() {
                    self.source_may_have_more = false;
                }
                for record in leased {
                    self.pending_bytes += record.payload.len();
                    self.pending.push_back(record);
                }
            }
            let batch = self.encoder.encode(&mut self.pending, &mut held_back);
            // Recount whether or not a batch came out: held-back records left `pending` too.
            self.pending_bytes = self.pending.iter().map(|r| r.payload.len()).sum();
            let Some(batch) = batch else { break };
            client
                .try_publish(
                    self.plan.topic(batch.priority),
                    QoS::AtLeastOnce,
                    false,
                    batch.payload,
                )
                .map_err(|e| {
                    self.failed(UplinkError::Connection {
                        broker: self.plan.broker.to_string(),
                        reason: format!("MQTT client refused a publish: {e}"),
                    })
                })?;
            self.inflight
                .enqueue(batch.records)
                .map_err(|e| self.failed(e.into()))?;
            published = true;
        }
        if !held_back.is_empty() {
            self.report_held_back(&held_back);
        }
        if published {
            let in_flight = (self.inflight.records() + self.pending.len()) as u64;
            self.status.send_if_modified(|s| {
                let changed = s.in_flight_records != in_flight;
                s.in_flight_records = in_flight;
                changed
            });
        }
        Ok(())
    }

    fn report_held_back(&self, held_back: &[HeldBack]) {
        for held in held_back {
            match held {
                HeldBack::TooLarge {
                    id,
                    encoded_bytes,
                    limit,
                } => tracing::error!(
                    record = %id,
                    encoded_bytes,
                    limit,
                    "record is larger than the broker's payload limit; it stays in the spool unsent"
                ),
                HeldBack::NotJsonObject { id } => tracing::error!(
                    record = %id,
                    "record body is not a JSON object; it stays in the spool unsent"
                ),
            }
        }
        let count = held_back.len() as u64;
        self.status.send_modify(|s| s.held_back_records += count);
    }
}

/// The twin's state that outlives a connection, and its channels to the daemon.
struct TwinDriver {
    session: TwinSession,
    reports: watch::Receiver<Option<TwinReport>>,
    reports_open: bool,
    outcomes: mpsc::Sender<DesiredOutcome>,
    devices: DeviceCatalog,
    /// Twin requests handed to the current client and not yet written.
    queued: usize,
    /// When a debounced reported document is due (session clock, ms).
    report_due_ms: Option<u64>,
}

impl TwinDriver {
    fn new(channels: TwinChannels, config: &MqttUplinkConfig) -> Self {
        TwinDriver {
            session: TwinSession::new(
                config.profile,
                &config.gateway_id,
                config.max_payload_bytes,
                channels.options,
            ),
            reports: channels.reports,
            reports_open: true,
            outcomes: channels.outcomes,
            devices: channels.devices,
            queued: 0,
            report_due_ms: None,
        }
    }

    /// Hands a request to the client. A refusal (the channel is sized so it cannot be
    /// full; closed means the connection is ending anyway) is logged and dropped: the next
    /// connection starts the twin afresh.
    fn hand(&mut self, client: &AsyncClient, request: TwinRequest) {
        let handed = match request {
            TwinRequest::Subscribe(filters) => client.try_subscribe_many(
                filters
                    .into_iter()
                    .map(|filter| SubscribeFilter::new(filter, QoS::AtLeastOnce)),
            ),
            TwinRequest::Publish {
                topic,
                payload,
                retain,
            } => client.try_publish(topic, QoS::AtMostOnce, retain, payload),
        };
        match handed {
            Ok(()) => self.queued += 1,
            Err(e) => {
                tracing::warn!(error = %e, "twin request not handed to the MQTT client");
                self.session.mark_dirty();
            }
        }
    }

    async fn on_incoming(&mut self, topic: &str, payload: &[u8]) {
        let devices = &self.devices;
        let Some(outcome) = self.session.on_incoming(topic, payload, || devices()) else {
            return;
        };
        tracing::info!(
            source = outcome.source.name(),
            version = outcome.version,
            complete = outcome.complete,
            accepted = outcome.accepted.len(),
            refused = outcome.refused.len(),
            "desired twin settings received"
        );
        for setting in &outcome.accepted {
            tracing::info!(key = %setting.key(), value = %setting.value_text(), "desired setting accepted");
        }
        for refusal in &outcome.refused {
            tracing::warn!(key = %refusal.key, reason = %refusal.reason, "desired setting refused");
        }
        if self.outcomes.is_closed() {
            tracing::warn!("nobody applies desired twin settings any more; outcome dropped");
            return;
        }
        match tokio::time::timeout(OUTCOME_SEND_TIMEOUT, self.outcomes.send(outcome)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                tracing::warn!("nobody applies desired twin settings any more; outcome dropped");
            }
            Err(_) => tracing::error!(
                timeout_ms = u64::try_from(OUTCOME_SEND_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                "the daemon did not take a desired twin outcome in time; dropped (the next connect fetches the desired state again)"
            ),
        }
    }

    fn on_connection_error(&mut self, error: &ConnectionError) {
        if let ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(bytes),
        )) = error
        {
            if self.session.desired_enabled() {
                tracing::error!(
                    bytes,
                    limit = TWIN_MAX_INCOMING_PACKET,
                    "a desired twin message exceeds the client's limit; desired settings are \
                     no longer received until restart (records and reported state continue)"
                );
                self.session.disable_desired();
            }
        }
    }
}

/// Resolves when the daemon's report changed (`true`) or its sender is gone (`false`);
/// never without a twin. Cancel-safe.
async fn report_changed(twin: Option<&mut TwinDriver>) -> bool {
    match twin {
        Some(twin) => twin.reports.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Turns a rumqttc error into an operator-level [`UplinkError`].
fn classify(error: &ConnectionError, config: &MqttUplinkConfig, plan: &SessionPlan) -> UplinkError {
    let broker = plan.broker.to_string();
    if let ConnectionError::ConnectionRefused(code) = error {
        let hint = match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                " (is this gateway's certificate registered and allowed to connect with this client id?)"
            }
            ConnectReturnCode::BadClientId => " (the broker does not accept the gateway id as client id)",
            _ => "",
        };
        return UplinkError::ConnectionRefused {
            broker,
            reason: format!("{code:?}{hint}"),
        };
    }
    if let Some(tls_error) = tls::find_rustls_error(error) {
        return UplinkError::TlsHandshake {
            broker,
            reason: tls::explain_tls_error(tls_error, &config.ca_file),
        };
    }
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    UplinkError::Connection { broker, reason }
}

fn shutdown_now(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Resolves when shutdown is requested or its sender is gone (nobody could request it
/// any more, so the owner is gone too). Cancel-safe.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    // `wait_for` errs only when the sender is dropped.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
