#!/usr/bin/env bash
# Runs README.md's grpcurl session, as written, against a live `driftd serve`.
#
# grpcurl is built from its Go module at the version README.md names. The
# session is the first ```sh block under the "### With grpcurl" heading,
# extracted at run time so the documentation and this check cannot diverge;
# the only change made to it is the address: 127.0.0.1:50051 becomes the free
# loopback port of a server started here with a fresh embedded Chroma
# directory. Each grpcurl command's output is kept, and ci/grpcurl_assert.py
# checks that every command succeeded, what each answered, and that the
# session covers list, describe, every unary RPC of the core services and at
# least one server stream.
source "$(dirname "$0")/lib.sh"
cd "$REPO" || exit 1

go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
GRPCURL_BIN="$TOOLS_BIN/grpcurl"
grep -q "grpcurl@$GRPCURL_VERSION" README.md || {
    echo "README.md does not tell users to install grpcurl@$GRPCURL_VERSION" >&2; exit 1; }

OUT="$(mktemp -d)"
_PIDS=()
trap '_cleanup; rm -rf "$OUT"' EXIT

# The session: the first sh block after the heading.
awk '/^### With grpcurl/ {h=1; next}
     h && /^```sh/ {b=1; next}
     b && /^```/ {exit}
     b {print}' README.md > "$OUT/session.sh"
[ -s "$OUT/session.sh" ] || { echo "no grpcurl session found in README.md" >&2; exit 1; }

# A Chroma collection for the session's AttachCollection to adopt, made before
# driftd opens the directory (embedded Chroma has one owner process).
"$PY" - "$OUT/data" <<'PY'
import sys

import chromadb

client = chromadb.PersistentClient(path=sys.argv[1])
col = client.create_collection("legacy_notes", embedding_function=None)
col.add(
    ids=[f"l{i}" for i in range(3)],
    embeddings=[[float(i), 1.0, 0.0] for i in range(3)],
    metadatas=[{"ts": 1704067200 + 86400 * i} for i in range(3)],
)
PY

start_driftd "$OUT/data" "$OUT/driftd.log"
log "README grpcurl session against $DRIFTD_TARGET (README says 127.0.0.1:50051)"
sed "s/127\.0\.0\.1:50051/$DRIFTD_TARGET/g" "$OUT/session.sh" > "$OUT/session.run.sh"

# Every `grpcurl` in the session goes through this function: it records the
# arguments, the output and the exit status of each command, and echoes them.
mkdir -p "$OUT/calls"
N=0
grpcurl() {
    N=$((N + 1))
    local dir
    dir="$OUT/calls/$(printf '%02d' "$N")"
    mkdir -p "$dir"
    printf '%s\0' "$@" > "$dir/args"
    local rc=0
    "$GRPCURL_BIN" "$@" > "$dir/stdout" 2> "$dir/stderr" || rc=$?
    echo "$rc" > "$dir/rc"
    printf '\n$ grpcurl %s\n' "$(printf '%q ' "$@" | cut -c1-160)"
    head -c 1500 "$dir/stdout"; cat "$dir/stderr"
    [ "$(wc -c < "$dir/stdout")" -le 1500 ] || echo "... ($(wc -c < "$dir/stdout") bytes)"
    echo "(exit $rc)"
}
# shellcheck disable=SC1091
source "$OUT/session.run.sh"
echo
"$PY" ci/grpcurl_assert.py "$OUT/calls" "$OUT/session.sh"
echo "grpcurl: README session passed ($N commands)"

# README "Security": grpcurl against a server with API keys and TLS (keys and
# certificates generated here) works with -cacert and the bearer header, and
# without the header only health answers.
log "grpcurl against a server with API keys and TLS"
"$PY" - "$OUT/secure" <<'PY'
import json, pathlib, sys
sys.path.insert(0, "tests")
from support import make_pki
from driftd.server.security import hash_key
root = pathlib.Path(sys.argv[1])
make_pki(root / "pki")
keys = {"keys": [{"name": "ops", "sha256": hash_key("grpcurl-check-key"), "role": "admin"}]}
(root / "keys.json").write_text(json.dumps(keys))
PY
port=$(free_port)
DRIFTD_ADDRESS="127.0.0.1:$port" DRIFTD_METRICS_PORT=0 DRIFTD_CHROMA_PATH="$OUT/secure/data" \
    DRIFTD_TLS_CERT_FILE="$OUT/secure/pki/server.pem" DRIFTD_TLS_KEY_FILE="$OUT/secure/pki/server-key.pem" \
    DRIFTD_API_KEYS_FILE="$OUT/secure/keys.json" "$REPO/.venv/bin/driftd" serve >"$OUT/secure.log" 2>&1 &
_PIDS+=("$!")
TLS_ARGS=(-cacert "$OUT/secure/pki/ca.pem")
for _ in $(seq 1 600); do
    "$GRPCURL_BIN" "${TLS_ARGS[@]}" -d '{"service": ""}' "127.0.0.1:$port" grpc.health.v1.Health/Check \
        2>/dev/null | grep -q SERVING && break
    sleep 0.2
done
"$GRPCURL_BIN" "${TLS_ARGS[@]}" -H 'authorization: Bearer grpcurl-check-key' "127.0.0.1:$port" list \
    | grep -qx driftd.v1.PointService || { echo "keyed grpcurl list failed" >&2; exit 1; }
"$GRPCURL_BIN" "${TLS_ARGS[@]}" -H 'authorization: Bearer grpcurl-check-key' \
    -d '{"collection_id": "keyed", "collection": {"dimension": 3}}' \
    "127.0.0.1:$port" driftd.v1.CollectionService/CreateCollection >/dev/null
if "$GRPCURL_BIN" "${TLS_ARGS[@]}" "127.0.0.1:$port" list >/dev/null 2>&1; then
    echo "reflection answered without a key" >&2; exit 1
fi
if "$GRPCURL_BIN" -plaintext "127.0.0.1:$port" list >/dev/null 2>&1; then
    echo "a plaintext connection was accepted under TLS" >&2; exit 1
fi
echo "grpcurl: keyed TLS server passed (list and a call with the key; no key or plaintext refused)"
