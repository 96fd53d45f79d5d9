#!/usr/bin/env bash
# Times the fused kernel (CUDA graph of 32 layers) under pinned launch plans, to
# check the planner's choice. Usage: scripts/sweep_plans.sh SHAPE DTYPE ROWS PLAN...
# where PLAN is BLOCK_N:CLUSTER[:STAGES], "auto" for the planner's, and a
# trailing "/nopdl" turns programmatic dependent launch off.
set -uo pipefail
cd "$(dirname "$0")/.."
shape=$1 dtype=$2 rows=$3
shift 3
for plan in "$@"; do
  pdl=1
  case $plan in */nopdl) pdl=0; plan=${plan%/nopdl} ;; esac
  [ "$plan" = auto ] && pin="" || pin=$plan
  us=$(CLUSTERFUSION_PLAN=$pin CLUSTERFUSION_PDL=$pdl CLUSTERFUSION_VERBOSE=1 python3 benchmarks/bench_mlp_down.py \
         --arms clusterfusion --shapes "$shape" --dtypes "$dtype" --rows "$rows" --reps 50 --json /dev/null 2>&1 |
       awk -F'|' '/^\| / && $2 !~ /shape/ {print $9, "floor", $10} /\[clusterfusion\]/ {sub(/.*-> /, ""); p=$0} END {print p}' | paste -sd' ')
  echo "$shape $dtype M=$rows plan=${plan} pdl=$pdl: graph us/layer = $us"
done
