//! At-rest encryption of objects being received: no identified byte reaches `temp_dir`
//! in the clear.
//!
//! A received data set carries the patient's name, IDs, birth date and more, and the
//! gateway's rule is that PHI is stripped before anything touches its disk. The SCP must
//! still stream objects (up to gigabytes) to a temporary file, so that file is encrypted
//! as it is written, under a key that exists only in this process's memory:
//!
//! - **Key**: a fresh random 256-bit [`DatasetKey`] per object (`getrandom`), held in the
//!   [`ReceivedObject`](super::ReceivedObject) handed to the sink and wiped on drop
//!   (`zeroize`). It is never written anywhere. After a crash, power loss or theft of the
//!   disk, a leftover file is ciphertext whose key is gone: unreadable. Leftovers are
//!   still removed when the SCP starts, to reclaim the space.
//! - **Cipher**: ChaCha20-Poly1305 (RFC 8439) from `ring`, the crypto library already
//!   linked for TLS, so this adds no crate to the image or its SBOM. It is constant-time
//!   in software on CPUs without AES instructions, and fast (over 1 GB/s per core on the
//!   appliance class of CPU), well above what the SCP receives.
//! - **Format** (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár): the
//!   plaintext is cut into chunks of [`CHUNK_LEN`] bytes, the last one shorter (or empty
//!   for an empty data set); each chunk is sealed on its own and followed by its
//!   [`TAG_LEN`]-byte tag. Chunk `i` uses the nonce `i` (64-bit big endian) followed by
//!   three zero bytes and a final byte that is 1 for the last chunk and 0 otherwise. The
//!   key is used for this one file, so nonces are unique without being random. The file
//!   is exactly [`sealed_len`] bytes long for a data set of `n` bytes.
//!
//! Why an AEAD rather than a bare stream cipher: confidentiality of leftovers against
//! disk theft and forensics is the goal, and the file never leaves this process's control
//! while it is in use, so a MAC is not needed for secrecy. But the tag costs 16 bytes per
//! 256 KiB and little time, and buys integrity of the data itself: a
//! medium error, a bug or anyone altering the file between receipt and de-identification
//! makes [`DatasetReader`] fail (the modality is answered a failure and sends again)
//! instead of silently storing a different image for the patient. The last-chunk flag
//! and the chunk counter in the nonce also make truncation, extension and reordering
//! fail.
//!
//! **Invariants**
//! - Only ciphertext is ever written to a file: [`Sealer`] encrypts a chunk in its own
//!   buffer before handing it out to be written.
//! - [`DatasetReader`] yields only authenticated plaintext: a chunk's bytes are released
//!   after its tag is verified, and the reader fails (and stays failed) on a bad tag, a
//!   short or long file, or a wrong key. It holds one chunk in memory, whatever the size
//!   of the object.
//!
//! Not covered: memory. Plaintext passes through the SCP's PDU buffer and the sink's
//! reads, and `ring` does not wipe its copy of the key when it is dropped. An appliance
//! that must keep PHI off disk must also run without swap (or with encrypted swap) and
//! without core dumps.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use zeroize::Zeroizing;

/// Plaintext bytes per sealed chunk: the reader's memory, and the unit written to disk.
/// The default `max_pdu_length`, so that a stream of full PDUs costs one write each, as
/// it would unencrypted.
pub const CHUNK_LEN: usize = 256 * 1024;
/// Bytes of authentication tag after each chunk.
pub const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// Size of the sealed file for a data set of `dataset_len` bytes (saturating; a data set
/// that large could not be received).
#[must_use]
pub const fn sealed_len(dataset_len: u64) -> u64 {
    let chunk = CHUNK_LEN as u64;
    let chunks = if dataset_len == 0 {
        1
    } else {
        dataset_len.div_ceil(chunk)
    };
    dataset_len.saturating_add(chunks.saturating_mul(TAG_LEN as u64))
}

/// The key of one object's temporary file. It exists only in memory and is wiped when
/// dropped; whoever holds it can read the file (through [`DatasetReader`]), nobody else.
/// Deliberately neither `Clone` nor printable.
pub struct DatasetKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl DatasetKey {
    /// A fresh random key from the operating system's generator.
    ///
    /// # Errors
    /// The operating system's random generator failed.
    pub fn generate() -> io::Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..])
            .map_err(|e| io::Error::other(format!("random generator failed: {e}")))?;
        Ok(DatasetKey { bytes })
    }

    fn aead(&self) -> io::Result<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.bytes[..])
            .map(LessSafeKey::new)
            .map_err(|_| io::Error::other("ChaCha20-Poly1305 key setup failed"))
    }
}

