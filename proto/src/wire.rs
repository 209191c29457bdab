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
/// payload as a `Struct` inside the request would have hit. prost allows 100
/// nested messages, and counts every one (a map entry and each `Value`
/// included); the request and the event around the payload take two, so the
/// `Struct`'s fields are decoded with 98 left.
const PAYLOAD_BUDGET: u32 = 98;

/// Writes the JSON object of an encoded `google.protobuf.Struct`.
pub fn struct_json(encoded: &[u8]) -> Result<String, JsonError> {
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 4 + 2);
    let walk = Walk {
        budget: PAYLOAD_BUDGET,
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

    /// Calls `field` for each field of the merged message, in wire order;
    /// `walk` is where the message's fields are decoded.
    fn for_each_field(
        &self,
        walk: Walk,
        field: impl FnMut(u32, Field<'a>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        self.for_each_field_reading(None, walk, field)
    }

    /// [`Self::for_each_field`], reading field `as_bytes` as length-delimited
    /// whatever its wire type says: prost decodes a map field that way.
    fn for_each_field_reading(
        &self,
        as_bytes: Option<u32>,
        walk: Walk,
        mut field: impl FnMut(u32, Field<'a>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let pieces: &[&'a [u8]] = match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(all) => all,
        };
        for piece in pieces {
            let mut buf: &'a [u8] = piece;
            while !buf.is_empty() {
                let (tag, value) = next_field(&mut buf, as_bytes, walk.budget)?;
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

/// A field key, checked as prost's `decode_key` checks it: at most 32 bits,
/// a valid wire type, a field number of at least 1.
fn key(buf: &mut &[u8]) -> Result<(u32, u32), Fail> {
    let key = u32::try_from(varint(buf)?).map_err(|_| Fail::malformed("invalid key"))?;
    let wire_type = key & 7;
    if wire_type >= 6 {
        return Err(Fail::malformed(format!("invalid wire type {wire_type}")));
    }
    let tag = key >> 3;
    if tag == 0 {
        return Err(Fail::malformed("invalid field number 0"));
    }
    Ok((tag, wire_type))
}

/// The next field; `budget` is the recursion budget where it is decoded.
fn next_field<'a>(
    buf: &mut &'a [u8],
    as_bytes: Option<u32>,
    budget: u32,
) -> Result<(u32, Field<'a>), Fail> {
    let (tag, wire_type) = key(buf)?;
    let wire_type = if as_bytes == Some(tag) { 2 } else { wire_type };
    let field = match wire_type {
        0 => Field::Varint(varint(buf)?),
        1 => Field::Fixed64(take(buf, 8)?.try_into().map_err(|_| Fail::truncated())?),
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| Fail::truncated())?;
            Field::Bytes(take(buf, len)?)
        }
        3 => {
            skip_group(tag, buf, budget)?;
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

/// Skips a (deprecated) group up to its end marker, as prost does: the group
/// needs recursion budget left, and so does each field inside it, one level
/// down.
fn skip_group(tag: u32, buf: &mut &[u8], budget: u32) -> Result<(), Fail> {
    let inner_budget = budget.checked_sub(1).ok_or_else(too_deep)?;
    loop {
        if buf.is_empty() {
            return Err(Fail::truncated());
        }
        let (inner, wire_type) = key(buf)?;
        match wire_type {
            3 => skip_group(inner, buf, inner_budget)?,
            4 if inner == tag => return Ok(()),
            4 => return Err(Fail::malformed("unexpected end group")),
            _ if inner_budget == 0 => return Err(too_deep()),
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
            _ => {
                take(buf, 4)?;
            }
        }
    }
}

fn too_deep() -> Fail {
    Fail::malformed(
        "nested beyond protobuf's recursion limit (100 messages, counting the request's)",
    )
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
    /// prost's recursion budget where the message's fields are decoded: a
    /// nested message (a map entry too) needs one left, and so does skipping
    /// an unknown field.
    budget: u32,
    check_only: bool,
}

impl Walk {
    /// Into a nested message: where its fields are decoded.
    fn enter(self) -> Result<Self, Fail> {
        Ok(Self {
            budget: self.budget.checked_sub(1).ok_or_else(too_deep)?,
            ..self
        })
    }

    /// Past an unknown field.
    fn skip(self) -> Result<(), Fail> {
        if self.budget == 0 {
            return Err(too_deep());
        }
        Ok(())
    }

    fn checking(self) -> Self {
        Self {
            check_only: true,
            ..self
        }
    }
}

/// `Struct { map<string, Value> fields = 1; }`; `walk` is where its fields
/// are decoded.
fn write_struct(pieces: &Pieces<'_>, out: &mut Vec<u8>, walk: Walk) -> Result<(), Fail> {
    let mut entries: Vec<(&str, Option<Pieces<'_>>)> = Vec::new();
    pieces.for_each_field_reading(Some(1), walk, |tag, field| {
        if tag != 1 {
            return walk.skip();
        }
        let Field::Bytes(entry) = field else {
            return Err(wrong_type(&field, "a map entry"));
        };
        // A map entry { string key = 1; Value value = 2; }; either may be
        // absent (empty key, null value). To prost it is a message.
        let in_entry = walk.enter()?;
        let mut key = "";
        let mut value: Option<Pieces<'_>> = None;
        Pieces::One(entry).for_each_field(in_entry, |tag, field| {
            match (tag, field) {
                // Each occurrence is decoded (and must be UTF-8); the last wins.
                (1, Field::Bytes(k)) => key = utf8(k)?,
                (2, Field::Bytes(v)) => match &mut value {
                    Some(pieces) => pieces.push(v),
                    None => value = Some(Pieces::One(v)),
                },
                (1, other) => return Err(wrong_type(&other, "a string")),
                (2, other) => return Err(wrong_type(&other, "a Value")),
                _ => return in_entry.skip(),
            }
            Ok(())
        })?;
        entries.push((key, value));
        Ok(())
    })?;
    // A map keeps the last value of a key, and serde_json's map is sorted.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    // A value's fields are decoded inside its entry, inside this struct.
    let in_value = || walk.enter()?.enter();
    out.push(b'{');
    let mut first = true;
    for (i, (key, value)) in entries.iter().enumerate() {
        let at_key = |fail: Fail| fail.at((*key).to_owned());
        if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
            if let Some(pieces) = value {
                in_value()
                    .and_then(|in_value| check_value(pieces, in_value))
                    .map_err(at_key)?;
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
            Some(pieces) => in_value()
                .and_then(|in_value| write_value(pieces, out, in_value))
                .map_err(at_key)?,
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
/// message member seen again right after itself is merged. `walk` is where
/// its fields are decoded.
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
    pieces.for_each_field(walk, |tag, field| {
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
            _ => return walk.skip(),
        };
        // The member replaced was decoded all the same.
        match std::mem::replace(&mut kind, next) {
            Kind::Struct(pieces) => {
                write_struct(&pieces, &mut Vec::new(), walk.enter()?.checking())
            }
            Kind::List(pieces) => write_list(&pieces, &mut Vec::new(), walk.enter()?.checking()),
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
        Kind::Struct(pieces) => write_struct(&pieces, out, walk.enter()?)?,
        Kind::List(pieces) => write_list(&pieces, out, walk.enter()?)?,
    }
    Ok(())
}

/// `ListValue { repeated Value values = 1; }`; `walk` is where its fields
/// are decoded.
fn write_list(pieces: &Pieces<'_>, out: &mut Vec<u8>, walk: Walk) -> Result<(), Fail> {
    out.push(b'[');
    let mut index = 0usize;
    pieces.for_each_field(walk, |tag, field| {
        if tag != 1 {
            return walk.skip();
        }
        let Field::Bytes(v) = field else {
            return Err(wrong_type(&field, "a Value"));
        };
        if index > 0 {
            out.push(b',');
        }
        walk.enter()
            .and_then(|in_value| write_value(&Pieces::One(v), out, in_value))
            .map_err(|f| f.at(index.to_string()))?;
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

    /// What ingest wrote before: decode with prost (the payload inside its
    /// request, as it arrived), convert, print.
    fn via_prost(encoded: &[u8]) -> Option<Result<String, JsonError>> {
        let decoded = decode_in_request(encoded)?;
        Some(struct_to_json(&decoded).map(|m| serde_json::Value::Object(m).to_string()))
    }

    /// The payload decoded by prost inside `PublishRequest { event { payload } }`.
    fn decode_in_request(encoded: &[u8]) -> Option<Struct> {
        let mut event = Vec::new();
        encoding::bytes::encode(7, &encoded.to_vec(), &mut event);
        let mut request = Vec::new();
        encoding::bytes::encode(1, &event, &mut request);
        let request = crate::v1::PublishRequest::decode(request.as_slice()).ok()?;
        Some(request.event?.payload.unwrap_or_default())
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
            matches!(&err, Err(why) if why.contains("recursion limit")),
            "{err:?}"
        );
    }

    #[test]
    fn nesting_is_bounded_where_prost_bounds_it() {
        // Found by the properties: 40 structs nested in one another were
        // written, yet prost refuses them (it counts each map entry, Value
        // and Struct against its limit of 100), so ingest took events whose
        // payloads a prost client of ListEvents cannot decode.
        let mut v = number_value(1.0);
        for depth in 1..=40 {
            let s = Struct {
                fields: [("k".to_owned(), v)].into(),
            };
            let encoded = s.encode_to_vec();
            assert_eq!(
                struct_json(&encoded).ok(),
                via_prost(&encoded).and_then(Result::ok),
                "{depth} structs deep"
            );
            v = Value {
                kind: Some(Kind::StructValue(s)),
            };
        }
        let forty = Struct {
            fields: [("k".to_owned(), v)].into(),
        };
        assert!(struct_json(&forty.encode_to_vec()).is_err());
    }

    #[test]
    fn a_key_beyond_32_bits_is_refused() {
        // Found by the properties: an unknown field whose key does not fit in
        // 32 bits was skipped, where prost refuses the payload ("invalid key
        // value"), in a group too.
        let mut encoded = Vec::new();
        encoding::encode_varint(1 << 32, &mut encoded);
        encoded.push(0);
        assert!(via_prost(&encoded).is_none());
        assert!(matches!(
            struct_json(&encoded),
            Err(JsonError::Malformed { .. })
        ));
        let mut group = vec![(9 << 3) | 3];
        encoding::encode_varint(1 << 32, &mut group);
        group.extend([0, (9 << 3) | 4]);
        assert!(via_prost(&group).is_none());
        assert!(struct_json(&group).is_err());
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

    mod properties {
        use proptest::collection::vec;
        use proptest::prelude::*;
        use serde_json::Value as Json;

        use super::*;
        use crate::testing;
        use crate::validate::validate_with_payload;

        /// An edit of an encoding: set a byte, cut it short, insert a byte,
        /// repeat a stretch (a field seen twice is merged), drop a stretch.
        #[derive(Debug, Clone)]
        enum Edit {
            Set(usize, u8),
            Truncate(usize),
            Insert(usize, u8),
            Repeat(usize, usize),
            Remove(usize, usize),
            /// A field key (any varint: unknown, out-of-range and group keys
            /// included) and a byte after it.
            Key(usize, u64, u8),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
                any::<usize>().prop_map(Edit::Truncate),
                (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
                (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Repeat(at, n)),
                (any::<usize>(), 1..8usize).prop_map(|(at, n)| Edit::Remove(at, n)),
                (
                    any::<usize>(),
                    prop_oneof![
                        0..64u64,
                        any::<u64>(),
                        (29..36u32, 0..8u64).prop_map(|(bits, wire)| (1u64 << bits) - 8 + wire),
                    ],
                    any::<u8>(),
                )
                    .prop_map(|(at, key, b)| Edit::Key(at, key, b)),
            ]
        }

        fn edited(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
            for edit in edits {
                let len = bytes.len();
                match *edit {
                    Edit::Set(at, b) => {
                        if len > 0 {
                            bytes[at % len] = b;
                        }
                    }
                    Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
                    Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
                    Edit::Repeat(at, n) => {
                        let start = at % (len + 1);
                        let end = (start + n).min(len);
                        let piece = bytes[start..end].to_vec();
                        bytes.splice(end..end, piece);
                    }
                    Edit::Remove(at, n) => {
                        let start = at % (len + 1);
                        bytes.drain(start..(start + n).min(len));
                    }
                    Edit::Key(at, key, b) => {
                        let mut field = Vec::new();
                        encoding::encode_varint(key, &mut field);
                        field.push(b);
                        let at = at % (len + 1);
                        bytes.splice(at..at, field);
                    }
                }
            }
            bytes
        }

        /// Bytes a payload field may hold: anything, the encoding of any
        /// Struct, that edited, two encodings one after the other (merged).
        fn payload_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                2 => vec(any::<u8>(), 0..64),
                2 => testing::payload().prop_map(|s| s.encode_to_vec()),
                4 => (testing::payload(), vec(edit(), 1..4))
                    .prop_map(|(s, edits)| edited(s.encode_to_vec(), &edits)),
                1 => (testing::payload(), testing::payload()).prop_map(|(a, b)| {
                    let mut bytes = a.encode_to_vec();
                    bytes.extend(b.encode_to_vec());
                    bytes
                }),
            ]
        }

        /// The bytes of a Publish(Batch)Request: anything, the encoding of
        /// any events, that edited.
        fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
            let events = || vec(testing::event(), 0..4);
            let request = |events| crate::v1::PublishBatchRequest { events }.encode_to_vec();
            prop_oneof![
                1 => vec(any::<u8>(), 0..128),
                3 => events().prop_map(request),
                3 => (events(), vec(edit(), 1..4))
                    .prop_map(move |(events, edits)| edited(request(events), &edits)),
            ]
        }

        proptest! {
            #![proptest_config(crate::testing::config())]

            /// Any bytes: what prost decodes as a Struct is written exactly
            /// as the prost Struct + serde_json path writes it (and that is
            /// README's JSON: parseable, an object, integral numbers without
            /// a fraction) or refused as that path refuses it, naming the
            /// offending value; what prost cannot decode is refused.
            #[test]
            fn struct_json_writes_what_the_prost_path_writes(bytes in payload_bytes()) {
                let ours = struct_json(&bytes);
                if let Ok(text) = &ours {
                    let parsed = serde_json::from_str::<Json>(text);
                    prop_assert!(
                        parsed.as_ref().is_ok_and(Json::is_object),
                        "{:?} is not a JSON object: {:?}",
                        text,
                        parsed
                    );
                }
                let Some(decoded) = decode_in_request(&bytes) else {
                    prop_assert!(ours.is_err(), "prost refuses what we wrote as {:?}", ours);
                    return Ok(());
                };
                let expected = struct_to_json(&decoded).map(|m| Json::Object(m).to_string());
                prop_assert_eq!(&ours, &expected);
                match (&ours, testing::json_of(&decoded)) {
                    (Ok(text), Some(map)) => prop_assert_eq!(text, &Json::Object(map).to_string()),
                    (Err(JsonError::NonFiniteNumber { path }), None) => prop_assert!(
                        testing::names_the_offence(&decoded, path, false),
                        "{} holds no non-finite number",
                        path
                    ),
                    (Err(JsonError::NulCharacter { path }), None) => prop_assert!(
                        testing::names_the_offence(&decoded, path, true),
                        "{:?} holds no NUL",
                        path
                    ),
                    (ours, oracle) => prop_assert!(false, "wrote {:?}; README says {:?}", ours, oracle),
                }
            }
        }

        proptest! {
            #![proptest_config(crate::testing::config())]

            /// Any request bytes, through what ingest does with them: decoded
            /// with the payloads kept as bytes (refused only where prost's own
            /// types refuse too, re-encoding to what was read), each payload
            /// written as the prost path writes it, each event then valid
            /// exactly when README's rules allow it or refused naming
            /// `events[i].<field>` for each field that breaks them. A request
            /// prost's own types refuse has an event refused here.
            #[test]
            fn a_request_ends_as_valid_events_or_violations(
                bytes in request_bytes(),
                now in testing::now(),
            ) {
                let contract = crate::v1::PublishBatchRequest::decode(bytes.as_slice());
                let Ok(request) = PublishBatchRequest::decode(bytes.as_slice()) else {
                    prop_assert!(contract.is_err(), "prost's types decode what ours refuse");
                    return Ok(());
                };
                let again = request.encode_to_vec();
                prop_assert_eq!(request.encoded_len(), again.len());
                let reread = PublishBatchRequest::decode(again.as_slice());
                prop_assert_eq!(reread.as_ref(), Ok(&request));
                if let Ok(contract) = &contract {
                    prop_assert_eq!(contract.events.len(), request.events.len());
                }
                let mut an_event_refused = false;
                for (i, event) in request.events.into_iter().enumerate() {
                    let (fields, payload) = event.into_fields();
                    if let Ok(contract) = &contract {
                        let mut expected = contract.events[i].clone();
                        let decoded = expected.payload.take();
                        prop_assert_eq!(&fields, &expected);
                        prop_assert_eq!(payload.is_some(), decoded.is_some());
                    }
                    let written = payload.as_deref().map(struct_json);
                    if let Some((payload, ours)) = payload.as_deref().zip(written.as_ref()) {
                        match via_prost(payload) {
                            Some(expected) => prop_assert_eq!(ours, &expected),
                            None => prop_assert!(ours.is_err(), "prost refuses the payload; we wrote {:?}", ours),
                        }
                    }
                    let text = written.as_ref().map(|w| w.as_ref().ok().cloned());
                    let prefix = format!("events[{i}]");
                    let refused = testing::refused_fields(&fields, text.as_ref(), now);
                    match validate_with_payload(&fields, written, &prefix, now) {
                        Ok(valid) => {
                            prop_assert!(refused.is_empty(), "accepted; the rules refuse {:?}", refused);
                            let expected = text.flatten().unwrap_or_else(|| "{}".to_owned());
                            prop_assert_eq!(valid.payload_json, expected);
                        }
                        Err(violations) => {
                            an_event_refused = true;
                            prop_assert_eq!(&testing::named_fields(&violations, &prefix)?, &refused);
                        }
                    }
                }
                if contract.is_err() {
                    prop_assert!(an_event_refused, "prost's types refuse the request, we accept every event of it");
                }
            }
        }
    }
}
