//! Gentle on the database: every chunk query is an index scan, never a sequential scan, whether
//! it is the first chunk or a later one, filtered or not; and a selective filter reads a small
//! part of the table per chunk, not all of it (checked with `EXPLAIN (ANALYZE, BUFFERS)`); and a chunk
//! query that cannot finish is cancelled at the statement timeout.

use exportd::{
    db::dataset::{chunk_select, filter_values, session_setup},
    model::{
        Key,
        spec::{ExportSpec, Filter, FilterOp},
    },
};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_queries_are_index_range_scans() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 50_000, |_| {}).await.unwrap();
    let ds = orders(&db.pool).await;
    let spec = ExportSpec::new(10_000);
    let mut conn = db.pool.acquire().await.unwrap();
    for first in [true, false] {
        let after = (!first).then_some(Key::int(25_000));
        let sql = format!("explain {}", chunk_select(&ds, &spec, after.as_ref(), Some(&Key::int(50_000)), 10_000));
        let plan =
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await.unwrap().join("\n");
        assert!(plan.contains("Index Scan using orders_pkey"), "first={first}:\n{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "first={first}:\n{plan}");
        let cond = plan.lines().find(|l| l.contains("Index Cond:")).unwrap_or_default();
        assert!(cond.contains("id <="), "bounded above by the index (first={first}):\n{plan}");
        assert_eq!(cond.contains("id >"), !first, "bounded below by the index (first={first}):\n{plan}");
    }
}

fn filter(column: &str, op: FilterOp, values: &[&str]) -> Filter {
    Filter { column: column.into(), op, values: values.iter().map(|v| v.to_string()).collect() }
}

/// Every node of a JSON plan.
fn nodes(plan: &Value, out: &mut Vec<Value>) {
    out.push(plan.clone());
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_chunks_use_an_index_and_read_a_small_part_of_the_table() {
    const ROWS: i64 = 200_000;
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, ROWS, |_| {}).await.unwrap();
    // A rare status: 0.1% of the rows.
    for sql in ["update orders set status = 'refunded' where id % 1000 = 0", "vacuum analyze orders"] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let ds = orders(&db.pool).await;
    let pages: i64 = sqlx::query_scalar("select relpages::bigint from pg_class where relname = 'orders'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // created_at grows 31 s per id: this window holds 200 rows (0.1%).
    let window = ["2023-01-20 00:00:00+00", "2023-01-20 01:43:20+00"];
    let cases = [
        ("rare status", vec![filter("status", FilterOp::Eq, &["refunded"])], true),
        ("rare status in a list", vec![filter("status", FilterOp::In, &["refunded", "lost"])], true),
        (
            "narrow time window",
            vec![filter("created_at", FilterOp::Gte, &window[..1]), filter("created_at", FilterOp::Lt, &window[1..])],
            true,
        ),
        ("one customer", vec![filter("customer_email", FilterOp::Eq, &["customer42@example.com"])], true),
        ("common country", vec![filter("country", FilterOp::Eq, &["DE"])], false),
        ("not null", vec![filter("created_at", FilterOp::IsNotNull, &[])], false),
    ];
    for (name, filters, selective) in cases {
        let mut spec = ExportSpec::new(10_000);
        spec.filters = filters;
        let mut conn = db.pool.acquire().await.unwrap();
        sqlx::query(session_setup()).bind("UTC").bind(filter_values(&spec)).execute(&mut *conn).await.unwrap();
        for after in [None, Some(Key::int(ROWS / 2))] {
            let select = chunk_select(&ds, &spec, after.as_ref(), Some(&Key::int(ROWS)), 10_000);
            let sql = format!("explain (analyze, buffers, format json) {select}");
            let plan: sqlx::types::Json<Value> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *conn).await.unwrap();
            let root = &plan.0[0]["Plan"];
            let mut all = Vec::new();
            nodes(root, &mut all);
            let types: Vec<&str> = all.iter().filter_map(|n| n["Node Type"].as_str()).collect();
            assert!(!types.contains(&"Seq Scan"), "{name}: sequential scan\n{root:#}");
            let indexes: Vec<&str> = all.iter().filter_map(|n| n["Index Name"].as_str()).collect();
            assert!(!indexes.is_empty(), "{name}: no index used\n{root:#}");
            let blocks = root["Shared Hit Blocks"].as_i64().unwrap() + root["Shared Read Blocks"].as_i64().unwrap();
            let removed: i64 = all.iter().filter_map(|n| n["Rows Removed by Filter"].as_i64()).sum();
            if selective {
                assert!(blocks < pages / 10, "{name} (after {after:?}): read {blocks} of {pages} pages\n{root:#}");
                assert!(removed < ROWS / 100, "{name}: {removed} rows read and thrown away\n{root:#}");
            }
            // A common value (country: 10%) walks the key index and skips non-matching rows:
            // a chunk reads about chunk / selectivity rows, and the chunks together one pass.
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_query_is_cancelled_at_the_statement_timeout() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 1_000, |_| {}).await.unwrap();
    let ds = orders(&db.pool).await;
    // The pool exports run on, with a short statement timeout (EXPORTD_STATEMENT_TIMEOUT).
    let mut args = exportd::config::DbArgs::parse_defaults();
    args.database_url = db.url.clone();
    args.statement_timeout = std::time::Duration::from_millis(300);
    let pool = exportd::db::connect(&args).await.unwrap();
    // Another session holds the table, so the chunk query would wait for as long as it does.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("lock table orders in access exclusive mode").execute(&mut *blocker).await.unwrap();
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await.unwrap();
    let sql =
        exportd::db::dataset::chunk_copy(&ds, &ExportSpec::new(10_000), None, Some(&Key::int(1_000)), 10_000, true);
    let chunk = async {
        match conn.copy_out_raw(&sql).await {
            Err(e) => e,
            Ok(mut stream) => {
                use futures::TryStreamExt;
                stream.try_next().await.expect_err("the chunk query must not outlive the statement timeout")
            }
        }
    };
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), chunk)
        .await
        .expect("the chunk query was still waiting after 5 s: no statement timeout");
    let elapsed = started.elapsed();
    let code = err.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled by the statement timeout: {err}");
    assert!(elapsed < std::time::Duration::from_secs(3), "cancelled after {elapsed:?}");
    blocker.rollback().await.unwrap();
}
