//! The life of a Tributary service's ports, the same for all four: the HTTP
//! port, gRPC health kept in step with readiness, RED metrics initialised for
//! every method, the gRPC server with health and reflection, and the drain on
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::ReadinessCheck;
use crate::metrics::GrpcServerMetrics;

/// Binds a service's gRPC and HTTP ports (port 0 picks a free one), naming
/// the port that could not be bound.
pub async fn bind(
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc_listener = TcpListener::bind(grpc)
        .await
        .with_context(|| format!("cannot bind the gRPC port {grpc}"))?;
    let http_listener = crate::http::bind(http)
        .await
        .with_context(|| format!("cannot bind the HTTP port {http}"))?;
    Ok((grpc_listener, http_listener))
}

/// TLS, auth and deadlines: how a service's edge is guarded.
pub struct Security {
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub auth: crate::auth::Auth,
    /// The cap on a call's deadline (`None`: only the client's).
    pub max_call_duration: Option<Duration>,
    /// Origins whose pages may call from a browser (off unless the service
    /// takes `--cors-allow-origin`: see [`Security::with_cors`]).
    pub cors: crate::cors::Cors,
    /// The bounds on calls and streams at once.
    pub admission: crate::admission::Admission,
}

/// The edge settings every service takes (flattened into its config).
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    #[command(flatten)]
    pub admission: crate::admission::AdmissionArgs,
}

impl Security {
    /// Loads the certificates and sets up the key checks. `services`: the
    /// gRPC services of this server; `pool`: the key store.
    pub fn build(
        args: &EdgeArgs,
        pool: tributary_store::Pool,
        registry: &Registry,
        services: &[&str],
        max_call_duration: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let tls = crate::tls::ServerTls::load(&args.tls).context("invalid TLS settings")?;
        let auth = crate::auth::Auth::new(&args.auth, pool, registry, services)?;
        Ok(Self {
            tls,
            auth,
            max_call_duration,
            cors: crate::cors::Cors::off(),
            admission: crate::admission::Admission::new(&args.admission, services),
        })
    }

    /// Lets the origins of `--cors-allow-origin` call from a browser.
    #[must_use]
    pub fn with_cors(mut self, args: &crate::cors::CorsArgs) -> Self {
        self.cors = crate::cors::Cors::new(args);
        self
    }
}

pub struct Ports {
    /// For the log line.
    pub name: &'static str,
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub registry: Registry,
    /// Names gRPC health reports; tributary services among them are also
    /// advertised by reflection and get RED series for each method.
    pub health_names: &'static [&'static str],
    pub ready: ReadinessCheck,
    /// How long in-flight calls may run after shutdown starts.
    pub grace: Duration,
    pub security: Security,
}

/// Serves until `token` is cancelled, then drains (up to `grace`) and marks
/// health NOT_SERVING. `add` adds the service's own gRPC servers.
pub async fn run(
    ports: Ports,
    token: CancellationToken,
    add: impl FnOnce(&mut tonic::service::RoutesBuilder),
) -> anyhow::Result<()> {
    let grpc_addr = ports.grpc.local_addr()?;
    let http_addr = ports.http.local_addr()?;
    let standard = crate::grpc::standard(ports.health_names).await?;
    let metrics = GrpcServerMetrics::register(&ports.registry)?;
    let mut known_methods = crate::grpc::standard_methods();
    for name in ports.health_names {
        for (service, method) in crate::grpc::methods_of(name) {
            metrics.init_method(&service, &method);
            known_methods.push((service, method));
        }
    }
    let security = ports.security;
    let http_task = tokio::spawn(crate::http::serve(
        crate::http::HttpPort {
            listener: ports.http,
            tls: security.tls.clone().filter(|t| t.http),
            registry: ports.registry.clone(),
            ready: ports.ready.clone(),
            warning: security.auth.warning(),
        },
        token.clone(),
    ));
    if let Some(tls) = &security.tls {
        tokio::spawn(tls.clone().watch(token.clone()));
    }
    let auth_task = tokio::spawn(security.auth.clone().follow(token.clone()));
    let health_task = tokio::spawn(crate::grpc::watch_health(
        standard.health.clone(),
        ports.health_names,
        ports.ready,
        token.clone(),
    ));
    let mut routes = standard.routes;
    add(&mut routes);
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr,
        tls = security.tls.is_some(),
        mutual_tls = security.tls.as_ref().is_some_and(|t| t.mutual()),
        auth = security.auth.enabled(),
        cors = security.cors.enabled(),
        "{} serving",
        ports.name
    );
    let served = crate::grpc::serve(
        ports.grpc,
        routes.routes(),
        crate::grpc::Edge {
            cors: security.cors,
            admission: security.admission,
            metrics,
            auth: security.auth,
            max_call_duration: security.max_call_duration,
            tls: security.tls,
            known_methods,
        },
        token.clone(),
        ports.grace,
    )
    .await
    .context("gRPC server failed");
    token.cancel();
    // It writes the keys' last-used times once more on its way out.
    let _ = tokio::time::timeout(Duration::from_secs(2), auth_task).await;
    crate::grpc::set_health(&standard.health, ports.health_names, false).await;
    health_task.abort();
    if let Ok(Err(e)) = http_task.await {
        tracing::warn!(error = %e, "HTTP port stopped with an error");
    }
    served
}
