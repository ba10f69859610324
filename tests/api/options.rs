//! Export options (columns, headers, filters, CSV dialect, formula guard, gzip), each compared
//! byte for byte with PostgreSQL's own `COPY` of the matching query and options, over the
//! hard rows, with chunks small enough that every export crosses many chunk boundaries.

use std::{io::Read, time::Duration};

use exportd::export::engine::{Faults, Outcome};
use serde_json::{Value, json};

use crate::helpers::*;

const ALL: &str = "id, created_at, updated_at, customer_name, customer_email, country, status, amount, currency, \
                   quantity, note, metadata";

/// Rows whose text cells start with every formula trigger (and one that only looks like one).
const FORMULA_ROWS: &str = r#"
insert into orders (id, created_at, customer_name, customer_email, country, status, amount, note, metadata) values
 (9100001, '2024-03-01 00:00:00+00', '=HYPERLINK("http://x","y")', '+49 30 1234', 'DE', '-', -12.50, '@SUM(A1:A2)', '{"a": "=1"}'),
 (9100002, '2024-03-01 00:00:00+00', E'\tTAB', E'\rCR', 'FR', '=', 0, '-', null),
 (9100003, '2024-03-01 00:00:00+00', 'plain', 'a=b', 'US', 'paid', 1, '"=quoted"', '"=json string"');
"#;

async fn app_with_hard_rows(rows: i64) -> TestApp {
    let db = test_db().await;
    seed_nasty(&db.pool, rows).await;
    sqlx::raw_sql(FORMULA_ROWS).execute(&db.pool).await.unwrap();
    spawn_app(db, AppOptions::default()).await
}

