//! SQL over an exportable dataset: the keyset chunk query, the high-water mark, the COPY reference.
//!
//! Identifiers come from the dataset definition (never from a request) and are quoted;
//! values are always bound parameters.

use crate::export::dataset::Dataset;

/// Double-quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The keyset chunk query. Binds: `$1` the export's upper bound (inclusive), `$2` the chunk
/// size and, unless `first`, `$3` the last key written (exclusive). Column 0 is the key as
/// `bigint`; columns 1.. are the exported columns as PostgreSQL's own text output (the same
/// text `COPY` writes). Two statements rather than `$3 is null or ...`, so that even a
/// generic plan is a range scan of the key index. The key is qualified in `ORDER BY`: an
/// unqualified `id` would sort by the *text* output column and skip rows.
pub fn chunk_query(ds: &Dataset, first: bool) -> String {
    let key = format!("t.{}", ident(ds.key));
    let cols: Vec<String> = ds.columns.iter().map(|c| format!("t.{}::text", ident(c.name))).collect();
    let lower = if first { String::new() } else { format!("{key} > $3 and ") };
    format!(
        "select {key}, {cols} from {table} as t \
         where {lower}{key} <= $1 \
         order by {key} limit $2",
        cols = cols.join(", "),
        table = ident(ds.table),
    )
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
