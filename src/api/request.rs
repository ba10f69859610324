//! The body of `POST /api/export` and its validation into an [`ExportSpec`]: every error is a
//! 400 whose message starts with the offending field.

use std::{collections::BTreeMap, sync::Arc};

use poem_openapi::{Enum, Object, types::Example};
use serde_json::{Value, json};

use crate::{
    api::AppState,
    db,
    error::Error,
    model::{
        Dataset, ExportSpec,
        spec::{Compression, CsvFormat, Filter, FilterOp, LineEnding, OutputColumn},
    },
};

/// Most values one `in` filter may list.
const MAX_IN_VALUES: usize = 1000;
/// Longest header name (PostgreSQL's identifier limit, in bytes).
const MAX_HEADER_BYTES: usize = 63;

/// What to export and how. Every field is optional: `{}` (or no body) exports every column of
/// the default dataset as PostgreSQL's own CSV.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct CreateExportRequest {
    /// Dataset to export (`GET /api/datasets` lists them). Default: `orders`.
    pub dataset: Option<String>,
    /// Columns to write, in this order (default: every exportable column of the dataset).
    pub columns: Option<Vec<String>>,
    /// Header names to use instead of column names, e.g. `{"customer_email": "email"}`.
    pub headers: Option<BTreeMap<String, String>>,
    /// Row filters by column, all of which must hold (AND). Only the dataset's filterable
    /// columns; values are checked against the column's type.
    pub filters: Option<BTreeMap<String, FilterOps>>,
    /// CSV dialect (default: comma, LF, header line, minimal quoting, NULL as empty, UTC).
    pub format: Option<FormatRequest>,
    /// `none` (default) or `gzip` (a `.csv.gz` file, served as `application/gzip`).
    pub compression: Option<CompressionName>,
    /// Rows read per chunk (100 to 100000; server default 10000). A durable checkpoint follows
    /// every chunk, so a crash loses at most one chunk of work.
    #[oai(validator(minimum(value = "100"), maximum(value = "100000")))]
    pub chunk_size: Option<u32>,
    /// Throttle: read at most this many rows per second (1 to 10000000), to keep the export
    /// gentle on a busy database. Omit for full speed.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub max_rows_per_second: Option<u32>,
}

impl Example for CreateExportRequest {
    fn example() -> Self {
        Self {
            dataset: Some("orders".into()),
            columns: Some(vec!["id".into(), "created_at".into(), "customer_email".into(), "amount".into()]),
            headers: Some(BTreeMap::from([("customer_email".into(), "email".into())])),
            filters: Some(BTreeMap::from([
                ("status".into(), FilterOps { in_: Some(vec![json!("paid"), json!("shipped")]), ..FilterOps::none() }),
                (
                    "created_at".into(),
                    FilterOps { gte: Some(json!("2024-01-01")), lt: Some(json!("2024-07-01")), ..FilterOps::none() },
                ),
            ])),
            format: Some(FormatRequest::example()),
            compression: Some(CompressionName::Gzip),
            chunk_size: Some(10_000),
            max_rows_per_second: None,
        }
    }
}

/// Conditions on one column, combined with AND. Values are JSON strings, numbers or booleans,
/// read as the column's type (timestamps as ISO 8601; without an offset, in `format.timeZone`).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct FilterOps {
    /// Equal to.
    pub eq: Option<Value>,
    /// Equal to one of these (1 to 1000 values).
    #[oai(rename = "in")]
    pub in_: Option<Vec<Value>>,
    /// Greater than.
    pub gt: Option<Value>,
    /// Greater than or equal to.
    pub gte: Option<Value>,
    /// Less than.
    pub lt: Option<Value>,
    /// Less than or equal to.
    pub lte: Option<Value>,
    /// `true`: only NULLs; `false`: only non-NULLs.
    pub is_null: Option<bool>,
}

impl FilterOps {
    fn none() -> Self {
        Self { eq: None, in_: None, gt: None, gte: None, lt: None, lte: None, is_null: None }
    }
}

impl Example for FilterOps {
    fn example() -> Self {
        Self { gte: Some(json!("2024-01-01T00:00:00Z")), lt: Some(json!("2024-02-01T00:00:00Z")), ..Self::none() }
    }
}

