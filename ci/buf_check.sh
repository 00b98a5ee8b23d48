#!/usr/bin/env bash
# buf lint (STANDARD rules, buf.yaml) and buf breaking against the latest
# release tag. buf comes from npm (@bufbuild/buf, pinned in ci/tools/package.json
# with its package-lock.json), installed here with `npm ci`.
#
# The breaking check compares proto/ with the newest released API: each
# release commits its buf image as ci/releases/vX.Y.Z.binpb (`make
# release-image TAG=vX.Y.Z` builds it from the tag), so the check needs no tags
# in the clone. BUF_AGAINST overrides the input compared against (any buf
# input, e.g. '.git#branch=main,subdir=proto').
source "$(dirname "$0")/lib.sh"
cd "$REPO" || exit 1

npm_ci ci/tools
BUF="$REPO/ci/tools/node_modules/.bin/buf"
echo "buf $("$BUF" --version)"

log "buf lint"
"$BUF" lint
echo "buf lint: STANDARD rules pass (exceptions listed in buf.yaml)"

log "buf format"
if ! "$BUF" format --diff --exit-code >/dev/null; then
    echo "buf format would change proto/ (advisory, not failing):" >&2
    "$BUF" format --diff >&2 || true
fi

log "buf breaking"
against="${BUF_AGAINST:-}"
if [ -z "$against" ]; then
    against="$(find ci/releases -name 'v*.binpb' | sort -V | tail -n 1)"
    [ -n "$against" ] || { echo "buf breaking: no release image in ci/releases" >&2; exit 1; }
fi
"$BUF" breaking --against "$against"
echo "buf breaking: no breaking change against $against"
