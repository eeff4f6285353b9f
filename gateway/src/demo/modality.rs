//! The demo's simulated CT scanner: it builds one small synthetic CT image whose header
//! carries a synthetic patient's identifiers, and stores it to the gateway with a real
//! DICOM C-STORE over TCP, as a modality on the hospital LAN does.
//!
//! * The image ([`ct_image`]): 64×64 pixels, 16 bits allocated, 12 stored, a phantom
//!   (body, lungs, spine, table) in Hounsfield units; the header names the patient (name,
//!   MRN and its issuer, birth date, address), the hospital, the referring physician, the
//!   accession number, the study date, and UIDs under the hospital's root
//!   ([`super::patients::DEMO_UID_ROOT`]) that embed the accession number: the planted
//!   identifiers of [`super::patients`], so the leak check knows all of them. It is
//!   encoded as a bare Explicit VR Little Endian data set, as a C-STORE carries it.
//! * The association ([`store_blocking`]): dicom-ul's association requestor (A-ASSOCIATE
//!   with one presentation context, CT Image Storage in Explicit VR Little Endian), the
//!   C-STORE-RQ command set ([`encode_store_rq`]) in one command fragment, the data set
//!   in fragments that fit the gateway's maximum PDU length, then the C-STORE-RSP
//!   ([`decode_store_rsp`]) and an A-RELEASE.
//!
//! Invariants:
//! - The command set codec is pure (no I/O) and tested against the gateway's own DIMSE
//!   decoder; only [`store_blocking`] touches the network, with every socket operation
//!   bounded by a timeout.
//! - Only status 0x0000 counts as stored: the demo checks the gateway's success answer,
//!   which it gives only once the de-identified object is durable in its outbox.
//! - `Debug` of [`CtImage`] never prints the data set (it carries the planted PHI).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use sha2::{Digest, Sha256};

use super::dicom_walk::EXPLICIT_VR_LITTLE_ENDIAN;
use super::patients::{ImagingStudy, SyntheticPatient, ASSIGNING_AUTHORITY};

/// CT Image Storage SOP class.
pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
/// The simulated scanner's (calling) AE title.
pub const MODALITY_AE_TITLE: &str = "CT_SCANNER_1";
/// The gateway's (called) AE title in the demo.
pub const GATEWAY_AE_TITLE: &str = "WARDGATE";
/// Rows and columns of the image.
pub const IMAGE_SIZE: u16 = 64;
/// The rescale intercept: stored value = Hounsfield units + 1024.
pub const RESCALE_INTERCEPT: i32 = -1024;

/// Largest C-STORE-RSP command set accepted (real ones are about 200 bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Fragment size when the gateway announces no maximum PDU length.
const UNBOUNDED_FRAGMENT: usize = 16 * 1024;
/// Bytes of a PDV item's header (length, context id, control header) inside a P-DATA-TF.
const PDV_HEADER_LEN: usize = 6;

/// Status: success.
pub const STATUS_SUCCESS: u16 = 0x0000;
const C_STORE_RQ: u16 = 0x0001;
const C_STORE_RSP: u16 = 0x8001;
/// CommandDataSetType: a data set follows (any value but 0x0101).
const DATA_SET_PRESENT: u16 = 0x0000;
const PRIORITY_MEDIUM: u16 = 0x0000;

/// One synthetic CT image, ready to send.
pub struct CtImage {
    /// The data set (Explicit VR Little Endian, without file meta information).
    pub dataset: Vec<u8>,
    /// Its SOPInstanceUID (also the C-STORE's affected SOP instance).
    pub sop_instance_uid: String,
    /// SHA-256 of the pixel data as sent.
    pub pixel_sha256: [u8; 32],
    /// Length of the pixel data in bytes.
    pub pixel_bytes: usize,
}

impl std::fmt::Debug for CtImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtImage")
            .field("dataset_bytes", &self.dataset.len())
            .field("sop_instance_uid", &wardgate_device_adapters::REDACTED)
            .field("pixel_bytes", &self.pixel_bytes)
            .finish_non_exhaustive()
    }
}

