//! A corrupt spool file does not stop the gateway: it is moved aside, a new spool is
//! started, the gateway serves devices, and the cloud receives an alert saying so.

use std::time::Duration;

use wardgate_proto::RecordBody;
use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::GatewayProcess;
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::{records, Scenario, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_spool_is_quarantined_and_reported() {
    let s = Scenario::start("corrupt").await.unwrap();
    let data = s.setup.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let garbage: Vec<u8> = (0u32..64 * 1024)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap())
        .collect();
    std::fs::write(data.join("spool.db"), &garbage).unwrap();

    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let acked = tokio::task::spawn_blocking({
        let addr = s.setup.hl7_addr();
        move || {
            run_device(addr, 5, Duration::from_secs(30), |seq| {
                let id = format!("corrupt-{seq}");
                (id.clone(), pcd01_plain("00AA00AA00AA00AA", &id, 97))
            })
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(acked.len(), 5);

    s.cloud
        .wait_until(PATIENCE, "the quarantine alert and the records", |m| {
            let r = records(m);
            let alert = r.iter().any(
                |r| matches!(&r.body, RecordBody::GatewayAlert(a) if a.code == "spool.quarantined"),
            );
            alert
                && r.iter()
                    .filter(|r| matches!(r.body, RecordBody::Observations(_)))
                    .count()
                    >= 5
        })
        .await
        .unwrap();

    let quarantined: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(
        quarantined.len(),
        1,
        "the corrupt file is kept aside for analysis, not deleted"
    );
    assert_eq!(std::fs::read(quarantined[0].path()).unwrap(), garbage);
    assert!(
        gateway.log_text().contains("spool.quarantined"),
        "{}",
        gateway.log_text()
    );
    assert!(gateway.terminate(Duration::from_secs(20)).unwrap());
}
