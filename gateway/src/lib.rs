//! The wardgate daemon as a library: the binary in `main.rs` is a thin CLI over it.
//!
//! The layout is the architecture: `config` (typed TOML), `phi` (the only way from
//! device data to a storable record), `spool` (durable store-and-forward), `uplink`
//! (MQTT to the cloud), `pipeline` (the glue and its ACK-after-commit contract),
//! `daemon` (start/stop order), `status` (the technician's status endpoint and
//! `wardgate status`) and `demo` (the README's first command).

pub mod agent_api;
pub mod audit;
pub mod bulk;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod devices;
pub mod phi;
pub mod pipeline;
pub mod receive;
pub mod spool;
pub mod status;
pub mod twin;
pub mod updates;
pub mod uplink;
