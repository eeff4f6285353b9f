//! A real Modbus TCP server (tokio-modbus's server) on 127.0.0.1 serving holding
//! registers the test sets, standing in for a PLC or a chiller controller. It runs on
//! its own thread and runtime; dropping it closes the listener and every connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::{io_context, HarnessError};

/// Holding registers; an address not set answers "illegal data address".
#[derive(Clone, Default)]
pub struct Registers(Arc<Mutex<HashMap<u16, u16>>>);

impl Registers {
    /// Sets register `address`.
    pub fn set(&self, address: u16, value: u16) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address, value);
    }
}

impl tokio_modbus::server::Service for Registers {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let registers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match req.request {
            Request::ReadHoldingRegisters(start, count) => (start..start.saturating_add(count))
                .map(|a| {
                    registers
                        .get(&a)
                        .copied()
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect::<Result<Vec<u16>, _>>()
                .map(Response::ReadHoldingRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(result)
    }
}

/// A running server.
pub struct ModbusServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ModbusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ModbusServer {
    /// Serves `registers` on a free loopback port.
    ///
    /// # Errors
    /// If the listener cannot be set up.
    pub fn start(registers: Registers) -> Result<ModbusServer, HarnessError> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr());
                let server = Server::new(listener);
                let on_connected = |stream, socket_addr| {
                    let registers = registers.clone();
                    async move {
                        accept_tcp_connection(stream, socket_addr, move |_| {
                            Ok(Some(registers.clone()))
                        })
                    }
                };
                let abort = Box::pin(async move {
                    let _ = stop_rx.await;
                });
                let _ = server.serve_until(&on_connected, |_err| {}, abort).await;
            });
        });
        let addr = addr_rx
            .recv()
            .map_err(|_| HarnessError::Io {
                context: "Modbus server thread".into(),
                source: std::io::Error::other("ended before binding"),
            })?
            .map_err(io_context("binding the Modbus server"))?;
        Ok(ModbusServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
