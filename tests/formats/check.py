"""Reads an exported JSON Lines or Parquet file with an independent reader (Python's json,
Apache Arrow's Parquet reader, DuckDB) and compares every value with PostgreSQL's own text for
the same rows (a `COPY ... (FORMAT csv, HEADER, NULL 'NULL-7f3a')` of them, TimeZone UTC).

    check.py jsonl|parquet FILE REFERENCE.csv TYPES.json

TYPES.json lists each column's SQL type (format_type) in file order. Prints `ok N rows` or the
first difference (and exits 1). For Parquet it also checks the schema's logical types and that
DuckDB reads the same row count and key order.
"""

import csv
import datetime as dt
import decimal
import gzip
import json
import math
import re
import struct
import sys
import uuid

NULL = "NULL-7f3a"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")

csv.field_size_limit(1 << 30)


def fail(msg):
    print(msg)
    sys.exit(1)


def pg_timestamp(text, tz):
    """PostgreSQL's ISO text of a timestamp(tz) as microseconds since 1970 (UTC for tz)."""
    if text == "infinity":
        return (1 << 63) - 1
    if text == "-infinity":
        return -(1 << 63)
    bc = text.endswith(" BC")
    if bc:
        fail(f"BC timestamps are not in the test data: {text}")
    if tz:
        text = re.sub(r"([+-]\d{2})$", r"\1:00", text)
        value = dt.datetime.fromisoformat(text)
        return (value - EPOCH) // dt.timedelta(microseconds=1)
    value = dt.datetime.fromisoformat(text)
    return (value - EPOCH.replace(tzinfo=None)) // dt.timedelta(microseconds=1)


def pg_date(text):
    if text == "infinity":
        return (1 << 31) - 1
    if text == "-infinity":
        return -(1 << 31)
    return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days


def float_equal(text, value, single):
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    expected = special.get(text)
    if expected is None:
        expected = float(text)
        if single:
            expected = struct.unpack("f", struct.pack("f", expected))[0]
    if math.isnan(expected):
        return isinstance(value, float) and math.isnan(value)
    if single:  # a real's shortest text, read as a double, is the real once rounded to one
        value = struct.unpack("f", struct.pack("f", value))[0]
    return value == expected


def same_jsonl(ty, text, value):
    """One JSON Lines value against PostgreSQL's text."""
    if text is None:
        return value is None
    if ty in ("smallint", "integer", "bigint"):
        return type(value) is int and value == int(text)
    if ty in ("real", "double precision"):
        if text in ("NaN", "Infinity", "-Infinity"):
            return value == text  # JSON has no such numbers: PostgreSQL writes strings
        return isinstance(value, (int, float)) and float_equal(text, float(value), ty == "real")
    if ty.startswith("numeric"):
        if DECIMALS == "number" and text not in ("NaN", "Infinity", "-Infinity"):
            return isinstance(value, (int, float, decimal.Decimal)) and decimal.Decimal(str(value)) == decimal.Decimal(text)
        return value == text
    if ty == "boolean":
        return value is (text == "t")
    if ty in ("json", "jsonb"):
        return value == json.loads(text)
    if ty == "timestamp with time zone":
        if text in ("infinity", "-infinity"):
            return value == text
        return bool(RFC3339.match(value)) and pg_timestamp(text, True) == (
            dt.datetime.fromisoformat(value) - EPOCH) // dt.timedelta(microseconds=1)
    if ty == "timestamp without time zone":
        if text in ("infinity", "-infinity"):
            return value == text
        return pg_timestamp(text, False) == pg_timestamp(value.replace("T", " "), False)
    if ty.endswith("[]"):
        return isinstance(value, list) and "{" + ",".join("NULL" if v is None else str(v) for v in value) + "}" == text
    return value == text  # text types, date, uuid, bytea (as \x...), interval, ...


