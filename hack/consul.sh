#!/usr/bin/env bash
# A real Consul agent (v1.16.1, built by hack/tools.sh) in -dev mode on free
# 127.0.0.1 ports, with ACLs on (default deny) and a management token, for
# the tests and `make run`. Dev mode keeps its state in memory: a restart
# starts empty, which is what the recovery tests want.
#
#   hack/consul.sh up DIR       start it; DIR/consul.env says where it is
#   hack/consul.sh restart DIR  stop it and start it again on the same ports
#   hack/consul.sh down DIR     stop it
#
# DIR/consul.env: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN (the management
# token), and the ports. DIR/consul-token holds the token for the operator
# (--consul-token-file). DIR/consul.log is the agent's log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:?usage: hack/consul.sh up|restart|down DIR}
dir=${2:?usage: hack/consul.sh up|restart|down DIR}
mkdir -p "$dir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() {
  # shellcheck disable=SC1091
  source "$dir/consul.env"
  local consul; consul=$("$root/hack/tools.sh" dir consul)/consul
  # Dev mode with ACLs: the management token is created at every start.
  cat > "$dir/consul.hcl" <<HCL
disable_update_check = true
acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {
    initial_management = "$CONSUL_HTTP_TOKEN"
  }
}
HCL
  nohup "$consul" agent -dev -node=consul-dev -bind=127.0.0.1 -client=127.0.0.1 \
    -http-port="$CONSUL_HTTP_PORT" -dns-port=-1 -grpc-port=-1 -grpc-tls-port=-1 \
    -serf-lan-port="$CONSUL_SERF_LAN_PORT" -serf-wan-port="$CONSUL_SERF_WAN_PORT" \
    -server-port="$CONSUL_SERVER_PORT" -config-file="$dir/consul.hcl" \
    >>"$dir/consul.log" 2>&1 &
  echo $! > "$dir/consul.pid"
  # Ready when it has a leader and the management token works.
  for _ in $(seq 150); do
    leader=$(curl -fsS -H "X-Consul-Token: $CONSUL_HTTP_TOKEN" "$CONSUL_HTTP_ADDR/v1/status/leader" 2>/dev/null || true)
    if [[ -n $leader && $leader != '""' ]] &&
      curl -fsS -o /dev/null -H "X-Consul-Token: $CONSUL_HTTP_TOKEN" "$CONSUL_HTTP_ADDR/v1/acl/token/self" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$(cat "$dir/consul.pid")" 2>/dev/null; then
      echo "consul exited; last log lines:" >&2; tail -n 20 "$dir/consul.log" >&2; return 1
    fi
    sleep 0.2
  done
  echo "consul did not become ready in 30s; log: $dir/consul.log" >&2
  return 1
}

stop() {
  [[ -f $dir/consul.pid ]] || return 0
  local pid; pid=$(cat "$dir/consul.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/consul.pid"
}

case $cmd in
  up)
    stop
    http=$(free_port)
    token=$(python3 -c 'import uuid; print(uuid.uuid4())')
    cat > "$dir/consul.env" <<ENV
CONSUL_HTTP_PORT=$http
CONSUL_HTTP_ADDR=http://127.0.0.1:$http
CONSUL_HTTP_TOKEN=$token
CONSUL_SERF_LAN_PORT=$(free_port)
CONSUL_SERF_WAN_PORT=$(free_port)
CONSUL_SERVER_PORT=$(free_port)
ENV
    printf '%s' "$token" > "$dir/consul-token"
    start ;;
  restart) stop; start ;;
  down) stop ;;
  *) echo "usage: hack/consul.sh up|restart|down DIR" >&2; exit 2 ;;
esac
