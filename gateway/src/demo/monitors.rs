//! Simulated bedside monitors: IHE PCD-01 observation reports (ORU^R01) every period and
//! PCD-04 alarms (ORU^R40) when a simulated desaturation crosses the SpO2 limit, sent over
//! real MLLP/TCP; every message waits for its ACK, as a real device does.
//!
//! The top of this module is sans-IO: [`MonitorSim`] (vital signs and message
//! building, time passed in), [`MllpReader`] (framing) and [`check_ack`]. The tokio
//! driver at the bottom only moves bytes and keeps counts.
//!
//! Invariants:
//! - Every message carries the monitor's synthetic patient in PID, NTE, NK1 and PV1, so
//!   every planted identifier of that patient is on the wire to the gateway.
//! - Control ids (MSH-10) are unique per demo run: `MON<index>-<sequence>`.
//! - A message counts as acknowledged only if an ACK with MSA-2 equal to its control id
//!   and MSA-1 `AA` (or `CA`, enhanced mode) came back on the same connection.
//! - One message is in flight per connection (MLLP has no pipelining); after any
//!   failure the connection is dropped and a new one is made for the next message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::patients::{segment, Date, SyntheticPatient};
use super::tally::DemoTally;
use super::viewer::Console;

/// MLLP start block.
pub const START_BLOCK: u8 = 0x0B;
/// MLLP end block (followed by [`CARRIAGE_RETURN`]).
pub const END_BLOCK: u8 = 0x1C;
/// Segment terminator and last byte of an MLLP frame.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// MSH-3 namespace id of the simulated monitors.
pub const APPLICATION: &str = "WGDEMO-MON";
/// MSH-21 of PCD-01 messages.
const PCD01_PROFILE: &str = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO";
/// MSH-21 of PCD-04 messages.
const PCD04_PROFILE: &str = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO";
/// SpO2 below this raises the low-saturation alarm...
const SPO2_ALARM_BELOW: f64 = 90.0;
/// ... and at or above this ends it (hysteresis, as monitors do).
const SPO2_ALARM_CLEARED_AT: f64 = 92.0;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// PCD-01 observation report.
    Observations,
    /// PCD-04 alarm, with its event phase.
    Alarm(AlarmPhase),
}

/// PCD-04 event phase (`MDC_ATTR_EVENT_PHASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmPhase {
    /// The alarm condition began.
    Start,
    /// The alarm condition ended.
    End,
}

impl AlarmPhase {
    fn hl7(self) -> &'static str {
        match self {
            AlarmPhase::Start => "start",
            AlarmPhase::End => "end",
        }
    }
}

/// One HL7 message ready to send. Carries planted patient identifiers, so its `Debug`
/// shows only the control id and kind.
#[derive(Clone)]
pub struct OutgoingMessage {
    /// Index of the monitor that sends it.
    pub monitor: usize,
    /// MSH-10.
    pub control_id: String,
    /// PCD-01 or PCD-04.
    pub kind: MessageKind,
    /// The message, segments separated by CR, without MLLP framing.
    pub hl7: String,
}

impl std::fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMessage")
            .field("monitor", &self.monitor)
            .field("control_id", &self.control_id)
            .field("kind", &self.kind)
            .field("hl7", &wardgate_device_adapters::REDACTED)
            .finish()
    }
}

/// Current vital signs, as continuous values (rounded when reported).
#[derive(Debug, Clone, Copy)]
struct Vitals {
    spo2: f64,
    pulse: f64,
    resp: f64,
    temp: f64,
    systolic: f64,
    diastolic: f64,
}

#[derive(Debug, Clone, Copy)]
enum Episode {
    Stable,
    /// A desaturation for this many more steps.
    Desaturating(u32),
}

/// One simulated monitor: its device identity, its patient, its vital signs.
pub struct MonitorSim {
    index: usize,
    eui64: String,
    bed: String,
    patient: SyntheticPatient,
    rng: fastrand::Rng,
    baseline: Vitals,
    vitals: Vitals,
    nibp: (u32, u32),
    episode: Episode,
    alarm_active: Option<String>,
    step: u64,
    sequence: u64,
    alarms: u64,
}

