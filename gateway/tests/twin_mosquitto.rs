//! The twin over the MQTT uplink against a real mosquitto with mutual TLS: reported state
//! reaches the profile's twin topic, desired documents come back through the allow-list,
//! and records keep flowing on the same connection. For the IoT Hub and AWS profiles a
//! test client plays the cloud's twin service on the same broker (mosquitto carries
//! `$iothub/...` and `$aws/...` topics like any other).
//!
//! Needs mosquitto (`apt-get install mosquitto`); fails with that instruction otherwise.

#![allow(clippy::unwrap_used)] // Tests may unwrap (house rule).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use wardgate::twin::{
    DesiredOutcome, DesiredSetting, DesiredSource, DeviceCapabilities, DeviceReport, RefusalReason,
    SpoolReport, TwinChannels, TwinOptions, TwinReport,
};
use wardgate::uplink::memory::MemorySource;
use wardgate::uplink::mqtt::{self, MqttUplinkConfig, Profile};
use wardgate::uplink::{UplinkError, UplinkStatus};
use wardgate_proto::{DeviceState, Priority};
use wardgate_tests::certs::{TestPki, Validity};
use wardgate_tests::mosquitto::Mosquitto;
use wardgate_tests::subscriber::Received;

const GATEWAY_ID: &str = "wardgate-twin-gw";
const WAIT: Duration = Duration::from_secs(20);

/// A record body the batch encoder accepts (a JSON object); its content is irrelevant here.
fn body(n: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({ "test": n })).unwrap()
}

fn report(records: u64, state: DeviceState) -> TwinReport {
    TwinReport {
        version: "9.9.9".into(),
        spool: SpoolReport {
            records,
            bytes: records * 100,
            budget_bytes: 1 << 20,
        },
        devices: vec![DeviceReport {
            id: "pump-1".into(),
            kind: "infusion-pump".into(),
            group: "icu".into(),
            adapters: "modbus".into(),
            state,
            state_since_ms: 1_700_000_000_000,
            poll_interval_ms: Some(1000),
            log_shipping: None,
            update: None,
        }],
        updates: Vec::new(),
    }
}

/// A test client standing in for the cloud: subscribes to `filters`, keeps every message,
/// publishes at QoS 1.
struct Cloud {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<Received>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Cloud {
    async fn connect(pki: &TestPki, broker: &Mosquitto, filters: &[&str]) -> Cloud {
        let files = pki
            .client("cloud", "test-cloud", Validity::Current)
            .unwrap();
        let mut options = MqttOptions::new("test-cloud", "127.0.0.1", broker.port());
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1024 * 1024, 1024 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                pki.client_tls(&files).unwrap(),
            )));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let subscribed = Arc::new(Notify::new());
        let task = {
            let (messages, changed, subscribed) =
                (messages.clone(), changed.clone(), subscribed.clone());
            let client = client.clone();
            let filters: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            for filter in &filters {
                                client
                                    .subscribe(filter.clone(), QoS::AtLeastOnce)
                                    .await
                                    .unwrap();
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.notify_one(),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            messages.lock().unwrap().push(Received {
                                topic: p.topic,
                                payload: p.payload.to_vec(),
                            });
                            changed.notify_waiters();
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        };
        for _ in filters {
            tokio::time::timeout(WAIT, subscribed.notified())
                .await
                .expect("cloud subscription");
        }
        Cloud {
            client,
            messages,
            changed,
            task,
        }
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// Waits for the first message after the first `skip` that satisfies `matches`.
    async fn wait_for(
        &self,
        what: &str,
        skip: usize,
        matches: impl Fn(&Received) -> bool,
    ) -> (usize, Received) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let found = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .enumerate()
                .skip(skip)
                .find(|(_, m)| matches(m))
                .map(|(i, m)| (i, m.clone()));
            if let Some(found) = found {
                return found;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let topics: Vec<String> = self
                    .messages
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|m| m.topic.clone())
                    .collect();
                panic!("timed out waiting for {what}; received on {topics:?}");
            }
        }
    }

    fn count(&self, matches: impl Fn(&Received) -> bool) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| matches(m))
            .count()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Gateway {
    reports: watch::Sender<Option<TwinReport>>,
    outcomes: mpsc::Receiver<DesiredOutcome>,
    source: Arc<MemorySource>,
    status: watch::Receiver<UplinkStatus>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), UplinkError>>,
}

