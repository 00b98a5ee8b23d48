#!/usr/bin/env bash
# Records a release's API for `buf breaking` (ci/buf_check.sh): builds the buf
# image of proto/ at git tag $1 into ci/releases/$1.binpb, to be committed with
# the release. Source info is left out: breaking rules need only the schema.
source "$(dirname "$0")/lib.sh"
cd "$REPO" || exit 1
tag="${1:?usage: ci/release_image.sh vX.Y.Z}"
npm_ci ci/tools
"$REPO/ci/tools/node_modules/.bin/buf" build ".git#tag=$tag,subdir=proto" \
    --exclude-source-info -o "ci/releases/$tag.binpb"
echo "wrote ci/releases/$tag.binpb"
