//! The bulk upload protocol: resumable, verified file transfer from a gateway to a
//! receiver, one file per bidirectional QUIC stream (ALPN [`ALPN`]).
//!
//! # Conversation
//! ```text
//! sender                                   receiver
//!   Offer{id, size, sha256, kind, device, metadata} ->
//!                                      <- Resume{offset}     bytes it durably holds
//!   Chunk{offset, data} ...  (from `offset` to `size`) ->
//!                                      <- Committed | HashMismatch
//! ```
//! * `offset` is 0 for an unknown file, the number of bytes the receiver holds durably for
//!   a partial one, and `size` for a committed one (then `Committed` follows at once: a
//!   duplicate offer is answered, not refused).
//! * Once the receiver holds `size` bytes it checks the SHA-256 of the whole file. On a
//!   mismatch it discards what it holds and answers `HashMismatch`; the sender offers the
//!   file again (on a new stream) and starts from zero.
//! * `Refused{code, reason}` may end the conversation at any time (storage full, the same
//!   file already in transfer on another stream, a conflicting earlier file with that id).
//!
//! # Framing
//! Every message is `u32 big-endian body length` + body; the body is `version: u8`
//! ([`PROTOCOL_VERSION`]), `type: u8`, then the fields of that type, big-endian, strings as
//! `u16 length + UTF-8`. A body longer than [`MAX_MESSAGE_LEN`], an unknown version or type,
//! a truncated or over-long field, or a message the current state does not expect is a
//! [`ProtocolError`]; nothing in here panics on input (property-tested).
//!
//! # Sans-IO
//! [`SenderSession`] and [`ReceiverSession`] are pure state machines: bytes from the peer
//! go in through `handle_input`, bytes for the peer and actions for the driver come out.
//! They hold no file, socket or clock; the driver (gateway `bulk` and `receive` modules)
//! does the reading, writing, hashing and fsyncing the actions ask for.

use std::collections::VecDeque;
use std::fmt;

/// The ALPN protocol id of this protocol's QUIC connections.
pub const ALPN: &[u8] = b"wardgate-upload/1";

/// The version byte every message body starts with.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest chunk payload a sender may put in one message (1 MiB).
pub const MAX_CHUNK_LEN: usize = 1 << 20;

/// The largest message body (version byte onwards) either side accepts.
pub const MAX_MESSAGE_LEN: usize = MAX_CHUNK_LEN + 64;

/// The longest file id, in bytes.
pub const MAX_FILE_ID_LEN: usize = 128;

/// The longest device id, in bytes.
pub const MAX_DEVICE_LEN: usize = 256;

/// The longest metadata JSON, in bytes.
pub const MAX_METADATA_LEN: usize = 16 * 1024;

/// The longest reason text in a [`Message::Refused`], in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Bytes before a chunk's payload: length prefix, version, type, offset.
pub const CHUNK_HEADER_LEN: usize = 4 + 1 + 1 + 8;

const TYPE_OFFER: u8 = 1;
const TYPE_RESUME: u8 = 2;
const TYPE_CHUNK: u8 = 3;
const TYPE_COMMITTED: u8 = 4;
const TYPE_HASH_MISMATCH: u8 = 5;
const TYPE_REFUSED: u8 = 6;

/// A violation of the protocol by the peer (or, for `UnexpectedEvent`, by the driver).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The body's version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The body's type byte names no message.
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    /// A length prefix exceeds [`MAX_MESSAGE_LEN`] (or is zero).
    #[error("message length {len} outside 1..={max}")]
    BadMessageLength {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field is truncated, too long, or not what its type requires.
    #[error("malformed {message} message: {reason}")]
    Malformed {
        /// The message type.
        message: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file id that is not 1..=128 bytes of `[A-Za-z0-9._-]` not starting with `.`.
    #[error("invalid file id")]
    InvalidFileId,
    /// A message the conversation does not allow at this point.
    #[error("unexpected {message} message while {state}")]
    UnexpectedMessage {
        /// The message type.
        message: &'static str,
        /// The session's state.
        state: &'static str,
    },
    /// A chunk that does not continue exactly where the previous one ended.
    #[error("chunk at offset {got}, expected {expected}")]
    ChunkOutOfOrder {
        /// Where the next chunk must start.
        expected: u64,
        /// Where it started.
        got: u64,
    },
    /// A chunk reaching past the offered size, or a resume offset past it.
    #[error("offset {end} beyond the file size {size}")]
    BeyondEnd {
        /// The offending end offset.
        end: u64,
        /// The offered size.
        size: u64,
    },
    /// The peer ended the stream before the conversation was over.
    #[error("stream ended while {state}")]
    EndedEarly {
        /// The session's state.
        state: &'static str,
    },
    /// The driver called a method the session's state does not allow (a driver bug).
    #[error("driver event {event} not allowed while {state}")]
    UnexpectedEvent {
        /// The event.
        event: &'static str,
        /// The session's state.
        state: &'static str,
    },
}

/// What a file is, which decides where the receiver files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A de-identified DICOM object.
    Dicom,
    /// A device log file (possibly compressed; see the metadata).
    Log,
}

