//! Opaque, versioned page tokens bound to the filter they were issued for.
//!
//! A token is base64url(JSON) of the version, a hash of the filter and the
//! last row's sort key. Anything that does not decode, carries another
//! version, or was issued for another filter is INVALID_ARGUMENT.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use tributary_proto::v1::EventFilter;
use tributary_store::events::Cursor;

const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    v: u32,
    /// FNV-1a of the encoded filter.
    f: String,
    /// occurred_at of the last row, microseconds since the epoch.
    t: i64,
    /// event_id of the last row.
    id: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    OtherFilter,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => write!(f, "is not a page token this service issued"),
            Self::OtherFilter => write!(
                f,
                "was issued for a different filter; start again without a token"
            ),
        }
    }
}

pub fn encode(filter: &EventFilter, cursor: &Cursor) -> String {
    let micros = match cursor.occurred_at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    let token = Token {
        v: VERSION,
        f: filter_hash(filter),
        t: micros,
        id: cursor.event_id.clone(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

pub fn decode(token: &str, filter: &EventFilter) -> Result<Cursor, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| TokenError::Malformed)?;
    let token: Token = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if token.v != VERSION || token.id.is_empty() {
        return Err(TokenError::Malformed);
    }
    if token.f != filter_hash(filter) {
        return Err(TokenError::OtherFilter);
    }
    let magnitude = Duration::from_micros(token.t.unsigned_abs());
    let occurred_at = if token.t >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .ok_or(TokenError::Malformed)?;
    Ok(Cursor {
        occurred_at,
        event_id: token.id,
    })
}

fn filter_hash(filter: &EventFilter) -> String {
    // prost encodes fields in tag order and Struct maps as BTreeMaps, so
    // equal filters encode to equal bytes.
    tributary_store::migrate::checksum_bytes(&filter.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(user: &str) -> EventFilter {
        EventFilter {
            user_id: user.into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_and_is_bound_to_its_filter() {
        let cursor = Cursor {
            occurred_at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            event_id: "e-1".into(),
        };
        let token = encode(&filter("u1"), &cursor);
        assert_eq!(decode(&token, &filter("u1")), Ok(cursor));
        assert_eq!(decode(&token, &filter("u2")), Err(TokenError::OtherFilter));
    }

    #[test]
    fn forged_tokens_are_malformed() {
        for forged in ["", "garbage", "eyJ2IjoyfQ", "%%%"] {
            assert_eq!(
                decode(forged, &filter("u")),
                Err(TokenError::Malformed),
                "{forged}"
            );
        }
    }
}
