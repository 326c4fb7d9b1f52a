#!/usr/bin/env bash
# A real local Kubernetes cluster from the binaries hack/tools.sh builds:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (simulated nodes, so Deployments roll out and pods go Ready), run by
# `kwokctl --runtime binary`, bound to 127.0.0.1 on free ports.
#
#   hack/cluster.sh up   [name]  start it (idempotent); prints `export KUBECONFIG=...`
#   hack/cluster.sh down [name]  stop it and delete its state
#   hack/cluster.sh kubeconfig [name]
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
kwokctl=$tools/kwokctl

up() {
  mkdir -p "$dir"
  if [[ -f $kubeconfig ]] && "$tools/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "cluster $name already running" >&2
  else
    "$kwokctl" delete cluster --name "$name" >/dev/null 2>&1 || true
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
YAML
    rm -f "$kubeconfig"
    "$kwokctl" create cluster --name "$name" -c "$dir/kwokctl.yaml" --kubeconfig "$kubeconfig" --wait 120s >"$dir/create.log" 2>&1 ||
      { cat "$dir/create.log" >&2; exit 1; }
    "$kwokctl" scale node --name "$name" --replicas "${MAHLER_NODES:-3}" >>"$dir/create.log" 2>&1
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
  *) echo "usage: $0 up|down|kubeconfig [name]" >&2; exit 2 ;;
esac