impl std::fmt::Debug for MonitorSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorSim")
            .field("index", &self.index)
            .field("eui64", &self.eui64)
            .field("patient", &wardgate_device_adapters::REDACTED)
            .finish_non_exhaustive()
    }
}

impl MonitorSim {
    /// Monitor `index` with its patient; `today` is days since 1970-01-01 (for the
    /// patient's admission date); `seed` makes the vital signs reproducible.
    #[must_use]
    pub fn new(index: usize, today: i64, seed: u64) -> Self {
        let mut rng =
            fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let baseline = Vitals {
            spo2: 96.0 + rng.f64() * 2.5,
            pulse: 62.0 + rng.f64() * 24.0,
            resp: 12.0 + rng.f64() * 6.0,
            temp: 36.4 + rng.f64() * 0.8,
            systolic: 108.0 + rng.f64() * 26.0,
            diastolic: 66.0 + rng.f64() * 16.0,
        };
        MonitorSim {
            index,
            eui64: format!("0050C2FFFE0A{:04X}", 0x1000 + index % 0x1000),
            bed: format!("Bed {:02}", index + 1),
            patient: SyntheticPatient::new(index, today),
            rng,
            baseline,
            vitals: baseline,
            nibp: (
                baseline.systolic.round() as u32,
                baseline.diastolic.round() as u32,
            ),
            episode: Episode::Stable,
            alarm_active: None,
            step: 0,
            sequence: 0,
            alarms: 0,
        }
    }

    /// The device's EUI-64 (MSH-3.2).
    #[must_use]
    pub fn eui64(&self) -> &str {
        &self.eui64
    }

    /// The monitor's bed label.
    #[must_use]
    pub fn bed(&self) -> &str {
        &self.bed
    }

    /// The monitor's patient.
    #[must_use]
    pub fn patient(&self) -> &SyntheticPatient {
        &self.patient
    }

    /// Advances the simulation by one reporting period ending at `now` and returns what
    /// the monitor sends: one PCD-01 report, preceded by a PCD-04 alarm when the SpO2
    /// limit was crossed during the period.
    pub fn tick(&mut self, now: SystemTime) -> Vec<OutgoingMessage> {
        self.step += 1;
        self.advance_vitals();
        let timestamp = hl7_timestamp(now);
        let mut out = Vec::new();
        let spo2 = self.vitals.spo2.round();
        match self.alarm_active.take() {
            None if spo2 < SPO2_ALARM_BELOW => {
                self.alarms += 1;
                let alarm_id = format!("AL{:02}-{:04}", self.index, self.alarms);
                out.push(self.alarm(&timestamp, &alarm_id, AlarmPhase::Start));
                self.alarm_active = Some(alarm_id);
            }
            Some(alarm_id) if spo2 >= SPO2_ALARM_CLEARED_AT => {
                out.push(self.alarm(&timestamp, &alarm_id, AlarmPhase::End));
            }
            still => self.alarm_active = still,
        }
        out.push(self.observations(&timestamp));
        out
    }

