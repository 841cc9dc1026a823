#!/usr/bin/env bash
# The main job: set up the environment, then run the demo on the embedded default
# (toy world, offline, CPU, no API key). Extra arguments go to `trace-inversion demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
# Output goes to runs/demo (ignored by git); nothing else in the checkout is written.
exec "${VENV:-.venv}/bin/trace-inversion" demo "$@"