/// The CSV dialect.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct FormatRequest {
    /// Field delimiter: `,` (default), `;`, `|`, or a tab (`"\t"` or `"tab"`).
    pub delimiter: Option<String>,
    /// Write a header line (default true).
    pub header: Option<bool>,
    /// Quote every non-NULL value (default false: only where needed).
    pub quote_all: Option<bool>,
    /// How NULL is written (default: an empty field; an empty string is then `""`). Up to 32
    /// printable ASCII characters, no quotes, backslashes or delimiter.
    pub null: Option<String>,
    /// `lf` (default) or `crlf`.
    pub line_ending: Option<LineEndingName>,
    /// Start the file with a UTF-8 byte order mark, for Excel (default false).
    pub bom: Option<bool>,
    /// Time zone for timestamps, an IANA name such as `Europe/Berlin` (default `UTC`).
    pub time_zone: Option<String>,
    /// Formula-injection guard (default false): text cells starting with `=`, `+`, `-`, `@`,
    /// tab or CR get a leading `'`, so spreadsheets show them as text instead of running them.
    pub formula_guard: Option<bool>,
}

impl Example for FormatRequest {
    fn example() -> Self {
        Self {
            delimiter: Some(";".into()),
            header: Some(true),
            quote_all: Some(false),
            null: Some("NULL".into()),
            line_ending: Some(LineEndingName::Crlf),
            bom: Some(true),
            time_zone: Some("Europe/Berlin".into()),
            formula_guard: Some(true),
        }
    }
}

/// Line ending.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LineEndingName {
    Lf,
    Crlf,
}

/// Compression of the file.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CompressionName {
    None,
    Gzip,
}

fn bad(message: String) -> Error {
    Error::BadRequest(message)
}

impl CreateExportRequest {
    /// The request with every field left out.
    pub fn empty() -> Self {
        Self {
            dataset: None,
            columns: None,
            headers: None,
            filters: None,
            format: None,
            compression: None,
            chunk_size: None,
            max_rows_per_second: None,
        }
    }

    /// Checks the request against the dataset and the column types, and returns what the
    /// export will do. Values are checked by PostgreSQL (a cast of each, as a bound parameter).
    pub async fn into_spec(self, state: &AppState) -> Result<(Arc<Dataset>, ExportSpec), Error> {
        let name = self.dataset.as_deref().unwrap_or(state.datasets.default_name());
        let ds = state
            .datasets
            .find(name)
            .cloned()
            .ok_or_else(|| bad(format!("dataset: unknown dataset {name:?} (known: {})", state.datasets.names())))?;
        let mut spec = ExportSpec::new(self.chunk_size.unwrap_or(state.default_chunk_size));
        spec.max_rows_per_second = self.max_rows_per_second;
        spec.columns = columns(&ds, self.columns, self.headers)?;
        spec.format = format(self.format)?;
        spec.filters = filters(&ds, self.filters.unwrap_or_default())?;
        spec.compression = match self.compression {
            Some(CompressionName::Gzip) => Compression::Gzip,
            _ => Compression::None,
        };
        check_values(state, &ds, &spec).await?;
        Ok((ds, spec))
    }
}

/// The file's columns, with their headers.
fn columns(
    ds: &Dataset,
    names: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
) -> Result<Vec<OutputColumn>, Error> {
    let names = names.unwrap_or_else(|| ds.columns.iter().map(|c| c.name.clone()).collect());
    if names.is_empty() {
        return Err(bad("columns: must name at least one column".into()));
    }
    let mut headers = headers.unwrap_or_default();
    let mut out: Vec<OutputColumn> = Vec::with_capacity(names.len());
    for name in names {
        if ds.column(&name).is_none() {
            return Err(bad(format!(
                "columns: unknown column {name:?} in dataset {} (exportable: {})",
                ds.name,
                ds.column_names()
            )));
        }
        if out.iter().any(|c| c.name == name) {
            return Err(bad(format!("columns: {name:?} is listed twice")));
        }
        let header = headers.remove(&name).unwrap_or_else(|| name.clone());
        if header.is_empty() || header.len() > MAX_HEADER_BYTES || header.contains('\0') {
            return Err(bad(format!("headers.{name}: must be 1 to {MAX_HEADER_BYTES} bytes")));
        }
        if out.iter().any(|c| c.header == header) {
            return Err(bad(format!("headers.{name}: header {header:?} is used twice")));
        }
        out.push(OutputColumn { name, header });
    }
    if let Some(name) = headers.keys().next() {
        return Err(bad(format!("headers.{name}: {name:?} is not one of the exported columns")));
    }
    Ok(out)
}