impl std::fmt::Debug for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::REDACTED)
    }
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[NONCE_LEN - 1] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

fn next_index(index: u64) -> io::Result<u64> {
    index
        .checked_add(1)
        .ok_or_else(|| io::Error::other("sealed file has too many chunks"))
}

/// Encrypts one data set as it arrives, sans-IO: plaintext goes in by [`push`](Self::push),
/// sealed chunks come out to be appended to the file, in order, and [`finish`](Self::finish)
/// yields the last one. Holds one chunk (plus tag) of memory, allocated once.
pub struct Sealer {
    key: LessSafeKey,
    /// The chunk being filled (plaintext) or, when `handed_out`, the sealed chunk last
    /// returned by `push`.
    buf: Vec<u8>,
    handed_out: bool,
    index: u64,
    plaintext_len: u64,
}

impl Sealer {
    /// A sealer for one file under `key` (which must not seal anything else).
    ///
    /// # Errors
    /// The cipher cannot be set up (not expected: the key has the right length).
    pub fn new(key: &DatasetKey) -> io::Result<Self> {
        Ok(Sealer {
            key: key.aead()?,
            buf: Vec::with_capacity(CHUNK_LEN + TAG_LEN),
            handed_out: false,
            index: 0,
            plaintext_len: 0,
        })
    }

    /// Takes plaintext from the front of `data` (advancing it). Returns a sealed chunk
    /// when one is complete: append it to the file before the next call, then call again
    /// with the rest of `data` until `data` is empty. A full chunk is sealed only when
    /// more data arrives, because the last chunk is sealed differently.
    ///
    /// # Errors
    /// The chunk counter overflowed (not reachable: 2^64 chunks).
    pub fn push<'s>(&'s mut self, data: &mut &[u8]) -> io::Result<Option<&'s [u8]>> {
        if self.handed_out {
            self.buf.clear();
            self.handed_out = false;
        }
        if data.is_empty() {
            return Ok(None);
        }
        if self.buf.len() == CHUNK_LEN {
            self.seal(false)?;
            self.handed_out = true;
            return Ok(Some(&self.buf));
        }
        let take = (CHUNK_LEN - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        *data = &data[take..];
        self.plaintext_len += take as u64;
        Ok(None)
    }

    /// Seals the last chunk and returns it (to be appended to the file) with the total
    /// number of plaintext bytes pushed.
    ///
    /// # Errors
    /// As for [`push`](Self::push).
    pub fn finish(mut self) -> io::Result<(Vec<u8>, u64)> {
        if self.handed_out {
            self.buf.clear();
        }
        self.seal(true)?;
        Ok((self.buf, self.plaintext_len))
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.index, last), Aad::empty(), &mut self.buf)
            .map_err(|_| io::Error::other("sealing a chunk failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.index = next_index(self.index)?;
        Ok(())
    }
}

/// Reads a sealed data set back as plaintext, one authenticated chunk at a time
/// (streaming: memory is one chunk, whatever the object's size). Implements [`Read`]
/// and [`BufRead`]; no further buffering is needed. The reads are blocking file I/O: in
/// async code, use it inside `spawn_blocking`.
pub struct DatasetReader<R = std::fs::File> {
    inner: R,
    key: LessSafeKey,
    buf: Vec<u8>,
    /// Plaintext not yet returned is `buf[pos..end]`.
    pos: usize,
    end: usize,
    next_index: u64,
    /// Plaintext bytes in the chunks not yet read.
    remaining: u64,
    state: ReaderState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Reading,
    /// The last chunk was verified and nothing follows it.
    Done,
    /// A read failed; nothing more is released.
    Failed,
}

impl DatasetReader<std::fs::File> {
    /// Opens the sealed file at `path` holding `dataset_len` plaintext bytes under `key`.
    ///
    /// # Errors
    /// The file cannot be opened, or its size does not match `dataset_len`
    /// ([`io::ErrorKind::InvalidData`]).
    pub fn open(path: &Path, key: &DatasetKey, dataset_len: u64) -> io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let actual = file.metadata()?.len();
        if actual != sealed_len(dataset_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "temporary DICOM file has the wrong size",
            ));
        }
        DatasetReader::new(file, key, dataset_len)
    }
}

