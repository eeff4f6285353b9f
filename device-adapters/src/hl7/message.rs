//! HL7 v2 (ER7, "pipe and hat") message parser.
//!
//! [`Message::parse`] takes the bytes of one MLLP frame and builds a segment index; fields,
//! repetitions, components and sub-components are located lazily on access (one message is
//! read once, by [`crate::hl7::pcd`], so indexing every field up front would cost more
//! than it saves). All accessors are 1-based, like HL7 positions, and an absent position
//! reads as empty, never as an error: "not sent" and "sent empty" are the same in ER7.
//!
//! Decisions and invariants:
//! - **Delimiters come from the message.** MSH-1 is the field separator; MSH-2 holds the
//!   component, repetition, escape and sub-component characters and, from v2.7, a fifth
//!   (truncation) character. Delimiters must be ASCII punctuation and distinct; then
//!   splitting on them is byte-exact even in UTF-8 text.
//! - **MSH numbering quirk.** `MSH-1` is the field separator itself and `MSH-2` the
//!   encoding characters; both are returned literally (never split, never unescaped).
//! - **Segment terminators.** CR per the standard; LF and CRLF are tolerated, and blank
//!   lines are skipped.
//! - **Escapes are decoded on access** (`\F\ \S\ \T\ \R\ \E\`, `\P\` for v2.7 truncation,
//!   `\Xhh..\` hex). Unknown or malformed escape sequences (e.g. `\H\`, `\.br\`, an odd
//!   number of hex digits, a missing closing escape) are kept literally, so no input is
//!   lost or rejected because of an escape.
//! - **Character set.** Frames that are valid UTF-8 are read as UTF-8. Anything else is
//!   read as ISO-8859-1 (each byte is one character), which is lossless, never fails and
//!   is right for the Latin-1 devices that exist; MSH-18 is not consulted because devices
//!   often declare it wrongly. [`Message::text_encoding`] says which was used.
//! - **Never panics on input**, and errors carry a location (segment id, its sequence,
//!   field) for the ERR segment of an AE. Error values never contain message content.
//! - `Debug` of every type here that can reach message content prints
//!   [`crate::REDACTED`].

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::hl7::ack::ErrorCode;
use crate::REDACTED;

/// The delimiters of one message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), normally `|`.
    pub field: char,
    /// Component separator, normally `^`.
    pub component: char,
    /// Repetition separator, normally `~`.
    pub repetition: char,
    /// Escape character, normally `\`.
    pub escape: char,
    /// Sub-component separator, normally `&`.
    pub subcomponent: char,
    /// Truncation character (v2.7+, normally `#`), when MSH-2 has a fifth character.
    pub truncation: Option<char>,
}

impl Delimiters {
    /// `|^~\&`: what every device in practice sends, and what our ACKs use.
    pub const STANDARD: Delimiters = Delimiters {
        field: '|',
        component: '^',
        repetition: '~',
        escape: '\\',
        subcomponent: '&',
        truncation: None,
    };

    /// MSH-2 as it is written for these delimiters.
    #[must_use]
    pub fn encoding_characters(&self) -> String {
        let mut s = String::with_capacity(5);
        s.push(self.component);
        s.push(self.repetition);
        s.push(self.escape);
        s.push(self.subcomponent);
        if let Some(t) = self.truncation {
            s.push(t);
        }
        s
    }

    fn escape_for(&self, c: char) -> Option<char> {
        match c {
            _ if c == self.field => Some('F'),
            _ if c == self.component => Some('S'),
            _ if c == self.subcomponent => Some('T'),
            _ if c == self.repetition => Some('R'),
            _ if c == self.escape => Some('E'),
            _ if Some(c) == self.truncation => Some('P'),
            _ => None,
        }
    }
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters::STANDARD
    }
}

/// How the frame's bytes were turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// The frame was valid UTF-8 (which includes plain ASCII).
    Utf8,
    /// The frame was not valid UTF-8 and was read as ISO-8859-1.
    Latin1,
}

/// Where in a message something is wrong: what an ERR segment's ERR-2 reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorLocation {
    /// Segment id, e.g. `OBX`.
    pub segment: String,
    /// 1-based occurrence of that segment id in the message (the second OBX is 2), when
    /// known.
    pub sequence: Option<u32>,
    /// Field position, when the error is about one field.
    pub field: Option<u16>,
}

impl ErrorLocation {
    /// A location naming a segment occurrence and, optionally, a field.
    #[must_use]
    pub fn new(segment: &str, sequence: Option<u32>, field: Option<u16>) -> Self {
        ErrorLocation {
            segment: segment.to_owned(),
            sequence,
            field,
        }
    }
}

