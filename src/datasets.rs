//! Loads the datasets config file and checks every dataset against the database catalog
//! (key unique, indexed, of a type that orders; columns present; filterable columns indexed).

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use sqlx::PgPool;

use crate::{
    db::catalog,
    model::{Column, Dataset, Datasets, KeyColumn, KeyKind},
};

/// The config shipped in the repo (`config/datasets.toml`), used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/datasets.toml");

/// The config file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    default: Option<String>,
    #[serde(rename = "dataset", default)]
    datasets: Vec<DatasetConfig>,
}

/// One `[[dataset]]` of the config file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetConfig {
    name: String,
    #[serde(default)]
    description: Option<String>,
    table: String,
    key: KeyConfig,
    columns: Vec<String>,
    #[serde(default)]
    filterable: Vec<String>,
}

/// `key = "id"` or, for a composite key, `key = ["tenant_id", "id"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum KeyConfig {
    One(String),
    Columns(Vec<String>),
}

impl KeyConfig {
    fn names(&self) -> &[String] {
        match self {
            KeyConfig::One(name) => std::slice::from_ref(name),
            KeyConfig::Columns(names) => names,
        }
    }
}

/// Reads the config (`path`, or the built-in default) and checks every dataset against
/// the database catalog. Errors name the file, the dataset and the problem.
pub async fn load(pool: &PgPool, path: Option<&Path>) -> anyhow::Result<Datasets> {
    let (text, source) = match path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading datasets file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFIG.to_owned(), "built-in config/datasets.toml".to_owned()),
    };
    let file: ConfigFile = toml::from_str(&text).with_context(|| format!("parsing datasets file {source}"))?;
    let mut list: Vec<Arc<Dataset>> = Vec::new();
    for config in &file.datasets {
        if list.iter().any(|d| d.name == config.name) {
            bail!("{source}: dataset {:?} is declared twice", config.name);
        }
        let ds = check(pool, config).await.with_context(|| format!("{source}: dataset {:?}", config.name))?;
        list.push(Arc::new(ds));
    }
    let Some(first) = list.first() else { bail!("{source}: no [[dataset]] declared") };
    let default = file.default.unwrap_or_else(|| first.name.clone());
    if !list.iter().any(|d| d.name == default) {
        bail!("{source}: default dataset {default:?} is not declared");
    }
    Ok(Datasets::new(list, default))
}

/// The exportable columns of a dataset of the built-in config, read without the database
/// (the bench's `psql \copy` reference).
pub fn default_config_columns(name: &str) -> Option<Vec<String>> {
    let file: ConfigFile = toml::from_str(DEFAULT_CONFIG).ok()?;
    file.datasets.into_iter().find(|d| d.name == name).map(|d| d.columns)
}

/// Checks one dataset against the catalog and resolves its column types.
async fn check(pool: &PgPool, config: &DatasetConfig) -> anyhow::Result<Dataset> {
    if config.name.is_empty() || !config.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        bail!("name must be letters, digits, '_', '-' or '.'");
    }
    if config.columns.is_empty() {
        bail!("no exportable columns");
    }
    let Some(rel) = catalog::relation(pool, &config.table).await? else {
        bail!("table or view {:?} does not exist (for the demo dataset, run `exportd seed`)", config.table);
    };
    let found = catalog::columns(pool, rel.oid).await?;
    let find = |name: &str| found.iter().find(|c| c.name == name);
    for (i, name) in config.columns.iter().enumerate() {
        if config.columns[..i].contains(name) {
            bail!("column {name:?} is listed twice");
        }
    }
    let names = config.key.names();
    if names.is_empty() || names.len() > 4 {
        bail!("key must name one to four columns");
    }
    let mut key = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            bail!("key column {name:?} is listed twice");
        }
        let c = find(name).with_context(|| format!("key column {name:?} does not exist in {}", rel.sql_name))?;
        let kind = KeyKind::of(&c.sql_type).with_context(|| {
            format!("key column {name:?} is {}; a key column must be {}", c.sql_type, KeyKind::ALLOWED)
        })?;
        key.push((c, KeyColumn { name: name.clone(), cast_type: c.cast_type.clone(), kind }));
    }
    if rel.has_indexes {
        let attnums: Vec<i16> = key.iter().map(|(c, _)| c.attnum).collect();
        if !catalog::has_unique_index(pool, rel.oid, &attnums).await? {
            bail!(
                "key ({}) has no unique index on exactly these columns, in this order, with their own collations and \
                 default operator classes: keyset chunks need a unique index that orders the rows as the key does",
                names.join(", ")
            );
        }
        if let Some((c, _)) = key.iter().find(|(c, _)| !c.not_null) {
            bail!(
                "key column {:?} may be NULL: rows with a NULL key would be left out of every export; declare it NOT NULL",
                c.name
            );
        }
    } else {
        tracing::warn!(dataset = %config.name, relation = %rel.sql_name, "a view: key uniqueness and indexes cannot be checked");
    }
    let key: Vec<KeyColumn> = key.into_iter().map(|(_, k)| k).collect();
    let mut columns = Vec::new();
    for name in &config.columns {
        let c = find(name).with_context(|| format!("column {name:?} does not exist in {}", rel.sql_name))?;
        columns.push(Column {
            name: name.clone(),
            sql_type: c.sql_type.clone(),
            cast_type: c.cast_type.clone(),
            filterable: config.filterable.contains(name),
            textual: !matches!(c.category.as_str(), "N" | "D" | "B" | "T"),
        });
    }
    for name in &config.filterable {
        let c = find(name).with_context(|| format!("filterable column {name:?} does not exist in {}", rel.sql_name))?;
        if !config.columns.contains(name) {
            bail!("filterable column {name:?} is not in columns (only exportable columns can be filtered on)");
        }
        if rel.has_indexes && !catalog::has_leading_index(pool, rel.oid, c.attnum).await? {
            bail!(
                "filterable column {name:?} has no index that starts with it: a filter on it would read the whole table per chunk"
            );
        }
    }
    Ok(Dataset {
        name: config.name.clone(),
        description: config.description.clone(),
        table: config.table.clone(),
        table_sql: rel.sql_name,
        key,
        columns,
    })
}
