//! Outage: the broker goes away during traffic and comes back; the gateway keeps
//! acknowledging devices into its spool meanwhile, and everything acknowledged arrives,
//! in order per device.

use std::collections::BTreeSet;
use std::time::Duration;

use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::GatewayProcess;
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::Scenario;

const DEVICES: usize = 3;
const PER_DEVICE: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delivers_everything_in_order() {
    // The cloud's session survives the broker restart (persistent session, broker
    // persistence), as a real cloud consumer's would; otherwise records the gateway
    // delivers before the consumer resubscribes would be lost by the test harness itself.
    let mut s = Scenario::start_with_durable_cloud("outage").await.unwrap();
    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let addr = s.setup.hl7_addr();

    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(tokio::task::spawn_blocking(move || {
            let eui = format!("0A0B0C0D0E0F00{d:02}");
            run_device(addr, PER_DEVICE, Duration::from_secs(120), |seq| {
                let id = format!("outage{d}-{seq}");
                // Pace the devices so that traffic spans the outage.
                std::thread::sleep(Duration::from_millis(2));
                (id.clone(), pcd01_plain(&eui, &id, 95))
            })
        }));
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    s.broker.stop().unwrap();
    // While the broker is down, a device is still acknowledged: into the spool.
    let during = tokio::task::spawn_blocking(move || {
        run_device(addr, 50, Duration::from_secs(30), |seq| {
            let id = format!("outagelate-{seq}");
            (id.clone(), pcd01_plain("0A0B0C0D0E0F0099", &id, 96))
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(during.len(), 50, "acknowledged while the broker was down");
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.broker.restart().unwrap();

    let mut acked: BTreeSet<String> = during.into_iter().collect();
    for d in devices {
        acked.extend(d.await.unwrap().unwrap());
    }
    assert_eq!(
        acked.len(),
        50 + DEVICES * usize::try_from(PER_DEVICE).unwrap()
    );

    s.assert_all_delivered_in_order(&acked, &gateway.log_text())
        .await;
    assert!(gateway.terminate(Duration::from_secs(20)).unwrap());
}
