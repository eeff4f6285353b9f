//! The attribute actions of DICOM PS3.15 Annex E, Table E.1-1 (edition 2024b), and how
//! wardgate resolves them without knowing the IOD.
//!
//! Invariants:
//! - Every attribute of the table is listed here exactly once with its basic-profile
//!   action (a unit test checks for duplicates and that the table stays sorted after build).
//! - Combined actions are resolved without knowing the attribute's type in the object's
//!   IOD by taking the action that removes all of the original value *and* keeps the
//!   object valid whatever the type is ([`Action::resolve`]): `X/Z` becomes `Z` (an empty
//!   value is valid for type 2 and 3), anything with a `D` becomes `D` (a dummy is valid
//!   for types 1, 2 and 3), `X/Z/U*` becomes "keep the sequence, replace every UID inside"
//!   (so the references stay consistent with the referenced instances). None of these
//!   choices keeps any part of the original value, so none is weaker than `X`.
//! - Options only ever turn an action into `K` for the attributes the standard's option
//!   columns list; they never weaken anything else.
//!
//! Provenance: the (tag, action) pairs are the standard's Table E.1-1 (PS3.15 2024b). They
//! were transcribed with the help of the machine-readable list published by the
//! KitwareMedical `dicom-anonymizer` project, whose licence asks for this notice:
//!
//! > Copyright 2019, Kitware SAS
//! >
//! > Permission is hereby granted, free of charge, to any person obtaining a copy of this
//! > software and associated documentation files (the "Software"), to deal in the
//! > Software without restriction, including without limitation the rights to use, copy,
//! > modify, merge, publish, distribute, sublicense, and/or sell copies of the Software,
//! > and to permit persons to whom the Software is furnished to do so, subject to the
//! > following conditions: The above copyright notice and this permission notice shall be
//! > included in all copies or substantial portions of the Software. THE SOFTWARE IS
//! > PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
//! > LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
//! > NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
//! > CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
//! > OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR
//! > OTHER DEALINGS IN THE SOFTWARE.
//!
//! Before this table is relied on in a regulatory submission, check it entry by entry
//! against the PS3.15 text of the edition the device maker cites.

use dicom_core::Tag;
use dicom_dictionary_std::tags;

/// A basic-profile action code as written in Table E.1-1.
// The variant names are the standard's codes (`X/Z/D` is `XZD`).
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Replace with a non-empty dummy value fitting the VR.
    D,
    /// Replace with an empty value.
    Z,
    /// Remove.
    X,
    /// Keep (for a sequence: keep and apply the profile to its items).
    K,
    /// Replace with a UID that is consistent across the set.
    U,
    /// `Z/D`.
    ZD,
    /// `X/Z`.
    XZ,
    /// `X/D`.
    XD,
    /// `X/Z/D`.
    XZD,
    /// `X/Z/U*`: for a sequence, its UIDs are replaced; else emptied or removed.
    XZU,
}

/// What is done to one element, after resolving combinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Write a dummy value (for a sequence: one empty item).
    Dummy,
    /// Write an empty value (for a sequence: no items).
    Empty,
    /// Leave the element out.
    Remove,
    /// Keep the value (for a sequence: recurse into its items).
    Keep,
    /// Map every UID of the value (for a non-UI value: a dummy).
    MapUid,
}

impl Action {
    /// The action that removes all of the original value and keeps the object valid for
    /// any attribute type (see the module doc).
    pub(crate) fn resolve(self) -> Resolved {
        match self {
            Action::D | Action::ZD | Action::XD | Action::XZD => Resolved::Dummy,
            Action::Z | Action::XZ => Resolved::Empty,
            Action::X => Resolved::Remove,
            Action::K => Resolved::Keep,
            // U* on a sequence: keep it, every UID inside is mapped by the UI rules.
            Action::U => Resolved::MapUid,
            Action::XZU => Resolved::Keep,
        }
    }
}

use Action::{D, U, X, XD, XZ, XZD, XZU, Z, ZD};

