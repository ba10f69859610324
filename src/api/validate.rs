//! The validation of a `POST /api/export` body into an [`ExportSpec`]: every error is a 400
//! whose message starts with the offending field; values are checked by PostgreSQL itself.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

use crate::{
    api::{
        AppState,
        request::{
            CodecName, CompressionName, CreateExportRequest, DecimalsName, FileTypeName, FilterOps, FormatRequest,
            LineEndingName,
        },
    },
    db,
    error::Error,
    model::{
        ApiKey, Dataset, ExportSpec,
        spec::{Compression, Decimals, FileFormat, FileType, Filter, FilterOp, LineEnding, OutputColumn, ParquetCodec},
    },
};

/// Most values one `in` filter may list.
pub const MAX_IN_VALUES: usize = 1000;
/// Most filter values of one export, all filters together.
pub const MAX_FILTER_VALUES: usize = 2000;
/// Longest filter value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Largest stored spec (the options as JSON), in bytes: what every status and list answer
/// carries back, so what a page of `GET /api/exports` can weigh.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Longest header name (PostgreSQL's identifier limit, in bytes).
const MAX_HEADER_BYTES: usize = 63;
/// Longest time zone name accepted (IANA names are at most 32 bytes).
const MAX_TIME_ZONE_BYTES: usize = 64;
/// How much of a client's string an error message repeats.
const SHOWN_CHARS: usize = 64;

fn bad(message: String) -> Error {
    Error::BadRequest(message)
}

/// The path of a map's member for an error message (`headers.note`), or of the map alone when
/// the key is too long or odd to repeat.
fn member(map: &str, key: &str) -> String {
    if key.chars().count() <= SHOWN_CHARS && !key.chars().any(char::is_control) {
        format!("{map}.{key}")
    } else {
        map.to_owned()
    }
}

/// A client's string as an error message repeats it: quoted, and cut after [`SHOWN_CHARS`]
/// characters (a message never grows with what was sent).
fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
        None => format!("{s:?}"),
    }
}

impl CreateExportRequest {
    /// Checks the request against the dataset and the column types, and returns what the
    /// export will do. Values are checked by PostgreSQL (a cast of each, as a bound parameter).
    pub async fn into_spec(self, state: &AppState, caller: &ApiKey) -> Result<(Arc<Dataset>, ExportSpec), Error> {
        let name = self.dataset.as_deref().unwrap_or(state.datasets.default_name());
        // Only the datasets the key may export are named (the others are not its business).
        let known = || {
            let all = state.datasets.all().iter().filter(|d| caller.may_export(&d.name));
            all.map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
        };
        let ds = state
            .datasets
            .find(name)
            .cloned()
            .ok_or_else(|| bad(format!("dataset: unknown dataset {} (known: {})", shown(name), known())))?;
        if !caller.may_export(&ds.name) {
            return Err(Error::Forbidden(format!(
                "dataset: this key may not export {} (it may export: {})",
                shown(&ds.name),
                known()
            )));
        }
        let mut spec = ExportSpec::new(self.chunk_size.unwrap_or(state.default_chunk_size));
        spec.max_rows_per_second = self.max_rows_per_second;
        spec.parallelism = self.parallelism;
        if let Some(p) = self.parallelism.filter(|p| *p > state.max_parallelism) {
            return Err(bad(format!(
                "parallelism: {p} is more than this server reads at once (at most {}, EXPORTD_MAX_PARALLELISM)",
                state.max_parallelism
            )));
        }
        spec.format = format(self.format)?;
        spec.columns = columns(&ds, self.columns, self.headers, spec.format.formula_guard)?;
        spec.filters = filters(&ds, self.filters.unwrap_or_default())?;
        spec.compression = match self.compression {
            Some(CompressionName::Gzip) => Compression::Gzip,
            _ => Compression::None,
        };
        if spec.format.kind == FileType::Parquet && spec.compression == Compression::Gzip {
            return Err(bad(
                "compression: gzip does not apply to parquet, which compresses its pages itself (format.codec: \
                 zstd, snappy or none)"
                    .into(),
            ));
        }
        let stored = serde_json::to_vec(&spec).map_err(anyhow::Error::from)?.len();
        if stored > MAX_SPEC_BYTES {
            return Err(bad(format!(
                "filters: the export's options take {stored} bytes stored, more than {MAX_SPEC_BYTES}; \
                 use fewer or shorter filter values"
            )));
        }
        check_values(state, &ds, &spec).await?;
        Ok((ds, spec))
    }
}

