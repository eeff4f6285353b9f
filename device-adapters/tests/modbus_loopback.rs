//! The Modbus driver against a real Modbus TCP server (tokio-modbus's) on 127.0.0.1.
//!
//! The server runs on its own thread and runtime, so that stopping it closes every
//! connection it holds (like a device that loses power), and it can be restarted on the
//! same port.

#![cfg(feature = "modbus")]
#![allow(clippy::unwrap_used)] // Tests may unwrap (house rule).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use wardgate_device_adapters::modbus::{
    run_device, DataType, LinkEvent, ModbusDeviceConfig, ModbusError, ModbusSink, PointConfig,
    ReadRequest, Readings, SinkError, Table, WordOrder,
};

// ---------------------------------------------------------------- the device

/// Register contents; an address not in a map answers "illegal data address".
#[derive(Default)]
struct Memory {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    coils: HashMap<u16, bool>,
    discrete: HashMap<u16, bool>,
    /// Every distinct read seen: (function code, start, count).
    reads: BTreeSet<(u8, u16, u16)>,
    requests: u64,
}

#[derive(Clone, Default)]
struct Device(Arc<Mutex<Memory>>);

impl Device {
    fn set_holding(&self, address: u16, words: &[u16]) {
        let mut memory = self.0.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            memory.holding.insert(address + i as u16, *w);
        }
    }
    fn set_input(&self, address: u16, words: &[u16]) {
        let mut memory = self.0.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            memory.input.insert(address + i as u16, *w);
        }
    }
    fn requests(&self) -> u64 {
        self.0.lock().unwrap().requests
    }
    fn reads(&self) -> BTreeSet<(u8, u16, u16)> {
        self.0.lock().unwrap().reads.clone()
    }
}

fn words<T: Copy>(map: &HashMap<u16, T>, start: u16, count: u16) -> Result<Vec<T>, ExceptionCode> {
    (start..start.saturating_add(count))
        .map(|a| {
            map.get(&a)
                .copied()
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

impl tokio_modbus::server::Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut memory = self.0.lock().unwrap();
        memory.requests += 1;
        let result = match req.request {
            Request::ReadHoldingRegisters(start, count) => {
                memory.reads.insert((3, start, count));
                words(&memory.holding, start, count).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(start, count) => {
                memory.reads.insert((4, start, count));
                words(&memory.input, start, count).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(start, count) => {
                memory.reads.insert((1, start, count));
                words(&memory.coils, start, count).map(Response::ReadCoils)
            }
            Request::ReadDiscreteInputs(start, count) => {
                memory.reads.insert((2, start, count));
                words(&memory.discrete, start, count).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(result)
    }
}

/// A running server; dropping or [`Self::stop`]ping it closes the listener and every
/// connection.
struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    fn start(device: Device, port: u16) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 1], port)))
                    .unwrap();
                let listener = socket.listen(128).unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let server = Server::new(listener);
                let on_connected = |stream, socket_addr| {
                    let device = device.clone();
                    async move {
                        accept_tcp_connection(stream, socket_addr, move |_| {
                            Ok(Some(device.clone()))
                        })
                    }
                };
                let abort = Box::pin(async move {
                    let _ = stop_rx.await;
                });
                let _ = server.serve_until(&on_connected, |_err| {}, abort).await;
            });
            // Dropping the runtime drops the connection tasks and closes their sockets.
            drop(runtime);
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- the gateway side

#[derive(Debug)]
enum Event {
    Readings { readings: Readings, accepted: bool },
    Link(LinkEvent),
}

struct Sink {
    events: mpsc::UnboundedSender<Event>,
    refuse: AtomicBool,
    refused: AtomicU64,
}

impl ModbusSink for Sink {
    fn readings(
        &self,
        device_id: &str,
        readings: Readings,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        assert_eq!(device_id, "dev-1");
        let refuse = self.refuse.load(Ordering::SeqCst);
        if refuse {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.events.send(Event::Readings {
            readings,
            accepted: !refuse,
        });
        async move {
            if refuse {
                Err(SinkError("spool full".into()))
            } else {
                Ok(())
            }
        }
    }

    fn link(&self, device_id: &str, event: LinkEvent) -> impl Future<Output = ()> + Send {
        assert_eq!(device_id, "dev-1");
        let _ = self.events.send(Event::Link(event));
        async {}
    }
}

struct Harness {
    events: mpsc::UnboundedReceiver<Event>,
    sink: Arc<Sink>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ModbusError>>,
}

impl Harness {
    fn start(config: ModbusDeviceConfig) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let sink = Arc::new(Sink {
            events: tx,
            refuse: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run_device(
            "dev-1".into(),
            config,
            sink.clone(),
            shutdown_rx,
        ));
        Self {
            events,
            sink,
            shutdown,
            task,
        }
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event within 10 s")
            .expect("driver alive")
    }

