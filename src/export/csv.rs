//! Reading one field back out of a CSV row (the key of a chunk's last row, to checkpoint it).
//!
//! The bytes of an export are PostgreSQL's own `COPY ... (FORMAT csv)` output; this module
//! only needs to find a field in one row, honouring quotes (doubled inside quoted fields).

use std::borrow::Cow;

/// The `index`-th field (0-based) of one CSV `row` (its line ending included or not), unquoted.
pub fn field(row: &[u8], index: usize, delimiter: u8, quote: u8) -> Option<Cow<'_, [u8]>> {
    let (mut current, mut start, mut in_quotes) = (0, 0, false);
    for (i, &b) in row.iter().enumerate() {
        if b == quote {
            in_quotes = !in_quotes;
        } else if !in_quotes && (b == delimiter || b == b'\n' || b == b'\r') {
            if current == index {
                return Some(unquote(&row[start..i], quote));
            }
            if b != delimiter {
                return None; // the record ended before field `index`
            }
            current += 1;
            start = i + 1;
        }
    }
    (current == index).then(|| unquote(&row[start..], quote))
}

fn unquote(raw: &[u8], quote: u8) -> Cow<'_, [u8]> {
    if raw.len() >= 2 && raw[0] == quote && raw[raw.len() - 1] == quote {
        let inner = &raw[1..raw.len() - 1];
        let doubled = [quote, quote];
        if inner.windows(2).any(|w| w == doubled) {
            let mut out = Vec::with_capacity(inner.len());
            let mut j = 0;
            while j < inner.len() {
                out.push(inner[j]);
                j += if inner[j] == quote { 2 } else { 1 };
            }
            return Cow::Owned(out);
        }
        return Cow::Borrowed(inner);
    }
    Cow::Borrowed(raw)
}

/// The key (an integer) in the `index`-th field of a row.
pub fn key(row: &[u8], index: usize) -> Option<i64> {
    let f = field(row, index, b',', b'"')?;
    std::str::from_utf8(&f).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(row: &str, i: usize) -> Option<String> {
        field(row.as_bytes(), i, b',', b'"').map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn plain_and_quoted_fields() {
        let row = "42,\"a,b\",\"say \"\"hi\"\"\",,\"\",\"l1\nl2\",last\n";
        assert_eq!(f(row, 0).as_deref(), Some("42"));
        assert_eq!(f(row, 1).as_deref(), Some("a,b"));
        assert_eq!(f(row, 2).as_deref(), Some("say \"hi\""));
        assert_eq!(f(row, 3).as_deref(), Some(""));
        assert_eq!(f(row, 4).as_deref(), Some(""));
        assert_eq!(f(row, 5).as_deref(), Some("l1\nl2"));
        assert_eq!(f(row, 6).as_deref(), Some("last"));
        assert_eq!(f(row, 7), None);
    }

    #[test]
    fn keys() {
        assert_eq!(key(b"9000009,x\n", 0), Some(9_000_009));
        assert_eq!(key(b"\"a,\"\"b\",-7\n", 1), Some(-7));
        assert_eq!(key(b"\"17\"\n", 0), Some(17));
        assert_eq!(key(b"x,y\n", 0), None);
    }
}
