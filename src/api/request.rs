//! The body of `POST /api/export` (validated into an [`ExportSpec`] in `validate.rs`), and
//! the same shape rebuilt from a stored spec, so a status's `options` can be posted back.

use std::collections::BTreeMap;

use poem_openapi::{Enum, Object, types::Example};
use serde_json::{Value, json};

use crate::model::{
    ExportSpec,
    spec::{Compression, Decimals, FileType, FilterOp, LineEnding, ParquetCodec},
};

/// What to export and how. Every field is optional: `{}` (or no body) exports every column of
/// the default dataset as PostgreSQL's own CSV. `format` is the CSV dialect (default: comma,
/// LF, header line, minimal quoting, NULL as empty, UTC); `compression` is `none` (default)
/// or `gzip` (a `.csv.gz` file, served as `application/gzip`).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example, skip_serializing_if_is_none)]
pub struct CreateExportRequest {
    /// Dataset to export (`GET /api/datasets` lists them). Default: `orders`.
    #[oai(validator(min_length = 1))]
    pub dataset: Option<String>,
    /// Columns to write, in this order (default: every exportable column of the dataset).
    #[oai(validator(min_items = 1))]
    pub columns: Option<Vec<String>>,
    /// Header names to use instead of column names, e.g. `{"customer_email": "email"}`.
    pub headers: Option<BTreeMap<String, String>>,
    /// Row filters by column, all of which must hold (AND). Only the dataset's filterable
    /// columns; values are checked against the column's type.
    pub filters: Option<BTreeMap<String, FilterOps>>,
    // `format` and `compression` are described on the struct: a doc comment here would make
    // poem-openapi wrap the `$ref` in an `allOf` that generators (openapi-python-client) refuse.
    #[allow(missing_docs)]
    pub format: Option<FormatRequest>,
    #[allow(missing_docs)]
    pub compression: Option<CompressionName>,
    /// Rows read per chunk (100 to 100000; server default 10000). A durable checkpoint follows
    /// every chunk, so a crash loses at most one chunk of work.
    #[oai(validator(minimum(value = "100"), maximum(value = "100000")))]
    pub chunk_size: Option<u32>,
    /// Throttle: read at most this many rows per second (1 to 10000000), to keep the export
    /// gentle on a busy database. Omit for full speed.
    #[oai(validator(minimum(value = "1"), maximum(value = "10000000")))]
    pub max_rows_per_second: Option<u32>,
    /// Key ranges read at the same time, each on its own database connection (1 to the
    /// server's maximum, `EXPORTD_MAX_PARALLELISM`, default 4). The file is the same whatever
    /// it is: one file in key order, header once. Omit to let the server choose from the
    /// export's size (one range per 500,000 rows, up to the maximum; 1 when throttled). Every
    /// format: a Parquet file's ranges write row groups, and one footer lists them all.
    #[oai(validator(minimum(value = "1"), maximum(value = "64")))]
    pub parallelism: Option<u32>,
    /// Where to announce the end of the export (completed, failed or cancelled): an http(s)
    /// URL that receives a POST signed per Standard Webhooks 1.0 with the owner's secret
    /// (`exportd keys create` prints it). Public addresses only (422 otherwise). Not part of
    /// the export's `options`.
    #[oai(validator(max_length = 2048))]
    pub callback_url: Option<String>,
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
                    FilterOps { gte: Some(json!("2023-01-01")), lt: Some(json!("2023-02-01")), ..FilterOps::none() },
                ),
            ])),
            format: Some(FormatRequest::example()),
            compression: Some(CompressionName::Gzip),
            chunk_size: Some(10_000),
            max_rows_per_second: None,
            parallelism: None,
            callback_url: None,
        }
    }
}

/// Conditions on one column, combined with AND. Values are JSON strings, numbers or booleans,
/// read as the column's type (timestamps as ISO 8601; without an offset, in `format.timeZone`).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example, skip_serializing_if_is_none)]
pub struct FilterOps {
    /// Equal to.
    pub eq: Option<Value>,
    /// Equal to one of these (1 to 1000 values).
    #[oai(rename = "in", validator(min_items = 1, max_items = 1000))]
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
    pub(super) fn none() -> Self {
        Self { eq: None, in_: None, gt: None, gte: None, lt: None, lte: None, is_null: None }
    }
}

impl Example for FilterOps {
    fn example() -> Self {
        Self { gte: Some(json!("2023-01-01T00:00:00Z")), lt: Some(json!("2023-01-02T00:00:00Z")), ..Self::none() }
    }
}

