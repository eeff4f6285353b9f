//! What this SCP negotiates: the storage SOP classes (abstract syntaxes) and transfer
//! syntaxes it accepts, as documented constant lists.
//!
//! Invariants:
//! - Every transfer syntax listed here is little endian with explicit VR for everything
//!   but Implicit VR Little Endian itself, and none needs decompressing to be parsed: a
//!   compressed object's pixel data is encapsulated and passed through byte for byte. The
//!   receiver never transcodes; what the modality sent is what the sink gets.
//! - Deflated Explicit VR Little Endian (the whole data set is zlib-compressed, so its
//!   header cannot be scanned without inflating) and the retired Explicit VR Big Endian
//!   are deliberately not accepted: a modality offering them always offers one of the
//!   syntaxes below as well.
//! - Only the SOP classes listed here (and Verification) are accepted; a presentation
//!   context proposing any other abstract syntax is answered "abstract syntax not
//!   supported", the rest of the association still goes ahead.

use dicom_dictionary_std::uids;

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = uids::VERIFICATION;

/// Transfer syntaxes accepted, in no particular order (the proposer's preference decides,
/// see [`choose_transfer_syntax`]).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    // JPEG baseline (8 bit lossy) and extended (12 bit lossy).
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
    // JPEG lossless, non-hierarchical (process 14) and its selection value 1 variant.
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEGLS_LOSSLESS,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
    uids::RLE_LOSSLESS,
];

/// Storage SOP classes accepted (C-STORE). Verification is accepted in addition.
pub const STORAGE_SOP_CLASSES: &[&str] = &[
    // Projection radiography and mammography.
    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids::DIGITAL_INTRA_ORAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING,
    uids::BREAST_TOMOSYNTHESIS_IMAGE_STORAGE,
    // CT.
    uids::CT_IMAGE_STORAGE,
    uids::ENHANCED_CT_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
    // MR.
    uids::MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_IMAGE_STORAGE,
    uids::ENHANCED_MR_COLOR_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    uids::MR_SPECTROSCOPY_STORAGE,
    // Ultrasound.
    uids::ULTRASOUND_IMAGE_STORAGE,
    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    uids::ENHANCED_US_VOLUME_STORAGE,
    // X-ray angiography and fluoroscopy.
    uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids::ENHANCED_XA_IMAGE_STORAGE,
    uids::X_RAY_RADIOFLUOROSCOPIC_IMAGE_STORAGE,
    uids::ENHANCED_XRF_IMAGE_STORAGE,
    uids::X_RAY3_D_ANGIOGRAPHIC_IMAGE_STORAGE,
    // Nuclear medicine and PET.
    uids::NUCLEAR_MEDICINE_IMAGE_STORAGE,
    uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
    uids::ENHANCED_PET_IMAGE_STORAGE,
    uids::LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE,
    // Secondary capture.
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_SINGLE_BIT_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
    // Radiotherapy.
    uids::RT_IMAGE_STORAGE,
    uids::RT_DOSE_STORAGE,
    uids::RT_STRUCTURE_SET_STORAGE,
    uids::RT_PLAN_STORAGE,
    uids::RT_BEAMS_TREATMENT_RECORD_STORAGE,
    uids::RT_ION_PLAN_STORAGE,
    uids::RT_ION_BEAMS_TREATMENT_RECORD_STORAGE,
    // Visible light.
    uids::VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    uids::OPHTHALMIC_PHOTOGRAPHY8_BIT_IMAGE_STORAGE,
    // Derived objects, structured reports, documents.
    uids::SEGMENTATION_STORAGE,
    uids::PARAMETRIC_MAP_STORAGE,
    uids::GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids::BASIC_TEXT_SR_STORAGE,
    uids::ENHANCED_SR_STORAGE,
    uids::COMPREHENSIVE_SR_STORAGE,
    uids::KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    uids::X_RAY_RADIATION_DOSE_SR_STORAGE,
    uids::ENCAPSULATED_PDF_STORAGE,
];

/// Whether `sop_class_uid` is one of [`STORAGE_SOP_CLASSES`].
#[must_use]
pub fn is_storage_sop_class(sop_class_uid: &str) -> bool {
    STORAGE_SOP_CLASSES.contains(&sop_class_uid)
}

/// Whether `transfer_syntax_uid` is one of [`TRANSFER_SYNTAXES`].
#[must_use]
pub fn is_accepted_transfer_syntax(transfer_syntax_uid: &str) -> bool {
    TRANSFER_SYNTAXES.contains(&transfer_syntax_uid)
}

/// Picks the transfer syntax for one proposed presentation context: the first of the
/// proposer's (already trimmed) syntaxes that is accepted. The proposer lists its
/// preference first, which is normally the syntax its objects are stored in, so the
/// object travels without conversion. Verification needs no data set encoding beyond
/// the command's, so any accepted syntax will do.
#[must_use]
pub fn choose_transfer_syntax<'a>(proposed: &[&'a str]) -> Option<&'a str> {
    proposed
        .iter()
        .copied()
        .find(|ts| is_accepted_transfer_syntax(ts))
}

/// Removes the padding a UID may carry on the wire (a trailing NUL, sometimes a space).
#[must_use]
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hold_the_issue_classes_and_no_duplicates() {
        for uid in [
            uids::CT_IMAGE_STORAGE,
            uids::MR_IMAGE_STORAGE,
            uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            uids::ULTRASOUND_IMAGE_STORAGE,
            uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            uids::ENHANCED_CT_IMAGE_STORAGE,
            uids::ENHANCED_MR_IMAGE_STORAGE,
            uids::RT_DOSE_STORAGE,
        ] {
            assert!(is_storage_sop_class(uid), "{uid}");
        }
        assert!(!is_storage_sop_class(VERIFICATION));
        let mut all: Vec<&str> = STORAGE_SOP_CLASSES.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), STORAGE_SOP_CLASSES.len());
        let mut ts: Vec<&str> = TRANSFER_SYNTAXES.to_vec();
        ts.sort_unstable();
        ts.dedup();
        assert_eq!(ts.len(), TRANSFER_SYNTAXES.len());
    }

    #[test]
    fn proposer_preference_wins_and_unknown_syntaxes_are_skipped() {
        let deflated = uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
        assert_eq!(
            choose_transfer_syntax(&[
                deflated,
                uids::JPEG_LOSSLESS_SV1,
                uids::IMPLICIT_VR_LITTLE_ENDIAN
            ]),
            Some(uids::JPEG_LOSSLESS_SV1)
        );
        assert_eq!(choose_transfer_syntax(&[deflated]), None);
        assert_eq!(choose_transfer_syntax(&[]), None);
        assert_eq!(trim_uid("1.2.840.10008.1.2\0"), "1.2.840.10008.1.2");
    }
}