impl FileKind {
    /// Lower-case name, as used in directory names, config and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            FileKind::Dicom => "dicom",
            FileKind::Log => "log",
        }
    }

    /// Inverse of [`FileKind::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dicom" => Some(FileKind::Dicom),
            "log" => Some(FileKind::Log),
            _ => None,
        }
    }

    const fn code(self) -> u8 {
        match self {
            FileKind::Dicom => 1,
            FileKind::Log => 2,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(FileKind::Dicom),
            2 => Some(FileKind::Log),
            _ => None,
        }
    }
}

/// A file's identity across attempts and restarts: 1..=128 bytes of `[A-Za-z0-9._-]`,
/// not starting with `.`, so it is safe as a file name on both ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(String);

impl FileId {
    /// Checks and wraps `id`.
    ///
    /// # Errors
    /// [`ProtocolError::InvalidFileId`] if it breaks the rule above.
    pub fn new(id: impl Into<String>) -> Result<Self, ProtocolError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_FILE_ID_LEN
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(FileId(id))
        } else {
            Err(ProtocolError::InvalidFileId)
        }
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Pseudonymous metadata travelling with a file (study pseudonym, modality, log source...).
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// What the sender proposes to upload.
#[derive(Clone, PartialEq)]
pub struct Offer {
    /// The file's identity.
    pub file_id: FileId,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its whole content.
    pub sha256: [u8; 32],
    /// DICOM object or log file.
    pub kind: FileKind,
    /// The device it came from (as configured on the gateway).
    pub device: String,
    /// Pseudonymous metadata; at most [`MAX_METADATA_LEN`] bytes as JSON.
    pub metadata: Metadata,
}

impl fmt::Debug for Offer {
    // Metadata is pseudonymous but still about a patient: it stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("file_id", &self.file_id)
            .field("size", &self.size)
            .field("kind", &self.kind)
            .field("device", &self.device)
            .field("metadata", &"<redacted: may contain PHI>")
            .finish_non_exhaustive()
    }
}

/// Why a receiver refused a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The receiver cannot store it now (disk full, I/O error): retry later.
    Unavailable,
    /// The same file id is being received on another stream: retry later.
    Busy,
    /// A different file (other size or hash) was already committed under this id.
    Conflict,
    /// The offer is not acceptable (e.g. its metadata is not a JSON object).
    BadOffer,
    /// A code this version does not know.
    Other(u16),
}

impl RefuseCode {
    const fn code(self) -> u16 {
        match self {
            RefuseCode::Unavailable => 1,
            RefuseCode::Busy => 2,
            RefuseCode::Conflict => 3,
            RefuseCode::BadOffer => 4,
            RefuseCode::Other(c) => c,
        }
    }

    const fn from_code(code: u16) -> Self {
        match code {
            1 => RefuseCode::Unavailable,
            2 => RefuseCode::Busy,
            3 => RefuseCode::Conflict,
            4 => RefuseCode::BadOffer,
            c => RefuseCode::Other(c),
        }
    }
}

