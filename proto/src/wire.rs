//! Ingest's side of the wire: the requests of `tributary.v1.IngestService`
//! with `Event.payload` left as the bytes of its `google.protobuf.Struct`,
//! and a writer that turns those bytes straight into the payload's JSON text.
//!
//! Decoding the payload into `prost_types::Struct` (a `BTreeMap` of boxed
//! `Value`s) and then converting it to `serde_json` and printing it was a
//! third of ingest's CPU per event (BENCHMARKS.md). These messages are
//! wire-compatible with `tributary.v1` (same field numbers and types: a
//! message field and a `bytes` field are both length-delimited), so clients
//! notice nothing; the server stubs for them are generated in `build.rs`.
//!
//! [`struct_json`] writes exactly the text `serde_json` prints for
//! [`crate::json::struct_to_json`] of the decoded `Struct`: keys sorted, the
//! last of a repeated key wins, integral numbers without a fraction, and the
//! same refusals (non-finite numbers, NUL characters). What prost would have
//! refused as undecodable is refused too, naming where in the payload.

use std::io::Write as _;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::json::{JsonError, display_path, number, push_pointer_token};

/// `tributary.v1.Event` with its payload undecoded.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Event {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub user_id: String,
    pub session_id: String,
    pub occurred_at: Option<prost_types::Timestamp>,
    /// The encoded `google.protobuf.Struct`; `None` when the field is absent.
    pub payload: Option<Vec<u8>>,
}

impl Event {
    /// The event without its payload, as the envelope carries it.
    pub fn into_fields(self) -> (crate::v1::Event, Option<Vec<u8>>) {
        (
            crate::v1::Event {
                event_id: self.event_id,
                event_type: self.event_type,
                source: self.source,
                user_id: self.user_id,
                session_id: self.session_id,
                occurred_at: self.occurred_at,
                payload: None,
            },
            self.payload,
        )
    }
}

impl prost::Message for Event {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (tag, value) in self.strings() {
            if !value.is_empty() {
                encoding::string::encode(tag, value, buf);
            }
        }
        if let Some(ts) = &self.occurred_at {
            encoding::message::encode(6, ts, buf);
        }
        if let Some(payload) = &self.payload {
            encoding::bytes::encode(7, payload, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1 => encoding::string::merge(wire_type, &mut self.event_id, buf, ctx),
            2 => encoding::string::merge(wire_type, &mut self.event_type, buf, ctx),
            3 => encoding::string::merge(wire_type, &mut self.source, buf, ctx),
            4 => encoding::string::merge(wire_type, &mut self.user_id, buf, ctx),
            5 => encoding::string::merge(wire_type, &mut self.session_id, buf, ctx),
            6 => encoding::message::merge(
                wire_type,
                self.occurred_at.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            7 => {
                // A message field seen twice is merged, and merging two
                // encodings is parsing their concatenation: append.
                let mut piece = Vec::new();
                encoding::bytes::merge(wire_type, &mut piece, buf, ctx)?;
                match &mut self.payload {
                    Some(payload) => payload.extend_from_slice(&piece),
                    None => self.payload = Some(piece),
                }
                Ok(())
            }
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.strings()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(tag, v)| encoding::string::encoded_len(tag, v))
            .sum::<usize>()
            + self
                .occurred_at
                .as_ref()
                .map_or(0, |ts| encoding::message::encoded_len(6, ts))
            + self
                .payload
                .as_ref()
                .map_or(0, |p| encoding::bytes::encoded_len(7, p))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Event {
    fn strings(&self) -> [(u32, &String); 5] {
        [
            (1, &self.event_id),
            (2, &self.event_type),
            (3, &self.source),
            (4, &self.user_id),
            (5, &self.session_id),
        ]
    }
}

/// `tributary.v1.PublishRequest` (Publish, and each PublishStream message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRequest {
    #[prost(message, optional, tag = "1")]
    pub event: Option<Event>,
}

/// `tributary.v1.PublishBatchRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishBatchRequest {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<Event>,
}

/// The server stubs of `tributary.v1.IngestService` over these requests
/// (`ingest_service_server`), generated by `build.rs`.
mod service {
    include!(concat!(env!("OUT_DIR"), "/tributary.v1.IngestService.rs"));
}
pub use service::*;

/// How deep values may nest: prost's own recursion limit, which decoding the
/// payload as a `Struct` inside the request would have hit.
const MAX_DEPTH: usize = 100;

/// Writes the JSON object of an encoded `google.protobuf.Struct`.
pub fn struct_json(encoded: &[u8]) -> Result<String, JsonError> {
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 4 + 2);
    let walk = Walk {
        depth: 0,
        check_only: false,
    };
    write_struct(&Pieces::One(encoded), &mut out, walk).map_err(Fail::into_error)?;
    // Every byte written is ASCII punctuation, a number, or a string checked
    // to be UTF-8.
    String::from_utf8(out).map_err(|_| JsonError::Malformed {
        path: "/".into(),
        why: "invalid UTF-8".into(),
    })
}

