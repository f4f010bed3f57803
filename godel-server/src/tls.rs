//! The certificate the server presents over TLS, replaced without a restart.
//!
//! rustls asks [`Certificate`] for the current certificate on every
//! handshake. [`Certificate::watch`] reads `tls.cert_file` and
//! `tls.key_file` again on `SIGHUP`, and when either file changes (checked
//! every [`WATCH_EVERY`] by modification time, size and inode, so that an
//! edit in place, a rename over the file and a swapped symlink all count).
//! A new pair that does not load (unreadable, not PEM, no certificate, a key
//! that does not fit the certificate) is refused: the old certificate stays
//! and the reason is logged. Connections already open keep the certificate
//! they began with.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often the files are checked for a change.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(10);

/// The certificate and key of `[tls]`, as last loaded.
#[derive(Debug)]
pub(crate) struct Certificate {
    files: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files looked like when last read.
    seen: Mutex<Option<Stamp>>,
}

/// What identifies a version of the two files.
type Stamp = [(SystemTime, u64, u64); 2];

impl Certificate {
    /// Loads the certificate and key: an error here fails the start.
    pub(crate) fn load(files: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = stamp(files);
        let key = read(files, &provider)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        }))
    }

    /// The acceptor for the listener: rustls with the ring provider, HTTP/1.1
    /// (which WebSockets need) announced over ALPN, the certificate from `self`.
    pub(crate) fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files again; on success new handshakes present what they
    /// hold, on failure the current certificate stays.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamp(&self.files);
        let key = read(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// Until `stop`: reloads on `SIGHUP` and when the files change. `SIGHUP`
    /// is caught from the call on (not from the first poll), so that a
    /// signal sent once the server listens never meets its default action.
    pub(crate) fn watch(self: Arc<Self>, stop: CancellationToken) -> impl Future<Output = ()> + Send {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the certificate reloads only when its files change");
                None
            }
        };
        self.follow(hangup, stop)
    }

    async fn follow(self: Arc<Self>, mut hangup: Option<tokio::signal::unix::Signal>, stop: CancellationToken) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_EVERY, WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                _ = tick.tick() => {
                    let now = stamp(&self.files);
                    if now.is_none() || now == *self.seen.lock().unwrap_or_else(PoisonError::into_inner) {
                        continue;
                    }
                    "the files changed"
                }
            };
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert_file = %self.files.cert_file.display(),
                    why,
                    "reloaded the TLS certificate"
                ),
                Err(e) => tracing::error!(
                    cert_file = %self.files.cert_file.display(),
                    why,
                    error = format!("{e:#}"),
                    "cannot reload the TLS certificate; still presenting the previous one"
                ),
            }
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// The certificate chain and key in `files`, checked to fit each other.
fn read(files: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let cert_path = files.cert_file.display();
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("invalid tls.cert_file: cannot read PEM certificates from {cert_path}"))?;
    if certs.is_empty() {
        anyhow::bail!("invalid tls.cert_file: {cert_path} holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).with_context(|| {
        format!("invalid tls.key_file: cannot read a PEM private key from {}", files.key_file.display())
    })?;
    CertifiedKey::from_der(certs, key, provider)
        .context("invalid tls.cert_file or tls.key_file: the key does not fit the certificate")
}

/// The files' modification times, sizes and inodes; `None` if one cannot be read.
fn stamp(files: &TlsConfig) -> Option<Stamp> {
    let one = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    };
    Some([one(&files.cert_file)?, one(&files.key_file)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (TlsConfig, Vec<u8>) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("a certificate");
        let files = TlsConfig { cert_file: dir.join("cert.pem"), key_file: dir.join("key.pem") };
        std::fs::write(&files.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&files.key_file, cert.key_pair.serialize_pem()).unwrap();
        (files, cert.cert.der().to_vec())
    }

    fn presented(certificate: &Certificate) -> Vec<u8> {
        certificate.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_bad_new_pair_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (files, first) = write_pair(dir.path(), "first.test");
        let certificate = Certificate::load(&files).unwrap();
        assert_eq!(presented(&certificate), first);

        std::fs::write(&files.cert_file, "not a certificate").unwrap();
        let error = certificate.reload().unwrap_err();
        assert!(format!("{error:#}").contains("tls.cert_file"), "{error:#}");
        assert_eq!(presented(&certificate), first);

        // A certificate with another pair's key does not fit.
        let other = tempfile::tempdir().unwrap();
        let (other_files, _) = write_pair(other.path(), "other.test");
        std::fs::copy(&other_files.cert_file, &files.cert_file).unwrap();
        assert!(certificate.reload().is_err());
        assert_eq!(presented(&certificate), first);

        let (_, second) = write_pair(dir.path(), "second.test");
        certificate.reload().unwrap();
        assert_eq!(presented(&certificate), second);
    }

    #[test]
    fn a_replaced_file_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = write_pair(dir.path(), "first.test");
        let before = stamp(&files).expect("both files are there");
        let fresh = dir.path().join("fresh.pem");
        std::fs::copy(&files.cert_file, &fresh).unwrap();
        std::fs::rename(&fresh, &files.cert_file).unwrap();
        assert_ne!(stamp(&files), Some(before), "same bytes, new inode");
        std::fs::remove_file(&files.key_file).unwrap();
        assert_eq!(stamp(&files), None);
    }
}
