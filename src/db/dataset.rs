//! SQL over an exportable dataset: the keyset chunk query with its filters, the COPY options
//! of the CSV dialect, the high-water mark, estimates and the COPY reference.
//!
//! Identifiers come from the validated dataset definition (never from a request) and are
//! quoted. Filter values never enter SQL text: `COPY` cannot take bound parameters, so each
//! run binds them once with `set_config('exportd.pN', $1)` on its connection, and the chunk
//! query reads them back with `current_setting('exportd.pN')::type`, a stable expression the
//! planner uses as an index condition. Only integers we computed (limits), key values (each an
//! escaped string literal cast to its column's type) and the dialect's validated characters are
//! written into the text.
//!
//! Keys of several columns are compared as rows (`(t.a, t.b) > (x, y)`), which a btree index on
//! `(a, b)` serves as an index condition; text keys compare in the column's collation, as its
//! unique index orders them (checked when the datasets load).

use crate::model::{
    Dataset, Key,
    spec::{ExportSpec, FileType, Filter, FilterOp, OutputColumn},
    types::{JsonKind, Kind},
};

/// Double-quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Single-quotes an SQL string literal (for COPY options only, whose values are validated).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where each key column is in the rows a chunk query of `spec` returns: at its place among
/// the output columns when it arrives there as itself (CSV: always, as its text; JSON Lines and
/// Parquet: in its own binary form, not turned into JSON or text), else appended after them, in
/// key order, to be cut off; and how many were appended.
pub fn key_positions(ds: &Dataset, spec: &ExportSpec, columns: &[OutputColumn]) -> (Vec<usize>, usize) {
    let mut appended = 0;
    let positions = ds
        .key
        .iter()
        .map(|k| match columns.iter().position(|c| c.name == k.name).filter(|_| arrives_as_itself(ds, spec, &k.name)) {
            Some(i) => i,
            None => {
                appended += 1;
                columns.len() + appended - 1
            }
        })
        .collect();
    (positions, appended)
}

/// Whether an output column's value arrives in a chunk's rows as the column's own value (text
/// in CSV, binary otherwise), so a key read from it reads back.
fn arrives_as_itself(ds: &Dataset, spec: &ExportSpec, name: &str) -> bool {
    let ty = ds.column(name).map_or("text", |c| c.sql_type.as_str());
    match spec.format.kind {
        FileType::Csv => true,
        FileType::Jsonl => {
            let kind = JsonKind::of(ty, spec.format.decimals);
            matches!(kind, JsonKind::Int) || kind == JsonKind::Text && Kind::of(ty) == Kind::Text
        }
        FileType::Parquet => !Kind::of(ty).cast_to_text(),
    }
}

/// The key's columns, qualified (`t."a"`), in key order.
fn key_columns(ds: &Dataset) -> Vec<String> {
    ds.key.iter().map(|k| format!("t.{}", ident(&k.name))).collect()
}

/// The key columns appended to a chunk's rows (see [`key_positions`]), qualified, in key order.
fn appended_key_columns(ds: &Dataset, spec: &ExportSpec, columns: &[OutputColumn]) -> Vec<String> {
    let (positions, _) = key_positions(ds, spec, columns);
    key_columns(ds).into_iter().zip(positions).filter(|(_, at)| *at >= columns.len()).map(|(c, _)| c).collect()
}

/// The key as an SQL expression: `t."id"`, or the row `(t."a", t."b")`.
fn key_expr(ds: &Dataset) -> String {
    let cols = key_columns(ds);
    if cols.len() == 1 { cols[0].clone() } else { format!("({})", cols.join(", ")) }
}

/// `ORDER BY` the key (its columns, qualified: an output column of the same name must not be
/// what sorts).
fn key_order(ds: &Dataset) -> String {
    key_columns(ds).join(", ")
}

/// A key value as SQL: each column's text an escaped string literal cast to the column's type
/// (`E'...'::pg_catalog.uuid`), as a row for several columns.
pub fn key_literal(ds: &Dataset, key: &Key) -> String {
    let values: Vec<String> = ds
        .key
        .iter()
        .zip(&key.0)
        .map(|(k, v)| format!("E'{}'::{}", v.replace('\\', "\\\\").replace('\'', "''"), k.cast_type))
        .collect();
    if values.len() == 1 { values[0].clone() } else { format!("({})", values.join(", ")) }
}

/// Each key column as text, in an array (`array[t."a"::text, ...]`): a key value as stored.
fn key_text_array(ds: &Dataset) -> String {
    let cols: Vec<String> = key_columns(ds).into_iter().map(|c| c + "::text").collect();
    format!("array[{}]", cols.join(", "))
}

