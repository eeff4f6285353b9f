//! The device agent API against real HTTPS clients on 127.0.0.1: mutual TLS with a
//! generated site device CA, bearer tokens, every refusal path, the durability contract
//! (no 2xx unless the backend stored the data), graceful shutdown, and the OpenAPI
//! document matching the served routes.

#![allow(clippy::unwrap_used)] // Tests may unwrap (house rule).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use wardgate::agent_api::{
    serve, AgentApiConfig, AgentApiError, AgentApiRuntime, AgentApiStats, AgentAuth, AgentBackend,
    AgentDevice, BackendError, ReloadRefused, RouteMethod, StateReport, ROUTES,
};
use wardgate_proto::{DeviceState, Measurement};
use wardgate_tests::certs::{CertFiles, TestPki, Validity};

const TOKEN: &str = "9c1f6f0e7d5b4a3928171605f4e3d2c1b0a99887766554433221100ffeeddccb";

// ---------------------------------------------------------------------------------------
// A backend that records what it was given and can be told to fail.

#[derive(Default)]
struct RecordingBackend {
    states: Mutex<Vec<(String, StateReport)>>,
    telemetry: Mutex<Vec<(String, Vec<Measurement>)>>,
    logs: Mutex<Vec<(String, String, Vec<String>)>>,
    unavailable: AtomicBool,
    refuse: AtomicBool,
    delay_ms: AtomicU64,
}

impl RecordingBackend {
    async fn gate(&self) -> Result<(), BackendError> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable {
                reason: "spool full".into(),
                retry_after: Duration::from_secs(7),
            });
        }
        if self.refuse.load(Ordering::SeqCst) {
            return Err(BackendError::Refused {
                reason: "device is decommissioned".into(),
            });
        }
        Ok(())
    }

    fn stored(&self) -> usize {
        self.states.lock().unwrap().len()
            + self.telemetry.lock().unwrap().len()
            + self.logs.lock().unwrap().len()
    }
}

impl AgentBackend for RecordingBackend {
    async fn report_state(&self, device_id: &str, report: StateReport) -> Result<(), BackendError> {
        self.gate().await?;
        self.states
            .lock()
            .unwrap()
            .push((device_id.to_owned(), report));
        Ok(())
    }

    async fn telemetry(
        &self,
        device_id: &str,
        measurements: Vec<Measurement>,
    ) -> Result<(), BackendError> {
        self.gate().await?;
        self.telemetry
            .lock()
            .unwrap()
            .push((device_id.to_owned(), measurements));
        Ok(())
    }

    async fn logs(
        &self,
        device_id: &str,
        file: String,
        lines: Vec<String>,
    ) -> Result<(), BackendError> {
        self.gate().await?;
        self.logs
            .lock()
            .unwrap()
            .push((device_id.to_owned(), file, lines));
        Ok(())
    }

    async fn settings(
        &self,
        device_id: &str,
    ) -> Result<serde_json::Map<String, Value>, BackendError> {
        self.gate().await?;
        let Value::Object(map) = json!({ "telemetry_interval_s": 10, "for": device_id }) else {
            unreachable!()
        };
        Ok(map)
    }
}

// ---------------------------------------------------------------------------------------
// Server harness.

struct Server {
    pki: TestPki,
    addr: SocketAddr,
    backend: Arc<RecordingBackend>,
    stats: Arc<AgentApiStats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentApiError>>,
    carto: CertFiles,
    stranger: CertFiles,
    /// A handle on the served runtime, for reloading its devices.
    runtime: AgentApiRuntime,
}

fn config(pki: &TestPki) -> AgentApiConfig {
    AgentApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        server_cert: pki.server().cert.clone(),
        server_key: pki.server().key.clone(),
        device_ca: Some(pki.ca_file().to_owned()),
        max_body_bytes: 4096,
        rate_per_device_per_sec: 1000,
        rate_burst: 1000,
        max_connections: 64,
        handshake_timeout_secs: 10,
        idle_timeout_secs: 30,
        body_timeout_secs: 10,
        shutdown_grace_secs: 10,
        update_download_bytes_per_sec_per_device: 1024 * 1024,
        update_download_bytes_per_sec_total: 4 * 1024 * 1024,
    }
}