/// The CSV dialect, checked.
fn format(req: Option<FormatRequest>) -> Result<CsvFormat, Error> {
    let mut f = CsvFormat::default();
    let Some(req) = req else { return Ok(f) };
    if let Some(d) = req.delimiter {
        let mut chars = d.chars();
        f.delimiter = match (d.as_str(), chars.next(), chars.next()) {
            ("tab" | "\\t", _, _) => '\t',
            (_, Some(c), None) => c,
            _ => return Err(bad(format!("format.delimiter: {d:?} is not one character"))),
        };
    }
    f.header = req.header.unwrap_or(f.header);
    f.quote_all = req.quote_all.unwrap_or(f.quote_all);
    f.null = req.null.unwrap_or(f.null);
    f.line_ending = match req.line_ending {
        Some(LineEndingName::Crlf) => LineEnding::Crlf,
        _ => LineEnding::Lf,
    };
    f.bom = req.bom.unwrap_or(f.bom);
    f.time_zone = req.time_zone.unwrap_or(f.time_zone);
    f.formula_guard = req.formula_guard.unwrap_or(f.formula_guard);
    f.validate().map_err(bad)?;
    Ok(f)
}

/// The filters, in a stable order (by column, then operator).
fn filters(ds: &Dataset, by_column: BTreeMap<String, FilterOps>) -> Result<Vec<Filter>, Error> {
    let mut out = Vec::new();
    for (column, ops) in by_column {
        let field = format!("filters.{column}");
        let Some(c) = ds.column(&column) else {
            return Err(bad(format!("{field}: unknown column {column:?} in dataset {}", ds.name)));
        };
        if !c.filterable {
            let filterable: Vec<&str> = ds.columns.iter().filter(|c| c.filterable).map(|c| c.name.as_str()).collect();
            return Err(bad(format!(
                "{field}: column {column:?} cannot be filtered on (filterable: {})",
                filterable.join(", ")
            )));
        }
        let before = out.len();
        let single = [
            (FilterOp::Eq, ops.eq),
            (FilterOp::Gt, ops.gt),
            (FilterOp::Gte, ops.gte),
            (FilterOp::Lt, ops.lt),
            (FilterOp::Lte, ops.lte),
        ];
        for (op, value) in single {
            if let Some(v) = value {
                let values = vec![text(&v, &format!("{field}.{}", op.name()), &c.sql_type)?];
                out.push(Filter { column: column.clone(), op, values });
            }
        }
        if let Some(list) = ops.in_ {
            let at = format!("{field}.in");
            if list.is_empty() || list.len() > MAX_IN_VALUES {
                return Err(bad(format!("{at}: list 1 to {MAX_IN_VALUES} values")));
            }
            let values = list.iter().map(|v| text(v, &at, &c.sql_type)).collect::<Result<_, _>>()?;
            out.push(Filter { column: column.clone(), op: FilterOp::In, values });
        }
        if let Some(is_null) = ops.is_null {
            let op = if is_null { FilterOp::IsNull } else { FilterOp::IsNotNull };
            out.push(Filter { column: column.clone(), op, values: Vec::new() });
        }
        if out.len() == before {
            return Err(bad(format!("{field}: give at least one of eq, in, gt, gte, lt, lte, isNull")));
        }
    }
    Ok(out)
}

/// A filter value as the text PostgreSQL will cast.
fn text(v: &Value, field: &str, sql_type: &str) -> Result<String, Error> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => return Err(bad(format!("{field}: null is not a value; use isNull"))),
        _ => return Err(bad(format!("{field}: expected a string, number or boolean"))),
    };
    // Relative times would change from one chunk to the next (and across a resume).
    let relative = ["now", "today", "tomorrow", "yesterday"];
    if (sql_type.starts_with("timestamp") || sql_type == "date" || sql_type.starts_with("time"))
        && relative.contains(&s.trim().to_ascii_lowercase().as_str())
    {
        return Err(bad(format!("{field}: {s:?} is relative and would move during the export; give a fixed time")));
    }
    Ok(s)
}

/// Checks each filter value against its column's type, and the time zone, in PostgreSQL.
async fn check_values(state: &AppState, ds: &Dataset, spec: &ExportSpec) -> Result<(), Error> {
    if spec.format.time_zone != "UTC"
        && let Err(message) = crate::with_conn!(state.pool, state.request_timeout, "checking format.timeZone", |c| {
            db::exports::check_time_zone(c, &spec.format.time_zone)
        })
        .await?
    {
        return Err(bad(format!("format.timeZone: {message}")));
    }
    for f in &spec.filters {
        let sql_type = &ds.column(&f.column).expect("checked").cast_type;
        for value in &f.values {
            if let Err(message) = crate::with_conn!(state.pool, state.request_timeout, "checking a filter value", |c| {
                db::exports::check_value(c, sql_type, value)
            })
            .await?
            {
                return Err(bad(format!("filters.{}.{}: {message}", f.column, f.op.name())));
            }
        }
    }
    Ok(())
}
