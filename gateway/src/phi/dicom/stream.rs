//! The streaming path: de-identifies an object read from an [`std::io::Read`] with memory
//! bounded by its attributes, never by its pixel data.
//!
//! Invariants:
//! - **What is held.** The top level is read into memory up to the first element whose tag
//!   sorts after RecognizableVisualFeatures (0028,0302) — everything the header-only scan
//!   needs to decide quarantine, the pseudonym and the date shift before a byte is written
//!   ("the head"). After that, one top-level element at a time: an element the rules
//!   decide from its header alone ([`Step::Copy`], [`Step::Replace`]: pixel data, float
//!   pixel data, padding, signatures, dropped private blobs, whatever its size) is never
//!   held; any other (a kept sequence such as a waveform or per-frame functional groups, a
//!   UID, a date to shift, a private creator) is read whole. The head and each element
//!   read whole are refused above [`DicomRules::max_header_bytes`]
//!   ([`DicomError::HeaderTooLarge`]); besides them, only the fixed read buffer
//!   ([`READ_CHUNK`]) and the output buffer of the rewrite are held.
//! - **Same output.** Held bytes go through the same code as the in-memory path (the
//!   header-only scan, [`Engine::level`]) with one top-level [`LevelState`] carried from
//!   piece to piece, and passed-through values are copied or skipped by a mirror of
//!   [`super::codec::Reader::skip_value`] (defined lengths in chunks, undefined lengths item
//!   by item: every encapsulated fragment streamed, up to the sequence delimiter). The
//!   output is byte for byte that of the in-memory entry points, and an input one refuses
//!   the other refuses too.
//! - **Errors.** Offsets count from the start of the data set (Part 10: file meta errors
//!   from the start of the file), as the in-memory path counts them. Input that ends inside
//!   an element is [`DicomError::Truncated`], never a panic; a failing reader is
//!   [`DicomError::Read`]. Short reads and `Interrupted` are handled.
//! - A quarantined object is read only up to the end of the head.

use std::io::{ErrorKind, Read, Write};

use dicom_dictionary_std::tags;

use super::codec::{
    nested_encoding, Encoding, Header, Reader, ITEM, MAX_DEPTH, SEQUENCE_DELIMITER,
};
use super::rewrite::{self, End, LevelFacts, Sink, Step};
use super::{encoding_of, looks_like_bare_dataset, DeidOutcome, DicomError, DicomRules};

/// Size of the read buffer, and so of the chunks pixel data is copied in.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Where passed-through bytes go: the output, a buffer, or nowhere.
type Out<'o> = dyn FnMut(&[u8]) -> Result<(), DicomError> + 'o;

