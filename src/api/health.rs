//! `GET /healthz`: is the service up and does its database answer?

use std::{sync::Arc, time::Duration};

use poem_openapi::{ApiResponse, Enum, Object, OpenApi, payload::Json};

use crate::api::{ApiTags, AppState, error::ErrorBody};

/// Health endpoint.
pub struct HealthApi {
    /// Shared state: the pool to check.
    pub state: Arc<AppState>,
}

/// Health report: the service and its database answer.
#[derive(Debug, Object)]
#[allow(missing_docs)] // described on the struct: see `ExportCreated::status`
pub struct Health {
    pub status: HealthState,
    pub database: HealthState,
}

/// Up (a 503 says otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthState {
    /// Answering.
    Ok,
}

/// `GET /healthz`.
#[derive(Debug, ApiResponse)]
pub enum HealthResponse {
    /// The service and its database answer.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The database does not answer (within 2 s), or the server is at its connection limit:
    /// an `ErrorBody` (`unavailable` or `too_many_connections`) like every 503; the server
    /// log has the cause under the answer's `X-Request-Id`.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Health check
    #[oai(path = "/healthz", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        let limit = Duration::from_secs(2);
        let check = crate::with_conn!(self.state.pool, limit, "health check", |c| crate::db::ping(c)).await;
        match check {
            Ok(()) => HealthResponse::Ok(Json(Health { status: HealthState::Ok, database: HealthState::Ok })),
            Err(e) => {
                tracing::warn!(error = %e, "health check: the database does not answer");
                HealthResponse::Unavailable(ErrorBody::new("unavailable", "the database does not answer within 2 s"))
            }
        }
    }
}
