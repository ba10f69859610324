//! Parquet files: PostgreSQL column types mapped to Parquet's, COPY's binary rows decoded into
//! column buffers, each chunk encoded as one row group, and the footer over every row group,
//! rebuilt from the metadata saved with each checkpoint (a resumed run never reads its file back).
//!
//! A file is `PAR1`, the row groups one after the other, then the footer. Each row group is
//! encoded on its own as a one-row-group file in memory; its bytes between the magic and the
//! footer are appended to the run's file, and its footer (the row group's metadata, offsets
//! relative to that small file) is kept with the file offset it landed at. The last footer
//! lists them all, offsets moved to where each landed.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use parquet::{
    basic::{Compression as Codec, LogicalType, Repetition, TimeUnit, Type as Physical, ZstdLevel},
    data_type::{
        BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType, FloatType, Int32Type,
        Int64Type,
    },
    file::{
        metadata::{ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter, RowGroupMetaData, SortingColumn},
        properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr},
        writer::SerializedFileWriter,
    },
    schema::types::{Type, TypePtr},
};

pub use crate::model::types::{Kind, SavedRowGroup};
use crate::{
    export::binary,
    model::{Dataset, ExportSpec, KeyKind, spec::ParquetCodec},
};

/// The first (and last) four bytes of every Parquet file.
pub const MAGIC: &[u8; 4] = b"PAR1";

/// A chunk whose values take more than this in memory is cut into several row groups, so
/// memory stays flat whatever the chunk size and row width.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// Key ranges read at once share [`ROW_GROUP_BYTES`], each down to this much.
pub const MIN_ROW_GROUP_BYTES: usize = 4 << 20;

/// Days from 1970-01-01 (Parquet's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The Parquet field for a column named `name`.
fn field(kind: Kind, name: &str) -> anyhow::Result<TypePtr> {
    let (physical, logical, length) = match kind {
        Kind::Bool => (Physical::BOOLEAN, None, None),
        Kind::I16 => (Physical::INT32, Some(LogicalType::integer(16, true)), None),
        Kind::I32 => (Physical::INT32, None, None),
        Kind::I64 => (Physical::INT64, None, None),
        Kind::F32 => (Physical::FLOAT, None, None),
        Kind::F64 => (Physical::DOUBLE, None, None),
        Kind::Decimal { precision, scale } => {
            let logical = Some(LogicalType::decimal(i32::from(scale), i32::from(precision)));
            let ty = Type::primitive_type_builder(
                name,
                if precision <= 18 { Physical::INT64 } else { Physical::FIXED_LEN_BYTE_ARRAY },
            )
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .with_precision(i32::from(precision))
            .with_scale(i32::from(scale));
            let ty = if precision <= 18 { ty } else { ty.with_length(16) };
            return Ok(Arc::new(ty.build()?));
        }
        Kind::Text | Kind::AsText => (Physical::BYTE_ARRAY, Some(LogicalType::String), None),
        Kind::Json | Kind::Jsonb => (Physical::BYTE_ARRAY, Some(LogicalType::Json), None),
        Kind::Uuid => (Physical::FIXED_LEN_BYTE_ARRAY, Some(LogicalType::Uuid), Some(16)),
        Kind::Date => (Physical::INT32, Some(LogicalType::Date), None),
        Kind::Timestamp { utc } => (Physical::INT64, Some(LogicalType::timestamp(utc, TimeUnit::MICROS)), None),
        Kind::Bytes => (Physical::BYTE_ARRAY, None, None),
    };
    let mut ty =
        Type::primitive_type_builder(name, physical).with_repetition(Repetition::OPTIONAL).with_logical_type(logical);
    if let Some(length) = length {
        ty = ty.with_length(length);
    }
    Ok(Arc::new(ty.build()?))
}

/// What a run writes: the columns COPY sends (the file's, then the key when not exported),
/// the file's schema and the writer's settings.
#[derive(Debug)]
pub struct Layout {
    kinds: Vec<Kind>,
    names: Vec<String>,
    schema: TypePtr,
    props: WriterPropertiesPtr,
}

