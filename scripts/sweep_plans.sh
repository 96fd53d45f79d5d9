#!/usr/bin/env bash
# Times the fused kernel (CUDA graph of 32 layers, back to back and in context)
# under pinned launch plans, to check the planner's choice.
# Usage: scripts/sweep_plans.sh SHAPE DTYPE M PLAN...
# where PLAN is BLOCK_N:CLUSTER[:STAGES], "auto" for the planner's, and a
# trailing "/nopdl" turns programmatic dependent launch off.
set -euo pipefail
cd "$(dirname "$0")/.."
shape=$1 dtype=$2 m=$3
shift 3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for plan in "$@"; do
  flags=()
  case $plan in */nopdl) flags+=(--no-pdl); plan=${plan%/nopdl} ;; esac
  [ "$plan" = auto ] || flags+=(--plan "$plan")
  python3 benchmarks/bench_mlp_down.py --arms clusterfusion --shapes "$shape" --dtypes "$dtype" --m "$m" \
    --reps 50 --json "$out" "${flags[@]}" >/dev/null
  python3 - "$out" "$plan" "${flags[*]}" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
r = data["results"][0]
p = r["cf_plan"]
print(f"{r['shape']} {r['dtype']} M={r['m']} plan={sys.argv[2]} {sys.argv[3]}: "
      f"{p['block_n']}:{p['cluster_size']}:{p['stages']} graph {r['cf_graph_us']:.2f} us/layer, "
      f"in context {r['cf_context_us']:.2f} (floor {r['floor_us']:.2f})")
PY
done
