//! API keys (issue 12, first part): `exportd keys create|list|revoke`, secrets shown once and
//! stored as a digest, and the lookup a request's secret goes through.

use exportd::db::keys;

use crate::helpers::*;

/// `exportd keys ...` against the app's database: (success, stdout, stderr).
fn cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exportd"))
        .arg("keys")
        .args(args)
        .env("DATABASE_URL", &app.db.url)
        .output()
        .expect("run exportd keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_key_is_found_by_its_secret_only_until_it_is_revoked() {
    let db = test_db().await;
    let (key, secret) = keys::create(&db.pool, "billing-svc", false, Some(&["orders".to_owned()])).await.unwrap();
    let found = keys::find(&db.pool, &secret).await.unwrap().expect("its secret finds it");
    assert_eq!((found.id, found.name.as_str(), found.admin), (key.id, "billing-svc", false));
    assert_eq!(found.datasets, Some(vec!["orders".to_owned()]));
    // Only a digest is stored: the secret appears nowhere in the table.
    let stored: String =
        sqlx::query_scalar("select string_agg(t::text, ' ') from api_keys t").fetch_one(&db.pool).await.unwrap();
    assert!(!stored.contains(&secret[secret.len() - 64..]), "{stored}");
    // A tampered secret, another key's id with this secret's random part, garbage: nothing.
    let (other, _) = keys::create(&db.pool, "billing-svc", true, None).await.unwrap();
    let mut tampered = secret.clone();
    tampered.replace_range(secret.len() - 1.., if secret.ends_with('a') { "b" } else { "a" });
    let swapped = secret.replace(&key.id.simple().to_string(), &other.id.simple().to_string());
    for wrong in [tampered.as_str(), swapped.as_str(), "", "exk_", "Bearer x"] {
        assert!(keys::find(&db.pool, wrong).await.unwrap().is_none(), "{wrong}");
    }
    // Revoked by name: every valid key of that owner.
    assert_eq!(keys::revoke(&db.pool, "billing-svc").await.unwrap().len(), 2);
    assert!(keys::find(&db.pool, &secret).await.unwrap().is_none());
    assert!(keys::list(&db.pool).await.unwrap().iter().all(|k| k.revoked_at.is_some()));
}

#[tokio::test]
async fn exportd_keys_creates_lists_and_revokes_at_a_terminal() {
    let db = test_db().await;
    exportd::db::seed::seed_orders(&db.pool, 10, |_| {}).await.unwrap();
    let app = spawn_app(db, AppOptions { workers: 0, ..Default::default() }).await; // publishes the datasets
    let (ok, out, err) = cli(&app, &["create", "--name", "billing-svc", "--datasets", "orders"]);
    assert!(ok, "{out}{err}");
    let secret = out.lines().find(|l| l.starts_with("exk_")).expect("the secret is printed").to_owned();
    assert!(out.contains("Authorization: Bearer exk_"), "{out}");
    assert!(out.contains("webhooks of billing-svc's exports are signed (Standard Webhooks) with:  whsec_"), "{out}");
    let key = keys::find(&app.db.pool, &secret).await.unwrap().expect("the printed secret is the key's");
    assert_eq!(key.name, "billing-svc");

    let (ok, listed, _) = cli(&app, &["list"]);
    assert!(
        ok && listed.contains("billing-svc") && listed.contains("datasets orders") && listed.contains("valid"),
        "{listed}"
    );
    assert!(!listed.contains(&secret[4..]), "secrets are never listed");

    // Bad input names the flag; nothing is created.
    let (ok, _, err) = cli(&app, &["create", "--name", "has space"]);
    assert!(!ok && err.contains("--name"), "{err}");
    let (ok, _, err) = cli(&app, &["create", "--name", "x", "--datasets", "nope"]);
    assert!(!ok && err.contains("--datasets") && err.contains("nope") && err.contains("orders"), "{err}");
    assert_eq!(keys::list(&app.db.pool).await.unwrap().len(), 2, "the suite's admin key and billing-svc's");

    let (ok, out, _) = cli(&app, &["revoke", &key.id.to_string()]);
    assert!(ok && out.contains(&key.id.to_string()), "{out}");
    assert!(keys::find(&app.db.pool, &secret).await.unwrap().is_none());
    let (ok, _, err) = cli(&app, &["revoke", "billing-svc"]);
    assert!(!ok && err.contains("no valid key"), "{err}");
}
