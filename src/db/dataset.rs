//! SQL over an exportable dataset: the keyset chunk query, the high-water mark, the COPY reference.
//!
//! Identifiers come from the dataset definition (never from a request) and are quoted;
//! values are always bound parameters.

use crate::export::dataset::Dataset;

/// Double-quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where the key is in each row a chunk query returns: one of the exported columns, or an
/// extra last column (to be cut off) when the key is not exported.
pub fn key_position(ds: &Dataset) -> (usize, bool) {
    match ds.columns.iter().position(|c| c.name == ds.key) {
        Some(i) => (i, false),
        None => (ds.columns.len(), true),
    }
}

/// The keyset chunk query: rows with `after < key <= upper` (no lower bound for the first
/// chunk), in key order, at most `limit`. Always a range scan of the key index; the key is
/// qualified in `ORDER BY` (an output column of the same name must not be what sorts).
/// The bounds are integers we computed, never request data.
pub fn chunk_select(ds: &Dataset, after: Option<i64>, upper: i64, limit: i64) -> String {
    let key = format!("t.{}", ident(ds.key));
    let mut cols: Vec<String> = ds.columns.iter().map(|c| format!("t.{}", ident(c.name))).collect();
    if key_position(ds).1 {
        cols.push(key.clone());
    }
    let lower = after.map(|a| format!("{key} > {a} and ")).unwrap_or_default();
    format!(
        "select {cols} from {table} as t where {lower}{key} <= {upper} order by {key} limit {limit}",
        cols = cols.join(", "),
        table = ident(ds.table),
    )
}

/// The chunk as PostgreSQL's own CSV (`COPY ... TO STDOUT`): the server formats every value
/// and applies the CSV quoting, so the bytes are COPY's by construction. With `header`, the
/// first CopyData message is the header line. The server sends one CopyData message per row.
pub fn chunk_copy(ds: &Dataset, after: Option<i64>, upper: i64, limit: i64, header: bool) -> String {
    format!("copy ({}) to stdout with (format csv, header {header})", chunk_select(ds, after, upper, limit))
}

/// The largest key now: the high-water mark an export created now will stop at.
pub fn max_key_query(ds: &Dataset) -> String {
    format!("select max({}) from {}", ident(ds.key), ident(ds.table))
}

/// `COPY` of the same rows, the reference an export must equal byte for byte (tests, bench).
pub fn copy_reference_query(ds: &Dataset) -> String {
    let cols: Vec<String> = ds.columns.iter().map(|c| ident(c.name)).collect();
    format!(
        "copy (select {} from {} order by {}) to stdout with (format csv, header true)",
        cols.join(", "),
        ident(ds.table),
        ident(ds.key)
    )
}

/// Planner's estimate of the table's rows (no count): null when the table was never analyzed.
pub fn estimate_rows_query() -> &'static str {
    "select case when c.reltuples < 0 then null else c.reltuples::bigint end \
     from pg_class c where c.oid = to_regclass($1)"
}
