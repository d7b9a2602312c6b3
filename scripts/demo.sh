#!/usr/bin/env bash
# README's first command: set up .venv, make Fashion-MNIST available, run the offline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
bash scripts/get-fashion-mnist.sh
HF_HUB_OFFLINE=1 exec .venv/bin/toolkit demo "$@"
