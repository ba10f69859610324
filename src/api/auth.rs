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
    key_for(state, &bearer.token).await.map_err(|refused| {
        poem::Error::from_response(poem::IntoResponse::into_response(crate::api::error::ApiError::from(refused)))
    })
}

/// The valid key `secret` is: `Unauthorized` for a malformed, unknown or revoked one.
pub async fn key_for(state: &AppState, secret: &str) -> Result<ApiKey, Error> {
    let found = crate::with_conn!(state.pool, state.request_timeout, "checking the API key", |c| {
        crate::db::keys::find(c, secret)
    })
    .await?;
    found.ok_or_else(|| {
        Error::Unauthorized("Authorization: the Bearer key is not a valid key (malformed, unknown or revoked)".into())
    })
}

/// The admin key a request's `Authorization: Bearer` header carries (for routes outside the
/// spec, such as `/metrics`): 401 without a valid key, 403 for a key that is not an admin's.
pub async fn admin_of(state: &AppState, req: &Request) -> Result<ApiKey, Error> {
    let secret = req
        .header(poem::http::header::AUTHORIZATION)
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| Error::Unauthorized(missing_key_message()))?;
    let key = key_for(state, secret.trim()).await?;
    if !key.admin {
        return Err(Error::Forbidden(format!("Authorization: key {:?} is not an admin key", key.name)));
    }
    Ok(key)
}
