#!/usr/bin/env bash
# Generates a client from a spec with one real generator (pinned, default settings) and runs
# that language's round trip through it (tests/clients/main.rs calls this).
#   run.sh setup                                   install every tool (cached), nothing else
#   run.sh python|typescript|rust SPEC WORKDIR BASE_URL OUT_FILE REQUEST_JSON
#   run.sh browser BASE_URL SHOT_DIR OTHER_ORIGIN_PAGE_URL     (Swagger UI in headless Chromium)
#   run.sh ui BASE_URL SHOT_DIR RUNNING COMPLETED OTHER         (the /ui page in headless Chromium)
# Tools are cached where the machine keeps them: a virtualenv per requirements.txt under
# ~/.cache/exportd, node_modules here (npm ci from the lock file), the progenitor client's
# build under ~/.cache/exportd/clients-rust-target.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/exportd"
venv="$cache/venv-$(sha256sum "$here/requirements.txt" | cut -c1-12)"

setup() {
  mkdir -p "$cache"
  exec 9>"$cache/setup.lock"
  flock 9 # tests run in parallel: one installs, the others wait for it
  # Only what is missing: a machine whose Node.js comes from elsewhere (NodeSource's package
  # carries npm and conflicts with Debian's) must not be asked for Debian's npm.
  local missing=()
  command -v npm >/dev/null || missing+=(nodejs npm)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -e "$venv/.complete" ]; then # (a virtualenv cannot be moved: built in place)
    rm -rf "$venv" && python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
    touch "$venv/.complete"
  fi
  local stamp="$here/node_modules/.installed-from"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$(sha256sum "$here/package-lock.json")" ]; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    sha256sum "$here/package-lock.json" >"$stamp"
  fi
  flock -u 9
}

setup
[ "${1:-setup}" = setup ] && exit 0

if [ "$1" = browser ]; then
  exec node "$here/browser/swagger.mjs" "$2" "$3" "$4"
fi
if [ "$1" = ui ]; then
  exec node "$here/browser/ui.mjs" "$2" "$3" "$4" "$5" "$6"
fi

lang=$1 spec=$2 work=$3 base=$4 out=$5 request=$6
mkdir -p "$work"
case "$lang" in
  python)
    PATH="$venv/bin:$PATH" "$venv/bin/openapi-python-client" generate --path "$spec" --output-path "$work/python" >"$work/generate.log" 2>&1 ||
      { cat "$work/generate.log"; exit 1; }
    # A warning means a piece of the API was left out of the client: that is a failure here.
    if grep -q "Warning" "$work/generate.log"; then cat "$work/generate.log"; exit 1; fi
    PYTHONPATH="$work/python" "$venv/bin/python" "$here/python/roundtrip.py" "$base" "$out" "$request"
    ;;
  typescript)
    cp "$here/typescript/roundtrip.ts" "$here/typescript/tsconfig.json" "$work/"
    echo '{"type": "module"}' >"$work/package.json"
    ln -sfn "$here/node_modules" "$work/node_modules"
    "$here/node_modules/.bin/openapi-typescript" "$spec" -o "$work/schema.d.ts" >"$work/generate.log" 2>&1 ||
      { cat "$work/generate.log"; exit 1; }
    "$here/node_modules/.bin/tsc" -p "$work/tsconfig.json"
    node "$work/roundtrip.js" "$base" "$out" "$request"
    ;;
  rust)
    EXPORTD_SPEC="$spec" CARGO_TARGET_DIR="$cache/clients-rust-target" \
      cargo run --quiet --release --locked --manifest-path "$here/rust/Cargo.toml" -- "$base" "$out" "$request"
    ;;
  *) echo "run.sh: unknown language $lang" >&2; exit 2 ;;
esac