impl Gateway {
    fn start(pki: &TestPki, broker: &Mosquitto, profile: Profile) -> Gateway {
        let files = pki
            .client("gateway", GATEWAY_ID, Validity::Current)
            .unwrap();
        let mut config = MqttUplinkConfig::new(
            broker.url(),
            pki.ca_file(),
            &files.cert,
            &files.key,
            GATEWAY_ID,
            profile,
        );
        // AWS's keep-alive range starts at 30 s.
        config.keep_alive = Duration::from_secs(30);
        config.inflight_window = 4;
        config.backoff_min = Duration::from_millis(100);
        config.backoff_max = Duration::from_millis(500);
        let source = Arc::new(MemorySource::new(0x7717));
        let (reports, reports_rx) = watch::channel(None);
        let (outcomes_tx, outcomes) = mpsc::channel(16);
        let channels = TwinChannels {
            reports: reports_rx,
            outcomes: outcomes_tx,
            devices: Arc::new(|| {
                vec![
                    DeviceCapabilities::from_adapters("pump-1", ["modbus"]),
                    DeviceCapabilities::from_adapters("monitor-1", ["hl7"]),
                ]
            }),
            options: TwinOptions {
                min_report_interval: Duration::from_millis(300),
            },
        };
        let (status_tx, status) = watch::channel(UplinkStatus::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(mqtt::run_with_twin(
            config,
            source.clone(),
            status_tx,
            shutdown_rx,
            Some(channels),
        ));
        Gateway {
            reports,
            outcomes,
            source,
            status,
            shutdown,
            task,
        }
    }

    async fn outcome(&mut self) -> DesiredOutcome {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("no desired outcome in time")
            .expect("outcome channel closed")
    }

    /// Records pushed now are delivered on the same connection as the twin traffic.
    async fn send_records(&self, count: u64) {
        for n in 0..count {
            self.source
                .push("pump-1", Priority::Observation, n, body(n));
        }
        tokio::time::timeout(WAIT, self.source.wait_drained())
            .await
            .expect("records not delivered");
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("uplink did not stop")
            .unwrap()
            .unwrap();
    }
}

fn json_of(message: &Received) -> Value {
    serde_json::from_slice(&message.payload).expect("payload is JSON")
}

fn poll_interval(device: &str, ms: u64) -> DesiredSetting {
    DesiredSetting::PollInterval {
        device: device.into(),
        interval_ms: Some(ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_profile_reports_retained_and_applies_only_allowed_desired_keys() {
    let pki = TestPki::generate("twin-generic").unwrap();
    let broker = Mosquitto::start(&pki).unwrap();
    let reported_topic = format!("wardgate/{GATEWAY_ID}/twin/reported");
    let desired_topic = format!("wardgate/{GATEWAY_ID}/twin/desired");
    let cloud = Cloud::connect(&pki, &broker, &["wardgate/#"]).await;
    // Retained before the gateway connects: delivered when it subscribes.
    cloud
        .publish(
            &desired_topic,
            serde_json::to_vec(&json!({
                "devices": {"pump-1": {"poll_interval_ms": 2500, "reboot": true}}
            }))
            .unwrap(),
            true,
        )
        .await;

    let mut gateway = Gateway::start(&pki, &broker, Profile::Generic);
    gateway
        .reports
        .send(Some(report(3, DeviceState::Online)))
        .unwrap();

    let outcome = gateway.outcome().await;
    assert_eq!(outcome.source, DesiredSource::GenericDocument);
    assert!(outcome.complete);
    assert_eq!(outcome.accepted, vec![poll_interval("pump-1", 2500)]);
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(outcome.refused[0].key, "devices.pump-1.reboot");
    assert_eq!(outcome.refused[0].reason, RefusalReason::UnknownKey);

    let (seen, reported) = cloud
        .wait_for("the reported document", 0, |m| m.topic == reported_topic)
        .await;
    let doc = json_of(&reported);
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["gateway"]["version"], "9.9.9");
    assert_eq!(doc["gateway"]["spool"]["records"], 3);
    assert_eq!(doc["gateway"]["uplink"]["connects"], 1);
    assert_eq!(doc["devices"]["pump-1"]["state"], "online");
    assert_eq!(doc["devices"]["pump-1"]["poll_interval_ms"], 1000);

    // Records flow beside the twin on the same connection.
    gateway.send_records(50).await;
    cloud
        .wait_for("records", 0, |m| m.topic.ends_with("/records/observation"))
        .await;

    // A live desired change (not retained), with a value out of range beside a good one.
    cloud
        .publish(
            &desired_topic,
            serde_json::to_vec(&json!({
                "devices": {"pump-1": {"poll_interval_ms": 5}, "ghost": {"log_shipping": true}},
                "$version": 3
            }))
            .unwrap(),
            false,
        )
        .await;
    let outcome = gateway.outcome().await;
    assert!(outcome.accepted.is_empty());
    let reasons: Vec<(&str, &RefusalReason)> = outcome
        .refused
        .iter()
        .map(|r| (r.key.as_str(), &r.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("devices.ghost", &RefusalReason::UndeclaredDevice),
            (
                "devices.pump-1.poll_interval_ms",
                &RefusalReason::OutOfRange {
                    min: 100,
                    max: 3_600_000
                }
            ),
        ]
    );

    // A changed report is published again (debounced); an unchanged one is not.
    gateway
        .reports
        .send(Some(report(3, DeviceState::InProcedure)))
        .unwrap();
    let (_, changed) = cloud
        .wait_for("the changed document", seen + 1, |m| {
            m.topic == reported_topic
        })
        .await;
    assert_eq!(
        json_of(&changed)["devices"]["pump-1"]["state"],
        "in-procedure"
    );
    gateway
        .reports
        .send(Some(report(3, DeviceState::InProcedure)))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        cloud.count(|m| m.topic == reported_topic),
        2,
        "an unchanged document must not be published again"
    );

    // Retained: a client connecting later sees the current state at once.
    drop(cloud);
    let late = Cloud::connect(&pki, &broker, &[reported_topic.as_str()]).await;
    let (_, retained) = late
        .wait_for("the retained document", 0, |m| m.topic == reported_topic)
        .await;
    assert_eq!(
        json_of(&retained)["devices"]["pump-1"]["state"],
        "in-procedure"
    );

    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_profile_uses_the_shadow_topics() {
    let pki = TestPki::generate("twin-aws").unwrap();
    let broker = Mosquitto::start(&pki).unwrap();
    let shadow = format!("$aws/things/{GATEWAY_ID}/shadow");
    let cloud = Cloud::connect(&pki, &broker, &[&format!("{shadow}/#"), "wardgate/#"]).await;

    let mut gateway = Gateway::start(&pki, &broker, Profile::AwsIotCore);
    gateway
        .reports
        .send(Some(report(0, DeviceState::Online)))
        .unwrap();

    // The gateway asks for the shadow once subscribed; the "cloud" answers.
    let get_topic = format!("{shadow}/get");
    cloud
        .wait_for("the shadow GET", 0, |m| m.topic == get_topic)
        .await;
    cloud
        .publish(
            &format!("{shadow}/get/accepted"),
            serde_json::to_vec(&json!({
                "state": {
                    "desired": {"devices": {"pump-1": {"poll_interval_ms": 750},
                                            "monitor-1": {"poll_interval_ms": 750}}},
                    "reported": {"devices": {"decommissioned-1": {"state": "offline"}}}
                },
                "metadata": {}, "version": 17, "timestamp": 1_700_000_000
            }))
            .unwrap(),
            false,
        )
        .await;
    let outcome = gateway.outcome().await;
    assert_eq!(outcome.source, DesiredSource::AwsShadow);
    assert_eq!(outcome.version, Some(17));
    assert_eq!(outcome.accepted, vec![poll_interval("pump-1", 750)]);
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(outcome.refused[0].key, "devices.monitor-1.poll_interval_ms");
    assert_eq!(
        outcome.refused[0].reason,
        RefusalReason::NotApplicable { needs: "modbus" }
    );

    let update = format!("{shadow}/update");
    let (_, first) = cloud
        .wait_for("the reported shadow update", 0, |m| m.topic == update)
        .await;
    let doc = json_of(&first);
    assert_eq!(doc["state"]["reported"]["gateway"]["version"], "9.9.9");
    assert_eq!(
        doc["state"]["reported"]["devices"]["pump-1"]["state"],
        "online"
    );

    // A delta: a patch, not the complete state.
    cloud
        .publish(
            &format!("{shadow}/update/delta"),
            serde_json::to_vec(&json!({
                "version": 18, "timestamp": 1_700_000_001,
                "state": {"devices": {"pump-1": {"poll_interval_ms": 60_000}}},
                "metadata": {"devices": {"pump-1": {"poll_interval_ms": {"timestamp": 1}}}}
            }))
            .unwrap(),
            false,
        )
        .await;
    let outcome = gateway.outcome().await;
    assert_eq!(outcome.source, DesiredSource::AwsDelta);
    assert!(!outcome.complete);
    assert_eq!(outcome.accepted, vec![poll_interval("pump-1", 60_000)]);
    assert!(outcome.refused.is_empty());

    // The device the shadow still held is removed with the next document.
    gateway
        .reports
        .send(Some(report(5, DeviceState::Online)))
        .unwrap();
    let removal = cloud
        .wait_for("a document removing the stale device", 0, |m| {
            m.topic == update
                && json_of(m)["state"]["reported"]["devices"]
                    .get("decommissioned-1")
                    .is_some_and(Value::is_null)
        })
        .await;
    assert_eq!(
        json_of(&removal.1)["state"]["reported"]["gateway"]["spool"]["records"],
        5
    );

    gateway.send_records(20).await;
    cloud
        .wait_for("records", 0, |m| m.topic.ends_with("/records/observation"))
        .await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_profile_gets_the_twin_and_patches_reported_properties() {
    let pki = TestPki::generate("twin-azure").unwrap();
    let broker = Mosquitto::start(&pki).unwrap();
    let cloud = Cloud::connect(&pki, &broker, &["$iothub/twin/#"]).await;

    let mut gateway = Gateway::start(&pki, &broker, Profile::AzureIotHub);
    gateway
        .reports
        .send(Some(report(1, DeviceState::Online)))
        .unwrap();

    let (_, get) = cloud
        .wait_for("the twin GET", 0, |m| {
            m.topic.starts_with("$iothub/twin/GET/?$rid=")
        })
        .await;
    let rid = get
        .topic
        .trim_start_matches("$iothub/twin/GET/?$rid=")
        .to_owned();
    cloud
        .publish(
            &format!("$iothub/twin/res/200/?$rid={rid}"),
            serde_json::to_vec(&json!({
                "desired": {"devices": {"pump-1": {"poll_interval_ms": 1500}}, "$version": 4},
                "reported": {"$version": 1}
            }))
            .unwrap(),
            false,
        )
        .await;
    let outcome = gateway.outcome().await;
    assert_eq!(outcome.source, DesiredSource::AzureFullTwin);
    assert_eq!(outcome.version, Some(4));
    assert_eq!(outcome.accepted, vec![poll_interval("pump-1", 1500)]);

    let (_, patch) = cloud
        .wait_for("the reported properties patch", 0, |m| {
            m.topic
                .starts_with("$iothub/twin/PATCH/properties/reported/?$rid=")
        })
        .await;
    assert_eq!(json_of(&patch)["devices"]["pump-1"]["state"], "online");

    cloud
        .publish(
            "$iothub/twin/PATCH/properties/desired/?$version=5",
            serde_json::to_vec(&json!({
                "devices": {"pump-1": {"poll_interval_ms": null}}, "firmware": "2.0", "$version": 5
            }))
            .unwrap(),
            false,
        )
        .await;
    let outcome = gateway.outcome().await;
    assert_eq!(outcome.source, DesiredSource::AzurePatch);
    assert_eq!(
        outcome.accepted,
        vec![DesiredSetting::PollInterval {
            device: "pump-1".into(),
            interval_ms: None
        }]
    );
    assert_eq!(outcome.refused[0].key, "firmware");

    gateway.send_records(20).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_desired_document_is_refused_and_records_keep_flowing() {
    let pki = TestPki::generate("twin-oversized").unwrap();
    let broker = Mosquitto::start(&pki).unwrap();
    let desired_topic = format!("wardgate/{GATEWAY_ID}/twin/desired");
    let cloud = Cloud::connect(&pki, &broker, &["wardgate/#"]).await;
    // 100 KiB: over the twin's 64 KiB limit, under the client's packet limit.
    let mut big = b"{\"devices\":{},\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big.extend_from_slice(b"\"}");
    cloud.publish(&desired_topic, big, true).await;

    let mut gateway = Gateway::start(&pki, &broker, Profile::Generic);
    let outcome = gateway.outcome().await;
    assert!(outcome.accepted.is_empty());
    assert_eq!(outcome.refused.len(), 1);
    assert!(matches!(
        outcome.refused[0].reason,
        RefusalReason::PayloadTooLarge { .. }
    ));
    gateway.send_records(100).await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_publishes_interleaved_with_a_record_stream_keep_every_record_in_order() {
    let pki = TestPki::generate("twin-interleave").unwrap();
    let broker = Mosquitto::start(&pki).unwrap();
    let cloud = Cloud::connect(&pki, &broker, &["wardgate/#"]).await;
    let gateway = Gateway::start(&pki, &broker, Profile::Generic);
    let total = 5000u64;
    // The report changes all the time: a QoS 0 twin publish every debounce interval lands
    // between the QoS 1 batches, so Outgoing::Publish(0) events interleave with paired ones.
    let reports = gateway.reports.clone();
    let churn = tokio::spawn(async move {
        for n in 0.. {
            if reports.send(Some(report(n, DeviceState::Online))).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Records arrive in waves over a few debounce intervals, as a real backlog drains.
    for wave in 0..10 {
        for n in wave * total / 10..(wave + 1) * total / 10 {
            gateway
                .source
                .push("pump-1", Priority::Observation, n, body(n));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), gateway.source.wait_drained())
        .await
        .expect("records not delivered");
    churn.abort();
    let status = gateway.status.borrow().clone();
    assert_eq!(status.connects, 1, "{status:?}");
    assert_eq!(status.connection_failures, 0, "{status:?}");
    assert_eq!(status.in_flight_records, 0);

    // Every record arrived exactly once, in order; several reported documents went out.
    cloud
        .wait_for("the last record", 0, |m| {
            m.topic.ends_with("/records/observation")
                && json_of(m)["records"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["body"]["test"] == total - 1))
        })
        .await;
    let mut next = 0u64;
    for message in cloud.messages.lock().unwrap().iter() {
        if !message.topic.ends_with("/records/observation") {
            continue;
        }
        for record in json_of(message)["records"].as_array().unwrap() {
            assert_eq!(record["body"]["test"], next);
            next += 1;
        }
    }
    assert_eq!(next, total);
    let reported = cloud.count(|m| m.topic.ends_with("/twin/reported"));
    assert!(reported >= 3, "{reported} reported documents");
    gateway.stop().await;
}
