//! Throughput of the device agent API over mutual TLS with HTTP/1.1 keep-alive.
//!
//! Setup: a generated device CA, server and device certificates; the real listener
//! ([`wardgate::agent_api::serve`]) on 127.0.0.1 with a backend that accepts instantly
//! (so the figure is the HTTP/TLS/JSON/auth/rate-limit path, not the spool);
//! `CONNECTIONS` keep-alive mTLS connections, each sending `POST
//! /v1/devices/{id}/telemetry` (three readings) one after another for `DURATION`, each a
//! different device so the per-device rate limit (set high) is exercised, not shared.
//!
//! Caveat: the client runs in the same process and on the same cores as the server (the
//! machine has two), so the figure is a lower bound on what the server alone sustains.
//!
//! Target: ≥ 10,000 requests/s. Prints
//! `agent_api: N req/s over mTLS keep-alive (C connections)`.

#![allow(clippy::unwrap_used)] // Benchmarks may unwrap, like tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use wardgate::agent_api::{
    serve, AgentApiConfig, AgentApiRuntime, AgentAuth, AgentBackend, AgentDevice, BackendError,
    StateReport,
};
use wardgate_proto::Measurement;
use wardgate_tests::certs::{TestPki, Validity};

const CONNECTIONS: usize = 32;
const DURATION: Duration = Duration::from_secs(10);
const WARMUP: Duration = Duration::from_secs(1);

/// Accepts everything at once; counts readings so the work cannot be optimised away.
#[derive(Default)]
struct InstantBackend {
    readings: AtomicU64,
}

impl AgentBackend for InstantBackend {
    async fn report_state(&self, _: &str, _: StateReport) -> Result<(), BackendError> {
        Ok(())
    }
    async fn telemetry(&self, _: &str, m: Vec<Measurement>) -> Result<(), BackendError> {
        self.readings.fetch_add(m.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    async fn logs(&self, _: &str, _: String, _: Vec<String>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn settings(&self, _: &str) -> Result<serde_json::Map<String, Value>, BackendError> {
        Ok(serde_json::Map::new())
    }
}

async fn client_loop(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    device: String,
    start: Instant,
    counted: Arc<AtomicU64>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let path = format!("/v1/devices/{device}/telemetry");
    let body = br#"{"measurements":[{"name":"catheter.temperature","value":37.4,"units":"Cel"},{"name":"ablation.power","value":30,"units":"W"},{"name":"contact.force","value":12.5,"units":"g"}]}"#;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= WARMUP + DURATION {
            break;
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(&path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(&body[..]))
            .unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        axum::body::to_bytes(Body::new(response.into_body()), 1024)
            .await
            .unwrap();
        if elapsed >= WARMUP {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pki = TestPki::generate("agent-bench").unwrap();
        let mut devices = Vec::new();
        let mut client_configs = Vec::new();
        for i in 0..CONNECTIONS {
            let id = format!("device-{i:02}");
            let files = pki
                .client(&id, &format!("{id}.cathlab"), Validity::Current)
                .unwrap();
            client_configs.push((id.clone(), pki.client_tls(&files).unwrap()));
            devices.push(AgentDevice {
                id: id.clone(),
                auth: AgentAuth::Mtls {
                    identity: format!("{id}.cathlab"),
                },
            });
        }
        let config = AgentApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            server_cert: pki.server().cert.clone(),
            server_key: pki.server().key.clone(),
            device_ca: Some(pki.ca_file().to_owned()),
            max_body_bytes: 1 << 20,
            rate_per_device_per_sec: 100_000,
            rate_burst: 100_000,
            max_connections: 256,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 120,
            body_timeout_secs: 30,
            shutdown_grace_secs: 5,
            update_download_bytes_per_sec_per_device: 1024 * 1024,
            update_download_bytes_per_sec_total: 4 * 1024 * 1024,
        };
        let api = AgentApiRuntime::load(&config, &devices).unwrap();
        let stats = api.stats();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = Arc::new(InstantBackend::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, api, Arc::clone(&backend), shutdown_rx));

        let counted = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let clients: Vec<_> = client_configs
            .into_iter()
            .map(|(device, tls)| {
                tokio::spawn(client_loop(
                    addr,
                    tls,
                    device,
                    start,
                    Arc::clone(&counted),
                ))
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        let requests = counted.load(Ordering::Relaxed);
        let rate = requests as f64 / DURATION.as_secs_f64();

        shutdown_tx.send(true).unwrap();
        server.await.unwrap().unwrap();
        assert_eq!(
            stats
                .connections_accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            CONNECTIONS as u64
        );
        assert!(backend.readings.load(Ordering::Relaxed) >= requests * 3);
        println!("agent_api: {rate:.0} req/s over mTLS keep-alive ({CONNECTIONS} connections)");
        println!(
            "agent_api: {requests} requests in {} s after {} s warm-up; the client runs in the same process",
            DURATION.as_secs(),
            WARMUP.as_secs()
        );
    });
}