/// One message's encoding, or several that protobuf merges (a message field
/// seen more than once is the concatenation of its occurrences).
enum Pieces<'a> {
    One(&'a [u8]),
    Many(Vec<&'a [u8]>),
}

impl<'a> Pieces<'a> {
    fn push(&mut self, piece: &'a [u8]) {
        match self {
            Self::One(first) => *self = Self::Many(vec![first, piece]),
            Self::Many(all) => all.push(piece),
        }
    }

    /// Calls `field` for each field of the merged message, in wire order.
    fn for_each_field(
        &self,
        field: impl FnMut(u32, Field<'a>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        self.for_each_field_reading(None, field)
    }

    /// [`Self::for_each_field`], reading field `as_bytes` as length-delimited
    /// whatever its wire type says: prost decodes a map field that way.
    fn for_each_field_reading(
        &self,
        as_bytes: Option<u32>,
        mut field: impl FnMut(u32, Field<'a>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let pieces: &[&'a [u8]] = match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(all) => all,
        };
        for piece in pieces {
            let mut buf: &'a [u8] = piece;
            while !buf.is_empty() {
                let (tag, value) = next_field(&mut buf, as_bytes)?;
                field(tag, value)?;
            }
        }
        Ok(())
    }
}

/// A field's value, by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    /// Fixed32 or a group: no field of these messages has that type.
    Other,
}

impl Field<'_> {
    fn wire_type_name(&self) -> &'static str {
        match self {
            Self::Varint(_) => "varint",
            Self::Fixed64(_) => "64-bit",
            Self::Bytes(_) => "length-delimited",
            Self::Other => "32-bit or group",
        }
    }
}

fn next_field<'a>(buf: &mut &'a [u8], as_bytes: Option<u32>) -> Result<(u32, Field<'a>), Fail> {
    let key = varint(buf)?;
    let tag = u32::try_from(key >> 3).map_err(|_| Fail::malformed("invalid field number"))?;
    if tag == 0 {
        return Err(Fail::malformed("invalid field number 0"));
    }
    let wire_type = match key & 7 {
        invalid @ 6.. => return Err(Fail::malformed(format!("invalid wire type {invalid}"))),
        _ if as_bytes == Some(tag) => 2,
        valid => valid,
    };
    let field = match wire_type {
        0 => Field::Varint(varint(buf)?),
        1 => Field::Fixed64(take(buf, 8)?.try_into().map_err(|_| Fail::truncated())?),
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| Fail::truncated())?;
            Field::Bytes(take(buf, len)?)
        }
        3 => {
            skip_group(tag, buf, 0)?;
            Field::Other
        }
        5 => {
            take(buf, 4)?;
            Field::Other
        }
        other => return Err(Fail::malformed(format!("invalid wire type {other}"))),
    };
    Ok((tag, field))
}