/// De-identifies a Part 10 file read from `input`.
pub(super) fn deidentify_file(
    rules: &DicomRules,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<DeidOutcome, DicomError> {
    let mut input = Input::new(input);
    let meta = read_file_meta(&mut input, rules.max_header_bytes)?;
    input.rebase();
    rewrite(
        rules,
        &mut input,
        &meta.transfer_syntax,
        meta.sop_class.as_deref(),
        output,
    )
}

/// De-identifies a bare data set in `transfer_syntax` read from `input`.
pub(super) fn deidentify_dataset(
    rules: &DicomRules,
    input: &mut impl Read,
    transfer_syntax: &str,
    output: &mut impl Write,
) -> Result<DeidOutcome, DicomError> {
    rewrite(rules, &mut Input::new(input), transfer_syntax, None, output)
}

/// The streaming counterpart of `DicomRules::rewrite`.
fn rewrite<R: Read, W: Write>(
    rules: &DicomRules,
    input: &mut Input<'_, R>,
    transfer_syntax: &str,
    meta_sop_class: Option<&str>,
    output: &mut W,
) -> Result<DeidOutcome, DicomError> {
    let enc = encoding_of(transfer_syntax)?;
    let limit = rules.max_header_bytes;
    let mut held = Vec::new();
    if let Err(stopped) = read_head(input, enc, limit, &mut held) {
        return Err(settle(stopped, || scan_head(&held, enc).map(drop)));
    }
    let facts = scan_head(&held, enc)?;
    let plan = match rules.plan(&facts, meta_sop_class)? {
        Ok(plan) => plan,
        Err(reason) => return Ok(DeidOutcome::Quarantine { reason }),
    };
    let mut sink = Sink::new(output);
    let (mut engine, mut top) = rules.begin(&plan, enc, transfer_syntax, &mut sink);
    // The head starts the data set: its offsets are the data set's.
    engine.level(
        &mut Reader::new(&held, 0),
        enc,
        End::Slice,
        &mut top,
        &mut sink,
    )?;
    while let Some(h) = input.header(enc)? {
        let header_len = h.value_start - h.start;
        let value_enc = nested_encoding(&h, enc);
        match engine.decide_element(&h, enc, &mut top, &mut sink, no_value)? {
            Some(Step::Copy) => {
                let mut out = |bytes: &[u8]| sink.raw(bytes);
                input.pass(header_len as u64, &mut out)?;
                input.value(&h, value_enc, 0, &mut out)?;
            }
            Some(Step::Replace(replacement)) => {
                input.consume(header_len);
                input.value(&h, value_enc, 0, &mut |_| Ok(()))?;
                replacement.write(&h, enc, &mut sink.buf);
            }
            // The value decides, or is rewritten: hold the element and rewrite it as the
            // in-memory path does.
            Some(Step::MapUid | Step::Recurse) | None => {
                held.clear();
                let collected = {
                    let mut out = |bytes: &[u8]| hold(&mut held, bytes, limit);
                    input
                        .pass(header_len as u64, &mut out)
                        .and_then(|()| input.value(&h, value_enc, 0, &mut out))
                };
                let mut rewrite = || {
                    engine
                        .level(
                            &mut Reader::new(&held, 0),
                            enc,
                            End::Slice,
                            &mut top,
                            &mut sink,
                        )
                        .map_err(|e| e.shifted(h.start))
                };
                match collected {
                    Ok(()) => rewrite()?,
                    Err(stopped) => return Err(settle(stopped, rewrite)),
                }
            }
        }
        sink.flush_if_full()?;
    }
    top.finish(&mut sink);
    sink.flush()?;
    let bytes = sink.written();
    Ok(plan.outcome(engine, bytes))
}

/// The error to report when reading a piece to hold stopped on bad input: the one the
/// in-memory path reports, found by running its code (`again`) over what was read. Input
/// that ends early leaves the same bytes before both paths; a malformed header is also
/// reported by the in-memory path unless it finds another fault before it.
fn settle(stopped: DicomError, again: impl FnOnce() -> Result<(), DicomError>) -> DicomError {
    match stopped {
        DicomError::Truncated { .. } => again().err().unwrap_or(stopped),
        DicomError::Malformed { offset, .. } => match again() {
            Err(
                found @ DicomError::Malformed {
                    offset: earlier, ..
                },
            ) if earlier <= offset => found,
            _ => stopped,
        },
        other => other,
    }
}

/// A value function for a decision made from the header alone.
fn no_value<'a>() -> Result<Option<&'a [u8]>, DicomError> {
    Ok(None)
}

/// The header-only scan of the in-memory path, over the head.
fn scan_head(head: &[u8], enc: Encoding) -> Result<LevelFacts<'_>, DicomError> {
    rewrite::scan_level(
        &mut Reader::new(head, 0),
        enc,
        End::Slice,
        tags::RECOGNIZABLE_VISUAL_FEATURES,
    )
}

/// Reads the head: top-level elements up to the first one the header-only scan stops at
/// (left unread).
fn read_head<R: Read>(
    input: &mut Input<'_, R>,
    enc: Encoding,
    limit: usize,
    head: &mut Vec<u8>,
) -> Result<(), DicomError> {
    while let Some(h) = input.header(enc)? {
        // The scan stops here too (item delimiters included: group FFFE sorts last).
        if h.tag > tags::RECOGNIZABLE_VISUAL_FEATURES {
            break;
        }
        let mut out = |bytes: &[u8]| hold(head, bytes, limit);
        input.pass((h.value_start - h.start) as u64, &mut out)?;
        input.value(&h, nested_encoding(&h, enc), 0, &mut out)?;
    }
    Ok(())
}