/// Table E.1-1 (2024b), grouped by action; each group sorted by tag.
// Retired attributes stay in Table E.1-1: old objects still carry them.
#[allow(deprecated)]
static BASIC_PROFILE: &[(Tag, Action)] = &[
    // D
    (tags::CONTEXT_GROUP_VERSION, D),
    (tags::CONTEXT_GROUP_LOCAL_VERSION, D),
    (tags::CLINICAL_TRIAL_SPONSOR_NAME, D),
    (tags::CLINICAL_TRIAL_PROTOCOL_ID, D),
    (tags::CLINICAL_TRIAL_SUBJECT_ID, D),
    (tags::CLINICAL_TRIAL_SUBJECT_READING_ID, D),
    (tags::CLINICAL_TRIAL_PROTOCOL_ETHICS_COMMITTEE_NAME, D),
    (tags::ACQUISITION_FIELD_OF_VIEW_LABEL, D),
    (tags::FRAME_ACQUISITION_DATE_TIME, D),
    (tags::FRAME_REFERENCE_DATE_TIME, D),
    (tags::X_RAY_SOURCE_ID, D),
    (tags::SOURCE_START_DATE_TIME, D),
    (tags::SOURCE_END_DATE_TIME, D),
    (tags::X_RAY_DETECTOR_ID, D),
    (tags::FUNCTIONAL_SYNC_PULSE, D),
    (tags::DECAY_CORRECTION_DATE_TIME, D),
    (tags::EXCLUSION_START_DATE_TIME, D),
    (tags::FLOW_IDENTIFIER_SEQUENCE, D),
    (tags::FLOW_IDENTIFIER, D),
    (tags::SOURCE_IDENTIFIER, D),
    (tags::FRAME_ORIGIN_TIMESTAMP, D),
    (tags::IMPEDANCE_MEASUREMENT_DATE_TIME, D),
    (tags::CONTAINER_IDENTIFIER, D),
    (tags::SPECIMEN_IDENTIFIER, D),
    (tags::PERSON_IDENTIFICATION_CODE_SEQUENCE, D),
    (tags::VERIFYING_ORGANIZATION, D),
    (tags::VERIFICATION_DATE_TIME, D),
    (tags::VERIFYING_OBSERVER_SEQUENCE, D),
    (tags::VERIFYING_OBSERVER_NAME, D),
    (tags::DATE_TIME, D),
    (tags::DATE, D),
    (tags::TIME, D),
    (tags::PERSON_NAME, D),
    (tags::REFERENCED_DATE_TIME, D),
    (tags::CONTENT_SEQUENCE, D),
    (tags::ENCAPSULATED_DOCUMENT, D),
    (tags::ASSERTION_DATE_TIME, D),
    (tags::EFFECTIVE_DATE_TIME, D),
    (tags::INFORMATION_ISSUE_DATE_TIME, D),
    (tags::ANNOTATION_GROUP_UID, D),
    (tags::ANNOTATION_GROUP_LABEL, D),
    (tags::GRAPHIC_ANNOTATION_SEQUENCE, D),
    (tags::HANGING_PROTOCOL_CREATION_DATE_TIME, D),
    (tags::SELECTOR_AE_VALUE, D),
    (tags::SELECTOR_AS_VALUE, D),
    (tags::SELECTOR_DA_VALUE, D),
    (tags::SELECTOR_DT_VALUE, D),
    (tags::SELECTOR_OB_VALUE, D),
    (tags::SELECTOR_LO_VALUE, D),
    (tags::SELECTOR_LT_VALUE, D),
    (tags::SELECTOR_PN_VALUE, D),
    (tags::SELECTOR_TM_VALUE, D),
    (tags::SELECTOR_SH_VALUE, D),
    (tags::SELECTOR_UN_VALUE, D),
    (tags::SELECTOR_ST_VALUE, D),
    (tags::SELECTOR_UT_VALUE, D),
    (tags::SELECTOR_UR_VALUE, D),
    (tags::DIGITAL_SIGNATURE_DATE_TIME, D),
    (tags::CERTIFICATE_OF_SIGNER, D),
    (tags::ATTRIBUTE_MODIFICATION_DATE_TIME, D),
    (tags::MODIFYING_SYSTEM, D),
    (tags::REASON_FOR_THE_ATTRIBUTE_MODIFICATION, D),
    (tags::DESTINATION_AE, D),
    (tags::STRUCTURE_SET_LABEL, D),
    (tags::TREATMENT_CONTROL_POINT_DATE, D),
    (tags::TREATMENT_CONTROL_POINT_TIME, D),
    (tags::SAFE_POSITION_EXIT_DATE, D),
    (tags::SAFE_POSITION_EXIT_TIME, D),
    (tags::SAFE_POSITION_RETURN_DATE, D),
    (tags::SAFE_POSITION_RETURN_TIME, D),
    (tags::RT_PLAN_LABEL, D),
    (tags::SOURCE_STRENGTH_REFERENCE_DATE, D),
    (tags::SOURCE_STRENGTH_REFERENCE_TIME, D),
    (tags::TREATMENT_POSITION_GROUP_LABEL, D),
    (tags::RADIATION_DOSE_IDENTIFICATION_LABEL, D),
    (tags::RADIATION_DOSE_IN_VIVO_MEASUREMENT_LABEL, D),
    (tags::RT_TOLERANCE_SET_LABEL, D),
    (tags::RADIATION_GENERATION_MODE_LABEL, D),
    (tags::TREATMENT_TOLERANCE_VIOLATION_DESCRIPTION, D),
    (tags::TREATMENT_TOLERANCE_VIOLATION_DATE_TIME, D),
    (tags::RECORDED_RT_CONTROL_POINT_DATE_TIME, D),
    (tags::INTERLOCK_DATE_TIME, D),
    (tags::INTERLOCK_DESCRIPTION, D),
    (tags::OVERRIDE_DATE_TIME, D),
    (tags::INTERLOCK_ORIGIN_DESCRIPTION, D),
    (tags::BEAM_HOLD_TRANSITION_DATE_TIME, D),
    (tags::DEVICE_LABEL, D),
    (tags::USER_CONTENT_LABEL, D),
    (tags::USER_CONTENT_LONG_LABEL, D),
    (tags::ENTITY_LABEL, D),
    (tags::ENTITY_LONG_LABEL, D),
    (tags::RT_PRESCRIPTION_LABEL, D),
    // Z
    (tags::STUDY_DATE, Z),
    (tags::STUDY_TIME, Z),
    (tags::ACCESSION_NUMBER, Z),
    (tags::REFERRING_PHYSICIAN_NAME, Z),
    (tags::CONSULTING_PHYSICIAN_NAME, Z),
    (tags::PATIENT_NAME, Z),
    (tags::PATIENT_BIRTH_DATE, Z),
    (tags::PATIENT_SEX, Z),
    (tags::CLINICAL_TRIAL_PROTOCOL_NAME, Z),
    (tags::CLINICAL_TRIAL_SITE_ID, Z),
    (tags::CLINICAL_TRIAL_SITE_NAME, Z),
    (tags::CLINICAL_TRIAL_TIME_POINT_ID, Z),
    (tags::CLINICAL_TRIAL_COORDINATING_CENTER_NAME, Z),
    (tags::CALIBRATION_DATE_TIME, Z),
    (tags::STUDY_ID, Z),
    (tags::ISSUER_OF_THE_CONTAINER_IDENTIFIER_SEQUENCE, Z),
    (tags::ISSUER_OF_THE_SPECIMEN_IDENTIFIER_SEQUENCE, Z),
    (tags::SPECIMEN_PREPARATION_SEQUENCE, Z),
    (tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST, Z),
    (tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST, Z),
    (tags::PARTICIPATION_DATE_TIME, Z),
    (tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE, Z),
    (tags::SOURCE_OF_PREVIOUS_VALUES, Z),
    (tags::STRUCTURE_SET_DATE, Z),
    (tags::STRUCTURE_SET_TIME, Z),
    (tags::ROI_NAME, Z),
    (tags::ROI_INTERPRETER, Z),
    (tags::RT_ACCESSORY_HOLDER_SLOT_ID, Z),
    (tags::RT_ACCESSORY_DEVICE_SLOT_ID, Z),
    (tags::RADIATION_GENERATION_MODE_DESCRIPTION, Z),
    (tags::REVIEW_DATE, Z),
    (tags::REVIEW_TIME, Z),
    (tags::CONCEPTUAL_VOLUME_COMBINATION_DESCRIPTION, Z),
    (tags::CONCEPTUAL_VOLUME_DESCRIPTION, Z),
    (tags::DEVICE_ALTERNATE_IDENTIFIER, Z),
    (tags::MANUFACTURER_DEVICE_IDENTIFIER, Z),
    (tags::RT_PHYSICIAN_INTENT_NARRATIVE, Z),
    (tags::REASON_FOR_SUPERSEDING, Z),
    (tags::TREATMENT_TECHNIQUE_NOTES, Z),
    (tags::PRESCRIPTION_NOTES, Z),
    (tags::FRACTIONATION_NOTES, Z),
    (tags::PRESCRIPTION_NOTES_SEQUENCE, Z),
    // X
    (tags::AFFECTED_SOP_INSTANCE_UID, X),
    (tags::INSTANCE_COERCION_DATE_TIME, X),
    (tags::OVERLAY_DATE, X),
    (tags::CURVE_DATE, X),
    (tags::OVERLAY_TIME, X),
    (tags::CURVE_TIME, X),
    (tags::RETRIEVE_AE_TITLE, X),
    (tags::STATION_AE_TITLE, X),
    (tags::INSTITUTION_ADDRESS, X),
    (tags::REFERRING_PHYSICIAN_ADDRESS, X),
    (tags::REFERRING_PHYSICIAN_TELEPHONE_NUMBERS, X),
    (tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE, X),
    (tags::CONSULTING_PHYSICIAN_IDENTIFICATION_SEQUENCE, X),
    (tags::TIMEZONE_OFFSET_FROM_UTC, X),
    (tags::NETWORK_ID, X),
    (tags::STUDY_DESCRIPTION, X),
    (tags::SERIES_DESCRIPTION, X),
    (tags::INSTITUTIONAL_DEPARTMENT_NAME, X),
    (tags::INSTITUTIONAL_DEPARTMENT_TYPE_CODE_SEQUENCE, X),
    (tags::PHYSICIANS_OF_RECORD, X),
    (tags::PHYSICIANS_OF_RECORD_IDENTIFICATION_SEQUENCE, X),
    (tags::PERFORMING_PHYSICIAN_NAME, X),
    (tags::PERFORMING_PHYSICIAN_IDENTIFICATION_SEQUENCE, X),
    (tags::NAME_OF_PHYSICIANS_READING_STUDY, X),
    (tags::PHYSICIANS_READING_STUDY_IDENTIFICATION_SEQUENCE, X),
    (tags::ADMITTING_DIAGNOSES_DESCRIPTION, X),
    (tags::ADMITTING_DIAGNOSES_CODE_SEQUENCE, X),
    (tags::PYRAMID_DESCRIPTION, X),
    (tags::REFERENCED_PATIENT_SEQUENCE, X),
    (tags::DERIVATION_DESCRIPTION, X),
    (tags::IDENTIFYING_COMMENTS, X),
    (tags::ISSUER_OF_PATIENT_ID, X),
    (tags::PATIENT_BIRTH_TIME, X),
    (tags::PATIENT_INSURANCE_PLAN_CODE_SEQUENCE, X),
    (tags::PATIENT_PRIMARY_LANGUAGE_CODE_SEQUENCE, X),
    (tags::PATIENT_PRIMARY_LANGUAGE_MODIFIER_CODE_SEQUENCE, X),
    (tags::OTHER_PATIENT_I_DS, X),
    (tags::OTHER_PATIENT_NAMES, X),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, X),
    (tags::PATIENT_BIRTH_NAME, X),
    (tags::PATIENT_AGE, X),
    (tags::PATIENT_SIZE, X),
    (tags::PATIENT_WEIGHT, X),
    (tags::PATIENT_ADDRESS, X),
    (tags::INSURANCE_PLAN_IDENTIFICATION, X),
    (tags::PATIENT_MOTHER_BIRTH_NAME, X),
    (tags::MILITARY_RANK, X),
    (tags::BRANCH_OF_SERVICE, X),
    (tags::MEDICAL_RECORD_LOCATOR, X),
    (tags::REFERENCED_PATIENT_PHOTO_SEQUENCE, X),
    (tags::MEDICAL_ALERTS, X),
    (tags::ALLERGIES, X),
    (tags::COUNTRY_OF_RESIDENCE, X),
    (tags::REGION_OF_RESIDENCE, X),
    (tags::PATIENT_TELEPHONE_NUMBERS, X),
    (tags::PATIENT_TELECOM_INFORMATION, X),
    (tags::ETHNIC_GROUP, X),
    (tags::OCCUPATION, X),
    (tags::SMOKING_STATUS, X),
    (tags::ADDITIONAL_PATIENT_HISTORY, X),
    (tags::PREGNANCY_STATUS, X),
    (tags::LAST_MENSTRUAL_DATE, X),
    (tags::PATIENT_RELIGIOUS_PREFERENCE, X),
    (tags::RESPONSIBLE_PERSON, X),
    (tags::RESPONSIBLE_ORGANIZATION, X),
    (tags::PATIENT_COMMENTS, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_PROTOCOL_ID, X),
    (tags::OTHER_CLINICAL_TRIAL_PROTOCOL_I_DS_SEQUENCE, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_SITE_ID, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_SUBJECT_ID, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_SUBJECT_READING_ID, X),
    (tags::CLINICAL_TRIAL_TIME_POINT_DESCRIPTION, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_TIME_POINT_ID, X),
    (tags::CLINICAL_TRIAL_SERIES_ID, X),
    (tags::CLINICAL_TRIAL_SERIES_DESCRIPTION, X),
    (tags::ISSUER_OF_CLINICAL_TRIAL_SERIES_ID, X),
    (
        tags::CLINICAL_TRIAL_PROTOCOL_ETHICS_COMMITTEE_APPROVAL_NUMBER,
        X,
    ),
    (tags::ETHICS_COMMITTEE_APPROVAL_EFFECTIVENESS_START_DATE, X),
    (tags::ETHICS_COMMITTEE_APPROVAL_EFFECTIVENESS_END_DATE, X),
    (tags::CALIBRATION_TIME, X),
    (tags::CALIBRATION_DATE, X),
    (tags::MAKER_NOTE, X),
    (tags::DEVICE_SETTING_DESCRIPTION, X),
    (tags::CAMERA_OWNER_NAME, X),
    (tags::LENS_SPECIFICATION, X),
    (tags::LENS_MAKE, X),
    (tags::LENS_MODEL, X),
    (tags::LENS_SERIAL_NUMBER, X),
    (tags::GPS_VERSION_ID, X),
    (tags::GPS_LATITUDE_REF, X),
    (tags::GPS_LATITUDE, X),
    (tags::GPS_LONGITUDE_REF, X),
    (tags::GPS_LONGITUDE, X),
    (tags::GPS_ALTITUDE_REF, X),
    (tags::GPS_ALTITUDE, X),
    (tags::GPS_TIME_STAMP, X),
    (tags::GPS_SATELLITES, X),
    (tags::GPS_STATUS, X),
    (tags::GPS_MEASURE_MODE, X),
    (tags::GPSDOP, X),
    (tags::GPS_SPEED_REF, X),
    (tags::GPS_SPEED, X),
    (tags::GPS_TRACK_REF, X),
    (tags::GPS_TRACK, X),
    (tags::GPS_IMG_DIRECTION_REF, X),
    (tags::GPS_IMG_DIRECTION, X),
    (tags::GPS_MAP_DATUM, X),
    (tags::GPS_DEST_LATITUDE_REF, X),
    (tags::GPS_DEST_LATITUDE, X),
    (tags::GPS_DEST_LONGITUDE_REF, X),
    (tags::GPS_DEST_LONGITUDE, X),
    (tags::GPS_DEST_BEARING_REF, X),
    (tags::GPS_DEST_BEARING, X),
    (tags::GPS_DEST_DISTANCE_REF, X),
    (tags::GPS_DEST_DISTANCE, X),
    (tags::GPS_PROCESSING_METHOD, X),
    (tags::GPS_AREA_INFORMATION, X),
    (tags::GPS_DATE_STAMP, X),
    (tags::GPS_DIFFERENTIAL, X),
    (tags::INTERVENTION_DRUG_STOP_TIME, X),
    (tags::INTERVENTION_DRUG_START_TIME, X),
    (tags::PLATE_ID, X),
    (tags::GENERATOR_ID, X),
    (tags::CASSETTE_ID, X),
    (tags::GANTRY_ID, X),
    (tags::UNIQUE_DEVICE_IDENTIFIER, X),
    (tags::UDI_SEQUENCE, X),
    (tags::DATE_OF_SECONDARY_CAPTURE, X),
    (tags::TIME_OF_SECONDARY_CAPTURE, X),
    (tags::CONTRAST_BOLUS_START_TIME, X),
    (tags::CONTRAST_BOLUS_STOP_TIME, X),
    (tags::RADIOPHARMACEUTICAL_START_TIME, X),
    (tags::RADIOPHARMACEUTICAL_STOP_TIME, X),
    (tags::RADIOPHARMACEUTICAL_START_DATE_TIME, X),
    (tags::RADIOPHARMACEUTICAL_STOP_DATE_TIME, X),
    (tags::DATE_OF_LAST_CALIBRATION, X),
    (tags::TIME_OF_LAST_CALIBRATION, X),
    (tags::DATE_TIME_OF_LAST_CALIBRATION, X),
    (tags::DATE_OF_MANUFACTURE, X),
    (tags::DATE_OF_INSTALLATION, X),
    (tags::ACQUISITION_COMMENTS, X),
    (tags::TRANSDUCER_IDENTIFICATION_SEQUENCE, X),
    (
        tags::RESPIRATORY_MOTION_COMPENSATION_TECHNIQUE_DESCRIPTION,
        X,
    ),
    (tags::X_RAY_DETECTOR_LABEL, X),
    (tags::MULTIENERGY_ACQUISITION_DESCRIPTION, X),
    (tags::DECOMPOSITION_DESCRIPTION, X),
    (tags::ACQUISITION_PROTOCOL_DESCRIPTION, X),
    (tags::REQUESTED_SERIES_DESCRIPTION, X),
    (tags::CONTRIBUTION_DATE_TIME, X),
    (tags::CONTRIBUTION_DESCRIPTION, X),
    (tags::PYRAMID_LABEL, X),
    (tags::MODIFYING_DEVICE_ID, X),
    (tags::MODIFIED_IMAGE_DATE, X),
    (tags::MODIFIED_IMAGE_TIME, X),
    (tags::MODIFIED_IMAGE_DESCRIPTION, X),
    (tags::IMAGE_COMMENTS, X),
    (tags::FRAME_COMMENTS, X),
    (tags::IMAGE_PRESENTATION_COMMENTS, X),
    (tags::STUDY_ID_ISSUER, X),
    (tags::STUDY_VERIFIED_DATE, X),
    (tags::STUDY_VERIFIED_TIME, X),
    (tags::STUDY_READ_DATE, X),
    (tags::STUDY_READ_TIME, X),
    (tags::SCHEDULED_STUDY_START_DATE, X),
    (tags::SCHEDULED_STUDY_START_TIME, X),
    (tags::SCHEDULED_STUDY_STOP_DATE, X),
    (tags::SCHEDULED_STUDY_STOP_TIME, X),
    (tags::SCHEDULED_STUDY_LOCATION, X),
    (tags::SCHEDULED_STUDY_LOCATION_AE_TITLE, X),
    (tags::REASON_FOR_STUDY, X),
    (tags::REQUESTING_PHYSICIAN, X),
    (tags::REQUESTING_SERVICE, X),
    (tags::STUDY_ARRIVAL_DATE, X),
    (tags::STUDY_ARRIVAL_TIME, X),
    (tags::STUDY_COMPLETION_DATE, X),
    (tags::STUDY_COMPLETION_TIME, X),
    (tags::REASON_FOR_VISIT, X),
    (tags::REASON_FOR_VISIT_CODE_SEQUENCE, X),
    (tags::REQUESTED_CONTRAST_AGENT, X),
    (tags::STUDY_COMMENTS, X),
    (tags::REFERENCED_PATIENT_ALIAS_SEQUENCE, X),
    (tags::ADMISSION_ID, X),
    (tags::ISSUER_OF_ADMISSION_ID, X),
    (tags::ISSUER_OF_ADMISSION_ID_SEQUENCE, X),
    (tags::SCHEDULED_ADMISSION_DATE, X),
    (tags::SCHEDULED_ADMISSION_TIME, X),
    (tags::SCHEDULED_DISCHARGE_DATE, X),
    (tags::SCHEDULED_DISCHARGE_TIME, X),
    (tags::SCHEDULED_PATIENT_INSTITUTION_RESIDENCE, X),
    (tags::ADMITTING_DATE, X),
    (tags::ADMITTING_TIME, X),
    (tags::DISCHARGE_DATE, X),
    (tags::DISCHARGE_TIME, X),
    (tags::DISCHARGE_DIAGNOSIS_DESCRIPTION, X),
    (tags::SPECIAL_NEEDS, X),
    (tags::SERVICE_EPISODE_ID, X),
    (tags::ISSUER_OF_SERVICE_EPISODE_ID, X),
    (tags::SERVICE_EPISODE_DESCRIPTION, X),
    (tags::ISSUER_OF_SERVICE_EPISODE_ID_SEQUENCE, X),
    (tags::CURRENT_PATIENT_LOCATION, X),
    (tags::PATIENT_INSTITUTION_RESIDENCE, X),
    (tags::PATIENT_STATE, X),
    (tags::VISIT_COMMENTS, X),
    (tags::WAVEFORM_FILTER_DESCRIPTION, X),
    (tags::FILTER_LOOKUP_TABLE_DESCRIPTION, X),
    (tags::SCHEDULED_STATION_AE_TITLE, X),
    (tags::SCHEDULED_PROCEDURE_STEP_START_DATE, X),
    (tags::SCHEDULED_PROCEDURE_STEP_START_TIME, X),
    (tags::SCHEDULED_PROCEDURE_STEP_END_DATE, X),
    (tags::SCHEDULED_PROCEDURE_STEP_END_TIME, X),
    (tags::SCHEDULED_PERFORMING_PHYSICIAN_NAME, X),
    (tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION, X),
    (tags::SCHEDULED_PROCEDURE_STEP_ID, X),
    (
        tags::SCHEDULED_PERFORMING_PHYSICIAN_IDENTIFICATION_SEQUENCE,
        X,
    ),
    (tags::SCHEDULED_STATION_NAME, X),
    (tags::SCHEDULED_PROCEDURE_STEP_LOCATION, X),
    (tags::PRE_MEDICATION, X),
    (tags::PERFORMED_STATION_AE_TITLE, X),
    (tags::PERFORMED_STATION_NAME, X),
    (tags::PERFORMED_LOCATION, X),
    (tags::PERFORMED_PROCEDURE_STEP_START_DATE, X),
    (tags::PERFORMED_PROCEDURE_STEP_START_TIME, X),
    (tags::PERFORMED_PROCEDURE_STEP_END_DATE, X),
    (tags::PERFORMED_PROCEDURE_STEP_END_TIME, X),
    (tags::PERFORMED_PROCEDURE_STEP_ID, X),
    (tags::PERFORMED_PROCEDURE_STEP_DESCRIPTION, X),
    (tags::REQUEST_ATTRIBUTES_SEQUENCE, X),
    (tags::COMMENTS_ON_THE_PERFORMED_PROCEDURE_STEP, X),
    (tags::COMMENTS_ON_RADIATION_DOSE, X),
    (tags::SPECIMEN_ACCESSION_NUMBER, X),
    (tags::CONTAINER_DESCRIPTION, X),
    (tags::SPECIMEN_SHORT_DESCRIPTION, X),
    (tags::SPECIMEN_DETAILED_DESCRIPTION, X),
    (tags::SLIDE_IDENTIFIER, X),
    (tags::REQUESTED_PROCEDURE_ID, X),
    (tags::REASON_FOR_THE_REQUESTED_PROCEDURE, X),
    (tags::PATIENT_TRANSPORT_ARRANGEMENTS, X),
    (tags::REQUESTED_PROCEDURE_LOCATION, X),
    (tags::REASON_FOR_REQUESTED_PROCEDURE_CODE_SEQUENCE, X),
    (tags::NAMES_OF_INTENDED_RECIPIENTS_OF_RESULTS, X),
    (
        tags::INTENDED_RECIPIENTS_OF_RESULTS_IDENTIFICATION_SEQUENCE,
        X,
    ),
    (tags::PERSON_ADDRESS, X),
    (tags::PERSON_TELEPHONE_NUMBERS, X),
    (tags::PERSON_TELECOM_INFORMATION, X),
    (tags::REQUESTED_PROCEDURE_COMMENTS, X),
    (tags::REASON_FOR_THE_IMAGING_SERVICE_REQUEST, X),
    (tags::ISSUE_DATE_OF_IMAGING_SERVICE_REQUEST, X),
    (tags::ISSUE_TIME_OF_IMAGING_SERVICE_REQUEST, X),
    (tags::ORDER_ENTERED_BY, X),
    (tags::ORDER_ENTERER_LOCATION, X),
    (tags::ORDER_CALLBACK_PHONE_NUMBER, X),
    (tags::ORDER_CALLBACK_TELECOM_INFORMATION, X),
    (tags::IMAGING_SERVICE_REQUEST_COMMENTS, X),
    (
        tags::CONFIDENTIALITY_CONSTRAINT_ON_PATIENT_DATA_DESCRIPTION,
        X,
    ),
    (tags::SCHEDULED_PROCEDURE_STEP_START_DATE_TIME, X),
    (tags::SCHEDULED_PROCEDURE_STEP_EXPIRATION_DATE_TIME, X),
    (tags::SCHEDULED_PROCEDURE_STEP_MODIFICATION_DATE_TIME, X),
    (tags::EXPECTED_COMPLETION_DATE_TIME, X),
    (tags::SCHEDULED_STATION_NAME_CODE_SEQUENCE, X),
    (tags::SCHEDULED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE, X),
    (tags::PERFORMED_STATION_NAME_CODE_SEQUENCE, X),
    (tags::PERFORMED_STATION_GEOGRAPHIC_LOCATION_CODE_SEQUENCE, X),
    (tags::SCHEDULED_HUMAN_PERFORMERS_SEQUENCE, X),
    (tags::ACTUAL_HUMAN_PERFORMERS_SEQUENCE, X),
    (tags::HUMAN_PERFORMER_ORGANIZATION, X),
    (tags::HUMAN_PERFORMER_NAME, X),
    (tags::PERFORMED_PROCEDURE_STEP_START_DATE_TIME, X),
    (tags::PERFORMED_PROCEDURE_STEP_END_DATE_TIME, X),
    (tags::PROCEDURE_STEP_CANCELLATION_DATE_TIME, X),
    (tags::FINDINGS_GROUP_RECORDING_DATE_TRIAL, X),
    (tags::FINDINGS_GROUP_RECORDING_TIME_TRIAL, X),
    (tags::OBSERVATION_START_DATE_TIME, X),
    (tags::AUTHOR_OBSERVER_SEQUENCE, X),
    (tags::PARTICIPANT_SEQUENCE, X),
    (tags::CUSTODIAL_ORGANIZATION_SEQUENCE, X),
    (tags::DATE_OF_DOCUMENT_OR_VERBAL_TRANSACTION_TRIAL, X),
    (
        tags::TIME_OF_DOCUMENT_CREATION_OR_VERBAL_TRANSACTION_TRIAL,
        X,
    ),
    (tags::OBSERVATION_DATE_TRIAL, X),
    (tags::OBSERVATION_TIME_TRIAL, X),
    (tags::CURRENT_OBSERVER_TRIAL, X),
    (tags::VERBAL_SOURCE_TRIAL, X),
    (tags::ADDRESS_TRIAL, X),
    (tags::TELEPHONE_NUMBER_TRIAL, X),
    (tags::VERBAL_SOURCE_IDENTIFIER_CODE_SEQUENCE_TRIAL, X),
    (tags::TEMPLATE_VERSION, X),
    (tags::TEMPLATE_LOCAL_VERSION, X),
    (tags::HL7_DOCUMENT_EFFECTIVE_TIME, X),
    (tags::APPROVAL_STATUS_DATE_TIME, X),
    (tags::PRODUCT_EXPIRATION_DATE_TIME, X),
    (tags::SUBSTANCE_ADMINISTRATION_DATE_TIME, X),
    (tags::ASSERTION_EXPIRATION_DATE_TIME, X),
    (tags::CONTAINER_COMPONENT_ID, X),
    (tags::DEVICE_DESCRIPTION, X),
    (tags::LONG_DEVICE_DESCRIPTION, X),
    (tags::ANNOTATION_GROUP_DESCRIPTION, X),
    (tags::PRESENTATION_CREATION_DATE, X),
    (tags::PRESENTATION_CREATION_TIME, X),
    (tags::CONTENT_CREATOR_IDENTIFICATION_CODE_SEQUENCE, X),
    (tags::RECEIVING_AE, X),
    (tags::REQUESTING_AE, X),
    (tags::ICON_IMAGE_SEQUENCE, X),
    (tags::TOPIC_TITLE, X),
    (tags::TOPIC_SUBJECT, X),
    (tags::TOPIC_AUTHOR, X),
    (tags::TOPIC_KEYWORDS, X),
    (tags::SOP_AUTHORIZATION_DATE_TIME, X),
    (tags::CERTIFIED_TIMESTAMP, X),
    (tags::REFERENCED_DIGITAL_SIGNATURE_SEQUENCE, X),
    (tags::REFERENCED_SOP_INSTANCE_MAC_SEQUENCE, X),
    (tags::MAC, X),
    (tags::MODIFIED_ATTRIBUTES_SEQUENCE, X),
    (tags::NONCONFORMING_MODIFIED_ATTRIBUTES_SEQUENCE, X),
    (tags::NONCONFORMING_DATA_ELEMENT_VALUE, X),
    (tags::ORIGINAL_ATTRIBUTES_SEQUENCE, X),
    (tags::INSTANCE_ORIGIN_STATUS, X),
    (tags::TEXT_STRING, X),
    (tags::CREATION_DATE, X),
    (tags::CREATION_TIME, X),
    (tags::ORIGINATOR, X),
    (tags::POSITION_ACQUISITION_TEMPLATE_NAME, X),
    (tags::POSITION_ACQUISITION_TEMPLATE_DESCRIPTION, X),
    (tags::STRUCTURE_SET_NAME, X),
    (tags::STRUCTURE_SET_DESCRIPTION, X),
    (tags::ROI_DESCRIPTION, X),
    (tags::ROI_DATE_TIME, X),
    (tags::ROI_OBSERVATION_DATE_TIME, X),
    (tags::ROI_GENERATION_DESCRIPTION, X),
    (tags::ROI_CREATOR_SEQUENCE, X),
    (tags::ROI_INTERPRETER_SEQUENCE, X),
    (tags::ROI_OBSERVATION_LABEL, X),
    (tags::ROI_OBSERVATION_DESCRIPTION, X),
    (tags::RT_PLAN_NAME, X),
    (tags::RT_PLAN_DESCRIPTION, X),
    (tags::TREATMENT_SITES, X),
    (tags::PRESCRIPTION_DESCRIPTION, X),
    (tags::DOSE_REFERENCE_DESCRIPTION, X),
    (tags::FRACTION_GROUP_DESCRIPTION, X),
    (tags::BEAM_DESCRIPTION, X),
    (tags::BOLUS_DESCRIPTION, X),
    (tags::FIXATION_DEVICE_DESCRIPTION, X),
    (tags::SHIELDING_DEVICE_DESCRIPTION, X),
    (tags::SETUP_TECHNIQUE_DESCRIPTION, X),
    (tags::SOURCE_MANUFACTURER, X),
    (tags::COMPENSATOR_DESCRIPTION, X),
    (tags::EQUIPMENT_FRAME_OF_REFERENCE_DESCRIPTION, X),
    (
        tags::PATIENT_TREATMENT_PREPARATION_PROCEDURE_PARAMETER_DESCRIPTION,
        X,
    ),
    (tags::PATIENT_TREATMENT_PREPARATION_METHOD_DESCRIPTION, X),
    (tags::PATIENT_SETUP_PHOTO_DESCRIPTION, X),
    (tags::DISPLACEMENT_REFERENCE_LABEL, X),
    (tags::REASON_FOR_OMISSION_DESCRIPTION, X),
    (tags::ENTITY_NAME, X),
    (tags::ENTITY_DESCRIPTION, X),
    (tags::PRIOR_TREATMENT_DOSE_DESCRIPTION, X),
    (tags::INTENDED_FRACTION_START_TIME, X),
    (tags::ARBITRARY, X),
    (tags::TEXT_COMMENTS, X),
    (tags::RESULTS_ID, X),
    (tags::RESULTS_ID_ISSUER, X),
    (tags::INTERPRETATION_RECORDED_DATE, X),
    (tags::INTERPRETATION_RECORDED_TIME, X),
    (tags::INTERPRETATION_RECORDER, X),
    (tags::INTERPRETATION_TRANSCRIPTION_DATE, X),
    (tags::INTERPRETATION_TRANSCRIPTION_TIME, X),
    (tags::INTERPRETATION_TRANSCRIBER, X),
    (tags::INTERPRETATION_TEXT, X),
    (tags::INTERPRETATION_AUTHOR, X),
    (tags::INTERPRETATION_APPROVER_SEQUENCE, X),
    (tags::INTERPRETATION_APPROVAL_DATE, X),
    (tags::INTERPRETATION_APPROVAL_TIME, X),
    (tags::PHYSICIAN_APPROVING_INTERPRETATION, X),
    (tags::INTERPRETATION_DIAGNOSIS_DESCRIPTION, X),
    (tags::RESULTS_DISTRIBUTION_LIST_SEQUENCE, X),
    (tags::DISTRIBUTION_NAME, X),
    (tags::DISTRIBUTION_ADDRESS, X),
    (tags::INTERPRETATION_ID, X),
    (tags::INTERPRETATION_ID_ISSUER, X),
    (tags::IMPRESSIONS, X),
    (tags::RESULTS_COMMENTS, X),
    (tags::DIGITAL_SIGNATURES_SEQUENCE, X),
    (tags::DATA_SET_TRAILING_PADDING, X),
    // U
    (tags::REQUESTED_SOP_INSTANCE_UID, U),
    (tags::MEDIA_STORAGE_SOP_INSTANCE_UID, U),
    (tags::REFERENCED_SOP_INSTANCE_UID_IN_FILE, U),
    (tags::INSTANCE_CREATOR_UID, U),
    (tags::ACQUISITION_UID, U),
    (tags::SOP_INSTANCE_UID, U),
    (tags::PYRAMID_UID, U),
    (tags::FAILED_SOP_INSTANCE_UID_LIST, U),
    (tags::REFERENCED_SOP_INSTANCE_UID, U),
    (tags::TRANSACTION_UID, U),
    (tags::IRRADIATION_EVENT_UID, U),
    (tags::DEVICE_UID, U),
    (tags::MANUFACTURER_DEVICE_CLASS_UID, U),
    (tags::TARGET_UID, U),
    (tags::STUDY_INSTANCE_UID, U),
    (tags::SERIES_INSTANCE_UID, U),
    (tags::FRAME_OF_REFERENCE_UID, U),
    (tags::SYNCHRONIZATION_FRAME_OF_REFERENCE_UID, U),
    (tags::CONCATENATION_UID, U),
    (tags::DIMENSION_ORGANIZATION_UID, U),
    (tags::PALETTE_COLOR_LOOKUP_TABLE_UID, U),
    (tags::LARGE_PALETTE_COLOR_LOOKUP_TABLE_UID, U),
    (tags::MULTIPLEX_GROUP_UID, U),
    (tags::SPECIMEN_UID, U),
    (
        tags::REFERENCED_GENERAL_PURPOSE_SCHEDULED_PROCEDURE_STEP_TRANSACTION_UID,
        U,
    ),
    (tags::UID, U),
    (tags::OBSERVATION_UID, U),
    (tags::REFERENCED_OBSERVATION_UID_TRIAL, U),
    (tags::OBSERVATION_SUBJECT_UID_TRIAL, U),
    (tags::TEMPLATE_EXTENSION_ORGANIZATION_UID, U),
    (tags::TEMPLATE_EXTENSION_CREATOR_UID, U),
    (tags::TRACKING_UID, U),
    (tags::SOURCE_FRAME_OF_REFERENCE_UID, U),
    (tags::FIDUCIAL_UID, U),
    (tags::PRESENTATION_DISPLAY_COLLECTION_UID, U),
    (tags::PRESENTATION_SEQUENCE_COLLECTION_UID, U),
    (tags::STORAGE_MEDIA_FILE_SET_UID, U),
    (tags::DIGITAL_SIGNATURE_UID, U),
    (tags::REFERENCED_FRAME_OF_REFERENCE_UID, U),
    (tags::RELATED_FRAME_OF_REFERENCE_UID, U),
    (tags::DOSE_REFERENCE_UID, U),
    (tags::REFERENCED_DOSE_REFERENCE_UID, U),
    (tags::TREATMENT_POSITION_GROUP_UID, U),
    (tags::PATIENT_SETUP_UID, U),
    (tags::TREATMENT_SESSION_UID, U),
    (tags::REFERENCED_TREATMENT_POSITION_GROUP_UID, U),
    (tags::CONCEPTUAL_VOLUME_UID, U),
    (tags::REFERENCED_CONCEPTUAL_VOLUME_UID, U),
    (tags::CONSTITUENT_CONCEPTUAL_VOLUME_UID, U),
    (tags::SOURCE_CONCEPTUAL_VOLUME_UID, U),
    (tags::REFERENCED_FIDUCIALS_UID, U),
    (tags::RT_TREATMENT_PHASE_UID, U),
    (tags::DOSIMETRIC_OBJECTIVE_UID, U),
    (tags::REFERENCED_DOSIMETRIC_OBJECTIVE_UID, U),
    // ZD
    (tags::CONTENT_DATE, ZD),
    (tags::CONTENT_TIME, ZD),
    (tags::PATIENT_ID, ZD),
    (tags::CONTRAST_BOLUS_AGENT, ZD),
    (tags::INSTRUCTION_PERFORMED_DATE_TIME, ZD),
    (tags::CONTENT_CREATOR_NAME, ZD),
    // XZ
    (tags::ACQUISITION_DATE, XZ),
    (tags::ACQUISITION_TIME, XZ),
    (tags::REFERENCED_STUDY_SEQUENCE, XZ),
    (tags::PATIENT_SEX_NEUTERED, XZ),
    (tags::REQUESTED_PROCEDURE_DESCRIPTION, XZ),
    (tags::ACQUISITION_CONTEXT_SEQUENCE, XZ),
    (tags::LABEL_TEXT, XZ),
    (tags::BARCODE_VALUE, XZ),
    (tags::SOURCE_SERIAL_NUMBER, XZ),
    (tags::TREATMENT_MACHINE_NAME, XZ),
    (tags::REVIEWER_NAME, XZ),
    // XD
    (tags::INSTANCE_CREATION_DATE, XD),
    (tags::SERIES_DATE, XD),
    (tags::SERIES_TIME, XD),
    (tags::OPERATOR_IDENTIFICATION_SEQUENCE, XD),
    (tags::PROTOCOL_NAME, XD),
    (tags::ACQUISITION_DEVICE_PROCESSING_DESCRIPTION, XD),
    (tags::DETECTOR_ID, XD),
    (tags::DATE_OF_LAST_DETECTOR_CALIBRATION, XD),
    (tags::TIME_OF_LAST_DETECTOR_CALIBRATION, XD),
    (tags::START_ACQUISITION_DATE_TIME, XD),
    (tags::END_ACQUISITION_DATE_TIME, XD),
    (tags::OBSERVATION_DATE_TIME, XD),
    (tags::FIRST_TREATMENT_DATE, XD),
    (tags::MOST_RECENT_TREATMENT_DATE, XD),
    (tags::TREATMENT_DATE, XD),
    (tags::TREATMENT_TIME, XD),
    (tags::RT_PLAN_DATE, XD),
    (tags::RT_PLAN_TIME, XD),
    (tags::INTENDED_PHASE_START_DATE, XD),
    (tags::INTENDED_PHASE_END_DATE, XD),
    (tags::RT_TREATMENT_APPROACH_LABEL, XD),
    (tags::TREATMENT_SITE, XD),
    // XZD
    (tags::INSTANCE_CREATION_TIME, XZD),
    (tags::ACQUISITION_DATE_TIME, XZD),
    (tags::INSTITUTION_NAME, XZD),
    (tags::INSTITUTION_CODE_SEQUENCE, XZD),
    (tags::STATION_NAME, XZD),
    (tags::OPERATORS_NAME, XZD),
    (tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, XZD),
    (tags::DEVICE_SERIAL_NUMBER, XZD),
    // XZU
    (tags::REFERENCED_IMAGE_SEQUENCE, XZU),
    (tags::SOURCE_IMAGE_SEQUENCE, XZU),
];

