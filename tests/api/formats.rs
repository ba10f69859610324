//! JSON Lines and Parquet: every value read back by an independent reader (Python's json,
//! Apache Arrow's Parquet reader, DuckDB: `tests/formats/check.py`) equals PostgreSQL's own
//! text for the same rows — for the demo dataset and a table of every common type with NULLs,
//! extremes and infinities — also after crashes at fault points and kill -9 at random moments.

use std::time::Duration;

use exportd::export::engine::{Faults, Outcome};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::*,
    support::{
        formats::{check, reference, sql_types},
        process::{Exportd, exportd_env},
    },
};

/// Every common PostgreSQL type, with NULLs, empty strings, unicode, extremes and infinities.
const ALL_TYPES: &str = r#"
create table all_types (
    id bigint primary key, b boolean, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n numeric(12,2), n38 numeric(38,10), nfree numeric, t text, vc varchar(20), c char(3), j json,
    jb jsonb, u uuid, d date, ts timestamp, tstz timestamptz, by bytea, iv interval, arr int[]
);
insert into all_types values
 (1, true, -32768, -2147483647, -9223372036854775808, 'NaN', 1e308, 9999999999.99,
  1234567890123456789012345678.0123456789, 'NaN', '', '', 'ab', '{"a":
  [1, 2.5, null],
  "b": "x"}', '{"k": "v", "n": 1.10}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'infinity', 'infinity',
  'infinity', '\x00ff', '1 day 02:03:04', '{1,2,NULL}'),
 (2, false, 32767, 2147483647, 9223372036854775807, 'Infinity', -5e-324, -0.01,
  -0.0000000001, 1e100, 'ünïcödé 😀 東京', 'quote " comma ,', 'xyz', '"just a string"', '[]',
  '00000000-0000-0000-0000-000000000000', '-infinity', '1900-01-01 00:00:00', '-infinity', '\x', '-1 mons',
  '{}'),
 (3, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null, null,
  null, null, null, null),
 (4, true, 0, 0, 0, '-Infinity', 0.1, 0, 0, 0.10, E'line\nbreak\r\ttab "q" \\ back', E'\\N', ' ', 'null',
  'null', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '0001-01-01', '2000-01-01 00:00:00.000001',
  '1960-06-01 12:34:56.789012+00', '\xdeadbeef', '0', '{-1}'),
 (5, false, 1, 1, 9007199254740993, 3.4e38, 1.7976931348623157e308, 0.5, 1, -12.500,
  repeat('long, "field" ', 500), 'NULL', 'é', '{"deep": {"x": ["\"", "\\", "/"]}}', '{"é": "東京"}',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '9999-12-31', '2262-04-11 23:47:16.854775', '2024-02-29 23:59:59.999999+00',
  '\x0a0d', '1 year 2 mons 3 days 04:05:06.789', '{3,4}');
analyze all_types;
"#;

const ALL_TYPES_CONFIG: &str = r#"
default = "orders"

[[dataset]]
name = "orders"
table = "orders"
key = "id"
columns = ["id", "created_at", "updated_at", "customer_name", "customer_email", "country", "status", "amount", "currency", "quantity", "note", "metadata"]
filterable = ["id", "created_at", "customer_email", "country", "status"]

[[dataset]]
name = "all_types"
table = "all_types"
key = "id"
columns = ["id", "b", "i2", "i4", "i8", "f4", "f8", "n", "n38", "nfree", "t", "vc", "c", "j", "jb", "u", "d", "ts", "tstz", "by", "iv", "arr"]
"#;

const ORDERS: [&str; 12] = [
    "id",
    "created_at",
    "updated_at",
    "customer_name",
    "customer_email",
    "country",
    "status",
    "amount",
    "currency",
    "quantity",
    "note",
    "metadata",
];
const ALL: [&str; 22] = [
    "id", "b", "i2", "i4", "i8", "f4", "f8", "n", "n38", "nfree", "t", "vc", "c", "j", "jb", "u", "d", "ts", "tstz",
    "by", "iv", "arr",
];

