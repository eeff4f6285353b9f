//! MLLP framing (Minimal Lower Layer Protocol, HL7 v2 Implementation Guide, appendix C).
//!
//! A frame is `0x0B` (start block), the HL7 message, `0x1C` (end block), `0x0D` (carriage
//! return). [`MllpFramer`] is sans-IO: the driver [`push`](MllpFramer::push)es whatever it
//! read from the socket and takes complete frames out with
//! [`next_frame`](MllpFramer::next_frame), in the shape of mini-redis's `Connection` (find a
//! complete frame, take it, advance).
//!
//! Invariants and decisions:
//! - **Bounded memory.** An incomplete frame never holds more than `max_message_bytes` of
//!   content; completed frames wait in a queue that holds what earlier `push`es delivered
//!   and nobody took yet (the driver drains it after every read, so at most one read's
//!   worth). When a frame crosses that limit, [`FrameError::TooLarge`] is reported at once,
//!   before the rest of the frame has arrived, and the framer *discards* bytes until the next
//!   end block (or start block), after which it is in sync again. The connection can
//!   therefore be answered and kept, or closed; the framer does not decide.
//! - **Garbage.** Bytes outside a frame (before a start block, or between an end block and
//!   the next start block) are skipped and counted; [`take_garbage`](MllpFramer::take_garbage)
//!   reports the count once (it resets), so the driver can log once and add it to a metric.
//!   Garbage is never buffered.
//! - **Missing trailing CR is tolerated.** The end block `0x1C` alone ends a frame, and the
//!   frame is released immediately, without waiting for the `0x0D`: a device that omits the
//!   CR and waits for its ACK must not stall. A `0x0D` directly after `0x1C` is consumed
//!   silently (even when it arrives in a later `push`). `0x1C` cannot occur inside an HL7
//!   message (it is reserved for MLLP), so this never cuts a valid message short.
//! - **A start block inside a frame restarts the frame.** `0x0B` is likewise not valid inside
//!   a message; seeing it means the sender abandoned the previous frame (e.g. it restarted
//!   mid-message). The partial content is counted as garbage and the new frame begins.
//! - Frames are released in the order they completed. An empty frame (`0x0B 0x1C`) is
//!   released as an empty message: whether to answer it is the driver's decision.

use std::collections::VecDeque;

/// MLLP start block.
pub const START_BLOCK: u8 = 0x0B;
/// MLLP end block (first byte of the trailer).
pub const END_BLOCK: u8 = 0x1C;
/// MLLP trailer's second byte.
pub const CARRIAGE_RETURN: u8 = 0x0D;

/// Upper bound on the header bytes kept when a frame is too large (see
/// [`FrameError::TooLarge`]). An MSH segment is normally well under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 4096;

