#!/usr/bin/env bash
# Installs ghz (the gRPC load generator bench.perf drives) at its pinned version
# into the tools cache with `go install`; prints the binary's path.
source "$(dirname "$0")/lib.sh"
go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION" >&2
echo "$TOOLS_BIN/ghz"