/// Attributes wardgate removes beyond the table: the issuer qualifiers (the issuing
/// hospital's universal entity id) are consumed for the pseudonym and then dropped with
/// the rest of the issuer attributes.
static WARDGATE_ADDITIONS: &[(Tag, Action)] =
    &[(tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, X)];

/// Attributes kept by the Retain Device Identity Option (113109): the `K` entries of the
/// standard's "Rtn. Dev. Id. Opt." column.
// Retired attributes stay in Table E.1-1: old objects still carry them.
#[allow(deprecated)]
static RETAIN_DEVICE_IDENTITY: &[Tag] = &[
    tags::STATION_AE_TITLE,
    tags::STATION_NAME,
    tags::DEVICE_SERIAL_NUMBER,
    tags::DEVICE_UID,
    tags::PLATE_ID,
    tags::GENERATOR_ID,
    tags::CASSETTE_ID,
    tags::GANTRY_ID,
    tags::UNIQUE_DEVICE_IDENTIFIER,
    tags::UDI_SEQUENCE,
    tags::MANUFACTURER_DEVICE_CLASS_UID,
    tags::TRANSDUCER_IDENTIFICATION_SEQUENCE,
    tags::DETECTOR_ID,
    tags::X_RAY_SOURCE_ID,
    tags::X_RAY_DETECTOR_ID,
    tags::X_RAY_DETECTOR_LABEL,
    tags::MODIFYING_DEVICE_ID,
    tags::SCHEDULED_STATION_AE_TITLE,
    tags::SCHEDULED_STATION_NAME,
    tags::SCHEDULED_STATION_NAME_CODE_SEQUENCE,
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PERFORMED_STATION_NAME,
    tags::PERFORMED_STATION_NAME_CODE_SEQUENCE,
    tags::DEVICE_DESCRIPTION,
    tags::LONG_DEVICE_DESCRIPTION,
    tags::LENS_SERIAL_NUMBER,
    tags::TREATMENT_MACHINE_NAME,
    tags::SOURCE_SERIAL_NUMBER,
    tags::DEVICE_ALTERNATE_IDENTIFIER,
    tags::MANUFACTURER_DEVICE_IDENTIFIER,
    tags::DEVICE_LABEL,
];

