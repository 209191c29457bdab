//! Conversions between protobuf `Struct`/`Value` and JSON.
//!
//! Payloads travel through Kafka and PostgreSQL as JSON text; clients see
//! `google.protobuf.Struct`. These are the only two conversions.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// Why a payload cannot be represented as storable JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// NaN or an infinity: JSON has no such number.
    NonFiniteNumber { path: String },
    /// PostgreSQL `jsonb` (and `text`) cannot hold U+0000.
    NulCharacter { path: String },
    /// Not a decodable `google.protobuf.Struct` (ingest reads the payload's
    /// bytes itself, see [`crate::wire`]).
    Malformed { path: String, why: String },
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NonFiniteNumber { path } => write!(f, "{path} is not a finite number"),
            Self::NulCharacter { path } => write!(f, "{path} contains a NUL character"),
            Self::Malformed { path, why } => {
                write!(f, "is not a valid google.protobuf.Struct: {why} at {path}")
            }
        }
    }
}

/// Converts a `Struct` to a JSON object, refusing what cannot be stored.
/// Error paths are JSON Pointers into the payload.
pub fn struct_to_json(s: &Struct) -> Result<Map<String, Json>, JsonError> {
    let mut path = String::new();
    struct_to_map(s, &mut path)
}

fn struct_to_map(s: &Struct, path: &mut String) -> Result<Map<String, Json>, JsonError> {
    let mut map = Map::with_capacity(s.fields.len());
    for (key, value) in &s.fields {
        let len = path.len();
        push_pointer_token(path, key);
        if key.contains('\0') {
            return Err(JsonError::NulCharacter { path: path.clone() });
        }
        let json = value_to_json_at(value, path)?;
        path.truncate(len);
        map.insert(key.clone(), json);
    }
    Ok(map)
}

/// Converts a `Value` to JSON (an unset kind is `null`).
pub fn value_to_json(value: &Value) -> Result<Json, JsonError> {
    let mut path = String::new();
    value_to_json_at(value, &mut path)
}

fn value_to_json_at(value: &Value, path: &mut String) -> Result<Json, JsonError> {
    Ok(match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            Json::Number(number(*n).ok_or_else(|| JsonError::NonFiniteNumber {
                path: display_path(path),
            })?)
        }
        Some(Kind::StringValue(s)) => {
            if s.contains('\0') {
                return Err(JsonError::NulCharacter {
                    path: display_path(path),
                });
            }
            Json::String(s.clone())
        }
        Some(Kind::ListValue(list)) => {
            let mut out = Vec::with_capacity(list.values.len());
            for (i, v) in list.values.iter().enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                out.push(value_to_json_at(v, path)?);
                path.truncate(len);
            }
            Json::Array(out)
        }
        Some(Kind::StructValue(s)) => Json::Object(struct_to_map(s, path)?),
    })
}

pub(crate) fn display_path(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

/// Integral values print without a fraction (`3`, not `3.0`), so a payload
/// round-trips through PostgreSQL unchanged.
pub(crate) fn number(n: f64) -> Option<Number> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        // Exactly representable: the cast cannot lose information.
        #[allow(clippy::cast_possible_truncation)]
        return Some(Number::from(n as i64));
    }
    Number::from_f64(n)
}

/// Appends one RFC 6901 reference token (escaping `~` and `/`).
pub(crate) fn push_pointer_token(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// Converts a JSON object to a `Struct`.
pub fn json_to_struct(map: Map<String, Json>) -> Struct {
    Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

/// Converts JSON to a `Value` (numbers become doubles, as protobuf has them).
pub fn json_to_value(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(json_to_value).collect(),
        }),
        Json::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    Value { kind: Some(kind) }
}

/// Parses an RFC 6901 JSON Pointer into its unescaped reference tokens.
pub fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() || path == "/" {
        return Err("must point at a field inside the payload, e.g. /order/amount".into());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must be a JSON Pointer starting with '/'".into());
    };
    // PostgreSQL text (and so jsonb) cannot hold NUL: no payload key has one.
    if path.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    rest.split('/')
        .map(|t| {
            if t.is_empty() {
                return Err("must not contain an empty reference token".into());
            }
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err("has a '~' not followed by 0 or 1".into()),
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

/// The value at `pointer` (tokens from [`pointer_tokens`]) inside `value`;
/// array elements are addressed by index.
pub fn lookup<'a>(value: &'a Json, tokens: &[String]) -> Option<&'a Json> {
    tokens.iter().try_fold(value, |v, t| match v {
        Json::Object(m) => m.get(t),
        Json::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: Json) -> Struct {
        match json {
            Json::Object(m) => json_to_struct(m),
            _ => Struct::default(),
        }
    }

    #[test]
    fn round_trips_nested_payloads_and_keeps_integers_integral() {
        let original = serde_json::json!({"a": 1, "b": [1.5, "x", null, true], "c": {"d~/e": -3}});
        let back = struct_to_json(&s(original.clone())).map(Json::Object);
        assert_eq!(back, Ok(original.clone()));
        assert_eq!(
            serde_json::to_string(&back.unwrap_or_default()).unwrap_or_default(),
            r#"{"a":1,"b":[1.5,"x",null,true],"c":{"d~/e":-3}}"#
        );
    }

    #[test]
    fn refuses_nul_and_non_finite_numbers_with_a_json_pointer() {
        let mut st = s(serde_json::json!({"o": {"k/1": "ok"}}));
        if let Some(Kind::StructValue(inner)) = st.fields.get_mut("o").and_then(|v| v.kind.as_mut())
        {
            inner.fields.insert(
                "k/1".into(),
                Value {
                    kind: Some(Kind::StringValue("a\0b".into())),
                },
            );
        }
        assert_eq!(
            struct_to_json(&st),
            Err(JsonError::NulCharacter {
                path: "/o/k~11".into()
            })
        );
        let nan = Struct {
            fields: [(
                "n".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        assert_eq!(
            struct_to_json(&nan),
            Err(JsonError::NonFiniteNumber { path: "/n".into() })
        );
    }
}
