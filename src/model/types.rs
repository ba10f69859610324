//! How each PostgreSQL column type is written in the typed formats: a Parquet type ([`Kind`]),
//! a JSON Lines value ([`JsonKind`]), and the Parquet row groups a checkpoint covers (saved
//! with it). The encoding itself is `export::parquet`'s and `export::jsonl`'s.

use super::spec::Decimals;

/// How one column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BOOLEAN.
    Bool,
    /// INT32 with INT(16): `smallint`.
    I16,
    /// INT32: `integer`.
    I32,
    /// INT64: `bigint`.
    I64,
    /// FLOAT: `real`.
    F32,
    /// DOUBLE: `double precision`.
    F64,
    /// DECIMAL(precision, scale) in an INT64 (precision up to 18) or a 16-byte FIXED_LEN_BYTE_ARRAY.
    Decimal {
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// BYTE_ARRAY with STRING: text types.
    Text,
    /// BYTE_ARRAY with JSON: `json`.
    Json,
    /// BYTE_ARRAY with JSON: `jsonb` (its binary form is a version byte before the text).
    Jsonb,
    /// FIXED_LEN_BYTE_ARRAY(16) with UUID.
    Uuid,
    /// INT32 with DATE (days since 1970-01-01).
    Date,
    /// INT64 with TIMESTAMP(MICROS), adjusted to UTC (`timestamptz`) or not (`timestamp`).
    Timestamp {
        /// `timestamptz`: an instant (adjusted to UTC); else a local date and time.
        utc: bool,
    },
    /// BYTE_ARRAY: `bytea`.
    Bytes,
    /// Any other type (intervals, arrays, `numeric` without a declared precision, ...):
    /// PostgreSQL's text for it, as STRING.
    AsText,
}

impl Kind {
    /// The kind for a column of this SQL type (as `format_type` shows it).
    pub fn of(sql_type: &str) -> Kind {
        match sql_type {
            "boolean" => Kind::Bool,
            "smallint" => Kind::I16,
            "integer" => Kind::I32,
            "bigint" => Kind::I64,
            "real" => Kind::F32,
            "double precision" => Kind::F64,
            "text" | "name" => Kind::Text,
            "json" => Kind::Json,
            "jsonb" => Kind::Jsonb,
            "uuid" => Kind::Uuid,
            "date" => Kind::Date,
            "timestamp with time zone" => Kind::Timestamp { utc: true },
            "timestamp without time zone" => Kind::Timestamp { utc: false },
            "bytea" => Kind::Bytes,
            t if t.starts_with("character") => Kind::Text,
            t if t.starts_with("numeric(") => decimal(t).unwrap_or(Kind::AsText),
            _ => Kind::AsText,
        }
    }

    /// Whether the chunk query must send PostgreSQL's text for the column (`::text`).
    pub fn cast_to_text(self) -> bool {
        self == Kind::AsText
    }
}

/// `numeric(p,s)` with a precision Parquet's DECIMAL holds (up to 38).
fn decimal(sql_type: &str) -> Option<Kind> {
    let inner = sql_type.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    let (precision, scale): (u8, i32) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
    // PostgreSQL 15 allows a negative scale or one above the precision; Parquet does not.
    (precision <= 38 && (0..=i32::from(precision)).contains(&scale))
        .then_some(Kind::Decimal { precision, scale: scale as u8 })
}

/// A row group in the run's file: where its bytes start and its metadata, as encoded alone
/// (offsets counted from that small file's start). Saved with the checkpoint that covers it.
#[derive(Debug, Clone)]
pub struct SavedRowGroup {
    /// File offset of its first byte.
    pub base: i64,
    /// The one-row-group footer's metadata (Thrift).
    pub footer: Vec<u8>,
}

/// How a column's value is written in JSON Lines: the simple types from their binary form, by
/// exportd; every other value as PostgreSQL's own JSON of it (`to_json(value)::text`:
/// timestamps RFC 3339 in the session's time zone, floats with `NaN` as a string, arrays,
/// dates, intervals, ...), so no rendering rule of PostgreSQL's has to be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    /// `smallint`, `integer`, `bigint`: a number.
    Int,
    /// `boolean`.
    Bool,
    /// Text types (and `numeric` as text under `decimals: string`): a JSON string.
    Text,
    /// `json`: nested as it is (its line breaks, whitespace, made spaces).
    Json,
    /// `jsonb`: nested (its binary form is a version byte before the text).
    Jsonb,
    /// PostgreSQL's JSON text of the value, written as it is.
    Raw,
}

impl JsonKind {
    /// The kind for a column of this SQL type.
    pub fn of(sql_type: &str, decimals: Decimals) -> JsonKind {
        if sql_type.starts_with("numeric") {
            return if decimals == Decimals::String { JsonKind::Text } else { JsonKind::Raw };
        }
        match Kind::of(sql_type) {
            Kind::I16 | Kind::I32 | Kind::I64 => JsonKind::Int,
            Kind::Bool => JsonKind::Bool,
            Kind::Text => JsonKind::Text,
            Kind::Json => JsonKind::Json,
            Kind::Jsonb => JsonKind::Jsonb,
            _ => JsonKind::Raw,
        }
    }

    /// The chunk query's expression for `column` (an SQL expression such as `t."amount"`).
    pub fn select(self, column: &str, sql_type: &str) -> String {
        match self {
            JsonKind::Text if !Kind::of(sql_type).eq(&Kind::Text) => format!("{column}::text"),
            JsonKind::Raw => format!("to_json({column})::text"),
            _ => column.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_sql_types() {
        assert_eq!(Kind::of("numeric(12,2)"), Kind::Decimal { precision: 12, scale: 2 });
        assert_eq!(Kind::of("numeric(38,0)"), Kind::Decimal { precision: 38, scale: 0 });
        assert_eq!(Kind::of("numeric"), Kind::AsText);
        assert_eq!(Kind::of("numeric(5,-2)"), Kind::AsText);
        assert_eq!(Kind::of("character(2)"), Kind::Text);
        assert_eq!(Kind::of("interval"), Kind::AsText);
    }
}
