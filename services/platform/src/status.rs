//! The one mapping from failures to `tonic::Status`.
//!
//! Field-level validation errors carry `google.rpc.BadRequest` details.
//! Internal errors are logged once with their whole cause chain and answered
//! with a sanitized message.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use tributary_proto::validate::FieldViolation;

/// INVALID_ARGUMENT naming each bad field and why.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let message = summary(violations);
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INVALID_ARGUMENT for one bad field.
pub fn violation(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(&[FieldViolation {
        field: field.into(),
        description: description.into(),
    }])
}

/// One line naming every violation: `event.event_type: is required; ...`.
pub fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The same outcome as a `google.rpc.Status` message, for per-item results.
pub fn to_rpc_status(status: &Status) -> tonic_types::pb::Status {
    use prost::Message as _;
    // A Status built by tonic-types carries its details as an encoded
    // google.rpc.Status; reuse them so per-item results have the same details.
    let details = if status.details().is_empty() {
        Vec::new()
    } else {
        tonic_types::pb::Status::decode(status.details())
            .map(|s| s.details)
            .unwrap_or_default()
    };
    tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

pub fn ok_rpc_status() -> tonic_types::pb::Status {
    tonic_types::pb::Status {
        code: Code::Ok as i32,
        message: String::new(),
        details: Vec::new(),
    }
}

/// Logs the whole cause chain once and answers INTERNAL without internals.
pub fn internal(context: &str, error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::error!(error = %chain(error), "{context}");
    Status::internal(format!("{context}: internal error (logged)"))
}

/// A dependency is down: UNAVAILABLE (retryable), logged with its cause.
pub fn unavailable(context: &str, error: &(dyn std::error::Error + 'static)) -> Status {
    tracing::warn!(error = %chain(error), "{context}");
    Status::unavailable(format!("{context}: {error}"))
}

/// UNAVAILABLE with `google.rpc.RetryInfo`: the dependency is expected
/// back, and the client should try again after `after`.
pub fn unavailable_retry(message: impl Into<String>, after: Duration) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_retry_info(Some(after)),
    )
}

/// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` (over a limit; come back
/// after `after`).
pub fn resource_exhausted_retry(message: impl Into<String>, after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(after)),
    )
}

/// `outer: inner: innermost`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let status = invalid_argument(&[FieldViolation {
            field: "event.event_type".into(),
            description: "is required".into(),
        }]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "event.event_type: is required");
        let details = status.get_error_details();
        let bad = details.bad_request().map(|b| b.field_violations.clone());
        assert_eq!(bad.map(|v| v.len()), Some(1));
        let rpc = to_rpc_status(&status);
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        assert_eq!(rpc.details.len(), 1);
        assert!(rpc.details[0].type_url.ends_with("google.rpc.BadRequest"));
    }
}
