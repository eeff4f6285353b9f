//! Forwarding throughput of the MQTT uplink: drains a backlog of small PCD-01-like records
//! from the in-memory source to a local mosquitto over mutual TLS at QoS 1.
//!
//! ```text
//! cargo bench -p wardgate --bench forward
//! WARDGATE_BENCH_RECORDS=200000 cargo bench -p wardgate --bench forward
//! ```
//!
//! What is measured: from starting the uplink (TLS handshake included) until the source
//! is empty, i.e. until every record's publish was acknowledged by the broker (PUBACK)
//! and acknowledged to the source. No subscriber is attached: the figure is the gateway's
//! side (leasing, batching, TLS, QoS 1 flow control), mosquitto only receives and
//! acknowledges. Two runs: batched (up to 256 KiB per publish, the default) and one record
//! per publish (for comparison with mosquitto_pub, ~58,000 msgs/s on this kind of box).
//!
//! Targets: batched ≥ 80,000 records/s and a 1,000,000-record backlog drained in ≤ 15 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wardgate::uplink::memory::MemorySource;
use wardgate::uplink::mqtt::{self, MqttUplinkConfig, Profile};
use wardgate::uplink::UplinkStatus;
use wardgate_proto::{
    CodedValue, DeviceIdentity, Observation, ObservationGroup, ObservationReport, ObservationValue,
    Priority, RecordBody,
};
use wardgate_tests::certs::{TestPki, Validity};
use wardgate_tests::mosquitto::Mosquitto;

const GATEWAY_ID: &str = "wardgate-bench";

/// A small PCD-01 observation (one SpO2 value), about 256 bytes of JSON.
fn body(device: &str, n: u64) -> Vec<u8> {
    let body = RecordBody::Observations(ObservationReport {
        device: DeviceIdentity {
            id: device.into(),
            application: None,
            eui64: None,
        },
        patient: None,
        message_time: "20250101120000".into(),
        control_id: n.to_string(),
        groups: vec![ObservationGroup {
            service: CodedValue {
                code: "182777000".into(),
                text: String::new(),
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
                containment: String::new(),
                status: "R".into(),
                observed_at: String::new(),
                equipment: String::new(),
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

struct Outcome {
    records: u64,
    publishes: u64,
    elapsed: Duration,
}

async fn forward(
    pki: &TestPki,
    broker: &Mosquitto,
    records: u64,
    max_records_per_publish: usize,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let source = Arc::new(MemorySource::new(0xbe9c));
    let devices: Vec<String> = (0..64).map(|i| format!("monitor-{i}")).collect();
    source.push_many((0..records).map(|n| {
        let device = &devices[(n % 64) as usize];
        (
            device.clone(),
            Priority::Observation,
            1_700_000_000_000 + n,
            body(device, n),
        )
    }));

    let client = pki.client("gateway", GATEWAY_ID, Validity::Current)?;
    let mut config = MqttUplinkConfig::new(
        broker.url(),
        pki.ca_file(),
        &client.cert,
        &client.key,
        GATEWAY_ID,
        Profile::Generic,
    );
    config.max_records_per_publish = max_records_per_publish;
    let (status_tx, status) = watch::channel(UplinkStatus::default());
    let (shutdown, shutdown_rx) = watch::channel(false);

    let started = Instant::now();
    let task = tokio::spawn(mqtt::run(config, source.clone(), status_tx, shutdown_rx));
    tokio::time::timeout(Duration::from_secs(600), source.wait_drained()).await?;
    let elapsed = started.elapsed();

    // The source learns of an ack just before the status does.
    let mut status = status;
    let counted = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.published_records == records),
    )
    .await
    .map(|r| r.map(|s| s.published_batches));
    shutdown.send(true)?;
    task.await??;
    let Ok(Ok(publishes)) = counted else {
        let counted = status.borrow().published_records;
        return Err(format!("{counted} of {records} records counted as published").into());
    };
    Ok(Outcome {
        records,
        publishes,
        elapsed,
    })
}

fn report(label: &str, outcome: &Outcome) {
    let secs = outcome.elapsed.as_secs_f64();
    println!(
        "{label}: {} records in {} publishes, {secs:.2} s: {:.0} records/s, {:.0} publishes/s",
        outcome.records,
        outcome.publishes,
        outcome.records as f64 / secs,
        outcome.publishes as f64 / secs,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = std::env::var("WARDGATE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // One record per publish is ~20x slower; a fifth of the backlog gives a stable rate.
    let single_records = (records / 5).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pki = TestPki::generate("bench")?;
        let broker = Mosquitto::start(&pki)?;
        println!(
            "forward: mosquitto on 127.0.0.1:{}, mutual TLS, QoS 1, {} bytes per record body, completion = PUBACK of every record",
            broker.port(),
            body("monitor-0", 0).len()
        );

        let batched = forward(&pki, &broker, records, 4096).await?;
        report("batched (<= 256 KiB per publish)", &batched);
        println!(
            "backlog of {} records drained in {:.2} s (target: 1,000,000 in <= 15 s, >= 80,000 records/s)",
            batched.records,
            batched.elapsed.as_secs_f64()
        );

        let single = forward(&pki, &broker, single_records, 1).await?;
        report("one record per publish", &single);
        Ok(())
    })
}