impl std::fmt::Display for ErrorLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segment)?;
        if let Some(seq) = self.sequence {
            write!(f, "[{seq}]")?;
        }
        if let Some(field) = self.field {
            write!(f, "-{field}")?;
        }
        Ok(())
    }
}

/// Why a frame is not a parseable HL7 v2 message. Messages never include content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame holds no segment at all.
    #[error("the message is empty")]
    Empty,
    /// The first segment is not MSH (batches with FHS/BHS are not supported either).
    #[error("the message does not start with an MSH segment")]
    MissingMsh,
    /// MSH-1 is not an ASCII punctuation character.
    #[error("MSH-1 (field separator) is not a valid delimiter")]
    InvalidFieldSeparator,
    /// MSH-2 is not 4 or 5 distinct ASCII punctuation characters different from MSH-1.
    #[error("MSH-2 (encoding characters) must be 4 or 5 distinct delimiter characters")]
    InvalidEncodingCharacters,
    /// A segment does not start with a 3-character upper-case id followed by the field
    /// separator (often a raw line break inside a field value).
    #[error("segment {position} does not start with a valid segment id")]
    InvalidSegmentId {
        /// 1-based position of the segment in the message.
        position: usize,
    },
    /// A second MSH: a frame must carry exactly one message.
    #[error("segment {position} is a second MSH; a frame must carry one message")]
    RepeatedMsh {
        /// 1-based position of the segment in the message.
        position: usize,
    },
}

impl ParseError {
    /// Where the error is, for ERR-2 (when it can be named without quoting content).
    #[must_use]
    pub fn location(&self) -> Option<ErrorLocation> {
        match self {
            ParseError::Empty | ParseError::MissingMsh => {
                Some(ErrorLocation::new("MSH", None, None))
            }
            ParseError::InvalidFieldSeparator => Some(ErrorLocation::new("MSH", Some(1), Some(1))),
            ParseError::InvalidEncodingCharacters => {
                Some(ErrorLocation::new("MSH", Some(1), Some(2)))
            }
            ParseError::InvalidSegmentId { .. } => None,
            ParseError::RepeatedMsh { .. } => Some(ErrorLocation::new("MSH", Some(2), None)),
        }
    }

    /// The HL7 table 0357 code for ERR-3.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::InvalidFieldSeparator | ParseError::InvalidEncodingCharacters => {
                ErrorCode::DataTypeError
            }
            ParseError::Empty
            | ParseError::MissingMsh
            | ParseError::InvalidSegmentId { .. }
            | ParseError::RepeatedMsh { .. } => ErrorCode::SegmentSequenceError,
        }
    }
}

#[derive(Clone, Copy)]
struct SegmentEntry {
    start: usize,
    end: usize,
    id: [u8; 3],
    sequence: u32,
}

/// A parsed HL7 v2 message. See the module documentation.
pub struct Message {
    text: String,
    delimiters: Delimiters,
    encoding: TextEncoding,
    segments: Vec<SegmentEntry>,
}

impl Message {
    /// Parses one message (the content of one MLLP frame).
    ///
    /// # Errors
    /// [`ParseError`] when the frame is not an HL7 v2 message; it says where.
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        Self::parse_inner(bytes, false)
    }

    /// Parses only the first segment (the MSH). Used to answer a message whose body could
    /// not be parsed, or whose frame was too large, with an ACK that still echoes MSH-10.
    ///
    /// # Errors
    /// [`ParseError`] when the MSH itself is unusable.
    pub fn parse_header(bytes: &[u8]) -> Result<Message, ParseError> {
        Self::parse_inner(bytes, true)
    }

    fn parse_inner(bytes: &[u8], header_only: bool) -> Result<Message, ParseError> {
        let (text, encoding) = decode_text(bytes);
        let text = strip_leading(text);
        if text.is_empty() {
            return Err(ParseError::Empty);
        }
        if !text.starts_with("MSH") {
            return Err(ParseError::MissingMsh);
        }
        let delimiters = read_delimiters(&text)?;
        let field_sep = delimiters.field as u8;
        let raw = text.as_bytes();

        let mut segments: Vec<SegmentEntry> = Vec::new();
        let mut counts: Vec<([u8; 3], u32)> = Vec::new();
        let mut start = 0;
        while start < raw.len() {
            let end = raw[start..]
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .map_or(raw.len(), |p| start + p);
            let line = &raw[start..end];
            if !line.iter().all(u8::is_ascii_whitespace) {
                let position = segments.len() + 1;
                let id =
                    segment_id(line, field_sep).ok_or(ParseError::InvalidSegmentId { position })?;
                let sequence = match counts.iter_mut().find(|(seen, _)| *seen == id) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        counts.push((id, 1));
                        1
                    }
                };
                if &id == b"MSH" && sequence > 1 {
                    return Err(ParseError::RepeatedMsh { position });
                }
                segments.push(SegmentEntry {
                    start,
                    end,
                    id,
                    sequence,
                });
                if header_only {
                    break;
                }
            }
            start = end + 1;
        }
        Ok(Message {
            text,
            delimiters,
            encoding,
            segments,
        })
    }

    /// The message's delimiters.
    #[must_use]
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// How the bytes were decoded into text.
    #[must_use]
    pub fn text_encoding(&self) -> TextEncoding {
        self.encoding
    }

    /// Number of segments.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The MSH segment (always the first).
    #[must_use]
    pub fn msh(&self) -> Segment<'_> {
        Segment {
            message: self,
            index: 0,
        }
    }

    /// All segments, in order.
    pub fn all_segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        (0..self.segments.len()).map(move |index| Segment {
            message: self,
            index,
        })
    }

    /// The segments with the given id, in order (e.g. `segments("OBX")`).
    pub fn segments<'s>(&'s self, id: &'s str) -> impl Iterator<Item = Segment<'s>> + 's {
        self.all_segments().filter(move |s| s.id() == id)
    }

    /// The first segment with the given id.
    #[must_use]
    pub fn segment(&self, id: &str) -> Option<Segment<'_>> {
        self.all_segments().find(|s| s.id() == id)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("segments", &self.segments.len())
            .field("content", &REDACTED)
            .finish()
    }
}

