//! The export engine: creating an export, the keyset chunk loop with fenced checkpoints, and
//! the queue that carries exports to workers.

/// A statement on a connection of its own, within the engine's statement wait (see
/// [`crate::with_conn`]): `engine_db!(engine, "what", |c| db::runs::f(c, ...))`.
macro_rules! engine_db {
    ($engine:expr, $what:expr, |$c:ident| $work:expr) => {
        $crate::with_conn!($engine.pool, $engine.settings.db_statement_wait, $what, |$c| $work)
    };
}

mod binary;
mod buffers;
pub mod csv;
pub mod engine;
pub mod fault;
pub mod jsonl;
mod low_water;
mod output;
pub mod parquet;
pub mod queue;
mod ranges;
mod reader;
pub mod sweep;
pub mod threads;
pub mod webhook;
mod wire;
mod writer;

use crate::model::{Dataset, ExportRecord, ExportSpec};

/// What creating an export did.
#[derive(Debug)]
pub enum Created {
    /// A new export, queued.
    New(ExportRecord),
    /// The `Idempotency-Key` was used before with the same request: that export.
    Existing(ExportRecord),
}

/// Creates an export and its queue job in one statement (never one without the other), with
/// the dataset's high-water mark and row estimate taken now. Fast: nothing is read but the
/// key index's last entry and the planner's statistics, and an unfiltered export is created in
/// a single round trip. With an idempotency key already used,
/// returns that export when the request is the same, and a conflict when it differs (keys
/// are per owner). Over the owner's quota of queued exports, [`Error::QuotaExceeded`].
///
/// [`Error::QuotaExceeded`]: crate::error::Error::QuotaExceeded
pub async fn create_export(
    conn: &mut sqlx::PgConnection,
    waker: &queue::Waker,
    owner: &str,
    callback_url: Option<&str>,
    ds: &Dataset,
    spec: &ExportSpec,
    idempotency_key: Option<&str>,
) -> crate::error::Result<Created> {
    use crate::{db::exports, error::Error};
    let same_request = |e: &ExportRecord| e.dataset == ds.name && e.spec.get().is_ok_and(|s| s == spec);
    if let Some(key) = idempotency_key
        && let Some(existing) = exports::find_by_idempotency_key(&mut *conn, owner, key).await?
    {
        return if same_request(&existing) {
            Ok(Created::Existing(existing))
        } else {
            Err(Error::IdempotencyMismatch(existing.id))
        };
    }
    let bounds = if spec.filters.is_empty() {
        exports::Bounds::FromTable
    } else {
        exports::filtered_bounds(&mut *conn, ds, spec).await.map_err(never_succeeds)?
    };
    let job_id = queue::new_job_id();
    let id = uuid::Uuid::new_v4();
    let new = exports::NewExport {
        id,
        dataset: ds,
        spec,
        bounds,
        queue_job_id: &job_id,
        idempotency_key,
        owned_by: owner,
        callback_url,
    };
    let payload = queue::job_payload(id);
    let lane = queue::lane(spec);
    let job = exports::NewJob { queue: lane, payload: &payload, max_attempts: queue::QUEUE_MAX_ATTEMPTS };
    let Some(record) = exports::insert_export_with_job(&mut *conn, &new, &job).await? else {
        // Another request with the same key won the race: answer as if it came first.
        let key = idempotency_key.expect("only a key can conflict");
        let existing = exports::find_by_idempotency_key(&mut *conn, owner, key)
            .await?
            .ok_or_else(|| Error::Other(anyhow::anyhow!("the export that holds Idempotency-Key {key:?} vanished")))?;
        return if same_request(&existing) {
            Ok(Created::Existing(existing))
        } else {
            Err(Error::IdempotencyMismatch(existing.id))
        };
    };
    waker.wake(lane, job_id);
    Ok(Created::New(record))
}

/// A query PostgreSQL refuses for what it is, not for the moment (SQLSTATE class 42, syntax or
/// a missing object; class 54, a limit of the server): the export could never run, so the
/// request is refused with 422 instead of being queued to fail every attempt.
fn never_succeeds(e: crate::error::Error) -> crate::error::Error {
    use crate::error::Error;
    match &e {
        Error::Database(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| c.starts_with("42") || c.starts_with("54")) =>
        {
            Error::Unprocessable(format!(
                "PostgreSQL refuses this export's query, so it could never run: {} (SQLSTATE {})",
                db.message(),
                db.code().unwrap_or_default()
            ))
        }
        _ => e,
    }
}
