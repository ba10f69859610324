//! The error responses every operation can give, always a JSON body that names the problem.

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{
    ApiResponse, Object,
    payload::Json,
    registry::{MetaResponses, Registry},
};

use crate::error::Error;

/// The body of every error response.
#[derive(Debug, Object)]
pub struct ErrorBody {
    /// Machine-readable kind, stable across versions: `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `quota_exceeded`, `link_expired`,
    /// `gone`, `idempotency_key_reused`, `unprocessable`, `payload_too_large`,
    /// `unsupported_media_type`, `method_not_allowed`, `range_not_satisfiable`, `busy`,
    /// `too_many_connections`, `insufficient_storage`, `unavailable`, `internal`.
    pub error: String,
    /// What went wrong, for humans.
    pub message: String,
    /// The export's current status, when the error is about it (409, 410).
    #[oai(skip_serializing_if_is_none)]
    pub status: Option<String>,
    /// This request's id (also in the `X-Request-Id` header): the server log has the details
    /// of a 5xx under it.
    #[oai(rename = "requestId", skip_serializing_if_is_none)]
    pub request_id: Option<String>,
}

impl ErrorBody {
    /// A body with a machine-readable `error` code and a message for people.
    pub fn new(error: &str, message: impl Into<String>) -> Json<Self> {
        Json(Self { error: error.to_owned(), message: message.into(), status: None, request_id: request_id() })
    }

    fn with_status(error: &str, message: String, status: String) -> Json<Self> {
        let Json(body) = Self::new(error, message);
        Json(Self { status: Some(status), ..body })
    }
}

tokio::task_local! {
    /// The id of the request being answered (set by [`super::with_request_id`]).
    pub static REQUEST_ID: String;
}

/// The id of the request being answered, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Errors, by status.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The request is invalid; the message names the offending field or parameter.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid API key: send `Authorization: Bearer <key>` (the key was missing, malformed,
    /// unknown or revoked). `WWW-Authenticate` names the scheme (RFC 6750).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The key may not do this (it is limited to other datasets), or a download link's
    /// signature does not match it.
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No export with that id (or it belongs to another owner).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The export is not in a state that allows this (e.g. downloading before it completed);
    /// `status` gives its current status.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The file will never be available: the export expired, was cancelled, or failed;
    /// `status` gives its current status. Or a download link expired (`link_expired`).
    #[oai(status = 410)]
    Gone(Json<ErrorBody>),
    /// The request body is larger than 1 MiB.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The request body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The `Idempotency-Key` was already used with a different request, or the request can
    /// never succeed (PostgreSQL refuses the export's query).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The caller is at its quota of queued exports; the message gives the numbers and
    /// `Retry-After` the seconds to wait.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// The database is unavailable, or the server is at a limit (`busy`: e.g. as many
    /// downloads as it serves at once); retry later.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
    /// The storage is below its free-space floor: no new export until space is freed.
    #[oai(status = 507)]
    InsufficientStorage(Json<ErrorBody>),
    /// An unexpected error; its cause is logged, never sent.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.public_message();
        match e {
            Error::BadRequest(_) => ApiError::BadRequest(ErrorBody::new("bad_request", message)),
            Error::Unauthorized(_) => unauthorized(message),
            Error::Forbidden(_) => ApiError::Forbidden(ErrorBody::new("forbidden", message)),
            Error::QuotaExceeded { retry_after, .. } => {
                ApiError::TooManyRequests(ErrorBody::new("quota_exceeded", message), retry_after)
            }
            Error::NotFound(_) => ApiError::NotFound(ErrorBody::new("not_found", message)),
            Error::Conflict { status, .. } => ApiError::Conflict(ErrorBody::with_status("conflict", message, status)),
            Error::Gone { status, .. } => ApiError::Gone(ErrorBody::with_status("gone", message, status)),
            Error::LinkExpired(_) => ApiError::Gone(ErrorBody::new("link_expired", message)),
            Error::IdempotencyMismatch(_) => ApiError::Unprocessable(ErrorBody::new("idempotency_key_reused", message)),
            Error::Unprocessable(_) => ApiError::Unprocessable(ErrorBody::new("unprocessable", message)),
            Error::Unavailable(_) => ApiError::Unavailable(ErrorBody::new("unavailable", message)),
            Error::Busy(_) => ApiError::Unavailable(ErrorBody::new("busy", message)),
            Error::InsufficientStorage(_) => {
                ApiError::InsufficientStorage(ErrorBody::new("insufficient_storage", message))
            }
            Error::Database(_) | Error::Io(_) | Error::Other(_) => {
                ApiError::Internal(ErrorBody::new("internal", message))
            }
        }
    }
}

/// The 401 of a request without a valid key, with the challenge RFC 6750 asks for
/// (`error="invalid_token"` only when a token was sent).
fn unauthorized(message: String) -> ApiError {
    let challenge = if message.starts_with(MISSING_KEY) {
        "Bearer realm=\"exportd\"".to_owned()
    } else {
        "Bearer realm=\"exportd\", error=\"invalid_token\"".to_owned()
    };
    ApiError::Unauthorized(ErrorBody::new("unauthorized", message), challenge)
}

