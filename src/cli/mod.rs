//! The command-line client: `exportd export` (create, follow with a progress bar, download
//! with resume, check) and `exportd exports list|status|watch|cancel`. In a terminal it draws
//! bars (indicatif) and asks on Ctrl-C whether to cancel the export; otherwise it prints plain
//! lines and leaves the export running.

pub mod client;
mod progress;

use std::io::IsTerminal as _;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::config::{ExportArgs, ExportsArgs, ExportsCommand};
use client::Client;
use progress::Progress;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: i32 = 130;

/// `exportd export`: returns the process's exit code.
pub async fn export(args: &ExportArgs) -> anyhow::Result<i32> {
    let body = request_body(args)?;
    let client = Client::new(&args.server)?;
    let created = client.create(&body).await?;
    let id = created["jobId"].as_str().context("the server's answer has no jobId")?.to_owned();
    let interactive = std::io::stderr().is_terminal() && std::io::stdin().is_terminal();
    let progress = Progress::new(interactive);
    progress.line(&format!("export {id} created ({})", created["status"].as_str().unwrap_or("queued")));
    let end = tokio::select! {
        end = client.follow(&id, |s| progress.rows(s)) => end?,
        _ = tokio::signal::ctrl_c() => return interrupted(&client, &id, &progress, interactive).await,
    };
    progress.finish_rows(&end);
    match end["status"].as_str() {
        Some("completed") => {}
        Some(other) => {
            let why = end["error"].as_str().unwrap_or("no reason given");
            progress.line(&format!("export {id} {other}: {why}"));
            return Ok(1);
        }
        None => bail!("the server's status has no status field"),
    }
    let expected = end["bytesWritten"].as_u64();
    let download = client.download(&id, &args.output, expected, |have, total| progress.bytes(have, total));
    let (bytes, etag) = tokio::select! {
        done = download => done?,
        _ = tokio::signal::ctrl_c() => {
            progress.line(&format!("download interrupted; the export stays on the server: exportd exports status {id}"));
            return Ok(INTERRUPTED);
        }
    };
    progress.finish_bytes();
    progress.line(&format!(
        "saved {} ({bytes} bytes, {} rows, ETag {etag} checked)",
        args.output.display(),
        end["rowsWritten"].as_i64().unwrap_or_default()
    ));
    Ok(0)
}

/// Ctrl-C while the export runs: a person at a terminal is asked whether to cancel it;
/// anything else leaves it running and says how to find it again.
async fn interrupted(client: &Client, id: &str, progress: &Progress, interactive: bool) -> anyhow::Result<i32> {
    let cancel = interactive && progress.ask(&format!("Cancel export {id} on the server? [y/N] ")).await;
    if cancel {
        let s = client.cancel(id).await?;
        progress.line(&format!("export {id} {}", s["status"].as_str().unwrap_or("cancelled")));
    } else {
        progress.line(&format!(
            "export {id} left running; follow it with `exportd exports watch {id}`, cancel it with \
             `exportd exports cancel {id}`"
        ));
    }
    Ok(INTERRUPTED)
}

