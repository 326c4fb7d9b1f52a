#!/usr/bin/env bash
# `make soak`: the churn soak (tests/e2e/churn.rs, `soak`) alone on a fresh
# local cluster, the operator with its default resync (600 s) and
# concurrency, as users run it. Prints the report (convergence, failing
# writes per minute, status writes after deletion, the operator's RSS and
# descriptors) and fails when a bound is crossed.
#
#   SOAK_MINUTES=15 SOAK_SERVICES=200 SOAK_OPS_PER_SECOND=5 SOAK_SEED=7 make soak
#
# A 2-minute smoke of the same churn runs in `make test` (churn::churn_smoke).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export MAHLER_E2E_RESYNC_SECONDS=${MAHLER_E2E_RESYNC_SECONDS:-600}
# 200 Services and their rollouts' surge pods: kwok nodes take 110 pods each.
export MAHLER_NODES=${MAHLER_NODES:-6}
export SKIP_UNIT=1 E2E_FILTER=churn::soak E2E_ARGS="--ignored --nocapture" E2E_THREADS=1
exec hack/test.sh