    fn advance_vitals(&mut self) {
        // The first monitor desaturates early so that even a short demo shows a PCD-04
        // alarm; afterwards episodes start at random (about one per minute per monitor).
        let starts = match self.episode {
            Episode::Stable => (self.index == 0 && self.step == 3) || self.rng.f64() < 1.0 / 60.0,
            Episode::Desaturating(_) => false,
        };
        if starts {
            self.episode = Episode::Desaturating(6 + self.rng.u32(0..4));
        }
        let mut target = self.baseline;
        if let Episode::Desaturating(left) = self.episode {
            target.spo2 = 84.5;
            target.pulse += 18.0;
            target.resp += 6.0;
            self.episode = if left <= 1 {
                Episode::Stable
            } else {
                Episode::Desaturating(left - 1)
            };
        }
        // Mean-reverting drift with noise, like real trends between two samples.
        let rng = &mut self.rng;
        let mut drift = |value: f64, target: f64, rate: f64, noise: f64| {
            value + rate * (target - value) + noise * (rng.f64() * 2.0 - 1.0)
        };
        let v = self.vitals;
        self.vitals = Vitals {
            spo2: drift(v.spo2, target.spo2, 0.35, 0.4).clamp(70.0, 100.0),
            pulse: drift(v.pulse, target.pulse, 0.3, 1.5).clamp(30.0, 220.0),
            resp: drift(v.resp, target.resp, 0.3, 0.6).clamp(4.0, 60.0),
            temp: drift(v.temp, target.temp, 0.1, 0.03).clamp(33.0, 42.0),
            systolic: drift(v.systolic, target.systolic, 0.2, 2.0).clamp(60.0, 240.0),
            diastolic: drift(v.diastolic, target.diastolic, 0.2, 1.5).clamp(30.0, 140.0),
        };
        // Non-invasive blood pressure is a cuff measurement: a new reading every 10 periods.
        if self.step % 10 == 1 {
            self.nibp = (
                self.vitals.systolic.round() as u32,
                self.vitals.diastolic.round() as u32,
            );
        }
    }

    fn next_control_id(&mut self) -> String {
        self.sequence += 1;
        format!("MON{:02}-{:06}", self.index, self.sequence)
    }

    fn msh(&self, timestamp: &str, control_id: &str, message_type: &str, profile: &str) -> String {
        // `segment` numbers fields after the segment name, and in MSH the first `|` is
        // MSH-1 itself, so MSH-n goes at position n-1.
        segment(
            "MSH",
            &[
                (1, "^~\\&".to_owned()),
                (2, format!("{APPLICATION}^{}^EUI-64", self.eui64)),
                (4, "WARDGATE".to_owned()),
                (6, timestamp.to_owned()),
                (8, message_type.to_owned()),
                (9, control_id.to_owned()),
                (10, "P".to_owned()),
                (11, "2.6".to_owned()),
                (14, "AL".to_owned()),
                (15, "NE".to_owned()),
                (17, "UNICODE UTF-8".to_owned()),
                (20, profile.to_owned()),
            ],
        )
    }

    fn patient_segments(&self) -> [String; 4] {
        [
            self.patient.pid_segment(),
            self.patient.nte_segment(),
            self.patient.nk1_segment(),
            self.patient.pv1_segment(&self.bed),
        ]
    }

    fn equipment(&self) -> String {
        format!("{}^EUI-64", self.eui64)
    }

