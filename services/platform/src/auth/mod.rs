//! Who may call what: one tower layer every gRPC server runs (gRPC-Web
//! included), checking the API key of each call.
//!
//! - No key, a key of another format, an unknown, expired or revoked key, or
//!   a wrong secret: `UNAUTHENTICATED`. A valid key without the scope the
//!   method needs (or a publishable key from an origin it does not allow):
//!   `PERMISSION_DENIED`. Over the key's rate: `RESOURCE_EXHAUSTED` with
//!   `google.rpc.RetryInfo`. The key store unreachable for a key not cached
//!   yet: `UNAVAILABLE`.
//! - Keys are cached per replica: a known key costs no database round trip,
//!   and keeps working while PostgreSQL blips. A change of a key (revocation
//!   above all) is NOTIFYed, so every replica of every service drops or
//!   reloads it at once; all cached keys are re-read on every reconnect and
//!   every 30 s in case a notification was missed.
//! - Tonic interceptors are synchronous and a lookup may touch PostgreSQL, so
//!   this is a tower layer (tonic issue #870).
//! - Secrets are never logged, traced or put in labels: metrics and spans
//!   carry the id of a key whose secret matched, else `unknown`.

pub mod key;
pub mod scope;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use prometheus::{IntCounterVec, Registry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower::{Layer, Service};
use tributary_store::Pool;
use tributary_store::api_keys::{self, ApiKeyRow};

pub use scope::Scope;

/// The gRPC services and methods open without a key by default.
pub const DEFAULT_OPEN_METHODS: &str = "grpc.health.v1.Health,grpc.reflection.v1.ServerReflection,grpc.reflection.v1alpha.ServerReflection";

/// How long "no such key" is remembered (a NOTIFY of the key's creation
/// clears it at once).
const MISSING_TTL: Duration = Duration::from_secs(5);
/// Past this many remembered misses (garbage keys), they are forgotten.
const MAX_MISSING: usize = 10_000;
/// Every cached key is re-read this often, and last-used times written.
const FULL_REFRESH: Duration = Duration::from_secs(30);
/// Key-store lookups at once per replica: garbage keys cannot flood PostgreSQL.
const MAX_LOOKUPS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    On,
    Off,
}

/// The bootstrap admin key, as configured. Its Debug shows only the key id.
#[derive(Clone)]
pub struct BootstrapKey(String);

impl std::fmt::Debug for BootstrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match key::parse(&self.0) {
            Some(k) => write!(f, "BootstrapKey({})", k.key_id),
            None => f.write_str("BootstrapKey(?)"),
        }
    }
}

/// Parses `--bootstrap-admin-key` without ever echoing it (clap's own
/// errors quote the bad value).
#[derive(Clone)]
struct BootstrapKeyParser;

impl clap::builder::TypedValueParser for BootstrapKeyParser {
    type Value = BootstrapKey;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BootstrapKey, clap::Error> {
        let bad = || {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                "invalid --bootstrap-admin-key (TRIBUTARY_BOOTSTRAP_ADMIN_KEY): not an API key \
                 of the form trb_<key_id>_<secret> (generate one with `tributary-ctl generate-key`)\n",
            )
            .with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(bad)?.trim();
        match key::parse(s) {
            Some(k) if !k.publishable => Ok(BootstrapKey(s.to_owned())),
            _ => Err(bad()),
        }
    }
}

fn parse_rate_limit(s: &str) -> Result<(Scope, u32), String> {
    let (scope, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SCOPE=N/s, e.g. ingest:write=1000/s"))?;
    let scope = Scope::parse(scope.trim()).ok_or_else(|| {
        format!(
            "{scope:?} is not a scope (one of {})",
            Scope::ALL.map(Scope::as_str).join(", ")
        )
    })?;
    let n = rate
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| format!("{rate:?}: expected N/s, e.g. 1000/s"))?
        .parse::<u32>()
        .map_err(|e| format!("{rate:?}: {e}"))?;
    if n == 0 {
        return Err(format!(
            "{s:?}: the rate must be at least 1/s (leave it out for no limit)"
        ));
    }
    Ok((scope, n))
}