/// The filter predicates, each value written by `param(n)` (n counts values from 1).
fn predicates(ds: &Dataset, filters: &[Filter], param: impl Fn(usize) -> String) -> Vec<String> {
    let mut n = 0;
    let mut next = |ty: &str| {
        n += 1;
        format!("{}::{ty}", param(n))
    };
    filters
        .iter()
        .map(|f| {
            let col = format!("t.{}", ident(&f.column));
            let ty = ds.column(&f.column).map(|c| c.cast_type.as_str()).unwrap_or("text");
            match f.op {
                FilterOp::IsNull => format!("{col} is null"),
                FilterOp::IsNotNull => format!("{col} is not null"),
                FilterOp::In => {
                    let values: Vec<String> = f.values.iter().map(|_| next(ty)).collect();
                    format!("{col} in ({})", values.join(", "))
                }
                op => {
                    let sym = match op {
                        FilterOp::Eq => "=",
                        FilterOp::Gt => ">",
                        FilterOp::Gte => ">=",
                        FilterOp::Lt => "<",
                        _ => "<=",
                    };
                    format!("{col} {sym} {}", next(ty))
                }
            }
        })
        .collect()
}

/// The filter values in parameter order.
pub fn filter_values(spec: &ExportSpec) -> Vec<&str> {
    spec.filters.iter().flat_map(|f| f.values.iter().map(String::as_str)).collect()
}

/// A run's session set-up: time zone (`$1`) and filter values (`$2`, a text array, the
/// values in parameter order), so the chunk queries can read them with `current_setting`.
/// One target whatever the number of values (a target per value hit PostgreSQL's limit of
/// 1664 entries in a select list, and failed every run of an export with many values).
/// Returns the connection's two ends as the server sees them (`client_addr`, `client_port`,
/// `server_addr`, `server_port`; null over a Unix socket).
pub fn session_setup() -> &'static str {
    "select set_config('TimeZone', $1, false) as time_zone, \
     (select count(set_config('exportd.p' || n, v, false)) from unnest($2::text[]) with ordinality as u(v, n)) \
     as filter_values, host(inet_client_addr()) as client_addr, inet_client_port() as client_port, \
     host(inet_server_addr()) as server_addr, inet_server_port() as server_port"
}

/// Whether the server has replayed WAL past `$1` (a `pg_lsn` as text): a standby's replay
/// position; a server not in recovery (a primary given as the read database) always has.
pub fn replayed_past() -> &'static str {
    "select case when pg_is_in_recovery() then coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) else true end"
}

fn setting_param(n: usize) -> String {
    format!("current_setting('exportd.p{n}')")
}

/// The keyset chunk query: filtered rows with `after < key <= upper` (no lower bound for the
/// first chunk, none above without `upper`), in key order, at most `limit`.
pub fn chunk_select(ds: &Dataset, spec: &ExportSpec, after: Option<&Key>, upper: Option<&Key>, limit: i64) -> String {
    let columns = spec.output_columns(ds);
    let kinds = (spec.format.kind == FileType::Parquet)
        .then(|| columns.iter().map(|c| ds.column(&c.name).map(|d| Kind::of(&d.sql_type))).collect::<Vec<_>>());
    let mut cols: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // Parquet: types it has no place for come as PostgreSQL's text.
            let cast = kinds.as_ref().is_some_and(|k| k[i].is_none_or(Kind::cast_to_text));
            format!("t.{}{} as {}", ident(&c.name), if cast { "::text" } else { "" }, ident(&c.header))
        })
        .collect();
    cols.extend(appended_key_columns(ds, spec, &columns));
    format!("select {} {}", cols.join(", "), keyset(ds, spec, after, upper, limit))
}

/// `from ... where ... order by key limit n` of a chunk.
fn keyset(ds: &Dataset, spec: &ExportSpec, after: Option<&Key>, upper: Option<&Key>, limit: i64) -> String {
    let key = key_expr(ds);
    let mut conds = predicates(ds, &spec.filters, setting_param);
    if let Some(a) = after {
        conds.push(format!("{key} > {}", key_literal(ds, a)));
    }
    if let Some(u) = upper {
        conds.push(format!("{key} <= {}", key_literal(ds, u)));
    }
    let conds = if conds.is_empty() { "true".to_owned() } else { conds.join(" and ") };
    format!("from {} as t where {conds} order by {} limit {limit}", ds.table_sql, key_order(ds))
}

