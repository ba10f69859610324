//! Gentle on the database: every chunk query is a range scan of the key index, never a
//! sequential scan, whether it is the first chunk or a later one.

use exportd::{db::dataset::chunk_select, export::dataset::ORDERS};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_queries_are_index_range_scans() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 50_000, |_| {}).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    for first in [true, false] {
        let after = (!first).then_some(25_000);
        let sql = format!("explain {}", chunk_select(&ORDERS, after, 50_000, 10_000));
        let plan =
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await.unwrap().join("\n");
        assert!(plan.contains("Index Scan using orders_pkey"), "first={first}:\n{plan}");
        assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "first={first}:\n{plan}");
        let cond = plan.lines().find(|l| l.contains("Index Cond:")).unwrap_or_default();
        assert!(cond.contains("id <="), "bounded above by the index (first={first}):\n{plan}");
        assert_eq!(cond.contains("id >"), !first, "bounded below by the index (first={first}):\n{plan}");
    }
}
