//! What may be exported: a dataset (a table or view walked by its key) and its columns,
//! as resolved from the datasets config against the catalog (see [`crate::datasets`]).

use std::sync::Arc;

/// One exportable column, with its type as the catalog states it.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name in the table, also the default CSV header.
    pub name: String,
    /// SQL type (`format_type`), e.g. `numeric(12,2)`, as shown to users.
    pub sql_type: String,
    /// The type filter values are cast to (no modifier: never truncated or rounded to fit).
    pub cast_type: String,
    /// Whether the column may be filtered on.
    pub filterable: bool,
    /// Whether its values are text a spreadsheet could read as a formula (everything but
    /// numbers, dates, times, intervals and booleans): the formula guard applies to these.
    pub textual: bool,
}

/// An exportable table or view. Exports walk it by `key` (unique, indexed; one column or
/// several compared as a row) in chunks.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name used in the API.
    pub name: String,
    /// What the dataset holds, shown in `GET /api/datasets`.
    pub description: Option<String>,
    /// The relation as configured (e.g. `orders`), shown to users.
    pub table: String,
    /// The relation as SQL, quoted by the catalog (`oid::regclass`).
    pub table_sql: String,
    /// The key's columns, in index order: unique together, indexed, never NULL.
    pub key: Vec<super::KeyColumn>,
    /// Exportable columns, in the default file order.
    pub columns: Vec<Column>,
}

impl Dataset {
    /// An exportable column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The key's column names, for messages (`id`, `tenant_id, id`).
    pub fn key_names(&self) -> String {
        self.key.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Whether the key is one integer column (its values are numbers: progress can be told by
    /// position).
    pub fn integer_key(&self) -> bool {
        matches!(&self.key[..], [k] if k.kind == super::KeyKind::Integer)
    }

    /// Column names, for error messages.
    pub fn column_names(&self) -> String {
        self.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Every dataset of the process, validated.
#[derive(Debug, Clone)]
pub struct Datasets {
    list: Vec<Arc<Dataset>>,
    default: String,
}

impl Datasets {
    /// A dataset by its API name.
    pub fn find(&self, name: &str) -> Option<&Arc<Dataset>> {
        self.list.iter().find(|d| d.name == name)
    }

    /// All datasets, in config order.
    pub fn all(&self) -> &[Arc<Dataset>] {
        &self.list
    }

    /// The dataset of requests that name none.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Names, for error messages.
    pub fn names(&self) -> String {
        self.list.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// No dataset at all (printing the OpenAPI spec needs no database).
    pub fn none() -> Self {
        Self { list: Vec::new(), default: String::new() }
    }

    /// The datasets `list` (not empty), with `default` the one of requests that name none.
    pub fn new(list: Vec<Arc<Dataset>>, default: String) -> Self {
        Self { list, default }
    }
}
