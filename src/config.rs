//! Command line and environment settings: every knob has a flag, an env var and a local default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// exportd: exports large PostgreSQL tables to CSV files as durable, resumable background jobs.
#[derive(Debug, Parser)]
#[command(name = "exportd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    /// What to run (default: `serve`).
    pub command: Option<Command>,
}

/// What the binary does; `serve` when none is given.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP API and export workers in one process (the default deployment).
    Serve(ServeArgs),
    /// The HTTP API only (no workers): run it beside `exportd worker` processes on the same
    /// database and storage.
    Api(ServeArgs),
    /// Export workers only: run more of them, on other machines, against the same database.
    Worker(WorkerArgs),
    /// Apply database migrations (serve and worker also do this at start).
    Migrate(DbArgs),
    /// Create and fill the demo `orders` dataset, deterministically for a given row count.
    Seed(SeedArgs),
    /// Print the OpenAPI spec (JSON) to stdout; `make openapi` commits it under openapi/.
    Openapi,
    /// Create, list and revoke API keys.
    Keys(KeysArgs),
    /// Export from a running exportd to a file, with a progress bar: create the export,
    /// follow it, download it (resuming after a dropped connection), check it.
    Export(ExportArgs),
    /// List, follow and cancel exports on a running exportd.
    Exports(ExportsArgs),
}

/// Where the API is and the key to call it with (the command-line client).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the exportd API.
    #[arg(long, env = "EXPORTD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,

    /// API key (`exportd keys create` makes one; `make run` prints a development key).
    #[arg(long, env = "EXPORTD_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

/// `exportd export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    /// The server.
    pub server: ServerArgs,

    /// Dataset to export (default: the server's default dataset).
    #[arg(long)]
    pub dataset: Option<String>,

    /// Columns to write, comma-separated, in this order (default: every column).
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,

    /// A row filter, repeatable (all must hold): `COLUMN=VALUE`, `COLUMN=V1|V2|V3` (one of),
    /// `COLUMN>VALUE`, `COLUMN>=VALUE`, `COLUMN<VALUE`, `COLUMN<=VALUE`, `COLUMN=null`,
    /// `COLUMN!=null`. Values are read as the column's type by the server.
    #[arg(long = "filter", value_name = "CONDITION")]
    pub filters: Vec<String>,

    /// Compress the file with gzip (`.csv.gz`).
    #[arg(long)]
    pub gzip: bool,

    /// Rows read per chunk (100 to 100000; default: the server's).
    #[arg(long)]
    pub chunk_size: Option<u32>,

    /// Read at most this many rows per second (gentle on a busy database).
    #[arg(long)]
    pub max_rows_per_second: Option<u32>,

    /// Key ranges to read at the same time (default: the server chooses from the export's size).
    #[arg(long)]
    pub parallelism: Option<u32>,

    /// Time zone of timestamps, e.g. `Europe/Berlin` (default UTC).
    #[arg(long)]
    pub time_zone: Option<String>,

    /// File type: csv (default), jsonl (JSON Lines) or parquet.
    #[arg(long = "type", value_name = "TYPE", value_parser = ["csv", "jsonl", "parquet"])]
    pub file_type: Option<String>,

    /// The file to write (an existing one is replaced once the download is complete).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

/// `exportd exports`.
#[derive(Debug, Clone, Args)]
pub struct ExportsArgs {
    #[command(flatten)]
    /// The server.
    pub server: ServerArgs,

    #[command(subcommand)]
    /// What to do.
    pub command: ExportsCommand,
}

/// `exportd exports list|status|watch|cancel`.
#[derive(Debug, Clone, Subcommand)]
pub enum ExportsCommand {
    /// The caller's exports, newest first.
    List {
        /// Only exports in this status (queued, running, completed, failed, cancelled, expired).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One export's status, as JSON.
    Status {
        /// The export's id.
        id: String,
    },
    /// Follow an export with a progress bar until it ends.
    Watch {
        /// The export's id.
        id: String,
    },
    /// Cancel a queued or running export (a completed one's file is deleted).
    Cancel {
        /// The export's id.
        id: String,
    },
}

/// `exportd keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    /// The database connection.
    pub db: DbArgs,

    #[command(subcommand)]
    /// What to do.
    pub command: KeysCommand,
}

