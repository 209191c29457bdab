//! API key RPCs: create (the secret shown once), list, revoke.

use std::time::{Duration, SystemTime};

use tonic::Status;
use tributary_platform::auth::{Scope, key};
use tributary_platform::status::invalid_argument;
use tributary_proto::v1::{
    ApiKey, CreateApiKeyRequest, CreateApiKeyResponse, ListApiKeysRequest, ListApiKeysResponse,
    RateLimit, RevokeApiKeyRequest,
};
use tributary_proto::validate::FieldViolation;
use tributary_store::api_keys::{self as store, ApiKeyRow, NewApiKey};

use crate::context::{AdminContext, db_status};
use crate::paging;

const MAX_RATE: u32 = 1_000_000;
const PAGE_KIND: &str = "k1";

fn to_proto(r: ApiKeyRow) -> ApiKey {
    ApiKey {
        key_id: r.key_id,
        name: r.name,
        scopes: r.scopes,
        created_at: Some(r.created_at.into()),
        expires_at: r.expires_at.map(Into::into),
        revoked_at: r.revoked_at.map(Into::into),
        last_used_at: r.last_used_at.map(Into::into),
        rate_limit: Some(RateLimit {
            per_second: u32::try_from(r.rate_per_second).unwrap_or(0),
            burst: u32::try_from(r.rate_burst).unwrap_or(0),
        }),
        publishable: r.publishable,
        allowed_origins: r.allowed_origins,
    }
}

/// An exact web origin: `scheme://host[:port]`, http or https, nothing after.
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((inside, after)) = v6.split_once(']') else {
            return false;
        };
        if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return false;
        }
        match after {
            "" => return true,
            _ => ("v6", after.strip_prefix(':')),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    let port_ok = match port {
        None => true,
        Some(p) => {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
        }
    };
    host_ok && port_ok
}

pub async fn create(
    ctx: &AdminContext,
    request: CreateApiKeyRequest,
) -> Result<CreateApiKeyResponse, Status> {
    let mut v = Vec::new();
    let mut bad = |field: &str, why: &str| {
        v.push(FieldViolation {
            field: field.into(),
            description: why.into(),
        })
    };
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        bad("name", "is required, at most 200 characters");
    }
    let mut scopes: Vec<Scope> = Vec::new();
    for (i, s) in request.scopes.iter().enumerate() {
        match Scope::parse(s) {
            Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
            Some(_) => {}
            None => bad(
                &format!("scopes[{i}]"),
                "is not a scope (ingest:write, query:read, admin:read, admin:write, subscriptions:pull)",
            ),
        }
    }
    if request.publishable {
        if scopes.is_empty() {
            scopes.push(Scope::IngestWrite);
        }
        if scopes != [Scope::IngestWrite] {
            bad("scopes", "a publishable key may have only ingest:write");
        }
        if request.allowed_origins.is_empty() {
            bad(
                "allowed_origins",
                "a publishable key needs at least one origin (e.g. https://shop.example)",
            );
        }
        for (i, o) in request.allowed_origins.iter().enumerate() {
            if !is_origin(o) {
                bad(
                    &format!("allowed_origins[{i}]"),
                    "must be an exact origin, scheme://host[:port] (http or https, no path)",
                );
            }
        }
    } else {
        if scopes.is_empty() && request.scopes.is_empty() {
            bad("scopes", "at least one scope is required");
        }
        if !request.allowed_origins.is_empty() {
            bad(
                "allowed_origins",
                "only publishable keys have allowed origins",
            );
        }
    }
    let expires_at = match request.expires_at {
        None => None,
        Some(ts) => match SystemTime::try_from(ts) {
            Ok(at) if at > SystemTime::now() + Duration::from_secs(1) => Some(at),
            Ok(_) => {
                bad("expires_at", "must be in the future");
                None
            }
            Err(_) => {
                bad("expires_at", "is not a valid timestamp");
                None
            }
        },
    };
    let rate = request.rate_limit.unwrap_or_default();
    if rate.per_second > MAX_RATE || rate.burst > MAX_RATE {
        bad("rate_limit", "per_second and burst are at most 1000000");
    }
    if rate.per_second == 0 && rate.burst != 0 {
        bad("rate_limit.burst", "needs per_second");
    }
    if !v.is_empty() {
        return Err(invalid_argument(&v));
    }
    let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    // A clash of 12-character random ids is rare; try again a few times.
    for _ in 0..3 {
        let new = key::generate(request.publishable)
            .map_err(|e| tributary_platform::status::internal("cannot generate a key", &e))?;
        let row = NewApiKey {
            key_id: new.key_id.clone(),
            name: name.to_owned(),
            publishable: request.publishable,
            secret_sha256: new.secret_sha256.to_vec(),
            scopes: scopes.clone(),
            allowed_origins: request.allowed_origins.clone(),
            rate_per_second: i32::try_from(rate.per_second).unwrap_or(i32::MAX),
            rate_burst: i32::try_from(rate.burst).unwrap_or(i32::MAX),
            expires_at,
        };
        match ctx.pool.run(async |c| store::create(c, &row).await).await {
            Ok(created) => {
                tracing::info!(key_id = %created.key_id, name = %created.name, scopes = ?created.scopes, "API key created");
                return Ok(CreateApiKeyResponse {
                    key: Some(to_proto(created)),
                    secret: new.key,
                });
            }
            Err(e) if e.is_unique_violation() => continue,
            Err(e) => return Err(db_status("cannot create the API key", &e)),
        }
    }
    Err(Status::unavailable("cannot find a free key id; retry"))
}

