//! Gentle on the database: every chunk query is a range scan of the key index, never a
//! sequential scan, with custom and generic plans alike.

use exportd::{db::dataset::chunk_query, export::dataset::ORDERS};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_queries_are_index_range_scans() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 50_000, |_| {}).await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("set plan_cache_mode = {mode}"))).execute(&mut *conn).await.unwrap();
        for first in [true, false] {
            let sql = format!("explain {}", chunk_query(&ORDERS, first));
            let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(50_000i64).bind(10_000i64);
            if !first {
                q = q.bind(25_000i64);
            }
            let plan = q.fetch_all(&mut *conn).await.unwrap().join("\n");
            assert!(plan.contains("Index Scan using orders_pkey"), "{mode}, first={first}:\n{plan}");
            assert!(!plan.contains("Seq Scan") && !plan.contains("Sort"), "{mode}, first={first}:\n{plan}");
            let cond = plan.lines().find(|l| l.contains("Index Cond:")).unwrap_or_default();
            assert!(cond.contains("id <="), "bounded above by the index ({mode}, first={first}):\n{plan}");
            assert_eq!(cond.contains("id >"), !first, "bounded below by the index ({mode}, first={first}):\n{plan}");
        }
    }
}