async fn all_types_app(workers: u32) -> TestApp {
    let db = test_db().await;
    seed_nasty(&db.pool, 3_000).await;
    sqlx::raw_sql(ALL_TYPES).execute(&db.pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let config = dir.join("datasets.toml");
    std::fs::write(&config, ALL_TYPES_CONFIG).unwrap();
    spawn_app(db, AppOptions { datasets: Some(config), workers, ..Default::default() }).await
}

async fn export(app: &TestApp, body: Value) -> (Uuid, Vec<u8>, Value) {
    let id = app.create_export(Some(body)).await;
    let s = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "completed", "{s}");
    (id, app.download(id).await, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_common_type_reads_back_as_postgresql_wrote_it() {
    let app = all_types_app(2).await;
    let types = sql_types(&app.db.pool, "all_types", &ALL).await;
    let reference = reference(&app.db.pool, "all_types", &ALL).await;
    for (format, ext, decimals) in [
        (json!({"type": "jsonl"}), "jsonl", "string"),
        (json!({"type": "jsonl", "decimals": "number", "timeZone": "Asia/Kolkata"}), "jsonl", "number"),
        (json!({"type": "parquet"}), "parquet", "string"),
        (json!({"type": "parquet", "codec": "snappy"}), "parquet", "string"),
        (json!({"type": "parquet", "codec": "none"}), "parquet", "string"),
    ] {
        // Chunks of 2 rows: several row groups, and a json value with line breaks mid-file.
        let body = json!({"dataset": "all_types", "format": format, "chunkSize": 100});
        let (_, file, status) = export(&app, body.clone()).await;
        let kind = if ext == "jsonl" { "jsonl" } else { "parquet" };
        let report = check(kind, &file, ext, &reference, &types, decimals);
        assert!(report.starts_with("ok 5 rows"), "{body}: {report}");
        // What the status shows as options can be posted back.
        assert_eq!(status["options"]["format"], {
            let mut f = format.clone();
            let m = f.as_object_mut().unwrap();
            if ext == "parquet" {
                m.entry("codec").or_insert(json!("zstd"));
            } else {
                m.entry("decimals").or_insert(json!("string"));
                m.entry("timeZone").or_insert(json!("UTC"));
            }
            f
        });
    }
    // Under `decimals: string` numeric values are JSON strings; under `number`, numbers.
    let (_, file, _) = export(&app, json!({"dataset": "all_types", "format": {"type": "jsonl"}})).await;
    let first: Value = serde_json::from_slice(file.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["n"], "9999999999.99");
    assert_eq!(first["i8"], json!(-9223372036854775808i64));
    assert_eq!(first["tstz"], "infinity");
    assert_eq!(first["j"]["a"], json!([1, 2.5, null]), "json nested, its line breaks gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_dataset_as_jsonl_gzip_and_parquet_reads_back_exactly() {
    let app = all_types_app(2).await;
    let types = sql_types(&app.db.pool, "orders", &ORDERS).await;
    let reference = reference(&app.db.pool, "orders", &ORDERS).await;
    let (id, file, _) =
        export(&app, json!({"format": {"type": "jsonl"}, "compression": "gzip", "chunkSize": 700})).await;
    check("jsonl", &file, "jsonl.gz", &reference, &types, "string");
    let head = app.client.head(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert!(head.headers()["content-disposition"].to_str().unwrap().ends_with(".jsonl.gz\""));
    let (id, file, _) = export(&app, json!({"format": {"type": "parquet"}, "chunkSize": 700})).await;
    check("parquet", &file, "parquet", &reference, &types, "string");
    let head = app.client.head(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(head.headers()["content-type"], "application/vnd.apache.parquet");
    // A Range of a Parquet file is its bytes (readers fetch the footer first).
    let tail = app
        .client
        .get(app.url(&format!("/api/export/{id}/download")))
        .header("Range", "bytes=-8")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap()[..], file[file.len() - 8..]);
    // An empty selection is still a valid file.
    let filter = json!({"format": {"type": "parquet"}, "filters": {"status": {"eq": "no such status"}}});
    let (_, file, _) = export(&app, filter).await;
    check("parquet", &file, "parquet", b"id,created_at,updated_at,customer_name,customer_email,country,status,amount,currency,quantity,note,metadata\n", &types, "string");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_of_another_format_and_gzip_parquet_are_refused_naming_the_field() {
    let app = all_types_app(0).await;
    for (body, field) in [
        (json!({"format": {"type": "jsonl", "delimiter": ";"}}), "format.delimiter"),
        (json!({"format": {"type": "parquet", "header": false}}), "format.header"),
        (json!({"format": {"type": "parquet", "decimals": "number"}}), "format.decimals"),
        (json!({"format": {"codec": "snappy"}}), "format.codec"),
        (json!({"format": {"type": "parquet"}, "compression": "gzip"}), "compression"),
        (json!({"format": {"type": "xml"}}), "type"),
    ] {
        let resp = app.client.post(app.url("/api/export")).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(status == 400 || status == 422, "{body}: {status}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["message"].as_str().unwrap().contains(field), "{body}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_cannot_hold_a_nan_decimal_and_the_export_fails_saying_where() {
    let app = all_types_app(2).await;
    sqlx::query("update orders set amount = 'NaN' where id = 1500").execute(&app.db.pool).await.unwrap();
    let id = app.create_export(Some(json!({"format": {"type": "parquet"}, "chunkSize": 1000}))).await;
    let s = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "failed", "{s}");
    let error = s["error"].as_str().unwrap();
    assert!(error.contains("amount") && error.contains("NaN"), "{error}");
    // JSON Lines holds it (as the string PostgreSQL writes).
    let (_, file, _) = export(&app, json!({"format": {"type": "jsonl"}})).await;
    let line = file.split(|b| *b == b'\n').nth(1499).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(line).unwrap()["amount"], "NaN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_at_fault_points_resume_parquet_and_jsonl_exactly() {
    let app = all_types_app(0).await;
    let types = sql_types(&app.db.pool, "orders", &ORDERS).await;
    let reference = reference(&app.db.pool, "orders", &ORDERS).await;
    for (format, ext) in [("parquet", "parquet"), ("jsonl", "jsonl")] {
        let id = app.create_export(Some(json!({"format": {"type": format}, "chunkSize": 400}))).await;
        // Crash after chunk 3's bytes are written but before its checkpoint (a torn row group
        // past the checkpoint), then right after chunk 2's checkpoint of the next run.
        let before = Faults { crash_before_checkpoint: Some(3), ..Default::default() };
        assert_eq!((*app.engine).clone().with_faults(before).execute(id, "w1").await, Outcome::Crashed);
        let row = export_row(&app.db.pool, id).await;
        assert_eq!(row.rows_written, 800);
        let after = Faults { crash_after_checkpoint: Some(2), ..Default::default() };
        assert_eq!((*app.engine).clone().with_faults(after).execute(id, "w2").await, Outcome::Crashed);
        assert_eq!(export_row(&app.db.pool, id).await.rows_written, 1_600);
        if format == "parquet" {
            let groups: i64 = sqlx::query_scalar("select count(*) from export_row_groups where export_id = $1")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
            assert_eq!(groups, 4, "one saved row group per checkpointed chunk");
        }
        assert_eq!(app.engine.execute(id, "w3").await, Outcome::Completed);
        check(format, &app.download(id).await, ext, &reference, &types, "string");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_read_in_key_ranges_is_one_file_with_copys_values_also_after_a_range_crashes() {
    let app = all_types_app(0).await;
    sqlx::query("analyze orders").execute(&app.db.pool).await.unwrap();
    let types = sql_types(&app.db.pool, "orders", &ORDERS).await;
    let reference = reference(&app.db.pool, "orders", &ORDERS).await;
    let rows = 3_000 + 8;
    for (parallelism, crashes) in [
        (2, vec![]),
        // Range 1 dies with its 2nd row group synced and not checkpointed (a torn row group
        // past its checkpoint), then again right after its 1st checkpoint of the next run (its
        // 3rd chunk of ~1,000 rows is still to come: the crash does not depend on how far the
        // other ranges got, which is the schedule's).
        (
            3,
            vec![
                Faults { crash_before_checkpoint: Some(2), crash_in_range: Some(1), ..Default::default() },
                Faults { crash_after_checkpoint: Some(1), crash_in_range: Some(1), ..Default::default() },
            ],
        ),
    ] {
        let body = json!({"format": {"type": "parquet"}, "chunkSize": 400, "parallelism": parallelism});
        let id = app.create_export(Some(body)).await;
        for crash in crashes {
            assert_eq!((*app.engine).clone().with_faults(crash).execute(id, "w").await, Outcome::Crashed);
        }
        assert_eq!(app.engine.execute(id, "w").await, Outcome::Completed);
        let ranges = exportd::db::ranges::ranges(&app.db.pool, id).await.unwrap();
        assert_eq!(ranges.len(), parallelism, "{ranges:?}");
        // Independent readers (pyarrow, DuckDB) read every row once, in key order, as COPY's text.
        let file = app.download(id).await;
        check("parquet", &file, "parquet", &reference, &types, "string");
        // One footer over every range's row groups: a row group per chunk of each range, in key
        // order, each at the offset its bytes landed at in the one file.
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(file.clone())).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        assert_eq!(meta.file_metadata().num_rows(), rows);
        let chunks: i64 = ranges.iter().map(|r| (r.rows_written + 399) / 400).sum();
        assert_eq!(meta.num_row_groups() as i64, chunks, "{ranges:?}");
        let mut at = 4;
        for g in meta.row_groups() {
            let start = g.column(0).dictionary_page_offset().unwrap_or(g.column(0).data_page_offset());
            assert_eq!(start, at, "row groups follow each other from the magic on");
            at += g.compressed_size();
        }
        // The pieces: the ranges' and, last, the footer's (written at completion).
        let row = export_row(&app.db.pool, id).await;
        let pieces = row.file_state.as_ref().unwrap().0["pieces"].as_array().unwrap().clone();
        assert_eq!(pieces.len(), parallelism + 1, "{pieces:?}");
        assert_eq!(row.bytes_written as usize, file.len());
        let footer = pieces.last().unwrap()["bytes"].as_u64().unwrap() as usize;
        assert_eq!(at as usize, file.len() - footer, "the footer piece follows the last row group");
    }
}

/// A tiny deterministic random source (the seed is printed, so a failure can be replayed).
pub(crate) fn rng() -> impl FnMut(u64, u64) -> u64 {
    let mut state = std::env::var("FORMATS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1
    });
    eprintln!("FORMATS_SEED={state}");
    move |lo, hi| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        lo + state % (hi - lo)
    }
}

/// The Parquet export of `body` (throttled, so kills land mid-export) in a process of its own,
/// killed with -9 three times, each after a random number of further rows (the throttle makes
/// rows advance at ~5000/s, so a kill lands at a random point in a chunk), then completed: every
/// value read back equals COPY's. Returns the database, the export and its storage directory.
async fn parquet_killed_three_times(body: Value) -> (TestDb, Uuid, tempfile::TempDir) {
    let db = test_db().await;
    seed_nasty(&db.pool, 20_000).await;
    sqlx::query("analyze orders").execute(&db.pool).await.unwrap();
    let types = sql_types(&db.pool, "orders", &ORDERS).await;
    let reference = reference(&db.pool, "orders", &ORDERS).await;
    let storage = tempfile::tempdir().unwrap();
    let env = exportd_env(&db.url, storage.path(), &[("EXPORTD_WORKER_CONCURRENCY", "1"), ("RUST_LOG", "warn")]);
    let mut p = Exportd::serve(env).await;
    let api = p.api();
    let id = api.create_export(Some(body)).await;
    let mut random = rng();
    let mut seen = 0;
    for _ in 0..3 {
        seen += random(300, 4_000) as i64;
        api.wait_rows(id, seen, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(random(0, 200))).await;
        p.kill9();
        p.start().await;
    }
    let s = api.wait_finished(id, Duration::from_secs(90)).await;
    assert_eq!(s["status"], "completed", "{s}");
    assert!(s["attempts"].as_i64().unwrap() >= 2, "{s}");
    check("parquet", &api.download(id).await, "parquet", &reference, &types, "string");
    p.terminate();
    (db, id, storage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_leaves_a_valid_parquet_file_with_copys_values() {
    let body = json!({"format": {"type": "parquet", "codec": "snappy"}, "chunkSize": 1000, "maxRowsPerSecond": 5000});
    parquet_killed_three_times(body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_of_a_parquet_export_in_key_ranges_leaves_copys_values() {
    // Three ranges sharing the throttle: kills land mid-chunk, between a range's row group and
    // its checkpoint, or as the footer piece is written.
    let body = json!({"format": {"type": "parquet"}, "chunkSize": 500, "maxRowsPerSecond": 5000, "parallelism": 3});
    let (db, id, storage) = parquet_killed_three_times(body).await;
    assert_eq!(exportd::db::ranges::ranges(&db.pool, id).await.unwrap().len(), 3);
    // Nothing left but the file's pieces (the ranges' and the footer's).
    let pieces = export_row(&db.pool, id).await.pieces().expect("pieces").len();
    let files = std::fs::read_dir(storage.path().join(id.to_string())).unwrap().count();
    assert_eq!((pieces, files), (4, 4), "three ranges and the footer, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_bigger_than_a_row_group_is_cut_into_several_and_resumes() {
    // 100,000-row chunks of the demo rows hold ~25 MB of values: more than one row group's
    // worth (16 MiB), so each full chunk becomes two row groups under one checkpoint.
    let db = test_db().await;
    seed_nasty(&db.pool, 130_000).await;
    let types = sql_types(&db.pool, "orders", &ORDERS).await;
    let reference = reference(&db.pool, "orders", &ORDERS).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"format": {"type": "parquet"}, "chunkSize": 100000}))).await;
    let crash = Faults { crash_after_checkpoint: Some(1), ..Default::default() };
    assert_eq!((*app.engine).clone().with_faults(crash).execute(id, "w1").await, Outcome::Crashed);
    let saved: Vec<i64> =
        sqlx::query_scalar("select base from export_row_groups where export_id = $1 order by position")
            .bind(id)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(saved.len(), 2, "the first chunk's two row groups saved with its checkpoint");
    assert_eq!(saved[0], 4, "the first starts after the magic");
    assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed);
    check("parquet", &app.download(id).await, "parquet", &reference, &types, "string");

    // Two ranges read at once share the 16 MiB: each cuts its row groups at 8 MiB of values,
    // so each range's one ~65,000-row chunk (~16 MB of values; one row group serially) becomes
    // three.
    sqlx::query("analyze orders").execute(&app.db.pool).await.unwrap();
    let body = json!({"format": {"type": "parquet"}, "chunkSize": 100000, "parallelism": 2});
    let id = app.create_export(Some(body)).await;
    assert_eq!(app.engine.execute(id, "w3").await, Outcome::Completed);
    let per_range: Vec<i64> = sqlx::query_scalar(
        "select count(*) from export_row_groups where export_id = $1 group by range_position order by range_position",
    )
    .bind(id)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(per_range, vec![3, 3], "three row groups in each of two ranges");
    check("parquet", &app.download(id).await, "parquet", &reference, &types, "string");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_exports_parquet_and_json_lines() {
    let app = all_types_app(2).await;
    let types = sql_types(&app.db.pool, "all_types", &ALL).await;
    let reference = reference(&app.db.pool, "all_types", &ALL).await;
    let out = tempfile::tempdir().unwrap();
    for kind in ["parquet", "jsonl"] {
        let file = out.path().join(format!("all.{kind}"));
        let run = crate::operability::cli(&app.base, &app.key)
            .args(["export", "--dataset", "all_types", "--type", kind, "-o"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        check(kind, &std::fs::read(&file).unwrap(), kind, &reference, &types, "string");
    }
    let bad =
        crate::operability::cli(&app.base, &app.key).args(["export", "--type", "xml", "-o", "x"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--type"));
}
