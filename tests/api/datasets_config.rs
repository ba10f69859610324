//! The datasets config: checked against the catalog at start-up with errors that name the
//! problem; a second dataset (a view, renamed columns) exports exactly like COPY of it.

use std::time::Duration;

use exportd::datasets;
use serde_json::{Value, json};

use crate::helpers::*;

fn config(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_config_stops_start_up_with_an_error_that_names_the_problem() {
    let db = test_db().await;
    seed_nasty(&db.pool, 10).await;
    sqlx::raw_sql(
        "create table plain (n bigint not null, label text); create table nullable_key (k bigint unique); \
         create view v_orders as select id, note from orders; \
         create table other_collation (name text collate \"en-x-icu\" not null); \
         create unique index on other_collation (name collate \"C\"); \
         create table pattern_ops (name text not null); create unique index on pattern_ops (name text_pattern_ops)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = |table: &str, key: &str, columns: &str, filterable: &str| {
        format!(
            "[[dataset]]\nname = \"d\"\ntable = \"{table}\"\nkey = \"{key}\"\ncolumns = [{columns}]\nfilterable = [{filterable}]\n"
        )
    };
    let cases = [
        (dataset("nope", "id", "\"id\"", ""), "table or view \"nope\" does not exist"),
        (dataset("orders", "id", "\"id\", \"colour\"", ""), "column \"colour\" does not exist in orders"),
        (dataset("orders", "uid", "\"id\"", ""), "key column \"uid\" does not exist"),
        (dataset("orders", "amount", "\"id\"", ""), "key column \"amount\" is numeric(12,2); a key column must be"),
        (dataset("orders", "quantity", "\"id\"", ""), "key (quantity) has no unique index"),
        (dataset("plain", "n", "\"n\"", ""), "key (n) has no unique index"),
        // Unique, but ordering by another collation, or by bytes: not the column's order.
        (dataset("other_collation", "name", "\"name\"", ""), "key (name) has no unique index"),
        (dataset("pattern_ops", "name", "\"name\"", ""), "key (name) has no unique index"),
        // Composite keys: a unique index on exactly those columns, in that order.
        (
            dataset("orders", "id", "\"id\"", "").replace("key = \"id\"", "key = [\"id\", \"quantity\"]"),
            "key (id, quantity) has no unique index",
        ),
        (
            dataset("orders", "id", "\"id\"", "").replace("key = \"id\"", "key = [\"id\", \"id\"]"),
            "key column \"id\" is listed twice",
        ),
        (
            dataset("orders", "id", "\"id\"", "").replace("key = \"id\"", "key = []"),
            "key must name one to four columns",
        ),
        (dataset("nullable_key", "k", "\"k\"", ""), "key column \"k\" may be NULL"),
        (dataset("orders", "id", "\"id\", \"note\"", "\"note\""), "filterable column \"note\" has no index"),
        (dataset("orders", "id", "\"id\"", "\"status\""), "filterable column \"status\" is not in columns"),
        (dataset("orders", "id", "\"id\", \"id\"", ""), "column \"id\" is listed twice"),
        (dataset("orders", "id", "", ""), "no exportable columns"),
        (
            format!("default = \"x\"\n{}", dataset("orders", "id", "\"id\"", "")),
            "default dataset \"x\" is not declared",
        ),
        (format!("{0}{0}", dataset("orders", "id", "\"id\"", "")), "dataset \"d\" is declared twice"),
        ("colour = 1\n".into(), "unknown field `colour`"),
        ("".into(), "no [[dataset]] declared"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = config(&dir, &format!("c{i}.toml"), text);
        let err = datasets::load(&db.pool, Some(&path)).await.expect_err(expected);
        let message = format!("{err:#}");
        assert!(message.contains(expected), "{message:?} should say {expected:?}");
        assert!(message.contains(&path.display().to_string()), "names the file: {message}");
    }
    // A view is accepted (its key cannot be checked), and the service refuses to start on a bad file.
    let path = config(&dir, "view.toml", &dataset("v_orders", "id", "\"id\", \"note\"", ""));
    assert!(datasets::load(&db.pool, Some(&path)).await.is_ok());
    let mut args = exportd::config::ServeArgs::for_test(&db.url, dir.path().join("files"));
    args.worker.datasets = Some(dir.path().join("c0.toml"));
    let err = exportd::app::App::build(args, exportd::shutdown::Shutdown::new()).await.err().expect("start-up fails");
    assert!(format!("{err:#}").contains("\"nope\" does not exist"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dataset_from_a_config_file_exports_exactly() {
    let db = test_db().await;
    seed_nasty(&db.pool, 4_000).await;
    sqlx::raw_sql(
        "create schema sales; \
         create table sales.\"Line Items\" (item_id integer primary key, sku text, qty smallint, price numeric, \
                                             shipped_on date, secret text); \
         insert into sales.\"Line Items\" select g, 'SKU-' || g % 97, (g % 7)::smallint, g * 1.25, \
                date '2024-01-01' + g % 300, 'hidden' from generate_series(1, 25000) g; \
         create index on sales.\"Line Items\" (sku); \
         analyze sales.\"Line Items\"",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        &dir,
        "datasets.toml",
        r#"
default = "orders"

[[dataset]]
name = "orders"
table = "orders"
key = "id"
columns = ["id", "status"]

[[dataset]]
name = "line-items"
description = "Order lines"
table = 'sales."Line Items"'
key = "item_id"
columns = ["item_id", "sku", "qty", "price", "shipped_on"]
filterable = ["sku", "item_id"]
"#,
    );
    let app = spawn_app(db, AppOptions { datasets: Some(path), ..Default::default() }).await;
    let v: Value = app.client.get(app.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["name"], "line-items");
    assert_eq!(v[1]["columns"][2]["type"], "smallint");

    let id = app
        .create_export(Some(json!({"dataset": "line-items", "filters": {"sku": {"eq": "SKU-5"}}, "chunkSize": 100})))
        .await;
    assert_eq!(app.wait_finished(id, Duration::from_secs(30)).await["status"], "completed");
    let reference = copy_out(
        &app.db.pool,
        "UTC",
        "copy (select item_id, sku, qty, price, shipped_on from sales.\"Line Items\" where sku = 'SKU-5' \
         order by item_id) to stdout with (format csv, header)",
    )
    .await;
    assert_same_bytes(&app.download(id).await, &reference);
    // The secret column is not exportable; orders is limited to its configured columns.
    let resp = app.client.post(app.url("/api/export")).json(&json!({"dataset": "line-items", "columns": ["secret"]}));
    expect_error(resp.send().await.unwrap(), 400, "columns: unknown column \"secret\"").await;
    let id = app.create_export(None).await;
    app.wait_finished(id, Duration::from_secs(30)).await;
    let reference = copy_out(
        &app.db.pool,
        "UTC",
        "copy (select id, status from orders order by id) to stdout with (format csv, header)",
    )
    .await;
    assert_same_bytes(&app.download(id).await, &reference);
}

/// A request PostgreSQL refuses for what it is (here: a filter on a column renamed in the table
/// after start-up) is refused with 422 at once, instead of being queued to fail every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_can_never_run_is_refused_with_422_not_queued() {
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let app = spawn_app(db, AppOptions::default()).await;
    sqlx::query("alter table orders rename column status to order_status").execute(&app.db.pool).await.unwrap();
    let resp = app.client.post(app.url("/api/export")).json(&json!({"filters": {"status": {"eq": "paid"}}}));
    let error = expect_error(resp.send().await.unwrap(), 422, "PostgreSQL refuses this export's query").await;
    assert_eq!(error["error"], "unprocessable");
    assert!(error["message"].as_str().unwrap().contains("SQLSTATE 42703"), "{error}");
    let n: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(n, 0, "nothing was queued");
}
