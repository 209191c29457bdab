//! Opaque, versioned page tokens bound to the filter they were issued for.
//!
//! A token is base64url(JSON) of the version, a hash of the filter and the
//! last row's sort key. Anything that does not decode, carries another
//! version, or was issued for another filter is INVALID_ARGUMENT, and so is a
//! sort key no stored row has (the hash is no secret: tokens can be forged).

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;
use tributary_proto::v1::EventFilter;
use tributary_proto::validate::is_event_id;
use tributary_store::events::Cursor;

const VERSION: u32 = 1;

/// 4714-11-24 BC, the earliest time PostgreSQL's timestamptz holds, in
/// microseconds since the Unix epoch: a cursor before it cannot be bound.
const EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

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
    // Every stored event_id passed validation, and every stored time fits
    // PostgreSQL: anything else would reach the database as a parameter it
    // refuses (an internal error) or, far enough back, wraps around.
    if token.v != VERSION || !is_event_id(&token.id) || token.t < EARLIEST_MICROS {
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
    fn forged_sort_keys_are_malformed() {
        // Found by the properties below: a token forged with this filter's
        // hash (an FNV-1a, no secret) and an id with NUL, or a time before
        // 4714 BC, decoded; PostgreSQL then refused the parameter and the
        // client got INTERNAL, or the time wrapped around to another page.
        let f = filter("u");
        for (t, id) in [
            (0, "\0"),
            (0, "has space"),
            (EARLIEST_MICROS - 1, "a"),
            (i64::MIN + 946_684_800_000_000, "a"),
            (i64::MIN, "a"),
        ] {
            let forged = URL_SAFE_NO_PAD.encode(
                serde_json::json!({"v": 1, "f": filter_hash(&f), "t": t, "id": id}).to_string(),
            );
            assert_eq!(
                decode(&forged, &f),
                Err(TokenError::Malformed),
                "{t} {id:?}"
            );
        }
        let earliest = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"v": 1, "f": filter_hash(&f), "t": EARLIEST_MICROS, "id": "a"})
                .to_string(),
        );
        assert!(decode(&earliest, &f).is_ok());
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

    mod properties {
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;
        use prost_types::Timestamp;
        use serde_json::{Value as Json, json};
        // The oracles restate README's rules apart from the code under test.
        use tributary_proto::testing::{is_event_id, nanos_since_epoch as nanos};

        use super::*;

        /// 4714-11-24 BC, the first microsecond PostgreSQL's timestamptz
        /// holds, as microseconds since the Unix epoch.
        const POSTGRES_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

        fn filter() -> impl Strategy<Value = EventFilter> {
            (
                vec("[a-z.]{0,6}", 0..3),
                "[a-z]{0,3}",
                prop_oneof!["u[0-9]", any::<String>()],
                option::of(any::<i64>()),
            )
                .prop_map(|(event_types, source, user_id, after)| EventFilter {
                    event_types,
                    source,
                    user_id,
                    occurred_after: after.map(|seconds| Timestamp { seconds, nanos: 0 }),
                    ..Default::default()
                })
        }

        fn junk() -> impl Strategy<Value = Json> {
            prop_oneof![
                Just(Json::Null),
                any::<bool>().prop_map(Json::from),
                any::<f64>().prop_map(Json::from),
                any::<u64>().prop_map(Json::from),
                any::<String>().prop_map(Json::from),
                Just(json!([1])),
                Just(json!({"v": 1})),
            ]
        }

        /// `t`: any `i64` (both ends and PostgreSQL's earliest named), or not an integer.
        fn t() -> impl Strategy<Value = Json> {
            prop_oneof![
                4 => (-1i64 << 52..1i64 << 52).prop_map(Json::from),
                2 => any::<i64>().prop_map(Json::from),
                1 => prop::sample::select(vec![
                    i64::MIN,
                    i64::MIN + 946_684_800_000_000,
                    POSTGRES_EARLIEST_MICROS - 1,
                    POSTGRES_EARLIEST_MICROS,
                    -1,
                    0,
                    i64::MAX,
                ])
                .prop_map(Json::from),
                1 => (POSTGRES_EARLIEST_MICROS - 5..POSTGRES_EARLIEST_MICROS + 5).prop_map(Json::from),
                1 => junk(),
            ]
        }

        /// `id`: an event id, anything (NUL included), not a string.
        fn id() -> impl Strategy<Value = Json> {
            prop_oneof![
                10 => "[A-Za-z0-9._:-]{1,129}".prop_map(Json::from),
                1 => Just(Json::from("")),
                1 => ("[a-z]{0,3}", "[a-z]{0,3}").prop_map(|(a, b)| Json::from(format!("{a}\0{b}"))),
                2 => any::<String>().prop_map(Json::from),
                1 => junk(),
            ]
        }

        /// A token's JSON: each field right, wrong, of the wrong type or
        /// absent; `f` of `None` is the filter's own hash.
        #[derive(Debug, Clone)]
        struct Fields {
            v: Option<Json>,
            f: Option<Option<String>>,
            t: Option<Json>,
            id: Option<Json>,
            extra: bool,
        }

        fn fields() -> impl Strategy<Value = Fields> {
            (
                option::weighted(0.95, prop_oneof![12 => Just(json!(1)), 1 => any::<u32>().prop_map(Json::from), 1 => junk()]),
                option::weighted(0.95, prop_oneof![12 => Just(None), 1 => any::<String>().prop_map(Some)]),
                option::weighted(0.95, t()),
                option::weighted(0.95, id()),
                any::<bool>(),
            )
                .prop_map(|(v, f, t, id, extra)| Fields { v, f, t, id, extra })
        }

        #[derive(Debug, Clone)]
        enum Token {
            /// Any text, base64url-looking or not.
            Text(String),
            /// base64url of any bytes.
            Bytes(Vec<u8>),
            /// base64url of a token's JSON, maybe with spaces around.
            Json(Fields, bool),
        }

        fn token() -> impl Strategy<Value = Token> {
            prop_oneof![
                1 => prop_oneof![any::<String>(), "[A-Za-z0-9_=+/-]{0,80}"].prop_map(Token::Text),
                1 => vec(any::<u8>(), 0..80).prop_map(Token::Bytes),
                6 => (fields(), any::<bool>()).prop_map(|(f, pad)| Token::Json(f, pad)),
            ]
        }

        fn render(token: &Token, filter: &EventFilter) -> String {
            match token {
                Token::Text(text) => text.clone(),
                Token::Bytes(bytes) => URL_SAFE_NO_PAD.encode(bytes),
                Token::Json(fields, pad) => {
                    let mut object = serde_json::Map::new();
                    let hash = || Json::from(filter_hash(filter));
                    let f = fields
                        .f
                        .as_ref()
                        .map(|f| f.clone().map_or_else(hash, Json::from));
                    for (name, value) in [
                        ("v", fields.v.clone()),
                        ("f", f),
                        ("t", fields.t.clone()),
                        ("id", fields.id.clone()),
                    ] {
                        if let Some(value) = value {
                            object.insert(name.to_owned(), value);
                        }
                    }
                    if fields.extra {
                        object.insert("x".to_owned(), json!({"y": [1, 2]}));
                    }
                    let encoded = URL_SAFE_NO_PAD.encode(Json::Object(object).to_string());
                    if *pad {
                        format!(" {encoded}\n")
                    } else {
                        encoded
                    }
                }
            }
        }

        /// What README's contract asks of a token's JSON: Ok (a cursor the
        /// service could have issued: version 1, an event id, a time
        /// PostgreSQL holds), OtherFilter (all that, for another filter), or
        /// Malformed.
        fn verdict(fields: &Fields, filter: &EventFilter) -> Result<(), TokenError> {
            let issued = fields.v == Some(json!(1))
                && fields
                    .id
                    .as_ref()
                    .and_then(Json::as_str)
                    .is_some_and(is_event_id)
                && fields
                    .t
                    .as_ref()
                    .and_then(Json::as_i64)
                    .is_some_and(|t| t >= POSTGRES_EARLIEST_MICROS);
            match &fields.f {
                Some(_) if !issued => Err(TokenError::Malformed),
                None => Err(TokenError::Malformed),
                Some(None) => Ok(()),
                Some(Some(f)) if *f == filter_hash(filter) => Ok(()),
                Some(Some(_)) => Err(TokenError::OtherFilter),
            }
        }

        proptest! {
            #![proptest_config(tributary_proto::testing::config())]

            /// Any page token: a cursor the store can bind (an event id, a
            /// time in PostgreSQL's range, in microseconds) for the filter it
            /// was issued for and no other, or refused (INVALID_ARGUMENT on
            /// `page_token`); a forged token's JSON is taken exactly when it
            /// is one this service could have issued.
            #[test]
            fn a_page_token_is_a_cursor_for_its_filter_or_refused(
                token in token(),
                filter in filter(),
                other in filter(),
            ) {
                let text = render(&token, &filter);
                let decoded = decode(&text, &filter);
                match &decoded {
                    Ok(cursor) => {
                        prop_assert!(is_event_id(&cursor.event_id), "cursor id {:?}", cursor.event_id);
                        let at = nanos(cursor.occurred_at);
                        prop_assert_eq!(at % 1_000, 0);
                        prop_assert!(
                            at / 1_000 >= i128::from(POSTGRES_EARLIEST_MICROS),
                            "before PostgreSQL's earliest: {:?}",
                            cursor.occurred_at
                        );
                        let elsewhere = decode(&text, &other);
                        if filter_hash(&other) == filter_hash(&filter) {
                            prop_assert_eq!(elsewhere.as_ref(), Ok(cursor));
                        } else {
                            prop_assert_eq!(elsewhere, Err(TokenError::OtherFilter));
                        }
                    }
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
                if let Token::Json(fields, _) = &token {
                    prop_assert_eq!(decoded.map(|_| ()), verdict(fields, &filter));
                }
            }
        }

        proptest! {
            #![proptest_config(tributary_proto::testing::config())]

            /// Every cursor the store can give (an event id, a time in
            /// PostgreSQL's range in microseconds) comes back from its token,
            /// for its filter only.
            #[test]
            fn an_issued_token_gives_its_cursor_back(
                id in "[A-Za-z0-9._:-]{1,128}",
                at in prop_oneof![
                    POSTGRES_EARLIEST_MICROS..=i64::MAX,
                    POSTGRES_EARLIEST_MICROS..POSTGRES_EARLIEST_MICROS + 10,
                    i64::MAX - 10..=i64::MAX,
                    -1_000_000i64..1_000_000,
                ],
                filter in filter(),
                other in filter(),
            ) {
                let magnitude = Duration::from_micros(at.unsigned_abs());
                let occurred_at = if at >= 0 {
                    UNIX_EPOCH.checked_add(magnitude)
                } else {
                    UNIX_EPOCH.checked_sub(magnitude)
                };
                prop_assume!(occurred_at.is_some());
                let cursor = Cursor {
                    occurred_at: occurred_at.unwrap_or(UNIX_EPOCH),
                    event_id: id,
                };
                let token = encode(&filter, &cursor);
                prop_assert_eq!(decode(&token, &filter), Ok(cursor.clone()));
                prop_assert_eq!(decode(&format!("  {token}\t"), &filter), Ok(cursor));
                if filter_hash(&other) != filter_hash(&filter) {
                    prop_assert_eq!(decode(&token, &other), Err(TokenError::OtherFilter));
                }
            }
        }
    }
}
