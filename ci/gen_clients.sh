#!/usr/bin/env bash
# Regenerates the committed client code from proto/ (`make clients`):
#   clients/go/driftdv1/                  protoc-gen-go + protoc-gen-go-grpc (Go module proxy)
#   clients/typescript/src/gen/driftd/v1/ protoc-gen-es (npm, clients/typescript's lock file)
# with buf (npm, ci/tools) as the driver; versions pinned in ci/lib.sh and the
# package-lock.json files. Old output is removed first so a deleted proto
# leaves no stale file.
source "$(dirname "$0")/lib.sh"
cd "$REPO" || exit 1

npm_ci ci/tools
npm_ci clients/typescript
go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"
BUF="$REPO/ci/tools/node_modules/.bin/buf"

log "buf generate (Go, TypeScript)"
rm -f clients/go/driftdv1/*.pb.go
rm -rf clients/typescript/src/gen
"$BUF" generate --template buf.gen.go.yaml
"$BUF" generate --template buf.gen.ts.yaml
echo "generated: $(ls clients/go/driftdv1 | wc -l) Go files, $(ls clients/typescript/src/gen/driftd/v1 | wc -l) TypeScript files"
