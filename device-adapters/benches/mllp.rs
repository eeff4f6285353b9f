//! Throughput of the HL7 receive path without I/O: MLLP framing, HL7 parsing and IHE PCD
//! interpretation of a realistic multi-OBR PCD-01 message (16 OBX, patient and visit
//! segments), fed in 16 KiB reads as a socket would deliver them. ACK building is measured
//! separately. Prints messages/s and MB/s.
//!
//! Run with `cargo bench -p wardgate-device-adapters --bench mllp`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use wardgate_device_adapters::hl7::{
    build_ack, interpret, mllp, AckMode, AckOutcome, AckRequest, InboundHeader, Message,
    MllpFramer, PcdMessage,
};

const FIXTURE: &str = include_str!("../src/hl7/testdata/pcd01_multi_obr.hl7");
const MESSAGES: usize = 20_000;
const READ_SIZE: usize = 16 * 1024;
const ROUNDS: usize = 5;

fn stream(message: &[u8]) -> Vec<u8> {
    let framed = mllp::encode(message);
    let mut stream = Vec::with_capacity(framed.len() * MESSAGES);
    for _ in 0..MESSAGES {
        stream.extend_from_slice(&framed);
    }
    stream
}

/// Frames, parses and interprets every message in `stream`; returns the observation count.
fn receive(stream: &[u8]) -> usize {
    let mut framer = MllpFramer::new(1 << 20);
    let mut observations = 0;
    for read in stream.chunks(READ_SIZE) {
        framer.push(read);
        while let Some(frame) = framer.next_frame() {
            let frame = frame.expect("fixture fits the limit");
            let message = Message::parse(&frame).expect("fixture parses");
            match interpret(&message).expect("fixture is valid PCD-01") {
                PcdMessage::Observations(report) => {
                    observations += report
                        .groups
                        .iter()
                        .map(|g| g.observations.len())
                        .sum::<usize>();
                }
                PcdMessage::Alarm(alarm) => observations += alarm.observations.len(),
            }
        }
    }
    observations
}

fn report(name: &str, messages: usize, bytes: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{name:<34} {:>10.0} messages/s {:>8.1} MB/s  ({messages} messages, {:.1} MB, {:.3} s)",
        messages as f64 / secs,
        bytes as f64 / secs / 1e6,
        bytes as f64 / 1e6,
        secs,
    );
}

fn main() {
    let message = FIXTURE.replace('\n', "\r");
    let stream = stream(message.as_bytes());
    println!(
        "PCD-01 fixture: {} bytes, {} segments; {MESSAGES} messages per round, best of {ROUNDS} rounds",
        message.len(),
        message.matches('\r').count()
    );

    // Warm-up, and a check that the whole stream is understood.
    assert_eq!(receive(&stream), 16 * MESSAGES);
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        black_box(receive(black_box(&stream)));
        best = best.min(start.elapsed());
    }
    report(
        "frame + parse + PCD interpretation",
        MESSAGES,
        stream.len(),
        best,
    );

    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut framer = MllpFramer::new(1 << 20);
        let mut frames = 0;
        for chunk in stream.chunks(READ_SIZE) {
            framer.push(black_box(chunk));
            while let Some(frame) = framer.next_frame() {
                frames += usize::from(black_box(frame).is_ok());
            }
        }
        best = best.min(start.elapsed());
        assert_eq!(frames, MESSAGES);
    }
    report("framing only", MESSAGES, stream.len(), best);

    let parsed = Message::parse(message.as_bytes()).expect("fixture parses");
    let inbound = InboundHeader::from_message(&parsed);
    let mut best = Duration::MAX;
    let mut ack_bytes = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        ack_bytes = 0;
        for i in 0..MESSAGES {
            let control_id = i.to_string();
            let ack = build_ack(&AckRequest {
                inbound: black_box(&inbound),
                outcome: &AckOutcome::Accepted,
                mode: AckMode::Auto,
                application: "WARDGATE",
                facility: "EDGE",
                timestamp: "20250314093016+0000",
                control_id: &control_id,
            })
            .expect("AL asks for a commit ACK");
            ack_bytes += mllp::encode(&ack.message).len();
        }
        best = best.min(start.elapsed());
    }
    report("ACK build + MLLP encode", MESSAGES, ack_bytes, best);
}