fn decode_text(bytes: &[u8]) -> (String, TextEncoding) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), TextEncoding::Utf8),
        Err(_) => (
            bytes.iter().map(|&b| char::from(b)).collect(),
            TextEncoding::Latin1,
        ),
    }
}

/// Drops a byte-order mark and leading blank space some devices send before the MSH.
fn strip_leading(text: String) -> String {
    let trimmed = text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_ascii_whitespace());
    if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_owned()
    }
}

fn is_delimiter_char(c: char) -> bool {
    c.is_ascii_punctuation()
}

fn read_delimiters(text: &str) -> Result<Delimiters, ParseError> {
    let mut chars = text[3..].chars();
    let field = chars
        .next()
        .filter(|&c| is_delimiter_char(c))
        .ok_or(ParseError::InvalidFieldSeparator)?;
    let encoding: Vec<char> = chars
        .take_while(|&c| c != field && c != '\r' && c != '\n')
        .take(6)
        .collect();
    if !(4..=5).contains(&encoding.len()) || !encoding.iter().all(|&c| is_delimiter_char(c)) {
        return Err(ParseError::InvalidEncodingCharacters);
    }
    let mut all = encoding.clone();
    all.push(field);
    all.sort_unstable();
    all.dedup();
    if all.len() != encoding.len() + 1 {
        return Err(ParseError::InvalidEncodingCharacters);
    }
    Ok(Delimiters {
        field,
        component: encoding[0],
        repetition: encoding[1],
        escape: encoding[2],
        subcomponent: encoding[3],
        truncation: encoding.get(4).copied(),
    })
}

fn segment_id(line: &[u8], field_sep: u8) -> Option<[u8; 3]> {
    let id: [u8; 3] = line.get(..3)?.try_into().ok()?;
    let valid_id = id
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && id[0].is_ascii_uppercase();
    let separated = line.get(3).is_none_or(|&b| b == field_sep);
    (valid_id && separated).then_some(id)
}

/// One segment of a [`Message`].
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    message: &'a Message,
    index: usize,
}

