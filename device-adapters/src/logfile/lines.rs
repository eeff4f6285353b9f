//! Splits the bytes of one file into lines. Pure: bytes in, lines out, no I/O, no clock.
//!
//! Invariants:
//! - Lines end at `\n`; a `\r` before it is removed (CRLF files). The line break is not part
//!   of the line.
//! - A line is emitted only once its `\n` was seen, except when the caller flushes a
//!   partial line explicitly ([`LineSplitter::flush_partial`]: idle timeout, truncation,
//!   file gone).
//! - Memory is bounded: at most `max_line_bytes` of a partial line are held. A longer line
//!   is emitted as soon as the cap is crossed, cut at the cap (on a character boundary)
//!   with [`TRUNCATION_MARKER`] appended; the splitter then *discards* bytes up to the
//!   next `\n`. That state is part of the [`Position`], so a restart from a checkpoint
//!   taken in the middle of a discarded tail goes on discarding instead of shipping the
//!   tail as a line of its own.
//! - Text is decoded lossily: invalid UTF-8 becomes U+FFFD, and so do control characters
//!   other than tab (binary garbage must not reach a terminal or a JSON consumer as
//!   escape sequences). Nothing here panics on any input.
//! - Every emitted line carries the [`Position`] just after it: where reading resumes if
//!   this line is the last one made durable.

use serde::{Deserialize, Serialize};

/// Appended to a line that was cut at `max_line_bytes`.
pub const TRUNCATION_MARKER: &str = "[TRUNCATED]";

/// How many bytes before the read position are remembered to check, on the next read,
/// that the file still holds what was read (detects a truncate-and-regrow that size alone
/// cannot see).
pub const TAIL_BYTES: usize = 16;

/// Where reading resumes in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Byte offset of the next byte to read.
    pub offset: u64,
    /// True when the bytes from `offset` up to the next line break belong to a line that
    /// was already emitted truncated and must be skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discarding: bool,
}

/// One line and the position after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitLine {
    /// The decoded line, without its line break.
    pub text: String,
    /// Where reading resumes after this line.
    pub end: Position,
}

/// Turns the bytes of one file, fed in order, into lines.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// Offset of the next byte to be fed.
    read_pos: u64,
    /// The current line's bytes so far (never more than `max_line_bytes`).
    partial: Vec<u8>,
    discarding: bool,
    /// The last up to [`TAIL_BYTES`] bytes fed, ending at `read_pos`.
    tail: Vec<u8>,
}

impl LineSplitter {
    /// A splitter resuming at `start`. `max_line_bytes` is at least 1.
    #[must_use]
    pub fn new(max_line_bytes: usize, start: Position) -> Self {
        LineSplitter {
            max_line_bytes: max_line_bytes.max(1),
            read_pos: start.offset,
            partial: Vec::new(),
            discarding: start.discarding,
            tail: Vec::new(),
        }
    }

    /// Offset of the next byte to feed.
    #[must_use]
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// The bytes just before [`Self::read_pos`] that this splitter was fed (empty after a
    /// start or a reset).
    #[must_use]
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// Whether part of a line is held, waiting for its line break.
    #[must_use]
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// The position after everything fed so far, counting a held partial line as not
    /// read (so a checkpoint never skips it).
    #[must_use]
    pub fn resume_position(&self) -> Position {
        Position {
            offset: self.read_pos - self.partial.len() as u64,
            discarding: self.discarding,
        }
    }

