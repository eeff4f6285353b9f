//! PHI: identifiers planted in every Safe Harbor field never reach the broker, the spool
//! file, or the gateway's log; observations still arrive, linked by pseudonym.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use wardgate_proto::{ObservationValue, Priority, RecordBody};
use wardgate_tests::fixtures::{pcd01_with_phi, pcd04_with_phi, Planted};
use wardgate_tests::gateway::GatewayProcess;
use wardgate_tests::mllp_client::run_device;
use wardgate_tests::scenario::{received_control_ids, records, Scenario, PATIENCE};

const PER_DEVICE: u64 = 20;

fn files_containing(dir: &std::path::Path, needles: &[String]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    hits.push(format!("{} contains {n:?}", path.display()));
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_identifiers_reach_neither_cloud_nor_disk() {
    let s = Scenario::start("phi").await.unwrap();
    let mut gateway = GatewayProcess::start(&s.setup).unwrap();
    let addr = s.setup.hl7_addr();

    let patients: Vec<Planted> = (0..3).map(|i| Planted::patient(100 + i)).collect();
    let mut devices = Vec::new();
    for (d, p) in patients.iter().cloned().enumerate() {
        devices.push(tokio::task::spawn_blocking(move || {
            let eui = format!("00112233445566{d:02}");
            run_device(addr, PER_DEVICE, PATIENCE, |seq| {
                let id = format!("dev{d}-{seq}");
                let msg = if seq % 5 == 4 {
                    pcd04_with_phi(&eui, &id, &p)
                } else {
                    pcd01_with_phi(&eui, &id, &p, 90 + u32::try_from(seq % 10).unwrap())
                };
                (id, msg)
            })
        }));
    }
    let mut acked = BTreeSet::new();
    for d in devices {
        acked.extend(d.await.unwrap().unwrap());
    }
    assert_eq!(acked.len(), 3 * usize::try_from(PER_DEVICE).unwrap());

    s.cloud
        .wait_until(PATIENCE, "every acknowledged message at the broker", |m| {
            received_control_ids(m).is_superset(&acked)
        })
        .await
        .unwrap();

    let planted: Vec<String> = patients.iter().flat_map(Planted::all).collect();
    let messages = s.cloud.messages();
    for m in &messages {
        for p in &planted {
            assert!(
                !m.payload.windows(p.len()).any(|w| w == p.as_bytes()),
                "planted identifier {p:?} reached the broker on {}",
                m.topic
            );
        }
    }

    // Observations arrive with their values; each patient has one stable pseudonym,
    // distinct from the others'; alarms go to the alarm topic.
    let mut pseudonyms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut alarms = 0;
    for r in records(&messages) {
        match &r.body {
            RecordBody::Observations(o) => {
                let device = o.device.eui64.clone().unwrap();
                let spo2 = o.groups[0]
                    .observations
                    .iter()
                    .find(|x| x.code.text == "MDC_PULS_OXIM_SAT_O2")
                    .expect("SpO2 row kept");
                assert!(
                    matches!(&spo2.value, ObservationValue::Numeric(v) if v.parse::<u32>().is_ok())
                );
                let note = o.groups[0]
                    .observations
                    .iter()
                    .find(|x| x.code.text == "MDC_NOTE")
                    .unwrap();
                assert_eq!(
                    note.value,
                    ObservationValue::Withheld,
                    "free text must be withheld"
                );
                pseudonyms
                    .entry(device)
                    .or_default()
                    .insert(o.patient.clone().unwrap().0);
            }
            RecordBody::Alarm(a) => {
                alarms += 1;
                assert_eq!(r.priority, Priority::Alarm);
                assert!(a.patient.is_some());
            }
            _ => {}
        }
    }
    assert!(alarms >= 3 * 4, "alarms received: {alarms}");
    assert!(
        messages
            .iter()
            .any(|m| m.topic == "wardgate/gw-e2e/records/alarm"),
        "alarm topic used"
    );
    let distinct: BTreeSet<&String> = pseudonyms.values().flatten().collect();
    assert_eq!(pseudonyms.len(), 3);
    assert!(
        pseudonyms.values().all(|p| p.len() == 1),
        "one pseudonym per patient: {pseudonyms:?}"
    );
    assert_eq!(distinct.len(), 3, "patients must not share a pseudonym");

    // Nothing planted on disk: spool, WAL, key, while running and after a clean stop.
    let data = s.setup.data_dir();
    assert_eq!(files_containing(&data, &planted), Vec::<String>::new());
    assert!(
        gateway.terminate(Duration::from_secs(20)).unwrap(),
        "clean exit on SIGTERM"
    );
    assert_eq!(files_containing(&data, &planted), Vec::<String>::new());
    let log = gateway.log_text();
    for p in &planted {
        assert!(!log.contains(p.as_str()), "{p:?} in the gateway log");
    }
}
