//! `exportd keys`: create, list and revoke API keys at a terminal.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use sqlx::PgPool;

use crate::{config::KeysCommand, db, model::ApiKey};

/// Runs one `exportd keys` command; what it prints goes to stdout.
pub async fn run(pool: &PgPool, command: &KeysCommand) -> anyhow::Result<String> {
    let mut out = String::new();
    match command {
        KeysCommand::Create { name, admin, datasets } => {
            check_name(name)?;
            if let Some(names) = datasets {
                check_datasets(pool, names).await?;
            }
            let (key, secret) =
                db::keys::create(pool, name, *admin, datasets.as_deref()).await.context("creating the key")?;
            writeln!(out, "created key {} for {} ({})", key.id, key.name, scope(&key))?;
            writeln!(out, "secret (shown this once; only a hash of it is stored):\n{secret}")?;
            writeln!(out, "use it as:  curl -H 'Authorization: Bearer {secret}' http://127.0.0.1:8080/api/exports")?;
            let mut conn = pool.acquire().await.context("connecting")?;
            let signing = db::webhooks::owner_secret(&mut conn, name).await.context("reading the webhook secret")?;
            writeln!(out, "webhooks of {name}'s exports are signed (Standard Webhooks) with:  {signing}")?;
        }
        KeysCommand::List => {
            let keys = db::keys::list(pool).await.context("listing keys")?;
            writeln!(out, "{:<36}  {:<24}  {:<20}  {:<16}  state", "id", "name", "scope", "created")?;
            for k in keys {
                let state = match k.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    None => "valid".to_owned(),
                };
                let scope = scope(&k);
                writeln!(
                    out,
                    "{:<36}  {:<24}  {:<20}  {:<16}  {state}",
                    k.id,
                    k.name,
                    scope,
                    k.created_at.format("%Y-%m-%d %H:%M")
                )?;
            }
        }
        KeysCommand::Revoke { key } => {
            let revoked = db::keys::revoke(pool, key).await.context("revoking")?;
            if revoked.is_empty() {
                bail!("no valid key has the id or name {key:?} (exportd keys list shows them)");
            }
            for k in revoked {
                writeln!(out, "revoked key {} of {}", k.id, k.name)?;
            }
        }
    }
    Ok(out)
}

/// Name of the key `make run` makes for the person at the terminal.
pub const DEV_KEY_NAME: &str = "dev";

/// The development key kept in `path` (`EXPORTD_DEV_KEY_FILE`): the one there if it is still
/// valid, else a new admin key, written there (mode 0600) so the next start finds it again
/// (a secret cannot be shown twice from the database: only its hash is stored).
pub async fn dev_key(pool: &PgPool, path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(kept) = std::fs::read_to_string(path) {
        let kept = kept.trim();
        if db::keys::find(pool, kept).await.context("checking the development key")?.is_some() {
            return Ok(kept.to_owned());
        }
    }
    let (_, secret) = db::keys::create(pool, DEV_KEY_NAME, true, None).await.context("creating the development key")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(path, &secret).with_context(|| format!("writing the development key to {}", path.display()))?;
    Ok(secret)
}

/// Writes `text` to a file only its owner may read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    writeln!(f, "{text}")
}

/// What a key may reach, for people: `admin, datasets orders` or `all datasets`.
fn scope(k: &ApiKey) -> String {
    let datasets = match &k.datasets {
        Some(ds) => format!("datasets {}", ds.join(",")),
        None => "all datasets".to_owned(),
    };
    if k.admin { format!("admin, {datasets}") } else { datasets }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!("--name {name:?}: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit");
    }
    Ok(())
}

/// Dataset names must be ones the service exports (as its last start published them).
async fn check_datasets(pool: &PgPool, names: &[String]) -> anyhow::Result<()> {
    let known = db::dataset::published_names(pool).await.context("reading the datasets")?;
    if names.is_empty() {
        bail!("--datasets: name at least one dataset, or leave it out for every dataset");
    }
    if known.is_empty() {
        return Ok(()); // no exportd has started on this database yet: nothing to check against
    }
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        bail!("--datasets: unknown dataset {unknown:?} (known: {})", known.join(", "));
    }
    Ok(())
}
