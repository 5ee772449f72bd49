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
# A real browser for the UI tests (tests/jobs/test_ui.py): Debian's chromium, since
# `playwright install` cannot download its own browser here. Skipped when one is already on the
# PATH; when it cannot be installed (no apt-get, not root) setup goes on and that test skips.
if command -v chromium >/dev/null 2>&1; then
    :
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "installing Debian's chromium for the UI tests (apt-get)" >&2
    apt_start=$SECONDS
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; then
        echo "chromium installed in $((SECONDS - apt_start)) s" >&2
    else
        echo "note: apt-get could not install chromium; the browser UI test will be skipped" >&2
    fi
else
    echo "note: no chromium found and cannot install it (needs apt-get and root); the browser UI test will be skipped" >&2
fi
echo "wmplan is installed in .venv (activate with: source .venv/bin/activate)" >&2
