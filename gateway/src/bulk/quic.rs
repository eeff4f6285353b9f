//! QUIC settings shared by the bulk upload sender and the reference receiver.
//!
//! # Flow-control windows, and why
//! quinn's defaults size a stream's receive window for 100 Mbit/s at 100 ms RTT
//! (1.25 MB). A bulk upload is few streams moving a lot of data, so:
//! * `stream_receive_window` 8 MiB: one stream alone can fill about 670 Mbit/s at 100 ms
//!   RTT (window / RTT), or any realistic hospital uplink; on loopback it keeps a stream
//!   from stalling while the receiver fsyncs a checkpoint.
//! * `receive_window` 32 MiB for the connection: four parallel files each at a full
//!   stream window. This is also the most memory a peer can make the receiver buffer per
//!   connection.
//! * `send_window` 32 MiB: matches what the receiver grants, so the sender is never the
//!   limit; it bounds the sender's unacknowledged data per connection.
//!
//! MTU discovery may probe up to [`MTU_UPPER_BOUND`] (jumbo frames) instead of quinn's 1452:
//! quinn documents any upper bound as safe (a path that drops large probes just ends the
//! search lower; black-hole detection falls back to 1200). Where the path allows it (jumbo
//! frames in a data centre or hospital backbone, loopback) six times fewer packets carry
//! the same data, and per-packet work (syscalls, headers, ACKs) dominates QUIC's CPU cost.
//!
//! Idle timeout 30 s with keep-alives every 5 s: a dead path is noticed within half a
//! minute (the upload then resumes from the receiver's durable offset) and a quiet
//! connection through a NAT or firewall is not forgotten.
//!
//! TLS: TLS 1.3 only (QUIC requires it), ring provider, ALPN
//! [`wardgate_proto::upload::ALPN`]; the certificate files are the gateway's identity, as
//! for the MQTT uplink (checked the same way, see [`crate::uplink::mqtt::tls`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{TransportConfig, VarInt};
use wardgate_proto::upload::ALPN;

use super::BulkError;

/// Stream flow-control window (see the module documentation).
pub const STREAM_RECEIVE_WINDOW: u32 = 8 << 20;
/// Connection flow-control window.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;
/// Sender's buffer of unacknowledged data.
pub const SEND_WINDOW: u64 = 32 << 20;
/// Largest UDP payload MTU discovery probes for: a 9000-byte jumbo frame minus IPv6 and
/// UDP headers.
pub const MTU_UPPER_BOUND: u16 = 8952;
/// A connection without traffic for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The transport configuration both ends use; `max_streams` bounds the streams (files)
/// the peer may have open at once.
#[must_use]
pub fn transport_config(max_streams: u32) -> TransportConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .mtu_discovery_config(Some(mtu))
        .keep_alive_interval(Some(KEEP_ALIVE))
        // 30 s fits a QUIC varint; the conversion cannot fail.
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t
}

/// The sender's QUIC client configuration: reads and checks the CA, certificate and key
/// files as of `now_unix` (seconds).
///
/// # Errors
/// A file is missing, malformed, expired or mismatched ([`BulkError::Tls`]), or rustls
/// cannot serve QUIC with the result.
pub fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
    now_unix: i64,
) -> Result<quinn::ClientConfig, BulkError> {
    let material =
        crate::uplink::mqtt::tls::load(ca_file, cert_file, key_file, Some(ALPN), now_unix)
            .map_err(BulkError::Tls)?;
    let crypto = QuicClientConfig::try_from(material.client_config)
        .map_err(|e| BulkError::QuicTls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(0)));
    Ok(config)
}

/// Unix seconds now (0 if the clock is before 1970).
#[must_use]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// Unix milliseconds now (0 if the clock is before 1970).
#[must_use]
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