impl Layout {
    /// The layout of an export of `ds` with `spec`.
    pub fn new(ds: &Dataset, spec: &ExportSpec) -> anyhow::Result<Self> {
        let columns = spec.output_columns(ds);
        let (key_at, appended) = crate::db::dataset::key_positions(ds, spec, &columns);
        let mut kinds: Vec<Kind> =
            columns.iter().map(|c| ds.column(&c.name).map_or(Kind::AsText, |d| Kind::of(&d.sql_type))).collect();
        let names: Vec<String> = columns.iter().map(|c| c.header.clone()).collect();
        let fields = kinds.iter().zip(&names).map(|(k, n)| field(*k, n)).collect::<anyhow::Result<Vec<_>>>()?;
        let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
        // The key's columns not exported come after the file's (read for the key, not written).
        kinds.extend(std::iter::repeat_n(Kind::AsText, appended));
        let codec = match spec.format.codec {
            ParquetCodec::Zstd => Codec::ZSTD(ZstdLevel::try_new(1)?),
            ParquetCodec::Snappy => Codec::SNAPPY,
            ParquetCodec::None => Codec::UNCOMPRESSED,
        };
        // Sorted by the key, said when the key is in the file and orders as Parquet compares
        // (text in a collation's order may not: not said for text keys).
        let sorting = (appended == 0 && ds.key.iter().all(|k| k.kind != KeyKind::Text)).then(|| {
            key_at
                .iter()
                .map(|at| SortingColumn { column_idx: *at as i32, descending: false, nulls_first: false })
                .collect()
        });
        // Statistics per column chunk, no page indexes: those sit between the last row group
        // and the footer, where a file that grows row group by row group has no room for them.
        let props = WriterProperties::builder()
            .set_compression(codec)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .set_sorting_columns(sorting)
            .set_created_by(format!("exportd {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self { kinds, names, schema, props: Arc::new(props) })
    }

    /// The footer of a file holding `groups` (in file order), `len` + `PAR1` included.
    pub fn footer(&self, groups: &[SavedRowGroup]) -> anyhow::Result<Vec<u8>> {
        let (_, empty) = self.encode_file(&mut [])?;
        let file = ParquetMetaDataReader::decode_metadata(&empty)?.file_metadata().clone();
        let mut row_groups = Vec::with_capacity(groups.len());
        for (ordinal, g) in groups.iter().enumerate() {
            row_groups.push(placed(g, ordinal)?);
        }
        let metadata = ParquetMetaData::new(file, row_groups);
        let mut out = Vec::new();
        ParquetMetaDataWriter::new(&mut out, &metadata).with_preserve_page_index_locations(false).finish()?;
        Ok(out)
    }

    /// A one-row-group file of `columns` (none: no row group), split into the row group's
    /// bytes (after the magic, before the footer) and the footer's metadata.
    fn encode_file(&self, columns: &mut [ColumnBuf]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let capacity = columns.iter().map(ColumnBuf::size_hint).sum::<usize>() + 4096;
        let mut w = SerializedFileWriter::new(Vec::with_capacity(capacity), self.schema.clone(), self.props.clone())?;
        if !columns.is_empty() {
            let mut rg = w.next_row_group()?;
            let mut i = 0;
            while let Some(mut col) = rg.next_column()? {
                let buf = &mut columns[i];
                let defs = Some(buf.defs.as_slice());
                match &buf.values {
                    Values::Bool(v) => col.typed::<BoolType>().write_batch(v, defs, None)?,
                    Values::I32(v) => col.typed::<Int32Type>().write_batch(v, defs, None)?,
                    Values::I64(v) => col.typed::<Int64Type>().write_batch(v, defs, None)?,
                    Values::F32(v) => col.typed::<FloatType>().write_batch(v, defs, None)?,
                    Values::F64(v) => col.typed::<DoubleType>().write_batch(v, defs, None)?,
                    Values::Bytes(v) => col.typed::<ByteArrayType>().write_batch(v, defs, None)?,
                    Values::Fixed(v) => col.typed::<FixedLenByteArrayType>().write_batch(v, defs, None)?,
                };
                col.close()?;
                i += 1;
            }
            rg.close()?;
        }
        let file = w.into_inner()?;
        let n = file.len();
        let meta_len = u32::from_le_bytes(file[n - 8..n - 4].try_into().expect("4 bytes")) as usize;
        let meta_start = n - 8 - meta_len;
        Ok((file[MAGIC.len()..meta_start].to_vec(), file[meta_start..n - 8].to_vec()))
    }
}

/// A saved row group's metadata with offsets where it landed in the file, as the `ordinal`-th.
fn placed(g: &SavedRowGroup, ordinal: usize) -> anyhow::Result<RowGroupMetaData> {
    let md = ParquetMetaDataReader::decode_metadata(&g.footer).context("reading a saved row group")?;
    let rg = md.row_groups().first().context("a saved row group's metadata lists none")?.clone();
    let shift = g.base - MAGIC.len() as i64;
    let columns = rg
        .columns()
        .iter()
        .map(|c| {
            c.clone()
                .into_builder()
                .set_data_page_offset(c.data_page_offset() + shift)
                .set_dictionary_page_offset(c.dictionary_page_offset().map(|o| o + shift))
                .set_index_page_offset(c.index_page_offset().map(|o| o + shift))
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let offset = rg.file_offset().map(|o| o + shift);
    let mut b = rg.into_builder().set_column_metadata(columns).set_ordinal(ordinal as i16 as _);
    if let Some(o) = offset {
        b = b.set_file_offset(o);
    }
    Ok(b.build()?)
}

/// One chunk encoded: the row group's bytes (to append) and its metadata (to save).
pub struct EncodedRowGroup {
    /// The row group's bytes.
    pub bytes: Vec<u8>,
    /// Its metadata, as the footer of a file holding only it.
    pub footer: Vec<u8>,
}

/// Values of one column of a row group, as the column writer takes them.
enum Values {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

/// A column's values and definition levels (0: NULL).
struct ColumnBuf {
    values: Values,
    defs: Vec<i16>,
    /// Bytes of variable-length values held (capacity hint for the encoder's output).
    bytes: usize,
}

impl ColumnBuf {
    fn new(kind: Kind) -> Self {
        let values = match kind {
            Kind::Bool => Values::Bool(Vec::new()),
            Kind::I16 | Kind::I32 | Kind::Date => Values::I32(Vec::new()),
            Kind::I64 | Kind::Timestamp { .. } => Values::I64(Vec::new()),
            Kind::Decimal { precision, .. } if precision <= 18 => Values::I64(Vec::new()),
            Kind::Decimal { .. } | Kind::Uuid => Values::Fixed(Vec::new()),
            Kind::F32 => Values::F32(Vec::new()),
            Kind::F64 => Values::F64(Vec::new()),
            Kind::Text | Kind::Json | Kind::Jsonb | Kind::Bytes | Kind::AsText => Values::Bytes(Vec::new()),
        };
        Self { values, defs: Vec::new(), bytes: 0 }
    }

    fn size_hint(&self) -> usize {
        self.bytes + self.defs.len() * 8
    }
}

/// The rows of the chunk being read, by column.
pub struct RowGroup {
    layout: Arc<Layout>,
    columns: Vec<ColumnBuf>,
}

impl RowGroup {
    /// An empty row group of `layout`.
    pub fn new(layout: Arc<Layout>) -> Self {
        let columns = layout.kinds.iter().take(layout.names.len()).map(|k| ColumnBuf::new(*k)).collect();
        Self { layout, columns }
    }

    /// Takes one CopyData message of `COPY ... (FORMAT binary)`: one row, possibly after the
    /// header (first message) or the trailer alone (last). Returns whether it held a row.
    pub fn push(&mut self, message: &Bytes) -> anyhow::Result<bool> {
        let Some(mut fields) = binary::row(message, self.layout.kinds.len())? else { return Ok(false) };
        for (i, kind) in self.layout.kinds.iter().enumerate() {
            // A value's bytes stay where they are: the row group holds slices of the message.
            let value = fields.next_field()?.map(|v| message.slice_ref(v));
            if let Some(col) = self.columns.get_mut(i) {
                push_value(col, *kind, value).with_context(|| format!("column {:?}", self.layout.names[i]))?;
            }
        }
        Ok(true)
    }

    /// No row pushed yet.
    pub fn is_empty(&self) -> bool {
        self.columns.first().is_none_or(|c| c.defs.is_empty())
    }

    /// Encodes the rows pushed as one row group (CPU work: call off the async threads).
    pub fn encode(mut self) -> anyhow::Result<EncodedRowGroup> {
        let (bytes, footer) = self.layout.encode_file(&mut self.columns)?;
        Ok(EncodedRowGroup { bytes, footer })
    }

    /// About how many bytes the values pushed take (variable-length ones by their size, the
    /// others at 8 bytes plus a level each).
    pub fn held_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.bytes + c.defs.len() * 10).sum()
    }
}

/// Appends one value (None: NULL) of a column of `kind`, from its binary form.
fn push_value(col: &mut ColumnBuf, kind: Kind, value: Option<Bytes>) -> anyhow::Result<()> {
    let Some(v) = value else {
        col.defs.push(0);
        return Ok(());
    };
    col.defs.push(1);
    match (&mut col.values, kind) {
        (Values::Bool(out), _) => out.push(v.first().is_some_and(|b| *b != 0)),
        (Values::I32(out), Kind::I16) => out.push(i32::from(i16::from_be_bytes(v[..].try_into()?))),
        (Values::I32(out), Kind::Date) => {
            let days = i32::from_be_bytes(v[..].try_into()?);
            // ±infinity stay the largest and smallest INT32 (DuckDB reads them back as infinity).
            out.push(if days == i32::MAX || days == i32::MIN { days } else { days + PG_EPOCH_DAYS });
        }
        (Values::I32(out), _) => out.push(i32::from_be_bytes(v[..].try_into()?)),
        (Values::I64(out), Kind::Timestamp { .. }) => {
            let micros = i64::from_be_bytes(v[..].try_into()?);
            out.push(if micros == i64::MAX || micros == i64::MIN { micros } else { micros + PG_EPOCH_MICROS });
        }
        (Values::I64(out), Kind::Decimal { precision, scale }) => {
            let unscaled = numeric(&v, scale).with_context(|| format!("as DECIMAL({precision},{scale})"))?;
            out.push(i64::try_from(unscaled).context("out of range")?);
        }
        (Values::I64(out), _) => out.push(i64::from_be_bytes(v[..].try_into()?)),
        (Values::F32(out), _) => out.push(f32::from_be_bytes(v[..].try_into()?)),
        (Values::F64(out), _) => out.push(f64::from_be_bytes(v[..].try_into()?)),
        (Values::Fixed(out), Kind::Decimal { precision, scale }) => {
            let unscaled = numeric(&v, scale).with_context(|| format!("as DECIMAL({precision},{scale})"))?;
            out.push(FixedLenByteArray::from(unscaled.to_be_bytes().to_vec()));
        }
        (Values::Fixed(out), _) => {
            anyhow::ensure!(v.len() == 16, "a uuid of {} bytes", v.len());
            out.push(FixedLenByteArray::from(ByteArray::from(v)));
        }
        (Values::Bytes(out), Kind::Jsonb) => {
            anyhow::ensure!(v.first() == Some(&1), "jsonb in an unknown binary version");
            col.bytes += v.len();
            out.push(ByteArray::from(v.slice(1..)));
        }
        (Values::Bytes(out), _) => {
            col.bytes += v.len();
            out.push(ByteArray::from(v));
        }
    }
    Ok(())
}

/// A `numeric` in PostgreSQL's binary form (base-10000 digits) as an integer at `scale`.
fn numeric(v: &[u8], scale: u8) -> anyhow::Result<i128> {
    let word = |i: usize| -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(v.get(i * 2..i * 2 + 2).context("a truncated numeric")?.try_into()?))
    };
    let (ndigits, weight, sign) = (word(0)? as usize, i32::from(word(1)?), word(2)? as u16);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => bail!("NaN has no DECIMAL value"),
        _ => bail!("infinity has no DECIMAL value"),
    }
    // Digit i counts 10000^(weight - i); the result counts 10^-scale. Digits below the scale
    // must be zeros (PostgreSQL rounds to the column's scale, so they are).
    let mut value: i128 = 0;
    for i in 0..ndigits {
        let digit = i128::from(word(4 + i)?);
        let exp = 4 * (weight - i as i32) + i32::from(scale);
        let part = if exp >= 0 {
            10i128.checked_pow(exp as u32).and_then(|p| digit.checked_mul(p)).context("too many digits")?
        } else {
            let p = 10i128.checked_pow((-exp) as u32).unwrap_or(i128::MAX);
            anyhow::ensure!(digit % p == 0, "more decimal places than the scale");
            digit / p
        };
        value = value.checked_add(part).context("too many digits")?;
    }
    Ok(if sign == 0x4000 { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale].iter().chain(digits) {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_at_a_scale() {
        // 3.75: weight 0, digits [3, 7500]
        assert_eq!(numeric(&numeric_bytes(2, 0, 0, 2, &[3, 7500]), 2).unwrap(), 375);
        // -12345678.9 at scale 3
        assert_eq!(numeric(&numeric_bytes(3, 1, 0x4000, 1, &[1234, 5678, 9000]), 3).unwrap(), -12_345_678_900);
        // 0
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, 2, &[]), 2).unwrap(), 0);
        // 38 digits: 28 before the point, 10 after (10 base-10000 digits, the last one padded)
        let digits = [1234, 5678, 9012, 3456, 7890, 1234, 5678, 123, 4567, 8900];
        assert_eq!(
            numeric(&numeric_bytes(10, 6, 0, 10, &digits), 10).unwrap(),
            12_345_678_901_234_567_890_123_456_780_123_456_789
        );
        // 20000 (weight 1, one digit 2)
        assert_eq!(numeric(&numeric_bytes(1, 1, 0, 0, &[2]), 0).unwrap(), 20_000);
        assert!(numeric(&numeric_bytes(0, 0, 0xC000, 0, &[]), 2).is_err());
    }
}
