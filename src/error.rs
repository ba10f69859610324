//! The crate's error type, and how each kind maps onto an HTTP status.

use poem::http::StatusCode;

/// Everything that can go wrong in a request or an export run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something we cannot accept (400).
    #[error("{0}")]
    BadRequest(String),
    /// No valid API key was sent (401): missing, malformed, unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// The key may not do this (403), e.g. export a dataset it is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The caller is at a quota (429): retry after `retry_after` seconds.
    #[error("{message}")]
    QuotaExceeded {
        /// What the client reads, with the numbers.
        message: String,
        /// Seconds to wait before trying again.
        retry_after: u64,
    },
    /// No export with that id (404).
    #[error("no export with id {0}")]
    NotFound(uuid::Uuid),
    /// The export is in the wrong state for the request (409), e.g. downloading a running export.
    #[error("{message}")]
    Conflict {
        /// What the client reads.
        message: String,
        /// The export's status now.
        status: String,
    },
    /// The export's file will never be available (410): expired, cancelled or failed.
    #[error("{message}")]
    Gone {
        /// What the client reads.
        message: String,
        /// The export's status now.
        status: String,
    },
    /// A signed download link past its expiry (410).
    #[error("{0}")]
    LinkExpired(String),
    /// The `Idempotency-Key` was used before with a different request (422).
    #[error("Idempotency-Key: this key was already used for export {0} with a different request")]
    IdempotencyMismatch(uuid::Uuid),
    /// The request is valid but can never succeed (422): PostgreSQL refuses the export's query
    /// (a limit of the server, a column gone from the table), so it is refused, not retried.
    #[error("{0}")]
    Unprocessable(String),
    /// The server is at one of its limits (503), e.g. as many downloads as it serves at once:
    /// the client may retry shortly.
    #[error("{0}")]
    Busy(String),
    /// The storage is below its free-space floor (507): no new export until space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The database cannot be reached or timed out (503): the client may retry.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A file could not be read or written.
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else, with its cause chain.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLSTATE of `exportd.admit` refusing an export over its owner's quota (migration 0009).
const QUOTA_SQLSTATE: &str = "EXQ01";
/// Seconds a client over its quota is asked to wait: queued exports start as others end.
const QUOTA_RETRY_AFTER: u64 = 5;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some(QUOTA_SQLSTATE)
        {
            return Error::QuotaExceeded { message: db.message().to_owned(), retry_after: QUOTA_RETRY_AFTER };
        }
        if is_connection_error(&e) { Error::Unavailable(e) } else { Error::Database(e) }
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Gone { .. } | Error::LinkExpired(_) => StatusCode::GONE,
            Error::IdempotencyMismatch(_) | Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unavailable(_) | Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Database(_) | Error::Io(_) | Error::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to clients: the error itself for 4xx/503, a generic text for 500s
    /// (whose cause is logged instead, never sent).
    pub fn public_message(&self) -> String {
        match self.status_code() {
            StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(error = ?anyhow::Error::msg(format!("{self:#}")), "internal error");
                "internal error; the server log has the cause under this request's id".to_owned()
            }
            StatusCode::SERVICE_UNAVAILABLE if matches!(self, Error::Unavailable(_)) => {
                tracing::warn!(error = %self, "database unavailable");
                "the database is unavailable; retry later".to_owned()
            }
            _ => self.to_string(),
        }
    }
}

/// Errors that mean "the database cannot answer right now, retry" rather than "the query is
/// wrong": the API answers them 503.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx connection
            // exceptions, and 57014 query_canceled: the statement timeout (a lock held by
            // someone else, a struggling server) or an operator's cancel. Our API queries are
            // by key, so a timeout is the server's state, not the request's fault: 503, retry.
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "57014")
        }
        _ => false,
    }
}