impl<'a> Segment<'a> {
    fn entry(&self) -> &'a SegmentEntry {
        &self.message.segments[self.index]
    }

    /// The segment id, e.g. `OBX`.
    #[must_use]
    pub fn id(&self) -> &'a str {
        let e = self.entry();
        &self.message.text[e.start..e.start + 3]
    }

    /// 1-based occurrence of this segment id in the message (the second OBX is 2).
    #[must_use]
    pub fn sequence(&self) -> u32 {
        self.entry().sequence
    }

    /// 1-based position of this segment in the message.
    #[must_use]
    pub fn position(&self) -> usize {
        self.index + 1
    }

    /// The segment's raw text (escape sequences not decoded).
    #[must_use]
    pub fn raw(&self) -> &'a str {
        let e = self.entry();
        &self.message.text[e.start..e.end]
    }

    fn is_msh(&self) -> bool {
        &self.entry().id == b"MSH"
    }

    /// Field `n` (1-based; `field(0)` is the segment id). Absent fields are empty.
    /// For MSH, `field(1)` is the field separator and `field(2)` the encoding characters,
    /// both literal.
    #[must_use]
    pub fn field(&self, n: usize) -> Field<'a> {
        let raw = self.raw();
        let delimiters = &self.message.delimiters;
        let literal = |raw: &'a str| Field {
            raw,
            delimiters,
            literal: true,
        };
        if self.is_msh() {
            match n {
                0 => literal(&raw[..3]),
                1 => literal(&raw[3..4]),
                _ => {
                    let mut rest = Pieces::new(&raw[4..], delimiters.field);
                    let value = rest.nth(n - 2).unwrap_or("");
                    Field {
                        raw: value,
                        delimiters,
                        literal: n == 2,
                    }
                }
            }
        } else {
            let value = Pieces::new(raw, delimiters.field).nth(n).unwrap_or("");
            Field {
                raw: value,
                delimiters,
                literal: n == 0,
            }
        }
    }

    /// Number of fields present (for MSH, counting MSH-1).
    #[must_use]
    pub fn field_count(&self) -> usize {
        let raw = self.raw();
        let pieces = Pieces::new(raw, self.message.delimiters.field).count();
        if self.is_msh() {
            pieces
        } else {
            pieces - 1
        }
    }

    /// An [`ErrorLocation`] for field `field` of this segment.
    #[must_use]
    pub fn location(&self, field: u16) -> ErrorLocation {
        ErrorLocation::new(self.id(), Some(self.sequence()), Some(field))
    }

    /// An [`ErrorLocation`] for this segment as a whole.
    #[must_use]
    pub fn segment_location(&self) -> ErrorLocation {
        ErrorLocation::new(self.id(), Some(self.sequence()), None)
    }
}

impl std::fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id())
            .field("sequence", &self.sequence())
            .field("content", &REDACTED)
            .finish()
    }
}

/// One field: repetitions separated by the repetition separator.
#[derive(Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: &'a Delimiters,
    literal: bool,
}

impl<'a> Field<'a> {
    /// The raw text (escape sequences not decoded).
    #[must_use]
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the field is absent or empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The repetitions (at least one, possibly empty).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let (delimiters, literal) = (self.delimiters, self.literal);
        let sep = if literal {
            None
        } else {
            Some(delimiters.repetition)
        };
        split_opt(self.raw, sep).map(move |raw| Repetition {
            raw,
            delimiters,
            literal,
        })
    }

    /// Repetition `r` (1-based); empty when absent.
    #[must_use]
    pub fn repetition(&self, r: usize) -> Repetition<'a> {
        let empty = Repetition {
            raw: "",
            delimiters: self.delimiters,
            literal: self.literal,
        };
        if r == 0 {
            return empty;
        }
        self.repetitions().nth(r - 1).unwrap_or(empty)
    }

    /// Number of repetitions that carry a value.
    #[must_use]
    pub fn non_empty_repetitions(&self) -> usize {
        self.repetitions().filter(|r| !r.is_empty()).count()
    }

    /// Component `c` of repetition `r` (both 1-based), escape sequences decoded.
    #[must_use]
    pub fn component(&self, r: usize, c: usize) -> Cow<'a, str> {
        self.repetition(r).component(c).decoded()
    }

    /// The first component of the first repetition, decoded: the value of a simple field.
    #[must_use]
    pub fn value(&self) -> Cow<'a, str> {
        self.component(1, 1)
    }

    /// The whole field decoded; separators stay literal.
    #[must_use]
    pub fn decoded(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delimiters)
        }
    }

    /// The field re-written for other delimiters (each sub-component decoded and escaped
    /// again), e.g. to echo a device's MSH-3 in an ACK that uses [`Delimiters::STANDARD`].
    #[must_use]
    pub fn reencode(&self, target: &Delimiters) -> String {
        let mut out = String::with_capacity(self.raw.len());
        for (ri, rep) in self.repetitions().enumerate() {
            if ri > 0 {
                out.push(target.repetition);
            }
            for (ci, comp) in rep.components().enumerate() {
                if ci > 0 {
                    out.push(target.component);
                }
                for (si, sub) in comp.subcomponents().enumerate() {
                    if si > 0 {
                        out.push(target.subcomponent);
                    }
                    out.push_str(&escape(&sub, target));
                }
            }
        }
        out
    }
}

impl std::fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One repetition of a field: components separated by the component separator.
#[derive(Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    delimiters: &'a Delimiters,
    literal: bool,
}