/// Authentication settings, the same for every service.
#[derive(Clone, clap::Args)]
pub struct AuthArgs {
    /// Check an API key (`authorization: Bearer trb_…`) on every call but the
    /// open methods. `off` trusts every caller: for a loopback-only local
    /// stack; the service then warns at start-up and in /ready.
    #[arg(long, env = "TRIBUTARY_AUTH", value_enum, default_value = "on")]
    pub auth: AuthMode,
    /// A bootstrap admin key, trb_<key_id>_<secret> (`tributary-ctl
    /// generate-key` makes one): every scope, held in memory only, never
    /// stored; use it to create narrower keys (AdminService.CreateApiKey).
    /// Rotate it by changing it on every service.
    #[arg(long, env = "TRIBUTARY_BOOTSTRAP_ADMIN_KEY", hide_env_values = true,
          value_parser = BootstrapKeyParser)]
    pub bootstrap_admin_key: Option<BootstrapKey>,
    /// gRPC services (`grpc.health.v1.Health`) or methods
    /// (`tributary.v1.QueryService/GetEvent`) callable without a key,
    /// comma-separated.
    #[arg(long, env = "TRIBUTARY_AUTH_OPEN_METHODS", value_delimiter = ',',
          default_value = DEFAULT_OPEN_METHODS)]
    pub auth_open_methods: Vec<String>,
    /// The default rate limit of a key for calls needing SCOPE, as
    /// SCOPE=N/s (burst N); repeatable, comma-separated in the environment. A
    /// key's own rate limit replaces it. Enforced per replica.
    #[arg(long = "rate-limit", env = "TRIBUTARY_RATE_LIMITS", value_delimiter = ',',
          value_parser = parse_rate_limit)]
    pub rate_limits: Vec<(Scope, u32)>,
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth", &self.auth)
            .field("bootstrap_admin_key", &self.bootstrap_admin_key)
            .field("auth_open_methods", &self.auth_open_methods)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

impl AuthArgs {
    /// Auth off, for tests that are not about auth.
    pub fn off() -> Self {
        Self {
            auth: AuthMode::Off,
            bootstrap_admin_key: None,
            auth_open_methods: Vec::new(),
            rate_limits: Vec::new(),
        }
    }
}

/// The identity a call was made with, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
}

/// What the auth layer knows: settings, the key cache and its metrics.
#[derive(Clone)]
pub struct Auth {
    state: Arc<State>,
}

struct State {
    enabled: bool,
    open: Vec<String>,
    bootstrap: Option<Arc<KnownKey>>,
    pool: Pool,
    keys: RwLock<HashMap<String, Entry>>,
    defaults: HashMap<Scope, u32>,
    lookups: Semaphore,
    metrics: IntCounterVec,
    /// The gRPC services this server serves: the only `service` label
    /// values (anything else is `unknown`, so no caller can add series).
    services: Vec<String>,
}

enum Entry {
    Known(Arc<KnownKey>),
    Missing(Instant),
}

struct KnownKey {
    key_id: String,
    secret_sha256: Vec<u8>,
    publishable: bool,
    scopes: Vec<Scope>,
    origins: Vec<String>,
    rate: Option<(u32, u32)>,
    expires_at: Option<SystemTime>,
    revoked: bool,
    stored: bool,
    /// Unix seconds of the last successful call (0: none since loaded).
    last_used: AtomicU64,
    limiters: Mutex<HashMap<Scope, Arc<DefaultDirectRateLimiter>>>,
}

