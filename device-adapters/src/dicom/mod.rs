//! DICOM storage receiver: a C-STORE SCP (and C-ECHO) for modalities on the hospital LAN.
//!
//! | step | file | what it does |
//! |---|---|---|
//! | configuration | [`config`] | the typed, validated `[dicom]` config (user documentation) |
//! | what is negotiated | [`sop`] | accepted storage SOP classes and transfer syntaxes |
//! | association negotiation | [`negotiate`] | A-ASSOCIATE-RQ → AC or RJ (access control, contexts) |
//! | DIMSE messages | [`dimse`] | command set codec, fragment reassembly, response policy |
//! | temporary files at rest | [`sealed`] | per-object key, chunked ChaCha20-Poly1305, reader |
//! | driver | [`scp`] | tokio: accept, limits, PDUs, temp files, the sink |
//!
//! Everything but [`scp`] is pure (no tokio, no clock) and unit-tested on its own; the
//! upper-layer PDU codec is dicom-ul's.
//!
//! **Invariant: a C-STORE is answered with success only after [`DicomSink::store`]
//! returned `Ok(())`, i.e. after the (de-identified) object is durable.** A crash at any
//! point before that loses nothing the modality believes stored: it has a failure or no
//! response, and sends again. Every other path answers a failure status or aborts the
//! association.
//!
//! **Invariant: no identified byte is written to disk in the clear.** Received data sets
//! carry PHI and are de-identified only by the sink, so the temporary file is encrypted
//! as it is written, under a fresh key per object that lives only in memory (in the
//! [`ReceivedObject`]); see [`sealed`]. A crash leaves ciphertext whose key is gone.
//!
//! Objects are never held in memory: each data fragment is encrypted and appended to a
//! temporary file in the configured directory as it arrives, so an association holds at
//! most about two PDUs (`max_pdu_length`), one sealing chunk ([`sealed::CHUNK_LEN`]) and
//! one command set, whatever the object's size. The temporary file of an object that is
//! not stored (too large, truncated, aborted, refused by the sink) is removed, and so is
//! every object's file once the sink returns.

pub mod config;
pub mod dimse;
pub mod negotiate;
pub mod scp;
pub mod sealed;
pub mod sop;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{CallerConfig, DicomScpConfig};
pub use scp::{serve, DicomScpStats, DicomScpStatsSnapshot};
pub use sealed::{DatasetKey, DatasetReader};

/// Where received objects go: the gateway's de-identification stage and outbox.
pub trait DicomSink: Send + Sync + 'static {
    /// Makes one received object durable. The object's data set (without file meta
    /// information, exactly as the modality sent it) is read through
    /// [`object.open_dataset()`](ReceivedObject::open_dataset), as many times as needed,
    /// while the future runs. The file at `object.dataset_path` holds ciphertext under a
    /// key that dies with `object`: the sink must not rename it away or keep it (a
    /// de-identified copy is what it stores); the file is deleted when the future
    /// completes. Return `Ok(())` only once the object (de-identified) is durably
    /// stored: the modality is told it is stored, and will not send it again.
    ///
    /// A data set that fails to read back (an `InvalidData` or `UnexpectedEof` error from
    /// the reader: the temporary file was altered or damaged) should be answered
    /// [`StoreFailure::ProcessingFailure`], so that the modality sends it again.
    fn store(
        &self,
        object: ReceivedObject,
    ) -> impl Future<Output = Result<(), StoreFailure>> + Send;
}

/// One complete object received by C-STORE. Dropping it drops (and wipes) the only key
/// to its temporary file.
pub struct ReceivedObject {
    /// Temporary file holding the data set, encrypted under `dataset_key` (format in
    /// [`sealed`]): read it through [`open_dataset`](Self::open_dataset), never directly.
    pub dataset_path: PathBuf,
    /// Size of the data set (plaintext), in bytes. The file is
    /// [`sealed::sealed_len`]`(dataset_len)` bytes.
    pub dataset_len: u64,
    /// The only key to `dataset_path` (memory only; wiped on drop, never printed).
    pub dataset_key: DatasetKey,
    /// Transfer syntax the data set is encoded in (negotiated for its presentation
    /// context).
    pub transfer_syntax_uid: String,
    /// SOP class UID (Affected SOP Class UID of the C-STORE-RQ).
    pub sop_class_uid: String,
    /// SOP instance UID (Affected SOP Instance UID of the C-STORE-RQ). Identifies a
    /// patient's image: never log it.
    pub sop_instance_uid: String,
    /// The modality's calling AE title (padding removed).
    pub calling_ae_title: String,
    /// The modality's address.
    pub peer: SocketAddr,
}

