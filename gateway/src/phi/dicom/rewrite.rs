//! The rewrite: one pass over the data set's elements, deciding per element (by tag, by
//! VR, by private creator) whether to copy, replace or drop it, recursing through every
//! sequence level, and writing the result straight to the output.
//!
//! Invariants:
//! - Every element of every item at every depth goes through [`Engine::decide`]; nothing
//!   is copied by default except standard attributes the profile keeps.
//! - Output uses the input's encoding (explicit or implicit VR little endian), so kept
//!   elements, including pixel data, are copied byte for byte from the input slice to the
//!   writer without an intermediate copy. Sequences and items are re-written with
//!   undefined lengths, so no length has to be patched after the fact.
//! - Before any byte is written, a header-only scan of the top level has decided
//!   quarantine, the patient pseudonym and the date shift; a quarantined object writes
//!   nothing.
//! - A decision reads an element's value only through the `value` function it is given
//!   ([`Engine::decide_element`]), and says so (`None`) when it needs a value it was not
//!   given. The streaming path ([`super::stream`]) relies on this: an element decided
//!   without its value is carried out without holding the value ([`Step::Copy`],
//!   [`Step::Replace`]); every other element is read whole and goes through
//!   [`Engine::level`] like the in-memory path. Both paths share one [`LevelState`] per
//!   level, so they write the same bytes.

use std::io::Write;

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

use super::codec::{
    dictionary_vr, looks_like_sequence, nested_encoding, write_header, write_item_header,
    write_text, Encoding, Header, Reader, ITEM, ITEM_DELIMITER, MAX_DEPTH, SEQUENCE_DELIMITER,
    UNDEFINED,
};
use super::options::DatePolicy;
use super::profile::{Action, Profile, Resolved};
use super::values::{self, trim_padding};
use super::{DicomError, DicomRules};

/// Where a data set level ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// At the end of the reader's slice (the top level, or a defined-length item whose
    /// reader was cut to the item).
    Slice,
    /// At an item delimiter.
    Delimiter,
}

/// What a header-only scan of one level found.
#[derive(Default)]
pub(crate) struct LevelFacts<'a> {
    pub patient_id: Option<&'a [u8]>,
    pub issuer: Option<&'a [u8]>,
    pub issuer_universal_id: Option<&'a [u8]>,
    pub sop_class: Option<&'a [u8]>,
    pub sop_instance: Option<&'a [u8]>,
    pub study_instance: Option<&'a [u8]>,
    pub modality: Option<&'a [u8]>,
    pub burned_in_annotation: Option<&'a [u8]>,
    pub recognizable_visual_features: Option<&'a [u8]>,
}

