//! The options an export was created with (columns, filters, file format, compression, pace),
//! validated once at creation and stored with the export so every run uses the same ones.

use serde::{Deserialize, Serialize};

use crate::model::Dataset;

/// Everything a run needs to know about what to write. Stored as JSON in `exports.spec`;
/// every field has a default, so exports stored by older versions still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// Rows per chunk; a durable checkpoint follows each chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Throttle: at most this many rows per second (None = as fast as the database gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_second: Option<u32>,
    /// Key ranges read at the same time, each on its own connection (None: chosen by the first
    /// run from the export's size and the worker's maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// The file's columns, in order (empty = every column of the dataset, as named there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<OutputColumn>,
    /// Row filters, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default)]
    /// The file format (CSV, JSON Lines or Parquet) and its options.
    pub format: FileFormat,
    #[serde(default)]
    /// Plain or gzip.
    pub compression: Compression,
}

fn default_chunk_size() -> u32 {
    10_000
}

impl ExportSpec {
    /// Plain CSV of every column, no filter, with this chunk size.
    pub fn new(chunk_size: u32) -> Self {
        Self {
            chunk_size,
            max_rows_per_second: None,
            parallelism: None,
            columns: Vec::new(),
            filters: Vec::new(),
            format: FileFormat::default(),
            compression: Compression::None,
        }
    }

    /// The download's file name extension (`csv`, `jsonl.gz`, `parquet`, ...).
    pub fn extension(&self) -> &'static str {
        match (self.format.kind, self.compression) {
            (FileType::Csv, Compression::None) => "csv",
            (FileType::Csv, Compression::Gzip) => "csv.gz",
            (FileType::Jsonl, Compression::None) => "jsonl",
            (FileType::Jsonl, Compression::Gzip) => "jsonl.gz",
            (FileType::Parquet, _) => "parquet",
        }
    }

    /// The download's content type.
    pub fn content_type(&self) -> &'static str {
        match (self.format.kind, self.compression) {
            (FileType::Parquet, _) => PARQUET_CONTENT_TYPE,
            (_, Compression::Gzip) => GZIP_CONTENT_TYPE,
            (FileType::Csv, Compression::None) => CSV_CONTENT_TYPE,
            (FileType::Jsonl, Compression::None) => JSONL_CONTENT_TYPE,
        }
    }

    /// The file's columns: the chosen ones, or all of the dataset's.
    pub fn output_columns(&self, ds: &Dataset) -> Vec<OutputColumn> {
        if self.columns.is_empty() {
            ds.columns.iter().map(|c| OutputColumn { name: c.name.clone(), header: c.name.clone() }).collect()
        } else {
            self.columns.clone()
        }
    }
}

/// One column of the file: which dataset column, under which header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputColumn {
    /// The dataset's column.
    pub name: String,
    /// Its name in the header line.
    pub header: String,
}

/// One condition on a column. Values are kept as text and cast to the column's type by
/// PostgreSQL, as bound parameters (never spliced into SQL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The dataset's column (a filterable one).
    pub column: String,
    /// How it is compared.
    pub op: FilterOp,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// The values, as text PostgreSQL casts to the column's type (none for the NULL tests).
    pub values: Vec<String>,
}

/// Filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FilterOp {
    /// `=` one value.
    Eq,
    /// `= any` of the values.
    In,
    /// `>` one value.
    Gt,
    /// `>=` one value.
    Gte,
    /// `<` one value.
    Lt,
    /// `<=` one value.
    Lte,
    /// `is null`.
    IsNull,
    /// `is not null`.
    IsNotNull,
}

impl FilterOp {
    /// The API name of the operator.
    pub fn name(self) -> &'static str {
        match self {
            FilterOp::Eq => "eq",
            FilterOp::In => "in",
            FilterOp::Gt => "gt",
            FilterOp::Gte => "gte",
            FilterOp::Lt => "lt",
            FilterOp::Lte => "lte",
            FilterOp::IsNull | FilterOp::IsNotNull => "isNull",
        }
    }
}

/// Content types of the files served.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
/// JSON Lines (the registered `application/jsonl` is newer than most clients).
pub const JSONL_CONTENT_TYPE: &str = "application/x-ndjson";
/// Any gzip-compressed file.
pub const GZIP_CONTENT_TYPE: &str = "application/gzip";
/// Apache Parquet (IANA-registered in 2024).
pub const PARQUET_CONTENT_TYPE: &str = "application/vnd.apache.parquet";

