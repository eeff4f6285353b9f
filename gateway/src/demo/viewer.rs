//! The demo's window on the cloud: a real MQTT subscriber (rumqttc, mutual TLS with its
//! own client certificate) that prints, per record the cloud received, the device, the
//! patient pseudonym, a few values, and whether the payload contained any planted
//! identifier.
//!
//! Invariants:
//! - [`Viewer::start`] returns only once the subscription is acknowledged, so a record
//!   published after it returns cannot be missed for lack of a subscriber.
//! - Output is plain lines; colour is used only when the caller says the output is a
//!   terminal. Lines show pseudonyms and values, never anything the PHI stage removed
//!   (the viewer only sees what the cloud sees).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{oneshot, watch};
use wardgate_proto::{
    AlarmReport, CodedValue, ObservationReport, ObservationValue, RecordBody, UplinkBatch,
    UplinkRecord,
};

use super::broker::MAX_PACKET_BYTES;
use super::leak::LeakLedger;
use super::tally::DemoTally;

/// Text styles (ANSI SGR when colour is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Unimportant detail.
    Dim,
    /// Headings.
    Bold,
    /// Good news.
    Green,
    /// Bad news.
    Red,
    /// Warnings and alarms.
    Yellow,
    /// Identifiers (devices, pseudonyms).
    Cyan,
}

/// Line-oriented output shared by every part of the demo.
pub struct Console {
    out: Mutex<Box<dyn Write + Send>>,
    colour: bool,
    width: Option<usize>,
    started: Instant,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("colour", &self.colour)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Output to `out`, with ANSI colours if `colour`.
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>, colour: bool) -> Self {
        Console {
            out: Mutex::new(out),
            colour,
            width: None,
            started: Instant::now(),
        }
    }

    /// Cut long detail lines (device log text) to `width` characters; `None` (the
    /// default) never cuts.
    #[must_use]
    pub fn with_width(mut self, width: Option<usize>) -> Self {
        self.width = width;
        self
    }

    /// The width detail lines are cut to, if any.
    #[must_use]
    pub fn width(&self) -> Option<usize> {
        self.width
    }

    /// Writes one line. Output errors (e.g. a closed pipe) are ignored: the demo's
    /// result does not depend on anyone reading it.
    pub fn line(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Writes a warning line.
    pub fn warn(&self, text: &str) {
        self.line(&format!("{} {}", self.paint(Style::Yellow, "  !"), text));
    }

    /// `text` in `style`.
    #[must_use]
    pub fn paint(&self, style: Style, text: &str) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let code = match style {
            Style::Dim => "2",
            Style::Bold => "1",
            Style::Green => "32",
            Style::Red => "1;31",
            Style::Yellow => "33",
            Style::Cyan => "36",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// Time since the console was created, as `t+  12.3s`.
    #[must_use]
    pub fn elapsed(&self) -> String {
        format!("t+{:6.1}s", self.started.elapsed().as_secs_f64())
    }
}

/// Why the viewer could not subscribe.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The TLS client configuration was refused.
    #[error("viewer TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The connection to the broker failed.
    #[error("viewer could not connect to the broker: {0}")]
    Connect(String),
    /// The broker refused the subscription.
    #[error("the broker refused the viewer's subscription to {0}")]
    Refused(String),
    /// No SUBACK in time.
    #[error("the viewer's subscription was not acknowledged within {0:?}")]
    Timeout(Duration),
}

/// Where and as whom the viewer subscribes.
pub struct ViewerConfig {
    /// The broker.
    pub broker: SocketAddr,
    /// Trust anchor for the broker's certificate.
    pub ca: CertificateDer<'static>,
    /// The viewer's client certificate.
    pub cert: CertificateDer<'static>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
    /// MQTT client id.
    pub client_id: String,
    /// Topic filter, e.g. `wardgate/#`.
    pub filter: String,
}

impl std::fmt::Debug for ViewerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewerConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

