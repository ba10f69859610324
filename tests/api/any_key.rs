//! Keys of every kind a dataset may have: `uuid`, `text` in a collation whose order is not the
//! bytes' (ICU English: case and accents sort among the letters), `timestamptz` (exported in a
//! zone with an offset, infinities and a date BC among the keys) and a composite key
//! `(tenant_id, id)` compared as a row. For each: serial and parallel CSV exports byte-identical
//! to `COPY ... ORDER BY` the key, with and without the key's columns in the file; JSON Lines and
//! Parquet (keys read back from binary rows) holding every row once, in key order; a crash at a
//! fault point resumed exactly, serially and in one range of a parallel export, and after kill -9
//! of the process at random moments; ranges split evenly; and every chunk query an index range
//! scan.

use std::time::Duration;

use exportd::{
    export::engine::{Faults, Outcome},
    model::{Key, KeyRange},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::*,
    support::process::{Exportd, exportd_env},
};

/// 2,500 rows per table, each table keyed differently, with values that trouble CSV and SQL
/// text (delimiters, quotes, line breaks, backslashes, an empty string) among the text keys.
const TABLES: &str = r#"
create table by_uuid (id uuid primary key, n int not null, note text);
insert into by_uuid select md5(g::text)::uuid, g, 'row ' || g from generate_series(1, 2500) g;

create table by_text (name text collate "en-x-icu" primary key, n int not null, note text);
insert into by_text
select (array['apple', 'Apple', 'Äpfel', 'zebra', 'Zoë', 'éclair', 'a,"b', E'line\nbreak', E'back\\slash', '''q'''])[g % 10 + 1]
       || ' ' || g, g, 'row ' || g
from generate_series(1, 2490) g;
insert into by_text values ('', 0, 'empty'), (' ', -1, 'space'), ('=1+2', -2, 'formula'), ('NULL', -3, 'null text'),
  ('"', -4, 'quote'), (',', -5, 'comma'), (E'\r\n', -6, 'crlf'), ('Ω', -7, 'omega'), ('😀', -8, 'emoji'), ('10', -9, 'digits');

create table by_time (at timestamptz primary key, n int not null, note text);
insert into by_time select timestamptz '2024-03-30 23:00:00+00' + g * interval '1 hour 1 microsecond', g, 'row ' || g
from generate_series(1, 2496) g;
insert into by_time values ('infinity', 0, 'last'), ('-infinity', -1, 'first'), ('0044-03-15 12:00:00+00 BC', -2, 'bc'),
  ('1969-12-31 23:59:59.999999+00', -3, 'before the epoch');

create table by_pair (tenant_id int not null, id int not null, n int not null, note text, primary key (tenant_id, id));
-- Skewed: 70% of the rows in tenant 1.
insert into by_pair select case when g % 10 < 7 then 1 else g % 10 end, g, g, 'row ' || g from generate_series(1, 2500) g;
analyze;
"#;

const CONFIG: &str = r#"
default = "by_uuid"

[[dataset]]
name = "by_uuid"
table = "by_uuid"
key = "id"
columns = ["id", "n", "note"]

[[dataset]]
name = "by_text"
table = "by_text"
key = "name"
columns = ["name", "n", "note"]

[[dataset]]
name = "by_time"
table = "by_time"
key = "at"
columns = ["at", "n", "note"]

[[dataset]]
name = "by_pair"
table = "by_pair"
key = ["tenant_id", "id"]
columns = ["tenant_id", "id", "n", "note"]
"#;

const ROWS: i64 = 2500;

/// Each dataset: its name, table, key columns (as SQL), columns, and the time zone it is
/// exported in.
const CASES: [(&str, &str, &str, &str, &str); 4] = [
    ("by_uuid", "by_uuid", "id", "id, n, note", "UTC"),
    ("by_text", "by_text", "name", "name, n, note", "UTC"),
    ("by_time", "by_time", "at", "at, n, note", "Asia/Kolkata"),
    ("by_pair", "by_pair", "tenant_id, id", "tenant_id, id, n, note", "UTC"),
];

fn config_file() -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = dir.join("datasets.toml");
    std::fs::write(&config, CONFIG).unwrap();
    config
}

async fn app(workers: u32) -> TestApp {
    let db = test_db().await;
    sqlx::raw_sql(TABLES).execute(&db.pool).await.unwrap();
    spawn_app(db, AppOptions { datasets: Some(config_file()), workers, ..Default::default() }).await
}

