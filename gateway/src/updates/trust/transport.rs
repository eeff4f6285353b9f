//! How tough reaches the repository: [`HttpsTransport`] (hyper 1 HTTP/1.1 over
//! tokio-rustls with the ring provider), tough's `FilesystemTransport` for `file://`, and
//! [`RecordingTransport`], which keeps the exact bytes of metadata files so that what
//! tough accepted can be served to devices unchanged.
//!
//! Invariants:
//! * Only `https://` is fetched, authenticated against the configured CA file alone
//!   (never the system store), optionally with a client certificate (mTLS). `http://` is
//!   fetched only to a loopback host and only when the configuration allows it (tests).
//! * Every step is bounded in time: connect + TLS handshake within `connect_timeout`,
//!   and at most `idle_timeout` without a byte (headers or body). Sizes are bounded by
//!   tough, which stops reading at the signed length or the configured limit.
//! * An interrupted body is resumed (`Range: bytes=N-` with `If-Range`) only if the
//!   server advertised `Accept-Ranges: bytes` and a strong validator (strong `ETag` or
//!   `Last-Modified`), and only if it answers `206` starting exactly at `N`; anything else
//!   fails the fetch. tough still hashes every byte, so a wrong resumption is caught.
//! * 404 and 410 are reported as "file not found" (tough relies on that to end root
//!   rotation); every other failure carries a [`FetchFailure`] that the error mapping
//!   turns into a classified [`TrustError`].
//!
//! Not done: resuming a target download across a restart of the gateway. tough's
//! `read_target` always starts at byte 0 and hashes the whole stream, so the partial
//! file is discarded when the process stops.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::stream::{Stream, StreamExt};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_RANGE, ETAG, HOST, IF_RANGE,
    LAST_MODIFIED, RANGE, USER_AGENT,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tough::{Transport, TransportError, TransportErrorKind};
use url::Url;

use super::config::{is_loopback, UpdatesTrustConfig};
use super::TrustError;

const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Pause before each resumption (multiplied by the attempt number).
const RESUME_PAUSE: Duration = Duration::from_millis(250);

/// What went wrong talking to the server; the source of a tough `TransportError`.
#[derive(Debug, Clone)]
pub struct FetchFailure {
    kind: FetchFailureKind,
    detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchFailureKind {
    /// The TLS handshake failed (certificate not from the CA, wrong name, protocol).
    Tls,
    /// Anything else: connect, HTTP status, timeout, broken body, refused resumption.
    Other,
}

impl FetchFailure {
    fn tls(detail: impl Into<String>) -> Self {
        Self {
            kind: FetchFailureKind::Tls,
            detail: detail.into(),
        }
    }

    fn other(detail: impl Into<String>) -> Self {
        Self {
            kind: FetchFailureKind::Other,
            detail: detail.into(),
        }
    }