    /// Feeds the next bytes of the file (which start at [`Self::read_pos`]) and calls
    /// `emit` for every line they complete.
    pub fn push(&mut self, data: &[u8], emit: &mut impl FnMut(SplitLine)) {
        self.remember_tail(data);
        let mut rest = data;
        while !rest.is_empty() {
            let newline = rest.iter().position(|&b| b == b'\n');
            if self.discarding {
                let skipped = newline.map_or(rest.len(), |i| i + 1);
                self.discarding = newline.is_none();
                self.read_pos += skipped as u64;
                rest = &rest[skipped..];
                continue;
            }
            let room = self.max_line_bytes - self.partial.len();
            match newline {
                Some(i) => {
                    let end = Position {
                        offset: self.read_pos + i as u64 + 1,
                        discarding: false,
                    };
                    let body = &rest[..i];
                    let text = if body.len() > room {
                        self.partial.extend_from_slice(&body[..room]);
                        truncated_text(&self.partial)
                    } else if self.partial.is_empty() {
                        decode(strip_cr(body))
                    } else {
                        self.partial.extend_from_slice(body);
                        decode(strip_cr(&self.partial))
                    };
                    self.partial.clear();
                    self.read_pos = end.offset;
                    rest = &rest[i + 1..];
                    emit(SplitLine { text, end });
                }
                None if rest.len() > room => {
                    self.partial.extend_from_slice(&rest[..room]);
                    self.read_pos += rest.len() as u64;
                    self.discarding = true;
                    let text = truncated_text(&self.partial);
                    self.partial.clear();
                    rest = &[];
                    emit(SplitLine {
                        text,
                        end: Position {
                            offset: self.read_pos,
                            discarding: true,
                        },
                    });
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    self.read_pos += rest.len() as u64;
                    rest = &[];
                }
            }
        }
    }

    /// Emits the held partial line as it is, if any: its continuation (if one ever comes)
    /// will be a line of its own.
    pub fn flush_partial(&mut self) -> Option<SplitLine> {
        if self.partial.is_empty() {
            return None;
        }
        let text = decode(strip_cr(&self.partial));
        self.partial.clear();
        Some(SplitLine {
            text,
            end: Position {
                offset: self.read_pos,
                discarding: false,
            },
        })
    }

    /// Starts over at offset 0 of a file whose content was replaced (truncation). Flush
    /// the partial line first if it should be kept.
    pub fn reset(&mut self) {
        self.read_pos = 0;
        self.partial.clear();
        self.discarding = false;
        self.tail.clear();
    }

    fn remember_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(TAIL_BYTES);
            self.tail.drain(..excess);
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn truncated_text(kept: &[u8]) -> String {
    let mut text = decode(&kept[..complete_utf8_prefix(kept)]);
    text.push_str(TRUNCATION_MARKER);
    text
}

/// Length of `bytes` without a trailing, incomplete UTF-8 sequence (a cut mid-character).
fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len, // not a lead byte: invalid anyway, decoded lossily
        };
        return if needed > back { len - back } else { len };
    }
    len
}