impl<R: Read> DatasetReader<R> {
    /// Decrypts the sealed stream `inner`, which must hold `dataset_len` plaintext bytes
    /// under `key`.
    ///
    /// # Errors
    /// The cipher cannot be set up (not expected).
    pub fn new(inner: R, key: &DatasetKey, dataset_len: u64) -> io::Result<Self> {
        Ok(DatasetReader {
            inner,
            key: key.aead()?,
            buf: Vec::with_capacity(CHUNK_LEN + TAG_LEN),
            pos: 0,
            end: 0,
            next_index: 0,
            remaining: dataset_len,
            state: ReaderState::Reading,
        })
    }

    fn read_chunk(&mut self) -> io::Result<()> {
        let plain_len = usize::try_from(self.remaining.min(CHUNK_LEN as u64)).unwrap_or(CHUNK_LEN);
        let last = self.remaining <= CHUNK_LEN as u64;
        // Within the capacity reserved at construction: no allocation.
        self.buf.resize(plain_len + TAG_LEN, 0);
        read_full(&mut self.inner, &mut self.buf)?;
        let plain = self
            .key
            .open_in_place(nonce(self.next_index, last), Aad::empty(), &mut self.buf)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "temporary DICOM file failed authentication (altered, corrupted or truncated)",
                )
            })?;
        let opened = plain.len();
        self.next_index = next_index(self.next_index)?;
        self.remaining -= opened as u64;
        if last {
            let mut probe = [0u8; 1];
            let extra = loop {
                match self.inner.read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if extra != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "temporary DICOM file is longer than its data set",
                ));
            }
            self.state = ReaderState::Done;
        }
        self.pos = 0;
        self.end = opened;
        Ok(())
    }
}

/// Fills `buf` completely; a short stream is [`io::ErrorKind::UnexpectedEof`].
fn read_full(inner: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    inner.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "temporary DICOM file is truncated",
            )
        } else {
            e
        }
    })
}

impl<R: Read> BufRead for DatasetReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end {
            match self.state {
                ReaderState::Done => return Ok(&[]),
                ReaderState::Failed => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "temporary DICOM file could not be read earlier",
                    ))
                }
                ReaderState::Reading => {
                    if let Err(e) = self.read_chunk() {
                        self.state = ReaderState::Failed;
                        self.pos = 0;
                        self.end = 0;
                        return Err(e);
                    }
                }
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = self.pos.saturating_add(amount).min(self.end);
    }
}

impl<R: Read> Read for DatasetReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R> std::fmt::Debug for DatasetReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetReader")
            .field("remaining", &self.remaining)
            .field("buffered", &(self.end - self.pos))
            .finish_non_exhaustive()
    }
}

/// Encrypts everything `dataset` yields into a new file at `path` (created exclusively,
/// owner-only permissions) under a fresh key, and returns the key and the plaintext
/// length: what the SCP does with a received object, for tests and tools that need a
/// [`ReceivedObject`](super::ReceivedObject) without a modality. The file is removed if
/// this fails.
///
/// # Errors
/// Reading `dataset`, creating or writing the file, or the random generator failed.
pub fn seal_to_file(path: &Path, dataset: impl Read) -> io::Result<(DatasetKey, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    let sealed = seal_into(file, dataset);
    if sealed.is_err() {
        let _ = std::fs::remove_file(path);
    }
    sealed
}

