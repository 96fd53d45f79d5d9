#!/usr/bin/env bash
# The layer kernel's phase trace (docs/history.md, "The one-launch layer, v1"), on a GPU
# machine from the repository root: copies the tree to /tmp/layer_trace, turns the copy
# into the trace build (apply.py; never on main), builds it for the local card and runs
# trace.py. Usage: scripts/layer_trace/run.sh [SHAPE ...]   (default: 2.8b 6.9b)
set -uo pipefail
src=$(pwd)
dst=/tmp/layer_trace
rm -rf "$dst" && mkdir -p "$dst"
git -C "$src" ls-files -z --cached --others --exclude-standard | (cd "$src" && xargs -0 cp --parents -t "$dst") || exit 1
python3 "$dst/scripts/layer_trace/apply.py" "$dst" || exit 1
cd "$dst" || exit 1
export LDFLAGS="${LDFLAGS:-} -Wl,--push-state,--no-as-needed -l:libstdc++.so.6 -Wl,--pop-state"
arch=$(python3 -c "import torch; M, m = torch.cuda.get_device_capability(0); print(f'{M}{m}a')")
CLUSTERFUSION_CUDA_ARCHS=$arch MAX_JOBS=16 python3 setup.py build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
export PYTHONPATH=$dst PYTHONUNBUFFERED=1 CF_TRACE=1
python3 scripts/layer_trace/trace.py "$@"
