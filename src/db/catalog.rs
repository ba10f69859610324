//! Catalog lookups that check a dataset's definition: relation, column types, indexes.

use sqlx::PgPool;

use crate::error::Result;

/// A table or view found in the catalog.
#[derive(Debug, Clone)]
pub struct Relation {
    /// The relation's `pg_class` oid.
    pub oid: i64,
    /// Quoted, schema-qualified when not on the search path (`oid::regclass`).
    pub sql_name: String,
    /// Tables, partitioned tables and materialized views have indexes; views do not.
    pub has_indexes: bool,
}

/// A column of a relation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CatalogColumn {
    /// Column name.
    pub name: String,
    /// Column number in the relation (`pg_attribute.attnum`).
    pub attnum: i16,
    /// `format_type`, e.g. `numeric(12,2)`.
    pub sql_type: String,
    /// The type without its modifier, schema-qualified (`pg_catalog.bpchar`, `pg_catalog.numeric`):
    /// what filter values are cast to, so a value is never truncated or rounded to fit the column.
    pub cast_type: String,
    /// `pg_type.typcategory`: N numeric, D date/time, B boolean, T interval, S string, ...
    pub category: String,
    /// Declared `NOT NULL` (never true for a view's columns).
    pub not_null: bool,
}

/// The relation named `name` (as SQL: `orders`, `sales."Orders"`), if it exists.
pub async fn relation(pool: &PgPool, name: &str) -> Result<Option<Relation>> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "select c.oid::bigint, c.oid::regclass::text, c.relkind::text from pg_class c \
         where c.oid = to_regclass($1) and c.relkind in ('r', 'p', 'v', 'm', 'f')",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(oid, sql_name, kind)| Relation {
        oid,
        sql_name,
        has_indexes: matches!(kind.as_str(), "r" | "p" | "m"),
    }))
}

/// The live columns of a relation, in table order.
pub async fn columns(pool: &PgPool, oid: i64) -> Result<Vec<CatalogColumn>> {
    Ok(sqlx::query_as(
        "select a.attname::text as name, a.attnum, format_type(a.atttypid, a.atttypmod) as sql_type, \
                quote_ident(n.nspname) || '.' || quote_ident(t.typname) as cast_type, \
                t.typcategory::text as category, a.attnotnull as not_null \
         from pg_attribute a join pg_type t on t.oid = a.atttypid join pg_namespace n on n.oid = t.typnamespace \
         where a.attrelid = $1::bigint::oid and a.attnum > 0 and not a.attisdropped order by a.attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?)
}

/// Whether a valid, non-partial unique index has exactly these key columns (`attnums`, in
/// order), each with the column's own collation and its type's default btree operator class, so
/// it orders rows as `ORDER BY` those columns does (all ascending or all descending: scanned
/// either way) and serves the keyset's row comparison.
pub async fn has_unique_index(pool: &PgPool, oid: i64, attnums: &[i16]) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from pg_index i where i.indrelid = $1::bigint::oid and i.indisunique \
         and i.indisvalid and i.indpred is null and i.indexprs is null and i.indnkeyatts = cardinality($2::int2[]) \
         and (i.indkey::int2[])[0:cardinality($2::int2[]) - 1] = $2::int2[] \
         and not exists (select 1 from generate_series(0, i.indnkeyatts - 1) as k \
           join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[k] \
           join pg_opclass o on o.oid = i.indclass[k] \
           where i.indcollation[k] <> a.attcollation or not o.opcdefault or i.indoption[k] <> i.indoption[0]))",
    )
    .bind(oid)
    .bind(attnums)
    .fetch_one(pool)
    .await?)
}

/// Whether a valid, non-partial index starts with this column.
pub async fn has_leading_index(pool: &PgPool, oid: i64, attnum: i16) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from pg_index i where i.indrelid = $1::bigint::oid \
         and i.indisvalid and i.indpred is null and i.indkey[0] = $2)",
    )
    .bind(oid)
    .bind(attnum)
    .fetch_one(pool)
    .await?)
}
