//! The update routes: pure parts (ranges, status bodies, metadata names) and the routes
//! over real HTTPS on 127.0.0.1 with token devices, a real registry, durable rollouts
//! in a temporary SQLite file and staged files on disk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures_util::StreamExt;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use wardgate_proto::{DeviceState, Measurement};
use wardgate_tests::certs::TestPki;

use super::*;
use crate::agent_api::{
    serve, AgentApiConfig, AgentApiError, AgentApiRuntime, AgentAuth, AgentDevice, StateReport,
};
use crate::devices::{Declaration, Evidence};
use crate::updates::assignment::Assignment;
use crate::updates::rollout::Stage;
use crate::updates::store::FILE_NAME;

// ---------------------------------------------------------------------------------------
// Pure parts.

#[test]
fn ranges_follow_rfc_9110() {
    let r = |h: &str, len| byte_range(Some(h), len);
    assert_eq!(byte_range(None, 10), ByteRange::Full);
    assert_eq!(r("bytes=0-4", 10), ByteRange::Partial { start: 0, end: 4 });
    assert_eq!(r("bytes=5-", 10), ByteRange::Partial { start: 5, end: 9 });
    assert_eq!(
        r("bytes=5-100", 10),
        ByteRange::Partial { start: 5, end: 9 }
    );
    assert_eq!(r("bytes=-3", 10), ByteRange::Partial { start: 7, end: 9 });
    assert_eq!(r("bytes=-30", 10), ByteRange::Partial { start: 0, end: 9 });
    assert_eq!(r("BYTES=1-1", 10), ByteRange::Partial { start: 1, end: 1 });
    assert_eq!(r("bytes=10-", 10), ByteRange::Unsatisfiable);
    assert_eq!(r("bytes=10-20", 10), ByteRange::Unsatisfiable);
    assert_eq!(r("bytes=-0", 10), ByteRange::Unsatisfiable);
    assert_eq!(r("bytes=0-", 0), ByteRange::Unsatisfiable);
    assert_eq!(r("bytes=-5", 0), ByteRange::Unsatisfiable);
    // Ignored: the whole file.
    for ignored in [
        "bytes=5-4",
        "bytes=0-1,3-4",
        "items=0-1",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=",
        "bytes=-",
        "bytes 0-1",
        "bytes=99999999999999999999999-",
    ] {
        assert_eq!(r(ignored, 10), ByteRange::Full, "{ignored}");
    }
}

