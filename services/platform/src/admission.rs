//! How many calls a replica takes at once: past the bound, a call is refused
//! with `RESOURCE_EXHAUSTED` and `google.rpc.RetryInfo` before its request is
//! read, so a crowd of callers costs a refusal each, not memory.
//!
//! Two bounds, because calls differ: a unary call holds its request and its
//! answer (up to the 4 MiB message limit each) for a short time, a streaming
//! call (PublishStream, TailEvents, health Watch, reflection) holds a small
//! buffer for as long as the client keeps it open. Each call holds its slot
//! until its response body ends, so a client slow to read its answer still
//! counts. Health checks are never refused: they are how an orchestrator
//! tells a busy replica from a dead one.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::{Layer, Service};

/// What a refused client is told to wait before retrying.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Streaming methods of the standard services every port serves.
const STANDARD_STREAMS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Never refused.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone, clap::Args)]
pub struct AdmissionArgs {
    /// Unary calls this replica handles at once; past it, a call is refused
    /// with RESOURCE_EXHAUSTED and RetryInfo before its request is read (so
    /// at most this many requests of up to 4 MiB are held in memory).
    #[arg(long, env = "TRIBUTARY_MAX_CONCURRENT_CALLS", default_value_t = 64)]
    pub max_concurrent_calls: usize,
    /// Streaming calls (PublishStream, TailEvents, reflection) open at once
    /// on this replica; past it, new ones are refused the same way. Each
    /// stream's own buffer is bounded, so this bounds their memory.
    #[arg(long, env = "TRIBUTARY_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: usize,
}

/// The two bounds of one server.
#[derive(Clone)]
pub struct Admission {
    calls: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    max_calls: usize,
    max_streams: usize,
    /// `/package.Service/Method` of every streaming method served.
    streaming: Arc<HashSet<String>>,
}

impl Admission {
    /// `services`: the tributary services of this server, whose streaming
    /// methods are read from the descriptor set.
    pub fn new(args: &AdmissionArgs, services: &[&str]) -> Self {
        let mut streaming: HashSet<String> =
            STANDARD_STREAMS.iter().map(|s| (*s).to_owned()).collect();
        streaming.extend(streaming_methods(services));
        let max_calls = args.max_concurrent_calls.max(1);
        let max_streams = args.max_streams.max(1);
        Self {
            calls: Arc::new(Semaphore::new(max_calls)),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_calls,
            max_streams,
            streaming: Arc::new(streaming),
        }
    }

    pub fn layer(&self) -> AdmissionLayer {
        AdmissionLayer {
            admission: self.clone(),
        }
    }

    /// A slot for a call to `path`, or the refusal (`None` for exempt calls).
    fn admit(&self, path: &str) -> Result<Option<OwnedSemaphorePermit>, Status> {
        if path.starts_with(EXEMPT_PREFIX) {
            return Ok(None);
        }
        let (pool, max, what) = if self.streaming.contains(path) {
            (
                &self.streams,
                self.max_streams,
                "streams open (--max-streams)",
            )
        } else {
            (
                &self.calls,
                self.max_calls,
                "calls in progress (--max-concurrent-calls)",
            )
        };
        pool.clone().try_acquire_owned().map(Some).map_err(|_| {
            crate::status::resource_exhausted_retry(
                format!(
                    "this replica is at its bound of {max} {what}; retry with backoff \
                     (or against another replica)"
                ),
                RETRY_AFTER,
            )
        })
    }
}

/// The `/package.Service/Method` paths of the streaming methods of
/// `services`, from the descriptor set.
fn streaming_methods(services: &[&str]) -> Vec<String> {
    use prost::Message as _;
    let Ok(fds) = prost_types::FileDescriptorSet::decode(tributary_proto::FILE_DESCRIPTOR_SET)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in fds.file {
        let package = file.package.clone().unwrap_or_default();
        for service in file.service {
            let full = format!("{package}.{}", service.name.clone().unwrap_or_default());
            if !services.contains(&full.as_str()) {
                continue;
            }
            for m in service.method {
                if m.client_streaming() || m.server_streaming() {
                    out.push(format!("/{full}/{}", m.name()));
                }
            }
        }
    }
    out
}

#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Admission,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Admission,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody> Service<http::Request<ReqBody>> for AdmissionService<S>
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
        let permit = match self.admission.admit(req.uri().path()) {
            Ok(None) => return Box::pin(self.inner.call(req)),
            Ok(Some(permit)) => permit,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Held {
                    inner: body,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that holds its call's slot until it is dropped.
struct Held {
    inner: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Held {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(calls: usize, streams: usize) -> Admission {
        Admission::new(
            &AdmissionArgs {
                max_concurrent_calls: calls,
                max_streams: streams,
            },
            &["tributary.v1.IngestService", "tributary.v1.QueryService"],
        )
    }

    #[test]
    fn streams_and_calls_are_bounded_apart() {
        let a = admission(1, 1);
        let stream = a.admit("/tributary.v1.QueryService/TailEvents");
        let call = a.admit("/tributary.v1.IngestService/PublishBatch");
        assert!(matches!(stream, Ok(Some(_))));
        assert!(matches!(call, Ok(Some(_))));
        let refused = a.admit("/tributary.v1.IngestService/PublishStream");
        let status = refused.err().map(|s| (s.code(), s.message().to_owned()));
        assert!(
            matches!(&status, Some((tonic::Code::ResourceExhausted, m)) if m.contains("--max-streams")),
            "{status:?}"
        );
        let refused = a.admit("/tributary.v1.QueryService/ListEvents");
        assert!(
            matches!(&refused, Err(s) if s.message().contains("--max-concurrent-calls")),
            "{:?}",
            refused.err()
        );
        // Health is never refused; a released slot is free again.
        assert!(matches!(a.admit("/grpc.health.v1.Health/Check"), Ok(None)));
        drop(call);
        assert!(matches!(
            a.admit("/tributary.v1.QueryService/ListEvents"),
            Ok(Some(_))
        ));
    }

    #[test]
    fn refusals_carry_retry_info() {
        let a = admission(1, 1);
        let _held = a.admit("/tributary.v1.IngestService/Publish");
        let Err(status) = a.admit("/tributary.v1.IngestService/Publish") else {
            panic!("a second call was admitted past a bound of 1");
        };
        use tonic_types::StatusExt as _;
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(RETRY_AFTER)
        );
    }
}
