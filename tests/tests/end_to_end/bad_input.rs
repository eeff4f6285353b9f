//! Bad input over real TCP against the real binary: each gets the right answer or a
//! closed connection, and the listener keeps serving a well-behaved device throughout.

use std::time::Duration;

use wardgate_tests::fixtures::pcd01_plain;
use wardgate_tests::gateway::GatewayProcess;
use wardgate_tests::mllp_client::{ack_code, segment_field, MllpClient, CR, EB, SB};
use wardgate_tests::scenario::Scenario;

fn good_device_still_served(addr: std::net::SocketAddr, n: u32) {
    let mut c = MllpClient::connect(addr).unwrap();
    let reply = c
        .exchange(&pcd01_plain("0011223344556677", &format!("good-{n}"), 97))
        .unwrap();
    assert_eq!(ack_code(&reply), "CA", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_others_are_served() {
    let mut s = Scenario::start("badinput").await.unwrap();
    s.setup.hl7_extra = "max_message_bytes = 4096\nidle_timeout_secs = 2\n".to_owned();
    let _gateway = GatewayProcess::start(&s.setup).unwrap();
    let addr = s.setup.hl7_addr();
    good_device_still_served(addr, 0);

    // A malformed segment: OBX-2 says numeric, OBX-5 is not a number → AE with ERR.
    let mut c = MllpClient::connect(addr).unwrap();
    let msg = pcd01_plain("0011223344556677", "bad-1", 97).replace("|97|", "|ninety|");
    let msg = msg.replace("|AL|NE|", "|||"); // original mode: AE, not CE
    let reply = c.exchange(&msg).unwrap();
    assert_eq!(ack_code(&reply), "AE", "{reply}");
    assert!(
        segment_field(&reply, "ERR", 2).starts_with("OBX"),
        "ERR names the segment: {reply}"
    );
    good_device_still_served(addr, 1);

    // An unsupported message type → AR.
    let adt = "MSH|^~\\&|ADT|H|||20250101||ADT^A01^ADT_A01|adt-1|P|2.6\rPID|||MRN9^^^H^MR";
    let reply = c.exchange(adt).unwrap();
    assert_eq!(ack_code(&reply), "AR", "{reply}");

    // Binary garbage, then a valid frame on the same connection: the frame is answered.
    let mut g = MllpClient::connect(addr).unwrap();
    let garbage: Vec<u8> = (0u32..2000)
        .map(|i| u8::try_from((i * 37) % 251).unwrap())
        .filter(|b| *b != SB)
        .collect();
    g.send_raw(&garbage).unwrap();
    let reply = g
        .exchange(&pcd01_plain("0011223344556677", "after-garbage", 97))
        .unwrap();
    assert_eq!(ack_code(&reply), "CA", "{reply}");

    // An oversized message → a reject (CR: the message asked for enhanced-mode commit
    // ACKs with MSH-15 AL), never stored; the listener is fine.
    let mut big = MllpClient::connect(addr).unwrap();
    let huge = pcd01_plain("0011223344556677", "huge", 97) + "\rNTE|1||" + &"x".repeat(10_000);
    let reply = big.exchange(&huge).unwrap();
    assert_eq!(ack_code(&reply), "CR", "{reply}");
    assert_eq!(
        segment_field(&reply, "MSA", 2),
        "huge",
        "the reject still names the message"
    );
    good_device_still_served(addr, 2);

    // Wrong framing: end block without start block, and a truncated frame then silence
    // (slow loris): the gateway closes the silent connection after the idle timeout.
    let mut loris = MllpClient::connect(addr).unwrap();
    loris.send_raw(&[b'M', b'S', b'H', EB, CR]).unwrap();
    loris.send_raw(&[SB]).unwrap();
    loris.send_raw(b"MSH|^~\\&|SLOW").unwrap();
    good_device_still_served(addr, 3);
    assert!(
        loris.is_closed_within(Duration::from_secs(10)),
        "slow-loris connection closed"
    );
    good_device_still_served(addr, 4);
}