impl KnownKey {
    fn from_row(row: ApiKeyRow) -> Self {
        let rate = (row.rate_per_second > 0).then(|| {
            let per_second = u32::try_from(row.rate_per_second).unwrap_or(u32::MAX);
            let burst = u32::try_from(row.rate_burst).unwrap_or(0);
            (per_second, if burst == 0 { per_second } else { burst })
        });
        Self {
            // Unknown scope names (from a newer version) grant nothing.
            scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            key_id: row.key_id,
            secret_sha256: row.secret_sha256,
            publishable: row.publishable,
            origins: row.allowed_origins,
            rate,
            expires_at: row.expires_at,
            revoked: row.revoked_at.is_some(),
            stored: true,
            last_used: AtomicU64::new(0),
            limiters: Mutex::new(HashMap::new()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot register the auth metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `result` label values of `tributary_auth_requests_total`.
const RESULTS: [&str; 4] = ["ok", "unauthenticated", "permission_denied", "rate_limited"];

impl Auth {
    /// `services`: the gRPC services of this server (metric labels).
    pub fn new(
        args: &AuthArgs,
        pool: Pool,
        registry: &Registry,
        services: &[&str],
    ) -> Result<Self, AuthError> {
        let metrics = crate::metrics::counter_vec(
            registry,
            "tributary_auth_requests_total",
            "Calls checked by the auth layer, by gRPC service, API key id (of a key whose \
             secret matched, else unknown) and result",
            &["service", "key_id", "result"],
        )?;
        let bootstrap = args.bootstrap_admin_key.as_ref().and_then(|b| {
            let k = key::parse(&b.0)?;
            Some(Arc::new(KnownKey {
                key_id: k.key_id.to_owned(),
                secret_sha256: key::secret_sha256(k.secret).to_vec(),
                publishable: false,
                scopes: Scope::ALL.to_vec(),
                origins: Vec::new(),
                rate: None,
                expires_at: None,
                revoked: false,
                stored: false,
                last_used: AtomicU64::new(0),
                limiters: Mutex::new(HashMap::new()),
            }))
        });
        let services: Vec<String> = services
            .iter()
            .filter(|s| s.starts_with("tributary.v1.") && !s.ends_with(".Processor"))
            .map(|s| (*s).to_owned())
            .collect();
        for service in &services {
            metrics.with_label_values(&[service, "unknown", "unauthenticated"]);
            if let Some(b) = &bootstrap {
                for result in RESULTS {
                    metrics.with_label_values(&[service, &b.key_id, result]);
                }
            }
        }
        let enabled = args.auth == AuthMode::On;
        if !enabled {
            tracing::warn!(
                "auth is off (--auth=off): every caller may publish, read and administer; \
                 keep this to a loopback-only local stack"
            );
        }
        Ok(Self {
            state: Arc::new(State {
                enabled,
                open: args.auth_open_methods.clone(),
                bootstrap,
                pool,
                keys: RwLock::new(HashMap::new()),
                defaults: args.rate_limits.iter().copied().collect(),
                lookups: Semaphore::new(MAX_LOOKUPS),
                metrics,
                services,
            }),
        })
    }

    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    /// The warning /ready prints while auth is off.
    pub fn warning(&self) -> Option<&'static str> {
        (!self.state.enabled).then_some("auth is off (--auth=off): every caller is trusted")
    }

    pub fn layer(&self) -> AuthLayer {
        AuthLayer { auth: self.clone() }
    }

    fn is_open(&self, service: &str, method: &str) -> bool {
        self.state.open.iter().any(|o| match o.split_once('/') {
            Some((s, m)) => s == service && m == method,
            None => o == service,
        })
    }

    fn count(&self, service: &str, key_id: &str, result: &str) {
        let service = if self.state.services.iter().any(|s| s == service) {
            service
        } else {
            "unknown"
        };
        self.state
            .metrics
            .with_label_values(&[service, key_id, result])
            .inc();
    }

    /// Checks one call: its caller, or the status to answer instead.
    pub async fn authorize(
        &self,
        service: &str,
        method: &str,
        headers: &http::HeaderMap,
    ) -> Result<Caller, Status> {
        let denied = |key_id: &str, result: &str, status: Status| {
            self.count(service, key_id, result);
            status
        };
        let presented = match bearer(headers) {
            Bearer::Missing => {
                return Err(denied(
                    "unknown",
                    "unauthenticated",
                    Status::unauthenticated(
                        "missing API key: send the metadata \"authorization: Bearer trb_…\"",
                    ),
                ));
            }
            Bearer::Malformed => {
                return Err(denied(
                    "unknown",
                    "unauthenticated",
                    Status::unauthenticated(
                        "malformed API key: expected \"authorization: Bearer trb_<key_id>_<secret>\"",
                    ),
                ));
            }
            Bearer::Key(k) => k,
        };
        let known = match self.lookup(presented.key_id).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Err(denied(
                    "unknown",
                    "unauthenticated",
                    Status::unauthenticated("unknown API key"),
                ));
            }
            Err(status) => return Err(status),
        };
        if known.publishable != presented.publishable
            || !key::hashes_match(&known.secret_sha256, &key::secret_sha256(presented.secret))
        {
            return Err(denied(
                "unknown",
                "unauthenticated",
                Status::unauthenticated("unknown API key"),
            ));
        }
        // From here the caller proved it holds this key: its id may be named.
        let key_id = known.key_id.as_str();
        tracing::Span::current().record("tributary.api_key_id", key_id);
        if known.revoked {
            return Err(denied(
                key_id,
                "unauthenticated",
                Status::unauthenticated(format!("API key {key_id} was revoked")),
            ));
        }
        if known.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(denied(
                key_id,
                "unauthenticated",
                Status::unauthenticated(format!("API key {key_id} has expired")),
            ));
        }
        if known.publishable && !known.origins.is_empty() {
            let origin = headers
                .get(http::header::ORIGIN)
                .and_then(|o| o.to_str().ok());
            if !origin.is_some_and(|o| known.origins.iter().any(|a| a == o)) {
                return Err(denied(
                    key_id,
                    "permission_denied",
                    Status::permission_denied(format!(
                        "publishable API key {key_id} is not allowed from this origin"
                    )),
                ));
            }
        }
        let needed = scope::required(service, method);
        if let Some(needed) = needed
            && !known.scopes.iter().any(|s| s.grants(needed))
        {
            return Err(denied(
                key_id,
                "permission_denied",
                Status::permission_denied(format!(
                    "API key {key_id} lacks the scope {needed} that {service}/{method} needs"
                )),
            ));
        }
        if let Some(needed) = needed
            && let Some(limiter) = self.limiter(&known, needed)
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let wait = wait.max(Duration::from_millis(1));
            return Err(denied(
                key_id,
                "rate_limited",
                crate::status::resource_exhausted_retry(
                    format!(
                        "API key {key_id} is over its rate limit for {needed}; retry in {} ms",
                        wait.as_millis()
                    ),
                    wait,
                ),
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        known.last_used.store(now, Ordering::Relaxed);
        self.count(service, key_id, "ok");
        Ok(Caller {
            key_id: key_id.to_owned(),
        })
    }

    fn limiter(&self, known: &KnownKey, scope: Scope) -> Option<Arc<DefaultDirectRateLimiter>> {
        let (per_second, burst) = known
            .rate
            .or_else(|| self.state.defaults.get(&scope).map(|&n| (n, n)))?;
        let mut limiters = known
            .limiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limiter = limiters.entry(scope).or_insert_with(|| {
            let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(burst).unwrap_or(per_second);
            Arc::new(DefaultDirectRateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ))
        });
        Some(limiter.clone())
    }

    /// The key with this id: the bootstrap key, a cached one, or one read
    /// from the key store. `Err` is UNAVAILABLE (the store is unreachable).
    async fn lookup(&self, key_id: &str) -> Result<Option<Arc<KnownKey>>, Status> {
        if let Some(b) = &self.state.bootstrap
            && b.key_id == key_id
        {
            return Ok(Some(b.clone()));
        }
        if let Some(cached) = self.cached(key_id) {
            return Ok(cached);
        }
        let _permit = self
            .state
            .lookups
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        // Another call may have loaded it while this one waited.
        if let Some(cached) = self.cached(key_id) {
            return Ok(cached);
        }
        let row = self
            .state
            .pool
            .run(async |client| api_keys::get(client, key_id).await)
            .await
            .map_err(|e| {
                tracing::warn!(error = %tributary_store::error_chain(&e), "cannot read an API key");
                Status::unavailable("cannot check the API key now (key store unreachable); retry")
            })?;
        Ok(self.store(key_id, row))
    }

    /// `Some(None)`: known not to exist (recently).
    fn cached(&self, key_id: &str) -> Option<Option<Arc<KnownKey>>> {
        let keys = self
            .state
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match keys.get(key_id)? {
            Entry::Known(k) => Some(Some(k.clone())),
            Entry::Missing(until) if *until > Instant::now() => Some(None),
            Entry::Missing(_) => None,
        }
    }

    fn store(&self, key_id: &str, row: Option<ApiKeyRow>) -> Option<Arc<KnownKey>> {
        let mut keys = self
            .state
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match row {
            Some(row) => {
                let known = Arc::new(KnownKey::from_row(row));
                // A reload keeps the last use not yet written.
                if let Some(Entry::Known(old)) = keys.get(key_id) {
                    known
                        .last_used
                        .store(old.last_used.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                for service in &self.state.services {
                    for result in RESULTS {
                        self.state
                            .metrics
                            .with_label_values(&[service, &known.key_id, result]);
                    }
                }
                keys.insert(key_id.to_owned(), Entry::Known(known.clone()));
                Some(known)
            }
            None => {
                let missing = keys
                    .values()
                    .filter(|e| matches!(e, Entry::Missing(_)))
                    .count();
                if missing >= MAX_MISSING {
                    keys.retain(|_, e| matches!(e, Entry::Known(_)));
                }
                keys.insert(
                    key_id.to_owned(),
                    Entry::Missing(Instant::now() + MISSING_TTL),
                );
                None
            }
        }
    }

    /// Keeps the cache in step with the key store until `token` is
    /// cancelled: reloads a key when it is NOTIFYed, re-reads every cached
    /// key on (re)connect and every 30 s, and writes last-used times.
    pub async fn follow(self, token: CancellationToken) {
        if !self.state.enabled {
            return;
        }
        tokio::select! {
            () = token.cancelled() => {}
            () = tributary_store::notify::follow_forever(
                "API key store unreachable; serving the cached keys",
                Duration::from_millis(250),
                || self.follow_once(),
            ) => {}
        }
        self.write_last_used().await;
    }

    async fn follow_once(&self) -> String {
        let mut listener = match tributary_store::notify::Listener::start(
            self.state.pool.connector(),
            &[api_keys::CHANGED_CHANNEL],
        )
        .await
        {
            Ok(l) => l,
            Err(e) => return e,
        };
        // Listening first, then re-reading: no change falls between the two.
        if let Err(e) = self.refresh_all().await {
            return e;
        }
        let mut tick = tokio::time::interval(FULL_REFRESH);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.refresh_all().await {
                        return e;
                    }
                    self.write_last_used().await;
                }
                note = listener.recv() => match note {
                    Ok(key_id) => self.reload(&key_id).await,
                    Err(e) => return format!("key store connection ended: {e}"),
                },
            }
        }
    }