/// `exportd keys create|list|revoke`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (once: only a hash of it is stored).
    Create {
        /// Its owner, e.g. `billing-svc`: exports made with it belong to this name (1 to 63
        /// letters, digits, `.`, `_` or `-`).
        #[arg(long)]
        name: String,
        /// Sees and manages every owner's exports.
        #[arg(long)]
        admin: bool,
        /// Only these datasets, comma-separated (default: every dataset).
        #[arg(long, value_delimiter = ',')]
        datasets: Option<Vec<String>>,
    },
    /// List keys (never their secrets), revoked ones included.
    List,
    /// Revoke a key by id, or every valid key of a name.
    Revoke {
        /// A key's id, or a name.
        key: String,
    },
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,

    /// Connections in the pool shared by the API and the workers. Default: 3 per worker slot
    /// (queue listener, chunk reader, checkpoints and heartbeats) plus 10 for the API and
    /// housekeeping; fewer than 3 per slot plus 4 is refused at start-up.
    #[arg(long, env = "EXPORTD_DB_POOL_SIZE")]
    pub db_pool_size: Option<u32>,

    /// Longest wait for the database to answer anything (a row of a chunk, a checkpoint, an API
    /// query) beyond the statement timeout; a connection that misses it is dropped and the
    /// export resumes from its checkpoint on a fresh one, the API answers 503.
    #[arg(long, env = "EXPORTD_DB_IO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub db_io_timeout: Duration,

    /// Upper bound on any single statement (every chunk query included), e.g. "60s".
    #[arg(long, env = "EXPORTD_STATEMENT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
}

/// Settings of the export workers (and of what the API accepts).
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// Datasets config file (TOML; see config/datasets.toml). Default: that file, built in.
    #[arg(long, env = "EXPORTD_DATASETS")]
    pub datasets: Option<PathBuf>,

    /// How long a completed export's file is kept before it is deleted (status `expired`), e.g. "7d".
    #[arg(long, env = "EXPORTD_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// How long an ended export (expired, failed, cancelled) stays readable before the sweeper
    /// deletes its row, its runs and its idempotency key, e.g. "30d".
    #[arg(long, env = "EXPORTD_PURGE_AFTER", default_value = "30d", value_parser = parse_duration)]
    pub purge_after: Duration,

    /// Directory the CSV files are written to (created if missing), unless `storage` names an
    /// object store.
    #[arg(long, env = "EXPORTD_STORAGE_DIR", default_value = "exports")]
    pub storage_dir: PathBuf,

    /// A hot standby to read the chunks from (the queue, checkpoints and everything else stay
    /// on DATABASE_URL). Each run first waits until the standby has replayed the primary's WAL
    /// up to the export's creation, so the replica's lag never costs a row.
    #[arg(long, env = "EXPORTD_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,

    /// Where export files live when not in `storage-dir`: `s3://bucket/prefix`, an S3-compatible
    /// bucket (endpoint, region and credentials from the usual AWS_* variables:
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP).
    /// Every API and worker process of a fleet names the same one.
    #[arg(long, env = "EXPORTD_STORAGE")]
    pub storage: Option<String>,

    /// Part size of object-storage uploads (at least 5MiB): memory per running export is one
    /// to two parts, and the checkpoint advances a part at a time.
    #[arg(long, env = "EXPORTD_S3_PART_SIZE", default_value = "16MiB", value_parser = parse_size)]
    pub s3_part_size: u64,

    /// Object-store options given in code rather than by the AWS_* variables (tests: several
    /// stores in one process), as `object_store` config keys (`aws_endpoint`, ...).
    #[arg(skip)]
    pub storage_options: Vec<(String, String)>,

    /// Downloads of files in object storage answer 302 to a presigned URL of the object store
    /// (valid for `download-redirect-ttl`) instead of streaming the file through exportd.
    #[arg(long, env = "EXPORTD_DOWNLOAD_REDIRECT", default_value_t = false)]
    pub download_redirect: bool,

    /// How long a download redirect's presigned URL stays valid, e.g. "5m".
    #[arg(long, env = "EXPORTD_DOWNLOAD_REDIRECT_TTL", default_value = "5m", value_parser = parse_duration)]
    pub download_redirect_ttl: Duration,

    /// Free space the storage must keep: below it new exports are refused (507) and running
    /// ones fail at their next chunk with their files removed, so exports never fill the disk
    /// (overshoot: at most one chunk). E.g. "256MiB", "2GiB"; 0 turns the floor off.
    #[arg(long, env = "EXPORTD_MIN_FREE_DISK", default_value = "256MiB", value_parser = parse_size)]
    pub min_free_disk: u64,

    /// Rows per chunk when a request does not say (each chunk ends with a durable checkpoint).
    #[arg(long, env = "EXPORTD_CHUNK_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(100..=100_000))]
    pub chunk_size: u32,

    /// Key ranges one export may read at the same time, each on its own database connection
    /// (`parallelism` in a request: 1 up to this). An export that does not ask gets one range per
    /// 500,000 rows the planner estimates, up to this. 1 turns parallel exports off. With object
    /// storage each range buffers its own parts (memory: one to two parts per range).
    #[arg(long, env = "EXPORTD_MAX_PARALLELISM", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub max_parallelism: u32,

    /// Threads the export engine runs exports on (each a single-threaded runtime of its own,
    /// apart from the API's; an export's reads and writes stay on one). Default: half the
    /// cores, at least 1 (the database formats the rows on the others).
    #[arg(long, env = "EXPORTD_ENGINE_THREADS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub engine_threads: Option<u32>,

    /// Exports this process runs at the same time at full speed (0 = no workers, API only).
    #[arg(long, env = "EXPORTD_WORKER_CONCURRENCY", default_value_t = 2)]
    pub worker_concurrency: u32,

    /// Throttled exports (`maxRowsPerSecond`) this process runs at the same time, in a lane of
    /// their own, so a slow export never holds a full-speed slot (at least 1; none when
    /// `worker-concurrency` is 0).
    #[arg(long, env = "EXPORTD_THROTTLED_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub throttled_concurrency: u32,

    /// Consecutive runs of one export that may end without progress (errors or crashes)
    /// before the export is marked failed.
    #[arg(long, env = "EXPORTD_MAX_STALLED_ATTEMPTS", default_value_t = 5)]
    pub max_stalled_attempts: u32,

    /// First delay between retries of a failing export; doubles each time, capped at 30 s.
    #[arg(long, env = "EXPORTD_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Exports of one owner (API key name) running at the same time, across every worker of
    /// every process; workers take the others' exports meanwhile.
    #[arg(long, env = "EXPORTD_MAX_RUNNING_PER_OWNER", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_running_per_owner: u32,

    /// Exports of one owner waiting to run; beyond, a new one is answered 429 with Retry-After.
    #[arg(long, env = "EXPORTD_MAX_QUEUED_PER_OWNER", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_queued_per_owner: u32,

    /// Addresses and networks webhooks may be sent to although they are not public
    /// (loopback, private, link-local: refused otherwise), comma-separated: `127.0.0.1,10.1.0.0/16`.
    #[arg(long, env = "EXPORTD_WEBHOOK_ALLOW", value_delimiter = ',')]
    pub webhook_allow: Vec<String>,

    /// Waits before the second, third, ... attempt of a webhook delivery; after the last, it is
    /// given up (default: growing exponentially, doubling from 30 minutes on, 31.7 hours in all).
    #[arg(long, env = "EXPORTD_WEBHOOK_RETRIES", value_delimiter = ',', value_parser = parse_duration,
          default_value = "5s,30s,2m,10m,30m,1h,2h,4h,8h,16h")]
    pub webhook_retries: Vec<Duration>,

    /// A second address serving only `GET /metrics` (Prometheus text), without a key: for a
    /// scraper on a private network, and the one way to scrape an `exportd worker`. On the
    /// API's address `/metrics` takes an admin key.
    #[arg(long, env = "EXPORTD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Heartbeat of the queue workers; a worker silent for three of these is presumed dead
    /// and its export resumed elsewhere.
    #[arg(long, env = "EXPORTD_HEARTBEAT", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// How long a stopping process waits for running exports to reach a chunk boundary.
    #[arg(long, env = "EXPORTD_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

