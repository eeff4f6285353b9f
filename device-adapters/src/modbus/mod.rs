//! Modbus TCP polling: register maps, report by exception, link supervision.
//!
//! One task per device ([`run_device`]) polls a configured register map over one TCP
//! connection and hands the gateway readings and link events through a [`ModbusSink`].
//!
//! | step | file | what it does |
//! |---|---|---|
//! | configuration | [`config`] | the typed, validated per-device config (user documentation) |
//! | read planning | [`plan`] | points → as few read requests as possible; responses → values |
//! | decoding | [`decode`] | registers/bits → `f64` (type, word order, scale, offset) |
//! | report policy | [`report`] | deadband per point, heartbeat, first/after-reconnect snapshots |
//! | link supervision | [`link`] | failure counting, online/offline and exception events, backoff |
//! | driver | [`driver`] | tokio: connect, poll on an interval, call the sink |
//!
//! Everything but [`driver`] is pure (no tokio, no clock) and unit-tested on its own.
//!
//! Invariants:
//! - **Link events are edges, not levels**: [`LinkEvent::Offline`] is emitted once when the
//!   configured number of consecutive polls has failed, [`LinkEvent::Online`] once on the
//!   first successful poll after that (or after start). An exception response is reported
//!   once per change of condition of the request it answered, never once per poll.
//! - **Readings are "at least the last accepted state"**: the report policy compares a new
//!   value with the last value the sink *accepted*; a refused report is therefore
//!   re-sent by the next poll that still differs beyond the deadband (or the next heartbeat).
//!   Polled values are the device's current state, not a history: intermediate values
//!   between polls are never seen, and nothing is buffered here.
//! - NaN and infinite readings (an `f32` register holding a NaN pattern, or a scale that
//!   overflows) are not readings: they are dropped, never sent, and do not count as a change.
//! - Modbus values are device telemetry, not PHI, but they are still never logged above
//!   debug level.

pub mod config;
pub mod decode;
pub mod driver;
pub mod link;
pub mod plan;
pub mod report;

use std::future::Future;

pub use config::{DataType, ModbusDeviceConfig, PointConfig, Table, WordOrder};
pub use driver::run_device;
pub use link::{exception_description, Backoff, LinkEvent, LinkMonitor, LinkState};
pub use plan::{PlanLimits, ReadData, ReadPlan, ReadRequest};
pub use report::{Report, ReportPolicy};

/// Where a Modbus device's readings and link events go: the gateway maps them onto
/// `MeasurementReport` and `DeviceStateChange` records and spools them.
pub trait ModbusSink: Send + Sync + 'static {
    /// Readings that passed the report policy. Returns once durably accepted, or `Err` if
    /// refused (the driver logs and carries on; the next report-worthy poll sends again).
    fn readings(
        &self,
        device_id: &str,
        readings: Readings,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// A change of link condition (once per change).
    fn link(&self, device_id: &str, event: LinkEvent) -> impl Future<Output = ()> + Send;
}

/// One report: the points that passed the report policy in one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    /// True for a full snapshot (first poll, first poll after reconnecting, or the
    /// heartbeat interval passed) rather than a report of values that moved.
    pub heartbeat: bool,
    /// The readings, in configuration order.
    pub points: Vec<PointReading>,
}

/// One point's value after decoding and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct PointReading {
    /// The point's configured name.
    pub name: String,
    /// `raw * scale + offset`; always finite.
    pub value: f64,
    /// The point's configured units.
    pub units: Option<String>,
    /// When the poll that read it completed (Unix milliseconds, wall clock).
    pub at_ms: u64,
}

/// Why the sink refused readings. The text is logged: it must not contain values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink refused readings: {0}")]
pub struct SinkError(pub String);

/// Errors of the Modbus adapter: bad configuration, or why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum ModbusError {
    /// The device configuration is invalid; the text names the key.
    #[error("invalid Modbus device config: {0}")]
    Config(String),
    /// The TCP connection could not be opened.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// Connecting or a request took longer than `timeout_ms`.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The connection failed (reset, closed, or bytes that are not Modbus TCP).
    #[error("transport error: {0}")]
    Transport(std::io::Error),
    /// The device answered with a well-formed frame that does not fit the request.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
    /// A Modbus TCP gateway answered that the device behind it is unreachable
    /// (exception 0x0A or 0x0B): the device is offline although the TCP link is fine.
    #[error("gateway reports target unreachable: exception 0x{0:02X} ({desc})", desc = exception_description(*.0))]
    TargetUnreachable(u8),
}