impl<'a> LevelFacts<'a> {
    /// The assigning authority of the level's PatientID: IssuerOfPatientID (0010,0021), or
    /// else the UniversalEntityID (0040,0032) of the first IssuerOfPatientIDQualifiersSequence
    /// (0010,0024) item, or else empty.
    pub(crate) fn authority(&self) -> String {
        [self.issuer, self.issuer_universal_id]
            .into_iter()
            .flatten()
            .map(trim_padding)
            .find(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// The PatientID without padding, if present and not empty.
    pub(crate) fn patient_id(&self) -> Option<String> {
        self.patient_id
            .map(trim_padding)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Scans one level's elements (headers only, values skipped) up to and including `last`.
/// The reader is left wherever the scan stopped: callers pass a clone.
pub(crate) fn scan_level<'a>(
    r: &mut Reader<'a>,
    enc: Encoding,
    end: End,
    last: Tag,
) -> Result<LevelFacts<'a>, DicomError> {
    let mut facts = LevelFacts::default();
    loop {
        if end == End::Slice && r.at_end() {
            break;
        }
        let h = r.header(enc)?;
        if h.tag == ITEM_DELIMITER || h.tag > last {
            break;
        }
        let slot = match h.tag {
            tags::PATIENT_ID => &mut facts.patient_id,
            tags::ISSUER_OF_PATIENT_ID => &mut facts.issuer,
            tags::SOP_CLASS_UID => &mut facts.sop_class,
            tags::SOP_INSTANCE_UID => &mut facts.sop_instance,
            tags::STUDY_INSTANCE_UID => &mut facts.study_instance,
            tags::MODALITY => &mut facts.modality,
            tags::BURNED_IN_ANNOTATION => &mut facts.burned_in_annotation,
            tags::RECOGNIZABLE_VISUAL_FEATURES => &mut facts.recognizable_visual_features,
            tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE => {
                facts.issuer_universal_id =
                    first_item_value(r, &h, enc, tags::UNIVERSAL_ENTITY_ID)?;
                continue;
            }
            _ => {
                r.skip_value(&h, nested_encoding(&h, enc), 0)?;
                continue;
            }
        };
        if h.undefined() || h.vr == VR::SQ {
            r.skip_value(&h, nested_encoding(&h, enc), 0)?;
        } else {
            *slot = Some(r.value(&h)?);
        }
    }
    Ok(facts)
}

/// The value of `want` in the first item of sequence `h`; the reader ends after the sequence.
fn first_item_value<'a>(
    r: &mut Reader<'a>,
    h: &Header,
    enc: Encoding,
    want: Tag,
) -> Result<Option<&'a [u8]>, DicomError> {
    let enc = nested_encoding(h, enc);
    let mut probe = Reader::new(r.buf(), r.pos());
    r.skip_value(h, enc, 0)?;
    let seq_end = r.pos();
    // Look only inside the first item, which ends before the sequence does.
    let item = probe.header(enc)?;
    if item.tag != ITEM {
        return Ok(None);
    }
    let (mut inner, end) = if item.undefined() {
        (
            Reader::new(&probe.buf()[..seq_end], probe.pos()),
            End::Delimiter,
        )
    } else {
        let stop = item
            .value_start
            .saturating_add(item.len as usize)
            .min(seq_end);
        (Reader::new(&probe.buf()[..stop], probe.pos()), End::Slice)
    };
    loop {
        if end == End::Slice && inner.at_end() {
            return Ok(None);
        }
        let e = inner.header(enc)?;
        if e.tag == ITEM_DELIMITER || e.tag > want {
            return Ok(None);
        }
        if e.tag == want && !e.undefined() {
            return Ok(Some(inner.value(&e)?));
        }
        inner.skip_value(&e, nested_encoding(&e, enc), 0)?;
    }
}

/// Output with a small buffer for headers and rewritten values; large kept values go
/// straight from the input slice to the writer.
pub(crate) struct Sink<'w, W: Write> {
    pub buf: Vec<u8>,
    out: &'w mut W,
    written: u64,
}

/// Values at least this large bypass the buffer.
const DIRECT_WRITE: usize = 16 * 1024;

