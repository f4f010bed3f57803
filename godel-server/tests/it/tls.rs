//! TLS certificates are replaced without a restart: after the files change
//! and the server gets `SIGHUP`, a new connection sees the new certificate.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::TestServer;

/// Writes a self-signed certificate for `localhost` and its key to
/// `cert.pem` and `key.pem` in `dir`; returns the certificate's PEM.
fn certificate(dir: &Path) -> String {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate");
    // Written aside and renamed over, as certificate tools do.
    std::fs::write(dir.join("cert.new"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.new"), certified.key_pair.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.new"), dir.join("cert.pem")).unwrap();
    certified.cert.pem()
}

/// Whether a new connection trusting only `pem` completes a request.
async fn trusted(url: &str, pem: &str) -> bool {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    client.get(url).send().await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_new_certificate_is_served_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate(dir.path());
    let toml = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    let server = TestServer::start(&toml).await;
    let url = server.url("/health/live").replacen("http://127.0.0.1", "https://localhost", 1);
    assert!(trusted(&url, &first).await, "the first certificate is served");

    let second = certificate(dir.path());
    nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !trusted(&url, &second).await {
        assert!(Instant::now() < deadline, "the new certificate is not served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!trusted(&url, &first).await, "new connections no longer see the old one");
    server.stop().await;
}
