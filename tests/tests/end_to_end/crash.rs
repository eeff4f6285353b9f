//! Crash: kill -9 the gateway while devices send, restart it, and every message that got
//! an AA reaches the broker (duplicates allowed, no loss), in order per device.

use std::collections::BTreeSet;
use std::time::Duration;

use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::GatewayProcess;
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::Scenario;

const DEVICES: usize = 4;
const PER_DEVICE: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_nothing_acknowledged() {
    let s = Scenario::start("crash").await.unwrap();
    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let addr = s.setup.hl7_addr();

    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(tokio::task::spawn_blocking(move || {
            let eui = format!("AABBCCDDEEFF00{d:02}");
            run_device(addr, PER_DEVICE, Duration::from_secs(120), |seq| {
                let id = format!("crash{d}-{seq}");
                // Pace the devices so that traffic spans both kills.
                std::thread::sleep(Duration::from_millis(1));
                let msg = pcd01_plain(&eui, &id, 90 + u32::try_from(seq % 10).unwrap());
                (id, msg)
            })
        }));
    }

    // Kill twice mid-traffic: once while the broker is live, once while it is frozen so
    // the spool holds a backlog of acknowledged, undelivered records at the moment of death.
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if round == 1 {
            s.broker.freeze().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            devices.iter().any(|d| !d.is_finished()),
            "devices must still be sending at kill {round}"
        );
        gateway.kill9();
        if round == 1 {
            s.broker.thaw().unwrap();
        }
        gateway = GatewayProcess::start(&s.setup).unwrap();
    }

    let mut acked = BTreeSet::new();
    for d in devices {
        acked.extend(d.await.unwrap().unwrap());
    }
    assert_eq!(acked.len(), DEVICES * usize::try_from(PER_DEVICE).unwrap());

    s.assert_all_delivered_in_order(&acked, &gateway.log_text())
        .await;
}

/// SIGTERM (systemd stopping the service) while devices send: the gateway stops
/// accepting, finishes the messages in flight (each gets its ACK only after its commit),
/// exits 0 within the unit's TimeoutStopSec, and after a restart every acknowledged
/// message reaches the broker, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_drains_and_loses_nothing_acknowledged() {
    let s = Scenario::start("sigterm").await.unwrap();
    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let addr = s.setup.hl7_addr();
    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(tokio::task::spawn_blocking(move || {
            let eui = format!("AABBCCDDEEFF01{d:02}");
            run_device(addr, 800, Duration::from_secs(120), |seq| {
                let id = format!("term{d}-{seq}");
                std::thread::sleep(Duration::from_millis(1));
                (id.clone(), pcd01_plain(&eui, &id, 95))
            })
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        devices.iter().any(|d| !d.is_finished()),
        "devices must still be sending"
    );
    // The unit's TimeoutStopSec is 30 s; the drain must fit well inside it.
    let clean = gateway.terminate(Duration::from_secs(30)).unwrap();
    assert!(clean, "SIGTERM must end in exit 0:\n{}", gateway.log_text());
    let stopped_log = gateway.log_text();
    gateway = GatewayProcess::start(&s.setup).unwrap();

    let mut acked = BTreeSet::new();
    for d in devices {
        acked.extend(d.await.unwrap().unwrap());
    }
    assert_eq!(acked.len(), DEVICES * 800);
    s.assert_all_delivered_in_order(
        &acked,
        &format!("{stopped_log}\n--- restarted ---\n{}", gateway.log_text()),
    )
    .await;
}
