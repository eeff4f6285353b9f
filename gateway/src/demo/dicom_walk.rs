//! Just enough DICOM reading for the demo to show what an image carries: a walker over
//! Explicit VR Little Endian data sets (with or without the Part 10 file meta group),
//! sequences included, that the demo uses on what its simulated modality sent and on
//! what the cloud imaging ingest received.
//!
//! The gateway's own DICOM codec (`phi::dicom`) is private to the de-identification
//! stage and rewrites rather than reads; the demo wants a read-only view that is
//! independent of the code it checks, so it has its own.
//!
//! Invariants:
//! - Pure: bytes in, elements out; no I/O. Values are borrowed from the input.
//! - Never panics on input: every length is checked against the bytes left, nesting is
//!   bounded ([`MAX_DEPTH`]), and anything this walker does not read (other transfer
//!   syntaxes, encapsulated pixel data) is an error, not a guess.
//! - Errors name an offset and a fixed reason, never a value.

/// `(group, element)`.
pub type Tag = (u16, u16);

/// Explicit VR Little Endian, the only transfer syntax this walker reads.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Deepest sequence nesting accepted.
pub const MAX_DEPTH: usize = 16;

/// (0002,0010) TransferSyntaxUID.
pub const TRANSFER_SYNTAX_UID: Tag = (0x0002, 0x0010);

const ITEM: Tag = (0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = (0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = (0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

/// Why bytes could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The bytes end inside an element.
    #[error("DICOM input truncated at byte {0}")]
    Truncated(usize),
    /// The bytes are not what this walker reads.
    #[error("cannot read DICOM at byte {offset}: {reason}")]
    Unreadable {
        /// Where.
        offset: usize,
        /// What (fixed text).
        reason: &'static str,
    },
}

/// One element.
#[derive(Clone, PartialEq, Eq)]
pub struct Element<'a> {
    /// Its tag.
    pub tag: Tag,
    /// Its value representation, e.g. `*b"PN"`.
    pub vr: [u8; 2],
    /// Its value.
    pub value: Value<'a>,
}

impl std::fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be patient data.
        f.debug_struct("Element")
            .field(
                "tag",
                &format_args!("({:04X},{:04X})", self.tag.0, self.tag.1),
            )
            .field("vr", &String::from_utf8_lossy(&self.vr))
            .field("value", &wardgate_device_adapters::REDACTED)
            .finish()
    }
}

/// An element's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// The value bytes, padding included.
    Bytes(&'a [u8]),
    /// A sequence's items, each a list of elements.
    Items(Vec<Vec<Element<'a>>>),
}

/// The elements of one level (a data set or a sequence item), in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements<'a>(pub Vec<Element<'a>>);

impl<'a> Elements<'a> {
    /// The element with `tag`, if present.
    #[must_use]
    pub fn get(&self, tag: Tag) -> Option<&Element<'a>> {
        self.0.iter().find(|e| e.tag == tag)
    }

    /// The raw value bytes of `tag` (not a sequence).
    #[must_use]
    pub fn bytes(&self, tag: Tag) -> Option<&'a [u8]> {
        match self.get(tag)?.value {
            Value::Bytes(bytes) => Some(bytes),
            Value::Items(_) => None,
        }
    }

    /// The value of a text element without its padding (trailing spaces and NULs),
    /// lossily decoded; `Some("")` for a present but empty element.
    #[must_use]
    pub fn text(&self, tag: Tag) -> Option<String> {
        let bytes = self.bytes(tag)?;
        let end = bytes
            .iter()
            .rposition(|&b| b != b' ' && b != 0)
            .map_or(0, |i| i + 1);
        Some(
            String::from_utf8_lossy(&bytes[..end])
                .trim_start()
                .to_owned(),
        )
    }

    /// The items of a sequence `tag` (empty if absent or not a sequence).
    #[must_use]
    pub fn items(&self, tag: Tag) -> Vec<Elements<'a>> {
        match self.get(tag).map(|e| &e.value) {
            Some(Value::Items(items)) => items.iter().cloned().map(Elements).collect(),
            _ => Vec::new(),
        }
    }
}

/// A Part 10 file: its file meta group and its data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10<'a> {
    /// Group 0002.
    pub meta: Elements<'a>,
    /// Everything after it.
    pub dataset: Elements<'a>,
}

