//! Every call ends by its deadline: the client's `grpc-timeout`, capped by
//! the server's maximum. When it passes, the handler's future is dropped,
//! which cancels its PostgreSQL statement (see `tributary_store::Pool::run`),
//! and the caller gets DEADLINE_EXCEEDED. A streaming call is bounded until
//! its response starts; its stream then lives as long as the client wants.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tower::{Layer, Service};

/// `grpc-timeout` as the gRPC spec writes it: up to 8 digits and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

tokio::task_local! {
    /// The deadline of the call being handled, set by [`DeadlineLayer`].
    static DEADLINE: tokio::time::Instant;
}

/// How long before its deadline a call that waits on a dependency answers
/// (at most a tenth of the time left), so the client gets the server's
/// reason (UNAVAILABLE: the broker did not answer) rather than its own
/// timeout.
const MARGIN: Duration = Duration::from_millis(250);

/// When the call being handled (in this task) should have its answer: its
/// deadline less a margin; `None` without a deadline (or outside a call).
pub fn answer_by() -> Option<tokio::time::Instant> {
    let deadline = DEADLINE.try_with(|d| *d).ok()?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    Some(
        deadline
            .checked_sub(MARGIN.min(left / 10))
            .unwrap_or(deadline),
    )
}

/// Sleeps until [`answer_by`]; forever without a deadline.
pub async fn until_answer_by() {
    match answer_by() {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone)]
pub struct DeadlineLayer {
    max: Option<Duration>,
}

impl DeadlineLayer {
    /// `max`: the longest any call may take (`None`: only the client's).
    pub fn new(max: Option<Duration>) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    max: Option<Duration>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody> Service<http::Request<ReqBody>> for DeadlineService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let client = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let limit = match (client, self.max) {
            (Some(c), Some(m)) => Some(c.min(m)),
            (c, m) => c.or(m),
        };
        let Some(limit) = limit else {
            return Box::pin(inner.call(req));
        };
        let deadline = tokio::time::Instant::now() + limit;
        Box::pin(async move {
            let call = DEADLINE.scope(deadline, inner.call(req));
            match tokio::time::timeout_at(deadline, call).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "deadline of {} ms exceeded",
                    limit.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
    }
}
