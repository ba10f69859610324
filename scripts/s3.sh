#!/usr/bin/env bash
# A private S3-compatible object store (Garage, one node) for tests and for trying
# EXPORTD_STORAGE=s3://... by hand.
#   scripts/s3.sh install              install Garage (cargo install, once; ~8 min from nothing)
#   scripts/s3.sh start DIR [ADDR]     start a node with its data in DIR, listening on ADDR
#                                      (default 127.0.0.1; ports from EXPORTD_S3_PORT, +1, +2),
#                                      create the bucket `exports` and a key, and print the
#                                      environment exportd needs (AWS_* lines and EXPORTD_STORAGE)
#   scripts/s3.sh stop DIR             stop the node started in DIR (by the pid it wrote)
# The node's pid is in DIR/garage.pid, its log in DIR/garage.log.
set -euo pipefail

GARAGE_VERSION=2.5.0
GARAGE=${EXPORTD_GARAGE:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}

install() {
  if [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then return; fi
  echo "installing Garage $GARAGE_VERSION (cargo install; kept in ~/.cargo/bin)" >&2
  cargo install garage --version "$GARAGE_VERSION" --locked >&2
  GARAGE="$HOME/.cargo/bin/garage"
}

case "${1:-}" in
  install) install ;;
  start)
    DIR=${2:?usage: scripts/s3.sh start DIR [ADDR]}
    ADDR=${3:-127.0.0.1}
    PORT=${EXPORTD_S3_PORT:-3900}
    install
    mkdir -p "$DIR/meta" "$DIR/data"
    cat > "$DIR/garage.toml" <<EOF
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "$ADDR:$((PORT + 1))"
rpc_public_addr = "$ADDR:$((PORT + 1))"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "$ADDR:$PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "$ADDR:$((PORT + 2))"
EOF
    g() { "$GARAGE" -c "$DIR/garage.toml" "$@"; }
    # Garage itself in the background (through the function it would be a subshell's child,
    # and `stop` would end the subshell and leave the node running).
    "$GARAGE" -c "$DIR/garage.toml" server > "$DIR/garage.log" 2>&1 &
    echo $! > "$DIR/garage.pid"
    node=""
    for _ in $(seq 1 100); do
      node=$(g status 2>/dev/null | awk '/NO ROLE ASSIGNED|HEALTHY NODES/ {f=1} f && $1 ~ /^[0-9a-f]{16}$/ {print $1; exit}') || true
      [ -n "$node" ] && break
      sleep 0.1
    done
    [ -n "$node" ] || { echo "garage did not start; see $DIR/garage.log" >&2; exit 1; }
    g layout assign -z dc1 -c 1G "$node" >/dev/null
    g layout apply --version 1 >/dev/null
    key=$(g key create exportd)
    id=$(echo "$key" | awk '/Key ID/ {print $NF}')
    secret=$(echo "$key" | awk '/Secret key/ {print $NF}')
    for _ in $(seq 1 100); do g bucket create exports >/dev/null 2>&1 && break; sleep 0.1; done
    g bucket allow --read --write --owner exports --key exportd >/dev/null
    cat <<EOF
AWS_ENDPOINT_URL=http://$ADDR:$PORT
AWS_REGION=garage
AWS_ACCESS_KEY_ID=$id
AWS_SECRET_ACCESS_KEY=$secret
AWS_ALLOW_HTTP=true
EXPORTD_STORAGE=s3://exports/exportd
EOF
    ;;
  stop)
    DIR=${2:?usage: scripts/s3.sh stop DIR}
    if [ -f "$DIR/garage.pid" ]; then
      pid=$(cat "$DIR/garage.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$DIR/garage.pid"
    fi
    ;;
  *) echo "usage: scripts/s3.sh install | start DIR [ADDR] | stop DIR" >&2; exit 2 ;;
esac