impl ReceivedObject {
    /// Opens the data set for reading: a buffered, decrypting, authenticating reader that
    /// streams the file one chunk ([`sealed::CHUNK_LEN`]) at a time, so memory does not
    /// grow with the object. Each call starts from the beginning. Blocking file I/O: in
    /// async code, call it and read inside `spawn_blocking`; the reader borrows nothing
    /// from `self` and can be moved there.
    ///
    /// # Errors
    /// The file cannot be opened, or its size does not match `dataset_len`
    /// ([`std::io::ErrorKind::InvalidData`]). Reads fail with `InvalidData` or
    /// `UnexpectedEof` if the file was altered or damaged.
    pub fn open_dataset(&self) -> std::io::Result<DatasetReader> {
        DatasetReader::open(&self.dataset_path, &self.dataset_key, self.dataset_len)
    }
}

impl std::fmt::Debug for ReceivedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedObject")
            .field("dataset_path", &self.dataset_path)
            .field("dataset_len", &self.dataset_len)
            .field("dataset_key", &self.dataset_key)
            .field("transfer_syntax_uid", &self.transfer_syntax_uid)
            .field("sop_class_uid", &self.sop_class_uid)
            .field("sop_instance_uid", &crate::REDACTED)
            .field("calling_ae_title", &self.calling_ae_title)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Why the sink did not store an object. The text goes into the C-STORE response's error
/// comment (first 64 characters) and the log: it must not contain object content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFailure {
    /// No room: storage budget exhausted, outbox full (status 0xA700, "refused: out of
    /// resources"; the modality should retry later).
    #[error("out of resources: {0}")]
    OutOfResources(String),
    /// The data set is not an instance of its SOP class (status 0xA900).
    #[error("data set does not match SOP class: {0}")]
    DataSetMismatch(String),
    /// The data set cannot be parsed (status 0xC000, "cannot understand").
    #[error("cannot understand: {0}")]
    CannotUnderstand(String),
    /// Anything else went wrong while storing (status 0x0110, "processing failure").
    #[error("processing failure: {0}")]
    ProcessingFailure(String),
}

impl StoreFailure {
    /// The DIMSE status the C-STORE is answered with.
    #[must_use]
    pub const fn status(&self) -> u16 {
        match self {
            StoreFailure::OutOfResources(_) => dimse::status::OUT_OF_RESOURCES,
            StoreFailure::DataSetMismatch(_) => dimse::status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            StoreFailure::CannotUnderstand(_) => dimse::status::CANNOT_UNDERSTAND,
            StoreFailure::ProcessingFailure(_) => dimse::status::PROCESSING_FAILURE,
        }
    }

    /// The reason text.
    #[must_use]
    pub fn text(&self) -> &str {
        match self {
            StoreFailure::OutOfResources(t)
            | StoreFailure::DataSetMismatch(t)
            | StoreFailure::CannotUnderstand(t)
            | StoreFailure::ProcessingFailure(t) => t,
        }
    }
}

/// Errors that end [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum DicomScpError {
    /// The configuration is unusable.
    #[error("invalid DICOM receiver configuration: {0}")]
    Config(String),
    /// The temporary directory is unusable.
    #[error("DICOM temp_dir {path}: {source}")]
    TempDir {
        /// The configured directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Accepting connections kept failing.
    #[error(
        "accepting DICOM connections failed {} times in a row",
        scp::MAX_ACCEPT_FAILURES
    )]
    Accept(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn failures_map_to_dimse_statuses() {
        assert_eq!(StoreFailure::OutOfResources("x".into()).status(), 0xA700);
        assert_eq!(StoreFailure::DataSetMismatch("x".into()).status(), 0xA900);
        assert_eq!(StoreFailure::CannotUnderstand("x".into()).status(), 0xC000);
        assert_eq!(StoreFailure::ProcessingFailure("x".into()).status(), 0x0110);
    }

    fn object(dataset_path: PathBuf, dataset_key: DatasetKey, dataset_len: u64) -> ReceivedObject {
        ReceivedObject {
            dataset_path,
            dataset_len,
            dataset_key,
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: "1.2.3.999.777".into(),
            calling_ae_title: "CT1".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn open_dataset_reads_back_what_was_sealed() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.part");
        let dataset: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (key, len) = sealed::seal_to_file(&path, &dataset[..]).unwrap();
        let object = object(path, key, len);
        for _ in 0..2 {
            let mut back = Vec::new();
            object
                .open_dataset()
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == dataset);
        }
        let raw = std::fs::read(&object.dataset_path).unwrap();
        assert_eq!(raw.len() as u64, sealed::sealed_len(len));
        assert!(!raw.windows(64).any(|w| w == &dataset[1000..1064]));
    }

    #[test]
    fn debug_redacts_the_instance_uid_and_the_key() {
        let object = object(
            PathBuf::from("/tmp/x.part"),
            DatasetKey::generate().unwrap(),
            1,
        );
        let debug = format!("{object:?}");
        assert!(!debug.contains("999.777"));
        assert_eq!(debug.matches(crate::REDACTED).count(), 2, "{debug}");
    }
}
