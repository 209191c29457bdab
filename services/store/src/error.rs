use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL: {0}")]
    Config(#[source] tokio_postgres::Error),
    #[error("invalid database TLS settings: {0}")]
    Tls(#[source] crate::tls::TlsConfigError),
    #[error("cannot build the connection pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("cannot get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("broken invariant: {0}")]
    Invariant(&'static str),
    #[error(
        "migration {version} was changed after it was applied (checksum {applied} != {embedded})"
    )]
    MigrationChanged {
        version: String,
        applied: String,
        embedded: String,
    },
}

impl StoreError {
    /// The database could not be reached or the connection broke: retry
    /// later. Anything else (a constraint, bad data, a bug) will fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) => true,
            Self::Db(e) => is_transient_db(e),
            _ => false,
        }
    }

    /// PostgreSQL's own message, when the server answered with an error.
    pub fn db_message(&self) -> Option<String> {
        match self {
            Self::Db(e) => e.as_db_error().map(|d| d.message().to_owned()),
            _ => None,
        }
    }

    /// A unique constraint refused the row (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Db(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
    }

    /// A lock was not granted within the transaction's lock_timeout
    /// (SQLSTATE 55P03): whoever holds it may be done soon; retry.
    pub fn is_lock_timeout(&self) -> bool {
        matches!(self, Self::Db(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE))
    }

    /// The database refused this data (SQLSTATE class 22 or 23): retrying the
    /// same rows fails again, so they must be isolated.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Db(e) => e.code().is_some_and(|c| {
                let c = c.code();
                c.starts_with("22") || c.starts_with("23")
            }),
            _ => false,
        }
    }
}

fn is_transient_db(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O or protocol failure on the connection.
        None => true,
        Some(code) => {
            let c = code.code();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, cancel), 40 serialization/deadlock.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c.starts_with("40")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
        }
    }
}

/// `outer: inner: innermost`, for logs (tokio-postgres' own Display of a
/// server error is just "db error").
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
