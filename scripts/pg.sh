#!/usr/bin/env bash
# A private PostgreSQL cluster for `make run` and `make test` when DATABASE_URL is not set.
#   scripts/pg.sh start   start it (initdb on first use) and print its URL
#   scripts/pg.sh stop    stop it
#   scripts/pg.sh url     print its URL
# It runs from the installed server binaries (Debian's postgresql package, installed when
# missing), as the postgres user when we are root (initdb refuses root), on its own port.
set -euo pipefail

PORT=${EXPORTD_PG_PORT:-55432}
DIR=${EXPORTD_PG_DIR:-/tmp/exportd-pg}
URL="postgres://postgres@127.0.0.1:${PORT}/postgres"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
  start)
    BIN=$(find_bin)
    if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
      echo "PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
      if [ "$(id -u)" != 0 ]; then echo "run as root or install postgresql yourself" >&2; exit 1; fi
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
      BIN=$(find_bin)
    fi
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    fi
    if ! as_owner "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
      as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
      echo "started a private PostgreSQL cluster at $URL (data in $DIR); it keeps running: stop it with 'make pg-stop'" >&2
    fi
    echo "$URL"
    ;;
  stop)
    BIN=$(find_bin)
    as_owner "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
    ;;
  url)
    echo "$URL"
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
