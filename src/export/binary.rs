//! PostgreSQL's binary COPY rows (`COPY ... TO STDOUT (FORMAT binary)`), one CopyData message
//! each: the signature and header before the first row, a trailer after the last.

use anyhow::{Context as _, bail};

use crate::model::{Dataset, ExportSpec, Key, KeyKind, spec::OutputColumn};

/// The signature starting COPY's binary output (then 4 bytes of flags and 4 of extension length).
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = 19;

/// The fields of the row in `message` (None: the header alone or the trailer, no row), each
/// None for NULL; fails unless the row has `expected` fields.
pub fn row(message: &[u8], expected: usize) -> anyhow::Result<Option<Fields<'_>>> {
    let at = if message.starts_with(SIGNATURE) { HEADER_LEN } else { 0 };
    let rest = &message[at..];
    if rest.is_empty() || rest == [0xff, 0xff] {
        return Ok(None);
    }
    let mut fields = Fields { buf: message, at, left: 0 };
    let n = fields.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))?;
    if n as usize != expected {
        bail!("COPY sent {n} fields, {expected} expected");
    }
    fields.left = expected;
    Ok(Some(fields))
}

/// A row's fields, in order.
pub struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let b = self.buf.get(self.at..self.at + n).context("a truncated row")?;
        self.at += n;
        Ok(b)
    }

    /// The next field (None: NULL), a slice of the row.
    pub fn next_field(&mut self) -> anyhow::Result<Option<&'a [u8]>> {
        anyhow::ensure!(self.left > 0, "no field left in the row");
        self.left -= 1;
        let len = self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
        if len < 0 { Ok(None) } else { self.take(len as usize).map(Some) }
    }
}

/// Where the key's fields are in the rows of a chunk query, and how each reads back from its
/// binary form.
#[derive(Debug, Clone)]
pub struct KeyFields {
    /// Fields per row: the output columns, then the key columns not exported.
    fields: usize,
    /// Each key column's field and kind, in key order.
    at: Vec<(usize, KeyKind)>,
}

impl KeyFields {
    /// The key's fields in rows of `columns` of an export of `ds` with `spec`.
    pub fn new(ds: &Dataset, spec: &ExportSpec, columns: &[OutputColumn]) -> Self {
        let (positions, appended) = crate::db::dataset::key_positions(ds, spec, columns);
        Self {
            fields: columns.len() + appended,
            at: positions.into_iter().zip(ds.key.iter().map(|k| k.kind)).collect(),
        }
    }

    /// Fields per row.
    pub fn fields(&self) -> usize {
        self.fields
    }

    /// Each key column's field, in key order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.at.iter().map(|(at, _)| *at)
    }

    /// The key of the row in `message` (None: no row in it).
    pub fn key(&self, message: &[u8]) -> anyhow::Result<Option<Key>> {
        let Some(mut fields) = row(message, self.fields)? else { return Ok(None) };
        let mut values = vec![String::new(); self.at.len()];
        for i in 0..self.fields {
            let value = fields.next_field()?;
            for (j, (at, kind)) in self.at.iter().enumerate() {
                if *at == i {
                    values[j] = kind.text_of_binary(value.context("a key column is NULL")?)?;
                }
            }
        }
        Ok(Some(Key(values)))
    }
}

/// An integer (smallint, integer or bigint) in its binary form.
pub fn integer(v: Option<&[u8]>) -> anyhow::Result<i64> {
    let v = v.context("a NULL where an integer was expected")?;
    Ok(match v.len() {
        2 => i64::from(i16::from_be_bytes([v[0], v[1]])),
        4 => i64::from(i32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        8 => i64::from_be_bytes(v[..].try_into()?),
        n => bail!("a key of {n} bytes"),
    })
}