impl<'w, W: Write> Sink<'w, W> {
    pub(crate) fn new(out: &'w mut W) -> Sink<'w, W> {
        Sink {
            buf: Vec::with_capacity(64 * 1024),
            out,
            written: 0,
        }
    }

    /// Copies input bytes to the output.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), DicomError> {
        if bytes.len() >= DIRECT_WRITE {
            self.flush()?;
            self.out.write_all(bytes)?;
            self.written += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
            if self.buf.len() >= 4 * DIRECT_WRITE {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes out what is buffered.
    pub(crate) fn flush(&mut self) -> Result<(), DicomError> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes out what is buffered once it is large; output bytes are the same either way.
    pub(crate) fn flush_if_full(&mut self) -> Result<(), DicomError> {
        if self.buf.len() >= 4 * DIRECT_WRITE {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes written so far (after a flush).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }
}

/// What the rules decide for one element.
pub(crate) enum Decision {
    Drop,
    CopyRaw,
    Empty,
    Dummy,
    MapUid,
    Recurse,
    Text(String),
}

/// How a decision is carried out, grouped by what it needs of the element's value: a
/// streaming caller can carry out [`Step::Copy`] and [`Step::Replace`] without holding the
/// value, the other two read it.
pub(crate) enum Step {
    /// Header and value are copied as they are.
    Copy,
    /// The value is skipped, never looked at, and the replacement written instead.
    Replace(Replacement),
    /// The value is a UID list, written mapped.
    MapUid,
    /// The value is a sequence whose items go through the rules again.
    Recurse,
}

/// What replaces an element whose value is not looked at.
pub(crate) enum Replacement {
    /// Nothing: the element is removed.
    Nothing,
    /// The element with an empty value.
    Empty,
    /// A sequence with one empty item (the dummy of a sequence).
    EmptyItem,
    /// A fixed text value (a dummy, or `ANONYMOUS`).
    Fixed(&'static [u8]),
    /// A binary dummy of this many zero bytes.
    Zeros(u32),
    /// A computed text value.
    Text(String),
}

impl Decision {
    fn step(self, h: &Header) -> Step {
        match self {
            Decision::Drop => Step::Replace(Replacement::Nothing),
            Decision::CopyRaw => Step::Copy,
            Decision::Empty => Step::Replace(Replacement::Empty),
            // One empty item: valid for a type 1 sequence, and carries nothing.
            Decision::Dummy if h.vr == VR::SQ => Step::Replace(Replacement::EmptyItem),
            Decision::Dummy | Decision::MapUid if h.vr == VR::UI => Step::MapUid,
            Decision::Dummy => Step::Replace(match dummy(h.vr) {
                DummyValue::Text(t) => Replacement::Fixed(t),
                DummyValue::Zeros(n) => Replacement::Zeros(n),
            }),
            Decision::MapUid => Step::Replace(Replacement::Fixed(b"ANONYMOUS")),
            Decision::Text(text) => Step::Replace(Replacement::Text(text)),
            Decision::Recurse => Step::Recurse,
        }
    }
}

impl Replacement {
    /// Appends the replacement of the element `h` to `out`.
    pub(crate) fn write(self, h: &Header, enc: Encoding, out: &mut Vec<u8>) {
        match self {
            Replacement::Nothing => {}
            Replacement::Empty => write_header(out, enc, h.tag, h.vr, 0),
            Replacement::EmptyItem => {
                write_header(out, enc, h.tag, h.vr, 8);
                write_item_header(out, ITEM, 0);
            }
            Replacement::Fixed(text) => write_text(out, enc, h.tag, h.vr, text),
            Replacement::Zeros(n) => {
                write_header(out, enc, h.tag, h.vr, n);
                out.extend(std::iter::repeat_n(0u8, n as usize));
            }
            Replacement::Text(text) => write_text(out, enc, h.tag, h.vr, text.as_bytes()),
        }
    }
}

/// Per-object state of one rewrite.
pub(crate) struct Engine<'r> {
    pub rules: &'r DicomRules,
    /// The day shift of this object's patient, when dates are shifted.
    pub shift_days: Option<i64>,
    /// Mapped StudyInstanceUID / SeriesInstanceUID of the top level (for the outcome).
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
}

/// Elements wardgate writes itself at the top level, in tag order, with their bytes.
pub(crate) type Insertions = Vec<(Tag, Vec<u8>)>;

/// Private creators seen in the current level: (group, block, creator). Owned, so a
/// level's state outlives the buffer it was read from (the streaming path reads the top
/// level in pieces).
type Creators = Vec<(u16, u16, Vec<u8>)>;

/// What a level carries from one element to the next.
pub(crate) struct LevelState {
    creators: Creators,
    /// The pseudonym of the patient a nested item names itself.
    pseudonym: Option<String>,
    /// Top level only: the elements wardgate inserts, not yet written.
    insertions: Option<Insertions>,
    depth: usize,
}

impl LevelState {
    /// The state of the top level, which receives `insertions` in tag order; they replace
    /// input elements with the same tag.
    pub(crate) fn top(insertions: Insertions) -> LevelState {
        LevelState {
            creators: Vec::new(),
            pseudonym: None,
            insertions: Some(insertions),
            depth: 0,
        }
    }

    /// Ends the level: writes the insertions that sort after every element of the input.
    pub(crate) fn finish<W: Write>(&mut self, sink: &mut Sink<'_, W>) {
        if let Some(ins) = self.insertions.as_mut() {
            flush_insertions(ins, Tag(0xFFFF, 0xFFFF), sink);
            // Anything left has a tag above every real one: write it too.
            for (_, bytes) in ins.drain(..) {
                sink.buf.extend_from_slice(&bytes);
            }
        }
    }
}

impl Engine<'_> {
    /// The state of a nested level (an item's data set) starting at `r`: the patient of
    /// the item, if it names one (e.g. a referenced patient), gets its own pseudonym.
    fn nested_level(
        &self,
        r: &Reader<'_>,
        enc: Encoding,
        end: End,
        depth: usize,
    ) -> Result<LevelState, DicomError> {
        if depth > MAX_DEPTH {
            return Err(DicomError::Malformed {
                offset: r.pos(),
                reason: "sequences nested too deeply",
            });
        }
        let mut probe = Reader::new(r.buf(), r.pos());
        let facts = scan_level(
            &mut probe,
            enc,
            end,
            tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
        )?;
        let pseudonym = facts
            .patient_id()
            .map(|id| self.rules.key.pseudonym(&id, &facts.authority()).0);
        Ok(LevelState {
            creators: Vec::new(),
            pseudonym,
            insertions: None,
            depth,
        })
    }

    /// Rewrites the elements of one level from `r` until its end, continuing `state` (so
    /// the top level may be fed in several pieces).
    pub(crate) fn level<W: Write>(
        &mut self,
        r: &mut Reader<'_>,
        enc: Encoding,
        end: End,
        state: &mut LevelState,
        sink: &mut Sink<'_, W>,
    ) -> Result<(), DicomError> {
        loop {
            if end == End::Slice && r.at_end() {
                break;
            }
            let h = r.header(enc)?;
            if end == End::Delimiter && h.tag == ITEM_DELIMITER {
                break;
            }
            let (buf, at) = (r.buf(), r.pos());
            let step = self
                .decide_element(&h, enc, state, sink, move || {
                    Reader::new(buf, at).value(&h).map(Some)
                })?
                // The value is always given here, so a decision is always reached.
                .ok_or(DicomError::Malformed {
                    offset: h.start,
                    reason: "element value not available",
                })?;
            let top = state.insertions.is_some();
            self.apply(step, r, &h, enc, state.depth, top, sink)?;
            sink.flush_if_full()?;
        }
        Ok(())
    }

    /// Decides one element of a level whose header has been read, after writing the
    /// insertions due before it. `value` gives the element's value, or `None` if the caller
    /// does not hold it; the result is then `None` if the decision depends on the value.
    pub(crate) fn decide_element<'a, W: Write>(
        &self,
        h: &Header,
        enc: Encoding,
        state: &mut LevelState,
        sink: &mut Sink<'_, W>,
        value: impl Fn() -> Result<Option<&'a [u8]>, DicomError>,
    ) -> Result<Option<Step>, DicomError> {
        if h.tag.0 == 0xFFFE {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "unexpected item or delimiter in a data set",
            });
        }
        if let Some(ins) = state.insertions.as_mut() {
            flush_insertions(ins, h.tag, sink);
            if INSERTED_TAGS.contains(&h.tag) {
                return Ok(Some(Decision::Drop.step(h)));
            }
        }
        let decision = self.decide(
            h,
            enc,
            &mut state.creators,
            state.pseudonym.as_deref(),
            value,
        )?;
        Ok(decision.map(|d| d.step(h)))
    }