/// Attributes kept by the Retain Patient Characteristics Option (113108): the `K` entries
/// of the standard's "Rtn. Pat. Chars. Opt." column. Its `C` (clean) entries — allergies,
/// medical alerts, patient state, special needs, additional history, occupation — are
/// free text and stay removed: wardgate does not implement cleaning.
// Retired attributes stay in Table E.1-1: old objects still carry them.
#[allow(deprecated)]
static RETAIN_PATIENT_CHARACTERISTICS: &[Tag] = &[
    tags::PATIENT_SEX,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::ETHNIC_GROUP,
    tags::SMOKING_STATUS,
    tags::PREGNANCY_STATUS,
    tags::LAST_MENSTRUAL_DATE,
    tags::PATIENT_SEX_NEUTERED,
];

/// UI attributes that name a *kind* of thing (a SOP class, a transfer syntax, a coding
/// scheme, a template), not an instance. They are not in Table E.1-1 and are kept; every
/// other UI attribute the table does not list is mapped like a `U` attribute (a
/// wardgate rule: an unknown instance UID must not survive because the table is old).
static DEFINITION_UIDS: &[Tag] = &[
    tags::AFFECTED_SOP_CLASS_UID,
    tags::REQUESTED_SOP_CLASS_UID,
    tags::MEDIA_STORAGE_SOP_CLASS_UID,
    tags::TRANSFER_SYNTAX_UID,
    tags::IMPLEMENTATION_CLASS_UID,
    tags::PRIVATE_INFORMATION_CREATOR_UID,
    tags::REFERENCED_SOP_CLASS_UID_IN_FILE,
    tags::REFERENCED_TRANSFER_SYNTAX_UID_IN_FILE,
    tags::REFERENCED_RELATED_GENERAL_SOP_CLASS_UID_IN_FILE,
    tags::SOP_CLASS_UID,
    tags::RELATED_GENERAL_SOP_CLASS_UID,
    tags::ORIGINAL_SPECIALIZED_SOP_CLASS_UID,
    tags::CODING_SCHEME_UID,
    tags::CONTEXT_GROUP_EXTENSION_CREATOR_UID,
    tags::CONTEXT_UID,
    tags::MAPPING_RESOURCE_UID,
    tags::REFERENCED_SOP_CLASS_UID,
    tags::SOP_CLASSES_IN_STUDY,
];

