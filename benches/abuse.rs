//! `make abuse`: what a careless or hostile client can do to a fresh `exportd serve`, one
//! attack per row, each against a new process on loopback, bounded in count and time.
//!
//! For each row: the attack, the limit it hits, the statuses it got, the server's peak RSS
//! during it, `/healthz` p99 from another client (address 127.0.0.2, polling every 20 ms), and
//! how long another client's export took next to it, as a ratio of its time alone. Targets
//! (issue 18): `/healthz` p99 under 100 ms, peak RSS under 150 MB, other exports within 2x.
//! Prints a table and writes target/abuse/results.json.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use exportd::{config::DbArgs, db};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

#[path = "../tests/support/mod.rs"]
mod support;

use support::{
    client::Api,
    helpers::with_database,
    process::{Exportd, exportd_env, peak_rss_kib, reset_peak_rss},
};

/// Rows of the demo dataset (the victim export writes all of them).
const ROWS: i64 = 300_000;

/// One row of the table.
struct Outcome {
    attack: &'static str,
    limit: &'static str,
    statuses: String,
    peak_rss_mib: f64,
    health_p99_ms: f64,
    health_failures: usize,
    victim_ratio: f64,
    note: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| DbArgs::parse_defaults().database_url);
    let db_url = with_database(&admin, "exportd_abuse");
    let admin_pool = sqlx::PgPool::connect(&admin).await?;
    let _ = sqlx::query("drop database if exists exportd_abuse with (force)").execute(&admin_pool).await;
    sqlx::query("create database exportd_abuse").execute(&admin_pool).await?;
    let pool = sqlx::PgPool::connect(&db_url).await?;
    db::migrate(&pool).await?;
    db::seed::seed_orders(&pool, ROWS, |_| {}).await?;
    let work = tempfile::tempdir()?;

    // The victim's time alone, on a fresh server.
    let alone = {
        let server = start(&db_url, work.path(), "alone").await;
        let api = server.api();
        let _ = victim(&api).await; // warm the cache
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(victim(&api).await);
        }
        times.sort_by(f64::total_cmp);
        times[1]
    };
    println!("victim export ({ROWS} rows) alone: {alone:.2} s");

    let mut rows = Vec::new();
    macro_rules! row {
        ($attack:expr, $limit:expr, |$api:ident, $pid:ident, $setup:ident| $body:expr) => {{
            let server = start(&db_url, work.path(), $attack).await;
            let $api = server.api();
            let $pid = server.pid();
            let $setup = setup_for($attack, &$api).await;
            reset_peak_rss($pid);
            let stop = Arc::new(AtomicBool::new(false));
            let prober = tokio::spawn(probe($api.base.clone(), stop.clone()));
            let victim_run = tokio::spawn({
                let api = $api.clone();
                async move { victim(&api).await }
            });
            let (statuses, note): (String, String) = $body;
            let victim_secs = victim_run.await?;
            stop.store(true, Ordering::SeqCst);
            let (p99, failures) = prober.await?;
            let peak = peak_rss_kib($pid) as f64 / 1024.0;
            let outcome = Outcome {
                attack: $attack,
                limit: $limit,
                statuses,
                peak_rss_mib: peak,
                health_p99_ms: p99,
                health_failures: failures,
                victim_ratio: victim_secs / alone,
                note,
            };
            print_row(&outcome);
            rows.push(outcome);
            drop(server);
        }};
    }

    row!("POST 100 MB bodies, 4 at once", "body 1 MiB (413)", |api, _pid, _setup| {
        let posts = (0..4).map(|i| {
            let api = api.clone();
            async move {
                let req = api.client.post(api.url("/api/export")).header("content-type", "application/json");
                let req = if i % 2 == 0 {
                    req.body(vec![b' '; 100 << 20])
                } else {
                    let chunks = (0..1600).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 65536])));
                    req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
                };
                status_of(req.send().await)
            }
        });
        (tally(futures::future::join_all(posts).await), "two with Content-Length, two chunked".into())
    });

    row!("invalid bodies of 8,000 and 12,000 keys, 10 at once", "one pass per body (400)", |api, _pid, _setup| {
        let posts = (0..10).map(|i| {
            let api = api.clone();
            let keys = if i % 2 == 0 { 8_000 } else { 12_000 };
            let body: serde_json::Map<String, Value> = (0..keys).map(|k| (format!("key{k:06}"), json!(k))).collect();
            async move { status_of(api.client.post(api.url("/api/export")).json(&body).send().await) }
        });
        (tally(futures::future::join_all(posts).await), "118 KB and 180 KB".into())
    });

    row!("400 downloads that stop reading", "64 downloads, send timeout 30 s (503 busy)", |api, pid, setup| {
        let id = setup.expect("a completed export");
        let before = current_rss_kib(pid) as f64 / 1024.0;
        let mut held = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..400 {
            let socket = TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            let mut s = socket.connect(address(&api)?).await?;
            let req = format!(
                "GET /api/export/{id}/download HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                api.key
            );
            s.write_all(req.as_bytes()).await?;
            held.push(s);
        }
        for s in &mut held {
            statuses.push(peek_status(s).await);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = peak_rss_kib(pid) as f64 / 1024.0;
        drop(held);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let idle = current_rss_kib(pid) as f64 / 1024.0;
        (
            tally(statuses),
            format!("held 5 s; RSS {before:.0} MiB before, {during:.0} MiB peak, {idle:.0} MiB 8 s after they closed"),
        )
    });

    row!(
        "20,000 connections from one address, held idle",
        "128 per address, 1,024 in all (503)",
        |api, _pid, _setup| {
            let addr = address(&api)?;
            let mut held: Vec<TcpStream> = Vec::new();
            let mut statuses = Vec::new();
            for _ in 0..20_000 {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    statuses.push("connect failed".to_owned());
                    continue;
                };
                let mut byte = [0u8; 12];
                // Refused ones are answered at once; held ones stay silent.
                match tokio::time::timeout(Duration::from_millis(20), s.read(&mut byte)).await {
                    Ok(Ok(n)) if n > 0 => statuses.push(String::from_utf8_lossy(&byte[9..n.min(12)]).into_owned()),
                    Ok(_) => statuses.push("closed".into()),
                    Err(_) => {
                        statuses.push("held".into());
                        held.push(s);
                    }
                }
            }
            let n = held.len();
            (tally(statuses), format!("{n} held open until the header timeout"))
        }
    );

    row!("100 slowloris connections (a header byte a second)", "header timeout 10 s", |api, _pid, _setup| {
        let addr = address(&api)?;
        let loris = (0..100).map(|_| async move {
            let Ok(mut s) = TcpStream::connect(addr).await else { return "connect failed".to_owned() };
            let started = Instant::now();
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                if s.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                if started.elapsed() > Duration::from_secs(20) {
                    return "still open after 20 s".to_owned();
                }
            }
            format!("closed after {} s", started.elapsed().as_secs())
        });
        (tally(futures::future::join_all(loris).await), String::new())
    });

    row!("two exports at 1 row/s", "a lane of their own", |api, _pid, _setup| {
        let mut statuses = Vec::new();
        let mut slow = Vec::new();
        for _ in 0..2 {
            let resp = api.client.post(api.url("/api/export")).json(&json!({"maxRowsPerSecond": 1})).send().await?;
            statuses.push(resp.status().as_u16().to_string());
            slow.push(resp.json::<Value>().await?["jobId"].as_str().unwrap_or_default().to_owned());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut rows = Vec::new();
        for id in &slow {
            rows.push(api.status(id.parse()?).await["rowsWritten"].as_i64().unwrap_or(0));
            api.client.delete(api.url(&format!("/api/export/{id}"))).send().await?;
        }
        (tally(statuses), format!("both running ({rows:?} rows) while the victim ran; cancelled after"))
    });

    row!(
        "filter values: 2,001 in all, then 10 exports of 2,000",
        "2,000 values, one array bound",
        |api, _pid, _setup| {
            let values = |n: i64| (1..=n).collect::<Vec<i64>>();
            let mut statuses = Vec::new();
            let emails = || (0..1000).map(|i| format!("customer{i}@example.com")).collect::<Vec<_>>();
            let over = json!({"filters": {"id": {"in": values(1000)}, "customer_email": {"in": emails()}, "status": {"eq": "paid"}}});
            statuses.push(status_of(api.client.post(api.url("/api/export")).json(&over).send().await));
            let mut ids = Vec::new();
            for _ in 0..10 {
                let body = json!({"filters": {"id": {"in": values(1000)}, "customer_email": {"in": emails()}}});
                let resp = api.client.post(api.url("/api/export")).json(&body).send().await?;
                statuses.push(resp.status().as_u16().to_string());
                let v: Value = resp.json().await?;
                ids.push(v["jobId"].as_str().unwrap_or_default().to_owned());
            }
            let mut ended = Vec::new();
            for id in ids {
                let s = api.wait_finished(id.parse()?, Duration::from_secs(120)).await;
                ended.push(s["status"].as_str().unwrap_or("?").to_owned());
            }
            (tally(statuses), format!("the 10 ended {}", tally(ended)))
        }
    );

    row!(
        "filter values of 10 KB; header names with CR/LF and =HYPERLINK",
        "1 KiB per value, no control characters (400)",
        |api, _pid, _setup| {
            let bodies = [
                json!({"filters": {"customer_email": {"eq": "x".repeat(10_240)}}}),
                json!({"filters": {"customer_email": {"in": vec!["y".repeat(10_240); 90]}}}),
                json!({"headers": {"note": "=HYPERLINK(\"http://x\")\r\nx"}}),
                json!({"format": {"formulaGuard": true}, "headers": {"note": "=HYPERLINK(\"http://x\")"}}),
            ];
            let mut statuses = Vec::new();
            for _ in 0..25 {
                for body in &bodies {
                    statuses.push(status_of(api.client.post(api.url("/api/export")).json(body).send().await));
                }
            }
            let page = api.client.get(api.url("/api/exports?limit=100")).send().await?.bytes().await?.len();
            (tally(statuses), format!("GET /api/exports?limit=100: {page} bytes"))
        }
    );

    row!(
        "accepting at the open files limit (server at 256 descriptors, 1,000 idle connections from 10 addresses)",
        "accept backs off, no spin",
        |api, pid, _setup| {
            let ok = std::process::Command::new("prlimit")
                .args(["--nofile=256", "--pid", &pid.to_string()])
                .status()?
                .success();
            anyhow::ensure!(ok, "prlimit failed");
            let addr = address(&api)?;
            let mut held = Vec::new();
            for i in 0..1000 {
                let socket = TcpSocket::new_v4()?;
                socket.bind(format!("127.0.1.{}:0", 1 + i % 10).parse()?)?;
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), socket.connect(addr)).await {
                    held.push(s);
                }
            }
            let cpu_before = cpu_ticks(pid);
            tokio::time::sleep(Duration::from_secs(5)).await;
            let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second() / 5.0 * 100.0;
            let n = held.len();
            drop(held);
            (format!("{n} connected"), format!("server CPU while they were held: {cpu:.0}%"))
        }
    );

    let json: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"attack": r.attack, "limit": r.limit, "statuses": r.statuses, "peakRssMiB": r.peak_rss_mib,
                   "healthP99Ms": r.health_p99_ms, "healthFailures": r.health_failures,
                   "victimRatio": r.victim_ratio, "note": r.note})
        })
        .collect();
    std::fs::create_dir_all("target/abuse")?;
    std::fs::write("target/abuse/results.json", serde_json::to_string_pretty(&json)?)?;
    println!("\n| attack | limit hit | statuses | peak RSS | /healthz p99 | other export | note |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        print_row_md(r);
    }
    let worst_rss = rows.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
    println!("\nworst peak RSS {worst_rss:.0} MiB (target < 150); results in target/abuse/results.json");
    drop(pool);
    let _ = sqlx::query("drop database if exists exportd_abuse with (force)").execute(&admin_pool).await;
    Ok(())
}