/// How long [`Viewer::start`] waits for the subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running viewer.
#[derive(Debug)]
pub struct Viewer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Viewer {
    /// Connects, subscribes, and starts printing what arrives.
    ///
    /// # Errors
    /// A [`ViewerError`] if it cannot connect or subscribe.
    pub async fn start(
        config: ViewerConfig,
        console: Arc<Console>,
        tally: Arc<DemoTally>,
        ledger: Arc<LeakLedger>,
    ) -> Result<Viewer, ViewerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(config.ca)?;
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![config.cert], config.key)?;

        let mut options = MqttOptions::new(
            config.client_id,
            config.broker.ip().to_string(),
            config.broker.port(),
        );
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, 64 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let (client, mut events) = AsyncClient::new(options, 16);

        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, mut stop_rx) = watch::channel(false);
        let filter = config.filter;
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut view = View {
                console,
                tally,
                ledger,
            };
            loop {
                let event = tokio::select! {
                    event = events.poll() => event,
                    _ = stop_rx.changed() => break,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // Clean session: (re)subscribe after every connect.
                        if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                            view.console
                                .warn(&format!("viewer could not subscribe: {e}"));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(if granted {
                                Ok(())
                            } else {
                                Err(ViewerError::Refused(filter.clone()))
                            });
                            if !granted {
                                return;
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        view.on_publish(&publish.topic, &publish.payload)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Err(ViewerError::Connect(e.to_string())));
                            return;
                        }
                        view.console
                            .warn(&format!("viewer lost the broker ({e}); reconnecting"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            // Best effort: tell the broker we leave, and let the event loop send it.
            if client.try_disconnect().is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while events.poll().await.is_ok() {}
                })
                .await;
            }
        });

        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Viewer { stop, task }),
            Ok(Ok(Err(e))) => {
                let _ = task.await;
                Err(e)
            }
            Ok(Err(_)) => Err(ViewerError::Connect("viewer task ended".to_owned())),
            Err(_) => {
                task.abort();
                Err(ViewerError::Timeout(SUBSCRIBE_TIMEOUT))
            }
        }
    }

    /// Disconnects and waits for the viewer task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "demo viewer task failed");
        }
    }
}

struct View {
    console: Arc<Console>,
    tally: Arc<DemoTally>,
    ledger: Arc<LeakLedger>,
}

