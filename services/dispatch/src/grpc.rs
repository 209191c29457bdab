//! Dispatch's gRPC port: health and reflection (the Pull API,
//! `tributary.v1.SubscriberService`, is still to come).

/// Health names dispatch as this.
pub const HEALTH_NAME: &str = "tributary.v1.Dispatch";
