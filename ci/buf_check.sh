#!/usr/bin/env bash
# buf lint (STANDARD rules, buf.yaml) and buf breaking against the latest
# release tag. buf comes from npm (@bufbuild/buf, pinned in ci/tools/package.json
# with its package-lock.json), installed here with `npm ci`.
#
# The breaking check compares proto/ with the newest tag matching v* (version
# order). With no release tag yet it says so and is skipped; it runs by itself
# once the first tag exists. BUF_AGAINST overrides the input compared against
# (any buf input, e.g. '.git#branch=main,subdir=proto').
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
    tag="$(git tag --list 'v*' --sort=-v:refname | head -n 1)"
    if [ -z "$tag" ]; then
        echo "buf breaking: skipped, no release tag (v*) yet; it runs against the newest tag once one exists"
        exit 0
    fi
    # subdir=proto: the module root at that tag, also for tags older than buf.yaml.
    against=".git#tag=$tag,subdir=proto"
fi
"$BUF" breaking --against "$against"
echo "buf breaking: no breaking change against $against"
