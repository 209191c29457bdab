//! Whether a new version of an event type's JSON Schema accepts every
//! payload the previous version accepted. The check is conservative: it
//! proves compatibility keyword by keyword on `type`, `properties`,
//! `required`, `additionalProperties`, `enum`/`const`, numeric and length
//! bounds and `items`, walking subschemas; any other keyword that changed
//! (added, removed or altered) is "not provably compatible". Annotations
//! (`title`, `description`, `default`, `examples`, `$comment`, `deprecated`,
//! `readOnly`, `writeOnly`) never matter: JSON Schema's `default` does not
//! fill in a missing property, so a newly required one with a default is
//! still incompatible.

use serde_json::{Map, Value};

/// One reason the new schema may refuse what the old accepted: where (a JSON
/// Pointer into the new schema) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub pointer: String,
    pub why: String,
}

/// Every incompatibility of `new` with `old` (empty: compatible).
pub fn check(old: &Value, new: &Value) -> Vec<Incompatibility> {
    let mut found = Vec::new();
    compare(old, new, "", &mut found);
    found
}

const ANNOTATIONS: [&str; 8] = [
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords this module reasons about; any other is compared for equality.
const UNDERSTOOD: [&str; 20] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "items",
    "multipleOf",
    "pattern",
    "format",
];

fn push(found: &mut Vec<Incompatibility>, pointer: &str, why: impl Into<String>) {
    found.push(Incompatibility {
        pointer: if pointer.is_empty() {
            "/".into()
        } else {
            pointer.into()
        },
        why: why.into(),
    });
}

/// JSON Pointer escaping of one reference token (RFC 6901).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A schema that accepts everything: `true`, `{}`, or only annotations.
fn accepts_all(s: &Value) -> bool {
    match s {
        Value::Bool(b) => *b,
        Value::Object(m) => m.keys().all(|k| ANNOTATIONS.contains(&k.as_str())),
        _ => false,
    }
}

fn compare(old: &Value, new: &Value, at: &str, found: &mut Vec<Incompatibility>) {
    if old == new || accepts_all(new) || old == &Value::Bool(false) {
        return;
    }
    // `true` is `{}`: it accepts everything.
    let anything = Value::Object(Map::new());
    let old = if old == &Value::Bool(true) {
        &anything
    } else {
        old
    };
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        match (old, new) {
            (_, Value::Bool(false)) => push(found, at, "refuses everything (false)"),
            _ => push(
                found,
                at,
                "is not provably compatible (a schema changed shape)",
            ),
        }
        return;
    };
    types(o, n, at, found);
    values(o, n, at, found);
    bounds(o, n, at, found);
    objects(o, n, at, found);
    if let Some(new_items) = n.get("items") {
        let old_items = o.get("items").unwrap_or(&Value::Bool(true));
        compare(old_items, new_items, &format!("{at}/items"), found);
    }
    if let (Some(a), Some(b)) = (o.get("multipleOf"), n.get("multipleOf"))
        && a != b
    {
        let divides = match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => (a / b).fract() == 0.0,
            _ => false,
        };
        if !divides {
            push(
                found,
                &format!("{at}/multipleOf"),
                format!("{b} does not divide the old multipleOf {a}"),
            );
        }
    } else if o.get("multipleOf").is_none() && n.contains_key("multipleOf") {
        push(
            found,
            &format!("{at}/multipleOf"),
            "is new: refuses numbers the old schema accepted",
        );
    }
    // Every other keyword: added, removed or changed is not provable.
    let mut others: Vec<&String> = o.keys().chain(n.keys()).collect();
    others.sort();
    others.dedup();
    for k in others {
        let k = k.as_str();
        if ANNOTATIONS.contains(&k) || UNDERSTOOD.contains(&k) {
            continue;
        }
        if o.get(k) != n.get(k) {
            push(
                found,
                &format!("{at}/{}", token(k)),
                format!("{k:?} changed: not provably compatible"),
            );
        }
    }
    // pattern and format: any change is not provable (removing one loosens).
    for k in ["pattern", "format"] {
        if let Some(b) = n.get(k)
            && o.get(k) != Some(b)
        {
            push(
                found,
                &format!("{at}/{k}"),
                format!("{k:?} changed: not provably compatible"),
            );
        }
    }
}

/// JSON types a `type` keyword allows (absent: all).
fn type_set(m: &Map<String, Value>) -> Option<Vec<&str>> {
    match m.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => Some(Vec::new()),
    }
}