/// The file format and its options. The default is PostgreSQL's `COPY ... (FORMAT csv,
/// HEADER)`: comma, LF, header line, quotes only where needed, NULL as an empty unquoted
/// field, UTC timestamps. The CSV-only options (delimiter to formula guard) are kept at their
/// defaults for the other types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FileFormat {
    // The three are stored only when not their defaults: a CSV spec stays what it was before
    // they existed (and what `exportd.enqueue_export` stores).
    /// CSV, JSON Lines or Parquet.
    #[serde(rename = "type", skip_serializing_if = "is_default")]
    pub kind: FileType,
    /// Parquet's compression codec (Parquet only).
    #[serde(skip_serializing_if = "is_default")]
    pub codec: ParquetCodec,
    /// How JSON Lines writes `numeric` values (JSON Lines only).
    #[serde(skip_serializing_if = "is_default")]
    pub decimals: Decimals,
    /// One of `,` `;` `\t` `|`.
    pub delimiter: char,
    /// Write a header line first.
    pub header: bool,
    /// Quote every non-NULL value.
    pub quote_all: bool,
    /// How NULL is written.
    pub null: String,
    /// LF or CRLF after each line.
    pub line_ending: LineEnding,
    /// Start the file with a UTF-8 byte order mark (Excel reads UTF-8 only with one).
    pub bom: bool,
    /// Time zone timestamps are written in (and filter values without an offset are read in).
    pub time_zone: String,
    /// Make text cells that start with `=`, `+`, `-`, `@`, tab or CR inert for spreadsheets
    /// by prefixing a single quote (OWASP's CSV-injection rule).
    pub formula_guard: bool,
}

impl Default for FileFormat {
    fn default() -> Self {
        Self {
            kind: FileType::Csv,
            codec: ParquetCodec::Zstd,
            decimals: Decimals::String,
            delimiter: ',',
            header: true,
            quote_all: false,
            null: String::new(),
            line_ending: LineEnding::Lf,
            bom: false,
            time_zone: "UTC".to_owned(),
            formula_guard: false,
        }
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Allowed delimiters.
pub const DELIMITERS: [char; 4] = [',', ';', '\t', '|'];
/// Longest NULL text.
pub const MAX_NULL_TEXT: usize = 32;

impl FileFormat {
    /// Checks what PostgreSQL's `COPY` and a reader of the file both need; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !DELIMITERS.contains(&self.delimiter) {
            return Err(format!(
                "format.delimiter: {:?} is not supported (use \",\", \";\", \"\\t\" or \"|\")",
                self.delimiter
            ));
        }
        if self.null.len() > MAX_NULL_TEXT {
            return Err(format!("format.null: at most {MAX_NULL_TEXT} characters"));
        }
        // The NULL text goes into COPY's options as a literal: only printable ASCII that
        // cannot end the literal or be confused with CSV syntax.
        if let Some(c) =
            self.null.chars().find(|c| !c.is_ascii_graphic() && *c != ' ' || matches!(c, '\'' | '"' | '\\'))
        {
            return Err(format!(
                "format.null: {c:?} is not allowed (printable ASCII without quotes or backslashes only)"
            ));
        }
        if self.null.contains(self.delimiter) {
            return Err(format!("format.null: must not contain the delimiter {:?}", self.delimiter));
        }
        if self.time_zone.is_empty() || self.time_zone.len() > 64 {
            return Err("format.timeZone: must be an IANA time zone name such as \"Europe/Berlin\"".to_owned());
        }
        Ok(())
    }
}

/// The type of file an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    #[default]
    /// PostgreSQL's own CSV (`COPY ... (FORMAT csv)`), in the requested dialect.
    Csv,
    /// JSON Lines: one JSON object per row, keys in column order.
    Jsonl,
    /// Apache Parquet: typed columns, one row group per chunk.
    Parquet,
}

impl FileType {
    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            FileType::Csv => "csv",
            FileType::Jsonl => "jsonl",
            FileType::Parquet => "parquet",
        }
    }
}

/// Parquet's page compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCodec {
    #[default]
    /// Zstandard (level 1): small files, fast to read.
    Zstd,
    /// Snappy: what older readers expect.
    Snappy,
    /// Uncompressed pages.
    None,
}

/// How JSON Lines writes `numeric` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decimals {
    #[default]
    /// As strings (`"12.50"`): exact whatever the reader (most JSON parsers read numbers as
    /// 64-bit floats, which round `numeric` values and drop trailing zeros).
    String,
    /// As JSON numbers (`12.50`), for readers that keep decimals exact.
    Number,
}

/// Line ending of every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    #[default]
    /// `\n` (PostgreSQL's own).
    Lf,
    /// `\r\n`.
    Crlf,
}

/// Compression of the stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    /// A plain file.
    None,
    /// `.csv.gz` or `.jsonl.gz`: one gzip member per chunk (decoders read concatenated members as one stream).
    Gzip,
}
