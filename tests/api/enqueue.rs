//! `exportd.enqueue_export(request, idempotency_key)`: a service sharing the database creates
//! an export inside its own transaction. Commit: the export exists and completes
//! byte-identical to COPY; rollback: nothing exists; bad input: an SQL error naming the field,
//! the same field the API names for the same body; good input: the same stored spec as the
//! API's. A role with only the documented grants can call it and read nothing else.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};
use uuid::Uuid;

use crate::helpers::*;

async fn app() -> TestApp {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 3_000, |_| {}).await.unwrap();
    spawn_app(db, AppOptions::default()).await
}

/// Calls the function on `conn`: the new id, or the error's message and its COLUMN field.
async fn enqueue(conn: &mut sqlx::PgConnection, request: &Value, key: Option<&str>) -> Result<Uuid, (String, String)> {
    let row =
        sqlx::query("select exportd.enqueue_export($1, $2) as id").bind(request).bind(key).fetch_one(&mut *conn).await;
    match row {
        Ok(row) => Ok(row.get("id")),
        Err(sqlx::Error::Database(e)) => {
            let pg = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().expect("a PostgreSQL error");
            assert_eq!(pg.code(), "22023", "bad input is invalid_parameter_value: {}", pg.message());
            Err((pg.message().to_owned(), pg.column().unwrap_or_default().to_owned()))
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn an_export_enqueued_in_a_committed_transaction_completes_byte_identical() {
    let app = app().await;
    let request = json!({
        "columns": ["id", "created_at", "amount"],
        "filters": {"status": {"in": ["paid"]}, "id": {"gte": 100}},
        "format": {"delimiter": "|"},
        "chunkSize": 500
    });
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("create table service_orders (id bigint)").execute(&mut *tx).await.unwrap(); // the service's own work
    let id = enqueue(&mut tx, &request, Some("order-42")).await.unwrap();
    // Until the commit, nobody else sees it (the API reads through its own pool).
    let resp = app.client.get(app.url(&format!("/api/export/{id}/status"))).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    tx.commit().await.unwrap();

    let status = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    let reference = copy_out(
        &app.db.pool,
        "UTC",
        "copy (select id, created_at, amount from orders where status in ('paid') and id >= 100 order by id) \
         to stdout with (format csv, header, delimiter '|')",
    )
    .await;
    assert_same_bytes(&app.download(id).await, &reference);
    // The same key and request again: the same export; another request with it: refused.
    assert_eq!(enqueue(&mut conn, &request, Some("order-42")).await.unwrap(), id);
    let (message, field) = enqueue(&mut conn, &json!({}), Some("order-42")).await.unwrap_err();
    assert_eq!(field, "Idempotency-Key", "{message}");
}

#[tokio::test]
async fn an_export_enqueued_in_a_rolled_back_transaction_does_not_exist() {
    let app = app().await;
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    enqueue(&mut tx, &json!({"columns": ["id"]}), None).await.unwrap();
    tx.rollback().await.unwrap();
    let exports: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    let jobs: i64 = sqlx::query_scalar("select count(*) from apalis.jobs").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!((exports, jobs), (0, 0));
}

/// The field an API error names: `field: ...`, or poem-openapi's `invalid field "field": ...`.
fn api_field(message: &str) -> &str {
    match message.strip_prefix("invalid field \"") {
        Some(rest) => &rest[..rest.find('"').unwrap()],
        None => &message[..message.find(':').unwrap()],
    }
}

#[tokio::test]
async fn sql_and_the_api_refuse_the_same_bad_input_by_the_same_field_and_store_the_same_spec() {
    let app = app().await;
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let bad = [
        json!({"dataset": "nope"}),
        json!({"nope": 1}),
        json!({"columns": []}),
        json!({"columns": ["id", "id"]}),
        json!({"columns": ["nope"]}),
        json!({"columns": ["id"], "headers": {"amount": "total"}}),
        json!({"headers": {"id": ""}}),
        json!({"format": {"formulaGuard": true}, "headers": {"id": "=x"}}),
        json!({"format": {"delimiter": "::"}}),
        json!({"format": {"delimiter": "x"}}),
        json!({"format": {"null": "a'b"}}),
        json!({"format": {"null": ";"}, "format2": 1}),
        json!({"format": {"timeZone": "Mars/Base"}}),
        json!({"format": {"timeZone": 0}}),
        json!({"format": {"lineEnding": "cr"}}),
        json!({"filters": {"note": {"eq": "x"}}}),
        json!({"filters": {"nope": {"eq": "x"}}}),
        json!({"filters": {"id": {"gte": "abc"}}}),
        json!({"filters": {"created_at": {"lt": "now"}}}),
        json!({"filters": {"status": {"in": []}}}),
        json!({"filters": {"status": {}}}),
        json!({"filters": {"status": {"like": "p%"}}}),
        json!({"filters": {"status": {"eq": null}}}),
        json!({"chunkSize": 5}),
        json!({"maxRowsPerSecond": 0}),
        json!({"compression": "zip"}),
    ];
    for request in bad {
        let resp = app.client.post(app.url("/api/export")).json(&request).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{request}");
        let api: Value = resp.json().await.unwrap();
        let api_message = api["message"].as_str().unwrap();
        let (sql_message, sql_field) = match enqueue(&mut conn, &request, None).await {
            Err(refused) => refused,
            Ok(id) => panic!("{request}: the API refuses it ({api_message:?}), SQL made export {id}"),
        };
        assert_eq!(sql_field, api_field(api_message), "{request}: SQL {sql_message:?}, API {api_message:?}");
        assert!(sql_message.starts_with(&format!("{sql_field}: ")), "{sql_message}");
    }
    let good = [
        json!({}),
        json!({
            "dataset": "orders",
            "columns": ["id", "amount", "status"],
            "headers": {"amount": "total"},
            "filters": {"status": {"in": ["paid", "shipped"], "eq": "paid"}, "id": {"gte": 10, "lt": "5000"}},
            "format": {"delimiter": "tab", "null": "NULL", "lineEnding": "crlf", "bom": true, "timeZone": "Europe/Berlin",
                       "formulaGuard": true, "quoteAll": true, "header": false},
            "compression": "gzip", "chunkSize": 500, "maxRowsPerSecond": 1000
        }),
        json!({"filters": {"customer_email": {"isNull": false}, "country": {"isNull": true}}}),
    ];
    for request in good {
        let api_id = app.create_export(Some(request.clone())).await;
        let sql_id = enqueue(&mut conn, &request, None).await.unwrap();
        let spec = |id: Uuid| sqlx::query_scalar::<_, Value>("select spec from exports where id = $1").bind(id);
        let api_spec = spec(api_id).fetch_one(&app.db.pool).await.unwrap();
        let sql_spec = spec(sql_id).fetch_one(&app.db.pool).await.unwrap();
        assert_eq!(sql_spec, api_spec, "{request}");
    }
}

#[tokio::test]
async fn a_role_with_only_the_documented_grants_enqueues_and_reads_nothing_else() {
    let app = app().await;
    let role = format!("svc_{}", Uuid::new_v4().simple());
    for grant in [
        format!("create role {role} login"),
        format!("grant usage on schema exportd to {role}"),
        format!("grant execute on function exportd.enqueue_export(jsonb, text, text) to {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(grant)).execute(&app.db.pool).await.unwrap();
    }
    let url = app.db.url.replacen("://postgres@", &format!("://{role}@"), 1);
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("the role logs in (trust auth)");
    let id = enqueue(&mut conn, &json!({"columns": ["id"]}), None).await.unwrap();
    let refused = sqlx::query("select count(*) from exports").execute(&mut conn).await.unwrap_err();
    assert!(refused.to_string().contains("permission denied"), "{refused}");
    conn.close().await.unwrap();
    assert_eq!(app.wait_finished(id, Duration::from_secs(30)).await["status"], "completed");
    for cleanup in [format!("drop owned by {role}"), format!("drop role {role}")] {
        sqlx::query(sqlx::AssertSqlSafe(cleanup)).execute(&app.db.pool).await.unwrap();
    }
}