impl View {
    /// The gateway's twin document (generic profile: retained, whole document).
    fn on_twin_report(&mut self, payload: &[u8], leaked: usize) {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(payload) else {
            self.tally.undecodable();
            self.console
                .warn("cloud received a twin document that is not JSON");
            return;
        };
        let devices = doc
            .get("devices")
            .and_then(serde_json::Value::as_object)
            .map_or(0, serde_json::Map::len);
        let spooled = doc
            .pointer("/gateway/spool/records")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let verdict = if leaked == 0 {
            self.console.paint(Style::Green, "✓ no PHI")
        } else {
            self.console.paint(
                Style::Red,
                &format!("✗ {leaked} PLANTED IDENTIFIER(S) IN PAYLOAD"),
            )
        };
        self.console.line(&format!(
            "{}  {}  reported state: {devices} declared device(s), {spooled} record(s) spooled  {verdict}",
            self.console.paint(Style::Dim, &self.console.elapsed()),
            self.console.paint(Style::Dim, "twin ")
        ));
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        // The broker's tap already counted this payload for the verdict; this check only
        // labels the line.
        let leaked = self.ledger.scanner().scan(payload).len();
        if topic.ends_with("/twin/reported") {
            self.on_twin_report(payload, leaked);
            return;
        }
        let batch: UplinkBatch = match serde_json::from_slice(payload) {
            Ok(batch) => batch,
            Err(_) => {
                self.tally.undecodable();
                self.console.warn(&format!(
                    "cloud received {} bytes on {topic} that are not a record batch",
                    payload.len()
                ));
                return;
            }
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        for record in &batch.records {
            if !self.tally.record_received(record) {
                continue; // At-least-once repeat: counted, not shown again.
            }
            let latency_ms = now_ms.saturating_sub(u128::from(record.accepted_ms));
            let line = render_record(&self.console, record, leaked, latency_ms);
            self.console.line(&format!(
                "{}  {line}",
                self.console.paint(Style::Dim, &self.console.elapsed())
            ));
        }
    }
}

/// One line for one record.
#[must_use]
pub fn render_record(
    console: &Console,
    record: &UplinkRecord,
    leaked: usize,
    latency_ms: u128,
) -> String {
    let verdict = if leaked == 0 {
        console.paint(Style::Green, "✓ no PHI")
    } else {
        console.paint(
            Style::Red,
            &format!("✗ {leaked} PLANTED IDENTIFIER(S) IN PAYLOAD"),
        )
    };
    let latency = console.paint(Style::Dim, &format!("{latency_ms} ms after spooling"));
    match &record.body {
        RecordBody::Observations(report) => format!(
            "{}  {}  {}  {}  {verdict}  {latency}",
            console.paint(Style::Bold, "obs  "),
            console.paint(Style::Cyan, &device_label(&report.device)),
            patient_label(console, report.patient.as_ref().map(|p| p.0.as_str())),
            vital_signs(report).join("  "),
        ),
        RecordBody::Alarm(report) => format!(
            "{}  {}  {}  {}  {verdict}  {latency}",
            console.paint(Style::Yellow, "ALARM"),
            console.paint(Style::Cyan, &device_label(&report.device)),
            patient_label(console, report.patient.as_ref().map(|p| p.0.as_str())),
            console.paint(Style::Yellow, &alarm_summary(report)),
        ),
        RecordBody::GatewayAlert(alert) => format!(
            "{}  gateway alert {}: {}  {verdict}",
            console.paint(Style::Yellow, "ALERT"),
            alert.code,
            alert.message
        ),
        RecordBody::UpdateRollout(r) => format!(
            "{}  rollout {} of {}: {} installed, {} failed of {}  {verdict}",
            console.paint(Style::Bold, "update"),
            r.assignment_id,
            r.target,
            r.installed,
            r.failed,
            r.members
        ),
        RecordBody::DeviceState(change) => format!(
            "{}  {}  {} → {} ({})  {verdict}",
            console.paint(Style::Bold, "state"),
            console.paint(Style::Cyan, &change.device),
            change.from.name(),
            change.to.name(),
            change.reason
        ),
        RecordBody::Measurements(report) => {
            let heartbeat = if report.heartbeat {
                format!("  {}", console.paint(Style::Dim, "(heartbeat)"))
            } else {
                String::new()
            };
            format!(
                "{}  {}  {}{heartbeat}  {verdict}  {latency}",
                console.paint(Style::Bold, "meas "),
                console.paint(Style::Cyan, &device_label(&report.device)),
                report
                    .measurements
                    .iter()
                    .map(measurement_label)
                    .collect::<Vec<_>>()
                    .join("  ")
            )
        }
        RecordBody::LogLines(batch) => {
            let summary = format!(
                "{}  {}  {} of {}  {verdict}  {latency}",
                console.paint(Style::Bold, "log  "),
                console.paint(Style::Cyan, &device_label(&batch.device)),
                plural(batch.lines.len(), "line"),
                batch.file
            );
            match telling_line(&batch.lines) {
                Some(line) => {
                    let detail = format!("{LOG_DETAIL_INDENT}│ {line}");
                    let detail = match console.width() {
                        Some(width) => truncate(&detail, width),
                        None => detail,
                    };
                    format!("{summary}\n{}", console.paint(Style::Dim, &detail))
                }
                None => summary,
            }
        }
    }
}

/// Indent of a log record's text line, so it sits under the device column.
const LOG_DETAIL_INDENT: &str = "                  ";

/// `1 line`, `3 lines`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The line of a log batch most worth showing: the first one in which the PHI rules
/// replaced something (it shows what the scrubber does), else the first one.
fn telling_line(lines: &[String]) -> Option<&str> {
    use crate::phi::freetext::{DATE, EMAIL, IP, MRN, NAME, PHONE, SSN};
    let markers = [NAME, EMAIL, PHONE, MRN, SSN, DATE, IP];
    lines
        .iter()
        .find(|line| markers.iter().any(|m| line.contains(m)))
        .or_else(|| lines.first())
        .map(String::as_str)
}

/// `text` cut to `width` characters, the last one `…` if anything was cut.
#[must_use]
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `supply_temperature=12.4 Cel`.
fn measurement_label(m: &wardgate_proto::Measurement) -> String {
    let value = format_value(m.value);
    match &m.units {
        Some(units) => format!("{}={value} {units}", m.name),
        None => format!("{}={value}", m.name),
    }
}

/// A reading without binary-fraction noise: `21.400000000000002` → `21.4`, `1.0` → `1`.
#[must_use]
pub fn format_value(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let fixed = format!("{value:.3}");
    let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn device_label(device: &wardgate_proto::DeviceIdentity) -> String {
    device.eui64.clone().unwrap_or_else(|| device.id.clone())
}

fn patient_label(console: &Console, pseudonym: Option<&str>) -> String {
    match pseudonym {
        Some(p) => {
            let short: String = p.chars().take(12).collect();
            format!(
                "patient {}",
                console.paint(Style::Cyan, &format!("{short}…"))
            )
        }
        None => "no patient".to_owned(),
    }
}

fn is(code: &CodedValue, number: &str, refid: &str) -> bool {
    code.code == number || code.text == refid
}

/// Short labels and units of the vital signs in a report, in a fixed order.
#[must_use]
pub fn vital_signs(report: &ObservationReport) -> Vec<String> {
    let observations: Vec<_> = report.groups.iter().flat_map(|g| &g.observations).collect();
    let numeric = |number: &str, refid: &str| {
        observations.iter().find_map(|o| match &o.value {
            ObservationValue::Numeric(v) if is(&o.code, number, refid) => {
                Some((v.clone(), unit_label(o.units.as_ref())))
            }
            _ => None,
        })
    };
    let mut out = Vec::new();
    if let Some((v, u)) = numeric("150456", "MDC_PULS_OXIM_SAT_O2") {
        out.push(format!("SpO2 {v} {u}"));
    }
    if let Some((v, u)) = numeric("149530", "MDC_PULS_OXIM_PULS_RATE")
        .or_else(|| numeric("147842", "MDC_ECG_HEART_RATE"))
    {
        out.push(format!("pulse {v} {u}"));
    }
    if let (Some((sys, u)), Some((dia, _))) = (
        numeric("150021", "MDC_PRESS_BLD_NONINV_SYS"),
        numeric("150022", "MDC_PRESS_BLD_NONINV_DIA"),
    ) {
        out.push(format!("NIBP {sys}/{dia} {u}"));
    }
    if let Some((v, u)) = numeric("151562", "MDC_RESP_RATE") {
        out.push(format!("resp {v} {u}"));
    }
    if let Some((v, u)) =
        numeric("150344", "MDC_TEMP").or_else(|| numeric("150364", "MDC_TEMP_BODY"))
    {
        out.push(format!("temp {v} {u}"));
    }
    if out.is_empty() {
        out.push(format!("{} observations", observations.len()));
    }
    out
}

/// E.g. `SpO2 low alarm (86 %) · start · active · medium priority`.
#[must_use]
pub fn alarm_summary(report: &AlarmReport) -> String {
    let text_of = |number: &str, refid: &str| {
        report.observations.iter().find_map(|o| match &o.value {
            ObservationValue::Text(v) if is(&o.code, number, refid) => Some(v.clone()),
            _ => None,
        })
    };
    let condition = report
        .observations
        .iter()
        .find_map(|o| match o.code.text.as_str() {
            "MDC_EVT_LO_VAL_LT_LIM" | "MDC_EVT_LO" => Some("low"),
            "MDC_EVT_HI_VAL_GT_LIM" | "MDC_EVT_HI" => Some("high"),
            _ => None,
        });
    let source = report.observations.iter().find_map(|o| match &o.value {
        ObservationValue::Numeric(v) => {
            Some((label_of(&o.code), v.clone(), unit_label(o.units.as_ref())))
        }
        _ => None,
    });
    let condition = condition.unwrap_or("event");
    let mut parts = vec![match source {
        Some((label, value, unit)) => format!("{label} {condition} alarm ({value} {unit})"),
        None => format!("{condition} alarm ({})", report.event.text),
    }];
    if let Some(phase) = text_of("68481", "MDC_ATTR_EVENT_PHASE") {
        parts.push(phase);
    }
    if let Some(state) = text_of("68482", "MDC_ATTR_ALARM_STATE") {
        parts.push(state);
    }
    if let Some(priority) = text_of("68484", "MDC_ATTR_ALARM_PRIORITY") {
        parts.push(match priority.as_str() {
            "PH" => "high priority".to_owned(),
            "PM" => "medium priority".to_owned(),
            "PL" => "low priority".to_owned(),
            other => format!("priority {other}"),
        });
    }
    parts.join(" · ")
}

fn label_of(code: &CodedValue) -> String {
    match code.code.as_str() {
        "150456" => "SpO2".to_owned(),
        "149530" => "pulse".to_owned(),
        "147842" => "heart rate".to_owned(),
        "151562" => "resp".to_owned(),
        "150344" | "150364" => "temp".to_owned(),
        _ if !code.text.is_empty() => code.text.clone(),
        _ => code.code.clone(),
    }
}

fn unit_label(units: Option<&CodedValue>) -> String {
    let Some(u) = units else { return String::new() };
    let known = |s: &str| match s {
        "262688" | "MDC_DIM_PERCENT" | "%" => Some("%"),
        "264864"
        | "MDC_DIM_BEAT_PER_MIN"
        | "264928"
        | "MDC_DIM_RESP_PER_MIN"
        | "/min"
        | "{beats}/min"
        | "{breaths}/min" => Some("/min"),
        "266016" | "MDC_DIM_MMHG" | "mm[Hg]" => Some("mmHg"),
        "268192" | "MDC_DIM_DEGC" | "Cel" => Some("°C"),
        _ => None,
    };
    known(&u.code).or_else(|| known(&u.text)).map_or_else(
        || {
            if u.text.is_empty() {
                u.code.clone()
            } else {
                u.text.clone()
            }
        },
        str::to_owned,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use wardgate_proto::{
        DeviceIdentity, Observation, ObservationGroup, Priority, Pseudonym, RecordId,
    };

    fn coded(code: &str, text: &str, system: &str) -> CodedValue {
        CodedValue {
            code: code.into(),
            text: text.into(),
            system: system.into(),
        }
    }

    fn obs(code: CodedValue, value: ObservationValue, units: Option<CodedValue>) -> Observation {
        Observation {
            code,
            value,
            units,
            containment: String::new(),
            status: "R".into(),
            observed_at: String::new(),
            equipment: String::new(),
        }
    }

    fn num(v: &str) -> ObservationValue {
        ObservationValue::Numeric(v.into())
    }

    fn device() -> DeviceIdentity {
        DeviceIdentity {
            id: "0050C2FFFE0A1000".into(),
            application: Some("WGDEMO-MON".into()),
            eui64: Some("0050C2FFFE0A1000".into()),
        }
    }

    #[test]
    fn observation_line_shows_values_with_units() {
        let mdc = |c, t| Some(coded(c, t, "MDC"));
        let report = ObservationReport {
            device: device(),
            patient: Some(Pseudonym("3f9a1c2b7d4e5f60718293a4b5c6d7e8".into())),
            message_time: String::new(),
            control_id: "MON00-000001".into(),
            groups: vec![ObservationGroup {
                service: coded("182777000", "monitoring of patient", "SCT"),
                observed_at: String::new(),
                observations: vec![
                    obs(
                        coded("69965", "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS", "MDC"),
                        ObservationValue::None,
                        None,
                    ),
                    obs(
                        coded("150456", "MDC_PULS_OXIM_SAT_O2", "MDC"),
                        num("97"),
                        mdc("262688", "MDC_DIM_PERCENT"),
                    ),
                    obs(
                        coded("149530", "MDC_PULS_OXIM_PULS_RATE", "MDC"),
                        num("72"),
                        mdc("264864", "MDC_DIM_BEAT_PER_MIN"),
                    ),
                    obs(
                        coded("150021", "MDC_PRESS_BLD_NONINV_SYS", "MDC"),
                        num("118"),
                        mdc("266016", "MDC_DIM_MMHG"),
                    ),
                    obs(
                        coded("150022", "MDC_PRESS_BLD_NONINV_DIA", "MDC"),
                        num("76"),
                        mdc("266016", "MDC_DIM_MMHG"),
                    ),
                    obs(
                        coded("151562", "MDC_RESP_RATE", "MDC"),
                        num("16"),
                        mdc("264928", "MDC_DIM_RESP_PER_MIN"),
                    ),
                    obs(
                        coded("150344", "MDC_TEMP", "MDC"),
                        num("36.8"),
                        Some(coded("Cel", "Cel", "UCUM")),
                    ),
                ],
            }],
        };
        assert_eq!(
            vital_signs(&report),
            [
                "SpO2 97 %",
                "pulse 72 /min",
                "NIBP 118/76 mmHg",
                "resp 16 /min",
                "temp 36.8 °C"
            ]
        );
        let record = UplinkRecord {
            id: RecordId { spool: 1, seq: 1 },
            priority: Priority::Observation,
            accepted_ms: 0,
            body: RecordBody::Observations(report),
        };
        let console = Console::new(Box::new(std::io::sink()), false);
        let line = render_record(&console, &record, 0, 12);
        assert!(
            line.contains("0050C2FFFE0A1000") && line.contains("patient 3f9a1c2b7d4e…"),
            "{line}"
        );
        assert!(
            line.contains("✓ no PHI") && !line.contains('\x1b'),
            "{line}"
        );
        assert!(render_record(&console, &record, 2, 12).contains("2 PLANTED"));
    }

    #[test]
    fn alarm_summary_reads_pcd04_attributes() {
        let report = AlarmReport {
            device: device(),
            patient: None,
            message_time: String::new(),
            control_id: "MON00-000004".into(),
            event: coded("196616", "MDC_EVT_ALARM", "MDC"),
            observations: vec![
                obs(
                    coded("196674", "MDC_EVT_LO_VAL_LT_LIM", "MDC"),
                    ObservationValue::Withheld,
                    None,
                ),
                obs(
                    coded("150456", "MDC_PULS_OXIM_SAT_O2", "MDC"),
                    num("86"),
                    Some(coded("262688", "MDC_DIM_PERCENT", "MDC")),
                ),
                obs(
                    coded("68481", "MDC_ATTR_EVENT_PHASE", "MDC"),
                    ObservationValue::Text("start".into()),
                    None,
                ),
                obs(
                    coded("68482", "MDC_ATTR_ALARM_STATE", "MDC"),
                    ObservationValue::Text("active".into()),
                    None,
                ),
                obs(
                    coded("68484", "MDC_ATTR_ALARM_PRIORITY", "MDC"),
                    ObservationValue::Text("PM".into()),
                    None,
                ),
            ],
        };
        assert_eq!(
            alarm_summary(&report),
            "SpO2 low alarm (86 %) · start · active · medium priority"
        );
    }

    #[test]
    fn measurement_line_shows_readings_without_float_noise() {
        let record = UplinkRecord {
            id: RecordId { spool: 1, seq: 2 },
            priority: Priority::Observation,
            accepted_ms: 0,
            body: RecordBody::Measurements(wardgate_proto::MeasurementReport {
                device: DeviceIdentity {
                    id: "cathlab-chiller".into(),
                    application: None,
                    eui64: None,
                },
                source: "modbus".into(),
                heartbeat: true,
                measurements: vec![
                    wardgate_proto::Measurement {
                        name: "supply_temperature".into(),
                        value: 214.0 * 0.1,
                        units: Some("Cel".into()),
                        at_ms: 1,
                    },
                    wardgate_proto::Measurement {
                        name: "pump_running".into(),
                        value: 1.0,
                        units: None,
                        at_ms: 1,
                    },
                ],
            }),
        };
        let console = Console::new(Box::new(std::io::sink()), false);
        let line = render_record(&console, &record, 0, 3);
        assert!(
            line.starts_with(
                "meas   cathlab-chiller  supply_temperature=21.4 Cel  pump_running=1  (heartbeat)  ✓ no PHI"
            ),
            "{line}"
        );
        assert_eq!(format_value(-0.0001), "0");
        assert_eq!(format_value(-12.25), "-12.25");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn log_line_shows_the_line_the_scrubber_changed_cut_to_the_width() {
        let record = UplinkRecord {
            id: RecordId { spool: 1, seq: 3 },
            priority: Priority::Log,
            accepted_ms: 0,
            body: RecordBody::LogLines(wardgate_proto::LogBatch {
                device: DeviceIdentity {
                    id: "cathlab-carto".into(),
                    application: None,
                    eui64: None,
                },
                file: "mapping-system.log".into(),
                lines: vec![
                    "2025-06-20 13:23:11.482 INFO  [Mapping]  Point 4 acquired".into(),
                    "2025-06-20 13:23:11.482 INFO  [Study]    Study opened for patient [NAME], [NAME] (MRN [MRN])".into(),
                ],
            }),
        };
        let console = Console::new(Box::new(std::io::sink()), false);
        let text = render_record(&console, &record, 0, 3);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("log    cathlab-carto  2 lines of mapping-system.log  ✓ no PHI"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            format!("{LOG_DETAIL_INDENT}│ 2025-06-20 13:23:11.482 INFO  [Study]    Study opened for patient [NAME], [NAME] (MRN [MRN])")
        );
        let narrow = Console::new(Box::new(std::io::sink()), false).with_width(Some(60));
        let cut = render_record(&narrow, &record, 0, 3);
        let detail = cut.lines().nth(1).unwrap();
        assert_eq!(detail.chars().count(), 60, "{detail}");
        assert!(detail.ends_with('…'), "{detail}");
        assert_eq!(truncate("short", 60), "short");
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = Console::new(Box::new(std::io::sink()), false);
        let colour = Console::new(Box::new(std::io::sink()), true);
        assert_eq!(plain.paint(Style::Red, "x"), "x");
        assert_eq!(colour.paint(Style::Red, "x"), "\x1b[1;31mx\x1b[0m");
    }
}
