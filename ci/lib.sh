# shellcheck shell=bash disable=SC2034
# Shared helpers for the CI scripts (sourced, not run). Every tool is pinned
# here and installed by the script that needs it, from the package registries
# through their ordinary clients (go install, pip, npm ci), into TOOLS_DIR,
# which persists between runs as a cache and is safe to delete.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${DRIFTD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/driftd-tools}"
TOOLS_BIN="$TOOLS_DIR/bin"
mkdir -p "$TOOLS_BIN"
export PATH="$TOOLS_BIN:$PATH"
PY="$REPO/.venv/bin/python"

# Pinned tool versions.
KUSTOMIZE_VERSION=v5.8.1
GRPCURL_VERSION=v1.9.3                   # the version README.md tells users to install
KUBERNETES_VALIDATE_VERSION=1.37.0       # ships Kubernetes' JSON schemas: no download at run time
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GHZ_VERSION=v0.121.0                     # gRPC load generator of bench.perf

log() { printf '\n==> %s\n' "$*" >&2; }

# go_tool NAME MODULE/PATH VERSION: installs a Go command at a pinned version
# (skipped when that exact version is already installed).
go_tool() {
    local name=$1 pkg=$2 version=$3 stamp="$TOOLS_DIR/.$1.version"
    if [ -x "$TOOLS_BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg@$version" ]; then
        return
    fi
    log "go install $pkg@$version"
    GOBIN="$TOOLS_BIN" go install "$pkg@$version"
    echo "$pkg@$version" > "$stamp"
}

# py_tool_venv NAME REQUIREMENT...: a virtual environment of its own for a
# Python tool; prints its bin directory.
py_tool_venv() {
    local name=$1; shift
    local venv="$TOOLS_DIR/venv-$name" stamp="$TOOLS_DIR/venv-$name/.requirements"
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$*" ]; then
        log "pip install $* (tools venv $name)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
        echo "$*" > "$stamp"
    fi
    echo "$venv/bin"
}

# npm_ci DIR: `npm ci` in DIR (from its committed package-lock.json) unless
# node_modules already matches the lock file.
npm_ci() {
    local dir=$1
    if [ -f "$dir/node_modules/.package-lock.json" ] &&
        "$PY" - "$dir" <<'PYEOF'
import json, sys
d = sys.argv[1]
lock = json.load(open(f"{d}/package-lock.json"))["packages"]
have = json.load(open(f"{d}/node_modules/.package-lock.json"))["packages"]
want = {k: v.get("version") for k, v in lock.items() if k}
got = {k: v.get("version") for k, v in have.items()}
sys.exit(0 if all(got.get(k) == v for k, v in want.items() if k in got or not lock[k].get("optional")) else 1)
PYEOF
    then
        return
    fi
    log "npm ci ($dir)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
}

# Servers started by a script, stopped on exit (by pid, never by name).
_PIDS=()
_cleanup() {
    local pid
    for pid in "${_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap _cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_driftd DATA_DIR LOG: runs `driftd serve` on free loopback ports with an
# embedded Chroma in DATA_DIR; sets DRIFTD_TARGET and DRIFTD_METRICS once
# SERVING (fails after 120 s).
start_driftd() {
    local data=$1 logfile=$2 port mport
    port=$(free_port); mport=$(free_port)
    DRIFTD_ADDRESS="127.0.0.1:$port" DRIFTD_METRICS_PORT="$mport" DRIFTD_CHROMA_PATH="$data" \
        DRIFTD_WORKERS=2 "$REPO/.venv/bin/driftd" serve >"$logfile" 2>&1 &
    _PIDS+=("$!")
    DRIFTD_TARGET="127.0.0.1:$port"
    DRIFTD_METRICS="http://127.0.0.1:$mport/metrics"
    local pid=$!
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "driftd exited during start:" >&2; tail -50 "$logfile" >&2; return 1
        fi
        if DRIFTD_HEALTHCHECK_TARGET="$DRIFTD_TARGET" "$PY" "$REPO/deploy/healthcheck.py" \
            >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "driftd not SERVING after 120 s:" >&2; tail -50 "$logfile" >&2; return 1
}
