//! Byte-level reading and writing of DICOM data elements (PS3.5 section 7) over a slice.
//!
//! Invariants:
//! - Reading never panics and never reads past the slice: every length is checked, and a
//!   length that runs past the end is [`DicomError::Truncated`].
//! - Only little-endian transfer syntaxes are handled (explicit and implicit VR); the
//!   caller refuses the others before getting here.
//! - Values are borrowed from the input: the large ones (pixel data) are never copied
//!   before they are written out.
//! - Errors carry offsets and fixed reasons, never element values.

use dicom_core::dictionary::DataDictionary;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

use super::DicomError;

/// The length value meaning "undefined, ends with a delimiter".
pub(crate) const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Sequence item.
pub(crate) const ITEM: Tag = Tag(0xFFFE, 0xE000);
/// End of an undefined-length item.
pub(crate) const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
/// End of an undefined-length sequence or pixel data.
pub(crate) const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);

/// How a data set's element headers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Explicit VR little endian (also every encapsulated transfer syntax).
    ExplicitLe,
    /// Implicit VR little endian: the VR comes from the dictionary.
    ImplicitLe,
}

/// One element header as read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    /// The tag.
    pub tag: Tag,
    /// The VR: explicit, or from the dictionary (UN if unknown or private).
    pub vr: VR,
    /// The value length, or [`UNDEFINED`].
    pub len: u32,
    /// Offset of the header's first byte.
    pub start: usize,
    /// Offset of the value's first byte.
    pub value_start: usize,
}

impl Header {
    /// Whether the value length is undefined.
    pub(crate) fn undefined(&self) -> bool {
        self.len == UNDEFINED
    }
}

/// Explicit-VR encodings with a 2-byte reserved field and a 4-byte length.
pub(crate) fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// The dictionary VR of a standard tag; `UN` for private and unknown tags.
pub(crate) fn dictionary_vr(tag: Tag) -> VR {
    if tag.0 % 2 == 1 {
        // Private creators are LO by definition (PS3.5 7.8.1); private data is unknown.
        return if (0x0010..=0x00FF).contains(&tag.1) {
            VR::LO
        } else {
            VR::UN
        };
    }
    StandardDataDictionary
        .by_tag(tag)
        .map_or(VR::UN, |entry| entry.vr.relaxed())
}

/// A reading position in the input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at `pos`.
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { buf, pos }
    }

    /// The current offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The whole input.
    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// Moves to `pos` (must not be past the end; checked by the callers' length checks).
    pub(crate) fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// Whether the input is exhausted.
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DicomError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DicomError::Truncated { offset: self.pos })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, DicomError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DicomError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads an element header (or an item/delimiter header, which has no VR).
    pub(crate) fn header(&mut self, enc: Encoding) -> Result<Header, DicomError> {
        let start = self.pos;
        let tag = Tag(self.u16()?, self.u16()?);
        if tag.0 == 0xFFFE {
            let len = self.u32()?;
            return Ok(Header {
                tag,
                vr: VR::UN,
                len,
                start,
                value_start: self.pos,
            });
        }
        let (vr, len) = match enc {
            Encoding::ImplicitLe => (dictionary_vr(tag), self.u32()?),
            Encoding::ExplicitLe => {
                let code = self.take(2)?;
                let vr = VR::from_binary([code[0], code[1]]).ok_or(DicomError::Malformed {
                    offset: start,
                    reason: "unknown value representation",
                })?;
                if has_long_length(vr) {
                    self.take(2)?;
                    (vr, self.u32()?)
                } else {
                    (vr, u32::from(self.u16()?))
                }
            }
        };
        Ok(Header {
            tag,
            vr,
            len,
            start,
            value_start: self.pos,
        })
    }

    /// The defined-length value of `h` (the reader moves past it).
    pub(crate) fn value(&mut self, h: &Header) -> Result<&'a [u8], DicomError> {
        if h.undefined() {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "undefined length on a value that needs one",
            });
        }
        self.take(h.len as usize)
    }

    /// Skips the value of `h`, whatever it is: a defined length, an undefined-length
    /// sequence (items parsed in `enc`) or encapsulated fragments.
    pub(crate) fn skip_value(
        &mut self,
        h: &Header,
        enc: Encoding,
        depth: usize,
    ) -> Result<(), DicomError> {
        if !h.undefined() {
            self.take(h.len as usize)?;
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(DicomError::Malformed {
                offset: h.start,
                reason: "sequences nested too deeply",
            });
        }
        // Undefined length: a sequence of items until the sequence delimiter. Encapsulated
        // pixel data has the same shape (its items are fragments, always defined-length).
        loop {
            let item = self.header(enc)?;
            match item.tag {
                SEQUENCE_DELIMITER => return Ok(()),
                ITEM if item.undefined() => self.skip_undefined_item(enc, depth + 1)?,
                ITEM => {
                    self.take(item.len as usize)?;
                }
                _ => {
                    return Err(DicomError::Malformed {
                        offset: item.start,
                        reason: "expected a sequence item",
                    })
                }
            }
        }
    }

    /// Skips the rest of an undefined-length item (its elements, then the delimiter).
    pub(crate) fn skip_undefined_item(
        &mut self,
        enc: Encoding,
        depth: usize,
    ) -> Result<(), DicomError> {
        loop {
            let h = self.header(enc)?;
            if h.tag == ITEM_DELIMITER {
                return Ok(());
            }
            if h.tag.0 == 0xFFFE {
                return Err(DicomError::Malformed {
                    offset: h.start,
                    reason: "unexpected delimiter in an item",
                });
            }
            let enc = nested_encoding(&h, enc);
            self.skip_value(&h, enc, depth)?;
        }
    }
}

