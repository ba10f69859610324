//! Dataset keys of any kind: the key's columns (integers, `uuid`, text in its collation's order,
//! dates and times, or several of them compared as a row) and a key value, each column's value
//! as PostgreSQL's text of it (what checkpoints, ranges and the API hold).

use serde::{Deserialize, Serialize};

/// The types a key column may have, by how its binary COPY form reads back as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `smallint`, `integer`, `bigint`.
    Integer,
    /// `uuid`.
    Uuid,
    /// `text`, `character varying`: ordered by the column's collation.
    Text,
    /// `timestamp with time zone`.
    Timestamptz,
    /// `timestamp without time zone`.
    Timestamp,
    /// `date`.
    Date,
}

impl KeyKind {
    /// The kind of a key column of this SQL type (`format_type`, modifier included), or None
    /// when such a column cannot be a key.
    pub fn of(sql_type: &str) -> Option<KeyKind> {
        // Without the modifier, wherever format_type puts it (`timestamp(3) with time zone`).
        let (mut base, mut depth) = (String::new(), 0);
        for c in sql_type.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => base.push(c),
                _ => {}
            }
        }
        let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
        Some(match base.as_str() {
            "smallint" | "integer" | "bigint" => KeyKind::Integer,
            "uuid" => KeyKind::Uuid,
            "text" | "character varying" => KeyKind::Text,
            "timestamp with time zone" => KeyKind::Timestamptz,
            "timestamp without time zone" => KeyKind::Timestamp,
            "date" => KeyKind::Date,
            _ => return None,
        })
    }

    /// The types a key may have, for messages.
    pub const ALLOWED: &str = "smallint, integer, bigint, uuid, text, varchar, timestamptz, timestamp or date";

    /// The text of a value from its binary COPY form, one PostgreSQL reads back as the same
    /// value (in any time zone: instants are written in UTC with their offset).
    pub fn text_of_binary(self, v: &[u8]) -> anyhow::Result<String> {
        use anyhow::bail;
        Ok(match self {
            KeyKind::Integer => match v.len() {
                2 => i16::from_be_bytes([v[0], v[1]]).to_string(),
                4 => i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string(),
                8 => i64::from_be_bytes(v.try_into()?).to_string(),
                n => bail!("an integer key of {n} bytes"),
            },
            KeyKind::Uuid => uuid::Uuid::from_slice(v)?.hyphenated().to_string(),
            KeyKind::Text => std::str::from_utf8(v)?.to_owned(),
            KeyKind::Timestamptz | KeyKind::Timestamp => {
                let micros = i64::from_be_bytes(v.try_into()?);
                match micros {
                    i64::MAX => "infinity".to_owned(),
                    i64::MIN => "-infinity".to_owned(),
                    // Microseconds since 2000-01-01 00:00:00 (UTC for timestamptz).
                    _ => {
                        let t = chrono::DateTime::from_timestamp_micros(micros.saturating_add(946_684_800_000_000))
                            .ok_or_else(|| anyhow::anyhow!("a timestamp out of range: {micros}"))?
                            .naive_utc();
                        let zone = if self == KeyKind::Timestamptz { "+00" } else { "" };
                        format!("{}{zone}{}", iso(t.date(), Some(t.time())), bc(t.date()))
                    }
                }
            }
            KeyKind::Date => {
                let days = i32::from_be_bytes(v.try_into()?);
                match days {
                    i32::MAX => "infinity".to_owned(),
                    i32::MIN => "-infinity".to_owned(),
                    _ => {
                        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date");
                        let d = epoch
                            .checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
                            .ok_or_else(|| anyhow::anyhow!("a date out of range: {days}"))?;
                        format!("{}{}", iso(d, None), bc(d))
                    }
                }
            }
        })
    }
}

/// `YYYY-MM-DD[ HH:MM:SS.ffffff]` with PostgreSQL's years (1 BC is year 0 in chrono).
fn iso(d: chrono::NaiveDate, t: Option<chrono::NaiveTime>) -> String {
    use chrono::Datelike as _;
    let year = if d.year() <= 0 { 1 - d.year() } else { d.year() };
    let date = format!("{year:04}-{:02}-{:02}", d.month(), d.day());
    match t {
        Some(t) => format!("{date} {}", t.format("%H:%M:%S%.6f")),
        None => date,
    }
}

fn bc(d: chrono::NaiveDate) -> &'static str {
    use chrono::Datelike as _;
    if d.year() <= 0 { " BC" } else { "" }
}

/// One column of a dataset's key.
#[derive(Debug, Clone)]
pub struct KeyColumn {
    /// Column name.
    pub name: String,
    /// The type key values are cast to in SQL (schema-qualified, no modifier).
    pub cast_type: String,
    /// How its values read back.
    pub kind: KeyKind,
}

/// A key value: each key column's value as text PostgreSQL reads back as the same value, in
/// key column order (`text[]` in the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key(pub Vec<String>);

impl sqlx::Type<sqlx::Postgres> for Key {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <Vec<String> as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <Vec<String> as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for Key {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <Vec<String> as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for Key {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Key(<Vec<String> as sqlx::Decode<sqlx::Postgres>>::decode(value)?))
    }
}

impl Key {
    /// A one-column integer key.
    pub fn int(v: i64) -> Key {
        Key(vec![v.to_string()])
    }

    /// The key as one integer, when it is a one-column integer key.
    pub fn as_int(&self) -> Option<i64> {
        match &self.0[..] {
            [one] => one.parse().ok(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0[..] {
            [one] => write!(f, "{one}"),
            many => write!(f, "({})", many.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: KeyKind, v: &[u8]) -> String {
        kind.text_of_binary(v).unwrap()
    }

    #[test]
    fn binary_values_read_back_as_postgresql_text() {
        assert_eq!(t(KeyKind::Integer, &(-7i16).to_be_bytes()), "-7");
        assert_eq!(t(KeyKind::Integer, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        let u = uuid::Uuid::parse_str("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        assert_eq!(t(KeyKind::Uuid, u.as_bytes()), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(t(KeyKind::Text, "é'\\".as_bytes()), "é'\\");
        assert_eq!(t(KeyKind::Timestamptz, &0i64.to_be_bytes()), "2000-01-01 00:00:00.000000+00");
        assert_eq!(t(KeyKind::Timestamp, &1i64.to_be_bytes()), "2000-01-01 00:00:00.000001");
        assert_eq!(t(KeyKind::Timestamptz, &i64::MAX.to_be_bytes()), "infinity");
        // As PostgreSQL says: select '0001-12-31 BC'::date - '2000-01-01'::date = -730120.
        assert_eq!(t(KeyKind::Date, &(-730_120i32).to_be_bytes()), "0001-12-31 BC");
        assert_eq!(t(KeyKind::Date, &(-1i32).to_be_bytes()), "1999-12-31");
        assert_eq!(t(KeyKind::Date, &i32::MIN.to_be_bytes()), "-infinity");
    }

    #[test]
    fn kinds_of_sql_types() {
        assert_eq!(KeyKind::of("character varying(20)"), Some(KeyKind::Text));
        assert_eq!(KeyKind::of("timestamp(3) with time zone"), Some(KeyKind::Timestamptz));
        assert_eq!(KeyKind::of("numeric(12,2)"), None);
    }
}
