#!/usr/bin/env bash
# `make run`: the local cluster, Mahler installed by its Helm chart (CRDs,
# RBAC, admission policies; kwok simulates the Deployment's pods), the
# operator and the REST API beside the cluster as the chart's
# ServiceAccounts (in the background, logs in .cluster/mahler/operator.log
# and api.log), a Consul agent (Consul on for shop-staging) and
# manifests/examples, then
# `mahler status shop-staging` once everything is Ready. `make stop` ends it all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/packages.sh python3:python3 curl:curl
tools=$(hack/tools.sh dir)
mirror=$(hack/tools.sh mirror)
kubectl=$tools/kubectl
eval "$(hack/cluster.sh up mahler)"
dir=$(dirname "$KUBECONFIG")

# A Consul agent beside the cluster (dev mode, ACLs on): docs/consul.md.
hack/consul.sh up "$dir/consul"
# shellcheck disable=SC1091
source "$dir/consul/consul.env"

HELM_CACHE_HOME=$dir/helm/cache HELM_CONFIG_HOME=$dir/helm/config HELM_DATA_HOME=$dir/helm/data \
  "$tools/helm" upgrade --install mahler charts/mahler --namespace mahler-system --create-namespace \
  --set apiServer.enabled=true --set apiServer.tls.secretName=mahler-api-tls \
  --set consul.address="$CONSUL_HTTP_ADDR" \
  --wait --timeout 120s >/dev/null
"$kubectl" wait --for=condition=Established crd --all --timeout=60s >/dev/null

# A kubeconfig of the chart's ServiceAccount NAME (a 24 h token): the
# operator and the REST API run as what the chart grants them, and the
# admission policies know the operator by that name.
sa_kubeconfig() {
  local out=$dir/$1.kubeconfig
  cp "$KUBECONFIG" "$out"
  "$kubectl" --kubeconfig "$out" config set-credentials "$1" \
    --token="$("$kubectl" -n mahler-system create token "$1" --duration=24h)" >/dev/null
  "$kubectl" --kubeconfig "$out" config set-context "$("$kubectl" config current-context)" --user="$1" >/dev/null
  echo "$out"
}

if [[ -f $dir/operator.pid ]] && kill -0 "$(cat "$dir/operator.pid")" 2>/dev/null; then
  kill "$(cat "$dir/operator.pid")"; sleep 1
fi
# As the chart runs it: OpenTofu as each environment's own ServiceAccount,
# bound to the chart's Terraform role.
KUBECONFIG=$(sa_kubeconfig mahler-operator) MAHLER_LEADER_ELECT=false \
  MAHLER_TERRAFORM_ROLE=mahler-terraform POD_NAMESPACE=mahler-system MAHLER_METRICS_ADDR=127.0.0.1:${MAHLER_METRICS_PORT:-8080} \
  MAHLER_TOFU=$tools/tofu MAHLER_OTELCOL=$tools/otelcol MAHLER_PROVIDER_MIRROR=$mirror MAHLER_TOFU_WORKDIR=$dir/tofu \
  MAHLER_CONSUL_ADDRESS=$CONSUL_HTTP_ADDR MAHLER_CONSUL_TOKEN_FILE=$dir/consul/consul-token \
  nohup target/release/mahler-operator >"$dir/operator.log" 2>&1 &
echo $! >"$dir/operator.pid"
echo ">> operator running (pid $(cat "$dir/operator.pid"), log $dir/operator.log, metrics http://127.0.0.1:${MAHLER_METRICS_PORT:-8080}/metrics)"

# The REST API (docs/api.md) as the chart's mahler-api ServiceAccount (it
# may only review tokens and impersonate), plain HTTP on loopback.
if [[ -f $dir/api.pid ]] && kill -0 "$(cat "$dir/api.pid")" 2>/dev/null; then
  kill "$(cat "$dir/api.pid")"; sleep 1
fi
api=127.0.0.1:${MAHLER_API_PORT:-8443}
KUBECONFIG=$(sa_kubeconfig mahler-api) MAHLER_API_LISTEN=$api nohup target/release/mahler-server >"$dir/api.log" 2>&1 &
echo $! >"$dir/api.pid"
echo ">> REST API on http://$api (pid $(cat "$dir/api.pid"), log $dir/api.log)"

# kwok simulates pods, so nothing writes logs: every pod serves this file
# (docs/operations.md, "The local cluster"), for `mahler logs`.
now=$(date -u +%Y-%m-%dT%H:%M:%S.000000000Z)
printf '%s stdout F started (a kwok pod: its log is %s)\n%s stdout F listening\n' "$now" "$dir/pod.log" "$now" >"$dir/pod.log"
"$kubectl" apply -f - >/dev/null <<YAML
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: mahler-example-logs}
spec:
  selector: {}
  logs: [{containers: [], logsFile: $dir/pod.log, follow: true}]
YAML
"$kubectl" apply -f manifests/examples/00-shop-project.yaml
"$kubectl" wait --for=condition=Ready environments.mahler.dev --all --timeout=60s >/dev/null
# Consul on for the example staging environment (the examples stay portable).
"$kubectl" patch environment shop-staging --type=merge -p '{"spec":{"consul":{"enabled":true}}}' >/dev/null
"$kubectl" apply -f manifests/templates/
"$kubectl" apply -f manifests/examples/10-shop-services.yaml -f manifests/examples/20-shop-credentials.yaml
"$kubectl" wait --for=condition=Ready projects.mahler.dev,environments.mahler.dev --all --timeout=60s >/dev/null
"$kubectl" wait --for=condition=Ready services.mahler.dev,connections.mahler.dev,resourcetemplates.mahler.dev --all -A --timeout=120s >/dev/null
echo
# The CLI shows what was made (docs/cli.md).
target/release/mahler status shop-staging
echo
echo "export KUBECONFIG=$KUBECONFIG PATH=$root/target/release:\$PATH"
echo "mahler status shop-staging      # or: mahler graph shop-staging, kubectl mahler ..., kubectl get mahler -A"
echo "mahler --kube-context shop-dev deploy api --image registry.example/shop/api:1.5.0 --env shop-staging   # as a local user (docs/access.md)"
echo "curl -H \"Authorization: Bearer \$(hack/cluster.sh token shop-viewer)\" http://$api/api/v1/environments/shop-staging/graph"
echo "curl -H \"X-Consul-Token: $CONSUL_HTTP_TOKEN\" $CONSUL_HTTP_ADDR/v1/health/service/shop-staging-api   # Consul (docs/consul.md; UI at $CONSUL_HTTP_ADDR/ui)"
echo "make stop                        # stop the operator, Consul and the cluster"