    fn observations(&mut self, timestamp: &str) -> OutgoingMessage {
        let control_id = self.next_control_id();
        let order = format!("{control_id}^{APPLICATION}^{}^EUI-64", self.eui64);
        let v = self.vitals;
        let (systolic, diastolic) = self.nibp;
        let mean = diastolic + (systolic.saturating_sub(diastolic)) / 3;
        let numeric = |set: usize,
                       code: &str,
                       refid: &str,
                       containment: &str,
                       value: String,
                       units: &str,
                       range: &str| {
            segment(
                "OBX",
                &[
                    (1, set.to_string()),
                    (2, "NM".to_owned()),
                    (3, format!("{code}^{refid}^MDC")),
                    (4, containment.to_owned()),
                    (5, value),
                    (6, units.to_owned()),
                    (7, range.to_owned()),
                    (11, "R".to_owned()),
                    (14, timestamp.to_owned()),
                ],
            )
        };
        let percent = "262688^MDC_DIM_PERCENT^MDC";
        let per_min = "264864^MDC_DIM_BEAT_PER_MIN^MDC";
        let mmhg = "266016^MDC_DIM_MMHG^MDC";
        let mut segments = vec![self.msh(timestamp, &control_id, "ORU^R01^ORU_R01", PCD01_PROFILE)];
        segments.extend(self.patient_segments());
        segments.push(segment(
            "OBR",
            &[
                (1, "1".to_owned()),
                (2, order.clone()),
                (3, order),
                (4, "182777000^monitoring of patient^SCT".to_owned()),
                (7, timestamp.to_owned()),
            ],
        ));
        segments.push(segment(
            "OBX",
            &[
                (1, "1".to_owned()),
                (3, "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC".to_owned()),
                (4, "1.0.0.0".to_owned()),
                (11, "X".to_owned()),
                (18, self.equipment()),
            ],
        ));
        segments.push(numeric(
            2,
            "150456",
            "MDC_PULS_OXIM_SAT_O2",
            "1.1.1.150456",
            fmt0(v.spo2),
            percent,
            "90-100",
        ));
        segments.push(numeric(
            3,
            "149530",
            "MDC_PULS_OXIM_PULS_RATE",
            "1.1.1.149530",
            fmt0(v.pulse),
            per_min,
            "50-120",
        ));
        segments.push(numeric(
            4,
            "150021",
            "MDC_PRESS_BLD_NONINV_SYS",
            "1.2.1.150021",
            systolic.to_string(),
            mmhg,
            "90-160",
        ));
        segments.push(numeric(
            5,
            "150022",
            "MDC_PRESS_BLD_NONINV_DIA",
            "1.2.1.150022",
            diastolic.to_string(),
            mmhg,
            "50-90",
        ));
        segments.push(numeric(
            6,
            "150023",
            "MDC_PRESS_BLD_NONINV_MEAN",
            "1.2.1.150023",
            mean.to_string(),
            mmhg,
            "",
        ));
        segments.push(numeric(
            7,
            "151562",
            "MDC_RESP_RATE",
            "1.3.1.151562",
            fmt0(v.resp),
            "264928^MDC_DIM_RESP_PER_MIN^MDC",
            "8-30",
        ));
        // Temperature in UCUM units: PCD-01 allows either MDC or UCUM in OBX-6.
        segments.push(numeric(
            8,
            "150344",
            "MDC_TEMP",
            "1.4.1.150344",
            format!("{:.1}", v.temp),
            "Cel^Cel^UCUM",
            "35.5-38.0",
        ));
        OutgoingMessage {
            monitor: self.index,
            control_id,
            kind: MessageKind::Observations,
            hl7: join_segments(&segments),
        }
    }

    fn alarm(&mut self, timestamp: &str, alarm_id: &str, phase: AlarmPhase) -> OutgoingMessage {
        let control_id = self.next_control_id();
        let order = format!("{alarm_id}^{APPLICATION}^{}^EUI-64", self.eui64);
        let active = phase == AlarmPhase::Start;
        let attribute = |set: usize, code: &str, refid: &str, suffix: u32, value: &str| {
            segment(
                "OBX",
                &[
                    (1, set.to_string()),
                    (2, "ST".to_owned()),
                    (3, format!("{code}^{refid}^MDC")),
                    (4, format!("1.1.1.150456.{suffix}")),
                    (5, value.to_owned()),
                    (11, "R".to_owned()),
                    (14, timestamp.to_owned()),
                ],
            )
        };
        let mut segments = vec![self.msh(timestamp, &control_id, "ORU^R40^ORU_R40", PCD04_PROFILE)];
        segments.extend(self.patient_segments());
        segments.push(segment(
            "OBR",
            &[
                (1, "1".to_owned()),
                (2, order.clone()),
                (3, order),
                (4, "196616^MDC_EVT_ALARM^MDC".to_owned()),
                (7, timestamp.to_owned()),
            ],
        ));
        segments.push(segment(
            "OBX",
            &[
                (1, "1".to_owned()),
                (2, "ST".to_owned()),
                (3, "196674^MDC_EVT_LO_VAL_LT_LIM^MDC".to_owned()),
                (4, "1.1.1.150456.1".to_owned()),
                (5, "SpO2 LOW".to_owned()),
                (8, "L~PM~SP".to_owned()),
                (11, "R".to_owned()),
                (14, timestamp.to_owned()),
                (18, self.equipment()),
            ],
        ));
        segments.push(segment(
            "OBX",
            &[
                (1, "2".to_owned()),
                (2, "NM".to_owned()),
                (3, "150456^MDC_PULS_OXIM_SAT_O2^MDC".to_owned()),
                (4, "1.1.1.150456.2".to_owned()),
                (5, fmt0(self.vitals.spo2)),
                (6, "262688^MDC_DIM_PERCENT^MDC".to_owned()),
                (7, "90-100".to_owned()),
                (8, if active { "L" } else { "N" }.to_owned()),
                (11, "R".to_owned()),
                (14, timestamp.to_owned()),
            ],
        ));
        segments.push(attribute(
            3,
            "68481",
            "MDC_ATTR_EVENT_PHASE",
            3,
            phase.hl7(),
        ));
        segments.push(attribute(
            4,
            "68482",
            "MDC_ATTR_ALARM_STATE",
            4,
            if active { "active" } else { "inactive" },
        ));
        segments.push(attribute(
            5,
            "68483",
            "MDC_ATTR_ALARM_INACTIVATION_STATE",
            5,
            "enabled",
        ));
        segments.push(attribute(6, "68484", "MDC_ATTR_ALARM_PRIORITY", 6, "PM"));
        OutgoingMessage {
            monitor: self.index,
            control_id,
            kind: MessageKind::Alarm(phase),
            hl7: join_segments(&segments),
        }
    }
}

