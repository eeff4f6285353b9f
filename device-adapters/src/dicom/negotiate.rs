//! Association negotiation: the A-ASSOCIATE-RQ → A-ASSOCIATE-AC / -RJ decision, and the
//! few fixed association PDUs we send. Pure code on top of dicom-ul's PDU codec.
//!
//! Rules, in the order they are checked (the first failing one decides the rejection,
//! always "rejected-permanent"):
//! 1. protocol version bit 1 must be set → else "service-provider (ACSE): protocol
//!    version not supported";
//! 2. the application context must be the DICOM one → else "service-user: application
//!    context name not supported";
//! 3. the called AE title must be ours → else "service-user: called AE title not
//!    recognized";
//! 4. the calling AE title must be configured, and the source address listed for it →
//!    else "service-user: calling AE title not recognized" (the same answer for an
//!    unknown title and a known title from the wrong address, so that a prober learns
//!    nothing about which titles exist).
//!
//! Then every proposed presentation context is answered on its own: Verification and the
//! storage SOP classes of [`super::sop`] are accepted with the first proposed transfer
//! syntax we accept; others are refused ("abstract syntax not supported" / "transfer
//! syntaxes not supported"). An association whose contexts are all refused is still
//! accepted, as PS3.8 prescribes; the requester learns from the AC that it can send
//! nothing. Role selection, extended negotiation, user identity and asynchronous
//! operations are not negotiated (the defaults apply: the requester is SCU, one operation
//! at a time).

use std::fmt;
use std::net::IpAddr;

use dicom_ul::pdu::{
    read_pdu, write_pdu, AssociationAC, AssociationRQ, Pdu, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem, MAXIMUM_PDU_SIZE,
};

use super::config::DicomScpConfig;
use super::sop;

/// PDU type of A-ASSOCIATE-RQ.
pub const PDU_ASSOCIATE_RQ: u8 = 0x01;
/// PDU type of P-DATA-TF.
pub const PDU_P_DATA: u8 = 0x04;
/// PDU type of A-RELEASE-RQ.
pub const PDU_RELEASE_RQ: u8 = 0x05;
/// PDU type of A-ABORT.
pub const PDU_ABORT: u8 = 0x07;

/// The DICOM application context name.
pub const DICOM_APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Our implementation class UID (a UUID-derived UID, fixed for this implementation).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.27205997924182001276172041855255297435";
/// Our implementation version name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = "WARDGATE_0_1";
/// The requester's maximum PDU length when its request does not state one.
pub const DEFAULT_PEER_MAX_PDU_LENGTH: u32 = 16_384;

/// One accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    /// Presentation context ID.
    pub id: u8,
    /// Abstract syntax (SOP class UID).
    pub abstract_syntax: String,
    /// The transfer syntax chosen for it.
    pub transfer_syntax: String,
}

/// An accepted association.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The encoded A-ASSOCIATE-AC to send.
    pub pdu: Vec<u8>,
    /// The requester's calling AE title, padding removed.
    pub calling_ae_title: String,
    /// Largest PDU the requester accepts (0: no limit).
    pub peer_max_pdu_length: u32,
    /// The accepted presentation contexts.
    pub contexts: Vec<AcceptedContext>,
}

impl Accepted {
    /// The accepted context with this ID.
    #[must_use]
    pub fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.iter().find(|c| c.id == id)
    }
}

/// Why an association request was rejected (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Protocol version without bit 1.
    ProtocolVersion(u16),
    /// Not the DICOM application context.
    ApplicationContext,
    /// The called AE title is not ours.
    CalledAeTitle(String),
    /// The calling AE title is not configured.
    UnknownCaller(String),
    /// The calling AE title is configured, but not for this source address.
    CallerAddress(String, IpAddr),
    /// The accept message could not be encoded (an internal fault).
    Internal,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::ProtocolVersion(v) => {
                write!(f, "protocol version {v:#06x} not supported")
            }
            RejectReason::ApplicationContext => f.write_str("not the DICOM application context"),
            RejectReason::CalledAeTitle(t) => write!(f, "called AE title {t:?} is not ours"),
            RejectReason::UnknownCaller(t) => write!(f, "calling AE title {t:?} is not configured"),
            RejectReason::CallerAddress(t, ip) => {
                write!(f, "calling AE title {t:?} is not allowed from {ip}")
            }
            RejectReason::Internal => f.write_str("internal error encoding the response"),
        }
    }
}

