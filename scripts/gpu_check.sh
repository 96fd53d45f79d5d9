#!/usr/bin/env bash
# On a GPU machine (no network needed): builds clusterfusion in place for the
# local GPU only, runs the whole test suite with the GPU tests, and prints a
# short summary. Logs go to $LOG_DIR (default: ./gpu_check_logs).
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir=${LOG_DIR:-gpu_check_logs}
mkdir -p "$log_dir"

gpu=$(python3 -c "import torch; p=torch.cuda.get_device_properties(0); print(f'{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs)')") || {
  echo "gpu_check: no CUDA GPU visible to PyTorch"; exit 1; }
arch=$(python3 -c "import torch; M, m = torch.cuda.get_device_capability(0); print(f'{M}{m}a')")
export CLUSTERFUSION_CUDA_ARCHS=${CLUSTERFUSION_CUDA_ARCHS:-$arch}

# Link libstdc++ dynamically even where the toolchain would pull in a static
# copy (seen with a wrapped gcc on our GPU machines): a second, uninitialized
# copy of the C++ stream library inside the extension crashes while formatting
# error messages.
export LDFLAGS="${LDFLAGS:-} -Wl,--push-state,--no-as-needed -l:libstdc++.so.6 -Wl,--pop-state"

start=$(date +%s)
if ! MAX_JOBS=${MAX_JOBS:-8} python3 setup.py build_ext --inplace >"$log_dir/build.log" 2>&1; then
  tail -40 "$log_dir/build.log"; echo "gpu_check: build failed (log: $log_dir/build.log)"; exit 1
fi
built=$(date +%s)
if ! ldd clusterfusion/_C*.so | grep -q "libstdc++"; then
  echo "gpu_check: warning: the extension does not load libstdc++ dynamically"
fi
python3 -m pytest -q -rs tests 2>&1 | tee "$log_dir/pytest.log"
status=${PIPESTATUS[0]}
done_at=$(date +%s)

echo
echo "== gpu_check summary =="
echo "GPU:     $gpu"
echo "targets: $CLUSTERFUSION_CUDA_ARCHS (build $((built - start)) s)"
echo "tests:   $(tail -1 "$log_dir/pytest.log") ($((done_at - built)) s)"
exit "$status"