pub async fn list(
    ctx: &AdminContext,
    request: ListApiKeysRequest,
) -> Result<ListApiKeysResponse, Status> {
    let page_size = match request.page_size {
        0 => 100,
        n @ 1..=1000 => i64::from(n),
        _ => {
            return Err(tributary_platform::status::violation(
                "page_size",
                "must be between 0 and 1000",
            ));
        }
    };
    let after = if request.page_token.is_empty() {
        None
    } else {
        let position = paging::decode(PAGE_KIND, &request.page_token)?;
        let (nanos, id) = position.split_once(':').ok_or_else(paging::malformed)?;
        let nanos: u64 = nanos.parse().map_err(|_| paging::malformed())?;
        Some((
            SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
            id.to_owned(),
        ))
    };
    let include_revoked = request.include_revoked;
    let mut rows = ctx
        .pool
        .run(async |c| {
            store::list(
                c,
                after.as_ref().map(|(at, id)| (*at, id.as_str())),
                include_revoked,
                page_size + 1,
            )
            .await
        })
        .await
        .map_err(|e| db_status("cannot list API keys", &e))?;
    let more = rows.len() > usize::try_from(page_size).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
    let next_page_token = match rows.last() {
        Some(last) if more => {
            // Microseconds are what PostgreSQL keeps: the cursor is exact.
            let nanos = last
                .created_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            paging::encode(PAGE_KIND, format!("{nanos}:{}", last.key_id))
        }
        _ => String::new(),
    };
    Ok(ListApiKeysResponse {
        keys: rows.into_iter().map(to_proto).collect(),
        next_page_token,
    })
}

pub async fn revoke(ctx: &AdminContext, request: RevokeApiKeyRequest) -> Result<ApiKey, Status> {
    if !key::is_key_id(&request.key_id) {
        return Err(tributary_platform::status::violation(
            "key_id",
            "must be a key id: 12 characters of [a-z0-9]",
        ));
    }
    let key_id = request.key_id;
    match ctx
        .pool
        .run(async |c| store::revoke(c, &key_id).await)
        .await
        .map_err(|e| db_status("cannot revoke the API key", &e))?
    {
        Some(row) => {
            tracing::info!(key_id = %row.key_id, "API key revoked");
            Ok(to_proto(row))
        }
        None => Err(Status::not_found(format!("no API key with id {key_id:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::is_origin;

    #[test]
    fn origins() {
        for good in [
            "https://shop.example",
            "http://127.0.0.1:8088",
            "https://a.b.example:443",
            "http://[::1]:8080",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/path",
            "ftp://x",
            "https://",
            "https://x:99999",
            "https://x:",
            "*",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
