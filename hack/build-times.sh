#!/usr/bin/env bash
# Cold and warm `cargo build` times of the operator and of a small program
# on mahler-api + mahler-client (docs/benchmarks.md, "Build times"). Cold:
# an empty target directory (the crate registry already downloaded);
# warm: the same build after touching the workload builder in mahler-core.
# Run it on a quiet machine: it takes about 8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(mktemp -d /tmp/mahler-build-times.XXXXXX)
trap 'rm -rf "$target"' EXIT
step() {
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  end=$(date +%s.%N)
  printf '%-58s %7.1f s\n' "$*" "$(echo "$end - $start" | bc)"
}
echo "load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
for build in "-p mahler-client --example status" "--bin mahler-operator"; do
  rm -rf "$target"/*
  # shellcheck disable=SC2086
  CARGO_TARGET_DIR=$target step cargo build $build
  touch crates/core/src/workload/mod.rs
  # shellcheck disable=SC2086
  CARGO_TARGET_DIR=$target step cargo build $build
done
