#!/usr/bin/env bash
# `make lint`, the dependency rules of the workspace (docs/architecture.md),
# checked on the resolved graph with `cargo tree`:
#   - mahler-api and mahler-core have no Kubernetes client and no async runtime;
#   - mahler-engine has no Kubernetes client;
#   - mahler-client (and so the CLI, the REST server, the Terraform
#     provider) compiles neither the engine nor the reconcilers;
#   - mahler-server (the REST server) neither, nor mahler-core.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# forbid <package> <crate>...: fails when any of the crates is among the
# package's normal (non-dev) dependencies, for any target.
forbid() {
  local pkg=$1; shift
  local tree
  tree=$(cargo tree -q -p "$pkg" -e normal,build --prefix none --target all)
  for dep in "$@"; do
    if grep -qE "^$dep v" <<<"$tree"; then
      echo "dependency rule broken: $pkg depends on $dep" >&2
      cargo tree -q -p "$pkg" -e normal,build --target all -i "$dep" >&2 || true
      fail=1
    fi
  done
}
forbid mahler-api kube-client kube-runtime tokio hyper mahler-core mahler-engine mahler-controller mahler-client
forbid mahler-core kube-client kube-runtime tokio hyper mahler-engine mahler-controller mahler-client
forbid mahler-engine kube-client kube-runtime hyper mahler-controller mahler-client
forbid mahler-client mahler-core mahler-engine mahler-controller
forbid mahler-cli mahler-core mahler-engine mahler-controller axum jsonschema
forbid mahler-server mahler-core mahler-engine mahler-controller
[[ $fail == 0 ]] && echo "dependency rules hold"
exit $fail
