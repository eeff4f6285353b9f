//! `wardgate status`: asks the running gateway's status endpoint for `/status.json` and
//! prints it for a person ([`render_text`]) or, with `--json`, as served.
//!
//! Invariants:
//! * The CLI reads no gateway state itself: it shows what the running daemon reports, so
//!   a stopped or hung gateway shows as unreachable instead of as stale figures.
//! * The token is read from the configured file, sent only in the `Authorization`
//!   header (marked sensitive), and never printed.
//! * Over TLS the endpoint must present exactly the configured certificate
//!   ([`super::tls::pinned_client_config`]).
//! * Every step is bounded: connect, handshake and answer within [`REQUEST_TIMEOUT`], an
//!   answer of at most [`MAX_RESPONSE_BYTES`].
//! * Text output escapes control characters in names, so a device id cannot drive the
//!   terminal.

use std::fmt::Write as _;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, HOST, RETRY_AFTER};
use axum::http::{HeaderValue, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::auth::read_token_file;
use super::config::{ClientTarget, StatusConfig};
use super::snapshot::{PerClass, StatusSnapshot};
use super::{tls, StatusError};
use crate::uplink::mqtt::tls::rfc3339;

/// Longest wait for the whole exchange.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Fetches the status from `target` and formats it: text for a person, or the JSON
/// exactly as the endpoint served it (plus a final line feed) when `json` is set.
///
/// # Errors
/// The token file cannot be read, the endpoint cannot be reached, refuses the token,
/// rate-limits this address, or answers something that is not a status.
pub async fn run(target: &ClientTarget, json: bool) -> Result<String, StatusError> {
    let token = read_token_file(&target.token_file)?;
    let body = fetch(target, "/status.json", &token).await?;
    let url = target.url();
    let snapshot: StatusSnapshot =
        serde_json::from_slice(&body).map_err(|e| StatusError::BadResponse {
            url: url.clone(),
            reason: format!("a status that cannot be read: {e}"),
        })?;
    if json {
        let mut text = String::from_utf8(body).map_err(|_| StatusError::BadResponse {
            url,
            reason: "a status that is not UTF-8".into(),
        })?;
        text.push('\n');
        Ok(text)
    } else {
        Ok(render_text(&snapshot))
    }
}

/// [`run`] against the endpoint `status` configures (the `[status]` section, `None` when
/// the configuration has none).
///
/// # Errors
/// [`StatusError::NotConfigured`] without a `[status]` section; otherwise as [`run`].
pub async fn run_configured(
    status: Option<&StatusConfig>,
    json: bool,
) -> Result<String, StatusError> {
    let status = status.ok_or(StatusError::NotConfigured)?;
    run(&status.client_target(), json).await
}

/// GETs `path` from the endpoint with the bearer token; the body of a 200 answer.
///
/// # Errors
/// As [`run`].
pub async fn fetch(target: &ClientTarget, path: &str, token: &str) -> Result<Vec<u8>, StatusError> {
    let url = target.url();
    let unreachable = |reason: String| StatusError::Unreachable {
        url: url.clone(),
        reason,
    };
    let exchange = async {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &target.tls_cert_file {
            None => get(tcp, target, path, token).await,
            Some(cert_file) => {
                let connector = TlsConnector::from(tls::pinned_client_config(cert_file)?);
                let name = ServerName::IpAddress(target.addr.ip().into());
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| unreachable(format!("TLS: {e}")))?;
                get(stream, target, path, token).await
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
}

async fn get<I>(
    io: I,
    target: &ClientTarget,
    path: &str,
    token: &str,
) -> Result<Vec<u8>, StatusError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let url = target.url();
    let unreachable = |reason: String| StatusError::Unreachable {
        url: url.clone(),
        reason,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut authorization =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| StatusError::TokenFile {
            path: target.token_file.clone(),
            reason: "holds characters that cannot be sent in an HTTP header".into(),
        })?;
    authorization.set_sensitive(true);
    let request = Request::get(path)
        .header(HOST, target.addr.to_string())
        .header(AUTHORIZATION, authorization)
        .body(Body::empty())
        .map_err(|e| unreachable(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unreachable(e.to_string()));
    let result = match response {
        Err(e) => Err(e),
        Ok(response) => {
            let (parts, body) = response.into_parts();
            match parts.status {
                StatusCode::OK => axum::body::to_bytes(Body::new(body), MAX_RESPONSE_BYTES)
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| unreachable(format!("reading the answer: {e}"))),
                StatusCode::UNAUTHORIZED => Err(StatusError::TokenRefused {
                    url: url.clone(),
                    token_file: target.token_file.clone(),
                }),
                StatusCode::TOO_MANY_REQUESTS => Err(StatusError::RateLimited {
                    url: url.clone(),
                    retry_after_secs: parts
                        .headers
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(60),
                }),
                other => Err(StatusError::BadResponse {
                    url: url.clone(),
                    reason: format!("HTTP {other}"),
                }),
            }
        }
    };
    driver.abort();
    result
}

/// The snapshot for a person, as of its own `generated_at_ms` (ages are the gateway's).
#[must_use]
pub fn render_text(s: &StatusSnapshot) -> String {
    let now = s.generated_at_ms;
    let mut out = String::new();
    let g = &s.gateway;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "wardgate {} (version {}), up {} since {}",
        clean(&g.id),
        clean(&g.version),
        duration(g.uptime_secs),
        time(g.started_at_ms)
    );
    let _ = writeln!(out, "as of {}", time(now));
    out.push('\n');

    let u = &s.uplink;
    let state = if u.connected {
        "connected"
    } else {
        "disconnected"
    };
    let since = if u.since_ms == 0 {
        "never connected since start".to_owned()
    } else {
        format!("since {} ({})", time(u.since_ms), ago(u.since_ms, now))
    };
    let _ = writeln!(out, "Uplink   {state} {since}");
    let _ = writeln!(
        out,
        "         {} records published in {} publishes, {} in flight; {} connects, {} failures",
        u.published_records,
        u.published_batches,
        u.in_flight_records,
        u.connects,
        u.connection_failures
    );
    if let Some(e) = &u.last_error {
        let _ = writeln!(out, "         last error: {}", clean(e));
    }
    if let Some(not_after) = u.client_cert_not_after {
        let _ = writeln!(
            out,
            "         client certificate expires {}",
            rfc3339(not_after)
        );
    }

    let sp = &s.spool;
    let _ = writeln!(
        out,
        "Spool    {} records waiting ({}; {} handed to the uplink)",
        sp.records,
        classes(&sp.records_by_class),
        sp.leased_records
    );
    let oldest = match sp.oldest_record_age_secs {
        Some(age) => format!("oldest record {} old", duration(age)),
        None => "empty".to_owned(),
    };
    let _ = writeln!(
        out,
        "         {} of {} ({}); {oldest}",
        bytes(sp.bytes),
        bytes(sp.budget_bytes),
        percent(sp.bytes, sp.budget_bytes)
    );
    let _ = writeln!(
        out,
        "         since start: evicted {}; expired {}; refused (spool full) {}",
        classes(&sp.evicted_records),
        classes(&sp.expired_records),
        sp.refused_records
    );

    let h = &s.hl7;
    let _ = writeln!(
        out,
        "HL7      {} open connections; messages accepted {}, errored {}, rejected {} \
         (rate-limited {}, oversized {})",
        h.connections_active,
        h.messages_accepted,
        h.messages_errored,
        h.messages_rejected,
        h.rate_limited,
        h.frames_too_large
    );
    out.push('\n');

    let _ = writeln!(out, "Devices ({})", s.devices.len());
    if s.devices.is_empty() {
        out.push_str("  none configured\n");
    } else {
        let header = ["DEVICE", "KIND", "ADAPTER", "STATE", "SINCE", "LAST DATA"];
        let rows: Vec<[String; 6]> = s
            .devices
            .iter()
            .map(|d| {
                [
                    clean(&d.id),
                    clean(&d.kind),
                    clean(&d.adapter),
                    d.state.name().to_owned(),
                    ago(d.state_since_ms, now),
                    d.last_data_ms
                        .map_or_else(|| "none since start".to_owned(), |at| ago(at, now)),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut line = |cells: [&str; 6]| {
            let mut l = String::new();
            for (cell, w) in cells.iter().zip(widths) {
                let _ = write!(l, "  {cell:<w$}");
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(header);
        for row in &rows {
            line(row.each_ref().map(String::as_str));
        }
    }
    out.push('\n');

    match &s.patches {
        None => out.push_str("Updates  not configured on this gateway ([updates])\n"),
        Some(p) if p.is_empty() => out.push_str("Updates  none staged\n"),
        Some(patches) => {
            let _ = writeln!(out, "Updates  {} staged", patches.len());
            for p in patches {
                let _ = writeln!(
                    out,
                    "  {} ({}, sha256 {})",
                    clean(&p.target),
                    bytes(p.bytes),
                    clean(p.sha256.get(..12).unwrap_or(&p.sha256)),
                );
                for rollout in &p.rollouts {
                    let _ = writeln!(out, "    {}", clean(rollout));
                }
            }
        }
    }
    if s.alerts.is_empty() {
        out.push_str("Alerts   none\n");
    } else {
        let _ = writeln!(out, "Alerts   {}", s.alerts.len());
        for a in &s.alerts {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                time(a.at_ms),
                clean(&a.code),
                clean(&a.message)
            );
        }
    }
    out
}

/// Control characters (escape sequences, line breaks) shown escaped.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn time(ms: u64) -> String {
    rfc3339(i64::try_from(ms / 1000).unwrap_or(i64::MAX))
}

fn ago(ms: u64, now: u64) -> String {
    format!("{} ago", duration(now.saturating_sub(ms) / 1000))
}

fn duration(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            return format!("{}.{} {unit}", n / size, n % size * 10 / size);
        }
    }
    format!("{n} B")
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "no budget".to_owned();
    }
    let tenths = u128::from(part) * 1000 / u128::from(whole);
    format!("{}.{} %", tenths / 10, tenths % 10)
}

fn classes(c: &PerClass) -> String {
    format!(
        "alarm {}, observation {}, state {}, log {}",
        c.alarm, c.observation, c.state, c.log
    )
}

#[cfg(test)]
mod tests {
    use wardgate_proto::DeviceState;

    use super::*;
    use crate::status::snapshot::{
        Alert, DeviceStatus, GatewayInfo, Hl7Figures, SpoolFigures, UplinkFigures,
    };

    fn snapshot() -> StatusSnapshot {
        let now = 1_735_732_800_000; // 2025-01-01T12:00:00Z
        StatusSnapshot {
            generated_at_ms: now,
            gateway: GatewayInfo::new("gw-1", now - 3_600_000, now),
            devices: vec![
                DeviceStatus {
                    id: "icu-monitor-12".into(),
                    kind: "patient-monitor".into(),
                    adapter: "hl7".into(),
                    state: DeviceState::Online,
                    state_since_ms: now - 300_000,
                    last_data_ms: Some(now - 2_000),
                },
                DeviceStatus {
                    id: "evil\u{1b}[2J".into(),
                    kind: "pump".into(),
                    adapter: "modbus".into(),
                    state: DeviceState::Offline,
                    state_since_ms: now - 30_000,
                    last_data_ms: None,
                },
            ],
            spool: SpoolFigures {
                records: 42,
                records_by_class: PerClass::from_array([0, 2, 40, 0]),
                bytes: 3 << 20,
                budget_bytes: 1 << 30,
                oldest_record_age_secs: Some(35),
                ..SpoolFigures::default()
            },
            uplink: UplinkFigures {
                connected: false,
                since_ms: now - 90_000,
                last_error: Some("connection refused".into()),
                ..UplinkFigures::default()
            },
            hl7: Hl7Figures::default(),
            imaging: None,
            patches: None,
            alerts: vec![Alert {
                at_ms: now - 60_000,
                code: "uplink-down".into(),
                message: "the cloud broker is unreachable".into(),
            }],
        }
    }

    #[test]
    fn text_shows_spool_depth_uplink_state_and_devices() {
        let text = render_text(&snapshot());
        assert!(text.contains("Spool    42 records waiting"), "{text}");
        assert!(text.contains("3.0 MiB of 1.0 GiB (0.2 %); oldest record 35 s old"));
        assert!(text.contains("Uplink   disconnected since 2025-01-01T11:58:30Z (90 s ago)"));
        assert!(text.contains("last error: connection refused"));
        assert!(text.contains(
            "\n  icu-monitor-12  patient-monitor  hl7      online   5 min ago  2 s ago\n"
        ));
        assert!(text.contains("not configured on this gateway ([updates])"));
        assert!(text.contains("uplink-down: the cloud broker is unreachable"));
        assert!(text.contains("up 60 min since 2025-01-01T11:00:00Z"));
    }

    #[test]
    fn control_characters_in_names_are_escaped() {
        let text = render_text(&snapshot());
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("evil\\u{1b}[2J"), "{text}");
    }

    #[test]
    fn figures_read_naturally() {
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(3 * 3600 + 120), "3 h 2 min");
        assert_eq!(duration(5 * 86_400), "5 days");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(percent(1, 3), "33.3 %");
        assert_eq!(percent(1, 0), "no budget");
    }
}