/// `exportd exports ...`: returns the process's exit code.
pub async fn exports(args: &ExportsArgs) -> anyhow::Result<i32> {
    let client = Client::new(&args.server)?;
    match &args.command {
        ExportsCommand::List { status, limit } => {
            let page = client.list(status.as_deref(), *limit).await?;
            print!("{}", list_table(&page));
        }
        ExportsCommand::Status { id } => {
            println!("{}", serde_json::to_string_pretty(&client.status(id).await?)?);
        }
        ExportsCommand::Cancel { id } => {
            let s = client.cancel(id).await?;
            println!("export {id} {}", s["status"].as_str().unwrap_or("?"));
        }
        ExportsCommand::Watch { id } => {
            let interactive = std::io::stderr().is_terminal();
            let progress = Progress::new(interactive);
            let end = tokio::select! {
                end = client.follow(id, |s| progress.rows(s)) => end?,
                _ = tokio::signal::ctrl_c() => return Ok(INTERRUPTED),
            };
            progress.finish_rows(&end);
            let status = end["status"].as_str().unwrap_or("?");
            progress.line(&format!("export {id} {status}"));
            return Ok(if status == "completed" { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// The request body `exportd export`'s flags ask for.
fn request_body(args: &ExportArgs) -> anyhow::Result<Value> {
    let mut body = Map::new();
    if let Some(d) = &args.dataset {
        body.insert("dataset".into(), json!(d));
    }
    if let Some(c) = &args.columns {
        body.insert("columns".into(), json!(c));
    }
    if !args.filters.is_empty() {
        let mut filters = Map::new();
        for f in &args.filters {
            let (column, op, value) = parse_filter(f)?;
            let ops = filters.entry(column).or_insert_with(|| json!({}));
            if ops.get(op).is_some() {
                bail!("--filter {f:?}: the column already has a {op} condition");
            }
            ops[op] = value;
        }
        body.insert("filters".into(), Value::Object(filters));
    }
    if args.gzip {
        body.insert("compression".into(), json!("gzip"));
    }
    if let Some(n) = args.chunk_size {
        body.insert("chunkSize".into(), json!(n));
    }
    if let Some(n) = args.max_rows_per_second {
        body.insert("maxRowsPerSecond".into(), json!(n));
    }
    if let Some(n) = args.parallelism {
        body.insert("parallelism".into(), json!(n));
    }
    let mut format = Map::new();
    if let Some(tz) = &args.time_zone {
        format.insert("timeZone".into(), json!(tz));
    }
    if let Some(t) = &args.file_type {
        format.insert("type".into(), json!(t));
    }
    if !format.is_empty() {
        body.insert("format".into(), Value::Object(format));
    }
    Ok(Value::Object(body))
}

/// `status=paid|shipped` → (`status`, `in`, `["paid", "shipped"]`); see `--filter`.
fn parse_filter(f: &str) -> anyhow::Result<(String, &'static str, Value)> {
    // Longest operators first: `>=` before `>`, `!=` before `=`.
    let ops: [(&str, &str); 6] =
        [(">=", "gte"), ("<=", "lte"), ("!=", "isNull"), ("=", "eq"), (">", "gt"), ("<", "lt")];
    let Some((at, sym, op)) =
        ops.iter().filter_map(|(sym, op)| f.find(sym).map(|at| (at, *sym, *op))).min_by_key(|(at, ..)| *at)
    else {
        bail!("--filter {f:?}: expected COLUMN=VALUE, COLUMN>=VALUE, COLUMN<VALUE, COLUMN=A|B or COLUMN=null");
    };
    // At the same position `>=` and `>` both match: the longer one wins.
    let (sym, op) = ops.iter().find(|(s, _)| f[at..].starts_with(s)).map(|(s, o)| (*s, *o)).unwrap_or((sym, op));
    let column = f[..at].trim();
    let value = f[at + sym.len()..].trim();
    if column.is_empty() {
        bail!("--filter {f:?}: no column before {sym}");
    }
    let parsed = match (op, value) {
        ("isNull", "null") => ("isNull", json!(false)),
        ("isNull", _) => bail!("--filter {f:?}: != is only for `!=null`"),
        ("eq", "null") => ("isNull", json!(true)),
        ("eq", v) if v.contains('|') => ("in", json!(v.split('|').collect::<Vec<_>>())),
        (op, v) => (op, json!(v)),
    };
    Ok((column.to_owned(), parsed.0, parsed.1))
}

/// A page of exports as a table for a terminal.
fn list_table(page: &Value) -> String {
    let mut out = format!("{:<36}  {:<9}  {:<12}  {:>12}  {}\n", "ID", "STATUS", "DATASET", "ROWS", "CREATED");
    for e in page["items"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<36}  {:<9}  {:<12}  {:>12}  {}\n",
            e["jobId"].as_str().unwrap_or("?"),
            e["status"].as_str().unwrap_or("?"),
            e["dataset"].as_str().unwrap_or("?"),
            e["rowsWritten"].as_i64().unwrap_or_default(),
            e["createdAt"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(next) = page["nextCursor"].as_str() {
        out.push_str(&format!("(more: the server's nextCursor is {next})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_as_the_api_takes_them() {
        assert_eq!(parse_filter("status=paid").unwrap(), ("status".into(), "eq", json!("paid")));
        assert_eq!(parse_filter("status=paid|shipped").unwrap(), ("status".into(), "in", json!(["paid", "shipped"])));
        assert_eq!(parse_filter("id>=100").unwrap(), ("id".into(), "gte", json!("100")));
        assert_eq!(parse_filter("id>100").unwrap(), ("id".into(), "gt", json!("100")));
        assert_eq!(parse_filter("id<=5").unwrap(), ("id".into(), "lte", json!("5")));
        assert_eq!(parse_filter("id<5").unwrap(), ("id".into(), "lt", json!("5")));
        assert_eq!(parse_filter("note=null").unwrap(), ("note".into(), "isNull", json!(true)));
        assert_eq!(parse_filter("note!=null").unwrap(), ("note".into(), "isNull", json!(false)));
        assert_eq!(
            parse_filter("created_at>=2023-01-01T00:00:00+01:00").unwrap(),
            ("created_at".into(), "gte", json!("2023-01-01T00:00:00+01:00"))
        );
        assert!(parse_filter("status").unwrap_err().to_string().contains("--filter \"status\""));
        assert!(parse_filter("=x").is_err());
        assert!(parse_filter("a!=b").is_err());
    }
}