/// The JSON Lines chunk query: each value in binary, as exportd writes it, or as PostgreSQL's
/// own JSON text of it (see [`JsonKind`]); the key appended when not exported.
pub fn chunk_jsonl_select(
    ds: &Dataset,
    spec: &ExportSpec,
    after: Option<&Key>,
    upper: Option<&Key>,
    limit: i64,
) -> String {
    let columns = spec.output_columns(ds);
    let mut cols: Vec<String> = columns
        .iter()
        .map(|c| {
            let column = format!("t.{}", ident(&c.name));
            let ty = ds.column(&c.name).map_or("text", |d| d.sql_type.as_str());
            JsonKind::of(ty, spec.format.decimals).select(&column, ty)
        })
        .collect();
    cols.extend(appended_key_columns(ds, spec, &columns));
    format!("select {} {}", cols.join(", "), keyset(ds, spec, after, upper, limit))
}

/// `COPY`'s options for the export's dialect (delimiter, NULL text, quoting, header). CRLF,
/// the byte order mark and the formula guard are not COPY's business: the engine adds them.
pub fn copy_options(spec: &ExportSpec, header: bool) -> String {
    let f = &spec.format;
    let mut opts = format!("format csv, header {header}");
    if f.delimiter != ',' {
        opts += &format!(
            ", delimiter {}",
            if f.delimiter == '\t' { "E'\\t'".to_owned() } else { literal(&f.delimiter.to_string()) }
        );
    }
    if !f.null.is_empty() {
        opts += &format!(", null {}", literal(&f.null));
    }
    if f.quote_all {
        opts += ", force_quote *";
    }
    opts
}

/// The chunk as PostgreSQL writes it (`COPY ... TO STDOUT`), one CopyData message per row:
/// CSV in the export's dialect (the server formats every value and applies the quoting, so
/// the bytes are COPY's by construction; with `header`, the first message is the header
/// line); for JSON Lines (see [`chunk_jsonl_select`]) and Parquet, the binary format.
pub fn chunk_copy(
    ds: &Dataset,
    spec: &ExportSpec,
    after: Option<&Key>,
    upper: Option<&Key>,
    limit: i64,
    header: bool,
) -> String {
    match spec.format.kind {
        FileType::Csv => format!(
            "copy ({}) to stdout with ({})",
            chunk_select(ds, spec, after, upper, limit),
            copy_options(spec, header)
        ),
        FileType::Jsonl => {
            format!("copy ({}) to stdout with (format binary)", chunk_jsonl_select(ds, spec, after, upper, limit))
        }
        FileType::Parquet => {
            format!("copy ({}) to stdout with (format binary)", chunk_select(ds, spec, after, upper, limit))
        }
    }
}

/// The keys that split the export's rows into ranges of similar size: the key at each quantile
/// `$1` (a float8 array) of the filtered keys below `upper` (so none is `upper` itself), in key
/// order, each a text array, over a sample of `percent` of the table's pages (`TABLESAMPLE
/// SYSTEM`, seeded, so a run splits as the one before it would) or over every row (`None`). The
/// key at quantile f is the ceil(f * n)-th of the n sampled, as `percentile_disc` picks it (which
/// takes no row of several columns).
pub fn split_points_query(ds: &Dataset, spec: &ExportSpec, percent: Option<f64>, upper: &Key) -> String {
    let sample = percent.map(|p| format!(" tablesample system ({p}) repeatable (0)")).unwrap_or_default();
    let mut conds = predicates(ds, &spec.filters, setting_param);
    conds.push(format!("{} < {}", key_expr(ds), key_literal(ds, upper)));
    format!(
        "with s as (select {order}, row_number() over (order by {order}) as exportd_rn, \
         count(*) over () as exportd_n from {} as t{sample} where {}) \
         select {} from s as t \
         where t.exportd_rn in (select greatest(1, ceil(t.exportd_n * f))::int8 from unnest($1::float8[]) as f) \
         order by t.exportd_rn",
        ds.table_sql,
        conds.join(" and "),
        key_text_array(ds),
        order = key_order(ds),
    )
}

/// The planner's count of the table's rows (null when never analyzed), to size a sample.
pub fn table_rows_query(ds: &Dataset) -> String {
    format!("select {}", bounds_exprs(ds).1)
}

/// SQL expressions for the largest key now (the high-water mark an export created now will
/// stop at, a text array; null for an empty table) and the planner's estimate of the table's
/// rows (null when never analyzed).
pub fn bounds_exprs(ds: &Dataset) -> (String, String) {
    let table = &ds.table_sql;
    let desc: Vec<String> = key_columns(ds).into_iter().map(|c| c + " desc").collect();
    (
        format!("(select {} from {table} as t order by {} limit 1)", key_text_array(ds), desc.join(", ")),
        format!(
            "(select case when c.reltuples < 0 then null else c.reltuples::bigint end \
             from pg_class c where c.oid = {}::regclass)",
            literal(table)
        ),
    )
}