/// One protocol message.
#[derive(Clone, PartialEq)]
pub enum Message {
    /// Sender: the file it wants to upload.
    Offer(Offer),
    /// Receiver: how many bytes of it the receiver already holds durably.
    Resume {
        /// The first byte the sender must send.
        offset: u64,
    },
    /// Sender: file content starting at `offset`.
    Chunk {
        /// Where `data` starts in the file.
        offset: u64,
        /// At most [`MAX_CHUNK_LEN`] bytes.
        data: Vec<u8>,
    },
    /// Receiver: the file is verified and stored.
    Committed,
    /// Receiver: the whole file's SHA-256 did not match the offer; everything discarded.
    HashMismatch,
    /// Receiver: the file is not taken now.
    Refused {
        /// Why, for the sender's retry decision.
        code: RefuseCode,
        /// Why, for the operator (never payload).
        reason: String,
    },
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Offer(o) => o.fmt(f),
            Message::Resume { offset } => f.debug_struct("Resume").field("offset", offset).finish(),
            Message::Chunk { offset, data } => f
                .debug_struct("Chunk")
                .field("offset", offset)
                .field("len", &data.len())
                .finish(),
            Message::Committed => f.write_str("Committed"),
            Message::HashMismatch => f.write_str("HashMismatch"),
            Message::Refused { code, reason } => f
                .debug_struct("Refused")
                .field("code", code)
                .field("reason", reason)
                .finish(),
        }
    }
}

impl Message {
    /// The message's name, for errors and logs.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Message::Offer(_) => "offer",
            Message::Resume { .. } => "resume",
            Message::Chunk { .. } => "chunk",
            Message::Committed => "committed",
            Message::HashMismatch => "hash-mismatch",
            Message::Refused { .. } => "refused",
        }
    }

    /// Appends the framed message to `out`.
    ///
    /// # Errors
    /// A field over its limit (file id and device are checked, metadata JSON length,
    /// chunk length, reason length): the message would be refused by the peer.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(PROTOCOL_VERSION);
        match self {
            Message::Offer(offer) => {
                out.push(TYPE_OFFER);
                put_str(out, offer.file_id.as_str(), MAX_FILE_ID_LEN, "offer")?;
                out.extend_from_slice(&offer.size.to_be_bytes());
                out.extend_from_slice(&offer.sha256);
                out.push(offer.kind.code());
                put_str(out, &offer.device, MAX_DEVICE_LEN, "offer")?;
                let json =
                    serde_json::to_vec(&offer.metadata).map_err(|_| ProtocolError::Malformed {
                        message: "offer",
                        reason: "metadata does not serialize",
                    })?;
                if json.len() > MAX_METADATA_LEN {
                    return Err(ProtocolError::Malformed {
                        message: "offer",
                        reason: "metadata longer than 16 KiB",
                    });
                }
                put_len_u32(out, json.len());
                out.extend_from_slice(&json);
            }
            Message::Resume { offset } => {
                out.push(TYPE_RESUME);
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Message::Chunk { offset, data } => {
                if data.is_empty() || data.len() > MAX_CHUNK_LEN {
                    return Err(ProtocolError::Malformed {
                        message: "chunk",
                        reason: "payload length outside 1..=1 MiB",
                    });
                }
                out.push(TYPE_CHUNK);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
            }
            Message::Committed => out.push(TYPE_COMMITTED),
            Message::HashMismatch => out.push(TYPE_HASH_MISMATCH),
            Message::Refused { code, reason } => {
                out.push(TYPE_REFUSED);
                out.extend_from_slice(&code.code().to_be_bytes());
                let reason = truncate_utf8(reason, MAX_REASON_LEN);
                put_str(out, reason, MAX_REASON_LEN, "refused")?;
            }
        }
        let body = out.len() - start - 4;
        // Every branch above bounds its fields, so the body fits MAX_MESSAGE_LEN (< 4 GiB).
        let body = u32::try_from(body).map_err(|_| ProtocolError::BadMessageLength {
            len: body,
            max: MAX_MESSAGE_LEN,
        })?;
        out[start..start + 4].copy_from_slice(&body.to_be_bytes());
        Ok(())
    }

    /// The frame header of a chunk of `len` bytes at `offset`; the payload follows it on
    /// the stream. Lets a driver send file data without copying it into a message.
    ///
    /// # Errors
    /// `len` outside `1..=MAX_CHUNK_LEN`.
    pub fn chunk_header(offset: u64, len: usize) -> Result<[u8; CHUNK_HEADER_LEN], ProtocolError> {
        if len == 0 || len > MAX_CHUNK_LEN {
            return Err(ProtocolError::Malformed {
                message: "chunk",
                reason: "payload length outside 1..=1 MiB",
            });
        }
        let body = (2 + 8 + len) as u32; // len <= 1 MiB
        let mut header = [0u8; CHUNK_HEADER_LEN];
        header[..4].copy_from_slice(&body.to_be_bytes());
        header[4] = PROTOCOL_VERSION;
        header[5] = TYPE_CHUNK;
        header[6..].copy_from_slice(&offset.to_be_bytes());
        Ok(header)
    }

    fn decode_body(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader {
            buf: body,
            msg: "message",
        };
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let ty = r.u8()?;
        let message = match ty {
            TYPE_OFFER => {
                r.msg = "offer";
                let file_id = FileId::new(r.str(MAX_FILE_ID_LEN)?)?;
                let size = r.u64()?;
                let sha256 = r.array32()?;
                let kind = FileKind::from_code(r.u8()?).ok_or(ProtocolError::Malformed {
                    message: "offer",
                    reason: "unknown file kind",
                })?;
                let device = r.str(MAX_DEVICE_LEN)?;
                let json_len = r.u32()? as usize;
                if json_len > MAX_METADATA_LEN {
                    return Err(r.malformed("metadata longer than 16 KiB"));
                }
                let json = r.take(json_len)?;
                let metadata: Metadata = serde_json::from_slice(json)
                    .map_err(|_| r.malformed("metadata is not a JSON object"))?;
                Message::Offer(Offer {
                    file_id,
                    size,
                    sha256,
                    kind,
                    device,
                    metadata,
                })
            }
            TYPE_RESUME => {
                r.msg = "resume";
                Message::Resume { offset: r.u64()? }
            }
            TYPE_CHUNK => {
                r.msg = "chunk";
                let offset = r.u64()?;
                let data = std::mem::take(&mut r.buf);
                if data.is_empty() || data.len() > MAX_CHUNK_LEN {
                    return Err(r.malformed("payload length outside 1..=1 MiB"));
                }
                Message::Chunk {
                    offset,
                    data: data.to_vec(),
                }
            }
            TYPE_COMMITTED => Message::Committed,
            TYPE_HASH_MISMATCH => Message::HashMismatch,
            TYPE_REFUSED => {
                r.msg = "refused";
                let code = RefuseCode::from_code(r.u16()?);
                let reason = r.str(MAX_REASON_LEN)?;
                Message::Refused { code, reason }
            }
            other => return Err(ProtocolError::UnknownMessageType(other)),
        };
        if !r.buf.is_empty() {
            return Err(ProtocolError::Malformed {
                message: message.name(),
                reason: "trailing bytes",
            });
        }
        Ok(message)
    }
}

