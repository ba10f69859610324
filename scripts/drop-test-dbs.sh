#!/usr/bin/env bash
# Drops the databases earlier test runs left behind (each test creates its own, exportd_t_*).
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set}"
psql "$DATABASE_URL" -qtAc "select datname from pg_database where datname like 'exportd\_t\_%'" |
  while read -r db; do
    [ -n "$db" ] && psql "$DATABASE_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null
  done
exit 0
