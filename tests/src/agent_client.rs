//! A device agent's side of the agent API, for end-to-end tests: one HTTPS/1.1 request
//! per connection over rustls, trusting the test CA, authenticating with a bearer token.
//! [`get_bytes`] reads binary bodies with their headers (update downloads with `Range`).
//! Deliberately small (no HTTP library) — the gateway's own tests exercise keep-alive,
//! mTLS and the error paths with a full client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// Sends one request to the agent API at `addr` (certificate for `localhost`, issued by
/// the CA in `ca_file`) and returns the answer.
///
/// # Errors
/// TLS, I/O or a response that is not HTTP/1.1.
pub async fn request(
    addr: SocketAddr,
    ca_file: &Path,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Answer> {
    let mut tls = connect(addr, ca_file).await?;
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    // A close_notify-less close is fine here: the response is complete by then.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP/1.1 response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Answer { status, body })
}

/// An answer with its headers and body bytes, for binary downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, exactly `Content-Length` bytes when the server sent one.
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one `GET` with extra header fields (e.g. `Range`, `If-Range`) to the agent API
/// and returns the answer with its headers and raw body.
///
/// # Errors
/// TLS, I/O, a response that is not HTTP/1.1, a chunked body (the agent API sends a
/// `Content-Length` with every file), or a body shorter than its `Content-Length`.
pub async fn get_bytes(
    addr: SocketAddr,
    ca_file: &Path,
    token: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> anyhow::Result<RawAnswer> {
    let mut tls = connect(addr, ca_file).await?;
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n"
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    // A close_notify-less close is fine here: the length is checked below.
    let _ = tls.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of the header block in {} bytes", raw.len()))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP/1.1 response: {head_text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut answer = RawAnswer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        anyhow::bail!("chunked bodies are not supported by this test client");
    }
    if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse()?;
        anyhow::ensure!(
            answer.body.len() >= length,
            "body cut short: {} of {length} bytes",
            answer.body.len()
        );
        answer.body.truncate(length);
    }
    Ok(answer)
}

/// A TLS connection to the agent API (certificate for `localhost` from the CA in `ca_file`).
async fn connect(
    addr: SocketAddr,
    ca_file: &Path,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}