/// Walks a Part 10 file (128-byte preamble, `DICM`, meta group, data set) whose data set
/// is Explicit VR Little Endian.
///
/// # Errors
/// A [`WalkError`] if it is not such a file or is malformed.
pub fn parse_part10(bytes: &[u8]) -> Result<Part10<'_>, WalkError> {
    if bytes.len() < 132 {
        return Err(WalkError::Truncated(bytes.len()));
    }
    if &bytes[128..132] != b"DICM" {
        return Err(WalkError::Unreadable {
            offset: 128,
            reason: "no DICM marker",
        });
    }
    let mut walker = Walker { bytes, pos: 132 };
    let mut meta = Vec::new();
    // The meta group is always Explicit VR Little Endian; it ends where group 0002 does.
    while walker.pos < bytes.len() && walker.peek_group()? == 0x0002 {
        meta.push(walker.element(0)?);
    }
    let meta = Elements(meta);
    let syntax = meta
        .text(TRANSFER_SYNTAX_UID)
        .ok_or(WalkError::Unreadable {
            offset: 132,
            reason: "no transfer syntax in the file meta group",
        })?;
    if syntax != EXPLICIT_VR_LITTLE_ENDIAN {
        return Err(WalkError::Unreadable {
            offset: 132,
            reason: "data set is not Explicit VR Little Endian",
        });
    }
    let dataset = walker.level_to_end(0)?;
    Ok(Part10 {
        meta,
        dataset: Elements(dataset),
    })
}

/// Walks a bare Explicit VR Little Endian data set (as sent over DIMSE).
///
/// # Errors
/// A [`WalkError`] if it is malformed.
pub fn parse_dataset(bytes: &[u8]) -> Result<Elements<'_>, WalkError> {
    Walker { bytes, pos: 0 }.level_to_end(0).map(Elements)
}

