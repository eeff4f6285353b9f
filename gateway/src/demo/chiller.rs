//! A simulated cath-lab chiller: a real Modbus TCP server (tokio-modbus's server) on
//! 127.0.0.1 inside the demo process, which the gateway polls like any PLC on a hospital
//! network.
//!
//! Register map (zero-based protocol addresses, as the gateway's config names them):
//! - holding 0: supply (chilled water) temperature, `i16`, 0.1 °C per count;
//! - holding 1: return temperature, `i16`, 0.1 °C per count;
//! - coil 0: circulation pump running.
//!
//! Any other address answers "illegal data address", any other function "illegal
//! function", as a small controller does.
//!
//! [`ChillerSim`] is sans-IO: the temperatures are a pure function of the elapsed time
//! passed in and the seeded noise. The driver ([`ChillerServer`]) only refreshes the
//! registers from it and serves them.
//!
//! Invariants:
//! - The supply temperature drifts slowly around its setpoint (a sine of a few tenths of a
//!   degree per second at most), so with a 0.3 °C deadband the gateway reports a change
//!   every second or two rather than on every poll.
//! - [`ChillerServer::shutdown`] stops the listener and the refresher; connections already
//!   accepted end when their client (the gateway's poller) closes them, which the demo
//!   makes happen first by stopping the gateway before the chiller.

use std::f64::consts::TAU;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// Holding register of the supply temperature.
pub const SUPPLY_TEMPERATURE_REGISTER: u16 = 0;
/// Holding register of the return temperature.
pub const RETURN_TEMPERATURE_REGISTER: u16 = 1;
/// Coil of the circulation pump.
pub const PUMP_RUNNING_COIL: u16 = 0;

/// Supply setpoint, °C (chilled water for an X-ray tube and generator).
const SETPOINT_C: f64 = 12.0;
/// Amplitude of the slow swing around the setpoint, °C.
const SWING_C: f64 = 1.6;
/// Period of the swing.
const SWING_PERIOD: Duration = Duration::from_secs(30);
/// The heat the loop picks up: return minus supply, °C.
const DELTA_T_C: f64 = 4.5;
/// How often the server's registers are refreshed from the simulation.
const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// What the chiller's registers hold at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChillerReading {
    /// Supply temperature, °C.
    pub supply_c: f64,
    /// Return temperature, °C.
    pub return_c: f64,
    /// Whether the circulation pump runs.
    pub pump_running: bool,
}

impl ChillerReading {
    /// The holding registers from address 0: temperatures as `i16` tenths of a degree
    /// (two's complement on the wire, as Modbus devices encode signed values).
    #[must_use]
    pub fn holding_registers(&self) -> [u16; 2] {
        [tenths(self.supply_c), tenths(self.return_c)]
    }
}

/// `value` in tenths, saturated to `i16`, as its two's-complement register.
fn tenths(value: f64) -> u16 {
    let scaled = (value * 10.0)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX));
    // In range after the clamp; `as` only drops the (zero) fraction.
    #[allow(clippy::cast_possible_truncation)]
    let raw = scaled as i16;
    u16::from_be_bytes(raw.to_be_bytes())
}

/// The chiller's physics, such as it is: a slow swing around the setpoint plus a little
/// sensor noise. Time is passed in.
#[derive(Debug, Clone)]
pub struct ChillerSim {
    rng: fastrand::Rng,
    phase: f64,
}

impl ChillerSim {
    /// A chiller whose noise and starting phase come from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xC411_1E55);
        let phase = rng.f64() * TAU;
        ChillerSim { rng, phase }
    }

    /// The reading `elapsed` after the simulation started.
    pub fn reading(&mut self, elapsed: Duration) -> ChillerReading {
        let angle = self.phase + TAU * elapsed.as_secs_f64() / SWING_PERIOD.as_secs_f64();
        let noise = (self.rng.f64() - 0.5) * 0.1;
        let supply_c = SETPOINT_C + SWING_C * angle.sin() + noise;
        // The return side lags the supply by a few seconds of loop transit.
        let return_c = SETPOINT_C + DELTA_T_C + SWING_C * (angle - 0.6).sin() + noise;
        ChillerReading {
            supply_c,
            return_c,
            pump_running: true,
        }
    }
}

/// The Modbus service: answers reads from the current reading.
#[derive(Clone)]
struct Registers(Arc<Mutex<ChillerReading>>);

