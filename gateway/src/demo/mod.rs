//! `wardgate demo`: the whole path from bedside monitor to cloud on one machine, with
//! nothing installed beyond the binary.
//!
//! It starts, in a fresh temporary directory: a throwaway PKI ([`certs`]); a stand-in
//! cloud broker that requires mutual TLS ([`broker`]); a subscriber that shows what the
//! cloud receives ([`viewer`]); the real gateway ([`crate::daemon::Gateway`]) configured
//! like a production one; and simulated patient monitors ([`monitors`]) whose HL7
//! messages carry synthetic patients' names, MRNs, birth dates, addresses, phone
//! numbers and SSNs ([`patients`]). Every packet the broker receives is scanned for
//! every planted identifier ([`leak`]), and so is the gateway's data directory at the
//! end; the verdict is the demo's result.
//!
//! Invariants:
//! - The gateway runs unmodified: its config is an ordinary TOML file parsed by
//!   [`crate::config::Config::parse`], its certificates are PEM files, its broker is
//!   reached over TCP and TLS.
//! - Stop order is the reverse of start: monitors (each finishes its message in flight),
//!   then the cloud is given time to receive every acknowledged record, then the
//!   gateway, the viewer and the broker; then the data directory is scanned; then the
//!   temporary directory is removed (also on every error path).
//! - [`DemoSummary::passed`] is false if any planted identifier was found anywhere, if
//!   nothing was acknowledged, if any message was not acknowledged with AA/CA, or if an
//!   acknowledged message never reached the cloud.

pub mod broker;
pub mod certs;
pub mod leak;
pub mod monitors;
pub mod patients;
mod run;
pub mod tally;
pub mod viewer;

pub use run::{
    run, run_with_output, DemoError, DemoOptions, DemoSummary, DEFAULT_DURATION, DEFAULT_MONITORS,
    GATEWAY_ID, MAX_MONITORS, TOPIC_ROOT, VIEWER_CN,
};