/// Deepest sequence nesting accepted (real objects use fewer than 10 levels; the limit
/// keeps a hostile file from exhausting the stack).
pub(crate) const MAX_DEPTH: usize = 64;

/// The encoding of the items of `h`'s value: an explicit-VR element of VR UN with an
/// undefined length is a sequence encoded in implicit VR (PS3.5 6.2.2).
pub(crate) fn nested_encoding(h: &Header, enc: Encoding) -> Encoding {
    if h.vr == VR::UN && h.undefined() {
        Encoding::ImplicitLe
    } else {
        enc
    }
}

/// Whether a defined-length value is in fact a sequence (starts with an item tag): how a
/// sequence looks when its VR is unknown (implicit VR private or UN).
pub(crate) fn looks_like_sequence(value: &[u8]) -> bool {
    value.len() >= 8 && value[..4] == [0xFE, 0xFF, 0x00, 0xE0]
}

/// Appends an element header in `enc`.
pub(crate) fn write_header(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: VR, len: u32) {
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    match enc {
        Encoding::ImplicitLe => out.extend_from_slice(&len.to_le_bytes()),
        Encoding::ExplicitLe => {
            out.extend_from_slice(&vr.to_bytes());
            if has_long_length(vr) {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&len.to_le_bytes());
            } else {
                // Callers only write short-VR values of at most 64 KiB (text they built).
                out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_le_bytes());
            }
        }
    }
}

/// Appends an item or delimiter header.
pub(crate) fn write_item_header(out: &mut Vec<u8>, tag: Tag, len: u32) {
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Appends a whole element with a text value, padded to even length (UI with NUL, others
/// with a space). The text is at most a few hundred bytes (built by wardgate).
pub(crate) fn write_text(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: VR, text: &[u8]) {
    let padded = text.len() + text.len() % 2;
    write_header(out, enc, tag, vr, u32::try_from(padded).unwrap_or(0));
    out.extend_from_slice(text);
    if text.len() % 2 == 1 {
        out.push(if vr == VR::UI { 0 } else { b' ' });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_both_encodings() {
        for enc in [Encoding::ExplicitLe, Encoding::ImplicitLe] {
            let mut out = Vec::new();
            write_text(&mut out, enc, Tag(0x0010, 0x0020), VR::LO, b"ABC");
            write_header(&mut out, enc, Tag(0x7FE0, 0x0010), VR::OW, 2);
            out.extend_from_slice(&[1, 2]);
            let mut r = Reader::new(&out, 0);
            let h = r.header(enc).unwrap();
            assert_eq!((h.tag, h.vr, h.len), (Tag(0x0010, 0x0020), VR::LO, 4));
            assert_eq!(r.value(&h).unwrap(), b"ABC ");
            let h = r.header(enc).unwrap();
            assert_eq!(h.tag, Tag(0x7FE0, 0x0010));
            assert_eq!(r.value(&h).unwrap(), &[1, 2]);
            assert!(r.at_end());
        }
    }

    #[test]
    fn lengths_past_the_end_are_truncation_not_panics() {
        let mut out = Vec::new();
        write_header(
            &mut out,
            Encoding::ExplicitLe,
            Tag(0x0008, 0x0018),
            VR::UI,
            40,
        );
        let mut r = Reader::new(&out, 0);
        let h = r.header(Encoding::ExplicitLe).unwrap();
        assert!(matches!(r.value(&h), Err(DicomError::Truncated { .. })));
        let mut r = Reader::new(&out[..5], 0);
        assert!(matches!(
            r.header(Encoding::ExplicitLe),
            Err(DicomError::Truncated { .. })
        ));
    }

    #[test]
    fn hostile_nesting_is_refused() {
        // 100 nested undefined-length sequences, never closed.
        let mut out = Vec::new();
        for _ in 0..100 {
            write_header(
                &mut out,
                Encoding::ExplicitLe,
                Tag(0x0008, 0x1140),
                VR::SQ,
                UNDEFINED,
            );
            write_item_header(&mut out, ITEM, UNDEFINED);
        }
        let mut r = Reader::new(&out, 0);
        let h = r.header(Encoding::ExplicitLe).unwrap();
        let e = r.skip_value(&h, Encoding::ExplicitLe, 0).unwrap_err();
        assert!(matches!(e, DicomError::Malformed { .. }), "{e}");
    }
}
