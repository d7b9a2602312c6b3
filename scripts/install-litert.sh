#!/usr/bin/env bash
# LiteRT export (`toolkit export --format litert`): litert-torch and the packages it imports, into the active
# Python (or $PYTHON). --no-deps because litert-torch 0.10 requires ai-edge-litert[model-utils], whose xdsl pins
# typing-extensions < 4.13 and so would downgrade pydantic; the conversion path does not use xdsl. The versions are
# the ones tested together (jax and jaxlib must match).
set -euo pipefail
PY=${PYTHON:-python}
"$PY" -m pip install -q --no-deps \
  litert-torch==0.10.0 ai-edge-litert==2.3.0 litert-converter==0.5.0 ai-edge-quantizer==0.10.0 \
  jax==0.10.2 jaxlib==0.10.2 absl-py==2.5.1 opt_einsum==3.4.0 immutabledict==4.3.1 backports.strenum==1.2.8
