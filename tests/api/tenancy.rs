//! Tenancy (issue 12): every `/api` operation needs a valid key (401 with a challenge
//! otherwise), an export belongs to its key's owner (another owner gets 404 everywhere, an
//! admin sees all), keys limited to datasets get 403 for the others.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// An app with 300 orders and a second dataset, `items`, from a config file.
async fn app_with_two_datasets() -> (TestApp, tempfile::TempDir) {
    let db = test_db().await;
    seed_nasty(&db.pool, 300).await;
    sqlx::raw_sql(
        "create table items (id bigint primary key, sku text); \
         insert into items select g, 'SKU-' || g from generate_series(1, 50) g; analyze items",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("datasets.toml");
    std::fs::write(
        &path,
        "default = \"orders\"\n\n[[dataset]]\nname = \"orders\"\ntable = \"orders\"\nkey = \"id\"\n\
         columns = [\"id\", \"status\"]\n\n[[dataset]]\nname = \"items\"\ntable = \"items\"\nkey = \"id\"\n\
         columns = [\"id\", \"sku\"]\n",
    )
    .unwrap();
    let app = spawn_app(db, AppOptions { workers: 1, datasets: Some(path), ..Default::default() }).await;
    (app, dir)
}

/// Every operation of the spec that names a security scheme, with a concrete path.
fn secured_operations(spec: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty())) {
                let concrete = path.replace("{id}", &Uuid::new_v4().to_string());
                ops.push((method.to_uppercase(), concrete));
            }
        }
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_operation_needs_a_valid_key_and_the_docs_stay_open() {
    let (app, _dir) = app_with_two_datasets().await;
    let spec: Value = reqwest::get(app.url("/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(spec["components"]["securitySchemes"]["apiKey"]["scheme"], "bearer", "Swagger UI's Authorize needs it");
    let ops = secured_operations(&spec);
    let paths: Vec<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for p in paths.iter().filter(|p| p.starts_with("/api/")) {
        assert!(
            spec["paths"][*p].as_object().unwrap().values().all(|op| op["security"][0]["apiKey"].is_array()),
            "{p} must declare the key"
        );
    }
    assert_eq!(ops.len(), 8, "{ops:?}");

    let plain = reqwest::Client::new();
    let revoked_key = new_key(&app.db.pool, "gone-svc", true, None).await;
    assert_eq!(app.as_key(&revoked_key).client.get(app.url("/api/exports")).send().await.unwrap().status(), 200);
    exportd::db::keys::revoke(&app.db.pool, "gone-svc").await.unwrap();
    let unknown = format!("exk_{}_{}", Uuid::new_v4().simple(), "ab".repeat(32));
    let cases: [(&str, Option<String>, bool); 6] = [
        ("no header", None, false),
        ("another scheme", Some("Basic dXNlcjpwYXNz".into()), false),
        ("empty bearer", Some("Bearer ".into()), false),
        ("malformed key", Some("Bearer not-a-key".into()), true),
        ("unknown key", Some(format!("Bearer {unknown}")), true),
        ("revoked key", Some(format!("Bearer {revoked_key}")), true),
    ];
    for (method, path) in &ops {
        for (case, header, token_sent) in &cases {
            let mut req = plain.request(method.parse().unwrap(), app.url(path));
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            if method == "POST" {
                req = req.json(&json!({}));
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {case}");
            let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
            assert!(challenge.starts_with("Bearer realm=\"exportd\""), "{challenge}");
            // RFC 6750: error="invalid_token" only when a token was presented.
            assert_eq!(
                challenge.contains("invalid_token"),
                *token_sent && case != &"empty bearer",
                "{case}: {challenge}"
            );
            if method != "HEAD" {
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"], "unauthorized", "{case}: {body}");
                assert!(body["message"].as_str().unwrap().starts_with("Authorization: "), "{body}");
            }
        }
    }
    // Nothing was created by any of those requests.
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 0);
    // Open without a key: liveness, the spec, the docs.
    for open in ["/healthz", "/openapi.json", "/docs"] {
        assert_eq!(plain.get(app.url(open)).send().await.unwrap().status(), 200, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_export_does_not_exist_for_a_key_and_an_admin_sees_all() {
    let (app, _dir) = app_with_two_datasets().await;
    let billing = app.as_key(&new_key(&app.db.pool, "billing-svc", false, None).await);
    let crm = app.as_key(&new_key(&app.db.pool, "crm-svc", false, None).await);
    // A second key of the same owner (a rotation) sees the same exports.
    let billing2 = app.as_key(&new_key(&app.db.pool, "billing-svc", false, None).await);

    let mine = billing.create_export(Some(json!({"dataset": "items"}))).await;
    let theirs = crm.create_export(Some(json!({"dataset": "items"}))).await;
    billing.wait_finished(mine, std::time::Duration::from_secs(30)).await;
    crm.wait_finished(theirs, std::time::Duration::from_secs(30)).await;
    assert_eq!(billing.status(mine).await["owner"], "billing-svc");
    assert_eq!(billing2.status(mine).await["jobId"], mine.to_string());
    assert_eq!(app.status(theirs).await["owner"], "crm-svc", "the admin sees every owner's");

    // billing-svc cannot tell crm-svc's export from one that does not exist.
    let absent = Uuid::new_v4();
    for id in [theirs, absent] {
        let c = &billing.client;
        for (what, req) in [
            ("status", c.get(billing.url(&format!("/api/export/{id}/status")))),
            ("download", c.get(billing.url(&format!("/api/export/{id}/download")))),
            ("head", c.head(billing.url(&format!("/api/export/{id}/download")))),
            ("cancel", c.delete(billing.url(&format!("/api/export/{id}")))),
        ] {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 404, "{what} of {id}");
            if what != "head" {
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["message"], format!("no export with id {id}"), "the same words as for no export");
            }
        }
    }
    // The refused cancel changed nothing: crm-svc's file is still there.
    assert_eq!(crm.status(theirs).await["status"], "completed");
    assert_eq!(crm.download(theirs).await, billing.download(mine).await, "same rows, both intact");

    let ids = |v: Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|i| i["jobId"].as_str().unwrap().to_owned()).collect()
    };
    let list = |api: &crate::support::client::Api, q: &'static str| {
        let api = api.clone();
        async move {
            api.client.get(api.url(&format!("/api/exports{q}"))).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    assert_eq!(ids(list(&billing, "").await), vec![mine.to_string()]);
    assert_eq!(ids(list(&billing, "?status=completed").await), vec![mine.to_string()]);
    assert_eq!(ids(list(&crm, "?limit=1").await), vec![theirs.to_string()]);
    let all = ids(list(&app, "").await);
    assert!(all.contains(&mine.to_string()) && all.contains(&theirs.to_string()), "admin: {all:?}");

    // Idempotency keys are per owner: the same key from two owners makes two exports, and a
    // different request under another owner's key is not a 422.
    let post = |api: &crate::support::client::Api, body: Value| {
        let api = api.clone();
        async move {
            let resp = api
                .client
                .post(api.url("/api/export"))
                .header("idempotency-key", "nightly-2024-06-01")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            resp.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_owned()
        }
    };
    let a = post(&billing, json!({"dataset": "items"})).await;
    let b = post(&crm, json!({"dataset": "orders"})).await;
    assert_ne!(a, b);
    assert_eq!(post(&billing2, json!({"dataset": "items"})).await, a, "the owner's key, not the key's id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_datasets_sees_and_exports_only_those() {
    let (app, _dir) = app_with_two_datasets().await;
    let items_only = app.as_key(&new_key(&app.db.pool, "catalog-svc", false, Some(&["items"])).await);
    let datasets: Value =
        items_only.client.get(items_only.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = datasets.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["items"]);
    let all: Value = app.client.get(app.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);

    // The default dataset (orders) and orders by name: 403 naming it, and nothing created.
    for body in [json!({}), json!({"dataset": "orders", "columns": ["id"]})] {
        let resp = items_only.client.post(items_only.url("/api/export")).json(&body).send().await.unwrap();
        let err = expect_error(resp, 403, "dataset: this key may not export \"orders\"").await;
        assert_eq!(err["error"], "forbidden");
        assert!(err["message"].as_str().unwrap().ends_with("(it may export: items)"), "{err}");
    }
    // An unknown dataset is still a 400, naming only what the key may export.
    let resp =
        items_only.client.post(items_only.url("/api/export")).json(&json!({"dataset": "x"})).send().await.unwrap();
    let err = expect_error(resp, 400, "dataset: unknown dataset \"x\"").await;
    assert!(err["message"].as_str().unwrap().ends_with("(known: items)"), "{err}");
    let count: i64 = sqlx::query_scalar("select count(*) from exports").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 0);

    let id = items_only.create_export(Some(json!({"dataset": "items"}))).await;
    items_only.wait_finished(id, std::time::Duration::from_secs(30)).await;
    let expected = copy_out(
        &app.db.pool,
        "UTC",
        "copy (select id, sku from items order by id) to stdout with (format csv, header true)",
    )
    .await;
    assert_same_bytes(&items_only.download(id).await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_run_s_development_key_is_made_once_and_kept_across_restarts() {
    use crate::support::process::{Exportd, exportd_env};
    let db = test_db().await;
    seed_nasty(&db.pool, 100).await;
    let storage = tempfile::tempdir().unwrap();
    let mut serve = Exportd::serve(exportd_env(&db.url, storage.path(), &[("EXPORTD_WORKER_CONCURRENCY", "1")])).await;
    let api = serve.api();
    let id = api.create_export(None).await;
    assert_eq!(api.wait_finished(id, std::time::Duration::from_secs(30)).await["owner"], "dev");
    serve.terminate();
    serve.start().await;
    // The same key works after the restart, and no second key was made.
    assert_eq!(serve.api().key, api.key);
    assert_eq!(serve.api().status(id).await["status"], "completed");
    let keys: i64 = sqlx::query_scalar("select count(*) from api_keys").fetch_one(&db.pool).await.unwrap();
    assert_eq!(keys, 1);
    // Once that key is revoked, the next start makes (and keeps) a new one.
    exportd::db::keys::revoke(&db.pool, "dev").await.unwrap();
    serve.terminate();
    serve.start().await;
    let renewed = serve.api();
    assert_ne!(renewed.key, api.key);
    assert_eq!(renewed.status(id).await["owner"], "dev", "the same owner: its exports stay visible");
}
