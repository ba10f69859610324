"""The Python peers of `make bench-peers` (run in their virtualenv by benches/peers.rs):

    peers.py duckdb DATABASE_URL OUT.csv ordered|unordered
        DuckDB's postgres scanner: COPY the orders table to CSV with a header (ORDER BY id or not)
    peers.py connectorx DATABASE_URL OUT.csv PARTITIONS
        ConnectorX, partition_on id into PARTITIONS connections, to Arrow, written to CSV by pyarrow

Each prints `seconds peak_rss_kib` (its own wall time from connecting, and peak memory).
"""

import os
import resource
import sys
import time


def duckdb_copy(url, out, order):
    import duckdb

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "formats"))
    from duckdb_bench import extension_path

    con = duckdb.connect()
    con.execute(f"load '{extension_path()}'")
    started = time.monotonic()
    con.execute(f"attach '{url}' as pg (type postgres, read_only)")
    order_by = " order by id" if order == "ordered" else ""
    con.execute(f"copy (select * from pg.public.orders{order_by}) to '{out}' (format csv, header)")
    return time.monotonic() - started


def connectorx_copy(url, out, partitions):
    import connectorx
    import pyarrow.csv

    started = time.monotonic()
    table = connectorx.read_sql(
        url, "select * from orders", partition_on="id", partition_num=int(partitions), return_type="arrow"
    )
    pyarrow.csv.write_csv(table, out)
    return time.monotonic() - started


def main():
    peer, url, out, arg = sys.argv[1:5]
    seconds = {"duckdb": duckdb_copy, "connectorx": connectorx_copy}[peer](url, out, arg)
    print(f"{seconds:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


main()
