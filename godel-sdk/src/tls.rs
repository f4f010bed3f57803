//! TLS for the client, the event stream and the worker: rustls with the
//! ring provider, no OpenSSL. A server's certificate is checked against the
//! web PKI roots, or, given a CA file, against that file's certificates only
//! (a private CA or a self-signed server), as `curl --cacert` does.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// How to check the server's certificate on `https://` and `wss://`.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TlsOptions {
    /// A PEM file of CA certificates to trust instead of the built-in web PKI
    /// roots (the CLI's `--ca-file` or `GODEL_CA_FILE`).
    pub ca_file: Option<PathBuf>,
}

/// [`TlsOptions`] loaded: the certificates to trust, and the rustls
/// configuration WebSockets connect with.
#[derive(Clone, Debug)]
pub(crate) struct Tls {
    /// The CA file's certificates; `None` means the web PKI roots.
    ca: Option<Vec<CertificateDer<'static>>>,
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Reads the CA file, if any.
    pub(crate) fn load(options: &TlsOptions) -> Result<Self> {
        let ca = options.ca_file.as_ref().map(|path| read_ca(path)).transpose()?;
        let mut roots = rustls::RootCertStore::empty();
        match &ca {
            Some(certs) => {
                for cert in certs {
                    roots.add(cert.clone()).map_err(|e| Error::CaFile {
                        path: options.ca_file.clone().unwrap_or_default(),
                        message: format!("not a usable CA certificate ({e})"),
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::CaFile { path: PathBuf::new(), message: e.to_string() })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { ca, config: Arc::new(config) })
    }

    /// The HTTP client's builder, trusting the CA file's certificates alone
    /// when there is one.
    pub(crate) fn http(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        if let Some(certs) = &self.ca {
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                let cert = reqwest::Certificate::from_der(cert.as_ref())
                    .map_err(|e| Error::CaFile { path: PathBuf::new(), message: e.to_string() })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder.use_rustls_tls())
    }

    /// What WebSocket connections to `wss://` use.
    pub(crate) fn connector(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.config.clone())
    }
}

impl Default for Tls {
    /// The web PKI roots.
    fn default() -> Self {
        Self::load(&TlsOptions::default()).expect("the built-in roots load")
    }
}

fn read_ca(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>> {
    let error = |message: String| Error::CaFile { path: path.clone(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| error(e.to_string()))?;
    if certs.is_empty() {
        return Err(error("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}
