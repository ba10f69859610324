#!/usr/bin/env bash
# make verify: schemathesis, driven by the live spec, against a fresh `exportd serve` with 2,000
# seeded rows: EXAMPLES generated requests per operation (default 50, fixed seed SEED), every
# check but one: 0 server errors, 0 responses that contradict the spec (status, content type,
# headers, body schema), schema-invalid requests refused, a 405 names the allowed methods.
# Left out: positive_data_acceptance, which expects every schema-valid request to succeed; the
# schema cannot say which dataset, column or time zone names exist (the server answers 400 and
# names the field), so that check would only measure the generator's luck.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/clients/run.sh setup
venv="${XDG_CACHE_HOME:-$HOME/.cache}/exportd/venv-$(sha256sum tests/clients/requirements.txt | cut -c1-12)"
admin="${DATABASE_URL:-$(scripts/pg.sh start)}"
db="${admin%/*}/exportd_fuzz"
psql -q "$admin" -c "drop database if exists exportd_fuzz" -c "create database exportd_fuzz"
work="$(mktemp -d)"
pid=""
cleanup() {
  cd / # out of $work before it goes
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
  psql -q "$admin" -c "drop database if exists exportd_fuzz" || true
}
trap cleanup EXIT
DATABASE_URL="$db" target/release/exportd seed --rows 2000 >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATABASE_URL="$db" EXPORTD_LISTEN="127.0.0.1:$port" EXPORTD_STORAGE_DIR="$work/files" \
  EXPORTD_DEV_KEY_FILE="$work/key" EXPORTD_MAX_QUEUED_PER_OWNER=1000000 \
  target/release/exportd serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# Run from the scratch directory: schemathesis keeps a cache (.schemathesis/) where it runs.
cd "$work"
# With the server's admin key; schemathesis' ignored_auth check also sends requests without it
# (and with a wrong one) and expects 401.
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --checks all \
  -H "Authorization: Bearer $(cat "$work/key")" \
  --exclude-checks positive_data_acceptance -n "${EXAMPLES:-50}" --seed "${SEED:-1}" --no-color
