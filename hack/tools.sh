#!/usr/bin/env bash
# Builds the real components Mahler's tests and `make run` use, from the
# pinned wrapper Go modules under tools/, and caches the binaries OUTSIDE the
# checkout so fresh clones (CI) reuse them.
#
#   hack/tools.sh build [component...]  build what is missing (default: all)
#   hack/tools.sh dir   [component...]  build what is missing, print a dir
#                                       holding every binary (symlinks)
#   hack/tools.sh mirror [aws]          build the providers (random, null,
#                                       kubernetes [, aws]), print an OpenTofu
#                                       filesystem mirror holding them
#
# Cache: ${MAHLER_TOOLS_CACHE:-~/.cache/mahler/tools}/<component>-<hash>/,
# keyed by the wrapper's go.mod + go.sum + this script's build recipe, so a
# version bump builds anew and nothing else does.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MAHLER_TOOLS_CACHE:-$HOME/.cache/mahler/tools}
all_components=(etcd kubernetes kwok tofu provider-random provider-null provider-kubernetes helm gitops-check consul)

# binaries <component>: the packages a wrapper builds, as "name=package".
binaries() {
  case $1 in
    etcd) echo "etcd=go.etcd.io/etcd/server/v3" ;;
    kubernetes)
      for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
        echo "$b=k8s.io/kubernetes/cmd/$b"
      done ;;
    kwok) echo "kwok=sigs.k8s.io/kwok/cmd/kwok kwokctl=sigs.k8s.io/kwok/cmd/kwokctl" ;;
    tofu) echo "tofu=github.com/opentofu/opentofu/cmd/tofu" ;;
    helm) echo "helm=helm.sh/helm/v3/cmd/helm" ;;
    # v1.16.1, the last MPL-2.0 release (tools/consul/go.mod says why a wrapper).
    consul) echo "consul=github.com/hashicorp/consul" ;;
    # Mahler's own small main (tools/gitops-check/main.go): kstatus, the
    # library Flux uses, and gopher-lua, the interpreter Argo CD embeds.
    gitops-check) echo "gitops-check=mahler.dev/tools/gitops-check" ;;
    provider-random) echo "terraform-provider-random=github.com/terraform-providers/terraform-provider-random" ;;
    provider-null) echo "terraform-provider-null=github.com/terraform-providers/terraform-provider-null" ;;
    provider-kubernetes) echo "terraform-provider-kubernetes=github.com/hashicorp/terraform-provider-kubernetes" ;;
    # Not in the default set: a very large build, only for `make validate-templates`.
    provider-aws) echo "terraform-provider-aws=github.com/hashicorp/terraform-provider-aws" ;;
    *) echo "unknown component: $1" >&2; return 1 ;;
  esac
}

# ldflags <component>: version stamping, so binaries report their real version.
ldflags() {
  local mod=$root/tools/$1/go.mod v
  case $1 in
    kubernetes)
      v=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$mod")
      local minor=${v#v1.}; minor=${minor%%.*}
      echo "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
      ;;
    tofu) echo "-X github.com/opentofu/opentofu/version.dev=no" ;;
    helm)
      # Without these helm says "v3.22" and renders and lints for Kubernetes
      # 1.20; render for the Kubernetes the local cluster runs.
      v=$(awk '$1=="helm.sh/helm/v3" {print $2; exit}' "$mod")
      local k; k=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$root/tools/kubernetes/go.mod")
      k=${k#v1.}; k=${k%%.*}
      local m
      for m in pkg/chartutil pkg/lint/rules; do
        echo -n "-X helm.sh/helm/v3/$m.k8sVersionMajor=1 -X helm.sh/helm/v3/$m.k8sVersionMinor=$k "
      done
      echo "-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      ;;
    *) echo "" ;;
  esac
}

key() {
  { cat "$root/tools/$1/go.mod" "$root/tools/$1/go.sum"; cat "$root/tools/$1/"*.go 2>/dev/null || true; binaries "$1"; ldflags "$1"; } |
    sha256sum | cut -c1-12
}

outdir() { echo "$cache/$1-$(key "$1")"; }

build() {
  local c=$1 out; out=$(outdir "$c")
  [[ -f $out/.complete ]] && return 0
  mkdir -p "$out"
  local started=$SECONDS
  echo ">> building $c into $out (cold builds take minutes; cached afterwards)" >&2
  local pair name pkg
  for pair in $(binaries "$c"); do
    name=${pair%%=*}; pkg=${pair#*=}
    (cd "$root/tools/$c" &&
      CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -trimpath \
        -ldflags="-s -w $(ldflags "$c")" -o "$out/$name.tmp" "$pkg")
    mv "$out/$name.tmp" "$out/$name"
  done
  touch "$out/.complete"
  echo ">> built $c in $((SECONDS - started))s" >&2
}

# The version each provider wrapper builds, as the mirror names it (see the
# comments in tools/provider-*/go.mod for the commit behind each).
provider_version() {
  case $1 in
    random) echo 3.9.0 ;;
    null) echo 2.1.2 ;;
    kubernetes) echo 3.2.1 ;;
    aws) echo 6.48.0 ;;
  esac
}

# mirror: registry.{opentofu.org,terraform.io}/hashicorp/<name>/<version>/linux_amd64/
# terraform-provider-<name>_v<version>, so `tofu init` finds the providers
# offline under either registry host.
mirror() {
  local p key dir os_arch providers=(random null kubernetes "$@")
  os_arch=$(go env GOOS)_$(go env GOARCH)
  key=$(for p in "${providers[@]}"; do key provider-$p; provider_version $p; done | sha256sum | cut -c1-12)
  dir=$cache/mirrors/$key
  if [[ ! -f $dir/.complete ]]; then
    rm -rf "$dir.tmp"
    for p in "${providers[@]}"; do
      build provider-$p
      local v; v=$(provider_version $p)
      for host in registry.opentofu.org registry.terraform.io; do
        mkdir -p "$dir.tmp/$host/hashicorp/$p/$v/$os_arch"
        # Hard links: the same binary under both hosts, no copies (the AWS one
        # is ~0.9 GB); a copy where the cache spans filesystems.
        ln -f "$(outdir provider-$p)/terraform-provider-$p" "$dir.tmp/$host/hashicorp/$p/$v/$os_arch/terraform-provider-${p}_v$v" 2>/dev/null ||
          cp "$(outdir provider-$p)/terraform-provider-$p" "$dir.tmp/$host/hashicorp/$p/$v/$os_arch/terraform-provider-${p}_v$v"
      done
    done
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

cmd=${1:-build}; shift || true
if [[ $cmd == mirror ]]; then mirror "$@"; exit 0; fi
components=("$@"); [[ ${#components[@]} -gt 0 ]] || components=("${all_components[@]}")
case $cmd in
  build) for c in "${components[@]}"; do build "$c"; done ;;
  dir)
    for c in "${components[@]}"; do build "$c"; done
    set_key=$(for c in "${components[@]}"; do key "$c"; done | sha256sum | cut -c1-12)
    set_dir=$cache/sets/$set_key
    if [[ ! -d $set_dir ]]; then
      mkdir -p "$set_dir.tmp"
      for c in "${components[@]}"; do
        for pair in $(binaries "$c"); do ln -sf "$(outdir "$c")/${pair%%=*}" "$set_dir.tmp/"; done
      done
      mv "$set_dir.tmp" "$set_dir"
    fi
    echo "$set_dir" ;;
  *) echo "usage: $0 build|dir [component...] | mirror" >&2; exit 2 ;;
esac
