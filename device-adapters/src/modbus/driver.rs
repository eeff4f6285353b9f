//! The tokio driver: one task per device, one TCP connection per device.
//!
//! Each tick of a `poll_interval_ms` interval (first tick at a random point within the
//! first interval, so that hundreds of devices configured together do not poll in
//! lockstep; later ticks delayed, never bunched, when a poll or the sink runs late):
//!
//! 1. Without a connection, connect (bounded by `timeout_ms`) if the reconnect backoff
//!    has passed; otherwise the tick counts as a failed poll without touching the network.
//! 2. Send the plan's reads one after the other, each bounded by `timeout_ms`. A timeout,
//!    transport or protocol error fails the poll, drops the connection (a late answer
//!    must not be taken for the next request's) and schedules a reconnect with backoff.
//!    An exception 0x0A/0x0B (a Modbus TCP gateway cannot reach the device behind it)
//!    fails the poll but keeps the connection. Other exceptions are per-read conditions.
//! 3. Feed the outcome to the [`LinkMonitor`] and send its events to the sink; after an
//!    `Online` event, ask the [`ReportPolicy`] for a full snapshot.
//! 4. Decode, apply the report policy, send readings; mark them delivered only if the
//!    sink accepted them.
//!
//! A poll is all or nothing at the transport level: when one read of a poll fails,
//! values from the poll's earlier reads are not reported.
//!
//! Shutdown (the watch turns `true` or its sender is dropped) interrupts waiting and
//! Modbus I/O at once; a sink call in progress is completed first. The connection is
//! closed before [`run_device`] returns. Logs carry the device id, counts and error
//! texts; values only at trace level.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::{ProtocolError, Request, Response, Slave};
use tracing::{debug, info, trace, warn};

use crate::modbus::config::{ModbusDeviceConfig, PointConfig, Table};
use crate::modbus::link::{Backoff, LinkEvent, LinkMonitor};
use crate::modbus::plan::{ReadData, ReadPlan, ReadRequest};
use crate::modbus::report::ReportPolicy;
use crate::modbus::{ModbusError, ModbusSink, PointReading, Readings};

/// How long closing the connection may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(200);