    pub(crate) fn to_trust_error(&self, url: &str) -> TrustError {
        match self.kind {
            FetchFailureKind::Tls => TrustError::UntrustedServer {
                url: url.to_owned(),
                reason: self.detail.clone(),
            },
            FetchFailureKind::Other => TrustError::Transport {
                url: url.to_owned(),
                reason: self.detail.clone(),
            },
        }
    }
}

impl std::fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for FetchFailure {}

fn transport_error(url: &Url, kind: TransportErrorKind, failure: FetchFailure) -> TransportError {
    TransportError::new_with_cause(kind, url.as_str(), failure)
}

fn config_err(key: &'static str, reason: impl Into<String>) -> TrustError {
    TrustError::Config {
        key,
        reason: reason.into(),
    }
}

/// Builds the rustls client configuration: trust only `ca_file`; present
/// `client_cert`/`client_key` when configured (loaded and checked by the uplink's
/// credential loader, which also warns about a certificate close to expiry).
pub(crate) fn client_tls_config(
    config: &UpdatesTrustConfig,
    now_unix: i64,
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    let Some(ca_file) = &config.ca_file else {
        return Err(config_err("ca_file", "is required for https://"));
    };
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let material =
            crate::uplink::mqtt::tls::load(ca_file, cert, key, Some(ALPN_HTTP1), now_unix)
                .map_err(|e| config_err("client_cert", e.to_string()))?;
        return Ok(material.client_config);
    }
    let pem = std::fs::read(ca_file)
        .map_err(|e| config_err("ca_file", format!("{}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| config_err("ca_file", format!("not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| config_err("ca_file", format!("not a usable trust anchor: {e}")))?;
    }
    if roots.is_empty() {
        return Err(config_err("ca_file", "contains no PEM CERTIFICATE block"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err("ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(tls))
}

/// tough transport over HTTPS with our TLS stack. Cheap to clone.
#[derive(Clone)]
pub struct HttpsTransport {
    inner: Arc<HttpsInner>,
}

struct HttpsInner {
    tls: TlsConnector,
    allow_loopback_http: bool,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_resumes: u32,
}

impl std::fmt::Debug for HttpsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTransport")
            .field("allow_loopback_http", &self.inner.allow_loopback_http)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("idle_timeout", &self.inner.idle_timeout)
            .field("max_resumes", &self.inner.max_resumes)
            .finish_non_exhaustive()
    }
}

impl HttpsTransport {
    /// A transport for the repository in `config`, as of `now_unix` (for checking the
    /// client certificate's validity).
    ///
    /// # Errors
    /// [`TrustError::Config`] when the CA or client credentials cannot be used.
    pub fn new(config: &UpdatesTrustConfig, now_unix: i64) -> Result<Self, TrustError> {
        let tls = client_tls_config(config, now_unix)?;
        Ok(Self {
            inner: Arc::new(HttpsInner {
                tls: TlsConnector::from(tls),
                allow_loopback_http: config.allow_loopback_http,
                connect_timeout: Duration::from_secs(config.connect_timeout_secs),
                idle_timeout: Duration::from_secs(config.idle_timeout_secs),
                max_resumes: config.max_resumes,
            }),
        })
    }

    fn check_scheme(&self, url: &Url) -> Result<(), TransportError> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.inner.allow_loopback_http && is_loopback(url) => Ok(()),
            _ => Err(transport_error(
                url,
                TransportErrorKind::UnsupportedUrlScheme,
                FetchFailure::other("only https:// is fetched"),
            )),
        }
    }

    /// Opens a connection and sends `GET url` (with a range when resuming); returns the
    /// response head and its body.
    async fn open(
        &self,
        url: &Url,
        resume: Option<(u64, &HeaderValue)>,
    ) -> Result<Opened, FetchFailure> {
        let tls = match url.scheme() {
            "https" => true,
            "http" if self.inner.allow_loopback_http && is_loopback(url) => false,
            other => {
                return Err(FetchFailure::other(format!(
                    "scheme {other}:// not allowed"
                )))
            }
        };
        let host = url
            .host()
            .ok_or_else(|| FetchFailure::other("URL without a host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| FetchFailure::other("URL without a port"))?;
        let (server_name, connect_host) = match host {
            url::Host::Domain(d) => (
                ServerName::try_from(d.to_owned())
                    .map_err(|e| FetchFailure::other(format!("host name {d:?}: {e}")))?,
                d.to_owned(),
            ),
            url::Host::Ipv4(ip) => (
                ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
                ip.to_string(),
            ),
            url::Host::Ipv6(ip) => (
                ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
                ip.to_string(),
            ),
        };
        let host_header = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut request = Request::get(path)
            .header(HOST, host_header)
            .header(USER_AGENT, concat!("wardgate/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT_ENCODING, "identity");
        if let Some((offset, validator)) = resume {
            request = request
                .header(RANGE, format!("bytes={offset}-"))
                .header(IF_RANGE, validator.clone());
        }
        let request = request
            .body(Body::empty())
            .map_err(|e| FetchFailure::other(e.to_string()))?;

        let connect = async {
            let tcp = TcpStream::connect((connect_host.as_str(), port))
                .await
                .map_err(|e| FetchFailure::other(format!("connecting: {e}")))?;
            let _ = tcp.set_nodelay(true);
            if tls {
                let stream = self
                    .inner
                    .tls
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| FetchFailure::tls(format!("TLS handshake: {e}")))?;
                handshake(stream).await
            } else {
                handshake(tcp).await
            }
        };
        let (mut sender, driver) = tokio::time::timeout(self.inner.connect_timeout, connect)
            .await
            .map_err(|_| {
                FetchFailure::other(format!(
                    "no connection within {} s",
                    self.inner.connect_timeout.as_secs()
                ))
            })??;
        let response = tokio::time::timeout(self.inner.idle_timeout, sender.send_request(request))
            .await
            .map_err(|_| {
                FetchFailure::other(format!(
                    "no response within {} s",
                    self.inner.idle_timeout.as_secs()
                ))
            })?
            .map_err(|e| FetchFailure::other(format!("HTTP: {e}")))?;
        let (parts, body) = response.into_parts();
        Ok(Opened {
            status: parts.status,
            headers: parts.headers,
            body: Body::new(body).into_data_stream(),
            _driver: AbortOnDrop(driver),
        })
    }
}

async fn handshake<I>(
    io: I,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Body>,
        JoinHandle<()>,
    ),
    FetchFailure,
>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| FetchFailure::other(format!("HTTP handshake: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driver))
}

/// Aborts the connection task when the body is dropped (tough stops reading early on
/// a size or hash failure).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Opened {
    status: StatusCode,
    headers: HeaderMap,
    body: axum::body::BodyDataStream,
    _driver: AbortOnDrop,
}

/// The validator for `If-Range`: a strong `ETag`, else `Last-Modified`, and only if the
/// server announced byte ranges.
fn resume_validator(headers: &HeaderMap) -> Option<HeaderValue> {
    let ranges = headers
        .get(ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
    if !ranges {
        return None;
    }
    if let Some(etag) = headers.get(ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            return Some(etag.clone());
        }
    }
    headers.get(LAST_MODIFIED).cloned()
}

/// The start offset of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

struct BodyState {
    transport: HttpsTransport,
    url: Url,
    current: Option<Opened>,
    validator: Option<HeaderValue>,
    received: u64,
    resumes: u32,
}

impl BodyState {
    async fn resume(&mut self, why: &str) -> Result<(), FetchFailure> {
        self.current = None;
        let Some(validator) = self.validator.clone() else {
            return Err(FetchFailure::other(format!(
                "{why}; the server offers no byte ranges with a strong validator, so the download cannot resume"
            )));
        };
        if self.resumes >= self.transport.inner.max_resumes {
            return Err(FetchFailure::other(format!(
                "{why}; gave up after {} resumptions",
                self.resumes
            )));
        }
        self.resumes += 1;
        tokio::time::sleep(RESUME_PAUSE * self.resumes).await;
        let opened = self
            .transport
            .open(&self.url, Some((self.received, &validator)))
            .await?;
        if opened.status != StatusCode::PARTIAL_CONTENT
            || content_range_start(&opened.headers) != Some(self.received)
        {
            return Err(FetchFailure::other(format!(
                "{why}; the server did not resume at byte {} (HTTP {})",
                self.received, opened.status
            )));
        }
        tracing::info!(url = %self.url, offset = self.received, attempt = self.resumes, "resumed an interrupted update download");
        self.current = Some(opened);
        Ok(())
    }

    async fn next_chunk(&mut self) -> Option<Result<bytes::Bytes, TransportError>> {
        loop {
            let opened = self.current.as_mut()?;
            let idle = self.transport.inner.idle_timeout;
            let why = match tokio::time::timeout(idle, opened.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.received = self
                        .received
                        .saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
                    return Some(Ok(chunk));
                }
                Ok(None) => {
                    self.current = None;
                    return None;
                }
                Ok(Some(Err(e))) => format!("connection broke after {} bytes: {e}", self.received),
                Err(_) => format!(
                    "no data for {} s after {} bytes",
                    idle.as_secs(),
                    self.received
                ),
            };
            if let Err(failure) = self.resume(&why).await {
                self.current = None;
                return Some(Err(transport_error(
                    &self.url,
                    TransportErrorKind::Other,
                    failure,
                )));
            }
        }
    }
}

#[tough::async_trait]
impl Transport for HttpsTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        self.check_scheme(&url)?;
        let opened = self
            .open(&url, None)
            .await
            .map_err(|f| transport_error(&url, TransportErrorKind::Other, f))?;
        match opened.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(transport_error(
                    &url,
                    TransportErrorKind::FileNotFound,
                    FetchFailure::other(format!("HTTP {}", opened.status)),
                ))
            }
            other => {
                return Err(transport_error(
                    &url,
                    TransportErrorKind::Other,
                    FetchFailure::other(format!("HTTP {other}")),
                ))
            }
        }
        let state = BodyState {
            transport: self.clone(),
            validator: resume_validator(&opened.headers),
            url,
            current: Some(opened),
            received: 0,
            resumes: 0,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_chunk().await?;
            Some((item, state))
        });
        Ok(Box::pin(stream))
    }
}

