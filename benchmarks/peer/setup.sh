#!/usr/bin/env bash
# The torchrl peer benchmark's own environment, benchmarks/peer/.venv (git-ignored): never one of the
# project's dependencies. It sees the project's virtualenv (torch 2.13.0 and wmplan) through a .pth
# file, as --system-site-packages would see a system Python's, so pip keeps that torch and installs
# only torchrl and what torchrl needs on top of it.
#
#   bash benchmarks/peer/setup.sh                 # then: benchmarks/peer/.venv/bin/python benchmarks/peer/torchrl_cem.py
#   TORCHRL_VERSION=0.13.3 bash benchmarks/peer/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
project_python="${PROJECT_PYTHON:-$root/.venv/bin/python}"
version="${TORCHRL_VERSION:-0.14.1}"  # requires torch>=2.1; measured with torch 2.13.0 (CPU)

[ -x "$project_python" ] || { echo "no project virtualenv at $project_python (run scripts/setup.sh first, or set PROJECT_PYTHON)" >&2; exit 1; }
site="$("$project_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
torch_version="$("$project_python" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$project_python" -m venv "$here/.venv"
peer_site="$("$here/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# addsitedir also reads the project's own .pth files (its editable wmplan install).
echo "import site; site.addsitedir('$site')" > "$peer_site/wmplan_project.pth"
"$here/.venv/bin/python" -m pip install -q "torchrl==$version" "torch==$torch_version"
"$here/.venv/bin/python" -c 'import torch, torchrl, wmplan; print(f"peer venv ready: torchrl {torchrl.__version__}, torch {torch.__version__}")'