/// Appends to a held buffer, refusing to grow it past `limit` (its capacity included).
fn hold(held: &mut Vec<u8>, bytes: &[u8], limit: usize) -> Result<(), DicomError> {
    let needed = held.len().saturating_add(bytes.len());
    if needed > limit {
        return Err(DicomError::HeaderTooLarge { limit });
    }
    if needed > held.capacity() {
        let target = needed.max(held.capacity().saturating_mul(2)).min(limit);
        held.reserve_exact(target - held.len());
    }
    held.extend_from_slice(bytes);
    Ok(())
}

/// What the file meta information says.
struct StreamMeta {
    transfer_syntax: String,
    sop_class: Option<String>,
}

/// Reads the preamble (optional), `DICM` and the file meta group, as
/// `super::read_file_meta` does over a slice.
fn read_file_meta<R: Read>(
    input: &mut Input<'_, R>,
    limit: usize,
) -> Result<StreamMeta, DicomError> {
    let lead = input.peek(132)?;
    let start = if lead.get(128..132) == Some(b"DICM") {
        132
    } else if lead.starts_with(b"DICM") {
        4
    } else if looks_like_bare_dataset(lead) {
        return Err(DicomError::NoFileMeta);
    } else {
        return Err(DicomError::NotDicom);
    };
    input.consume(start);
    let mut transfer_syntax = None;
    let mut sop_class = None;
    // The data set after the meta group may be implicit VR: look at the group first.
    while input.peek(2)?.get(..2) == Some(&[0x02, 0x00]) {
        let Some(h) = input.header(Encoding::ExplicitLe)? else {
            break;
        };
        input.consume(h.value_start - h.start);
        if h.undefined() {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "undefined length on a value that needs one",
            });
        }
        let slot = match h.tag {
            tags::TRANSFER_SYNTAX_UID => &mut transfer_syntax,
            tags::MEDIA_STORAGE_SOP_CLASS_UID => &mut sop_class,
            _ => {
                input.pass(u64::from(h.len), &mut |_| Ok(()))?;
                continue;
            }
        };
        let mut value = Vec::new();
        input.pass(u64::from(h.len), &mut |bytes| {
            hold(&mut value, bytes, limit)
        })?;
        *slot = Some(String::from_utf8_lossy(super::values::trim_padding(&value)).into_owned());
    }
    if sop_class.as_deref() == Some("1.2.840.10008.1.3.10") {
        return Err(DicomError::Unsupported("DICOMDIR media directory"));
    }
    Ok(StreamMeta {
        transfer_syntax: transfer_syntax.ok_or(DicomError::Missing("Transfer Syntax UID"))?,
        sop_class,
    })
}

/// The caller's reader behind a fixed buffer, counting offsets.
struct Input<'r, R: Read> {
    inner: &'r mut R,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[lo..hi]`.
    lo: usize,
    hi: usize,
    /// Offset of `buf[lo]` in the input (after [`Input::rebase`], in the data set).
    pos: u64,
}

impl<'r, R: Read> Input<'r, R> {
    fn new(inner: &'r mut R) -> Self {
        Input {
            inner,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            lo: 0,
            hi: 0,
            pos: 0,
        }
    }

    /// The offset of the next unconsumed byte, as the in-memory path's offsets are typed.
    fn offset(&self) -> usize {
        usize::try_from(self.pos).unwrap_or(usize::MAX)
    }

    /// Counts offsets from here on (the start of the data set).
    fn rebase(&mut self) {
        self.pos = 0;
    }