/// The byte stream tough's `Transport::fetch` returns (tough 0.18 does not export the
/// alias).
pub type TransportStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, TransportError>> + Send>>;

/// The transport for the configured scheme.
#[derive(Debug, Clone)]
pub enum RepositoryTransport {
    /// `https://` (or loopback `http://` in tests).
    Https(HttpsTransport),
    /// `file://`.
    File(tough::FilesystemTransport),
}

#[tough::async_trait]
impl Transport for RepositoryTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match self {
            RepositoryTransport::Https(t) => t.fetch(url).await,
            RepositoryTransport::File(t) => t.fetch(url).await,
        }
    }
}

/// Metadata files as fetched, by path relative to the metadata base URL.
pub(crate) type Recorded = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

/// Wraps a transport and keeps the complete bytes of every file fetched under the
/// metadata base URL (up to `cap` bytes each). Targets are not recorded.
#[derive(Debug, Clone)]
pub struct RecordingTransport {
    inner: RepositoryTransport,
    metadata_base: Url,
    cap: usize,
    recorded: Recorded,
}

impl RecordingTransport {
    pub(crate) fn new(inner: RepositoryTransport, metadata_base: Url, cap: u64) -> Self {
        Self {
            inner,
            metadata_base,
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            recorded: Arc::default(),
        }
    }

