#!/usr/bin/env bash
# `make fuzz`: schemathesis (from PyPI, pinned, in a venv cached outside the
# checkout) against the REST API of `make run`, driven by the API's own
# OpenAPI document (docs/openapi.json), as the local user shop-admin.
# Checks: no 5xx, status codes and content types as documented, responses
# matching their schemas. Findings and fixes: docs/api.md, "Fuzzing".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=4.32.5
venv=${MAHLER_TOOLS_CACHE:-$HOME/.cache/mahler/tools}/schemathesis-$version
if [[ ! -x $venv/bin/st ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
api=${MAHLER_API:-http://127.0.0.1:${MAHLER_API_PORT:-8443}}
curl -sf "$api/readyz" >/dev/null || { echo "no REST API at $api: run \`make run\` first" >&2; exit 1; }
token=$(hack/cluster.sh token "${FUZZ_USER:-shop-admin}")
# The event stream never ends by design: it is tested in tests/e2e/rest.rs.
exec "$venv/bin/st" run docs/openapi.json --url "$api" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path-regex '/events$' \
  --max-examples "${FUZZ_EXAMPLES:-100}" --request-timeout 20 "$@"