fn seal_into(mut file: std::fs::File, mut dataset: impl Read) -> io::Result<(DatasetKey, u64)> {
    let key = DatasetKey::generate()?;
    let mut sealer = Sealer::new(&key)?;
    let mut input = vec![0u8; CHUNK_LEN];
    loop {
        let n = match dataset.read(&mut input) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &input[..n];
        while !rest.is_empty() {
            if let Some(sealed) = sealer.push(&mut rest)? {
                file.write_all(sealed)?;
            }
        }
    }
    let (tail, len) = sealer.finish()?;
    file.write_all(&tail)?;
    file.flush()?;
    Ok((key, len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// Seals `data` pushed in pieces of the given sizes (cycled) into memory.
    fn seal(key: &DatasetKey, data: &[u8], pieces: &[usize]) -> Vec<u8> {
        let mut sealer = Sealer::new(key).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        let mut sizes = pieces.iter().copied().cycle();
        while at < data.len() {
            let n = sizes.next().unwrap_or(1).max(1).min(data.len() - at);
            let mut rest = &data[at..at + n];
            while !rest.is_empty() {
                if let Some(chunk) = sealer.push(&mut rest).unwrap() {
                    out.extend_from_slice(chunk);
                }
            }
            at += n;
        }
        let (tail, len) = sealer.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        out.extend_from_slice(&tail);
        out
    }

    fn open(key: &DatasetKey, sealed: &[u8], len: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        DatasetReader::new(sealed, key, len)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        for len in [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            3 * CHUNK_LEN,
            3 * CHUNK_LEN + 17,
        ] {
            let key = DatasetKey::generate().unwrap();
            let data = pattern(len);
            let sealed = seal(&key, &data, &[16_384, 1, 70_000]);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
            assert_eq!(open(&key, &sealed, len as u64).unwrap(), data, "len {len}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_whatever_the_fragmenting(
            len in 0usize..(2 * CHUNK_LEN + 100),
            pieces in proptest::collection::vec(1usize..100_000, 1..8),
            read_size in 1usize..100_000,
        ) {
            let key = DatasetKey::generate().unwrap();
            let data = pattern(len);
            let sealed = seal(&key, &data, &pieces);
            let mut reader = DatasetReader::new(&sealed[..], &key, len as u64).unwrap();
            let mut back = Vec::new();
            let mut piece = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut piece).unwrap();
                if n == 0 { break; }
                back.extend_from_slice(&piece[..n]);
            }
            prop_assert_eq!(back, data);
        }
    }

    #[test]
    fn the_file_holds_no_plaintext() {
        let key = DatasetKey::generate().unwrap();
        let mut data = pattern(200_000);
        data[70_000..70_011].copy_from_slice(b"DOE^PLANTED");
        let sealed = seal(&key, &data, &[4096]);
        assert!(!sealed.windows(11).any(|w| w == b"DOE^PLANTED"));
        // Two keys never give the same ciphertext for the same data.
        let other = seal(&DatasetKey::generate().unwrap(), &data, &[4096]);
        assert_ne!(sealed, other);
    }

    #[test]
    fn any_alteration_fails_and_releases_nothing_of_the_bad_chunk() {
        let key = DatasetKey::generate().unwrap();
        let len = 2 * CHUNK_LEN + 100;
        let data = pattern(len);
        let sealed = seal(&key, &data, &[CHUNK_LEN]);
        let stride = CHUNK_LEN + TAG_LEN;

        let mut flipped = sealed.clone();
        flipped[stride + 5] ^= 1;
        let mut reader = DatasetReader::new(&flipped[..], &key, len as u64).unwrap();
        let mut first = vec![0u8; CHUNK_LEN];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(first, data[..CHUNK_LEN]);
        let err = reader.read(&mut first).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // And it stays failed.
        assert!(reader.read(&mut first).is_err());

        let mut swapped = sealed[stride..2 * stride].to_vec();
        swapped.extend_from_slice(&sealed[..stride]);
        swapped.extend_from_slice(&sealed[2 * stride..]);
        assert!(open(&key, &swapped, len as u64).is_err());

        // Cut after a whole chunk, read as if that were all: the last-chunk flag differs.
        assert!(open(&key, &sealed[..stride], CHUNK_LEN as u64).is_err());
        assert!(open(&key, &sealed[..sealed.len() - 1], len as u64).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&key, &longer, len as u64).is_err());

        assert!(open(&DatasetKey::generate().unwrap(), &sealed, len as u64).is_err());
        assert_eq!(open(&key, &sealed, len as u64).unwrap(), data);
    }

    #[test]
    fn reader_memory_is_one_chunk() {
        // A stream of 64 chunks of zeros sealed on the fly, never held whole.
        struct Zeros(u64);
        impl Read for Zeros {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = usize::try_from(self.0.min(buf.len() as u64)).unwrap();
                buf[..n].fill(0);
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let len = 64 * CHUNK_LEN as u64 + 3;
        let (key, sealed) = seal_to_file(&path, Zeros(len)).unwrap();
        assert_eq!(sealed, len);
        let mut reader = DatasetReader::open(&path, &key, len).unwrap();
        let mut total = 0u64;
        loop {
            let got = reader.fill_buf().unwrap().len();
            if got == 0 {
                break;
            }
            assert!(reader.buf.capacity() <= CHUNK_LEN + TAG_LEN);
            total += got as u64;
            reader.consume(got);
        }
        assert_eq!(total, len);
        // A wrong length is refused before reading.
        assert_eq!(
            DatasetReader::open(&path, &key, len + 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
        // seal_to_file does not overwrite.
        assert!(seal_to_file(&path, &b"x"[..]).is_err());
    }

    #[test]
    fn debug_prints_no_key() {
        let key = DatasetKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), crate::REDACTED);
    }
}