    /// Decides what happens to one element; `None` if that depends on a value `value`
    /// does not give.
    fn decide<'a>(
        &self,
        h: &Header,
        enc: Encoding,
        creators: &mut Creators,
        pseudonym: Option<&str>,
        value: impl Fn() -> Result<Option<&'a [u8]>, DicomError>,
    ) -> Result<Option<Decision>, DicomError> {
        let Tag(group, element) = h.tag;
        // Group lengths are obsolete and would be wrong after the rewrite; groups below
        // 0008 (command, file meta, directory) do not belong in a stored data set.
        if element == 0x0000 || group < 0x0008 && group != 0x0004 {
            return Ok(Some(Decision::Drop));
        }
        if group % 2 == 1 {
            return self.decide_private(h, creators, value);
        }
        let explicit_un = h.vr == VR::UN;
        if explicit_un {
            // Unknown VR: kept only for a standard attribute the profile keeps whose
            // dictionary VR is numeric or a code (no names, dates, text, UIDs or sequences).
            let known = if enc == Encoding::ImplicitLe {
                VR::UN
            } else {
                dictionary_vr(h.tag)
            };
            let harmless = matches!(
                known,
                VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD | VR::DS | VR::IS | VR::CS
            );
            let keep =
                harmless && !h.undefined() && self.rules.profile.action(h.tag).is_none() && {
                    let Some(v) = value()? else {
                        return Ok(None);
                    };
                    !looks_like_sequence(v)
                };
            return Ok(Some(if keep {
                Decision::CopyRaw
            } else {
                Decision::Drop
            }));
        }
        if h.tag == tags::PATIENT_ID || h.tag == tags::PATIENT_NAME {
            if let Some(p) = pseudonym {
                return Ok(Some(Decision::Text(p.to_owned())));
            }
        }
        let action = self.rules.profile.action(h.tag);
        if matches!(h.vr, VR::DA | VR::DT | VR::TM) {
            return self.decide_date(h, action, value);
        }
        let resolved = match action {
            Some(a) => a.resolve(),
            None if h.vr == VR::UI && !Profile::is_definition_uid(h.tag) => Resolved::MapUid,
            // A person name the table does not list is still a name.
            None if h.vr == VR::PN => Resolved::Empty,
            None => Resolved::Keep,
        };
        Ok(Some(match resolved {
            Resolved::Remove => Decision::Drop,
            Resolved::Empty => Decision::Empty,
            Resolved::Dummy => Decision::Dummy,
            Resolved::MapUid if h.vr == VR::SQ => Decision::Recurse,
            Resolved::MapUid => Decision::MapUid,
            Resolved::Keep if h.vr == VR::SQ => Decision::Recurse,
            Resolved::Keep if h.tag == tags::PATIENT_AGE => {
                let Some(age) = value()? else {
                    return Ok(None);
                };
                match values::cap_age(age) {
                    Some(age) => Decision::Text(age),
                    None => Decision::Empty,
                }
            }
            Resolved::Keep => Decision::CopyRaw,
        }))
    }

    fn decide_private<'a>(
        &self,
        h: &Header,
        creators: &mut Creators,
        value: impl Fn() -> Result<Option<&'a [u8]>, DicomError>,
    ) -> Result<Option<Decision>, DicomError> {
        let Tag(group, element) = h.tag;
        let safe = &self.rules.options.safe_private;
        if group <= 0x0007 || group == 0xFFFF || (0x0001..=0x000F).contains(&element) {
            return Ok(Some(Decision::Drop));
        }
        if (0x0010..=0x00FF).contains(&element) {
            if h.undefined() {
                return Ok(Some(Decision::Drop));
            }
            let Some(raw) = value()? else {
                return Ok(None);
            };
            let creator = trim_padding(raw);
            let needed = safe
                .iter()
                .any(|s| s.group == group && s.creator.trim_end().as_bytes() == creator);
            creators.push((group, element, creator.to_vec()));
            return Ok(Some(if needed {
                Decision::CopyRaw
            } else {
                Decision::Drop
            }));
        }
        let block = element >> 8;
        let Some((_, _, creator)) = creators
            .iter()
            .rev()
            .find(|(g, b, _)| *g == group && *b == block)
        else {
            return Ok(Some(Decision::Drop));
        };
        let listed = safe.iter().any(|s| {
            s.group == group
                && u16::from(s.element) == element & 0xFF
                && s.creator.trim_end().as_bytes() == creator.as_slice()
        });
        // A safe-listed element is kept only as a plain value: a sequence could hold anything.
        if !listed || h.vr == VR::SQ || h.undefined() {
            return Ok(Some(Decision::Drop));
        }
        let Some(v) = value()? else {
            return Ok(None);
        };
        Ok(Some(if looks_like_sequence(v) {
            Decision::Drop
        } else {
            Decision::CopyRaw
        }))
    }

    fn decide_date<'a>(
        &self,
        h: &Header,
        action: Option<Action>,
        value: impl Fn() -> Result<Option<&'a [u8]>, DicomError>,
    ) -> Result<Option<Decision>, DicomError> {
        if h.tag == tags::PATIENT_BIRTH_DATE {
            // Never shifted or kept: with the shift known from one real date it would give
            // the real birth date back.
            return Ok(Some(Decision::Empty));
        }
        if h.tag == tags::PATIENT_BIRTH_TIME || h.undefined() {
            return Ok(Some(Decision::Drop));
        }
        Ok(Some(match (self.rules.options.dates, self.shift_days) {
            (DatePolicy::Keep, _) => Decision::CopyRaw,
            (DatePolicy::Shift, Some(days)) => {
                let shift: fn(&[u8], i64) -> Option<String> = match h.vr {
                    VR::DA => values::shift_da,
                    VR::DT => values::shift_dt,
                    // A whole-day shift leaves the time of day as it is.
                    _ => return Ok(Some(Decision::CopyRaw)),
                };
                let Some(v) = value()? else {
                    return Ok(None);
                };
                shift(v, days).map_or(Decision::Empty, Decision::Text)
            }
            _ => match action.map(Action::resolve) {
                None => Decision::Empty,
                // Kept by an option (last menstrual date) but dates are not retained:
                // the basic action (X) applies.
                Some(Resolved::Keep) => Decision::Drop,
                Some(Resolved::Remove) => Decision::Drop,
                Some(Resolved::Empty) => Decision::Empty,
                Some(Resolved::Dummy | Resolved::MapUid) => Decision::Dummy,
            },
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply<W: Write>(
        &mut self,
        step: Step,
        r: &mut Reader<'_>,
        h: &Header,
        enc: Encoding,
        depth: usize,
        top: bool,
        sink: &mut Sink<'_, W>,
    ) -> Result<(), DicomError> {
        match step {
            Step::Copy => {
                let start = h.start;
                r.skip_value(h, nested_encoding(h, enc), depth)?;
                sink.raw(&r.buf()[start..r.pos()])?;
            }
            Step::Replace(replacement) => {
                r.skip_value(h, nested_encoding(h, enc), depth)?;
                replacement.write(h, enc, &mut sink.buf);
            }
            Step::MapUid => self.write_mapped_uid(r, h, enc, top, sink)?,
            Step::Recurse => self.sequence(r, h, enc, depth, sink)?,
        }
        Ok(())
    }

    fn write_mapped_uid<W: Write>(
        &mut self,
        r: &mut Reader<'_>,
        h: &Header,
        enc: Encoding,
        top: bool,
        sink: &mut Sink<'_, W>,
    ) -> Result<(), DicomError> {
        if h.undefined() {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "undefined length on a UID",
            });
        }
        let mapped = values::map_uid_list(&self.rules.key, r.value(h)?);
        if top && h.tag == tags::STUDY_INSTANCE_UID {
            self.study_uid = Some(mapped.clone());
        } else if top && h.tag == tags::SERIES_INSTANCE_UID {
            self.series_uid = Some(mapped.clone());
        }
        write_text(&mut sink.buf, enc, h.tag, VR::UI, mapped.as_bytes());
        Ok(())
    }

    /// Rewrites a kept sequence: every item's data set goes through the rules again.
    fn sequence<W: Write>(
        &mut self,
        r: &mut Reader<'_>,
        h: &Header,
        enc: Encoding,
        depth: usize,
        sink: &mut Sink<'_, W>,
    ) -> Result<(), DicomError> {
        let enc = nested_encoding(h, enc);
        write_header(&mut sink.buf, enc, h.tag, VR::SQ, UNDEFINED);
        let buf = r.buf();
        // A defined-length sequence: its items must end where it does.
        let seq_end = if h.undefined() {
            None
        } else {
            Some(
                h.value_start
                    .checked_add(h.len as usize)
                    .filter(|&e| e <= buf.len())
                    .ok_or(DicomError::Truncated { offset: h.start })?,
            )
        };
        let mut items = Reader::new(seq_end.map_or(buf, |e| &buf[..e]), r.pos());
        loop {
            if seq_end.is_some() && items.at_end() {
                break;
            }
            let item = items.header(enc)?;
            if item.tag == SEQUENCE_DELIMITER && seq_end.is_none() {
                break;
            }
            if item.tag != ITEM {
                return Err(DicomError::Malformed {
                    offset: item.start,
                    reason: "expected a sequence item",
                });
            }
            write_item_header(&mut sink.buf, ITEM, UNDEFINED);
            if item.undefined() {
                let mut state = self.nested_level(&items, enc, End::Delimiter, depth + 1)?;
                self.level(&mut items, enc, End::Delimiter, &mut state, sink)?;
            } else {
                let item_end = item
                    .value_start
                    .checked_add(item.len as usize)
                    .filter(|&e| e <= items.buf().len())
                    .ok_or(DicomError::Truncated { offset: item.start })?;
                let mut inner = Reader::new(&items.buf()[..item_end], item.value_start);
                let mut state = self.nested_level(&inner, enc, End::Slice, depth + 1)?;
                self.level(&mut inner, enc, End::Slice, &mut state, sink)?;
                items.seek(item_end);
            }
            write_item_header(&mut sink.buf, ITEM_DELIMITER, 0);
        }
        write_item_header(&mut sink.buf, SEQUENCE_DELIMITER, 0);
        r.seek(items.pos());
        sink.flush_if_full()
    }
}

/// Top-level attributes the input may carry but wardgate always writes itself.
const INSERTED_TAGS: [Tag; 6] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_IDENTITY_REMOVED,
    tags::DEIDENTIFICATION_METHOD,
    tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
    tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
];