async fn export(app: &TestApp, body: Value) -> (Uuid, Vec<u8>, Value) {
    let id = app.create_export(Some(body.clone())).await;
    let s = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "completed", "{body}: {s}");
    (id, app.download(id).await, s)
}

/// `COPY` of `columns` of `table` in key order, as CSV with a header, in time zone `tz`.
async fn reference(app: &TestApp, table: &str, key: &str, columns: &str, tz: &str) -> Vec<u8> {
    let copy = format!("copy (select {columns} from {table} order by {key}) to stdout with (format csv, header)");
    copy_out(&app.db.pool, tz, &copy).await
}

async fn ranges(app: &TestApp, id: Uuid) -> Vec<KeyRange> {
    exportd::db::ranges::ranges(&app.db.pool, id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_key_exports_copys_bytes_serially_and_in_parallel() {
    let app = app(2).await;
    // The collation matters: in byte order the text keys come out otherwise.
    let (collated, bytewise) = (
        reference(&app, "by_text", "name", "name", "UTC").await,
        reference(&app, "by_text", "name collate \"C\"", "name", "UTC").await,
    );
    assert_ne!(collated, bytewise, "the test's collation orders text unlike its bytes");
    for (dataset, table, key, columns, tz) in CASES {
        let expected = reference(&app, table, key, columns, tz).await;
        for parallelism in [1, 3] {
            let body =
                json!({"dataset": dataset, "chunkSize": 100, "parallelism": parallelism, "format": {"timeZone": tz}});
            let (id, file, status) = export(&app, body).await;
            assert_same_bytes(&file, &expected);
            assert_eq!(status["rowsWritten"], ROWS);
            // The high-water mark is the last key, as text, whatever its type.
            let last: Vec<String> = sqlx::query_scalar::<_, Vec<String>>(sqlx::AssertSqlSafe(format!(
                "select array[{}] from {table} order by {} limit 1",
                key.split(", ").map(|k| format!("{k}::text")).collect::<Vec<_>>().join(", "),
                key.split(", ").map(|k| format!("{k} desc")).collect::<Vec<_>>().join(", ")
            )))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            assert_eq!(status["upperBoundKey"], json!(last), "{dataset}");
            assert_eq!(status["upperBoundId"], Value::Null, "{dataset}: not an integer key");
            let ranges = ranges(&app, id).await;
            if parallelism == 1 {
                assert!(ranges.is_empty());
                continue;
            }
            // Split by rows (every row of a small table): each range near its share, even for
            // the skewed tenants.
            assert_eq!(ranges.len(), 3, "{dataset}: {ranges:?}");
            for r in &ranges {
                assert!((r.rows_written - ROWS / 3).abs() <= ROWS / 12, "{dataset}: {ranges:?}");
            }
        }
        // Without the key's columns in the file: they are read (appended) and cut off.
        let kept: Vec<&str> = columns.split(", ").filter(|c| !key.split(", ").any(|k| k == *c)).collect();
        let expected = reference(&app, table, key, &kept.join(", "), tz).await;
        for parallelism in [1, 2] {
            let body = json!({"dataset": dataset, "columns": kept, "chunkSize": 100, "parallelism": parallelism,
                              "format": {"timeZone": tz}});
            assert_same_bytes(&export(&app, body).await.1, &expected);
        }
    }
}

/// The values of a column of a table in key order, as PostgreSQL's JSON text of them in time
/// zone `tz`.
async fn json_values(app: &TestApp, table: &str, key: &str, column: &str, tz: &str) -> Vec<String> {
    let mut conn = app.db.pool.acquire().await.unwrap();
    sqlx::query("select set_config('TimeZone', $1, false)").bind(tz).execute(&mut *conn).await.unwrap();
    let values =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select to_json({column})::text from {table} order by {key}")))
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_and_parquet_read_every_kind_of_key_back_from_binary_rows() {
    let app = app(2).await;
    for (dataset, table, key, _, tz) in CASES {
        // Every row once, in key order: a key read back wrong would skip or repeat rows at
        // every chunk boundary (100 rows each). Instants are read back in the export's time
        // zone (Asia/Kolkata for by_time), so one written without its offset would shift.
        let expected = json_values(&app, table, key, "n", tz).await;
        for (parallelism, columns) in [(1, vec!["n", "note"]), (2, vec!["note", "n"])] {
            let body = json!({"dataset": dataset, "columns": columns, "chunkSize": 100, "parallelism": parallelism,
                              "format": {"type": "jsonl", "timeZone": tz}});
            let (_, file, _) = export(&app, body).await;
            let ns: Vec<String> = file
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice::<Value>(l).unwrap()["n"].to_string())
                .collect();
            assert_eq!(ns, expected, "{dataset}: jsonl, parallelism {parallelism}");
        }
        // The key's columns in the file too (in their JSON form for uuid and timestamptz, so
        // read from the appended binary columns).
        let first = key.split(", ").next().unwrap();
        let body = json!({"dataset": dataset, "chunkSize": 100, "format": {"type": "jsonl", "timeZone": tz}});
        let (_, file, _) = export(&app, body).await;
        let keys: Vec<String> = file
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<Value>(l).unwrap()[first].to_string())
            .collect();
        let expected_keys: Vec<String> = json_values(&app, table, key, first, tz)
            .await
            .into_iter()
            .map(|v| serde_json::from_str::<Value>(&v).unwrap().to_string())
            .collect();
        assert_eq!(keys, expected_keys, "{dataset}: the key column in JSON Lines");

        // Parquet, serially: every row once (row groups of 100 rows).
        let body = json!({"dataset": dataset, "chunkSize": 100, "format": {"type": "parquet"}});
        let (_, file, _) = export(&app, body).await;
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        assert_eq!(meta.file_metadata().num_rows(), ROWS, "{dataset}: parquet");
        assert_eq!(meta.num_row_groups(), 25, "{dataset}: a row group per chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_key_resumes_exactly_after_a_crash() {
    let app = app(0).await;
    for (dataset, table, key, columns, tz) in CASES {
        let expected = reference(&app, table, key, columns, tz).await;
        // Serially: the 4th chunk written and synced, not checkpointed (a torn tail past it).
        let id = app
            .create_export(Some(json!({"dataset": dataset, "chunkSize": 100, "parallelism": 1,
                                                "format": {"timeZone": tz}})))
            .await;
        let crashing =
            (*app.engine).clone().with_faults(Faults { crash_before_checkpoint: Some(4), ..Default::default() });
        assert_eq!(crashing.execute(id, "w1").await, Outcome::Crashed);
        let row = export_row(&app.db.pool, id).await;
        assert_eq!(row.rows_written, 300, "{dataset}: three chunks checkpointed");
        let checkpointed = row.last_processed_key.clone().expect("a checkpointed key");
        assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed, "{dataset}");
        assert_same_bytes(&app.download(id).await, &expected);
        let runs = exportd::db::exports::list_runs(&app.db.pool, id).await.unwrap();
        assert_eq!(runs[1].start_key.as_ref(), Some(&checkpointed), "{dataset}: resumed after its checkpoint");
        // The checkpointed key is the 300th row's, as PostgreSQL's text reads it back.
        let nth: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select ({key}) = ({}) from {table} order by {key} offset 299 limit 1",
            literals(&checkpointed)
        )))
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert!(nth, "{dataset}: checkpoint {checkpointed:?} is the 300th key");

        // In parallel: range 1 dies right after its 2nd checkpoint, then resumes alone.
        let id = app
            .create_export(Some(json!({"dataset": dataset, "chunkSize": 100, "parallelism": 3,
                                       "format": {"timeZone": tz}})))
            .await;
        let crashing = (*app.engine).clone().with_faults(Faults {
            crash_after_checkpoint: Some(2),
            crash_in_range: Some(1),
            ..Default::default()
        });
        assert_eq!(crashing.execute(id, "w1").await, Outcome::Crashed);
        let before = ranges(&app, id).await;
        assert_eq!(before[1].rows_written, 200, "{dataset}: {before:?}");
        assert_eq!(app.engine.execute(id, "w2").await, Outcome::Completed, "{dataset}");
        assert_same_bytes(&app.download(id).await, &expected);
        let after = ranges(&app, id).await;
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((&a.lower_key, &a.upper_key), (&b.lower_key, &b.upper_key), "{dataset}: the split is kept");
        }
    }
}

