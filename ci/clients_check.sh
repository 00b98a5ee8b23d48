#!/usr/bin/env bash
# The Go and TypeScript clients: generated code is current, they build, vet
# and type-check, their tests pass against a live driftd (each test suite
# starts its own `driftd serve` from .venv), and their examples run against one.
source "$(dirname "$0")/lib.sh"
cd "$REPO" || exit 1

# Regenerate, and compare with what was there (committed, in CI's fresh clone).
GEN_DIRS=(clients/go/driftdv1 clients/typescript/src/gen)
BEFORE="$(mktemp -d)"
for d in "${GEN_DIRS[@]}"; do mkdir -p "$BEFORE/$d"; [ ! -d "$d" ] || cp -R "$d/." "$BEFORE/$d/"; done
bash ci/gen_clients.sh
for d in "${GEN_DIRS[@]}"; do
    if ! diff -r -q "$BEFORE/$d" "$d" >&2; then
        echo "make clients changed the generated client code in $d: run it and commit the result" >&2
        rm -rf "$BEFORE"; exit 1
    fi
done
rm -rf "$BEFORE"
echo "generated client code is current"

log "Go client: gofmt, vet, test"
(
    cd clients/go || exit 1
    unformatted="$(gofmt -l driftd examples)"
    [ -z "$unformatted" ] || { echo "gofmt needed: $unformatted" >&2; exit 1; }
    go vet ./...
    go test -count=1 -v ./... 2>&1 | grep -v -E '^=== (RUN|PAUSE|CONT)'
    exit "${PIPESTATUS[0]}"
)

log "TypeScript client: tsc, node --test"
(cd clients/typescript && npm test --silent)

log "examples against a live driftd"
OUT="$(mktemp -d)"
_PIDS=()
trap '_cleanup; rm -rf "$OUT"' EXIT
start_driftd "$OUT/data" "$OUT/driftd.log"
(cd clients/go && go run ./examples/quickstart -target "$DRIFTD_TARGET")
(cd clients/typescript && node dist/examples/quickstart.js "$DRIFTD_TARGET")
echo "clients: all checks passed"
