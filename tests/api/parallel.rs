//! Parallel exports (`parallelism`): the keys split into ranges of similar row counts, each
//! read and checkpointed on its own, the pieces joined into one file byte-identical to `COPY`
//! and to the serial export — also after a range crashes at a fault point, after kill -9 of the
//! process at random moments, and when a stale runner's ranges wake up after a takeover.

use std::{io::Read as _, time::Duration};

use exportd::{
    export::engine::{Faults, Outcome, Pause, PauseAt},
    model::KeyRange,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::*,
    support::process::{Exportd, exportd_env},
};

/// The rows `seed_nasty` adds to the seeded ones.
const HAZARD_ROWS: i64 = 8;

async fn ranges(app: &TestApp, id: Uuid) -> Vec<KeyRange> {
    exportd::db::ranges::ranges(&app.db.pool, id).await.unwrap()
}

async fn export(app: &TestApp, body: Value) -> (Uuid, Vec<u8>) {
    let id = app.create_export(Some(body)).await;
    let s = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "completed", "{s}");
    (id, app.download(id).await)
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Each range holds about its share of the rows (within a quarter of it).
fn assert_even(ranges: &[KeyRange], total: i64) {
    let share = total / ranges.len() as i64;
    for r in ranges {
        assert!(r.done, "{r:?}");
        assert!(
            (r.rows_written - share).abs() <= share / 4,
            "range {} holds {} rows, its share is {share}: {ranges:?}",
            r.position,
            r.rows_written
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_exports_are_byte_identical_to_copy_and_to_the_serial_export() {
    let db = test_db().await;
    seed_nasty(&db.pool, 40_000).await;
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 2, ..Default::default() }).await;
    let total = 40_000 + HAZARD_ROWS;
    for p in [1, 2, 3, 4] {
        let (id, file) = export(&app, json!({"chunkSize": 1000, "parallelism": p})).await;
        assert_same_bytes(&file, &reference);
        let ranges = ranges(&app, id).await;
        if p == 1 {
            assert!(ranges.is_empty(), "parallelism 1 reads serially");
        } else {
            assert_eq!(ranges.len(), p, "{ranges:?}");
            assert_even(&ranges, total);
        }
        let s = app.status(id).await;
        assert_eq!(s["rowsWritten"], total, "progress is the sum over ranges: {s}");
        assert_eq!(s["options"]["parallelism"], p);
        // The file is the pieces (nothing copied): one per range, nothing else kept.
        let dir = app.storage.path().join(id.to_string());
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), p, "one piece per range");
        // Ranges of bytes within, across and at the ends of pieces: the bytes of the whole.
        let mut ends: Vec<usize> = Vec::new();
        for r in &ranges {
            ends.push(ends.last().copied().unwrap_or(0) + r.bytes_written as usize);
        }
        let len = reference.len();
        let mut cuts = vec![(0, 99), (len - 500, len - 1), (0, len - 1)];
        for end in ends.iter().take(ends.len().saturating_sub(1)) {
            cuts.extend([(end - 10, end + 10), (*end, end + 1), (end - 1, *end - 1), (end - 1_000, end + 200_000)]);
        }
        let url = app.url(&format!("/api/export/{id}/download"));
        for (start, end) in cuts {
            let end = end.min(len - 1);
            let resp = app.client.get(&url).header("range", format!("bytes={start}-{end}")).send().await.unwrap();
            assert_eq!(resp.status(), 206);
            assert_eq!(resp.headers()["content-range"].to_str().unwrap(), format!("bytes {start}-{end}/{len}"));
            assert!(resp.bytes().await.unwrap().as_ref() == &reference[start..=end], "bytes {start}-{end} of {ends:?}");
        }
    }
    // A dialect with a byte order mark, CRLF and quoting: head once, same bytes as serial.
    let dialect = json!({"bom": true, "lineEnding": "crlf", "quoteAll": true, "delimiter": ";"});
    let (_, serial) = export(&app, json!({"chunkSize": 700, "parallelism": 1, "format": dialect})).await;
    let (_, parallel) = export(&app, json!({"chunkSize": 700, "parallelism": 3, "format": dialect})).await;
    assert_same_bytes(&parallel, &serial);
    let count = |needle: &[u8]| parallel.windows(needle.len()).filter(|w| *w == needle).count();
    assert!(parallel.starts_with(b"\xEF\xBB\xBFid;"), "{:?}", String::from_utf8_lossy(&parallel[..40]));
    assert_eq!((count(b"\xEF\xBB\xBF"), count(b"id;created_at;")), (1, 1), "one BOM, one header line");
    // gzip: concatenated members decode to COPY's bytes.
    let (_, gz) = export(&app, json!({"chunkSize": 1000, "parallelism": 4, "compression": "gzip"})).await;
    assert_same_bytes(&gunzip(&gz), &reference);
    // JSON Lines: the same lines as the serial export.
    let (_, serial) = export(&app, json!({"chunkSize": 1000, "parallelism": 1, "format": {"type": "jsonl"}})).await;
    let (_, parallel) = export(&app, json!({"chunkSize": 1000, "parallelism": 2, "format": {"type": "jsonl"}})).await;
    assert_same_bytes(&parallel, &serial);
    // Filtered: only the matching rows, in key order.
    let filter = json!({"status": {"in": ["paid", "shipped"]}});
    let (_, serial) = export(&app, json!({"chunkSize": 500, "parallelism": 1, "filters": filter})).await;
    let (_, parallel) = export(&app, json!({"chunkSize": 500, "parallelism": 3, "filters": filter})).await;
    assert_same_bytes(&parallel, &serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_keys_split_into_ranges_of_similar_row_counts() {
    let db = test_db().await;
    seed_nasty(&db.pool, 40_000).await;
    // 90% of the rows below key 36,000, the rest spread up to 10^12: halving the key span
    // (min/max) would put nearly every row in the first range.
    sqlx::query("update orders set id = id * 25000000 where id > 36000").execute(&db.pool).await.unwrap();
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 1, ..Default::default() }).await;
    let total = 40_000 + HAZARD_ROWS;
    for p in [2, 4] {
        let (id, file) = export(&app, json!({"chunkSize": 1000, "parallelism": p})).await;
        assert_same_bytes(&file, &reference);
        let ranges = ranges(&app, id).await;
        assert_eq!(ranges.len(), p);
        assert_even(&ranges, total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_crashes_resumes_from_its_own_checkpoint() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    for crash in [
        // Range 1 dies with its 3rd chunk synced and not checkpointed (a torn tail past it).
        Faults { crash_before_checkpoint: Some(3), crash_in_range: Some(1), ..Default::default() },
        // Range 0 (the one with the header) dies right after its 2nd checkpoint.
        Faults { crash_after_checkpoint: Some(2), crash_in_range: Some(0), ..Default::default() },
    ] {
        let id = app.create_export(Some(json!({"chunkSize": 1000, "parallelism": 2}))).await;
        let crashed_range = crash.crash_in_range.unwrap() as usize;
        let crashing = (*app.engine).clone().with_faults(crash);
        assert_eq!(crashing.execute(id, "w1").await, Outcome::Crashed);
        let before = ranges(&app, id).await;
        assert_eq!(before.len(), 2);
        assert_eq!(before[crashed_range].rows_written, 2000, "two chunks checkpointed: {before:?}");
        assert!(!before[crashed_range].done);
        let row = export_row(&app.db.pool, id).await;
        let (progress, ranges_sum) = progress_and_ranges(&app.db.pool, id).await;
        assert_eq!(progress, ranges_sum, "progress sums the ranges");
        assert!(row.owner.is_some(), "a crashed run does not release");

        assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
        assert_same_bytes(&app.download(id).await, &reference);
        let after = ranges(&app, id).await;
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((&a.lower_key, &a.upper_key), (&b.lower_key, &b.upper_key), "the split is kept");
            assert!(a.done);
        }
        // The crashed range went on from its checkpoint: the resumed run read its rows after it
        // only (its start is the checkpointed key).
        let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(export_row(&app.db.pool, id).await.rows_written, 20_000 + HAZARD_ROWS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_runners_ranges_change_nothing_after_a_takeover() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"chunkSize": 1000, "parallelism": 2}))).await;
    // A holds one of its ranges' writers with the 2nd chunk's bytes in hand (paused, as a
    // SIGSTOPped or partitioned worker would be); B takes the export over and completes it.
    let pause = Pause::new();
    let a = (*app.engine)
        .clone()
        .with_faults(Faults { pause: Some((PauseAt::BeforeChunkWrite(2), pause.clone())), ..Default::default() });
    let first = tokio::spawn(async move { a.execute(id, "runner-A").await });
    pause.reached().await;
    assert_eq!(app.engine.execute(id, "runner-B").await, Outcome::Completed);
    let completed = app.download(id).await;
    assert_same_bytes(&completed, &reference);
    pause.resume();
    assert_eq!(first.await.unwrap(), Outcome::Lost, "A's held range finds the export lost at its checkpoint");
    let row = export_row(&app.db.pool, id).await;
    assert_eq!(row.status.as_str(), "completed");
    assert_same_bytes(&app.download(id).await, &reference);
    // What A wrote and no range refers to is removed: the files left are the ranges' pieces.
    let dir = app.storage.path().join(id.to_string());
    let mut files: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| format!("{id}/{}", e.unwrap().file_name().to_str().unwrap())).collect();
    let mut pieces: Vec<String> = ranges(&app, id).await.into_iter().map(|r| r.file_name.unwrap()).collect();
    files.sort();
    pieces.sort();
    assert_eq!(files, pieces);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_a_parallel_export_leaves_copys_bytes() {
    let db = test_db().await;
    seed_nasty(&db.pool, 30_000).await;
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let reference = copy_reference(&db.pool).await;
    let storage = tempfile::tempdir().unwrap();
    let env = exportd_env(&db.url, storage.path(), &[("EXPORTD_WORKER_CONCURRENCY", "1"), ("RUST_LOG", "warn")]);
    let mut p = Exportd::serve(env).await;
    let api = p.api();
    // Throttled (shared by the ranges), so three kills land mid-export, each after a random
    // number of further rows; the seed is printed.
    let id = api
        .create_export(Some(
            json!({"chunkSize": 1000, "maxRowsPerSecond": 6000, "parallelism": 3, "compression": "gzip"}),
        ))
        .await;
    let mut random = crate::formats::rng();
    let mut seen = 0;
    for _ in 0..3 {
        seen += random(500, 6_000) as i64;
        api.wait_rows(id, seen, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(random(0, 300))).await;
        p.kill9();
        p.start().await;
    }
    let s = api.wait_finished(id, Duration::from_secs(90)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert!(s["attempts"].as_i64().unwrap() >= 2, "{s}");
    assert_same_bytes(&gunzip(&api.download(id).await), &reference);
    let ranges: Vec<KeyRange> = exportd::db::ranges::ranges(&db.pool, id).await.unwrap();
    assert_eq!(ranges.len(), 3);
    p.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelism_out_of_bounds_is_refused_naming_the_field() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    for (body, mentions) in [
        (json!({"parallelism": 0}), "parallelism"),
        (json!({"parallelism": 65}), "parallelism"),
        (json!({"parallelism": 5}), "at most 4"),
    ] {
        let resp = app.client.post(app.url("/api/export")).json(&body).send().await.unwrap();
        expect_error(resp, 400, mentions).await;
    }
    let resp = app.client.post(app.url("/api/export")).json(&json!({"parallelism": 4})).send().await.unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_every_range_and_the_sweeper_keeps_a_completed_exports_pieces() {
    use exportd::export::sweep::{Sweep, sweep};
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 2, ..Default::default() }).await;
    // Throttled (2000 rows/s over 3 ranges, chunks of 500): it runs for about 10 s.
    let slow = app.create_export(Some(json!({"chunkSize": 500, "maxRowsPerSecond": 2000, "parallelism": 3}))).await;
    app.wait_rows(slow, 1_500, Duration::from_secs(20)).await;
    let resp = app.client.delete(app.url(&format!("/api/export/{slow}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Every range notices at its next chunk (a quarter of a second of rows) and the files go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let dir = app.storage.path().join(slow.to_string());
    loop {
        let open: i64 =
            sqlx::query_scalar("select count(*) from export_runs where export_id = $1 and ended_at is null")
                .bind(slow)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        if open == 0 && !dir.exists() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the ranges did not stop within a chunk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = app.status(slow).await["rowsWritten"].as_i64().unwrap();
    assert_eq!(ranges(&app, slow).await.iter().map(|r| r.rows_written).sum::<i64>(), rows);

    // A completed parallel export's pieces are its file: a sweep (nothing kept, every stray
    // file old enough) leaves them, and the download is still whole.
    let (done, _) = export(&app, json!({"chunkSize": 1000, "parallelism": 3})).await;
    std::fs::write(app.storage.path().join(done.to_string()).join("stray.csv"), b"id\n").unwrap();
    let nothing_kept = Sweep {
        keep_ended_exports: Duration::ZERO,
        keep_finished_jobs: Duration::ZERO,
        stray_file_age: Duration::ZERO,
    };
    let swept = sweep(&app.db.pool, app.engine.storage().as_ref(), &nothing_kept).await.unwrap();
    assert_eq!(swept.files, 1, "only the stray file: {swept:?}");
    assert_same_bytes(&app.download(done).await, &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_asks_for_key_ranges() {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 1, ..Default::default() }).await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("orders.csv");
    let run = crate::operability::cli(&app.base, &app.key)
        .args(["export", "--parallelism", "3", "--chunk-size", "1000", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_bytes(&std::fs::read(&file).unwrap(), &reference);
    let id: Uuid = sqlx::query_scalar("select id from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(ranges(&app, id).await.len(), 3, "the export was read in 3 key ranges");
}