/// The file type and its options. `type`: `csv` (default; PostgreSQL's own CSV in the dialect
/// below), `jsonl` (JSON Lines: one object per row, keys in column order, `null` for NULL,
/// json/jsonb nested, timestamps RFC 3339 in `timeZone`, integers and floats as numbers,
/// `numeric` as strings unless `decimals` is `number`) or `parquet` (typed columns, one row
/// group per chunk, pages compressed with `codec`: `zstd` default, `snappy`, `none`).
/// `lineEnding` is `lf` (default) or `crlf`. The CSV options (delimiter to formulaGuard)
/// apply to `csv` only, `decimals` to `jsonl` only, `codec` to `parquet` only.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example, skip_serializing_if_is_none)]
pub struct FormatRequest {
    // Described on the struct (see `CreateExportRequest::format`).
    #[allow(missing_docs)]
    #[oai(rename = "type")]
    pub kind: Option<FileTypeName>,
    #[allow(missing_docs)]
    pub codec: Option<CodecName>,
    #[allow(missing_docs)]
    pub decimals: Option<DecimalsName>,
    /// Field delimiter: `,` (default), `;`, `|`, or a tab (`"\t"` or `"tab"`).
    pub delimiter: Option<String>,
    /// Write a header line (default true).
    pub header: Option<bool>,
    /// Quote every non-NULL value (default false: only where needed).
    pub quote_all: Option<bool>,
    /// How NULL is written (default: an empty field; an empty string is then `""`). Up to 32
    /// printable ASCII characters, no quotes, backslashes or delimiter.
    #[oai(validator(max_length = 32))]
    pub null: Option<String>,
    // Described on the struct (see `CreateExportRequest::format`).
    #[allow(missing_docs)]
    pub line_ending: Option<LineEndingName>,
    /// Start the file with a UTF-8 byte order mark, for Excel (default false).
    pub bom: Option<bool>,
    /// Time zone for timestamps, an IANA name such as `Europe/Berlin` (default `UTC`).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub time_zone: Option<String>,
    /// Formula-injection guard (default false): text cells starting with `=`, `+`, `-`, `@`,
    /// tab or CR get a leading `'`, so spreadsheets show them as text instead of running them.
    pub formula_guard: Option<bool>,
}

impl Example for FormatRequest {
    fn example() -> Self {
        Self {
            kind: Some(FileTypeName::Csv),
            codec: None,
            decimals: None,
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

/// File type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum FileTypeName {
    /// PostgreSQL's own CSV, in the requested dialect.
    Csv,
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

/// Parquet page compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CodecName {
    /// Zstandard (default).
    Zstd,
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// How JSON Lines writes `numeric` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DecimalsName {
    /// As strings, exact whatever the reader (default).
    String,
    /// As JSON numbers.
    Number,
}

/// Line ending.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum LineEndingName {
    /// `\n` after each line (PostgreSQL's own).
    Lf,
    /// `\r\n` after each line (what Windows tools expect).
    Crlf,
}

/// Compression of the file.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CompressionName {
    /// A plain `.csv` file.
    None,
    /// A `.csv.gz` file (one gzip member per chunk; decoders read them as one stream).
    Gzip,
}

impl FormatRequest {
    /// The request's `format` for a stored one: the type and the options that apply to it.
    fn from_format(f: &crate::model::spec::FileFormat) -> Self {
        let csv = f.kind == FileType::Csv;
        Self {
            kind: Some(match f.kind {
                FileType::Csv => FileTypeName::Csv,
                FileType::Jsonl => FileTypeName::Jsonl,
                FileType::Parquet => FileTypeName::Parquet,
            }),
            codec: (f.kind == FileType::Parquet).then_some(match f.codec {
                ParquetCodec::Zstd => CodecName::Zstd,
                ParquetCodec::Snappy => CodecName::Snappy,
                ParquetCodec::None => CodecName::None,
            }),
            decimals: (f.kind == FileType::Jsonl).then_some(match f.decimals {
                Decimals::String => DecimalsName::String,
                Decimals::Number => DecimalsName::Number,
            }),
            delimiter: csv.then(|| if f.delimiter == '\t' { "\t".to_owned() } else { f.delimiter.to_string() }),
            header: csv.then_some(f.header),
            quote_all: csv.then_some(f.quote_all),
            null: csv.then(|| f.null.clone()),
            line_ending: csv.then_some(match f.line_ending {
                LineEnding::Lf => LineEndingName::Lf,
                LineEnding::Crlf => LineEndingName::Crlf,
            }),
            bom: csv.then_some(f.bom),
            time_zone: (f.kind != FileType::Parquet).then(|| f.time_zone.clone()),
            formula_guard: csv.then_some(f.formula_guard),
        }
    }
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
            parallelism: None,
            callback_url: None,
        }
    }

    /// The request that makes an export with `spec` from `dataset`: what a status shows as
    /// `options`, ready to be posted back.
    pub fn from_spec(dataset: &str, spec: &ExportSpec) -> Self {
        let mut filters: BTreeMap<String, FilterOps> = BTreeMap::new();
        for f in &spec.filters {
            let ops = filters.entry(f.column.clone()).or_insert_with(FilterOps::none);
            let first = || f.values.first().map(|v| Value::String(v.clone()));
            match f.op {
                FilterOp::Eq => ops.eq = first(),
                FilterOp::Gt => ops.gt = first(),
                FilterOp::Gte => ops.gte = first(),
                FilterOp::Lt => ops.lt = first(),
                FilterOp::Lte => ops.lte = first(),
                FilterOp::In => ops.in_ = Some(f.values.iter().cloned().map(Value::String).collect()),
                FilterOp::IsNull => ops.is_null = Some(true),
                FilterOp::IsNotNull => ops.is_null = Some(false),
            }
        }
        let renamed: BTreeMap<String, String> =
            spec.columns.iter().filter(|c| c.header != c.name).map(|c| (c.name.clone(), c.header.clone())).collect();
        let f = &spec.format;
        Self {
            dataset: Some(dataset.to_owned()),
            columns: (!spec.columns.is_empty()).then(|| spec.columns.iter().map(|c| c.name.clone()).collect()),
            headers: (!renamed.is_empty()).then_some(renamed),
            filters: (!filters.is_empty()).then_some(filters),
            format: Some(FormatRequest::from_format(f)),
            compression: Some(match spec.compression {
                Compression::None => CompressionName::None,
                Compression::Gzip => CompressionName::Gzip,
            }),
            chunk_size: Some(spec.chunk_size),
            max_rows_per_second: spec.max_rows_per_second,
            parallelism: spec.parallelism,
            callback_url: None,
        }
    }
}