fn put_len_u32(out: &mut Vec<u8>, len: usize) {
    // Callers bound `len` far below 4 GiB.
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

fn put_str(
    out: &mut Vec<u8>,
    s: &str,
    max: usize,
    message: &'static str,
) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::Malformed {
            message,
            reason: "string field too long",
        });
    }
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    buf: &'a [u8],
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            message: self.msg,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn array32(&mut self) -> Result<[u8; 32], ProtocolError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    fn str(&mut self, max: usize) -> Result<String, ProtocolError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(self.malformed("string field too long"));
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.malformed("string field is not UTF-8"))
    }
}

/// Splits a byte stream into messages. Bytes can arrive split anywhere.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_MESSAGE_LEN {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one is buffered.
    ///
    /// # Errors
    /// A bad length prefix or body. The decoder is unusable afterwards (the stream has
    /// lost its framing).
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        let pending = &self.buf[self.start..];
        if pending.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len == 0 || len > MAX_MESSAGE_LEN {
            return Err(ProtocolError::BadMessageLength {
                len,
                max: MAX_MESSAGE_LEN,
            });
        }
        if pending.len() < 4 + len {
            return Ok(None);
        }
        let message = Message::decode_body(&pending[4..4 + len])?;
        self.start += 4 + len;
        Ok(Some(message))
    }

    /// Whether bytes of an incomplete message are buffered.
    #[must_use]
    pub fn has_partial(&self) -> bool {
        self.start < self.buf.len()
    }
}

/// A range of the file the sender driver should send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    /// First byte.
    pub offset: u64,
    /// Number of bytes (1..=chunk length).
    pub len: usize,
}