/// The phantom's materials, in Hounsfield units.
mod hu {
    pub const AIR: i32 = -1000;
    pub const LUNG: i32 = -850;
    pub const FAT: i32 = -100;
    pub const SOFT_TISSUE: i32 = 40;
    pub const CONTRAST_BLOOD: i32 = 180;
    pub const TABLE: i32 = 250;
    pub const BONE: i32 = 900;
}

/// The phantom's Hounsfield value at pixel (`x`, `y`) of an image `size` wide: a chest
/// cross-section (fat rim, lungs, heart, spine) lying on the scanner table.
fn phantom_hu(x: f64, y: f64, size: f64) -> i32 {
    let s = size / 64.0;
    let inside = |cx: f64, cy: f64, rx: f64, ry: f64| {
        let (dx, dy) = ((x - cx * s) / (rx * s), (y - cy * s) / (ry * s));
        dx * dx + dy * dy <= 1.0
    };
    if inside(32.0, 30.0, 28.0, 21.0) {
        if inside(32.0, 47.0, 4.5, 4.0) {
            hu::BONE
        } else if inside(19.0, 28.0, 8.0, 12.0) || inside(45.0, 28.0, 8.0, 12.0) {
            hu::LUNG
        } else if inside(34.0, 33.0, 6.0, 5.5) {
            hu::CONTRAST_BLOOD
        } else if inside(32.0, 30.0, 25.5, 18.5) {
            hu::SOFT_TISSUE
        } else {
            hu::FAT
        }
    } else if (54.0 * s..56.0 * s).contains(&y) && (4.0 * s..60.0 * s).contains(&x) {
        hu::TABLE
    } else {
        hu::AIR
    }
}

/// The phantom's stored pixel values (row by row), `size`×`size`.
#[must_use]
pub fn phantom_pixels(size: u16) -> Vec<u16> {
    let n = f64::from(size);
    (0..size)
        .flat_map(|y| (0..size).map(move |x| (x, y)))
        .map(|(x, y)| {
            let value = phantom_hu(f64::from(x) + 0.5, f64::from(y) + 0.5, n) - RESCALE_INTERCEPT;
            u16::try_from(value.clamp(0, 4095)).unwrap_or(0)
        })
        .collect()
}

/// Builds an Explicit VR Little Endian data set; elements must be added in ascending
/// tag order.
struct DatasetWriter {
    out: Vec<u8>,
}

impl DatasetWriter {
    fn header(&mut self, (group, element): (u16, u16), vr: &[u8; 2], len: usize) {
        self.out.extend_from_slice(&group.to_le_bytes());
        self.out.extend_from_slice(&element.to_le_bytes());
        self.out.extend_from_slice(vr);
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            self.out.extend_from_slice(&[0, 0]);
            self.out.extend_from_slice(&len32.to_le_bytes());
        } else {
            let len16 = u16::try_from(len).unwrap_or(u16::MAX);
            self.out.extend_from_slice(&len16.to_le_bytes());
        }
    }

    /// A text value, padded to even length (UIDs with NUL, the rest with a space).
    fn text(&mut self, tag: (u16, u16), vr: &[u8; 2], value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        if bytes.len() % 2 == 1 {
            bytes.push(if vr == b"UI" { 0 } else { b' ' });
        }
        self.header(tag, vr, bytes.len());
        self.out.extend_from_slice(&bytes);
    }

    fn us(&mut self, tag: (u16, u16), value: u16) {
        self.header(tag, b"US", 2);
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn ow(&mut self, tag: (u16, u16), bytes: &[u8]) {
        self.header(tag, b"OW", bytes.len());
        self.out.extend_from_slice(bytes);
    }
}

