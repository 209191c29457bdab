//! A small OTLP/gRPC trace receiver: every span it receives becomes one JSON
//! line, so traces can be inspected with `grep`/`jq` and asserted by tests
//! without a collector. Not for production: use an OpenTelemetry collector.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};

/// Where the JSON lines go.
pub type Sink = Arc<Mutex<Box<dyn std::io::Write + Send>>>;

#[derive(Clone)]
pub struct Receiver {
    sink: Sink,
}

impl Receiver {
    pub fn new(sink: Sink) -> Self {
        Self { sink }
    }

    pub fn server(self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let lines = spans_as_json(&request.into_inner());
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| Status::internal("trace sink poisoned"))?;
        for line in lines {
            writeln!(sink, "{line}").map_err(|e| Status::internal(format!("write failed: {e}")))?;
        }
        sink.flush()
            .map_err(|e| Status::internal(format!("flush failed: {e}")))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One JSON object per span: ids as lowercase hex, times in Unix nanoseconds.
pub fn spans_as_json(request: &ExportTraceServiceRequest) -> Vec<Value> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or(Value::Null);
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let links: Vec<Value> = span
                    .links
                    .iter()
                    .map(|l| json!({"trace_id": hex(&l.trace_id), "span_id": hex(&l.span_id)}))
                    .collect();
                out.push(json!({
                    "service": service,
                    "trace_id": hex(&span.trace_id),
                    "span_id": hex(&span.span_id),
                    "parent_span_id": hex(&span.parent_span_id),
                    "name": span.name,
                    "kind": span_kind(span.kind),
                    "start_unix_nano": span.start_time_unix_nano,
                    "end_unix_nano": span.end_time_unix_nano,
                    "status_code": span.status.as_ref().map(|s| s.code).unwrap_or(0),
                    "attributes": attributes(&span.attributes),
                    "links": links,
                }));
            }
        }
    }
    out
}

fn span_kind(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
        .collect()
}

fn any_value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(attributes(&l.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        Some(_) => Value::Null,
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sink: Sink,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(Receiver::new(sink).server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// Binds the receiver's port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
