//! The MQTT uplink against a real mosquitto with mutual TLS: delivery, ordering, an
//! outage in the middle of a stream, and credential failures.
//!
//! Needs mosquitto (`apt-get install mosquitto`); fails with that instruction otherwise.

#![allow(clippy::unwrap_used)] // Tests may unwrap (house rule).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wardgate::uplink::memory::MemorySource;
use wardgate::uplink::mqtt::{self, MqttUplinkConfig, Profile};
use wardgate::uplink::{UplinkError, UplinkStatus};
use wardgate_proto::{
    CodedValue, DeviceIdentity, Observation, ObservationGroup, ObservationReport, ObservationValue,
    Priority, RecordBody, UplinkBatch,
};
use wardgate_tests::certs::{CertFiles, TestPki, Validity};
use wardgate_tests::mosquitto::Mosquitto;
use wardgate_tests::subscriber::{Received, Subscriber};

const GATEWAY_ID: &str = "wardgate-test-gw";

fn body(device: &str, n: u64) -> Vec<u8> {
    let body = RecordBody::Observations(ObservationReport {
        device: DeviceIdentity {
            id: device.into(),
            application: Some("MONITOR".into()),
            eui64: None,
        },
        patient: None,
        message_time: "20250101120000".into(),
        control_id: n.to_string(),
        groups: vec![ObservationGroup {
            service: CodedValue {
                code: "182777000".into(),
                text: "monitoring of patient".into(),
                system: "SCT".into(),
            },
            observed_at: String::new(),
            observations: vec![Observation {
                code: CodedValue {
                    code: "150456".into(),
                    text: "MDC_PULS_OXIM_SAT_O2".into(),
                    system: "MDC".into(),
                },
                value: ObservationValue::Numeric((90 + n % 10).to_string()),
                units: None,
                containment: "1.3.1.150456".into(),
                status: "R".into(),
                observed_at: String::new(),
                equipment: String::new(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap()
}

struct Env {
    pki: TestPki,
    broker: Mosquitto,
    gateway: CertFiles,
}

impl Env {
    fn start(name: &str) -> Env {
        let pki = TestPki::generate(name).unwrap();
        let broker = Mosquitto::start(&pki).unwrap();
        let gateway = pki
            .client("gateway", GATEWAY_ID, Validity::Current)
            .unwrap();
        Env {
            pki,
            broker,
            gateway,
        }
    }

    fn config(&self) -> MqttUplinkConfig {
        let mut config = MqttUplinkConfig::new(
            self.broker.url(),
            self.pki.ca_file(),
            &self.gateway.cert,
            &self.gateway.key,
            GATEWAY_ID,
            Profile::Generic,
        );
        // Small publishes and window, so a test covers many publishes and packet id reuse.
        config.inflight_window = 8;
        config.max_payload_bytes = 8 * 1024;
        config.keep_alive = Duration::from_secs(5);
        config.backoff_min = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(500);
        config.ack_timeout = Duration::from_secs(10);
        config
    }

    async fn subscriber(&self) -> Subscriber {
        let files = self
            .pki
            .client("subscriber", "test-subscriber", Validity::Current)
            .unwrap();
        Subscriber::connect(
            self.broker.port(),
            "test-subscriber",
            self.pki.client_tls(&files).unwrap(),
        )
        .await
        .unwrap()
    }
}

struct Running {
    status: watch::Receiver<UplinkStatus>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), UplinkError>>,
}

impl Running {
    fn spawn(config: MqttUplinkConfig, source: Arc<MemorySource>) -> Running {
        let (status_tx, status) = watch::channel(UplinkStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(mqtt::run(config, source, status_tx, shutdown_rx));
        Running {
            status,
            shutdown,
            task,
        }
    }

    async fn wait_status(
        &mut self,
        what: &str,
        done: impl Fn(&UplinkStatus) -> bool,
    ) -> UplinkStatus {
        let waited =
            tokio::time::timeout(Duration::from_secs(30), self.status.wait_for(|s| done(s)))
                .await
                .map(|r| r.map(|status| status.clone()));
        match waited {
            Ok(Ok(status)) => status,
            _ => panic!(
                "timed out waiting for {what}; status {:?}",
                *self.status.borrow()
            ),
        }
    }

    async fn stop(self) -> Result<(), UplinkError> {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("uplink did not stop")
            .unwrap()
    }
}

/// Decodes every batch; returns (topic, record) pairs in arrival order.
fn records(messages: &[Received]) -> Vec<(String, wardgate_proto::UplinkRecord)> {
    let mut out = Vec::new();
    for message in messages {
        let batch: UplinkBatch =
            serde_json::from_slice(&message.payload).expect("payload is an UplinkBatch");
        assert_eq!(batch.schema, wardgate_proto::SCHEMA_VERSION);
        assert_eq!(batch.gateway, GATEWAY_ID);
        for record in batch.records {
            out.push((message.topic.clone(), record));
        }
    }
    out
}

/// Waits until the subscriber has seen `total` distinct records; returns every record
/// received, in arrival order. Decodes each message once.
async fn collect_all(
    subscriber: &Subscriber,
    total: usize,
) -> Vec<(String, wardgate_proto::UplinkRecord)> {
    let mut all = Vec::new();
    let mut ids = HashSet::new();
    let mut seen_messages = 0;
    while ids.len() < total {
        if subscriber.len() == seen_messages {
            subscriber
                .wait_beyond(seen_messages, Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| {
                    panic!("{e}; {} of {total} distinct records received", ids.len())
                });
        }
        let new = subscriber.messages_since(seen_messages);
        seen_messages += new.len();
        for (topic, record) in records(&new) {
            ids.insert(record.id);
            all.push((topic, record));
        }
    }
    all
}

/// Per device and class, records arrive in id order; a reconnect may repeat a suffix but
/// never skips back to a record that was not sent before. Returns the duplicate count.
fn assert_ordered_per_device(received: &[(String, wardgate_proto::UplinkRecord)]) -> usize {
    let mut last: HashMap<(String, Priority), u64> = HashMap::new();
    let mut seen: HashSet<wardgate_proto::RecordId> = HashSet::new();
    let mut duplicates = 0;
    for (_, record) in received {
        let key = (record.body.device_id().to_owned(), record.priority);
        if !seen.insert(record.id) {
            duplicates += 1;
            continue;
        }
        if let Some(previous) = last.get(&key) {
            assert!(
                record.id.seq > *previous,
                "{key:?}: new record {} arrived after {previous}",
                record.id
            );
        }
        last.insert(key, record.id.seq);
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_delivered_in_order_and_acked() {
    let env = Env::start("deliver");
    let subscriber = env.subscriber().await;
    let source = Arc::new(MemorySource::new(0xfeed));
    let devices = ["monitor-1", "monitor-2", "monitor-3", "pump-1"];
    let total = 3000u64;
    for n in 0..total {
        let device = devices[(n % 4) as usize];
        let priority = if n % 97 == 0 {
            Priority::Alarm
        } else {
            Priority::Observation
        };
        source.push(device, priority, 1_700_000_000_000 + n, body(device, n));
    }

    let mut running = Running::spawn(env.config(), source.clone());
    tokio::time::timeout(Duration::from_secs(60), source.wait_drained())
        .await
        .expect("source not drained");
    let received = collect_all(&subscriber, total as usize).await;
    // No outage, so no duplicates.
    assert_eq!(received.len(), total as usize);
    assert_eq!(assert_ordered_per_device(&received), 0);
    for (topic, record) in &received {
        assert_eq!(
            topic,
            &format!("wardgate/{GATEWAY_ID}/records/{}", record.priority.name())
        );
        assert_eq!(
            record.body,
            serde_json::from_slice::<RecordBody>(&body(record.body.device_id(), record.id.seq - 1))
                .unwrap()
        );
    }
    // Alarms were waiting with the observations: they went out first.
    let first_observation = received
        .iter()
        .position(|(_, r)| r.priority == Priority::Observation)
        .unwrap();
    assert!(received[..first_observation]
        .iter()
        .all(|(_, r)| r.priority == Priority::Alarm));
    assert_eq!(first_observation, total.div_ceil(97) as usize);
    // Batching: 8 KiB payloads hold many ~300-byte records.
    let publishes = subscriber.len();
    assert!(
        publishes < total as usize / 10,
        "{publishes} publishes for {total} records"
    );
    assert!(subscriber
        .messages()
        .iter()
        .all(|m| m.payload.len() <= 8 * 1024));

    let status = running
        .wait_status("all records counted", |s| s.published_records == total)
        .await;
    assert!(status.connected);
    assert_eq!(status.connects, 1);
    assert_eq!(status.published_batches, publishes as u64);
    assert_eq!(status.in_flight_records, 0);
    assert!(status.client_cert_not_after.is_some());

    // New records after the backlog drained are picked up without polling delays.
    source.push("monitor-1", Priority::Alarm, 0, body("monitor-1", total));
    tokio::time::timeout(Duration::from_secs(10), source.wait_drained())
        .await
        .expect("late record not sent");
    running.stop().await.unwrap();
    assert!(
        env.broker.log().contains(GATEWAY_ID),
        "broker log should show the gateway's CN as username"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_stream_then_everything_arrives_in_order() {
    let mut env = Env::start("outage");
    let subscriber = env.subscriber().await;
    let source = Arc::new(MemorySource::new(0xbeef));
    let devices = ["monitor-1", "monitor-2", "monitor-3"];
    let total = 60_000u64;
    for n in 0..total {
        let device = devices[(n % 3) as usize];
        source.push(device, Priority::Observation, n, body(device, n));
    }
    let mut config = env.config();
    // Reconnect only after the subscriber is listening again (it retries every 50 ms);
    // otherwise the broker would accept replayed publishes with nobody subscribed.
    config.backoff_min = Duration::from_secs(2);
    config.backoff_max = Duration::from_secs(2);
    let mut running = Running::spawn(config, source.clone());

    running
        .wait_status("a third of the stream", |s| {
            s.published_records >= total / 3
        })
        .await;
    // Freeze first so what the broker already forwarded reaches the subscriber (persistence
    // is off: a broker killed outright loses what it acknowledged but had not forwarded —
    // a property of the broker, not of the gateway); then kill -9 with publishes in flight.
    env.broker.freeze().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        source.acked() < total,
        "the stream should still be running when the broker dies"
    );
    assert!(
        running.status.borrow().in_flight_records > 0,
        "publishes should be in flight when the broker dies"
    );
    env.broker.kill().unwrap();
    running
        .wait_status("the uplink to notice the outage", |s| !s.connected)
        .await;
    env.broker.restart().unwrap();
    subscriber
        .wait_subscribed(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        running.status.borrow().connects,
        1,
        "the subscriber must be back before the gateway reconnects"
    );

    tokio::time::timeout(Duration::from_secs(90), source.wait_drained())
        .await
        .expect("source not drained after restart");
    let received = collect_all(&subscriber, total as usize).await;
    let duplicates = assert_ordered_per_device(&received);
    // Only what was in flight (at most the window of full publishes) may repeat.
    let per_publish = 8 * 1024 / 250;
    assert!(duplicates <= 8 * per_publish, "{duplicates} duplicates");
    let status = running
        .wait_status("the second connection", |s| s.connected && s.connects == 2)
        .await;
    assert!(status.connection_failures >= 1);
    assert!(status.last_error.is_some());
    assert_eq!(status.in_flight_records, 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_detected_by_the_ack_timeout() {
    let env = Env::start("hung");
    let subscriber = env.subscriber().await;
    let source = Arc::new(MemorySource::new(0xab));
    let total = 20_000u64;
    for n in 0..total {
        source.push("monitor-1", Priority::Observation, n, body("monitor-1", n));
    }
    let mut config = env.config();
    config.ack_timeout = Duration::from_secs(1);
    // Long enough that keep-alive pings do not notice first.
    config.keep_alive = Duration::from_secs(60);
    let mut running = Running::spawn(config, source.clone());
    running
        .wait_status("some progress", |s| s.published_records >= 1000)
        .await;

    // A hung broker: the TCP connection stays up, nothing is acknowledged.
    env.broker.freeze().unwrap();
    let status = running
        .wait_status("the ack timeout", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no PUBACK"))
        })
        .await;
    assert!(source.acked() < total);
    assert!(status.connection_failures >= 1);
    env.broker.thaw().unwrap();

    tokio::time::timeout(Duration::from_secs(60), source.wait_drained())
        .await
        .expect("source not drained after thaw");
    let received = collect_all(&subscriber, total as usize).await;
    assert_ordered_per_device(&received);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpublishable_record_stays_in_the_source_and_blocks_nothing() {
    let env = Env::start("oversized");
    let subscriber = env.subscriber().await;
    let source = Arc::new(MemorySource::new(0xcc));
    source.push("monitor-1", Priority::Observation, 0, body("monitor-1", 0));
    let huge = format!(
        "{{\"kind\":\"observations\",\"pad\":\"{}\"}}",
        "x".repeat(20_000)
    );
    let huge_id = source.push("monitor-1", Priority::Observation, 0, huge.into_bytes());
    for n in 2..50 {
        source.push("monitor-1", Priority::Observation, 0, body("monitor-1", n));
    }
    let mut running = Running::spawn(env.config(), source.clone());
    let status = running
        .wait_status("49 records published", |s| s.published_records == 49)
        .await;
    assert_eq!(status.held_back_records, 1);
    // The record is neither deleted nor lost: it stays (leased) in the source.
    assert_eq!(source.len(), 1);
    let received = collect_all(&subscriber, 49).await;
    assert!(received.iter().all(|(_, r)| r.id != huge_id));
    running.stop().await.unwrap();
    // After the session it is pending again, for a future with a larger limit or eviction.
    assert_eq!(source.leased(), 0);
    assert_eq!(source.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_a_clear_error_not_a_panic() {
    let env = Env::start("right-ca");
    let other = TestPki::generate("wrong-ca").unwrap();
    let mut config = env.config();
    config.ca_file = other.ca_file().to_owned();

    let err = mqtt::check_connection(&config).await.unwrap_err();
    match &err {
        UplinkError::TlsHandshake { reason, .. } => {
            assert!(
                reason.contains("not signed by a CA in")
                    && reason.contains(&*other.ca_file().to_string_lossy()),
                "{err}"
            );
        }
        other => panic!("expected a TLS handshake error, got {other:?}"),
    }

    // The daemon keeps retrying and reports why.
    let source = Arc::new(MemorySource::new(1));
    source.push("monitor-1", Priority::Observation, 0, body("monitor-1", 0));
    let mut running = Running::spawn(config, source.clone());
    let status = running
        .wait_status("the error in the status", |s| {
            s.connection_failures >= 2 && s.last_error.is_some()
        })
        .await;
    assert!(!status.connected);
    assert!(status.last_error.unwrap().contains("not signed by a CA"));
    assert_eq!(
        source.len(),
        1,
        "nothing may be acknowledged without a broker"
    );
    assert_eq!(source.leased(), 0, "leases are released between attempts");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_problems_are_clear_errors() {
    let env = Env::start("client-certs");

    // Expired: caught before connecting, naming the file.
    let expired = env
        .pki
        .client("expired", GATEWAY_ID, Validity::Expired)
        .unwrap();
    let mut config = env.config();
    config.cert_file = expired.cert.clone();
    config.key_file = expired.key.clone();
    let (status_tx, _status) = watch::channel(UplinkStatus::default());
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let source = Arc::new(MemorySource::new(1));
    let err = mqtt::run(config.clone(), source, status_tx, shutdown_rx)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, UplinkError::CertificateExpired { path, .. } if *path == expired.cert),
        "{err}"
    );
    assert!(
        err.to_string().contains("expired") && err.to_string().contains("expired.pem"),
        "{err}"
    );
    assert!(matches!(
        mqtt::check_connection(&config).await,
        Err(UplinkError::CertificateExpired { .. })
    ));

    // Missing key file.
    let mut config = env.config();
    config.key_file = env.pki.dir().join("nope.key");
    let err = mqtt::check_connection(&config).await.unwrap_err();
    assert!(err.to_string().contains("nope.key"), "{err}");

    // Signed by a CA the broker does not trust: the broker refuses it during the handshake.
    let stranger_pki = TestPki::generate("stranger").unwrap();
    let stranger = stranger_pki
        .client("stranger", GATEWAY_ID, Validity::Current)
        .unwrap();
    let mut config = env.config();
    config.cert_file = stranger.cert;
    config.key_file = stranger.key;
    let err = mqtt::check_connection(&config).await.unwrap_err();
    assert!(
        matches!(&err, UplinkError::TlsHandshake { reason, .. } if reason.contains("rejected our client certificate (UnknownCA)")),
        "{err}"
    );

    // And the good certificate works.
    mqtt::check_connection(&env.config()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_after_reconnect() {
    let mut env = Env::start("rotation");
    let source = Arc::new(MemorySource::new(1));
    let mut running = Running::spawn(env.config(), source.clone());
    let first = running
        .wait_status("first connection", |s| s.connected)
        .await;
    let old_expiry = first.client_cert_not_after.unwrap();

    // Overwrite the files in place with a certificate that expires sooner.
    let renewed = env
        .pki
        .client(
            "renewed",
            GATEWAY_ID,
            Validity::ExpiresIn(Duration::from_secs(40 * 86_400)),
        )
        .unwrap();
    std::fs::copy(&renewed.cert, &env.gateway.cert).unwrap();
    std::fs::copy(&renewed.key, &env.gateway.key).unwrap();
    env.broker.restart().unwrap();

    let status = running
        .wait_status("reconnection with the new certificate", |s| {
            s.connects == 2 && s.connected
        })
        .await;
    let new_expiry = status.client_cert_not_after.unwrap();
    assert!(
        old_expiry - new_expiry > 300 * 86_400,
        "old {old_expiry}, new {new_expiry}"
    );
    source.push("monitor-1", Priority::Alarm, 0, body("monitor-1", 0));
    tokio::time::timeout(Duration::from_secs(10), source.wait_drained())
        .await
        .unwrap();
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_profile_topic_reaches_the_broker() {
    let env = Env::start("azure");
    let subscriber = env.subscriber().await;
    let mut config = env.config();
    config.profile = Profile::AzureIotHub;
    let source = Arc::new(MemorySource::new(1));
    source.push("monitor-1", Priority::Alarm, 0, body("monitor-1", 0));
    source.push("monitor-1", Priority::Observation, 0, body("monitor-1", 1));
    let running = Running::spawn(config, source.clone());
    tokio::time::timeout(Duration::from_secs(20), source.wait_drained())
        .await
        .unwrap();
    subscriber
        .wait_until(Duration::from_secs(10), "two messages", |m| m.len() == 2)
        .await
        .unwrap();
    let topics: BTreeMap<String, usize> = subscriber
        .messages()
        .iter()
        .map(|m| (m.topic.clone(), m.payload.len()))
        .collect();
    assert!(topics.contains_key(&format!(
        "devices/{GATEWAY_ID}/messages/events/$.ct=application%2Fjson&$.ce=utf-8&priority=alarm"
    )));
    assert!(topics.contains_key(&format!(
        "devices/{GATEWAY_ID}/messages/events/$.ct=application%2Fjson&$.ce=utf-8&priority=observation"
    )));
    running.stop().await.unwrap();
}