/// The CT image of `patient`'s `study`, as the scanner sends it.
#[must_use]
pub fn ct_image(patient: &SyntheticPatient, study: &ImagingStudy) -> CtImage {
    let pixels: Vec<u8> = phantom_pixels(IMAGE_SIZE)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let sop_instance_uid = study.sop_instance_uid();
    let date = study.study_date.hl7();
    let (_, attending_family, attending_given) = &patient.attending;
    let mut w = DatasetWriter { out: Vec::new() };
    w.text((0x0008, 0x0008), b"CS", "ORIGINAL\\PRIMARY\\AXIAL");
    w.text((0x0008, 0x0016), b"UI", CT_IMAGE_STORAGE);
    w.text((0x0008, 0x0018), b"UI", &sop_instance_uid);
    w.text((0x0008, 0x0020), b"DA", &date);
    w.text((0x0008, 0x0021), b"DA", &date);
    w.text((0x0008, 0x0022), b"DA", &date);
    w.text((0x0008, 0x0023), b"DA", &date);
    w.text((0x0008, 0x0030), b"TM", &study.study_time);
    w.text((0x0008, 0x0050), b"SH", &study.accession);
    w.text((0x0008, 0x0060), b"CS", "CT");
    w.text((0x0008, 0x0070), b"LO", "WARDGATE DEMO");
    w.text((0x0008, 0x0080), b"LO", &study.institution);
    w.text(
        (0x0008, 0x0090),
        b"PN",
        &format!("{attending_family}^{attending_given}^^Dr"),
    );
    w.text((0x0008, 0x1030), b"LO", "CT CHEST WITHOUT CONTRAST");
    w.text(
        (0x0010, 0x0010),
        b"PN",
        &format!("{}^{}^{}", patient.family, patient.given, patient.middle),
    );
    w.text((0x0010, 0x0020), b"LO", &patient.mrn);
    w.text((0x0010, 0x0021), b"LO", ASSIGNING_AUTHORITY);
    w.text((0x0010, 0x0030), b"DA", &patient.birth_date.hl7());
    w.text((0x0010, 0x0040), b"CS", &patient.sex.to_string());
    w.text(
        (0x0010, 0x1040),
        b"LO",
        &format!("{}, {} {}", patient.street, patient.city, patient.zip),
    );
    w.text((0x0018, 0x0050), b"DS", "5");
    w.text((0x0018, 0x0060), b"DS", "120");
    w.text((0x0020, 0x000D), b"UI", &study.study_instance_uid());
    w.text((0x0020, 0x000E), b"UI", &study.series_instance_uid());
    w.text((0x0020, 0x0011), b"IS", "1");
    w.text((0x0020, 0x0013), b"IS", "1");
    w.text((0x0020, 0x0052), b"UI", &study.frame_of_reference_uid());
    w.us((0x0028, 0x0002), 1);
    w.text((0x0028, 0x0004), b"CS", "MONOCHROME2");
    w.us((0x0028, 0x0010), IMAGE_SIZE);
    w.us((0x0028, 0x0011), IMAGE_SIZE);
    w.text((0x0028, 0x0030), b"DS", "7.8125\\7.8125");
    w.us((0x0028, 0x0100), 16);
    w.us((0x0028, 0x0101), 12);
    w.us((0x0028, 0x0102), 11);
    w.us((0x0028, 0x0103), 0);
    w.text((0x0028, 0x0301), b"CS", "NO");
    w.text((0x0028, 0x1050), b"DS", "40");
    w.text((0x0028, 0x1051), b"DS", "400");
    w.text((0x0028, 0x1052), b"DS", &RESCALE_INTERCEPT.to_string());
    w.text((0x0028, 0x1053), b"DS", "1");
    w.ow((0x7FE0, 0x0010), &pixels);
    CtImage {
        dataset: w.out,
        sop_instance_uid,
        pixel_sha256: Sha256::digest(&pixels).into(),
        pixel_bytes: pixels.len(),
    }
}

/// Why the simulated scanner could not store its image.
#[derive(Debug, thiserror::Error)]
pub enum ModalityError {
    /// The association could not be established, or a PDU could not be sent or read.
    #[error("association with the gateway: {0}")]
    Association(#[source] Box<dicom_ul::association::Error>),
    /// The gateway accepted no presentation context for the image.
    #[error(
        "the gateway accepted no presentation context for CT Image Storage in Explicit VR Little Endian"
    )]
    NoContext,
    /// The gateway answered something that is not a C-STORE-RSP.
    #[error("unexpected answer to the C-STORE: {0}")]
    Protocol(&'static str),
    /// The gateway aborted the association.
    #[error("the gateway aborted the association")]
    Aborted,
    /// The blocking task running the association failed.
    #[error("C-STORE task: {0}")]
    Task(String),
}