    /// The files recorded so far (complete streams only).
    pub(crate) fn take_recorded(&self) -> BTreeMap<String, Vec<u8>> {
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[tough::async_trait]
impl Transport for RecordingTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let relative = url
            .as_str()
            .strip_prefix(self.metadata_base.as_str())
            .filter(|r| !r.is_empty() && !r.contains('/'))
            .map(str::to_owned);
        let stream = self.inner.fetch(url).await?;
        match relative {
            None => Ok(stream),
            Some(file) => Ok(Box::pin(Recorder {
                inner: stream,
                file,
                buf: Some(Vec::new()),
                cap: self.cap,
                sink: self.recorded.clone(),
            })),
        }
    }
}

struct Recorder {
    inner: TransportStream,
    file: String,
    buf: Option<Vec<u8>>,
    cap: usize,
    sink: Recorded,
}

impl Stream for Recorder {
    type Item = Result<bytes::Bytes, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let poll = this.inner.as_mut().poll_next(cx);
        match &poll {
            Poll::Ready(Some(Ok(chunk))) => {
                let over = this
                    .buf
                    .as_ref()
                    .is_some_and(|b| b.len().saturating_add(chunk.len()) > this.cap);
                if over {
                    this.buf = None;
                } else if let Some(buf) = this.buf.as_mut() {
                    buf.extend_from_slice(chunk);
                }
            }
            Poll::Ready(Some(Err(_))) => this.buf = None,
            Poll::Ready(None) => {
                if let Some(buf) = this.buf.take() {
                    this.sink
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(std::mem::take(&mut this.file), buf);
                }
            }
            Poll::Pending => {}
        }
        poll
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap (house rule).
mod tests {
    use super::*;

    #[test]
    fn resumption_needs_ranges_and_a_strong_validator() {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"abc\""));
        assert!(resume_validator(&h).is_none(), "no Accept-Ranges");
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        assert_eq!(resume_validator(&h).unwrap(), "\"abc\"");
        h.insert(ETAG, HeaderValue::from_static("W/\"abc\""));
        assert!(resume_validator(&h).is_none(), "weak ETag");
        h.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Mon, 23 Nov 2026 10:00:00 GMT"),
        );
        assert!(resume_validator(&h).is_some());
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("none"));
        assert!(resume_validator(&h).is_none());
    }

    #[test]
    fn content_range_start_is_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range_start(&h), None);
        h.insert(CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/200"));
        assert_eq!(content_range_start(&h), Some(100));
        h.insert(CONTENT_RANGE, HeaderValue::from_static("items 1-2/3"));
        assert_eq!(content_range_start(&h), None);
    }

    #[tokio::test]
    async fn plain_http_is_refused_unless_loopback_and_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = wardgate_tests::certs::TestPki::generate("scheme").unwrap();
        let mut config = UpdatesTrustConfig::new(
            "https://u.example/m",
            "https://u.example/t",
            dir.path().join("root.json"),
        );
        config.ca_file = Some(ca.ca_file().to_owned());
        let t = HttpsTransport::new(&config, 0).unwrap();
        for url in [
            "http://127.0.0.1:1/x",
            "http://u.example/x",
            "ftp://u.example/x",
        ] {
            let err = t.fetch(Url::parse(url).unwrap()).await.err().unwrap();
            assert_eq!(
                err.kind(),
                TransportErrorKind::UnsupportedUrlScheme,
                "{url}"
            );
        }
        config.allow_loopback_http = true;
        let t = HttpsTransport::new(&config, 0).unwrap();
        let err = t
            .fetch(Url::parse("http://u.example/x").unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), TransportErrorKind::UnsupportedUrlScheme);
        // Loopback is allowed now: the failure is the connection, not the scheme.
        let err = t
            .fetch(Url::parse("http://127.0.0.1:1/x").unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), TransportErrorKind::Other);
    }
}