/// Skips a (deprecated) group up to its end marker, as prost does.
fn skip_group(tag: u32, buf: &mut &[u8], depth: usize) -> Result<(), Fail> {
    if depth > MAX_DEPTH {
        return Err(Fail::malformed("recursion limit reached"));
    }
    loop {
        if buf.is_empty() {
            return Err(Fail::truncated());
        }
        let key = varint(buf)?;
        let inner = u32::try_from(key >> 3).map_err(|_| Fail::malformed("invalid field number"))?;
        match key & 7 {
            0 => {
                varint(buf)?;
            }
            1 => {
                take(buf, 8)?;
            }
            2 => {
                let len = usize::try_from(varint(buf)?).map_err(|_| Fail::truncated())?;
                take(buf, len)?;
            }
            3 => skip_group(inner, buf, depth + 1)?,
            4 if inner == tag => return Ok(()),
            4 => return Err(Fail::malformed("unexpected end group")),
            5 => {
                take(buf, 4)?;
            }
            other => return Err(Fail::malformed(format!("invalid wire type {other}"))),
        }
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, Fail> {
    encoding::decode_varint(buf).map_err(|_| Fail::malformed("invalid varint"))
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Fail> {
    if buf.len() < len {
        return Err(Fail::truncated());
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Ok(head)
}

fn wrong_type(field: &Field<'_>, expected: &str) -> Fail {
    Fail::malformed(format!(
        "a {} field where {expected} was expected",
        field.wire_type_name()
    ))
}

fn utf8(bytes: &[u8]) -> Result<&str, Fail> {
    std::str::from_utf8(bytes).map_err(|_| Fail::malformed("invalid UTF-8 in a string"))
}

/// How a message is walked: written out, or (for what protobuf decodes and
/// then drops: an earlier value of a repeated key, a oneof member replaced by
/// a later one) only checked to be decodable, so the payloads refused are
/// exactly those prost refuses.
#[derive(Clone, Copy)]
struct Walk {
    depth: usize,
    check_only: bool,
}

impl Walk {
    fn deeper(self) -> Result<Self, Fail> {
        if self.depth >= MAX_DEPTH {
            return Err(Fail::malformed("nested more than 100 levels deep"));
        }
        Ok(Self {
            depth: self.depth + 1,
            ..self
        })
    }

    fn checking(self) -> Self {
        Self {
            check_only: true,
            ..self
        }
    }
}

/// `Struct { map<string, Value> fields = 1; }`
fn write_struct(pieces: &Pieces<'_>, out: &mut Vec<u8>, walk: Walk) -> Result<(), Fail> {
    let walk = walk.deeper()?;
    let mut entries: Vec<(&str, Option<Pieces<'_>>)> = Vec::new();
    pieces.for_each_field_reading(Some(1), |tag, field| {
        if tag != 1 {
            return Ok(());
        }
        let Field::Bytes(entry) = field else {
            return Err(wrong_type(&field, "a map entry"));
        };
        // A map entry { string key = 1; Value value = 2; }; either may be
        // absent (empty key, null value).
        let mut key = "";
        let mut value: Option<Pieces<'_>> = None;
        Pieces::One(entry).for_each_field(|tag, field| {
            match (tag, field) {
                // Each occurrence is decoded (and must be UTF-8); the last wins.
                (1, Field::Bytes(k)) => key = utf8(k)?,
                (2, Field::Bytes(v)) => match &mut value {
                    Some(pieces) => pieces.push(v),
                    None => value = Some(Pieces::One(v)),
                },
                (1, other) => return Err(wrong_type(&other, "a string")),
                (2, other) => return Err(wrong_type(&other, "a Value")),
                _ => {}
            }
            Ok(())
        })?;
        entries.push((key, value));
        Ok(())
    })?;
    // A map keeps the last value of a key, and serde_json's map is sorted.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    let mut first = true;
    for (i, (key, value)) in entries.iter().enumerate() {
        let at_key = |fail: Fail| fail.at((*key).to_owned());
        if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
            if let Some(pieces) = value {
                check_value(pieces, walk).map_err(at_key)?;
            }
            continue;
        }
        if key.contains('\0') && !walk.check_only {
            return Err(at_key(Fail::json(JsonKind::Nul)));
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(key, out)?;
        out.push(b':');
        match value {
            Some(pieces) => write_value(pieces, out, walk).map_err(at_key)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

/// Walks a value that is decoded and dropped (see [`Walk`]).
fn check_value(pieces: &Pieces<'_>, walk: Walk) -> Result<(), Fail> {
    write_value(pieces, &mut Vec::new(), walk.checking())
}

/// `Value { oneof kind { NullValue null_value = 1; double number_value = 2;
/// string string_value = 3; bool bool_value = 4; Struct struct_value = 5;
/// ListValue list_value = 6; } }`: the last member on the wire wins, and a
/// message member seen again right after itself is merged.
fn write_value(pieces: &Pieces<'_>, out: &mut Vec<u8>, walk: Walk) -> Result<(), Fail> {
    enum Kind<'k> {
        Null,
        Number(f64),
        String(&'k str),
        Bool(bool),
        Struct(Pieces<'k>),
        List(Pieces<'k>),
    }
    let mut kind = Kind::Null;
    pieces.for_each_field(|tag, field| {
        let next = match (tag, field) {
            (1, Field::Varint(_)) => Kind::Null,
            (2, Field::Fixed64(bits)) => Kind::Number(f64::from_le_bytes(bits)),
            (3, Field::Bytes(s)) => Kind::String(utf8(s)?),
            (4, Field::Varint(b)) => Kind::Bool(b != 0),
            (5, Field::Bytes(s)) => match &mut kind {
                Kind::Struct(pieces) => {
                    pieces.push(s);
                    return Ok(());
                }
                _ => Kind::Struct(Pieces::One(s)),
            },
            (6, Field::Bytes(l)) => match &mut kind {
                Kind::List(pieces) => {
                    pieces.push(l);
                    return Ok(());
                }
                _ => Kind::List(Pieces::One(l)),
            },
            (1 | 4, other) => return Err(wrong_type(&other, "a varint")),
            (2, other) => return Err(wrong_type(&other, "a double")),
            (3, other) => return Err(wrong_type(&other, "a string")),
            (5 | 6, other) => return Err(wrong_type(&other, "a message")),
            _ => return Ok(()),
        };
        // The member replaced was decoded all the same.
        match std::mem::replace(&mut kind, next) {
            Kind::Struct(pieces) => write_struct(&pieces, &mut Vec::new(), walk.checking()),
            Kind::List(pieces) => write_list(&pieces, &mut Vec::new(), walk.checking()),
            _ => Ok(()),
        }
    })?;
    match kind {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::Bool(true) => out.extend_from_slice(b"true"),
        Kind::Bool(false) => out.extend_from_slice(b"false"),
        Kind::Number(n) => match number(n) {
            // `Number`'s Display is serde_json's own printing (itoa, ryu).
            Some(n) => write!(out, "{n}").map_err(|_| Fail::malformed("unprintable number"))?,
            None if walk.check_only => {}
            None => return Err(Fail::json(JsonKind::NonFinite)),
        },
        Kind::String(s) => {
            if s.contains('\0') && !walk.check_only {
                return Err(Fail::json(JsonKind::Nul));
            }
            write_str(s, out)?;
        }
        Kind::Struct(pieces) => write_struct(&pieces, out, walk)?,
        Kind::List(pieces) => write_list(&pieces, out, walk)?,
    }
    Ok(())
}

/// `ListValue { repeated Value values = 1; }`
fn write_list(pieces: &Pieces<'_>, out: &mut Vec<u8>, walk: Walk) -> Result<(), Fail> {
    let walk = walk.deeper()?;
    out.push(b'[');
    let mut index = 0usize;
    pieces.for_each_field(|tag, field| {
        if tag != 1 {
            return Ok(());
        }
        let Field::Bytes(v) = field else {
            return Err(wrong_type(&field, "a Value"));
        };
        if index > 0 {
            out.push(b',');
        }
        write_value(&Pieces::One(v), out, walk).map_err(|f| f.at(index.to_string()))?;
        index += 1;
        Ok(())
    })?;
    out.push(b']');
    Ok(())
}

/// A JSON string, escaped by serde_json itself.
fn write_str(s: &str, out: &mut Vec<u8>) -> Result<(), Fail> {
    serde_json::to_writer(&mut *out, s).map_err(|_| Fail::malformed("unwritable string"))
}

enum JsonKind {
    NonFinite,
    Nul,
}

/// A refusal on its way out of the recursion, collecting the path (innermost
/// key or list index first, unescaped) as it goes.
struct Fail {
    kind: Result<JsonKind, String>,
    reversed_path: Vec<String>,
}

impl Fail {
    fn json(kind: JsonKind) -> Self {
        Self {
            kind: Ok(kind),
            reversed_path: Vec::new(),
        }
    }

    fn malformed(why: impl Into<String>) -> Self {
        Self {
            kind: Err(why.into()),
            reversed_path: Vec::new(),
        }
    }

    fn truncated() -> Self {
        Self::malformed("truncated")
    }

    fn at(mut self, token: String) -> Self {
        self.reversed_path.push(token);
        self
    }

    fn into_error(self) -> JsonError {
        // The JSON Pointer, built as `struct_to_json` builds its own.
        let mut pointer = String::new();
        for token in self.reversed_path.iter().rev() {
            push_pointer_token(&mut pointer, token);
        }
        let path = display_path(&pointer);
        match self.kind {
            Ok(JsonKind::NonFinite) => JsonError::NonFiniteNumber { path },
            Ok(JsonKind::Nul) => JsonError::NulCharacter { path },
            Err(why) => JsonError::Malformed { path, why },
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::value::Kind;
    use prost_types::{ListValue, Struct, Value};

    use super::*;
    use crate::json::struct_to_json;

    /// What ingest wrote before: decode with prost, convert, print.
    fn via_prost(encoded: &[u8]) -> Option<Result<String, JsonError>> {
        let decoded = Struct::decode(encoded).ok()?;
        Some(struct_to_json(&decoded).map(|m| serde_json::Value::Object(m).to_string()))
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const KEYS: [&str; 9] = [
        "a",
        "b",
        "amount",
        "",
        "~/x",
        "é",
        "\"q\"",
        "line\nbreak",
        "\u{1f}",
    ];
    const STRINGS: [&str; 8] = [
        "",
        "EUR",
        "tab\there",
        "quote\"back\\slash",
        "ünï©ødé 😀",
        "\u{7f}\u{1}",
        "</script>",
        "\u{2028}",
    ];
    const NUMBERS: [f64; 12] = [
        0.0,
        -0.0,
        1.0,
        -42.0,
        0.5,
        1e-300,
        1e21,
        9_007_199_254_740_991.0,
        9_007_199_254_740_992.0,
        -9_007_199_254_740_993.0,
        123.456,
        f64::MAX,
    ];

    fn value(rng: &mut Rng, depth: u32, poison: bool) -> Value {
        let pick = if depth > 3 {
            rng.below(4)
        } else {
            rng.below(6)
        };
        let kind = match pick {
            0 => Kind::NullValue(0),
            1 => Kind::BoolValue(rng.below(2) == 0),
            2 if poison && rng.below(8) == 0 => Kind::NumberValue(f64::NAN),
            2 => Kind::NumberValue(NUMBERS[rng.below(12) as usize]),
            3 if poison && rng.below(8) == 0 => Kind::StringValue("nul\0here".into()),
            3 => Kind::StringValue(STRINGS[rng.below(8) as usize].into()),
            4 => Kind::StructValue(structure(rng, depth + 1, poison)),
            _ => Kind::ListValue(ListValue {
                values: (0..rng.below(4))
                    .map(|_| value(rng, depth + 1, poison))
                    .collect(),
            }),
        };
        Value { kind: Some(kind) }
    }

    fn structure(rng: &mut Rng, depth: u32, poison: bool) -> Struct {
        Struct {
            fields: (0..rng.below(5))
                .map(|_| {
                    let key = if poison && rng.below(20) == 0 {
                        "k\0".to_owned()
                    } else {
                        KEYS[rng.below(9) as usize].to_owned()
                    };
                    (key, value(rng, depth, poison))
                })
                .collect(),
        }
    }

    #[test]
    fn writes_what_serde_json_prints_for_the_decoded_struct() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut refused = 0;
        for case in 0..3000 {
            let s = structure(&mut rng, 0, case % 3 == 0);
            let encoded = s.encode_to_vec();
            let expected = via_prost(&encoded).expect("prost decodes what it encoded");
            refused += usize::from(expected.is_err());
            assert_eq!(struct_json(&encoded), expected, "case {case}: {s:?}");
        }
        // The poisoned cases did reach the refusals.
        assert!(refused > 50, "only {refused} refusals");
    }

    #[test]
    fn refuses_what_prost_refuses_and_agrees_on_the_rest() {
        // Flipped bytes and truncations of valid encodings: whenever prost
        // decodes, the text is the same; whenever it refuses, so do we.
        let mut rng = Rng(42);
        let (mut agreed, mut refused) = (0, 0);
        for case in 0..20_000 {
            let mut encoded = structure(&mut rng, 0, false).encode_to_vec();
            if encoded.is_empty() {
                continue;
            }
            match rng.below(3) {
                0 => encoded.truncate(rng.below(encoded.len() as u64) as usize),
                _ => {
                    let at = rng.below(encoded.len() as u64) as usize;
                    encoded[at] = rng.next() as u8;
                }
            }
            let ours = struct_json(&encoded);
            match via_prost(&encoded) {
                Some(expected) => {
                    agreed += 1;
                    assert_eq!(ours, expected, "case {case}: {encoded:?}");
                }
                None => {
                    refused += 1;
                    assert!(
                        ours.is_err(),
                        "case {case}: prost refuses {encoded:?}, we wrote {ours:?}"
                    );
                }
            }
        }
        assert!(
            agreed > 1000 && refused > 1000,
            "{agreed} agreed, {refused} refused"
        );
    }

    fn entry(key: &str, value: &Value) -> Vec<u8> {
        let mut e = Vec::new();
        encoding::string::encode(1, &key.to_owned(), &mut e);
        encoding::message::encode(2, value, &mut e);
        let mut out = Vec::new();
        encoding::bytes::encode(1, &e, &mut out);
        out
    }

    fn number_value(n: f64) -> Value {
        Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn the_last_of_a_repeated_key_wins_and_unknown_fields_are_skipped() {
        let mut encoded = entry("b", &number_value(1.0));
        encoded.extend(entry("a", &number_value(f64::NAN)));
        // An unknown varint field 9 and an unknown fixed32 field 10.
        encoded.extend([9 << 3, 150, 1, (10 << 3) | 5, 1, 2, 3, 4]);
        encoded.extend(entry("a", &number_value(2.5)));
        assert_eq!(struct_json(&encoded).as_deref(), Ok(r#"{"a":2.5,"b":1}"#));
        assert_eq!(struct_json(&encoded), via_prost(&encoded).expect("decodes"));
    }

    #[test]
    fn a_oneof_keeps_its_last_member_and_merges_a_repeated_message() {
        let inner = |k: &str, n: f64| Struct {
            fields: [(k.to_owned(), number_value(n))].into(),
        };
        let mut value = Vec::new();
        encoding::string::encode(3, &"dropped".to_owned(), &mut value);
        encoding::message::encode(5, &inner("x", 1.0), &mut value);
        encoding::message::encode(5, &inner("y", 2.0), &mut value);
        let mut entry_bytes = Vec::new();
        encoding::string::encode(1, &"v".to_owned(), &mut entry_bytes);
        encoding::bytes::encode(2, &value, &mut entry_bytes);
        let mut encoded = Vec::new();
        encoding::bytes::encode(1, &entry_bytes, &mut encoded);
        assert_eq!(
            struct_json(&encoded).as_deref(),
            Ok(r#"{"v":{"x":1,"y":2}}"#)
        );
        assert_eq!(struct_json(&encoded), via_prost(&encoded).expect("decodes"));
    }

    #[test]
    fn refusals_name_the_place() {
        let list = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![number_value(1.0), number_value(f64::INFINITY)],
            })),
        };
        let s = Struct {
            fields: [(
                "a/b".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("l".to_owned(), list)].into(),
                    })),
                },
            )]
            .into(),
        };
        assert_eq!(
            struct_json(&s.encode_to_vec()).map_err(|e| e.to_string()),
            Err("/a~1b/l/1 is not a finite number".to_owned())
        );
        let truncated = &s.encode_to_vec()[..5];
        assert!(matches!(
            struct_json(truncated),
            Err(JsonError::Malformed { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = number_value(1.0);
        for _ in 0..150 {
            v = Value {
                kind: Some(Kind::ListValue(ListValue { values: vec![v] })),
            };
        }
        let s = Struct {
            fields: [("deep".to_owned(), v)].into(),
        };
        let err = struct_json(&s.encode_to_vec()).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(why) if why.contains("nested more than 100 levels")),
            "{err:?}"
        );
    }

    #[test]
    fn events_round_trip_and_keep_every_payload_occurrence() {
        let event = crate::v1::Event {
            event_id: "e1".into(),
            event_type: "page.view".into(),
            source: "web".into(),
            user_id: "u1".into(),
            session_id: String::new(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            payload: Some(Struct {
                fields: [("a".to_owned(), number_value(1.0))].into(),
            }),
        };
        let encoded = crate::v1::PublishBatchRequest {
            events: vec![event.clone()],
        }
        .encode_to_vec();
        let wire = PublishBatchRequest::decode(encoded.as_slice()).expect("decodes");
        assert_eq!(wire.encoded_len(), encoded.len());
        assert_eq!(wire.encode_to_vec(), encoded);
        let (fields, payload) = wire.events[0].clone().into_fields();
        assert_eq!(fields.event_id, "e1");
        assert_eq!(fields.occurred_at, event.occurred_at);
        assert_eq!(
            struct_json(&payload.unwrap_or_default()).as_deref(),
            Ok(r#"{"a":1}"#)
        );
        // A payload field sent twice is merged, as protobuf does.
        let mut twice = Vec::new();
        encoding::message::encode(
            7,
            &Struct {
                fields: [("b".to_owned(), number_value(2.0))].into(),
            },
            &mut twice,
        );
        let mut event_bytes = event.encode_to_vec();
        event_bytes.extend(twice);
        let wire = Event::decode(event_bytes.as_slice()).expect("decodes");
        let merged = crate::v1::Event::decode(event_bytes.as_slice()).expect("decodes");
        assert_eq!(
            struct_json(&wire.payload.unwrap_or_default()),
            struct_to_json(&merged.payload.unwrap_or_default())
                .map(|m| serde_json::Value::Object(m).to_string())
        );
    }
}
