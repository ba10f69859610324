//! Rows as COPY wrote them: reading the key back out (to checkpoint it), and the few changes
//! COPY cannot make itself (CRLF line endings, the formula guard, cutting off the key's
//! columns appended when they are not exported).
//!
//! The bytes of an export are PostgreSQL's own `COPY ... (FORMAT csv)` output, one row per
//! CopyData message, always ending in LF; quotes are doubled inside quoted fields.

use std::borrow::Cow;

use crate::model::Key;

/// The `index`-th field (0-based) of one CSV `row` (its line ending included or not), unquoted.
pub fn field(row: &[u8], index: usize, delimiter: u8, quote: u8) -> Option<Cow<'_, [u8]>> {
    field_span(row, index, delimiter, quote).map(|span| unquote(&row[span], quote))
}

/// Where the `index`-th field of a row is, its quotes included.
fn field_span(row: &[u8], index: usize, delimiter: u8, quote: u8) -> Option<std::ops::Range<usize>> {
    let (mut current, mut start, mut in_quotes) = (0, 0, false);
    for (i, &b) in row.iter().enumerate() {
        if b == quote {
            in_quotes = !in_quotes;
        } else if !in_quotes && (b == delimiter || b == b'\n' || b == b'\r') {
            if current == index {
                return Some(start..i);
            }
            if b != delimiter {
                return None; // the record ended before field `index`
            }
            current += 1;
            start = i + 1;
        }
    }
    (current == index).then_some(start..row.len())
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

/// The key in the fields at `positions` of a row: each field's text, unquoted (COPY writes a
/// value's text, quoted when it holds a delimiter, quote or line break).
pub fn key(row: &[u8], positions: impl IntoIterator<Item = usize>, delimiter: u8) -> Option<Key> {
    positions
        .into_iter()
        .map(|i| field(row, i, delimiter, b'"').and_then(|f| String::from_utf8(f.into_owned()).ok()))
        .collect::<Option<Vec<_>>>()
        .map(Key)
}

/// First characters that make a spreadsheet read a cell as a formula (OWASP).
const FORMULA_TRIGGERS: &[u8] = b"=+-@\t\r";

/// Turns a row as COPY wrote it into the row of the file.
#[derive(Debug, Clone)]
pub struct RowShaper {
    delimiter: u8,
    /// Fields of the file's rows: those after them (key columns not exported) are cut off.
    keep: usize,
    /// Fields cut off the end of each row.
    cut: usize,
    crlf: bool,
    /// Per output column: whether the formula guard applies (None = guard off).
    guard: Option<Vec<bool>>,
    /// How NULL is written: an unquoted field equal to it is a NULL, never guarded.
    null: Vec<u8>,
}

impl RowShaper {
    /// A shaper for rows with this delimiter that keeps the first `keep` fields and cuts `cut`
    /// after them (appended key columns); `crlf` ends lines with CR LF, `guard` marks the
    /// columns the formula guard applies to, `null` is the NULL text.
    pub fn new(delimiter: u8, keep: usize, cut: usize, crlf: bool, guard: Option<Vec<bool>>, null: &str) -> Self {
        Self { delimiter, keep, cut, crlf, guard, null: null.as_bytes().to_vec() }
    }

    /// Whether rows go to the file exactly as COPY wrote them.
    pub fn is_identity(&self) -> bool {
        self.cut == 0 && !self.crlf && self.guard.is_none()
    }

    /// Appends the shaped `row` (one CopyData message) to `out`. In the header row every cell
    /// is guarded; in data rows the columns marked so.
    pub fn shape(&self, row: &[u8], header: bool, out: &mut Vec<u8>) {
        let mut body = row.strip_suffix(b"\n").unwrap_or(row);
        if self.cut > 0 {
            body = &body[..self.kept_len(body)];
        }
        match &self.guard {
            None => out.extend_from_slice(body),
            Some(columns) => self.guard_row(body, |i| header || columns.get(i).copied().unwrap_or(false), out),
        }
        out.extend_from_slice(if self.crlf { b"\r\n" } else { b"\n" });
    }

    /// Where the fields cut off begin in `body` (at the delimiter before them). Unquoted fields
    /// hold no delimiter (COPY quotes those that do) and never end in a quote, so while the
    /// last fields are unquoted the delimiters before them are the last ones; else the row is
    /// read from the start.
    fn kept_len(&self, body: &[u8]) -> usize {
        let mut end = body.len();
        for _ in 0..self.cut {
            if body[..end].last() == Some(&b'"') {
                // The first field cut off starts right after the delimiter that ends the kept.
                return field_span(body, self.keep, self.delimiter, b'"').map_or(body.len(), |s| s.start - 1);
            }
            end = body[..end].iter().rposition(|b| *b == self.delimiter).unwrap_or(0);
        }
        end
    }

    /// Copies `body`, putting a `'` before the content of each guarded cell that starts with a
    /// trigger, inside its quotes if it has them: the result is what COPY would write for
    /// `'` followed by the value, so the cell reads as text and keeps its value visible.
    fn guard_row(&self, body: &[u8], guarded: impl Fn(usize) -> bool, out: &mut Vec<u8>) {
        let (mut index, mut in_quotes, mut field_start) = (0usize, false, true);
        for (i, &b) in body.iter().enumerate() {
            if field_start {
                field_start = false;
                if guarded(index) {
                    match self.guard_at(&body[i..]) {
                        Some(Guard::Before) => out.push(b'\''),
                        Some(Guard::AfterQuote) => {
                            out.extend_from_slice(b"\"'");
                            in_quotes = true;
                            continue;
                        }
                        None => {}
                    }
                }
            }
            if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == self.delimiter && !in_quotes {
                index += 1;
                field_start = true;
            }
            out.push(b);
        }
    }

    /// Whether the cell that starts `rest` needs the guard's `'`, and where.
    fn guard_at(&self, rest: &[u8]) -> Option<Guard> {
        match rest.first()? {
            b'"' => rest.get(1).is_some_and(|c| FORMULA_TRIGGERS.contains(c)).then_some(Guard::AfterQuote),
            c if FORMULA_TRIGGERS.contains(c) => {
                let end = rest.iter().position(|b| *b == self.delimiter).unwrap_or(rest.len());
                // An unquoted cell equal to the NULL text is a NULL, not text.
                (rest[..end] != self.null[..]).then_some(Guard::Before)
            }
            _ => None,
        }
    }
}

enum Guard {
    Before,
    AfterQuote,
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

    fn k(v: &[&str]) -> Option<Key> {
        Some(Key(v.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn keys() {
        assert_eq!(key(b"9000009,x\n", [0], b','), k(&["9000009"]));
        assert_eq!(key(b"\"a,\"\"b\",-7\n", [1], b','), k(&["-7"]));
        assert_eq!(key(b"\"17\"\n", [0], b','), k(&["17"]));
        assert_eq!(key(b"x;\"3\"\n", [1], b';'), k(&["3"]));
        assert_eq!(key(b"x,\"a,\"\"b\"\n", [1, 0], b','), k(&["a,\"b", "x"]));
        assert_eq!(key(b"x\n", [1], b','), None);
    }

    fn shaped(shaper: &RowShaper, row: &str, header: bool) -> String {
        let mut out = Vec::new();
        shaper.shape(row.as_bytes(), header, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formula_guard_quoted_unquoted_null_and_crlf() {
        let s = RowShaper::new(b',', 5, 0, true, Some(vec![true, true, false, true, true]), "-");
        assert_eq!(shaped(&s, "=1+2,\"-a,b\",-5,-,\"-\"\n", false), "'=1+2,\"'-a,b\",-5,-,\"'-\"\r\n");
        assert_eq!(shaped(&s, "@x,\"\"\"q\",+1,,\n", false), "'@x,\"\"\"q\",+1,,\r\n");
        assert_eq!(shaped(&s, "a,=b,c\n", true), "a,'=b,c\r\n");
        let cut = RowShaper::new(b'\t', 2, 1, false, None, "");
        assert_eq!(shaped(&cut, "a\t\"b\tc\"\t42\n", false), "a\t\"b\tc\"\n");
        // Appended text keys, quoted, holding the delimiter and quotes: read from the start.
        let cut2 = RowShaper::new(b',', 1, 2, false, None, "");
        assert_eq!(shaped(&cut2, "\"x,y\",\"k,\"\"1\",7\n", false), "\"x,y\"\n");
        assert_eq!(shaped(&cut2, "\"x,y\",k,7\n", false), "\"x,y\"\n");
        assert_eq!(shaped(&cut2, "a,7,\"k,2\"\n", false), "a\n");
    }
}
