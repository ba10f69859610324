//! Reading exported JSON Lines and Parquet files back with independent readers (Python's
//! json, pyarrow, DuckDB: `tests/formats/check.py`) and comparing every value with
//! PostgreSQL's own text of the same rows.

use std::{path::Path, process::Command};

use super::helpers::copy_out;

/// The NULL text of the reference CSV (check.py's `NULL`), absent from the data.
pub const NULL: &str = "NULL-7f3a";

/// The columns' SQL types, as the catalog names them.
pub async fn sql_types(pool: &sqlx::PgPool, table: &str, columns: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for c in columns {
        let ty: String = sqlx::query_scalar(
            "select format_type(atttypid, atttypmod) from pg_attribute where attrelid = $1::regclass and attname = $2",
        )
        .bind(table)
        .bind(c)
        .fetch_one(pool)
        .await
        .unwrap();
        out.push(ty);
    }
    out
}

/// PostgreSQL's CSV of `columns` of `table` in key order (NULL as [`NULL`]), in UTC.
pub async fn reference(pool: &sqlx::PgPool, table: &str, columns: &[&str]) -> Vec<u8> {
    let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let copy = format!(
        "copy (select {} from {table} order by id) to stdout with (format csv, header, null '{NULL}')",
        cols.join(", ")
    );
    copy_out(pool, "UTC", &copy).await
}

/// Runs check.py on `file` (named with `extension`) against the reference; panics with its
/// report unless every value matches.
pub fn check(kind: &str, file: &[u8], extension: &str, reference: &[u8], types: &[String], decimals: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path(&format!("file.{extension}")), file).unwrap();
    std::fs::write(path("reference.csv"), reference).unwrap();
    std::fs::write(path("types.json"), serde_json::to_vec(types).unwrap()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/formats");
    let out = Command::new(root.join("readers.sh"))
        .arg("python")
        .arg(root.join("check.py"))
        .args([kind, path(&format!("file.{extension}")).to_str().unwrap()])
        .args([path("reference.csv").to_str().unwrap(), path("types.json").to_str().unwrap(), decimals])
        .output()
        .expect("tests/formats/readers.sh runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{kind} file differs from PostgreSQL's values: {report}");
    report
}