def same_parquet(ty, text, value):
    """One Parquet value (as pyarrow gives it; dates and timestamps as integers) against PostgreSQL's text."""
    if text is None:
        return value is None
    if ty in ("smallint", "integer", "bigint"):
        return value == int(text)
    if ty in ("real", "double precision"):
        return float_equal(text, value, ty == "real")
    if ty.startswith("numeric(") and "," in ty or re.match(r"^numeric\(\d+\)$", ty):
        want = decimal.Decimal(text)  # same value and the same scale (digits after the point)
        return isinstance(value, decimal.Decimal) and value == want and value.as_tuple().exponent == want.as_tuple().exponent
    if ty == "boolean":
        return value is (text == "t")
    if ty in ("json", "jsonb"):
        return json.loads(value) == json.loads(text)
    if ty == "timestamp with time zone":
        return value == pg_timestamp(text, True)
    if ty == "timestamp without time zone":
        return value == pg_timestamp(text, False)
    if ty == "date":
        return value == pg_date(text)
    if ty == "uuid":
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(bytes=value)) == text
    if ty == "bytea":
        return value == bytes.fromhex(text[2:])
    return value == text  # text types and what Parquet holds as PostgreSQL's text


def read_reference(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [[None if v == NULL else v for v in r] for r in rows[1:]]


def main():
    global DECIMALS
    kind, path, ref_path, types_path = sys.argv[1:5]
    DECIMALS = sys.argv[5] if len(sys.argv) > 5 else "string"
    types = json.load(open(types_path))
    header, expected = read_reference(ref_path)
    if kind == "jsonl":
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", newline="\n") as f:
            lines = f.read().split("\n")
        if lines[-1] != "":
            fail("the file does not end with a line feed")
        lines = lines[:-1]
        if len(lines) != len(expected):
            fail(f"{len(lines)} lines, {len(expected)} rows expected")
        for n, (line, want) in enumerate(zip(lines, expected)):
            obj = json.loads(line)
            exact = json.loads(line, parse_float=decimal.Decimal)  # numeric values as written
            if list(obj.keys()) != header:
                fail(f"line {n + 1}: keys {list(obj.keys())}, expected {header}")
            for ty, name, text in zip(types, header, want):
                value = exact[name] if ty.startswith("numeric") else obj[name]
                if not same_jsonl(ty, text, value):
                    fail(f"line {n + 1}, {name} ({ty}): {value!r}, PostgreSQL wrote {text!r}")
    else:
        import duckdb
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        table = pf.read()
        if table.column_names != header:
            fail(f"columns {table.column_names}, expected {header}")
        if table.num_rows != len(expected):
            fail(f"{table.num_rows} rows, {len(expected)} expected")
        schema = pf.schema
        for i, ty in enumerate(types):
            logical = str(schema.column(i).logical_type)
            want = {"json": "JSON", "jsonb": "JSON", "uuid": "UUID", "date": "Date", "text": "String",
                    "timestamp with time zone": "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds",
                    "timestamp without time zone": "Timestamp(isAdjustedToUTC=false, timeUnit=microseconds"}.get(ty)
            if ty.startswith("numeric(") and "," in ty:
                p, s = ty[len("numeric("):-1].split(",")
                want = f"Decimal(precision={p}, scale={s})"
            if want and not logical.startswith(want):
                fail(f"{header[i]} ({ty}): logical type {logical}, expected {want}")
        columns = []
        for i, ty in enumerate(types):
            col = table.column(i)
            if ty in ("date",):
                col = col.cast(pa.int32())
            elif ty.startswith("timestamp"):
                col = col.cast(pa.int64())
            elif ty in ("json", "jsonb") and not pa.types.is_string(col.type):
                col = pa.chunked_array([c.storage for c in col.chunks], col.type.storage_type)
            elif ty == "uuid" and not pa.types.is_fixed_size_binary(col.type):
                col = pa.chunked_array([c.storage for c in col.chunks], col.type.storage_type)
            columns.append(col.to_pylist())
        for n, want in enumerate(expected):
            for i, (ty, text) in enumerate(zip(types, want)):
                value = columns[i][n]
                if not same_parquet(ty, text, value):
                    fail(f"row {n + 1}, {header[i]} ({ty}): {value!r}, PostgreSQL wrote {text!r}")
        # A second reader: DuckDB sees the same rows in the same order.
        con = duckdb.connect()
        got = con.execute(f"select count(*) from read_parquet('{path}')").fetchone()[0]
        if got != len(expected):
            fail(f"DuckDB reads {got} rows, {len(expected)} expected")
        first = con.execute(f"select \"{header[0]}\"::varchar from read_parquet('{path}')").fetchall()
        if [r[0] for r in first] != [str(columns[0][n]) if columns[0][n] is not None else None for n in range(len(expected))] and types[0] in ("bigint", "integer", "smallint"):
            fail("DuckDB reads the first column differently")
    print(f"ok {len(expected)} rows")


main()
