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
export MAHLER_TOFU=$tools/tofu MAHLER_TOFU_WORKDIR=$dir/tofu
export MAHLER_PROVIDER_MIRROR
MAHLER_PROVIDER_MIRROR=$(hack/tools.sh mirror)
MAHLER_LEADER_ELECT=false MAHLER_METRICS_ADDR=127.0.0.1:$port MAHLER_CONCURRENCY=${MAHLER_CONCURRENCY:-32} \
  target/release/mahler-operator >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"
export MAHLER_BENCH_OPERATOR_PID=$(cat "$dir/operator.pid") MAHLER_BENCH_METRICS=http://127.0.0.1:$port/metrics
# BENCH=converge or BENCH=terraform runs one part only.
if [[ ${BENCH:-all} != terraform ]]; then cargo bench --bench converge; fi
if [[ ${BENCH:-all} != converge ]]; then cargo bench --bench terraform; fi
# Who wrote what during the 1,000-Service stages (the API server's audit log).
python3 - "$dir/clusters/$name/logs/audit.log" <<'PY'
import collections, json, sys
writes = collections.Counter()
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
        writes[(ns, agent, res, e["verb"])] += 1
print("API writes in the 1,000-Service stages, by namespace, client, resource and verb:")
for (ns, agent, res, verb), n in sorted(writes.items()):
    print(f"  {n:6d}  {ns:16s} {agent:28s} {res:24s} {verb}")
PY
