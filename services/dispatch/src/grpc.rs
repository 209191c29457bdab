//! Dispatch's gRPC port: `tributary.v1.SubscriberService` (Pull), health and
//! reflection.

/// The names dispatch's health service answers for: its own (readiness) and
/// the Pull API's.
pub const HEALTH_NAMES: &[&str] = &["tributary.v1.Dispatch", "tributary.v1.SubscriberService"];
