//! API keys: create (the secret is returned once, only its digest stored), list, revoke, and
//! look up the key a request's secret belongs to.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::{
    error::Result,
    model::{ApiKey, key},
};

const KEY_COLUMNS: &str = "id, name, admin, datasets, created_at, revoked_at";

/// A new key for `name`; returns it with its secret (shown once, never stored).
pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    admin: bool,
    datasets: Option<&[String]>,
) -> Result<(ApiKey, String)> {
    let id = Uuid::new_v4();
    let secret = key::new_secret(id);
    let sql = format!(
        "insert into api_keys (id, name, secret_sha256, admin, datasets) values ($1, $2, $3, $4, $5) \
         returning {KEY_COLUMNS}"
    );
    let key = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(name)
        .bind(&key::digest(&secret)[..])
        .bind(admin)
        .bind(datasets)
        .fetch_one(db)
        .await?;
    Ok((key, secret))
}

/// Every key, revoked ones included, oldest first.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<ApiKey>> {
    let sql = format!("select {KEY_COLUMNS} from api_keys order by created_at, id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(db).await?)
}

/// Revokes the key with this id, or every valid key of this name; returns those revoked.
pub async fn revoke(db: impl PgExecutor<'_>, id_or_name: &str) -> Result<Vec<ApiKey>> {
    let id = Uuid::try_parse(id_or_name).ok();
    let sql = format!(
        "update api_keys set revoked_at = now() \
         where revoked_at is null and (id = $1 or ($1 is null and name = $2)) returning {KEY_COLUMNS}"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(id_or_name).fetch_all(db).await?)
}

/// The valid key `secret` belongs to: None for a malformed, unknown, wrong or revoked secret.
pub async fn find(db: impl PgExecutor<'_>, secret: &str) -> Result<Option<ApiKey>> {
    let Some(id) = key::key_id(secret) else { return Ok(None) };
    let sql = format!("select {KEY_COLUMNS}, secret_sha256 from api_keys where id = $1 and revoked_at is null");
    let row: Option<(Vec<u8>, ApiKey)> = sqlx::query_as::<_, StoredKey>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(db)
        .await?
        .map(|k| (k.secret_sha256, k.key));
    Ok(row.filter(|(stored, _)| key::matches(secret, stored)).map(|(_, k)| k))
}

/// A key with its digest, as `find` reads it.
#[derive(sqlx::FromRow)]
struct StoredKey {
    #[sqlx(flatten)]
    key: ApiKey,
    secret_sha256: Vec<u8>,
}