/// How a sender's conversation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderOutcome {
    /// The receiver verified and stored the file. `resumed_from` is the offset it
    /// already held (the file size for a duplicate).
    Committed {
        /// The receiver's answer to the offer.
        resumed_from: u64,
    },
    /// The receiver's hash of the whole file did not match; it discarded everything.
    HashMismatch,
    /// The receiver refused the file.
    Refused {
        /// Why.
        code: RefuseCode,
        /// Why, for the operator.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SenderState {
    AwaitingOffset,
    Sending { next: u64 },
    AwaitingVerdict,
    Done(SenderOutcome),
}

impl SenderState {
    const fn name(&self) -> &'static str {
        match self {
            SenderState::AwaitingOffset => "awaiting the offset",
            SenderState::Sending { .. } => "sending chunks",
            SenderState::AwaitingVerdict => "awaiting the verdict",
            SenderState::Done(_) => "done",
        }
    }
}

/// The sender's side of one file's conversation.
///
/// Use: send the bytes from [`SenderSession::new`]; feed every byte read from the stream
/// to [`SenderSession::handle_input`]; while [`SenderSession::next_chunk`] gives a plan,
/// read that range of the file, write [`SenderSession::start_chunk`]'s header and the
/// data; when [`SenderSession::outcome`] is `Some`, the conversation is over.
#[derive(Debug)]
pub struct SenderSession {
    size: u64,
    chunk_len: usize,
    decoder: FrameDecoder,
    state: SenderState,
    resumed_from: Option<u64>,
}

impl SenderSession {
    /// Starts a conversation for `offer`, sending chunks of at most `chunk_len` bytes
    /// (clamped to `1..=MAX_CHUNK_LEN`). Returns the session and the offer's bytes.
    ///
    /// # Errors
    /// The offer's fields exceed the protocol's limits.
    pub fn new(offer: &Offer, chunk_len: usize) -> Result<(Self, Vec<u8>), ProtocolError> {
        let mut out = Vec::new();
        Message::Offer(offer.clone()).encode(&mut out)?;
        Ok((
            SenderSession {
                size: offer.size,
                chunk_len: chunk_len.clamp(1, MAX_CHUNK_LEN),
                decoder: FrameDecoder::new(),
                state: SenderState::AwaitingOffset,
                resumed_from: None,
            },
            out,
        ))
    }

    /// Feeds bytes read from the stream.
    ///
    /// # Errors
    /// The receiver broke the protocol; the stream should be reset.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.decoder.push(bytes);
        while let Some(message) = self.decoder.next_message()? {
            self.handle_message(message)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, message: Message) -> Result<(), ProtocolError> {
        let state = self.state.name();
        let unexpected = |m: &Message| ProtocolError::UnexpectedMessage {
            message: m.name(),
            state,
        };
        match (&self.state, message) {
            (SenderState::Done(_), m) => return Err(unexpected(&m)),
            (_, Message::Refused { code, reason }) => {
                self.state = SenderState::Done(SenderOutcome::Refused { code, reason });
            }
            (SenderState::AwaitingOffset, Message::Resume { offset }) => {
                if offset > self.size {
                    return Err(ProtocolError::BeyondEnd {
                        end: offset,
                        size: self.size,
                    });
                }
                self.resumed_from = Some(offset);
                self.state = if offset == self.size {
                    SenderState::AwaitingVerdict
                } else {
                    SenderState::Sending { next: offset }
                };
            }
            (SenderState::AwaitingVerdict, Message::Committed) => {
                self.state = SenderState::Done(SenderOutcome::Committed {
                    resumed_from: self.resumed_from.unwrap_or(0),
                });
            }
            (SenderState::AwaitingVerdict, Message::HashMismatch) => {
                self.state = SenderState::Done(SenderOutcome::HashMismatch);
            }
            (_, m) => return Err(unexpected(&m)),
        }
        Ok(())
    }

    /// The stream from the receiver ended.
    ///
    /// # Errors
    /// [`ProtocolError::EndedEarly`] unless the conversation is over.
    pub fn handle_end_of_stream(&self) -> Result<(), ProtocolError> {
        match self.state {
            SenderState::Done(_) if !self.decoder.has_partial() => Ok(()),
            _ => Err(ProtocolError::EndedEarly {
                state: self.state.name(),
            }),
        }
    }

    /// The next range to send, if the receiver is waiting for data.
    #[must_use]
    pub fn next_chunk(&self) -> Option<ChunkPlan> {
        match self.state {
            SenderState::Sending { next } => {
                let left = self.size - next;
                let len = usize::try_from(left).map_or(self.chunk_len, |l| l.min(self.chunk_len));
                Some(ChunkPlan { offset: next, len })
            }
            _ => None,
        }
    }

