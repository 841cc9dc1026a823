#!/usr/bin/env bash
# The local Argilla 2.x stack the review tests use (and users can run for review
# offline): argilla-server in its own virtual environment (it pins old click, fastapi
# and pydantic), osmem-server as its search engine (an in-memory OpenSearch-compatible
# binary from PyPI), and Debian's redis-server; plus Debian's chromium, which the
# review UI's browser test drives headless through Playwright. Idempotent (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${ARGILLA_SERVER_VENV:-.venv-argilla-server}"
STAMP="$VENV/.stamp"
HASH="$(sha256sum scripts/setup_argilla_server.sh | cut -c1-16)"
apt_install() {  # Debian packages: redis (the stack), chromium (the review UI's browser test)
  echo "== installing $* (Debian)"
  local SUDO=""
  export DEBIAN_FRONTEND=noninteractive
  [ "$(id -u)" = "0" ] || SUDO=sudo
  $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 || ($SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$@" >/dev/null)
}
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
[ -x /usr/bin/chromium ] || apt_install chromium
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "== setting up $VENV (argilla-server 2.8.0, osmem-server)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "argilla-server==2.8.0" "click<8.2" "osmem-server==0.1.6"
echo "$HASH" > "$STAMP"
