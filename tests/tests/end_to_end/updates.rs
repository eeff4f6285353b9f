//! Cybersecurity updates with the real binary: a TUF repository signed in the test and
//! served over `file://`, the cloud's assignment arriving through the twin's retained
//! desired document on a real mosquitto, and device agents pulling over the agent API
//! (bearer tokens). What is checked: offers reach only the assignment's group, one wave
//! at a time and never during a procedure; the file is served resumably and
//! byte-for-byte; a failure over the threshold halts, and the cloud's cancellation is
//! taken once however often its retained document is redelivered; a tampered target is
//! never staged or offered; malformed and unsigned assignments are refused into an
//! intact audit chain; a restart keeps every device's progress.
//!
//! Tampering with the audit log itself is covered at process level by
//! `device_plane::desired_state_is_allow_listed_and_every_decision_is_audited`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wardgate_proto::{GatewayAlert, RecordBody, UpdateRolloutReport};
use wardgate_tests::agent_client::{self, Answer, RawAnswer};
use wardgate_tests::gateway::{audit_verify, free_port, GatewayProcess};
use wardgate_tests::scenario::{records, twin_reports, Scenario, GATEWAY_ID, PATIENCE};
use wardgate_tests::subscriber::Received;
use wardgate_tests::tuf_repo::{Publish, Repo};

const GROUP_A: &str = "ward-a";
const GROUP_B: &str = "ward-b";
const PUMP_KIND: &str = "infusion-pump";
const PUMP_TARGET: &str = "infusion/pump-4.2.1.bin";
const ASSIGNMENT: &str = "pump-fw-421";