/// A framing error. The framer stays usable after reporting one.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's content exceeded `limit` bytes. The framer now discards until the next
    /// end block.
    #[error("MLLP frame exceeds {limit} bytes")]
    TooLarge {
        /// The configured maximum message size in bytes.
        limit: usize,
        /// The frame's first segment (normally the MSH) if it ended within the bytes that
        /// were read before the limit was crossed and is at most [`MAX_HEADER_BYTES`] long.
        /// Lets the driver answer with an ACK that echoes the message control id.
        header: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header segment may name the device but is message content: never print it.
        match self {
            FrameError::TooLarge { limit, header } => f
                .debug_struct("TooLarge")
                .field("limit", limit)
                .field("header_bytes", &header.as_ref().map(Vec::len))
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: everything but a start block is garbage.
    Idle,
    /// Just saw an end block: a CR here is the trailer, not garbage.
    AfterEndBlock,
    /// Collecting message content.
    InFrame,
    /// The current frame was too large: dropping bytes until it ends.
    Discarding,
}

/// Sans-IO MLLP framer: bytes in, complete frames out. See the module documentation.
pub struct MllpFramer {
    max_message_bytes: usize,
    state: State,
    content: Vec<u8>,
    ready: VecDeque<Result<Vec<u8>, FrameError>>,
    garbage_unreported: u64,
    garbage_total: u64,
}

impl MllpFramer {
    /// A framer that accepts messages of at most `max_message_bytes` bytes of content
    /// (excluding the MLLP envelope).
    #[must_use]
    pub fn new(max_message_bytes: usize) -> Self {
        MllpFramer {
            max_message_bytes,
            state: State::Idle,
            content: Vec::new(),
            ready: VecDeque::new(),
            garbage_unreported: 0,
            garbage_total: 0,
        }
    }

    /// The configured maximum message size.
    #[must_use]
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Feeds bytes read from the connection. Complete frames (and errors) become available
    /// through [`next_frame`](Self::next_frame) in order.
    pub fn push(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.state {
                State::AfterEndBlock => {
                    if input[0] == CARRIAGE_RETURN {
                        input = &input[1..];
                    }
                    self.state = State::Idle;
                }
                State::Idle => match input.iter().position(|&b| b == START_BLOCK) {
                    Some(start) => {
                        self.add_garbage(start);
                        self.content.clear();
                        self.state = State::InFrame;
                        input = &input[start + 1..];
                    }
                    None => {
                        self.add_garbage(input.len());
                        input = &[];
                    }
                },
                State::InFrame => {
                    let delimiter = input
                        .iter()
                        .position(|&b| b == END_BLOCK || b == START_BLOCK);
                    let body_len = delimiter.unwrap_or(input.len());
                    if self.content.len() + body_len > self.max_message_bytes {
                        let room = self.max_message_bytes - self.content.len();
                        self.report_too_large(&input[..room]);
                        // Re-examine the rest of the input (including any delimiter) in
                        // discard mode, so a delimiter in this same chunk still resyncs.
                        input = &input[room..];
                        continue;
                    }
                    self.content.extend_from_slice(&input[..body_len]);
                    match delimiter {
                        Some(at) if input[at] == END_BLOCK => {
                            let frame = std::mem::take(&mut self.content);
                            self.ready.push_back(Ok(frame));
                            self.state = State::AfterEndBlock;
                        }
                        Some(_) => {
                            // A new start block: the sender abandoned the frame.
                            self.add_garbage(self.content.len() + 1);
                            self.content.clear();
                        }
                        None => {}
                    }
                    input = delimiter.map_or(&[][..], |at| &input[at + 1..]);
                }
                State::Discarding => {
                    match input
                        .iter()
                        .position(|&b| b == END_BLOCK || b == START_BLOCK)
                    {
                        Some(at) => {
                            self.state = if input[at] == END_BLOCK {
                                State::AfterEndBlock
                            } else {
                                self.content.clear();
                                State::InFrame
                            };
                            input = &input[at + 1..];
                        }
                        None => input = &[],
                    }
                }
            }
        }
    }

    /// The next complete frame's content (without the MLLP envelope), or a framing error,
    /// in arrival order. `None` when no complete frame is buffered.
    pub fn next_frame(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        self.ready.pop_front()
    }

    /// Garbage bytes skipped since the last call (then resets to zero).
    pub fn take_garbage(&mut self) -> u64 {
        std::mem::take(&mut self.garbage_unreported)
    }

    /// Garbage bytes skipped over the framer's lifetime.
    #[must_use]
    pub fn garbage_total(&self) -> u64 {
        self.garbage_total
    }

    /// Whether the framer is inside a frame (collecting or discarding): a connection that
    /// ends now loses an incomplete message.
    #[must_use]
    pub fn is_mid_frame(&self) -> bool {
        matches!(self.state, State::InFrame | State::Discarding)
    }

    /// Bytes of message content currently buffered for the incomplete frame.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.content.len()
    }

    fn add_garbage(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.garbage_unreported = self.garbage_unreported.saturating_add(bytes);
        self.garbage_total = self.garbage_total.saturating_add(bytes);
    }

    fn report_too_large(&mut self, last_accepted: &[u8]) {
        let header = first_segment(&self.content, last_accepted);
        self.content = Vec::new();
        self.ready.push_back(Err(FrameError::TooLarge {
            limit: self.max_message_bytes,
            header,
        }));
        self.state = State::Discarding;
    }
}

impl std::fmt::Debug for MllpFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpFramer")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("state", &self.state)
            .field("buffered_bytes", &self.content.len())
            .field("ready_frames", &self.ready.len())
            .field("garbage_total", &self.garbage_total)
            .finish()
    }
}

/// The first segment of `head ++ tail`, if a segment terminator occurs within
/// [`MAX_HEADER_BYTES`].
fn first_segment(head: &[u8], tail: &[u8]) -> Option<Vec<u8>> {
    let limit = MAX_HEADER_BYTES.min(head.len() + tail.len());
    let byte_at = |i: usize| {
        if i < head.len() {
            head[i]
        } else {
            tail[i - head.len()]
        }
    };
    let end = (0..limit).find(|&i| matches!(byte_at(i), b'\r' | b'\n'))?;
    let mut segment = Vec::with_capacity(end);
    let from_head = end.min(head.len());
    segment.extend_from_slice(&head[..from_head]);
    segment.extend_from_slice(&tail[..end - from_head]);
    Some(segment)
}