/// A key's values as SQL string literals, each read as its column's type.
fn literals(k: &Key) -> String {
    k.0.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect::<Vec<_>>().join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_keys_chunk_query_is_an_index_range_scan() {
    let app = app(0).await;
    let datasets = exportd::datasets::load(&app.db.pool, Some(&config_file())).await.unwrap();
    let spec = exportd::model::ExportSpec::new(100);
    for (dataset, table, key, _, _) in CASES {
        let ds = datasets.find(dataset).unwrap();
        let keys: Vec<Vec<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select array[{}] from {table} order by {key} offset 1000 limit 2",
            key.split(", ").map(|k| format!("{k}::text")).collect::<Vec<_>>().join(", ")
        )))
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
        let (after, upper) = (Key(keys[0].clone()), Key(keys[1].clone()));
        let select = exportd::db::dataset::chunk_select(ds, &spec, Some(&after), Some(&upper), 100);
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("explain {select}"))).fetch_all(&app.db.pool).await.unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("Index Scan using") && plan.contains("Index Cond"), "{dataset}: {plan}");
        assert!(!plan.contains("Sort") && !plan.contains("Seq Scan"), "{dataset}: {plan}");
        // And the rows it selects: exactly the one key after `after`, up to `upper`.
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from ({select}) s")))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1, "{dataset}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_enqueued_in_sql_stops_at_the_same_last_key_as_the_apis() {
    let app = app(1).await;
    // A caller whose session writes dates day first, in a zone of its own: the high-water mark
    // is still written as the API writes it (else a run would read 03/04 as March 4).
    // The last key an ordinary instant (not 'infinity', whose text is the same in every style).
    sqlx::query("delete from by_time where at = 'infinity'").execute(&app.db.pool).await.unwrap();
    let mut caller = app.db.pool.acquire().await.unwrap();
    sqlx::raw_sql("set datestyle = 'SQL, DMY'; set timezone = 'America/New_York'").execute(&mut *caller).await.unwrap();
    for (dataset, ..) in CASES {
        let id: Uuid = sqlx::query_scalar("select exportd.enqueue_export($1)")
            .bind(json!({"dataset": dataset, "parallelism": 2}))
            .fetch_one(&mut *caller)
            .await
            .unwrap();
        let by_api = app.create_export(Some(json!({"dataset": dataset}))).await;
        let (sql, api) = (export_row(&app.db.pool, id).await, export_row(&app.db.pool, by_api).await);
        assert!(sql.upper_bound_key.is_some());
        assert_eq!(sql.upper_bound_key, api.upper_bound_key, "{dataset}");
        assert_eq!(sql.spec.raw["parallelism"], 2);
        let s = app.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(ranges(&app, id).await.len(), 2, "{dataset}");
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {dataset}")))
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(s["rowsWritten"], rows, "{dataset}: every row, up to the last");
        app.wait_finished(by_api, Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_leaves_copys_bytes_for_every_kind_of_key() {
    let db = test_db().await;
    sqlx::raw_sql(TABLES).execute(&db.pool).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let config = config_file();
    let env = exportd_env(
        &db.url,
        storage.path(),
        &[("EXPORTD_DATASETS", config.to_str().unwrap()), ("EXPORTD_WORKER_CONCURRENCY", "1"), ("RUST_LOG", "warn")],
    );
    let mut p = Exportd::serve(env).await;
    let api = p.api();
    let mut random = crate::formats::rng();
    for (dataset, table, key, columns, tz) in CASES {
        let copy = format!("copy (select {columns} from {table} order by {key}) to stdout with (format csv, header)");
        let expected = copy_out(&db.pool, tz, &copy).await;
        // Throttled (the pace shared by two ranges), so each kill lands mid-export, after a
        // random number of further rows; the seed is printed.
        let id = api
            .create_export(Some(json!({"dataset": dataset, "chunkSize": 100, "maxRowsPerSecond": 1000,
                                       "parallelism": 2, "format": {"timeZone": tz}})))
            .await;
        let mut seen = 0;
        for _ in 0..2 {
            seen += random(100, 900) as i64;
            api.wait_rows(id, seen, Duration::from_secs(30)).await;
            tokio::time::sleep(Duration::from_millis(random(0, 200))).await;
            p.kill9();
            p.start().await;
        }
        let s = api.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "completed", "{dataset}: {s}");
        assert!(s["attempts"].as_i64().unwrap() >= 2, "{dataset}: {s}");
        assert_same_bytes(&api.download(id).await, &expected);
    }
    p.terminate();
}
