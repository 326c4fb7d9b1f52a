#!/usr/bin/env bash
# `make dashboard-preview`, with `make run` up: a preview of the Grafana
# dashboard's panels from real data (there is no Grafana binary here).
#
# 1. Telemetry on for shop-staging (a Prometheus exporter); the collector
#    config the operator rendered into the environment's ConfigMap runs
#    beside the cluster (kwok's pods run nothing), bound to local ports.
# 2. Three services' OTLP traces for PREVIEW_SECONDS (default 300), while
#    the operator works: image rollouts, and a template input change that
#    runs OpenTofu.
# 3. Debian's Prometheus scrapes the operator's /metrics and the
#    collector's span metrics every 5 s.
# 4. Every panel's queries go through query_range; the page is drawn as
#    SVG in the dashboard's grid and screenshotted by headless Chromium into
#    docs/images/dashboard-preview.png. Labelled a preview, not Grafana.
#
# Needs: apt-get install prometheus chromium (docs/telemetry.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools=$(hack/tools.sh dir)
kubectl=$tools/kubectl
KUBECONFIG=$(hack/cluster.sh kubeconfig mahler)
export KUBECONFIG
metrics=127.0.0.1:${MAHLER_METRICS_PORT:-8080}
seconds=${PREVIEW_SECONDS:-300}
out=${PREVIEW_OUT:-docs/images/dashboard-preview.png}
for b in prometheus chromium; do
  command -v $b >/dev/null || { echo "needs $b: apt-get install prometheus chromium" >&2; exit 1; }
done
curl -sf "http://$metrics/metrics" >/dev/null || { echo "the operator's metrics ($metrics) do not answer: run \`make run\` first" >&2; exit 1; }

work=$(mktemp -d /tmp/mahler-preview.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$kubectl" patch environment shop-staging --type=json -p '[{"op":"remove","path":"/spec/telemetry"}]' >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo ">> telemetry on for shop-staging (Prometheus exporter)"
"$kubectl" patch environment shop-staging --type=merge -p '{"spec":{"telemetry":{"exporter":{"prometheus":{}}}}}' >/dev/null
"$kubectl" wait --for=jsonpath='{.status.conditions[?(@.type=="TelemetryReady")].reason}'=CollectorReady \
  environment/shop-staging --timeout=120s >/dev/null
"$kubectl" -n shop-staging get configmap mahler-collector -o jsonpath='{.data.config\.yaml}' >"$work/rendered.yaml"

grpc=$(port); http=$(port); prom=$(port); health=$(port); web=$(port)
python3 hack/dashboard_preview.py collector-config "$work/rendered.yaml" "$work/collector.yaml" "$grpc" "$http" "$prom" "$health"
"$tools/otelcol" --config="file:$work/collector.yaml" >"$work/collector.log" 2>&1 &
pids+=($!)
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
scrape_configs:
- job_name: mahler-operator
  static_configs: [{targets: ["$metrics"]}]
- job_name: mahler-collector
  static_configs: [{targets: ["127.0.0.1:$prom"]}]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$web" >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$health/" >/dev/null && curl -sf "http://127.0.0.1:$web/-/ready" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$health/" >/dev/null || { cat "$work/collector.log" >&2; exit 1; }

start=$(date +%s)
echo ">> ${seconds}s of traffic and operator work (Prometheus on http://127.0.0.1:$web)"
python3 hack/dashboard_preview.py load "http://127.0.0.1:$http/v1/traces" "$seconds" &
load=$!
pids+=($load)
i=0
while kill -0 "$load" 2>/dev/null; do
  i=$((i + 1))
  "$kubectl" -n shop-staging patch services.mahler.dev api --type=merge \
    -p "{\"spec\":{\"source\":{\"image\":\"registry.example/shop/api:1.5.$i\"}}}" >/dev/null
  if ((i % 4 == 0)); then
    "$kubectl" -n shop-staging patch services.mahler.dev db-credentials --type=merge \
      -p "{\"spec\":{\"source\":{\"template\":{\"inputs\":{\"port\":$((5432 + i))}}}}}" >/dev/null
  fi
  sleep 15
done
wait "$load"
end=$(date +%s)
# The last scrape of the last flush.
sleep 10

echo ">> rendering $out"
python3 hack/dashboard_preview.py render charts/mahler/dashboards/mahler.json "http://127.0.0.1:$web" "$start" "$end" "$work/preview.html"
mkdir -p "$(dirname "$out")"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1424,1600 \
  --screenshot="$root/$out" "file://$work/preview.html" >/dev/null 2>&1
echo "wrote $out"
