#!/usr/bin/env bash
# A diagnostic build (pdl_probe/, layer_trace/), never on main: copies the tree at the
# current directory to DEST, runs APPLY (a script that edits the copy, given DEST), and
# builds the copy in place for the local card (build log: DEST/build.log).
# Usage, from the repository root: scripts/diagnostic_build.sh DEST APPLY
set -uo pipefail
src=$(pwd)
dst=$1
rm -rf "$dst" && mkdir -p "$dst"
git -C "$src" ls-files -z --cached --others --exclude-standard | (cd "$src" && xargs -0 cp --parents -t "$dst") || exit 1
python3 "$dst/$2" "$dst" || exit 1
cd "$dst" || exit 1
export LDFLAGS="${LDFLAGS:-} -Wl,--push-state,--no-as-needed -l:libstdc++.so.6 -Wl,--pop-state"
arch=$(python3 -c "import torch; M, m = torch.cuda.get_device_capability(0); print(f'{M}{m}a')")
CLUSTERFUSION_CUDA_ARCHS=$arch MAX_JOBS=16 python3 setup.py build_ext --inplace > build.log 2>&1 || { tail -30 build.log; exit 1; }