/// Whether a VR has the long (reserved + 32-bit) length form in explicit VR.
fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Walker<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WalkError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(WalkError::Truncated(self.pos))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, WalkError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WalkError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn peek_group(&self) -> Result<u16, WalkError> {
        self.bytes
            .get(self.pos..self.pos + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(WalkError::Truncated(self.pos))
    }

    fn tag(&mut self) -> Result<Tag, WalkError> {
        Ok((self.u16()?, self.u16()?))
    }

    /// Elements until the end of the input.
    fn level_to_end(&mut self, depth: usize) -> Result<Vec<Element<'a>>, WalkError> {
        let mut out = Vec::new();
        while self.pos < self.bytes.len() {
            out.push(self.element(depth)?);
        }
        Ok(out)
    }

    fn element(&mut self, depth: usize) -> Result<Element<'a>, WalkError> {
        let start = self.pos;
        let tag = self.tag()?;
        if tag.0 == 0xFFFE {
            return Err(WalkError::Unreadable {
                offset: start,
                reason: "item or delimiter outside a sequence",
            });
        }
        let vr_bytes = self.take(2)?;
        let vr = [vr_bytes[0], vr_bytes[1]];
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(WalkError::Unreadable {
                offset: start,
                reason: "not an explicit VR",
            });
        }
        let len = if has_long_length(vr) {
            self.take(2)?;
            self.u32()?
        } else {
            u32::from(self.u16()?)
        };
        let value = if &vr == b"SQ" {
            Value::Items(self.sequence(len, depth + 1, start)?)
        } else if len == UNDEFINED_LENGTH {
            return Err(WalkError::Unreadable {
                offset: start,
                reason: "undefined length outside a sequence (encapsulated pixel data)",
            });
        } else {
            Value::Bytes(self.take(len as usize)?)
        };
        Ok(Element { tag, vr, value })
    }

    fn sequence(
        &mut self,
        len: u32,
        depth: usize,
        start: usize,
    ) -> Result<Vec<Vec<Element<'a>>>, WalkError> {
        if depth > MAX_DEPTH {
            return Err(WalkError::Unreadable {
                offset: start,
                reason: "sequences nested too deeply",
            });
        }
        let mut items = Vec::new();
        if len == UNDEFINED_LENGTH {
            loop {
                let at = self.pos;
                let tag = self.tag()?;
                let item_len = self.u32()?;
                match tag {
                    SEQUENCE_DELIMITER => return Ok(items),
                    ITEM => items.push(self.item(item_len, depth, at)?),
                    _ => {
                        return Err(WalkError::Unreadable {
                            offset: at,
                            reason: "expected an item in a sequence",
                        })
                    }
                }
            }
        }
        let body = self.take(len as usize)?;
        let base = self.pos - body.len();
        let mut inner = Walker {
            bytes: &self.bytes[..base + body.len()],
            pos: base,
        };
        while inner.pos < base + body.len() {
            let at = inner.pos;
            let tag = inner.tag()?;
            let item_len = inner.u32()?;
            if tag != ITEM {
                return Err(WalkError::Unreadable {
                    offset: at,
                    reason: "expected an item in a sequence",
                });
            }
            items.push(inner.item(item_len, depth, at)?);
        }
        Ok(items)
    }

    fn item(
        &mut self,
        len: u32,
        depth: usize,
        start: usize,
    ) -> Result<Vec<Element<'a>>, WalkError> {
        if len == UNDEFINED_LENGTH {
            let mut elements = Vec::new();
            loop {
                if self.peek_group()? == 0xFFFE {
                    let at = self.pos;
                    let tag = self.tag()?;
                    self.u32()?;
                    if tag == ITEM_DELIMITER {
                        return Ok(elements);
                    }
                    return Err(WalkError::Unreadable {
                        offset: at,
                        reason: "expected an item delimiter",
                    });
                }
                elements.push(self.element(depth)?);
            }
        }
        let body = self.take(len as usize)?;
        let base = self.pos - body.len();
        let mut inner = Walker {
            bytes: &self.bytes[..base + body.len()],
            pos: base,
        };
        let elements = inner.level_to_end(depth).map_err(|e| match e {
            WalkError::Truncated(_) => WalkError::Unreadable {
                offset: start,
                reason: "item length does not match its elements",
            },
            other => other,
        })?;
        Ok(elements)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    fn short(tag: Tag, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn header(tag: Tag, vr: &[u8; 2], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn item_header(tag: Tag, len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    /// A data set with a sequence of undefined length (items of undefined length), one of
    /// defined length, and a long-form value.
    fn sample() -> Vec<u8> {
        let mut out = short((0x0010, 0x0010), b"PN", b"DOE^JANE");
        out.extend(header((0x0012, 0x0064), b"SQ", UNDEFINED_LENGTH));
        for code in [b"113100", b"113107"] {
            out.extend(item_header(ITEM, UNDEFINED_LENGTH));
            out.extend(short((0x0008, 0x0100), b"SH", code));
            out.extend(item_header(ITEM_DELIMITER, 0));
        }
        out.extend(item_header(SEQUENCE_DELIMITER, 0));
        let inner = short((0x0008, 0x0100), b"SH", b"X1");
        let mut item = item_header(ITEM, u32::try_from(inner.len()).unwrap());
        item.extend(&inner);
        out.extend(header(
            (0x0040, 0xA730),
            b"SQ",
            u32::try_from(item.len()).unwrap(),
        ));
        out.extend(item);
        out.extend(header((0x7FE0, 0x0010), b"OW", 4));
        out.extend([1, 2, 3, 4]);
        out
    }

    #[test]
    fn walks_sequences_of_both_length_forms() {
        let bytes = sample();
        let set = parse_dataset(&bytes).unwrap();
        assert_eq!(set.text((0x0010, 0x0010)).as_deref(), Some("DOE^JANE"));
        let codes: Vec<String> = set
            .items((0x0012, 0x0064))
            .iter()
            .map(|i| i.text((0x0008, 0x0100)).unwrap())
            .collect();
        assert_eq!(codes, ["113100", "113107"]);
        assert_eq!(
            set.items((0x0040, 0xA730))[0]
                .text((0x0008, 0x0100))
                .as_deref(),
            Some("X1")
        );
        assert_eq!(set.bytes((0x7FE0, 0x0010)), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(set.text((0x0008, 0x0020)), None);
    }

    #[test]
    fn part10_needs_the_marker_and_explicit_vr_little_endian() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        let mut ts = EXPLICIT_VR_LITTLE_ENDIAN.as_bytes().to_vec();
        ts.push(0);
        file.extend(short(TRANSFER_SYNTAX_UID, b"UI", &ts));
        file.extend(sample());
        let parsed = parse_part10(&file).unwrap();
        assert_eq!(parsed.meta.0.len(), 1);
        assert_eq!(
            parsed.dataset.text((0x0010, 0x0010)).as_deref(),
            Some("DOE^JANE")
        );

        let mut other = file.clone();
        let at = other.windows(3).position(|w| w == b"2.1").unwrap();
        other[at + 2] = b'2'; // ...1.2.2: not explicit VR little endian
        assert!(matches!(
            parse_part10(&other),
            Err(WalkError::Unreadable { .. })
        ));
        let mut unmarked = file;
        unmarked[128] = b'X';
        assert!(parse_part10(&unmarked).is_err());
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let _ = parse_dataset(&bytes[..cut]);
        }
        assert!(parse_dataset(&bytes[..bytes.len() - 1]).is_err());
        // Nesting beyond the bound.
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH {
            deep.extend(header((0x0040, 0xA730), b"SQ", UNDEFINED_LENGTH));
            deep.extend(item_header(ITEM, UNDEFINED_LENGTH));
        }
        assert!(parse_dataset(&deep).is_err());
        // A stray delimiter, a lower-case VR, encapsulated pixel data.
        assert!(parse_dataset(&item_header(ITEM_DELIMITER, 0)).is_err());
        assert!(parse_dataset(&short((0x0010, 0x0010), b"pn", b"X ")).is_err());
        assert!(parse_dataset(&header((0x7FE0, 0x0010), b"OB", UNDEFINED_LENGTH)).is_err());
    }
}