impl<'a> Repetition<'a> {
    /// The raw text.
    #[must_use]
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the repetition is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The components (at least one, possibly empty).
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + 'a {
        let (delimiters, literal) = (self.delimiters, self.literal);
        let sep = if literal {
            None
        } else {
            Some(delimiters.component)
        };
        split_opt(self.raw, sep).map(move |raw| Component {
            raw,
            delimiters,
            literal,
        })
    }

    /// Component `c` (1-based); empty when absent.
    #[must_use]
    pub fn component(&self, c: usize) -> Component<'a> {
        let empty = Component {
            raw: "",
            delimiters: self.delimiters,
            literal: self.literal,
        };
        if c == 0 {
            return empty;
        }
        self.components().nth(c - 1).unwrap_or(empty)
    }

    /// The whole repetition decoded; component separators stay literal.
    #[must_use]
    pub fn decoded(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delimiters)
        }
    }
}

impl std::fmt::Debug for Repetition<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One component: sub-components separated by the sub-component separator.
#[derive(Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    delimiters: &'a Delimiters,
    literal: bool,
}

impl<'a> Component<'a> {
    /// The raw text.
    #[must_use]
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the component is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The decoded sub-components (at least one, possibly empty).
    pub fn subcomponents(&self) -> impl Iterator<Item = Cow<'a, str>> + 'a {
        let (delimiters, literal) = (self.delimiters, self.literal);
        let sep = if literal {
            None
        } else {
            Some(delimiters.subcomponent)
        };
        split_opt(self.raw, sep).map(move |raw| {
            if literal {
                Cow::Borrowed(raw)
            } else {
                unescape(raw, delimiters)
            }
        })
    }

    /// Sub-component `s` (1-based), decoded; empty when absent.
    #[must_use]
    pub fn subcomponent(&self, s: usize) -> Cow<'a, str> {
        if s == 0 {
            return Cow::Borrowed("");
        }
        self.subcomponents().nth(s - 1).unwrap_or(Cow::Borrowed(""))
    }

    /// The whole component decoded; sub-component separators stay literal.
    #[must_use]
    pub fn decoded(&self) -> Cow<'a, str> {
        if self.literal {
            Cow::Borrowed(self.raw)
        } else {
            unescape(self.raw, self.delimiters)
        }
    }
}

impl std::fmt::Debug for Component<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `str::split` for a delimiter: a byte search when the delimiter is ASCII (always, for
/// parsed messages), which avoids the per-match comparison `split(char)` makes.
struct Pieces<'a> {
    rest: Option<&'a str>,
    sep: char,
}