    /// Reads once more into the buffer; 0 at the end of the input.
    fn read_more(&mut self) -> Result<usize, DicomError> {
        if self.lo == self.hi {
            (self.lo, self.hi) = (0, 0);
        } else if self.hi == self.buf.len() {
            self.buf.copy_within(self.lo..self.hi, 0);
            (self.lo, self.hi) = (0, self.hi - self.lo);
        }
        loop {
            match self.inner.read(&mut self.buf[self.hi..]) {
                Ok(n) => {
                    // A reader claiming more than it was given room for is not trusted.
                    let n = n.min(self.buf.len() - self.hi);
                    self.hi += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(DicomError::Read(e)),
            }
        }
    }

    /// The unconsumed bytes, at least `want` (at most [`READ_CHUNK`]) of them unless the
    /// input ends first.
    fn peek(&mut self, want: usize) -> Result<&[u8], DicomError> {
        while self.hi - self.lo < want.min(READ_CHUNK) {
            if self.read_more()? == 0 {
                break;
            }
        }
        Ok(&self.buf[self.lo..self.hi])
    }

    /// Drops `n` bytes already peeked.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.hi - self.lo);
        self.lo += n;
        self.pos += n as u64;
    }

    /// The next element, item or delimiter header (not consumed), with offsets in the
    /// input; `None` at the end of the input.
    fn header(&mut self, enc: Encoding) -> Result<Option<Header>, DicomError> {
        let at = self.offset();
        // The longest header is 12 bytes; a shorter input is parsed for the error it gives.
        let bytes = self.peek(12)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let h = Reader::new(bytes, 0)
            .header(enc)
            .map_err(|e| e.shifted(at))?;
        Ok(Some(Header {
            start: at,
            value_start: at.saturating_add(h.value_start),
            ..h
        }))
    }

    /// The next header, which must be there.
    fn required_header(&mut self, enc: Encoding) -> Result<Header, DicomError> {
        let at = self.offset();
        self.header(enc)?
            .ok_or(DicomError::Truncated { offset: at })
    }

    /// Passes the next `n` bytes to `out`, in chunks as they are read.
    fn pass(&mut self, n: u64, out: &mut Out<'_>) -> Result<(), DicomError> {
        let at = self.offset();
        let mut left = n;
        while left > 0 {
            if self.lo == self.hi && self.read_more()? == 0 {
                return Err(DicomError::Truncated { offset: at });
            }
            let chunk = (self.hi - self.lo).min(usize::try_from(left).unwrap_or(usize::MAX));
            out(&self.buf[self.lo..self.lo + chunk])?;
            self.consume(chunk);
            left -= chunk as u64;
        }
        Ok(())
    }

    /// Passes the value of `h` (whose header is consumed) to `out`, as
    /// [`Reader::skip_value`] skips it: a defined length, or items up to the sequence
    /// delimiter (sequence items parsed in `enc`, encapsulated fragments copied).
    fn value(
        &mut self,
        h: &Header,
        enc: Encoding,
        depth: usize,
        out: &mut Out<'_>,
    ) -> Result<(), DicomError> {
        if !h.undefined() {
            return self.pass(u64::from(h.len), out);
        }
        if depth > MAX_DEPTH {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "sequences nested too deeply",
            });
        }
        loop {
            let item = self.required_header(enc)?;
            self.pass((item.value_start - item.start) as u64, out)?;
            match item.tag {
                SEQUENCE_DELIMITER => return Ok(()),
                ITEM if item.undefined() => self.undefined_item(enc, depth + 1, out)?,
                ITEM => self.pass(u64::from(item.len), out)?,
                _ => {
                    return Err(DicomError::Malformed {
                        offset: item.start,
                        reason: "expected a sequence item",
                    })
                }
            }
        }
    }

    /// Passes the rest of an undefined-length item (its elements, then the delimiter), as
    /// [`Reader::skip_undefined_item`] skips it.
    fn undefined_item(
        &mut self,
        enc: Encoding,
        depth: usize,
        out: &mut Out<'_>,
    ) -> Result<(), DicomError> {
        loop {
            let h = self.required_header(enc)?;
            self.pass((h.value_start - h.start) as u64, out)?;
            if h.tag == super::codec::ITEM_DELIMITER {
                return Ok(());
            }
            if h.tag.0 == 0xFFFE {
                return Err(DicomError::Malformed {
                    offset: h.start,
                    reason: "unexpected delimiter in an item",
                });
            }
            self.value(&h, nested_encoding(&h, enc), depth, out)?;
        }
    }
}
