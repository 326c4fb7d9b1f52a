#!/usr/bin/env bash
# Regenerates tools/otelcol (main.go, components.go, go.mod, go.sum) from
# tools/otelcol/builder.yaml with the official OpenTelemetry Collector
# builder, pinned below. Run it after changing the manifest; hack/tools.sh
# then builds the generated module (cached, keyed by its go.mod/go.sum/*.go).
# The builder's own `go mod tidy` trips over test-only modules the proxy
# does not serve: GOFLAGS=-e lets it finish (TOOLING-NOTES.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=v0.165.0
cache=${MAHLER_TOOLS_CACHE:-$HOME/.cache/mahler/tools}
bin=$cache/builders/otelcol-$version
if [[ ! -x $bin/builder ]]; then
  mkdir -p "$bin"
  GOTOOLCHAIN=local GOBIN=$bin go install "go.opentelemetry.io/collector/cmd/builder@$version"
fi
cd "$root/tools/otelcol"
GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -e" CGO_ENABLED=0 \
  "$bin/builder" --config builder.yaml --skip-compilation
