//! TLS to PostgreSQL with libpq's `sslmode` semantics.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and its
//! parser refuses `verify-ca` and `verify-full`. So the `ssl*` settings are
//! taken out of the connection string here and honoured as libpq documents
//! them (<https://www.postgresql.org/docs/current/libpq-ssl.html>):
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | no |
//! | `prefer` (the default) | when the server offers it | no |
//! | `require` | always | no; as `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | always | chains to `sslrootcert` |
//! | `verify-full` | always | chains to `sslrootcert` and names the host |
//!
//! `sslrootcert` is a PEM file, or `system` for the system's CAs; without it
//! the verifying modes read `~/.postgresql/root.crt` as libpq does.
//! `sslcert` + `sslkey` present a client certificate. `allow` (plaintext
//! first) has no equivalent in tokio-postgres and is refused.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, TlsConfigError> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(TlsConfigError::Invalid(
                    "sslmode=allow (plaintext first) is not supported: use disable, prefer, \
                     require, verify-ca or verify-full"
                        .into(),
                ));
            }
            other => {
                return Err(TlsConfigError::Invalid(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {path}: {why}")]
    File {
        what: &'static str,
        path: String,
        why: String,
    },
}

/// The `ssl*` settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// A connection string split into what tokio-postgres parses and the `ssl*`
/// settings it cannot.
pub fn split(url: &str) -> Result<(String, SslSettings), TlsConfigError> {
    let mut settings = SslSettings {
        mode: SslMode::Prefer,
        root_cert: None,
        cert: None,
        key: None,
    };
    let mut take = |key: &str, value: String| -> Result<bool, TlsConfigError> {
        match key {
            "sslmode" => settings.mode = SslMode::parse(&value)?,
            "sslrootcert" => settings.root_cert = Some(value),
            "sslcert" => settings.cert = Some(value),
            "sslkey" => settings.key = Some(value),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&percent_decode(k)?, percent_decode(v)?)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (raw, key, value) in key_values(url)? {
            if !take(&key, value)? {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok((rest, settings))
}

fn percent_decode(s: &str) -> Result<String, TlsConfigError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(TlsConfigError::Invalid(
                    "database URL: a % not followed by two hex digits".into(),
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        TlsConfigError::Invalid("database URL: percent-decodes to invalid UTF-8".into())
    })
}

/// `key=value` pairs of a libpq key/value string, each with its raw text
/// (values may be single-quoted, with `\'` and `\\` escapes).
fn key_values(s: &str) -> Result<Vec<(String, String, String)>, TlsConfigError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(TlsConfigError::Invalid(format!(
                "database connection string: {key:?} has no value"
            )));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => break,
                    },
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(TlsConfigError::Invalid(
                            "database connection string: unterminated quote".into(),
                        ));
                    }
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        out.push((s[start..end].trim_end().to_owned(), key, value));
    }
    Ok(out)
}

/// How to reach PostgreSQL: tokio-postgres' settings and the TLS connector
/// that implements the `sslmode`. Cheap to clone.
#[derive(Clone)]
pub struct Connect {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl std::fmt::Debug for Connect {
    // tokio_postgres::Config's Debug redacts the password; the connector has
    // nothing worth printing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("config", &self.config)
            .field("sslmode", &self.mode)
            .finish()
    }
}

impl Connect {
    /// Parses a connection string (URL or key/value) with its `ssl*`
    /// settings and loads the certificates they name.
    pub fn from_url(url: &str) -> Result<Self, crate::StoreError> {
        let (rest, ssl) = split(url).map_err(crate::StoreError::Tls)?;
        let mut config =
            tokio_postgres::Config::from_str(&rest).map_err(crate::StoreError::Config)?;
        config.ssl_mode(match ssl.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(&ssl).map_err(crate::StoreError::Tls)?);
        Ok(Self {
            config,
            tls,
            mode: ssl.mode,
        })
    }

    /// One connection outside the pool (LISTEN, tests). The caller drives
    /// the returned connection.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ssl: &SslSettings) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Invalid(format!("TLS: {e}")))?;
    let verifying = matches!(ssl.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (ssl.mode == SslMode::Require && ssl.root_cert.is_some());
    let verifier: Arc<dyn ServerCertVerifier> = if verifying {
        let roots = Arc::new(root_store(ssl)?);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsConfigError::Invalid(format!("sslrootcert: {e}")))?;
        if ssl.mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly(webpki))
        }
    } else {
        Arc::new(Unverified(provider))
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&ssl.cert, &ssl.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs("sslcert", Path::new(cert))?;
            let key = read_key("sslkey", Path::new(key))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsConfigError::Invalid(format!("sslcert/sslkey: {e}")))
        }
        _ => Err(TlsConfigError::Invalid(
            "sslcert and sslkey go together".into(),
        )),
    }
}

fn root_store(ssl: &SslSettings) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let path = match ssl.root_cert.as_deref() {
        Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsConfigError::Invalid(
                    "sslrootcert=system: no system CA certificates found".into(),
                ));
            }
            return Ok(roots);
        }
        Some(path) => PathBuf::from(path),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".postgresql/root.crt"),
            None => {
                return Err(TlsConfigError::Invalid(format!(
                    "sslmode={} needs sslrootcert (a CA file, or \"system\")",
                    ssl.mode.as_str()
                )));
            }
        },
    };
    for cert in read_certs("sslrootcert", &path)? {
        roots.add(cert).map_err(|e| TlsConfigError::File {
            what: "sslrootcert",
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The certificates of a PEM file; an error names the file and the setting.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file_error = |why: String| TlsConfigError::File {
        what,
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let file_error = |why: String| TlsConfigError::File {
        what,
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_error(e.to_string()))
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead
/// to a trusted root; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name error means the
        // chain was good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, but any
/// certificate is taken (libpq does the same). The handshake's signatures
/// are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes(url: &str) -> (String, SslSettings) {
        split(url).unwrap()
    }

    #[test]
    fn takes_ssl_settings_out_of_urls() {
        let (rest, ssl) = modes(
            "postgres://u:p%40ss@db.example:5432/tributary?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.example:5432/tributary?application_name=x"
        );
        assert_eq!(ssl.mode, SslMode::VerifyFull);
        assert_eq!(ssl.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, ssl) = modes("postgresql://h/db?sslmode=require");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(ssl.mode, SslMode::Require);
        let (rest, ssl) = modes("postgres://h/db");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(ssl.mode, SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn takes_ssl_settings_out_of_key_values() {
        let (rest, ssl) = modes(
            "host=db port=5432 password='a b\\'c' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=t",
        );
        assert_eq!(rest, "host=db port=5432 password='a b\\'c' dbname=t");
        assert_eq!(ssl.mode, SslMode::VerifyCa);
        assert_eq!(ssl.root_cert.as_deref(), Some("/tmp/my ca.pem"));
        assert!(tokio_postgres::Config::from_str(&rest).is_ok());
    }

    #[test]
    fn refuses_what_cannot_be_honoured() {
        assert!(split("postgres://h/db?sslmode=allow").is_err());
        assert!(split("postgres://h/db?sslmode=verify").is_err());
        assert!(split("postgres://h/db?sslmode=%zz").is_err());
        assert!(split("host=h sslmode").is_err());
        let e = Connect::from_url(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .map(|_| ())
        .map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|m| m.contains("sslrootcert") && m.contains("/nonexistent/ca.pem")),
            "{e:?}"
        );
        assert!(Connect::from_url("postgres://h/db?sslmode=require").is_ok());
        assert!(Connect::from_url("postgres://h/db?sslmode=disable").is_ok());
    }
}
