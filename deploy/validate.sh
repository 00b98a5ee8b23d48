#!/usr/bin/env bash
# Offline validation of deploy/ (no cluster, no Docker engine, no schema
# downloads):
#   1. kustomize (Go module, pinned) builds every overlay;
#   2. kubernetes-validate (PyPI, pinned; it ships Kubernetes' OpenAPI JSON
#      schemas) checks every built-in object strictly (unknown fields fail)
#      against the oldest and newest Kubernetes versions we support;
#   3. deploycheck (ci/deploycheck, Go) decodes the ServiceMonitor strictly
#      into the Prometheus Operator's Go type, and parses and lints the
#      Dockerfile with BuildKit's own parser and linter, checks its stages,
#      USER, HEALTHCHECK and COPY sources against the .dockerignore;
#   4. ci/deploy_lint.py cross-checks selectors, ports, probes, settings and
#      each mode's invariants;
#   5. deploycheck checks deploy/observability/ (alert rules with the parser
#      and validation of `promtool check rules`, the Grafana dashboard's PromQL
#      with Prometheus's parser) against a live driftd's /metrics: every
#      metric used is exported, every driftd_*/grpc_server_* metric is used;
#   6. the validators are shown to reject broken input (so a pass means
#      something), and the image's health-check script runs against a live
#      driftd (SERVING -> exit 0) and a closed port (exit 1).
# Usage: deploy/validate.sh   (needs .venv: make test or make deploy-check)
source "$(dirname "$0")/../ci/lib.sh"
cd "$REPO" || exit 1
K8S_VERSIONS=(1.29.0 1.37.0)
OUT="$(mktemp -d)"
_PIDS=()
trap '_cleanup; rm -rf "$OUT"' EXIT

go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
KV_BIN="$(py_tool_venv kubernetes-validate "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")"
log "go build ci/deploycheck"
# Into this run's directory: the shared tools directory may hold another
# checkout's build (Go's build cache makes the rebuild cheap).
(cd ci/deploycheck && go build -o "$OUT/deploycheck" .)
deploycheck() { "$OUT/deploycheck" "$@"; }

# kubernetes-validate: ERROR lines fail, and so does any WARN other than the
# expected "no schema for the ServiceMonitor CRD" (checked by deploycheck).
k8s_validate() {
    local k rc=0 report
    for k in "${K8S_VERSIONS[@]}"; do
        report="$("$KV_BIN/kubernetes-validate" --strict -k "$k" "$@" 2>&1)" || rc=1
        if grep -v -E "^INFO |^WARN .*kind ServiceMonitor with api version monitoring.coreos.com/v1" \
            <<<"$report" | grep -q .; then
            grep -v '^INFO ' <<<"$report" >&2
            rc=1
        fi
        echo "kubernetes $k: $(grep -c '^INFO .* passed' <<<"$report") objects passed"
    done
    return $rc
}

for overlay in embedded server; do
    log "overlay $overlay"
    kustomize build "deploy/kubernetes/overlays/$overlay" > "$OUT/$overlay.yaml"
    k8s_validate "$OUT/$overlay.yaml"
    deploycheck servicemonitor "$OUT/$overlay.yaml"
    "$PY" ci/deploy_lint.py "$overlay" "$OUT/$overlay.yaml"
done

log "Dockerfile"
deploycheck dockerfile -context . deploy/Dockerfile
echo "deploy/Dockerfile: parsed and linted, stages/USER/HEALTHCHECK/COPY sources ok"