/// A fresh `exportd serve` with its own storage directory.
async fn start(db_url: &str, work: &Path, name: &str) -> Exportd {
    let storage = work.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    std::fs::create_dir_all(&storage).expect("storage dir");
    // One owner makes every export of a scenario: quotas are not what these measure.
    Exportd::serve(exportd_env(db_url, &storage, &[("EXPORTD_MAX_QUEUED_PER_OWNER", "1000000")])).await
}

/// The server's socket address (for raw connections).
fn address(api: &Api) -> anyhow::Result<std::net::SocketAddr> {
    Ok(api.base.trim_start_matches("http://").parse()?)
}

/// What a row needs before its attack: a completed export to download.
async fn setup_for(attack: &str, api: &Api) -> Option<uuid::Uuid> {
    if !attack.contains("downloads") {
        return None;
    }
    let id = api.create_export(None).await;
    let s = api.wait_finished(id, Duration::from_secs(120)).await;
    assert_eq!(s["status"], "completed");
    Some(id)
}

/// Another client's export of the whole dataset: seconds until completed (NaN, with its
/// error printed, when it did not complete).
async fn victim(api: &Api) -> f64 {
    let started = Instant::now();
    let id = api.create_export(None).await;
    let s = api.wait_finished(id, Duration::from_secs(300)).await;
    if s["status"] != "completed" {
        println!("the other export ended {}: {}", s["status"], s["error"]);
        return f64::NAN;
    }
    started.elapsed().as_secs_f64()
}

