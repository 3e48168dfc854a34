//! Providers over HTTPS: the default upstream client (hyper-util over rustls, `upstream::direct`)
//! verifies the provider's certificate against the platform's trust store (`SSL_CERT_FILE`
//! here), negotiates HTTP/2 by ALPN, and sends the provider key and nothing of the client's.

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::common::{Gateway, PROVIDER_KEY, post_chat, request_id};

/// What the TLS provider saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: hyper::Version,
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// A certificate authority's PEM, and a `localhost` server configuration it issued.
fn authority() -> (String, rustls::ServerConfig) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_cert.pem(), config)
}

/// Starts an OpenAI-shaped provider over TLS on a free loopback port; returns its port and
/// what it saw.
async fn tls_provider(config: rustls::ServerConfig) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let log = log.clone();
            tokio::spawn(async move {
                // A refused handshake (an untrusting client) ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let version = request.version();
                        let path = request.uri().path().to_string();
                        let authorization = request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let bytes = request.into_body().collect().await?.to_bytes();
                        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        let model = body["model"].clone();
                        log.lock().unwrap().push(Seen {
                            version,
                            path,
                            authorization,
                            body,
                        });
                        let answer = json!({
                            "id": "chatcmpl-tls",
                            "object": "chat.completion",
                            "created": 1,
                            "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "over tls"}}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
                        });
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, seen)
}

fn policy(port: u16) -> String {
    format!(
        r#"
[providers.secure]
family = "openai"
base_url = "https://localhost:{port}/v1"
credential = {{ env = "TG_TEST_PROVIDER_KEY" }}
timeout_ms = 10000

[models.chat]
provider = "secure"
upstream_model = "upstream-tls-v1"
pricing = {{ input_per_mtok = 2.5, output_per_mtok = 10.0 }}
"#
    )
}

/// Starts the gateway on [`policy`] trusting only `ca_pem` (`SSL_CERT_FILE`); returns it, a
/// key's secret, and the directory holding the PEM (kept as long as the gateway runs).
fn gateway_trusting(port: u16, ca_pem: &str) -> (Gateway, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).expect("write ca");
    let gw = Gateway::start_env(
        &policy(port),
        &[],
        &[],
        &[("SSL_CERT_FILE", ca_file.to_str().expect("utf-8 path"))],
    );
    let (_, secret) = gw.create_key("*");
    (gw, secret, dir)
}

#[tokio::test]
async fn a_provider_over_tls_is_verified_and_spoken_to_over_http2() {
    let (ca_pem, config) = authority();
    let (port, seen) = tls_provider(config).await;
    let (gw, secret, _dir) = gateway_trusting(port, &ca_pem);
    for round in 0..3 {
        let response = post_chat(&gw, &secret, "chat").await;
        assert_eq!(response.status(), 200, "round {round}");
        let id = request_id(&response);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "over tls");
        let row = gw.row_for(&id).await;
        assert_eq!(row["input_tokens"], 7);
        assert_eq!(row["output_tokens"], 3);
        assert_eq!(row["provider"], "secure");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.version, hyper::Version::HTTP_2, "ALPN chose HTTP/2");
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
        assert_eq!(s.body["model"], "upstream-tls-v1");
    }
}

#[tokio::test]
async fn a_provider_whose_certificate_is_not_trusted_is_never_sent_the_request() {
    let (_, config) = authority();
    let (port, seen) = tls_provider(config).await;
    // Trust another authority only.
    let (other_ca, _) = authority();
    let (gw, secret, _dir) = gateway_trusting(port, &other_ca);
    let response = post_chat(&gw, &secret, "chat").await;
    assert_eq!(response.status(), 502);
    let id = request_id(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error");
    let row = gw.row_for(&id).await;
    assert_eq!(row["error_code"], "upstream_error");
    assert!(seen.lock().unwrap().is_empty(), "no request got through");
}