#[test]
fn status_bodies_need_a_reason_exactly_when_failing_or_deferring() {
    let parse = |v: Value| {
        crate::agent_api::schema::parse::<StatusRequest>(&serde_json::to_vec(&v).unwrap())
            .unwrap()
            .into_report()
    };
    assert_eq!(
        parse(json!({"state": "installed"})),
        Ok(DeviceReport::Installed)
    );
    assert_eq!(
        parse(json!({"state": "failed", "reason": "E42"})),
        Ok(DeviceReport::Failed {
            reason: "E42".into()
        })
    );
    assert!(
        matches!(parse(json!({"state": "deferred"})), Err(BodyProblem::Value(m)) if m.starts_with("reason"))
    );
    assert!(matches!(
        parse(json!({"state": "installed", "reason": "x"})),
        Err(BodyProblem::Value(_))
    ));
    assert!(matches!(
        parse(json!({"state": "failed", "reason": "free text with spaces"})),
        Err(BodyProblem::Value(_))
    ));
    let shape = crate::agent_api::schema::parse::<StatusRequest>(br#"{"state":"done"}"#);
    assert!(matches!(shape, Err(BodyProblem::Shape(_))));
    let shape =
        crate::agent_api::schema::parse::<StatusRequest>(br#"{"state":"installed","at":1}"#);
    assert!(matches!(shape, Err(BodyProblem::Shape(_))));
    let request = StatusRequest {
        state: ReportedUpdateState::Failed,
        reason: Some("secret".into()),
    };
    assert!(!format!("{request:?}").contains("secret"));
}

#[test]
fn metadata_file_names_are_single_json_names() {
    for good in [
        "root.json",
        "3.root.json",
        "timestamp.json",
        "role%2Fa.json",
    ] {
        assert!(is_metadata_file_name(good), "{good}");
    }
    for bad in [
        ".json",
        "../root.json",
        "a/b.json",
        "root",
        ".root.json",
        "root.json.bak",
        "",
    ] {
        assert!(!is_metadata_file_name(bad), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------
// Harness: three token devices, two groups, one staged file per assignment.

const PUMP_1: &str = "pump-1";
const PUMP_2: &str = "pump-2";
const MONITOR: &str = "monitor-1";

fn token(device: &str) -> String {
    hex::encode(Sha256::digest(device.as_bytes()))
}

/// A backend with the real update service and no-op clinical routes.
struct Backend {
    updates: Arc<RolloutUpdates>,
}

impl AgentBackend for Backend {
    async fn report_state(&self, _: &str, _: StateReport) -> Result<(), BackendError> {
        Ok(())
    }
    async fn telemetry(&self, _: &str, _: Vec<Measurement>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn logs(&self, _: &str, _: String, _: Vec<String>) -> Result<(), BackendError> {
        Ok(())
    }
    async fn settings(&self, _: &str) -> Result<serde_json::Map<String, Value>, BackendError> {
        Ok(serde_json::Map::new())
    }
    fn updates(&self) -> Option<Arc<dyn UpdatesBackend>> {
        Some(Arc::clone(&self.updates) as Arc<dyn UpdatesBackend>)
    }
}

struct Server {
    _pki: TestPki,
    files_dir: tempfile::TempDir,
    db: std::path::PathBuf,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    registry: Arc<Registry>,
    rollouts: Arc<Mutex<DurableRollouts>>,
    /// Target name → the staged file's bytes.
    files: HashMap<String, Vec<u8>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentApiError>>,
}

fn declaration(id: &str, group: &str) -> Declaration {
    Declaration {
        id: id.into(),
        kind: group.trim_end_matches('s').into(),
        group: group.into(),
        adapters: vec!["agent"],
        hl7_application: None,
        dicom_ae_title: None,
        offline_after: None,
    }
}

fn assignment(id: &str, group: &str, target: &str) -> Assignment {
    Assignment::parse(
        &serde_json::to_vec(&json!({
            "id": id, "target": target, "devices": {"group": group},
            "policy": {"required": true, "wave_size": 10, "failure_threshold": 3}
        }))
        .unwrap(),
    )
    .unwrap()
}

fn stage_file(dir: &Path, name: &str, bytes: &[u8]) -> StagedTarget {
    let path = dir.join(name.replace('/', "_"));
    std::fs::write(&path, bytes).unwrap();
    StagedTarget {
        name: name.into(),
        path,
        length: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
    }
}

async fn start(name: &str, per_device_rate: u32) -> Server {
    let pki = TestPki::generate(name).unwrap();
    let files_dir = tempfile::tempdir().unwrap();
    let mut devices = Vec::new();
    for id in [PUMP_1, PUMP_2, MONITOR] {
        let token_file = pki
            .write_file(&format!("{id}.token"), token(id).as_bytes())
            .unwrap();
        devices.push(AgentDevice {
            id: id.into(),
            auth: AgentAuth::Token { token_file },
        });
    }
    let config = AgentApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        server_cert: pki.server().cert.clone(),
        server_key: pki.server().key.clone(),
        device_ca: None,
        max_body_bytes: 4096,
        rate_per_device_per_sec: 1000,
        rate_burst: 1000,
        max_connections: 64,
        handshake_timeout_secs: 10,
        idle_timeout_secs: 30,
        body_timeout_secs: 10,
        shutdown_grace_secs: 10,
        update_download_bytes_per_sec_per_device: per_device_rate,
        update_download_bytes_per_sec_total: 64 * 1024 * 1024,
    };
    let runtime = AgentApiRuntime::load(&config, &devices).unwrap();

    let (registry, _transitions) = Registry::new(Arc::new(|| 1_000));
    registry.apply(vec![
        declaration(PUMP_1, "pumps"),
        declaration(PUMP_2, "pumps"),
        declaration(MONITOR, "monitors"),
    ]);
    for id in [PUMP_1, PUMP_2, MONITOR] {
        registry.evidence(id, &Evidence::Reachable);
    }

    // A pump image of 300,000 bytes (not a multiple of the chunk) and a monitor image.
    let pump_bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let monitor_bytes = b"monitor firmware 2.0".repeat(50);
    let staged: HashMap<String, StagedTarget> = [
        stage_file(files_dir.path(), "pumps/pump-4.2.bin", &pump_bytes),
        stage_file(files_dir.path(), "monitors/mon-2.0.bin", &monitor_bytes),
    ]
    .into_iter()
    .map(|t| (t.name.clone(), t))
    .collect();
    let metadata_dir = files_dir.path().join("metadata");
    std::fs::create_dir(&metadata_dir).unwrap();
    std::fs::write(
        metadata_dir.join("root.json"),
        br#"{"signed":{"_type":"root"}}"#,
    )
    .unwrap();

    let db = files_dir.path().join(FILE_NAME);
    let mut durable = DurableRollouts::open(&db, 0).unwrap();
    durable
        .add(
            assignment("pumps-fw", "pumps", "pumps/pump-4.2.bin"),
            [PUMP_1.to_owned(), PUMP_2.to_owned()],
            1,
        )
        .unwrap();
    durable
        .add(
            assignment("monitors-fw", "monitors", "monitors/mon-2.0.bin"),
            [MONITOR.to_owned()],
            2,
        )
        .unwrap();
    let rollouts = Arc::new(Mutex::new(durable));
    let lookup = staged.clone();
    let updates = Arc::new(RolloutUpdates::new(
        Arc::clone(&rollouts),
        Arc::clone(&registry),
        Arc::new(move |name: &str| lookup.get(name).cloned()),
        Some(metadata_dir),
        Arc::new(|| Now::at(5_000, 0)),
    ));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(serve(
        listener,
        runtime,
        Arc::new(Backend { updates }),
        shutdown_rx,
    ));

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let files = HashMap::from([
        ("pumps/pump-4.2.bin".to_owned(), pump_bytes),
        ("monitors/mon-2.0.bin".to_owned(), monitor_bytes),
    ]);
    Server {
        _pki: pki,
        files_dir,
        db,
        addr,
        tls,
        registry,
        rollouts,
        files,
        shutdown,
        task,
    }
}

impl Server {
    async fn client(&self, device: &str) -> Client {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let stream = TlsConnector::from(Arc::clone(&self.tls))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client {
            sender,
            auth: format!("Bearer {}", token(device)),
            device: device.to_owned(),
        }
    }

    /// Stops the server; returns the directory of the files and the database (deleted
    /// when dropped).
    async fn stop(self) -> tempfile::TempDir {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
        self.files_dir
    }
}

struct Client {
    sender: SendRequest<Body>,
    auth: String,
    device: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Client {
    fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Request<Body> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("authorization", &self.auth);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        match body {
            Some(v) => builder
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        }
    }

    async fn send(&mut self, request: Request<Body>) -> Answer {
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 24)
            .await
            .unwrap()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let request = self.request(Method::GET, path, headers, None);
        self.send(request).await
    }

    async fn offers(&mut self) -> Value {
        let path = format!("/v1/devices/{}/updates", self.device);
        let answer = self.get(&path, &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.json()["offers"].clone()
    }

    async fn report(&mut self, assignment: &str, body: Value) -> Answer {
        let path = format!("/v1/devices/{}/updates/{assignment}/status", self.device);
        let request = self.request(Method::POST, &path, &[], Some(body));
        self.send(request).await
    }

    /// Starts a download and reads at least `at_least` bytes of the body, then drops
    /// the connection (the download is interrupted).
    async fn read_then_drop(mut self, path: &str, at_least: usize) -> Vec<u8> {
        let request = self.request(Method::GET, path, &[], None);
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut stream = Body::new(response.into_body()).into_data_stream();
        let mut got = Vec::new();
        while got.len() < at_least {
            got.extend_from_slice(&stream.next().await.unwrap().unwrap());
        }
        got
    }
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_range_and_the_hash_matches() {
    let server = start("upd-resume", 64 * 1024 * 1024).await;
    let mut pump = server.client(PUMP_1).await;
    let offers = pump.offers().await;
    assert_eq!(offers.as_array().unwrap().len(), 1, "{offers}");
    let offer = &offers[0];
    let expected = &server.files["pumps/pump-4.2.bin"];
    assert_eq!(offer["assignment_id"], "pumps-fw");
    assert_eq!(offer["target"], "pumps/pump-4.2.bin");
    assert_eq!(offer["length"], expected.len());
    assert_eq!(offer["required"], true);
    let sha = offer["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha, hex::encode(Sha256::digest(expected)));
    let content = offer["content_url"].as_str().unwrap().to_owned();
    assert_eq!(content, "/v1/devices/pump-1/updates/pumps-fw/content");
    assert_eq!(
        offer["metadata_urls"]["root"],
        "/v1/devices/pump-1/updates/metadata/root.json"
    );

    // The first attempt breaks off after some bytes.
    let first = server
        .client(PUMP_1)
        .await
        .read_then_drop(&content, 70_000)
        .await;
    assert!(first.len() < expected.len());
    assert_eq!(
        server
            .rollouts
            .lock()
            .unwrap()
            .rollouts()
            .get("pumps-fw")
            .unwrap()
            .progress(PUMP_1)
            .unwrap()
            .stage,
        Stage::Downloading
    );

    // Resume from where it stopped, conditional on the same file.
    let etag = format!("\"{sha}\"");
    let from = format!("bytes={}-", first.len());
    let rest = pump
        .get(&content, &[("range", &from), ("if-range", &etag)])
        .await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(rest.headers["etag"], etag.as_str());
    assert_eq!(rest.headers["accept-ranges"], "bytes");
    assert_eq!(
        rest.headers["content-range"],
        format!(
            "bytes {}-{}/{}",
            first.len(),
            expected.len() - 1,
            expected.len()
        )
        .as_str()
    );
    let mut whole = first.clone();
    whole.extend_from_slice(&rest.body);
    assert_eq!(hex::encode(Sha256::digest(&whole)), sha);

    // Another ETag in If-Range: the whole file again. Past the end: 416.
    let stale = pump
        .get(
            &content,
            &[("range", "bytes=10-"), ("if-range", "\"0000\"")],
        )
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body.len(), expected.len());
    let past = format!("bytes={}-", expected.len());
    let unsatisfiable = pump.get(&content, &[("range", &past)]).await;
    assert_eq!(unsatisfiable.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        unsatisfiable.headers["content-range"],
        format!("bytes */{}", expected.len()).as_str()
    );

    // The verified metadata is served by file name only.
    let root = pump
        .get("/v1/devices/pump-1/updates/metadata/root.json", &[])
        .await;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.body, br#"{"signed":{"_type":"root"}}"#);
    let missing = pump
        .get("/v1/devices/pump-1/updates/metadata/snapshot.json", &[])
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let sneaky = pump
        .get(
            "/v1/devices/pump-1/updates/metadata/..%2F..%2Fetc%2Fpasswd.json",
            &[],
        )
        .await;
    assert_eq!(sneaky.status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn a_device_cannot_see_or_fetch_another_groups_update() {
    let server = start("upd-groups", 64 * 1024 * 1024).await;
    let mut monitor = server.client(MONITOR).await;
    let offers = monitor.offers().await;
    let ids: Vec<&str> = offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["assignment_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["monitors-fw"]);

    for path in [
        "/v1/devices/monitor-1/updates/pumps-fw/content",
        "/v1/devices/monitor-1/updates/no-such-fw/content",
    ] {
        let answer = monitor.get(path, &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.json()["error"], "not_found");
        assert!(!String::from_utf8_lossy(&answer.body).contains("pump"));
    }
    let answer = monitor
        .report("pumps-fw", json!({"state": "installed"}))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // Even a pump that was offered its own update cannot take the monitors'.
    let mut pump = server.client(PUMP_1).await;
    assert_eq!(pump.offers().await.as_array().unwrap().len(), 1);
    let answer = pump
        .get("/v1/devices/pump-1/updates/monitors-fw/content", &[])
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    // And a device cannot speak for another one.
    let answer = pump.get("/v1/devices/monitor-1/updates", &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[tokio::test]
async fn a_device_in_procedure_is_offered_nothing_until_it_leaves() {
    let server = start("upd-procedure", 64 * 1024 * 1024).await;
    let in_procedure = Evidence::Reported {
        state: DeviceState::InProcedure,
        reason: None,
    };
    server.registry.evidence(PUMP_2, &in_procedure);
    let mut pump = server.client(PUMP_2).await;
    assert_eq!(pump.offers().await, json!([]));
    let content = "/v1/devices/pump-2/updates/pumps-fw/content";
    assert_eq!(pump.get(content, &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.rollouts.lock().unwrap().summaries()[0].pending,
        2,
        "nobody admitted"
    );

    let online = Evidence::Reported {
        state: DeviceState::Online,
        reason: None,
    };
    server.registry.evidence(PUMP_2, &online);
    assert_eq!(pump.offers().await.as_array().unwrap().len(), 1);
    let answer = pump.get(content, &[("range", "bytes=0-9")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(answer.body, server.files["pumps/pump-4.2.bin"][..10]);

    // A procedure starting mid-download stops the file too.
    server.registry.evidence(PUMP_2, &in_procedure);
    assert_eq!(pump.offers().await, json!([]));
    assert_eq!(pump.get(content, &[]).await.status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn status_reports_are_durable_when_answered() {
    let server = start("upd-status", 64 * 1024 * 1024).await;
    let db = server.db.clone();
    let mut pump = server.client(PUMP_1).await;
    // Not offered yet: 404, and nothing stored.
    let answer = pump
        .report("pumps-fw", json!({"state": "downloaded"}))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    assert_eq!(pump.offers().await.as_array().unwrap().len(), 1);
    let answer = pump
        .report("pumps-fw", json!({"state": "downloaded"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"accepted": 1}));
    // A repeat (the agent did not see the answer) is accepted and changes nothing.
    let answer = pump
        .report("pumps-fw", json!({"state": "downloaded"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = pump
        .report("pumps-fw", json!({"state": "installing"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    // Backwards: refused, named.
    let answer = pump
        .report("pumps-fw", json!({"state": "downloaded"}))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.json()["error"], "refused");
    // Values and shapes are checked before the backend is asked.
    let answer = pump.report("pumps-fw", json!({"state": "failed"})).await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.json()["error"], "invalid_value");
    let answer = pump.report("pumps-fw", json!({"state": "exploded"})).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = pump
        .report("pumps-fw", json!({"state": "failed", "reason": "E-VERIFY"}))
        .await;
    assert_eq!(answer.status, StatusCode::OK);

    // The answered state is what a restart finds.
    drop(pump);
    let rollouts = Arc::clone(&server.rollouts);
    let _files = server.stop().await;
    drop(rollouts);
    let reopened = DurableRollouts::open(&db, 0).unwrap();
    let progress = reopened
        .rollouts()
        .get("pumps-fw")
        .unwrap()
        .progress(PUMP_1)
        .unwrap()
        .clone();
    assert_eq!(
        progress.stage,
        Stage::Failed {
            reason: "E-VERIFY".into()
        }
    );
}

#[tokio::test]
async fn downloads_are_throttled_per_device() {
    // 64 KiB/s for one device: after the first second's burst, the remaining bytes of a
    // 300,000-byte file take at least (300,000 - 65,536) / 65,536 ≈ 3.6 s.
    let server = start("upd-throttle", 64 * 1024).await;
    let mut pump = server.client(PUMP_1).await;
    assert_eq!(pump.offers().await.as_array().unwrap().len(), 1);
    let started = Instant::now();
    let answer = pump
        .get("/v1/devices/pump-1/updates/pumps-fw/content", &[])
        .await;
    let elapsed = started.elapsed();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, server.files["pumps/pump-4.2.bin"]);
    assert!(
        elapsed >= Duration::from_secs(3),
        "{elapsed:?}: not throttled"
    );
    server.stop().await;
}