impl WorkerSettings {
    /// `EXPORTD_STORAGE` when it names something (set but empty: the directory).
    pub fn object_storage_url(&self) -> Option<&str> {
        self.storage.as_deref().filter(|u| !u.is_empty())
    }

    /// Threads of the export engine: `EXPORTD_ENGINE_THREADS`, else half the cores.
    pub fn engine_threads(&self) -> usize {
        self.engine_threads.map_or_else(
            || crate::export::threads::default_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
            |n| n as usize,
        )
    }

    /// `EXPORTD_READ_DATABASE_URL` when it names something (set but empty: the primary).
    pub fn read_replica_url(&self) -> Option<&str> {
        self.read_database_url.as_deref().filter(|u| !u.is_empty())
    }

    /// Worker slots of this process: both export lanes and the webhook slot (0 for an
    /// API-only process).
    pub fn slots(&self) -> u32 {
        if self.worker_concurrency == 0 { 0 } else { self.worker_concurrency + self.throttled_concurrency + 1 }
    }
}

/// `exportd serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "EXPORTD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base URL put before the links returned to clients, e.g. https://exports.example.com
    /// (default: relative links such as /api/export/{id}/status).
    #[arg(long, env = "EXPORTD_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// A file holding a development API key (admin): read at start and printed with a ready
    /// `curl` line; when it is missing or its key is no longer valid, a new key is made and
    /// written there (mode 0600). For `make run`; leave unset in production.
    #[arg(long, env = "EXPORTD_DEV_KEY_FILE")]
    pub dev_key_file: Option<PathBuf>,

    /// Secrets that sign download links, comma-separated `id=secret` (each secret at least 32
    /// characters). The first signs, all verify: to rotate, put a new one first and drop the
    /// old one once its links have expired (`link-ttl` later). Default: one secret kept in
    /// the database, shared by every process on it.
    #[arg(long, env = "EXPORTD_LINK_SECRETS", value_delimiter = ',', hide_env_values = true)]
    pub link_secrets: Vec<String>,

    /// How long a signed download link works (never past the export's own expiry).
    #[arg(long, env = "EXPORTD_LINK_TTL", default_value = "1h", value_parser = parse_duration)]
    pub link_ttl: Duration,

    #[command(flatten)]
    /// What clients may hold of the HTTP server.
    pub http: HttpSettings,

    #[command(flatten)]
    /// The database connection.
    pub db: DbArgs,

    #[command(flatten)]
    /// The export workers.
    pub worker: WorkerSettings,
}