/// Runs an export to completion and returns its file.
async fn export(app: &TestApp, body: Value) -> Vec<u8> {
    let id = app.create_export(Some(body.clone())).await;
    let s = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "completed", "{body}: {s}");
    app.download(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_headers_and_filters_equal_copy_of_the_same_query() {
    let app = app_with_hard_rows(5_000).await;
    let pool = &app.db.pool;
    let cases = [
        (
            json!({"columns": ["customer_email", "id", "note"],
                   "headers": {"customer_email": "Email Address", "note": "Remarks, \"quoted\""}}),
            r#"select customer_email as "Email Address", id, note as "Remarks, ""quoted""" from orders order by id"#
                .to_owned(),
        ),
        // The key is not exported: it is read, then cut off each row.
        (json!({"columns": ["note", "customer_name"]}), "select note, customer_name from orders order by id".into()),
        (
            json!({"filters": {"status": {"in": ["paid", "shipped"]},
                               "created_at": {"gte": "2023-01-01T05:00:00Z", "lt": "2023-01-02 12:00"},
                               "id": {"gt": 100}}}),
            format!(
                "select {ALL} from orders where status in ('paid', 'shipped') and created_at >= '2023-01-01T05:00:00Z' \
                 and created_at < '2023-01-02 12:00+00' and id > 100 order by id"
            ),
        ),
        (
            json!({"filters": {"country": {"eq": "DE"}, "id": {"lte": 9000003}}}),
            format!("select {ALL} from orders where country = 'DE' and id <= 9000003 order by id"),
        ),
        (
            json!({"filters": {"customer_email": {"isNull": true}}}),
            format!("select {ALL} from orders where customer_email is null order by id"),
        ),
        (
            json!({"filters": {"customer_email": {"isNull": false}, "status": {"eq": "pending"}}}),
            format!("select {ALL} from orders where customer_email is not null and status = 'pending' order by id"),
        ),
        // A value longer than char(2) is not cut to fit: it matches nothing.
        (
            json!({"filters": {"country": {"eq": "DEU"}}, "columns": ["id", "country"]}),
            "select id, country from orders where country = 'DEU'::text order by id".into(),
        ),
        // Nothing matches: the header alone.
        (
            json!({"filters": {"status": {"eq": "no such status"}}, "columns": ["id"]}),
            "select id from orders where status = 'no such status' order by id".into(),
        ),
        // 2,000 values in all: more than PostgreSQL's 1,664 entries of a select list, which a
        // run's session set-up once spent one each on (every run then failed).
        (
            json!({"filters": {"id": {"in": (1..=1000).collect::<Vec<i64>>()},
                               "customer_email": {"in": many_emails()}},
                   "columns": ["id", "customer_email"]}),
            format!(
                "select id, customer_email from orders where id in ({}) and customer_email in ({}) order by id",
                (1..=1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
                many_emails().iter().map(|e| format!("'{e}'")).collect::<Vec<_>>().join(", ")
            ),
        ),
    ];
    for (body, select) in cases {
        let mut body = body;
        body["chunkSize"] = json!(300);
        let reference = copy_out(pool, "UTC", &format!("copy ({select}) to stdout with (format csv, header)")).await;
        let file = export(&app, body.clone()).await;
        println!("{body}: {} bytes", file.len());
        assert_same_bytes(&file, &reference);
    }
}

/// 1,000 customer e-mail addresses as the seeded rows spell them: those of the even ids up
/// to 2,000 (so half of the ids 1 to 1,000 match both filters).
fn many_emails() -> Vec<String> {
    (1..=1000i64).map(|i| format!("customer{}@example.com", 2 * i * 7919 % 100_003)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_dialects_equal_copy_with_the_same_options() {
    let app = app_with_hard_rows(3_000).await;
    let pool = &app.db.pool;
    let select = format!("select {ALL} from orders order by id");
    // (format, COPY options, time zone, CRLF, BOM)
    let cases = [
        (json!({"delimiter": ";"}), "delimiter ';'", "UTC", false, false),
        (json!({"delimiter": "\t", "header": false}), "delimiter E'\\t', header false", "UTC", false, false),
        (json!({"delimiter": "tab"}), "delimiter E'\\t'", "UTC", false, false),
        (
            json!({"delimiter": "|", "quoteAll": true, "null": "NULL"}),
            "delimiter '|', force_quote *, null 'NULL'",
            "UTC",
            false,
            false,
        ),
        (json!({"lineEnding": "crlf", "bom": true}), "", "UTC", true, true),
        (json!({"timeZone": "America/New_York", "lineEnding": "crlf"}), "", "America/New_York", true, false),
        (json!({"timeZone": "Asia/Kolkata", "quoteAll": true}), "force_quote *", "Asia/Kolkata", false, false),
    ];
    for (format, options, tz, crlf, bom) in cases {
        let header = if format["header"] == false { "" } else { "header, " };
        let copy = format!(
            "copy ({select}) to stdout with ({header}format csv{}{options})",
            if options.is_empty() { "" } else { ", " }
        );
        let mut reference = copy_out(pool, tz, &copy).await;
        if crlf {
            reference = crlf_records(&reference);
        }
        if bom {
            reference.splice(0..0, *b"\xEF\xBB\xBF");
        }
        let file = export(&app, json!({"format": format, "chunkSize": 400})).await;
        println!("{format}: {} bytes", file.len());
        assert_same_bytes(&file, &reference);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formula_guard_prefixes_text_cells_only() {
    let app = app_with_hard_rows(2_000).await;
    // The guard applies to text columns (numbers such as -12.50 stay numbers): the same as
    // COPY of `'` || value for each text value that starts with a trigger.
    let guard = |c: &str| format!("case when {c} ~ '^[-=+@\\t\\r]' then '''' || {c} else {c} end as {c}");
    let text_cols = ["customer_name", "customer_email", "country", "status", "currency", "note"];
    let cols: Vec<String> = ALL
        .split(", ")
        .map(|c| {
            if text_cols.contains(&c) {
                guard(c)
            } else if c == "metadata" {
                guard("metadata::text")
            } else {
                c.to_owned()
            }
        })
        .collect();
    let select =
        format!("select {} from orders order by id", cols.join(", ")).replace("as metadata::text", "as metadata");
    let reference =
        copy_out(&app.db.pool, "UTC", &format!("copy ({select}) to stdout with (format csv, header)")).await;
    let file = export(&app, json!({"format": {"formulaGuard": true}, "chunkSize": 500})).await;
    assert_same_bytes(&file, &reference);
    let text = String::from_utf8_lossy(&file);
    assert!(
        text.contains(
            "9100001,2024-03-01 00:00:00+00,,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'+49 30 1234,DE,'-,-12.50,"
        ),
        "{}",
        &text[text.len() - 600..]
    );
    // Off by default: the same cells come out as they are.
    let plain = export(&app, json!({"chunkSize": 500})).await;
    assert!(
        String::from_utf8_lossy(&plain).contains(",=HYPERLINK(")
            || String::from_utf8_lossy(&plain).contains("\"=HYPERLINK(")
    );
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

/// Gzip members in a file (each starts with the magic bytes and ends a checkpoint).
fn members(bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut decoder = flate2::bufread::GzDecoder::new(bytes);
    loop {
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        count += 1;
        let rest = decoder.into_inner();
        if rest.is_empty() {
            return count;
        }
        decoder = flate2::bufread::GzDecoder::new(rest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_file_is_served_as_is_and_decodes_to_the_copy_bytes_even_after_crashes() {
    let db = test_db().await;
    seed_nasty(&db.pool, 6_000).await;
    let reference = copy_reference(&db.pool).await;
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await;
    let id = app.create_export(Some(json!({"compression": "gzip", "chunkSize": 1000}))).await;
    // Two crashes (one before a checkpoint, leaving a torn member on disk) then a clean run.
    let before = (*app.engine).clone().with_faults(Faults { crash_before_checkpoint: Some(2), ..Default::default() });
    assert_eq!(before.execute(id, "w1").await, Outcome::Crashed);
    let after = (*app.engine).clone().with_faults(Faults { crash_after_checkpoint: Some(2), ..Default::default() });
    assert_eq!(after.execute(id, "w2").await, Outcome::Crashed);
    assert_eq!(app.engine.execute(id, "w3").await, Outcome::Completed);

    let resp = app.client.get(app.url(&format!("/api/export/{id}/download"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    assert!(resp.headers().get("content-encoding").is_none(), "the stored file is the body, not re-encoded");
    assert_eq!(resp.headers()["content-disposition"], format!("attachment; filename=\"orders-{id}.csv.gz\""));
    let gz = resp.bytes().await.unwrap().to_vec();
    assert_same_bytes(&gunzip(&gz), &reference);
    // One member per chunk: 6008 rows in chunks of 1000.
    assert_eq!(members(&gz), 7);
    // The system's gzip reads it too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.csv.gz");
    std::fs::write(&path, &gz).unwrap();
    let out = std::process::Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
    assert!(out.status.success());
    assert_same_bytes(&out.stdout, &reference);

    // An empty export is still a valid gzip file (holding the header).
    sqlx::query("delete from orders").execute(&app.db.pool).await.unwrap();
    let id = app.create_export(Some(json!({"compression": "gzip"}))).await;
    assert_eq!(app.engine.execute(id, "w4").await, Outcome::Completed);
    let gz = app.download(id).await;
    assert_same_bytes(&gunzip(&gz), &copy_reference(&app.db.pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_in_a_status_post_back_as_the_same_export() {
    let app = app_with_hard_rows(3_000).await;
    let body = json!({
        "columns": ["id", "customer_email", "amount", "note"],
        "headers": {"customer_email": "email"},
        "filters": {"status": {"in": ["paid", "shipped"]}, "id": {"gte": 10, "lt": 2500}, "country": {"isNull": false}},
        "format": {"delimiter": "\t", "lineEnding": "crlf", "null": "NULL", "formulaGuard": true, "timeZone": "Europe/Berlin"},
        "compression": "gzip",
        "chunkSize": 500,
    });
    let first = app.create_export(Some(body)).await;
    let done = app.wait_finished(first, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    // The options, posted back as they are, make the same export: same options, same bytes.
    let again = app.create_export(Some(done["options"].clone())).await;
    let redone = app.wait_finished(again, Duration::from_secs(60)).await;
    assert_eq!(redone["options"], done["options"]);
    assert_eq!(redone["rowsWritten"], done["rowsWritten"]);
    assert!(done["rowsWritten"].as_i64().unwrap() > 0);
    assert_eq!(app.download(again).await, app.download(first).await);
    assert_eq!(done["options"]["headers"], json!({"customer_email": "email"}));
    assert_eq!(done["options"]["filters"]["id"], json!({"gte": "10", "lt": "2500"}));
}
