//! `wardgate status` against the real gateway: the `[status]` endpoint enabled in the
//! config, the CLI reading address and token file from the same config, the figures
//! following a broker outage (uplink down, records waiting in the spool).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::{binary, free_port, GatewayProcess};
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::{Scenario, GATEWAY_ID, PATIENCE};

const TOKEN: &str = "e2e0c1d2b3a4958677869a0b1c2d3e4f";

fn status(config: &Path, json: bool) -> Output {
    let mut cmd = Command::new(binary().unwrap());
    cmd.arg("status").arg("--config").arg(config);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// Polls `wardgate status --json` until `done` holds for the parsed status.
async fn wait_for_status(
    config: &Path,
    what: &str,
    gateway: &GatewayProcess,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = status(config, true);
        let last = if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "--json is not JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            if done(&v) {
                return v;
            }
            v.to_string()
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}; last answer: {last}\ngateway log:\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_cli_shows_spool_depth_and_uplink_state() {
    let mut s = Scenario::start("status").await.unwrap();
    let token_file = s.work.path().join("status.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.setup.extra_sections = format!(
        "[status]\nlisten = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\n",
        free_port().unwrap(),
        token_file.display()
    );
    let gateway = GatewayProcess::start(&s.setup).unwrap();
    let config = s.setup.dir.join("wardgate.toml");

    let up = wait_for_status(&config, "the uplink to connect", &gateway, |v| {
        v["uplink"]["connected"] == true
    })
    .await;
    assert_eq!(up["gateway"]["id"], GATEWAY_ID);
    let text = String::from_utf8(status(&config, false).stdout).unwrap();
    assert!(text.contains("Uplink   connected since"), "{text}");

    // The cloud goes away; devices are still acknowledged, into the spool.
    s.broker.stop().unwrap();
    wait_for_status(&config, "the uplink to notice the outage", &gateway, |v| {
        v["uplink"]["connected"] == false
    })
    .await;
    let addr = s.setup.hl7_addr();
    let acked = tokio::task::spawn_blocking(move || {
        run_device(addr, 5, Duration::from_secs(30), |seq| {
            let id = format!("status-{seq}");
            (id.clone(), pcd01_plain("0A0B0C0D0E0F0042", &id, 97))
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(acked.len(), 5);
    let waiting = wait_for_status(&config, "5 records in the spool", &gateway, |v| {
        v["spool"]["records"].as_u64().is_some_and(|n| n >= 5)
    })
    .await;
    assert!(
        waiting["spool"]["oldest_record_age_secs"].is_u64(),
        "{waiting:#}"
    );

    let out = status(&config, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let depth: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Spool    "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no spool depth in:\n{text}"));
    assert!(depth >= 5, "{text}");
    assert!(text.contains("Uplink   disconnected since"), "{text}");
    assert!(!text.contains(TOKEN));

    // A wrong token is refused, and the refusal does not print the token.
    let wrong = "f".repeat(40);
    std::fs::write(&token_file, &wrong).unwrap();
    let out = status(&config, false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused the token"), "{err}");
    assert!(!err.contains(&wrong) && !err.contains(TOKEN), "{err}");
}