/// The action table with the site's options applied, built once per rule set.
#[derive(Debug)]
pub(crate) struct Profile {
    sorted: Vec<(Tag, Action)>,
}

impl Profile {
    /// The basic profile plus wardgate's additions, with the options' `K` overrides.
    pub(crate) fn new(
        retain_device_identity: bool,
        retain_patient_characteristics: bool,
    ) -> Profile {
        let mut sorted: Vec<(Tag, Action)> = BASIC_PROFILE
            .iter()
            .chain(WARDGATE_ADDITIONS)
            .copied()
            .collect();
        sorted.sort_by_key(|(tag, _)| *tag);
        let mut keep = |list: &[Tag]| {
            for tag in list {
                if let Ok(i) = sorted.binary_search_by_key(tag, |(t, _)| *t) {
                    sorted[i].1 = Action::K;
                }
            }
        };
        if retain_device_identity {
            keep(RETAIN_DEVICE_IDENTITY);
        }
        if retain_patient_characteristics {
            keep(RETAIN_PATIENT_CHARACTERISTICS);
        }
        Profile { sorted }
    }

    /// The action for a standard (even-group) attribute; `None` if the table does not list it.
    pub(crate) fn action(&self, tag: Tag) -> Option<Action> {
        let Tag(group, element) = tag;
        // Repeating groups: curve data (50xx,xxxx), overlay data and comments (60xx,3000/4000).
        if group & 0xFF00 == 0x5000 {
            return Some(Action::X);
        }
        if group & 0xFF00 == 0x6000 && (element == 0x3000 || element == 0x4000) {
            return Some(Action::X);
        }
        self.sorted
            .binary_search_by_key(&tag, |(t, _)| *t)
            .ok()
            .map(|i| self.sorted[i].1)
    }

