//! One end-to-end setting: a test PKI, a real mosquitto with mutual TLS, a subscriber
//! standing in for the cloud, and the configuration of a real `wardgate` process.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use wardgate_proto::{RecordBody, UplinkBatch, UplinkRecord};

use crate::certs::{TestPki, Validity};
use crate::gateway::{free_port, GatewaySetup};
use crate::mosquitto::Mosquitto;
use crate::subscriber::{Received, Subscriber};

/// The gateway id every scenario uses.
pub const GATEWAY_ID: &str = "gw-e2e";

/// See the module documentation.
pub struct Scenario {
    /// The PKI (keeps its temp dir alive).
    pub pki: TestPki,
    /// The broker.
    pub broker: Mosquitto,
    /// The cloud stand-in.
    pub cloud: Subscriber,
    /// The gateway's configuration.
    pub setup: GatewaySetup,
    /// Working directory for config, data and logs.
    pub work: tempfile::TempDir,
}

impl Scenario {
    /// Starts the broker and the subscriber; the gateway is started by the test.
    ///
    /// # Errors
    /// When mosquitto is missing or does not start.
    pub async fn start(name: &str) -> anyhow::Result<Scenario> {
        Scenario::start_with(name, false).await
    }

    /// Like [`Scenario::start`], with a broker that persists sessions and a cloud
    /// subscriber with a persistent session, so nothing published while the subscriber
    /// is away (a broker restart) is lost to it.
    ///
    /// # Errors
    /// As [`Scenario::start`].
    pub async fn start_with_durable_cloud(name: &str) -> anyhow::Result<Scenario> {
        Scenario::start_with(name, true).await
    }

    async fn start_with(name: &str, durable_cloud: bool) -> anyhow::Result<Scenario> {
        let pki = TestPki::generate(name)?;
        let broker = Mosquitto::start_with(&pki, durable_cloud)?;
        let gateway_cert = pki.client("gateway", GATEWAY_ID, Validity::Current)?;
        let cloud_cert = pki.client("cloud", "cloud-reader", Validity::Current)?;
        let cloud_tls = pki.client_tls(&cloud_cert)?;
        let cloud =
            Subscriber::connect_with(broker.port(), "cloud-reader", cloud_tls, !durable_cloud)
                .await?;
        let work = tempfile::tempdir()?;
        let setup = GatewaySetup {
            dir: work.path().to_path_buf(),
            id: GATEWAY_ID.to_owned(),
            mqtt_url: broker.url(),
            ca_file: pki.ca_file().to_path_buf(),
            cert_file: gateway_cert.cert,
            key_file: gateway_cert.key,
            hl7_port: free_port()?,
            hl7_extra: String::new(),
            extra_sections: String::new(),
        };
        Ok(Scenario {
            pki,
            broker,
            cloud,
            setup,
            work,
        })
    }
}

impl Scenario {
    /// Publishes `payload` (QoS 1, retained) on `topic` as the cloud's operator would,
    /// with its own client certificate, and waits for the broker's PUBACK.
    ///
    /// # Errors
    /// TLS, connection or timeout errors.
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let cert = self
            .pki
            .client("operator", "cloud-operator", Validity::Current)?;
        let tls = self.pki.client_tls(&cert)?;
        let mut options = MqttOptions::new("cloud-operator", "127.0.0.1", self.broker.port());
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, mut eventloop) = AsyncClient::new(options, 4);
        client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                    return Ok::<_, rumqttc::ConnectionError>(());
                }
            }
        })
        .await??;
        let _ = client.disconnect().await;
        Ok(())
    }
}

/// Every record in `messages`, decoded; panics (failing the test) on a payload that is
/// not a valid `UplinkBatch`, since the cloud could not read it either. Messages on the
/// twin's topics (`wardgate/<id>/twin/...`) are not records and are skipped.
#[must_use]
pub fn records(messages: &[Received]) -> Vec<UplinkRecord> {
    messages
        .iter()
        .filter(|m| !is_twin_topic(&m.topic))
        .flat_map(|m| {
            let batch: UplinkBatch = serde_json::from_slice(&m.payload)
                .unwrap_or_else(|e| panic!("payload on {} is not an UplinkBatch: {e}", m.topic));
            assert_eq!(batch.schema, wardgate_proto::SCHEMA_VERSION);
            assert_eq!(batch.gateway, GATEWAY_ID);
            batch.records
        })
        .collect()
}

/// Whether `topic` is one of the generic profile's twin topics.
#[must_use]
pub fn is_twin_topic(topic: &str) -> bool {
    topic.starts_with("wardgate/") && topic.contains("/twin/")
}

/// The twin documents the gateway reported (generic profile), oldest first.
#[must_use]
pub fn twin_reports(messages: &[Received]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/twin/reported"))
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

/// The MSH-10 control id a record came from.
#[must_use]
pub fn control_id(r: &UplinkRecord) -> Option<&str> {
    match &r.body {
        RecordBody::Observations(o) => Some(&o.control_id),
        RecordBody::Alarm(a) => Some(&a.control_id),
        RecordBody::GatewayAlert(_)
        | RecordBody::DeviceState(_)
        | RecordBody::Measurements(_)
        | RecordBody::LogLines(_)
        | RecordBody::UpdateRollout(_) => None,
    }
}

/// The set of distinct control ids received.
#[must_use]
pub fn received_control_ids(messages: &[Received]) -> BTreeSet<String> {
    records(messages)
        .iter()
        .filter_map(control_id)
        .map(str::to_owned)
        .collect()
}

/// Checks per-device order: for each device, the sequence numbers (`<device>-<seq>`
/// control ids) first received must increase. Duplicates (at-least-once redelivery)
/// are allowed; a record received for the first time after a later one of the same
/// device is an ordering violation. Returns the violations.
#[must_use]
pub fn order_violations(messages: &[Received]) -> Vec<String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut violations = Vec::new();
    for r in records(messages) {
        let Some(id) = control_id(&r) else { continue };
        if !seen.insert(id.to_owned()) {
            continue;
        }
        let Some((device, seq)) = id.rsplit_once('-') else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        let prev = last.insert(device.to_owned(), seq);
        if let Some(prev) = prev {
            if seq < prev {
                violations.push(format!("{device}: {seq} first arrived after {prev}"));
            }
        }
    }
    violations
}

impl Scenario {
    /// Waits until every control id in `acked` has reached the cloud, then checks
    /// per-device order; on failure names the first missing ids and shows `gateway_log`.
    ///
    /// # Panics
    /// When an acknowledged message never arrives or arrives out of order (the test fails).
    pub async fn assert_all_delivered_in_order(&self, acked: &BTreeSet<String>, gateway_log: &str) {
        let waited = self
            .cloud
            .wait_until(PATIENCE, "every acknowledged message at the broker", |m| {
                received_control_ids(m).is_superset(acked)
            })
            .await;
        let got = received_control_ids(&self.cloud.messages());
        let missing: Vec<&String> = acked.difference(&got).take(10).collect();
        assert!(
            waited.is_ok(),
            "acknowledged but never delivered (first 10): {missing:?}\n{gateway_log}"
        );
        assert_eq!(
            order_violations(&self.cloud.messages()),
            Vec::<String>::new()
        );
    }
}

/// Generous bound for anything a test waits for on a loaded 2-core CI machine.
pub const PATIENCE: Duration = Duration::from_secs(60);