fn types(
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    at: &str,
    found: &mut Vec<Incompatibility>,
) {
    let Some(new) = type_set(n) else { return };
    let Some(old) = type_set(o) else {
        push(
            found,
            &format!("{at}/type"),
            format!("is new ({new:?}): the old schema accepted any type"),
        );
        return;
    };
    for t in old {
        let kept = new.contains(&t) || (t == "integer" && new.contains(&"number"));
        if !kept {
            push(
                found,
                &format!("{at}/type"),
                format!("no longer allows {t:?}"),
            );
        }
    }
}

fn values(
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    at: &str,
    found: &mut Vec<Incompatibility>,
) {
    // What the old schema restricted values to, when it did.
    let old_values: Option<Vec<&Value>> = match (o.get("const"), o.get("enum")) {
        (Some(c), _) => Some(vec![c]),
        (None, Some(Value::Array(e))) => Some(e.iter().collect()),
        _ => None,
    };
    let mut check = |key: &str, allowed: Vec<&Value>| match &old_values {
        None => push(
            found,
            &format!("{at}/{key}"),
            "is new: the old schema accepted other values",
        ),
        Some(old) => {
            for v in old {
                if !allowed.contains(v) {
                    push(
                        found,
                        &format!("{at}/{key}"),
                        format!("no longer allows {v}"),
                    );
                }
            }
        }
    };
    if let Some(c) = n.get("const") {
        check("const", vec![c]);
    }
    if let Some(Value::Array(e)) = n.get("enum") {
        check("enum", e.iter().collect());
    }
}

/// Bounds: a lower bound may only go down (or go), an upper one only up.
fn bounds(
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    at: &str,
    found: &mut Vec<Incompatibility>,
) {
    const LOWER: [&str; 5] = [
        "minimum",
        "exclusiveMinimum",
        "minLength",
        "minItems",
        "minProperties",
    ];
    const UPPER: [&str; 5] = [
        "maximum",
        "exclusiveMaximum",
        "maxLength",
        "maxItems",
        "maxProperties",
    ];
    for (keys, lower) in [(LOWER, true), (UPPER, false)] {
        for k in keys {
            let Some(new) = n.get(k).and_then(Value::as_f64) else {
                continue;
            };
            // minimum and exclusiveMinimum bound the same side: the old
            // schema's tightest on that side is what the new must not pass.
            let old = bound_of(o, k, lower);
            let ok = match old {
                None => false,
                Some((old, old_exclusive)) => {
                    let new_exclusive = k.starts_with("exclusive");
                    if lower {
                        new < old || (new == old && (!new_exclusive || old_exclusive))
                    } else {
                        new > old || (new == old && (!new_exclusive || old_exclusive))
                    }
                }
            };
            if !ok {
                let was = old.map_or("none".to_owned(), |(v, _)| v.to_string());
                push(
                    found,
                    &format!("{at}/{k}"),
                    format!("{new} is tighter than before ({was})"),
                );
            }
        }
    }
}

/// The old schema's bound on the side of `key` (and whether exclusive).
fn bound_of(o: &Map<String, Value>, key: &str, lower: bool) -> Option<(f64, bool)> {
    let (inclusive, exclusive) = match key {
        "minimum" | "exclusiveMinimum" => ("minimum", Some("exclusiveMinimum")),
        "maximum" | "exclusiveMaximum" => ("maximum", Some("exclusiveMaximum")),
        other => (other, None),
    };
    let a = o.get(inclusive).and_then(Value::as_f64).map(|v| (v, false));
    let b = exclusive
        .and_then(|k| o.get(k))
        .and_then(Value::as_f64)
        .map(|v| (v, true));
    match (a, b) {
        (Some(a), Some(b)) => {
            // The tighter of the two.
            let exclusive_tighter = if lower { b.0 >= a.0 } else { b.0 <= a.0 };
            Some(if exclusive_tighter { b } else { a })
        }
        (a, b) => a.or(b),
    }
}

