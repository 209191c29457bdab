//! CORS for gRPC-Web, so a page on another origin can call a service from a
//! browser: off unless origins are listed, exact origins only.
//!
//! - A preflight (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) from a listed origin gets 204 with the
//!   headers gRPC-Web needs; from any other origin, 403 and no CORS headers
//!   (the browser then refuses the call).
//! - A call carrying `Origin` (every browser call does) from a listed origin
//!   gets `Access-Control-Allow-Origin` and the exposed gRPC headers; from
//!   any other origin it is refused with `PERMISSION_DENIED` before any
//!   handler runs, so no page can make a browser act on a service that has
//!   not allowed it. Calls without `Origin` (native gRPC, grpcurl) pass
//!   untouched.
//! - No cookies are involved (keys travel in `authorization`), so
//!   `Access-Control-Allow-Credentials` is never sent.
//!
//! It is the outermost layer: preflights are not gRPC calls and are not
//! counted as such.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use tonic::Status;
use tower::{Layer, Service};

/// Request headers a gRPC-Web client sends.
pub const ALLOW_HEADERS: &str =
    "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization";
/// Response headers a gRPC-Web client must read.
pub const EXPOSE_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";
/// How long a browser may cache a preflight's answer (Chromium caps it at
/// 2 h).
const MAX_AGE_SECONDS: &str = "7200";

/// `--cors-allow-origin`: for the services a browser may call (ingest; query
/// in a local deployment only). Admin does not take it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CorsArgs {
    /// Origins whose pages may call this service from a browser
    /// (gRPC-Web), comma-separated, each exactly as the browser sends it:
    /// scheme, host and port if not the default, no path, e.g.
    /// `https://www.example.com,http://127.0.0.1:8088`. Default: none, and
    /// every call carrying an Origin header is refused.
    #[arg(
        long = "cors-allow-origin",
        env = "TRIBUTARY_CORS_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub allow_origin: Vec<String>,
}

/// An origin as a browser serialises it: `scheme://host[:port]`, lower case,
/// nothing after the authority.
fn parse_origin(value: &str) -> Result<String, String> {
    let value = value.trim();
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| format!("{value:?} is not an origin (expected scheme://host[:port])"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("{value:?}: the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(format!(
            "{value:?} is not an origin: only scheme://host[:port], no path, wildcard or user"
        ));
    }
    if value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{value:?}: write it in lower case, as browsers send it"
        ));
    }
    Ok(value.to_owned())
}

/// The origins a service allows (none: CORS off).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Arc<[HeaderValue]>,
}

impl Cors {
    pub fn new(args: &CorsArgs) -> Self {
        Self {
            origins: args
                .allow_origin
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    /// Off: no origin allowed.
    pub fn off() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    pub fn layer(&self) -> CorsLayer {
        CorsLayer { cors: self.clone() }
    }
}

#[derive(Clone)]
pub struct CorsLayer {
    cors: Cors,
}

impl<S> Layer<S> for CorsLayer {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorsService {
            inner,
            cors: self.cors.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CorsService<S> {
    inner: S,
    cors: Cors,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CorsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
            let call = self.inner.call(req);
            return Box::pin(async move { Ok(call.await?.map(tonic::body::Body::new)) });
        };
        let allowed = self.cors.allows(&origin);
        let preflight = req.method() == http::Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let response = if allowed {
                preflight_answer(origin)
            } else {
                refused_preflight()
            };
            return Box::pin(async move { Ok(response) });
        }
        if !allowed {
            let status = Status::permission_denied(format!(
                "calls from the origin {:?} are not allowed by this service \
                 (--cors-allow-origin)",
                origin.to_str().unwrap_or("(not text)")
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut response = call.await?.map(tonic::body::Body::new);
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
            headers.append(header::VARY, HeaderValue::from_static("origin"));
            Ok(response)
        })
    }
}

fn preflight_answer(origin: HeaderValue) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = http::StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_SECONDS),
    );
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

fn refused_preflight() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::empty());
    *response.status_mut() = http::StatusCode::FORBIDDEN;
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact() {
        assert_eq!(
            parse_origin("http://127.0.0.1:8088").as_deref(),
            Ok("http://127.0.0.1:8088")
        );
        assert!(parse_origin("https://example.com").is_ok());
        for bad in [
            "example.com",
            "https://example.com/",
            "https://*.example.com",
            "ftp://example.com",
            "https://Example.com",
            "https://",
            "*",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
