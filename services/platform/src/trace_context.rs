//! W3C trace-context propagation between HTTP/gRPC headers, spans and Kafka
//! record headers.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Reads `traceparent`/`tracestate` from HTTP headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The context a client sent, if any.
pub fn extract_from_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// `traceparent` (and `tracestate` when set) for the current span, as
/// key/value pairs to put into any carrier (Kafka headers, outgoing gRPC).
pub fn current_headers() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut carrier = PairInjector(Vec::with_capacity(2));
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.0
}

/// The trace id of the current span as 32 lowercase hex digits (empty when
/// no valid trace is active).
pub fn current_trace_id() -> String {
    let context = tracing::Span::current().context();
    let span = context.span();
    let sc = span.span_context();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

struct PairInjector(Vec<(String, String)>);

impl Injector for PairInjector {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator sets `tracestate` even when it is empty. An
        // empty header says nothing, yet every Kafka record would carry it
        // (and a broker storing headers as rows would store it).
        if !value.is_empty() {
            self.0.push((key.to_owned(), value));
        }
    }
}

/// Extracts a context from key/value pairs (e.g. Kafka record headers).
pub fn extract_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> opentelemetry::Context {
    let map: std::collections::HashMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&map))
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn injected(state: TraceState) -> Vec<(String, String)> {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(span);
        let mut carrier = PairInjector(Vec::new());
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.0
    }

    #[test]
    fn an_empty_tracestate_is_not_a_header() {
        assert_eq!(
            injected(TraceState::default()),
            [(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
            )]
        );
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap_or_default();
        let headers = injected(state);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[1], ("tracestate".to_owned(), "vendor=x".to_owned()));
    }
}
