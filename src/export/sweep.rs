//! The sweeper: what exports leave behind is deleted in the end, so storage and tables stay
//! the size of what is live. Run from every worker process's housekeeping loop.
//!
//! - files no export refers to: the directory of an export that ended or is gone, and in a
//!   live export's directory any file that is neither its checkpointed file nor its current
//!   run's and has not been written for [`Sweep::stray_file_age`] (left by a crash between a
//!   status change and a file deletion, or created by a stale runner after it lost the export);
//! - rows of ended exports (expired, failed, cancelled) after [`Sweep::keep_ended_exports`],
//!   with their runs, idempotency keys and finished queue jobs;
//! - finished queue jobs after [`Sweep::keep_finished_jobs`].

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use sqlx::PgPool;
use uuid::Uuid;

use crate::{db, error::Result, export::queue::ALL_QUEUES, storage::Storage};

/// How long things are kept before the sweeper deletes them.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Rows of expired, failed and cancelled exports (their status stays readable this long).
    pub keep_ended_exports: Duration,
    /// Finished queue jobs (for inspection).
    pub keep_finished_jobs: Duration,
    /// A file in a live export's directory that nothing refers to is deleted once unwritten this
    /// long (a run's file is written at every chunk; a fresh one may not be checkpointed yet).
    pub stray_file_age: Duration,
}

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Directories of ended or unknown exports deleted.
    pub export_dirs: usize,
    /// Stray files of live exports deleted.
    pub files: usize,
    /// Ended export rows deleted.
    pub exports: u64,
    /// Finished queue jobs deleted with them.
    pub jobs: u64,
}

/// Ended exports' rows deleted per sweep at most (the next sweep goes on).
const EXPORTS_PER_SWEEP: i64 = 10_000;

/// One sweep of files, rows and jobs.
pub async fn sweep(pool: &PgPool, storage: &dyn Storage, settings: &Sweep) -> Result<Swept> {
    let mut swept = Swept {
        exports: db::housekeeping::purge_ended_exports(pool, settings.keep_ended_exports, EXPORTS_PER_SWEEP).await?,
        ..Swept::default()
    };
    for queue in ALL_QUEUES {
        swept.jobs += db::queue::purge_finished_jobs(pool, queue, settings.keep_finished_jobs).await?;
    }
    let dirs = storage.exports().await?;
    let live: HashMap<Uuid, db::housekeeping::FileRefs> =
        db::housekeeping::file_refs(pool, &dirs).await?.into_iter().map(|r| (r.id, r)).collect();
    for id in dirs {
        let Some(refs) = live.get(&id) else {
            storage.remove_export(id).await;
            swept.export_dirs += 1;
            continue;
        };
        let keep: Vec<&str> = refs.files.iter().map(String::as_str).collect();
        let owner = refs.owner.map(|o| o.to_string());
        for (name, modified) in storage.run_files(id).await? {
            let of_current_run = owner.as_deref().is_some_and(|o| name.contains(o));
            let idle = SystemTime::now().duration_since(modified).unwrap_or_default();
            if !keep.contains(&name.as_str()) && !of_current_run && idle >= settings.stray_file_age {
                storage.remove_file(&name).await;
                swept.files += 1;
            }
        }
    }
    Ok(swept)
}
