//! `wardgate demo`: the whole path from bedside and cath-lab devices to the cloud on one
//! machine, with nothing installed beyond the binary.
//!
//! It starts, in a fresh temporary directory: a throwaway PKI ([`certs`]); a stand-in
//! cloud broker that requires mutual TLS ([`broker`]); a subscriber that shows what the
//! cloud receives ([`viewer`]); the real gateway ([`crate::daemon::Gateway`]) configured
//! like a production one; simulated patient monitors ([`monitors`]) whose HL7 messages
//! carry synthetic patients' names, MRNs, birth dates, addresses, phone numbers and SSNs
//! ([`patients`]); and, with the device adapters built in, the device plane
//! ([`devices`]): a chiller the gateway polls over Modbus TCP ([`chiller`]), a mapping
//! system whose free-text log names monitor 0's patient and which the gateway follows and
//! scrubs ([`mapping_log`]), and a CT scanner ([`modality`]) that stores an image of that
//! patient with DICOM C-STORE, which the gateway de-identifies and uploads over QUIC to a
//! stand-in cloud imaging ingest ([`imaging`]; the reference receiver). Every packet the
//! broker receives and every file the ingest receives is scanned for every planted
//! identifier ([`leak`]), and so are the gateway's data directory and the ingest's at the
//! end; the verdict is the demo's result.
//!
//! Invariants:
//! - The gateway runs unmodified: its config is an ordinary TOML file parsed by
//!   [`crate::config::Config::parse`] (the simulated devices are ordinary `[[device]]`
//!   entries), its certificates are PEM files, its broker is reached over TCP and TLS.
//! - The device log names a patient only after the gateway acknowledged an HL7 message
//!   about that patient, i.e. after it could learn the names; the identifiers it writes
//!   are planted identifiers, so a scrubber miss is a leak like any other.
//! - Stop order is the reverse of start: monitors (each finishes its message in flight),
//!   the log writer and the CT scanner (which waits, bounded, for its stored image to
//!   reach the ingest), then the cloud is given time to receive every acknowledged
//!   record and every log line written, then the gateway, the simulated chiller, the
//!   imaging ingest, the viewer and the broker; then the data directory and the ingest's
//!   directory are scanned; then the temporary directory is removed (also on every
//!   error path).
//! - [`DemoSummary::passed`] is false if any planted identifier was found anywhere, if
//!   nothing was acknowledged, if any message was not acknowledged with AA/CA, if an
//!   acknowledged message or a written log line never reached the cloud, and, with the
//!   imaging path, if no image arrived, an image the gateway stored never arrived, or an
//!   image that arrived was not de-identified as required or had its pixels changed.

pub mod broker;
pub mod certs;
#[cfg(feature = "modbus")]
pub mod chiller;
pub mod devices;
#[cfg(feature = "dicom")]
pub mod dicom_walk;
#[cfg(feature = "dicom")]
pub mod imaging;
pub mod leak;
#[cfg(feature = "logfile")]
pub mod mapping_log;
#[cfg(feature = "dicom")]
pub mod modality;
pub mod monitors;
pub mod patients;
mod run;
pub mod tally;
pub mod viewer;

pub use run::{
    run, run_with_output, DemoError, DemoOptions, DemoSummary, DEFAULT_DURATION, DEFAULT_MONITORS,
    GATEWAY_ID, MAX_MONITORS, TOPIC_ROOT, VIEWER_CN,
};
