#!/usr/bin/env bash
# Independent readers for the format tests (tests/api/formats.rs) and the benchmark:
#   readers.sh setup                  install pyarrow and DuckDB in a cached virtualenv
#   readers.sh python ARGS...         run that virtualenv's python (e.g. check.py)
# The virtualenv lives under ~/.cache/exportd, named by the requirements' hash, built once.
# REQUIREMENTS names another requirements file (make bench-peers: benches/peers/requirements.txt).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
requirements="${REQUIREMENTS:-$here/requirements.txt}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/exportd"
venv="$cache/readers-$(sha256sum "$requirements" | cut -c1-12)"

mkdir -p "$cache"
exec 9>"$cache/readers.lock"
flock 9 # tests run in parallel: one installs, the others wait for it
if [ ! -e "$venv/.complete" ]; then
  python3 -c 'import venv, ensurepip' 2>/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
  rm -rf "$venv" && python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  touch "$venv/.complete"
fi
flock -u 9
[ "${1:-setup}" = setup ] && exit 0
shift
exec "$venv/bin/python" "$@"
