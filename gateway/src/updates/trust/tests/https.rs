//! The HTTPS transport against a real TLS server on 127.0.0.1 serving a generated
//! repository: mTLS, a server from another CA, and resumption of a broken download.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use wardgate_tests::certs::{TestPki, Validity};
use wardgate_tests::tuf_repo::{Publish, Repo};

use super::{repo_with_image, Gateway, IMAGE, NAME};
use crate::updates::trust::{AttackClass, TrustError, UpdatesTrustConfig};

struct Served {
    root: PathBuf,
    /// Break the first full response of a target after half its bytes.
    break_first_target: AtomicBool,
    range_requests: AtomicUsize,
}

async fn serve_file(State(st): State<Arc<Served>>, uri: Uri, headers: HeaderMap) -> Response {
    let relative = uri.path().trim_start_matches('/');
    let Ok(bytes) = std::fs::read(st.root.join(relative)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!("\"{}\"", hex::encode(sha2::Sha256::digest(&bytes)));
    let range_start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    if let (Some(start), true) = (range_start, if_range_ok) {
        st.range_requests.fetch_add(1, Ordering::SeqCst);
        let len = bytes.len();
        return (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{len}", len - 1),
                ),
                (header::ETAG, etag),
                (header::ACCEPT_RANGES, "bytes".to_owned()),
            ],
            bytes[start..].to_vec(),
        )
            .into_response();
    }
    let common = [
        (header::ETAG, etag),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::CONTENT_LENGTH, bytes.len().to_string()),
    ];
    if relative.starts_with("targets/") && st.break_first_target.swap(false, Ordering::SeqCst) {
        use futures_util::StreamExt;
        let half = bytes[..bytes.len() / 2].to_vec();
        // Let the head and the first half reach the client before the cut.
        let cut = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
            futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                Err(std::io::Error::other("connection cut by the test"))
            }),
        );
        return (common, Body::from_stream(cut)).into_response();
    }
    (common, bytes).into_response()
}

/// Serves `root` over HTTPS on 127.0.0.1 with `pki`'s server certificate; requires a
/// client certificate from `pki` when `mtls`.
async fn start_server(root: PathBuf, pki: &TestPki, mtls: bool) -> (u16, Arc<Served>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server().cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.server().key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut tls = builder.with_single_cert(chain, key).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let served = Arc::new(Served {
        root,
        break_first_target: AtomicBool::new(false),
        range_requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .fallback(serve_file)
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (port, served)
}

fn https_config(repo: &Repo, port: u16, ca: &TestPki) -> UpdatesTrustConfig {
    let mut config = UpdatesTrustConfig::new(
        &format!("https://127.0.0.1:{port}/metadata/"),
        &format!("https://127.0.0.1:{port}/targets/"),
        repo.pinned_root().to_path_buf(),
    );
    config.ca_file = Some(ca.ca_file().to_owned());
    config
}

#[tokio::test]
async fn a_good_update_over_mutual_tls() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let pki = TestPki::generate("updates").unwrap();
    let (port, _served) = start_server(repo.dir().to_owned(), &pki, true).await;
    let client = pki.client("gateway", "gw-0001", Validity::Current).unwrap();
    let mut config = https_config(&repo, port, &pki);
    config.client_cert = Some(client.cert);
    config.client_key = Some(client.key);

    let gw = Gateway::new();
    let staged = gw.update(&config, NAME).await.unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), IMAGE);

    // Without the client certificate the server refuses the connection.
    let mut anonymous = config.clone();
    anonymous.client_cert = None;
    anonymous.client_key = None;
    let other = Gateway::new();
    let err = other.update(&anonymous, NAME).await.unwrap_err();
    assert!(
        matches!(
            &err,
            TrustError::Transport { .. } | TrustError::UntrustedServer { .. }
        ),
        "{err}"
    );
    other.assert_nothing_staged();
}

#[tokio::test]
async fn a_server_not_from_the_configured_ca_is_refused() {
    let repo = repo_with_image().await;
    repo.publish(Publish::all(1)).await;
    let impostor = TestPki::generate("impostor").unwrap();
    let ours = TestPki::generate("updates").unwrap();
    let (port, _served) = start_server(repo.dir().to_owned(), &impostor, false).await;

    let gw = Gateway::new();
    let err = gw
        .update(&https_config(&repo, port, &ours), NAME)
        .await
        .unwrap_err();
    assert!(matches!(&err, TrustError::UntrustedServer { .. }), "{err}");
    assert_eq!(err.attack_class(), Some(AttackClass::UntrustedServer));
    gw.assert_nothing_staged();
    // Nothing was trusted either: no floor was written.
    assert!(!gw
        .data_dir()
        .join(crate::updates::trust::DATASTORE_SUBDIR)
        .join("wardgate-floor.json")
        .exists());
}

#[tokio::test]
async fn an_interrupted_target_download_resumes_with_a_range_request() {
    let mut repo = Repo::new(1, 1).await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    repo.add_target("big/image.bin", &big, None);
    repo.publish(Publish::all(1)).await;
    let pki = TestPki::generate("updates").unwrap();
    let (port, served) = start_server(repo.dir().to_owned(), &pki, false).await;
    served.break_first_target.store(true, Ordering::SeqCst);

    let gw = Gateway::new();
    let staged = gw
        .update(&https_config(&repo, port, &pki), "big/image.bin")
        .await
        .unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), big);
    assert_eq!(served.range_requests.load(Ordering::SeqCst), 1);

    // With resumption disabled the same break fails the download, staging nothing.
    served.break_first_target.store(true, Ordering::SeqCst);
    let mut config = https_config(&repo, port, &pki);
    config.max_resumes = 0;
    let other = Gateway::new();
    let err = other.update(&config, "big/image.bin").await.unwrap_err();
    assert!(matches!(&err, TrustError::Transport { .. }), "{err}");
    other.assert_nothing_staged();
}
