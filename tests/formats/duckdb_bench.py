"""DuckDB's side of `make bench-formats` (run with tests/formats/readers.sh python):

    duckdb_bench.py export DATABASE_URL OUT.parquet   COPY the orders table, in key order,
                                                      from the postgres scanner to Parquet
    duckdb_bench.py rows FILE.parquet                 the file's row count, read by DuckDB

`export` prints `seconds peak_rss_kib` (its own wall time and peak memory).
"""

import os
import resource
import shutil
import sys
import tempfile
import time

import duckdb
import duckdb_extension_postgres


def extension_path():
    """The packaged extension under the file name DuckDB derives its entry point from."""
    root = os.path.join(os.path.dirname(duckdb_extension_postgres.__file__), "extensions")
    version = os.listdir(root)[0]
    target = os.path.join(tempfile.gettempdir(), f"duckdb-extensions-{version}", "postgres_scanner.duckdb_extension")
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(os.path.join(root, version, "postgres.duckdb_extension"), target)
    return target


def main():
    if sys.argv[1] == "rows":
        print(duckdb.connect().execute(f"select count(*) from read_parquet('{sys.argv[2]}')").fetchone()[0])
        return
    url, out = sys.argv[2], sys.argv[3]
    con = duckdb.connect()
    con.execute(f"load '{extension_path()}'")
    started = time.monotonic()
    con.execute(f"attach '{url}' as pg (type postgres, read_only)")
    con.execute(f"copy (select * from pg.public.orders order by id) to '{out}' (format parquet, compression zstd)")
    seconds = time.monotonic() - started
    print(f"{seconds:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


if __name__ == "__main__":
    main()
