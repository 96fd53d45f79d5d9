#!/usr/bin/env bash
# The PDL-fault probe (docs/history.md, "The PDL fault on the attention edge"), on a GPU
# machine from the repository root: copies the tree to /tmp/pdl_probe, turns the copy into
# the diagnostic build (apply.py: run-time switches through CF_DIAG, never on main),
# builds it for the local card, then runs both probes and the attention tests with the
# attention kernel as the QKV projection's programmatic dependent. Usage:
#   scripts/pdl_probe/run.sh [CALLS]      # CALLS per probe variant (default 300)
set -uo pipefail
dst=/tmp/pdl_probe
scripts/diagnostic_build.sh "$dst" scripts/pdl_probe/apply.py || exit 1
cd "$dst" || exit 1
export PYTHONPATH=$dst PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 scripts/pdl_probe/call_probe.py "${1:-300}"
python3 scripts/pdl_probe/chain_probe.py "$(( ${1:-300} / 3 ))"
for run in 1 2 3; do
  echo "== tests/test_attention_block.py with the attention kernel as a programmatic dependent, run $run"
  CF_DIAG=attn_pdl python3 -m pytest -q -p no:cacheprovider tests/test_attention_block.py -k "not compile and not opcheck" | tail -2
done