/// How the message of a request without any Bearer key starts.
pub const MISSING_KEY: &str = "Authorization: missing";

/// The error statuses an operation declares, as bits of a set: `Fails<{ NOT_FOUND | INTERNAL }>`.
pub mod declare {
    /// 400 `bad_request`.
    pub const BAD_REQUEST: u32 = super::bit(400);
    /// 401 `unauthorized`.
    pub const UNAUTHORIZED: u32 = super::bit(401);
    /// 403 `forbidden`.
    pub const FORBIDDEN: u32 = super::bit(403);
    /// 429 `quota_exceeded`.
    pub const TOO_MANY_REQUESTS: u32 = super::bit(429);
    /// 404 `not_found`.
    pub const NOT_FOUND: u32 = super::bit(404);
    /// 409 `conflict`.
    pub const CONFLICT: u32 = super::bit(409);
    /// 410 `gone`.
    pub const GONE: u32 = super::bit(410);
    /// 413 `payload_too_large`.
    pub const PAYLOAD_TOO_LARGE: u32 = super::bit(413);
    /// 415 `unsupported_media_type`.
    pub const UNSUPPORTED_MEDIA_TYPE: u32 = super::bit(415);
    /// 422 `unprocessable`, `idempotency_key_reused`.
    pub const UNPROCESSABLE: u32 = super::bit(422);
    /// 500 `internal`.
    pub const INTERNAL: u32 = super::bit(500);
    /// 503 `unavailable`, `busy`, `too_many_connections`.
    pub const UNAVAILABLE: u32 = super::bit(503);
    /// 507 `insufficient_storage`.
    pub const INSUFFICIENT_STORAGE: u32 = super::bit(507);
}

/// The bit of an error status in a [`declare`] set (0 for a status [`ApiError`] never has).
const fn bit(status: u16) -> u32 {
    match status {
        400 => 1,
        404 => 1 << 1,
        409 => 1 << 2,
        410 => 1 << 3,
        413 => 1 << 4,
        415 => 1 << 5,
        422 => 1 << 6,
        500 => 1 << 7,
        503 => 1 << 8,
        507 => 1 << 9,
        401 => 1 << 10,
        403 => 1 << 11,
        429 => 1 << 12,
        _ => 0,
    }
}

/// An operation's errors: an [`ApiError`], declared in the spec with only the statuses in
/// `DECLARED` (a [`declare`] set), so each operation lists the errors it can give and no
/// others. `BODY = false` declares them without a body (for `HEAD`). poem-openapi declares
/// every variant of an error enum on every operation that returns it; this narrows the list
/// without one enum per operation. The API tests check that no undeclared status is sent.
#[derive(Debug)]
pub struct Fails<const DECLARED: u32, const BODY: bool = true>(pub ApiError);

impl<const DECLARED: u32, const BODY: bool> ApiResponse for Fails<DECLARED, BODY> {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses.retain(|r| r.status.is_some_and(|s| DECLARED & bit(s) != 0));
        if !BODY {
            for r in &mut meta.responses {
                r.content.clear();
            }
        }
        meta
    }

    fn register(registry: &mut Registry) {
        ApiError::register(registry);
    }
}

impl<const DECLARED: u32, const BODY: bool> IntoResponse for Fails<DECLARED, BODY> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<const DECLARED: u32, const BODY: bool> From<Fails<DECLARED, BODY>> for poem::Error {
    fn from(f: Fails<DECLARED, BODY>) -> Self {
        poem::Error::from_response(f.into_response())
    }
}

impl<const DECLARED: u32, const BODY: bool> From<Error> for Fails<DECLARED, BODY> {
    fn from(e: Error) -> Self {
        Self(ApiError::from(e))
    }
}

/// Last line of defence for errors raised outside our handlers (unknown route, wrong method,
/// unparsable path or body): the same JSON shape, with poem's message.
pub async fn render_any_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    if status == StatusCode::UNAUTHORIZED {
        // poem-openapi's own refusal of a request without a Bearer key (our checker answers
        // the others): the same body and challenge as ours.
        return unauthorized(super::auth::missing_key_message()).into_response();
    }
    let kind = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let message = if status.is_server_error() {
        tracing::error!(error = %err, "unhandled error");
        "internal error; the cause has been logged".to_owned()
    } else if status == StatusCode::NOT_FOUND && err.to_string().is_empty() {
        "no such route".to_owned()
    } else {
        // poem-openapi names path parameters by position in its messages; ours is always `id`.
        err.to_string().replace("path `param0`", "path parameter `id`")
    };
    let mut body = serde_json::json!({ "error": kind, "message": message });
    if let Some(id) = request_id() {
        body["requestId"] = id.into();
    }
    let mut resp = poem::web::Json(body).into_response();
    resp.set_status(status);
    resp
}
