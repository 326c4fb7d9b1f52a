#!/usr/bin/env bash
# `make test`: unit tests, then the end-to-end tests against one real local
# cluster started for this run and removed afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# buildah, lua5.4, tmux, python3, curl: installed if missing (as root).
hack/packages.sh

export MAHLER_TOOLS_DIR
MAHLER_TOOLS_DIR=$(hack/tools.sh dir)
export MAHLER_PROVIDER_MIRROR
MAHLER_PROVIDER_MIRROR=$(hack/tools.sh mirror)

# Grafana's schema types and tsc, for the dashboard check (tests/dashboard.rs).
export MAHLER_DASHBOARD_CHECK
MAHLER_DASHBOARD_CHECK=$(hack/tools.sh node dashboard-check)

if [[ -z ${SKIP_UNIT:-} ]]; then
  # Every test target of every crate (tests/targets.rs fails when one is
  # left out): unit tests, the generated-file guards, the CLI's snapshots,
  # the REST API's tests, tofu validate of the shipped templates, the
  # dashboard check. The e2e target (test = false) runs below.
  echo ">> every crate's tests (unit, generated files, snapshots, templates, dashboard)"
  MAHLER_TOFU=$MAHLER_TOOLS_DIR/tofu cargo test --workspace
fi

name=test-$$
export MAHLER_CLUSTER_DIR
MAHLER_CLUSTER_DIR=$(mktemp -d /tmp/mahler-test.XXXXXX)
export MAHLER_TEST_DIR=$MAHLER_CLUSTER_DIR/$name
cleanup() {
  for pid in operator api traces-sink; do
    if [[ -f $MAHLER_TEST_DIR/$pid.pid ]]; then kill "$(cat "$MAHLER_TEST_DIR/$pid.pid")" 2>/dev/null || true; fi
  done
  if [[ ${KEEP_CLUSTER:-} == 1 ]]; then echo "kept cluster: $MAHLER_TEST_DIR"; return; fi
  hack/consul.sh down "$MAHLER_TEST_DIR/consul" >/dev/null 2>&1 || true
  hack/cluster.sh down "$name" >/dev/null 2>&1 || true
  rm -rf "$MAHLER_CLUSTER_DIR"
}
trap cleanup EXIT

echo ">> starting the test cluster"
hack/cluster.sh up "$name" >/dev/null
# One Consul agent for the whole run (tests isolate by environment prefix).
echo ">> starting Consul (dev mode, ACLs on)"
hack/consul.sh up "$MAHLER_TEST_DIR/consul"
# One collector for the run that the operator sends its own traces to
# (--otlp-endpoint), writing them to a file (tests/e2e/telemetry.rs reads it).
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(port); sink_health=$(port)
export MAHLER_TRACES_FILE=$MAHLER_TEST_DIR/operator-traces.jsonl
export MAHLER_TRACES_ENDPOINT=http://127.0.0.1:$sink_port
cat >"$MAHLER_TEST_DIR/traces-sink.yaml" <<EOF
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:$sink_port"}}}}
exporters: {file: {path: "$MAHLER_TRACES_FILE", flush_interval: 200ms}}
extensions: {health_check: {endpoint: "127.0.0.1:$sink_health"}}
service:
  extensions: [health_check]
  telemetry: {metrics: {level: none}}
  pipelines: {traces: {receivers: [otlp], exporters: [file]}}
EOF
"$MAHLER_TOOLS_DIR/otelcol" --config="file:$MAHLER_TEST_DIR/traces-sink.yaml" >"$MAHLER_TEST_DIR/traces-sink.log" 2>&1 &
echo $! >"$MAHLER_TEST_DIR/traces-sink.pid"
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$sink_health/" >/dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$sink_health/" >/dev/null || { cat "$MAHLER_TEST_DIR/traces-sink.log"; exit 1; }
# The CLI the e2e tests run (tests/e2e/cli.rs builds it too; this keeps the
# build out of the tests' time).
cargo build -q -p mahler-cli -p mahler-server --bins
echo ">> end-to-end tests (operator log: $MAHLER_TEST_DIR/operator.log)"
# E2E_FILTER: one test or module (hack/soak.sh: churn::soak); E2E_ARGS:
# more arguments for the test binary (--ignored, --nocapture).
# shellcheck disable=SC2086
if ! cargo test --test e2e -- ${E2E_FILTER:-} ${E2E_ARGS:-} --test-threads="${E2E_THREADS:-4}"; then
  echo ">> operator log (last 80 lines):"
  tail -n 80 "$MAHLER_TEST_DIR/operator.log" || true
  exit 1
fi
if [[ -z ${E2E_FILTER:-} ]]; then
  echo ">> least privilege: the chart's ClusterRole against the whole run's audit log"
  cargo test --test e2e -- --ignored rbac:: --test-threads=1
fi
