//! exportd: exports large PostgreSQL tables to CSV files as durable, resumable background jobs.
//!
//! A code tour, in the order a request meets it (`docs/architecture.md` draws it):
//!
//! - [`config`]: flags and environment variables (`exportd --help`).
//! - [`app`]: start-up; `App::build(..)` then `run()` serves HTTP and runs workers until the
//!   [`shutdown`] signal, which is fanned out to poem, the queue monitor and every export.
//! - [`api`]: the poem-openapi endpoints (datasets, create, status, download, cancel, list,
//!   `/healthz`), Swagger UI at `/docs`; errors are JSON, mapped from [`error::Error`].
//!   [`api::request`] is the body of a new export, validated into a [`model::ExportSpec`];
//!   [`api::error::Fails`] narrows each operation's declared errors; [`api::conformance`]
//!   checks every response against the spec while the tests run; [`api::cors`] lets listed
//!   origins in. Services sharing the database enqueue in SQL (`exportd.enqueue_export`,
//!   migration 0007) by the same rules.
//! - [`export`]: the engine. [`export::create_export`] inserts the export row and its queue job
//!   in one statement; [`export::queue`] hands it to a worker (apalis-postgres);
//!   [`export::engine`] claims it with a fencing token and runs it: a reader streams keyset
//!   chunks (PostgreSQL's own `COPY ... (FORMAT csv)`) to a writer that appends them (plain or
//!   gzip members), syncs, then saves the fenced checkpoint after each chunk; one
//!   [`export::engine::Outcome`] ends it. [`export::csv`] reads a row's key back and applies
//!   what COPY cannot (CRLF, the formula guard); [`export::sweep`] deletes what ended exports
//!   leave behind; [`export::fault`] holds the fault and pause points of the tests.
//! - [`storage`]: a small trait for where files live (one file per run, so a stale runner
//!   cannot touch the served bytes), with the local directory as its first backend.
//! - [`db`]: the pool, migrations and every SQL statement; [`db::runs`] holds the fencing.
//! - [`model`]: what every layer talks about: an export, its status and options, a dataset.
//! - [`datasets`]: the datasets config, checked against the catalog at start-up.
//! - [`keys`]: `exportd keys create|list|revoke` (API keys; [`model::key`] says what a secret is).
//! - [`cli`]: `exportd export` and `exportd exports`, the command-line client of a running
//!   exportd (progress bars, downloads that resume).
//! - [`telemetry`]: logs (text or JSON), OTLP traces, Prometheus metrics (`/metrics`).
//! - [`alloc`]: a malloc setting that keeps memory flat from one export to the next.

#![warn(missing_docs)]

pub mod alloc;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod db;
pub mod error;
pub mod export;
pub mod http;
pub mod keys;
pub mod model;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