/// Devices: `carto-1` (mTLS, CN `carto-1.cathlab`) and `pump-2` (token).
fn devices(token_file: PathBuf) -> Vec<AgentDevice> {
    vec![
        AgentDevice {
            id: "carto-1".into(),
            auth: AgentAuth::Mtls {
                identity: "carto-1.cathlab".into(),
            },
        },
        AgentDevice {
            id: "pump-2".into(),
            auth: AgentAuth::Token { token_file },
        },
    ]
}

async fn start_with(
    name: &str,
    adjust: impl FnOnce(&mut AgentApiConfig),
    with_token_device: bool,
) -> Server {
    let pki = TestPki::generate(name).unwrap();
    let token_file = pki
        .write_file("pump-2.token", format!("{TOKEN}\n").as_bytes())
        .unwrap();
    let carto = pki
        .client("carto", "carto-1.cathlab", Validity::Current)
        .unwrap();
    let stranger = pki
        .client("stranger", "not-configured.cathlab", Validity::Current)
        .unwrap();
    let mut cfg = config(&pki);
    adjust(&mut cfg);
    let mut devs = devices(token_file);
    if !with_token_device {
        devs.truncate(1);
    }
    let runtime = AgentApiRuntime::load(&cfg, &devs).unwrap();
    let stats = runtime.stats();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(RecordingBackend::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = runtime.clone();
    let task = tokio::spawn(serve(listener, runtime, Arc::clone(&backend), shutdown_rx));
    Server {
        pki,
        addr,
        backend,
        stats,
        shutdown,
        task,
        carto,
        stranger,
        runtime: handle,
    }
}

async fn start(name: &str) -> Server {
    start_with(name, |_| {}, true).await
}

// ---------------------------------------------------------------------------------------
// A minimal HTTPS client: tokio-rustls + hyper's HTTP/1.1 client, keep-alive.

fn ca_roots(pki: &TestPki) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_without_certificate(pki: &TestPki) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(ca_roots(pki))
            .with_no_client_auth(),
    )
}

struct Client {
    sender: SendRequest<Body>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn error_code(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }
}

async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(Client { sender })
}

impl Client {
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        let explicit_type = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !explicit_type {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.map_or_else(Body::empty, Body::from))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20).await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, path, None, headers).await.unwrap()
    }

    async fn post(&mut self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.post_raw(path, serde_json::to_vec(body).unwrap(), headers)
            .await
    }

    async fn post_raw(&mut self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::POST, path, Some(body), headers)
            .await
            .unwrap()
    }
}

impl Server {
    async fn mtls_client(&self, files: &CertFiles) -> Client {
        connect(self.addr, self.pki.client_tls(files).unwrap())
            .await
            .unwrap()
    }

    async fn carto(&self) -> Client {
        self.mtls_client(&self.carto).await
    }

