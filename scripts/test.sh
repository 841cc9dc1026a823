#!/usr/bin/env bash
# The test command: set up the environment, then run every tier (slow ones too).
# Extra arguments go to pytest. Zero collected tests is a failure (pytest exit 5).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
bash scripts/setup_argilla_server.sh || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
