//! JSON Lines rows from binary COPY rows: one object per row, keys in column order. Integers,
//! booleans, text and json are written here from their binary form; every other value arrives
//! as PostgreSQL's own JSON text of it (see [`JsonKind`]) and is copied as it is.

use anyhow::Context as _;

use crate::{
    export::binary::{self, KeyFields},
    model::{Dataset, ExportSpec, types::JsonKind},
};

/// How a run writes its rows as JSON Lines.
pub struct JsonLines {
    kinds: Vec<JsonKind>,
    /// Per column, what goes before its value: `{"name":` for the first, `,"name":` after.
    prefixes: Vec<Vec<u8>>,
    /// Fields COPY sends: the columns, then the key's columns not exported.
    fields: usize,
}

impl JsonLines {
    /// The writer of an export of `ds` with `spec`.
    pub fn new(ds: &Dataset, spec: &ExportSpec) -> Self {
        let columns = spec.output_columns(ds);
        let kinds: Vec<JsonKind> = columns
            .iter()
            .map(|c| JsonKind::of(ds.column(&c.name).map_or("text", |d| d.sql_type.as_str()), spec.format.decimals))
            .collect();
        let prefixes = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut p = vec![if i == 0 { b'{' } else { b',' }];
                string(c.header.as_bytes(), &mut p);
                p.push(b':');
                p
            })
            .collect();
        Self { fields: KeyFields::new(ds, spec, &columns).fields(), kinds, prefixes }
    }

    /// Appends the row in `message` (one CopyData message) as a line; false when the message
    /// holds no row (header, trailer).
    pub fn push(&self, message: &[u8], out: &mut Vec<u8>) -> anyhow::Result<bool> {
        let Some(mut fields) = binary::row(message, self.fields)? else { return Ok(false) };
        for i in 0..self.fields {
            let value = fields.next_field()?;
            let (Some(kind), Some(prefix)) = (self.kinds.get(i), self.prefixes.get(i)) else { continue };
            out.extend_from_slice(prefix);
            let Some(v) = value else {
                out.extend_from_slice(b"null");
                continue;
            };
            match kind {
                JsonKind::Int => {
                    let mut b = itoa::Buffer::new();
                    out.extend_from_slice(b.format(binary::integer(Some(v))?).as_bytes());
                }
                JsonKind::Bool => out.extend_from_slice(if v.first() == Some(&1) { b"true" } else { b"false" }),
                JsonKind::Text => string(v, out),
                // A json value keeps its text; line breaks in it can only be whitespace
                // (strings escape them), and a line of JSON Lines must not hold one.
                JsonKind::Json => out.extend(v.iter().map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })),
                JsonKind::Jsonb => {
                    let text = v.strip_prefix(&[1]).context("jsonb in an unknown binary version")?;
                    out.extend_from_slice(text);
                }
                JsonKind::Raw => out.extend_from_slice(v),
            }
        }
        out.extend_from_slice(b"}\n");
        Ok(true)
    }
}

/// Appends `text` (UTF-8) as a JSON string: quotes, backslashes and control characters
/// escaped, as PostgreSQL's JSON escapes them; everything else as it is.
fn string(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&text[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_escape_what_json_requires() {
        let mut out = Vec::new();
        super::string("a\"b\\c\nd\re\tf\u{1}g\u{8}é😀".as_bytes(), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#""a\"b\\c\nd\re\tf\u0001g\bé😀""#);
    }
}
