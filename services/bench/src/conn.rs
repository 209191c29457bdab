//! How the bench reaches a deployment: gRPC (over TLS and with an API key
//! when the deployment asks for them), Kafka (its TLS and SASL options) and
//! PostgreSQL (libpq's sslmode), as the services themselves do.

use anyhow::Context as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tributary_platform::tls::ClientTlsArgs;

/// A gRPC connection whose calls carry the API key, if any.
pub type Connection = InterceptedService<Channel, WithKey>;

/// Adds `authorization: Bearer <key>` to every call (nothing without a key).
#[derive(Clone, Default)]
pub struct WithKey(Option<MetadataValue<Ascii>>);

impl WithKey {
    pub fn new(key: Option<&str>) -> anyhow::Result<Self> {
        key.map(|k| {
            MetadataValue::try_from(format!("Bearer {}", k.trim()))
                .context("the API key is not a valid header value")
        })
        .transpose()
        .map(Self)
    }
}

impl Interceptor for WithKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("authorization", key.clone());
        }
        Ok(request)
    }
}

/// Connects to `url` (`http://HOST:PORT`; the scheme is chosen by `tls`).
pub async fn connect(url: &str, tls: &ClientTlsArgs, key: &WithKey) -> anyhow::Result<Connection> {
    let addr = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let channel = tls
        .endpoint(addr)
        .with_context(|| format!("bad address {url}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(InterceptedService::new(channel, key.clone()))
}

/// A plaintext connection without a key (the bench's own services).
pub async fn plain(url: &str) -> anyhow::Result<Connection> {
    connect(url, &ClientTlsArgs::default(), &WithKey::default()).await
}
