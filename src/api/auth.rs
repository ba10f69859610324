//! Who is calling: every `/api` operation takes `Authorization: Bearer <key>` (the spec's
//! security scheme `apiKey`, which Swagger UI's *Authorize* button fills in). The key is looked
//! up on every request, so a revoked key stops working at once.

use std::sync::Arc;

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};

use crate::{
    api::{AppState, error::MISSING_KEY},
    error::Error,
    model::ApiKey,
};

/// An API key, sent as `Authorization: Bearer exk_...`. Create one with
/// `exportd keys create --name <owner>`; `make run` prints a development key at start.
#[derive(SecurityScheme)]
#[oai(rename = "apiKey", ty = "bearer", bearer_format = "exk_<key id>_<64 hex digits>", checker = "check_key")]
pub struct Caller(pub ApiKey);

impl std::ops::Deref for Caller {
    type Target = ApiKey;

    fn deref(&self) -> &ApiKey {
        &self.0
    }
}

/// The message of a 401 for a request that sent no Bearer key at all.
pub fn missing_key_message() -> String {
    format!(
        "{MISSING_KEY} (or not a Bearer key): send `Authorization: Bearer <key>`; \
         keys are made with `exportd keys create --name <owner>`"
    )
}

/// The valid key a Bearer token is the secret of: 401 for a malformed, unknown or revoked one.
async fn check_key(req: &Request, bearer: Bearer) -> poem::Result<ApiKey> {
    let state = req.data::<Arc<AppState>>().expect("the routes carry the app state");
    let found = crate::with_conn!(state.pool, state.request_timeout, "checking the API key", |c| {
        crate::db::keys::find(c, &bearer.token)
    })
    .await;
    let refused = match found {
        Ok(Some(key)) => return Ok(key),
        Ok(None) => Error::Unauthorized(
            "Authorization: the Bearer key is not a valid key (malformed, unknown or revoked)".into(),
        ),
        Err(e) => e,
    };
    Err(poem::Error::from_response(poem::IntoResponse::into_response(crate::api::error::ApiError::from(refused))))
}
