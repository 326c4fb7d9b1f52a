#!/usr/bin/env bash
# A real local Kubernetes cluster from the binaries hack/tools.sh builds:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (simulated nodes, so Deployments roll out and pods go Ready), run by
# `kwokctl --runtime binary`, bound to 127.0.0.1 on free ports.
#
#   hack/cluster.sh up   [name]  start it (idempotent); prints `export KUBECONFIG=...`
#   hack/cluster.sh down [name]  stop it and delete its state
#   hack/cluster.sh kubeconfig [name]
#   hack/cluster.sh token USER [name]   the bearer token of a local user
#
# State lives in ${MAHLER_CLUSTER_DIR:-<repo>/.cluster}/<name>; the audit log
# of every write is in <dir>/clusters/<name>/logs/audit.log.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-up}
name=${2:-${MAHLER_CLUSTER:-mahler}}
dir=${MAHLER_CLUSTER_DIR:-$root/.cluster}/$name
kubeconfig=$dir/kubeconfig
export KWOK_WORKDIR=$dir

tools=$("$root/hack/tools.sh" dir etcd kubernetes kwok)
# The token users (docs/access.md): matching the example Project shop
# (manifests/examples/00-shop-project.yaml), and one in no project.
users="shop-admin prod-owner shop-viewer shop-dev outsider"
kwokctl=$tools/kwokctl

up() {
  mkdir -p "$dir"
  if [[ -f $kubeconfig ]] && "$tools/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "cluster $name already running" >&2
  else
    "$kwokctl" delete cluster --name "$name" >/dev/null 2>&1 || true
    # Named users with static bearer tokens (kube-apiserver --token-auth-file),
    # so tests and `make run` act as them: kubectl --context shop-dev,
    # mahler --kube-context shop-dev, curl -H "Authorization: Bearer ..." to
    # the REST API. Fresh random tokens per cluster; `users` lists them.
    : > "$dir/tokens.csv"
    chmod 600 "$dir/tokens.csv"
    for user in $users; do
      echo "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'),$user,uid-$user,\"mahler-local-users\"" >> "$dir/tokens.csv"
    done
    cat > "$dir/audit-policy.yaml" <<'YAML'
# Writes only, at Metadata level: tests count the operator's writes here.
# Every request of a ServiceAccount (the chart's operator, each environment's
# OpenTofu identity), reads and Leases too: a test compares them with the
# verbs their roles grant.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
  verbs: [get, list, watch]
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: None
  userGroups: ["system:nodes"]
- level: Metadata
YAML
    cat > "$dir/kwokctl.yaml" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $("$tools/kube-apiserver" --version | awk '{print $2}')
  etcdBinary: $tools/etcd
  kubeApiserverBinary: $tools/kube-apiserver
  kubeControllerManagerBinary: $tools/kube-controller-manager
  kubeSchedulerBinary: $tools/kube-scheduler
  kwokControllerBinary: $tools/kwok
  kubeAuditPolicy: $dir/audit-policy.yaml
  disableQPSLimits: true
  # kwok serves pod logs through the API server's kubelet proxy (kubectl
  # logs, \`mahler logs\`) from files named by Logs / ClusterLogs objects.
  enableCRDs: [Logs, ClusterLogs]
componentsPatches:
# kwok's default Service range is a /24: about 250 ClusterIPs, after which the
# API server answers 500 "failed to allocate". Benchmarks create 1,000+.
- name: kube-apiserver
  extraArgs:
  - key: service-cluster-ip-range
    value: 10.96.0.0/16
  - key: token-auth-file
    value: $dir/tokens.csv
YAML
    rm -f "$kubeconfig"
    "$kwokctl" create cluster --name "$name" -c "$dir/kwokctl.yaml" --kubeconfig "$kubeconfig" --wait 120s >"$dir/create.log" 2>&1 ||
      { cat "$dir/create.log" >&2; exit 1; }
    "$kwokctl" scale node --name "$name" --replicas "${MAHLER_NODES:-3}" >>"$dir/create.log" 2>&1
    # A kubeconfig context per token user, on the same cluster.
    local kc=("$tools/kubectl" --kubeconfig "$kubeconfig")
    local cluster
    cluster=$("${kc[@]}" config view -o jsonpath='{.clusters[0].name}')
    while IFS=, read -r token user _; do
      "${kc[@]}" config set-credentials "$user" --token="$token" >/dev/null
      "${kc[@]}" config set-context "$user" --cluster="$cluster" --user="$user" >/dev/null
    done < "$dir/tokens.csv"
  fi
  echo "export KUBECONFIG=$kubeconfig"
}

down() {
  "$kwokctl" delete cluster --name "$name" >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case $cmd in
  up) up ;;
  down) down ;;
  kubeconfig) echo "$kubeconfig" ;;
  token) awk -F, -v u="$name" '$2 == u {print $1}' "${MAHLER_CLUSTER_DIR:-$root/.cluster}/${3:-${MAHLER_CLUSTER:-mahler}}/tokens.csv" ;;
  *) echo "usage: $0 up|down|kubeconfig [name] | token USER [name]" >&2; exit 2 ;;
esac
