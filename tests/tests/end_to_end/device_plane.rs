//! The device plane with the real binary: a Modbus device added to the config while the
//! gateway runs (a real Modbus TCP server as the device), a broken edit refused while
//! the old configuration keeps running, patient-first holding a device's logs while it
//! is in a procedure (its observations still flow), and the twin's desired state from
//! the cloud accepted only for allow-listed keys, every decision in the audit chain.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use wardgate_proto::{DeviceState, RecordBody, UplinkRecord};
use wardgate_tests::agent_client;
use wardgate_tests::certs::Validity;
use wardgate_tests::gateway::{binary, free_port, GatewayProcess};
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::modbus_server::{ModbusServer, Registers};
use wardgate_tests::scenario::{records, twin_reports, Scenario, GATEWAY_ID, PATIENCE};
use wardgate_tests::subscriber::Received;

fn modbus_device(id: &str, addr: SocketAddr, poll_interval_ms: &str) -> String {
    format!(
        r#"
[[device]]
id = "{id}"
kind = "chiller"

[device.modbus]
address = "{addr}"
unit_id = 1
poll_interval_ms = {poll_interval_ms}
timeout_ms = 500
heartbeat_secs = 1

[[device.modbus.points]]
name = "supply_temperature"
table = "holding"
address = 0
data_type = "i16"
scale = 0.1
units = "Cel"
"#
    )
}

fn measurements<'a>(
    records: &'a [UplinkRecord],
    device: &str,
) -> Vec<&'a wardgate_proto::MeasurementReport> {
    records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Measurements(m) if m.device.id == device => Some(m),
            _ => None,
        })
        .collect()
}

fn has_value(messages: &[Received], device: &str, value: f64) -> bool {
    measurements(&records(messages), device)
        .iter()
        .flat_map(|m| &m.measurements)
        .any(|m| m.name == "supply_temperature" && (m.value - value).abs() < 1e-9)
}

fn state_changes(messages: &[Received], device: &str) -> Vec<(DeviceState, DeviceState)> {
    records(messages)
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::DeviceState(c) if c.device == device => Some((c.from, c.to)),
            _ => None,
        })
        .collect()
}