/// `/healthz` every 20 ms from 127.0.0.2 until `stop`: p99 in ms, and failures (a timeout of
/// 5 s or an error counts as 5 s).
async fn probe(base: String, stop: Arc<AtomicBool>) -> (f64, usize) {
    let client = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut times = Vec::new();
    let mut failures = 0;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 200 => times.push(started.elapsed().as_secs_f64() * 1000.0),
            _ => {
                failures += 1;
                times.push(5000.0);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times.sort_by(f64::total_cmp);
    let p99 = times.get(((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    (p99, failures)
}

fn status_of(resp: reqwest::Result<reqwest::Response>) -> String {
    match resp {
        Ok(r) => r.status().as_u16().to_string(),
        Err(e) if e.is_timeout() => "timeout".into(),
        Err(_) => "connection closed".into(),
    }
}

/// The status of a response whose body is not read.
async fn peek_status(s: &mut TcpStream) -> String {
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(10), s.peek(&mut head)).await {
        Ok(Ok(n)) if n >= 12 => String::from_utf8_lossy(&head[9..12]).into_owned(),
        _ => "no answer".into(),
    }
}

/// "202 ×4, 413 ×2"
fn tally(statuses: Vec<String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    counts.iter().map(|(s, n)| format!("{s} ×{n}")).collect::<Vec<_>>().join(", ")
}

fn current_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the command name.
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// The other export's time as a ratio of its time alone, or why there is none.
fn ratio(r: &Outcome) -> String {
    if r.victim_ratio.is_nan() { "failed".into() } else { format!("{:.2}x", r.victim_ratio) }
}

fn print_row(r: &Outcome) {
    println!(
        "{}: {} | peak RSS {:.0} MiB | /healthz p99 {:.1} ms ({} failed) | other export {} | {}",
        r.attack,
        r.statuses,
        r.peak_rss_mib,
        r.health_p99_ms,
        r.health_failures,
        ratio(r),
        r.note
    );
}

fn print_row_md(r: &Outcome) {
    println!(
        "| {} | {} | {} | {:.0} MiB | {:.1} ms{} | {} | {} |",
        r.attack,
        r.limit,
        r.statuses,
        r.peak_rss_mib,
        r.health_p99_ms,
        if r.health_failures > 0 { format!(" ({} failed)", r.health_failures) } else { String::new() },
        ratio(r),
        r.note
    );
}