fn fmt0(value: f64) -> String {
    format!("{value:.0}")
}

fn join_segments(segments: &[String]) -> String {
    let mut hl7 = segments.join("\r");
    hl7.push('\r');
    hl7
}

/// HL7 DTM in UTC with offset, e.g. `20250620120000+0000`.
#[must_use]
pub fn hl7_timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let date = Date::from_days_since_epoch(days).unwrap_or(Date {
        year: 1970,
        month: 1,
        day: 1,
    });
    let rem = secs % 86_400;
    format!(
        "{}{:02}{:02}{:02}+0000",
        date.hl7(),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of `now` (for the patients' admission dates).
#[must_use]
pub fn days_since_epoch(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0))
}

/// Wraps a message in an MLLP frame.
#[must_use]
pub fn mllp_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(message.len() + 3);
    frame.push(START_BLOCK);
    frame.extend_from_slice(message);
    frame.extend_from_slice(&[END_BLOCK, CARRIAGE_RETURN]);
    frame
}

/// Why an MLLP stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MllpError {
    /// A frame grew past the limit without an end block.
    #[error("MLLP frame longer than {0} bytes")]
    TooLong(usize),
}

/// Splits an MLLP byte stream into frames (sans-IO). Bytes outside frames are dropped.
#[derive(Debug)]
pub struct MllpReader {
    buffer: Vec<u8>,
    max_frame: usize,
}

impl MllpReader {
    /// A reader that refuses frames longer than `max_frame` bytes.
    #[must_use]
    pub fn new(max_frame: usize) -> Self {
        MllpReader {
            buffer: Vec::new(),
            max_frame,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame's content, if one is buffered.
    ///
    /// # Errors
    /// [`MllpError::TooLong`] if the buffered frame exceeds the limit.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, MllpError> {
        let Some(start) = self.buffer.iter().position(|&b| b == START_BLOCK) else {
            self.buffer.clear();
            return Ok(None);
        };
        self.buffer.drain(..start);
        let end = self
            .buffer
            .windows(2)
            .position(|w| w == [END_BLOCK, CARRIAGE_RETURN]);
        match end {
            Some(end) => {
                let frame = self.buffer[1..end].to_vec();
                self.buffer.drain(..end + 2);
                Ok(Some(frame))
            }
            None if self.buffer.len() > self.max_frame + 3 => {
                Err(MllpError::TooLong(self.max_frame))
            }
            None => Ok(None),
        }
    }
}

/// The acknowledgement code of an ACK (MSA-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA` or `CA`: accepted (for the gateway: durably spooled).
    Accepted,
    /// `AE` or `CE`: the message was in error.
    Error,
    /// `AR` or `CR`: rejected (e.g. the gateway is shutting down or over capacity).
    Rejected,
}

