//! Page tokens of the admin listings: `base64url("<kind>:<position>")`, the
//! kind naming the listing (and its version) so one listing's token is
//! refused by another.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Status;
use tributary_platform::status::violation;

pub fn encode(kind: &str, position: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// The position a token of `kind` carries, or INVALID_ARGUMENT.
pub fn decode(kind: &str, token: &str) -> Result<String, Status> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix(kind)?.strip_prefix(':').map(str::to_owned))
        .ok_or_else(malformed)
}

pub fn malformed() -> Status {
    violation("page_token", "is not a page token this service issued")
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_other_kinds() {
        let t = super::encode("r1", "abc:def");
        assert_eq!(super::decode("r1", &t).ok().as_deref(), Some("abc:def"));
        assert!(super::decode("a1", &t).is_err());
        assert!(super::decode("r1", "not base64!").is_err());
        assert!(
            super::decode("r", &t).is_err(),
            "a prefix of the kind is not the kind"
        );
    }
}
