//! CSV encoding that matches PostgreSQL's `COPY ... WITH (FORMAT csv)` byte for byte.
//!
//! Not csv-async: it writes NULL and the empty string the same way (an empty unquoted field),
//! while `COPY` writes `""` for the empty string, and we promise COPY's bytes. The rules, from
//! PostgreSQL's `CopyAttributeOutCSV`: NULL is the NULL text (empty) unquoted; a value is
//! quoted when it equals the NULL text, contains the delimiter, the quote, CR or LF, or is
//! `\.` alone in a one-column row; quotes inside are doubled. Records end with LF.

/// Encodes fields into a caller-owned buffer.
#[derive(Debug, Clone)]
pub struct CsvEncoder {
    delimiter: u8,
    quote: u8,
    null: Vec<u8>,
    single_column: bool,
}

impl CsvEncoder {
    /// `COPY`'s defaults: comma, double quote, empty NULL, LF.
    pub fn postgres_default(columns: usize) -> Self {
        Self { delimiter: b',', quote: b'"', null: Vec::new(), single_column: columns == 1 }
    }

    /// Appends one field; `first` is true for the first field of a record.
    #[inline]
    pub fn field(&self, out: &mut Vec<u8>, value: Option<&[u8]>, first: bool) {
        if !first {
            out.push(self.delimiter);
        }
        let Some(value) = value else {
            out.extend_from_slice(&self.null);
            return;
        };
        if self.needs_quotes(value) {
            out.push(self.quote);
            let mut start = 0;
            for (i, &b) in value.iter().enumerate() {
                if b == self.quote {
                    out.extend_from_slice(&value[start..=i]);
                    out.push(self.quote);
                    start = i + 1;
                }
            }
            out.extend_from_slice(&value[start..]);
            out.push(self.quote);
        } else {
            out.extend_from_slice(value);
        }
    }

    /// Ends a record.
    #[inline]
    pub fn end_record(&self, out: &mut Vec<u8>) {
        out.push(b'\n');
    }

    /// Appends a whole record of non-null values (the header).
    pub fn record<'a>(&self, out: &mut Vec<u8>, values: impl IntoIterator<Item = &'a str>) {
        for (i, v) in values.into_iter().enumerate() {
            self.field(out, Some(v.as_bytes()), i == 0);
        }
        self.end_record(out);
    }

    #[inline]
    fn needs_quotes(&self, value: &[u8]) -> bool {
        value == self.null.as_slice()
            || (self.single_column && value == b"\\.")
            || value.iter().any(|&b| b == self.delimiter || b == self.quote || b == b'\n' || b == b'\r')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&str>]) -> String {
        let enc = CsvEncoder::postgres_default(values.len());
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            enc.field(&mut out, v.map(str::as_bytes), i == 0);
        }
        enc.end_record(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn null_and_empty_differ() {
        assert_eq!(row(&[None, Some(""), Some("x")]), ",\"\",x\n");
    }

    #[test]
    fn quoting_rules() {
        assert_eq!(
            row(&[Some("a,b"), Some("say \"hi\""), Some("l1\nl2"), Some("cr\r")]),
            "\"a,b\",\"say \"\"hi\"\"\",\"l1\nl2\",\"cr\r\"\n"
        );
        // Spaces, tabs, backslashes and non-ASCII are not special in COPY's CSV.
        assert_eq!(
            row(&[Some(" padded "), Some("tab\there"), Some("back\\slash"), Some("Zürich 東京")]),
            " padded ,tab\there,back\\slash,Zürich 東京\n"
        );
    }

    #[test]
    fn end_of_data_marker_is_quoted_only_alone() {
        assert_eq!(row(&[Some("\\.")]), "\"\\.\"\n");
        assert_eq!(row(&[Some("\\."), Some("x")]), "\\.,x\n");
    }
}