fn objects(
    o: &Map<String, Value>,
    n: &Map<String, Value>,
    at: &str,
    found: &mut Vec<Incompatibility>,
) {
    let empty = Map::new();
    let old_props = o
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_props = n
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let any = Value::Bool(true);
    let old_ap = o.get("additionalProperties").unwrap_or(&any);
    let new_ap = n.get("additionalProperties").unwrap_or(&any);
    // patternProperties change what additionalProperties covers: only an
    // unchanged one is reasoned about (the generic equality check refuses
    // any change).
    for (k, old_schema) in old_props {
        let p = format!("{at}/properties/{}", token(k));
        match new_props.get(k) {
            Some(new_schema) => compare(old_schema, new_schema, &p, found),
            None => compare(
                old_schema,
                new_ap,
                &format!("{at}/additionalProperties"),
                found,
            ),
        }
    }
    for (k, new_schema) in new_props {
        if !old_props.contains_key(k) {
            // The old schema took this property under its additionalProperties.
            compare(
                old_ap,
                new_schema,
                &format!("{at}/properties/{}", token(k)),
                found,
            );
        }
    }
    compare(old_ap, new_ap, &format!("{at}/additionalProperties"), found);
    let names = |m: &Map<String, Value>| -> Vec<String> {
        m.get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let old_required = names(o);
    for r in names(n) {
        if !old_required.contains(&r) {
            push(
                found,
                &format!("{at}/required"),
                format!("{r:?} is newly required (a default does not fill it in)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(old: Value, new: Value) -> Vec<String> {
        check(&old, &new).into_iter().map(|i| i.pointer).collect()
    }

    #[test]
    fn loosening_is_compatible() {
        let old = json!({"type": "object", "required": ["a", "b"],
            "properties": {"a": {"type": "integer", "minimum": 1, "maximum": 10},
                           "b": {"enum": ["x", "y"]}, "c": {"type": "string", "maxLength": 5}},
            "additionalProperties": false});
        let new = json!({"type": "object", "required": ["a"], "description": "now documented",
            "properties": {"a": {"type": "number", "minimum": 0},
                           "b": {"enum": ["x", "y", "z"]}, "c": {"type": ["string", "null"]},
                           "d": {"type": "string"}},
            "additionalProperties": true});
        assert_eq!(pointers(old, new), Vec::<String>::new());
    }

    #[test]
    fn tightening_is_refused_where_it_happens() {
        let old = json!({"type": "object", "properties": {
            "a": {"type": "number", "minimum": 0},
            "b": {"enum": ["x", "y"]},
            "tags": {"type": "array", "items": {"type": "string"}}}});
        let new = json!({"type": "object", "required": ["a"], "properties": {
            "a": {"type": "integer", "minimum": 1, "default": 1},
            "b": {"enum": ["x"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
            "extra": {"type": "string"}}});
        let mut got = pointers(old, new);
        got.sort();
        assert_eq!(
            got,
            [
                "/properties/a/minimum",
                "/properties/a/type",
                "/properties/b/enum",
                "/properties/extra/type",
                "/properties/tags/items/maxLength",
                "/required",
            ]
        );
    }

    #[test]
    fn additional_properties_and_unknown_keywords() {
        // Closing an open object refuses payloads with other properties.
        assert_eq!(
            pointers(
                json!({"type": "object"}),
                json!({"type": "object", "additionalProperties": false})
            ),
            ["/additionalProperties"]
        );
        // A property the old schema only knew through additionalProperties.
        assert_eq!(
            pointers(
                json!({"additionalProperties": {"type": "string"}}),
                json!({"properties": {"a": {"type": "string", "minLength": 2}}, "additionalProperties": {"type": "string"}})
            ),
            ["/properties/a/minLength"]
        );
        // Any other keyword, changed: not provable.
        assert_eq!(
            pointers(
                json!({"type": "string"}),
                json!({"type": "string", "pattern": "^a"})
            ),
            ["/pattern"]
        );
        assert_eq!(
            pointers(
                json!({"allOf": [{"type": "string"}]}),
                json!({"allOf": [{"type": "number"}]})
            ),
            ["/allOf"]
        );
        assert_eq!(pointers(json!({"type": "string"}), json!(false)), ["/"]);
        assert_eq!(
            pointers(json!({"type": "string"}), json!(true)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bounds_inclusive_and_exclusive() {
        assert!(pointers(json!({"exclusiveMinimum": 0}), json!({"minimum": 0})).is_empty());
        assert_eq!(
            pointers(json!({"minimum": 0}), json!({"exclusiveMinimum": 0})),
            ["/exclusiveMinimum"]
        );
        assert!(pointers(json!({"maximum": 5}), json!({"maximum": 6})).is_empty());
        assert_eq!(
            pointers(json!({"maxLength": 5}), json!({"maxLength": 4})),
            ["/maxLength"]
        );
        assert_eq!(
            pointers(json!({"const": 1}), json!({"const": 2})),
            ["/const"]
        );
        assert!(pointers(json!({"const": 1}), json!({"enum": [1, 2]})).is_empty());
        assert!(pointers(json!({"multipleOf": 4}), json!({"multipleOf": 2})).is_empty());
        assert_eq!(
            pointers(json!({"multipleOf": 2}), json!({"multipleOf": 4})),
            ["/multipleOf"]
        );
    }
}