impl Registers {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        let reading = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match *request {
            Request::ReadHoldingRegisters(start, count) => {
                let map = reading.holding_registers();
                let range = usize::from(start)..usize::from(start) + usize::from(count);
                map.get(range)
                    .filter(|words| !words.is_empty())
                    .map(|words| Response::ReadHoldingRegisters(words.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            Request::ReadCoils(start, count) if start == PUMP_RUNNING_COIL && count == 1 => {
                Ok(Response::ReadCoils(vec![reading.pump_running]))
            }
            Request::ReadCoils(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

impl tokio_modbus::server::Service for Registers {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(self.answer(&req.request))
    }
}

/// A running simulated chiller.
#[derive(Debug)]
pub struct ChillerServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ChillerServer {
    /// Binds a free loopback port and starts serving and drifting.
    ///
    /// # Errors
    /// If the listener cannot be bound.
    pub async fn start(seed: u64) -> std::io::Result<ChillerServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let mut sim = ChillerSim::new(seed);
        let started = tokio::time::Instant::now();
        let registers = Registers(Arc::new(Mutex::new(sim.reading(Duration::ZERO))));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = registers.clone();
            let on_connected = move |stream, peer| {
                let served = served.clone();
                async move { accept_tcp_connection(stream, peer, move |_| Ok(Some(served.clone()))) }
            };
            let on_process_error = |e: std::io::Error| {
                // A poller that disconnects mid-request ends up here; not the demo's concern.
                tracing::debug!(error = %e, "simulated chiller connection ended");
            };
            let abort = Box::pin(async move {
                let _ = stop_rx.await;
            });
            let serve = Server::new(listener).serve_until(&on_connected, on_process_error, abort);
            let drift = async {
                let mut ticks = tokio::time::interval(REFRESH_EVERY);
                loop {
                    ticks.tick().await;
                    let reading = sim.reading(started.elapsed());
                    *registers.0.lock().unwrap_or_else(PoisonError::into_inner) = reading;
                }
            };
            tokio::select! {
                outcome = serve => {
                    if let Err(e) = outcome {
                        tracing::warn!(error = %e, "simulated chiller stopped serving");
                    }
                }
                () = drift => {}
            }
        });
        Ok(ChillerServer { addr, stop, task })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drifting, and waits for that.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "simulated chiller task failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;
    use tokio_modbus::client::{tcp, Reader};

    #[test]
    fn temperatures_are_signed_tenths() {
        let reading = ChillerReading {
            supply_c: 12.34,
            return_c: -1.5,
            pump_running: true,
        };
        assert_eq!(reading.holding_registers(), [123, 0xFFF1]);
        assert_eq!(tenths(1e9), 0x7FFF);
    }

    #[test]
    fn supply_drifts_around_the_setpoint_and_crosses_the_deadband() {
        let mut sim = ChillerSim::new(7);
        let supplies: Vec<f64> = (0..300)
            .map(|i| sim.reading(Duration::from_millis(100 * i)).supply_c)
            .collect();
        let (low, high) = supplies
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        assert!(
            low > SETPOINT_C - 2.0 && high < SETPOINT_C + 2.0,
            "{low}–{high}"
        );
        // Over 30 s it moves by far more than the demo's 0.3 °C deadband...
        assert!(high - low > 2.0, "{low}–{high}");
        // ...but slowly: never more than 0.3 °C from one 0.5 s poll to the next plus noise.
        for pair in supplies.windows(5) {
            assert!((pair[4] - pair[0]).abs() < 0.5, "{pair:?}");
        }
        let r = sim.reading(Duration::from_secs(40));
        assert!(r.pump_running && r.return_c > r.supply_c, "{r:?}");
    }

    #[test]
    fn unknown_addresses_and_functions_are_refused() {
        let registers = Registers(Arc::new(Mutex::new(
            ChillerSim::new(1).reading(Duration::ZERO),
        )));
        assert!(matches!(
            registers.answer(&Request::ReadHoldingRegisters(0, 2)),
            Ok(Response::ReadHoldingRegisters(words)) if words.len() == 2
        ));
        assert_eq!(
            registers.answer(&Request::ReadHoldingRegisters(1, 2)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            registers.answer(&Request::ReadHoldingRegisters(0, 0)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            registers.answer(&Request::ReadCoils(0, 1)),
            Ok(Response::ReadCoils(vec![true]))
        );
        assert_eq!(
            registers.answer(&Request::ReadCoils(1, 1)),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            registers.answer(&Request::ReadInputRegisters(0, 1)),
            Err(ExceptionCode::IllegalFunction)
        );
    }

    /// A real Modbus TCP client reads what the map says.
    #[tokio::test]
    async fn serves_the_register_map_over_modbus_tcp() {
        let server = ChillerServer::start(3).await.unwrap();
        let mut client = tcp::connect(server.addr()).await.unwrap();
        let words = client.read_holding_registers(0, 2).await.unwrap().unwrap();
        let supply = f64::from(i16::from_be_bytes(words[0].to_be_bytes())) / 10.0;
        let back = f64::from(i16::from_be_bytes(words[1].to_be_bytes())) / 10.0;
        assert!(
            (SETPOINT_C - 2.0..SETPOINT_C + 2.0).contains(&supply),
            "{supply}"
        );
        assert!(back > supply, "{back} {supply}");
        assert_eq!(client.read_coils(0, 1).await.unwrap().unwrap(), [true]);
        assert_eq!(
            client.read_holding_registers(7, 1).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        drop(client);
        server.shutdown().await;
    }
}
