//! Deterministic tests of the upload protocol: codec round trips, both sessions driven
//! against each other in memory with an in-memory store, every split point of the byte
//! stream, resume, mismatch, duplicates and garbage.

use super::*;
use proptest::prelude::*;

fn offer(size: u64, sha: u8) -> Offer {
    let mut metadata = Metadata::new();
    metadata.insert("study".into(), serde_json::json!("pseudo-1234"));
    metadata.insert("frames".into(), serde_json::json!(3));
    Offer {
        file_id: FileId::new("f-0001.dcm").unwrap(),
        size,
        sha256: [sha; 32],
        kind: FileKind::Dicom,
        device: "ct-1".into(),
        metadata,
    }
}

fn encode(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out).unwrap();
    out
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Message>, ProtocolError> {
    let mut decoder = FrameDecoder::new();
    decoder.push(bytes);
    let mut out = Vec::new();
    while let Some(m) = decoder.next_message()? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn every_message_round_trips() {
    let messages = vec![
        Message::Offer(offer(12_345, 7)),
        Message::Resume { offset: 99 },
        Message::Chunk {
            offset: 5,
            data: vec![1, 2, 3],
        },
        Message::Committed,
        Message::HashMismatch,
        Message::Refused {
            code: RefuseCode::Busy,
            reason: "in transfer on another stream".into(),
        },
        Message::Refused {
            code: RefuseCode::Other(999),
            reason: String::new(),
        },
    ];
    let mut stream = Vec::new();
    for m in &messages {
        m.encode(&mut stream).unwrap();
    }
    assert_eq!(decode_all(&stream).unwrap(), messages);
}

#[test]
fn chunk_header_matches_the_encoded_chunk() {
    let data = vec![9u8; 1000];
    let full = encode(&Message::Chunk {
        offset: 77,
        data: data.clone(),
    });
    let header = Message::chunk_header(77, data.len()).unwrap();
    assert_eq!(&full[..CHUNK_HEADER_LEN], &header);
    assert!(Message::chunk_header(0, 0).is_err());
    assert!(Message::chunk_header(0, MAX_CHUNK_LEN + 1).is_err());
}

#[test]
fn limits_are_enforced_on_both_ends() {
    let mut big = offer(1, 1);
    big.metadata
        .insert("x".into(), serde_json::json!("a".repeat(MAX_METADATA_LEN)));
    assert!(Message::Offer(big).encode(&mut Vec::new()).is_err());
    let mut long_device = offer(1, 1);
    long_device.device = "d".repeat(MAX_DEVICE_LEN + 1);
    assert!(Message::Offer(long_device).encode(&mut Vec::new()).is_err());

    // A length prefix over the limit is refused before any body arrives.
    let mut decoder = FrameDecoder::new();
    decoder.push(&((MAX_MESSAGE_LEN as u32) + 1).to_be_bytes());
    assert!(matches!(
        decoder.next_message(),
        Err(ProtocolError::BadMessageLength { .. })
    ));
    let mut decoder = FrameDecoder::new();
    decoder.push(&[0, 0, 0, 0]);
    assert!(decoder.next_message().is_err());
}

#[test]
fn bad_version_type_and_fields_are_errors() {
    let mut resume = encode(&Message::Resume { offset: 1 });
    resume[4] = 2;
    assert_eq!(
        decode_all(&resume),
        Err(ProtocolError::UnsupportedVersion(2))
    );
    let mut unknown = encode(&Message::Committed);
    unknown[5] = 42;
    assert_eq!(
        decode_all(&unknown),
        Err(ProtocolError::UnknownMessageType(42))
    );
    // Trailing bytes after a complete body.
    let trailing = [0, 0, 0, 3, PROTOCOL_VERSION, TYPE_COMMITTED, 0];
    assert!(matches!(
        decode_all(&trailing),
        Err(ProtocolError::Malformed { .. })
    ));
    // Truncated resume.
    let short = [0, 0, 0, 3, PROTOCOL_VERSION, TYPE_RESUME, 0];
    assert!(matches!(
        decode_all(&short),
        Err(ProtocolError::Malformed { .. })
    ));
    // An empty chunk.
    let empty = [
        0,
        0,
        0,
        10,
        PROTOCOL_VERSION,
        TYPE_CHUNK,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    assert!(decode_all(&empty).is_err());
    // Unsafe file ids.
    let long = "x".repeat(129);
    for bad in ["", ".hidden", "../x", "a/b", "a b", long.as_str()] {
        assert_eq!(FileId::new(bad), Err(ProtocolError::InvalidFileId), "{bad}");
    }
    // Metadata that is JSON but not an object.
    let mut o = encode(&Message::Offer(offer(1, 1)));
    // The metadata JSON ends the offer and is the only object in it.
    let at = o.iter().rposition(|&b| b == b'{').unwrap();
    o[at] = b'[';
    assert!(decode_all(&o).is_err());
}

#[test]
fn offer_debug_never_prints_metadata() {
    let text = format!("{:?}", offer(1, 1));
    assert!(!text.contains("pseudo-1234"), "{text}");
    assert!(text.contains("redacted"), "{text}");
}

/// An in-memory receiver store.
#[derive(Debug, Default, Clone)]
struct Store {
    partial: Vec<u8>,
    partial_for: Option<[u8; 32]>,
    committed: Option<Vec<u8>>,
}

/// A stand-in "hash": the file's checksum must equal the offer's first hash byte's
/// repetition. Real SHA-256 lives in the driver; here the sessions only need a verdict.
fn digest(data: &[u8]) -> [u8; 32] {
    [data.iter().fold(0u8, |a, b| a.wrapping_add(*b)); 32]
}

/// Runs the receiver's actions against `store`.
fn run_receiver(rx: &mut ReceiverSession, store: &mut Store, offer: &mut Option<Offer>) {
    while let Some(action) = rx.poll_action() {
        match action {
            ReceiverAction::Lookup(o) => {
                let held = match (&store.committed, store.partial_for) {
                    (Some(c), _) if digest(c) == o.sha256 => Held::Committed,
                    (_, Some(sha)) if sha == o.sha256 => Held::Partial(store.partial.len() as u64),
                    _ => {
                        store.partial.clear();
                        store.partial_for = Some(o.sha256);
                        Held::Nothing
                    }
                };
                *offer = Some(o);
                rx.lookup_done(held).unwrap();
            }
            ReceiverAction::Write { offset, data } => {
                assert_eq!(offset, store.partial.len() as u64);
                store.partial.extend_from_slice(&data);
            }
            ReceiverAction::Verify => {
                let ok = offer.as_ref().map(|o| o.sha256) == Some(digest(&store.partial));
                if ok {
                    store.committed = Some(std::mem::take(&mut store.partial));
                    store.partial_for = None;
                }
                rx.verified(ok).unwrap();
            }
            ReceiverAction::Discard => {
                store.partial.clear();
                store.partial_for = None;
            }
        }
    }
}

/// One conversation, with the sender's bytes fed to the receiver in pieces of `split`
/// bytes and the receiver's bytes fed back byte by byte. `send_limit` stops the sender
/// after that many payload bytes (a lost connection). Returns the outcome (None if cut)
/// and the payload bytes sent.
fn converse(
    file: &[u8],
    sha: [u8; 32],
    store: &mut Store,
    chunk_len: usize,
    split: usize,
    send_limit: Option<usize>,
) -> (Option<SenderOutcome>, usize) {
    let mut o = offer(file.len() as u64, 0);
    o.sha256 = sha;
    let (mut tx, offer_bytes) = SenderSession::new(&o, chunk_len).unwrap();
    let mut rx = ReceiverSession::new();
    let mut seen_offer = None;
    let mut to_receiver = offer_bytes;
    let mut sent = 0usize;
    loop {
        for piece in to_receiver.chunks(split.max(1)) {
            rx.handle_input(piece).unwrap();
            run_receiver(&mut rx, store, &mut seen_offer);
        }
        to_receiver = Vec::new();
        for byte in rx.take_transmit() {
            tx.handle_input(&[byte]).unwrap();
        }
        if let Some(outcome) = tx.outcome() {
            return (Some(outcome.clone()), sent);
        }
        let Some(plan) = tx.next_chunk() else {
            panic!("sender stuck: neither chunk nor outcome");
        };
        if send_limit.is_some_and(|limit| sent >= limit) {
            return (None, sent);
        }
        let header = tx.start_chunk(plan).unwrap();
        to_receiver.extend_from_slice(&header);
        let start = plan.offset as usize;
        to_receiver.extend_from_slice(&file[start..start + plan.len]);
        sent += plan.len;
    }
}

fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn a_file_arrives_whole_at_every_split_point() {
    let data = file(300);
    let sha = digest(&data);
    for split in 1..=data.len() + 60 {
        let mut store = Store::default();
        let (outcome, sent) = converse(&data, sha, &mut store, 64, split, None);
        assert_eq!(
            outcome,
            Some(SenderOutcome::Committed { resumed_from: 0 }),
            "split {split}"
        );
        assert_eq!(sent, data.len());
        assert_eq!(store.committed.as_deref(), Some(&data[..]));
    }
}

#[test]
fn an_interrupted_upload_resumes_from_the_held_offset() {
    let data = file(1000);
    let sha = digest(&data);
    let mut store = Store::default();
    let (outcome, first) = converse(&data, sha, &mut store, 100, 7, Some(300));
    assert_eq!(outcome, None);
    assert_eq!(store.partial.len(), 300);
    let (outcome, second) = converse(&data, sha, &mut store, 100, 13, None);
    assert_eq!(
        outcome,
        Some(SenderOutcome::Committed { resumed_from: 300 })
    );
    assert_eq!(first + second, data.len());
    assert_eq!(store.committed.as_deref(), Some(&data[..]));
}

#[test]
fn a_mismatch_discards_and_the_next_offer_starts_from_zero() {
    let data = file(500);
    let sha = digest(&data);
    let mut corrupted = data.clone();
    corrupted[123] ^= 0x40;
    let mut store = Store::default();
    let (outcome, _) = converse(&corrupted, sha, &mut store, 64, 50, None);
    assert_eq!(outcome, Some(SenderOutcome::HashMismatch));
    assert!(store.partial.is_empty() && store.committed.is_none());
    let (outcome, sent) = converse(&data, sha, &mut store, 64, 50, None);
    assert_eq!(outcome, Some(SenderOutcome::Committed { resumed_from: 0 }));
    assert_eq!(sent, data.len());
}

#[test]
fn a_duplicate_offer_is_answered_committed_without_data() {
    let data = file(200);
    let sha = digest(&data);
    let mut store = Store::default();
    converse(&data, sha, &mut store, 64, 9, None);
    let (outcome, sent) = converse(&data, sha, &mut store, 64, 9, None);
    assert_eq!(
        outcome,
        Some(SenderOutcome::Committed { resumed_from: 200 })
    );
    assert_eq!(sent, 0);
}

#[test]
fn a_complete_partial_is_verified_without_data() {
    let data = file(256);
    let sha = digest(&data);
    let mut store = Store {
        partial: data.clone(),
        partial_for: Some(sha),
        committed: None,
    };
    let (outcome, sent) = converse(&data, sha, &mut store, 64, 1, None);
    assert_eq!(
        outcome,
        Some(SenderOutcome::Committed { resumed_from: 256 })
    );
    assert_eq!(sent, 0);
}

#[test]
fn an_empty_file_is_verified_at_once() {
    let sha = digest(&[]);
    let mut store = Store::default();
    let (outcome, sent) = converse(&[], sha, &mut store, 64, 1, None);
    assert_eq!(outcome, Some(SenderOutcome::Committed { resumed_from: 0 }));
    assert_eq!(sent, 0);
    assert_eq!(store.committed.as_deref(), Some(&[][..]));
}

#[test]
fn out_of_order_and_oversized_chunks_are_protocol_errors() {
    let mut rx = ReceiverSession::new();
    rx.handle_input(&encode(&Message::Offer(offer(10, 1))))
        .unwrap();
    assert!(matches!(rx.poll_action(), Some(ReceiverAction::Lookup(_))));
    rx.lookup_done(Held::Partial(4)).unwrap();
    assert_eq!(
        decode_all(&rx.take_transmit()).unwrap(),
        vec![Message::Resume { offset: 4 }]
    );
    let early = encode(&Message::Chunk {
        offset: 0,
        data: vec![0; 4],
    });
    assert_eq!(
        rx.handle_input(&early),
        Err(ProtocolError::ChunkOutOfOrder {
            expected: 4,
            got: 0
        })
    );

    let mut rx = ReceiverSession::new();
    rx.handle_input(&encode(&Message::Offer(offer(10, 1))))
        .unwrap();
    rx.poll_action();
    rx.lookup_done(Held::Nothing).unwrap();
    let past = encode(&Message::Chunk {
        offset: 0,
        data: vec![0; 11],
    });
    assert_eq!(
        rx.handle_input(&past),
        Err(ProtocolError::BeyondEnd { end: 11, size: 10 })
    );
}

#[test]
fn messages_out_of_turn_are_protocol_errors() {
    // A chunk before the offer's lookup is answered.
    let mut rx = ReceiverSession::new();
    let mut bytes = encode(&Message::Offer(offer(10, 1)));
    bytes.extend(encode(&Message::Chunk {
        offset: 0,
        data: vec![1],
    }));
    assert!(matches!(
        rx.handle_input(&bytes),
        Err(ProtocolError::UnexpectedMessage { .. })
    ));
    // Receiver-only messages sent to a receiver.
    let mut rx = ReceiverSession::new();
    assert!(rx.handle_input(&encode(&Message::Committed)).is_err());
    // A second offer on the same stream.
    let mut rx = ReceiverSession::new();
    let mut two = encode(&Message::Offer(offer(10, 1)));
    two.extend(encode(&Message::Offer(offer(10, 1))));
    assert!(rx.handle_input(&two).is_err());
    // Committed before the sender sent everything; a resume past the end.
    let (mut tx, _) = SenderSession::new(&offer(10, 1), 4).unwrap();
    tx.handle_input(&encode(&Message::Resume { offset: 0 }))
        .unwrap();
    assert!(tx.handle_input(&encode(&Message::Committed)).is_err());
    let (mut tx, _) = SenderSession::new(&offer(10, 1), 4).unwrap();
    assert_eq!(
        tx.handle_input(&encode(&Message::Resume { offset: 11 })),
        Err(ProtocolError::BeyondEnd { end: 11, size: 10 })
    );
    // Anything after the verdict.
    let (mut tx, _) = SenderSession::new(&offer(0, 1), 4).unwrap();
    let mut done = encode(&Message::Resume { offset: 0 });
    done.extend(encode(&Message::Committed));
    tx.handle_input(&done).unwrap();
    assert!(tx.handle_end_of_stream().is_ok());
    assert!(tx.handle_input(&encode(&Message::Committed)).is_err());
}

#[test]
fn refusal_ends_the_conversation_at_any_point() {
    let (mut tx, _) = SenderSession::new(&offer(10, 1), 4).unwrap();
    tx.handle_input(&encode(&Message::Resume { offset: 0 }))
        .unwrap();
    let plan = tx.next_chunk().unwrap();
    tx.start_chunk(plan).unwrap();
    tx.handle_input(&encode(&Message::Refused {
        code: RefuseCode::Unavailable,
        reason: "disk full".into(),
    }))
    .unwrap();
    assert_eq!(
        tx.outcome(),
        Some(&SenderOutcome::Refused {
            code: RefuseCode::Unavailable,
            reason: "disk full".into()
        })
    );
    assert_eq!(tx.next_chunk(), None);

    let mut rx = ReceiverSession::new();
    rx.handle_input(&encode(&Message::Offer(offer(10, 1))))
        .unwrap();
    rx.poll_action();
    rx.refuse(RefuseCode::Busy, "in transfer");
    assert!(rx.is_done());
    assert!(matches!(
        decode_all(&rx.take_transmit()).unwrap()[..],
        [Message::Refused {
            code: RefuseCode::Busy,
            ..
        }]
    ));
}

#[test]
fn early_end_of_stream_is_reported() {
    let (tx, _) = SenderSession::new(&offer(10, 1), 4).unwrap();
    assert!(tx.handle_end_of_stream().is_err());
    let mut rx = ReceiverSession::new();
    rx.handle_input(&encode(&Message::Offer(offer(10, 1)))[..5])
        .unwrap();
    assert!(rx.handle_end_of_stream().is_err());
}

#[test]
fn driver_misuse_is_an_error_not_a_panic() {
    let mut rx = ReceiverSession::new();
    assert!(rx.lookup_done(Held::Nothing).is_err());
    assert!(rx.verified(true).is_err());
    let (mut tx, _) = SenderSession::new(&offer(10, 1), 4).unwrap();
    assert!(tx.start_chunk(ChunkPlan { offset: 0, len: 4 }).is_err());
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,20}",
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<bool>(),
            ".{0,30}",
            proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4)
        )
            .prop_map(|(id, size, sha256, dicom, device, map)| {
                Message::Offer(Offer {
                    file_id: FileId::new(id).unwrap(),
                    size,
                    sha256,
                    kind: if dicom {
                        FileKind::Dicom
                    } else {
                        FileKind::Log
                    },
                    device,
                    metadata: map
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                })
            }),
        any::<u64>().prop_map(|offset| Message::Resume { offset }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 1..300))
            .prop_map(|(offset, data)| Message::Chunk { offset, data }),
        Just(Message::Committed),
        Just(Message::HashMismatch),
        (any::<u16>(), ".{0,40}").prop_map(|(code, reason)| Message::Refused {
            code: RefuseCode::from_code(code),
            reason
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                   split in 1usize..64) {
        let mut rx = ReceiverSession::new();
        let (mut tx, _) = SenderSession::new(&offer(1000, 1), 64).unwrap();
        let mut decoder = FrameDecoder::new();
        for piece in bytes.chunks(split) {
            if rx.handle_input(piece).is_err() { break; }
            while let Some(action) = rx.poll_action() {
                if let ReceiverAction::Lookup(o) = action {
                    let _ = rx.lookup_done(Held::Partial(o.size / 2));
                }
            }
        }
        for piece in bytes.chunks(split) {
            if tx.handle_input(piece).is_err() { break; }
        }
        decoder.push(&bytes);
        while let Ok(Some(_)) = decoder.next_message() {}
    }

    #[test]
    fn arbitrary_messages_round_trip_at_any_split(messages in proptest::collection::vec(arb_message(), 1..8),
                                                  split in 1usize..97) {
        let mut stream = Vec::new();
        for m in &messages {
            m.encode(&mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in stream.chunks(split) {
            decoder.push(piece);
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        prop_assert_eq!(out, messages);
        prop_assert!(!decoder.has_partial());
    }

    #[test]
    fn valid_messages_with_flipped_bytes_never_panic(message in arb_message(),
                                                     flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = Vec::new();
        message.encode(&mut bytes).unwrap();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = decode_all(&bytes);
        let mut rx = ReceiverSession::new();
        let _ = rx.handle_input(&bytes);
    }
}