/// Writes the insertions whose tag is below `next`.
fn flush_insertions<W: Write>(ins: &mut Insertions, next: Tag, sink: &mut Sink<'_, W>) {
    while ins.first().is_some_and(|(t, _)| *t < next) {
        let (_, bytes) = ins.remove(0);
        sink.buf.extend_from_slice(&bytes);
    }
}

enum DummyValue {
    Text(&'static [u8]),
    Zeros(u32),
}

/// The dummy value of the `D` action for a VR.
fn dummy(vr: VR) -> DummyValue {
    match vr {
        VR::DA => DummyValue::Text(b"19000101"),
        VR::DT => DummyValue::Text(b"19000101000000"),
        VR::TM => DummyValue::Text(b"000000"),
        VR::AS => DummyValue::Text(b"000Y"),
        VR::DS | VR::IS => DummyValue::Text(b"0"),
        VR::US | VR::SS => DummyValue::Zeros(2),
        VR::UL | VR::SL | VR::FL | VR::AT => DummyValue::Zeros(4),
        VR::FD | VR::SV | VR::UV => DummyValue::Zeros(8),
        VR::OB | VR::OW | VR::OD | VR::OF | VR::OL | VR::OV | VR::UN => DummyValue::Zeros(8),
        _ => DummyValue::Text(b"ANONYMOUS"),
    }
}

/// Builds the top-level elements wardgate adds, sorted by tag.
pub(crate) fn insertions(rules: &DicomRules, enc: Encoding, pseudonym: &str) -> Insertions {
    let element = |tag: Tag, vr: VR, text: &[u8]| {
        let mut b = Vec::new();
        write_text(&mut b, enc, tag, vr, text);
        (tag, b)
    };
    let mut codes = Vec::new();
    write_header(
        &mut codes,
        enc,
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        UNDEFINED,
    );
    for (value, meaning) in rules.method_codes() {
        write_item_header(&mut codes, ITEM, UNDEFINED);
        write_text(&mut codes, enc, tags::CODE_VALUE, VR::SH, value.as_bytes());
        write_text(
            &mut codes,
            enc,
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            b"DCM",
        );
        write_text(
            &mut codes,
            enc,
            tags::CODE_MEANING,
            VR::LO,
            meaning.as_bytes(),
        );
        write_item_header(&mut codes, ITEM_DELIMITER, 0);
    }
    write_item_header(&mut codes, SEQUENCE_DELIMITER, 0);
    let longitudinal: &[u8] = match rules.options.dates {
        DatePolicy::Remove => b"REMOVED",
        DatePolicy::Shift => b"MODIFIED",
        DatePolicy::Keep => b"UNMODIFIED",
    };
    vec![
        element(tags::PATIENT_NAME, VR::PN, pseudonym.as_bytes()),
        element(tags::PATIENT_ID, VR::LO, pseudonym.as_bytes()),
        element(tags::PATIENT_IDENTITY_REMOVED, VR::CS, b"YES"),
        element(
            tags::DEIDENTIFICATION_METHOD,
            VR::LO,
            rules.method_text().as_bytes(),
        ),
        (tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, codes),
        element(
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            longitudinal,
        ),
    ]
}