fn alert_codes(messages: &[Received]) -> Vec<String> {
    records(messages)
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::GatewayAlert(a) => Some(a.code.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_device_added_while_running_is_polled_and_a_broken_edit_is_refused() {
    let mut s = Scenario::start("reload").await.unwrap();
    let registers = Registers::default();
    registers.set(0, 215);
    let plc = ModbusServer::start(registers.clone()).unwrap();
    let gateway = GatewayProcess::start(&s.setup).unwrap();

    // Add the device to the running gateway's config file.
    s.setup.extra_sections = modbus_device("plc-1", plc.addr(), "200");
    s.setup.write_config().unwrap();
    s.cloud
        .wait_until(PATIENCE, "plc-1 polled (21.5 °C) and online", |m| {
            has_value(m, "plc-1", 21.5)
                && state_changes(m, "plc-1").contains(&(DeviceState::Unknown, DeviceState::Online))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    assert!(
        gateway.log_text().contains("device added"),
        "{}",
        gateway.log_text()
    );

    // A broken edit: refused, named, alerted — and the running config keeps polling.
    s.setup.extra_sections = modbus_device("plc-1", plc.addr(), "\"fast\"");
    s.setup.write_config().unwrap();
    s.cloud
        .wait_until(PATIENCE, "config.refused alert", |m| {
            alert_codes(m).iter().any(|c| c == "config.refused")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let log = gateway.log_text();
    assert!(
        log.contains("config change refused") && log.contains("device[0].modbus.poll_interval_ms"),
        "the refusal names the key:\n{log}"
    );
    registers.set(0, 300);
    s.cloud
        .wait_until(PATIENCE, "30.0 °C polled under the old config", |m| {
            has_value(m, "plc-1", 30.0)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));

    // Removing the device stops its poller.
    s.setup.extra_sections = String::new();
    s.setup.write_config().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !gateway.log_text().contains("device removed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    registers.set(0, 111);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !has_value(&s.cloud.messages(), "plc-1", 11.1),
        "a removed device is still polled"
    );
}

const TOKEN: &str = "0d6f1c2b3a4958677869a0b1c2d3e4f5a6b7c8d9";

/// An IHE PCD-01 message from the mapping system, naming its patient in PID-5.
fn carto_observation(control_id: &str) -> String {
    [
        format!("MSH|^~\\&|CARTO||||20250101120000||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE"),
        "PID|||MRN7731^^^HOSP^MR||GRUENWALD^HILDEGARD^M||19400101|F".to_owned(),
        format!("OBR|1|{control_id}^CARTO||182777000^monitoring of patient^SCT|||20250101120000"),
        "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20250101120000".to_owned(),
    ]
    .join("\r")
}

fn log_lines_of(messages: &[Received], device: &str) -> Vec<String> {
    records(messages)
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::LogLines(b) if b.device.id == device => Some(b.lines.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_first_holds_a_devices_logs_during_a_procedure_but_not_its_observations() {
    let mut s = Scenario::start("patient-first").await.unwrap();
    let logs = s.work.path().join("carto-logs");
    std::fs::create_dir(&logs).unwrap();
    let token_file = s.work.path().join("carto-1.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let agent_port = free_port().unwrap();
    let server = s.pki.server().clone();
    s.setup.extra_sections = format!(
        r#"
[agent_api]
listen = "127.0.0.1:{agent_port}"
server_cert = "{cert}"
server_key = "{key}"

[[device]]
id = "carto-1"
kind = "mapping-system"
hl7_application = "CARTO"
settings = {{ upload_window = "22:00-06:00" }}

[device.logs]
directory = "{logs}"
glob = "*.log"
start_at = "beginning"
poll_interval_ms = 100
batch_max_delay_ms = 100

[device.agent]
auth = "token"
token_file = "{token}"
"#,
        cert = server.cert.display(),
        key = server.key.display(),
        logs = logs.display(),
        token = token_file.display(),
    );
    let gateway = GatewayProcess::start(&s.setup).unwrap();
    let api: SocketAddr = ([127, 0, 0, 1], agent_port).into();
    let ca = s.pki.ca_file().to_path_buf();
    let agent = |method: &'static str, path: &'static str, body: Option<serde_json::Value>| {
        let ca = ca.clone();
        async move {
            agent_client::request(api, &ca, TOKEN, method, path, body.as_ref())
                .await
                .unwrap()
        }
    };
    let hl7 = s.setup.hl7_addr();
    let send = |id: &'static str| {
        tokio::task::spawn_blocking(move || {
            run_device(hl7, 1, Duration::from_secs(30), |_| {
                (id.to_owned(), carto_observation(id))
            })
        })
    };

    // The monitor side names its patient: the gateway learns the name's keyed hashes.
    assert_eq!(send("carto-obs-1").await.unwrap().unwrap().len(), 1);
    let settings = agent("GET", "/v1/devices/carto-1/settings", None).await;
    assert_eq!(settings.status, 200, "{settings:?}");
    assert!(settings.body.contains("22:00-06:00"), "{settings:?}");

    // The procedure starts.
    let started = agent(
        "POST",
        "/v1/devices/carto-1/state",
        Some(serde_json::json!({"state": "in-procedure", "reason": "ablation"})),
    )
    .await;
    assert_eq!(started.status, 200, "{started:?}\n{}", gateway.log_text());
    std::fs::write(
        logs.join("system.log"),
        "2026-11-23T10:00:00Z ablation started for GRUENWALD, contact h.gruenwald@example.org\n\
         2026-11-23T10:00:01Z catheter connected\n",
    )
    .unwrap();
    // Clinical data flows during the procedure...
    assert_eq!(send("carto-obs-2").await.unwrap().unwrap().len(), 1);
    s.cloud
        .wait_until(PATIENCE, "observation during the procedure", |m| {
            records(m).iter().any(
                |r| matches!(&r.body, RecordBody::Observations(o) if o.control_id == "carto-obs-2"),
            )
        })
        .await
        .unwrap();
    // ...log shipping does not, neither followed nor pushed.
    let pushed = agent(
        "POST",
        "/v1/devices/carto-1/logs",
        Some(serde_json::json!({"file": "agent.log", "lines": ["x"]})),
    )
    .await;
    assert_eq!(pushed.status, 503, "{pushed:?}");
    assert!(pushed.body.contains("patient-first"), "{pushed:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let messages = s.cloud.messages();
    assert!(
        log_lines_of(&messages, "carto-1").is_empty(),
        "log lines shipped during a procedure"
    );
    assert!(state_changes(&messages, "carto-1")
        .contains(&(DeviceState::Online, DeviceState::InProcedure)));

    // The procedure ends: the held lines go, scrubbed.
    let ended = agent(
        "POST",
        "/v1/devices/carto-1/state",
        Some(serde_json::json!({"state": "online", "reason": "procedure-end"})),
    )
    .await;
    assert_eq!(ended.status, 200, "{ended:?}");
    s.cloud
        .wait_until(PATIENCE, "the held log lines", |m| {
            log_lines_of(m, "carto-1").len() >= 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let lines = log_lines_of(&s.cloud.messages(), "carto-1");
    assert!(
        lines[0].contains("[NAME]") && lines[0].contains("[EMAIL]"),
        "{lines:?}"
    );
    assert!(
        lines[0].starts_with("2026-11-23T10:00:00Z"),
        "own timestamp kept: {lines:?}"
    );
    for m in s.cloud.messages() {
        let text = String::from_utf8_lossy(&m.payload).to_lowercase();
        assert!(
            !text.contains("gruenwald") && !text.contains("hildegard"),
            "{}: {text}",
            m.topic
        );
    }
}

/// Publishes `payload` retained on `topic` as the cloud (operator) would.
async fn publish_retained(s: &Scenario, topic: &str, payload: Vec<u8>) {
    let cert = s
        .pki
        .client("operator", "cloud-operator", Validity::Current)
        .unwrap();
    let tls = s.pki.client_tls(&cert).unwrap();
    let mut options = MqttOptions::new("cloud-operator", "127.0.0.1", s.broker.port());
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .unwrap();
    let _ = client.disconnect().await;
}

fn audit_verify(file: &Path) -> (bool, String) {
    let out = Command::new(binary().unwrap())
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_is_allow_listed_and_every_decision_is_audited() {
    let mut s = Scenario::start("twin").await.unwrap();
    let registers = Registers::default();
    registers.set(0, 200);
    let plc = ModbusServer::start(registers).unwrap();
    s.setup.extra_sections = modbus_device("plc-1", plc.addr(), "1000");
    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let poll_interval = |m: &[Received]| {
        twin_reports(m).last().and_then(|d| {
            d.pointer("/devices/plc-1/poll_interval_ms")
                .and_then(serde_json::Value::as_u64)
        })
    };
    s.cloud
        .wait_until(PATIENCE, "reported state with plc-1", |m| {
            poll_interval(m) == Some(1000)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));

    let desired = serde_json::json!({
        "devices": {"plc-1": {"poll_interval_ms": 2500, "firmware_url": "http://evil.example/fw.bin"}},
        "commands": {"reboot": true}
    });
    publish_retained(
        &s,
        &format!("wardgate/{GATEWAY_ID}/twin/desired"),
        desired.to_string().into_bytes(),
    )
    .await;
    s.cloud
        .wait_until(PATIENCE, "the allowed setting applied and reported", |m| {
            poll_interval(m) == Some(2500)
                && alert_codes(m)
                    .iter()
                    .filter(|c| *c == "twin.refused")
                    .count()
                    >= 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));

    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );
    let audit = s.setup.data_dir().join("audit.log");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.contains("twin.accepted") && text.contains("devices.plc-1.poll_interval_ms"),
        "{text}"
    );
    assert!(
        text.contains("devices.plc-1.firmware_url") && text.contains("commands"),
        "{text}"
    );
    assert!(
        !text.contains("evil.example"),
        "refused values are never written: {text}"
    );

    let (intact, report) = audit_verify(&audit);
    assert!(intact, "{report}");
    // Tamper with the accepted value of the first entry: the chain names it.
    let tampered = text.replacen("2500", "9999", 1);
    assert_ne!(tampered, text);
    std::fs::write(&audit, tampered).unwrap();
    let (intact, report) = audit_verify(&audit);
    assert!(!intact, "tampering not detected: {report}");
    assert!(
        report.contains("line 1") || report.contains("seq"),
        "{report}"
    );
}