    async fn anonymous(&self) -> Client {
        connect(self.addr, tls_without_certificate(&self.pki))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

const BEARER: &str = "Bearer 9c1f6f0e7d5b4a3928171605f4e3d2c1b0a99887766554433221100ffeeddccb";

fn telemetry_body() -> Value {
    json!({"measurements": [
        {"name": "catheter.temperature", "value": 37.4, "units": "Cel", "at_ms": 1_735_732_800_000u64},
        {"name": "ablation.power", "value": 30}
    ]})
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn mtls_device_reports_state_telemetry_logs_and_reads_settings() {
    let server = start("agent-mtls").await;
    let mut carto = server.carto().await;

    let identity = carto.get("/v1/identity", &[]).await;
    assert_eq!(identity.status, StatusCode::OK, "{:?}", identity.body);
    assert_eq!(
        identity.body,
        json!({"device_id": "carto-1", "auth": "mtls"})
    );

    // Procedure start and end, on one keep-alive connection.
    let start = carto
        .post(
            "/v1/devices/carto-1/state",
            &json!({"state": "in-procedure", "reason": "procedure-start"}),
            &[],
        )
        .await;
    assert_eq!(start.status, StatusCode::OK, "{:?}", start.body);
    assert_eq!(start.body, json!({"accepted": 1}));
    let end = carto
        .post(
            "/v1/devices/carto-1/state",
            &json!({"state": "online", "at_ms": 1_735_732_900_000u64}),
            &[],
        )
        .await;
    assert_eq!(end.status, StatusCode::OK);
    {
        let states = server.backend.states.lock().unwrap();
        assert_eq!(states.len(), 2);
        assert_eq!(states[0].0, "carto-1");
        assert_eq!(states[0].1.state, DeviceState::InProcedure);
        assert_eq!(states[0].1.reason.as_deref(), Some("procedure-start"));
        assert_eq!(states[1].1.state, DeviceState::Online);
        assert_eq!(states[1].1.at_ms, 1_735_732_900_000);
    }

    let telemetry = carto
        .post("/v1/devices/carto-1/telemetry", &telemetry_body(), &[])
        .await;
    assert_eq!(telemetry.status, StatusCode::OK, "{:?}", telemetry.body);
    assert_eq!(telemetry.body, json!({"accepted": 2}));
    {
        let stored = server.backend.telemetry.lock().unwrap();
        let (device, measurements) = &stored[0];
        assert_eq!(device, "carto-1");
        assert_eq!(measurements[0].name, "catheter.temperature");
        assert_eq!(measurements[0].units.as_deref(), Some("Cel"));
        assert_eq!(measurements[0].at_ms, 1_735_732_800_000);
        assert!((measurements[1].value - 30.0).abs() < f64::EPSILON);
        // A reading without a time gets the time of receipt.
        assert!(measurements[1].at_ms > 1_735_732_800_000);
    }

    let logs = carto
        .post(
            "/v1/devices/carto-1/logs",
            &json!({"file": "system.log", "lines": ["session opened", "contact low"]}),
            &[],
        )
        .await;
    assert_eq!(logs.status, StatusCode::OK, "{:?}", logs.body);
    assert_eq!(logs.body, json!({"accepted": 2}));
    assert_eq!(
        server.backend.logs.lock().unwrap()[0],
        (
            "carto-1".to_owned(),
            "system.log".to_owned(),
            vec!["session opened".to_owned(), "contact low".to_owned()]
        )
    );

    let settings = carto.get("/v1/devices/carto-1/settings", &[]).await;
    assert_eq!(settings.status, StatusCode::OK);
    assert_eq!(
        settings.body,
        json!({"device_id": "carto-1", "settings": {"telemetry_interval_s": 10, "for": "carto-1"}})
    );
    assert_eq!(
        AgentApiStats::get(&server.stats.requests_accepted),
        6,
        "every request above was answered 2xx"
    );
    assert_eq!(AgentApiStats::get(&server.stats.connections_accepted), 1);
    server.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let server = start("agent-rogue").await;
    let rogue_pki = TestPki::generate("rogue").unwrap();
    // Same CN as a configured device, but issued by a CA the gateway does not trust.
    let rogue = rogue_pki
        .client("rogue", "carto-1.cathlab", Validity::Current)
        .unwrap();
    let rogue_tls = {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&rogue.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&rogue.key).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(ca_roots(&server.pki))
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    };
    // With TLS 1.3 the client may finish its side before the server's verdict arrives,
    // so the refusal shows either at connect or at the first request.
    let outcome = match connect(server.addr, rogue_tls).await {
        Err(e) => Err(e),
        Ok(mut client) => {
            client
                .send(
                    Method::POST,
                    "/v1/devices/carto-1/telemetry",
                    Some(serde_json::to_vec(&telemetry_body()).unwrap()),
                    &[],
                )
                .await
        }
    };
    assert!(
        outcome.is_err(),
        "a rogue certificate must not get an HTTP answer"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while AgentApiStats::get(&server.stats.handshakes_failed) == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.backend.stored(), 0);

    // The listener is unaffected.
    let mut carto = server.carto().await;
    assert_eq!(carto.get("/v1/identity", &[]).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn valid_certificate_of_no_configured_device_is_forbidden() {
    let server = start("agent-stranger").await;
    let mut stranger = server.mtls_client(&server.stranger).await;
    let identity = stranger.get("/v1/identity", &[]).await;
    assert_eq!(identity.status, StatusCode::FORBIDDEN);
    assert_eq!(identity.error_code(), "forbidden");
    assert!(
        identity.detail().contains("configured agent device"),
        "{}",
        identity.detail()
    );
    let post = stranger
        .post("/v1/devices/carto-1/telemetry", &telemetry_body(), &[])
        .await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    // Neither can it fall back to another device's token on this connection.
    let with_token = stranger
        .post(
            "/v1/devices/pump-2/telemetry",
            &telemetry_body(),
            &[("authorization", BEARER)],
        )
        .await;
    assert_eq!(with_token.status, StatusCode::FORBIDDEN);
    assert_eq!(server.backend.stored(), 0);
    assert_eq!(
        AgentApiStats::get(&server.stats.certificates_unregistered),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn token_device_is_accepted_and_bad_or_missing_tokens_are_401() {
    let server = start("agent-token").await;
    let mut client = server.anonymous().await;

    let identity = client
        .get("/v1/identity", &[("authorization", BEARER)])
        .await;
    assert_eq!(
        identity.body,
        json!({"device_id": "pump-2", "auth": "token"})
    );
    let ok = client
        .post(
            "/v1/devices/pump-2/telemetry",
            &telemetry_body(),
            &[("authorization", BEARER)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(server.backend.telemetry.lock().unwrap()[0].0, "pump-2");

    let missing = client
        .post("/v1/devices/pump-2/telemetry", &telemetry_body(), &[])
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_code(), "unauthenticated");
    assert!(missing.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    let wrong = format!("Bearer {}", TOKEN.replace('9', "8"));
    let bad = client
        .post(
            "/v1/devices/pump-2/telemetry",
            &telemetry_body(),
            &[("authorization", &wrong)],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad.error_code(), "invalid_token");
    assert!(!bad.detail().contains(TOKEN));
    let basic = client
        .get("/v1/identity", &[("authorization", "Basic cHVtcC0yOng=")])
        .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);

    // An mTLS connection cannot carry a token as well.
    let mut carto = server.carto().await;
    let both = carto
        .get("/v1/identity", &[("authorization", BEARER)])
        .await;
    assert_eq!(both.status, StatusCode::UNAUTHORIZED);
    assert_eq!(both.error_code(), "conflicting_credentials");

    assert_eq!(server.backend.telemetry.lock().unwrap().len(), 1);
    server.stop().await;
}

async fn identity(client: &mut Client, bearer: &str) -> Answer {
    client
        .get("/v1/identity", &[("authorization", bearer)])
        .await
}

#[tokio::test]
async fn reloaded_devices_take_effect_without_a_restart() {
    let server = start("agent-reload").await;
    let mut client = server.anonymous().await;
    let pump_bearer = BEARER.to_owned();
    assert_eq!(
        identity(&mut client, &pump_bearer).await.status,
        StatusCode::OK
    );

    // A new token device appears, pump-2 is removed.
    let other = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    let other_file = server
        .pki
        .write_file("infuse-3.token", other.as_bytes())
        .unwrap();
    let mut next = devices(PathBuf::new());
    next.truncate(1);
    next.push(AgentDevice {
        id: "infuse-3".into(),
        auth: AgentAuth::Token {
            token_file: other_file,
        },
    });
    server.runtime.reload_devices(&next).unwrap();
    let removed = identity(&mut client, &pump_bearer).await;
    assert_eq!(
        removed.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        removed.body
    );
    let added = identity(&mut client, &format!("Bearer {other}")).await;
    assert_eq!(
        added.body,
        json!({"device_id": "infuse-3", "auth": "token"})
    );

    // A broken list (a missing token file) is refused and the running one stays.
    let mut broken = next.clone();
    broken[1].auth = AgentAuth::Token {
        token_file: PathBuf::from("/nonexistent/token"),
    };
    let refused = server.runtime.reload_devices(&broken).unwrap_err();
    assert!(
        refused.to_string().contains("/nonexistent/token"),
        "{refused}"
    );
    let still = identity(&mut client, &format!("Bearer {other}")).await;
    assert_eq!(still.status, StatusCode::OK);
    server.stop().await;

    // An mTLS-only listener cannot take its first token device without a restart.
    let mtls_only = start_with("agent-reload-mtls", |_| {}, false).await;
    let token_file = mtls_only
        .pki
        .write_file("pump-2.token", TOKEN.as_bytes())
        .unwrap();
    let needs_restart = mtls_only
        .runtime
        .reload_devices(&devices(token_file))
        .unwrap_err();
    assert!(
        matches!(needs_restart, ReloadRefused::NeedsRestart(_)),
        "{needs_restart}"
    );
    mtls_only.stop().await;
}

#[tokio::test]
async fn a_device_cannot_post_for_another_device() {
    let server = start("agent-impersonation").await;
    let mut carto = server.carto().await;
    for path in [
        "/v1/devices/pump-2/state",
        "/v1/devices/pump-2/telemetry",
        "/v1/devices/pump-2/logs",
    ] {
        let answer = carto.post(path, &json!({"state": "error"}), &[]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(answer.error_code(), "forbidden");
        assert!(answer.detail().contains("only speak for itself"));
    }
    let settings = carto.get("/v1/devices/pump-2/settings", &[]).await;
    assert_eq!(settings.status, StatusCode::FORBIDDEN);

    let mut pump = server.anonymous().await;
    let answer = pump
        .post(
            "/v1/devices/carto-1/telemetry",
            &telemetry_body(),
            &[("authorization", BEARER)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(server.backend.stored(), 0);
    server.stop().await;
}

#[tokio::test]
async fn oversize_body_is_413_and_not_stored() {
    let server = start("agent-oversize").await;
    let mut carto = server.carto().await;
    let lines: Vec<String> = (0..1000).map(|i| format!("line {i:04} padding")).collect();
    let body = serde_json::to_vec(&json!({"file": "big.log", "lines": lines})).unwrap();
    assert!(body.len() > 4096);
    let answer = carto.post_raw("/v1/devices/carto-1/logs", body, &[]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code(), "body_too_large");
    assert!(answer.detail().contains("4096"), "{}", answer.detail());
    assert_eq!(server.backend.stored(), 0);

    // Under the limit on a fresh connection, the same route works.
    let mut carto = server.carto().await;
    let small = carto
        .post(
            "/v1/devices/carto-1/logs",
            &json!({"file": "big.log", "lines": ["one"]}),
            &[],
        )
        .await;
    assert_eq!(small.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn malformed_and_mis_shaped_bodies_say_what_is_wrong() {
    let server = start("agent-schema").await;
    let mut carto = server.carto().await;
    let path = "/v1/devices/carto-1/telemetry";

    let malformed = carto
        .post_raw(path, b"{\"measurements\": [".to_vec(), &[])
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.error_code(), "malformed_json");

    let unknown = carto
        .post(
            path,
            &json!({"measurements": [{"name": "t", "value": 1, "foo": 2}]}),
            &[],
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.error_code(), "schema_mismatch");
    assert!(
        unknown.detail().contains("measurements[0]")
            && unknown.detail().contains("unknown field `foo`")
            && unknown.detail().contains("expected one of"),
        "{}",
        unknown.detail()
    );

    let wrong_type = carto
        .post(
            path,
            &json!({"measurements": [{"name": "t", "value": "hot"}]}),
            &[],
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::BAD_REQUEST);
    assert!(wrong_type.detail().contains("measurements[0].value"));

    let bad_state = carto
        .post(
            "/v1/devices/carto-1/state",
            &json!({"state": "offline"}),
            &[],
        )
        .await;
    assert_eq!(bad_state.status, StatusCode::BAD_REQUEST);
    assert!(bad_state.detail().contains("unknown variant `offline`"));

    let bad_value = carto
        .post(
            path,
            &json!({"measurements": [{"name": "has space", "value": 1}]}),
            &[],
        )
        .await;
    assert_eq!(bad_value.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_value.error_code(), "invalid_value");
    assert!(bad_value.detail().starts_with("measurements[0].name"));

    let not_json = carto
        .send(
            Method::POST,
            path,
            Some(b"name=t".to_vec()),
            &[("content-type", "text/plain")],
        )
        .await
        .unwrap();
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // After all that, the keep-alive connection still works.
    let ok = carto.post(path, &telemetry_body(), &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(server.backend.telemetry.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let server = start_with(
        "agent-rate",
        |c| {
            c.rate_per_device_per_sec = 1;
            c.rate_burst = 3;
        },
        true,
    )
    .await;
    let mut carto = server.carto().await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let answer = carto
            .post("/v1/devices/carto-1/telemetry", &telemetry_body(), &[])
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.error_code(), "rate_limited");
            retry_after = Some(answer.headers["retry-after"].to_str().unwrap().to_owned());
        }
        statuses.push(answer.status);
    }
    // The burst is available at once; ten requests in far less than seven seconds
    // exceed burst plus refill.
    assert!(
        statuses[..3].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited > 0, "{statuses:?}");
    let secs: u64 = retry_after.unwrap().parse().unwrap();
    assert_eq!(secs, 1, "one request per second refills within a second");
    assert_eq!(
        server.backend.telemetry.lock().unwrap().len(),
        statuses.len() - limited,
        "a limited request stores nothing"
    );
    // The budget is per device: the token device is unaffected.
    let mut pump = server.anonymous().await;
    let answer = pump
        .post(
            "/v1/devices/pump-2/telemetry",
            &telemetry_body(),
            &[("authorization", BEARER)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn backend_unavailable_is_503_and_never_2xx() {
    let server = start("agent-unavailable").await;
    server.backend.unavailable.store(true, Ordering::SeqCst);
    let mut carto = server.carto().await;
    let requests: [(&str, Value); 3] = [
        ("/v1/devices/carto-1/state", json!({"state": "online"})),
        ("/v1/devices/carto-1/telemetry", telemetry_body()),
        (
            "/v1/devices/carto-1/logs",
            json!({"file": "a.log", "lines": ["x"]}),
        ),
    ];
    for (path, body) in &requests {
        let answer = carto.post(path, body, &[]).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(answer.error_code(), "unavailable");
        assert_eq!(answer.headers["retry-after"], "7");
        assert!(answer.detail().contains("spool full"));
    }
    let settings = carto.get("/v1/devices/carto-1/settings", &[]).await;
    assert_eq!(settings.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.backend.stored(), 0);
    assert_eq!(AgentApiStats::get(&server.stats.requests_accepted), 0);
    assert_eq!(AgentApiStats::get(&server.stats.requests_unavailable), 4);

    // Refused content is 422 with the backend's reason.
    server.backend.unavailable.store(false, Ordering::SeqCst);
    server.backend.refuse.store(true, Ordering::SeqCst);
    let refused = carto
        .post("/v1/devices/carto-1/telemetry", &telemetry_body(), &[])
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_code(), "refused");
    assert_eq!(refused.detail(), "device is decommissioned");
    server.stop().await;
}

#[tokio::test]
async fn everything_requires_a_credential_including_unknown_routes() {
    let server = start("agent-unknown").await;
    let mut anonymous = server.anonymous().await;
    for path in ["/v1/identity", "/v1/devices/pump-2/settings", "/nope", "/"] {
        let answer = anonymous.get(path, &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let mut carto = server.carto().await;
    let unknown = carto.get("/v1/nope", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "not_found");
    let wrong_method = carto.get("/v1/devices/carto-1/telemetry", &[]).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    server.stop().await;
}

#[tokio::test]
async fn a_client_certificate_is_required_when_no_device_uses_tokens() {
    let server = start_with("agent-mtls-only", |_| {}, false).await;
    let outcome = match connect(server.addr, tls_without_certificate(&server.pki)).await {
        Err(e) => Err(e),
        Ok(mut client) => client.send(Method::GET, "/v1/identity", None, &[]).await,
    };
    assert!(outcome.is_err(), "no certificate, no HTTP");
    let mut carto = server.carto().await;
    assert_eq!(carto.get("/v1/identity", &[]).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_progress_finish() {
    let server = start("agent-shutdown").await;
    server.backend.delay_ms.store(500, Ordering::SeqCst);
    let mut carto = server.carto().await;
    let in_flight = tokio::spawn(async move {
        carto
            .post("/v1/devices/carto-1/telemetry", &telemetry_body(), &[])
            .await
    });
    // Let the request reach the backend, then ask the server to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while AgentApiStats::get(&server.stats.connections_active) == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.shutdown.send(true).unwrap();

    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the committed request is answered"
    );
    assert_eq!(server.backend.telemetry.lock().unwrap().len(), 1);
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn connection_cap_and_handshake_timeout_protect_the_listener() {
    let server = start_with(
        "agent-cap",
        |c| {
            c.max_connections = 1;
            c.handshake_timeout_secs = 1;
        },
        true,
    )
    .await;
    // A silent TCP connection holds the only slot until the handshake timeout closes it.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while AgentApiStats::get(&server.stats.connections_active) == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Over the cap: closed before the handshake.
    assert!(
        connect(server.addr, server.pki.client_tls(&server.carto).unwrap())
            .await
            .is_err()
    );
    assert_eq!(AgentApiStats::get(&server.stats.connections_refused), 1);

    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(AgentApiStats::get(&server.stats.handshakes_failed) >= 1);

    // The slot is free again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while AgentApiStats::get(&server.stats.connections_active) != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut carto = server.carto().await;
    assert_eq!(carto.get("/v1/identity", &[]).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let server = start_with("agent-idle", |c| c.idle_timeout_secs = 1, true).await;
    let mut carto = server.carto().await;
    assert_eq!(carto.get("/v1/identity", &[]).await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while AgentApiStats::get(&server.stats.connections_active) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle connection outlived the idle timeout by far"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(carto
        .send(Method::GET, "/v1/identity", None, &[])
        .await
        .is_err());
    server.stop().await;
}

#[tokio::test]
async fn unusable_material_is_refused_at_load_naming_the_file() {
    let pki = TestPki::generate("agent-load").unwrap();
    let token_file = pki
        .write_file("t.token", format!("{TOKEN}\n").as_bytes())
        .unwrap();
    let good = config(&pki);
    AgentApiRuntime::load(&good, &devices(token_file.clone())).unwrap();

    let mut missing = good.clone();
    missing.server_cert = pki.dir().join("absent.pem");
    let err = AgentApiRuntime::load(&missing, &devices(token_file.clone())).unwrap_err();
    assert!(
        matches!(&err, AgentApiError::CredentialFile { role: "server certificate", path, .. } if path.ends_with("absent.pem")),
        "{err}"
    );

    let other = pki.client("other", "other", Validity::Current).unwrap();
    let mut mismatched = good.clone();
    mismatched.server_key = other.key;
    let err = AgentApiRuntime::load(&mismatched, &devices(token_file.clone())).unwrap_err();
    assert!(
        matches!(
            &err,
            AgentApiError::InvalidCredential {
                role: "server key",
                ..
            }
        ),
        "{err}"
    );

    let weak = pki.write_file("weak.token", b"letmein\n").unwrap();
    let err = AgentApiRuntime::load(&good, &devices(weak)).unwrap_err();
    assert!(
        matches!(&err, AgentApiError::InvalidCredential { role: "device token file", reason, .. } if !reason.contains("letmein")),
        "{err}"
    );

    let mut shared = devices(token_file.clone());
    shared.push(AgentDevice {
        id: "pump-3".into(),
        auth: AgentAuth::Token {
            token_file: token_file.clone(),
        },
    });
    let err = AgentApiRuntime::load(&good, &shared).unwrap_err();
    assert!(
        matches!(&err, AgentApiError::Config(p) if p.key == "pump-3.token_file"),
        "{err}"
    );

    let mut no_ca = good.clone();
    no_ca.device_ca = None;
    let err = AgentApiRuntime::load(&no_ca, &devices(token_file.clone())).unwrap_err();
    assert!(
        matches!(&err, AgentApiError::Config(p) if p.key == "carto-1.identity"),
        "{err}"
    );

    let mut tiny = good;
    tiny.max_body_bytes = 1;
    let err = AgentApiRuntime::load(&tiny, &devices(token_file)).unwrap_err();
    assert!(err.to_string().contains("max_body_bytes"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The OpenAPI document is the contract: it must describe exactly the served routes.

#[test]
fn openapi_document_matches_the_served_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/agent-api.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let mut documented = BTreeSet::new();
    for (route_path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            documented.insert((method.clone(), route_path.clone()));
            let responses = operation["responses"].as_object().unwrap();
            let has_body = operation.get("requestBody").is_some();
            let mut required = vec!["200", "401", "403", "429"];
            if has_body {
                // 413 only arises where a body is read.
                required.extend(["400", "408", "413", "415", "422", "503"]);
            }
            for status in required {
                assert!(
                    responses.contains_key(status),
                    "{method} {route_path} does not document {status}"
                );
            }
            assert!(
                operation.get("security").is_none(),
                "{method} {route_path} overrides the global security requirement"
            );
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.openapi_name().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, served);

    // Body routes are exactly the POST routes.
    for route in ROUTES {
        let operation = &doc["paths"][route.path][route.method.openapi_name()];
        assert_eq!(
            operation.get("requestBody").is_some(),
            route.method == RouteMethod::Post,
            "{}",
            route.path
        );
    }

    // Both credentials are declared, and every $ref resolves.
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["deviceCertificate"]["type"], "mutualTLS");
    assert_eq!(schemes["deviceToken"]["scheme"], "bearer");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling {reference}");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