fn is_unwanted_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Lossy UTF-8 decoding that also replaces control characters other than tab.
fn decode(bytes: &[u8]) -> String {
    // Fast path: valid UTF-8 with no ASCII control byte (the common log line).
    // C1 controls (U+0080..U+009F) are encoded as 0xC2 0x80..0x9F: a line without an 0xC2
    // byte has none, so one pass over the bytes decides.
    if !bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xC2)
    {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return text.to_owned();
        }
    }
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| {
            if is_unwanted_control(c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn split(splitter: &mut LineSplitter, data: &[u8]) -> Vec<SplitLine> {
        let mut out = Vec::new();
        splitter.push(data, &mut |l| out.push(l));
        out
    }

    fn texts(lines: &[SplitLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_lf_and_crlf_with_positions() {
        let mut s = LineSplitter::new(100, Position::default());
        let lines = split(&mut s, b"one\ntwo\r\n\nthree");
        assert_eq!(texts(&lines), ["one", "two", ""]);
        assert_eq!(lines[0].end.offset, 4);
        assert_eq!(lines[1].end.offset, 9);
        assert_eq!(lines[2].end.offset, 10);
        assert!(s.has_partial());
        assert_eq!(s.read_pos(), 15);
        assert_eq!(s.resume_position().offset, 10, "partial line not counted");
    }

    #[test]
    fn partial_line_is_held_until_its_break() {
        let mut s = LineSplitter::new(100, Position::default());
        assert!(split(&mut s, b"hel").is_empty());
        assert!(split(&mut s, b"lo wor").is_empty());
        let lines = split(&mut s, b"ld\r\n");
        assert_eq!(texts(&lines), ["hello world"]);
        assert_eq!(lines[0].end.offset, 13);
    }

    #[test]
    fn cr_split_from_its_lf_is_still_removed() {
        let mut s = LineSplitter::new(100, Position::default());
        assert!(split(&mut s, b"abc\r").is_empty());
        assert_eq!(texts(&split(&mut s, b"\n")), ["abc"]);
    }

    #[test]
    fn flush_partial_ships_it_and_continuation_is_a_new_line() {
        let mut s = LineSplitter::new(100, Position::default());
        split(&mut s, b"a\nwaiting");
        let flushed = s.flush_partial().unwrap();
        assert_eq!(flushed.text, "waiting");
        assert_eq!(flushed.end.offset, 9);
        assert!(s.flush_partial().is_none());
        assert_eq!(texts(&split(&mut s, b" more\n")), [" more"]);
    }

    #[test]
    fn overlong_line_with_break_in_same_chunk_is_cut() {
        let mut s = LineSplitter::new(8, Position::default());
        let lines = split(&mut s, b"0123456789abc\nnext\n");
        assert_eq!(texts(&lines), ["01234567[TRUNCATED]", "next"]);
        assert_eq!(
            lines[0].end,
            Position {
                offset: 14,
                discarding: false
            }
        );
    }

    #[test]
    fn overlong_line_without_break_is_emitted_then_rest_discarded() {
        let mut s = LineSplitter::new(8, Position::default());
        let lines = split(&mut s, b"0123");
        assert!(lines.is_empty());
        let lines = split(&mut s, b"456789");
        assert_eq!(texts(&lines), ["01234567[TRUNCATED]"]);
        assert_eq!(
            lines[0].end,
            Position {
                offset: 10,
                discarding: true
            }
        );
        assert!(
            split(&mut s, &[b'x'; 10_000]).is_empty(),
            "tail is discarded"
        );
        assert!(!s.has_partial());
        let lines = split(&mut s, b"yy\nok\n");
        assert_eq!(texts(&lines), ["ok"]);
        assert_eq!(lines[0].end.offset, 10 + 10_000 + 3 + 3);
    }

    #[test]
    fn restart_inside_a_discarded_tail_keeps_discarding() {
        let mut s = LineSplitter::new(
            8,
            Position {
                offset: 10,
                discarding: true,
            },
        );
        assert_eq!(texts(&split(&mut s, b"rest of long\nfresh\n")), ["fresh"]);
    }

    #[test]
    fn cut_never_splits_a_character() {
        // "ééééé" is 10 bytes; a cap of 5 falls inside the third é.
        let mut s = LineSplitter::new(5, Position::default());
        let lines = split(&mut s, "ééééé\n".as_bytes());
        assert_eq!(texts(&lines), ["éé[TRUNCATED]"]);
    }

    #[test]
    fn invalid_utf8_and_controls_are_replaced_not_panicked_on() {
        let mut s = LineSplitter::new(100, Position::default());
        let lines = split(&mut s, b"ok \xff\xfe bad\x1b[31m red\x00\tend\n");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].text,
            "ok \u{fffd}\u{fffd} bad\u{fffd}[31m red\u{fffd}\tend"
        );
        let mut s = LineSplitter::new(64, Position::default());
        let garbage: Vec<u8> = (0..50_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut count = 0;
        s.push(&garbage, &mut |l| {
            assert!(l.text.len() <= 64 * 3 + TRUNCATION_MARKER.len());
            count += 1;
        });
        assert!(count > 0);
    }

    #[test]
    fn tail_tracks_the_last_bytes_fed() {
        let mut s = LineSplitter::new(100, Position::default());
        split(&mut s, b"abc");
        assert_eq!(s.tail(), b"abc");
        split(&mut s, b"0123456789abcdefXYZ\n");
        assert_eq!(s.tail(), &b"456789abcdefXYZ\n"[..]);
        assert_eq!(s.tail().len(), TAIL_BYTES);
        s.reset();
        assert!(s.tail().is_empty());
        assert_eq!(s.read_pos(), 0);
    }

    #[test]
    fn byte_by_byte_feeding_matches_one_chunk() {
        let input = b"alpha\r\nbeta\n\ngamma-is-a-very-long-line\ndelta\n";
        let mut whole = LineSplitter::new(10, Position::default());
        let a = split(&mut whole, input);
        let mut bytes = LineSplitter::new(10, Position::default());
        let mut b = Vec::new();
        for byte in input {
            b.extend(split(&mut bytes, std::slice::from_ref(byte)));
        }
        assert_eq!(texts(&a), texts(&b));
        assert_eq!(a.last().unwrap().end, b.last().unwrap().end);
    }
}