    /// Records that `plan` is being sent and returns its frame header (the driver writes
    /// the header, then exactly `plan.len` bytes of the file from `plan.offset`).
    ///
    /// # Errors
    /// `plan` is not [`SenderSession::next_chunk`]'s (a driver bug).
    pub fn start_chunk(
        &mut self,
        plan: ChunkPlan,
    ) -> Result<[u8; CHUNK_HEADER_LEN], ProtocolError> {
        if self.next_chunk() != Some(plan) {
            return Err(ProtocolError::UnexpectedEvent {
                event: "start_chunk",
                state: self.state.name(),
            });
        }
        let header = Message::chunk_header(plan.offset, plan.len)?;
        let end = plan.offset + plan.len as u64;
        self.state = if end == self.size {
            SenderState::AwaitingVerdict
        } else {
            SenderState::Sending { next: end }
        };
        Ok(header)
    }

    /// The offset the receiver answered, once it has.
    #[must_use]
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// How the conversation ended, once it has.
    #[must_use]
    pub fn outcome(&self) -> Option<&SenderOutcome> {
        match &self.state {
            SenderState::Done(outcome) => Some(outcome),
            _ => None,
        }
    }
}

/// What the receiver holds for an offered file id, as the driver finds it in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Nothing (or nothing usable: a partial for a different size/hash was discarded).
    Nothing,
    /// A partial file whose first `n` bytes are durable.
    Partial(u64),
    /// The same file (same size and hash) is committed.
    Committed,
}

/// Something the receiver driver must do, in order.
#[derive(Clone, PartialEq)]
pub enum ReceiverAction {
    /// Find what storage holds for this offer (answer with
    /// [`ReceiverSession::lookup_done`] or [`ReceiverSession::refuse`]).
    Lookup(Offer),
    /// Append `data` at `offset` of the partial file (always its current end).
    Write {
        /// Where `data` goes.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// All bytes are in: make them durable, check the whole file's SHA-256 and answer
    /// with [`ReceiverSession::verified`].
    Verify,
    /// The hash did not match: delete the partial file and its state.
    Discard,
}

impl fmt::Debug for ReceiverAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiverAction::Lookup(offer) => f.debug_tuple("Lookup").field(offer).finish(),
            ReceiverAction::Write { offset, data } => f
                .debug_struct("Write")
                .field("offset", offset)
                .field("len", &data.len())
                .finish(),
            ReceiverAction::Verify => f.write_str("Verify"),
            ReceiverAction::Discard => f.write_str("Discard"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiverState {
    AwaitingOffer,
    AwaitingLookup { size: u64 },
    Receiving { next: u64, size: u64 },
    AwaitingVerify,
    Done,
}

impl ReceiverState {
    const fn name(self) -> &'static str {
        match self {
            ReceiverState::AwaitingOffer => "awaiting the offer",
            ReceiverState::AwaitingLookup { .. } => "looking the file up",
            ReceiverState::Receiving { .. } => "receiving chunks",
            ReceiverState::AwaitingVerify => "verifying",
            ReceiverState::Done => "done",
        }
    }
}

/// The receiver's side of one file's conversation.
///
/// Use: feed every byte read from the stream to [`ReceiverSession::handle_input`], then
/// perform every [`ReceiverSession::poll_action`] in order (answering `Lookup` and
/// `Verify`), then write [`ReceiverSession::take_transmit`] to the stream.
#[derive(Debug, Default)]
pub struct ReceiverSession {
    decoder: FrameDecoder,
    state: Option<ReceiverState>,
    actions: VecDeque<ReceiverAction>,
    transmit: Vec<u8>,
}

impl ReceiverSession {
    /// A session awaiting an offer.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> ReceiverState {
        self.state.unwrap_or(ReceiverState::AwaitingOffer)
    }

