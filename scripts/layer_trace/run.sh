#!/usr/bin/env bash
# The layer kernel's phase trace (docs/history.md, "The one-launch layer, v1"), on a GPU
# machine from the repository root: copies the tree to /tmp/layer_trace, turns the copy
# into the trace build (apply.py; never on main), builds it for the local card and runs
# trace.py. Usage: scripts/layer_trace/run.sh [SHAPE ...]   (default: 2.8b 6.9b)
set -uo pipefail
dst=/tmp/layer_trace
scripts/diagnostic_build.sh "$dst" scripts/layer_trace/apply.py || exit 1
cd "$dst" || exit 1
export PYTHONPATH=$dst PYTHONUNBUFFERED=1 CF_TRACE=1
python3 scripts/layer_trace/trace.py "$@"