/// Limits of the HTTP server (see the README's table of limits).
#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// Open HTTP connections in all; beyond, new ones wait in the listen backlog (kept below
    /// the process's file descriptor limit).
    #[arg(long, env = "EXPORTD_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// Open HTTP connections from one client address (0 = no limit); beyond, a new one is
    /// answered 503 and closed. Behind a proxy every client has the proxy's address: raise it.
    #[arg(long, env = "EXPORTD_HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 128)]
    pub http_max_connections_per_client: usize,

    /// Time a client has to send a request's head; also how long a connection may sit idle
    /// between requests before it is closed.
    #[arg(long, env = "EXPORTD_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// How long a response (a download) may make no progress because the client does not read
    /// before its connection is closed.
    #[arg(long, env = "EXPORTD_HTTP_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_send_timeout: Duration,

    /// Downloads served at the same time; beyond, a download is answered 503 (retry later).
    #[arg(long, env = "EXPORTD_MAX_DOWNLOADS", default_value_t = 64)]
    pub max_downloads: usize,

    /// Web origins whose pages may call the API from a browser (CORS), comma-separated, e.g.
    /// `https://app.example.com,http://localhost:3000`, or `*` for any; none by default.
    #[arg(long, env = "EXPORTD_CORS_ORIGINS", value_delimiter = ',', value_parser = crate::api::cors::parse_origin)]
    pub cors_origins: Vec<String>,
}

/// `exportd worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    /// The database connection.
    pub db: DbArgs,

    #[command(flatten)]
    /// The export workers.
    pub worker: WorkerSettings,
}

/// `exportd seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    /// The database connection.
    pub db: DbArgs,

    /// Rows to create (the table is emptied first, so the result depends only on this).
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: i64,

    /// Only seed when the table is missing or empty (used by `make run`).
    #[arg(long)]
    pub if_empty: bool,
}

impl ServeArgs {
    /// `serve` with its defaults (and the environment), as when no subcommand is given.
    pub fn parse_defaults() -> Self {
        match Cli::parse_from(["exportd", "serve"]).command {
            Some(Command::Serve(s)) => s,
            _ => unreachable!("parsed a serve command"),
        }
    }

    /// Settings for tests: a free port, the given database and storage directory.
    pub fn for_test(database_url: &str, storage_dir: PathBuf) -> Self {
        let mut s = Self::parse_defaults();
        s.listen = "127.0.0.1:0".parse().expect("valid address");
        s.db.database_url = database_url.to_owned();
        s.worker.storage_dir = storage_dir;
        s
    }
}

impl DbArgs {
    /// Database settings from the environment and defaults.
    pub fn parse_defaults() -> Self {
        match Cli::parse_from(["exportd", "migrate"]).command {
            Some(Command::Migrate(d)) => d,
            _ => unreachable!("parsed a migrate command"),
        }
    }
}

/// Parses a duration as `humantime` reads it ("500ms", "2s", "1m", "1h 30m", "7d"), or a bare
/// number of seconds (as earlier versions took it).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}): expected e.g. 500ms, 2s, 1m, 7d"))
}

/// Parses a size in bytes: a number with an optional unit, `B`, `KiB`, `MiB`, `GiB`, `TiB`
/// (or `K`, `M`, `G`, `T`, also binary), e.g. "256MiB", "2 GiB", "1048576".
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("invalid size {s:?}: expected e.g. 512MiB, 2GiB or a number of bytes")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok((n * (1u64 << shift) as f64) as u64),
        _ => Err(format!("invalid size {s:?}: expected e.g. 512MiB, 2GiB or a number of bytes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
    }
}
