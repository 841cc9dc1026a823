#!/usr/bin/env bash
# The local Argilla 2.x stack the review tests use (and users can run for review
# offline): argilla-server in its own virtual environment (it pins old click, fastapi
# and pydantic), osmem-server as its search engine (an in-memory OpenSearch-compatible
# binary from PyPI), and Debian's redis-server. Idempotent (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${ARGILLA_SERVER_VENV:-.venv-argilla-server}"
STAMP="$VENV/.stamp"
HASH="$(sha256sum scripts/setup_argilla_server.sh | cut -c1-16)"
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian)"
  if [ "$(id -u)" = "0" ]; then
    (apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null))
  else
    sudo apt-get install -y -q redis-server >/dev/null
  fi
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "== setting up $VENV (argilla-server 2.8.0, osmem-server)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "argilla-server==2.8.0" "click<8.2" "osmem-server==0.1.6"
echo "$HASH" > "$STAMP"
