//! The HTTP port: `/metrics` (Prometheus text), `/live` (the process runs)
//! and `/ready` (its dependencies answer and its topics exist).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Answers whether the service can do its work now; `Err` says why not.
pub type ReadinessCheck = Arc<
    dyn Fn() -> Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

#[derive(Clone)]
struct AppState {
    registry: Registry,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
    /// Said by /ready while it holds (e.g. auth is off).
    warning: Option<&'static str>,
}

/// Binds the HTTP port (use port 0 in tests and read the returned address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// What the HTTP port serves besides metrics.
pub struct HttpPort {
    pub listener: tokio::net::TcpListener,
    /// TLS with the gRPC port's certificate (`None`: plaintext).
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    pub registry: Registry,
    pub ready: ReadinessCheck,
    pub warning: Option<&'static str>,
}

/// Serves until `shutdown` is cancelled. `/ready` answers 503 as soon as
/// shutdown starts, so load balancers stop sending work before the drain.
pub async fn serve(port: HttpPort, shutdown: CancellationToken) -> std::io::Result<()> {
    let state = AppState {
        registry: port.registry,
        ready: port.ready,
        shutdown: shutdown.clone(),
        warning: port.warning,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready_handler))
        .with_state(state);
    let stop = async move { shutdown.cancelled().await };
    match port.tls {
        None => {
            axum::serve(port.listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => {
            let local = port.listener.local_addr()?;
            let accepted = crate::tls::incoming(port.listener, move || tls.http_config());
            axum::serve(TlsListener { accepted, local }, app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}

/// The HTTP port's TLS connections, handshakes done.
struct TlsListener {
    accepted: tokio::sync::mpsc::Receiver<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.accepted.recv().await {
                Some(stream) => match stream.get_ref().0.peer_addr() {
                    Ok(peer) => return (stream, peer),
                    Err(_) => continue,
                },
                // The acceptor ends only when this listener is dropped.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    let warning = state
        .warning
        .map(|w| format!("warning: {w}\n"))
        .unwrap_or_default();
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, format!("ready\n{warning}")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
