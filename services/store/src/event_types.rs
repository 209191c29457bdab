//! The event-type registry: versions of each type's payload JSON Schema.

use std::time::SystemTime;

use deadpool_postgres::GenericClient;

use crate::StoreError;

pub const CHANGED_CHANNEL: &str = "tributary_event_types";

#[derive(Debug, Clone)]
pub struct EventTypeRow {
    pub name: String,
    pub version: i32,
    pub schema: serde_json::Value,
    pub description: String,
    pub created_at: SystemTime,
}

fn row(r: &tokio_postgres::Row) -> EventTypeRow {
    EventTypeRow {
        name: r.get(0),
        version: r.get(1),
        schema: r.get(2),
        description: r.get(3),
        created_at: r.get(4),
    }
}

const COLUMNS: &str = "name, version, schema, description, created_at";

/// Adds the next version of `name`. Concurrent registrations of one name are
/// serialised by a transaction-scoped advisory lock on the name.
pub async fn register(
    client: &mut deadpool_postgres::Object,
    name: &str,
    schema: &serde_json::Value,
    description: &str,
) -> Result<EventTypeRow, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&name])
        .await?;
    let sql = format!(
        "INSERT INTO event_types (name, version, schema, description)
         SELECT $1, COALESCE(max(version), 0) + 1, $2, $3 FROM event_types WHERE name = $1
         RETURNING {COLUMNS}"
    );
    let r = tx.query_one(&sql, &[&name, schema, &description]).await?;
    tx.commit().await?;
    Ok(row(&r))
}

/// A version of `name`, or its latest when `version` is 0.
pub async fn get(
    client: &impl GenericClient,
    name: &str,
    version: i32,
) -> Result<Option<EventTypeRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM event_types WHERE name = $1 AND ($2 = 0 OR version = $2)
         ORDER BY version DESC LIMIT 1"
    );
    Ok(client
        .query_opt(&sql, &[&name, &version])
        .await?
        .as_ref()
        .map(row))
}

/// The latest version of each type, by name, after `after`.
pub async fn list_latest(
    client: &impl GenericClient,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<EventTypeRow>, StoreError> {
    let sql = format!(
        "SELECT DISTINCT ON (name) {COLUMNS} FROM event_types
         WHERE $1::text IS NULL OR name > $1
         ORDER BY name, version DESC LIMIT $2"
    );
    let rows = client.query(&sql, &[&after, &limit]).await?;
    Ok(rows.iter().map(row).collect())
}

/// A compiled payload schema.
pub type Validator = jsonschema::Validator;

/// Compiles a JSON Schema, first checking it against its meta-schema. Remote
/// `$ref`s are not fetched (the crate is built without an HTTP client), so a
/// schema that needs one is refused rather than trusted blindly.
pub fn compile(schema: &serde_json::Value) -> Result<Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("must be a JSON object (or a boolean schema)".into());
    }
    jsonschema::meta::validate(schema).map_err(|e| format!("is not a valid JSON Schema: {e}"))?;
    jsonschema::validator_for(schema).map_err(|e| format!("cannot be compiled: {e}"))
}

/// Each way `payload` fails `validator`: (JSON Pointer into the payload, why).
pub fn violations(validator: &Validator, payload: &serde_json::Value) -> Vec<(String, String)> {
    validator
        .iter_errors(payload)
        .take(10)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            (
                if pointer.is_empty() {
                    "/".to_owned()
                } else {
                    pointer
                },
                e.to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn compiles_real_schemas_and_names_failing_pointers() {
        let v = super::compile(&json!({
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "number", "minimum": 0}, "items": {"type": "array"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(super::violations(&v, &json!({"amount": 3})).is_empty());
        let bad = super::violations(&v, &json!({"amount": -1, "items": "x"}));
        let pointers: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            pointers.contains(&"/amount") && pointers.contains(&"/items"),
            "{bad:?}"
        );
        assert!(super::compile(&json!({"type": "no-such-type"})).is_err());
        assert!(super::compile(&json!([1])).is_err());
        assert!(super::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }
}