    /// Reloads one key; forgets it when it cannot be read (a revocation must
    /// never be missed).
    async fn reload(&self, key_id: &str) {
        let row = self
            .state
            .pool
            .run(async |client| api_keys::get(client, key_id).await)
            .await;
        match row {
            Ok(row) => {
                self.store(key_id, row);
            }
            Err(e) => {
                tracing::warn!(key_id, error = %tributary_store::error_chain(&e), "cannot reload a changed API key; forgetting it");
                self.state
                    .keys
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(key_id);
            }
        }
    }

    async fn refresh_all(&self) -> Result<(), String> {
        let ids: Vec<String> = self
            .state
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Known(_)))
            .map(|(id, _)| id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self
            .state
            .pool
            .run(async |client| api_keys::get_many(client, &ids).await)
            .await
            .map_err(|e| tributary_store::error_chain(&e))?;
        let mut found: HashMap<String, ApiKeyRow> =
            rows.into_iter().map(|r| (r.key_id.clone(), r)).collect();
        for id in ids {
            let row = found.remove(&id);
            self.store(&id, row);
        }
        Ok(())
    }

    async fn write_last_used(&self) {
        let used: Vec<(String, SystemTime)> = self
            .state
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|e| match e {
                Entry::Known(k) if k.stored => {
                    let secs = k.last_used.swap(0, Ordering::Relaxed);
                    (secs > 0).then(|| (k.key_id.clone(), UNIX_EPOCH + Duration::from_secs(secs)))
                }
                _ => None,
            })
            .collect();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self
            .state
            .pool
            .run(async |client| api_keys::touch(client, &used).await)
            .await
        {
            tracing::debug!(error = %tributary_store::error_chain(&e), "cannot record API key use");
        }
    }
}

