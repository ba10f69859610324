//! The secret that signs download links when none is configured (see [`crate::model::link`]).

use sqlx::PgPool;

use crate::error::Result;

/// Id of the secret kept in the database.
pub const STORED_KID: &str = "db";

/// The database's link secret, made (256 random bits) by whichever process asks first.
pub async fn stored_secret(pool: &PgPool) -> Result<Vec<u8>> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system's random number generator");
    sqlx::query("insert into exportd.link_secrets (kid, secret) values ($1, $2) on conflict (kid) do nothing")
        .bind(STORED_KID)
        .bind(&random[..])
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar("select secret from exportd.link_secrets where kid = $1")
        .bind(STORED_KID)
        .fetch_one(pool)
        .await?)
}
