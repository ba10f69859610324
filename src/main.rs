//! The `exportd` binary: parse settings, start telemetry, run the chosen subcommand.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use exportd::{
    api::{self, AppState},
    app::{self, App},
    config::{Cli, Command, DbArgs, ServeArgs},
    db,
    shutdown::Shutdown,
    storage::LocalDir,
};

fn main() -> anyhow::Result<()> {
    exportd::alloc::tune_malloc();
    let cli = Cli::parse();
    // Dropped after the runtime: the last buffered spans are sent then.
    let _telemetry = exportd::telemetry::init()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    match cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::parse_defaults())) {
        Command::Serve(args) => {
            shutdown.trigger_on_os_signals();
            App::build(args, shutdown).await?.run().await
        }
        Command::Api(mut args) => {
            shutdown.trigger_on_os_signals();
            args.worker.worker_concurrency = 0;
            App::build(args, shutdown).await?.run().await
        }
        Command::Worker(args) => {
            shutdown.trigger_on_os_signals();
            app::run_worker(&args.db, &args.worker, shutdown).await
        }
        Command::Migrate(args) => {
            app::connect_and_migrate(&args).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Seed(args) => {
            let pool = app::connect_and_migrate(&args.db).await?;
            if args.if_empty && db::seed::orders_count(&pool).await?.is_some_and(|n| n > 0) {
                eprintln!("orders already has rows; not seeding (drop --if-empty to re-seed)");
                return Ok(());
            }
            db::seed::seed_orders(&pool, args.rows, db::seed::print_progress(args.rows)).await.context("seeding orders")
        }
        Command::Export(args) => exit_with(exportd::cli::export(&args).await?),
        Command::Exports(args) => exit_with(exportd::cli::exports(&args).await?),
        Command::Keys(args) => {
            let pool = app::connect_and_migrate(&args.db).await?;
            print!("{}", exportd::keys::run(&pool, &args.command).await?);
            Ok(())
        }
        Command::Openapi => {
            let pool = db::connect(&DbArgs::parse_defaults()).await?;
            let state = Arc::new(AppState {
                waker: exportd::export::queue::Waker::start(pool.clone()),
                pool,
                storage: Arc::new(LocalDir::at("exports")),
                download_redirect: None,
                default_chunk_size: 10_000,
                max_parallelism: 4,
                retention: std::time::Duration::ZERO,
                min_free_disk: 0,
                datasets: Arc::new(exportd::model::Datasets::none()),
                public_url: String::new(),
                request_timeout: std::time::Duration::from_secs(30),
                downloads: Arc::new(tokio::sync::Semaphore::new(1)),
                faults: Default::default(),
                cors: Default::default(),
                conformance: None,
                links: api::Links {
                    keys: exportd::model::link::LinkKeys::single("spec", vec![0; 32]),
                    ttl: std::time::Duration::from_secs(3600),
                    base: String::new(),
                },
                webhook_allow: Default::default(),
            });
            println!("{}", api::spec_json(state));
            Ok(())
        }
    }
}

/// Ends the process with `code` (the client's commands: 1 for a failed export, 130 after Ctrl-C).
fn exit_with(code: i32) -> anyhow::Result<()> {
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