/// Wraps one HL7 message in an MLLP envelope.
///
/// The message must not contain `0x0B` or `0x1C` (HL7 reserves them for MLLP); messages
/// built by [`crate::hl7::ack`] never do, because they escape every control character.
#[must_use]
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 3);
    framed.push(START_BLOCK);
    framed.extend_from_slice(message);
    framed.push(END_BLOCK);
    framed.push(CARRIAGE_RETURN);
    framed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(framer: &mut MllpFramer) -> Vec<Result<Vec<u8>, FrameError>> {
        std::iter::from_fn(|| framer.next_frame()).collect()
    }

    #[test]
    fn single_frame_round_trips() {
        let mut framer = MllpFramer::new(1024);
        framer.push(&encode(b"MSH|^~\\&|A\r"));
        assert_eq!(drain(&mut framer), vec![Ok(b"MSH|^~\\&|A\r".to_vec())]);
        assert_eq!(framer.take_garbage(), 0);
        assert!(!framer.is_mid_frame());
    }

    #[test]
    fn frame_split_byte_by_byte_is_released_only_when_complete() {
        let mut framer = MllpFramer::new(1024);
        let framed = encode(b"MSH|x\rPID|1\r");
        for &b in &framed[..framed.len() - 2] {
            framer.push(&[b]);
            assert!(framer.next_frame().is_none());
        }
        assert!(framer.is_mid_frame());
        framer.push(&[END_BLOCK]);
        assert_eq!(framer.next_frame(), Some(Ok(b"MSH|x\rPID|1\r".to_vec())));
        // The trailing CR arrives in a later read: it is the trailer, not garbage.
        framer.push(&[CARRIAGE_RETURN]);
        assert_eq!(framer.take_garbage(), 0);
    }

    #[test]
    fn missing_trailing_cr_is_tolerated() {
        let mut framer = MllpFramer::new(1024);
        framer.push(&[START_BLOCK, b'A', END_BLOCK, START_BLOCK, b'B', END_BLOCK]);
        assert_eq!(
            drain(&mut framer),
            vec![Ok(b"A".to_vec()), Ok(b"B".to_vec())]
        );
        assert_eq!(framer.take_garbage(), 0);
    }

    #[test]
    fn garbage_before_start_is_counted_once_and_skipped() {
        let mut framer = MllpFramer::new(1024);
        framer.push(b"GET / HTTP/1.1\r\n\r\n");
        framer.push(&encode(b"MSH|ok"));
        assert_eq!(drain(&mut framer), vec![Ok(b"MSH|ok".to_vec())]);
        assert_eq!(framer.take_garbage(), 18);
        assert_eq!(framer.take_garbage(), 0, "reported once");
        assert_eq!(framer.garbage_total(), 18);
    }

    #[test]
    fn lf_after_trailer_is_garbage() {
        let mut framer = MllpFramer::new(1024);
        let mut bytes = encode(b"A");
        bytes.push(b'\n');
        framer.push(&bytes);
        assert_eq!(drain(&mut framer).len(), 1);
        assert_eq!(framer.take_garbage(), 1);
    }

    #[test]
    fn oversized_frame_is_reported_before_it_ends_and_framer_resyncs() {
        let mut framer = MllpFramer::new(16);
        framer.push(&[START_BLOCK]);
        framer.push(b"MSH|^~\\&|X\rPID|1");
        assert!(
            framer.next_frame().is_none(),
            "exactly at the limit is fine"
        );
        framer.push(b"2");
        match framer.next_frame() {
            Some(Err(FrameError::TooLarge { limit: 16, header })) => {
                assert_eq!(header.as_deref(), Some(&b"MSH|^~\\&|X"[..]));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(
            framer.buffered_bytes(),
            0,
            "nothing of the oversized frame is kept"
        );
        framer.push(&vec![b'x'; 100_000]);
        assert_eq!(framer.buffered_bytes(), 0);
        assert!(framer.next_frame().is_none(), "reported once per frame");
        framer.push(&[END_BLOCK, CARRIAGE_RETURN]);
        framer.push(&encode(b"small"));
        assert_eq!(drain(&mut framer), vec![Ok(b"small".to_vec())]);
        assert_eq!(
            framer.take_garbage(),
            0,
            "the discarded frame is not garbage"
        );
    }

    #[test]
    fn oversized_and_next_frame_in_one_chunk() {
        let mut framer = MllpFramer::new(4);
        let mut bytes = encode(b"too long");
        bytes.extend_from_slice(&encode(b"ok"));
        framer.push(&bytes);
        let events = drain(&mut framer);
        assert_eq!(events.len(), 2);
        assert!(matches!(
            &events[0],
            Err(FrameError::TooLarge { header: None, .. })
        ));
        assert_eq!(events[1], Ok(b"ok".to_vec()));
    }

    #[test]
    fn start_block_inside_frame_restarts_it() {
        let mut framer = MllpFramer::new(1024);
        framer.push(&[
            START_BLOCK,
            b'a',
            b'b',
            START_BLOCK,
            b'c',
            END_BLOCK,
            CARRIAGE_RETURN,
        ]);
        assert_eq!(drain(&mut framer), vec![Ok(b"c".to_vec())]);
        assert_eq!(framer.take_garbage(), 3);
    }

    #[test]
    fn start_block_while_discarding_starts_a_new_frame() {
        let mut framer = MllpFramer::new(2);
        framer.push(&[START_BLOCK, b'a', b'b', b'c', START_BLOCK, b'd', END_BLOCK]);
        let events = drain(&mut framer);
        assert!(matches!(events[0], Err(FrameError::TooLarge { .. })));
        assert_eq!(events[1], Ok(b"d".to_vec()));
    }

    #[test]
    fn empty_frame_is_released_as_empty() {
        let mut framer = MllpFramer::new(8);
        framer.push(&encode(b""));
        assert_eq!(drain(&mut framer), vec![Ok(Vec::new())]);
    }

    #[test]
    fn zero_limit_rejects_any_content() {
        let mut framer = MllpFramer::new(0);
        framer.push(&encode(b"x"));
        assert!(matches!(
            framer.next_frame(),
            Some(Err(FrameError::TooLarge { limit: 0, .. }))
        ));
        assert!(framer.next_frame().is_none());
    }

    #[test]
    fn debug_does_not_print_header_bytes() {
        let err = FrameError::TooLarge {
            limit: 1,
            header: Some(b"MSH|secret".to_vec()),
        };
        let shown = format!("{err:?}");
        assert!(!shown.contains("secret"));
        assert!(shown.contains("header_bytes"));
    }

    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Message content never contains the MLLP delimiters.
        proptest::collection::vec(
            any::<u8>().prop_filter("no MLLP delimiters", |b| {
                *b != START_BLOCK && *b != END_BLOCK
            }),
            0..200,
        )
    }

    proptest! {
        #[test]
        fn arbitrary_chunking_yields_the_same_frames(
            messages in proptest::collection::vec(message_strategy(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            omit_cr in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                let mut framed = encode(m);
                if omit_cr {
                    framed.pop();
                }
                stream.extend_from_slice(&framed);
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut framer = MllpFramer::new(200);
            let mut frames = Vec::new();
            for pair in points.windows(2) {
                framer.push(&stream[pair[0]..pair[1]]);
                while let Some(frame) = framer.next_frame() {
                    frames.push(frame);
                }
            }
            let expected: Vec<Result<Vec<u8>, FrameError>> =
                messages.into_iter().map(Ok).collect();
            prop_assert_eq!(frames, expected);
            prop_assert_eq!(framer.garbage_total(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_memory_is_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..16),
            limit in 0usize..300,
        ) {
            let mut framer = MllpFramer::new(limit);
            let mut pushed = 0u64;
            let mut released = 0u64;
            for chunk in &chunks {
                framer.push(chunk);
                pushed += chunk.len() as u64;
                prop_assert!(framer.buffered_bytes() <= limit);
                while let Some(frame) = framer.next_frame() {
                    match frame {
                        Ok(content) => {
                            prop_assert!(content.len() <= limit);
                            released += content.len() as u64;
                        }
                        Err(FrameError::TooLarge { header, .. }) => {
                            prop_assert!(header.map_or(0, |h| h.len()) <= limit.min(MAX_HEADER_BYTES));
                        }
                    }
                }
            }
            prop_assert!(released + framer.garbage_total() <= pushed);
        }

        #[test]
        fn oversized_frames_never_break_later_frames(
            big in 1usize..2000,
            small in message_strategy(),
            split in any::<prop::sample::Index>(),
        ) {
            let mut stream = encode(&vec![b'A'; 200 + big]);
            stream.extend_from_slice(&encode(&small));
            let at = split.index(stream.len() + 1);
            let mut framer = MllpFramer::new(200);
            framer.push(&stream[..at]);
            framer.push(&stream[at..]);
            let events: Vec<_> = std::iter::from_fn(|| framer.next_frame()).collect();
            prop_assert_eq!(events.len(), 2);
            let too_large = matches!(events[0], Err(FrameError::TooLarge { limit: 200, .. }));
            prop_assert!(too_large);
            prop_assert_eq!(&events[1], &Ok(small));
        }
    }
}
