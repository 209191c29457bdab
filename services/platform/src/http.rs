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
}

/// Binds the HTTP port (use port 0 in tests and read the returned address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown` is cancelled. `/ready` answers 503 as soon as
/// shutdown starts, so load balancers stop sending work before the drain.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: ReadinessCheck,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        registry,
        ready,
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
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
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