/// The file's columns, with their headers.
fn columns(
    ds: &Dataset,
    names: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    formula_guard: bool,
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
                "columns: unknown column {} in dataset {} (exportable: {})",
                shown(&name),
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
        // A line break (or any control character) in a header name would split the header
        // line or smuggle text into the file's first row.
        if header.chars().any(char::is_control) {
            return Err(bad(format!("headers.{name}: must not contain control characters (CR, LF, tab, ...)")));
        }
        // With the guard on, the header line must be as inert in a spreadsheet as the cells.
        if formula_guard && header.starts_with(['=', '+', '-', '@']) {
            return Err(bad(format!(
                "headers.{name}: {} starts with {:?}, which a spreadsheet runs as a formula \
                 (format.formulaGuard is on)",
                shown(&header),
                &header[..1]
            )));
        }
        if out.iter().any(|c| c.header == header) {
            return Err(bad(format!("headers.{name}: header {header:?} is used twice")));
        }
        out.push(OutputColumn { name, header });
    }
    if let Some(name) = headers.keys().next() {
        return Err(bad(format!("{}: {} is not one of the exported columns", member("headers", name), shown(name))));
    }
    Ok(out)
}

/// The file format, checked: options given for another type than the one asked are refused
/// (naming the option), rather than silently ignored.
fn format(req: Option<FormatRequest>) -> Result<FileFormat, Error> {
    let mut f = FileFormat::default();
    let Some(req) = req else { return Ok(f) };
    f.kind = match req.kind {
        Some(FileTypeName::Jsonl) => FileType::Jsonl,
        Some(FileTypeName::Parquet) => FileType::Parquet,
        _ => FileType::Csv,
    };
    let csv_only = [
        ("delimiter", req.delimiter.is_some()),
        ("header", req.header.is_some()),
        ("quoteAll", req.quote_all.is_some()),
        ("null", req.null.is_some()),
        ("lineEnding", req.line_ending.is_some()),
        ("bom", req.bom.is_some()),
        ("formulaGuard", req.formula_guard.is_some()),
    ];
    let only = |field: &str, given: bool, kind: FileType| {
        if given && f.kind != kind {
            return Err(bad(format!(
                "format.{field}: applies to format.type {} only, not {}",
                kind.name(),
                f.kind.name()
            )));
        }
        Ok(())
    };
    for (field, given) in csv_only {
        only(field, given, FileType::Csv)?;
    }
    only("codec", req.codec.is_some(), FileType::Parquet)?;
    only("decimals", req.decimals.is_some(), FileType::Jsonl)?;
    f.codec = match req.codec {
        Some(CodecName::Snappy) => ParquetCodec::Snappy,
        Some(CodecName::None) => ParquetCodec::None,
        _ => ParquetCodec::Zstd,
    };
    f.decimals = match req.decimals {
        Some(DecimalsName::Number) => Decimals::Number,
        _ => Decimals::String,
    };
    if let Some(d) = req.delimiter {
        let mut chars = d.chars();
        f.delimiter = match (d.as_str(), chars.next(), chars.next()) {
            ("tab" | "\\t", _, _) => '\t',
            (_, Some(c), None) => c,
            _ => return Err(bad(format!("format.delimiter: {} is not one character", shown(&d)))),
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
    if f.time_zone.len() > MAX_TIME_ZONE_BYTES {
        return Err(bad(format!("format.timeZone: {} is not a time zone name", shown(&f.time_zone))));
    }
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
            return Err(bad(format!(
                "{}: unknown column {} in dataset {}",
                member("filters", &column),
                shown(&column),
                ds.name
            )));
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
    let total: usize = out.iter().map(|f| f.values.len()).sum();
    if total > MAX_FILTER_VALUES {
        return Err(bad(format!("filters: {total} values in all; at most {MAX_FILTER_VALUES} per export")));
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
    if s.len() > MAX_VALUE_BYTES {
        return Err(bad(format!("{field}: a value of {} bytes; at most {MAX_VALUE_BYTES}", s.len())));
    }
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
        if f.values.is_empty() {
            continue;
        }
        if let Err(message) = crate::with_conn!(state.pool, state.request_timeout, "checking filter values", |c| {
            db::exports::check_values(c, sql_type, &f.values)
        })
        .await?
        {
            return Err(bad(format!("filters.{}.{}: {message}", f.column, f.op.name())));
        }
    }
    Ok(())
}