/// The outcome of negotiation.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Send [`Accepted::pdu`] and serve the association.
    Accept(Accepted),
    /// Send `pdu` (an A-ASSOCIATE-RJ) and close.
    Reject {
        /// The encoded A-ASSOCIATE-RJ.
        pdu: Vec<u8>,
        /// Why.
        reason: RejectReason,
    },
}

/// An association PDU that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed association PDU: {0}")]
pub struct PduError(String);

/// Decodes a whole A-ASSOCIATE-RQ PDU (header included).
///
/// # Errors
/// [`PduError`] if the bytes are not a well-formed A-ASSOCIATE-RQ.
pub fn decode_request(pdu: &[u8]) -> Result<AssociationRQ, PduError> {
    // The caller has already bounded the PDU's length; here it only has to be whole.
    match read_pdu(pdu, MAXIMUM_PDU_SIZE, false) {
        Ok(Some(Pdu::AssociationRQ(rq))) => Ok(rq),
        Ok(Some(_)) => Err(PduError("not an A-ASSOCIATE-RQ".into())),
        Ok(None) => Err(PduError("incomplete PDU".into())),
        Err(e) => Err(PduError(e.to_string())),
    }
}

// A-ASSOCIATE-RJ fields (PS3.8 §9.3.4).
const RJ_PERMANENT: u8 = 1;
const RJ_TRANSIENT: u8 = 2;
const RJ_SOURCE_USER: u8 = 1;
const RJ_SOURCE_ACSE: u8 = 2;
const RJ_SOURCE_PRESENTATION: u8 = 3;
const RJ_USER_NO_REASON: u8 = 1;
const RJ_USER_APPLICATION_CONTEXT: u8 = 2;
const RJ_USER_CALLING_AE: u8 = 3;
const RJ_USER_CALLED_AE: u8 = 7;
const RJ_ACSE_PROTOCOL_VERSION: u8 = 2;
const RJ_PRESENTATION_LOCAL_LIMIT: u8 = 2;

fn rejection(result: u8, source: u8, reason: u8) -> Vec<u8> {
    vec![0x03, 0, 0, 0, 0, 4, 0, result, source, reason]
}

/// A-ASSOCIATE-RJ "rejected-transient, service-provider (presentation): local limit
/// exceeded": the answer to a request over the association cap.
#[must_use]
pub fn encode_busy_rejection() -> Vec<u8> {
    rejection(
        RJ_TRANSIENT,
        RJ_SOURCE_PRESENTATION,
        RJ_PRESENTATION_LOCAL_LIMIT,
    )
}

/// A-ABORT from the service user (us), reason "not specified".
#[must_use]
pub fn encode_abort() -> Vec<u8> {
    vec![0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]
}

/// A-RELEASE-RP.
#[must_use]
pub fn encode_release_response() -> Vec<u8> {
    vec![0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]
}

fn reject(source: u8, reason_code: u8, reason: RejectReason) -> Decision {
    Decision::Reject {
        pdu: rejection(RJ_PERMANENT, source, reason_code),
        reason,
    }
}