/// Both bounds in one query.
pub fn bounds_query(ds: &Dataset) -> String {
    let (upper, total) = bounds_exprs(ds);
    format!("select {upper}, {total}")
}

/// The planner's estimate of the rows a filtered export covers up to `upper` (`EXPLAIN`, no
/// count), with the filter values bound as `$1..`.
pub fn estimate_filtered_query(ds: &Dataset, spec: &ExportSpec, upper: &Key) -> String {
    let mut conds = predicates(ds, &spec.filters, |i| format!("${i}::text"));
    conds.push(format!("{} <= {}", key_expr(ds), key_literal(ds, upper)));
    format!("explain (format json) select 1 from {} as t where {}", ds.table_sql, conds.join(" and "))
}

/// Checks that every value of a filter (`$1`, a text array) reads as the column's type, in
/// one statement; the error is PostgreSQL's own, naming the value.
pub fn value_check_query(sql_type: &str) -> String {
    format!("select bool_and((v::{sql_type}) is null) from unnest($1::text[]) as u(v)")
}

/// Checks that a time zone name is known.
///
/// The same call the run makes (`set_config('TimeZone', ...)`), local to the check's own
/// transaction: `AT TIME ZONE` accepts abbreviations such as `CEST` that the `TimeZone`
/// setting refuses, so checking with it let exports through that were certain to fail.
pub fn time_zone_check_query() -> &'static str {
    "select set_config('TimeZone', $1, true)"
}

/// `COPY` of every row of an unfiltered export of all columns, the reference an export must
/// equal byte for byte (tests, bench).
pub fn copy_reference_query(ds: &Dataset) -> String {
    let cols: Vec<String> = ds.columns.iter().map(|c| ident(&c.name)).collect();
    format!(
        "copy (select {} from {} as t order by {}) to stdout with (format csv, header true)",
        cols.join(", "),
        ds.table_sql,
        key_order(ds)
    )
}

/// Publishes the datasets as loaded (and the default chunk size) to `exportd.datasets`, what
/// `exportd.enqueue_export` checks SQL-enqueued requests against (migration 0007), and the
/// per-owner quotas the queue's fetch and `exportd.admit` apply (migration 0009); replaced
/// whole, in one transaction, at every start.
pub async fn publish(
    pool: &sqlx::PgPool,
    datasets: &crate::model::Datasets,
    settings: &crate::config::WorkerSettings,
) -> sqlx::Result<()> {
    let rows: Vec<serde_json::Value> = datasets
        .all()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let position = if d.name == datasets.default_name() { 0 } else { i + 1 };
            let columns: Vec<serde_json::Value> = d
                .columns
                .iter()
                .map(|c| serde_json::json!({"name": c.name, "sqlType": c.sql_type, "castType": c.cast_type, "filterable": c.filterable}))
                .collect();
            let key: Vec<&str> = d.key.iter().map(|k| k.name.as_str()).collect();
            serde_json::json!({"name": d.name, "position": position, "table_sql": d.table_sql, "key_columns": key, "columns": columns})
        })
        .collect();
    let mut tx = pool.begin().await?;
    // Processes starting together (an API and its workers) publish one after the other: two
    // concurrent delete-then-insert transactions would collide on the names.
    sqlx::query("select pg_advisory_xact_lock(hashtext('exportd.datasets'))").execute(&mut *tx).await?;
    sqlx::query("delete from exportd.datasets").execute(&mut *tx).await?;
    sqlx::query(
        "insert into exportd.datasets (name, position, table_sql, key_columns, columns) \
         select name, position, table_sql, key_columns, columns \
         from jsonb_to_recordset($1) as r(name text, position integer, table_sql text, key_columns text[], columns jsonb)",
    )
    .bind(sqlx::types::Json(rows))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into exportd.defaults (chunk_size, max_running_per_owner, max_queued_per_owner, max_parallelism) \
         values ($1, $2, $3, $4) \
         on conflict (only_row) do update set chunk_size = excluded.chunk_size, \
           max_running_per_owner = excluded.max_running_per_owner, \
           max_queued_per_owner = excluded.max_queued_per_owner, max_parallelism = excluded.max_parallelism",
    )
    .bind(settings.chunk_size as i32)
    .bind(settings.max_running_per_owner as i32)
    .bind(settings.max_queued_per_owner as i32)
    .bind(settings.max_parallelism as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The names of the datasets the last exportd start published, in config order.
pub async fn published_names(pool: &sqlx::PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("select name from exportd.datasets order by position, name").fetch_all(pool).await
}
