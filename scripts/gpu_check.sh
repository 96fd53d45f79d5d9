#!/usr/bin/env bash
# On a GPU machine (no network needed): builds clusterfusion in place for the
# local GPU only, runs the whole test suite with the GPU tests, then the race
# hunt (scripts/race_hunt.py: chains of layers replayed in CUDA graphs, bit for
# bit), compute-sanitizer's memcheck, racecheck and synccheck over the race
# hunt's small eager chains (--sanitizer), and the Decoder soak
# (scripts/soak.py), and prints a summary with every step's result. Every step
# runs even if an earlier one failed. Logs go to $LOG_DIR (default: ./gpu_check_logs).
#
# Usage: scripts/gpu_check.sh [--quick]
#   --quick (or QUICK=1): 30 graph replays per race-hunt chain instead of 300,
#   300 soak requests instead of 1000.
# Exit status: non-zero if the build or any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=${QUICK:-0}
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    *) echo "usage: scripts/gpu_check.sh [--quick]"; exit 2 ;;
  esac
done
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
steps=("tests:        $(tail -1 "$log_dir/pytest.log") ($((done_at - built)) s)")

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import the in-place build

# run_step NAME LOG PATTERN COMMAND...: runs COMMAND, its output shown and kept
# in $log_dir/LOG; records NAME's result with the log's lines matching PATTERN.
run_step() {
  local name=$1 log=$log_dir/$2 pattern=$3 t0 rc detail result
  shift 3
  t0=$(date +%s)
  echo
  echo "== $name: $* =="
  "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  detail=$(grep -E "$pattern" "$log" | sed -E 's/^=+ *//' | paste -sd';' -)
  if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc)"; status=1; fi
  steps+=("$(printf '%-13s %s: %s (%d s, log %s)' "$name:" "$result" "${detail:-no summary line}" \
    $(($(date +%s) - t0)) "$log")")
}

if [ "$quick" = 1 ]; then hunt_flags=(--quick) soak_flags=(--requests 300); else hunt_flags=() soak_flags=(); fi
run_step "race hunt" race_hunt.log '^race_hunt: ' python3 scripts/race_hunt.py "${hunt_flags[@]}"

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  if [ -x "$sanitizer" ]; then
    # Without PyTorch's caching allocator every tensor is its own allocation, so
    # memcheck sees an access past a tensor's end.
    run_step "$tool" "sanitizer_$tool.log" 'SUMMARY' env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$sanitizer" --tool "$tool" --error-exitcode 1 python3 scripts/race_hunt.py --sanitizer
  else
    steps+=("$(printf '%-13s FAILED: compute-sanitizer not found (not on PATH, not %s)' "$tool:" "$sanitizer")")
    status=1
  fi
done

run_step "soak" soak.log '^soak: [0-9]+ requests' python3 scripts/soak.py "${soak_flags[@]}"

echo
echo "== gpu_check summary =="
echo "GPU:          $gpu"
echo "targets:      $CLUSTERFUSION_CUDA_ARCHS (build $((built - start)) s)"
printf '%s\n' "${steps[@]}"
exit "$status"