/// Decides on an association request from `source` (see the module documentation).
#[must_use]
pub fn decide(rq: &AssociationRQ, config: &DicomScpConfig, source: IpAddr) -> Decision {
    if rq.protocol_version & 1 == 0 {
        return reject(
            RJ_SOURCE_ACSE,
            RJ_ACSE_PROTOCOL_VERSION,
            RejectReason::ProtocolVersion(rq.protocol_version),
        );
    }
    if sop::trim_uid(&rq.application_context_name) != DICOM_APPLICATION_CONTEXT {
        return reject(
            RJ_SOURCE_USER,
            RJ_USER_APPLICATION_CONTEXT,
            RejectReason::ApplicationContext,
        );
    }
    let called = rq.called_ae_title.trim();
    if called != config.ae_title {
        return reject(
            RJ_SOURCE_USER,
            RJ_USER_CALLED_AE,
            RejectReason::CalledAeTitle(called.to_owned()),
        );
    }
    let calling = rq.calling_ae_title.trim();
    if !config.caller_allowed(calling, source) {
        let reason = if config.callers.iter().any(|c| c.ae_title == calling) {
            RejectReason::CallerAddress(calling.to_owned(), source.to_canonical())
        } else {
            RejectReason::UnknownCaller(calling.to_owned())
        };
        return reject(RJ_SOURCE_USER, RJ_USER_CALLING_AE, reason);
    }

    let mut results = Vec::with_capacity(rq.presentation_contexts.len());
    let mut contexts = Vec::new();
    for proposed in &rq.presentation_contexts {
        let abstract_syntax = sop::trim_uid(&proposed.abstract_syntax);
        let supported =
            abstract_syntax == sop::VERIFICATION || sop::is_storage_sop_class(abstract_syntax);
        let offered: Vec<&str> = proposed
            .transfer_syntaxes
            .iter()
            .map(|ts| sop::trim_uid(ts))
            .collect();
        let chosen = if supported {
            sop::choose_transfer_syntax(&offered)
        } else {
            None
        };
        let (reason, transfer_syntax) = match chosen {
            Some(ts) => {
                contexts.push(AcceptedContext {
                    id: proposed.id,
                    abstract_syntax: abstract_syntax.to_owned(),
                    transfer_syntax: ts.to_owned(),
                });
                (PresentationContextResultReason::Acceptance, ts)
            }
            None if !supported => (
                PresentationContextResultReason::AbstractSyntaxNotSupported,
                sop::TRANSFER_SYNTAXES[0],
            ),
            None => (
                PresentationContextResultReason::TransferSyntaxesNotSupported,
                sop::TRANSFER_SYNTAXES[0],
            ),
        };
        results.push(PresentationContextResult {
            id: proposed.id,
            reason,
            transfer_syntax: transfer_syntax.to_owned(),
        });
    }
    let peer_max_pdu_length = rq
        .user_variables
        .iter()
        .find_map(|v| match v {
            UserVariableItem::MaxLength(len) => Some(*len),
            _ => None,
        })
        .unwrap_or(DEFAULT_PEER_MAX_PDU_LENGTH);
    let ac = Pdu::AssociationAC(AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: DICOM_APPLICATION_CONTEXT.to_owned(),
        presentation_contexts: results,
        user_variables: vec![
            UserVariableItem::MaxLength(config.max_pdu_length),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_owned()),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_owned()),
        ],
    });
    let mut pdu = Vec::with_capacity(256);
    if write_pdu(&mut pdu, &ac).is_err() {
        return reject(RJ_SOURCE_USER, RJ_USER_NO_REASON, RejectReason::Internal);
    }
    Decision::Accept(Accepted {
        pdu,
        calling_ae_title: calling.to_owned(),
        peer_max_pdu_length,
        contexts,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use dicom_ul::pdu::PresentationContextProposed;

    use super::*;
    use crate::dicom::config::CallerConfig;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const IMPLICIT: &str = "1.2.840.10008.1.2";
    const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
    const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";

    fn config() -> DicomScpConfig {
        DicomScpConfig::new(
            "0.0.0.0:11112".parse().unwrap(),
            "WARDGATE",
            vec![
                CallerConfig {
                    ae_title: "CT1".into(),
                    sources: vec!["10.0.0.5".parse().unwrap()],
                },
                CallerConfig {
                    ae_title: "ANYWHERE".into(),
                    sources: Vec::new(),
                },
            ],
            "/tmp",
        )
    }

    fn context(id: u8, abstract_syntax: &str, ts: &[&str]) -> PresentationContextProposed {
        PresentationContextProposed {
            id,
            abstract_syntax: abstract_syntax.into(),
            transfer_syntaxes: ts.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn request(calling: &str, called: &str) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: called.into(),
            application_context_name: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                context(1, sop::VERIFICATION, &[IMPLICIT]),
                context(3, CT, &[DEFLATED, EXPLICIT, IMPLICIT]),
                context(5, CT, &[JPEG_LOSSLESS_SV1]),
                context(7, "1.2.840.10008.5.1.4.1.2.2.1", &[IMPLICIT]),
                context(9, CT, &[DEFLATED]),
            ],
            user_variables: vec![UserVariableItem::MaxLength(32_768)],
        }
    }

    fn source(ip: &str) -> IpAddr {
        ip.parse().unwrap()
    }

    fn rejected(decision: Decision) -> (Vec<u8>, RejectReason) {
        match decision {
            Decision::Reject { pdu, reason } => (pdu, reason),
            Decision::Accept(_) => panic!("expected a rejection"),
        }
    }

    #[test]
    fn request_round_trips_through_the_codec_and_contexts_are_chosen() {
        let mut bytes = Vec::new();
        write_pdu(&mut bytes, &Pdu::AssociationRQ(request("CT1", "WARDGATE"))).unwrap();
        let rq = decode_request(&bytes).unwrap();
        let Decision::Accept(accepted) = decide(&rq, &config(), source("10.0.0.5")) else {
            panic!("expected acceptance");
        };
        assert_eq!(accepted.calling_ae_title, "CT1");
        assert_eq!(accepted.peer_max_pdu_length, 32_768);
        let chosen: Vec<(u8, &str)> = accepted
            .contexts
            .iter()
            .map(|c| (c.id, c.transfer_syntax.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [(1, IMPLICIT), (3, EXPLICIT), (5, JPEG_LOSSLESS_SV1)]
        );
        assert_eq!(accepted.context(3).unwrap().abstract_syntax, CT);
        assert!(accepted.context(7).is_none());

        let Ok(Some(Pdu::AssociationAC(ac))) = read_pdu(&accepted.pdu[..], 1 << 20, true) else {
            panic!("the AC does not decode");
        };
        let reasons: Vec<(u8, PresentationContextResultReason)> = ac
            .presentation_contexts
            .iter()
            .map(|r| (r.id, r.reason.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                (1, PresentationContextResultReason::Acceptance),
                (3, PresentationContextResultReason::Acceptance),
                (5, PresentationContextResultReason::Acceptance),
                (
                    7,
                    PresentationContextResultReason::AbstractSyntaxNotSupported
                ),
                (
                    9,
                    PresentationContextResultReason::TransferSyntaxesNotSupported
                ),
            ]
        );
        assert!(ac
            .user_variables
            .contains(&UserVariableItem::MaxLength(config().max_pdu_length)));
    }

    #[test]
    fn access_control_rejections_carry_the_right_reason() {
        let config = config();
        let (pdu, reason) = rejected(decide(
            &request("NOBODY", "WARDGATE"),
            &config,
            source("10.0.0.5"),
        ));
        assert_eq!(pdu, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3]);
        assert_eq!(reason, RejectReason::UnknownCaller("NOBODY".into()));
        let (pdu, reason) = rejected(decide(
            &request("CT1", "WARDGATE"),
            &config,
            source("10.0.0.6"),
        ));
        assert_eq!(
            pdu,
            [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3],
            "same answer as an unknown title"
        );
        assert!(matches!(reason, RejectReason::CallerAddress(..)));
        let (pdu, _) = rejected(decide(
            &request("CT1", "SOMEONE"),
            &config,
            source("10.0.0.5"),
        ));
        assert_eq!(pdu, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
        let mut rq = request("ANYWHERE", "WARDGATE");
        rq.application_context_name = "1.2.3".into();
        let (pdu, _) = rejected(decide(&rq, &config, source("192.168.1.1")));
        assert_eq!(pdu, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 2]);
        let mut rq = request("ANYWHERE", "WARDGATE");
        rq.protocol_version = 2;
        let (pdu, _) = rejected(decide(&rq, &config, source("192.168.1.1")));
        assert_eq!(pdu, [0x03, 0, 0, 0, 0, 4, 0, 1, 2, 2]);
        // Padding on the wire does not matter; any source is fine for ANYWHERE.
        assert!(matches!(
            decide(
                &request("ANYWHERE  ", " WARDGATE "),
                &config,
                source("::ffff:192.168.1.1")
            ),
            Decision::Accept(_)
        ));
        assert_eq!(encode_busy_rejection(), [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2]);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode_request(&[0x01, 0, 0, 0, 0, 2, 0, 1]).is_err());
        assert!(decode_request(&[0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]).is_err());
        assert!(decode_request(&[]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a peer sends as its first PDU, decoding returns (never panics), and a
        /// request that decodes is answered.
        #[test]
        fn arbitrary_requests_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            mutate in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..8),
        ) {
            let mut pdu = vec![0x01, 0];
            pdu.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
            pdu.extend_from_slice(&body);
            if let Ok(rq) = decode_request(&pdu) {
                let _ = decide(&rq, &config(), source("10.0.0.5"));
            }
            // Mutations of a valid request reach deeper into the parser.
            let mut valid = Vec::new();
            write_pdu(&mut valid, &Pdu::AssociationRQ(request("CT1", "WARDGATE"))).unwrap();
            for (at, byte) in &mutate {
                if valid.len() > 6 {
                    let at = 6 + at % (valid.len() - 6);
                    valid[at] = *byte;
                }
            }
            if let Ok(rq) = decode_request(&valid) {
                let _ = decide(&rq, &config(), source("10.0.0.5"));
            }
        }
    }
}