/// A small firmware image with no repeating pattern a wrong offset could hide in.
fn image(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An assignment as the cloud writes it under `updates.assignments.<id>` (without `id`).
fn assignment(target: &str, group: &str, wave_size: u32, failure_threshold: u32) -> Value {
    json!({
        "target": target,
        "devices": {"group": group},
        "policy": {"required": true, "wave_size": wave_size, "failure_threshold": failure_threshold}
    })
}

/// One device's agent, speaking to the agent API with its bearer token.
#[derive(Clone)]
struct Agent {
    id: &'static str,
    token: String,
    api: SocketAddr,
    ca: PathBuf,
}

impl Agent {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        agent_client::request(self.api, &self.ca, &self.token, method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.id))
    }

    /// Waits until the agent API answers (it starts after the MLLP listener the
    /// harness waits for).
    async fn wait_for_api(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer =
                agent_client::request(self.api, &self.ca, &self.token, "GET", "/v1/identity", None)
                    .await;
            if answer.is_ok_and(|a| a.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "the agent API never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_state(&self, state: &str) {
        let path = format!("/v1/devices/{}/state", self.id);
        let answer = self
            .call(
                "POST",
                &path,
                Some(json!({"state": state, "reason": "e2e"})),
            )
            .await;
        assert_eq!(answer.status, 200, "{}: state {state}: {answer:?}", self.id);
    }

    /// The offers listed to the device now.
    async fn offers(&self) -> Vec<Value> {
        let answer = self
            .call("GET", &format!("/v1/devices/{}/updates", self.id), None)
            .await;
        assert_eq!(answer.status, 200, "{}: {answer:?}", self.id);
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(body["device_id"], self.id);
        body["offers"].as_array().unwrap().clone()
    }

    async fn offered_ids(&self) -> Vec<String> {
        self.offers()
            .await
            .iter()
            .map(|o| o["assignment_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls the offers until `assignment` is listed; returns that offer.
    async fn wait_for_offer(&self, assignment: &str, gateway: &GatewayProcess) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(offer) = self
                .offers()
                .await
                .into_iter()
                .find(|o| o["assignment_id"] == assignment)
            {
                return offer;
            }
            assert!(
                Instant::now() < deadline,
                "{} never offered {assignment}:\n{}",
                self.id,
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get_bytes(&self, path: &str, headers: &[(&str, &str)]) -> RawAnswer {
        agent_client::get_bytes(self.api, &self.ca, &self.token, path, headers)
            .await
            .unwrap_or_else(|e| panic!("{} GET {path}: {e}", self.id))
    }

    async fn content(&self, assignment: &str, headers: &[(&str, &str)]) -> RawAnswer {
        self.get_bytes(
            &format!("/v1/devices/{}/updates/{assignment}/content", self.id),
            headers,
        )
        .await
    }

    async fn report(&self, assignment: &str, state: &str, reason: Option<&str>) -> Answer {
        let mut body = json!({ "state": state });
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        self.call(
            "POST",
            &format!("/v1/devices/{}/updates/{assignment}/status", self.id),
            Some(body),
        )
        .await
    }

    async fn report_ok(&self, assignment: &str, state: &str) {
        let answer = self.report(assignment, state, None).await;
        assert_eq!(answer.status, 200, "{} {state}: {answer:?}", self.id);
    }
}

/// A scenario whose gateway has `[agent_api]`, `[updates]` on `repo` and the given
/// `(device id, group)` pumps, each with its own token.
struct Site {
    s: Scenario,
    agents: BTreeMap<&'static str, Agent>,
}

impl Site {
    async fn new(name: &str, devices: &[(&'static str, &'static str)], repo: &Repo) -> Site {
        let mut s = Scenario::start(name).await.unwrap();
        let port = free_port().unwrap();
        let api: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = s.pki.server().clone();
        let mut sections = format!(
            r#"
[agent_api]
listen = "{api}"
server_cert = "{cert}"
server_key = "{key}"

[updates]
staging_budget_bytes = 67108864
refresh_interval_secs = 60

[updates.repository]
metadata_url = "{metadata}"
targets_url = "{targets}"
trusted_root = "{root}"
"#,
            cert = server.cert.display(),
            key = server.key.display(),
            metadata = repo.metadata_url(),
            targets = repo.targets_url(),
            root = repo.pinned_root().display(),
        );
        let mut agents = BTreeMap::new();
        for (i, (id, group)) in devices.iter().enumerate() {
            let token = format!("{id}-{i}-5f0c9a7d3e21b8460f1e2d3c4b5a6978");
            let token_file = s.work.path().join(format!("{id}.token"));
            std::fs::write(&token_file, &token).unwrap();
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
            sections.push_str(&format!(
                r#"
[[device]]
id = "{id}"
kind = "{PUMP_KIND}"
group = "{group}"

[device.agent]
auth = "token"
token_file = "{token_file}"
"#,
                token_file = token_file.display(),
            ));
            agents.insert(
                *id,
                Agent {
                    id,
                    token,
                    api,
                    ca: s.pki.ca_file().to_path_buf(),
                },
            );
        }
        s.setup.extra_sections = sections;
        Site { s, agents }
    }

    fn agent(&self, id: &str) -> &Agent {
        &self.agents[id]
    }

    /// Starts the gateway and waits for its agent API; every device reports `online`.
    async fn start_gateway(&self) -> GatewayProcess {
        let gateway = GatewayProcess::start(&self.s.setup).unwrap();
        let first = self.agents.values().next().unwrap();
        first.wait_for_api().await;
        for agent in self.agents.values() {
            agent.set_state("online").await;
        }
        gateway
    }

    /// The cloud's desired document with these `updates.assignments`, retained.
    async fn assign(&self, assignments: Value) {
        let desired = json!({ "updates": { "assignments": assignments } });
        self.s
            .publish_retained(
                &format!("wardgate/{GATEWAY_ID}/twin/desired"),
                desired.to_string().into_bytes(),
            )
            .await
            .unwrap();
    }

    fn audit_log(&self) -> PathBuf {
        self.s.setup.data_dir().join("audit.log")
    }
}

async fn wait_for_log(gateway: &GatewayProcess, needle: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !gateway.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged:\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rollout_records(messages: &[Received], id: &str) -> Vec<UpdateRolloutReport> {
    records(messages)
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::UpdateRollout(u) if u.assignment_id == id => Some(u),
            _ => None,
        })
        .collect()
}

fn alerts(messages: &[Received], code: &str) -> Vec<GatewayAlert> {
    records(messages)
        .into_iter()
        .filter_map(|r| match r.body {
            RecordBody::GatewayAlert(a) if a.code == code => Some(a),
            _ => None,
        })
        .collect()
}

/// The audit entries (parsed lines) of `kind` about `subject`.
fn audit_entries(text: &str, kind: &str, subject: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == kind && e["subject"] == subject)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_reaches_only_its_group_one_wave_at_a_time_and_never_during_a_procedure() {
    let pump_image = image(150_000);
    let mut repo = Repo::new(1, 1).await;
    repo.add_target(PUMP_TARGET, &pump_image, Some(PUMP_KIND));
    let published = repo.publish(Publish::all(1)).await;
    let site = Site::new(
        "updates-rollout",
        &[
            ("pump-1", GROUP_A),
            ("pump-2", GROUP_A),
            ("pump-3", GROUP_B),
        ],
        &repo,
    )
    .await;
    let gateway = site.start_gateway().await;
    let (pump1, pump2, pump3) = (
        site.agent("pump-1"),
        site.agent("pump-2"),
        site.agent("pump-3"),
    );

    site.assign(json!({ ASSIGNMENT: assignment(PUMP_TARGET, GROUP_A, 1, 0) }))
        .await;
    wait_for_log(&gateway, "update target verified and staged").await;

    // Group B asks first, while the wave still has room: nothing for it, and its
    // guesses at the assignment's URLs find nothing either.
    assert_eq!(pump3.offers().await, Vec::<Value>::new());
    assert_eq!(pump3.content(ASSIGNMENT, &[]).await.status, 404);
    assert_eq!(
        pump3.report(ASSIGNMENT, "installed", None).await.status,
        404
    );

    let offer = pump1.wait_for_offer(ASSIGNMENT, &gateway).await;
    let sha = sha256_hex(&pump_image);
    assert_eq!(offer["target"], PUMP_TARGET, "{offer}");
    assert_eq!(offer["length"], pump_image.len(), "{offer}");
    assert_eq!(offer["sha256"], sha.as_str(), "{offer}");
    assert_eq!(offer["required"], true, "{offer}");
    // The first wave (one device) is taken: the other pump of the group waits.
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());

    // The device checks the signed metadata itself: the exact bytes the gateway verified.
    let targets_url = offer["metadata_urls"]["targets"].as_str().unwrap();
    let metadata = pump1.get_bytes(targets_url, &[]).await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.body, published.targets);

    // An interrupted download: the first part, then the rest against the same ETag.
    let first = pump1
        .content(ASSIGNMENT, &[("Range", "bytes=0-49999")])
        .await;
    assert_eq!(first.status, 206, "{:?}", first.headers);
    assert_eq!(
        first.header("content-range"),
        Some(format!("bytes 0-49999/{}", pump_image.len()).as_str())
    );
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    let rest = pump1
        .content(
            ASSIGNMENT,
            &[("Range", "bytes=50000-"), ("If-Range", etag.as_str())],
        )
        .await;
    assert_eq!(rest.status, 206, "{:?}", rest.headers);
    let mut downloaded = first.body.clone();
    downloaded.extend_from_slice(&rest.body);
    assert_eq!(sha256_hex(&downloaded), sha);
    assert!(downloaded == pump_image, "the bytes differ from the target");

    pump1.report_ok(ASSIGNMENT, "downloaded").await;
    pump1.report_ok(ASSIGNMENT, "installing").await;
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    pump1.report_ok(ASSIGNMENT, "installed").await;

    // The next wave is open, but not to a device treating a patient.
    pump2.set_state("in-procedure").await;
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    pump2.set_state("online").await;
    assert_eq!(pump2.offered_ids().await, vec![ASSIGNMENT.to_owned()]);
    assert_eq!(pump3.offered_ids().await, Vec::<String>::new());

    // The cloud sees the rollout as records and in the twin.
    site.s
        .cloud
        .wait_until(
            PATIENCE,
            "an update_rollout record with pump-1 installed",
            |m| {
                rollout_records(m, ASSIGNMENT)
                    .iter()
                    .any(|r| r.installed == 1 && r.members == 2 && r.waves_opened >= 2)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    site.s
        .cloud
        .wait_until(PATIENCE, "the twin reporting pump-1 installed", |m| {
            twin_reports(m).last().is_some_and(|d| {
                d.pointer("/devices/pump-1/update/stage") == Some(&json!("installed"))
                    && d.pointer(&format!("/updates/rollouts/{ASSIGNMENT}/installed"))
                        == Some(&json!(1))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let twin = twin_reports(&site.s.cloud.messages()).pop().unwrap();
    let rollout = &twin["updates"]["rollouts"][ASSIGNMENT];
    assert_eq!(rollout["target"], PUMP_TARGET, "{twin}");
    assert_eq!(rollout["members"], 2, "{twin}");
    assert!(
        twin.pointer("/devices/pump-3/update").is_none(),
        "group B has no update: {twin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_over_the_threshold_halts_the_rollout() {
    let pump_image = image(20_000);
    let mut repo = Repo::new(1, 1).await;
    repo.add_target(PUMP_TARGET, &pump_image, Some(PUMP_KIND));
    repo.publish(Publish::all(1)).await;
    let site = Site::new(
        "updates-halt",
        &[("pump-1", GROUP_A), ("pump-2", GROUP_A)],
        &repo,
    )
    .await;
    let mut gateway = site.start_gateway().await;
    let (pump1, pump2) = (site.agent("pump-1"), site.agent("pump-2"));
    site.assign(json!({ ASSIGNMENT: assignment(PUMP_TARGET, GROUP_A, 1, 0) }))
        .await;
    wait_for_log(&gateway, "update target verified and staged").await;

    pump1.wait_for_offer(ASSIGNMENT, &gateway).await;
    let full = pump1.content(ASSIGNMENT, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body, pump_image);
    let failed = pump1
        .report(ASSIGNMENT, "failed", Some("flash-verify-failed"))
        .await;
    assert_eq!(failed.status, 200, "{failed:?}");

    wait_for_log(&gateway, "updates.halted").await;
    // pump-1 finished (failed counts as finished): without the halt the next wave
    // would open to pump-2 now.
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    site.s
        .cloud
        .wait_until(
            PATIENCE,
            "the halt alert and a halted rollout record",
            |m| {
                !alerts(m, "updates.halted").is_empty()
                    && rollout_records(m, ASSIGNMENT)
                        .iter()
                        .any(|r| r.failed == 1 && r.halted.is_some() && r.halted_at_ms.is_some())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let alert = alerts(&site.s.cloud.messages(), "updates.halted").remove(0);
    assert!(alert.message.contains(ASSIGNMENT), "{alert:?}");
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    assert_eq!(pump2.content(ASSIGNMENT, &[]).await.status, 404);

    // The cloud withdraws the halted assignment with an explicit `null` (retained). A
    // malformed probe after it in the same document (keys are taken in order) shows
    // when the gateway has processed the document: its refusal is logged.
    site.assign(json!({
        ASSIGNMENT: null,
        "zz-probe": assignment(PUMP_TARGET, GROUP_A, 0, 0),
    }))
    .await;
    wait_for_log(&gateway, "update assignment zz-probe refused").await;
    wait_for_log(
        &gateway,
        "staged update no assignment needs any more removed",
    )
    .await;
    let staged = site.s.setup.data_dir().join("updates/staged/targets");
    assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 0);
    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );
    // A restart redelivers the retained document: the cancellation is not taken (nor
    // audited) a second time.
    let mut gateway = site.start_gateway().await;
    wait_for_log(&gateway, "update assignment zz-probe refused").await;
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );

    let audit = std::fs::read_to_string(site.audit_log()).unwrap();
    assert_eq!(
        audit_entries(&audit, "updates.halted", ASSIGNMENT).len(),
        1,
        "{audit}"
    );
    assert_eq!(
        audit_entries(&audit, "updates.assignment.cancelled", ASSIGNMENT).len(),
        1,
        "one cancellation, audited once:\n{audit}"
    );
    let reports = audit_entries(&audit, "updates.report", &format!("{ASSIGNMENT}/pump-1"));
    assert!(
        reports
            .iter()
            .any(|e| e["detail"] == "failed (flash-verify-failed)"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_malformed_and_unsigned_assignments_are_refused_and_audited() {
    const MONITOR_TARGET: &str = "monitor/fw-9.bin";
    const UNSIGNED_TARGET: &str = "infusion/unsigned.bin";
    let mut repo = Repo::new(1, 1).await;
    let monitor_image = image(4096);
    repo.add_target(MONITOR_TARGET, &monitor_image, None);
    repo.publish(Publish::all(1)).await;
    // After signing: the same length, other bytes (a length change would be another
    // attack class); and a file the metadata does not list at all.
    let mut tampered = monitor_image.clone();
    tampered[100] ^= 0xff;
    repo.tamper_target(MONITOR_TARGET, &tampered);
    let unsigned = repo.targets_dir().join(UNSIGNED_TARGET);
    std::fs::create_dir_all(unsigned.parent().unwrap()).unwrap();
    std::fs::write(&unsigned, b"not signed by anyone").unwrap();

    let site = Site::new("updates-refused", &[("pump-1", GROUP_A)], &repo).await;
    let mut gateway = site.start_gateway().await;
    let pump1 = site.agent("pump-1");
    site.assign(json!({
        "fw9-tampered": assignment(MONITOR_TARGET, GROUP_A, 5, 0),
        "bad-policy": assignment(MONITOR_TARGET, GROUP_A, 0, 0),
        "ghost": assignment(UNSIGNED_TARGET, GROUP_A, 5, 0),
    }))
    .await;

    wait_for_log(&gateway, "updates.verification_failed").await;
    wait_for_log(&gateway, "update assignment bad-policy refused").await;
    wait_for_log(&gateway, "update assignment ghost refused").await;
    let log = gateway.log_text();
    assert!(log.contains("tampered_target"), "{log}");
    assert!(
        !log.contains("update target verified and staged"),
        "something was staged:\n{log}"
    );
    site.s
        .cloud
        .wait_until(PATIENCE, "the verification alert naming the attack", |m| {
            alerts(m, "updates.verification_failed").iter().any(|a| {
                a.message.contains("tampered_target") && a.message.contains(MONITOR_TARGET)
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));

    // Nothing is offered or served, whatever the device asks for.
    assert_eq!(pump1.offers().await, Vec::<Value>::new());
    for id in ["fw9-tampered", "bad-policy", "ghost"] {
        assert_eq!(pump1.content(id, &[]).await.status, 404, "{id}");
    }
    let staged = site.s.setup.data_dir().join("updates/staged");
    let staged_targets: Vec<_> = std::fs::read_dir(staged.join("targets"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        staged_targets.is_empty(),
        "staged despite failed verification: {staged_targets:?}"
    );
    // Only the verified metadata (for devices that verify themselves) is there.
    assert!(staged.join("metadata/targets.json").exists());

    // The accepted-but-unverifiable assignment is reported; the refused ones are not.
    site.s
        .cloud
        .wait_until(PATIENCE, "the twin listing fw9-tampered", |m| {
            twin_reports(m)
                .last()
                .is_some_and(|d| d.pointer("/updates/rollouts/fw9-tampered").is_some())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let twin = twin_reports(&site.s.cloud.messages()).pop().unwrap();
    let rollouts = twin["updates"]["rollouts"].as_object().unwrap();
    assert_eq!(
        rollouts.keys().collect::<Vec<_>>(),
        vec!["fw9-tampered"],
        "{twin}"
    );
    assert_eq!(twin["updates"]["rollouts"]["fw9-tampered"]["installed"], 0);

    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );
    let audit = std::fs::read_to_string(site.audit_log()).unwrap();
    assert_eq!(
        audit_entries(&audit, "updates.assignment.accepted", "fw9-tampered").len(),
        1,
        "{audit}"
    );
    let failed = audit_entries(&audit, "updates.verification.failed", MONITOR_TARGET);
    assert!(
        failed
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("tampered_target")),
        "{audit}"
    );
    let bad = audit_entries(&audit, "updates.assignment.refused", "bad-policy");
    assert_eq!(bad.len(), 1, "{audit}");
    assert!(
        bad[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("policy.wave_size"),
        "the refusal names the field: {audit}"
    );
    let ghost = audit_entries(&audit, "updates.assignment.refused", "ghost");
    assert_eq!(ghost.len(), 1, "{audit}");
    assert!(
        ghost[0]["detail"].as_str().unwrap().contains("not listed"),
        "{audit}"
    );
    let (intact, report) = audit_verify(&site.audit_log()).unwrap();
    assert!(intact, "{report}");
    assert!(report.contains("chain intact"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_keeps_every_devices_progress() {
    let pump_image = image(30_000);
    let mut repo = Repo::new(1, 1).await;
    repo.add_target(PUMP_TARGET, &pump_image, Some(PUMP_KIND));
    repo.publish(Publish::all(1)).await;
    let site = Site::new(
        "updates-restart",
        &[("pump-1", GROUP_A), ("pump-2", GROUP_A)],
        &repo,
    )
    .await;
    let mut gateway = site.start_gateway().await;
    let (pump1, pump2) = (site.agent("pump-1"), site.agent("pump-2"));
    site.assign(json!({ ASSIGNMENT: assignment(PUMP_TARGET, GROUP_A, 1, 0) }))
        .await;
    wait_for_log(&gateway, "update target verified and staged").await;
    pump1.wait_for_offer(ASSIGNMENT, &gateway).await;
    assert_eq!(pump1.content(ASSIGNMENT, &[]).await.body, pump_image);
    pump1.report_ok(ASSIGNMENT, "downloaded").await;
    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );

    let before_restart = site.s.cloud.messages().len();
    let mut gateway = site.start_gateway().await;
    // The retained desired document is delivered again on connect: wait until the
    // updates manager has seen it (the twin reports the rollout from this process).
    site.s
        .cloud
        .wait_until(
            PATIENCE,
            "the restarted gateway's twin with the rollout",
            |m| {
                twin_reports(m.get(before_restart..).unwrap_or_default())
                    .iter()
                    .any(|d| {
                        d.pointer(&format!("/updates/rollouts/{ASSIGNMENT}"))
                            .is_some()
                    })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    let twin = twin_reports(&site.s.cloud.messages_since(before_restart))
        .pop()
        .unwrap();
    assert_eq!(
        twin.pointer("/devices/pump-1/update/stage"),
        Some(&json!("downloaded")),
        "{twin}"
    );

    // pump-1 still holds the only admission of the first wave: pump-2, asking first,
    // gets nothing; pump-1 is still offered its update and can still fetch the file.
    assert_eq!(pump2.offered_ids().await, Vec::<String>::new());
    assert_eq!(pump1.offered_ids().await, vec![ASSIGNMENT.to_owned()]);
    let tail = pump1.content(ASSIGNMENT, &[("Range", "bytes=-1000")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, pump_image[pump_image.len() - 1000..]);
    // The staged file survived the restart: no second download from the repository.
    assert!(
        !gateway
            .log_text()
            .contains("update target verified and staged"),
        "{}",
        gateway.log_text()
    );

    // A repeat of the last report is accepted without a change; then it continues.
    pump1.report_ok(ASSIGNMENT, "downloaded").await;
    pump1.report_ok(ASSIGNMENT, "installing").await;
    pump1.report_ok(ASSIGNMENT, "installed").await;
    assert_eq!(pump2.offered_ids().await, vec![ASSIGNMENT.to_owned()]);

    site.s
        .cloud
        .wait_until(
            PATIENCE,
            "a record with pump-1 installed after the restart",
            |m| {
                rollout_records(m.get(before_restart..).unwrap_or_default(), ASSIGNMENT)
                    .iter()
                    .any(|r| r.installed == 1)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log_text()));
    // Every record sent after the restart (the old process's last one may be among
    // them: spooled, sent by the new one) continues the stored rollout: one device past
    // its download, the other not yet working on it, nobody counted twice.
    let after = rollout_records(&site.s.cloud.messages_since(before_restart), ASSIGNMENT);
    for r in &after {
        assert_eq!(
            (
                r.members,
                r.downloaded + r.installing + r.installed,
                r.pending + r.offered,
                r.downloading + r.failed + r.deferred
            ),
            (2, 1, 1, 0),
            "{after:?}"
        );
    }

    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "{}",
        gateway.log_text()
    );
    let audit = std::fs::read_to_string(site.audit_log()).unwrap();
    assert_eq!(
        audit_entries(&audit, "updates.assignment.accepted", ASSIGNMENT).len(),
        1,
        "the assignment was taken twice:\n{audit}"
    );
    let reports: Vec<Value> =
        audit_entries(&audit, "updates.report", &format!("{ASSIGNMENT}/pump-1"))
            .into_iter()
            .map(|e| e["detail"].clone())
            .collect();
    assert_eq!(
        reports,
        vec![json!("downloaded"), json!("installing"), json!("installed")],
        "{audit}"
    );
}