/// Polls one device until `shutdown` turns `true` (or its sender is dropped).
///
/// Returns `Err(ModbusError::Config)` at once if `config` does not validate; otherwise
/// runs until shutdown and returns `Ok(())`. Poll failures are never returned: they are
/// reported through [`ModbusSink::link`] as described in the module documentation.
pub async fn run_device<S: ModbusSink>(
    device_id: String,
    config: ModbusDeviceConfig,
    sink: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ModbusError> {
    config.validate().map_err(ModbusError::Config)?;
    let mut device = Device::new(device_id, config);
    let period = Duration::from_millis(device.config.poll_interval_ms);
    let first_poll =
        Instant::now() + Duration::from_millis(device.random() % device.config.poll_interval_ms);
    let mut interval = time::interval_at(first_poll, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    debug!(
        device = %device.id,
        requests = device.plan.requests().len(),
        points = device.config.points.len(),
        "modbus device polling"
    );

    loop {
        tokio::select! {
            biased;
            () = shutdown_signalled(&mut shutdown) => break,
            _ = interval.tick() => {}
        }
        let outcome = tokio::select! {
            biased;
            () = shutdown_signalled(&mut shutdown) => break,
            outcome = device.poll() => outcome,
        };
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        device.handle(outcome, now_ms, sink.as_ref()).await;
    }

    if let Some(mut connection) = device.connection.take() {
        // Best effort: the peer may already be gone.
        let _ = time::timeout(CLOSE_TIMEOUT, connection.disconnect()).await;
    }
    debug!(device = %device.id, "modbus device stopped");
    Ok(())
}

/// Resolves once shutdown is requested; never if it is not.
async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// One device's state between polls.
struct Device {
    id: String,
    config: ModbusDeviceConfig,
    plan: ReadPlan,
    policy: ReportPolicy,
    link: LinkMonitor,
    backoff: Backoff,
    connection: Option<Context>,
    /// While disconnected: no connection attempt before this instant.
    reconnect_at: Option<Instant>,
    /// Why the connection was lost or could not be made, for ticks that do not try.
    last_error: String,
    timeout: Duration,
    rng: u64,
}

/// What one tick achieved.
enum PollOutcome {
    /// The device answered every read (with data or an exception).
    Answered(Vec<ReadData>),
    /// The poll failed.
    Failed(ModbusError),
    /// Not connected and the backoff has not passed: nothing was tried.
    Waiting,
}

impl Device {
    fn new(id: String, config: ModbusDeviceConfig) -> Self {
        let plan = ReadPlan::from_config(&config);
        let policy = ReportPolicy::from_config(&config);
        let link = LinkMonitor::from_plan(config.offline_after_failures, &plan, &config.points);
        // Per-process random keys: different jitter per device and per run.
        let seed = RandomState::new().hash_one(&id);
        let backoff = Backoff::new(config.reconnect_initial_ms, config.reconnect_max_ms, seed);
        let timeout = Duration::from_millis(config.timeout_ms);
        Self {
            id,
            config,
            plan,
            policy,
            link,
            backoff,
            connection: None,
            reconnect_at: None,
            last_error: String::from("not connected yet"),
            timeout,
            rng: seed ^ 0x5DEE_CE66_D1CE_4E5B,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: only for spreading first polls.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    async fn poll(&mut self) -> PollOutcome {
        if self.connection.is_none() {
            if self.reconnect_at.is_some_and(|at| Instant::now() < at) {
                return PollOutcome::Waiting;
            }
            match connect(self.config.address, self.config.unit_id, self.timeout).await {
                Ok(connection) => {
                    debug!(device = %self.id, "modbus connected");
                    self.connection = Some(connection);
                    self.reconnect_at = None;
                }
                Err(e) => {
                    self.schedule_reconnect(&e);
                    return PollOutcome::Failed(e);
                }
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return PollOutcome::Waiting;
        };
        let mut responses = Vec::with_capacity(self.plan.requests().len());
        for request in self.plan.requests() {
            let result = match time::timeout(self.timeout, read(connection, *request)).await {
                Ok(result) => result,
                Err(_) => Err(ModbusError::Timeout("read")),
            };
            match result {
                Ok(ReadData::Exception(code @ (0x0A | 0x0B))) => {
                    return PollOutcome::Failed(ModbusError::TargetUnreachable(code));
                }
                Ok(data) => responses.push(data),
                Err(e) => {
                    self.connection = None;
                    self.schedule_reconnect(&e);
                    return PollOutcome::Failed(e);
                }
            }
        }
        PollOutcome::Answered(responses)
    }

    fn schedule_reconnect(&mut self, error: &ModbusError) {
        let delay = Duration::from_millis(self.backoff.next_delay_ms());
        self.reconnect_at = Some(Instant::now() + delay);
        self.last_error = error.to_string();
        debug!(device = %self.id, error = %error, delay_ms = delay.as_millis(), "modbus connection lost; reconnecting later");
    }

    async fn handle<S: ModbusSink>(&mut self, outcome: PollOutcome, now_ms: u64, sink: &S) {
        let responses = match outcome {
            PollOutcome::Answered(responses) => responses,
            PollOutcome::Failed(error) => {
                debug!(device = %self.id, error = %error, "modbus poll failed");
                let text = error.to_string();
                if let Some(event) = self.link.on_failure(&text) {
                    send_link(&self.id, event, sink).await;
                }
                return;
            }
            PollOutcome::Waiting => {
                if let Some(event) = self.link.on_failure(&self.last_error) {
                    send_link(&self.id, event, sink).await;
                }
                return;
            }
        };
        self.backoff.reset();
        for event in self.link.on_success(&responses) {
            if event == LinkEvent::Online {
                self.policy.request_snapshot();
            }
            send_link(&self.id, event, sink).await;
        }

        let values = self.plan.decode(&responses);
        trace!(device = %self.id, ?values, "modbus values");
        let Some(report) = self.policy.on_poll(now_ms, &values) else {
            return;
        };
        let at_ms = wall_clock_ms();
        let readings = Readings {
            heartbeat: report.heartbeat,
            points: report
                .points
                .iter()
                .filter_map(|&(i, value)| {
                    self.config
                        .points
                        .get(i)
                        .map(|p: &PointConfig| PointReading {
                            name: p.name.clone(),
                            value,
                            units: p.units.clone(),
                            at_ms,
                        })
                })
                .collect(),
        };
        let count = readings.points.len();
        match sink.readings(&self.id, readings).await {
            Ok(()) => {
                self.policy.delivered(now_ms, &report);
                debug!(device = %self.id, count, heartbeat = report.heartbeat, "modbus readings delivered");
            }
            Err(e) => {
                warn!(device = %self.id, count, error = %e, "modbus readings refused; sending again on the next poll");
            }
        }
    }
}

/// Logs a link event (gateway words, no values) and hands it to the sink. A free function:
/// holding `&Device` across the await would make the task `!Send` (the Modbus client is
/// not `Sync`).
async fn send_link<S: ModbusSink>(id: &str, event: LinkEvent, sink: &S) {
    match &event {
        LinkEvent::Online => info!(device = %id, "modbus device online"),
        LinkEvent::Offline { .. } | LinkEvent::Exception { .. } => {
            warn!(device = %id, "modbus device: {event}");
        }
        LinkEvent::ExceptionCleared { .. } => info!(device = %id, "modbus device: {event}"),
    }
    sink.link(id, event).await;
}

async fn connect(
    address: SocketAddr,
    unit_id: u8,
    timeout: Duration,
) -> Result<Context, ModbusError> {
    let stream = time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ModbusError::Timeout("connect"))?
        .map_err(ModbusError::Connect)?;
    // One small request, one small answer: Nagle would only add latency.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "TCP_NODELAY not set");
    }
    Ok(tokio_modbus::client::tcp::attach_slave(
        stream,
        Slave(unit_id),
    ))
}

/// One read. The response is checked here (not by tokio-modbus's typed readers, which
/// only `debug_assert!` the length a device sent).
async fn read(connection: &mut Context, request: ReadRequest) -> Result<ReadData, ModbusError> {
    let ReadRequest {
        table,
        start,
        count,
    } = request;
    let call = match table {
        Table::Holding => Request::ReadHoldingRegisters(start, count),
        Table::Input => Request::ReadInputRegisters(start, count),
        Table::Coil => Request::ReadCoils(start, count),
        Table::Discrete => Request::ReadDiscreteInputs(start, count),
    };
    let response = match connection.call(call).await {
        Ok(Ok(response)) => response,
        Ok(Err(exception)) => return Ok(ReadData::Exception(u8::from(exception))),
        Err(tokio_modbus::Error::Transport(e)) => return Err(ModbusError::Transport(e)),
        // Our own words: tokio-modbus's texts for these embed the response, i.e. values.
        Err(tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch { .. })) => {
            return Err(ModbusError::UnexpectedResponse(
                "response header (transaction or unit id) does not match the request".into(),
            ));
        }
        Err(tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch { .. })) => {
            return Err(ModbusError::UnexpectedResponse(format!(
                "response function code does not match a {} read",
                table.name()
            )));
        }
    };
    let wanted = usize::from(count);
    match (table, response) {
        (Table::Holding, Response::ReadHoldingRegisters(words))
        | (Table::Input, Response::ReadInputRegisters(words)) => {
            if words.len() == wanted {
                Ok(ReadData::Registers(words))
            } else {
                Err(ModbusError::UnexpectedResponse(format!(
                    "{} registers for a read of {count}",
                    words.len()
                )))
            }
        }
        (Table::Coil, Response::ReadCoils(mut bits))
        | (Table::Discrete, Response::ReadDiscreteInputs(mut bits)) => {
            // Bits arrive padded to whole bytes.
            if bits.len() >= wanted {
                bits.truncate(wanted);
                Ok(ReadData::Bits(bits))
            } else {
                Err(ModbusError::UnexpectedResponse(format!(
                    "{} bits for a read of {count}",
                    bits.len()
                )))
            }
        }
        (_, other) => Err(ModbusError::UnexpectedResponse(format!(
            "function {} answered a {} read",
            other.function_code(),
            table.name()
        ))),
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