enum Bearer<'a> {
    Missing,
    Malformed,
    Key(key::PresentedKey<'a>),
}

fn bearer(headers: &http::HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim);
    match token.and_then(key::parse) {
        Some(k) => Bearer::Key(k),
        None => Bearer::Malformed,
    }
}

/// The tower layer: see the module documentation.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Auth,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ReqBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // CORS preflights carry no credentials by design.
        if !self.auth.enabled() || req.method() == http::Method::OPTIONS {
            return Box::pin(inner.call(req));
        }
        let (service, method) = crate::grpc::split_path(req.uri().path());
        if self.auth.is_open(service, method) {
            return Box::pin(inner.call(req));
        }
        let auth = self.auth.clone();
        let (service, method) = (service.to_owned(), method.to_owned());
        Box::pin(async move {
            match auth.authorize(&service, &method, req.headers()).await {
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        assert_eq!(
            parse_rate_limit("ingest:write=1000/s"),
            Ok((Scope::IngestWrite, 1000))
        );
        assert!(parse_rate_limit("ingest:write=0/s").is_err());
        assert!(parse_rate_limit("ingest=10/s").is_err());
        assert!(parse_rate_limit("query:read=10").is_err());
    }

    #[test]
    fn bearer_tokens() {
        let mut h = http::HeaderMap::new();
        assert!(matches!(bearer(&h), Bearer::Missing));
        h.insert("authorization", http::HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer(&h), Bearer::Malformed));
        h.insert(
            "authorization",
            http::HeaderValue::from_static(
                "Bearer trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345",
            ),
        );
        assert!(matches!(bearer(&h), Bearer::Key(k) if k.key_id == "abcdefghij12"));
    }

    #[test]
    fn bootstrap_key_is_never_echoed() {
        use clap::builder::TypedValueParser as _;
        let cmd = clap::Command::new("t");
        let secret = "trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ01234X-";
        let e = BootstrapKeyParser
            .parse_ref(&cmd, None, std::ffi::OsStr::new(secret))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(e.as_ref().is_err_and(|m| !m.contains("ABCDEFGH")), "{e:?}");
        let good = "trb_abcdefghij12_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        let k = BootstrapKeyParser.parse_ref(&cmd, None, std::ffi::OsStr::new(good));
        assert!(k.is_ok_and(|k| format!("{k:?}") == "BootstrapKey(abcdefghij12)"));
    }
}
