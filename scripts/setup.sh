#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install wmplan into it.
# torch==2.13.0 goes in first, on its own, so that nothing later resolves a CUDA build of torch.
#
# The installer is uv where it can be had (on the PATH, or bootstrapped into .venv from the package
# index in a few seconds): it downloads and unpacks in parallel, about 5x faster than pip on a cold
# cache. pip is the fallback. WMPLAN_INSTALLER=pip forces pip; WMPLAN_INSTALLER=uv fails if uv cannot
# be had. Already-installed packages are never downloaded again (both installers skip what is
# satisfied), so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
INSTALLER=${WMPLAN_INSTALLER:-auto}
case "$INSTALLER" in
    auto|uv|pip) ;;
    *) echo "error: WMPLAN_INSTALLER must be auto, uv or pip, got '$INSTALLER'" >&2; exit 2 ;;
esac
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi

uv_bin=""
if [ "$INSTALLER" != pip ]; then
    if command -v uv >/dev/null 2>&1; then
        uv_bin=$(command -v uv)
    elif [ -x .venv/bin/uv ]; then
        uv_bin=.venv/bin/uv
    elif .venv/bin/python -m pip install --quiet uv >/dev/null 2>&1 && [ -x .venv/bin/uv ]; then
        uv_bin=.venv/bin/uv
    elif [ "$INSTALLER" = uv ]; then
        echo "error: WMPLAN_INSTALLER=uv but uv is not on the PATH and could not be installed with pip" >&2
        exit 2
    fi
fi

if [ -n "$uv_bin" ]; then
    # uv does not read pip's configuration: pass on pip's find-links (where a machine keeps local
    # wheels, such as its CPU build of torch) so that uv takes the same files pip would.
    uv_args=(--python .venv/bin/python --quiet)
    links=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
    for link in $links; do
        uv_args+=(--find-links "$link")
    done
    "$uv_bin" pip install "${uv_args[@]}" torch==2.13.0
    "$uv_bin" pip install "${uv_args[@]}" -e ".[test]"
    how="uv"
else
    .venv/bin/python -m pip install --quiet torch==2.13.0
    .venv/bin/python -m pip install --quiet -e ".[test]"
    how="pip"
fi
echo "wmplan is installed in .venv with $how in $((SECONDS - start)) s (activate with: source .venv/bin/activate)" >&2