    /// Feeds bytes read from the stream.
    ///
    /// # Errors
    /// The sender broke the protocol; the stream should be reset and any partial data
    /// kept as it is (only durable, in-order bytes were ever written).
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.decoder.push(bytes);
        while let Some(message) = self.decoder.next_message()? {
            self.handle_message(message)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, message: Message) -> Result<(), ProtocolError> {
        match (self.state(), message) {
            (ReceiverState::AwaitingOffer, Message::Offer(offer)) => {
                self.state = Some(ReceiverState::AwaitingLookup { size: offer.size });
                self.actions.push_back(ReceiverAction::Lookup(offer));
            }
            (ReceiverState::Receiving { next, size }, Message::Chunk { offset, data }) => {
                if offset != next {
                    return Err(ProtocolError::ChunkOutOfOrder {
                        expected: next,
                        got: offset,
                    });
                }
                let end = offset.saturating_add(data.len() as u64);
                if end > size {
                    return Err(ProtocolError::BeyondEnd { end, size });
                }
                self.actions
                    .push_back(ReceiverAction::Write { offset, data });
                if end == size {
                    self.state = Some(ReceiverState::AwaitingVerify);
                    self.actions.push_back(ReceiverAction::Verify);
                } else {
                    self.state = Some(ReceiverState::Receiving { next: end, size });
                }
            }
            (state, m) => {
                return Err(ProtocolError::UnexpectedMessage {
                    message: m.name(),
                    state: state.name(),
                })
            }
        }
        Ok(())
    }

    /// The stream from the sender ended.
    ///
    /// # Errors
    /// [`ProtocolError::EndedEarly`] if the sender stopped before sending all bytes.
    pub fn handle_end_of_stream(&self) -> Result<(), ProtocolError> {
        match self.state() {
            ReceiverState::AwaitingVerify | ReceiverState::Done if !self.decoder.has_partial() => {
                Ok(())
            }
            state => Err(ProtocolError::EndedEarly {
                state: state.name(),
            }),
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<ReceiverAction> {
        self.actions.pop_front()
    }

    /// Bytes to write to the stream (empty if none).
    pub fn take_transmit(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.transmit)
    }

    fn push_message(&mut self, message: &Message) {
        // Resume, Committed and HashMismatch have no variable fields; Refused truncates
        // its reason: encoding cannot fail for what the receiver sends.
        let _ = message.encode(&mut self.transmit);
    }

    /// Answers a `Lookup` with what storage holds.
    ///
    /// # Errors
    /// Not awaiting a lookup, or a partial offset past the offered size (driver bugs).
    pub fn lookup_done(&mut self, held: Held) -> Result<(), ProtocolError> {
        let ReceiverState::AwaitingLookup { size } = self.state() else {
            return Err(ProtocolError::UnexpectedEvent {
                event: "lookup_done",
                state: self.state().name(),
            });
        };
        match held {
            Held::Committed => {
                self.push_message(&Message::Resume { offset: size });
                self.push_message(&Message::Committed);
                self.state = Some(ReceiverState::Done);
            }
            Held::Nothing | Held::Partial(_) => {
                let offset = match held {
                    Held::Partial(n) => n,
                    _ => 0,
                };
                if offset > size {
                    return Err(ProtocolError::BeyondEnd { end: offset, size });
                }
                self.push_message(&Message::Resume { offset });
                if offset == size {
                    self.state = Some(ReceiverState::AwaitingVerify);
                    self.actions.push_back(ReceiverAction::Verify);
                } else {
                    self.state = Some(ReceiverState::Receiving { next: offset, size });
                }
            }
        }
        Ok(())
    }

    /// Answers a `Verify`: whether the SHA-256 of the durable file matches the offer.
    ///
    /// # Errors
    /// Not awaiting a verification (a driver bug).
    pub fn verified(&mut self, matches: bool) -> Result<(), ProtocolError> {
        if self.state() != ReceiverState::AwaitingVerify {
            return Err(ProtocolError::UnexpectedEvent {
                event: "verified",
                state: self.state().name(),
            });
        }
        if matches {
            self.push_message(&Message::Committed);
        } else {
            self.actions.push_back(ReceiverAction::Discard);
            self.push_message(&Message::HashMismatch);
        }
        self.state = Some(ReceiverState::Done);
        Ok(())
    }

    /// Refuses the file (at any point before the verdict): ends the conversation.
    pub fn refuse(&mut self, code: RefuseCode, reason: &str) {
        if self.state() == ReceiverState::Done {
            return;
        }
        self.actions.clear();
        self.push_message(&Message::Refused {
            code,
            reason: reason.to_owned(),
        });
        self.state = Some(ReceiverState::Done);
    }

    /// Whether the conversation is over (after the verdict or a refusal).
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state() == ReceiverState::Done
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests;