    /// Whether a UI attribute the table does not list names a kind of thing (kept).
    pub(crate) fn is_definition_uid(tag: Tag) -> bool {
        DEFINITION_UIDS.contains(&tag)
    }
}

/// Every attribute of Table E.1-1 that wardgate handles, with its action code as written in
/// the standard (`"D"`, `"X/Z"`, ...). Tests generate planted identifiers from this list so
/// coverage is complete by construction.
#[must_use]
pub fn table_e1_1() -> Vec<((u16, u16), &'static str)> {
    BASIC_PROFILE
        .iter()
        .map(|(Tag(g, e), a)| {
            let code = match a {
                Action::D => "D",
                Action::Z => "Z",
                Action::X => "X",
                Action::K => "K",
                Action::U => "U",
                Action::ZD => "Z/D",
                Action::XZ => "X/Z",
                Action::XD => "X/D",
                Action::XZD => "X/Z/D",
                Action::XZU => "X/Z/U*",
            };
            ((*g, *e), code)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates() {
        let mut tags: Vec<Tag> = BASIC_PROFILE.iter().map(|(t, _)| *t).collect();
        let n = tags.len();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), n, "an attribute is listed twice");
        assert!(n > 600, "the full table has over 600 entries, got {n}");
    }

    #[test]
    fn options_only_keep_their_columns() {
        let basic = Profile::new(false, false);
        let both = Profile::new(true, true);
        for (tag, action) in BASIC_PROFILE {
            let after = both.action(*tag);
            if after != Some(*action) {
                assert_eq!(after, Some(Action::K));
                assert!(
                    RETAIN_DEVICE_IDENTITY.contains(tag)
                        || RETAIN_PATIENT_CHARACTERISTICS.contains(tag),
                    "{tag} changed without an option listing it"
                );
            }
            assert_eq!(basic.action(*tag), Some(*action));
        }
        // Every option entry is a table attribute (a typo would silently do nothing).
        for tag in RETAIN_DEVICE_IDENTITY
            .iter()
            .chain(RETAIN_PATIENT_CHARACTERISTICS)
        {
            assert!(basic.action(*tag).is_some(), "{tag} is not in the table");
        }
    }

    #[test]
    fn combinations_resolve_to_valid_and_value_free_actions() {
        assert_eq!(Action::XZ.resolve(), Resolved::Empty);
        assert_eq!(Action::XZD.resolve(), Resolved::Dummy);
        assert_eq!(Action::XD.resolve(), Resolved::Dummy);
        assert_eq!(Action::ZD.resolve(), Resolved::Dummy);
        assert_eq!(Action::XZU.resolve(), Resolved::Keep);
        let p = Profile::new(false, false);
        assert_eq!(p.action(Tag(0x6002, 0x3000)), Some(Action::X));
        assert_eq!(p.action(Tag(0x5010, 0x0005)), Some(Action::X));
        assert_eq!(p.action(tags::ROWS), None);
        assert_eq!(
            p.action(tags::ORIGINAL_ATTRIBUTES_SEQUENCE),
            Some(Action::X)
        );
    }
}
