//! TLS on the service ports, and for the gRPC clients among the services.
//!
//! Servers: rustls with certificates read from files and re-read every 2 s,
//! so a certificate replaced on disk (cert-manager rotates Secrets in place)
//! is served to new connections within seconds, without a restart, while
//! connections opened before keep theirs. tonic's `ServerTlsConfig` cannot
//! reload, so the handshake happens here and tonic serves the TLS streams.
//! A replacement that does not load (a half-written pair) is refused with a
//! warning and the previous certificate stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate files are re-read.
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} {path}: {why}")]
    File {
        setting: &'static str,
        path: String,
        why: String,
    },
    #[error("{0}")]
    Config(String),
}

/// TLS on a service's ports.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain for the gRPC port; with --tls-key it serves TLS
    /// only. Re-read every 2 s: a replaced file is served to new connections
    /// without a restart.
    #[arg(long, env = "TRIBUTARY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TRIBUTARY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: PEM CA certificate(s) that client certificates must chain
    /// to; a client without such a certificate is refused.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve the HTTP port (/metrics, /live, /ready) with the same
    /// certificate too (no client certificate asked); default plaintext.
    #[arg(long, env = "TRIBUTARY_HTTP_TLS")]
    pub http_tls: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(setting: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        setting,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certs(
    setting: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, e))?;
    if certs.is_empty() {
        return Err(file_error(setting, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(setting, path, e))
}

/// The files' bytes: what a reload compares.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

struct Loaded {
    files: Files,
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The server TLS configurations, kept current with the files.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    pub http: bool,
    loaded: RwLock<Loaded>,
}

impl ServerTls {
    /// `None` when TLS is not configured. Errors name the file and why.
    pub fn load(args: &ServerTlsArgs) -> Result<Option<Arc<Self>>, TlsError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            if args.http_tls {
                return Err(TlsError::Config(
                    "--http-tls needs --tls-cert and --tls-key".into(),
                ));
            }
            return Ok(None);
        };
        let files = Self::read_files(cert, key, args.tls_client_ca.as_deref())?;
        let loaded = Self::build(cert, key, args.tls_client_ca.as_deref(), files)?;
        Ok(Some(Arc::new(Self {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            http: args.http_tls,
            loaded: RwLock::new(loaded),
        })))
    }

    fn read_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Files, TlsError> {
        Ok(Files {
            cert: read("--tls-cert", cert)?,
            key: read("--tls-key", key)?,
            client_ca: client_ca.map(|p| read("--tls-client-ca", p)).transpose()?,
        })
    }

    fn build(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        files: Files,
    ) -> Result<Loaded, TlsError> {
        let chain = certs("--tls-cert", cert, &files.cert)?;
        let private = PrivateKeyDer::from_pem_slice(&files.key)
            .map_err(|e| file_error("--tls-key", key, e))?;
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let grpc_builder = match (client_ca, &files.client_ca) {
            (Some(path), Some(pem)) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("--tls-client-ca", path, pem)? {
                    roots
                        .add(c)
                        .map_err(|e| file_error("--tls-client-ca", path, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| file_error("--tls-client-ca", path, e))?;
                builder()?.with_client_cert_verifier(verifier)
            }
            _ => builder()?.with_no_client_auth(),
        };
        let mut grpc = grpc_builder
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| file_error("--tls-cert/--tls-key", cert, e))?;
        // h2 for gRPC; http/1.1 for gRPC-Web from browsers.
        grpc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http = builder()?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| file_error("--tls-cert/--tls-key", cert, e))?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            files,
            grpc: Arc::new(grpc),
            http: Arc::new(http),
        })
    }

    /// Re-reads the files; rebuilds when they changed. `Ok(true)`: reloaded.
    fn reload(&self) -> Result<bool, TlsError> {
        let files = Self::read_files(&self.cert, &self.key, self.client_ca.as_deref())?;
        if self.read_loaded().files == files {
            return Ok(false);
        }
        let loaded = Self::build(&self.cert, &self.key, self.client_ca.as_deref(), files)?;
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        Ok(true)
    }

    fn read_loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    pub fn grpc_config(&self) -> Arc<ServerConfig> {
        self.read_loaded().grpc.clone()
    }

    pub fn http_config(&self) -> Arc<ServerConfig> {
        self.read_loaded().http.clone()
    }

    /// Re-reads the files every 2 s until `token` is cancelled.
    pub async fn watch(self: Arc<Self>, token: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            match self.reload() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Ok(false) => failing = false,
                Err(e) => {
                    // Once per failing stretch: a rotation may take two writes.
                    if !failing {
                        tracing::warn!(error = %e, "cannot load the replaced TLS files; serving the previous certificate");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// Accepts TCP connections on `listener` and hands over those that complete
/// a TLS handshake with the configuration `config` gives at that moment.
/// Handshakes run concurrently (a slow client holds up no other); failed
/// ones (plaintext on a TLS port, an unknown client certificate) are logged
/// at debug and dropped. Ends when the returned receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// TLS for a gRPC client among the services (admin's health checks, the
/// bench, tributary-ctl).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) that verify the TLS gRPC servers this program
    /// calls; when set, it calls them over TLS.
    #[arg(long, env = "TRIBUTARY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate to present to servers that require mutual TLS.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "TRIBUTARY_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// An endpoint for `addr` (HOST:PORT): https with these settings when a
    /// CA is set, else plaintext http.
    pub fn endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, TlsError> {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| TlsError::Config(format!("bad address {addr:?}: {e}")))?;
        let Some(ca) = &self.tls_ca else {
            return Ok(endpoint);
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read("--tls-ca", ca)?),
        );
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("--tls-client-cert", cert)?,
                read("--tls-client-key", key)?,
            ));
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| TlsError::Config(format!("TLS client settings: {e}")))
    }
}
