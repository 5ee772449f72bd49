#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install wmplan into it.
# torch==2.13.0 goes in first, on its own, so that nothing later resolves a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[test]"
echo "wmplan is installed in .venv (activate with: source .venv/bin/activate)" >&2
