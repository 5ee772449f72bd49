#!/usr/bin/env bash
# Set up the environment, run ruff and mypy, then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Lint and type-check before any test runs (both configured in pyproject.toml); a finding fails the script.
.venv/bin/ruff check wmplan tests benchmarks examples
.venv/bin/mypy wmplan
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
export RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
