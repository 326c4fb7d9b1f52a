#!/usr/bin/env bash
# The Debian packages `make test` and `make run` use, installed when one is
# missing (as root, with apt-get), else one line saying what to run.
#
#   hack/packages.sh                  the test suite's: buildah (the image
#                                     test), lua5.4 (a second opinion on the
#                                     Argo CD health script), tmux (the CLI's
#                                     interactive tests), python3, curl
#   hack/packages.sh CMD:PACKAGE ...  these
set -euo pipefail
need=("$@")
if [[ ${#need[@]} -eq 0 ]]; then
  need=(buildah:buildah lua5.4:lua5.4 tmux:tmux python3:python3 curl:curl)
fi
missing=()
for pair in "${need[@]}"; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo ">> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing Debian packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
