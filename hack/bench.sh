#!/usr/bin/env bash
# `make bench`: a fresh local cluster, the release operator (its own
# process, so its memory is measurable), then benches/converge.rs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --bin mahler-operator
name=bench-$$
export MAHLER_CLUSTER_DIR
MAHLER_CLUSTER_DIR=$(mktemp -d /tmp/mahler-bench.XXXXXX)
dir=$MAHLER_CLUSTER_DIR/$name
cleanup() {
  [[ -f $dir/operator.pid ]] && kill "$(cat "$dir/operator.pid")" 2>/dev/null || true
  hack/cluster.sh down "$name" >/dev/null 2>&1 || true
  rm -rf "$MAHLER_CLUSTER_DIR"
}
trap cleanup EXIT
# 25 nodes: kwok nodes take 110 pods each, and the raw floor plus the Mahler
# stage keep 2,000+ pods running.
MAHLER_NODES=${MAHLER_NODES:-25} hack/cluster.sh up "$name" >/dev/null
export KUBECONFIG=$dir/kubeconfig
tools=$(hack/tools.sh dir)
"$tools/kubectl" apply -k crds/ >/dev/null
"$tools/kubectl" wait --for=condition=Established crd --all --timeout=60s >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export MAHLER_RESYNC_SECONDS=${MAHLER_RESYNC_SECONDS:-10}
export MAHLER_TOFU=$tools/tofu MAHLER_OTELCOL=$tools/otelcol MAHLER_TOFU_WORKDIR=$dir/tofu
# The pod-log agent on (BENCH=telemetry counts its writes and validations too).
export MAHLER_LOG_AGENT_NAMESPACE=${MAHLER_LOG_AGENT_NAMESPACE:-default}
export MAHLER_PROVIDER_MIRROR
MAHLER_PROVIDER_MIRROR=$(hack/tools.sh mirror)
# The operator's defaults (concurrency 16 per kind), unless MAHLER_* is set.
MAHLER_LEADER_ELECT=false MAHLER_METRICS_ADDR=127.0.0.1:$port \
  target/release/mahler-operator >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"
export MAHLER_BENCH_OPERATOR_PID=$(cat "$dir/operator.pid") MAHLER_BENCH_METRICS=http://127.0.0.1:$port/metrics
export MAHLER_BENCH_AUDIT_LOG=$dir/clusters/$name/logs/audit.log
# BENCH=converge, terraform, consul, telemetry, cli or api runs one part only.
bench=${BENCH:-all}
if [[ $bench == all || $bench == converge ]]; then cargo bench --bench converge; fi
if [[ $bench == all || $bench == terraform ]]; then cargo bench --bench terraform; fi
if [[ $bench == all || $bench == cli ]]; then MAHLER_KUBECTL=$tools/kubectl cargo bench -p mahler-cli --bench status; fi
if [[ $bench == all || $bench == consul ]]; then cargo bench --bench consul; fi
if [[ $bench == all || $bench == telemetry ]]; then cargo bench --bench telemetry; fi
if [[ $bench == all || $bench == api ]]; then MAHLER_KUBECTL=$tools/kubectl cargo bench -p mahler-server --bench api; fi
# Who wrote what during the 1,000-Service stages (the API server's audit
# log): how many writes, when (seconds from the stage's first write: first,
# median, last) and how long the API server took (median, p99).
python3 - "$dir/clusters/$name/logs/audit.log" <<'PY'
import collections, datetime, json, sys
def at(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
times, took, start = collections.defaultdict(list), collections.defaultdict(list), {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    ns = (e.get("objectRef") or {}).get("namespace", "")
    if ns.startswith(("scale", "raw")):
        # Every component uses the admin kubeconfig here: the user agent
        # tells them apart (the bench and the operator are both kube-rs: the
        # bench creates, the operator patches).
        agent = e.get("userAgent", "?").split("/")[0]
        ref = e["objectRef"]
        res = ref["resource"] + ("/" + ref["subresource"] if ref.get("subresource") else "")
        key = (ns, agent, res, e["verb"])
        t = at(e["requestReceivedTimestamp"])
        start[ns] = min(start.get(ns, t), t)
        times[key].append(t)
        took[key].append(at(e["stageTimestamp"]) - t)
print("API writes in the 1,000-Service stages, by namespace, client, resource and verb;")
print("when (s from the stage's first write: first / median / last) and API server time (ms: median / p99):")
for key in sorted(times):
    t = sorted(times[key]); d = sorted(took[key]); t0 = start[key[0]]
    ns, agent, res, verb = key
    print(f"  {len(t):6d}  {ns:16s} {agent:26s} {res:22s} {verb:7s}"
          f" {t[0]-t0:5.1f} / {t[len(t)//2]-t0:5.1f} / {t[-1]-t0:5.1f} s"
          f"  {d[len(d)//2]*1000:6.1f} / {d[int(len(d)*.99)]*1000:7.1f} ms")
PY