    async fn next_link(&mut self) -> LinkEvent {
        match self.next().await {
            Event::Link(event) => event,
            other => panic!("expected a link event, got {other:?}"),
        }
    }

    async fn next_readings(&mut self) -> Readings {
        match self.next().await {
            Event::Readings { readings, .. } => readings,
            other => panic!("expected readings, got {other:?}"),
        }
    }

    /// Everything that arrived so far, without waiting.
    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("driver stops promptly")
            .unwrap();
        assert!(result.is_ok());
    }
}

/// Waits until the server has answered `polls` more polls of `requests_per_poll` reads.
async fn wait_polls(device: &Device, requests_per_poll: u64, polls: u64) {
    let target = device.requests() + requests_per_poll * polls;
    tokio::time::timeout(Duration::from_secs(10), async {
        while device.requests() < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("polls within 10 s");
}

fn point(name: &str, table: Table, address: u16) -> PointConfig {
    PointConfig {
        name: name.into(),
        table,
        address,
        data_type: None,
        word_order: None,
        scale: 1.0,
        offset: 0.0,
        units: None,
        deadband: None,
    }
}

fn typed(
    name: &str,
    table: Table,
    address: u16,
    data_type: DataType,
    order: Option<WordOrder>,
) -> PointConfig {
    PointConfig {
        data_type: Some(data_type),
        word_order: order,
        ..point(name, table, address)
    }
}

fn config(addr: SocketAddr, points: Vec<PointConfig>) -> ModbusDeviceConfig {
    ModbusDeviceConfig {
        address: addr,
        unit_id: 1,
        poll_interval_ms: 50,
        timeout_ms: 500,
        offline_after_failures: 3,
        heartbeat_secs: 3_600,
        reconnect_initial_ms: 50,
        reconnect_max_ms: 200,
        max_registers_per_read: 125,
        max_bits_per_read: 2000,
        max_read_gap: 0,
        points,
    }
}

fn value(readings: &Readings, name: &str) -> Option<f64> {
    readings
        .points
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value)
}

fn split(bits: u32) -> [u16; 2] {
    [(bits >> 16) as u16, bits as u16]
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn decodes_every_type_word_order_and_scaling_from_few_reads() {
    let device = Device::default();
    device.set_holding(0, &[1234, (-5_i16) as u16]);
    device.set_holding(2, &split(0x0001_0002));
    let [high, low] = split((-100_000_i32) as u32);
    device.set_holding(4, &[low, high]);
    device.set_holding(6, &split(21.5_f32.to_bits()));
    let [high, low] = split((-3.25_f32).to_bits());
    device.set_input(0, &[low, high]);
    device.set_input(10, &split(f32::NAN.to_bits()));
    {
        let mut memory = device.0.lock().unwrap();
        memory.coils.insert(3, true);
        memory.discrete.insert(10, false);
    }
    let server = RunningServer::start(device.clone(), 0);

    let mut scaled = point("scaled_u16", Table::Holding, 0);
    scaled.scale = 0.1;
    scaled.units = Some("Cel".into());
    let mut negative = typed("negative_i16", Table::Holding, 1, DataType::I16, None);
    negative.offset = 100.0;
    let points = vec![
        scaled,
        negative,
        typed(
            "u32_big",
            Table::Holding,
            2,
            DataType::U32,
            Some(WordOrder::Big),
        ),
        typed(
            "i32_little",
            Table::Holding,
            4,
            DataType::I32,
            Some(WordOrder::Little),
        ),
        typed("f32_big", Table::Holding, 6, DataType::F32, None),
        typed(
            "f32_little",
            Table::Input,
            0,
            DataType::F32,
            Some(WordOrder::Little),
        ),
        typed("f32_nan", Table::Input, 10, DataType::F32, None),
        point("coil", Table::Coil, 3),
        point("discrete", Table::Discrete, 10),
    ];
    let mut harness = Harness::start(config(server.addr, points));

    assert_eq!(harness.next_link().await, LinkEvent::Online);
    let first = harness.next_readings().await;
    assert!(first.heartbeat);
    let names: Vec<&str> = first.points.iter().map(|p| p.name.as_str()).collect();
    // The NaN is not a reading; the rest come in configuration order.
    assert_eq!(
        names,
        [
            "scaled_u16",
            "negative_i16",
            "u32_big",
            "i32_little",
            "f32_big",
            "f32_little",
            "coil",
            "discrete"
        ]
    );
    assert_eq!(value(&first, "scaled_u16"), Some(1234.0 * 0.1));
    assert_eq!(first.points[0].units.as_deref(), Some("Cel"));
    assert_eq!(value(&first, "negative_i16"), Some(95.0));
    assert_eq!(value(&first, "u32_big"), Some(65538.0));
    assert_eq!(value(&first, "i32_little"), Some(-100_000.0));
    assert_eq!(value(&first, "f32_big"), Some(21.5));
    assert_eq!(value(&first, "f32_little"), Some(-3.25));
    assert_eq!(value(&first, "coil"), Some(1.0));
    assert_eq!(value(&first, "discrete"), Some(0.0));
    assert!(first.points.iter().all(|p| p.at_ms > 1_600_000_000_000));

    // On the wire: one read for holding 0..8, two for the inputs (not adjacent), one per
    // bit table.
    wait_polls(&device, 5, 2).await;
    assert_eq!(
        device.reads(),
        BTreeSet::from([(1, 3, 1), (2, 10, 1), (3, 0, 8), (4, 0, 2), (4, 10, 2)])
    );

    // The NaN turning into a number is a (first) reading; a NaN again is no change.
    device.set_input(10, &split(7.0_f32.to_bits()));
    let change = harness.next_readings().await;
    assert!(!change.heartbeat);
    assert_eq!(change.points.len(), 1);
    assert_eq!(value(&change, "f32_nan"), Some(7.0));
    device.set_input(10, &split(f32::NAN.to_bits()));
    wait_polls(&device, 5, 4).await;
    assert!(harness.drain().is_empty());

    harness.stop().await;
}

#[tokio::test]
async fn deadband_suppresses_small_changes_and_passes_large_ones() {
    let device = Device::default();
    device.set_holding(0, &[200, 7]);
    let server = RunningServer::start(device.clone(), 0);
    let mut temperature = point("temperature", Table::Holding, 0);
    temperature.scale = 0.1;
    temperature.deadband = Some(1.0);
    let mut harness = Harness::start(config(
        server.addr,
        vec![temperature, point("other", Table::Holding, 1)],
    ));

    assert_eq!(harness.next_link().await, LinkEvent::Online);
    let first = harness.next_readings().await;
    assert_eq!(value(&first, "temperature"), Some(200.0 * 0.1));

    // +0.5 and then -0.9 from the last sent value: within the deadband.
    device.set_holding(0, &[205]);
    wait_polls(&device, 1, 5).await;
    device.set_holding(0, &[191]);
    wait_polls(&device, 1, 5).await;
    assert!(
        harness.drain().is_empty(),
        "a change within the deadband was sent"
    );

    // +1.5: sent, alone.
    device.set_holding(0, &[215]);
    let change = harness.next_readings().await;
    assert!(!change.heartbeat);
    assert_eq!(change.points.len(), 1);
    assert_eq!(value(&change, "temperature"), Some(215.0 * 0.1));

    // A point without a deadband reports its smallest change.
    device.set_holding(1, &[8]);
    let change = harness.next_readings().await;
    assert_eq!(change.points.len(), 1);
    assert_eq!(value(&change, "other"), Some(8.0));

    harness.stop().await;
}

#[tokio::test]
async fn offline_once_after_n_failures_and_online_again_on_the_same_port() {
    let device = Device::default();
    device.set_holding(0, &[42]);
    let mut server = RunningServer::start(device.clone(), 0);
    let addr = server.addr;
    let mut harness = Harness::start(config(addr, vec![point("level", Table::Holding, 0)]));
    assert_eq!(harness.next_link().await, LinkEvent::Online);
    assert!(harness.next_readings().await.heartbeat);

    server.stop();
    match harness.next_link().await {
        LinkEvent::Offline {
            consecutive_failures,
            last_error,
        } => {
            assert_eq!(consecutive_failures, 3);
            assert!(!last_error.is_empty());
        }
        other => panic!("expected Offline, got {other:?}"),
    }
    // Down for 40 more poll intervals: no more events (no flood, no readings).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let later = harness.drain();
    assert!(later.is_empty(), "events while offline: {later:?}");

    // Back on the same port, with a new value: Online, then a full snapshot.
    device.set_holding(0, &[43]);
    let _server = RunningServer::start(device.clone(), addr.port());
    assert_eq!(harness.next_link().await, LinkEvent::Online);
    let snapshot = harness.next_readings().await;
    assert!(snapshot.heartbeat);
    assert_eq!(value(&snapshot, "level"), Some(43.0));
    wait_polls(&device, 1, 3).await;
    assert!(harness.drain().is_empty());

    harness.stop().await;
}

#[tokio::test]
async fn exception_response_is_reported_once_per_change() {
    let device = Device::default();
    device.set_holding(0, &[1]);
    let server = RunningServer::start(device.clone(), 0);
    let mut harness = Harness::start(config(
        server.addr,
        vec![
            point("mapped", Table::Holding, 0),
            typed("unmapped", Table::Holding, 100, DataType::U32, None),
        ],
    ));
    let unmapped_read = ReadRequest {
        table: Table::Holding,
        start: 100,
        count: 2,
    };

    assert_eq!(harness.next_link().await, LinkEvent::Online);
    assert_eq!(
        harness.next_link().await,
        LinkEvent::Exception {
            request: unmapped_read,
            code: 0x02,
            points: vec!["unmapped".into()],
        }
    );
    let first = harness.next_readings().await;
    assert_eq!(first.points.len(), 1);
    assert_eq!(value(&first, "mapped"), Some(1.0));

    // Many polls later: still one exception event, and the device stays online.
    wait_polls(&device, 2, 10).await;
    assert!(harness.drain().is_empty());

    // The register appears: cleared once, and its value is sent.
    device.set_holding(100, &[0, 9]);
    assert_eq!(
        harness.next_link().await,
        LinkEvent::ExceptionCleared {
            request: unmapped_read,
            points: vec!["unmapped".into()],
        }
    );
    let change = harness.next_readings().await;
    assert_eq!(value(&change, "unmapped"), Some(9.0));
    wait_polls(&device, 2, 5).await;
    assert!(harness.drain().is_empty());

    harness.stop().await;
}

#[tokio::test]
async fn refused_readings_are_sent_again_by_the_next_poll() {
    let device = Device::default();
    device.set_holding(0, &[5]);
    let server = RunningServer::start(device.clone(), 0);
    let mut harness = Harness::start(config(server.addr, vec![point("p", Table::Holding, 0)]));
    harness.sink.refuse.store(true, Ordering::SeqCst);

    assert_eq!(harness.next_link().await, LinkEvent::Online);
    for _ in 0..3 {
        match harness.next().await {
            Event::Readings { readings, accepted } => {
                assert!(!accepted);
                assert!(readings.heartbeat, "the refused snapshot is still due");
                assert_eq!(value(&readings, "p"), Some(5.0));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    harness.sink.refuse.store(false, Ordering::SeqCst);
    loop {
        if let Event::Readings {
            accepted: true,
            readings,
        } = harness.next().await
        {
            assert!(readings.heartbeat);
            break;
        }
    }
    // Accepted: nothing more until something changes.
    wait_polls(&device, 1, 5).await;
    assert!(harness.drain().is_empty());
    assert!(harness.sink.refused.load(Ordering::SeqCst) >= 3);
    harness.stop().await;
}

#[tokio::test]
async fn unreachable_device_goes_offline_once_and_invalid_config_is_refused() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut harness = Harness::start(config(port, vec![point("p", Table::Holding, 0)]));
    match harness.next_link().await {
        LinkEvent::Offline {
            consecutive_failures,
            last_error,
        } => {
            assert_eq!(consecutive_failures, 3);
            assert!(last_error.contains("connect"), "{last_error}");
        }
        other => panic!("expected Offline, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(harness.drain().is_empty());
    harness.stop().await;

    let mut bad = config(port, vec![point("p", Table::Holding, 0)]);
    bad.poll_interval_ms = 0;
    let (tx, _rx) = mpsc::unbounded_channel();
    let sink = Arc::new(Sink {
        events: tx,
        refuse: AtomicBool::new(false),
        refused: AtomicU64::new(0),
    });
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let err = run_device("dev-1".into(), bad, sink, shutdown_rx)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ModbusError::Config(text) if text.starts_with("poll_interval_ms:")),
        "{err}"
    );
}