impl<'a> Pieces<'a> {
    fn new(raw: &'a str, sep: char) -> Self {
        Pieces {
            rest: Some(raw),
            sep,
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let found = if self.sep.is_ascii() {
            let sep = self.sep as u8;
            rest.bytes().position(|b| b == sep)
        } else {
            rest.find(self.sep)
        };
        match found {
            Some(at) => {
                self.rest = rest.get(at + self.sep.len_utf8()..);
                rest.get(..at)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Splits on `sep`, or yields `raw` whole when there is no separator to split on.
fn split_opt(raw: &str, sep: Option<char>) -> impl Iterator<Item = &str> {
    let (whole, parts) = match sep {
        Some(sep) => (None, Some(Pieces::new(raw, sep))),
        None => (Some(raw), None),
    };
    whole.into_iter().chain(parts.into_iter().flatten())
}

/// Decodes HL7 escape sequences in one leaf value (split first, then unescape). Unknown or
/// malformed sequences are kept literally.
#[must_use]
pub fn unescape<'a>(raw: &'a str, delimiters: &Delimiters) -> Cow<'a, str> {
    let esc = delimiters.escape;
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let esc_len = esc.len_utf8();
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc_len..];
        let Some(end) = after.find(esc) else {
            // No closing escape character: keep the remainder as it is.
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let sequence = &after[..end];
        if !decode_sequence(sequence, delimiters, &mut out) {
            out.push(esc);
            out.push_str(sequence);
            out.push(esc);
        }
        rest = &after[end + esc_len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the meaning of one escape sequence (without its escape characters); `false`
/// when the sequence is not one we decode.
fn decode_sequence(sequence: &str, d: &Delimiters, out: &mut String) -> bool {
    let decoded = match sequence {
        "F" => d.field,
        "S" => d.component,
        "T" => d.subcomponent,
        "R" => d.repetition,
        "E" => d.escape,
        "P" => match d.truncation {
            Some(t) => t,
            None => return false,
        },
        _ => {
            let Some(hex) = sequence.strip_prefix('X') else {
                return false;
            };
            return decode_hex(hex, out);
        }
    };
    out.push(decoded);
    true
}

fn decode_hex(hex: &str, out: &mut String) -> bool {
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let bytes: Vec<u8> = hex
        .as_bytes()
        .chunks_exact(2)
        .filter_map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
        })
        .collect();
    match std::str::from_utf8(&bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.extend(bytes.iter().map(|&b| char::from(b))),
    }
    true
}

/// Escapes text for use as one leaf value with `delimiters`: every delimiter becomes its
/// escape sequence and every control character (CR, LF, the MLLP block characters, ...)
/// becomes `\Xhh\`, so the text can neither break the message structure nor the MLLP
/// framing. `unescape(escape(s)) == s` for every `s`.
#[must_use]
pub fn escape<'a>(text: &'a str, delimiters: &Delimiters) -> Cow<'a, str> {
    let needs = |c: char| c.is_ascii_control() || delimiters.escape_for(c).is_some();
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if let Some(code) = delimiters.escape_for(c) {
            out.push(delimiters.escape);
            out.push(code);
            out.push(delimiters.escape);
        } else if c.is_ascii_control() {
            out.push(delimiters.escape);
            let _ = write!(out, "X{:02X}", u32::from(c));
            out.push(delimiters.escape);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "MSH|^~\\&|MONITOR^0011223344556677^EUI-64||||20250101120000||ORU^R01^ORU_R01|1|P|2.6|||AL|NE\r\
PID|||MRN1^^^HOSP^PI~MRN2^^^OTHER&1.2.3&ISO^MR||DOE^JANE\r\
OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC\r\
OBX|2|ST|1^TEXT^L||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\H\\g\r";

    #[test]
    fn msh_numbering_quirk() {
        let msg = Message::parse(SAMPLE.as_bytes()).unwrap();
        let msh = msg.msh();
        assert_eq!(msh.id(), "MSH");
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        assert_eq!(
            msh.field(2).value(),
            "^~\\&",
            "MSH-2 is never split or unescaped"
        );
        assert_eq!(msh.field(3).component(1, 1), "MONITOR");
        assert_eq!(msh.field(3).component(1, 2), "0011223344556677");
        assert_eq!(msh.field(7).value(), "20250101120000");
        assert_eq!(msh.field(9).component(1, 2), "R01");
        assert_eq!(msh.field(10).value(), "1");
        assert_eq!(msh.field(12).value(), "2.6");
        assert_eq!(msh.field(15).value(), "AL");
        assert_eq!(msh.field(16).value(), "NE");
        assert!(msh.field(17).is_empty());
        assert_eq!(msh.field_count(), 16);
    }

    #[test]
    fn repetitions_components_subcomponents() {
        let msg = Message::parse(SAMPLE.as_bytes()).unwrap();
        let pid = msg.segment("PID").unwrap();
        let ids = pid.field(3);
        assert_eq!(ids.repetitions().count(), 2);
        assert_eq!(ids.component(1, 1), "MRN1");
        assert_eq!(ids.component(2, 1), "MRN2");
        assert_eq!(ids.repetition(2).component(4).subcomponent(1), "OTHER");
        assert_eq!(ids.repetition(2).component(4).subcomponent(2), "1.2.3");
        assert_eq!(ids.repetition(2).component(4).subcomponent(9), "");
        assert_eq!(ids.component(3, 1), "", "absent repetition reads as empty");
        assert_eq!(ids.component(0, 1), "");
        assert_eq!(pid.field(5).component(1, 2), "JANE");
        assert_eq!(pid.field(0).raw(), "PID");
        assert!(pid.field(99).is_empty());
    }

    #[test]
    fn segments_by_id_and_sequence() {
        let msg = Message::parse(SAMPLE.as_bytes()).unwrap();
        let obx: Vec<_> = msg.segments("OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(obx[1].sequence(), 2);
        assert_eq!(obx[1].position(), 4);
        assert_eq!(obx[1].location(5).to_string(), "OBX[2]-5");
        assert_eq!(msg.segment_count(), 4);
        assert!(msg.segment("NTE").is_none());
    }

    #[test]
    fn escapes_are_decoded_on_access_and_unknown_kept() {
        let msg = Message::parse(SAMPLE.as_bytes()).unwrap();
        let obx = msg.segments("OBX").nth(1).unwrap();
        assert_eq!(
            obx.field(5).raw(),
            "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\H\\g"
        );
        assert_eq!(obx.field(5).value(), "a|b^c&d~e\\fA\\H\\g");
    }

    #[test]
    fn escaped_delimiters_do_not_split() {
        let msg = Message::parse(b"MSH|^~\\&|A\rNTE|1||x\\S\\y^z\r").unwrap();
        let f = msg.segment("NTE").unwrap().field(3);
        assert_eq!(f.component(1, 1), "x^y");
        assert_eq!(f.component(1, 2), "z");
    }

    #[test]
    fn hex_escape_utf8_and_malformed() {
        let d = Delimiters::STANDARD;
        assert_eq!(unescape("\\XC3A9\\", &d), "é");
        assert_eq!(unescape("\\XE9\\", &d), "é", "not UTF-8: read as Latin-1");
        assert_eq!(unescape("\\X4\\", &d), "\\X4\\", "odd digit count kept");
        assert_eq!(unescape("\\XZZ\\", &d), "\\XZZ\\");
        assert_eq!(unescape("a\\F", &d), "a\\F", "unterminated kept");
        assert_eq!(unescape("\\.br\\", &d), "\\.br\\");
        assert_eq!(
            unescape("\\P\\", &d),
            "\\P\\",
            "no truncation char declared"
        );
    }

    #[test]
    fn custom_delimiters_and_truncation_char() {
        let msg = Message::parse(b"MSH#*!@$%#APP*X\rOBX#1#ST#c#x#a@P@b*c!d$e\r").unwrap();
        let d = msg.delimiters();
        assert_eq!(
            (d.field, d.component, d.repetition, d.escape, d.subcomponent),
            ('#', '*', '!', '@', '$')
        );
        assert_eq!(d.truncation, Some('%'));
        assert_eq!(d.encoding_characters(), "*!@$%");
        assert_eq!(msg.msh().field(3).component(1, 2), "X");
        let obx = msg.segment("OBX").unwrap();
        assert_eq!(obx.field(5).component(1, 1), "a%b");
        assert_eq!(obx.field(5).component(2, 1), "d$e");
        assert_eq!(obx.field(5).reencode(&Delimiters::STANDARD), "a%b^c~d&e");
    }

    #[test]
    fn lf_and_crlf_terminators_are_tolerated() {
        for sep in ["\n", "\r\n", "\r\r"] {
            let text = format!("MSH|^~\\&|A{sep}PID|1{sep}OBX|1{sep}{sep}");
            let msg = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(msg.segment_count(), 3, "separator {sep:?}");
            assert_eq!(msg.segment("PID").unwrap().field(1).value(), "1");
        }
    }

    #[test]
    fn leading_bom_and_whitespace_are_skipped() {
        let msg = Message::parse("\u{feff}\r\n MSH|^~\\&|A\r".as_bytes()).unwrap();
        assert_eq!(msg.msh().field(3).value(), "A");
    }

    #[test]
    fn latin1_fallback_never_fails() {
        let mut bytes = b"MSH|^~\\&|A\rPID|||1||M".to_vec();
        bytes.push(0xDC); // Ü in ISO-8859-1, invalid as UTF-8
        bytes.extend_from_slice(b"LLER\r");
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.text_encoding(), TextEncoding::Latin1);
        assert_eq!(msg.segment("PID").unwrap().field(5).value(), "MÜLLER");
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(Message::parse(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(Message::parse(b"\r\n").unwrap_err(), ParseError::Empty);
        assert_eq!(
            Message::parse(b"PID|1").unwrap_err(),
            ParseError::MissingMsh
        );
        assert_eq!(
            Message::parse(b"MSH").unwrap_err(),
            ParseError::InvalidFieldSeparator
        );
        assert_eq!(
            Message::parse(b"MSHA^~\\&").unwrap_err(),
            ParseError::InvalidFieldSeparator
        );
        assert_eq!(
            Message::parse(b"MSH|^~\\|").unwrap_err(),
            ParseError::InvalidEncodingCharacters
        );
        assert_eq!(
            Message::parse(b"MSH|^~^&|").unwrap_err(),
            ParseError::InvalidEncodingCharacters
        );
        assert_eq!(
            Message::parse(b"MSH|^~\\&#$|").unwrap_err(),
            ParseError::InvalidEncodingCharacters
        );
        assert_eq!(
            Message::parse(b"MSH|^~\\|&|").unwrap_err(),
            ParseError::InvalidEncodingCharacters
        );
        let err =
            Message::parse(b"MSH|^~\\&|A\rOBX|1|ST|x||first line\rsecond line\r").unwrap_err();
        assert_eq!(err, ParseError::InvalidSegmentId { position: 3 });
        assert_eq!(
            err.location(),
            None,
            "never quote the bogus line, it may be PHI"
        );
        assert_eq!(err.code(), ErrorCode::SegmentSequenceError);
        let err = Message::parse(b"MSH|^~\\&|A\rMSH|^~\\&|B\r").unwrap_err();
        assert_eq!(err, ParseError::RepeatedMsh { position: 2 });
        assert_eq!(
            ParseError::InvalidEncodingCharacters
                .location()
                .unwrap()
                .to_string(),
            "MSH[1]-2"
        );
        assert_eq!(
            ParseError::InvalidEncodingCharacters.code(),
            ErrorCode::DataTypeError
        );
        assert!(
            Message::parse(b"MSH|^~\\&|A\robx|1\r").is_err(),
            "lower-case ids are invalid"
        );
    }

    #[test]
    fn header_only_parse_ignores_a_broken_body() {
        let bytes = b"MSH|^~\\&|A||||||ORU^R01|CTRL9|P|2.6\rgarbage line\r";
        assert!(Message::parse(bytes).is_err());
        let header = Message::parse_header(bytes).unwrap();
        assert_eq!(header.segment_count(), 1);
        assert_eq!(header.msh().field(10).value(), "CTRL9");
    }

    #[test]
    fn minimal_msh() {
        let msg = Message::parse(b"MSH|^~\\&").unwrap();
        assert_eq!(msg.msh().field_count(), 2);
        assert!(msg.msh().field(3).is_empty());
    }

    #[test]
    fn debug_is_redacted() {
        let msg = Message::parse(SAMPLE.as_bytes()).unwrap();
        let pid = msg.segment("PID").unwrap();
        for shown in [
            format!("{msg:?}"),
            format!("{pid:?}"),
            format!("{:?}", pid.field(5)),
            format!("{:?}", pid.field(5).repetition(1)),
            format!("{:?}", pid.field(5).repetition(1).component(1)),
        ] {
            assert!(shown.contains(REDACTED), "{shown}");
            assert!(!shown.contains("DOE"), "{shown}");
        }
    }

    #[test]
    fn escape_covers_delimiters_and_controls() {
        let d = Delimiters::STANDARD;
        assert_eq!(escape("plain", &d), "plain");
        assert!(matches!(escape("plain", &d), Cow::Borrowed(_)));
        assert_eq!(
            escape("a|b^c~d\\e&f\rg\x0b\x1c", &d),
            "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0D\\g\\X0B\\\\X1C\\"
        );
    }

    fn any_delimiters() -> impl Strategy<Value = Delimiters> {
        let pool: Vec<char> = "|^~\\&#!$%*@:;".chars().collect();
        (Just(pool).prop_shuffle(), any::<bool>()).prop_map(|(p, trunc)| Delimiters {
            field: p[0],
            component: p[1],
            repetition: p[2],
            escape: p[3],
            subcomponent: p[4],
            truncation: trunc.then_some(p[5]),
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Message::parse(&bytes);
            let _ = Message::parse_header(&bytes);
        }

        #[test]
        fn accessors_never_panic_after_a_valid_header(
            body in proptest::collection::vec(
                prop_oneof![Just(b'|'), Just(b'^'), Just(b'~'), Just(b'\\'), Just(b'&'), Just(b'\r'),
                            Just(b'\n'), Just(b'X'), Just(b'O'), Just(b'B'), Just(b'0'), Just(b'F'),
                            any::<u8>()],
                0..400),
        ) {
            let mut bytes = b"MSH|^~\\&|".to_vec();
            bytes.extend_from_slice(&body);
            if let Ok(msg) = Message::parse(&bytes) {
                for seg in msg.all_segments() {
                    for n in 0..seg.field_count() + 2 {
                        let field = seg.field(n);
                        let _ = field.decoded();
                        let _ = field.reencode(&Delimiters::STANDARD);
                        for rep in field.repetitions() {
                            for comp in rep.components() {
                                let _ = comp.decoded();
                                let _: Vec<_> = comp.subcomponents().collect();
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn escape_unescape_round_trip(text in any::<String>(), d in any_delimiters()) {
            let escaped = escape(&text, &d);
            for c in [d.field, d.component, d.repetition, d.subcomponent, '\r', '\n'] {
                prop_assert!(!escaped.contains(c));
            }
            let back = unescape(&escaped, &d);
            prop_assert_eq!(back.as_ref(), text.as_str());
        }

        #[test]
        fn escaped_values_survive_a_message_round_trip(values in proptest::collection::vec(any::<String>(), 1..5)) {
            let d = Delimiters::STANDARD;
            let mut text = String::from("MSH|^~\\&|A\rOBX|1|ST|c||");
            let escaped: Vec<String> = values.iter().map(|v| escape(v, &d).into_owned()).collect();
            text.push_str(&escaped.join("^"));
            text.push('\r');
            let msg = Message::parse(text.as_bytes()).unwrap();
            let obx = msg.segment("OBX").unwrap();
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(&obx.field(5).component(1, i + 1), v);
            }
        }
    }
}