/// Why an ACK could not be matched to the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No MSA segment.
    #[error("ACK has no MSA segment")]
    NoMsa,
    /// MSA-1 is not one of AA/AE/AR/CA/CE/CR.
    #[error("unknown acknowledgement code {0:?}")]
    UnknownCode(String),
    /// MSA-2 does not echo our control id.
    #[error("ACK is for control id {got:?}, expected {expected:?}")]
    WrongControlId {
        /// Ours.
        expected: String,
        /// MSA-2.
        got: String,
    },
}

/// Checks an ACK (frame content) against the control id of the message it answers.
///
/// # Errors
/// An [`AckError`] if the ACK has no MSA, an unknown code, or another control id.
pub fn check_ack(ack: &[u8], control_id: &str) -> Result<AckCode, AckError> {
    let text = String::from_utf8_lossy(ack);
    let separator = text
        .strip_prefix("MSH")
        .and_then(|rest| rest.chars().next())
        .unwrap_or('|');
    let msa = text
        .split(['\r', '\n'])
        .find(|s| s.starts_with("MSA"))
        .ok_or(AckError::NoMsa)?;
    let mut fields = msa.split(separator).skip(1);
    let code = fields.next().unwrap_or("");
    let echoed = fields.next().unwrap_or("");
    let code = match code {
        "AA" | "CA" => AckCode::Accepted,
        "AE" | "CE" => AckCode::Error,
        "AR" | "CR" => AckCode::Rejected,
        other => return Err(AckError::UnknownCode(other.to_owned())),
    };
    if echoed != control_id {
        return Err(AckError::WrongControlId {
            expected: control_id.to_owned(),
            got: echoed.to_owned(),
        });
    }
    Ok(code)
}

// ---- tokio driver -------------------------------------------------------------------

/// How long a monitor waits for a connection or an ACK.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest ACK accepted.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// Runs one monitor: a message every `period` (first after `offset`) until `stop`
/// turns true. The message in flight when `stop` arrives is finished (ACK awaited).
pub async fn run_monitor(
    mut sim: MonitorSim,
    gateway: SocketAddr,
    period: Duration,
    offset: Duration,
    tally: Arc<DemoTally>,
    console: Arc<Console>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connection: Option<(TcpStream, MllpReader)> = None;
    let start = tokio::time::Instant::now() + offset;
    let mut ticks = tokio::time::interval_at(start, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        for message in sim.tick(SystemTime::now()) {
            tally.sent(&message);
            match exchange(&mut connection, gateway, &message).await {
                Ok(AckCode::Accepted) => tally.acked(&message),
                Ok(code) => {
                    tally.not_accepted(code);
                    console.warn(&format!(
                        "{} {}: gateway answered {code:?}",
                        sim.bed(),
                        message.control_id
                    ));
                }
                Err(reason) => {
                    connection = None;
                    tally.failed();
                    console.warn(&format!(
                        "{} {}: no ACK ({reason})",
                        sim.bed(),
                        message.control_id
                    ));
                }
            }
        }
    }
}