impl From<dicom_ul::association::Error> for ModalityError {
    fn from(e: dicom_ul::association::Error) -> Self {
        ModalityError::Association(Box::new(e))
    }
}

fn put_element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(value);
}

fn uid_value(uid: &str) -> Vec<u8> {
    let mut value = uid.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    value
}

/// The C-STORE-RQ command set (Implicit VR Little Endian, group 0000, with its group
/// length) for one instance.
#[must_use]
pub fn encode_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(160);
    put_element(&mut body, 0x0002, &uid_value(sop_class_uid));
    put_element(&mut body, 0x0100, &C_STORE_RQ.to_le_bytes());
    put_element(&mut body, 0x0110, &message_id.to_le_bytes());
    put_element(&mut body, 0x0700, &PRIORITY_MEDIUM.to_le_bytes());
    put_element(&mut body, 0x0800, &DATA_SET_PRESENT.to_le_bytes());
    put_element(&mut body, 0x1000, &uid_value(sop_instance_uid));
    let mut out = Vec::with_capacity(body.len() + 12);
    let group_length = u32::try_from(body.len()).unwrap_or(u32::MAX);
    put_element(&mut out, 0x0000, &group_length.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The parts of a C-STORE-RSP the scanner acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreResponse {
    /// Status (0000,0900).
    pub status: u16,
    /// MessageIDBeingRespondedTo (0000,0120).
    pub message_id: u16,
}

impl StoreResponse {
    /// Whether the gateway stored the image.
    #[must_use]
    pub const fn stored(&self) -> bool {
        self.status == STATUS_SUCCESS
    }
}

/// Decodes a C-STORE-RSP command set.
///
/// # Errors
/// [`ModalityError::Protocol`] if it is malformed, not a C-STORE-RSP, or lacks a status
/// or message id.
pub fn decode_store_rsp(bytes: &[u8]) -> Result<StoreResponse, ModalityError> {
    let (mut field, mut status, mut message_id) = (None, None, None);
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 8)
            .ok_or(ModalityError::Protocol("truncated element header"))?;
        let group = u16::from_le_bytes([header[0], header[1]]);
        let element = u16::from_le_bytes([header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if group != 0x0000 {
            return Err(ModalityError::Protocol("element outside group 0000"));
        }
        let start = at + 8;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= bytes.len())
            .ok_or(ModalityError::Protocol("element runs past the end"))?;
        let us = || match &bytes[start..end] {
            [a, b] => Ok(u16::from_le_bytes([*a, *b])),
            _ => Err(ModalityError::Protocol("US element of wrong length")),
        };
        match element {
            0x0100 => field = Some(us()?),
            0x0120 => message_id = Some(us()?),
            0x0900 => status = Some(us()?),
            _ => {}
        }
        at = end;
    }
    if field != Some(C_STORE_RSP) {
        return Err(ModalityError::Protocol("not a C-STORE-RSP"));
    }
    Ok(StoreResponse {
        status: status.ok_or(ModalityError::Protocol("no status"))?,
        message_id: message_id.ok_or(ModalityError::Protocol("no message id"))?,
    })
}