log "the validators reject broken input"
# mutate SED_EXPR IN OUT: a copy with one deliberate mistake (fails if the
# expression no longer matches, so the negative check cannot go stale).
mutate() {
    sed -e "$1" "$2" > "$3"
    if cmp -s "$2" "$3"; then echo "mutation '$1' matched nothing in $2" >&2; exit 1; fi
}
rejects() {
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then echo "not rejected: $what" >&2; exit 1; fi
    echo "rejected: $what"
}
mutate 's/timeoutSeconds: 5$/timeoutSecond: 5/' "$OUT/server.yaml" "$OUT/bad-field.yaml"
rejects "an unknown field in a probe (kubernetes-validate)" k8s_validate "$OUT/bad-field.yaml"
mutate 's/scrapeTimeout: 10s/scrape_timeout: 10s/' "$OUT/server.yaml" "$OUT/bad-sm.yaml"
rejects "an unknown ServiceMonitor field (deploycheck)" deploycheck servicemonitor "$OUT/bad-sm.yaml"
mutate 's/replicas: 1$/replicas: 2/' "$OUT/embedded.yaml" "$OUT/bad-replicas.yaml"
rejects "two embedded-mode replicas (deploy_lint)" "$PY" ci/deploy_lint.py embedded "$OUT/bad-replicas.yaml"
mutate 's/DRIFTD_GRACE_SECONDS/DRIFTD_GRACE_SECS/' "$OUT/server.yaml" "$OUT/bad-env.yaml"
rejects "an unknown DRIFTD_* setting (deploy_lint)" "$PY" ci/deploy_lint.py server "$OUT/bad-env.yaml"
mutate '/DRIFTD_API_KEYS_FILE\|DRIFTD_TLS_CERT_FILE\|DRIFTD_TLS_KEY_FILE/d' "$OUT/server.yaml" "$OUT/bad-open.yaml"
rejects "0.0.0.0 without API keys or TLS (deploy_lint)" "$PY" ci/deploy_lint.py server "$OUT/bad-open.yaml"
mutate '/DRIFTD_PEER_TLS_CA_FILE/d' "$OUT/server.yaml" "$OUT/bad-peer-ca.yaml"
rejects "peers under TLS with no CA to verify them (deploy_lint)" "$PY" ci/deploy_lint.py server "$OUT/bad-peer-ca.yaml"
mutate 's/DRIFTD_PEER_TLS_SERVER_NAME: driftd-headless/DRIFTD_PEER_TLS_SERVER_NAME: driftd-pods/' "$OUT/server.yaml" "$OUT/bad-peer-name.yaml"
rejects "a peer server name that is no Service (deploy_lint)" "$PY" ci/deploy_lint.py server "$OUT/bad-peer-name.yaml"
mutate '/kind: NetworkPolicy/,$ s/component: server$/component: other/' "$OUT/server.yaml" "$OUT/bad-netpol.yaml"
rejects "Chroma reachable by pods other than driftd's (deploy_lint)" "$PY" ci/deploy_lint.py server "$OUT/bad-netpol.yaml"
mutate 's/^USER 10001:10001$/USER root/' deploy/Dockerfile "$OUT/Dockerfile"
rejects "USER root (deploycheck)" deploycheck dockerfile -context . "$OUT/Dockerfile"
echo "each broken input was rejected"

log "deploy/healthcheck.py against a live driftd"
start_driftd "$OUT/data" "$OUT/driftd.log"
DRIFTD_HEALTHCHECK_TARGET="$DRIFTD_TARGET" "$PY" deploy/healthcheck.py
DRIFTD_HEALTHCHECK_TARGET="$DRIFTD_TARGET" "$PY" deploy/healthcheck.py driftd.v1.PointService
if DRIFTD_HEALTHCHECK_TARGET="127.0.0.1:$(free_port)" "$PY" deploy/healthcheck.py 2>/dev/null; then
    echo "healthcheck passed against a closed port" >&2; exit 1
fi
log "deploy/observability against the live driftd's /metrics"
"$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
    "$DRIFTD_METRICS" > "$OUT/metrics.txt"
OBSERVABILITY=(deploy/observability/alerts.yaml deploy/observability/driftd-dashboard.json)
deploycheck prometheus -metrics "$OUT/metrics.txt" -coverage driftd_,grpc_server_ "${OBSERVABILITY[@]}"
echo "deploy/observability: rules and dashboard parse, use only exported metrics, cover driftd's"
mutate 's/> 0.05$/> > 0.05/' deploy/observability/alerts.yaml "$OUT/bad-rule.yaml"
rejects "a PromQL syntax error in a rule (deploycheck)" \
    deploycheck prometheus -metrics "$OUT/metrics.txt" "$OUT/bad-rule.yaml"
mutate 's/humanizeDuration }}"/humanizeDuration }"/' deploy/observability/alerts.yaml "$OUT/bad-template.yaml"
rejects "a broken annotation template (deploycheck)" \
    deploycheck prometheus -metrics "$OUT/metrics.txt" "$OUT/bad-template.yaml"
mutate 's/driftd_pool_queue_depth{/driftd_pool_queue_dept{/' deploy/observability/driftd-dashboard.json "$OUT/bad-dashboard.json"
rejects "a dashboard metric the server does not export (deploycheck)" \
    deploycheck prometheus -metrics "$OUT/metrics.txt" "$OUT/bad-dashboard.json"
grep -v 'driftd_cached_embed_models' deploy/observability/driftd-dashboard.json > "$OUT/uncovered.json" || true
rejects "an exported driftd metric on no panel (deploycheck)" \
    deploycheck prometheus -metrics "$OUT/metrics.txt" -coverage driftd_ "$OUT/uncovered.json"
echo "deploy: all checks passed"