/// Sends one message and waits for its ACK, connecting first if needed.
async fn exchange(
    connection: &mut Option<(TcpStream, MllpReader)>,
    gateway: SocketAddr,
    message: &OutgoingMessage,
) -> Result<AckCode, String> {
    if connection.is_none() {
        let stream = tokio::time::timeout(NETWORK_TIMEOUT, TcpStream::connect(gateway))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        *connection = Some((stream, MllpReader::new(MAX_ACK_BYTES)));
    }
    let Some((stream, reader)) = connection.as_mut() else {
        return Err("not connected".to_owned());
    };
    let frame = mllp_frame(message.hl7.as_bytes());
    tokio::time::timeout(NETWORK_TIMEOUT, stream.write_all(&frame))
        .await
        .map_err(|_| "write timed out".to_owned())?
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(ack) = reader.next_frame().map_err(|e| e.to_string())? {
            return check_ack(&ack, &message.control_id).map_err(|e| e.to_string());
        }
        let n = tokio::time::timeout(NETWORK_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| "ACK timed out".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("gateway closed the connection".to_owned());
        }
        reader.push(&buf[..n]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    const TODAY: i64 = 20_259;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(20_259 * 86_400 + 12 * 3600)
    }

    fn fields<'a>(hl7: &'a str, name: &str) -> Vec<Vec<&'a str>> {
        hl7.split('\r')
            .filter(|s| s.starts_with(name))
            .map(|s| s.split('|').collect())
            .collect()
    }

    #[test]
    fn pcd01_report_is_well_formed() {
        let mut sim = MonitorSim::new(1, TODAY, 7);
        let messages = sim.tick(now());
        assert_eq!(messages.len(), 1);
        let m = &messages[0];
        assert_eq!(m.kind, MessageKind::Observations);
        assert!(m.hl7.ends_with('\r') && !m.hl7.contains('\n'));

        let msh = &fields(&m.hl7, "MSH")[0];
        // In MSH, split index n is MSH-(n+1): index 1 is MSH-2 (encoding characters).
        assert_eq!(msh[1], "^~\\&");
        assert_eq!(msh[2], format!("WGDEMO-MON^{}^EUI-64", sim.eui64()));
        assert_eq!(msh[6], "20250620120000+0000");
        assert_eq!(msh[8], "ORU^R01^ORU_R01");
        assert_eq!(msh[9], m.control_id);
        assert_eq!(msh[11], "2.6");
        assert_eq!((msh[14], msh[15]), ("AL", "NE"));
        assert!(msh[20].starts_with("IHE_PCD_001^"));

        let order: Vec<&str> = m
            .hl7
            .split('\r')
            .filter(|s| !s.is_empty())
            .map(|s| &s[..3])
            .collect();
        assert_eq!(&order[..6], ["MSH", "PID", "NTE", "NK1", "PV1", "OBR"]);
        assert!(order[6..].iter().all(|s| *s == "OBX"));

        let obx = fields(&m.hl7, "OBX");
        assert_eq!(obx.len(), 8);
        assert_eq!(obx[0][3], "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC");
        assert_eq!(obx[0][18], format!("{}^EUI-64", sim.eui64()));
        let spo2 = obx.iter().find(|f| f[3].starts_with("150456^")).unwrap();
        let value: f64 = spo2[5].parse().unwrap();
        assert!((80.0..=100.0).contains(&value), "{value}");
        assert_eq!(spo2[6], "262688^MDC_DIM_PERCENT^MDC");
        let temp = obx.iter().find(|f| f[3].starts_with("150344^")).unwrap();
        assert_eq!(temp[6], "Cel^Cel^UCUM");
        assert!(temp[5].parse::<f64>().is_ok());
    }

    #[test]
    fn every_planted_identifier_is_in_the_message() {
        let mut sim = MonitorSim::new(2, TODAY, 1);
        let hl7 = sim.tick(now()).remove(0).hl7;
        let identifiers = sim.patient().planted_identifiers();
        assert!(identifiers.len() > 20);
        for id in identifiers.iter().filter(|id| !id.variant) {
            assert!(
                hl7.contains(&id.value),
                "{:?} {} missing",
                id.kind,
                id.value
            );
        }
        let pid = &fields(&hl7, "PID")[0];
        assert_eq!(pid[3], format!("{}^^^WARDGATE-DEMO^MR", sim.patient().mrn));
        assert_eq!(pid[19], sim.patient().ssn);
        let nk1 = &fields(&hl7, "NK1")[0];
        assert!(nk1[2].contains(&sim.patient().next_of_kin.given));
        assert!(fields(&hl7, "NTE")[0][3].contains(&sim.patient().family));
    }

    #[test]
    fn first_monitor_raises_and_clears_an_spo2_alarm_within_twenty_periods() {
        let mut sim = MonitorSim::new(0, TODAY, 42);
        let mut phases = Vec::new();
        let mut control_ids = std::collections::HashSet::new();
        for second in 0..20 {
            for m in sim.tick(now() + Duration::from_secs(second)) {
                assert!(
                    control_ids.insert(m.control_id.clone()),
                    "duplicate control id"
                );
                if let MessageKind::Alarm(phase) = m.kind {
                    phases.push(phase);
                    let msh = &fields(&m.hl7, "MSH")[0];
                    assert_eq!(msh[8], "ORU^R40^ORU_R40");
                    let obr = &fields(&m.hl7, "OBR")[0];
                    assert_eq!(obr[4], "196616^MDC_EVT_ALARM^MDC");
                    let obx = fields(&m.hl7, "OBX");
                    let phase_row = obx.iter().find(|f| f[3].starts_with("68481^")).unwrap();
                    assert_eq!(phase_row[5], phase.hl7());
                    assert!(fields(&m.hl7, "PID")[0][5].starts_with(&sim.patient().family));
                }
            }
        }
        // Later random episodes may add more, but phases always alternate, start first.
        assert!(phases.len() >= 2, "{phases:?}");
        for (i, phase) in phases.iter().enumerate() {
            assert_eq!(
                *phase,
                if i % 2 == 0 {
                    AlarmPhase::Start
                } else {
                    AlarmPhase::End
                },
                "{phases:?}"
            );
        }
    }

    #[test]
    fn mllp_reader_handles_split_and_back_to_back_frames() {
        let mut reader = MllpReader::new(64);
        let mut stream = b"noise".to_vec();
        stream.extend(mllp_frame(b"MSH|a\r"));
        stream.extend(mllp_frame(b"MSH|b\r"));
        let (first, second) = stream.split_at(9);
        reader.push(first);
        assert_eq!(reader.next_frame(), Ok(None));
        reader.push(second);
        assert_eq!(reader.next_frame(), Ok(Some(b"MSH|a\r".to_vec())));
        assert_eq!(reader.next_frame(), Ok(Some(b"MSH|b\r".to_vec())));
        assert_eq!(reader.next_frame(), Ok(None));
        reader.push(&[START_BLOCK]);
        reader.push(&[b'x'; 80]);
        assert_eq!(reader.next_frame(), Err(MllpError::TooLong(64)));
    }

    #[test]
    fn ack_must_accept_and_echo_the_control_id() {
        let ack = b"MSH|^~\\&|WARDGATE||WGDEMO-MON||20250620120000||ACK^R01^ACK|9|P|2.6\rMSA|AA|MON01-000001\r";
        assert_eq!(check_ack(ack, "MON01-000001"), Ok(AckCode::Accepted));
        assert!(matches!(
            check_ack(ack, "MON01-000002"),
            Err(AckError::WrongControlId { .. })
        ));
        assert_eq!(
            check_ack(b"MSH|^~\\&\rMSA|CA|X\r", "X"),
            Ok(AckCode::Accepted)
        );
        assert_eq!(
            check_ack(b"MSH|^~\\&\rMSA|AR|X\r", "X"),
            Ok(AckCode::Rejected)
        );
        assert_eq!(check_ack(b"MSH|^~\\&\rMSA|CE|X\r", "X"), Ok(AckCode::Error));
        assert_eq!(check_ack(b"MSH|^~\\&\r", "X"), Err(AckError::NoMsa));
        assert!(matches!(
            check_ack(b"MSH|^~\\&\nMSA|ZZ|X", "X"),
            Err(AckError::UnknownCode(_))
        ));
    }

    #[test]
    fn timestamps_are_utc_hl7() {
        assert_eq!(hl7_timestamp(UNIX_EPOCH), "19700101000000+0000");
        assert_eq!(
            hl7_timestamp(now() + Duration::from_secs(3 * 3600 + 4 * 60 + 5)),
            "20250620150405+0000"
        );
        assert_eq!(days_since_epoch(now()), TODAY);
    }
}