fn without_padding(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Stores `image` to the gateway's DICOM receiver at `gateway` (blocking; every socket
/// operation times out after `timeout`). Returns the gateway's answer; the association is
/// released after it, or aborted on any error.
///
/// # Errors
/// A [`ModalityError`] if there is no association or no valid answer.
pub fn store_blocking(
    gateway: SocketAddr,
    image: &CtImage,
    timeout: Duration,
) -> Result<StoreResponse, ModalityError> {
    let mut association = ClientAssociationOptions::new()
        .calling_ae_title(MODALITY_AE_TITLE)
        .called_ae_title(GATEWAY_AE_TITLE)
        .with_presentation_context(CT_IMAGE_STORAGE, vec![EXPLICIT_VR_LITTLE_ENDIAN])
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .establish(gateway)?;
    // Without it a response written in two parts waits for a delayed ACK.
    let _ = association.inner_stream().set_nodelay(true);
    let context = association
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && without_padding(&pc.abstract_syntax) == CT_IMAGE_STORAGE
                && without_padding(&pc.transfer_syntax) == EXPLICIT_VR_LITTLE_ENDIAN
        })
        .map(|pc| pc.id);
    let exchanged = match context {
        Some(context) => exchange(&mut association, context, image),
        None => Err(ModalityError::NoContext),
    };
    match exchanged {
        Ok(response) => {
            if let Err(e) = association.release() {
                // The answer is in; a failed release changes nothing about the image.
                tracing::debug!(error = %e, "demo modality: A-RELEASE failed");
            }
            Ok(response)
        }
        Err(e) => {
            let _ = association.abort();
            Err(e)
        }
    }
}

/// One C-STORE on an established association: command, data set fragments, response.
fn exchange(
    association: &mut dicom_ul::ClientAssociation<std::net::TcpStream>,
    context: u8,
    image: &CtImage,
) -> Result<StoreResponse, ModalityError> {
    const MESSAGE_ID: u16 = 1;
    let pdata = |value_type, is_last, data: Vec<u8>| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: context,
            value_type,
            is_last,
            data,
        }],
    };
    let command = encode_store_rq(MESSAGE_ID, CT_IMAGE_STORAGE, &image.sop_instance_uid);
    association.send(&pdata(PDataValueType::Command, true, command))?;
    let fragment = match usize::try_from(association.acceptor_max_pdu_length()) {
        Ok(0) | Err(_) => UNBOUNDED_FRAGMENT,
        Ok(max) => max.saturating_sub(PDV_HEADER_LEN).max(2),
    };
    let chunks: Vec<&[u8]> = image.dataset.chunks(fragment).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let is_last = i + 1 == chunks.len();
        association.send(&pdata(PDataValueType::Data, is_last, chunk.to_vec()))?;
    }
    let mut response = Vec::new();
    loop {
        match association.receive()? {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        return Err(ModalityError::Protocol("data set in a C-STORE-RSP"));
                    }
                    response.extend_from_slice(&value.data);
                    if response.len() > MAX_RESPONSE_BYTES {
                        return Err(ModalityError::Protocol("response command set too large"));
                    }
                    if value.is_last {
                        let decoded = decode_store_rsp(&response)?;
                        if decoded.message_id != MESSAGE_ID {
                            return Err(ModalityError::Protocol("response to another message id"));
                        }
                        return Ok(decoded);
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(ModalityError::Aborted),
            _ => return Err(ModalityError::Protocol("unexpected PDU")),
        }
    }
}

