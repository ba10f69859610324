//! exportd: exports large PostgreSQL tables to CSV files as durable, resumable background jobs.
//!
//! A code tour, in the order a request meets it:
//!
//! - [`config`]: flags and environment variables (`exportd --help`).
//! - [`app`]: start-up; `App::build(..)` then `run()` serves HTTP and runs workers until the
//!   [`shutdown`] signal, which is fanned out to poem, the queue monitor and every export.
//! - [`api`]: the poem-openapi endpoints (datasets, create, status, download, cancel, list,
//!   `/healthz`), Swagger UI at `/docs`; errors are JSON, mapped from [`error::Error`].
//!   [`api::request`] validates a request into an [`export::ExportSpec`].
//! - [`export`]: the engine. [`export::dataset`] is what may be exported (a config file checked
//!   against the catalog at start-up); [`export::create_export`] inserts the export row and its
//!   queue job in one transaction; [`export::queue`] hands it to a worker (apalis-postgres);
//!   [`export::engine`] claims it with a fencing token, resumes from the checkpoint and
//!   streams keyset chunks (PostgreSQL's own `COPY ... (FORMAT csv)` output) to the file,
//!   plain or as gzip members, syncing then checkpointing after each chunk; [`export::csv`]
//!   reads a row's key back and applies what COPY cannot (CRLF, the formula guard);
//!   [`export::sweep`] deletes what ended exports leave behind; [`export::fault`] holds the
//!   test-only fault and pause points that force a schedule.
//! - [`storage`]: one file per run, so a stale runner cannot touch the served bytes.
//! - [`db`]: the pool, migrations and every SQL statement.
//! - [`alloc`]: a malloc setting that keeps memory flat from one export to the next.

#![warn(missing_docs)]

pub mod alloc;
pub mod api;
pub mod app;
pub mod config;
pub mod datasets;
pub mod db;
pub mod error;
pub mod export;
pub mod model;
pub mod shutdown;
pub mod storage;