/// [`store_blocking`] on tokio's blocking pool.
///
/// # Errors
/// As [`store_blocking`].
pub async fn store(
    gateway: SocketAddr,
    image: Arc<CtImage>,
    timeout: Duration,
) -> Result<StoreResponse, ModalityError> {
    tokio::task::spawn_blocking(move || store_blocking(gateway, &image, timeout))
        .await
        .map_err(|e| ModalityError::Task(e.to_string()))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::super::dicom_walk::parse_dataset;
    use super::super::patients::SyntheticPatient;
    use super::*;
    use wardgate_device_adapters::dicom::dimse;

    const TODAY: i64 = 20_259;

    #[test]
    fn store_rq_is_understood_by_the_gateways_decoder_and_its_answer_by_ours() {
        let rq = encode_store_rq(7, CT_IMAGE_STORAGE, "1.2.3.45");
        let command = dimse::decode_command(1, &rq).unwrap();
        assert_eq!(command.field, dimse::command_field::C_STORE_RQ);
        assert_eq!(command.message_id, 7);
        assert_eq!(
            command.affected_sop_class.as_deref(),
            Some(CT_IMAGE_STORAGE)
        );
        assert_eq!(command.affected_sop_instance.as_deref(), Some("1.2.3.45"));
        assert!(command.has_data_set);
        for status in [dimse::status::SUCCESS, dimse::status::OUT_OF_RESOURCES] {
            let rsp = dimse::encode_response(&command, status, Some("full"));
            let decoded = decode_store_rsp(&rsp).unwrap();
            assert_eq!(
                decoded,
                StoreResponse {
                    status,
                    message_id: 7
                }
            );
            assert_eq!(decoded.stored(), status == STATUS_SUCCESS);
        }
    }

    #[test]
    fn malformed_responses_are_errors_not_panics() {
        let command =
            dimse::decode_command(1, &encode_store_rq(1, CT_IMAGE_STORAGE, "1.2")).unwrap();
        let rsp = dimse::encode_response(&command, 0, None);
        for cut in 0..rsp.len() {
            let _ = decode_store_rsp(&rsp[..cut]);
        }
        assert!(decode_store_rsp(&rsp[..rsp.len() - 1]).is_err());
        // A request is not a response.
        assert!(decode_store_rsp(&encode_store_rq(1, CT_IMAGE_STORAGE, "1.2")).is_err());
    }

    #[test]
    fn image_is_a_valid_ascending_data_set_carrying_the_planted_header() {
        let patient = SyntheticPatient::new(0, TODAY);
        let study = ImagingStudy::new(0, TODAY);
        let image = ct_image(&patient, &study);
        let set = parse_dataset(&image.dataset).unwrap();
        let tags: Vec<_> = set.0.iter().map(|e| e.tag).collect();
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(tags, sorted, "tags must ascend");
        assert_eq!(set.text((0x0010, 0x0020)), Some(patient.mrn.clone()));
        assert_eq!(set.text((0x0008, 0x0080)), Some(study.institution.clone()));
        assert_eq!(
            set.text((0x0008, 0x0018)),
            Some(image.sop_instance_uid.clone())
        );
        assert_eq!(set.text((0x0020, 0x000D)), Some(study.study_instance_uid()));
        let pixels = set.bytes((0x7FE0, 0x0010)).unwrap();
        assert_eq!(pixels.len(), image.pixel_bytes);
        assert_eq!(pixels.len(), usize::from(IMAGE_SIZE).pow(2) * 2);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(pixels)), image.pixel_sha256);
        // Every planted identifier of the study, and the patient's main ones, are in it.
        let scanner = super::super::leak::LeakScanner::new(
            patient
                .planted_identifiers()
                .into_iter()
                .chain(study.planted_identifiers())
                .collect(),
        );
        let found: Vec<&str> = scanner
            .scan(&image.dataset)
            .into_iter()
            .map(|i| scanner.identifiers()[i].value.as_str())
            .collect();
        for planted in [
            patient.family.as_str(),
            patient.given.as_str(),
            patient.mrn.as_str(),
            &patient.birth_date.hl7(),
            patient.attending.1.as_str(),
            patient.city.as_str(),
            study.institution.as_str(),
            study.accession.as_str(),
            &study.study_date.hl7(),
            super::super::patients::DEMO_UID_ROOT,
        ] {
            assert!(
                found.contains(&planted),
                "{planted} not in the header: {found:?}"
            );
        }
        assert!(!format!("{image:?}").contains(&patient.mrn));
    }

    #[test]
    fn phantom_has_air_lungs_soft_tissue_and_bone() {
        let pixels = phantom_pixels(IMAGE_SIZE);
        let hu_at = |x: usize, y: usize| {
            i32::from(pixels[y * usize::from(IMAGE_SIZE) + x]) + RESCALE_INTERCEPT
        };
        assert_eq!(hu_at(0, 0), hu::AIR);
        assert_eq!(hu_at(19, 28), hu::LUNG);
        assert_eq!(hu_at(32, 47), hu::BONE);
        assert_eq!(hu_at(32, 20), hu::SOFT_TISSUE);
        assert_eq!(hu_at(32, 55), hu::TABLE);
        assert!(pixels.iter().all(|&v| v < 4096), "12 bits stored");
    }
}
